"""How fast the injector answers, and how fast a template edit reaches it.

Starts its own stack: a nats-server (JetStream in a temp dir), the real
``chaos-template-watcher --source dir:TMP`` over Chaos Mesh v0.9's template ConfigMap
plus N injection configs (copies of Chaos Mesh v0.9's tikv config, each with its own
name and selector), and the real ``chaos-injector`` over HTTPS with a
self-signed certificate. Then:

1. Admission latency, open loop: requests are scheduled at fixed times (RATE
   per second for DURATION seconds over a few keep-alive HTTPS connections) and
   each is timed from its scheduled send time to its response, so a slow answer
   delays nothing and hides nothing (no coordinated omission). Every request is
   an AdmissionReview for a TiKV pod asking for one of the configs, and must be
   answered 200 with a patch. Baseline: the same load on the injector's
   ``GET /healthz`` (same process, TLS and HTTP stack, no webhook work).
2. Template edit to served: the template file is replaced on disk with a new
   chaosfs image tag, then the injector is polled with admission requests as
   fast as possible until its patches carry the new image, for the first and
   for the last config the watcher publishes. Baselines: the watcher's poll
   interval, and a rendering put into the RENDERINGS bucket directly (timed
   from the put to the first patch that carries it).

Usage: ``python bench/admission_bench.py [--quick] [--rate R] [--duration S]
[--edits N] [--configs N] [--connections N] [--poll-pause MS] [--keep]``.
``--quick`` is a smoke run (1 s of load per endpoint at 50 req/s, 3 edits) that
keeps the bench from rotting. Benchmarks are not tests: the exit status says
whether the bench ran (every request answered as expected), not whether the
goals were met.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import nats
import yaml
from benchstack import (
    BIN,
    OthersMeter,
    busy_note,
    cpu_seconds,
    exit_on_failure,
    free_port,
    percentile,
    port_open,
    ratio,
    spawn,
    stack_cleanup,
    stop_all,
    verdict,
)

from chaosbus import codec
from chaosbus.injection import RENDERINGS_BUCKET, Rendering, rendering_key
from template_watcher.dir_source import POLL_INTERVAL

# The throwaway certificate authority of the tests (trustme): one implementation.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tls_helpers import serving_pair

SEED = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "seed"
TEMPLATE_FILE = "chaosfs-sidecar.yaml"
NAMESPACE = "chaos-testing"
PREFIX = "admission-webhook.chaos-mesh.org"
SHARD_LABEL = "bench.chaosbus.io/shard"
SEED_IMAGE = "pingcap/chaos-fs:v0.9.1"
IMAGE_REPO = "pingcap/chaos-fs"
INJECT_PATH = "/inject-v1-pod"
DIRECT_CONFIG = "bench-direct"
CONFIGS_PER_FILE = 10
LATENCY_GOAL_MS = 10.0
EDIT_GOAL_MS = 200.0
BLOCK_SECONDS = 2.0  # the load alternates between the endpoints this often
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 3.0
SERVED_TIMEOUT = 10.0


@dataclass(frozen=True)
class Plan:
    rate: float  # requests per second, both endpoints
    duration: float  # seconds of measured load per endpoint
    warmup: float  # seconds of unmeasured load per endpoint before it
    edits: int  # template edits timed
    puts: int  # direct KV puts timed
    configs: int
    connections: int
    poll_pause: float = 0.0  # seconds between polls while waiting for an edit; 0: none


FULL = Plan(rate=200, duration=20, warmup=2, edits=30, puts=30, configs=50, connections=4)
QUICK = Plan(rate=50, duration=1, warmup=0, edits=3, puts=3, configs=50, connections=4)


# --- what the watcher reads and the injector is asked --------------------------------


def config_name(index: int) -> str:
    return f"chaosfs-tikv-{index:02d}"


def shard(index: int) -> str:
    return f"{index:02d}"


def config_map(seed: dict[str, Any], index: int) -> dict[str, Any]:
    """Chaos Mesh v0.9's tikv ConfigMap with its own name, and a selector of its own shard."""
    (text,) = seed["data"].values()
    config = yaml.safe_load(text)
    name = config_name(index)
    config["name"] = name
    config["selector"]["labelSelectors"][SHARD_LABEL] = shard(index)
    out = copy.deepcopy(seed)
    out["metadata"]["name"] = name
    out["data"] = {name: yaml.safe_dump(config, sort_keys=False)}
    return out


