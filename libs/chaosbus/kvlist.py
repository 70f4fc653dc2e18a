"""``key=value,key=value`` lists, read one way wherever chaosbus takes them
(``chaosctl --attr``, the ``POD_LABELS`` environment variable).

Spaces around items, keys and values are dropped and empty items (``a=1,,b=2``, a
trailing comma) are skipped. An item without ``=`` or with an empty key, or a key
given twice, is refused with the item quoted: a typo must not silently become a
different list.
"""

from __future__ import annotations

MAX_LIST_LENGTH = 64 * 1024


def parse_pairs(text: str, *, what: str = "list") -> list[tuple[str, str]]:
    """The ``(key, value)`` pairs of ``text`` in order; ValueError naming ``what``."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be key=value,key=value, got {text!r}")
    if len(text) > MAX_LIST_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_LIST_LENGTH} characters")
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"{what} must be key=value,key=value; got {item.strip()!r}")
        if key in seen:
            raise ValueError(f"{what}: {key!r} is given twice")
        seen.add(key)
        pairs.append((key, value))
    return pairs
