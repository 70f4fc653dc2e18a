"""Lazy mode: what was never fsynced is lost on a power cut, and only that.

Real parts throughout: chaosfs started with -lazy over a real FUSE mount, a real
nats-server, commands sent as msgpack requests on the pod's subject, and
programs (tests/lazy_records.py, tests/lazy_sqlite_load.py) writing through the
mount as separate processes, so that power-cut can kill them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from lazy_records import content, record

from conftest import Sidecar, wait_for

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "lazy_records.py"
SQLITE_LOAD = HERE / "lazy_sqlite_load.py"
MIB = 1 << 20
SIZE = 1000  # bytes per record: not a multiple of a page or a sector, on purpose
LAZY_STATS = {
    "flushes",
    "flushed_bytes",
    "early_flushes",
    "early_bytes",
    "expired_flushes",
    "expired_bytes",
    "lost_files",
    "lost_bytes",
    "torn_files",
    "torn_kept_bytes",
    "torn_lost_bytes",
}


# --- helpers ---------------------------------------------------------------------------


def records(first: int, last: int, size: int = SIZE) -> bytes:
    """Records first..last-1, as the records program writes them."""
    return b"".join(record(n, size) for n in range(first, last))


def ask(sc: Sidecar, op: str, **fields: Any) -> dict[str, Any]:
    """A lazy-mode command that must succeed; the reply."""
    reply = sc.request({"op": op, "actor": "test_lazy", **fields}, timeout=15)
    assert reply["ok"], reply
    return reply


def refused(sc: Sidecar, command: dict[str, Any]) -> str:
    """A command that must be refused; the error sentence."""
    reply = sc.request(command, timeout=15)
    assert reply["ok"] is False, (command, reply)
    assert reply.get("error"), reply
    return reply["error"]


def lazy_status(sc: Sidecar) -> dict[str, Any]:
    reply = sc.request({"op": "status"})
    assert reply["ok"], reply
    return reply["lazy"]


def run_records(directory: Path, *args: str) -> list[dict[str, Any]]:
    """The records program, to completion (--exit); its JSON lines."""
    done = subprocess.run(
        [sys.executable, str(RECORDS), *args[:1], str(directory), *args[1:], "--exit"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, sync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


class Program:
    """A writer running through the mount as its own process, stdout read as it comes."""

    def __init__(self, cmd: list[str], cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, predicate, timeout: float = 20, what: str = "a line") -> str:
        def found() -> str | None:
            if self.proc.poll() is not None and not self._reader.is_alive():
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"program exited {self.proc.returncode}: {err[-2000:]}")
            return next((line for line in list(self.lines) if predicate(line)), None)

        return wait_for(found, timeout=timeout, what=what)

    def finish(self, timeout: float = 10) -> list[str]:
        """Wait for the process to be gone; every line it printed."""
        self.proc.wait(timeout)
        self._reader.join(timeout)
        return list(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def programs(make_sidecar):
    """Programs started through a mount; killed before the mounts go away."""
    started: list[Program] = []

    def start(cmd: list[str], cwd: Path | None = None) -> Program:
        program = Program(cmd, cwd)
        started.append(program)
        return program

    yield start
    for program in started:
        program.kill()


@pytest.fixture
def lazy(make_sidecar) -> Sidecar:
    return make_sidecar(pod="default/lazy-0", extra=["-lazy"])


# --- a. lose-unsynced ----------------------------------------------------------------


def test_lose_unsynced_keeps_exactly_the_fsynced_records(lazy):
    mnt, backing = lazy.mountpoint, lazy.original
    # a.bin: fsync after records 4 and 11 -> 0..11 durable, 12..19 not.
    lines = run_records(mnt, "records", "--name", "a.bin", "--records", "20", "--sync-at", "4,11")
    assert [line["durable"] for line in lines] == [5, 12, 12]
    # b.bin: fdatasync after every 6th record -> 0..17 durable, 18..19 not.
    run_records(mnt, "records", "--name", "b.bin", "--records", "20", "--sync-every", "6",
                "--datasync")  # fmt: skip

    # c.bin: synced, then emptied by O_TRUNC and rewritten with no fsync.
    write_file(mnt / "c.bin", b"v1" * 1000, sync=True)
    write_file(mnt / "c.bin", b"v2" * 10)
    assert (mnt / "c.bin").read_bytes() == b"v2" * 10
    assert (backing / "c.bin").read_bytes() == b"v1" * 1000

    # Before the cut: the mount reads like a page cache, the disk holds the synced part.
    for name, durable in (("a.bin", 12), ("b.bin", 18)):
        assert (mnt / name).read_bytes() == records(0, 20), name
        assert os.stat(mnt / name).st_size == 20 * SIZE
        assert (backing / name).read_bytes() == records(0, durable), name

    # Only the matching path loses its unsynced records.
    lost = ask(lazy, "lose-unsynced", path="a.bin")["lost"]
    assert lost["files"] == {"a.bin": 8 * SIZE}
    assert lost["bytes"] == 8 * SIZE
    assert lost["dir_ops"] == []
    # c.bin: a cut changes all 2000 bytes it showed before the O_TRUNC: 20 rewritten,
    # and 1980 the truncate hid that come back.
    report = ask(lazy, "report-unsynced")["unsynced"]
    assert report["files"] == {"b.bin": 2 * SIZE, "c.bin": 2000}
    assert report["sizes"]["c.bin"] == {"now": 20, "after_cut": 2000}
    assert (mnt / "b.bin").read_bytes() == records(0, 20)

    lost = ask(lazy, "lose-unsynced")["lost"]
    assert lost["files"] == {"b.bin": 2 * SIZE, "c.bin": 2000}
    assert (mnt / "c.bin").read_bytes() == b"v1" * 1000  # the truncate was never synced
    for name, durable in (("a.bin", 12), ("b.bin", 18)):
        # Exactly the synced records, byte for byte, through the mount (which read
        # the lost records earlier: no stale page may remain) and on the disk.
        assert os.stat(mnt / name).st_size == durable * SIZE, name
        assert (mnt / name).read_bytes() == records(0, durable), name
        assert (backing / name).read_bytes() == records(0, durable), name
    unsynced = ask(lazy, "report-unsynced")["unsynced"]
    assert unsynced["files"] == {} and unsynced["bytes"] == 0


# --- b. torn-write -----------------------------------------------------------------


TORN_DURABLE = 6  # records 0..5 synced
TORN_RECORDS = 20  # 14 records, 14000 bytes, not


def torn_history(sc: Sidecar, **fields: Any) -> dict[str, int]:
    """Write the same history afresh, tear it, check the file; the file's torn figures."""
    mnt = sc.mountpoint
    with contextlib.suppress(FileNotFoundError):
        (mnt / "torn.bin").unlink()
    run_records(mnt, "records", "--name", "torn.bin", "--records", str(TORN_RECORDS),
                "--sync-at", str(TORN_DURABLE - 1))  # fmt: skip
    synced, unsynced = records(0, TORN_DURABLE), records(TORN_DURABLE, TORN_RECORDS)
    assert (mnt / "torn.bin").read_bytes() == synced + unsynced  # cached by the kernel now
    torn = ask(sc, "torn-write", path="torn.bin", **fields)["torn"]
    figures = torn["files"]["torn.bin"]
    kept = figures["kept"]
    assert figures["kept"] + figures["lost"] == len(unsynced), torn
    assert (torn["kept"], torn["lost"]) == (figures["kept"], figures["lost"])
    # What survives is the synced part plus a prefix of the unsynced bytes in write order.
    expected = synced + unsynced[:kept]
    assert (sc.original / "torn.bin").read_bytes() == expected, f"kept={kept}"
    assert os.stat(mnt / "torn.bin").st_size == len(expected)
    assert (mnt / "torn.bin").read_bytes() == expected, f"kept={kept}"
    assert ask(sc, "report-unsynced", path="torn.bin")["unsynced"]["files"] == {}
    return figures


