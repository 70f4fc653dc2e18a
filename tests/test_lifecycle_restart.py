"""A sidecar's life across restarts, as a pod sees it: killed and restarted at once,
restarted with many rules in desired state, restarted holding a spent rule,
stopped cleanly, and stopped or deleting on a full disk.

Each test drives real parts: chaosfs over a real FUSE mount, a real nats-server,
chaosctl, and small tmpfs file systems mounted by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from chaosbus import codec, desired, registry
from chaosbus.kv import open_bucket
from conftest import AGENTS_CMD, BIN, Sidecar, chaosctl, free_port, wait_for

MiB = 1 << 20
FAILURE_TEXTS = ("Traceback", "Task was destroyed", "Event loop is closed")


# --- helpers ------------------------------------------------------------------------


def audit(url: str, *args: str) -> list[dict[str, Any]]:
    done = chaosctl(url, "audit", "--json", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def rules(sc: Sidecar) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in sc.request({"op": "status"})["rules"]}


def log_events(sc: Sidecar, event: str) -> list[dict[str, Any]]:
    out = []
    for line in sc.log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == event:
                out.append(record)
    return out


def not_logged_as_json(text: str) -> list[str]:
    """Lines on stderr that are not structured log records: tracebacks and warnings."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("{")]


def put_desired(url: str, entries: dict[str, dict[str, Any]]) -> None:
    """Write rules into desired state directly, by key, as chaosctl and the controller do."""

    async def put() -> None:
        nc = await nats.connect(url)
        try:
            kv = await open_bucket(nc, desired.BUCKET)
            for key, wire in entries.items():
                entry = desired.Entry.of(wire, actor="test_lifecycle_restart", target={})
                await kv.put(key, codec.encode(entry.to_wire()))
        finally:
            await nc.close()

    asyncio.run(put())


def put_fleet_entries(url: str, wires: list[dict[str, Any]]) -> None:
    put_desired(url, {desired.fleet_key(w["id"]): w for w in wires})


def registry_counters(url: str, pod: str) -> list[dict[str, Any]]:
    """The rule counters in the pod's registry entry ([] while it has none)."""

    async def read() -> list[dict[str, Any]]:
        nc = await nats.connect(url)
        try:
            kv = await open_bucket(nc, registry.BUCKET, create=False)
            entry = await kv.get(registry.key(*pod.split("/", 1)))
            return codec.decode(entry.value or b"").get("counters", [])
        except Exception:
            return []
        finally:
            await nc.close()

    return asyncio.run(read())


@contextlib.contextmanager
def small_disk(path: Path, size: str = "20m") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``: a disk that fills up in a test."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def write_bytes(path: Path, data: bytes) -> None:
    """Write all of ``data``, raising on the first failing write (ENOSPC above all)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[: 128 * 1024]) :]
    finally:
        os.close(fd)


def fill(path: Path) -> None:
    """Grow ``path`` until its file system has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    chunk = b"\xa5" * 65536
    try:
        while True:
            try:
                if os.write(fd, chunk) == 0:
                    return
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return
    finally:
        os.close(fd)


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


# --- 1. kill -9, then an immediate restart ----------------------------------------


def test_kill_9_then_immediate_restart_ten_times_in_a_row(make_sidecar):
    # The kernel answers a stat of the mount root from attributes it cached for
    # -cache-timeout (5s), also once the daemon behind the mount is dead: a
    # liveness check by stat took the dead mount for a live one, and a kubelet
    # restarting the container at once got "already a live chaosfs mount".
    sc = make_sidecar()
    (sc.original / "f").write_text("survives")
    for attempt in range(10):
        os.stat(sc.mountpoint)  # an app looks at its data directory: root attributes cached
        assert (sc.mountpoint / "f").read_text() == "survives", attempt
        old = sc.proc
        sc.stop(signal.SIGKILL)
        sc.start()  # at once: waits for the new pidfile and a bus answer
        assert sc.proc is not None and sc.proc.pid != old.pid
        assert sc.proc.poll() is None, f"restart {attempt} exited: {sc.log.read_text()[-500:]}"
        assert (sc.mountpoint / "f").read_text() == "survives", attempt
        (sc.mountpoint / f"new{attempt}").write_text("written")
        assert (sc.original / f"new{attempt}").read_text() == "written"
    assert len(log_events(sc, "stale_mount_detached")) == 10
    assert "already a live chaosfs mount" not in sc.log.read_text()


def test_a_live_mount_is_still_refused(make_sidecar):
    sc = make_sidecar()
    os.stat(sc.mountpoint)
    done = subprocess.run(
        [
            str(BIN / "chaosfs"),
            "-original",
            str(sc.original),
            "-mountpoint",
            str(sc.mountpoint),
            "-pod",
            sc.pod,
            "-nats",
            sc.nats_url,
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 1
    assert "already a live chaosfs mount" in done.stderr
    assert (sc.mountpoint / ".").exists()


# --- 2. desired state read whole before converging ---------------------------------


class LaggingDeliveries:
    """A NATS proxy that holds back what a JetStream consumer of ``stream`` pushes, by
    ``lag`` seconds each, and a consumer-info request about one by ``lag / 3``;
    everything else goes through at once.

    nats-py's KV watch marks the initial values complete when a consumer-info reply
    says nothing is pending and nothing has arrived yet; nats-server can send that
    reply ahead of deliveries it already counts as sent. Unaided that happened in
    about 2 watch starts in 100 here (300 keys, an idle machine). The proxy makes
    it certain: the request reaches the server once it has sent every value, and
    the reply reaches the client before any of them. It parses the protocol frames
    (PUB and HPUB from the client, MSG and HMSG from the server).
    """

    def __init__(self, upstream_port: int, stream: str, lag: float) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.upstream_port = upstream_port
        self.ack_prefix = f"$JS.ACK.{stream}.".encode()
        self.info_prefix = f"$JS.API.CONSUMER.INFO.{stream}.".encode()
        self.lag = lag
        self.held = 0  # frames held back so far: the proxy did its job
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stop.wait()
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        tasks = [
            asyncio.create_task(self._from_client(reader, up_writer)),
            asyncio.create_task(self._from_server(up_reader, writer)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _from_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                frame = await reader.readuntil(b"\r\n")
                args = frame.split()
                if args and args[0] in (b"PUB", b"HPUB"):
                    frame += await reader.readexactly(int(args[-1]) + 2)
                    if args[1].startswith(self.info_prefix):
                        await asyncio.sleep(self.lag / 3)
                writer.write(frame)
                await writer.drain()

    async def _from_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        lagging: set[bytes] = set()  # deliver subjects of the consumers of the stream
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def release() -> None:
            while True:
                due, frame = await held.get()
                await asyncio.sleep(max(0.0, due - self._loop.time()))
                writer.write(frame)

        releaser = asyncio.create_task(release())
        try:
            while True:
                line = await reader.readuntil(b"\r\n")
                frame = line
                args = line.split()
                if args and args[0] in (b"MSG", b"HMSG"):
                    frame += await reader.readexactly(int(args[-1]) + 2)
                    with_reply = len(args) == (5 if args[0] == b"MSG" else 6)
                    if with_reply and args[3].startswith(self.ack_prefix):
                        lagging.add(args[1])
                    if args[1] in lagging:
                        self.held += 1
                        held.put_nowait((self._loop.time() + self.lag, frame))
                        continue
                writer.write(frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            releaser.cancel()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


MANY = 300


def many_rules() -> list[dict[str, Any]]:
    wires: list[dict[str, Any]] = [
        {"id": f"many-{i:03d}", "action": "latency", "delay": 0.001, "path": f"never-{i}"}
        for i in range(MANY)
    ]
    # Written last, so a convergence on the first part of the bucket would lack it.
    wires.append(
        {
            "id": "once",
            "action": "errno",
            "errno": ["EIO"],
            "methods": ["read"],
            "path": "f",
            "count": 1,
        }
    )
    return wires


def converged_events(url: str, pod: str) -> list[dict[str, Any]]:
    return audit(url, "--pod", pod, "--kind", "rule.converged")


def test_convergence_waits_for_the_whole_desired_state(make_sidecar, nats_server):
    # A sidecar that converged on part of desired state would audit a rule.converged
    # for every entry after it on a start, and on a reconnect remove the rules it
    # had not read yet, reset their counters, and audit that too.
    url = nats_server.url
    wires = many_rules()
    put_fleet_entries(url, wires)
    proxy = LaggingDeliveries(nats_server.port, "KV_" + desired.BUCKET, lag=0.3)
    try:
        sc = make_sidecar(start=False)
        sc.nats_url = proxy.url  # the sidecar's view of NATS lags; the test's does not
        (sc.original / "f").write_text("data")
        sc.start()
        wanted = {w["id"] for w in wires}

        def all_audited() -> bool:
            seen = {r["id"] for e in converged_events(url, sc.pod) for r in e["set"]}
            return seen == wanted

        wait_for(all_audited, timeout=20, interval=0.2, what="the start's convergence audited")
        assert proxy.held >= len(wanted)
        events = converged_events(url, sc.pod)
        summary = [(len(e["set"]), len(e["removed"])) for e in events]
        assert summary == [(len(wanted), 0)], f"(set, removed) per rule.converged: {summary}"
        assert set(rules(sc)) == wanted

        with pytest.raises(OSError) as failed:
            (sc.mountpoint / "f").read_text()
        assert failed.value.errno == errno.EIO
        assert (sc.mountpoint / "f").read_text() == "data"  # count 1: spent

        # A reconnect reads desired state again, in full, and changes nothing.
        nats_server.stop()
        nats_server.start()
        wait_for(
            lambda: len(log_events(sc, "desired_state_read")) >= 2,
            timeout=20,
            interval=0.2,
            what="desired state read again after the reconnect",
        )
        assert log_events(sc, "desired_state_read")[-1]["fleet"] == len(wanted)
        later = {"id": "later", "action": "latency", "delay": 0.001, "path": "x"}
        put_fleet_entries(url, [later])
        wait_for(lambda: "later" in rules(sc), what="a change after the reconnect applied")
        wait_for(
            lambda: len(converged_events(url, sc.pod)) >= 2,
            what="the change after the reconnect audited",
        )
        events = converged_events(url, sc.pod)[1:]
        changes = [(sorted(r["id"] for r in e["set"])[:3], e["removed"][:3]) for e in events]
        assert changes == [(["later"], [])], f"(set, removed) after the reconnect: {changes}"
        held = rules(sc)
        assert held["once"]["stats"]["fired"] == 1 and held["once"]["spent"] is True
        assert (sc.mountpoint / "f").read_text() == "data"
    finally:
        proxy.close()


# --- 3. a spent count rule stays spent across a restart ----------------------------


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_spent_count_rule_stays_spent_after_a_restart(make_sidecar, how):
    sc = make_sidecar(start=False)
    (sc.original / "f").write_text("data")
    sc.start()
    done = sc.ctl(
        "fault",
        "set",
        "--pod",
        sc.pod,
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--methods",
        "read",
        "--path",
        "f",
        "--count",
        "1",
        "--id",
        "once",
    )
    assert done.returncode == 0, done.stderr
    with pytest.raises(OSError) as failed:
        (sc.mountpoint / "f").read_text()
    assert failed.value.errno == errno.EIO
    assert (sc.mountpoint / "f").read_text() == "data"
    before = rules(sc)["once"]
    assert before["spent"] is True
    if how == signal.SIGKILL:
        # A killed sidecar keeps what it wrote before: wait until the counters are out.
        wait_for(
            lambda: [c["fired"] for c in registry_counters(sc.nats_url, sc.pod)] == [1],
            what="the rule's counters in the registry entry",
        )
    assert sc.stop(how) == (0 if how == signal.SIGTERM else -signal.SIGKILL)
    sc.start()
    wait_for(lambda: "once" in rules(sc), what="the rule back from desired state")
    for _ in range(3):
        assert (sc.mountpoint / "f").read_text() == "data"
    rule = rules(sc)["once"]
    assert rule["spent"] is True and rule["stats"]["fired"] == 1
    assert rule["stats"]["matched"] > before["stats"]["matched"]  # counted on, not afresh
    text = sc.ctl("status", "--pod", sc.pod).stdout
    assert "spent" in text, text


def test_a_rule_changed_while_the_sidecar_was_down_starts_afresh(make_sidecar):
    sc = make_sidecar(start=False)
    (sc.original / "f").write_text("data")
    sc.start()
    common = ["fault", "set", "--pod", sc.pod, "--action", "errno", "--errno", "EIO"]
    done = sc.ctl(*common, "--methods", "read", "--path", "f", "--count", "1", "--id", "r")
    assert done.returncode == 0, done.stderr
    with pytest.raises(OSError):
        (sc.mountpoint / "f").read_text()
    assert sc.stop() == 0
    # While it is down, desired state gives the rule a new budget.
    wire = {
        "id": "r",
        "action": "errno",
        "errno": ["EIO"],
        "methods": ["read"],
        "path": "f",
        "count": 2,
    }
    ns, name = sc.pod.split("/")
    put_desired(sc.nats_url, {desired.pod_key(ns, name, "r"): wire})
    sc.start()
    wait_for(lambda: rules(sc).get("r", {}).get("count") == 2, what="the new rule applied")
    for _ in range(2):
        with pytest.raises(OSError):
            (sc.mountpoint / "f").read_text()
    assert (sc.mountpoint / "f").read_text() == "data"


# --- 4. a clean stop is clean ------------------------------------------------------


@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_after_rules_exits_0_with_nothing_but_log_records(make_sidecar, attempt):
    sc = make_sidecar()
    for args in (
        ("set", "--pod", sc.pod, "--id", "mine"),
        ("broadcast", "--id", "everyone"),
    ):
        done = sc.ctl("fault", *args, "--action", "errno", "--errno", "EIO", "--path", "x")
        assert done.returncode == 0, done.stderr
    wait_for(lambda: set(rules(sc)) == {"mine", "everyone"}, what="both rules held")
    assert sc.stop(signal.SIGTERM) == 0
    text = sc.log.read_text()
    assert log_events(sc, "stopped"), text[-2000:]
    assert not_logged_as_json(text) == []
    for failure in FAILURE_TEXTS:
        assert failure not in text


AGENTS = 100


def test_chaosfs_agents_stop_cleanly_after_rules(nats_server, tmp_path):
    # Many in one process: with a few, the loops they leave pending are rarely
    # collected before the process ends, and nothing is printed.
    url = nats_server.url
    log = tmp_path / "agents.log"
    with open(log, "wb") as stderr:
        agents = subprocess.Popen(
            [
                *AGENTS_CMD,
                "--nats",
                url,
                "--count",
                str(AGENTS),
                "--namespace",
                "agents",
                "--heartbeat",
                "1",
                "--log-level",
                "info",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:

        def all_registered() -> bool:
            done = chaosctl(url, "--json", "sidecars")
            return done.returncode == 0 and len(json.loads(done.stdout)) == AGENTS

        wait_for(all_registered, timeout=20, interval=0.2, what="the agents registered")
        done = chaosctl(
            url,
            "--json",
            "fault",
            "broadcast",
            "--namespace",
            "agents",
            "--action",
            "errno",
            "--errno",
            "EIO",
            "--count",
            "1",
            "--id",
            "all",
        )
        assert done.returncode == 0, done.stderr
        assert len(json.loads(done.stdout)["acked"]) == AGENTS
    finally:
        agents.send_signal(signal.SIGTERM)
        code = agents.wait(30)
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert not_logged_as_json(text) == []
    for failure in FAILURE_TEXTS:
        assert failure not in text


# --- 5. lazy mode: a clean stop on a full disk -------------------------------------


def test_lazy_clean_stop_on_a_full_disk_frees_parked_deletions_before_writing_back(
    make_sidecar,
):
    sc = make_sidecar(extra=["-lazy", "-lazy-max-bytes", "64MiB"], start=False)
    with small_disk(sc.original) as disk:
        write_bytes(disk / "big", b"\x11" * (10 * MiB))
        fill(disk / "filler")  # the disk is full
        sc.start()
        os.unlink(sc.mountpoint / "big")  # parked in the trash: no fsync of the directory
        data = os.urandom(4 * MiB)
        write_bytes(sc.mountpoint / "new", data)  # unsynced: held by chaosfs
        lazy = sc.request({"op": "status"})["lazy"]
        # The create of "new" is pending; the unlink of "big" may be too, or may already
        # be settled: lazy mode empties its trash early when the disk runs out of room
        # for what it holds, as a kernel frees a deleted file's blocks.
        assert lazy["unsynced_bytes"] == len(data) and lazy["pending_dir_ops"] >= 1, lazy
        assert sc.stop(signal.SIGTERM) == 0
        assert (disk / "new").read_bytes() == data
        assert sorted(os.listdir(disk)) == ["filler", "new"]  # big gone, trash removed
    assert log_events(sc, "write_back_failed") == []


# --- 6. plain mode: a deletion's space is free when unlink returns ------------------


def test_a_write_right_after_deleting_a_big_file_on_a_full_disk_succeeds(make_sidecar):
    sc = make_sidecar(start=False)
    with small_disk(sc.original) as disk:
        sc.start()
        failures = []
        for trial in range(20):
            with contextlib.suppress(FileNotFoundError):
                (disk / "filler").unlink()  # never seen through the mount: freed at once
            wait_for(lambda: used_bytes(disk) < MiB, what="an empty disk before the trial")
            write_bytes(disk / "big", b"\x22" * (12 * MiB))
            fill(disk / "filler")
            os.unlink(sc.mountpoint / "big")
            try:
                write_bytes(sc.mountpoint / "new", b"\x33" * (6 * MiB))
            except OSError as exc:
                failures.append((trial, errno.errorcode.get(exc.errno, exc.errno)))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sc.mountpoint / "new")
        assert failures == []
        assert sc.stop() == 0
