"""kube_source against the stand-in API server, through the real kubernetes-asyncio client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from k8s_standin import KubeStandin, parse_selector, run_in_thread
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from template_watcher.kube_source import Backoff, WatchEvent, make_api_client, watch_objects

pytestmark = pytest.mark.timeout(30)

FAST = Backoff(initial=0.01, maximum=0.05)
TEMPLATE = "app.kubernetes.io/component=template"
WAIT = 5.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(20):
            await coro

    asyncio.run(bounded())


class RecordingLog:
    """Stands in for a structlog bound logger: records (level, event, context)."""

    def __init__(self, records: list | None = None, context: dict | None = None) -> None:
        self.records: list[tuple[str, str, dict]] = [] if records is None else records
        self.context = context or {}

    def bind(self, **kw: Any) -> RecordingLog:
        return RecordingLog(self.records, {**self.context, **kw})

    def _log(self, level: str, event: str, **kw: Any) -> None:
        self.records.append((level, event, {**self.context, **kw}))

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, **kw)

    def named(self, event: str) -> list[dict]:
        return [ctx for _, e, ctx in self.records if e == event]


class Consumer:
    """Runs watch_objects in a task and queues what it yields."""

    def __init__(self, api: client.ApiClient, kind: Any, **kw: Any) -> None:
        self.log = RecordingLog()
        self.queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        kw.setdefault("namespace", None)
        kw.setdefault("label_selector", None)
        kw.setdefault("backoff", FAST)
        self.kind, self.namespace, self.selector = kind, kw["namespace"], kw["label_selector"]
        self.markers = 0
        self._task = asyncio.create_task(self._run(api, kind, kw))

    async def _run(self, api: client.ApiClient, kind: Any, kw: dict[str, Any]) -> None:
        async for event in watch_objects(api, kind, log=self.log, **kw):
            self.queue.put_nowait(event)

    async def next(self) -> WatchEvent:
        return await asyncio.wait_for(self.queue.get(), WAIT)

    async def quiet(self, k8s: KubeStandin) -> None:
        """Nothing more is delivered. Rather than wait a while and see nothing (which
        passes as well when nothing was read at all), make an object this consumer
        selects and wait for it: the server sends a watch's events in order and the
        source yields them in order, so the marker's ADDED event coming next proves
        that no earlier event is on its way."""
        self.markers += 1
        name = f"zz-quiet-{self.markers}"
        labels = {}
        for term in filter(None, (self.selector or "").split(",")):
            key, _, value = term.partition("=")  # the selectors used here: k=v and k
            labels[key] = value or "marker"
        if self.kind == "namespaces":
            k8s.create_namespace(name, labels=labels)
        else:
            k8s.create_configmap(self.namespace or "chaos", name, labels=labels)
        event = await self.next()
        assert (event.type, names(event)) == ("ADDED", {name}), f"unexpected event {event}"

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[KubeStandin, client.ApiClient]]:
    async with KubeStandin() as k8s:
        api = await make_api_client(str(k8s.write_kubeconfig(tmp_path / "kubeconfig")))
        try:
            yield k8s, api
        finally:
            await api.close()


def names(event: WatchEvent) -> set[str]:
    return {o["metadata"]["name"] for o in event.objects}


def seed(k8s: KubeStandin) -> None:
    k8s.create_namespace("chaos")
    k8s.create_namespace("apps")
    k8s.create_configmap(
        "chaos", "tpl-a", {"t": "a"}, labels={"app.kubernetes.io/component": "template"}
    )
    k8s.create_configmap(
        "chaos", "tpl-b", {"t": "b"}, labels={"app.kubernetes.io/component": "template"}
    )
    k8s.create_configmap("chaos", "other", {"o": "1"}, labels={"app.kubernetes.io/component": "x"})
    k8s.create_configmap(
        "apps", "tpl-z", {"t": "z"}, labels={"app.kubernetes.io/component": "template"}
    )


def test_initial_list_is_a_reset_of_the_selected_objects_only(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            seed(k8s)
            own = Consumer(api, "configmaps", namespace="chaos", label_selector=TEMPLATE)
            everywhere = Consumer(api, "configmaps", label_selector=TEMPLATE)
            try:
                reset = await own.next()
                assert reset.type == "RESET"
                assert names(reset) == {"tpl-a", "tpl-b"}
                obj = next(o for o in reset.objects if o["metadata"]["name"] == "tpl-a")
                # List items lack kind/apiVersion on the wire; the source puts them back.
                assert obj["apiVersion"] == "v1" and obj["kind"] == "ConfigMap"
                assert obj["data"] == {"t": "a"}
                meta = obj["metadata"]
                assert meta["namespace"] == "chaos" and meta["uid"] and meta["resourceVersion"]
                assert meta["labels"] == {"app.kubernetes.io/component": "template"}
                assert "creationTimestamp" in meta and "annotations" in meta

                reset = await everywhere.next()
                assert reset.type == "RESET" and names(reset) == {"tpl-a", "tpl-b", "tpl-z"}
                await own.quiet(k8s)
            finally:
                await own.stop()
                await everywhere.stop()

    run(body())


def test_list_is_paginated(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            seed(k8s)
            c = Consumer(api, "configmaps", page_size=1)
            try:
                reset = await c.next()
                assert names(reset) == {"tpl-a", "tpl-b", "other", "tpl-z"}
                lists = k8s.lists()
                assert len(lists) == 4 and all(r.query["limit"] == "1" for r in lists)
                assert "continue" not in lists[0].query and all(
                    "continue" in r.query for r in lists[1:]
                )
                # The watch starts from the first page's version: the snapshot's.
                await k8s.wait_for_watches()
                assert k8s.watch_requests()[0].query["resourceVersion"] == str(k8s.rv)
            finally:
                await c.stop()

    run(body())


def test_changes_arrive_as_single_object_events(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            seed(k8s)
            c = Consumer(api, "configmaps", namespace="chaos", label_selector=TEMPLATE)
            try:
                assert (await c.next()).type == "RESET"
                await k8s.wait_for_watches()
                k8s.create_configmap(
                    "chaos", "tpl-c", {"t": "c"}, labels={"app.kubernetes.io/component": "template"}
                )
                k8s.update_configmap("chaos", "tpl-a", {"t": "a2"})
                k8s.delete_configmap("chaos", "tpl-b")
                # Not selected: other namespace, other labels.
                k8s.create_configmap(
                    "apps", "tpl-y", labels={"app.kubernetes.io/component": "template"}
                )
                k8s.update_configmap("chaos", "other", {"o": "2"})
                # Leaving and entering the selection, as the real watch cache reports it.
                k8s.update_configmap(
                    "chaos", "tpl-c", labels={"app.kubernetes.io/component": "gone"}
                )
                k8s.update_configmap(
                    "chaos", "other", labels={"app.kubernetes.io/component": "template"}
                )

                seen = [await c.next() for _ in range(5)]
                assert [(e.type, names(e)) for e in seen] == [
                    ("ADDED", {"tpl-c"}),
                    ("MODIFIED", {"tpl-a"}),
                    ("DELETED", {"tpl-b"}),
                    ("DELETED", {"tpl-c"}),
                    ("ADDED", {"other"}),
                ]
                assert all(len(e.objects) == 1 for e in seen)
                assert seen[1].objects[0]["data"] == {"t": "a2"}
                assert seen[0].objects[0]["kind"] == "ConfigMap"
                await c.quiet(k8s)
            finally:
                await c.stop()

    run(body())


def test_an_ended_watch_resumes_without_relist(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            seed(k8s)
            c = Consumer(api, "configmaps", namespace="chaos", label_selector=TEMPLATE)
            try:
                assert (await c.next()).type == "RESET"
                list_rv = str(k8s.rv)
                await k8s.wait_for_watches()
                assert k8s.end_watches() == 1
                # Made while the client is between watches: replayed from history.
                k8s.create_configmap(
                    "chaos", "tpl-c", labels={"app.kubernetes.io/component": "template"}
                )
                k8s.update_configmap("chaos", "tpl-a", {"t": "a2"})
                k8s.delete_configmap("chaos", "tpl-b")
                seen = [await c.next() for _ in range(3)]
                assert [(e.type, names(e)) for e in seen] == [
                    ("ADDED", {"tpl-c"}),
                    ("MODIFIED", {"tpl-a"}),
                    ("DELETED", {"tpl-b"}),
                ]
                last_rv = seen[-1].objects[0]["metadata"]["resourceVersion"]

                # And again, with the change made after the client is back.
                await k8s.wait_for_watches()
                k8s.end_watches()
                await k8s.wait_for_watches()
                k8s.update_configmap("chaos", "tpl-c", {"x": "1"})
                event = await c.next()
                assert (event.type, names(event)) == ("MODIFIED", {"tpl-c"})
                await c.quiet(k8s)

                assert len(k8s.lists()) == 1
                rvs = [r.query["resourceVersion"] for r in k8s.watch_requests()]
                assert rvs == [list_rv, list_rv, last_rv]
                assert all(r.query["timeoutSeconds"] for r in k8s.watch_requests())
                assert not c.log.named("kube watch failed")
            finally:
                await c.stop()

    run(body())


def test_gone_forces_a_relist_and_reset(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            seed(k8s)
            c = Consumer(api, "configmaps", namespace="chaos", label_selector=TEMPLATE)
            try:
                assert (await c.next()).type == "RESET"
                await k8s.wait_for_watches()
                k8s.end_watches()
                k8s.update_configmap("chaos", "tpl-a", {"t": "a2"})
                k8s.delete_configmap("chaos", "tpl-b")
                k8s.create_configmap(
                    "chaos", "tpl-c", labels={"app.kubernetes.io/component": "template"}
                )
                k8s.compact()  # the client's version is now too old: 410 inside the stream

                reset = await c.next()
                assert reset.type == "RESET"
                assert names(reset) == {"tpl-a", "tpl-c"}
                tpl_a = next(o for o in reset.objects if o["metadata"]["name"] == "tpl-a")
                assert tpl_a["data"] == {"t": "a2"}
                assert len(k8s.lists()) == 2
                assert c.log.named("kube watch expired, relisting")

                # Watching goes on from the new list.
                await k8s.wait_for_watches()
                k8s.delete_configmap("chaos", "tpl-c")
                event = await c.next()
                assert (event.type, names(event)) == ("DELETED", {"tpl-c"})

                # A 410 as the HTTP status of the watch request also means relist.
                k8s.end_watches()
                k8s.fail_next(1, status=410)
                reset = await c.next()
                assert reset.type == "RESET" and names(reset) == {"tpl-a"}
                assert len(k8s.lists()) == 3
                await c.quiet(k8s)
            finally:
                await c.stop()

    run(body())


def test_gone_right_after_a_list_backs_off_before_relisting(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            seed(k8s)
            k8s.fail_next(2, status=410, watches_only=True)
            c = Consumer(api, "configmaps", namespace="chaos", label_selector=TEMPLATE)
            try:
                resets = [await c.next() for _ in range(3)]
                assert all(r.type == "RESET" and names(r) == {"tpl-a", "tpl-b"} for r in resets)
                pauses = c.log.named("kube watch expired right after a list")
                assert len(pauses) == 2
                # Growing: drawn from [d/2, d] for d = initial, then 2 * initial.
                assert pauses[0]["retry_in"] <= FAST.initial + 0.001
                assert FAST.initial - 0.001 <= pauses[1]["retry_in"] <= 2 * FAST.initial + 0.001
                await k8s.wait_for_watches()
                assert len(k8s.lists()) == 3
                await c.quiet(k8s)
            finally:
                await c.stop()

    run(body())


def test_bookmarks_advance_the_resource_version(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            seed(k8s)
            c = Consumer(api, "configmaps", namespace="chaos", label_selector=TEMPLATE)
            try:
                assert (await c.next()).type == "RESET"
                await k8s.wait_for_watches()
                assert k8s.watch_requests()[0].query["allowWatchBookmarks"] == "True"
                # Changes the client never sees move the global version on.
                k8s.create_configmap("apps", "noise-1")
                k8s.create_configmap("chaos", "noise-2")
                bookmark_rv = str(k8s.rv)
                assert k8s.send_bookmarks() == 1
                k8s.end_watches()  # queued after the bookmark, so read after it
                k8s.compact()  # harmless: the bookmark's version is still in history
                await k8s.wait_for_watches()
                await c.quiet(k8s)  # a bookmark is not an event
                assert k8s.watch_requests()[-1].query["resourceVersion"] == bookmark_rv
                assert len(k8s.lists()) == 1
            finally:
                await c.stop()

    run(body())


def test_failed_requests_are_retried_with_backoff(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            seed(k8s)
            k8s.fail_next(2, status=500)
            k8s.fail_next(1, status=429)
            # Two: aiohttp silently retries a request once when a pooled connection
            # turns out closed, so only the second drop is seen.
            k8s.drop_next(2)
            c = Consumer(api, "configmaps", namespace="chaos", label_selector=TEMPLATE)
            try:
                reset = await c.next()
                assert reset.type == "RESET" and names(reset) == {"tpl-a", "tpl-b"}
                failures = c.log.named("kube list failed")
                assert [f["error"].split(":")[0] for f in failures] == [
                    "HTTP 500",
                    "HTTP 500",
                    "HTTP 429",
                    "ServerDisconnectedError",
                ]
                delays = [f["retry_in"] for f in failures]
                # Doubling from `initial`, capped at `maximum`, each drawn from [d/2, d].
                bases = [min(FAST.maximum, FAST.initial * 2**i) for i in range(4)]
                for i in (0, 1, 3):
                    assert bases[i] / 2 - 0.001 <= delays[i] <= bases[i] + 0.001, delays
                # 429 carries Retry-After: 1, honoured up to the backoff ceiling.
                assert delays[2] == FAST.maximum

                # Watch requests that fail are retried from the same version.
                await k8s.wait_for_watches()
                lists = len(k8s.lists())
                rv = str(k8s.rv)
                k8s.fail_next(2, status=503)
                k8s.end_watches()
                k8s.create_configmap(
                    "chaos", "tpl-c", labels={"app.kubernetes.io/component": "template"}
                )
                event = await c.next()
                assert (event.type, names(event)) == ("ADDED", {"tpl-c"})
                assert len(c.log.named("kube watch failed")) == 2
                assert [r.query["resourceVersion"] for r in k8s.watch_requests()[-3:]] == [rv] * 3
                assert len(k8s.lists()) == lists  # no relist
                await c.quiet(k8s)
            finally:
                await c.stop()

    run(body())


def test_dropped_connections_are_retried_without_loss_or_duplicates(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            seed(k8s)
            c = Consumer(api, "configmaps", namespace="chaos", label_selector=TEMPLATE)
            try:
                assert (await c.next()).type == "RESET"
                await k8s.wait_for_watches()
                # Cut mid-stream (no terminating chunk), with a change on either side.
                k8s.create_configmap(
                    "chaos", "tpl-c", labels={"app.kubernetes.io/component": "template"}
                )
                event = await c.next()
                assert (event.type, names(event)) == ("ADDED", {"tpl-c"})
                k8s.end_watches(abrupt=True)
                k8s.create_configmap(
                    "chaos", "tpl-d", labels={"app.kubernetes.io/component": "template"}
                )
                event = await c.next()
                assert (event.type, names(event)) == ("ADDED", {"tpl-d"})
                assert c.log.named("kube watch failed")

                # Reconnections refused outright (aiohttp itself silently retries a
                # request once when a pooled connection turns out closed, so drop several).
                await k8s.wait_for_watches()
                k8s.drop_next(3)
                k8s.end_watches()
                k8s.delete_configmap("chaos", "tpl-a")
                event = await c.next()
                assert (event.type, names(event)) == ("DELETED", {"tpl-a"})
                await c.quiet(k8s)
                assert len(k8s.lists()) == 1
            finally:
                await c.stop()

    run(body())


def test_namespaces_watch(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            k8s.create_namespace("chaos", annotations={"chaos-mesh.org/inject": "enabled"})
            k8s.create_namespace("apps", labels={"team": "a"})
            every = Consumer(api, "namespaces")
            team = Consumer(api, "namespaces", label_selector="team")
            try:
                reset = await every.next()
                assert reset.type == "RESET"
                assert names(reset) == {"default", "kube-system", "chaos", "apps"}
                chaos = next(o for o in reset.objects if o["metadata"]["name"] == "chaos")
                assert chaos["kind"] == "Namespace" and "namespace" not in chaos["metadata"]
                assert chaos["metadata"]["annotations"] == {"chaos-mesh.org/inject": "enabled"}
                assert names(await team.next()) == {"apps"}

                await k8s.wait_for_watches(2)
                k8s.update_namespace("apps", annotations={"chaos-mesh.org/inject": "enabled"})
                event = await every.next()
                assert (event.type, names(event)) == ("MODIFIED", {"apps"})
                assert event.objects[0]["metadata"]["annotations"] == {
                    "chaos-mesh.org/inject": "enabled"
                }
                assert (await team.next()).type == "MODIFIED"

                k8s.delete_namespace("chaos")
                event = await every.next()
                assert (event.type, names(event)) == ("DELETED", {"chaos"})
                await team.quiet(k8s)
            finally:
                await every.stop()
                await team.stop()

    run(body())


def test_closing_the_stream_closes_the_watch(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            gen = watch_objects(
                api, "configmaps", namespace=None, label_selector=None, log=RecordingLog()
            )
            assert (await anext(gen)).type == "RESET"
            pending = asyncio.ensure_future(anext(gen))
            await k8s.wait_for_watches()
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
            await gen.aclose()
            deadline = asyncio.get_running_loop().time() + WAIT
            while k8s.open_watches and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            assert k8s.open_watches == 0

    run(body())


def test_namespaces_reject_a_namespace(tmp_path: Path) -> None:
    async def body() -> None:
        async with cluster(tmp_path) as (_, api):
            gen = watch_objects(
                api, "namespaces", namespace="x", label_selector=None, log=RecordingLog()
            )
            with pytest.raises(ValueError):
                await anext(gen)

    run(body())


def test_standin_speaks_what_the_library_watch_expects(tmp_path: Path) -> None:
    """The stand-in checked with kubernetes-asyncio's own Watch and typed models."""

    async def body() -> None:
        async with cluster(tmp_path) as (k8s, api):
            seed(k8s)
            core = client.CoreV1Api(api)
            listed = await core.list_namespaced_config_map("chaos", label_selector=TEMPLATE)
            assert listed.kind == "ConfigMapList" and listed.metadata.resource_version
            assert sorted(i.metadata.name for i in listed.items) == ["tpl-a", "tpl-b"]

            w = watch.Watch()
            stream = w.stream(
                core.list_namespaced_config_map,
                "chaos",
                label_selector=TEMPLATE,
                resource_version=listed.metadata.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=5,
            )
            k8s.update_configmap("chaos", "tpl-a", {"t": "a2"})
            event = await anext(stream)
            assert event["type"] == "MODIFIED"
            assert event["object"].metadata.name == "tpl-a"
            assert event["raw_object"]["data"] == {"t": "a2"}
            k8s.create_configmap("apps", "noise")
            k8s.send_bookmarks()
            k8s.update_configmap("chaos", "tpl-b", {"t": "b2"})
            event = await anext(stream)
            assert event["type"] == "BOOKMARK"
            assert w.resource_version == str(k8s.rv - 1)
            assert (await anext(stream))["type"] == "MODIFIED"
            k8s.end_watches()
            with pytest.raises(StopAsyncIteration):
                await anext(stream)

            k8s.compact()
            w = watch.Watch()
            stream = w.stream(
                core.list_namespaced_config_map, "chaos", resource_version="1", timeout_seconds=5
            )
            with pytest.raises(ApiException) as gone:
                await anext(stream)
            assert gone.value.status == 410

    run(body())