def test_torn_write_keeps_a_prefix_reproducible_with_the_seed(lazy):
    first = torn_history(lazy, seed=7)
    again = torn_history(lazy, seed=7)
    assert again == first  # the same history and seed: the same cut
    kept = {seed: torn_history(lazy, seed=seed)["kept"] for seed in (1, 2, 3, "four", 5)}
    assert len(set(kept.values())) > 1, kept  # other seeds cut elsewhere

    assert torn_history(lazy, keep=2500) == {"kept": 2500, "lost": 14000 - 2500}
    assert torn_history(lazy, keep=0) == {"kept": 0, "lost": 14000}
    assert torn_history(lazy, keep=10**9) == {"kept": 14000, "lost": 0}
    # A torn write keeps only up to a file offset that is a multiple of align:
    # 6000 synced + 2500 kept = 8500 -> 8192.
    aligned = torn_history(lazy, keep=2500, align=512)
    assert aligned["kept"] == 8192 - 6000, aligned
    # whole_writes: the records survive whole or not at all.
    for seed in (11, 12, 13):
        assert torn_history(lazy, seed=seed, whole_writes=True)["kept"] % SIZE == 0

    stats = lazy_status(lazy)["stats"]
    assert stats["torn_files"] >= 14
    assert stats["torn_kept_bytes"] + stats["torn_lost_bytes"] == 14000 * stats["torn_files"]


