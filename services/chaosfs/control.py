"""The control plane: a NATS client on its own thread and asyncio loop.

FUSE requests are served by trio on the main thread. Everything network-bound
lives here instead, so a slow, blocked or dead NATS server can never hold a file
operation: the only things that cross over are an immutable rule set (swapped
in one assignment) and, after a rule change, a short trio call that lists the
inodes whose kernel caches must be dropped.

What a command does is decided in ``commands`` (no bus there); this module carries
the commands in and the replies out, keeps the registry entry and the heartbeats,
and carries out what the handler asks for (kernel caches, audit events).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pyfuse3
import structlog
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from nats.js.kv import KV_DEL, KV_OP

from chaosbus import __version__, codec, protocol, registry, wire
from chaosbus.audit import STREAM as AUDIT_STREAM
from chaosbus.audit import AuditLog, ensure_stream
from chaosbus.bus import BusAuth, connect, pod_inbox_prefix
from chaosbus.globs import PathPattern
from chaosbus.kv import open_bucket
from chaosbus.rules import FaultRule
from chaosbus.subjects import FLEET_COMMAND, pod_command, pod_event
from chaosbus.supervise import cancel_until_done, supervised

from . import commands, processes, provenance
from .commands import Invalidation, LazyActions, MountClosing
from .config import Config
from .convergence import DesiredState, subscribe_last_values
from .faults import FaultEngine, PowerCut, RuleState, process_name, rule_rng
from .lazyfs import LazyOperations
from .passthrough import ChaosOperations

IDLE_RECHECK = 60.0  # the longest the expiry and event loops sleep with nothing to do
INJECTION_FLUSH_INTERVAL = 0.25
INJECTION_BATCH = 50  # per flush: at most 200 events a second leave a sidecar
# How soon a budget rule's moved counters reach the registry entry: what a sidecar
# killed within this time of a fault loses (the rule may fire that once more).
COUNTERS_SAVE_INTERVAL = 0.5
SETTLE_TIMEOUT = 1.0  # seconds for what is left on the bus loop to end at shutdown
# Refused deliveries (see provenance) are audited at most this often: one event stands
# for all those since the last (its "count"), and every one is counted in the metrics.
# Whoever can make them can make thousands a second, and each sidecar would audit each.
REFUSAL_AUDIT_INTERVAL = 1.0

Job = Callable[[], Coroutine[Any, Any, None]]  # a chore of the bus loop, started anew on failure


def pod_identity(auth: BusAuth) -> bool:
    """Whether this sidecar connects as its pod (a ServiceAccount token for the auth
    callout of deploy/nats/nats-callout.conf) rather than as the shared ``sidecar``
    user of nats.conf. chaos-auth then lets it publish its audit events below its own
    pod only, and receive replies under its pod's inbox prefix only."""
    return bool(auth.token or auth.token_file) and not auth.user