def test_selector_forms() -> None:
    labels = {"a": "1", "b": "2"}
    assert parse_selector("a=1,b==2")(labels)
    assert parse_selector("a!=2")(labels) and parse_selector("c!=2")(labels)
    assert parse_selector("a")(labels) and not parse_selector("c")(labels)
    assert parse_selector("!c")(labels) and not parse_selector("!a")(labels)
    assert parse_selector("a in (1,3), b notin (3)")(labels)
    assert not parse_selector("a in (2,3)")(labels)
    assert parse_selector("")(labels)
    with pytest.raises(ValueError):
        parse_selector("a=1=2")


def test_make_api_client_kubeconfig_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    async def body() -> None:
        async with KubeStandin() as k8s:
            path = k8s.write_kubeconfig(tmp_path / "from-env")
            monkeypatch.setenv("KUBECONFIG", str(path))
            api = await make_api_client(None)
            try:
                assert api.configuration.host == k8s.url
                listed = await client.CoreV1Api(api).list_namespace()
                assert {n.metadata.name for n in listed.items} == {"default", "kube-system"}
            finally:
                await api.close()
            # An explicit path wins over $KUBECONFIG.
            monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
            api = await make_api_client(str(path))
            await api.close()
            assert api.configuration.host == k8s.url

    run(body())


def test_thread_proxy_drives_a_standin_from_another_thread() -> None:
    with run_in_thread() as k8s:
        k8s.create_namespace("chaos")
        k8s.create_configmap("chaos", "tpl-a", labels={"x": "y"})
        assert k8s.rv == 4

        async def body() -> None:
            c = client.Configuration()
            c.host = k8s.url
            async with client.ApiClient(c) as api:
                listed = await client.CoreV1Api(api).list_config_map_for_all_namespaces()
                assert [i.metadata.name for i in listed.items] == ["tpl-a"]

        run(body())
        assert len(k8s.lists("configmaps")) == 1