# --- c. report-unsynced, i. status -------------------------------------------------


def test_report_unsynced_and_status_show_files_bytes_and_directory_ops(lazy):
    mnt = lazy.mountpoint
    (mnt / "logs").mkdir()
    write_file(mnt / "logs" / "a.log", b"a" * 3000)
    write_file(mnt / "b.bin", b"b" * 5000)
    fd = os.open(mnt / "b.bin", os.O_WRONLY)
    try:
        os.pwrite(fd, b"B" * 1000, 0)  # rewrites held bytes: still 5000 to lose
    finally:
        os.close(fd)

    unsynced = ask(lazy, "report-unsynced")["unsynced"]
    assert unsynced["files"] == {"logs/a.log": 3000, "b.bin": 5000}
    assert unsynced["bytes"] == 8000
    ops = {(op["kind"], op["path"]) for op in unsynced["dir_ops"]}
    assert {("mkdir", "logs"), ("create", "logs/a.log"), ("create", "b.bin")} <= ops, ops
    only_logs = ask(lazy, "report-unsynced", path="logs/**")["unsynced"]
    assert only_logs["files"] == {"logs/a.log": 3000} and only_logs["bytes"] == 3000

    status = lazy_status(lazy)
    assert status["enabled"] is True
    assert status["max_bytes"] == 256 * MIB  # the default
    assert status["unsynced_files"] == 2 and status["unsynced_bytes"] == 8000
    assert status["held_bytes"] >= 8000  # the rewritten 1000 bytes may be held twice
    assert status["pending_dir_ops"] >= 3
    assert set(status["stats"]) == LAZY_STATS
    assert status["stats"]["lost_files"] == 0

    fsync_path(mnt / "b.bin")
    assert ask(lazy, "report-unsynced")["unsynced"]["files"] == {"logs/a.log": 3000}
    assert (lazy.original / "b.bin").read_bytes() == b"B" * 1000 + b"b" * 4000
    fsync_path(mnt / "logs")
    fsync_path(mnt)
    unsynced = ask(lazy, "report-unsynced")["unsynced"]
    assert unsynced["dir_ops"] == []
    status = lazy_status(lazy)
    assert status["unsynced_files"] == 1 and status["pending_dir_ops"] == 0
    assert status["stats"]["flushes"] >= 1 and status["stats"]["flushed_bytes"] >= 5000

    ask(lazy, "lose-unsynced")
    stats = lazy_status(lazy)["stats"]
    assert (stats["lost_files"], stats["lost_bytes"]) == (1, 3000)
    assert (mnt / "logs" / "a.log").read_bytes() == b""  # its entry was synced, its data not


