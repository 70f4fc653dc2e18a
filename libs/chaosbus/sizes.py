"""Byte sizes as operators write them: Kubernetes quantities (128Mi, 64k, 1G, 1e6)
and the usual spellings (64KiB, 1MB, 512).

Accepted, the number first (digits with an optional decimal point, an optional
``+``), then one suffix, case as written here:

- none or ``B``: bytes;
- ``Ki Mi Gi Ti Pi Ei``: powers of 1024, as in Kubernetes;
- ``k M G T P E``: powers of 1000, as in Kubernetes (``k`` is 1000, not 1024);
- ``m``: thousandths, as in Kubernetes (``1500m`` is not a whole byte count, see below);
- ``e``/``E`` and a whole exponent: ``1e6``, ``5E3``, as in Kubernetes;
- ``KiB MiB GiB TiB PiB EiB`` (powers of 1024) and ``kB MB GB TB PB EB`` (powers of
  1000), in any case: the spellings chaosbus has always taken.

Refused, with a sentence saying why: negatives, NaN and infinities, a value
that is not a whole number of bytes (``0.1Mi`` is 104857.6 bytes; Kubernetes
would round it up, but a quota, an alignment or a byte count to keep is exact, so
a rounded figure would move a fault's boundary silently), sizes above 2**63 - 1,
and the single letters that meant powers of 1024 here before but mean something
else, or nothing, to Kubernetes (``K``, ``g``, ``t``, ``p``; ``64m`` is 0.064 bytes).
"""

from __future__ import annotations

import argparse
import re
from fractions import Fraction

MAX_SIZE = (1 << 63) - 1  # what a signed 64-bit field (msgpack, the kernel) holds

_KUBERNETES: dict[str, int | Fraction] = {
    "": 1,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "Pi": 1 << 50,
    "Ei": 1 << 60,
    "m": Fraction(1, 1000),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
# Case-insensitive: "mib" and "MB" have always been taken.
_BYTE_UNITS = {
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "pib": 1 << 50,
    "eib": 1 << 60,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
    "eb": 10**18,
}
_SIZE = re.compile(
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:[eE](?P<exponent>[+-]?[0-9]+)|\s*(?P<unit>[a-zA-Z]*))"
)
_EXAMPLES = "e.g. 4096, 64Ki, 64KiB, 128Mi, 1G, 1e6"


class SizeError(ValueError, argparse.ArgumentTypeError):
    """A size that cannot be read; argparse shows its message as it is."""


def parse_size(text: str) -> int:
    """The number of bytes ``text`` stands for (module docstring); SizeError otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise SizeError(f"invalid size {text!r} ({_EXAMPLES})")
    number = Fraction(match["number"])
    if match["exponent"] is not None:
        exponent = int(match["exponent"])
        if abs(exponent) > 30:  # beyond any real size; keeps 1e999999999 from hanging
            raise SizeError(f"size {text!r} is out of range (at most {MAX_SIZE} bytes)")
        scale: int | Fraction = Fraction(10) ** exponent
    else:
        scale = _scale(match["unit"], text)
    value = number * scale
    if match["sign"] == "-" and value:
        raise SizeError(f"size {text!r} is negative")
    if value.denominator != 1:
        why = "m means thousandths, as in Kubernetes" if match["unit"] == "m" else _EXAMPLES
        raise SizeError(f"size {text!r} is {float(value)} bytes, not a whole number ({why})")
    if value > MAX_SIZE:
        raise SizeError(f"size {text!r} is out of range (at most {MAX_SIZE} bytes)")
    return int(value)


def _scale(unit: str, text: str) -> int | Fraction:
    if unit in _KUBERNETES:
        return _KUBERNETES[unit]
    if unit.lower() in _BYTE_UNITS:
        return _BYTE_UNITS[unit.lower()]
    hint = {
        "K": "k (1000) or Ki (1024)",
        "g": "G (1000**3) or Gi (1024**3)",
        "t": "T (1000**4) or Ti (1024**4)",
        "p": "P (1000**5) or Pi (1024**5)",
        "e": "E (1000**6) or Ei (1024**6)",
    }.get(unit)
    if hint:
        raise SizeError(f"invalid size {text!r}: the suffix {unit!r} is ambiguous; write {hint}")
    raise SizeError(f"invalid size {text!r}: unknown suffix {unit!r} ({_EXAMPLES})")
