"""The locked-down NATS of deploy/nats/nats.conf, with the real services.

The shipped file is the one tested: only its listen address, certificate paths
and store_dir (the lines marked ``# chaosbus-test:``) are replaced. The server
gets the role passwords from its environment, as in production; every client
speaks TLS to it and trusts it through a CA made here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig
from test_injector import Injector
from test_pipeline import PREFIX, admit, tikv
from test_template_watcher import SEED, Watcher
from tls_helpers import CA

from chaosbus import codec, desired
from chaosbus.bus import BusAuth
from chaosbus.injection import RENDERINGS_BUCKET, rendering_key
from chaosbus.subjects import FLEET_COMMAND, pod_command
from conftest import BIN, Sidecar, free_port, wait_for

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "nats" / "nats.conf"
ROLES = ("operator", "template-watcher", "injector", "sidecar", "controller")
POD = "a/db-0"
MARKED = re.compile(r'^(\s*)(\w+): "[^"]*" # chaosbus-test: (\w+)$')


class SecureBus:
    """nats-server running the shipped configuration."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"tls://127.0.0.1:{self.port}"
        self.ca = CA.create(root / "tls")
        cert, key = self.ca.issue("nats-server", ["127.0.0.1", "localhost"])
        values = {
            "listen": f"127.0.0.1:{self.port}",
            "cert_file": str(cert),
            "key_file": str(key),
            "ca_file": str(self.ca.cert_path),
            "store_dir": str(root / "jetstream"),
        }
        lines = []
        for line in CONFIG.read_text().splitlines():
            if m := MARKED.match(line):
                indent, key_name, marker = m.groups()
                assert key_name == marker, line
                line = f'{indent}{key_name}: "{values.pop(marker)}"'
            lines.append(line)
        assert not values, f"markers missing from {CONFIG}: {sorted(values)}"
        self.config = root / "nats.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.passwords = {role: "p" + secrets.token_hex(20) for role in ROLES}
        for role, password in self.passwords.items():
            self.password_file(role).write_text(password + "\n")
        self.log = root / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def password_file(self, role: str) -> Path:
        return self.root / f"{role}.password"

    def start(self) -> None:
        env = {**os.environ}
        for role, password in self.passwords.items():
            env[f"{role.upper().replace('-', '_')}_PASSWORD"] = password
        self.proc = subprocess.Popen(
            [str(BIN / "nats-server"), "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115
            env=env,
        )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return True
            return False

        wait_for(up, what="nats-server to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def auth(self, role: str) -> dict[str, Any]:
        """nats.connect options for a role, built as the services build theirs."""
        return BusAuth(
            user=role, password_file=str(self.password_file(role)), ca=str(self.ca.cert_path)
        ).options()

    def flags(self, role: str) -> list[str]:
        """The argparse services' and chaosctl's flags for a role."""
        return [
            "--nats-user",
            role,
            "--nats-password-file",
            str(self.password_file(role)),
            "--nats-tls-ca",
            str(self.ca.cert_path),
        ]

    def ctl(self, *args: str, role: str = "operator") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "chaosctl"), "--nats", self.url, *self.flags(role), *args],
            capture_output=True,
            text=True,
            timeout=20,
        )

    def ctl_json(self, *args: str) -> Any:
        done = self.ctl("--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def violations(self, *services: str) -> list[str]:
        """Permission violations the server logged for these services' connections."""
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if "Violation" in line and any(f":python3:{name}" in line for name in services)
        ]


class SecureSidecar(Sidecar):
    """conftest's Sidecar, on the locked-down bus as the sidecar user."""

    def __init__(self, root: Path, bus: SecureBus, pod: str, labels: str) -> None:
        extra = [
            "-nats-user",
            "sidecar",
            "-nats-password-file",
            str(bus.password_file("sidecar")),
            "-nats-ca",
            str(bus.ca.cert_path),
            "-heartbeat",
            "300ms",
        ]
        super().__init__(root, bus.url, pod, extra, {"POD_LABELS": labels})
        self.bus = bus

    def request(self, payload: bytes | dict[str, Any], timeout: float = 5) -> dict[str, Any]:
        """A command as the operator (the only role allowed to send one)."""
        ns, name = self.pod.split("/", 1)
        data = payload if isinstance(payload, bytes) else codec.encode(payload)

        async def ask() -> dict[str, Any]:
            nc = await nats.connect(self.bus.url, **self.bus.auth("operator"))
            try:
                msg = await nc.request(pod_command(ns, name), data, timeout=timeout)
                return codec.decode(msg.data, limit=1 << 24)
            finally:
                await nc.close()

        return asyncio.run(ask())

    def rule_ids(self) -> list[str]:
        return sorted(r["id"] for r in self.request({"op": "status"})["rules"])


