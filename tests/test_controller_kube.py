"""The controller's Kubernetes path: KubeSource and KubePods against the stand-in API server
(tests/k8s_standin.py) through the real kubernetes-asyncio client, with a real nats-server
holding the experiment store. No engine runs here: the tests play its part, writing
statuses and deleting store entries as it would."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from k8s_standin import JSON_PATCH, MERGE_PATCH, ApiError, KubeStandin
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from test_kube_source import RecordingLog

from chaosbus.audit import AuditLog
from chaosbus.experiments.spec import PodSelector
from chaosbus.experiments.store import Condition, ExperimentStore, PodRecord, SpecEntry, Status
from controller.kube import FINALIZER, FSCHAOS, IOCHAOS, PAUSE_ANNOTATION, KubeSource
from controller.pods import KubePods
from template_watcher.kube_source import Backoff, make_api_client

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
FSCHAOS_CRD = yaml.safe_load((ROOT / "deploy/base/crds/fschaos.yaml").read_text())
IOCHAOS_CRD = yaml.safe_load(
    (ROOT / "deploy/optional/chaos-mesh-iochaos/iochaos-crd.yaml").read_text()
)
FS = "fschaos.chaosbus.io"  # the stand-in's name for the resource
IO = "iochaos.chaos-mesh.org"
FAST = Backoff(initial=0.01, maximum=0.05)
NS = "apps"
WAIT = 10.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(50):
            await coro

    asyncio.run(bounded())


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fschaos(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "mode": "all",
        "selector": {"labelSelectors": {"app": "db"}},
        "duration": "30s",
        "rules": [{"action": "errno", "errno": "EIO", "methods": ["write"]}],
        **spec,
    }
    return {
        "apiVersion": "chaosbus.io/v1alpha1",
        "kind": "FsChaos",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


def iochaos(name: str) -> dict[str, Any]:
    """A Chaos Mesh v0.9 IoChaos."""
    return {
        "apiVersion": "chaos-mesh.org/v1alpha1",
        "kind": "IoChaos",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "action": "errno",
            "mode": "one",
            "errno": "5",
            "percent": "50",
            "path": "/data/.*",
            "layer": "fs",
            "duration": "10s",
            "selector": {"labelSelectors": {"app": "db"}},
        },
    }


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    if obj is None:
        return None
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), None)


class RecordingAudit(AuditLog):
    """An AuditLog (never started) that also keeps what it was given."""

    def __init__(self, log: Any) -> None:
        super().__init__("controller", log)
        self.events: list[dict[str, Any]] = []

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = super().record(kind, **fields)
        self.events.append(event)
        return event

    def named(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


@dataclass
class World:
    k8s: KubeStandin
    api: client.ApiClient
    store: ExperimentStore
    log: RecordingLog
    audit: RecordingAudit
    task: asyncio.Task[None] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def start(self, **options: Any) -> None:
        source = KubeSource(
            self.api, self.store, self.log, self.audit, backoff=FAST, instance="test", **options
        )
        self.task = asyncio.create_task(source.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def until(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """Poll predicate (sync or async) until it returns something truthy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.task is not None and self.task.done():
                raise AssertionError(f"the source stopped: {self.task.exception()!r}")
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.02)

    async def apply(
        self, body: dict[str, Any], manager: str = "kubectl-client-side-apply"
    ) -> dict[str, Any]:
        kind = FSCHAOS if body["kind"] == "FsChaos" else IOCHAOS
        return await client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            kind.group, kind.version, NS, kind.plural, body, field_manager=manager
        )

    def obj(self, name: str, resource: str = FS) -> dict[str, Any] | None:
        return self.k8s.get(resource, NS, name)

    async def entry(self, name: str) -> SpecEntry | None:
        found = await self.store.get_spec(f"{NS}/{name}")
        return found[0] if found else None

    async def revision(self, name: str) -> int:
        found = await self.store.get_spec(f"{NS}/{name}")
        assert found is not None
        return found[1]

    def entry_where(self, name: str, test: Callable[[SpecEntry], bool]) -> Callable[[], Any]:
        async def check() -> SpecEntry | None:
            entry = await self.entry(name)
            return entry if entry is not None and test(entry) else None

        return check

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.k8s.events(NS)
            if e["involvedObject"]["name"] == name and reason in (None, e["reason"])
        ]

    def status_where(
        self, name: str, test: Callable[[dict[str, Any]], bool], resource: str = FS
    ) -> Callable[[], Any]:
        def check() -> dict[str, Any] | None:
            obj = self.obj(name, resource)
            return obj if obj is not None and test(obj.get("status") or {}) else None

        return check


