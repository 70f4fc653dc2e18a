"""Where experiments and their progress live: JetStream KV.

Three buckets, so that each has one writer and one reason to change:

- ``EXPERIMENTS``: what users asked for. ``chaosctl apply`` (or, in a cluster, the
  controller's Kubernetes source) writes one entry per experiment: the manifest as
  given, who applied it, and the two switches a user flips later, ``paused`` and
  ``deleting``. The controller only ever removes an entry, once a deletion is done.
- ``EXPERIMENT_STATUS``: what the controller did: phase, run number, the pods it
  selected and each pod's outcome, when the run started and ends, the next run.
  Written only by the leading controller, always as a compare-and-set on the
  revision it read, so a controller that lost its lease cannot overwrite the work
  of the one that took over. Because the selected pods and the end time are here,
  a controller killed mid-experiment and restarted carries on with the same pods
  and recovers them on time.
- ``CONTROLLER_LEASE``: one key, ``leader``. The bucket's TTL makes the server
  expire the lease when its holder stops renewing it, so no clock but the
  server's decides who leads.

Entries come from the network and from other roles, so ``from_wire`` checks every
field and raises ``ValueError`` naming it; readers skip (and report) bad entries
instead of failing on them.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from .. import codec
from ..kv import contents, open_bucket
from ..subjects import decode_token, encode_token

SPECS = "EXPERIMENTS"
STATUS = "EXPERIMENT_STATUS"
LEASE = "CONTROLLER_LEASE"
SCHEMA_VERSION = 1
MAX_ENTRY_BYTES = 1024 * 1024  # a manifest is refused above this long before it gets here
SOURCES = ("chaosctl", "kubernetes")
PHASES = (
    "Pending",
    "Injecting",
    "Running",
    "Waiting",
    "Paused",
    "Finished",
    "Failed",
    "Deleting",
)
OUTCOMES = ("injected", "missing", "error", "recovered", "gone")


def key(namespace: str, name: str) -> str:
    return f"{encode_token(namespace)}.{encode_token(name)}"


def ref_of(kv_key: str) -> str:
    """``ns/name`` for a bucket key."""
    namespace, _, name = kv_key.partition(".")
    return f"{decode_token(namespace)}/{decode_token(name)}"


def key_of(ref: str) -> str:
    namespace, _, name = ref.partition("/")
    return key(namespace, name)


def _str(data: dict[str, Any], name: str, default: str = "") -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _bool(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {type(value).__name__}")
    return value


def _time(data: dict[str, Any], name: str, *, optional: bool = False) -> float | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    return float(value)


def _check_version(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("entry must be a map")
    if data.get("v") != SCHEMA_VERSION:
        raise ValueError(f"unsupported schema version {data.get('v')!r}")
    return data


@dataclass(frozen=True)
class SpecEntry:
    """One experiment as a user asked for it."""

    manifest: dict[str, Any]
    source: str
    actor: str
    time: float
    paused: bool = False
    deleting: bool = False
    uid: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "manifest": self.manifest,
            "source": self.source,
            "actor": self.actor,
            "time": self.time,
            "paused": self.paused,
            "deleting": self.deleting,
            "uid": self.uid,
        }

    @classmethod
    def from_wire(cls, raw: Any) -> SpecEntry:
        data = _check_version(raw)
        manifest = data.get("manifest")
        if not isinstance(manifest, dict):
            raise ValueError("manifest must be a map")
        source = _str(data, "source")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        return cls(
            manifest=manifest,
            source=source,
            actor=_str(data, "actor"),
            time=_time(data, "time") or 0.0,
            paused=_bool(data, "paused"),
            deleting=_bool(data, "deleting"),
            uid=_str(data, "uid"),
        )


@dataclass
class PodRecord:
    outcome: str
    time: float
    error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "time": self.time, "error": self.error}

    @classmethod
    def from_wire(cls, raw: Any) -> PodRecord:
        if not isinstance(raw, dict):
            raise ValueError("a pod record must be a map")
        outcome = _str(raw, "outcome")
        if outcome not in OUTCOMES:
            raise ValueError(f"pod outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        error = raw.get("error")
        if error is not None and not isinstance(error, str):
            raise ValueError("pod error must be a string")
        return cls(outcome, _time(raw, "time") or 0.0, error)


@dataclass
class Condition:
    type: str
    status: str
    reason: str
    message: str
    time: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "time": self.time,
        }

    @classmethod
    def from_wire(cls, raw: Any) -> Condition:
        if not isinstance(raw, dict):
            raise ValueError("a condition must be a map")
        return cls(
            _str(raw, "type"),
            _str(raw, "status"),
            _str(raw, "reason"),
            _str(raw, "message"),
            _time(raw, "time") or 0.0,
        )


@dataclass
class Status:
    """What the controller did with one experiment."""

    phase: str = "Pending"
    run: int = 0
    selected: list[str] = field(default_factory=list)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    started_at: float | None = None
    ends_at: float | None = None
    next_run: float | None = None
    message: str = ""
    conditions: list[Condition] = field(default_factory=list)
    uid: str = ""
    kind: str = ""
    paused_at: float | None = None
    rule_ids: list[str] = field(default_factory=list)  # in force on the selected pods

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "phase": self.phase,
            "run": self.run,
            "selected": list(self.selected),
            "pods": {pod: r.to_wire() for pod, r in sorted(self.pods.items())},
            "started_at": self.started_at,
            "ends_at": self.ends_at,
            "next_run": self.next_run,
            "message": self.message,
            "conditions": [c.to_wire() for c in self.conditions],
            "uid": self.uid,
            "kind": self.kind,
            "paused_at": self.paused_at,
            "rule_ids": list(self.rule_ids),
        }

    @classmethod
    def from_wire(cls, raw: Any) -> Status:
        data = _check_version(raw)
        phase = _str(data, "phase")
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        run = data.get("run", 0)
        if isinstance(run, bool) or not isinstance(run, int) or run < 0:
            raise ValueError(f"run must be a whole number, got {run!r}")
        selected = data.get("selected", [])
        if not isinstance(selected, list) or not all(isinstance(p, str) for p in selected):
            raise ValueError("selected must be a list of pod names")
        pods = data.get("pods", {})
        if not isinstance(pods, dict) or not all(isinstance(p, str) for p in pods):
            raise ValueError("pods must map pod names to records")
        conditions = data.get("conditions", [])
        if not isinstance(conditions, list):
            raise ValueError("conditions must be a list")
        rule_ids = data.get("rule_ids", [])
        if not isinstance(rule_ids, list) or not all(isinstance(r, str) for r in rule_ids):
            raise ValueError("rule_ids must be a list of rule ids")
        return cls(
            phase=phase,
            run=run,
            selected=list(selected),
            pods={pod: PodRecord.from_wire(r) for pod, r in pods.items()},
            started_at=_time(data, "started_at", optional=True),
            ends_at=_time(data, "ends_at", optional=True),
            next_run=_time(data, "next_run", optional=True),
            message=_str(data, "message"),
            conditions=[Condition.from_wire(c) for c in conditions],
            uid=_str(data, "uid"),
            kind=_str(data, "kind"),
            paused_at=_time(data, "paused_at", optional=True),
            rule_ids=list(rule_ids),
        )

    @property
    def acked(self) -> list[str]:
        return sorted(p for p, r in self.pods.items() if r.outcome == "injected")

    @property
    def missing(self) -> list[str]:
        return sorted(p for p, r in self.pods.items() if r.outcome in ("missing", "error"))


class StaleWrite(RuntimeError):
    """The entry changed since it was read: someone else (another controller) wrote it."""


def _decode(value: bytes) -> dict[str, Any]:
    return codec.decode(value, limit=MAX_ENTRY_BYTES)


class ExperimentStore:
    """Typed access to the experiment buckets for chaosctl, the controller and its
    Kubernetes source."""

    def __init__(self, specs: KeyValue, status: KeyValue) -> None:
        self.specs_kv = specs
        self.status_kv = status

    @classmethod
    async def open(cls, nc: Client, *, create: bool = True) -> ExperimentStore:
        """Bind to both buckets (creating them when allowed); BucketNotFoundError otherwise."""
        return cls(
            await open_bucket(nc, SPECS, create=create, max_value_size=MAX_ENTRY_BYTES),
            await open_bucket(nc, STATUS, create=create, max_value_size=MAX_ENTRY_BYTES),
        )

    # --- specs -------------------------------------------------------------------------

    async def specs(self) -> tuple[dict[str, SpecEntry], dict[str, str]]:
        """(good entries by ref, {ref: why unreadable})."""
        good: dict[str, SpecEntry] = {}
        bad: dict[str, str] = {}
        for kv_key, value in (await contents(self.specs_kv)).items():
            ref = ref_of(kv_key)
            try:
                good[ref] = SpecEntry.from_wire(_decode(value))
            except ValueError as exc:
                bad[ref] = str(exc)
        return good, bad

    async def get_spec(self, ref: str) -> tuple[SpecEntry, int] | None:
        try:
            entry = await self.specs_kv.get(key_of(ref))
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return SpecEntry.from_wire(_decode(entry.value)), entry.revision or 0

    async def put_spec(self, ref: str, entry: SpecEntry) -> int:
        return await self.specs_kv.put(key_of(ref), codec.encode(entry.to_wire()))

    async def update_spec(self, ref: str, entry: SpecEntry, revision: int) -> int:
        try:
            return await self.specs_kv.update(
                key_of(ref), codec.encode(entry.to_wire()), last=revision
            )
        except Exception as exc:
            raise StaleWrite(f"{ref} changed meanwhile: {exc}") from None

    async def delete_spec(self, ref: str) -> None:
        await self.specs_kv.delete(key_of(ref))

    async def watch_specs(self) -> AsyncIterator[tuple[str, SpecEntry | None, str | None]]:
        """Every entry now, then every change: (ref, entry or None if deleted, error).

        An unreadable entry comes as (ref, None, reason) so the caller can report it.
        The initial values are not told apart from later changes: the controller
        reconciles each one as it arrives, so the end-of-initial-values marker (which
        nats-py can deliver early) is never relied on.
        """
        watcher = await self.specs_kv.watch(">")
        try:
            async for update in watcher:
                if update is None:  # nats-py's end-of-initial-values marker
                    continue
                ref = ref_of(update.key)
                if update.operation in (KV_DEL, KV_PURGE) or update.value is None:
                    yield ref, None, None
                    continue
                try:
                    yield ref, SpecEntry.from_wire(_decode(update.value)), None
                except ValueError as exc:
                    yield ref, None, str(exc)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped

    # --- status ------------------------------------------------------------------------

    async def statuses(self) -> tuple[dict[str, Status], dict[str, str]]:
        good: dict[str, Status] = {}
        bad: dict[str, str] = {}
        for kv_key, value in (await contents(self.status_kv)).items():
            ref = ref_of(kv_key)
            try:
                good[ref] = Status.from_wire(_decode(value))
            except ValueError as exc:
                bad[ref] = str(exc)
        return good, bad

    async def get_status(self, ref: str) -> tuple[Status, int] | None:
        """The status and its revision; None if there is none. Raises ValueError if unreadable."""
        try:
            entry = await self.status_kv.get(key_of(ref))
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return Status.from_wire(_decode(entry.value)), entry.revision or 0

    async def write_status(self, ref: str, status: Status, revision: int) -> int:
        """Compare-and-set: ``revision`` 0 creates. Raises StaleWrite if it changed."""
        payload = codec.encode(status.to_wire())
        try:
            if revision == 0:
                return await self.status_kv.create(key_of(ref), payload)
            return await self.status_kv.update(key_of(ref), payload, last=revision)
        except Exception as exc:
            raise StaleWrite(f"status of {ref} changed meanwhile: {exc}") from None

    async def delete_status(self, ref: str) -> None:
        await self.status_kv.delete(key_of(ref))

    async def watch_status(self) -> AsyncIterator[tuple[str, Status | None]]:
        """Every status now, then every change (None: deleted). Unreadable ones are skipped."""
        watcher = await self.status_kv.watch(">")
        try:
            async for update in watcher:
                if update is None:
                    continue
                ref = ref_of(update.key)
                if update.operation in (KV_DEL, KV_PURGE) or update.value is None:
                    yield ref, None
                    continue
                try:
                    yield ref, Status.from_wire(_decode(update.value))
                except ValueError:
                    continue
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped


async def lease_bucket(nc: Client, ttl: float) -> KeyValue:
    """The lease bucket; its TTL is the lease's length (set when the bucket is made)."""
    return await open_bucket(nc, LEASE, ttl=ttl)
