"""The sidecar command protocol: request and reply shapes.

A command is a msgpack map ``{"op": ..., ...}`` sent as a NATS request to a pod's
command subject or to the fleet subject. The reply is always a map with ``ok``;
on failure it carries ``error``, a sentence meant for the operator.
"""

from __future__ import annotations

from typing import Any

from .globs import GlobError, compile_glob
from .rules import MAX_RULES, METHOD_SET, FaultRule, RuleError

OPS = ("set", "recover", "methods", "injected", "status", "ping")
PROTOCOL_VERSION = 1


class CommandError(ValueError):
    """The command is malformed; nothing was changed."""


def ok(pod: str, **result: Any) -> dict[str, Any]:
    return {"ok": True, "pod": pod, "v": PROTOCOL_VERSION, **result}


def error(pod: str, message: str) -> dict[str, Any]:
    return {"ok": False, "pod": pod, "v": PROTOCOL_VERSION, "error": message}


def _only(command: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(str(k) for k in set(command) - allowed - {"op", "target", "actor"})
    if unknown:
        raise CommandError(f"unknown field(s) for op {command['op']!r}: {', '.join(unknown)}")


def parse_rules(command: dict[str, Any]) -> list[FaultRule]:
    _only(command, {"rules"})
    raw = command.get("rules")
    if not isinstance(raw, list) or not raw:
        raise CommandError("set needs a non-empty list of rules")
    if len(raw) > MAX_RULES:
        raise CommandError(f"at most {MAX_RULES} rules per command")
    rules = []
    for index, item in enumerate(raw):
        try:
            rules.append(FaultRule.from_wire(item))
        except RuleError as exc:
            raise CommandError(f"rule {index}: {exc}") from None
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise CommandError("rule ids within one command must be unique")
    return rules


def parse_recover(command: dict[str, Any]) -> tuple[str, str | None]:
    """Return ("all", None), ("id", ID) or ("method", NAME)."""
    _only(command, {"id", "method", "all"})
    given = [k for k in ("id", "method", "all") if k in command]
    if len(given) != 1:
        raise CommandError("recover needs exactly one of id, method or all")
    key = given[0]
    value = command[key]
    if key == "all":
        if value is not True:
            raise CommandError("recover all must be true")
        return "all", None
    if not isinstance(value, str) or not value:
        raise CommandError(f"recover {key} must be a non-empty string")
    if key == "method" and value not in METHOD_SET:
        raise CommandError(f"unknown method {value!r}")
    return key, value


class Target:
    """Which sidecars a fleet command is for. Empty fields match everything."""

    def __init__(self, raw: Any) -> None:
        raw = raw or {}
        if not isinstance(raw, dict):
            raise CommandError("target must be a map")
        unknown = sorted(str(k) for k in set(raw) - {"namespaces", "pods", "selector"})
        if unknown:
            raise CommandError(f"unknown target field(s): {', '.join(unknown)}")
        namespaces = raw.get("namespaces") or []
        if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
            raise CommandError("target namespaces must be a list of strings")
        selector = raw.get("selector") or {}
        if not isinstance(selector, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
        ):
            raise CommandError("target selector must map label names to values")
        pods = raw.get("pods") or "*"
        if not isinstance(pods, str):
            raise CommandError("target pods must be a glob string")
        try:
            self._pods = compile_glob(pods.replace("/", "\x00"))
        except GlobError as exc:
            raise CommandError(str(exc)) from None
        self.namespaces = frozenset(namespaces)
        self.selector = dict(selector)

    def matches(self, namespace: str, name: str, labels: dict[str, str]) -> bool:
        if self.namespaces and namespace not in self.namespaces:
            return False
        if any(labels.get(k) != v for k, v in self.selector.items()):
            return False
        return bool(self._pods.match(name))