@contextlib.asynccontextmanager
async def world(
    tmp_path: Path, nats_url: str, *, start: bool = True, **options: Any
) -> AsyncIterator[World]:
    async with KubeStandin() as k8s:
        k8s.register_crd(FSCHAOS_CRD)
        k8s.register_crd(IOCHAOS_CRD)
        k8s.create_namespace(NS)
        api = await make_api_client(str(k8s.write_kubeconfig(tmp_path / "kubeconfig")))
        nc = await nats.connect(nats_url)
        log = RecordingLog()
        w = World(k8s, api, await ExperimentStore.open(nc), log, RecordingAudit(log))
        if start:
            w.start(**options)
        try:
            yield w
        finally:
            await w.stop()
            await api.close()
            await nc.close()


# --- objects to the store -----------------------------------------------------------


def test_an_applied_object_gets_the_finalizer_then_runs(tmp_path, nats_server):
    async def body() -> None:
        async with world(tmp_path, nats_server.url) as w:
            created = await w.apply(fschaos("db-eio"))
            entry = await w.until(lambda: w.entry("db-eio"), "the experiment in the store")
            obj = w.obj("db-eio")
            assert obj is not None and obj["metadata"]["finalizers"] == [FINALIZER]
            # The finalizer went on first, as a JSON patch whose test guards it.
            (patch, *_) = [r for r in w.k8s.writes("fschaos") if r.method == "PATCH"]
            assert patch.content_type == JSON_PATCH and patch.subresource is None
            assert patch.body[-1]["value"] == [FINALIZER]

            assert entry.source == "kubernetes"
            assert entry.uid == created["metadata"]["uid"]
            assert entry.actor == "kubernetes:kubectl-client-side-apply"
            assert not entry.paused and not entry.deleting
            assert entry.manifest["kind"] == "FsChaos"
            assert entry.manifest["spec"] == fschaos("db-eio")["spec"]
            assert entry.manifest["metadata"]["generation"] == 1
            assert "status" not in entry.manifest
            assert "managedFields" not in entry.manifest["metadata"]
            valid = await w.until(
                lambda: condition(w.obj("db-eio"), "Valid"), "the Valid condition"
            )
            assert (valid["status"], valid["reason"], valid["observedGeneration"]) == (
                "True",
                "Valid",
                1,
            )

            # A label is no reason to write the store; a spec change is (once).
            revision = await w.revision("db-eio")
            w.k8s.patch(FS, NS, "db-eio", {"metadata": {"labels": {"team": "storage"}}})
            w.k8s.patch(FS, NS, "db-eio", {"spec": {"mode": "one"}}, manager="kubectl-edit")
            entry = await w.until(
                w.entry_where("db-eio", lambda e: e.manifest["spec"]["mode"] == "one"),
                "the edited spec in the store",
            )
            assert entry.manifest["metadata"]["generation"] == 2
            assert entry.actor == "kubernetes:kubectl-edit"
            assert await w.revision("db-eio") == revision + 1
            await w.until(
                lambda: (condition(w.obj("db-eio"), "Valid") or {}).get("observedGeneration") == 2,
                "Valid for generation 2",
            )
            assert not w.log.named("kube reconcile failed")

    run(body())


