"""The fault-rule model: what a rule may say, validated strictly.

A rule arrives as a msgpack map from the bus. ``FaultRule.from_wire`` is the only
way to build one from outside data, and it either returns a complete, immutable
rule or raises ``RuleError`` naming the field at fault. Nothing half-valid gets
into a sidecar's rule set.
"""

from __future__ import annotations

import errno as errno_mod
import math
import re
import reprlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .globs import GlobError, PathPattern, compile_glob, compile_path_regex

# Chaos Mesh v0.9's Injure service knew these 31 method names; chaos experiments written
# for it keep working unchanged.
SEED_METHODS = (
    "open",
    "read",
    "write",
    "mkdir",
    "rmdir",
    "opendir",
    "fsync",
    "flush",
    "release",
    "truncate",
    "getattr",
    "chown",
    "chmod",
    "utimens",
    "allocate",
    "getlk",
    "setlk",
    "setlkw",
    "statfs",
    "readlink",
    "symlink",
    "create",
    "access",
    "link",
    "mknod",
    "rename",
    "unlink",
    "getxattr",
    "listxattr",
    "removexattr",
    "setxattr",
)
# Operations chaosfs also sees and lets rules target.
EXTRA_METHODS = ("lookup", "readdir", "releasedir", "fsyncdir")
METHODS = SEED_METHODS + EXTRA_METHODS
METHOD_SET = frozenset(METHODS)

ACTIONS = ("errno", "latency", "mixed", "attr", "mistake", "short", "enospc")

# Actions that change data or space only make sense on some operations; a rule
# naming any other method is refused. The second set is what an empty list means.
DATA_METHODS = frozenset({"read", "write"})
_ACTION_METHODS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "attr": (frozenset({"getattr", "lookup"}), frozenset({"getattr", "lookup"})),
    "mistake": (DATA_METHODS, DATA_METHODS),
    "short": (DATA_METHODS, DATA_METHODS),
    "enospc": (frozenset({"write", "truncate", "allocate"}), frozenset({"write", "truncate"})),
}

# Attributes an attr rule may override, and the kinds of file it may pretend to be.
ATTR_FIELDS = (
    "size",
    "mode",
    "uid",
    "gid",
    "nlink",
    "atime",
    "mtime",
    "ctime",
    "ino",
    "kind",
    "blocks",
    "rdev",
)
KINDS = {
    "file": 0o100000,
    "dir": 0o040000,
    "symlink": 0o120000,
    "fifo": 0o010000,
    "socket": 0o140000,
    "chardev": 0o020000,
    "blockdev": 0o060000,
}
FILLINGS = ("zero", "random")

# What Chaos Mesh v0.9's "random" errno picks from: failures a sick disk really returns.
RANDOM_ERRNOS = (
    errno_mod.EIO,
    errno_mod.ENOSPC,
    errno_mod.EROFS,
    errno_mod.EACCES,
    errno_mod.EPERM,
    errno_mod.ENOENT,
    errno_mod.EAGAIN,
)

MAX_DELAY_SECONDS = 3600.0
MAX_TTL_SECONDS = 7 * 24 * 3600.0
MAX_RULES = 1024
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
_COMM = re.compile(r"[^/\x00]{1,15}\Z")  # the kernel keeps 15 bytes of a process name
_FIELDS = frozenset(
    {
        "id",
        "action",
        "errno",
        "delay",
        "jitter",
        "methods",
        "path",
        "path_regex",
        "percent",
        "attr",
        "filling",
        "max_occurrences",
        "max_length",
        "short_bytes",
        "quota",
        "count",
        "after",
        "ttl",
        "expires_at",
        "caller_pid",
        "caller_uid",
        "caller_comm",
        "seed",
        "dry_run",
    }
)


class RuleError(ValueError):
    """A rule (or a command carrying rules) is invalid; the message says why."""


# Values from the network are quoted in error messages through this: short, one
# line, and safe for a value nested a thousand levels deep (repr() would raise
# RecursionError there, turning a refusal into an internal error).
_SHOW = reprlib.Repr()
_SHOW.maxlevel = 3
_SHOW.maxstring = 80
_SHOW.maxother = 80


def show(value: Any) -> str:
    """A value quoted for an error message."""
    return _SHOW.repr(value)


