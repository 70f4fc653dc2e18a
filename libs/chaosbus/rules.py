"""The fault-rule model: what a rule may say, validated strictly.

A rule arrives as a msgpack map from the bus. ``FaultRule.from_wire`` is the only
way to build one from outside data, and it either returns a complete, immutable
rule or raises ``RuleError`` naming the field at fault. Nothing half-valid gets
into a sidecar's rule set.
"""

from __future__ import annotations

import errno as errno_mod
import functools
import math
import re
import reprlib
import signal as signal_mod
import time
import uuid
from collections.abc import Callable
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

ACTIONS = ("errno", "latency", "mixed", "attr", "mistake", "short", "enospc", "power-cut")
# A power-cut rule (lazy mode only) cuts the power when its operation arrives: before
# the operation runs (it never happens) or after it completed (it is the last one
# that does). LazyFS calls this a crash fault with a timing and an occurrence.
CUT_TIMINGS = ("before", "after")
# What a power-cut rule passes on to the cut itself, as ``fault power-cut`` takes it
# (chaosbus.protocol checks the values): the directory-operation model, and a tear
# of the unsynced writes before the rest is lost.
CUT_MODELS = ("journal", "strict")
TEAR_FIELDS = ("seed", "keep", "persist", "whole_writes", "align")

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
        "when",
        "signal",
        "metadata",
        "model",
        "tear",
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
    # power-cut: when the cut lands around the operation, the signal the app's
    # processes get, and whether directory operations no fsync covered are lost too.
    when: str = ""
    signal: int = 0
    metadata: bool = False
    model: str | None = None  # None: the sidecar's own
    tear: tuple[tuple[str, Any], ...] = ()  # the tear's fields, lists as tuples
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
        draft = _Draft(data, {}, now)
        for step in _STEPS:
            step(draft)
        return cls(**draft.fields)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "action": self.action}
        _action_wire(self, out)
        out["methods"] = sorted(self.methods)
        if self.regex is not None:
            out["path_regex"] = self.regex
        else:
            out["path"] = self.path
        out["percent"] = self.percent
        _trigger_wire(self, out)
        return out

    def cut_command(self) -> dict[str, Any]:
        """A power-cut rule's cut, as the lazy-mode ``power-cut`` command says it."""
        command: dict[str, Any] = {"op": "power-cut", "signal": self.signal}
        command["metadata"] = self.metadata
        if self.model is not None:
            command["model"] = self.model
        if self.tear:
            command["tear"] = _tear_out(self.tear)
        return command

    def applies_to(self, method: str) -> bool:
        return not self.methods or method in self.methods

    @property
    def caller_filtered(self) -> bool:
        return (
            self.caller_pid is not None
            or self.caller_uid is not None
            or self.caller_comm is not None
        )


def _action_wire(rule: FaultRule, out: dict[str, Any]) -> None:
    """A rule's action fields, for the wire (keys in the order they have always had)."""
    if rule.errnos:
        out["errno"] = [errno_mod.errorcode.get(e, e) for e in rule.errnos]
    if rule.action in ("latency", "mixed"):
        out["delay"] = rule.delay
        out["jitter"] = rule.jitter
    if rule.attrs:
        out["attr"] = {k: _attr_out(k, v) for k, v in rule.attrs}
    if rule.action == "mistake":
        out["filling"] = rule.filling
        out["max_occurrences"] = rule.max_occurrences
        out["max_length"] = rule.max_length
    if rule.action == "short" and rule.short_bytes is not None:
        out["short_bytes"] = rule.short_bytes
    if rule.action == "enospc":
        out["quota"] = rule.quota
    if rule.action == "power-cut":
        _cut_wire(rule, out)


def _cut_wire(rule: FaultRule, out: dict[str, Any]) -> None:
    out["when"] = rule.when
    out["signal"] = rule.signal
    if rule.metadata:
        out["metadata"] = True
    if rule.model is not None:
        out["model"] = rule.model
    if rule.tear:
        out["tear"] = _tear_out(rule.tear)


def _tear_out(tear: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in tear}


