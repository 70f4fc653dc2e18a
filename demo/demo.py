"""`make demo`: chaosbus end to end on this machine, without Kubernetes, narrated.

It starts a nats-server, the template-watcher on a folder of the shipped
ConfigMaps, the injector over HTTPS with a self-signed certificate, and two
chaosfs sidecars, each with a small app writing and reading through its mount.
Then it asks the webhook to mutate a TiKV pod, breaks the fleet's disks with one
broadcast, recovers, and reads the audit trail. Last, it starts the chaos-controller
and applies a Chaos Mesh v0.9 IoChaos experiment, which faults one of the two pods
for three seconds and then recovers it on its own. Everything it started is stopped
and unmounted at the end, also on Ctrl-C or failure; the exit code is non-zero
if any step did not behave.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
# The throwaway certificate authority the tests use (tests/tls_helpers.py, trustme):
# one implementation for the tests, the benches and this demo.
sys.path.insert(0, str(ROOT / "tests"))
from ports import free_port, nats_client_port  # noqa: E402

PREFIX = "admission-webhook.chaos-mesh.org"
NAMESPACE = "chaos-testing"
EXPERIMENT = "tikv-io-errno"
EXPERIMENT_SECONDS = 3.0
# A Chaos Mesh v0.9 IoChaos, as its users wrote them: errno 5 (EIO) on every write
# and read of the volume (path "" matches every file), on one pod picked among those
# the selector matches, for three seconds. Its namespace is "default" because the
# experiment lives there; the pods it targets are in chaos-testing.
IO_ERRNO = f"""\
apiVersion: chaos-mesh.org/v1alpha1
kind: IoChaos
metadata:
  name: {EXPERIMENT}
  namespace: default
spec:
  action: errno
  errno: "5"
  mode: one
  duration: "3s"
  percent: "100"
  path: ""
  layer: fs
  methods:
    - write
    - read
  selector:
    namespaces:
      - {NAMESPACE}
    labelSelectors:
      app.kubernetes.io/component: tikv
"""


def write_shipped_configmaps(folder: Path) -> list[str]:
    """The sidecar templates and the TiKV injection config that deploy/ ships, as the
    ConfigMaps kustomize makes of them (Chaos Mesh v0.9's, if deploy/ is missing)."""
    import yaml

    templates = sorted((ROOT / "deploy" / "base" / "templates").glob("*.tmpl"))
    example = ROOT / "deploy" / "examples" / "tikv" / "chaosfs-tikv.yaml"
    if not templates or not example.exists():
        seed = ROOT / "tests" / "fixtures" / "seed"
        for name in ("chaosfs-sidecar.yaml", "tikv-configmap.yaml"):
            shutil.copy(seed / name, folder / name)
        return ["Chaos Mesh v0.9's chaosfs-sidecar", "chaosfs-tikv"]
    for path in templates:
        configmap = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": path.stem,
                "namespace": NAMESPACE,
                "labels": {"app.kubernetes.io/component": "template"},
            },
            "data": {"data": path.read_text()},
        }
        (folder / f"{path.stem}.yaml").write_text(yaml.safe_dump(configmap))
    shutil.copy(example, folder / example.name)
    return [p.stem for p in templates] + ["chaosfs-tikv (deploy/examples/tikv)"]