def write_sources(folder: Path, configs: int) -> Path:
    """The template and the configs (several ConfigMaps per file); the template's path."""
    folder.mkdir()
    shutil.copy(SEED / TEMPLATE_FILE, folder / TEMPLATE_FILE)
    seed = yaml.safe_load((SEED / "tikv-configmap.yaml").read_text())
    maps = [config_map(seed, i) for i in range(configs)]
    for start in range(0, configs, CONFIGS_PER_FILE):
        chunk = maps[start : start + CONFIGS_PER_FILE]
        path = folder / f"configs-{start // CONFIGS_PER_FILE:02d}.yaml"
        path.write_text(yaml.safe_dump_all(chunk, sort_keys=False))
    return folder / TEMPLATE_FILE


def tikv_pod(index: int, config: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/component": "tikv", SHARD_LABEL: shard(index)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"tikv-{index}",
            "namespace": NAMESPACE,
            "labels": labels,
            "annotations": {f"{PREFIX}/request": config},
        },
        "spec": {
            "containers": [
                {
                    "name": "tikv",
                    "image": "pingcap/tikv:v4.0.0",
                    "command": ["/tikv-server"],
                    "args": ["--pd=http://pd:2379", "--data-dir=/var/lib/tikv/data"],
                    "volumeMounts": [{"name": "tikv", "mountPath": "/var/lib/tikv"}],
                }
            ],
            "volumes": [{"name": "tikv", "persistentVolumeClaim": {"claimName": "tikv"}}],
        },
    }


def review(index: int, config: str | None = None) -> bytes:
    pod = tikv_pod(index, config or config_name(index))
    request = {
        "uid": f"bench-{index}",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": NAMESPACE,
        "operation": "CREATE",
        "object": pod,
    }
    doc = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    return json.dumps(doc).encode()


def patch_of(status: int, data: bytes) -> bytes | None:
    """The decoded JSON patch of a 200 answer that has one, else None."""
    if status != 200:
        return None
    response = json.loads(data).get("response") or {}
    if response.get("allowed") is not True or "patch" not in response:
        return None
    return base64.b64decode(response["patch"])


def image_marker(tag: str) -> bytes:
    return f'"{IMAGE_REPO}:{tag}"'.encode()


# --- processes -----------------------------------------------------------------------


@dataclass
class Stack:
    root: Path
    configs: int
    nats_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    template: Path = field(init=False)
    cert_pem: str = field(init=False)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(self) -> None:
        self.template = write_sources(self.root / "configmaps", self.configs)
        self._start_nats()
        self.procs["watcher"] = spawn(self._watcher_cmd(), self.log("watcher"))
        self.procs["injector"] = spawn(self._injector_cmd(), self.log("injector"))
        self.wait(lambda: port_open(self.https_port), "the injector to listen")

    def _start_nats(self) -> None:
        conf = self.root / "nats.conf"
        conf.write_text(
            f'listen: "127.0.0.1:{self.nats_port}"\n'
            f'jetstream {{ store_dir: "{self.root / "js"}" }}\n'
        )
        self.procs["nats"] = spawn([str(BIN / "nats-server"), "-c", str(conf)], self.log("nats"))
        self.wait(lambda: port_open(self.nats_port), "nats-server to listen")

    def _watcher_cmd(self) -> list[str]:
        return [
            str(BIN / "chaos-template-watcher"),
            *("--source", f"dir:{self.template.parent}"),
            *("--namespace", NAMESPACE),
            *("--nats", self.nats_url),
        ]

    def _injector_cmd(self) -> list[str]:
        cert, key = self.root / "tls.crt", self.root / "tls.key"
        self.cert_pem = serving_pair(cert, key).trust_pem
        return [
            str(BIN / "chaos-injector"),
            *("--listen", f"127.0.0.1:{self.https_port}"),
            *("--tls-cert", str(cert), "--tls-key", str(key)),
            *("--nats", self.nats_url),
        ]

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log(name)}")

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not predicate():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def close(self) -> None:
        for name in ("injector", "watcher", "nats"):  # clients before the server
            if name in self.procs:
                stop_all({name: self.procs[name]}, STOP_TIMEOUT, "admission_bench")


