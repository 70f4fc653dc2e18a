"""Chaos Mesh v0.9's whole template mechanism end to end: its ConfigMaps on disk, the
template-watcher (dir source), a real nats-server, and the injector over HTTPS."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import time

import jsonpatch
import pytest
from test_injector import Injector
from test_template_watcher import SEED, Watcher
from unit.test_injector_mutate import tikv_pod

from conftest import wait_for

PREFIX = "admission-webhook.chaos-mesh.org"


def review(pod: dict, uid: str = "uid-1") -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "chaos-testing",
                "operation": "CREATE",
                "object": pod,
            },
        }
    ).encode()


def tikv(annotations: dict | None = None) -> dict:
    pod = tikv_pod(annotations=annotations)
    pod["metadata"]["namespace"] = "chaos-testing"
    return pod


def admit(injector: Injector, pod: dict) -> tuple[dict, dict]:
    status, answer = injector.client.review(review(pod))
    assert status == 200, answer
    response = answer["response"]
    assert response["uid"] == "uid-1" and response["allowed"] is True
    if "patch" not in response:
        return pod, response
    patch = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(copy.deepcopy(pod), patch), response


@pytest.fixture
def pipeline(tmp_path, nats_server):
    folder = tmp_path / "configmaps"
    folder.mkdir()
    for name in ("chaosfs-sidecar.yaml", "tikv-configmap.yaml", "pd-configmap.yaml"):
        shutil.copy(SEED / name, folder / name)
    watcher = Watcher(folder, nats_server.url, tmp_path / "watcher.log")
    watcher.start()
    injector = Injector(tmp_path, nats_server.url)
    injector.start()
    injector.wait_ready()
    # Ready means the snapshot was read; wait until it holds Chaos Mesh v0.9's renderings.
    wait_for(
        lambda: "patch" in admit(injector, tikv({f"{PREFIX}/request": "chaosfs-tikv"}))[1],
        what="the tikv rendering at the injector",
    )
    yield watcher, injector
    injector.stop()
    watcher.stop()


def test_tikv_pod_gets_what_chaos_mesh_v09_describes(pipeline):
    _, injector = pipeline
    pod, response = admit(injector, tikv({f"{PREFIX}/request": "chaosfs-tikv"}))
    assert response.get("warnings", []) == []
    spec = pod["spec"]
    (init,) = spec["initContainers"]
    assert init["name"] == "inject-scripts" and init["image"] == "pingcap/chaos-scripts:v0.9.1"
    assert init["command"] == [
        "sh",
        "-c",
        "/scripts/init.sh -d /var/lib/tikv/data -f /var/lib/tikv/fuse-data",
    ]
    app, sidecar = spec["containers"]
    assert sidecar["name"] == "chaosfs" and sidecar["securityContext"] == {"privileged": True}
    assert sidecar["command"] == [
        "/usr/local/bin/chaosfs",
        "-addr=:65534",
        "-pidfile=/tmp/fuse/pid",
        "-original=/var/lib/tikv/fuse-data",
        "-mountpoint=/var/lib/tikv/data",
    ]
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["tikv"] == {
        "name": "tikv",
        "mountPath": "/var/lib/tikv",
        "mountPropagation": "Bidirectional",
    }
    app_mounts = {m["name"]: m for m in app["volumeMounts"]}
    assert app_mounts["tikv"]["mountPropagation"] == "HostToContainer"
    assert app_mounts["scripts"]["mountPath"] == "/tmp/scripts"
    assert app_mounts["fuse"]["mountPath"] == "/tmp/fuse"
    assert app_mounts["config"]["mountPath"] == "/etc/tikv"  # the app's own mount is kept
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["scripts"] == {"name": "scripts", "emptyDir": {}}
    assert volumes["fuse"] == {"name": "fuse", "emptyDir": {}}
    assert "/tmp/scripts/wait-fuse.sh" in app["command"][2]
    assert app["command"][-1] == "/tikv-server"
    assert app["args"] == ["--pd=http://pd:2379", "--data-dir=/var/lib/tikv/data"]
    assert pod["metadata"]["annotations"][f"{PREFIX}/status"] == "injected"


@pytest.mark.parametrize(
    "annotations",
    [
        None,
        {f"{PREFIX}/request": "chaosfs-nope"},
        {f"{PREFIX}/status": "injected", f"{PREFIX}/request": "chaosfs-tikv"},
    ],
    ids=["not-asked", "unknown-config", "already-injected"],
)
def test_skips(pipeline, annotations):
    _, injector = pipeline
    pod = tikv(annotations)
    result, response = admit(injector, pod)
    assert "patch" not in response and result == pod


def test_pod_outside_the_selector_is_skipped(pipeline):
    _, injector = pipeline
    pod = tikv({f"{PREFIX}/request": "chaosfs-pd"})  # the pd config selects pd pods only
    _, response = admit(injector, pod)
    assert "patch" not in response


def test_malformed_bodies_get_400(pipeline):
    _, injector = pipeline
    for body in (b"{", b"[]", b'{"kind": "AdmissionReview"}', b"\xff\xfe"):
        status, _ = injector.client.review(body)
        assert status == 400


def test_a_template_edit_on_disk_reaches_the_injector_quickly(pipeline):
    watcher, injector = pipeline
    template = watcher.folder / "chaosfs-sidecar.yaml"
    started = time.monotonic()
    template.write_text(template.read_text().replace("chaos-fs:v0.9.1", "chaos-fs:edited"))

    def image() -> str:
        pod, _ = admit(injector, tikv({f"{PREFIX}/request": "chaosfs-tikv"}))
        return pod["spec"]["containers"][1]["image"]

    wait_for(lambda: image() == "pingcap/chaos-fs:edited", what="the edited template")
    assert time.monotonic() - started < 2.0


def _audit(url: str, kind: str) -> list[dict]:
    from conftest import chaosctl

    done = chaosctl(url, "audit", "--json", "--kind", kind)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_admissions_are_audited(pipeline, nats_server):
    _, injector = pipeline
    admit(injector, tikv({f"{PREFIX}/request": "chaosfs-tikv"}))
    admit(injector, tikv())
    wait_for(lambda: _audit(nats_server.url, "pod.skipped"), what="a skip in the audit trail")
    injected = _audit(nats_server.url, "pod.injected")
    assert injected and injected[-1]["pod"] == "chaos-testing/tikv-0"
    assert injected[-1]["config"] == "chaosfs-tikv" and injected[-1]["service"] == "injector"
    skipped = _audit(nats_server.url, "pod.skipped")
    assert skipped[-1]["pod"] == "chaos-testing/tikv-0" and skipped[-1]["reason"]
    published = _audit(nats_server.url, "rendering.published")
    assert {e["config"] for e in published} >= {"chaosfs-tikv", "chaosfs-pd"}


def test_a_silent_sidecar_is_audited_as_lost(pipeline, nats_server, make_sidecar):
    import signal

    sc = make_sidecar("chaos-testing/tikv-9", extra=["-heartbeat", "300ms"])
    sc.stop(signal.SIGKILL)
    lost = wait_for(
        lambda: _audit(nats_server.url, "sidecar.lost"),
        timeout=10,
        what="sidecar.lost in the audit trail",
    )
    assert lost[0]["pod"] == "chaos-testing/tikv-9" and lost[0]["service"] == "template-watcher"