class Demo:
    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="chaosbus-demo-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.mounts: list[Path] = []
        self.failures: list[str] = []
        self.facts: list[str] = []
        self.url = ""

    # --- narration ---------------------------------------------------------------------

    def step(self, text: str) -> None:
        print(f"\n\033[1m==> {text}\033[0m", flush=True)

    def check(self, ok: bool, what: str) -> bool:
        print(f"    [{'ok' if ok else 'FAILED'}] {what}", flush=True)
        if not ok:
            self.failures.append(what)
        return ok

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")

    def chaosctl(self, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
        if show:
            print("    $ chaosctl " + " ".join(args), flush=True)
        done = subprocess.run(
            [str(BIN / "chaosctl"), "--nats", self.url, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if show:
            for line in (done.stdout + done.stderr).strip().splitlines():
                print(f"      {line}")
        return done

    def spawn(self, name: str, *cmd: str, env: dict[str, str] | None = None) -> None:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115
        self.procs.append(
            subprocess.Popen(list(cmd), stdout=log, stderr=log, env={**os.environ, **(env or {})})
        )

    # --- the parts ---------------------------------------------------------------------

    def start_nats(self) -> None:
        self.step("Starting nats-server with JetStream on a port it picks")
        self.spawn(
            "nats",
            str(BIN / "nats-server"),
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
            "--ports_file_dir",
            str(self.work),
            "-js",
            "-sd",
            str(self.work / "jetstream"),
        )
        port = nats_client_port(self.work, self.procs[-1])
        self.url = f"nats://127.0.0.1:{port}"
        self.wait(lambda: _listening(port), 10, "nats-server")
        self.check(True, f"nats-server is listening on {self.url}")

    def start_watcher(self) -> None:
        folder = self.work / "configmaps"
        folder.mkdir()
        names = write_shipped_configmaps(folder)
        self.step("Starting the template-watcher on a folder of the shipped ConfigMaps")
        print("    " + ", ".join(names))
        self.spawn(
            "template-watcher",
            str(BIN / "chaos-template-watcher"),
            "--source",
            f"dir:{folder}",
            "--namespace",
            NAMESPACE,
            "--nats",
            self.url,
        )

    def start_injector(self) -> None:
        self.step("Starting the injector (HTTPS, a certificate from a throwaway CA)")
        cert, key = self.work / "tls.crt", self.work / "tls.key"
        from tls_helpers import serving_pair

        serving = serving_pair(cert, key)
        self.injector_port = free_port()
        self.spawn(
            "injector",
            str(BIN / "chaos-injector"),
            "--listen",
            f"127.0.0.1:{self.injector_port}",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--nats",
            self.url,
        )
        self.tls = ssl.create_default_context(cadata=serving.trust_pem)
        self.wait(lambda: self._https("GET", "/readyz")[0] == 200, 20, "the injector to be ready")
        self.check(True, f"the injector is ready on https://127.0.0.1:{self.injector_port}")

    def _https(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        try:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.injector_port, context=self.tls, timeout=5
            )
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            conn.close()
            return response.status, json.loads(data) if data else None
        except OSError:
            return 0, None

    def mutate_a_pod(self) -> None:
        self.step("Asking the webhook to admit a TiKV pod that requests chaosfs-tikv")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "tikv-0",
                "namespace": NAMESPACE,
                "labels": {"app.kubernetes.io/component": "tikv"},
                "annotations": {f"{PREFIX}/request": "chaosfs-tikv"},
            },
            "spec": {
                "containers": [
                    {
                        "name": "tikv",
                        "image": "pingcap/tikv:v4.0.0",
                        "command": ["/tikv-server"],
                        "args": ["--data-dir=/var/lib/tikv/data"],
                        "volumeMounts": [{"name": "tikv", "mountPath": "/var/lib/tikv"}],
                    }
                ],
                "volumes": [{"name": "tikv", "persistentVolumeClaim": {"claimName": "tikv-0"}}],
            },
        }
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "demo-1",
                "operation": "CREATE",
                "namespace": NAMESPACE,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "object": pod,
            },
        }

        def patched() -> list[dict] | None:
            status, answer = self._https("POST", "/inject-v1-pod", json.dumps(review).encode())
            response = (answer or {}).get("response") or {}
            if status == 200 and "patch" in response:
                return json.loads(base64.b64decode(response["patch"]))
            return None

        # The watcher publishes the renderings moments after it starts.
        patch = self.wait(patched, 20, "the webhook to inject the TiKV pod")
        import jsonpatch

        spec = jsonpatch.apply_patch(pod, patch)["spec"]
        init = [c["name"] for c in spec.get("initContainers", [])]
        containers = [c["name"] for c in spec["containers"]]
        print(f"    the webhook answered with a JSON patch of {len(patch)} operations:")
        print(f"      init containers: {', '.join(init)}")
        print(f"      containers:      {', '.join(containers)}")
        sidecar = next(c for c in spec["containers"] if c["name"] == "chaosfs")
        print(f"      chaosfs:         {' '.join(sidecar.get('command', []))}")
        tikv = spec["containers"][0]
        print(f"      tikv command:    {' '.join(tikv['command'])}")
        mounts = {m["name"]: m.get("mountPropagation", "-") for m in tikv["volumeMounts"]}
        print(f"      tikv mounts:     {mounts}")
        ok = "chaosfs" in containers and init and "wait-fuse.sh" in " ".join(tikv["command"])
        if self.check(bool(ok), "the pod gets the chaosfs sidecar and waits for its mount"):
            self.facts.append("the webhook added the chaosfs sidecar to a TiKV pod")

    def start_sidecars(self) -> list[dict[str, Any]]:
        self.step("Starting two chaosfs sidecars, each with an app on its mount")
        pods = []
        for name in ("tikv-0", "tikv-1"):
            root = self.work / name
            original, data = root / "fuse-data", root / "data"
            original.mkdir(parents=True)
            (original / "000001.sst").write_bytes(os.urandom(64 * 1024))
            pidfile = root / "fuse" / "pid"
            self.spawn(
                f"chaosfs-{name}",
                str(BIN / "chaosfs"),
                f"-original={original}",
                f"-mountpoint={data}",
                f"-pidfile={pidfile}",
                f"-nats={self.url}",
                "-heartbeat=1s",
                env={
                    "POD_NAMESPACE": NAMESPACE,
                    "POD_NAME": name,
                    "POD_LABELS": "app.kubernetes.io/component=tikv",
                },
            )
            self.mounts.append(data)
            self.wait(pidfile.exists, 15, f"{name}'s pidfile")
            status = root / "app.json"
            self.spawn(
                f"app-{name}", sys.executable, str(ROOT / "demo" / "app.py"), str(data), str(status)
            )
            pods.append({"name": f"{NAMESPACE}/{name}", "status": status})
            print(f"    {NAMESPACE}/{name}: {original} mounted on {data}")

        def registered() -> bool:
            done = self.chaosctl("--json", "sidecars", show=False)
            return done.returncode == 0 and len(json.loads(done.stdout or "[]")) == 2

        self.wait(registered, 15, "both sidecars to register")
        self.chaosctl("sidecars")
        return pods

    def app_state(self, pod: dict[str, Any]) -> dict[str, Any]:
        try:
            return json.loads(pod["status"].read_text())
        except (OSError, ValueError):
            return {"ok": 0, "errors": 0, "last_error": None}

    def apps_progress(self, pods: list[dict], errors: bool, seconds: float = 1.0) -> bool:
        """Watch the apps for a while: do they make progress, or fail (as expected)?"""
        before = [self.app_state(p) for p in pods]
        time.sleep(seconds)
        good = True
        for pod, old in zip(pods, before, strict=True):
            good &= self.judge_app(pod, old, errors, seconds)
        return good

    def judge_app(
        self, pod: dict[str, Any], old: dict[str, Any], errors: bool, seconds: float
    ) -> bool:
        """Did the app fail with EIO only (``errors``), or only succeed, since ``old``?"""
        new = self.app_state(pod)
        oks, errs = new["ok"] - old["ok"], new["errors"] - old["errors"]
        if errors:
            fine = errs > 0 and oks == 0 and new["last_error"] == "EIO"
            said = f"{errs} operations failed with {new['last_error']}, {oks} succeeded"
        else:
            fine = oks > 0 and errs == 0
            said = f"{oks} writes+reads succeeded, {errs} failed"
        return self.check(fine, f"{pod['name']} app: {said} in {seconds:.2g}s")

    # --- the story ---------------------------------------------------------------------

    def run(self) -> None:
        self.start_nats()
        self.start_watcher()
        self.start_injector()
        self.mutate_a_pod()
        pods = self.start_sidecars()

        self.step("The apps run on healthy disks")
        self.wait(lambda: all(self.app_state(p)["ok"] > 3 for p in pods), 15, "the apps to run")
        self.apps_progress(pods, errors=False)

        self.step("One broadcast: EIO on every read of *.sst, on every TiKV sidecar")
        done = self.chaosctl(
            "fault",
            "broadcast",
            "--selector",
            "app.kubernetes.io/component=tikv",
            "--action",
            "errno",
            "--errno",
            "EIO",
            "--methods",
            "read",
            "--path",
            "**/*.sst",
            "--id",
            "sick-disks",
        )
        if self.check(
            done.returncode == 0 and "applied on 2 of 2" in done.stdout,
            "both sidecars acknowledged",
        ):
            self.facts.append("one broadcast reached 2 of 2 sidecars")
        if self.apps_progress(pods, errors=True):
            self.facts.append("both apps saw EIO while the fault was in force")
        self.chaosctl("status", "--pod", pods[0]["name"])

        self.step("Recovering the fleet")
        done = self.chaosctl("fault", "recover", "--fleet", "--all")
        self.check(done.returncode == 0, "every sidecar acknowledged the recovery")
        if self.apps_progress(pods, errors=False):
            self.facts.append("after recover, both apps ran cleanly again")

        self.step("The audit trail: what was done, to which pod, by whom")
        done = self.chaosctl("audit", "--since", "10m")
        kinds = done.stdout
        ok = all(
            k in kinds
            for k in (
                "rendering.published",
                "pod.injected",
                "sidecar.ready",
                "rule.set",
                "rule.recovered",
            )
        )
        if self.check(ok, "the trail holds renderings, the injection, and every rule change"):
            self.facts.append(f"the audit trail recorded {len(kinds.splitlines())} events")

        self.start_controller()
        self.run_experiment(pods)

    # --- experiments -------------------------------------------------------------------

    def start_controller(self) -> None:
        self.step("Starting the chaos-controller, which runs declarative experiments")
        self.spawn(
            "chaos-controller",
            str(BIN / "chaos-controller"),
            "--nats",
            self.url,
            "--identity",
            "demo-controller",
        )

        # Replicas share a lease and only its holder acts: the controller is ready
        # once it says, in the audit trail, that it leads.
        def leading() -> str:
            done = self.chaosctl("audit", "--kind", "controller.leading", show=False)
            return done.stdout if "controller.leading" in done.stdout else ""

        said = self.wait(leading, 20, "the chaos-controller to take the lease")
        print("    $ chaosctl audit --kind controller.leading")
        for line in said.strip().splitlines():
            print(f"      {line}")
        self.check(True, "the chaos-controller holds the lease and leads")

    def experiment_row(self, ref: str) -> dict[str, Any]:
        """The experiment as ``chaosctl experiments --json`` lists it ({} if it does not)."""
        done = self.chaosctl("experiments", "--json", show=False)
        if done.returncode != 0:
            return {}
        rows = json.loads(done.stdout or "[]")
        return next((r for r in rows if r.get("experiment") == ref), {})

    def describe_data(self, ref: str) -> dict[str, Any]:
        done = self.chaosctl("experiment", "describe", ref, "--json", show=False)
        return json.loads(done.stdout) if done.returncode == 0 and done.stdout else {}

    def run_experiment(self, pods: list[dict[str, Any]]) -> None:
        ref = f"default/{EXPERIMENT}"
        self.step("A Chaos Mesh v0.9 IoChaos experiment: EIO on one TiKV pod for 3s")
        manifest = self.work / "io-errno.yaml"
        manifest.write_text(IO_ERRNO)
        print(f"    {manifest.name}:")
        for line in IO_ERRNO.splitlines():
            print(f"      {line}")
        applied_at = time.time()
        done = self.chaosctl("apply", "-f", str(manifest), "--wait")
        if not self.check(done.returncode == 0, "the controller took it and injected it"):
            return
        # Watch the apps while the fault holds. The run began after apply did, and
        # lasts 3 s, so a window that closes 2.6 s after apply began is inside it.
        since = time.monotonic()
        before = [self.app_state(p) for p in pods]
        self.chaosctl("experiments")
        close = min(time.time() + 1.0, applied_at + EXPERIMENT_SECONDS - 0.4)
        time.sleep(max(0.0, close - time.time()))
        seconds = time.monotonic() - since
        selected = self.experiment_row(ref).get("selected") or []
        names = [p["name"] for p in pods]
        one = len(selected) == 1 and selected[0] in names
        if not self.check(one, f"mode one: the controller picked one of the two pods: {selected}"):
            return
        if not self.check(seconds >= 0.25, f"the apps were watched while it held ({seconds:.2g}s)"):
            return
        good = True
        for pod, old in zip(pods, before, strict=True):
            good &= self.judge_app(pod, old, pod["name"] in selected, seconds)
        if good:
            self.facts.append(f"the IoChaos experiment faulted {selected[0]} and only it")

        self.step("Waiting for the experiment to end on its own after 3s")
        started = time.monotonic()
        self.wait(
            lambda: self.experiment_row(ref).get("phase") == "Finished",
            EXPERIMENT_SECONDS + 15,
            f"{ref} to finish",
        )
        waited = time.monotonic() - started
        self.check(True, f"{ref} is Finished: recovered when its 3s were up ({waited:.1f}s later)")
        self.chaosctl("experiments")
        if self.apps_progress(pods, errors=False):
            self.facts.append("when the experiment finished, both apps ran cleanly again")

        self.step("Describing the experiment: its pods, and its audit trail")

        def recorded() -> dict[str, Any] | None:
            data = self.describe_data(ref)
            seen = {(e.get("kind"), e.get("pod")) for e in data.get("events") or []}
            per_pod = {(k, selected[0]) for k in ("experiment.injected", "experiment.recovered")}
            started = any(kind == "experiment.started" for kind, _ in seen)
            return data if started and per_pod <= seen else None

        data = self.wait(recorded, 15, f"the audit trail of {ref}")
        self.chaosctl("experiment", "describe", ref)
        pods_seen = (data.get("status") or {}).get("pods") or {}
        outcomes = {pod: (record or {}).get("outcome") for pod, record in pods_seen.items()}
        if self.check(
            outcomes == {selected[0]: "recovered"},
            f"its pod record: {selected[0]} injected, then recovered; the other left alone",
        ):
            self.facts.append("describe showed the pod's record and the experiment's audit events")

    def cleanup(self) -> None:
        self.step("Cleaning up")
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for mount in self.mounts:
            if _mounted(mount):
                subprocess.run(["umount", "-l", str(mount)], check=False)
        left = [m for m in self.mounts if _mounted(m)]
        shutil.rmtree(self.work, ignore_errors=True)
        print(
            f"    stopped {len(self.procs)} processes, {len(self.mounts)} mounts gone, "
            f"removed {self.work}"
        )
        if left:
            self.failures.append(f"mounts left behind: {left}")


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
        return True
    return False


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def main() -> int:
    demo = Demo()
    try:
        demo.run()
    except KeyboardInterrupt:
        demo.failures.append("interrupted")
    except Exception as exc:
        demo.failures.append(str(exc))
        print(f"    [FAILED] {exc}")
    finally:
        demo.cleanup()
    print("\n\033[1mSummary\033[0m")
    for fact in demo.facts:
        print(f"  - {fact}")
    if demo.failures:
        print(f"demo FAILED: {len(demo.failures)} step(s) misbehaved: " + "; ".join(demo.failures))
        return 1
    print(
        "demo passed: templates rendered and injected, one broadcast broke two disks, "
        "recover healed them, the audit trail says so, and an IoChaos experiment "
        "faulted one pod for 3s and recovered it."
    )
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
