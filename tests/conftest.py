"""Real parts for the system tests: a nats-server on a free loopback port, chaosfs
processes over real FUSE mounts, and the real chaosctl command.

Two tiers. tests/unit/ needs nothing but Python: it runs as an unprivileged user,
without /dev/fuse, a nats-server or a network. Every other test is a system test:
it needs root, /dev/fuse with fusermount3, and loopback networking; one that asks
for a nats-server (the ``nats_server`` fixture) also needs the nats-server binary.
A missing capability skips exactly the tests that need it, with the reason; it
never stops the session, so the unit tier runs anywhere. The markers ``needs_root``,
``needs_fuse``, ``needs_nats`` and ``needs_network`` say the same of a single test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ports import free_port, nats_client_port

from chaosbus import codec
from chaosbus.subjects import pod_command

__all__ = ["free_port"]  # tests import it from here

BIN = Path(sys.executable).parent
# The bench's harness of mount-less sidecars (bench/agents.py; not something chaosbus ships).
AGENTS_CMD = (sys.executable, str(Path(__file__).resolve().parent.parent / "bench" / "agents.py"))


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class NatsServer:
    """A real nats-server; stop() and start() keep the port, as a restart would."""

    def __init__(self, workdir: Path) -> None:
        self.port = 0  # chosen by the server at its first start (tests/ports.py)
        self.workdir = workdir
        self.config = workdir / "nats.conf"
        # A large max_payload so that oversized commands reach the sidecar,
        # which must answer them with an error rather than never see them.
        self.config.write_text(
            'listen: "127.0.0.1:-1"\n'
            f'ports_file_dir: "{workdir}"\n'
            "max_payload: 16MB\n"
            f'jetstream {{ store_dir: "{workdir / "js"}" }}\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        assert self.port, "the server picks its port when it first starts"
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "nats-server"), "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "nats.log", "ab"),  # noqa: SIM115
        )
        if not self.port:
            self.port = nats_client_port(self.workdir, self.proc)
            # Later starts keep the port, as a restarted server would.
            text = self.config.read_text()
            self.config.write_text(text.replace("127.0.0.1:-1", f"127.0.0.1:{self.port}"))

        def up() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return True
            return False

        wait_for(up, what="nats-server to listen")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    skip_unless("nats")
    server = NatsServer(tmp_path)
    server.start()
    yield server
    server.stop()


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


class Sidecar:
    def __init__(self, root: Path, nats_url: str, pod: str, extra: list[str], env: dict) -> None:
        self.original = root / "original"
        self.mountpoint = root / "data"
        self.pidfile = root / "fuse" / "pid"
        self.log = root / "chaosfs.log"
        self.pod = pod
        self.nats_url = nats_url
        self.extra = extra
        self.env = env
        self.original.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, bus: bool = True) -> None:
        """Start chaosfs; with ``wait``, until the mount serves (the pidfile) and,
        with ``bus``, until it answers on NATS, which happens just after."""
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
        cmd = [
            str(BIN / "chaosfs"),
            "-original",
            str(self.original),
            "-mountpoint",
            str(self.mountpoint),
            "-pidfile",
            str(self.pidfile),
            "-pod",
            self.pod,
            "-nats",
            self.nats_url,
            *self.extra,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115
            env={**os.environ, **self.env},
        )
        if wait:
            wait_for(self.pidfile.exists, what=f"chaosfs pidfile (log: {self.log})")
        if wait and bus:
            wait_for(self._answers, what=f"chaosfs to answer on the bus (log: {self.log})")

    def _answers(self) -> bool:
        try:
            return bool(self.request({"op": "ping"}, timeout=1)["ok"])
        except Exception:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def cleanup(self) -> None:
        self.stop()
        if is_mounted(self.mountpoint):
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)

    def path(self, name: str) -> Path:
        return self.mountpoint / name

    def ctl(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return chaosctl(self.nats_url, *args, timeout=timeout)

    def request(self, payload: bytes | dict[str, Any], timeout: float = 5) -> dict[str, Any]:
        ns, name = self.pod.split("/", 1)
        data = payload if isinstance(payload, bytes) else codec.encode(payload)
        return asyncio.run(raw_request(self.nats_url, pod_command(ns, name), data, timeout))


async def raw_request(url: str, subject: str, data: bytes, timeout: float) -> dict[str, Any]:
    import nats

    nc = await nats.connect(url)
    try:
        msg = await nc.request(subject, data, timeout=timeout)
        return codec.decode(msg.data, limit=1 << 24)
    finally:
        await nc.close()


def set_rule(sc: Sidecar, *args: str) -> dict[str, Any]:
    """``chaosctl fault set`` on the sidecar's pod; its JSON reply (the command must work)."""
    done = sc.ctl("--json", "fault", "set", "--pod", sc.pod, *args)
    assert done.returncode == 0, done.stderr
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def chaosctl(url: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "chaosctl"), "--nats", url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def make_sidecar(tmp_path: Path, nats_server: NatsServer):
    made: list[Sidecar] = []

    def make(
        pod: str = "default/app-0",
        extra: list[str] | None = None,
        env: dict | None = None,
        start: bool = True,
        bus: bool = True,
    ) -> Sidecar:
        root = tmp_path / f"pod{len(made)}"
        sidecar = Sidecar(root, nats_server.url, pod, extra or [], env or {})
        made.append(sidecar)
        if start:
            sidecar.start(bus=bus)
        return sidecar

    yield make
    for sidecar in made:
        sidecar.cleanup()