def test_an_invalid_object_is_refused_and_the_running_version_kept(tmp_path, nats_server):
    async def body() -> None:
        async with world(tmp_path, nats_server.url) as w:
            await w.apply(fschaos("bad", mode="fixed"))  # fixed needs a value
            refused = await w.until(
                lambda: (c := condition(w.obj("bad"), "Valid")) and c["status"] == "False" and c,
                "the refusal in the status",
            )
            assert refused["reason"] == "Invalid"
            assert refused["message"].startswith("spec.value: mode fixed needs a value")
            (event,) = await w.until(lambda: w.events("bad", "Invalid"), "a Warning event")
            assert event["type"] == "Warning" and event["message"] == refused["message"]
            assert event["involvedObject"]["kind"] == "FsChaos"
            assert event["source"] == {"component": "chaos-controller"}
            (audit,) = w.audit.named("experiment.rejected")
            assert audit["experiment"] == "apps/bad" and audit["message"] == refused["message"]
            assert audit["service"] == "controller" and audit["actor"] == "controller:apps/bad"
            assert await w.entry("bad") is None

            # A valid experiment edited into an invalid one keeps running as it was.
            await w.apply(fschaos("good"))
            stored = await w.until(lambda: w.entry("good"), "the valid experiment stored")
            revision = await w.revision("good")
            w.k8s.patch(FS, NS, "good", {"spec": {"mode": "fixed"}})
            await w.until(
                lambda: (
                    (c := condition(w.obj("good"), "Valid"))
                    and (c["status"], c.get("observedGeneration")) == ("False", 2)
                ),
                "the edit refused",
            )
            await w.until(lambda: w.events("good", "Invalid"), "the Warning event")
            assert await w.revision("good") == revision
            assert (await w.entry("good")).manifest == stored.manifest

            # Fixed: accepted and stored.
            w.k8s.patch(FS, NS, "good", {"spec": {"value": "1"}})
            await w.until(
                w.entry_where("good", lambda e: e.manifest["spec"].get("value") == "1"),
                "the fixed spec stored",
            )
            await w.until(
                lambda: (condition(w.obj("good"), "Valid") or {}).get("status") == "True",
                "Valid again",
            )
            assert len(w.events("good", "Invalid")) == 1
            assert len(w.audit.named("experiment.rejected")) == 2

    run(body())


def test_names_taken_elsewhere_are_refused(tmp_path, nats_server):
    async def body() -> None:
        async with world(tmp_path, nats_server.url, chaos_mesh=True) as w:
            # A Chaos Mesh v0.9 IoChaos runs like an FsChaos...
            await w.apply(iochaos("io"))
            entry = await w.until(lambda: w.entry("io"), "the IoChaos stored")
            assert entry.manifest["kind"] == "IoChaos"
            assert w.obj("io", IO)["metadata"]["finalizers"] == [FINALIZER]
            # ...and an FsChaos of the same name cannot take its place.
            await w.apply(fschaos("io"))
            refused = await w.until(
                lambda: (c := condition(w.obj("io"), "Valid")) and c["status"] == "False" and c,
                "the FsChaos refused",
            )
            assert refused["reason"] == "Conflict"
            assert "already run by the IoChaos" in refused["message"]
            assert (await w.entry("io")).uid == entry.uid

            # Nor can an object take over what chaosctl applied.
            await w.store.put_spec(
                f"{NS}/cli",
                SpecEntry(fschaos("cli"), source="chaosctl", actor="alice", time=time.time()),
            )
            await w.apply(fschaos("cli", mode="one"))
            refused = await w.until(
                lambda: (c := condition(w.obj("cli"), "Valid")) and c["status"] == "False" and c,
                "the object refused",
            )
            assert refused["reason"] == "Conflict" and "chaosctl by alice" in refused["message"]
            kept = await w.entry("cli")
            assert kept.source == "chaosctl" and kept.manifest["spec"]["mode"] == "all"

    run(body())


def test_the_pause_annotation_pauses_and_resumes(tmp_path, nats_server):
    async def body() -> None:
        async with world(tmp_path, nats_server.url, namespace=NS) as w:
            await w.apply(fschaos("p"))
            await w.until(lambda: w.entry("p"), "the experiment stored")
            # One namespace only: listed and watched there.
            reads = [*w.k8s.lists("fschaos"), *w.k8s.watch_requests("fschaos")]
            assert reads and all(f"/namespaces/{NS}/fschaos" in r.path for r in reads)
            w.k8s.patch(FS, NS, "p", {"metadata": {"annotations": {PAUSE_ANNOTATION: "true"}}})
            entry = await w.until(w.entry_where("p", lambda e: e.paused), "paused")
            assert entry.manifest["metadata"]["generation"] == 1  # metadata: no new generation
            w.k8s.patch(FS, NS, "p", {"metadata": {"annotations": {PAUSE_ANNOTATION: None}}})
            await w.until(w.entry_where("p", lambda e: not e.paused), "resumed")

    run(body())