async def on_trio(token: trio.lowlevel.TrioToken | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` on the FUSE thread, between two requests, and return its result."""
    call = functools.partial(trio.from_thread.run_sync, fn, *args, trio_token=token)
    try:
        return await asyncio.get_running_loop().run_in_executor(None, call)
    except trio.RunFinishedError:
        raise MountClosing("the mount is shutting down") from None


class MountedLazy:
    """Lazy mode's actions (``commands.LazyActions``) on a mounted ``LazyOperations``:
    what reads or changes the mount's data runs on the FUSE thread, between two file
    requests; killing the mount's users, which waits for them to die, on a worker."""

    def __init__(
        self, ops: LazyOperations, trio_token: trio.lowlevel.TrioToken | None, mountpoint: str
    ) -> None:
        self.ops = ops
        self.trio_token = trio_token
        self.mountpoint = mountpoint

    async def status(self) -> wire.LazyStatus:
        return cast(wire.LazyStatus, await on_trio(self.trio_token, self.ops.status))

    async def unsynced(self, regex: PathPattern, model: str) -> dict[str, Any]:
        report: dict[str, Any] = await on_trio(self.trio_token, self.ops.unsynced, regex, model)
        return report

    async def stop_writers(self, signal: int) -> tuple[list[wire.Process], list[wire.Process]]:
        loop = asyncio.get_running_loop()
        victims = await loop.run_in_executor(None, processes.users_of, self.mountpoint)
        survivors = await loop.run_in_executor(None, processes.kill_all, victims, signal)
        killed = [wire.Process(pid=v.pid, comm=v.comm) for v in victims if v not in survivors]
        return killed, [wire.Process(pid=v.pid, comm=v.comm) for v in survivors]

    async def tear(
        self,
        regex: PathPattern,
        seed: int | str | None,
        keep: int | None,
        whole_writes: bool,
        align: int,
        persist: tuple[int, ...] | None,
        force: bool,
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        args = (regex, seed, keep, whole_writes, align, persist, force)
        torn: tuple[dict[str, Any], list[Invalidation]]
        torn = await on_trio(self.trio_token, self.ops.tear, *args)
        return torn

    async def lose(
        self, regex: PathPattern, metadata: bool, model: str
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        lost: tuple[dict[str, Any], list[Invalidation]]
        lost = await on_trio(self.trio_token, self.ops.lose, regex, metadata, model)
        return lost


class BusControl:
    def __init__(
        self,
        config: Config,
        engine: FaultEngine,
        ops: ChaosOperations | None,
        trio_token: trio.lowlevel.TrioToken | None,
        log: structlog.stdlib.BoundLogger,
        *,
        lazy: LazyActions | None = None,
        handler_delay: float = 0.0,
    ) -> None:
        """``ops``: the mount (None for a mount-less agent), whose kernel caches a rule
        change drops; ``lazy``: lazy mode's actions, None on a plain mount;
        ``handler_delay``: seconds every command blocks this loop, for a system test
        that shows file I/O does not notice (0 otherwise)."""
        self.config = config
        self.engine = engine
        self.ops = ops
        self.trio_token = trio_token
        self.log = log
        self.labels = config.labels
        # Every time read here is the engine's clock's, which a test can drive.
        self.clock = engine.clock
        self.started = self.clock.wall()  # for operators: when, by the wall clock
        self.sidecar = commands.Sidecar(
            config, engine, engine.clock, lazy, started=self.clock.monotonic()
        )
        self.handler_delay = handler_delay
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._nc: Client | None = None
        self._registry: Any = None
        self._resync = asyncio.Event()  # set on reconnect: re-read desired state
        # Set whenever the rule set changes: the expiry and event loops sleep until
        # the next expiry or until there are rules, not on a short timer (a thousand
        # idle agents on one machine must cost next to nothing).
        self._rules_moved = asyncio.Event()
        self._events_wake = asyncio.Event()
        self._counters_wake = asyncio.Event()  # the rule set changed: see _keep_counters
        # When the expiry loop wakes next (wall clock); a rule ending sooner wakes it.
        self._expiry_wakes_at = math.inf
        # Counters a previous sidecar of this pod left (see _read_counters), by rule id,
        # until desired state has said which rules come back.
        self._restored: dict[str, dict[str, Any]] = {}
        self._digests: dict[str, tuple[FaultRule, str]] = {}
        engine.on_first_event = self._events_queued
        # Power-cut rules: only a lazy mount has unsynced data to lose; the FUSE thread
        # hands each cut over through _cut_requested (see faults.PowerCut).
        engine.power_cuts = lazy is not None
        engine.on_power_cut = self._cut_requested
        self._cuts: set[asyncio.Task[None]] = set()
        self.audit: AuditLog | None = None
        self._last_error = ""
        self._last_error_at = 0.0
        self.commands: dict[tuple[str, str], int] = {}  # (op, ok|rejected|error): for metrics
        self._pod_subject = pod_command(config.namespace, config.pod)
        self._per_pod = pod_identity(config.auth)
        # Refusals not audited yet: how many, the latest, and the timer that audits them.
        self._refused = 0
        self._refused_last: tuple[provenance.Refusal, str, int] | None = None
        self._refused_timer: asyncio.TimerHandle | None = None
        self._refusal_audited_at = -REFUSAL_AUDIT_INTERVAL
        self._thread = threading.Thread(target=self._run, name="chaosfs-bus", daemon=True)

    # --- thread lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        if self._thread.is_alive():
            # The loop may be closing already (it never reached the bus): then it is
            # on its way out anyway.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopping.set)

    def stop(self, timeout: float = 3.0) -> None:
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    async def serve(self) -> None:
        """Run on the calling thread's event loop instead of a thread of its own, until
        ``stop_serving``. bench/agents.py runs hundreds of control planes on one loop
        this way: each with its own connection, engine and tasks, as separate sidecars
        are, but without hundreds of threads taking turns at one interpreter lock,
        which separate sidecar processes never do."""
        self._loop.close()  # the one made for a thread of its own, never used then
        self._loop = asyncio.get_running_loop()
        await self._main()

    def stop_serving(self) -> None:
        """From the loop ``serve`` runs on: say goodbye and end."""
        self._stopping.set()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except Exception:
            self.log.exception("bus_thread_crashed")
        finally:
            try:
                self._loop.run_until_complete(_settle(self._loop))
            finally:
                self._loop.close()

    async def _main(self) -> None:
        scope = (self.config.namespace, self.config.pod) if self._per_pod else ()
        self.audit = AuditLog("chaosfs", self.log, scope=scope)
        # The chores (expiry, the event feed, desired state, heartbeats, counters) share
        # one task group and each is supervised: one that fails is logged with its
        # traceback and started again, never silently gone, and none outlives this.
        async with asyncio.TaskGroup() as group:
            chores: list[asyncio.Task[None]] = []

            def chore(
                name: str, job: Callable[[], Coroutine[Any, Any, None]]
            ) -> asyncio.Task[None]:
                task = group.create_task(supervised(name, job, self.log), name=name)
                chores.append(task)
                return task

            # Expiry and the event feed run whether or not the bus is reachable:
            # a rule's ttl must end it even when nobody can send a recover.
            chore("rule-expiry", self._expire_rules)
            chore("injection-events", self._publish_injections)
            try:
                await self._on_bus(chore)
            finally:
                await cancel_until_done(chores)  # none is left pending

    async def _on_bus(self, chore: Callable[[str, Job], asyncio.Task[None]]) -> None:
        """Connect, listen and announce; at the stop, say goodbye and close."""
        nc = await self._connect()
        if nc is None:
            return
        self._nc = nc
        # Before the first audit event and registry write; bounded, as a server
        # without JetStream must not keep the sidecar off the bus.
        try:
            await asyncio.wait_for(self._prepare_jetstream(nc), 3.0)
        except TimeoutError:
            # Registration is retried with every heartbeat (see _register).
            self.log.warning("jetstream_slow", step="audit stream and registry", after=3.0)
        # What a sidecar of this pod left in the registry, read before this one's
        # first write replaces it and before desired state brings the rules back.
        await self._read_counters()
        assert self.audit is not None
        self.audit.start(nc)
        desired = DesiredState(
            self.config.namespace,
            self.config.pod,
            self.labels,
            self._converge,
            self.log,
            audit=self._audit,
        )
        following = chore("desired-state", functools.partial(desired.run, nc, self._resync))
        pod_subject = self._pod_subject
        await nc.subscribe(pod_subject, cb=functools.partial(self._on_command, fleet=False))
        # A plain subscription, not a queue group: every sidecar must get fleet commands.
        await nc.subscribe(FLEET_COMMAND, cb=functools.partial(self._on_command, fleet=True))
        await nc.flush()
        self.log.info("bus_listening", subject=pod_subject, fleet_subject=FLEET_COMMAND)
        await self._announce("ready")
        heartbeat = chore("heartbeat", self._heartbeat)
        chore("counters", self._keep_counters)
        await self._stopping.wait()
        # Stop following desired state while the connection is still open: then
        # its subscriptions end with it (nats-py leaves their helper tasks behind
        # when the connection is already closed), and no rule changes any more
        # under the goodbye's counters.
        heartbeat.cancel()  # nothing may follow "gone"
        following.cancel()
        await asyncio.gather(heartbeat, following, return_exceptions=True)
        # Say goodbye, briefly: a pod's termination grace period is short.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._announce("gone"), 1.0)
            await nc.flush(timeout=1)
        if self._refused_timer is not None:
            self._refused_timer.cancel()
            self._audit_refusals()  # the last ones, not left to a timer that never runs
        await self.audit.stop(timeout=0.5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2)

    async def _prepare_jetstream(self, nc: Client) -> None:
        """The audit stream and the registry bucket; a locked-down sidecar may only use them.

        The stream is created only when missing, never brought to other limits (the
        template-watcher's job): NATS does not answer a request it denies, so a
        refused create would hold the registry back until the caller's timeout.
        """
        try:
            await nc.jetstream(timeout=1.0).stream_info(AUDIT_STREAM)
        except NotFoundError:
            with contextlib.suppress(Exception):
                await ensure_stream(nc, max_age=7 * 86400.0, max_bytes=1 << 30)
        except Exception as exc:
            self.log.warning("audit_stream_unavailable", error=str(exc))
        try:
            self._registry = await open_bucket(nc, registry.BUCKET)
        except Exception as exc:
            self.log.warning("registry_unavailable", error=str(exc))

    async def _register(self, gone: bool = False) -> None:
        if self._nc is None or not self._nc.is_connected:
            return
        if self._registry is None and not gone:
            # Not opened at start (a busy or restarting server): try again now, so a
            # sidecar that started under load still shows up, and broadcasts wait for it.
            try:
                self._registry = await asyncio.wait_for(open_bucket(self._nc, registry.BUCKET), 2.0)
            except Exception as exc:
                self.log.warning("registry_unavailable", error=str(exc) or type(exc).__name__)
                return
        kv = self._registry
        if kv is None:
            return
        key = registry.key(self.config.namespace, self.config.pod)
        try:
            if gone:
                await self._leave(kv, key)
            else:
                await kv.put(key, codec.encode(self._record()))
        except Exception as exc:
            self.log.warning("registry_write_failed", error=str(exc))

    async def _leave(self, kv: Any, key: str) -> None:
        """Take this pod out of the registry, keeping its rules' counters.

        It is a KV delete, so every reader of the registry sees the pod gone; its
        body holds the counters for the next sidecar of this pod, which a plain
        delete would lose on every clean restart.
        """
        counters = self._counters()
        if not counters:
            await kv.delete(key)
            return
        body = codec.encode({"pod": self.config.pod_ref, "counters": counters})
        # nats-py 2.16's KeyValue keeps its context and subject prefix here.
        await kv._js.publish(f"{kv._pre}{key}", body, headers={KV_OP: KV_DEL})

    def _record(self) -> dict[str, Any]:
        rules = self.engine.describe()
        return {
            "pod": self.config.pod_ref,
            **self._identity(),
            "time": self.clock.wall(),
            "started": self.started,
            "heartbeat_interval": self.config.heartbeat,
            "rules": [
                {"id": r["id"], "action": r["action"], "fired": r["stats"]["fired"]} for r in rules
            ],
            "counters": self._counters(),
        }

    # --- counters that outlive the process ------------------------------------------
    #
    # A rule's count, after and quota budgets live in its counters. When the sidecar
    # restarts under the same pod name, desired state brings the rule back; without
    # its counters a spent --count 1 rule would fire again. So the registry entry
    # carries every rule's counters (written within COUNTERS_SAVE_INTERVAL of a
    # change, and in the goodbye), and the next sidecar of the pod gives them back
    # to the very same rule: same id, same content.

    def _digest(self, rule: FaultRule) -> str:
        cached = self._digests.get(rule.id)
        if cached is None or cached[0] is not rule:
            text = json.dumps(rule.to_wire(), sort_keys=True, separators=(",", ":"), default=str)
            cached = (rule, hashlib.sha256(text.encode()).hexdigest()[:32])
            self._digests[rule.id] = cached
        return cached[1]

    def _counters(self) -> list[dict[str, Any]]:
        """Every held rule's counters that moved, and those restored but not yet claimed."""
        out = []
        held = set()
        for rule in self.engine.rules.rules:
            held.add(rule.id)
            st = self.engine.state.get(rule.id)
            if st is None or not (st.matched or st.fired or st.quota_used):
                continue
            out.append(
                {
                    "id": rule.id,
                    "digest": self._digest(rule),
                    "matched": st.matched,
                    "fired": st.fired,
                    "quota_used": st.quota_used,
                    "last_fired": st.last_fired,
                }
            )
        # Carried over, so that a sidecar killed before desired state came back still
        # leaves them for the next one.
        out += [c for rule_id, c in self._restored.items() if rule_id not in held]
        for rule_id in [i for i in self._digests if i not in held]:
            del self._digests[rule_id]
        return out

    async def _read_counters(self) -> None:
        """Read the counters the previous sidecar of this pod left in the registry.

        With a consumer filtered on this pod's own key, which a permission can name,
        rather than a get by subject, whose subject travels in the request body: a
        sidecar may then be allowed to read its own entry and no other pod's.
        """
        kv = self._registry
        if kv is None or self._nc is None:
            return
        subject = f"{kv._pre}{registry.key(self.config.namespace, self.config.pod)}"
        try:
            data = await asyncio.wait_for(_last_value(self._nc, kv._stream, subject), 3.0)
        except Exception as exc:
            # Refused or slow: the rules still come back, with fresh counters.
            self.log.warning("counters_unreadable", error=str(exc) or type(exc).__name__)
            return
        try:
            record = codec.decode(data, limit=registry.ENTRY_LIMIT) if data else {}
        except codec.DecodeError:
            return
        found = record.get("counters") if isinstance(record, dict) else None
        for item in found if isinstance(found, list) else []:
            saved = _saved_counters(item)
            if saved is not None:
                self._restored[saved["id"]] = saved
        if self._restored:
            self.log.info("counters_found", rules=sorted(self._restored))

    def _restore(self, wanted: list[FaultRule]) -> None:
        """Give rules that come back from desired state the counters they had."""
        restored, self._restored = self._restored, {}
        if not restored:
            return
        held = {r.id for r in self.engine.rules.rules}
        for rule in wanted:
            saved = restored.get(rule.id)
            if saved is None or rule.id in held or saved["digest"] != self._digest(rule):
                continue
            # In place before the rule set that holds the rule is published: the engine
            # keeps a rule's existing state, so the FUSE thread never sees fresh counters.
            self.engine.state[rule.id] = RuleState(
                rng=rule_rng(rule),
                matched=saved["matched"],
                fired=saved["fired"],
                last_fired=saved["last_fired"],
                quota_used=saved["quota_used"],
            )
            self.log.info(
                "counters_restored", rule=rule.id, matched=saved["matched"], fired=saved["fired"]
            )

    async def _keep_counters(self) -> None:
        """Write the registry entry soon after a budget rule's counters move."""
        written: tuple = ()
        while True:
            budgets = [r for r in self.engine.rules.rules if _has_budget(r)]
            if not budgets:
                # Asleep until a budget rule comes: idle sidecars cost nothing here.
                self._counters_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await _until_set(self._counters_wake, IDLE_RECHECK)
                continue
            await asyncio.sleep(COUNTERS_SAVE_INTERVAL)
            states = self.engine.state
            now = tuple(
                (r.id, st.matched, st.fired, st.quota_used)
                for r in budgets
                if (st := states.get(r.id)) is not None and (st.matched or st.quota_used)
            )
            if now != written:
                await self._register()
                written = now

    async def _converge(self, wanted: list[FaultRule]) -> None:
        """Desired state changed (or was read again): hold what it says."""
        self._restore(wanted)
        changed, removed = self.engine.converge(wanted)
        if not changed and not removed:
            return
        self._rules_changed()
        await self._drop_caches(changed + removed)
        self.log.info(
            "rules_converged", set=[r.id for r in changed], removed=[r.id for r in removed]
        )
        self._audit(
            "rule.converged", set=[r.to_wire() for r in changed], removed=[r.id for r in removed]
        )

    def _audit(self, kind: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.record(kind, pod=self.config.pod_ref, **fields)

    def _rules_changed(self) -> None:
        # Wake the expiry loop only for a rule that ends before it wakes anyway, and the
        # counters' loop only when there is a budget to keep: a fleet's rule changes
        # should cost a sidecar no wake-ups besides.
        rules = self.engine.rules.rules
        soonest = min((r.expires_at for r in rules if r.expires_at is not None), default=None)
        if soonest is not None and soonest < self._expiry_wakes_at:
            self._rules_moved.set()
        if any(_has_budget(r) for r in rules):
            self._counters_wake.set()

    def _events_queued(self) -> None:
        """From the FUSE thread: never blocks, and a closed loop has nobody to tell."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._events_wake.set)

    async def _expire_rules(self) -> None:
        while True:
            self._rules_moved.clear()
            expiries = [r.expires_at for r in self.engine.rules.rules if r.expires_at is not None]
            wait = min(expiries) - self.clock.wall() if expiries else IDLE_RECHECK
            if wait > 0:
                self._expiry_wakes_at = self.clock.wall() + min(wait, IDLE_RECHECK)
                with contextlib.suppress(TimeoutError):
                    await _until_set(self._rules_moved, min(wait, IDLE_RECHECK))
                self._expiry_wakes_at = math.inf  # awake: it reads the rules again first
            gone = self.engine.expire(self.clock.wall())
            if gone:
                try:
                    await self._drop_caches(gone)
                except Exception:
                    self.log.exception("cache_drop_failed")
                for rule in gone:
                    self.log.info("rule_expired", rule=rule.id, expires_at=rule.expires_at)
                    self._audit("rule.expired", rule=rule.id, expires_at=rule.expires_at)

    async def _publish_injections(self) -> None:
        """Forward sampled injection events; never read on the I/O path."""
        subject = pod_event("inject", self.config.namespace, self.config.pod)
        while True:
            if not self.engine.events:
                # Asleep until the FUSE thread queues an event (engine.on_first_event):
                # no polling, whether rules are in force or not.
                self._events_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await _until_set(self._events_wake, IDLE_RECHECK)
            await asyncio.sleep(INJECTION_FLUSH_INTERVAL)  # then take a batch
            batch = self.engine.drain_events(limit=INJECTION_BATCH)
            nc = self._nc
            if not batch or nc is None or not nc.is_connected:
                continue
            for when, method, path, pid, rule_id, outcome in batch:
                event = {
                    "kind": "inject",
                    "pod": self.config.pod_ref,
                    "time": when,
                    "method": method,
                    "path": path,
                    "pid": pid,
                    "comm": process_name(pid) if pid else None,
                    "rule": rule_id,
                    "outcome": outcome,
                }
                with contextlib.suppress(Exception):
                    await nc.publish(subject, codec.encode(event))

    async def _connect(self) -> Client | None:
        """Connect, for as long as it takes; file I/O never waits on this.

        nats-py retries a first connection by itself when reconnecting is allowed,
        so the attempt is raced against shutdown rather than looped here.
        """
        inbox = pod_inbox_prefix(self.config.namespace, self.config.pod) if self._per_pod else None
        attempt = asyncio.create_task(
            connect(
                self.config.nats_url,
                name=f"chaosfs {self.config.pod_ref}",
                auth=self.config.auth,
                on_reconnect=self._on_reconnect,
                on_disconnect=self._on_disconnect,
                on_error=self._on_error,
                inbox_prefix=inbox,
            )
        )
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({attempt, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not attempt.done():
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt
            return None
        try:
            return attempt.result()
        except Exception as exc:
            self.log.error("bus_connect_failed", url=self.config.nats_url, error=str(exc))
            return None

    async def _on_reconnect(self) -> None:
        # Core NATS is at-most-once: announce again so the fleet knows we are back.
        self.log.info("bus_reconnected")
        self._resync.set()
        await self._announce("ready")

    async def _on_disconnect(self) -> None:
        self.log.warning("bus_disconnected")

    async def _on_error(self, exc: Exception) -> None:
        # While the server is away nats-py reports every retry; log each new error once.
        text = str(exc)
        now = self.clock.monotonic()
        if text != self._last_error or now - self._last_error_at > 30:
            self.log.warning("bus_error", error=text)
            self._last_error, self._last_error_at = text, now

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def _count(self, op: Any, result: str) -> None:
        key = (str(op) if op in protocol.OPS else "invalid", result)
        self.commands[key] = self.commands.get(key, 0) + 1

    # --- events ------------------------------------------------------------------

    def _identity(self) -> wire.Identity:
        """Who this sidecar is; the ``pod`` key itself is added by every message."""
        return commands.identity(self.config, self.sidecar.pid)

    async def _announce(self, kind: str) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            return
        rules = self.engine.rules.rules
        event = {
            "kind": kind,
            "pod": self.config.pod_ref,
            "time": self.clock.wall(),
            **self._identity(),
            "uptime": self.clock.monotonic() - self.sidecar.started,
            "rules": len(rules),
            "fired": sum(s.fired for s in list(self.engine.state.values())),
            "events_dropped": self.engine.events_dropped,
        }
        try:
            await nc.publish(
                pod_event(kind, self.config.namespace, self.config.pod), codec.encode(event)
            )
        except Exception as exc:
            self.log.warning("event_publish_failed", kind=kind, error=str(exc))
        if kind == "ready":
            self._audit("sidecar.ready", mountpoint=self.config.mountpoint, version=__version__)
        elif kind == "gone":
            self._audit("sidecar.gone")
        await self._register(gone=kind == "gone")

    async def _heartbeat(self) -> None:
        # The first beat at a random point of the second half of a period: sidecars
        # started together (a rollout, a node's restart) do not beat together for ever.
        await asyncio.sleep(self.config.heartbeat * random.uniform(0.5, 1.0))
        while True:
            await self._announce("heartbeat")
            await asyncio.sleep(self.config.heartbeat)

    # --- commands ------------------------------------------------------------------

    async def _on_command(self, msg: Msg, *, fleet: bool) -> None:
        listening_on = FLEET_COMMAND if fleet else self._pod_subject
        refused = provenance.refusal(msg.subject, msg.reply, msg.headers, listening_on)
        if refused is not None:
            await self._refuse(msg, refused, listening_on)
            return
        if self.handler_delay:
            time.sleep(self.handler_delay)  # deliberately blocks this loop (a test's wish)
        log = self.log.bind(subject=msg.subject)
        outcome = await commands.handle(self.sidecar, msg.data, fleet=fleet, subject=msg.subject)
        if outcome is None:
            return  # a fleet command for others: stay silent, as a non-subscriber would
        reply: wire.Reply = outcome.reply
        result = outcome.result
        try:
            await self._carry_out(outcome, log)
        except Exception as exc:
            result = "error"
            log.exception("command_failed")
            reply = commands.error_reply(self.config.pod_ref, f"internal error: {exc}")
        self._count(outcome.op, result)
        if msg.reply:
            try:
                # Headroom for the reply's subject and headers within the payload limit.
                limit = max(4096, (self._nc.max_payload if self._nc else 1 << 20) - 1024)
                await msg.respond(protocol.fit(reply, limit))
            except Exception as exc:
                log.warning("reply_failed", error=str(exc))

    async def _carry_out(self, outcome: commands.Outcome, log: Any) -> None:
        """What a command's outcome asks for besides its reply, in the order it says."""
        if outcome.rules_moved:
            self._rules_changed()
        if outcome.drop_caches:
            await self._drop_caches(outcome.drop_caches)
        if outcome.invalidate:
            # What a cut changed: the next read must see what survived, not the page
            # cache's memory of what did not.
            await asyncio.get_running_loop().run_in_executor(None, _invalidate, outcome.invalidate)
        for line in outcome.logs:
            getattr(log, line.level)(line.event, **line.fields)
        for kind, fields in outcome.audits:
            self._audit(kind, **fields)

    async def _refuse(self, msg: Msg, refused: provenance.Refusal, listening_on: str) -> None:
        """A message the server put on a command subject from a stream: not read, not
        answered (an answer to an ack subject would be an acknowledgement), counted,
        logged and audited, at most once per REFUSAL_AUDIT_INTERVAL."""
        key = ("jetstream", "refused")  # chaosfs_commands{op="jetstream",result="refused"}
        self.commands[key] = self.commands.get(key, 0) + 1
        if msg.reply and msg.reply.startswith(provenance.JS_ACK):
            # Stops the consumer from delivering it again and again (one "response",
            # which the sidecar's permissions allow to any message it receives).
            with contextlib.suppress(Exception):
                await msg.term()
        self._refused += 1
        self._refused_last = (refused, listening_on, len(msg.data))
        if self._refused_timer is not None:
            return  # already due
        wait = self._refusal_audited_at + REFUSAL_AUDIT_INTERVAL - self.clock.monotonic()
        if wait <= 0:
            self._audit_refusals()
        else:
            self._refused_timer = asyncio.get_running_loop().call_later(wait, self._audit_refusals)

    def _audit_refusals(self) -> None:
        """One log line and one ``command.refused`` event for the refusals since the last:
        the latest one's reason and source, and ``count``, how many it stands for."""
        self._refused_timer = None
        if self._refused_last is None:
            return
        refused, listening_on, size = self._refused_last
        where = {"via": listening_on, "count": self._refused, **refused.source}
        self._refused, self._refused_last = 0, None
        self._refusal_audited_at = self.clock.monotonic()
        self.log.warning("command_refused", reason=refused.reason, bytes=size, **where)
        self._audit("command.refused", reason=refused.reason, actor="unknown", **where)

    # --- power-cut rules: the cut a rule's operation triggered ------------------------

    def _cut_requested(self, cut: PowerCut) -> bool:
        """From the FUSE thread: schedule the cut here; never blocks."""
        try:
            self._loop.call_soon_threadsafe(self._start_cut, cut)
        except RuntimeError:
            return False  # the bus loop has closed: the mount is going away
        return True

    def _start_cut(self, cut: PowerCut) -> None:
        task = self._loop.create_task(self._rule_cut(cut))
        self._cuts.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._cuts.discard)

    async def _rule_cut(self, cut: PowerCut) -> None:
        """Cut as ``fault power-cut`` does (kill, lose, audit), then let the mount answer."""
        rule = cut.rule
        trigger = {
            "rule": rule.id,
            "method": cut.method,
            "trigger_path": cut.path,
            "operation": cut.operation,
            "when": rule.when,
        }
        log = self.log.bind(**trigger)
        self._audit("power.cut.triggered", actor=f"rule:{rule.id}", pid=cut.pid, **trigger)
        result: dict[str, Any] = {}
        try:
            outcome = await commands.lazy_action(
                self.sidecar, rule.cut_command(), f"rule:{rule.id}", fleet=False
            )
            await self._carry_out(outcome, log)
            reply = cast(wire.PowerCutReply, outcome.reply)
            lost = reply.get("lost") or {}
            result = {
                "killed": reply.get("killed", []),
                "survivors": reply.get("survivors", []),
                "lost_bytes": lost.get("bytes", 0),
                "lost_files": len(lost.get("files", {})),
            }
        except Exception as exc:
            log.exception("power_cut_failed")
            result = {"error": str(exc) or type(exc).__name__}
        finally:
            self.engine.cut_done(cut, result)

    async def _drop_caches(self, rules: list[FaultRule]) -> None:
        """Make a rule change visible to the very next operation, cached or not."""
        if not rules or self.ops is None:
            return  # a mount-less agent has no kernel caches to drop
        regexes = [r.path_regex for r in rules]
        lookups = any(r.applies_to("lookup") for r in rules)
        try:
            targets = await on_trio(self.trio_token, self.ops.inodes_matching, regexes, lookups)
        except MountClosing:
            return
        await asyncio.get_running_loop().run_in_executor(None, _invalidate, targets)


async def _last_value(nc: Client, stream: str, subject: str) -> bytes | None:
    """The body of the last message on ``subject`` (a KV delete's too), or None."""
    # A named consumer: its filter is then in the subject the server is asked on, which
    # chaos-auth can grant for this pod's own key and no other.
    sub = await subscribe_last_values(nc, subject, stream, inactive_threshold=30.0)
    try:
        info = await sub.consumer_info()
        if (info.delivered is None or info.delivered.consumer_seq == 0) and not info.num_pending:
            return None  # the first sidecar of this pod
        return (await sub.next_msg(timeout=1.0)).data
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _has_budget(rule: FaultRule) -> bool:
    """Whether the rule's counters limit it (count, after, quota): they must outlive
    the process, through the registry entry."""
    return rule.count is not None or bool(rule.after) or rule.action == "enospc"


async def _until_set(event: asyncio.Event, timeout: float) -> None:
    """Wait for ``event``, at most ``timeout`` seconds; TimeoutError after that.

    Cheaper than ``asyncio.wait_for(event.wait(), timeout)``, which makes a task of
    the wait each time: these loops wake at every rule change, in every sidecar.
    """
    async with asyncio.timeout(timeout):
        await event.wait()


def _saved_counters(item: Any) -> dict[str, Any] | None:
    """One rule's counters as a registry entry holds them, or None if malformed
    (any sidecar can write the registry; a bad entry must not break a start)."""
    if not isinstance(item, dict):
        return None
    rule_id, digest = item.get("id"), item.get("digest")
    numbers = [item.get(name) for name in ("matched", "fired", "quota_used")]
    last = item.get("last_fired")
    if not isinstance(rule_id, str) or not isinstance(digest, str):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        return None
    if last is not None and (isinstance(last, bool) or not isinstance(last, int | float)):
        return None
    matched, fired, quota_used = numbers
    return {
        "id": rule_id,
        "digest": digest,
        "matched": matched,
        "fired": fired,
        "quota_used": quota_used,
        "last_fired": None if last is None else float(last),
    }


async def _settle(loop: asyncio.AbstractEventLoop) -> None:
    """End what is still running on the bus loop before it closes, as asyncio.run does.

    nats-py leaves tasks of its own behind (a subscription's heartbeat checks, a
    reader of a closed connection); closing the loop under them prints "Task was
    destroyed but it is pending!" and "Event loop is closed" tracebacks.
    """
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks(loop) if t is not current]
    for task in left:
        task.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*left, return_exceptions=True), SETTLE_TIMEOUT)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(loop.shutdown_asyncgens(), SETTLE_TIMEOUT)
    # Threads of run_in_executor that are still at work; one that finishes after
    # the loop closed would fail to hand its result back, with a traceback.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(loop.shutdown_default_executor(), SETTLE_TIMEOUT)


def _invalidate(targets: list[tuple[int, int, bytes]]) -> None:
    for node_id, parent_id, name in targets:
        if node_id:
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_inode(node_id)
        if parent_id:
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_entry(parent_id, name)