def finite(name: str, value: Any, what: str = "a number") -> float:
    """A real number that is neither NaN nor infinite.

    NaN slips through range checks (every comparison with it is false), and an
    expiry of NaN or infinity makes the sidecar's expiry timer spin.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleError(f"{name} must be {what}, got {show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RuleError(f"{name} must be a finite number, got {value}")
    return float(value)


def parse_errno(value: Any) -> int:
    """An errno given by name ("EIO", "eio") or by number (5)."""
    if isinstance(value, bool):
        raise RuleError(f"errno must be a name like EIO or a positive number, got {show(value)}")
    if isinstance(value, int):
        if value <= 0 or value not in errno_mod.errorcode:
            raise RuleError(f"errno {value} is not a known positive errno number")
        return value
    if isinstance(value, str):
        name = value.strip().upper()
        number = getattr(errno_mod, name, None) if name.startswith("E") else None
        if not isinstance(number, int) or number <= 0:
            raise RuleError(f"unknown errno name {show(value)}")
        return number
    raise RuleError(f"errno must be a name like EIO or a positive number, got {show(value)}")


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
    value = finite(name, value, "a number of seconds")
    if not 0 <= value <= MAX_DELAY_SECONDS:
        raise RuleError(f"{name} must be between 0 and {MAX_DELAY_SECONDS:g} seconds, got {value}")
    return float(value)


def _methods(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise RuleError(f"methods must be a list of method names, got {show(value)}")
    unknown = sorted(set(value) - METHOD_SET)
    if unknown:
        raise RuleError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    return frozenset(value)


def _count(name: str, value: Any, *, minimum: int = 0, maximum: int = 2**62) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(f"{name} must be a whole number, got {show(value)}")
    if not minimum <= value <= maximum:
        raise RuleError(f"{name} must be from {minimum} to {maximum}, got {value}")
    return value


def _time_ns(name: str, value: Any) -> int:
    value = finite(f"attr {name}", value, "seconds since the epoch")
    if not 0 <= value < 2**33:
        raise RuleError(f"attr {name} is out of range: {value}")
    return int(value * 1_000_000_000)


def _attrs(value: Any) -> tuple[tuple[str, int], ...]:
    """Attribute overrides, normalised to st_* integers (times in nanoseconds)."""
    if not isinstance(value, dict) or not value:
        raise RuleError("attr must be a non-empty map of attribute names to values")
    unknown = sorted(str(k) for k in set(value) - set(ATTR_FIELDS))
    if unknown:
        raise RuleError(
            f"unknown attr field(s) {', '.join(unknown)}; known: {', '.join(ATTR_FIELDS)}"
        )
    out: list[tuple[str, int]] = []
    for name, raw in sorted(value.items()):
        if name == "kind":
            if not isinstance(raw, str) or raw not in KINDS:
                raise RuleError(f"attr kind must be one of {', '.join(KINDS)}, got {show(raw)}")
            out.append((name, KINDS[raw]))
        elif name in ("atime", "mtime", "ctime"):
            out.append((name, _time_ns(name, raw)))
        elif name == "mode":
            out.append((name, _count("attr mode", raw, maximum=0o7777)))
        elif name in ("uid", "gid"):
            out.append((name, _count(f"attr {name}", raw, maximum=2**32 - 2)))
        elif name == "ino":
            out.append((name, _count("attr ino", raw, minimum=1)))
        else:
            out.append((name, _count(f"attr {name}", raw)))
    return tuple(out)


def is_rule_id(value: Any) -> bool:
    return isinstance(value, str) and _ID.match(value) is not None


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
    path: str = "**"  # the glob; "" when the rule has a path regex instead
    regex: str | None = None  # the wire's path_regex, as given
    percent: float = 100.0
    # attr: st_* overrides; mistake: how to corrupt; short: bytes to move (None: random).
    attrs: tuple[tuple[str, int], ...] = ()
    filling: str = "zero"
    max_occurrences: int = 1
    max_length: int = 1
    short_bytes: int | None = None
    quota: int = 0
    # Triggers: fire at most `count` times, after letting `after` matches pass,
    # and never after `expires_at` (wall-clock seconds).
    count: int | None = None
    after: int = 0
    expires_at: float | None = None
    caller_pid: int | None = None
    caller_uid: int | None = None
    caller_comm: str | None = None
    seed: int | None = None
    dry_run: bool = False
    # What matches paths, compiled from path or regex: ``path_regex.match(p)`` is
    # not None iff the rule covers p (relative to the mount root, no leading slash).
    path_regex: PathPattern = field(default=compile_glob("**"), compare=False, repr=False)

    @classmethod
    def from_wire(cls, data: Any, *, now: float | None = None) -> FaultRule:
        """Validate a rule from the bus; ``now`` turns a relative ttl into an expiry."""
        if not isinstance(data, dict):
            raise RuleError(f"a rule must be a map, got {type(data).__name__}")
        unknown = sorted(str(k) for k in set(data) - _FIELDS)
        if unknown:
            raise RuleError(f"unknown rule field(s): {', '.join(unknown)}")

        rule_id = data.get("id") or new_rule_id()
        if not isinstance(rule_id, str) or not _ID.match(rule_id):
            raise RuleError(
                f"rule id must be 1-64 characters of letters, digits, '_', '.', ':', '-', "
                f"got {show(rule_id)}"
            )
        action = data.get("action")
        if action not in ACTIONS:
            raise RuleError(f"action must be one of {', '.join(ACTIONS)}, got {show(action)}")
        fields: dict[str, Any] = {"id": rule_id, "action": action}
        _only_for(data, action, "errno", ("errno", "mixed", "enospc"))
        _only_for(data, action, "delay", ("latency", "mixed"))
        _only_for(data, action, "jitter", ("latency", "mixed"))
        _only_for(data, action, "attr", ("attr",))
        for name in ("filling", "max_occurrences", "max_length"):
            _only_for(data, action, name, ("mistake",))
        _only_for(data, action, "short_bytes", ("short",))
        _only_for(data, action, "quota", ("enospc",))

        if action in ("errno", "mixed"):
            if "errno" not in data:
                raise RuleError(f"action {action} needs an errno")
            fields["errnos"] = _errnos(data["errno"])
        if action in ("latency", "mixed"):
            if "delay" not in data:
                raise RuleError(f"action {action} needs a delay")
            fields["delay"] = _seconds("delay", data["delay"])
            fields["jitter"] = _seconds("jitter", data.get("jitter", 0.0))
            if fields["delay"] == 0 and fields["jitter"] == 0:
                raise RuleError("a latency needs a delay or jitter above zero")
        if action == "attr":
            fields["attrs"] = _attrs(data.get("attr"))
        if action == "mistake":
            filling = data.get("filling", "zero")
            if filling not in FILLINGS:
                raise RuleError(f"filling must be zero or random, got {show(filling)}")
            fields["filling"] = filling
            fields["max_occurrences"] = _count(
                "max_occurrences", data.get("max_occurrences", 1), minimum=1, maximum=1 << 20
            )
            fields["max_length"] = _count(
                "max_length", data.get("max_length", 1), minimum=1, maximum=1 << 30
            )
        if action == "short" and data.get("short_bytes") is not None:
            fields["short_bytes"] = _count("short_bytes", data["short_bytes"])
        if action == "enospc":
            if "quota" not in data:
                raise RuleError("action enospc needs a quota in bytes")
            fields["quota"] = _count("quota", data["quota"])
            errnos = _errnos(data.get("errno", "ENOSPC"))
            if errnos not in ((errno_mod.ENOSPC,), (errno_mod.EDQUOT,)):
                raise RuleError("an enospc rule fails with ENOSPC or EDQUOT only")
            fields["errnos"] = errnos

        methods = _methods(data.get("methods", []))
        allowed = _ACTION_METHODS.get(action)
        if allowed is not None:
            if not methods:
                methods = allowed[1]
            wrong = sorted(methods - allowed[0])
            if wrong:
                raise RuleError(
                    f"action {action} cannot apply to {', '.join(wrong)}; "
                    f"it applies to {', '.join(sorted(allowed[0]))}"
                )
        if action == "attr" and "kind" in dict(fields["attrs"]) and "lookup" not in methods:
            raise RuleError(
                "attr kind needs the lookup method: the kernel learns a file's kind "
                "only when it looks the name up"
            )
        fields["methods"] = methods

        _paths(data, fields)
        percent = finite("percent", data.get("percent", 100), "a number from 0 to 100")
        if not 0 <= percent <= 100:
            raise RuleError(f"percent must be from 0 to 100, got {percent}")
        fields["percent"] = float(percent)

        _triggers(data, fields, now)
        return cls(**fields)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "action": self.action}
        if self.errnos:
            out["errno"] = [errno_mod.errorcode.get(e, e) for e in self.errnos]
        if self.action in ("latency", "mixed"):
            out["delay"] = self.delay
            out["jitter"] = self.jitter
        if self.attrs:
            out["attr"] = {k: _attr_out(k, v) for k, v in self.attrs}
        if self.action == "mistake":
            out["filling"] = self.filling
            out["max_occurrences"] = self.max_occurrences
            out["max_length"] = self.max_length
        if self.action == "short" and self.short_bytes is not None:
            out["short_bytes"] = self.short_bytes
        if self.action == "enospc":
            out["quota"] = self.quota
        out["methods"] = sorted(self.methods)
        if self.regex is not None:
            out["path_regex"] = self.regex
        else:
            out["path"] = self.path
        out["percent"] = self.percent
        for name in ("count", "expires_at", "caller_pid", "caller_uid", "caller_comm", "seed"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.after:
            out["after"] = self.after
        if self.dry_run:
            out["dry_run"] = True
        return out

    def applies_to(self, method: str) -> bool:
        return not self.methods or method in self.methods

    @property
    def caller_filtered(self) -> bool:
        return (
            self.caller_pid is not None
            or self.caller_uid is not None
            or self.caller_comm is not None
        )


def _paths(data: dict[str, Any], fields: dict[str, Any]) -> None:
    """A rule's paths: a glob (``path``) or a Chaos Mesh v0.9 style regex, not both."""
    if data.get("path_regex") is not None:
        if data.get("path") is not None:
            raise RuleError("give either path (a glob) or path_regex, not both")
        regex = data["path_regex"]
        if not isinstance(regex, str):
            raise RuleError(f"path_regex must be a regular expression string, got {show(regex)}")
        try:
            fields["path_regex"] = compile_path_regex(regex)
        except GlobError as exc:
            raise RuleError(str(exc)) from None
        fields["regex"] = regex
        fields["path"] = ""
        return
    path = data.get("path", "**")
    if not isinstance(path, str):
        raise RuleError(f"path must be a glob string, got {show(path)}")
    try:
        fields["path_regex"] = compile_glob(path)
    except GlobError as exc:
        raise RuleError(str(exc)) from None
    fields["path"] = path


