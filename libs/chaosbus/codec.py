"""msgpack encoding of bus messages, strict on the way in.

Everything a sidecar receives comes from the network, so decoding refuses
oversized payloads, non-map documents, non-string keys and msgpack extension
types before any field is looked at.
"""

from __future__ import annotations

from typing import Any

import msgpack

MAX_COMMAND_BYTES = 64 * 1024
# Deeper than any message or stored entry chaosbus writes (an experiment's manifest
# is capped at 64 levels before it is stored); code that walks a decoded value
# recursively (repr, json, comparisons) would hit Python's recursion limit near
# 1,000 levels, which msgpack itself lets through.
MAX_DEPTH = 100


class DecodeError(ValueError):
    """The payload is not a well-formed chaosbus message."""


def encode(message: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def decode(payload: bytes, *, limit: int = MAX_COMMAND_BYTES) -> dict[str, Any]:
    if len(payload) > limit:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds the limit of {limit} bytes")
    if not payload:
        raise DecodeError("empty payload")
    try:
        value = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
        )
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types for garbage
        raise DecodeError(f"payload is not valid msgpack: {exc}") from None
    if not isinstance(value, dict):
        raise DecodeError(f"payload must be a msgpack map, got {type(value).__name__}")
    _check_depth(value)
    return value


def _check_depth(value: Any) -> None:
    """Refuse values nested deeper than MAX_DEPTH, without recursing to find out."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DecodeError(f"payload is nested deeper than {MAX_DEPTH} levels")
        # Only containers can nest: scalars (most of a long list of names) are skipped
        # in one comprehension rather than pushed one by one.
        values = item.values() if isinstance(item, dict) else item
        stack.extend((v, depth + 1) for v in [v for v in values if isinstance(v, dict | list)])


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed")