def test_lazy_mode_from_the_environment(make_sidecar):
    sc = make_sidecar(env={"CHAOSFS_LAZY": "1", "CHAOSFS_LAZY_MAX_BYTES": "64MiB"})
    status = lazy_status(sc)
    assert status["enabled"] is True
    assert status["max_bytes"] == 64 * MIB


# --- d. --metadata -----------------------------------------------------------------


def test_metadata_rolls_back_directory_entries_no_fsyncdir_covered(lazy):
    mnt, backing = lazy.mountpoint, lazy.original

    # The strict model (POSIX alone): only a directory fsync makes entries durable.
    # Without metadata: entries stay (with what was synced of their data), removals stay.
    plain = run_records(mnt, "meta", "--subdir", "plain")[0]
    reported = ask(lazy, "report-unsynced", model="strict")["unsynced"]["dir_ops"]
    pending = {(op["kind"], op["path"]) for op in reported}
    assert {("unlink", "plain/victim"), ("create", "plain/volatile-0")} <= pending, reported
    lost = ask(lazy, "lose-unsynced")["lost"]
    assert lost["dir_ops"] == []
    assert sorted(os.listdir(mnt / "plain")) == sorted(
        Path(n).name for n in plain["durable"] + plain["volatile"]
    )
    for name in plain["durable"] + plain["volatile"]:
        assert (mnt / name).read_bytes() == content(name)
    fsync_path(mnt / "plain")  # from here on plain/ is durable as it is

    # With metadata: what no fsyncdir covered is undone.
    meta = run_records(mnt, "meta", "--subdir", "sub")[0]
    assert meta["unlinked"] == ["sub/victim"]
    # The classic atomic replace, short of its directory fsync: a rename over a
    # synced file, then a new file.
    write_file(mnt / "config", b"v1", sync=True)
    fsync_path(mnt)
    write_file(mnt / "config.tmp", b"v2", sync=True)
    os.rename(mnt / "config.tmp", mnt / "config")
    assert (mnt / "config").read_bytes() == b"v2"

    lost = ask(lazy, "lose-unsynced", metadata=True, model="strict")["lost"]
    undone = {(op["kind"], op["path"]) for op in lost["dir_ops"]}
    expected = {("unlink", "sub/victim"), ("create", "config.tmp")} | {
        ("create", name) for name in meta["volatile"]
    }
    assert expected <= undone, lost["dir_ops"]
    assert not any(path.startswith("plain/") for _, path in undone), lost["dir_ops"]

    # durable-*: there with their data; victim: back with its synced data;
    # volatile-*: gone, on the mount and on the disk.
    for root in (mnt, backing):
        names = sorted(os.listdir(root / "sub"))
        assert names == sorted(Path(n).name for n in [*meta["durable"], "victim"]), (root, names)
        for name in [*meta["durable"], "sub/victim"]:
            assert (root / name).read_bytes() == content(name), (root, name)
        for name in meta["volatile"]:
            assert not (root / name).exists(), (root, name)
        assert (root / "config").read_bytes() == b"v1"
        assert not (root / "config.tmp").exists()
    # The mount shows no trash or bookkeeping of chaosfs's own.
    assert sorted(os.listdir(mnt)) == ["config", "plain", "sub"]
    assert sorted(os.listdir(mnt / "plain")) == sorted(
        Path(n).name for n in plain["durable"] + plain["volatile"]
    )
    assert ask(lazy, "report-unsynced", model="strict")["unsynced"]["dir_ops"] == []
    assert lazy_status(lazy)["pending_dir_ops"] == 0


