"""The sidecar command protocol: request and reply shapes.

A command is a msgpack map ``{"op": ..., ...}`` sent as a NATS request to a pod's
command subject or to the fleet subject. The reply is always a map with ``ok``;
on failure it carries ``error``, a sentence meant for the operator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import codec, labels
from .globs import GlobError, PathPattern, compile_glob
from .rules import (
    MAX_RULES,
    METHOD_SET,
    FaultRule,
    RuleError,
    is_rule_id,
    show,
    signal_number,
)

# Lazy mode's one-shot actions: they act on unsynced data, not on rules.
LAZY_OPS = ("report-unsynced", "lose-unsynced", "torn-write", "power-cut")
OPS = ("set", "recover", "methods", "injected", "status", "ping", *LAZY_OPS)
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
        raise CommandError(f"unknown field(s) for op {show(command['op'])}: {', '.join(unknown)}")


def parse_rules(command: dict[str, Any], now: float | None = None) -> list[FaultRule]:
    """The rules of a set command, checked. A rule's ``ttl`` counts from ``now``
    (wall-clock seconds; the receiving sidecar's clock, or the machine's if None)."""
    _only(command, {"rules"})
    raw = command.get("rules")
    if not isinstance(raw, list) or not raw:
        raise CommandError("set needs a non-empty list of rules")
    if len(raw) > MAX_RULES:
        raise CommandError(f"at most {MAX_RULES} rules per command")
    rules = []
    for index, item in enumerate(raw):
        try:
            rules.append(FaultRule.from_wire(item, now=now))
        except RuleError as exc:
            raise CommandError(f"rule {index}: {exc}") from None
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise CommandError("rule ids within one command must be unique")
    return rules


def parse_recover(command: dict[str, Any]) -> tuple[str, Any]:
    """Return ("all", None), ("id", ID), ("method", NAME) or ("ids", [ID, ...]).

    ``ids`` recovers several rules in one command (an experiment's rules, say);
    a sidecar holding only some of them recovers those and is not in error.
    """
    _only(command, {"id", "method", "all", "ids"})
    given = [k for k in ("id", "method", "all", "ids") if k in command]
    if len(given) != 1:
        raise CommandError("recover needs exactly one of id, ids, method or all")
    key = given[0]
    value = command[key]
    if key == "all":
        if value is not True:
            raise CommandError("recover all must be true")
        return "all", None
    if key == "ids":
        return "ids", _rule_ids(value)
    if not isinstance(value, str) or not value:
        raise CommandError(f"recover {key} must be a non-empty string")
    if key == "method" and value not in METHOD_SET:
        raise CommandError(f"unknown method {show(value)}")
    return key, value


def _rule_ids(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise CommandError("recover ids must be a non-empty list of rule ids")
    if len(value) > MAX_RULES:
        raise CommandError(f"recover ids may list at most {MAX_RULES} rule ids, got {len(value)}")
    for item in value:
        if not is_rule_id(item):
            raise CommandError(f"recover ids: {show(item)} is not a rule id")
    return list(dict.fromkeys(value))  # each once, in the order given


MAX_SEED_LENGTH = 256
MAX_ALIGN = 1024 * 1024
MAX_KEEP = 2**62
MAX_PERSIST = 4096  # write numbers one torn-write may name
# Directory-operation models a power cut may follow (see chaosfs.lazy.MetaJournal);
# a command without one gets the sidecar's (-lazy-metadata, journal by default).
METADATA_MODELS = ("journal", "strict")
_TEAR_FIELDS = {"seed", "keep", "persist", "whole_writes", "align"}
_LAZY_FIELDS = {
    "report-unsynced": {"path", "model"},
    "lose-unsynced": {"path", "metadata", "model"},
    "torn-write": {"path", "force", *_TEAR_FIELDS},
    "power-cut": {"path", "metadata", "model", "signal", "tear"},
}


@dataclass(frozen=True)
class LazyTear:
    """Which unsynced writes survive a torn write-back: a random cut (``seed``), the
    first ``keep`` bytes, or exactly the writes numbered in ``persist`` (from 1)."""

    seed: int | str | None = None
    keep: int | None = None
    persist: tuple[int, ...] | None = None
    whole_writes: bool = False
    align: int = 1


@dataclass(frozen=True)
class LazyAction:
    """One lazy-mode action, checked. Fields an op does not take hold their defaults.

    ``model``: None for the sidecar's own. ``tear``: for torn-write, and for a
    power-cut that tears before it loses the rest. ``force``: tear files a live
    process is writing (torn-write refuses otherwise)."""

    op: str
    path: str
    path_regex: PathPattern
    metadata: bool
    seed: int | str | None
    keep: int | None
    whole_writes: bool
    align: int
    signal: int
    model: str | None = None
    persist: tuple[int, ...] | None = None
    force: bool = False
    tear: LazyTear | None = None


def parse_lazy(command: dict[str, Any]) -> LazyAction:
    """Check a report-unsynced, lose-unsynced, torn-write or power-cut command."""
    op = command.get("op")
    if op not in LAZY_OPS:
        raise CommandError(
            f"{show(op)} is not a lazy-mode op; expected one of {', '.join(LAZY_OPS)}"
        )
    _only(command, _LAZY_FIELDS[op])
    path = command.get("path", "**")
    if not isinstance(path, str):
        raise CommandError(f"path must be a glob string, got {show(path)}")
    try:
        path_regex = compile_glob(path)
    except GlobError as exc:
        raise CommandError(str(exc)) from None
    metadata = command.get("metadata", False)
    force = command.get("force", False)
    for name, value in (("metadata", metadata), ("force", force)):
        if not isinstance(value, bool):
            raise CommandError(f"{name} must be true or false, got {show(value)}")
    model = command.get("model")
    if model is not None and model not in METADATA_MODELS:
        raise CommandError(f"model must be one of {', '.join(METADATA_MODELS)}, got {show(model)}")
    tear = None
    if op == "torn-write":
        tear = _tear(command, "torn-write")
    elif op == "power-cut" and command.get("tear") is not None:
        raw = command["tear"]
        if not isinstance(raw, dict):
            raise CommandError(f"tear must be a map of {', '.join(sorted(_TEAR_FIELDS))}")
        _only({"op": "power-cut tear", **raw}, _TEAR_FIELDS)
        tear = _tear(raw, "power-cut tear")
    return LazyAction(
        op=op,
        path=path,
        path_regex=path_regex,
        metadata=metadata,
        seed=tear.seed if tear else None,
        keep=tear.keep if tear else None,
        whole_writes=tear.whole_writes if tear else False,
        align=tear.align if tear else 1,
        signal=_signal_number(command.get("signal", "KILL")),
        model=model,
        persist=tear.persist if tear else None,
        force=force,
        tear=tear,
    )


def _tear(fields: dict[str, Any], what: str) -> LazyTear:
    seed, keep, persist = fields.get("seed"), fields.get("keep"), fields.get("persist")
    if sum(v is not None for v in (seed, keep, persist)) != 1:
        raise CommandError(
            f"{what} needs exactly one of seed (a random cut), keep (bytes that survive) "
            "or persist (the numbers of the writes that survive)"
        )
    if seed is not None:
        seed = _seed(seed)
    if keep is not None and (
        isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= MAX_KEEP
    ):
        raise CommandError(f"keep must be a number of bytes from 0 to {MAX_KEEP}, got {show(keep)}")
    if persist is not None:
        if (
            not isinstance(persist, list)
            or not 1 <= len(persist) <= MAX_PERSIST
            or not all(
                isinstance(i, int) and not isinstance(i, bool) and 1 <= i < 2**31 for i in persist
            )
        ):
            raise CommandError(
                f"persist must be a list of 1 to {MAX_PERSIST} write numbers (from 1, as "
                f"report-unsynced lists them), got {show(persist)}"
            )
        persist = tuple(sorted(set(persist)))
    whole_writes = fields.get("whole_writes", False)
    if not isinstance(whole_writes, bool):
        raise CommandError(f"whole_writes must be true or false, got {show(whole_writes)}")
    align = fields.get("align", 1)
    if (
        isinstance(align, bool)
        or not isinstance(align, int)
        or not 1 <= align <= MAX_ALIGN
        or align & (align - 1)
    ):
        raise CommandError(
            f"align must be a power of two from 1 to {MAX_ALIGN} (1 MiB), got {show(align)}"
        )
    return LazyTear(seed, keep, persist, whole_writes, align)


def _seed(value: Any) -> int | str:
    if isinstance(value, str):
        if not 1 <= len(value) <= MAX_SEED_LENGTH:
            raise CommandError(
                f"a seed string must be 1-{MAX_SEED_LENGTH} characters, got {len(value)}"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**64:
        raise CommandError(f"seed must be a whole number or a string, got {show(value)}")
    return value


def _signal_number(value: Any) -> int:
    """KILL, SIGKILL, kill, 9 or "9": the signal's number on this system."""
    try:
        return signal_number(value)
    except RuleError as exc:
        raise CommandError(str(exc)) from None


MAX_TARGET_NAMES = 100_000
_TARGET_FIELDS = frozenset({"namespaces", "pods", "selector", "names", "name_hashes"})
HASH_BYTES = 8
# "namespace/name": Kubernetes caps each of the two names at 253 characters.
MAX_POD_REF_LENGTH = 507


class Target:
    """Which sidecars a fleet command is for. Empty fields match everything;
    the fields given must all match (namespaces, selector, pods and names)."""

    def __init__(self, raw: Any) -> None:
        raw = raw or {}
        if not isinstance(raw, dict):
            raise CommandError("target must be a map")
        unknown = sorted(str(k) for k in set(raw) - _TARGET_FIELDS)
        if unknown:
            raise CommandError(f"unknown target field(s): {', '.join(unknown)}")
        namespaces = raw.get("namespaces") or []
        if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
            raise CommandError("target namespaces must be a list of strings")
        self.selector = _target_selector(raw.get("selector"))
        pods = raw.get("pods") or "*"
        if not isinstance(pods, str):
            raise CommandError("target pods must be a glob string")
        try:
            self._pods = compile_glob(pods.replace("/", "\x00"))
        except GlobError as exc:
            raise CommandError(str(exc)) from None
        self._any_pod = pods == "*"  # the default: no pattern to match
        self.namespaces = frozenset(namespaces)
        self.names = _pod_refs(raw.get("names"))
        self.name_hashes = _pod_ref_hashes(raw.get("name_hashes"))

    def matches(self, namespace: str, name: str, labels: dict[str, str]) -> bool:
        if self.names is not None and f"{namespace}/{name}" not in self.names:
            return False
        if self.name_hashes is not None and not _holds(
            self.name_hashes, pod_ref_hash(f"{namespace}/{name}")
        ):
            return False
        if self.namespaces and namespace not in self.namespaces:
            return False
        if not self.selector.matches(labels):
            return False
        return self._any_pod or bool(self._pods.match(name))


def _target_selector(value: Any) -> labels.LabelSelector:
    """``target.selector``: a Kubernetes label selector, as ``kubectl get -l`` takes it
    (``app=db,tier!=cache,zone in (a,b),!legacy``), or, as older chaosctl sent it, a
    map of labels that must all be equal."""
    if not value:
        return labels.LabelSelector()
    if isinstance(value, dict):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise CommandError("target selector must map label names to values")
        value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    if not isinstance(value, str):
        raise CommandError("target selector must be a label selector string")
    try:
        return labels.parse(value)
    except labels.SelectorError as exc:
        raise CommandError(f"target {exc}") from None


def _pod_refs(value: Any) -> frozenset[str] | None:
    """``target.names``: exactly these pods ("namespace/name"); None when not given.

    An empty list is refused rather than read as "every pod": a controller whose
    selection came out empty must not reach the whole fleet by accident.
    """
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise CommandError('target names must be a non-empty list of "namespace/name" pod refs')
    if len(value) > MAX_TARGET_NAMES:
        raise CommandError(
            f"target names may list at most {MAX_TARGET_NAMES} pods, got {len(value)}"
        )
    # Only membership is ever asked of this set, so a malformed ref can only fail to
    # match; what must be refused is a value that cannot be hashed or compared as a
    # name. Checked in C (one frozenset, one type scan): a fleet command naming a
    # thousand pods reaches a thousand sidecars, each of which pays this.
    try:
        refs = frozenset(value)
    except TypeError:
        raise CommandError('target names must be "namespace/name" strings') from None
    if not all(type(ref) is str for ref in refs):
        raise CommandError('target names must be "namespace/name" strings')
    if max(map(len, refs)) > MAX_POD_REF_LENGTH:
        raise CommandError(f"target names: a pod ref is over {MAX_POD_REF_LENGTH} characters")
    return refs


def pod_ref_hash(ref: str) -> bytes:
    """A pod ref's 64-bit BLAKE2b digest: how ``target.name_hashes`` names a pod.

    A list of a thousand pod refs is ~19 KB that every sidecar of the fleet must
    receive and decode; their sorted digests are 8 KB of one bytes value, and each
    sidecar looks itself up by binary search. Two refs share a digest with a chance
    of about n / 2**64 per sidecar (5e-12 with 100,000 pods named): as exact as a list.
    """
    return hashlib.blake2b(ref.encode(errors="surrogateescape"), digest_size=HASH_BYTES).digest()


def name_hashes(refs: list[str] | set[str]) -> bytes:
    """``target.name_hashes`` for these pods: their digests, sorted and concatenated."""
    return b"".join(sorted({pod_ref_hash(r) for r in refs}))


def _pod_ref_hashes(value: Any) -> bytes | None:
    """``target.name_hashes``: None when not given. Like ``names``, never empty: an
    empty selection must not read as "every pod"."""
    if value is None:
        return None
    if not isinstance(value, bytes) or not value or len(value) % HASH_BYTES:
        raise CommandError(
            f"target name_hashes must be {HASH_BYTES}-byte pod digests, sorted and concatenated"
        )
    if len(value) > MAX_TARGET_NAMES * HASH_BYTES:
        raise CommandError(f"target name_hashes may name at most {MAX_TARGET_NAMES} pods")
    return value


def _holds(digests: bytes, digest: bytes) -> bool:
    """Binary search of sorted 8-byte digests (big-endian order is byte order). An
    unsorted value can only make a pod miss, never match one it does not name."""
    lo, hi = 0, len(digests) // HASH_BYTES
    while lo < hi:
        mid = (lo + hi) // 2
        here = digests[mid * HASH_BYTES : (mid + 1) * HASH_BYTES]
        if here == digest:
            return True
        if here < digest:
            lo = mid + 1
        else:
            hi = mid
    return False


def fit(reply: Mapping[str, Any], limit: int) -> bytes:
    """The reply encoded within ``limit`` bytes (the bus's payload limit), never silence.

    A status with a thousand long rules can outgrow what NATS carries; it is then cut to
    the rules that fit, with ``rules_omitted`` saying how many were left out. A reply
    that still cannot fit becomes an error saying so. Any reply shape of
    ``chaosbus.wire`` is taken.
    """
    reply = dict(reply)  # a shallow copy: the codec takes a plain dict
    data = codec.encode(reply)
    if len(data) <= limit:
        return data
    rules = reply.get("rules")
    if isinstance(rules, list) and rules:
        lo, hi = 0, len(rules)  # the most rules that fit, by bisection: O(log n) encodes
        while lo < hi:
            mid = (lo + hi + 1) // 2
            trial = {**reply, "rules": rules[:mid], "rules_omitted": len(rules) - mid}
            if len(codec.encode(trial)) <= limit:
                lo = mid
            else:
                hi = mid - 1
        data = codec.encode({**reply, "rules": rules[:lo], "rules_omitted": len(rules) - lo})
        if len(data) <= limit:
            return data
    size = len(codec.encode(reply))
    return codec.encode(
        error(
            str(reply.get("pod")),
            f"the reply ({size} bytes) exceeds the bus's payload limit of {limit} bytes",
        )
    )