# --- status back to the objects -------------------------------------------------------


def test_status_is_mirrored_with_one_event_per_transition(tmp_path, nats_server):
    async def body() -> None:
        async with world(tmp_path, nats_server.url) as w:
            await w.apply(fschaos("m"))
            entry = await w.until(lambda: w.entry("m"), "the experiment stored")
            ref, t0 = f"{NS}/m", time.time()
            # A status of another object of that name (another uid) is not this one's.
            revision = await w.store.write_status(ref, Status(phase="Running", uid="x"), 0)
            st = Status(
                phase="Injecting",
                run=1,
                selected=["apps/db-0", "apps/db-1"],
                started_at=t0,
                ends_at=t0 + 30,
                uid=entry.uid,
                conditions=[Condition("Selected", "True", "Selected", "2 pod(s) selected", t0)],
            )

            async def write() -> None:
                nonlocal revision
                revision = await w.store.write_status(ref, st, revision)

            await write()
            await w.until(w.status_where("m", lambda s: s.get("phase") == "Injecting"), "Injecting")
            assert not w.events("m", "Injected")

            st.phase = "Running"
            st.pods = {
                "apps/db-0": PodRecord("injected", t0),
                "apps/db-1": PodRecord("missing", t0 + 1, "no sidecar answered"),
            }
            await write()
            obj = await w.until(
                w.status_where("m", lambda s: s.get("phase") == "Running"), "Running"
            )
            status = obj["status"]
            assert status["run"] == 1
            assert status["selected"] == ["apps/db-0", "apps/db-1"]
            assert status["pods"] == [
                {"pod": "apps/db-0", "outcome": "injected", "time": rfc3339(t0)},
                {
                    "pod": "apps/db-1",
                    "outcome": "missing",
                    "error": "no sidecar answered",
                    "time": rfc3339(t0 + 1),
                },
            ]
            assert (status["startTime"], status["endTime"]) == (rfc3339(t0), rfc3339(t0 + 30))
            assert "nextRun" not in status
            conditions = {c["type"]: c for c in status["conditions"]}
            assert conditions["Selected"] == {
                "type": "Selected",
                "status": "True",
                "reason": "Selected",
                "message": "2 pod(s) selected",
                "lastTransitionTime": rfc3339(t0),
            }
            assert conditions["Valid"]["status"] == "True"  # ours: the engine set none
            (injected,) = await w.until(lambda: w.events("m", "Injected"), "the Injected event")
            assert injected["type"] == "Normal"
            assert injected["message"] == "run 1: injected into 1 of 2 pod(s); 1 missing or failed"

            # Same phase, new detail: the status follows, no new event.
            st.message = "still running"
            await write()
            await w.until(w.status_where("m", lambda s: s.get("message") == "still running"), "msg")

            st.phase, st.next_run = "Waiting", t0 + 60
            st.pods = {p: PodRecord("recovered", t0 + 30) for p in st.selected}
            await write()
            await w.until(lambda: w.events("m", "Recovered"), "the Recovered event")
            assert w.obj("m")["status"]["nextRun"] == rfc3339(t0 + 60)

            st.phase = "Paused"
            await write()
            await w.until(lambda: w.events("m", "Paused"), "the Paused event")
            st.phase, st.run = "Running", 2
            await write()
            await w.until(lambda: len(w.events("m", "Injected")) == 2, "run 2 injected")
            await w.until(lambda: w.events("m", "Resumed"), "the Resumed event")

            st.phase, st.message = "Failed", "run 2: the sidecars did not answer"
            await write()
            (failed,) = await w.until(lambda: w.events("m", "Failed"), "the Failed event")
            assert failed["type"] == "Warning" and failed["message"] == st.message
            counts: dict[str, int] = {}
            for event in w.events("m"):
                counts[event["reason"]] = counts.get(event["reason"], 0) + 1
            assert counts == {"Injected": 2, "Recovered": 1, "Paused": 1, "Resumed": 1, "Failed": 1}
            # Status writes went to the status subresource only.
            status_writes = [r for r in w.k8s.writes("fschaos") if r.subresource == "status"]
            assert status_writes and all(r.method == "PATCH" for r in status_writes)
            assert w.obj("m")["metadata"]["generation"] == 1

    run(body())