# --- e. power-cut --------------------------------------------------------------------


def test_power_cut_kills_the_writers_and_keeps_only_the_synced_records(lazy, programs):
    mnt = lazy.mountpoint
    writer = programs([sys.executable, str(RECORDS), "records", str(mnt), "--name", "rec.bin",
                       "--records", "30", "--sync-every", "8"])  # fmt: skip
    writer.wait_line(lambda line: "written" in line, what="the writer to finish writing")
    # A shell whose working directory is under the mount goes too; one elsewhere stays.
    (mnt / "home").mkdir()
    inside = programs(["sleep", "300"], cwd=mnt / "home")
    outside = programs(["sleep", "300"], cwd="/")
    assert (mnt / "rec.bin").read_bytes() == records(0, 30)

    reply = ask(lazy, "power-cut")
    killed = {entry["pid"]: entry["comm"] for entry in reply["killed"]}
    assert set(killed) == {writer.proc.pid, inside.proc.pid}, reply["killed"]
    assert killed[inside.proc.pid] == "sleep"
    assert writer.proc.wait(5) == -signal.SIGKILL
    assert inside.proc.wait(5) == -signal.SIGKILL
    assert outside.proc.poll() is None
    assert reply["lost"]["files"] == {"rec.bin": 6 * SIZE}  # 24 of 30 were synced

    assert os.stat(mnt / "rec.bin").st_size == 24 * SIZE
    assert (mnt / "rec.bin").read_bytes() == records(0, 24)
    assert (lazy.original / "rec.bin").read_bytes() == records(0, 24)
    # Not metadata: the unsynced entries stay, and the mount keeps serving.
    assert (mnt / "home").is_dir()
    status = lazy_status(lazy)
    assert status["unsynced_files"] == 0 and status["held_bytes"] == 0


def test_power_cut_with_signal_and_metadata(lazy, programs):
    mnt = lazy.mountpoint
    app = programs([sys.executable, str(RECORDS), "meta", str(mnt)])
    meta = json.loads(app.wait_line(lambda line: line.startswith("{"), what="the meta program"))
    reply = ask(lazy, "power-cut", signal="TERM", metadata=True, model="strict")
    assert [entry["pid"] for entry in reply["killed"]] == [app.proc.pid]
    assert app.proc.wait(5) == -signal.SIGTERM
    assert reply["lost"]["dir_ops"], reply
    for name in meta["volatile"]:
        assert not (mnt / name).exists()
    assert (mnt / "sub" / "victim").read_bytes() == content("sub/victim")