# --- HTTP ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    latency: float  # seconds from the scheduled send time to the whole response
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class Endpoint:
    label: str
    method: str
    url: str
    bodies: list[bytes | None]
    check: Callable[[int, bytes], bool]


def healthz(stack: Stack) -> Endpoint:
    return Endpoint(
        "GET /healthz (baseline)",
        "GET",
        stack.base_url + "/healthz",
        [None],
        lambda status, _: status == 200,
    )


def webhook(stack: Stack) -> Endpoint:
    return Endpoint(
        f"POST {INJECT_PATH}",
        "POST",
        stack.base_url + INJECT_PATH,
        [review(i) for i in range(stack.configs)],
        lambda status, data: patch_of(status, data) is not None,
    )


def session(stack: Stack, connections: int) -> aiohttp.ClientSession:
    context = ssl.create_default_context(cadata=stack.cert_pem)
    connector = aiohttp.TCPConnector(ssl=context, limit=connections)
    timeout = aiohttp.ClientTimeout(total=SERVED_TIMEOUT)
    headers = {"Content-Type": "application/json"}
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)


async def call(http: aiohttp.ClientSession, method: str, url: str, body: bytes | None) -> Any:
    async with http.request(method, url, data=body) as response:
        return response.status, await response.read()


async def timed_request(
    http: aiohttp.ClientSession, endpoint: Endpoint, body: bytes | None, at: float
) -> Sample:
    loop = asyncio.get_running_loop()
    try:
        status, data = await call(http, endpoint.method, endpoint.url, body)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Sample(loop.time() - at, False, f"{type(exc).__name__}: {exc}")
    ok = endpoint.check(status, data)
    return Sample(loop.time() - at, ok, "" if ok else f"HTTP {status}: {data[:200]!r}")


