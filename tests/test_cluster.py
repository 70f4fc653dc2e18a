"""chaosbus on a three-server NATS cluster, as the prod overlay runs it.

Three nats-servers on loopback form one JetStream cluster from the shipped
deploy/nats/nats.conf and deploy/overlays/prod/nats-cluster.conf (only the lines
marked ``# chaosbus-test:``, the listen addresses and the routes are replaced),
with TLS between the servers and between clients and servers, and every client
logged in as its role. Each server also serves its monitoring endpoint, where the
test reads who leads the JetStream cluster (the meta leader) and each stream.

- ``CHAOSBUS_JS_REPLICAS`` makes every bucket and the AUDIT stream with three
  replicas and brings existing ones to three, and only the role that creates a
  bucket may change it: the others are refused at once and carry on.
- Servers are killed (SIGKILL) one after the other, first the meta leader, then
  the leader of the desired-state stream, then the last one, while a fleet
  broadcast, desired-state writes and audit events are under way. Broadcasts are
  acknowledged or retried; no acknowledged desired entry and no audit event is
  lost; the sidecars (one real chaosfs mount and mount-less agents), chaosctl and
  the template-watcher carry on through the other servers.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import yaml
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, ServiceUnavailableError
from tls_helpers import CA

from chaosbus import codec, desired, registry
from chaosbus.audit import SIDECAR_STREAM as AUDIT_SIDECARS
from chaosbus.audit import STREAM as AUDIT
from chaosbus.audit import AuditLog, audit_subject, ensure_stream
from chaosbus.bus import BusAuth
from chaosbus.experiments.store import LEASE, SPECS, STATUS, ExperimentStore, lease_bucket
from chaosbus.fleet import broadcast
from chaosbus.injection import NAMESPACES_BUCKET, RENDERINGS_BUCKET
from chaosbus.kv import REPLICAS_ENV, contents, open_bucket
from chaosbus.subjects import pod_command
from conftest import AGENTS_CMD, BIN, Sidecar, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
NATS_CONF = ROOT / "deploy" / "nats" / "nats.conf"
CLUSTER_CONF = ROOT / "deploy" / "overlays" / "prod" / "nats-cluster.conf"
SEED = Path(__file__).parent / "fixtures" / "seed"
ROLES = ("operator", "template-watcher", "injector", "sidecar", "controller")
MARKED = re.compile(r'^(\s*)(\w+): "[^"]*" # chaosbus-test: (\w+)$')
WATCHER_BUCKETS = (RENDERINGS_BUCKET, NAMESPACES_BUCKET, desired.BUCKET, registry.BUCKET)
AGENTS = 30


# --- the cluster ------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    folder: Path
    port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / "nats.log"

    def monitor(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
            return json.loads(r.read())


class Cluster:
    """Three nats-servers running the shipped prod configuration on loopback."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.ca = CA.create(root / "tls")
        # trustme leaves serve both ways: clients and routes connect to each server, and
        # each opens routes to the others with the same certificate (mutual TLS).
        self.cert, self.key = self.ca.issue("nats")
        self.passwords = {role: "p" + secrets.token_hex(16) for role in ROLES}
        for role, password in self.passwords.items():
            self.password_file(role).write_text(password + "\n")
        self.nodes = [Node(f"nats-{i}", root / f"nats-{i}") for i in range(size)]
        for node in self.nodes:
            node.folder.mkdir()
            self._configure(node)

    def password_file(self, role: str) -> Path:
        return self.root / f"{role}.password"

    @property
    def urls(self) -> str:
        """Every server, comma-separated, as chaosbus's --nats and -nats take them."""
        return ",".join(node.url for node in self.nodes)

    def _configure(self, node: Node) -> None:
        values = {
            "listen": f"127.0.0.1:{node.port}",
            "cert_file": str(self.cert),
            "key_file": str(self.key),
            "ca_file": str(self.ca.cert_path),
            "store_dir": str(node.folder / "jetstream"),
        }
        for source in (NATS_CONF, CLUSTER_CONF):
            lines = []
            for line in source.read_text().splitlines():
                if m := MARKED.match(line):
                    indent, key, marker = m.groups()
                    line = f'{indent}{key}: "{values[marker]}"'
                lines.append(line)
            text = "\n".join(lines) + "\n"
            if source == CLUSTER_CONF:
                # The cluster's own port and the routes to the others, on loopback.
                text, listens = re.subn(
                    r'(cluster \{\s*name: \w+\s*listen: )"[^"]*"',
                    rf'\g<1>"127.0.0.1:{node.route_port}"',
                    text,
                )
                routes = "\n".join(
                    f'    "nats-route://127.0.0.1:{n.route_port}"' for n in self.nodes
                )
                text, routed = re.subn(
                    r"routes: \[[^\]]*\]", f"routes: [\n{routes}\n  ]", text, flags=re.S
                )
                assert listens == 1 and routed == 1, f"{source} changed: adapt the test"
            (node.folder / source.name).write_text(text)

    def start(self, node: Node) -> None:
        env = {**os.environ}
        for role, password in self.passwords.items():
            env[f"{role.upper().replace('-', '_')}_PASSWORD"] = password
        node.proc = subprocess.Popen(
            [
                str(BIN / "nats-server"),
                "--config",
                str(node.folder / CLUSTER_CONF.name),
                "--name",
                node.name,
                "-m",
                str(node.http_port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(node.log, "ab"),  # noqa: SIM115
            env=env,
        )

    def kill(self, node: Node) -> None:
        """SIGKILL: no goodbye to the clients or to the other servers."""
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)
        node.proc = None

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def up(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None]

    def healthy(self, node: Node) -> bool:
        """The server's own verdict: JetStream on, meta layer and streams current."""
        try:
            return node.monitor("/healthz").get("status") == "ok"
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        for node in self.up():
            wait_for(lambda n=node: self.healthy(n), timeout, 0.1, f"{node.name} healthy")

    def meta_leader(self) -> str:
        """The server leading the JetStream cluster, once every running one agrees."""

        def agreed() -> str | None:
            seen = set()
            for node in self.up():
                try:
                    seen.add((node.monitor("/jsz").get("meta_cluster") or {}).get("leader"))
                except OSError:
                    return None
            return seen.pop() if len(seen) == 1 and None not in seen and "" not in seen else None

        return wait_for(agreed, 30, 0.1, "one meta leader")

    def streams(self, node: Node) -> dict[str, dict[str, Any]]:
        """What ``node`` knows of each stream: its config, state and cluster (leader)."""
        out = {}
        for account in (
            node.monitor("/jsz?accounts=true&streams=true&config=true").get("account_details") or []
        ):
            for stream in account.get("stream_detail") or []:
                out[stream["name"]] = stream
        return out

    def stream_leader(self, stream: str) -> str:
        def leader() -> str | None:
            for node in self.up():
                info = self.streams(node).get(stream)
                if info and (info.get("cluster") or {}).get("leader"):
                    return info["cluster"]["leader"]
            return None

        return wait_for(leader, 30, 0.1, f"a leader for {stream}")

    def auth(self, role: str) -> dict[str, Any]:
        return BusAuth(
            user=role, password_file=str(self.password_file(role)), ca=str(self.ca.cert_path)
        ).options()

    def env(self, role: str) -> dict[str, str]:
        """A role's NATS settings as the environment variables every chaosbus program reads."""
        return {
            "NATS_URL": self.urls,
            "NATS_USER": role,
            "NATS_PASSWORD_FILE": str(self.password_file(role)),
            "NATS_CA": str(self.ca.cert_path),
        }

    async def connect(self, role: str, **options: Any) -> Client:
        return await nats.connect(
            servers=self.urls.split(","), name=f"test {role}", **self.auth(role), **options
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    for node in c.nodes:
        c.start(node)
    try:
        c.meta_leader()
        c.wait_healthy()
        yield c
    finally:
        c.stop()


def replicas(cluster: Cluster) -> dict[str, int]:
    """How many servers hold each stream, once that agrees with the stream's
    configuration everywhere (a stream just raised to three takes a moment to be
    copied to the new servers)."""

    def settled() -> dict[str, int] | None:
        hosts: dict[str, dict[str, dict[str, Any]]] = {}
        for node in cluster.up():
            for name, info in cluster.streams(node).items():
                hosts.setdefault(name, {})[node.name] = info
        out = {}
        for name, infos in hosts.items():
            if any(i["config"]["num_replicas"] != len(infos) for i in infos.values()):
                return None
            if len(infos) > 1:
                # Only the leader knows how far its followers are.
                leader = next(iter(infos.values())).get("cluster", {}).get("leader")
                peers = infos.get(leader, {}).get("cluster", {}).get("replicas") or []
                if len(peers) != len(infos) - 1 or not all(p.get("current") for p in peers):
                    return None
            out[name] = len(infos)
        return out

    return wait_for(settled, 30, 0.1, "every stream on as many servers as its replicas")


def settings(cluster: Cluster, stream: str) -> dict[str, Any]:
    for node in cluster.up():
        if info := cluster.streams(node).get(stream):
            config = dict(info["config"])
            config.pop("num_replicas")
            return config
    raise AssertionError(f"no server holds {stream}")


class Refusals:
    """The permission errors the server sends a connection."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    def subjects(self) -> set[str]:
        # nats-py gives the server's message in lower case.
        text = " ".join(self.seen)
        return set(re.findall(r'permissions violation for publish to "([^"]+)"', text))


# --- replicas by configuration ------------------------------------------------------------


def test_replicas_follow_the_variable_and_only_the_creating_role_changes_them(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    audit_limits = {"max_age": 7 * 86400.0, "max_bytes": 1 << 30}  # the services' defaults

    async def as_watcher(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(REPLICAS_ENV, raising=False)
        else:
            monkeypatch.setenv(REPLICAS_ENV, value)
        nc = await cluster.connect("template-watcher")
        try:
            await ensure_stream(nc, **audit_limits)
            for bucket in WATCHER_BUCKETS:
                kv = await open_bucket(nc, bucket)
                if bucket == RENDERINGS_BUCKET and value is None:
                    await kv.put("kept", b"made when everything had one replica")
        finally:
            await nc.close()

    # An installation from before: everything on one server.
    asyncio.run(as_watcher(None))
    before = replicas(cluster)
    assert before == {AUDIT: 1, AUDIT_SIDECARS: 1, **{f"KV_{b}": 1 for b in WATCHER_BUCKETS}}
    kept_settings = {name: settings(cluster, name) for name in before}

    # chaos-controller starts with three: it makes its own buckets with three, and its
    # attempts on the template-watcher's are refused at once (no 5 s timeout), leaving
    # them as they are.
    monkeypatch.setenv(REPLICAS_ENV, "3")

    async def as_controller() -> tuple[float, set[str]]:
        refusals = Refusals()
        nc = await cluster.connect("controller", error_cb=refusals.record)
        try:
            start = time.monotonic()
            await ensure_stream(nc, **audit_limits)
            await ExperimentStore.open(nc)
            await lease_bucket(nc, 10.0)
            await open_bucket(nc, desired.BUCKET)
            elapsed = time.monotonic() - start
            await nc.flush()
            return elapsed, refusals.subjects()
        finally:
            await nc.close()

    elapsed, refused = asyncio.run(as_controller())
    assert elapsed < 2.0, f"the controller's start took {elapsed:.1f}s"
    assert refused == {
        "$js.api.stream.update.audit",
        "$js.api.stream.update.audit_sidecars",
        "$js.api.stream.update.kv_desired",
    }
    now = replicas(cluster)
    assert {k: now[k] for k in (f"KV_{SPECS}", f"KV_{STATUS}", f"KV_{LEASE}")} == dict.fromkeys(
        (f"KV_{SPECS}", f"KV_{STATUS}", f"KV_{LEASE}"), 3
    )
    assert {k: now[k] for k in before} == before

    # The template-watcher restarts with three: everything of its own goes to three,
    # nothing else about the streams changes, and what they held is still there.
    asyncio.run(as_watcher("3"))
    assert replicas(cluster) == dict.fromkeys(replicas(cluster), 3)
    assert {name: settings(cluster, name) for name in before} == kept_settings

    async def read_kept() -> bytes:
        nc = await cluster.connect("injector")
        try:
            return (await contents(await open_bucket(nc, RENDERINGS_BUCKET, create=False)))["kept"]
        finally:
            await nc.close()

    assert asyncio.run(read_kept()) == b"made when everything had one replica"

    # chaosctl and chaosfs with another count change nothing: they may not, and are not
    # held up trying.
    for value in ("1", "5"):
        start = time.monotonic()
        done = subprocess.run(
            [str(BIN / "chaosctl"), "--json", "sidecars"],
            env={**os.environ, **cluster.env("operator"), REPLICAS_ENV: value},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == []
        assert time.monotonic() - start < 5.0
    assert set(replicas(cluster).values()) == {3}

    # A count JetStream cannot have is a start-up error that says what is wrong.
    for value in ("0", "three", "6"):
        done = subprocess.run(
            [str(BIN / "chaos-controller"), "--nats", cluster.urls],
            env={**os.environ, **cluster.env("controller"), REPLICAS_ENV: value},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 1
        assert f"chaos-controller: {REPLICAS_ENV}={value!r}: " in done.stderr, done.stderr
        assert "must be a whole number from 1 to 5" in done.stderr


# --- servers killed under load ----------------------------------------------------------


class ClusterSidecar(Sidecar):
    """conftest's real chaosfs mount, as the sidecar user, given all three servers."""

    def __init__(self, root: Path, cluster: Cluster, pod: str) -> None:
        extra = [
            "-nats-user",
            "sidecar",
            "-nats-password-file",
            str(cluster.password_file("sidecar")),
            "-nats-ca",
            str(cluster.ca.cert_path),
            "-heartbeat",
            "1s",
        ]
        super().__init__(root, cluster.urls, pod, extra, {"POD_LABELS": "app=db"})
        self.cluster = cluster

    def request(self, payload: bytes | dict[str, Any], timeout: float = 5) -> dict[str, Any]:
        """A command as the operator, the only role allowed to send one."""
        ns, name = self.pod.split("/", 1)
        data = payload if isinstance(payload, bytes) else codec.encode(payload)

        async def ask() -> dict[str, Any]:
            nc = await self.cluster.connect("operator")
            try:
                msg = await nc.request(pod_command(ns, name), data, timeout=timeout)
                return codec.decode(msg.data, limit=1 << 24)
            finally:
                await nc.close()

        return asyncio.run(ask())


class _Log:
    """AuditLog's logger: counts the publishes it had to retry."""

    def __init__(self) -> None:
        self.retries = 0

    def warning(self, event: str, **fields: Any) -> None:
        self.retries += 1


class Traffic:
    """Desired-state writes and audit events from one connection to all three servers,
    one after the other as fast as the cluster takes them, in a thread of its own.
    A write the cluster did not acknowledge is tried again, as chaosctl's user would;
    what it acknowledged is recorded, to be found later."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.acked: dict[str, bytes] = {}
        self.audit_ids: list[str] = []
        self.put_retries = 0
        self.audit_log = _Log()
        self.unflushed = -1
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()
        wait_for(lambda: len(self.acked) >= 5, 30, 0.05, "the first acknowledged writes")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the traffic thread did not finish"
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # handed to the test's thread by stop()
            self._error = exc

    async def _run(self) -> None:
        nc = await self.cluster.connect("operator", reconnect_time_wait=0.2)
        audit = AuditLog("chaosctl", self.audit_log)
        audit.start(nc)
        kv = await open_bucket(nc, desired.BUCKET, create=False)
        i = 0
        while not self._stop.is_set():
            self.audit_ids.append(audit.record("test.tick", n=i)["id"])
            key = desired.pod_key("ghost", f"pod-{i}", "r")
            value = codec.encode(desired.Entry.of(None, f"writer {i}").to_wire())
            while True:
                try:
                    await kv.put(key, value)
                    self.acked[key] = value
                    break
                except Exception:
                    self.put_retries += 1
                    await asyncio.sleep(0.1)
            i += 1
            await asyncio.sleep(0.01)
        await audit.stop(timeout=30)
        self.unflushed = audit._queue.qsize()
        await nc.close()


def ctl(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "chaosctl"), "--timeout", "5s", "--json", *args],
        env={**os.environ, **cluster.env("operator")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass
class Attempt:
    code: int
    acked: int
    missing: int
    warnings: list[str]
    error: str


def broadcast_rule(cluster: Cluster, rule_id: str, first: subprocess.Popen[str]) -> list[Attempt]:
    """Wait for a broadcast already started, and run it again until every sidecar has
    acknowledged it and desired state holds it (what an operator does on exit code 1
    or a warning); the attempts it took."""
    attempts: list[Attempt] = []
    proc = first
    deadline = time.monotonic() + 60
    while True:
        out, err = proc.communicate(timeout=60)
        warnings = [line for line in err.splitlines() if "warning" in line]
        data = json.loads(out) if out.strip().startswith("{") else {}
        attempts.append(
            Attempt(
                proc.returncode,
                len(data.get("acked", [])),
                len(data.get("missing", [])),
                warnings,
                err.strip().splitlines()[-1][:160] if err.strip() else "",
            )
        )
        if proc.returncode == 0 and not warnings:
            return attempts
        assert time.monotonic() < deadline, f"{rule_id}: no clean broadcast in {attempts}"
        time.sleep(0.5)
        proc = ctl(cluster, *broadcast_args(rule_id))


def broadcast_args(rule_id: str) -> list[str]:
    return [
        "fault",
        "broadcast",
        "--selector",
        "app=db",
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--methods",
        "read",
        "--path",
        f"{rule_id}/**",
        "--id",
        rule_id,
    ]


async def fleet_status(cluster: Cluster, expected: set[str]) -> dict[str, set[str]]:
    """Every sidecar's rules, straight from the sidecars (one fleet status command)."""
    nc = await cluster.connect("operator")
    try:
        command = {"op": "status", "target": {"selector": {"app": "db"}}, "actor": "test"}
        result = await broadcast(nc, command, expected, timeout=10)
    finally:
        await nc.close()
    assert not result.errors and not result.missing, (result.errors, result.missing)
    return {pod: {r["id"] for r in reply["rules"]} for pod, reply in result.acked.items()}


async def alive_sidecars(cluster: Cluster) -> set[str]:
    nc = await cluster.connect("operator")
    try:
        return {e["pod"] for e in await registry.entries(nc) if not e["lost"]}
    finally:
        await nc.close()


async def stream_messages(cluster: Cluster, subject: str) -> list[bytes]:
    """Every message of the AUDIT stream on ``subject``, oldest first, as the operator."""
    nc = await cluster.connect("operator")
    out: list[bytes] = []
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subject, ordered_consumer=True, stream=AUDIT)
        while True:
            msg = await sub.next_msg(timeout=10)
            out.append(msg.data)
            if msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
    finally:
        await nc.close()
    return out


async def desired_contents(cluster: Cluster) -> dict[str, bytes]:
    nc = await cluster.connect("operator")
    try:
        return await contents(await open_bucket(nc, desired.BUCKET, create=False))
    finally:
        await nc.close()


async def renderings(cluster: Cluster) -> dict[str, bytes]:
    """What the injector would read; nothing before the template-watcher made the bucket."""
    nc = await cluster.connect("injector")
    try:
        return await contents(await open_bucket(nc, RENDERINGS_BUCKET, create=False))
    except BucketNotFoundError:
        return {}
    finally:
        await nc.close()


def settled(read: Any) -> Any:
    """``read()``, or None while the cluster does not answer yet: a stream just made
    answers once its replicas have chosen a leader, and until then a request times out."""
    try:
        return read()
    except (nats.errors.TimeoutError, ServiceUnavailableError):
        return None


def read_fails(path: Path) -> bool:
    try:
        path.read_bytes()
        return False
    except OSError as exc:
        assert exc.errno == errno.EIO, exc
        return True


def test_killing_the_leaders_under_load_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    figures: dict[str, Any] = {}

    # The template-watcher, told three replicas, makes the buckets and the stream.
    configmaps = tmp_path / "configmaps"
    configmaps.mkdir()
    for name in ("chaosfs-sidecar.yaml", "tikv-configmap.yaml"):
        shutil.copy(SEED / name, configmaps / name)
    watcher_log = tmp_path / "watcher.log"
    watcher = subprocess.Popen(
        [
            str(BIN / "chaos-template-watcher"),
            "--source",
            f"dir:{configmaps}",
            "--namespace",
            "chaos-testing",
        ],
        env={**os.environ, **cluster.env("template-watcher"), REPLICAS_ENV: "3"},
        stdout=subprocess.DEVNULL,
        stderr=open(watcher_log, "wb"),  # noqa: SIM115
    )
    agents_log = tmp_path / "agents.log"
    agents: subprocess.Popen[bytes] | None = None
    mounted = ClusterSidecar(tmp_path / "pod", cluster, "apps/db-0")
    traffic = Traffic(cluster)
    try:
        wait_for(
            lambda: len(settled(lambda: asyncio.run(renderings(cluster))) or ()) == 1,
            30,
            0.2,
            "a rendering",
        )
        assert replicas(cluster) == {
            AUDIT: 3,
            AUDIT_SIDECARS: 3,
            **{f"KV_{b}": 3 for b in WATCHER_BUCKETS},
        }

        # The fleet: one real mount and mount-less agents, all given the three servers.
        for rule in ("r1", "r2", "r3"):
            (mounted.original / rule).mkdir(parents=True)
            (mounted.original / rule / "data").write_text("fine")
        mounted.start()
        agents = subprocess.Popen(
            [
                *AGENTS_CMD,
                "--count",
                str(AGENTS),
                "--namespace",
                "agents",
                "--labels",
                "app=db",
                "--heartbeat",
                "1",
            ],
            env={**os.environ, **cluster.env("sidecar")},
            stdout=subprocess.DEVNULL,
            stderr=open(agents_log, "wb"),  # noqa: SIM115
        )
        fleet = {"apps/db-0", *(f"agents/agent-{i}" for i in range(AGENTS))}
        wait_for(
            lambda: settled(lambda: asyncio.run(alive_sidecars(cluster))) == fleet,
            60,
            0.3,
            "the fleet registered",
        )
        traffic.start()
        figures["setup_s"] = round(time.monotonic() - started, 1)

        # Three servers killed one after the other, each during a broadcast and while
        # desired state and the audit trail are written, then started again.
        killed: list[tuple[str, str]] = []
        for rule_id in ("r1", "r2", "r3"):
            if rule_id == "r1":
                victim, role = cluster.meta_leader(), "meta leader"
            elif rule_id == "r2":
                # The desired-state stream's leader; another stream's if that one is
                # back on the server just restarted, so that all three go in turn.
                streams = (f"KV_{desired.BUCKET}", AUDIT, f"KV_{registry.BUCKET}")
                fresh = [s for s in streams if cluster.stream_leader(s) not in dict(killed)]
                stream = fresh[0] if fresh else streams[0]
                victim, role = cluster.stream_leader(stream), f"{stream} leader"
            else:
                victim = next(n.name for n in cluster.nodes if n.name not in dict(killed))
                role = "the last one"
            led = [s for s in (f"KV_{desired.BUCKET}", AUDIT) if cluster.stream_leader(s) == victim]
            if cluster.meta_leader() == victim:
                led.append("meta")
            first = ctl(cluster, *broadcast_args(rule_id))
            time.sleep(0.3)  # chaosctl is starting, connecting or publishing
            cluster.kill(cluster.node(victim))
            killed.append((victim, f"{role} (led: {', '.join(led) or 'nothing'})"))
            attempts = broadcast_rule(cluster, rule_id, first)
            figures[f"{rule_id}_attempts"] = [
                (a.code, a.acked, a.missing, a.error) for a in attempts
            ]
            # chaosctl got through while a server was down: given all three, it used another.
            cluster.start(cluster.node(victim))
            cluster.meta_leader()
            cluster.wait_healthy()
        figures["killed"] = killed
        assert len({name for name, _ in killed}) == 3, killed
        traffic.stop()
        figures["desired_writes"] = len(traffic.acked)
        figures["desired_retries"] = traffic.put_retries
        figures["audit_events"] = len(traffic.audit_ids)
        figures["audit_retries"] = traffic.audit_log.retries

        # Nothing acknowledged is lost: every desired entry, every audit event, once.
        assert traffic.unflushed == 0
        stored = asyncio.run(desired_contents(cluster))
        lost = {k for k, v in traffic.acked.items() if stored.get(k) != v}
        assert not lost, f"{len(lost)} acknowledged desired entries lost: {sorted(lost)[:5]}"
        for rule_id in ("r1", "r2", "r3"):
            entry = codec.decode(stored[desired.fleet_key(rule_id)])
            assert entry["rule"]["id"] == rule_id
        events = [
            codec.decode(m)
            for m in asyncio.run(stream_messages(cluster, audit_subject("chaosctl", "test.tick")))
        ]
        ids = [e["id"] for e in events]
        assert set(ids) == set(traffic.audit_ids), "audit events lost"
        figures["audit_duplicates"] = len(ids) - len(set(ids))
        assert len(ids) == len(set(ids)), "audit events stored twice"
        # ... and every server holds all of it (sidecars may still be auditing).
        replicas(cluster)
        for stream in (f"KV_{desired.BUCKET}", AUDIT):

            def same_everywhere(stream: str = stream) -> bool:
                last = {cluster.streams(n)[stream]["state"]["last_seq"] for n in cluster.nodes}
                return len(last) == 1

            wait_for(same_everywhere, 15, 0.2, f"{stream} the same on every server")

        # The fleet came through: every sidecar holds the three rules, and the mount
        # fails reads where they say so.
        rules = asyncio.run(fleet_status(cluster, fleet))
        assert rules == {pod: {"r1", "r2", "r3"} for pod in fleet}
        for rule_id in ("r1", "r2", "r3"):
            assert read_fails(mounted.path(f"{rule_id}/data"))
        assert mounted.proc is not None and mounted.proc.poll() is None
        assert agents.poll() is None
        log = mounted.log.read_text()
        figures["mount_reconnects"] = log.count("bus_reconnected")
        assert figures["mount_reconnects"] >= 1

        # The template-watcher carried on too: a new config is rendered and published.
        shutil.copy(SEED / "pd-configmap.yaml", configmaps / "pd-configmap.yaml")
        wait_for(
            lambda: len(settled(lambda: asyncio.run(renderings(cluster))) or ()) == 2,
            30,
            0.2,
            "the new rendering",
        )
        assert watcher.poll() is None
        assert "Traceback" not in watcher_log.read_text()
    finally:
        traffic._stop.set()
        mounted.cleanup()
        for proc in (agents, watcher):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        figures["total_s"] = round(time.monotonic() - started, 1)
        print(f"\ncluster figures: {json.dumps(figures)}")


# --- the prod overlay ---------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_prod_overlay_gives_every_service_as_many_replicas_as_nats_servers() -> None:
    done = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "overlays" / "prod")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    (nats_set,) = [
        d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "nats"
    ]
    servers = nats_set["spec"]["replicas"]
    assert len(re.findall(r"nats-route://", CLUSTER_CONF.read_text())) == servers
    services = {}
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith("chaosbus/"):
                env = {e["name"]: e.get("value") for e in c.get("env") or []}
                services[d["metadata"]["name"]] = env.get(REPLICAS_ENV)
    assert services == {
        "chaos-template-watcher": str(servers),
        "chaos-injector": str(servers),
        "chaos-controller": str(servers),
    }