def _only_for(data: dict[str, Any], action: str, name: str, actions: tuple[str, ...]) -> None:
    if name in data and action not in actions:
        raise RuleError(f"{name} only applies to the {' and '.join(actions)} action(s)")


def _attr_out(name: str, value: int) -> Any:
    if name == "kind":
        return next(k for k, v in KINDS.items() if v == value)
    if name in ("atime", "mtime", "ctime"):
        return value / 1_000_000_000
    return value


def _triggers(data: dict[str, Any], fields: dict[str, Any], now: float | None) -> None:
    if data.get("count") is not None:
        fields["count"] = _count("count", data["count"], minimum=1)
    if data.get("after") is not None:
        fields["after"] = _count("after", data["after"])
    if data.get("ttl") is not None and data.get("expires_at") is not None:
        raise RuleError("give either ttl or expires_at, not both")
    if data.get("ttl") is not None:
        ttl = finite("ttl", data["ttl"], "a positive number of seconds")
        if ttl <= 0:
            raise RuleError(f"ttl must be a positive number of seconds, got {data['ttl']!r}")
        if ttl > MAX_TTL_SECONDS:
            raise RuleError(f"ttl may be at most {MAX_TTL_SECONDS:g} seconds")
        fields["expires_at"] = (time.time() if now is None else now) + ttl
    elif data.get("expires_at") is not None:
        expires = finite("expires_at", data["expires_at"], "seconds since the epoch")
        if expires <= 0:
            raise RuleError(
                f"expires_at must be seconds since the epoch, got {data['expires_at']!r}"
            )
        fields["expires_at"] = expires
    for name in ("caller_pid", "caller_uid"):
        if data.get(name) is not None:
            fields[name] = _count(name, data[name], maximum=2**32 - 1)
    if data.get("caller_comm") is not None:
        comm = data["caller_comm"]
        if not isinstance(comm, str) or not _COMM.match(comm):
            raise RuleError(
                f"caller_comm must be a process name of 1-15 characters, got {show(comm)}"
            )
        fields["caller_comm"] = comm
    if data.get("seed") is not None:
        fields["seed"] = _count("seed", data["seed"], maximum=2**63 - 1)
    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise RuleError(f"dry_run must be true or false, got {show(dry_run)}")
    fields["dry_run"] = dry_run
