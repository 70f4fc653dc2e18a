"""The functions a template may call, with how many arguments each takes.

Go's predefined functions (and, or, not, comparisons, len, index, print, printf,
println) and the two sprig functions Chaos Mesh sidecar templates use (quote, default).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from .errors import Fail
from .fmt import go_print, go_println, go_quote, printf, to_text
from .values import go_type, kind_of, truth


def eq(a: Any, *others: Any) -> bool:
    for b in others:
        if kind_of(a) != kind_of(b):
            if a is not None and b is not None:
                raise Fail(f"incompatible types for comparison: {go_type(a)} and {go_type(b)}")
        elif kind_of(a) == "other":
            raise Fail(f"non-comparable type {go_type(a)}")
        elif a == b:
            return True
    return False


def ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        for v in (a, b):
            if kind_of(v) not in ("int", "float", "string"):
                raise Fail(f"invalid type for comparison: {go_type(v)}")
        if kind_of(a) != kind_of(b):
            raise Fail(f"incompatible types for comparison: {go_type(a)} and {go_type(b)}")
        return op(a, b)

    return compare


def go_len(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode("utf-8", "surrogatepass"))  # Go counts bytes
    if isinstance(v, list | tuple | Mapping):
        return len(v)
    raise Fail(f"len of type {go_type(v)}")


def go_index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(item, Mapping):
            if not isinstance(key, str | int | float | bool) or key not in item:
                raise Fail(f"map has no entry for key {to_text(key)}")
            item = item[key]
        elif isinstance(item, list | tuple):
            if kind_of(key) != "int":
                raise Fail(f"cannot index slice with type {go_type(key)}")
            if not 0 <= key < len(item):
                raise Fail(f"index out of range: {key}")
            item = item[key]
        else:
            raise Fail(f"can't index item of type {go_type(item)}")
    return item


def sprig_quote(*args: Any) -> str:
    """sprig's quote: each non-nil argument as Go's %q of its %v, joined by spaces."""
    return " ".join(go_quote(to_text(a)) for a in args if a is not None)


def sprig_default(fallback: Any, *given: Any) -> Any:
    """sprig's default: the fallback when the value is missing from the call or empty."""
    return given[0] if given and truth(given[0]) else fallback


def lazy(*args: Any) -> Any:
    raise AssertionError("and/or are evaluated by the evaluator, lazily, as Go does since 1.18")


# name: (function, fewest arguments, most arguments or None for any number)
FUNCS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "and": (lazy, 1, None),
    "or": (lazy, 1, None),
    "not": (lambda v: not truth(v), 1, 1),
    "eq": (eq, 2, None),
    "ne": (lambda a, b: not eq(a, b), 2, 2),
    "lt": (ordered(operator.lt), 2, 2),
    "le": (ordered(operator.le), 2, 2),
    "gt": (ordered(operator.gt), 2, 2),
    "ge": (ordered(operator.ge), 2, 2),
    "len": (go_len, 1, 1),
    "index": (go_index, 1, None),
    "print": (go_print, 0, None),
    "printf": (printf, 1, None),
    "println": (go_println, 0, None),
    "quote": (sprig_quote, 0, None),
    "default": (sprig_default, 1, None),
}