# --- deletion -----------------------------------------------------------------------


def test_deletion_waits_for_the_engine_then_lets_the_object_go(tmp_path, nats_server):
    async def body() -> None:
        async with world(tmp_path, nats_server.url, recheck=600) as w:
            await w.apply(fschaos("gone"))
            await w.until(lambda: w.entry("gone"), "the experiment stored")
            await client.CustomObjectsApi(w.api).delete_namespaced_custom_object(
                FSCHAOS.group, FSCHAOS.version, NS, FSCHAOS.plural, "gone"
            )
            await w.until(w.entry_where("gone", lambda e: e.deleting), "deleting in the store")
            held = w.obj("gone")
            assert held is not None and held["metadata"]["deletionTimestamp"]
            assert FINALIZER in held["metadata"]["finalizers"]

            # The engine recovers every pod, then removes the entry: the object goes.
            await w.store.delete_spec(f"{NS}/gone")
            await w.until(lambda: w.obj("gone") is None, "the object gone")
            assert w.k8s.history[-1].type == "DELETED"
            assert w.k8s.history[-1].obj["metadata"]["name"] == "gone"

            # An object the store never ran goes at once.
            await w.apply(fschaos("never", mode="fixed"))
            await w.until(
                lambda: (w.obj("never") or {}).get("metadata", {}).get("finalizers"),
                "the finalizer on the refused object",
            )
            await client.CustomObjectsApi(w.api).delete_namespaced_custom_object(
                FSCHAOS.group, FSCHAOS.version, NS, FSCHAOS.plural, "never"
            )
            await w.until(lambda: w.obj("never") is None, "the refused object gone")

    run(body())


def test_a_relist_after_410_recovers_orphans_and_syncing_goes_on(tmp_path, nats_server):
    async def body() -> None:
        async with world(tmp_path, nats_server.url, start=False) as w:
            # Left by an object deleted while no controller ran.
            await w.store.put_spec(
                f"{NS}/ghost",
                SpecEntry(
                    fschaos("ghost"), "kubernetes", "kubernetes:api", time.time(), uid="ghost-uid"
                ),
            )
            w.start()
            await w.until(w.entry_where("ghost", lambda e: e.deleting), "the orphan deleting")

            await w.apply(fschaos("a"))
            await w.until(lambda: w.entry("a"), "a stored")
            await w.k8s.wait_for_watches()
            lists = len(w.k8s.lists("fschaos"))
            # While the watch is down: a is forced past its finalizer, b appears, and the
            # history is lost, so the watch gets 410 Gone and must relist.
            w.k8s.end_watches()
            w.k8s.delete(FS, NS, "a")
            w.k8s.patch(FS, NS, "a", {"metadata": {"finalizers": None}}, manager="kubectl")
            w.k8s.create(FS, fschaos("b"))
            w.k8s.compact()
            await w.until(w.entry_where("a", lambda e: e.deleting), "a's experiment deleting")
            await w.until(lambda: w.entry("b"), "b stored")
            assert len(w.k8s.lists("fschaos")) > lists
            assert w.log.named("kube watch expired, relisting")

            # Watching goes on from the new list, bookmarks included.
            await w.k8s.wait_for_watches()
            w.k8s.patch(FS, NS, "b", {"spec": {"mode": "one"}})
            await w.until(
                w.entry_where("b", lambda e: e.manifest["spec"]["mode"] == "one"), "b's edit"
            )
            w.k8s.create_configmap(NS, "noise")
            bookmark = str(w.k8s.rv)
            assert w.k8s.send_bookmarks() == 1
            w.k8s.end_watches()
            await w.k8s.wait_for_watches()
            assert w.k8s.watch_requests("fschaos")[-1].query["resourceVersion"] == bookmark

    run(body())


