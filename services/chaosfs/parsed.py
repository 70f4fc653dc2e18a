"""Commands parsed once per process, not once per sidecar control plane.

A fleet command reaches every sidecar with the very same bytes. A real sidecar
parses it once anyway; ``bench/agents.py``, which runs hundreds of sidecars' control
planes in one process to load the bus like a fleet, would decode the command,
build its target and parse and compile its rules hundreds of times. Here they are
kept by the bytes they came from, a few at a time, and shared: nothing is ever
changed once made (FaultRule is frozen; the command and wire dicts are only read),
so the control planes' threads may use them together.

A set whose rules have a ``ttl`` is not kept: the rule's end is computed when it
is parsed, and the same bytes sent again later must give a later end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chaosbus import codec, protocol
from chaosbus.rules import FaultRule

CACHE_SIZE = 64  # commands kept; the cache is emptied when full
CACHE_MAX_BYTES = 64 * 1024  # bigger commands are parsed each time


@dataclass
class Command:
    body: dict[str, Any]
    op: str
    target: protocol.Target | None  # for a fleet command
    # The set's rules and their wire form, made the first time they are asked for.
    _rules: tuple[list[FaultRule], list[dict[str, Any]]] | None = field(default=None, repr=False)

    def rules(self, now: float | None = None) -> tuple[list[FaultRule], list[dict[str, Any]]]:
        """The rules of a set and their wire form; raises CommandError if invalid.

        A ``ttl`` counts from ``now`` (the sidecar's wall clock). Commands with one are
        never shared (see above), so the first ``now`` asked with is the right one."""
        if self._rules is None:
            rules = protocol.parse_rules(self.body, now)
            self._rules = (rules, [r.to_wire() for r in rules])
        return self._rules


_cache: dict[tuple[bool, bytes], Command] = {}


def command(data: bytes, fleet: bool) -> Command:
    """The command in ``data``; raises DecodeError or CommandError for a bad one, and
    the target is checked (fleet commands) before any rule is."""
    key = (fleet, data)
    found = _cache.get(key)
    if found is not None:
        return found
    body = codec.decode(data)
    op = body.get("op")
    if op not in protocol.OPS:
        raise protocol.CommandError(f"unknown op {op!r}; expected one of {', '.join(protocol.OPS)}")
    target = protocol.Target(body.get("target")) if fleet else None
    parsed = Command(body, op, target)
    if len(data) <= CACHE_MAX_BYTES and not _has_ttl(body):
        if len(_cache) >= CACHE_SIZE:
            _cache.clear()
        _cache[key] = parsed
    return parsed


def _has_ttl(body: dict[str, Any]) -> bool:
    rules = body.get("rules")
    return isinstance(rules, list) and any(
        isinstance(r, dict) and r.get("ttl") is not None for r in rules
    )
