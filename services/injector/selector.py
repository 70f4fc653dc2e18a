"""Does a pod match an injection config's selector?

Chaos Mesh's selector is ``{"labelSelectors": {key: value}}`` (its SelectorSpec).
Supported here: ``labelSelectors`` and ``annotationSelectors`` (equality, all
must hold), ``namespaces`` (the pod's namespace is listed), and
``expressionSelectors`` (Kubernetes' matchExpressions: In, NotIn, Exists,
DoesNotExist). ``matchLabels`` and ``matchExpressions`` are accepted as aliases.
An empty selector matches every pod, as in Chaos Mesh.

Any other non-empty field (``fieldSelectors``, ``podPhaseSelectors``, ``pods``,
...) makes the selector match nothing: injecting a FUSE sidecar into pods the
config did not mean is worse than not injecting it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EQUALITY_FIELDS = ("labelSelectors", "matchLabels")
EXPRESSION_FIELDS = ("expressionSelectors", "matchExpressions")
KNOWN_FIELDS = frozenset(
    {*EQUALITY_FIELDS, *EXPRESSION_FIELDS, "annotationSelectors", "namespaces"}
)


def match(
    selector: Mapping[str, Any] | None,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    namespace: str,
) -> tuple[bool, str]:
    """(matches, why not) for one pod."""
    if not selector:
        return True, ""
    if not isinstance(selector, Mapping):
        return False, "the selector is not an object"
    for key, value in selector.items():
        if key not in KNOWN_FIELDS and value:
            return False, f"selector field {key!r} is not supported by the injector"

    for key in EQUALITY_FIELDS:
        ok, why = _equal(selector.get(key), labels, "label")
        if not ok:
            return False, why
    ok, why = _equal(selector.get("annotationSelectors"), annotations, "annotation")
    if not ok:
        return False, why

    namespaces = selector.get("namespaces")
    if namespaces:
        if not isinstance(namespaces, list):
            return False, "selector namespaces must be a list"
        if namespace not in namespaces:
            return False, f"namespace {namespace!r} is not in the selector's namespaces"

    for key in EXPRESSION_FIELDS:
        ok, why = _expressions(selector.get(key), labels)
        if not ok:
            return False, why
    return True, ""


def _equal(wanted: Any, have: Mapping[str, str], what: str) -> tuple[bool, str]:
    if not wanted:
        return True, ""
    if not isinstance(wanted, Mapping):
        return False, f"selector {what}s must be a map"
    for key, value in wanted.items():
        if have.get(key) != value:
            return False, f"{what} {key}={value} does not hold (pod has {have.get(key)!r})"
    return True, ""


def _expressions(requirements: Any, labels: Mapping[str, str]) -> tuple[bool, str]:
    if not requirements:
        return True, ""
    if not isinstance(requirements, list):
        return False, "selector expressions must be a list"
    for req in requirements:
        if not isinstance(req, Mapping) or not isinstance(req.get("key"), str):
            return False, "a selector expression has no key"
        key, op = req["key"], req.get("operator")
        values = req.get("values") or []
        if not isinstance(values, list):
            return False, f"selector expression on {key!r}: values must be a list"
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:
            return False, f"selector expression on {key!r}: unknown operator {op!r}"
        if not ok:
            return False, f"label expression {key} {op} {values} does not hold"
    return True, ""