def _trigger_wire(rule: FaultRule, out: dict[str, Any]) -> None:
    """A rule's triggers and filters, for the wire: only those it has."""
    for name in ("count", "expires_at", "caller_pid", "caller_uid", "caller_comm", "seed"):
        value = getattr(rule, name)
        if value is not None:
            out[name] = value
    if rule.after:
        out["after"] = rule.after
    if rule.dry_run:
        out["dry_run"] = True


def _attr_out(name: str, value: int) -> Any:
    if name == "kind":
        return next(k for k, v in KINDS.items() if v == value)
    if name in ("atime", "mtime", "ctime"):
        return value / 1_000_000_000
    return value


def _tear(value: Any) -> tuple[tuple[str, Any], ...]:
    """The shape of a tear; its values are the power-cut command's to check."""
    if not isinstance(value, dict) or not value:
        raise RuleError(f"tear must be a map of {', '.join(TEAR_FIELDS)}, got {show(value)}")
    unknown = sorted(str(k) for k in set(value) - set(TEAR_FIELDS))
    if unknown:
        raise RuleError(
            f"unknown tear field(s) {', '.join(unknown)}; known: {', '.join(TEAR_FIELDS)}"
        )
    out = []
    for name, raw in sorted(value.items()):
        if isinstance(raw, list):
            if len(raw) > 4096 or not all(isinstance(i, int) for i in raw):
                raise RuleError(f"tear {name} must be a list of at most 4096 numbers")
            raw = tuple(raw)
        elif raw is not None and not isinstance(raw, bool | int | str):
            raise RuleError(
                f"tear {name} must be a number, a string or true/false, got {show(raw)}"
            )
        out.append((name, raw))
    return tuple(out)


def signal_number(value: Any) -> int:
    """KILL, SIGKILL, kill, 9 or "9": the signal's number on this system."""
    text = value.strip() if isinstance(value, str) else ""
    if text.isascii() and text.isdigit() and len(text) <= 3:
        value = int(text)
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if 1 <= value <= 64:
            return value
    elif isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        member = signal_mod.Signals.__members__.get(name)
        if member is not None:
            return int(member)
    raise RuleError(
        f"signal must be a name like KILL or TERM or a number from 1 to 64, got {show(value)}"
    )


# --- reading a rule off the wire, one field at a time ---------------------------------
#
# ``FaultRule.from_wire`` runs the steps in ``_STEPS`` in order, each checking one
# field (or two that exclude each other) and writing what it found into the draft.
# The order is fixed, so a rule with several faults is always refused for the same
# one: first the id and action, then whatever only some actions take, then the
# fields every rule has.


@dataclass(slots=True)
class _Draft:
    """A rule being read: the map as sent, the fields checked so far, and the time a
    ttl counts from (None: the time it is read)."""

    wire: dict[str, Any]
    fields: dict[str, Any]
    now: float | None


_Step = Callable[[_Draft], None]


def _optional(name: str, check: Callable[[str, Any], Any]) -> _Step:
    """A step for a field that may be left out or null, keeping the rule's default."""

    def step(draft: _Draft) -> None:
        value = draft.wire.get(name)
        if value is not None:
            draft.fields[name] = check(name, value)

    return step


def _id_field(draft: _Draft) -> None:
    rule_id = draft.wire.get("id") or new_rule_id()
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        raise RuleError(
            f"rule id must be 1-64 characters of letters, digits, '_', '.', ':', '-', "
            f"got {show(rule_id)}"
        )
    draft.fields["id"] = rule_id


def _action_field(draft: _Draft) -> None:
    action = draft.wire.get("action")
    if action not in ACTIONS:
        raise RuleError(f"action must be one of {', '.join(ACTIONS)}, got {show(action)}")
    draft.fields["action"] = action


# Fields only some actions take, with those actions; a rule of any other action that
# names one is refused, whatever its value.
_ACTION_ONLY: dict[str, tuple[str, ...]] = {
    "errno": ("errno", "mixed", "enospc"),
    "delay": ("latency", "mixed"),
    "jitter": ("latency", "mixed"),
    "attr": ("attr",),
    "filling": ("mistake",),
    "max_occurrences": ("mistake",),
    "max_length": ("mistake",),
    "short_bytes": ("short",),
    "quota": ("enospc",),
    "when": ("power-cut",),
    "signal": ("power-cut",),
    "metadata": ("power-cut",),
    "model": ("power-cut",),
    "tear": ("power-cut",),
}