@pytest.fixture
def sidecar(make_sidecar) -> Sidecar:
    return make_sidecar()


# --- capabilities: what a test needs from the machine -------------------------------


def _missing_root() -> str | None:
    if os.geteuid() != 0:
        return "needs root (FUSE mounts with allow_other, tmpfs mounts, chown)"
    return None


def _missing_fuse() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse (real FUSE mounts)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "needs read-write access to /dev/fuse (real FUSE mounts)"
    if shutil.which("fusermount3") is None:
        return "needs fusermount3: run `make setup`"
    return None


def _missing_nats() -> str | None:
    if not (BIN / "nats-server").exists() and shutil.which("nats-server") is None:
        return "needs the nats-server binary: run `make setup`"
    return None


def _missing_network() -> str | None:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
    except OSError as exc:
        return f"needs loopback networking (cannot listen on 127.0.0.1: {exc})"
    return None


CAPABILITIES: dict[str, Callable[[], str | None]] = {
    "root": _missing_root,
    "fuse": _missing_fuse,
    "nats": _missing_nats,
    "network": _missing_network,
}
# What every test outside tests/unit needs (root, FUSE and a loopback network).
SYSTEM_NEEDS = ("root", "fuse", "network")
UNIT_DIR = Path(__file__).parent / "unit"


@functools.cache
def missing(capability: str) -> str | None:
    """Why this machine lacks ``capability`` (a key of CAPABILITIES), or None."""
    return CAPABILITIES[capability]()


def skip_unless(*capabilities: str) -> None:
    """Skip the running test (or fixture) unless the machine has every capability."""
    for capability in capabilities:
        reason = missing(capability)
        if reason is not None:
            pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    for capability in CAPABILITIES:
        config.addinivalue_line(
            "markers", f"needs_{capability}: skipped with the reason when the machine lacks it"
        )
    config.addinivalue_line(
        "markers",
        "host_global: acts on the whole host (e.g. drops every page cache); "
        'on a shared machine, run with -m "not host_global"',
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs = {m.name.removeprefix("needs_") for m in item.iter_markers()}
        needs &= CAPABILITIES.keys()
        if UNIT_DIR not in item.path.parents:
            needs.update(SYSTEM_NEEDS)
        for capability in CAPABILITIES:  # root first: without it, /dev/fuse is refused too
            reason = missing(capability) if capability in needs else None
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
                break