# --- KubePods -----------------------------------------------------------------------


def test_kube_pods_resolve_every_selector_part(tmp_path):
    async def body() -> None:
        async with KubeStandin() as k8s:
            k8s.create_namespace(NS)
            k8s.create_namespace("other")
            k8s.create_node("n1", labels={"zone": "a"})
            k8s.create_node("n2", labels={"zone": "b"})
            k8s.create_node("n3", labels={"zone": "a"})
            db = {"app": "db"}
            k8s.create_pod(NS, "db-0", labels=db, node="n1", annotations={"team": "x"})
            k8s.create_pod(NS, "db-1", labels=db, node="n2")
            k8s.create_pod(NS, "db-2", labels=db, node="n3", phase="Pending")
            k8s.create_pod(NS, "web-0", labels={"app": "web"}, node="n1")
            k8s.create_pod(NS, "db-3", labels=db, node="n1")
            k8s.terminate_pod(NS, "db-3")  # being deleted: never a candidate
            k8s.create_pod("other", "db-9", labels=db, node="n2", annotations={"team": "x"})
            api = await make_api_client(str(k8s.write_kubeconfig(tmp_path / "kubeconfig")))
            pods = KubePods(api, page_size=2)

            async def refs(**selector: Any) -> list[str]:
                return [p.ref for p in await pods.candidates(PodSelector(**selector))]

            try:
                assert await refs(labels="app=db") == [
                    "apps/db-0",
                    "apps/db-1",
                    "apps/db-2",
                    "other/db-9",
                ]
                (listed, *_) = [r for r in k8s.lists("pods") if "labelSelector" in r.query]
                assert listed.query["labelSelector"] == "app=db"
                assert listed.query["limit"] == "2"
                assert any("continue" in r.query for r in k8s.lists("pods"))

                assert await refs(namespaces=("apps",), labels="app in (db)") == [
                    "apps/db-0",
                    "apps/db-1",
                    "apps/db-2",
                ]
                assert await refs(fields=(("spec.nodeName", "n1"),)) == ["apps/db-0", "apps/web-0"]
                assert k8s.lists("pods")[-1].query["fieldSelector"] == "spec.nodeName=n1"
                assert await refs(labels="app=db", phases=("Pending",)) == ["apps/db-2"]
                assert await refs(labels="app=db", nodes=("n2",)) == ["apps/db-1", "other/db-9"]
                assert await refs(labels="app=db", node_selectors=(("zone", "a"),)) == [
                    "apps/db-0",
                    "apps/db-2",
                ]
                assert await refs(labels="app=db", node_selectors=(("zone", "z"),)) == []
                assert await refs(annotations=(("team", "x"),)) == ["apps/db-0", "other/db-9"]
                # Pods named one by one are the whole choice; missing ones are skipped.
                assert await refs(
                    pods=(("apps", ("db-1", "nope", "web-0")), ("other", ("db-9",))),
                    labels="app=nothing",
                ) == ["apps/db-1", "apps/web-0", "other/db-9"]
                assert await refs(pods=(("apps", ("db-3",)),)) == []

                (info,) = await pods.candidates(PodSelector(pods=(("apps", ("db-2",)),)))
                assert (info.namespace, info.name, info.phase, info.node) == (
                    "apps",
                    "db-2",
                    "Pending",
                    "n3",
                )
                assert info.labels == db
            finally:
                await api.close()

    run(body())


# --- the stand-in's rules, as the client meets them -----------------------------------


