"""Human durations ("100ms", "1.5s", "2m") to seconds and back."""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu: Go accepts both
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def units_total(text: str) -> float | None:
    """Seconds in a run of number+unit parts ("1m30s", "250ms"); None if ``text`` is
    anything else. The grammar of Go's time.ParseDuration, without a sign."""
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total if text and pos == len(text) else None


def parse_duration(text: str) -> float:
    """Parse a Go-style duration such as ``1m30s`` or ``250ms``; bare numbers are seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value < 0 or value != value:
            raise ValueError(f"duration must be a non-negative number, got {text!r}")
        return value
    total = units_total(text)
    if total is None:
        raise ValueError(f"invalid duration {text!r} (examples: 100ms, 1.5s, 2m)")
    return total


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:g}us"
    if seconds < 1:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds:g}s"
