"""The experiment engine: from what users asked for (``EXPERIMENTS``) to faults on pods.

Each experiment gets a worker task that reconciles it whenever its spec changes,
a selected pod's sidecar comes up, or its next deadline (end of the run, next
scheduled run) arrives, then sleeps until the next of those. A run is:

1. select the pods (Chaos Mesh's modes, from the registry or the Kubernetes API);
2. write the selection to ``EXPERIMENT_STATUS`` (phase Injecting) before anything
   is sent, so a controller killed from here on resumes with the same pods;
3. record the rules in desired state (``DESIRED``, one ``fleet.<rule id>`` entry
   targeting exactly those pods), so a sidecar that restarts mid-run gets them back;
4. one fleet command, ``set`` with ``target.names`` = the selected pods, answered
   by each of them; every rule carries ``expires_at`` = the end of the run, so the
   sidecars drop it on time even if no controller is left to recover them;
5. phase Running with each pod's outcome, then at the end ``recover`` the same
   way, and wait for the next scheduled run or finish.

Audit events about one pod and one run have ids derived from the experiment's
uid, the run and the pod, and JetStream drops a duplicate id: a controller that
repeats a step after a crash never writes a second ``experiment.injected``.

Chaos Mesh v0.9 selected pods once per run, when the run started, and left pods
created later alone until the next run. chaosbus goes further for ``mode: all``:
a pod whose sidecar comes up during a run and matches the selector is faulted
too, for the rest of the run, because "all" then still means all. Other modes
keep their selection for the whole run, as in Chaos Mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from chaosbus import codec, desired
from chaosbus.audit import AuditLog
from chaosbus.experiments.cron import Schedule
from chaosbus.experiments.errors import SpecError
from chaosbus.experiments.selection import choose
from chaosbus.experiments.spec import Experiment, parse_manifest
from chaosbus.experiments.store import (
    Condition,
    ExperimentStore,
    PodRecord,
    SpecEntry,
    StaleWrite,
    Status,
)
from chaosbus.fleet import FleetResult, broadcast
from chaosbus.kv import open_bucket
from chaosbus.protocol import name_hashes
from chaosbus.subjects import event_filter

from . import metrics
from .targets import Candidates, PodSource, registered

ACTIVE = ("Injecting", "Running")
RETRY_AFTER = 1.0  # seconds before a reconcile that failed (bus away) is tried again


def rule_id(ref: str, index: int) -> str:
    """Stable across controller restarts, unique per experiment, valid as a rule id."""
    return f"exp-{hashlib.sha1(ref.encode()).hexdigest()[:12]}-{index}"


def _event_id(uid: str, run: int, kind: str, pod: str = "") -> str:
    return hashlib.sha1(f"{uid}\x00{run}\x00{kind}\x00{pod}".encode()).hexdigest()


@dataclass
class Tracked:
    """One experiment as the engine sees it."""

    ref: str
    entry: SpecEntry | None = None
    experiment: Experiment | None = None
    error: str | None = None
    status: Status | None = None
    revision: int = 0
    loaded: bool = False
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    new_pods: set[str] = field(default_factory=set)
    changed: bool = False  # the manifest changed since the engine last saw it
    task: asyncio.Task[None] | None = None


class Engine:
    def __init__(
        self,
        nc: Client,
        store: ExperimentStore,
        audit: AuditLog,
        log: Any,
        pods: PodSource,
        *,
        timeout: float = 3.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.nc = nc
        self.store = store
        self.audit = audit
        self.log = log
        self.pods = pods
        self.timeout = timeout
        self.clock = clock
        self.rng = rng or random.Random()
        self.tracked: dict[str, Tracked] = {}
        self._desired: Any = None

    # --- the service ---------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: follow the experiments and the sidecars coming up."""
        self._desired = await open_bucket(self.nc, desired.BUCKET)
        ready = await self.nc.subscribe(event_filter("ready"), cb=self._on_ready)
        try:
            async for ref, entry, error in self.store.watch_specs():
                self._on_spec(ref, entry, error)
        finally:
            with contextlib.suppress(Exception):
                await ready.unsubscribe()
            for t in list(self.tracked.values()):
                if t.task is not None:
                    t.task.cancel()
            tasks = [t.task for t in self.tracked.values() if t.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_spec(self, ref: str, entry: SpecEntry | None, error: str | None) -> None:
        t = self.tracked.get(ref)
        if t is None:
            if entry is None and error is None:
                return  # the removal of an experiment this engine already finished
            t = self.tracked[ref] = Tracked(ref)
        if error is not None:
            self.log.warning("experiment_entry_unreadable", experiment=ref, error=error)
            self._audit("experiment.rejected", ref, reason=f"unreadable entry: {error}")
            return  # keep running what was there: an unreadable write changes nothing
        if t.entry is not None and entry is not None and t.entry.manifest != entry.manifest:
            t.changed = True
        t.entry = entry
        t.experiment, t.error = None, None
        if entry is not None:
            try:
                t.experiment = parse_manifest(entry.manifest)
            except SpecError as exc:
                t.error = str(exc)
        if t.task is None:
            t.task = asyncio.create_task(self._worker(t), name=f"experiment {ref}")
        t.kick.set()

    async def _on_ready(self, msg: Msg) -> None:
        """A sidecar came up: a running ``mode: all`` experiment it matches takes it in."""
        try:
            event = codec.decode(msg.data)
            namespace, name = event.get("namespace"), event.get("name")
            labels = event.get("labels") or {}
            if not isinstance(namespace, str) or not isinstance(name, str):
                return
            if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
            ):
                return  # a malformed announcement: ignored, the registry is read at each run
        except codec.DecodeError:
            return
        pod = f"{namespace}/{name}"
        for t in self.tracked.values():
            exp, st = t.experiment, t.status
            if exp is None or st is None or st.phase != "Running" or exp.mode != "all":
                continue
            if pod in st.selected:
                continue  # a restart: desired state brings its rules back by itself
            if exp.selector.needs_kubernetes() or exp.selector.matches_sidecar(
                namespace, name, labels
            ):
                t.new_pods.add(pod)
                t.kick.set()

    async def _worker(self, t: Tracked) -> None:
        """Reconcile one experiment whenever kicked or due; supervised: a failure is
        logged and retried, never the silent end of the experiment."""
        while True:
            t.kick.clear()
            try:
                wake_at = await self._reconcile(t)
            except asyncio.CancelledError:
                raise
            except StaleWrite as exc:
                # Another controller wrote this status: read it again and re-decide.
                self.log.warning("status_changed_meanwhile", experiment=t.ref, error=str(exc))
                t.loaded = False
                wake_at = self.clock()
            except Exception as exc:
                metrics.RECONCILE_ERRORS.inc()
                self.log.exception("reconcile_failed", experiment=t.ref, error=str(exc))
                wake_at = self.clock() + RETRY_AFTER
            if self.tracked.get(t.ref) is not t:
                return  # deleted
            timeout = None if wake_at is None else max(0.0, wake_at - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(t.kick.wait(), timeout)

    # --- one experiment ---------------------------------------------------------------

    async def _reconcile(self, t: Tracked) -> float | None:
        """Bring one experiment one step closer to what its spec says; return when to look again."""
        if not t.loaded:
            found = await self.store.get_status(t.ref)
            t.status, t.revision = found if found else (None, 0)
            t.loaded = True
        entry, exp, st = t.entry, t.experiment, t.status
        now = self.clock()

        if entry is None or entry.deleting:
            await self._delete(t)
            return None
        if st is not None and st.uid != entry.uid:
            # A new experiment under an old name: the old one's faults go first.
            if st.phase in ACTIVE:
                await self._recover(t, st, reason="replaced")
            await self.store.delete_status(t.ref)
            t.status, t.revision, st = None, 0, None
        if exp is None:
            await self._fail(t, t.error or "invalid experiment")
            return None
        if exp.selector.needs_kubernetes() and not self.pods.kubernetes:
            fields = ", ".join(exp.selector.kubernetes_fields())
            await self._fail(
                t,
                f"spec.selector: {fields} need the Kubernetes API (run chaos-controller "
                "with --kubernetes)",
            )
            return None
        if t.changed and st is not None:
            # Edited: the old rules come off, and a run with the new spec begins
            # (or, if paused, begins on resume).
            t.changed = False
            if st.phase in ACTIVE:
                await self._recover(t, st, reason="spec changed")
            if st.phase != "Paused":
                st.phase = "Pending"
        if st is None:
            st = Status(phase="Pending", uid=entry.uid, kind=exp.kind)
            await self._write(t, st)
            for warning in exp.warnings:
                self.log.warning("experiment_warning", experiment=t.ref, warning=warning)

        if entry.paused:
            if st.phase != "Paused":
                if st.phase in ACTIVE:
                    await self._recover(t, st, reason="paused")
                st.phase, st.paused_at = "Paused", now
                st.message = "paused"
                _condition(st, "Paused", "True", "Paused", "paused by the user", now)
                await self._write(t, st)
                self._audit("experiment.paused", t.ref, entry=entry, run=st.run)
            return None
        if st.phase == "Paused":
            _condition(st, "Paused", "False", "Resumed", "resumed by the user", now)
            self._audit("experiment.resumed", t.ref, entry=entry, run=st.run)
            st.paused_at = None
            if st.run == 0:  # paused before its first run: that run starts now
                return await self._start_run(t, exp, st, now)
            if (st.ends_at is not None and st.ends_at > now) or exp.duration is None:
                return await self._start_run(t, exp, st, now, ends_at=st.ends_at)
            st.phase = "Waiting" if exp.schedule else "Finished"
            if exp.schedule:
                st.next_run = Schedule.parse(exp.schedule).next_after(now)
            await self._write(t, st)

        if st.phase == "Pending" or (st.phase == "Failed" and _invalid(st)):
            return await self._start_run(t, exp, st, now)
        if st.phase == "Injecting":
            return await self._inject(t, exp, st)  # a controller died mid-injection
        if st.phase == "Running":
            if st.ends_at is not None and now >= st.ends_at:
                await self._recover(t, st, reason="duration")
                return await self._after_run(t, exp, st, now)
            if t.new_pods:
                await self._inject_new(t, exp, st)
            return st.ends_at
        if st.phase == "Waiting":
            if st.next_run is not None and now >= st.next_run:
                return await self._start_run(t, exp, st, now)
            return st.next_run
        return None  # Finished, Failed: nothing more to do

    async def _start_run(
        self, t: Tracked, exp: Experiment, st: Status, now: float, ends_at: float | None = None
    ) -> float | None:
        began = time.monotonic()
        candidates = await self.pods.candidates(exp.selector)
        selected = self._select(exp, candidates) if candidates.pods else []
        self.log.info(
            "run_selected",
            experiment=t.ref,
            run=st.run + 1,
            candidates=len(candidates.pods),
            selected=len(selected),
            ms=round((time.monotonic() - began) * 1e3, 1),
        )
        st.run += 1
        st.started_at = now
        st.ends_at = (
            ends_at
            if ends_at is not None
            else (now + exp.duration if exp.duration is not None else None)
        )
        st.next_run = None
        if exp.schedule:
            st.next_run = _next_tick(Schedule.parse(exp.schedule), now, st.ends_at)
        if not candidates.pods:
            st.selected, st.pods, st.rule_ids = [], {}, []
            reason = "the selector matches no pod with a chaosfs sidecar"
            _condition(st, "Selected", "False", "NoPods", reason, now)
            self._audit("experiment.failed", t.ref, entry=t.entry, run=st.run, reason=reason)
            return await self._after_run(t, exp, st, now, failed=reason)
        st.selected = selected
        st.pods = {}
        st.rule_ids = [rule_id(t.ref, i) for i in range(len(exp.rules))]
        st.phase, st.message = "Injecting", f"run {st.run}: injecting {len(selected)} pod(s)"
        _condition(st, "Valid", "True", "Valid", "the spec is valid", now)
        _condition(st, "Selected", "True", "Selected", f"{len(selected)} pod(s) selected", now)
        await self._write(t, st)
        self._audit(
            "experiment.started",
            t.ref,
            entry=t.entry,
            run=st.run,
            selected=selected,
            mode=exp.mode,
            value=exp.value,
            ends_at=st.ends_at,
            event_id=_event_id(st.uid, st.run, "started"),
        )
        return await self._inject(t, exp, st, candidates)

    def _select(self, exp: Experiment, c: Candidates) -> list[str]:
        if exp.mode == "all":
            return sorted(c.pods)
        # Modes that pick some pods pick among those whose sidecar answers.
        pool = sorted(c.alive) or sorted(c.pods)
        return sorted(choose(exp.mode, exp.value, pool, self.rng))

    def _rules(self, exp: Experiment, st: Status) -> list[dict[str, Any]]:
        rules = []
        for index, wire in enumerate(exp.rules):
            rule = {**wire, "id": st.rule_ids[index]}
            if st.ends_at is not None:
                rule["expires_at"] = st.ends_at  # ends even if no controller is left
            rules.append(rule)
        return rules

    async def _inject(
        self, t: Tracked, exp: Experiment, st: Status, candidates: Candidates | None = None
    ) -> float | None:
        now = self.clock()
        if st.ends_at is not None and st.ends_at <= now:
            st.phase = "Running"  # nothing left of this run: straight to recovery
            return now
        if candidates is None:
            candidates = await self.pods.candidates(exp.selector)
        pods = st.selected
        began = time.monotonic()
        result = await self._send_set(t, exp, st, pods, candidates)
        sent = time.monotonic()
        for step in exp.steps:
            await self._step(t, st, step, pods, candidates)
        self._record(st, result, "injected", now)
        st.phase = "Running"
        acked = len(st.acked)
        st.message = f"run {st.run}: {acked} of {len(pods)} pod(s) injected"
        _condition(
            st,
            "AllInjected",
            "True" if acked == len(pods) else "False",
            "Injected" if acked == len(pods) else "PodsMissing",
            st.message,
            now,
        )
        await self._write(t, st)
        self._audit_pods("experiment.injected", t, st, pods)
        self.log.info(
            "run_injected",
            experiment=t.ref,
            run=st.run,
            pods=len(pods),
            acked=acked,
            send_ms=round((sent - began) * 1e3, 1),
            total_ms=round((time.monotonic() - began) * 1e3, 1),
        )
        metrics.INJECTIONS.labels("acked").inc(acked)
        metrics.INJECTIONS.labels("missing").inc(len(pods) - acked)
        return st.ends_at

    async def _inject_new(self, t: Tracked, exp: Experiment, st: Status) -> None:
        """Pods that came up during a ``mode: all`` run and match: fault them too."""
        candidates = await self.pods.candidates(exp.selector)
        new = sorted((t.new_pods & set(candidates.pods)) - set(st.selected))
        t.new_pods.clear()
        if not new:
            return
        st.selected = sorted({*st.selected, *new})
        await self._write(t, st)  # selection first, as for a run's start
        result = await self._send_set(t, exp, st, new, candidates, desired_for=st.selected)
        self._record(st, result, "injected", self.clock())
        st.message = f"run {st.run}: {len(st.acked)} of {len(st.selected)} pod(s) injected"
        await self._write(t, st)
        self._audit_pods("experiment.injected", t, st, new)

    async def _send_set(
        self,
        t: Tracked,
        exp: Experiment,
        st: Status,
        pods: list[str],
        candidates: Candidates,
        desired_for: list[str] | None = None,
    ) -> FleetResult:
        rules = self._rules(exp, st)
        actor = self._actor(t)
        names = desired_for if desired_for is not None else pods
        for rule in rules:  # desired state first: a restarted sidecar finds its rules
            for key, part in _desired_parts(rule["id"], names):
                entry = desired.Entry.of(rule, actor, _target(part))
                await self._desired.put(key, codec.encode(entry.to_wire()))
        if not pods:  # random-max-percent may pick none; an empty list must not go out
            return FleetResult()
        command = {"op": "set", "rules": rules, "target": _target(pods), "actor": actor}
        alive = candidates.alive & set(pods)
        return await broadcast(
            self.nc, command, alive, timeout=self.timeout, lost=set(pods) - alive
        )

    async def _step(
        self, t: Tracked, st: Status, step: dict[str, Any], pods: list[str], c: Candidates
    ) -> None:
        """One lazy-mode action (report-unsynced, lose-unsynced, torn-write, power-cut)."""
        if not pods:
            return
        command = {**step, "target": _target(pods), "actor": self._actor(t)}
        alive = c.alive & set(pods)
        result = await broadcast(
            self.nc, command, alive, timeout=max(self.timeout, 10.0), lost=set(pods) - alive
        )
        self._audit(
            "experiment.step",
            t.ref,
            entry=t.entry,
            run=st.run,
            op=step.get("op"),
            acked=sorted(result.acked),
            missing=result.missing,
            errors=result.errors,
            event_id=_event_id(st.uid, st.run, f"step:{step.get('op')}"),
        )

    async def _recover(self, t: Tracked, st: Status, *, reason: str) -> None:
        """Take the run's rules off its pods: desired state first, then one command."""
        now = self.clock()
        for rid in st.rule_ids:
            for key, _ in _desired_parts(rid, st.selected):
                with contextlib.suppress(Exception):
                    await self._desired.delete(key)
        pods = st.selected
        result = FleetResult()
        if pods and st.rule_ids:
            c = await self._alive(pods)
            command = {
                "op": "recover",
                "ids": list(st.rule_ids),
                "target": _target(pods),
                "actor": self._actor(t),
            }
            result = await broadcast(self.nc, command, c, timeout=self.timeout, lost=set(pods) - c)
        for pod in pods:
            if pod in result.acked:
                st.pods[pod] = PodRecord("recovered", now)
            else:
                # No answer: the pod or its sidecar is gone, and its rules carry the
                # run's end as their expiry, so nothing outlives the run anyway.
                error = result.errors.get(pod, "no answer; its rules expire at the run's end")
                st.pods[pod] = PodRecord("gone", now, error)
        st.phase = "Running"  # until the caller decides what comes next
        st.message = f"run {st.run}: recovered ({reason})"
        _condition(st, "AllRecovered", "True", "Recovered", st.message, now)
        await self._write(t, st)
        self._audit_pods("experiment.recovered", t, st, pods, reason=reason)

    async def _after_run(
        self, t: Tracked, exp: Experiment, st: Status, now: float, failed: str | None = None
    ) -> float | None:
        if exp.schedule:
            st.phase = "Waiting"
            if st.next_run is None or st.next_run <= now:
                st.next_run = Schedule.parse(exp.schedule).next_after(now)
            st.message = failed or f"run {st.run} done; next run scheduled"
        else:
            st.phase = "Failed" if failed else "Finished"
            st.message = failed or f"run {st.run} done"
            st.next_run = None
        await self._write(t, st)
        return st.next_run

    async def _fail(self, t: Tracked, reason: str) -> None:
        """Record the experiment as Failed (recovering a run in force first), once per reason."""
        st = t.status
        if st is None:
            st = Status(uid=t.entry.uid if t.entry else "")
        elif st.phase in ACTIVE:
            await self._recover(t, st, reason="invalid spec")
        if st.phase == "Failed" and st.message == reason:
            return
        st.phase, st.message = "Failed", reason
        _condition(st, "Valid", "False", "Invalid", reason, self.clock())
        await self._write(t, st)
        self._audit("experiment.failed", t.ref, entry=t.entry, reason=reason)

    async def _delete(self, t: Tracked) -> None:
        """Recover every pod, then remove the experiment and its status."""
        st = t.status
        if st is not None and st.phase in ACTIVE:
            await self._recover(t, st, reason="deleted")
        if st is not None or t.entry is not None:
            self._audit(
                "experiment.deleted",
                t.ref,
                entry=t.entry,
                run=st.run if st else 0,
                recovered=sorted(st.selected) if st else [],
            )
        if st is not None:
            await self.store.delete_status(t.ref)
        if t.entry is not None:
            await self.store.delete_spec(t.ref)
        self.tracked.pop(t.ref, None)

    # --- helpers ----------------------------------------------------------------------

    async def _alive(self, pods: list[str]) -> set[str]:
        sidecars = await registered(self.nc, self.log)
        return {p for p in pods if p in sidecars and not sidecars[p].lost}

    def _record(self, st: Status, result: FleetResult, outcome: str, now: float) -> None:
        for pod in result.acked:
            st.pods[pod] = PodRecord(outcome, now)
        for pod, error in result.errors.items():
            st.pods[pod] = PodRecord("error", now, error)
        for pod in result.missing:
            st.pods[pod] = PodRecord("missing", now, "no sidecar answered")

    async def _write(self, t: Tracked, st: Status) -> None:
        t.revision = await self.store.write_status(t.ref, st, t.revision)
        t.status = st
        metrics.PHASES.labels(st.phase).inc()

    def _actor(self, t: Tracked) -> str:
        return f"controller:{t.ref}"

    def _audit(
        self,
        kind: str,
        ref: str,
        *,
        entry: SpecEntry | None = None,
        event_id: str | None = None,
        **fields: Any,
    ) -> None:
        extra: dict[str, Any] = {"id": event_id} if event_id else {}
        self.audit.record(
            kind,
            actor=entry.actor if entry else "controller",
            experiment=ref,
            source=entry.source if entry else None,
            **extra,
            **fields,
        )

    def _audit_pods(
        self, kind: str, t: Tracked, st: Status, pods: list[str], **fields: Any
    ) -> None:
        for pod in pods:
            record = st.pods.get(pod)
            self._audit(
                kind,
                t.ref,
                entry=t.entry,
                pod=pod,
                run=st.run,
                outcome=record.outcome if record else "missing",
                error=record.error if record else None,
                event_id=_event_id(st.uid, st.run, kind, pod),
                **fields,
            )


def _target(pods: list[str]) -> dict[str, Any]:
    """Exactly these pods, as 8-byte digests: a tenth of the bytes of their names for
    every sidecar of the fleet to receive, and no per-name decoding (protocol.pod_ref_hash)."""
    return {"name_hashes": name_hashes(pods)}


# A sidecar reads desired-state entries of up to 64 KiB: an experiment's rule over
# more pods than fit is kept as several entries, each naming a share of them.
DESIRED_PART = 7000


def _desired_parts(rule_id: str, pods: list[str]) -> list[tuple[str, list[str]]]:
    """(key, pods) of each desired-state entry that holds ``rule_id`` for ``pods``."""
    parts = [pods[i : i + DESIRED_PART] for i in range(0, max(len(pods), 1), DESIRED_PART)]
    return [
        (desired.fleet_key(rule_id if i == 0 else f"{rule_id}:{i}"), part)
        for i, part in enumerate(parts)
    ]


def _next_tick(schedule: Schedule, now: float, ends_at: float | None) -> float:
    """The schedule's next tick after ``now`` that is not inside this run: a run never
    overlaps itself; ticks that fall while it is still in force are skipped."""
    tick = schedule.next_after(now)
    for _ in range(100_000):  # bounded: a tick a second over a day's run
        if ends_at is None or tick >= ends_at:
            return tick
        tick = schedule.next_after(tick)
    return schedule.next_after(ends_at if ends_at is not None else now)


def _invalid(st: Status) -> bool:
    """Failed because its spec was invalid (then fixed), not because a run failed."""
    return any(c.type == "Valid" and c.status == "False" for c in st.conditions)


def _condition(st: Status, kind: str, status: str, reason: str, message: str, now: float) -> None:
    """Set one condition (Chaos Mesh 2.x's condition types), keeping the others."""
    for i, c in enumerate(st.conditions):
        if c.type == kind:
            if (c.status, c.reason, c.message) != (status, reason, message):
                st.conditions[i] = dataclasses.replace(
                    c, status=status, reason=reason, message=message, time=now
                )
            return
    st.conditions.append(Condition(kind, status, reason, message, now))