# --- f. SQLite ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("journal", "synchronous", "metadata"),
    [
        ("delete", "FULL", False),
        ("wal", "FULL", False),
        # Directory entries lost too: WAL syncs its directory when it creates the log;
        # a rollback journal's deletion needs synchronous=EXTRA to be durable.
        ("wal", "FULL", True),
        ("delete", "EXTRA", True),
    ],
)
def test_sqlite_survives_a_power_cut_with_every_returned_commit(
    lazy, programs, journal, synchronous, metadata
):
    db = lazy.mountpoint / "app.db"
    load = programs([sys.executable, str(SQLITE_LOAD), str(db), "--journal", journal,
                     "--synchronous", synchronous])  # fmt: skip
    load.wait_line(lambda line: line.isdigit() and int(line) >= 250, timeout=40,
                   what="250 commits")  # fmt: skip
    reply = ask(lazy, "power-cut", metadata=metadata)  # in the middle of the load
    assert load.proc.pid in [entry["pid"] for entry in reply["killed"]], reply
    printed = [int(line) for line in load.finish() if line.isdigit()]
    assert printed == list(range(1, len(printed) + 1))

    # The app restarts on the same mount: open, check, and carry on.
    check = subprocess.run([sys.executable, str(SQLITE_LOAD), str(db), "--check"],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert check.returncode == 0, check.stderr
    found = json.loads(check.stdout)
    assert found["integrity"] == ["ok"]
    assert found["journal_mode"] == journal
    counters = found["counters"]
    missing = sorted(set(printed) - set(counters))
    assert not missing, f"commits that returned but are gone: {missing[:20]}"
    assert counters == list(range(1, len(counters) + 1))  # no hole, nothing half there
    assert len(counters) <= len(printed) + 1  # at most the commit cut before it printed
    assert found["bad"] == []
    assert (found["n"], found["sum"]) == (len(counters), sum(counters))
    more = subprocess.run([sys.executable, str(SQLITE_LOAD), str(db), "--journal", journal,
                           "--count", str(len(counters) + 10)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert more.returncode == 0, more.stderr


# --- g. bad input -------------------------------------------------------------------


def test_without_lazy_mode_every_lazy_op_is_refused(make_sidecar, programs):
    sc = make_sidecar(pod="default/plain-0")
    write_file(sc.path("f"), b"data")
    inside = programs(["sleep", "300"], cwd=sc.mountpoint)
    for command in (
        {"op": "report-unsynced"},
        {"op": "lose-unsynced", "metadata": True},
        {"op": "torn-write", "seed": 1},
        {"op": "power-cut"},
    ):
        assert "lazy mode is off" in refused(sc, command), command
    assert inside.proc.poll() is None  # power-cut refused: nothing killed
    assert (sc.original / "f").read_bytes() == b"data"
    status = sc.request({"op": "status"})
    assert status["lazy"]["enabled"] is False


def test_bad_lazy_commands_change_nothing(lazy, programs):
    mnt = lazy.mountpoint
    write_file(mnt / "f", b"x" * 4096)
    inside = programs(["sleep", "300"], cwd=mnt)
    for command in (
        {"op": "torn-write"},  # neither seed nor keep
        {"op": "torn-write", "seed": 1, "keep": 10},  # both
        {"op": "torn-write", "keep": -1},
        {"op": "torn-write", "keep": 10, "align": 3},
        {"op": "torn-write", "keep": 10, "align": 2 * MIB},
        {"op": "torn-write", "seed": "s" * 300},
        {"op": "lose-unsynced", "metadata": "yes"},
        {"op": "lose-unsynced", "bogus": 1},
        {"op": "lose-unsynced", "path": 5},
        {"op": "report-unsynced", "path": ["**"]},
        {"op": "power-cut", "signal": "NOPE"},
        {"op": "power-cut", "signal": 99},
    ):
        refused(lazy, command)
    assert inside.proc.poll() is None
    assert ask(lazy, "report-unsynced")["unsynced"]["files"] == {"f": 4096}
    assert (mnt / "f").read_bytes() == b"x" * 4096
    assert (lazy.original / "f").read_bytes() == b""
    stats = lazy_status(lazy)["stats"]
    assert stats["lost_files"] == stats["torn_files"] == 0


# --- h. the memory bound --------------------------------------------------------------


def test_max_bytes_bounds_what_is_held_and_flushes_early(make_sidecar):
    sc = make_sidecar(pod="default/small-0", extra=["-lazy", "-lazy-max-bytes", "1MiB"])
    data = os.urandom(8 * MIB)
    write_file(sc.path("big"), data)  # 64 KiB at a time would do too; one call, kernel-split
    status = lazy_status(sc)
    assert status["max_bytes"] == MIB
    assert status["held_bytes"] <= MIB, status
    assert status["stats"]["early_flushes"] > 0, status
    assert status["stats"]["early_bytes"] >= 7 * MIB, status
    assert sc.path("big").read_bytes() == data
    lost = ask(sc, "lose-unsynced")["lost"]
    assert lost["bytes"] <= MIB
    kept = (sc.original / "big").read_bytes()
    assert len(kept) >= 7 * MIB and data.startswith(kept)  # flushed early: allowed, in order
    assert sc.path("big").read_bytes() == kept
