"""The fault-rule model: what a rule may say, validated strictly.

A rule arrives as a msgpack map from the bus. ``FaultRule.from_wire`` is the only
way to build one from outside data, and it either returns a complete, immutable
rule or raises ``RuleError`` naming the field at fault. Nothing half-valid gets
into a sidecar's rule set.
"""

from __future__ import annotations

import errno as errno_mod
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from .globs import GlobError, compile_glob

# The seed's Injure service knew these 31 method names; chaos experiments written
# for it keep working unchanged.
SEED_METHODS = (
    "open", "read", "write", "mkdir", "rmdir", "opendir", "fsync", "flush", "release",
    "truncate", "getattr", "chown", "chmod", "utimens", "allocate", "getlk", "setlk",
    "setlkw", "statfs", "readlink", "symlink", "create", "access", "link", "mknod",
    "rename", "unlink", "getxattr", "listxattr", "removexattr", "setxattr",
)  # fmt: skip
# Operations chaosfs also sees and lets rules target.
EXTRA_METHODS = ("lookup", "readdir", "releasedir", "fsyncdir")
METHODS = SEED_METHODS + EXTRA_METHODS
METHOD_SET = frozenset(METHODS)

ACTIONS = ("errno", "latency", "mixed")

# What the seed's "random" errno picks from: failures a sick disk really returns.
RANDOM_ERRNOS = (errno_mod.EIO, errno_mod.ENOSPC, errno_mod.EROFS, errno_mod.EACCES,
                 errno_mod.EPERM, errno_mod.ENOENT, errno_mod.EAGAIN)  # fmt: skip

MAX_DELAY_SECONDS = 3600.0
MAX_RULES = 1024
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
_FIELDS = frozenset({"id", "action", "errno", "delay", "jitter", "methods", "path", "percent"})


class RuleError(ValueError):
    """A rule (or a command carrying rules) is invalid; the message says why."""


def parse_errno(value: Any) -> int:
    """An errno given by name ("EIO", "eio") or by number (5)."""
    if isinstance(value, bool):
        raise RuleError(f"errno must be a name like EIO or a positive number, got {value!r}")
    if isinstance(value, int):
        if value <= 0 or value not in errno_mod.errorcode:
            raise RuleError(f"errno {value} is not a known positive errno number")
        return value
    if isinstance(value, str):
        name = value.strip().upper()
        number = getattr(errno_mod, name, None) if name.startswith("E") else None
        if not isinstance(number, int) or number <= 0:
            raise RuleError(f"unknown errno name {value!r}")
        return number
    raise RuleError(f"errno must be a name like EIO or a positive number, got {value!r}")


def _errnos(value: Any) -> tuple[int, ...]:
    if value == "random":
        return RANDOM_ERRNOS
    if isinstance(value, list):
        if not value:
            raise RuleError("errno list must not be empty")
        if len(value) > 64:
            raise RuleError("errno list may hold at most 64 entries")
        return tuple(parse_errno(v) for v in value)
    return (parse_errno(value),)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(f"{name} must be a number of seconds, got {value!r}")
    if not 0 <= value <= MAX_DELAY_SECONDS:
        raise RuleError(f"{name} must be between 0 and {MAX_DELAY_SECONDS:g} seconds, got {value}")
    return float(value)


def _methods(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise RuleError(f"methods must be a list of method names, got {value!r}")
    unknown = sorted(set(value) - METHOD_SET)
    if unknown:
        raise RuleError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    return frozenset(value)


def new_rule_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True, slots=True)
class FaultRule:
    id: str
    action: str
    errnos: tuple[int, ...] = ()
    delay: float = 0.0
    jitter: float = 0.0
    methods: frozenset[str] = frozenset()  # empty: every method
    path: str = "**"
    percent: float = 100.0
    path_regex: re.Pattern[str] = field(default=compile_glob("**"), compare=False, repr=False)

    @classmethod
    def from_wire(cls, data: Any) -> FaultRule:
        if not isinstance(data, dict):
            raise RuleError(f"a rule must be a map, got {type(data).__name__}")
        unknown = sorted(str(k) for k in set(data) - _FIELDS)
        if unknown:
            raise RuleError(f"unknown rule field(s): {', '.join(unknown)}")

        rule_id = data.get("id") or new_rule_id()
        if not isinstance(rule_id, str) or not _ID.match(rule_id):
            raise RuleError(
                f"rule id must be 1-64 characters of letters, digits, '_', '.', ':', '-', "
                f"got {rule_id!r}"
            )
        action = data.get("action")
        if action not in ACTIONS:
            raise RuleError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")

        errnos: tuple[int, ...] = ()
        if action in ("errno", "mixed"):
            if "errno" not in data:
                raise RuleError(f"action {action} needs an errno")
            errnos = _errnos(data["errno"])
        elif "errno" in data:
            raise RuleError("errno only applies to the errno and mixed actions")

        delay = jitter = 0.0
        if action in ("latency", "mixed"):
            if "delay" not in data:
                raise RuleError(f"action {action} needs a delay")
            delay = _seconds("delay", data["delay"])
            jitter = _seconds("jitter", data.get("jitter", 0.0))
            if delay == 0 and jitter == 0:
                raise RuleError("a latency needs a delay or jitter above zero")
        elif "delay" in data or "jitter" in data:
            raise RuleError("delay and jitter only apply to the latency and mixed actions")

        methods = _methods(data.get("methods", []))
        path = data.get("path", "**")
        if not isinstance(path, str):
            raise RuleError(f"path must be a glob string, got {path!r}")
        try:
            regex = compile_glob(path)
        except GlobError as exc:
            raise RuleError(str(exc)) from None
        percent = data.get("percent", 100)
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise RuleError(f"percent must be a number from 0 to 100, got {percent!r}")
        if not 0 <= percent <= 100:
            raise RuleError(f"percent must be from 0 to 100, got {percent}")

        return cls(
            id=rule_id,
            action=action,
            errnos=errnos,
            delay=delay,
            jitter=jitter,
            methods=methods,
            path=path,
            percent=float(percent),
            path_regex=regex,
        )

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "action": self.action}
        if self.errnos:
            out["errno"] = [errno_mod.errorcode.get(e, e) for e in self.errnos]
        if self.action in ("latency", "mixed"):
            out["delay"] = self.delay
            out["jitter"] = self.jitter
        out["methods"] = sorted(self.methods)
        out["path"] = self.path
        out["percent"] = self.percent
        return out

    def applies_to(self, method: str) -> bool:
        return not self.methods or method in self.methods
