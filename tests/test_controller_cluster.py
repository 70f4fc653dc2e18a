"""chaos-controller in cluster mode, end to end: the real controller with --kubernetes
against the stand-in API server (real kubernetes-asyncio client, real wire format), a
real nats-server and a real chaosfs mount. An FsChaos object selected by annotation
(which only the API can resolve) faults the pod, its status and Events are written
back, and deleting it recovers the pod before the finalizer lets the object go."""

from __future__ import annotations

import errno
from pathlib import Path

import yaml
from controller_helpers import Controller
from k8s_standin import run_in_thread

from conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
CRD = yaml.safe_load((ROOT / "deploy/base/crds/fschaos.yaml").read_text())
FS = "fschaos.chaosbus.io"


def write_fails(sc) -> bool:
    try:
        with open(sc.path("probe"), "a") as f:
            f.write("x")
            f.flush()
        return False
    except OSError as exc:
        assert exc.errno == errno.EIO, exc
        return True


def test_fschaos_object_runs_reports_status_and_recovers_before_deletion(
    make_sidecar, nats_server, tmp_path
):
    with run_in_thread() as k8s:
        k8s.register_crd(CRD)
        k8s.create_namespace("apps")
        k8s.create_pod("apps", "db-0", labels={"app": "db"}, annotations={"chaos": "yes"})
        k8s.create_pod("apps", "db-1", labels={"app": "db"})
        kubeconfig = k8s.write_kubeconfig(tmp_path / "kubeconfig")
        chosen = make_sidecar("apps/db-0", env={"POD_LABELS": "app=db"})
        other = make_sidecar("apps/db-1", env={"POD_LABELS": "app=db"})
        for sc in (chosen, other):
            (sc.original / "probe").write_text("")
        ctl = Controller(
            nats_server.url,
            tmp_path / "ctl.log",
            "ctl-k8s",
            "--kubernetes",
            "--kubeconfig",
            str(kubeconfig),
        )
        ctl.start()
        try:
            k8s.create(
                FS,
                {
                    "apiVersion": "chaosbus.io/v1alpha1",
                    "kind": "FsChaos",
                    "metadata": {"name": "annotated", "namespace": "apps"},
                    "spec": {
                        "mode": "all",
                        "selector": {"annotationSelectors": {"chaos": "yes"}},
                        "rules": [{"action": "errno", "errno": "EIO", "methods": ["write"]}],
                    },
                },
            )

            def status() -> dict:
                obj = k8s.get(FS, "apps", "annotated")
                return (obj or {}).get("status") or {}

            wait_for(lambda: status().get("phase") == "Running", what="status Running")
            records = {p["pod"]: p["outcome"] for p in status()["pods"]}
            assert records == {"apps/db-0": "injected"}
            assert write_fails(chosen) and not write_fails(other)
            obj = k8s.get(FS, "apps", "annotated")
            assert "chaosbus.io/recover" in obj["metadata"]["finalizers"]
            wait_for(
                lambda: any(
                    e["reason"] == "Injected" and e["involvedObject"]["name"] == "annotated"
                    for e in k8s.events("apps")
                ),
                what="an Injected event",
            )

            k8s.delete(FS, "apps", "annotated")  # held by the finalizer until recovered
            wait_for(lambda: k8s.get(FS, "apps", "annotated") is None, what="the object to go")
            assert not write_fails(chosen)
        finally:
            ctl.stop()
