"""The controller's Kubernetes source: FsChaos (and Chaos Mesh IoChaos) objects in, their
status out.

``KubeSource.run`` keeps three things in step, until cancelled:

1. **Objects to the store.** Every FsChaos object (``chaosbus.io/v1alpha1``, plural
   ``fschaos``) and, with ``chaos_mesh``, every ``chaos-mesh.org/v1alpha1`` IoChaos
   object (plural ``iochaos``; Chaos Mesh v0.9's kind ``IoChaos`` or 2.x's ``IOChaos``)
   is listed, then watched, with ``template_watcher.kube_source``'s discipline: a watch
   that ends is resumed from the last resourceVersion seen (bookmarks included), only a
   410 forces a relist, and every failure is logged and retried with jittered backoff.
   Each object first gets the finalizer ``chaosbus.io/recover``, so that it cannot
   vanish before its faults are recovered; then it is checked with ``parse_manifest``.
   A valid one is written to the ``EXPERIMENTS`` bucket (source ``kubernetes``, the
   object's uid, ``paused`` from the annotation ``experiment.chaos-mesh.org/pause:
   "true"``, as Chaos Mesh's), but only when its spec, generation or pause changed, so
   that status writes never loop back into spec writes. An invalid one is refused: the
   condition ``Valid`` (the engine's condition type for the same verdict) becomes False
   with reason ``Invalid`` and the one-line reason, a Warning Event and an audit event
   ``experiment.rejected`` say so once, and the store is not touched, so an earlier
   valid version keeps running unchanged.
2. **Deletion.** An object being deleted (deletionTimestamp set) has its store entry
   marked ``deleting``; the engine recovers every pod and then removes the entry, and
   only then is the finalizer taken off and the object allowed to go. The store entry
   is watched, and rechecked every ``recheck`` seconds, for that. Pods that are gone
   never hold this up: the engine records them as gone; this only waits for the entry.
   An object the store never ran loses its finalizer at once. After every (re)list,
   store entries from Kubernetes whose object no longer exists (deleted while no
   controller ran, or forced past the finalizer) are marked ``deleting`` too.
3. **Status back to the objects.** The engine's status (``EXPERIMENT_STATUS``) of an
   experiment this source stored, for the same uid, is written to the object's status
   subresource (phase, run, selected pods, each pod's outcome, start, end and next run
   times as RFC 3339, message, conditions) when it changed, and a transition posts one
   Event: Injected, Recovered, Paused, Resumed (Normal) or Failed (Warning).

A name used by two objects at once (an FsChaos and an IoChaos, or an object and an
experiment applied with ``chaosctl``) runs the one that came first; the other is
refused with reason ``Conflict``. Kubernetes owns what it created: ``chaosctl delete``
of such an experiment is undone once the engine removed it, since the object remains.

Only one controller should run this at a time (the lease holder): two would post each
Event twice. All Kubernetes writes are patches: JSON patches whose ``test`` makes a
finalizer change fail rather than overwrite a concurrent one, and the status as a
whole (this source is its only writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from structlog.typing import FilteringBoundLogger

from chaosbus.audit import AuditLog
from chaosbus.experiments.errors import SpecError
from chaosbus.experiments.spec import parse_manifest
from chaosbus.experiments.store import ExperimentStore, SpecEntry, StaleWrite, Status
from template_watcher.kube_source import (
    PAGE_SIZE,
    WATCH_TIMEOUT_SECONDS,
    Backoff,
    WatchEvent,
    _Delays,
    _describe,
    list_and_watch,
)

from .kubeapi import bind, call_json

FINALIZER = "chaosbus.io/recover"
PAUSE_ANNOTATION = "experiment.chaos-mesh.org/pause"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
FIELD_MANAGER = "chaos-controller"
VALID = "Valid"
RECHECK_SECONDS = 30.0
WRITE_TIMEOUT = 30.0
CAS_ATTEMPTS = 5
MAX_POD_RECORDS = 256  # per object: the status must stay far below etcd's object limit
MAX_MESSAGE = 1024
DEFAULT_BACKOFF = Backoff()  # frozen, so one shared default is safe
# The status fields mirrored from the engine's Status (conditions are merged apart).
MIRRORED = (
    "phase",
    "run",
    "selected",
    "pods",
    "podsOmitted",
    "startTime",
    "endTime",
    "nextRun",
    "message",
)


@dataclass(frozen=True)
class Kind:
    """A custom resource this source follows."""

    group: str
    version: str
    plural: str
    kinds: tuple[str, ...]  # the kind names its objects may carry

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


FSCHAOS = Kind("chaosbus.io", "v1alpha1", "fschaos", ("FsChaos",))
IOCHAOS = Kind("chaos-mesh.org", "v1alpha1", "iochaos", ("IoChaos", "IOChaos"))


# --- list and watch ---------------------------------------------------------------


async def watch_custom_objects(
    api: ApiClient,
    kind: Kind,
    *,
    namespace: str | None,
    log: FilteringBoundLogger,
    timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
    page_size: int = PAGE_SIZE,
    backoff: Backoff = DEFAULT_BACKOFF,
) -> AsyncIterator[WatchEvent]:
    """``kube_source.watch_objects`` for a custom resource: RESET after every (re)list,
    then single-object changes; runs until cancelled or closed. Custom objects carry
    their kind and apiVersion in lists too, so the shared helpers' "v1" defaults never
    apply to them."""
    objects = client.CustomObjectsApi(api)
    if namespace is None:
        list_fn: Callable[..., Awaitable[Any]] = bind(
            objects.list_cluster_custom_object, kind.group, kind.version, kind.plural
        )
    else:
        list_fn = bind(
            objects.list_namespaced_custom_object,
            kind.group,
            kind.version,
            namespace,
            kind.plural,
        )
    async for event in list_and_watch(
        list_fn,
        kind.kinds[0],
        selector={},
        log=log.bind(kind=kind.plural, namespace=namespace),
        timeout_seconds=timeout_seconds,
        page_size=page_size,
        backoff=backoff,
    ):
        yield event


# --- the source -------------------------------------------------------------------


class KubeSource:
    """Keeps the store in step with FsChaos (and IoChaos) objects, and their status with
    the engine's. See the module's docstring."""

    def __init__(
        self,
        api: ApiClient,
        store: ExperimentStore,
        log: FilteringBoundLogger,
        audit: AuditLog,
        *,
        chaos_mesh: bool = False,
        namespace: str | None = None,
        recheck: float = RECHECK_SECONDS,
        backoff: Backoff = DEFAULT_BACKOFF,
        watch_timeout: int = WATCH_TIMEOUT_SECONDS,
        page_size: int = PAGE_SIZE,
        field_manager: str = FIELD_MANAGER,
        instance: str | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.log = log
        self.audit = audit
        self.namespace = namespace
        self.kinds: tuple[Kind, ...] = (FSCHAOS, IOCHAOS) if chaos_mesh else (FSCHAOS,)
        self.recheck = recheck
        self.backoff = backoff
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        self.field_manager = field_manager
        self.instance = instance or socket.gethostname()
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._objects: dict[str, dict[str, dict[str, Any]]] = {k.plural: {} for k in self.kinds}
        self._synced: set[str] = set()  # kinds listed at least once
        self._statuses: dict[str, Status] = {}
        self._dirty: dict[str, None] = {}  # refs to reconcile, in arrival order
        self._sweep = False  # look for orphaned store entries
        self._wake = asyncio.Event()
        self._delays: dict[str, _Delays] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    async def run(self) -> None:
        """List, watch and reconcile until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                for kind in self.kinds:
                    tg.create_task(self._follow(kind), name=f"kube-{kind.plural}")
                tg.create_task(self._follow_specs(), name="kube-specs")
                tg.create_task(self._follow_statuses(), name="kube-statuses")
                tg.create_task(self._recheck_loop(), name="kube-recheck")
                tg.create_task(self._work(), name="kube-reconcile")
        finally:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()

    # --- following ---

    def _mark(self, *refs: str) -> None:
        for ref in refs:
            self._dirty[ref] = None
        if refs:
            self._wake.set()

    def _known(self, ref: str) -> bool:
        return any(ref in objects for objects in self._objects.values())

    def _remember(self, kind: Kind, obj: dict[str, Any]) -> None:
        """Cache an object unless the cache holds a newer version of it (a patch's answer
        can arrive before older watch events)."""
        objects = self._objects[kind.plural]
        ref = _ref(obj)
        cached = objects.get(ref)
        if cached is None or _uid(cached) != _uid(obj) or not _older(obj, cached):
            objects[ref] = obj

    async def _follow(self, kind: Kind) -> None:
        async for event in watch_custom_objects(
            self.api,
            kind,
            namespace=self.namespace,
            log=self.log,
            timeout_seconds=self.watch_timeout,
            page_size=self.page_size,
            backoff=self.backoff,
        ):
            objects = self._objects[kind.plural]
            if event.type == "RESET":
                fresh = {_ref(o): o for o in event.objects if _named(o)}
                self._mark(*objects, *fresh)
                objects.clear()
                objects.update(fresh)
                self._synced.add(kind.plural)
                self._sweep = True
                self._wake.set()
                continue
            (obj,) = event.objects
            if not _named(obj):
                self.log.warning(
                    "kube object without a name", kind=kind.plural, event_type=event.type
                )
                continue
            ref = _ref(obj)
            if event.type == "DELETED":
                cached = objects.get(ref)
                if cached is not None and _uid(cached) == _uid(obj):
                    del objects[ref]
            else:
                self._remember(kind, obj)
            self._mark(ref)

    async def _follow_specs(self) -> None:
        """Entries deleted or changed (by the engine, by chaosctl) wake their object."""
        delays = _Delays(self.backoff)
        while True:
            try:
                async for ref, entry, error in self.store.watch_specs():
                    delays.reset()
                    if error is not None:
                        self.log.warning("experiment entry unreadable", experiment=ref, error=error)
                    if self._known(ref) or (entry is not None and entry.source == "kubernetes"):
                        self._mark(ref)
                self.log.warning("experiment watch ended, watching again")
            except Exception as e:
                self.log.warning("experiment watch failed", error=_describe(e))
            await asyncio.sleep(delays.next())

    async def _follow_statuses(self) -> None:
        delays = _Delays(self.backoff)
        while True:
            try:
                async for ref, status in self.store.watch_status():
                    delays.reset()
                    if status is None:
                        self._statuses.pop(ref, None)
                    else:
                        self._statuses[ref] = status
                    if self._known(ref):
                        self._mark(ref)
                self.log.warning("experiment status watch ended, watching again")
            except Exception as e:
                self.log.warning("experiment status watch failed", error=_describe(e))
            await asyncio.sleep(delays.next())

    async def _recheck_loop(self) -> None:
        """Look at everything again now and then: a missed store change cannot leave a
        finalizer in place for long."""
        while True:
            await asyncio.sleep(self.recheck)
            self._sweep = True
            for objects in self._objects.values():
                self._mark(*objects)
            self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._sweep:
                self._sweep = False
                try:
                    await self._sweep_store()
                except Exception as e:  # looked at again after a pause
                    self._sweep = True
                    self._retry_later("", e)
            while self._dirty:
                ref = next(iter(self._dirty))
                del self._dirty[ref]
                try:
                    await self._reconcile(ref)
                except Exception as e:
                    self._retry_later(ref, e)
                else:
                    self._delays.pop(ref, None)

    def _retry_later(self, ref: str, error: Exception) -> None:
        retry_after = 0.0
        if isinstance(error, ApiException) and error.headers:
            with contextlib.suppress(ValueError):
                retry_after = float(error.headers.get("Retry-After", 0))
        delay = self._delays.setdefault(ref, _Delays(self.backoff)).next(retry_after)
        self.log.warning(
            "kube reconcile failed",
            experiment=ref or None,
            error=_describe(error),
            retry_in=round(delay, 3),
        )
        if (old := self._timers.pop(ref, None)) is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(ref, None)
            if ref:
                self._mark(ref)
            else:
                self._wake.set()

        self._timers[ref] = asyncio.get_running_loop().call_later(delay, fire)

    async def _sweep_store(self) -> None:
        """After a (re)list: every store entry from Kubernetes without an object is looked
        at (and marked deleting by _orphan)."""
        if not all(k.plural in self._synced for k in self.kinds):
            return
        specs, _ = await self.store.specs()
        self._mark(
            *(ref for ref, e in specs.items() if e.source == "kubernetes" and not self._known(ref))
        )

    # --- reconciling one name ---

    async def _spec(self, ref: str) -> tuple[SpecEntry | None, int]:
        try:
            found = await self.store.get_spec(ref)
        except ValueError as e:  # unreadable: written by something broken; replaced below
            self.log.warning("experiment entry unreadable", experiment=ref, error=str(e))
            return None, 0
        return found if found is not None else (None, 0)

    async def _reconcile(self, ref: str) -> None:
        present = [
            (kind, self._objects[kind.plural][ref])
            for kind in self.kinds
            if ref in self._objects[kind.plural]
        ]
        entry, revision = await self._spec(ref)
        if not present:
            await self._orphan(ref, entry)
            return
        uids = {_uid(obj): str(obj.get("kind")) for _, obj in present}
        for i, (kind, obj) in enumerate(present):
            if i:
                entry, revision = await self._spec(ref)
            await self._reconcile_object(ref, kind, obj, entry, revision, uids)

    async def _reconcile_object(
        self,
        ref: str,
        kind: Kind,
        obj: dict[str, Any],
        entry: SpecEntry | None,
        revision: int,
        uids: dict[str, str],
    ) -> None:
        meta = obj["metadata"]
        uid = meta["uid"]
        mine = entry is not None and entry.source == "kubernetes" and entry.uid == uid
        if meta.get("deletionTimestamp"):
            await self._sync_status(ref, kind, obj, mine=mine, verdict=None)
            await self._finalize(ref, kind, obj, entry if mine else None)
            return
        if FINALIZER not in (meta.get("finalizers") or []):
            obj = await self._add_finalizer(kind, obj)
            meta = obj["metadata"]

        verdict: dict[str, Any] | None = None
        waiting = False
        if entry is not None and not mine:
            if entry.source != "kubernetes":
                verdict = _refusal(
                    "Conflict",
                    f"{ref} was applied with chaosctl by {entry.actor}: delete it there first",
                    meta,
                )
            elif entry.uid in uids:
                verdict = _refusal(
                    "Conflict", f"{ref} is already run by the {uids[entry.uid]} of that name", meta
                )
            else:
                # The experiment of an earlier object of this name, gone meanwhile: its
                # faults are recovered first, then this one starts.
                if not entry.deleting:
                    await self._mark_deleting(ref, entry.uid, "replaced by a new object")
                waiting = True
        manifest = _manifest(obj)
        if verdict is None:
            try:
                parse_manifest(manifest, default_namespace=meta.get("namespace", "default"))
            except SpecError as e:
                verdict = _refusal("Invalid", str(e), meta)
        if verdict is not None or waiting:
            await self._sync_status(ref, kind, obj, mine=mine, verdict=verdict)
            return

        wanted = SpecEntry(
            manifest=manifest,
            source="kubernetes",
            actor=_actor(meta, self.field_manager),
            time=time.time(),
            paused=(meta.get("annotations") or {}).get(PAUSE_ANNOTATION) == "true",
            deleting=False,
            uid=uid,
        )
        if entry is None:
            await self.store.put_spec(ref, wanted)
            self.log.info("kube experiment stored", experiment=ref, kind=obj["kind"], uid=uid)
        elif entry.deleting:
            # Deleted from the store's side (chaosctl delete) while the object remains:
            # once the engine is done the entry goes, and the object runs again.
            await self._sync_status(ref, kind, obj, mine=True, verdict=None)
            return
        elif _relevant(entry) != _relevant(wanted):
            await self.store.update_spec(ref, wanted, revision)
            self.log.info(
                "kube experiment updated",
                experiment=ref,
                generation=meta.get("generation"),
                paused=wanted.paused,
            )
        accepted = {
            "type": VALID,
            "status": "True",
            "reason": "Valid",
            "message": "the spec is valid",
            "observedGeneration": meta.get("generation"),
        }
        await self._sync_status(ref, kind, obj, mine=True, verdict=accepted)

    async def _orphan(self, ref: str, entry: SpecEntry | None) -> None:
        """No object of this name: an entry it left running is recovered."""
        if entry is None or entry.source != "kubernetes" or entry.deleting:
            return
        if not all(k.plural in self._synced for k in self.kinds):
            return  # not every kind listed yet: absence says nothing
        if _kind_of(entry.manifest) not in [k.plural for k in self.kinds]:
            return  # a kind this source does not follow (now): not ours to judge
        if self.namespace is not None and not ref.startswith(self.namespace + "/"):
            return
        await self._mark_deleting(ref, entry.uid, "its object is gone")

    async def _mark_deleting(self, ref: str, uid: str, why: str) -> None:
        """Set ``deleting`` on the entry of ``uid`` (compare-and-set, retried)."""
        for _ in range(CAS_ATTEMPTS):
            entry, revision = await self._spec(ref)
            if entry is None or entry.uid != uid or entry.deleting:
                return
            try:
                await self.store.update_spec(
                    ref, dataclasses.replace(entry, deleting=True), revision
                )
            except StaleWrite:
                continue
            self.log.info("kube experiment deleting", experiment=ref, uid=uid, why=why)
            return
        raise StaleWrite(f"{ref} kept changing while marking it deleting")

    async def _finalize(
        self, ref: str, kind: Kind, obj: dict[str, Any], entry: SpecEntry | None
    ) -> None:
        """The object is being deleted: recover, then let it go."""
        if FINALIZER not in (obj["metadata"].get("finalizers") or []):
            return
        if entry is None:
            await self._remove_finalizer(ref, kind, obj)
        elif not entry.deleting:
            await self._mark_deleting(ref, entry.uid, "its object is being deleted")
        # else: the engine is recovering; its removal of the entry wakes us again.

    # --- writes to Kubernetes ---

    async def _patch(
        self, kind: Kind, obj: dict[str, Any], patch: list[dict[str, Any]], *, status: bool
    ) -> dict[str, Any]:
        fn = (
            self._custom.patch_namespaced_custom_object_status
            if status
            else self._custom.patch_namespaced_custom_object
        )
        meta = obj["metadata"]
        # A list body goes out as application/json-patch+json.
        return await call_json(
            fn,
            kind.group,
            kind.version,
            meta["namespace"],
            kind.plural,
            meta["name"],
            body=patch,
            field_manager=self.field_manager,
            timeout=WRITE_TIMEOUT,
        )

    async def _add_finalizer(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        finalizers = meta.get("finalizers")
        if finalizers is None:
            patch = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": meta["resourceVersion"],
                },
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ]
        else:
            patch = [
                {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
            ]
        new = await self._patch(kind, obj, patch, status=False)
        self._remember(kind, new)
        self.log.info("kube finalizer added", experiment=_ref(obj))
        return self._objects[kind.plural].get(_ref(obj), new)

    async def _remove_finalizer(self, ref: str, kind: Kind, obj: dict[str, Any]) -> None:
        finalizers = obj["metadata"].get("finalizers") or []
        patch = [
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {
                "op": "replace",
                "path": "/metadata/finalizers",
                "value": [f for f in finalizers if f != FINALIZER],
            },
        ]
        new = await self._patch(kind, obj, patch, status=False)
        if new.get("metadata", {}).get("finalizers"):
            self._remember(kind, new)  # others' finalizers still hold it
        elif _uid(self._objects[kind.plural].get(ref, obj)) == _uid(obj):
            self._objects[kind.plural].pop(ref, None)  # gone: its DELETED event follows
        self.log.info("kube finalizer removed", experiment=ref)

    async def _sync_status(
        self,
        ref: str,
        kind: Kind,
        obj: dict[str, Any],
        *,
        mine: bool,
        verdict: dict[str, Any] | None,
    ) -> None:
        """Write the status the object should show, if it differs, then tell what changed."""
        meta = obj["metadata"]
        current: dict[str, Any] = obj.get("status") or {}
        status = self._statuses.get(ref)
        mirrored = status is not None and mine and status.uid == meta["uid"]
        desired = copy.deepcopy(current)
        if mirrored:
            assert status is not None
            for key in MIRRORED:
                desired.pop(key, None)
            desired.update(_mirror(status))
            conditions = [_condition(c) for c in status.conditions]
        else:
            # Without a status of this object's experiment (not read yet, or none), what
            # the object shows stays as it is.
            conditions = copy.deepcopy(current.get("conditions") or [])
        conditions = _with_verdict(conditions, current.get("conditions") or [], verdict, mirrored)
        if conditions:
            desired["conditions"] = conditions
        if desired == current:
            return
        new = await self._patch(
            kind, obj, [{"op": "add", "path": "/status", "value": desired}], status=True
        )
        self._remember(kind, new)
        await self._announce(ref, new or obj, current, desired, status if mirrored else None)

    async def _announce(
        self,
        ref: str,
        obj: dict[str, Any],
        before: dict[str, Any],
        after: dict[str, Any],
        status: Status | None,
    ) -> None:
        """One Event per transition (and an audit event for a refusal)."""
        old, new = _find(before, VALID), _find(after, VALID)
        if new is not None and new["status"] == "False" and _verdict_key(old) != _verdict_key(new):
            meta = obj["metadata"]
            self.audit.record(
                "experiment.rejected",
                actor=f"controller:{ref}",
                experiment=ref,
                object_kind=obj.get("kind"),
                uid=meta.get("uid"),
                generation=meta.get("generation"),
                reason=new["reason"],
                message=new["message"],
                user=_actor(meta, self.field_manager),
            )
            self.log.warning("kube experiment rejected", experiment=ref, error=new["message"])
            await self._event(obj, "Warning", new["reason"], new["message"])
        if status is None:
            return
        was, now = before.get("phase"), after.get("phase")
        run_changed = before.get("run") != after.get("run")
        if was == "Paused" and now not in ("Paused", "Deleting"):
            await self._event(obj, "Normal", "Resumed", f"run {status.run}: resumed")
        if now == "Paused" and was != "Paused":
            await self._event(
                obj, "Normal", "Paused", f"run {status.run}: paused, faults recovered"
            )
        if now == "Running" and (was != "Running" or run_changed):
            note = (
                f"run {status.run}: injected into {len(status.acked)} "
                f"of {len(status.selected)} pod(s)"
            )
            if status.missing:
                note += f"; {len(status.missing)} missing or failed"
            await self._event(obj, "Normal", "Injected", note)
        if now in ("Waiting", "Finished") and was in ("Injecting", "Running"):
            recovered = sum(1 for r in status.pods.values() if r.outcome in ("recovered", "gone"))
            await self._event(
                obj, "Normal", "Recovered", f"run {status.run}: recovered {recovered} pod(s)"
            )
        if now == "Failed" and was != "Failed":
            await self._event(obj, "Warning", "Failed", status.message or "the experiment failed")

    async def _event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """Post one core/v1 Event about the object; a failure is logged, not retried."""
        meta = obj["metadata"]
        now = _rfc3339(time.time())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            # client-go's recorder names events this way: unique, and sorted in time.
            "metadata": {
                "name": f"{meta['name']}.{time.time_ns():x}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:MAX_MESSAGE],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": f"chaosbus.io/{FIELD_MANAGER}",
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await call_json(
                self._core.create_namespaced_event,
                meta["namespace"],
                body=body,
                field_manager=self.field_manager,
                timeout=WRITE_TIMEOUT,
            )
        except Exception as e:
            self.log.warning(
                "kube event failed", experiment=_ref(obj), reason=reason, error=_describe(e)
            )


# --- helpers ----------------------------------------------------------------------


def _ref(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _named(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("metadata"), dict)
        and "name" in obj["metadata"]
    )


def _uid(obj: dict[str, Any]) -> str:
    return obj["metadata"].get("uid", "")


def _older(obj: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether obj is an older version than ``than``. resourceVersions are opaque, but
    every server in use writes etcd revisions, which are numbers: compare them as such,
    and call anything else newer."""
    a, b = obj["metadata"].get("resourceVersion", ""), than["metadata"].get("resourceVersion", "")
    return a.isdigit() and b.isdigit() and int(a) < int(b)


def _kind_of(manifest: dict[str, Any]) -> str:
    return IOCHAOS.plural if manifest.get("kind") in IOCHAOS.kinds else FSCHAOS.plural


def _manifest(obj: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps of an object: kind, identity, labels, annotations (less
    kubectl's copy of the whole object) and spec; not its status or bookkeeping."""
    meta = obj["metadata"]
    kept = {
        k: copy.deepcopy(meta[k])
        for k in ("name", "namespace", "uid", "generation", "labels")
        if k in meta
    }
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    if annotations:
        kept["annotations"] = annotations
    out = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": kept}
    if "spec" in obj:
        out["spec"] = copy.deepcopy(obj["spec"])
    return out


def _relevant(entry: SpecEntry) -> tuple[Any, ...]:
    """What, when it changes, makes a store write: not the actor, time or annotations."""
    m = entry.manifest
    return (
        entry.uid,
        entry.paused,
        m.get("apiVersion"),
        m.get("kind"),
        m.get("spec"),
        (m.get("metadata") or {}).get("generation"),
    )


def _actor(meta: dict[str, Any], own_manager: str) -> str:
    """``kubernetes:<manager>`` of the last write to the object's spec or metadata that was
    not this controller's (managedFields name the client, e.g. kubectl; the user is not
    recorded on the object), else ``kubernetes:api``."""
    writes = [
        e
        for e in meta.get("managedFields") or []
        if isinstance(e, dict)
        and e.get("manager")
        and e["manager"] != own_manager
        and not e.get("subresource")
    ]
    if not writes:
        return "kubernetes:api"
    # Times have whole seconds: of writes in the same second, the one listed last.
    _, _, latest = max((str(e.get("time") or ""), i, e) for i, e in enumerate(writes))
    return f"kubernetes:{latest['manager']}"


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mirror(status: Status) -> dict[str, Any]:
    out: dict[str, Any] = {
        "phase": status.phase,
        "run": status.run,
        "selected": list(status.selected),
        "message": status.message[:MAX_MESSAGE],
    }
    records = []
    for pod, record in sorted(status.pods.items()):
        item: dict[str, Any] = {
            "pod": pod,
            "outcome": record.outcome,
            "time": _rfc3339(record.time),
        }
        if record.error:
            item["error"] = record.error[:MAX_MESSAGE]
        records.append(item)
    out["pods"] = records[:MAX_POD_RECORDS]
    if len(records) > MAX_POD_RECORDS:
        out["podsOmitted"] = len(records) - MAX_POD_RECORDS
    for key, value in (
        ("startTime", status.started_at),
        ("endTime", status.ends_at),
        ("nextRun", status.next_run),
    ):
        if value is not None:
            out[key] = _rfc3339(value)
    return out


def _condition(c: Any) -> dict[str, Any]:
    return {
        "type": c.type,
        "status": c.status,
        "reason": c.reason,
        "message": c.message[:MAX_MESSAGE],
        "lastTransitionTime": _rfc3339(c.time),
    }


def _refusal(reason: str, message: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": VALID,
        "status": "False",
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "observedGeneration": meta.get("generation"),
    }


def _find(status_or_conditions: Any, kind: str) -> dict[str, Any] | None:
    conditions = (
        status_or_conditions.get("conditions") or []
        if isinstance(status_or_conditions, dict)
        else status_or_conditions
    )
    return next((c for c in conditions if isinstance(c, dict) and c.get("type") == kind), None)


def _verdict_key(condition: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if condition is None:
        return None
    return tuple(condition.get(k) for k in ("status", "reason", "message", "observedGeneration"))


def _with_verdict(
    conditions: list[dict[str, Any]],
    current: Iterable[dict[str, Any]],
    verdict: dict[str, Any] | None,
    mirrored: bool,
) -> list[dict[str, Any]]:
    """The conditions with this source's verdict on the newest generation as ``Valid``.

    A refusal always shows (the engine still runs the previous generation, which it found
    valid). An acceptance defers to the engine's own Valid when the engine reported one.
    Without a verdict, the Valid condition the object shows stays.
    """
    engine_valid = _find(conditions, VALID) if mirrored else None
    if verdict is None:
        if mirrored and engine_valid is None and (shown := _find(list(current), VALID)):
            conditions.append(copy.deepcopy(shown))
        return conditions
    if verdict["status"] == "True" and engine_valid is not None:
        return conditions
    shown = _find(list(current), VALID)
    condition = dict(verdict)
    if shown is not None and shown.get("status") == verdict["status"]:
        condition["lastTransitionTime"] = shown.get("lastTransitionTime") or _rfc3339(time.time())
    else:
        condition["lastTransitionTime"] = _rfc3339(time.time())
    if condition.get("observedGeneration") is None:
        condition.pop("observedGeneration", None)
    others = [c for c in conditions if c.get("type") != VALID]
    return [*others, condition]