def _no_other_actions_fields(draft: _Draft) -> None:
    action = draft.fields["action"]
    for name, actions in _ACTION_ONLY.items():
        if name in draft.wire and action not in actions:
            raise RuleError(f"{name} only applies to the {' and '.join(actions)} action(s)")


def _errno_field(draft: _Draft) -> None:
    if "errno" not in draft.wire:
        raise RuleError(f"action {draft.fields['action']} needs an errno")
    draft.fields["errnos"] = _errnos(draft.wire["errno"])


def _latency_fields(draft: _Draft) -> None:
    if "delay" not in draft.wire:
        raise RuleError(f"action {draft.fields['action']} needs a delay")
    delay = _seconds("delay", draft.wire["delay"])
    jitter = _seconds("jitter", draft.wire.get("jitter", 0.0))
    if delay == 0 and jitter == 0:
        raise RuleError("a latency needs a delay or jitter above zero")
    draft.fields["delay"] = delay
    draft.fields["jitter"] = jitter


def _attr_field(draft: _Draft) -> None:
    draft.fields["attrs"] = _attrs(draft.wire.get("attr"))


def _mistake_fields(draft: _Draft) -> None:
    filling = draft.wire.get("filling", "zero")
    if filling not in FILLINGS:
        raise RuleError(f"filling must be zero or random, got {show(filling)}")
    draft.fields["filling"] = filling
    draft.fields["max_occurrences"] = _count(
        "max_occurrences", draft.wire.get("max_occurrences", 1), minimum=1, maximum=1 << 20
    )
    draft.fields["max_length"] = _count(
        "max_length", draft.wire.get("max_length", 1), minimum=1, maximum=1 << 30
    )


def _quota_fields(draft: _Draft) -> None:
    if "quota" not in draft.wire:
        raise RuleError("action enospc needs a quota in bytes")
    draft.fields["quota"] = _count("quota", draft.wire["quota"])
    errnos = _errnos(draft.wire.get("errno", "ENOSPC"))
    if errnos not in ((errno_mod.ENOSPC,), (errno_mod.EDQUOT,)):
        raise RuleError("an enospc rule fails with ENOSPC or EDQUOT only")
    draft.fields["errnos"] = errnos


def _power_cut_fields(draft: _Draft) -> None:
    wire, fields = draft.wire, draft.fields
    when = wire.get("when", "before")
    if when not in CUT_TIMINGS:
        raise RuleError(f"when must be before or after, got {show(when)}")
    fields["when"] = when
    fields["signal"] = signal_number(wire.get("signal", "KILL"))
    metadata = wire.get("metadata", False)
    if not isinstance(metadata, bool):
        raise RuleError(f"metadata must be true or false, got {show(metadata)}")
    fields["metadata"] = metadata
    model = wire.get("model")
    if model is not None and model not in CUT_MODELS:
        raise RuleError(f"model must be one of {', '.join(CUT_MODELS)}, got {show(model)}")
    fields["model"] = model
    tear = wire.get("tear")
    if tear is not None:
        fields["tear"] = _tear(tear)


# What each action needs or may take beyond the fields every rule has.
_ACTION_STEPS: dict[str, tuple[_Step, ...]] = {
    "errno": (_errno_field,),
    "latency": (_latency_fields,),
    "mixed": (_errno_field, _latency_fields),
    "attr": (_attr_field,),
    "mistake": (_mistake_fields,),
    "short": (_optional("short_bytes", _count),),
    "enospc": (_quota_fields,),
    "power-cut": (_power_cut_fields,),
}
if _ACTION_STEPS.keys() != set(ACTIONS):  # a new action must say what it takes
    raise AssertionError(f"actions without their fields: {set(ACTIONS) ^ _ACTION_STEPS.keys()}")


def _action_fields(draft: _Draft) -> None:
    for step in _ACTION_STEPS[draft.fields["action"]]:
        step(draft)


