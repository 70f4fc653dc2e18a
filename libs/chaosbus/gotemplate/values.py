"""Python values as Go's templates see them: type names, truth and kinds.

Arguments arrive from YAML or JSON, so a value is nil, a bool, an int, a float, a
string, a list or a string-keyed map; Go would hold them in interface{} values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import Fail


def go_type(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    if isinstance(v, list | tuple):
        return "[]interface {}"
    names = {bool: "bool", int: "int", float: "float64", str: "string"}
    return names.get(type(v), type(v).__name__)


def truth(v: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, lists and maps are false."""
    if v is None:
        return False
    if isinstance(v, bool | int | float):
        return v != 0
    if isinstance(v, str | list | tuple | Mapping):
        return len(v) > 0
    raise Fail(f"unsupported value of type {type(v).__name__}")


def sorted_keys(m: Mapping[Any, Any]) -> list[Any]:
    try:
        return sorted(m)
    except TypeError:  # mixed key types: any stable order will do
        return sorted(m, key=lambda k: (type(k).__name__, repr(k)))


def kind_of(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "other"
