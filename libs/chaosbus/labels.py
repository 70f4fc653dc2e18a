"""Kubernetes label selectors in their full text dialect.

``app=tikv, tier!=cache, zone in (a, b), env notin (dev), canary, !legacy`` means: the
label ``app`` is ``tikv``, ``tier`` is missing or not ``cache``, ``zone`` is ``a`` or
``b``, ``env`` is missing or not ``dev``, ``canary`` is set, and ``legacy`` is not.
``==`` is the same as ``=``. This is what ``kubectl get pods -l`` accepts (less the
rarely used ``>`` and ``<``), so one string can be sent to the Kubernetes API as is or
matched here against the labels a sidecar registered with.

Chaos Mesh wrote the same thing as a map (``labelSelectors``) plus a list of
``{key, operator, values}`` (``expressionSelectors``, Kubernetes' ``matchExpressions``);
``from_parts`` folds both into one selector.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_SELECTOR_LENGTH = 8192
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|[^\s!=(),]+)")
_OPERATORS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


class SelectorError(ValueError):
    """A label selector is malformed. The message is one line and quotes the selector."""


def _error(message: str) -> SelectorError:
    return SelectorError(message)


def key_problem(key: Any) -> str | None:
    """Why ``key`` is not a valid label key (``[prefix/]name``), or None if it is."""
    if not isinstance(key, str) or not key:
        return f"label key must be a non-empty string, got {key!r}"
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key prefix {prefix!r} must be a DNS subdomain (like example.com)"
    if len(name) > 63 or not _NAME.match(name):
        return (
            f"label key {key!r}: the name must be 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def value_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid label value, or None if it is (empty is valid)."""
    if not isinstance(value, str):
        return f"label value must be a string, got {value!r}"
    if value and (len(value) > 63 or not _NAME.match(value)):
        return (
            f"label value {value!r} must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=" and "notin"

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    """Every requirement must hold; an empty selector matches every set of labels."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


@functools.lru_cache(maxsize=512)
def parse(text: str) -> LabelSelector:
    """Parse a selector string; raises SelectorError naming what is wrong.

    Requirements come back sorted by key (then operator), as Kubernetes sorts them, so
    equal selectors print the same.
    """
    if not isinstance(text, str):
        raise _error(f"label selector must be a string, got {text!r}")
    if len(text) > MAX_SELECTOR_LENGTH:
        raise _error(f"label selector is longer than {MAX_SELECTOR_LENGTH} characters")
    tokens = _tokenize(text)
    requirements: list[Requirement] = []
    i = 0
    while i < len(tokens):
        requirement, i = _requirement(tokens, i, text)
        requirements.append(requirement)
        if i < len(tokens):
            if tokens[i] != ",":
                raise _error(f"label selector {text!r}: expected ',' before {tokens[i]!r}")
            i += 1
            if i == len(tokens):
                raise _error(f"label selector {text!r} ends with ','")
    requirements.sort(key=lambda r: (r.key, r.op, r.values))
    return LabelSelector(tuple(requirements))


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        match = _TOKEN.match(stripped, pos)
        if match is None:  # pragma: no cover - the pattern matches any non-space run
            raise _error(f"label selector {text!r}: cannot read from position {pos}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


def _requirement(tokens: list[str], i: int, text: str) -> tuple[Requirement, int]:
    def word(at: int) -> str | None:
        return tokens[at] if at < len(tokens) else None

    if tokens[i] == "!":
        key = word(i + 1)
        _check_key(key, text)
        assert key is not None
        return Requirement(key, "!"), i + 2
    key = tokens[i]
    _check_key(key, text)
    op = word(i + 1)
    if op is None or op == ",":
        return Requirement(key, "exists"), i + 1
    if op in ("=", "==", "!="):
        value = word(i + 2)
        if value is None or value in (",", "(", ")", "!", "=", "==", "!="):
            # "a=" is a requirement on the empty value, as in Kubernetes.
            _check_value("", text)
            return Requirement(key, "=" if op != "!=" else "!=", ("",)), i + 2
        _check_value(value, text)
        return Requirement(key, "=" if op != "!=" else "!=", (value,)), i + 3
    if op in ("in", "notin"):
        if word(i + 2) != "(":
            raise _error(f"label selector {text!r}: expected '(' after {key} {op}")
        values: list[str] = []
        j = i + 3
        while True:
            token = word(j)
            if token is None:
                raise _error(f"label selector {text!r}: missing ')'")
            if token == ")":
                break
            if token == ",":
                j += 1
                continue
            if token in ("(", "!", "=", "==", "!="):
                raise _error(f"label selector {text!r}: unexpected {token!r} in a value list")
            _check_value(token, text)
            values.append(token)
            j += 1
        if not values:
            raise _error(f"label selector {text!r}: {key} {op} () needs at least one value")
        return Requirement(key, op, tuple(sorted(set(values)))), j + 1
    raise _error(
        f"label selector {text!r}: expected =, ==, !=, in or notin after {key!r}, got {op!r}"
    )


def _check_key(key: str | None, text: str) -> None:
    if key is None or key in (",", "(", ")", "!", "=", "==", "!="):
        raise _error(f"label selector {text!r}: expected a label key")
    problem = key_problem(key)
    if problem:
        raise _error(f"label selector {text!r}: {problem}")


def _check_value(value: str, text: str) -> None:
    problem = value_problem(value)
    if problem:
        raise _error(f"label selector {text!r}: {problem}")


def from_parts(
    match_labels: Mapping[str, str] | None = None,
    expressions: Sequence[Mapping[str, Any]] = (),
    *,
    field: str = "selector",
) -> str:
    """One selector string from a label map and ``{key, operator, values}`` expressions."""
    requirements: list[Requirement] = []
    for key, value in sorted((match_labels or {}).items()):
        problem = key_problem(key) or value_problem(value)
        if problem:
            raise _error(f"{field}.labelSelectors: {problem}")
        requirements.append(Requirement(key, "=", (value,)))
    for index, expr in enumerate(expressions):
        where = f"{field}.expressionSelectors[{index}]"
        if not isinstance(expr, Mapping):
            raise _error(f"{where}: must be a map with key, operator and values")
        unknown = sorted(str(k) for k in set(expr) - {"key", "operator", "values"})
        if unknown:
            raise _error(f"{where}.{unknown[0]}: unknown field")
        raw_key = expr.get("key")
        problem = key_problem(raw_key)
        if problem or not isinstance(raw_key, str):
            raise _error(f"{where}.key: {problem or 'must be a string'}")
        key = raw_key
        operator = expr.get("operator")
        if not isinstance(operator, str) or operator not in _OPERATORS:
            raise _error(
                f"{where}.operator: must be one of {', '.join(_OPERATORS)}, got {operator!r}"
            )
        values = expr.get("values") or []
        if not isinstance(values, list):
            raise _error(f"{where}.values: must be a list of strings")
        for value in values:
            problem = value_problem(value)
            if problem:
                raise _error(f"{where}.values: {problem}")
        op = _OPERATORS[operator]
        if op in ("in", "notin") and not values:
            raise _error(f"{where}.values: operator {operator} needs at least one value")
        if op in ("exists", "!") and values:
            raise _error(f"{where}.values: operator {operator} takes no values")
        requirements.append(Requirement(str(key), op, tuple(sorted(set(values)))))
    text = ",".join(str(r) for r in requirements)
    parse(text)  # the pieces were checked one by one; this proves the whole reads back
    return str(parse(text))
