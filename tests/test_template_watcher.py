"""chaos-template-watcher with a dir source, a real nats-server and Chaos Mesh v0.9's ConfigMaps."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import nats
import pytest
import yaml

from chaosbus import codec
from chaosbus.injection import NAMESPACES_BUCKET, RENDERINGS_BUCKET, Rendering, rendering_key
from conftest import BIN, wait_for

SEED = Path(__file__).parent / "fixtures" / "seed"
TIKV = rendering_key("chaos-testing", "chaosfs-tikv")
PD = rendering_key("chaos-testing", "chaosfs-pd")


async def _kv(url: str, bucket: str) -> dict[str, bytes]:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        try:
            keys = await kv.keys()
        except Exception:
            return {}
        return {k: (await kv.get(k)).value for k in keys}
    except Exception:
        return {}
    finally:
        await nc.close()


def renderings(url: str) -> dict[str, Rendering]:
    raw = asyncio.run(_kv(url, RENDERINGS_BUCKET))
    return {k: Rendering.from_wire(codec.decode(v, limit=1 << 24)) for k, v in raw.items()}


class Watcher:
    def __init__(self, folder: Path, url: str, log: Path, *extra: str) -> None:
        self.folder, self.url, self.log = folder, url, log
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                str(BIN / "chaos-template-watcher"),
                "--source",
                f"dir:{self.folder}",
                "--namespace",
                "chaos-testing",
                "--nats",
                self.url,
                *self.extra,
            ],
            stderr=open(self.log, "ab"),  # noqa: SIM115
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def watcher(tmp_path, nats_server):
    folder = tmp_path / "configmaps"
    folder.mkdir()
    for name in ("chaosfs-sidecar.yaml", "tikv-configmap.yaml", "pd-configmap.yaml"):
        shutil.copy(SEED / name, folder / name)
    w = Watcher(folder, nats_server.url, tmp_path / "watcher.log")
    w.start()
    yield w
    w.stop()


def test_seed_configmaps_are_rendered_and_published(watcher):
    got = wait_for(
        lambda: renderings(watcher.url) if len(renderings(watcher.url)) == 2 else None,
        what="both renderings",
    )
    tikv = got[TIKV]
    assert tikv.template == "chaosfs-sidecar"
    assert tikv.selector == {"labelSelectors": {"app.kubernetes.io/component": "tikv"}}
    spec = tikv.spec
    assert spec["initContainers"][0]["command"] == [
        "sh",
        "-c",
        "/scripts/init.sh -d /var/lib/tikv/data -f /var/lib/tikv/fuse-data",
    ]
    sidecar = spec["containers"][0]
    assert "-original=/var/lib/tikv/fuse-data" in sidecar["command"]
    assert "-mountpoint=/var/lib/tikv/data" in sidecar["command"]
    assert sidecar["volumeMounts"][0] == {
        "name": "tikv",
        "mountPath": "/var/lib/tikv",
        "mountPropagation": "Bidirectional",
    }
    assert spec["volumeMounts"][0]["mountPropagation"] == "HostToContainer"
    assert spec["postStart"] == {"tikv": {"command": ["/tmp/scripts/wait-fuse.sh"]}}
    assert got[PD].spec["postStart"] == {"pd": {"command": ["/tmp/scripts/wait-fuse.sh"]}}


def _edit(path: Path, old: str, new: str) -> None:
    # Replaced in one rename, as the kubelet updates a ConfigMap volume: a poll between
    # a truncate and a write would see the template gone and withdraw its renderings.
    text = path.read_text()
    assert old in text
    aside = path.with_name(f".{path.name}.new")
    aside.write_text(text.replace(old, new))
    os.replace(aside, path)


def _logged(watcher, event: str, text: str = "") -> int:
    return sum(
        1
        for line in watcher.log.read_text().splitlines()
        if f'"event": "{event}"' in line and text in line
    )


def test_edits_deletions_and_broken_templates(watcher):
    wait_for(lambda: len(renderings(watcher.url)) == 2, what="renderings")
    template = watcher.folder / "chaosfs-sidecar.yaml"

    # An edit reaches the bucket within a second or two.
    started = time.monotonic()
    _edit(template, "pingcap/chaos-fs:v0.9.1", "chaosbus/chaosfs:dev")
    wait_for(
        lambda: (
            renderings(watcher.url)[TIKV].spec["containers"][0]["image"] == "chaosbus/chaosfs:dev"
        ),
        what="the edited rendering",
    )
    assert time.monotonic() - started < 2

    # A broken template leaves the last good rendering in force.
    _edit(template, "{{.DataPath}}", "{{.DataPath")
    wait_for(lambda: _logged(watcher, "render_failed", "bad number syntax"), what="the refusal")
    assert renderings(watcher.url)[TIKV].spec["containers"][0]["image"] == "chaosbus/chaosfs:dev"

    # A config whose argument would inject YAML is refused, the old rendering stays.
    _edit(template, "{{.DataPath", "{{.DataPath}}")
    _edit(watcher.folder / "pd-configmap.yaml", '"/var/lib/pd/data"', '"/x\\nevil: true"')
    wait_for(lambda: _logged(watcher, "render_failed", "DataPath"), what="the refusal")
    assert renderings(watcher.url)[PD].spec["containers"][0]["image"] == "chaosbus/chaosfs:dev"

    # A deleted config takes its rendering with it; so does a deleted template.
    (watcher.folder / "pd-configmap.yaml").unlink()
    wait_for(lambda: set(renderings(watcher.url)) == {TIKV}, what="pd's rendering removed")
    template.unlink()
    wait_for(lambda: renderings(watcher.url) == {}, what="every rendering removed")


def test_namespace_asks_are_mirrored(watcher):
    (watcher.folder / "ns.yaml").write_text(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": "tikv",
                        "annotations": {
                            "admission-webhook.chaos-mesh.org/init-request": "chaosfs-tikv",
                            "other": "x",
                        },
                    },
                },
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}},
            ]
        )
    )

    def mirrored():
        raw = asyncio.run(_kv(watcher.url, NAMESPACES_BUCKET))
        return {k: codec.decode(v)["annotations"] for k, v in raw.items()}

    wait_for(
        lambda: (
            mirrored()
            == {"tikv": {"admission-webhook.chaos-mesh.org/init-request": "chaosfs-tikv"}}
        ),
        what="namespace annotations in KV",
    )


def test_restart_keeps_renderings_until_the_sources_are_listed(watcher):
    wait_for(lambda: len(renderings(watcher.url)) == 2, what="renderings")
    watcher.stop()
    (watcher.folder / "pd-configmap.yaml").unlink()  # deleted while the watcher was down
    before = renderings(watcher.url)
    assert set(before) == {TIKV, PD}
    watcher.start()
    wait_for(
        lambda: set(renderings(watcher.url)) == {TIKV},
        timeout=20,
        what="the stale rendering removed",
    )
    assert renderings(watcher.url)[TIKV].rendered_at == before[TIKV].rendered_at  # not rewritten


def _seed_objects() -> list[dict]:
    docs = []
    for name in ("chaosfs-sidecar.yaml", "tikv-configmap.yaml", "pd-configmap.yaml"):
        docs += [d for d in yaml.safe_load_all((SEED / name).read_text()) if d]
    return docs


def test_kubernetes_source_end_to_end(tmp_path, nats_server):
    """The real watcher and kubernetes-asyncio against the stand-in API server:
    a watch that ends, a 410 Gone that forces a relist, a deleted ConfigMap."""
    from k8s_standin import run_in_thread

    with run_in_thread() as kube:
        kube.create_namespace("chaos-testing")
        for doc in _seed_objects():
            meta = doc["metadata"]
            kube.create_configmap(
                meta["namespace"], meta["name"], doc["data"], labels=meta.get("labels")
            )
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        proc = subprocess.Popen(
            [
                str(BIN / "chaos-template-watcher"),
                "--source",
                "kubernetes",
                "--kubeconfig",
                str(kubeconfig),
                "--namespace",
                "chaos-testing",
                "--nats",
                nats_server.url,
            ],
            stderr=open(tmp_path / "watcher.log", "ab"),  # noqa: SIM115
        )
        try:
            wait_for(lambda: set(renderings(nats_server.url)) == {TIKV, PD}, what="renderings")

            kube.end_watches()  # watches end (timeoutSeconds); the watcher resumes
            template = _seed_objects()[0]["data"]["data"].replace("v0.9.1", "v9")
            kube.update_configmap("chaos-testing", "chaosfs-sidecar", {"data": template})
            wait_for(
                lambda: (
                    renderings(nats_server.url)[TIKV].spec["containers"][0]["image"]
                    == "pingcap/chaos-fs:v9"
                ),
                what="the edit after a resumed watch",
            )

            lists_before = len(kube.lists("configmaps"))
            kube.end_watches(abrupt=True)  # cut the streams, and lose history meanwhile:
            kube.delete_configmap("chaos-testing", "chaosfs-pd")
            kube.compact()  # the next watch gets 410 Gone and must relist
            wait_for(
                lambda: set(renderings(nats_server.url)) == {TIKV},
                what="pd's rendering removed after a relist",
            )
            assert len(kube.lists("configmaps")) > lists_before
        finally:
            proc.terminate()
            proc.wait(10)


def test_configs_in_namespaces_the_webhook_never_calls_for_are_warned_about(tmp_path, nats_server):
    folder = tmp_path / "configmaps"
    folder.mkdir()
    for name in ("chaosfs-sidecar.yaml", "tikv-configmap.yaml", "pd-configmap.yaml"):
        shutil.copy(SEED / name, folder / name)
    # As the prod webhook: only namespaces that opt in, never its own.
    selector = "admission-webhook=enabled,kubernetes.io/metadata.name notin (chaos-testing)"
    w = Watcher(folder, nats_server.url, tmp_path / "w.log", "--webhook-namespaces", selector)
    w.start()
    try:
        wait_for(lambda: len(renderings(w.url)) == 2, what="both renderings")

        def unreachable() -> list[dict]:
            return [e for e in _audit_events(w.url) if e["kind"] == "rendering.unreachable"]

        events = wait_for(lambda: unreachable() if len(unreachable()) == 2 else None)
        assert {e["config"] for e in events} == {"chaosfs-tikv", "chaosfs-pd"}
        assert all("namespace selector" in e["reason"] for e in events)
        assert "config_unreachable" in w.log.read_text()
    finally:
        w.stop()


def _audit_events(url: str) -> list[dict]:
    async def read() -> list[dict]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            sub = await js.subscribe("chaosbus.audit.>", ordered_consumer=True)
            out = []
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except nats.errors.TimeoutError:
                    return out
                out.append(codec.decode(msg.data, limit=1 << 20))
        finally:
            await nc.close()

    return asyncio.run(read())