class Probe:
    """A raw nats-py connection as one role, recording what the server refuses."""

    def __init__(self, bus: SecureBus, role: str) -> None:
        self.bus, self.role = bus, role
        self.errors: list[str] = []
        self.nc: Any = None

    async def __aenter__(self) -> Probe:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        self.nc = await nats.connect(
            self.bus.url,
            name=f"probe {self.role}",
            error_cb=on_error,
            allow_reconnect=False,
            **self.bus.auth(self.role),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def refused(self, subject: str, what: str = "publish", timeout: float = 3.0) -> None:
        expected = f'permissions violation for {what} to "{subject.lower()}"'
        deadline = time.monotonic() + timeout
        while not any(expected in e for e in self.errors):
            assert time.monotonic() < deadline, f"{self.role}: no {expected!r} in {self.errors}"
            await asyncio.sleep(0.02)

    async def denied_js(self, *calls: tuple[str, Any]) -> None:
        """JetStream calls the server must refuse, each (subject, awaitable): none is
        answered (they time out, all at once) and each subject is reported."""
        results = await asyncio.gather(*(call for _, call in calls), return_exceptions=True)
        for (subject, _), result in zip(calls, results, strict=True):
            assert isinstance(result, nats.errors.TimeoutError), (subject, result)
            await self.refused(subject)


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBus]:
    server = SecureBus(tmp_path_factory.mktemp("secure-nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def watcher(bus: SecureBus) -> Iterator[Watcher]:
    """The real template-watcher as its own user: it creates the buckets and the stream."""
    folder = bus.root / "configmaps"
    folder.mkdir()
    for name in ("chaosfs-sidecar.yaml", "tikv-configmap.yaml", "pd-configmap.yaml"):
        (folder / name).write_bytes((SEED / name).read_bytes())
    w = Watcher(folder, bus.url, bus.root / "watcher.log")
    w.proc = subprocess.Popen(
        [
            str(BIN / "chaos-template-watcher"),
            "--source",
            f"dir:{folder}",
            "--namespace",
            "chaos-testing",
            "--nats",
            bus.url,
            *bus.flags("template-watcher"),
        ],
        stderr=open(w.log, "ab"),  # noqa: SIM115
    )
    yield w
    w.stop()


@pytest.fixture(scope="module")
def sidecar(bus: SecureBus, watcher: Watcher) -> Iterator[SecureSidecar]:
    sc = SecureSidecar(bus.root / "pod", bus, POD, "app=db")
    sc.start()
    yield sc
    sc.cleanup()


# --- the services at work ---------------------------------------------------------------


def test_watcher_publishes_and_the_injector_reads_but_cannot_write(
    bus: SecureBus, watcher: Watcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The injector takes its credentials from the environment, the others from flags.
    monkeypatch.setenv("NATS_USER", "injector")
    monkeypatch.setenv("NATS_PASSWORD_FILE", str(bus.password_file("injector")))
    monkeypatch.setenv("NATS_CA", str(bus.ca.cert_path))
    injector = Injector(tmp_path, bus.url)
    try:
        injector.start()
        injector.wait_ready()
        wait_for(
            lambda: "patch" in admit(injector, tikv({f"{PREFIX}/request": "chaosfs-tikv"}))[1],
            what="the tikv rendering at the injector",
        )

        async def probe() -> list[str]:
            async with Probe(bus, "injector") as p:
                kv = await p.nc.jetstream(timeout=1.0).key_value(RENDERINGS_BUCKET)
                evil = rendering_key("chaos-testing", "chaosfs-tikv")
                await p.denied_js(
                    (f"$KV.RENDERINGS.{evil}", kv.put(evil, b"\x80")),
                    (f"$KV.RENDERINGS.{evil}", kv.delete(evil)),
                )
                for subject in (pod_command("a", "db-0"), FLEET_COMMAND):
                    await p.nc.publish(subject, codec.encode({"op": "recover", "all": True}))
                    await p.refused(subject)
                return sorted(await kv.keys())  # reading is allowed

        keys = asyncio.run(probe())
        assert keys == [
            rendering_key("chaos-testing", "chaosfs-pd"),
            rendering_key("chaos-testing", "chaosfs-tikv"),
        ]
        # The renderings are intact: admission still injects Chaos Mesh v0.9's sidecar.
        pod, _ = admit(injector, tikv({f"{PREFIX}/request": "chaosfs-tikv"}))
        assert pod["spec"]["containers"][1]["image"] == "pingcap/chaos-fs:v0.9.1"
    finally:
        injector.stop()
    assert bus.violations("chaos-injector", "chaos-template-watcher") == []


def test_operator_commands_a_sidecar_that_converges_and_reports(
    bus: SecureBus, sidecar: SecureSidecar
) -> None:
    done = bus.ctl(
        "fault",
        "set",
        "--pod",
        POD,
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--methods",
        "read",
        "--id",
        "keep",
    )
    assert done.returncode == 0, done.stderr
    assert sidecar.rule_ids() == ["keep"]
    fleet = bus.ctl_json(
        "fault",
        "broadcast",
        "--selector",
        "app=db",
        "--action",
        "latency",
        "--delay",
        "1ms",
        "--id",
        "everyone",
    )
    assert fleet["acked"] == [POD] and fleet["errors"] == []
    (sidecar.original / "f").write_text("data")

    async def watch_events() -> dict[str, list[dict[str, Any]]]:
        seen: dict[str, list[dict[str, Any]]] = {}

        def complete() -> bool:
            injected = [(e["rule"], e["method"]) for e in seen.get("inject", [])]
            return {"ready", "heartbeat"} <= set(seen) and ("keep", "read") in injected

        async with Probe(bus, "operator") as p:
            sub = await p.nc.subscribe("chaosbus.fs.evt.>")
            await p.nc.flush()
            # kill -9 and a restart: the sidecar is back with the rules desired state holds.
            await asyncio.to_thread(sidecar.stop, signal.SIGKILL)
            await asyncio.to_thread(sidecar.start)
            await asyncio.to_thread(
                wait_for, lambda: "keep" in sidecar.rule_ids(), 10, 0.05, "rules restored"
            )
            with pytest.raises(OSError):
                await asyncio.to_thread((sidecar.mountpoint / "f").read_text)
            deadline = time.monotonic() + 5
            while not complete() and time.monotonic() < deadline:
                with contextlib.suppress(nats.errors.TimeoutError):
                    msg = await sub.next_msg(timeout=0.5)
                    event = codec.decode(msg.data)
                    seen.setdefault(msg.subject.split(".")[3], []).append(event)
            assert p.errors == []
        assert complete(), seen
        return seen

    events = asyncio.run(watch_events())
    assert all(e["pod"] == POD for kind in events.values() for e in kind)
    assert sidecar.rule_ids() == ["everyone", "keep"]


def test_sidecar_registers_without_a_permission_error(
    bus: SecureBus, sidecar: SecureSidecar
) -> None:
    # A locked-down sidecar must not even ask for what it may not do: NATS never
    # answers a refused request, so a refused STREAM.CREATE.AUDIT at start would
    # hold up the registry (and the bus) until the request times out.
    wait_for(
        lambda: [e["pod"] for e in bus.ctl_json("sidecars") if not e["lost"]] == [POD],
        timeout=5,
        what="the sidecar in the registry",
    )
    audit = bus.ctl("audit", "--json", "--kind", "sidecar.ready")
    assert audit.returncode == 0 and POD in audit.stdout, audit.stderr
    # The sidecar (and chaosctl) never asked for anything their users may not do.
    assert bus.violations("chaosfs", "chaosctl") == []


def test_every_chaosctl_command_works_as_the_operator(
    bus: SecureBus, sidecar: SecureSidecar
) -> None:
    rule = ["--action", "errno", "--errno", "EIO", "--path", "nothing"]
    for args in (
        ["fault", "set", "--pod", POD, *rule, "--id", "c1"],
        ["fault", "set", "--pod", POD, *rule, "--id", "c2", "--methods", "read,write"],
        ["fault", "list", "--pod", POD],
        ["fault", "methods", "--pod", POD],
        ["status", "--pod", POD],
        ["fault", "recover", "--pod", POD, "--method", "write"],
        ["fault", "recover", "--pod", POD, "--id", "c1"],
        ["fault", "broadcast", "--namespace", "a", *rule, "--id", "c3"],
        ["fault", "recover", "--fleet", "--namespace", "a", "--id", "c3"],
        ["fault", "recover", "--pod", POD, "--all"],
        ["fault", "recover", "--fleet", "--all"],
        ["sidecars"],
        ["audit", "--kind", "rule.set", "--since", "10m"],
        ["audit", "--since-seq", "1", "--pod", POD],
    ):
        done = bus.ctl(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "warning" not in done.stderr, (args, done.stderr)
    assert sidecar.rule_ids() == []
    assert bus.violations("chaosctl") == []


# --- what each role may not do ------------------------------------------------------------


def test_sidecar_user_cannot_command_write_desired_state_or_manage_streams(
    bus: SecureBus, sidecar: SecureSidecar
) -> None:
    before = sidecar.rule_ids()
    ns, name = POD.split("/")
    evil_rule = {"id": "evil", "action": "errno", "errno": "EIO"}

    async def probe() -> None:
        async with Probe(bus, "sidecar") as p:
            nc, js = p.nc, p.nc.jetstream(timeout=1.0)
            # Commands: neither to one pod nor to the fleet.
            command = codec.encode({"op": "set", "rules": [evil_rule], "actor": "mallory"})
            for subject in (pod_command(ns, name), FLEET_COMMAND):
                await nc.publish(subject, command, reply=nc.new_inbox())
                await p.refused(subject)
            # Desired state: readable (a sidecar converges to it), never writable.
            kv = await js.key_value(desired.BUCKET)
            key = desired.pod_key(ns, name, "evil")
            entry = codec.encode(desired.Entry.of(evil_rule, "mallory").to_wire())
            keep = desired.pod_key(ns, name, "keep")
            # ... and streams: no creating, changing, purging or deleting.
            audit = (await js.stream_info("AUDIT")).config
            audit.max_msgs = 1
            await p.denied_js(
                (f"$KV.DESIRED.{key}", kv.put(key, entry)),
                (f"$KV.DESIRED.{keep}", kv.delete(keep)),
                (
                    "$JS.API.STREAM.CREATE.EVIL",
                    js.add_stream(StreamConfig(name="EVIL", subjects=["chaosbus.fs.cmd.>"])),
                ),
                ("$JS.API.STREAM.UPDATE.AUDIT", js.update_stream(audit)),
                ("$JS.API.STREAM.PURGE.AUDIT", js.purge_stream("AUDIT")),
                ("$JS.API.STREAM.DELETE.KV_DESIRED", js.delete_stream("KV_DESIRED")),
            )
            # Nor listening to other pods' events.
            await nc.subscribe("chaosbus.fs.evt.>")
            await p.refused("chaosbus.fs.evt.>", what="subscription")
            # What a sidecar may do still works on this very connection.
            registry = await js.key_value("SIDECARS")
            await registry.put("x.probe", b"\x80")
            await registry.delete("x.probe")

    asyncio.run(probe())
    # Nothing reached the sidecar or desired state.
    assert sidecar.rule_ids() == before
    status = bus.ctl_json("status", "--pod", POD)
    assert "evil" not in json.dumps(status) and status["drift"]["missing"] == []
    audit = bus.ctl("audit", "--json", "--kind", "sidecar.ready")
    assert audit.returncode == 0 and POD in audit.stdout  # the audit trail is still there


@pytest.mark.parametrize("role", ["template-watcher", "injector"])
def test_only_the_operator_sends_commands(bus: SecureBus, watcher: Watcher, role: str) -> None:
    async def probe() -> None:
        async with Probe(bus, role) as p:
            for subject in (pod_command("a", "db-0"), "chaosbus.fs.cmd.x.y", FLEET_COMMAND):
                await p.nc.publish(subject, codec.encode({"op": "recover", "all": True}))
                await p.refused(subject)
            js = p.nc.jetstream(timeout=1.0)
            denied = [("$KV.DESIRED.fleet.x", js.publish("$KV.DESIRED.fleet.x", b"\x80"))]
            if role == "injector":  # which has no business with desired state at all
                denied.append(("$JS.API.STREAM.INFO.KV_DESIRED", js.stream_info("KV_DESIRED")))
            await p.denied_js(*denied)

    asyncio.run(probe())


def test_wrong_password_missing_ca_and_plaintext_are_refused(bus: SecureBus) -> None:
    bad = bus.root / "wrong.password"
    bad.write_text("not-the-password\n")
    done = subprocess.run(
        [
            str(BIN / "chaosctl"),
            "--nats",
            bus.url,
            "--nats-user",
            "operator",
            "--nats-password-file",
            str(bad),
            "--nats-tls-ca",
            str(bus.ca.cert_path),
            "sidecars",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 3 and "Authorization Violation" in done.stderr, done.stderr

    # The right password, but the server's CA is not trusted.
    done = subprocess.run(
        [
            str(BIN / "chaosctl"),
            "--nats",
            bus.url,
            "--nats-user",
            "operator",
            "--nats-password-file",
            str(bus.password_file("operator")),
            "sidecars",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in done.stderr, done.stderr

    # A sidecar's password is no operator's.
    done = subprocess.run(
        [
            str(BIN / "chaosctl"),
            "--nats",
            bus.url,
            "--nats-user",
            "operator",
            "--nats-password-file",
            str(bus.password_file("sidecar")),
            "--nats-tls-ca",
            str(bus.ca.cert_path),
            "sidecars",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 3 and "Authorization Violation" in done.stderr, done.stderr

    # Plaintext: the server demands TLS and never answers a plaintext CONNECT.
    with socket.create_connection(("127.0.0.1", bus.port), timeout=5) as s:
        info = s.makefile("rb").readline()
        assert info.startswith(b"INFO ") and json.loads(info[5:])["tls_required"] is True
        password = bus.passwords["operator"]
        s.sendall(f'CONNECT {{"user":"operator","pass":"{password}"}}\r\nPING\r\n'.encode())
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(4096):
                answer += chunk
        assert b"PONG" not in answer