async def open_loop(
    http: aiohttp.ClientSession, endpoint: Endpoint, rate: float, duration: float
) -> list[Sample]:
    """Send at fixed times whatever happens to earlier requests; time from those times."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.01
    tasks = []
    for i in range(int(rate * duration)):
        at = start + i / rate
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        body = endpoint.bodies[i % len(endpoint.bodies)]
        tasks.append(asyncio.create_task(timed_request(http, endpoint, body, at)))
    return list(await asyncio.gather(*tasks))


async def wait_ready(stack: Stack, http: aiohttp.ClientSession) -> None:
    """Until every config is served: the watcher published it and the injector read it."""
    url = stack.base_url + INJECT_PATH
    pending = list(range(stack.configs))
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while pending:
        stack.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} configs never served; see {stack.root}/*.log")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            if patch_of(*await call(http, "POST", url, review(pending[0]))) is not None:
                pending.pop(0)
                continue
        await asyncio.sleep(0.02)


# --- load -----------------------------------------------------------------------------


@dataclass
class LoadResult:
    label: str
    samples: list[Sample]
    cpu: float  # injector CPU seconds during the measured load
    handler_ms: list[float] = field(default_factory=list)  # the injector's own, from its log

    @property
    def latencies_ms(self) -> list[float]:
        return [s.latency * 1000 for s in self.samples]

    @property
    def failures(self) -> list[Sample]:
        return [s for s in self.samples if not s.ok]


async def load_block(
    stack: Stack, http: aiohttp.ClientSession, endpoint: Endpoint, rate: float, seconds: float
) -> LoadResult:
    pid = stack.procs["injector"].pid
    offset = stack.log("injector").stat().st_size
    cpu = cpu_seconds(pid)
    samples = await open_loop(http, endpoint, rate, seconds)
    cpu = cpu_seconds(pid) - cpu
    handler = [e["ms"] for e in log_events(stack.log("injector"), offset, "admission")]
    return LoadResult(endpoint.label, samples, cpu, handler)


async def load(
    stack: Stack, http: aiohttp.ClientSession, endpoints: list[Endpoint], plan: Plan
) -> list[LoadResult]:
    """Each endpoint at the same rate, in alternating blocks, so that whatever else
    the machine does (the watcher's periodic resync, say) hits them alike."""
    for endpoint in endpoints:
        if plan.warmup:
            await open_loop(http, endpoint, plan.rate, plan.warmup)
    totals = [LoadResult(e.label, [], 0.0) for e in endpoints]
    blocks = max(1, round(plan.duration / BLOCK_SECONDS))
    for block in range(blocks):
        order = list(enumerate(endpoints))
        for i, endpoint in order if block % 2 == 0 else order[::-1]:
            part = await load_block(stack, http, endpoint, plan.rate, plan.duration / blocks)
            totals[i].samples += part.samples
            totals[i].cpu += part.cpu
            totals[i].handler_ms += part.handler_ms
    return totals


def log_events(path: Path, offset: int, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of one event written after offset."""
    out = []
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("event") == event:
                    out.append(doc)
    return out


def log_time(doc: dict[str, Any]) -> float:
    return datetime.fromisoformat(doc["timestamp"]).timestamp()


# --- template edits and direct puts ---------------------------------------------------


@dataclass
class EditResult:
    first_ms: list[float] = field(default_factory=list)  # the first config published
    last_ms: list[float] = field(default_factory=list)  # the last: every config served
    published_first_ms: list[float] = field(default_factory=list)  # from the watcher's log
    published_last_ms: list[float] = field(default_factory=list)
    put_ms: list[float] = field(default_factory=list)  # direct KV put to served


@dataclass(frozen=True)
class Prober:
    """Asks the injector, one request at a time, until its patches carry a marker."""

    http: aiohttp.ClientSession
    url: str
    pause: float  # between rounds; 0 polls as fast as the injector answers

    async def served_after(
        self, bodies: dict[str, bytes], marker: bytes, t0: float
    ) -> dict[str, float]:
        """Poll each body round-robin until its patch holds the marker; seconds since t0."""
        loop = asyncio.get_running_loop()
        pending, seen = dict(bodies), {}
        while pending:
            if loop.time() - t0 > SERVED_TIMEOUT:
                missing = sorted(pending)
                raise RuntimeError(f"{missing} not served {marker!r} within {SERVED_TIMEOUT}s")
            for name, body in list(pending.items()):
                patch = patch_of(*await call(self.http, "POST", self.url, body))
                if patch is not None and marker in patch:
                    seen[name] = loop.time() - t0
                    del pending[name]
            if self.pause:
                await asyncio.sleep(self.pause)
        return seen


def replace_file(path: Path, text: str) -> None:
    """As an editor or a secret volume would: write aside, then rename over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def one_edit(
    stack: Stack, prober: Prober, original: str, tag: str, result: EditResult
) -> None:
    first, last = config_name(0), config_name(stack.configs - 1)
    bodies = {first: review(0), last: review(stack.configs - 1)}
    offset = stack.log("watcher").stat().st_size
    replace_file(stack.template, original.replace(SEED_IMAGE, f"{IMAGE_REPO}:{tag}"))
    t0, wall = asyncio.get_running_loop().time(), time.time()
    seen = await prober.served_after(bodies, image_marker(tag), t0)
    result.first_ms.append(seen[first] * 1000)
    result.last_ms.append(seen[last] * 1000)
    published = [
        log_time(e) for e in log_events(stack.log("watcher"), offset, "rendering_published")
    ]
    if published:
        result.published_first_ms.append((min(published) - wall) * 1000)
        result.published_last_ms.append((max(published) - wall) * 1000)


async def edits(stack: Stack, prober: Prober, plan: Plan, result: EditResult) -> None:
    original = stack.template.read_text()
    for n in range(plan.edits):
        await one_edit(stack, prober, original, f"edit-{n:03d}", result)
        # Let the watcher's other streams settle, and land the next edit at a
        # random point of its poll cycle.
        await asyncio.sleep(0.25 + random.uniform(0, POLL_INTERVAL))


def with_image(rendering: Rendering, tag: str) -> Rendering:
    spec = copy.deepcopy(rendering.spec)
    for container in spec.get("containers", []):
        if container.get("image", "").startswith(IMAGE_REPO + ":"):
            container["image"] = f"{IMAGE_REPO}:{tag}"
    return dataclasses.replace(rendering, name=DIRECT_CONFIG, spec=spec)


async def direct_puts(stack: Stack, prober: Prober, plan: Plan, result: EditResult) -> None:
    """Put renderings under a key of our own (the watcher leaves it alone) and time them."""
    nc = await nats.connect(stack.nats_url)
    try:
        kv = await nc.jetstream().key_value(RENDERINGS_BUCKET)
        entry = await kv.get(rendering_key(NAMESPACE, config_name(0)))
        template = Rendering.from_wire(codec.decode(entry.value or b"", limit=1 << 24))
        key = rendering_key(NAMESPACE, DIRECT_CONFIG)
        bodies = {DIRECT_CONFIG: review(0, DIRECT_CONFIG)}
        loop = asyncio.get_running_loop()
        for n in range(plan.puts):
            tag = f"put-{n:03d}"
            value = codec.encode(with_image(template, tag).to_wire())
            t0 = loop.time()
            await kv.put(key, value)
            seen = await prober.served_after(bodies, image_marker(tag), t0)
            result.put_ms.append(seen[DIRECT_CONFIG] * 1000)
            await asyncio.sleep(0.02 + random.uniform(0, 0.03))
    finally:
        await nc.close()


# --- the run ----------------------------------------------------------------------------


@dataclass
class Results:
    loads: list[LoadResult] = field(default_factory=list)
    edits: EditResult = field(default_factory=EditResult)
    others_percent: float = 0.0  # CPU other processes used during the measurements


async def measure(stack: Stack, plan: Plan) -> Results:
    results = Results()
    async with session(stack, plan.connections) as http, session(stack, 1) as probe:
        await wait_ready(stack, probe)
        meter = OthersMeter([proc.pid for proc in stack.procs.values()])
        results.loads = await load(stack, http, [healthz(stack), webhook(stack)], plan)
        prober = Prober(probe, stack.base_url + INJECT_PATH, plan.poll_pause)
        await edits(stack, prober, plan, results.edits)
        await direct_puts(stack, prober, plan, results.edits)
        results.others_percent = meter.percent()
    return results


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def row(label: str, values: list[float], base: list[float] | None = None, extra: str = "") -> str:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    cells = f"{label:<48}{ms(p50):>8}{ms(p99):>9}{ms(max(values, default=math.nan)):>9}"
    if base is not None:
        cells += f"{ratio(p50, percentile(base, 50)):>9}{ratio(p99, percentile(base, 99)):>9}"
    else:
        cells += " " * 18
    return cells + (f"  {extra}" if extra else "")


HEADER = f"{'':<48}{'p50 ms':>8}{'p99 ms':>9}{'max ms':>9}{'p50 x':>9}{'p99 x':>9}"


def report_load(results: Results, plan: Plan) -> None:
    base, hook = results.loads
    print(
        f"\n1. Admission latency: {plan.configs} configs loaded, open loop at {plan.rate:g} req/s "
        f"for {plan.duration:g} s each, {plan.connections} keep-alive HTTPS connections, "
        f"the two alternating every {BLOCK_SECONDS:g} s"
    )
    print(HEADER)
    for result in (base, hook):
        sent = len(result.samples)
        cpu_ms = result.cpu * 1000 / max(sent, 1)
        extra = f"{sent - len(result.failures)}/{sent} ok, injector CPU {cpu_ms:.2f} ms/req"
        print(row(result.label, result.latencies_ms, base.latencies_ms, extra))
    if hook.handler_ms:
        print(row("  of which the handler (injector's log)", hook.handler_ms))
    p99 = percentile(hook.latencies_ms, 99)
    print(f"goal: webhook p99 <= {LATENCY_GOAL_MS:g} ms: {verdict(p99 <= LATENCY_GOAL_MS)}")


def report_edits(result: EditResult, plan: Plan) -> None:
    pause = f"{plan.poll_pause * 1000:g} ms apart" if plan.poll_pause else "back to back"
    print(
        f"\n2. Template edit on disk to the injector serving it ({plan.edits} edits; "
        f"the injector polled with admission requests {pause})"
    )
    print(HEADER)
    poll = [POLL_INTERVAL * 1000]
    print(row("watcher poll interval (baseline)", poll))
    print(row(f"direct KV put to served (baseline, {plan.puts} puts)", result.put_ms))
    print(row("edit to watcher logging its first publish", result.published_first_ms))
    print(row("edit to watcher logging its last publish", result.published_last_ms))
    print(row(f"edit to served, first config ({config_name(0)})", result.first_ms, result.put_ms))
    last = f"edit to served, all {plan.configs} configs"
    print(row(last, result.last_ms, result.put_ms))
    print(f"{'  same, against the poll interval':<48}{'':>26}{ratio_cells(result.last_ms, poll)}")
    met = verdict(percentile(result.last_ms, 99) <= EDIT_GOAL_MS)
    print(f"goal: edit to served (all configs) p99 <= {EDIT_GOAL_MS:g} ms: {met}")


def ratio_cells(values: list[float], base: list[float]) -> str:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return f"{ratio(p50, percentile(base, 50)):>9}{ratio(p99, percentile(base, 99)):>9}"


def report(results: Results, plan: Plan, elapsed: float) -> None:
    print(
        f"admission_bench: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load generator in the same machine; ratios are "
        "figure / baseline of this run"
    )
    report_load(results, plan)
    report_edits(results.edits, plan)
    busy = results.others_percent
    print(
        f"\ntotal {elapsed:.0f} s; CPU used by other processes meanwhile: "
        f"{busy:.0f}% of one CPU{busy_note(busy)}"
    )


def show_failures(results: Results) -> bool:
    failed = False
    for result in results.loads:
        for sample in result.failures[:5]:
            print(f"failed ({result.label}): {sample.error}", file=sys.stderr)
        failed = failed or bool(result.failures)
    return failed


# --- command line -----------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[Plan, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="admission_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few seconds' smoke run")
    p.add_argument("--rate", type=float, help="requests per second")
    p.add_argument("--duration", type=float, help="seconds of measured load per endpoint")
    p.add_argument("--edits", type=int, help="template edits (and direct puts) timed")
    p.add_argument("--configs", type=int, help="injection configs loaded")
    p.add_argument("--connections", type=int, help="keep-alive HTTPS connections")
    p.add_argument(
        "--poll-pause",
        type=float,
        help="milliseconds between polls while waiting for an edit (default 0: back to back)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    overrides = {
        "rate": args.rate,
        "duration": args.duration,
        "edits": args.edits,
        "puts": args.edits,
        "configs": args.configs,
        "connections": args.connections,
        "poll_pause": None if args.poll_pause is None else args.poll_pause / 1000,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if min(plan.rate, plan.duration, plan.edits, plan.configs, plan.connections) <= 0:
        p.error("rate, duration, edits, configs and connections must be positive")
    if plan.poll_pause < 0:
        p.error("--poll-pause cannot be negative")
    return plan, args


@contextlib.contextmanager
def running_stack(plan: Plan, keep: bool) -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="admission-bench-"))
    stack = Stack(root, plan.configs)
    with stack_cleanup(stack, keep, "admission_bench"):
        stack.start()
        yield stack


def main(argv: list[str] | None = None) -> int:
    plan, args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    with exit_on_failure("admission_bench"), running_stack(plan, args.keep) as stack:
        results = asyncio.run(measure(stack, plan))
    report(results, plan, time.perf_counter() - started)
    return 1 if show_failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