def test_standin_custom_resources_follow_the_api_rules(tmp_path):
    async def body() -> None:
        async with KubeStandin() as k8s:
            k8s.register_crd(FSCHAOS_CRD)
            k8s.create_namespace(NS)
            api = await make_api_client(str(k8s.write_kubeconfig(tmp_path / "kubeconfig")))
            objects = client.CustomObjectsApi(api)
            args = (FSCHAOS.group, FSCHAOS.version, NS, FSCHAOS.plural)
            try:
                sent = {**fschaos("x"), "status": {"phase": "Running"}}
                made = await objects.create_namespaced_custom_object(*args, sent)
                meta = made["metadata"]
                assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
                assert meta["generation"] == 1 and "status" not in made
                with pytest.raises(ApiException) as exists:
                    await objects.create_namespaced_custom_object(*args, fschaos("x"))
                assert exists.value.status == 409

                # PUT: a stale resourceVersion is a conflict; status is the subresource's.
                stale = {**made, "spec": {**made["spec"], "mode": "one"}}
                k8s.patch(FS, NS, "x", {"metadata": {"labels": {"a": "b"}}})
                with pytest.raises(ApiException) as conflict:
                    await objects.replace_namespaced_custom_object(*args, "x", stale)
                assert conflict.value.status == 409 and '"reason":"Conflict"' in (
                    conflict.value.body.replace(" ", "")
                )
                fresh = k8s.get(FS, NS, "x")
                fresh["spec"]["mode"] = "one"
                fresh["status"] = {"phase": "Ignored"}
                put = await objects.replace_namespaced_custom_object(*args, "x", fresh)
                assert put["metadata"]["generation"] == 2 and "status" not in put
                status = await objects.replace_namespaced_custom_object_status(
                    *args, "x", {**put, "spec": {"mode": "all"}, "status": {"phase": "Running"}}
                )
                assert status["status"] == {"phase": "Running"}
                assert status["spec"]["mode"] == "one" and status["metadata"]["generation"] == 2

                # kubernetes-asyncio sends a dict patch as a JSON patch, which is refused.
                with pytest.raises(ApiException) as refused:
                    await objects.patch_namespaced_custom_object(*args, "x", {"spec": {}})
                assert refused.value.status == 400
                merged = await objects.patch_namespaced_custom_object(
                    *args, "x", {"spec": {"value": "1"}}, _content_type=MERGE_PATCH
                )
                assert merged["spec"]["value"] == "1" and merged["metadata"]["generation"] == 3
                with pytest.raises(ApiException) as failed_test:
                    await objects.patch_namespaced_custom_object(
                        *args, "x", [{"op": "test", "path": "/spec/mode", "value": "all"}]
                    )
                assert failed_test.value.status == 422

                # Finalizers hold a deleted object until they are gone.
                k8s.patch(FS, NS, "x", {"metadata": {"finalizers": ["a/b"]}})
                await objects.delete_namespaced_custom_object(*args, "x")
                held = k8s.get(FS, NS, "x")
                assert held["metadata"]["deletionTimestamp"]
                with pytest.raises(ApiError) as forbidden:
                    k8s.patch(FS, NS, "x", {"metadata": {"finalizers": ["a/b", "c/d"]}})
                assert forbidden.value.code == 422
                await objects.patch_namespaced_custom_object(
                    *args, "x", [{"op": "remove", "path": "/metadata/finalizers/0"}]
                )
                assert k8s.get(FS, NS, "x") is None
                assert k8s.history[-1].type == "DELETED"

                # Pods: field selectors with = and != on the server, and events.
                k8s.create_pod(NS, "p1", node="n1")
                k8s.create_pod(NS, "p2", phase="Pending")
                core = client.CoreV1Api(api)
                listed = await core.list_pod_for_all_namespaces(
                    field_selector="status.phase!=Running"
                )
                assert [p.metadata.name for p in listed.items] == ["p2"]
                listed = await core.list_namespaced_pod(NS, field_selector="spec.nodeName=")
                assert [p.metadata.name for p in listed.items] == ["p2"]
                with pytest.raises(ApiException) as unsupported:
                    await core.list_namespaced_pod(NS, field_selector="spec.hostname=x")
                assert unsupported.value.status == 400
                await core.create_namespaced_event(
                    NS,
                    {
                        "metadata": {"generateName": "p1."},
                        "involvedObject": {"kind": "Pod", "name": "p1", "namespace": NS},
                        "reason": "Tested",
                        "message": "hello",
                        "type": "Normal",
                    },
                )
                (event,) = k8s.events(NS)
                assert event["reason"] == "Tested" and event["metadata"]["name"].startswith("p1.")
            finally:
                await api.close()

    run(body())