def _methods_field(draft: _Draft) -> None:
    """The methods, narrowed to those the action can change (its natural set if none)."""
    action = draft.fields["action"]
    methods = _methods(draft.wire.get("methods", []))
    allowed = _ACTION_METHODS.get(action)
    if allowed is not None:
        methods = methods or allowed[1]
        wrong = sorted(methods - allowed[0])
        if wrong:
            raise RuleError(
                f"action {action} cannot apply to {', '.join(wrong)}; "
                f"it applies to {', '.join(sorted(allowed[0]))}"
            )
    if action == "attr" and "kind" in dict(draft.fields["attrs"]) and "lookup" not in methods:
        raise RuleError(
            "attr kind needs the lookup method: the kernel learns a file's kind "
            "only when it looks the name up"
        )
    draft.fields["methods"] = methods


def _path_fields(draft: _Draft) -> None:
    """A rule's paths: a glob (``path``) or a Chaos Mesh v0.9 style regex, not both."""
    wire, fields = draft.wire, draft.fields
    regex = wire.get("path_regex")
    if regex is not None:
        if wire.get("path") is not None:
            raise RuleError("give either path (a glob) or path_regex, not both")
        if not isinstance(regex, str):
            raise RuleError(f"path_regex must be a regular expression string, got {show(regex)}")
        fields["path_regex"] = _compiled(compile_path_regex, regex)
        fields["regex"] = regex
        fields["path"] = ""
        return
    path = wire.get("path", "**")
    if not isinstance(path, str):
        raise RuleError(f"path must be a glob string, got {show(path)}")
    fields["path_regex"] = _compiled(compile_glob, path)
    fields["path"] = path


def _compiled(compile_: Callable[[str], PathPattern], text: str) -> PathPattern:
    try:
        return compile_(text)
    except GlobError as exc:
        raise RuleError(str(exc)) from None


def _percent_field(draft: _Draft) -> None:
    percent = finite("percent", draft.wire.get("percent", 100), "a number from 0 to 100")
    if not 0 <= percent <= 100:
        raise RuleError(f"percent must be from 0 to 100, got {percent}")
    draft.fields["percent"] = float(percent)


def _expiry_fields(draft: _Draft) -> None:
    """When the rule stops: ``ttl`` seconds after it is read, or at ``expires_at``."""
    ttl, expires_at = draft.wire.get("ttl"), draft.wire.get("expires_at")
    if ttl is not None and expires_at is not None:
        raise RuleError("give either ttl or expires_at, not both")
    if ttl is not None:
        now = time.time() if draft.now is None else draft.now
        draft.fields["expires_at"] = now + _ttl(ttl)
    elif expires_at is not None:
        draft.fields["expires_at"] = _expires_at(expires_at)


def _ttl(value: Any) -> float:
    ttl = finite("ttl", value, "a positive number of seconds")
    if ttl <= 0:
        raise RuleError(f"ttl must be a positive number of seconds, got {value!r}")
    if ttl > MAX_TTL_SECONDS:
        raise RuleError(f"ttl may be at most {MAX_TTL_SECONDS:g} seconds")
    return ttl


def _expires_at(value: Any) -> float:
    expires = finite("expires_at", value, "seconds since the epoch")
    if expires <= 0:
        raise RuleError(f"expires_at must be seconds since the epoch, got {value!r}")
    return expires


def _caller_comm(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _COMM.match(value):
        raise RuleError(f"{name} must be a process name of 1-15 characters, got {show(value)}")
    return value


def _dry_run_field(draft: _Draft) -> None:
    dry_run = draft.wire.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise RuleError(f"dry_run must be true or false, got {show(dry_run)}")
    draft.fields["dry_run"] = dry_run


_STEPS: tuple[_Step, ...] = (
    _id_field,
    _action_field,
    _no_other_actions_fields,
    _action_fields,
    _methods_field,
    _path_fields,
    _percent_field,
    _optional("count", functools.partial(_count, minimum=1)),
    _optional("after", _count),
    _expiry_fields,
    _optional("caller_pid", functools.partial(_count, maximum=2**32 - 1)),
    _optional("caller_uid", functools.partial(_count, maximum=2**32 - 1)),
    _optional("caller_comm", _caller_comm),
    _optional("seed", functools.partial(_count, maximum=2**63 - 1)),
    _dry_run_field,
)
