"""Lazy mode's metadata models, reports, subset tearing and the one-step torn cut.

The journal model (the default) keeps what ext4 (data=ordered) and xfs keep over a
power cut: an fsync of a file commits its creation and the renames that named
it, with every directory operation made before them. The strict model keeps only
what a directory fsync covered, as POSIX alone promises. Real parts: chaosfs over
a real FUSE mount, a real nats-server, programs writing through the mount.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from lazy_records import record
from test_lazy import RECORDS, Program, ask, fsync_path, lazy_status, refused, write_file

from conftest import Sidecar, wait_for

MIB = 1 << 20


@pytest.fixture
def lazy(make_sidecar) -> Sidecar:
    return make_sidecar(pod="default/journal-0", extra=["-lazy"])


@pytest.fixture
def programs():
    started: list[Program] = []

    def start(cmd: list[str], cwd: Path | None = None) -> Program:
        started.append(Program(cmd, cwd))
        return started[-1]

    yield start
    for program in started:
        program.kill()


def fsync_new_file(path: Path, data: bytes) -> None:
    """Create, write and fsync a file; its directory is never fsynced."""
    write_file(path, data, sync=True)


# --- the journal model -----------------------------------------------------------------


def test_a_file_created_and_fsynced_survives_a_cut_with_its_data(lazy):
    mnt = lazy.mountpoint
    (mnt / "base").mkdir()  # directory never fsynced either: PostgreSQL's base/5
    fsync_new_file(mnt / "base" / "16384", b"relation" * 512)

    journal = ask(lazy, "report-unsynced")["unsynced"]
    assert journal["model"] == "journal"
    assert journal["dir_ops"] == [] and journal["with_metadata"]["bytes"] == 0
    # The strict model would lose it all, and says so: no more "0 bytes in 0 files".
    strict = ask(lazy, "report-unsynced", model="strict")["unsynced"]
    assert strict["with_metadata"]["files"] == {"base/16384": 4096}
    assert {(op["kind"], op["path"]) for op in strict["dir_ops"]} >= {
        ("mkdir", "base"),
        ("create", "base/16384"),
    }

    lost = ask(lazy, "lose-unsynced", metadata=True)["lost"]
    assert lost["dir_ops"] == [] and lost["model"] == "journal"
    assert (mnt / "base" / "16384").read_bytes() == b"relation" * 512
    assert (lazy.original / "base" / "16384").read_bytes() == b"relation" * 512
    # What survived a cut is on the disk: a later strict cut cannot take it back.
    assert ask(lazy, "lose-unsynced", metadata=True, model="strict")["lost"]["dir_ops"] == []
    assert (mnt / "base" / "16384").read_bytes() == b"relation" * 512


def test_with_the_strict_model_the_same_cut_loses_the_file(lazy):
    mnt = lazy.mountpoint
    (mnt / "base").mkdir()
    fsync_new_file(mnt / "base" / "16384", b"relation" * 512)
    lost = ask(lazy, "lose-unsynced", metadata=True, model="strict")["lost"]
    assert lost["model"] == "strict"
    assert lost["files"] == {"base/16384": 4096}  # counted, though its data was synced
    assert not (mnt / "base").exists()
    assert not (lazy.original / "base").exists()


def test_the_renames_that_named_a_file_are_committed_by_its_fsync(lazy):
    mnt = lazy.mountpoint
    write_file(mnt / "config", b"v1", sync=True)
    fsync_path(mnt)
    write_file(mnt / "config.tmp", b"v2", sync=True)
    os.rename(mnt / "config.tmp", mnt / "config")
    # Not yet: the rename is newer than the last commit.
    pending = ask(lazy, "report-unsynced")["unsynced"]["dir_ops"]
    assert [(op["kind"], op["path"], op["to"]) for op in pending] == [
        ("rename", "config.tmp", "config")
    ]
    fsync_path(mnt / "config")  # the file, not its directory
    assert ask(lazy, "report-unsynced")["unsynced"]["dir_ops"] == []
    ask(lazy, "lose-unsynced", metadata=True)
    assert (mnt / "config").read_bytes() == b"v2"
    assert sorted(os.listdir(mnt)) == ["config"]


def test_directory_operations_are_kept_in_the_order_they_were_made(lazy):
    mnt = lazy.mountpoint
    write_file(mnt / "older", b"never synced")  # created first, data never synced
    write_file(mnt / "newer", b"synced", sync=True)  # its fsync commits all before it
    write_file(mnt / "newest", b"after the commit")
    lost = ask(lazy, "lose-unsynced", metadata=True)["lost"]
    assert [(op["kind"], op["path"]) for op in lost["dir_ops"]] == [("create", "newest")]
    assert sorted(os.listdir(mnt)) == ["newer", "older"]
    assert (mnt / "older").read_bytes() == b""  # its name survived, its data did not
    assert (mnt / "newer").read_bytes() == b"synced"


def test_the_sidecar_model_is_chosen_at_start(make_sidecar):
    sc = make_sidecar(pod="default/strict-0", extra=["-lazy", "-lazy-metadata", "strict"])
    fsync_new_file(sc.mountpoint / "f", b"data")
    lost = ask(sc, "lose-unsynced", metadata=True)["lost"]
    assert lost["model"] == "strict" and not (sc.mountpoint / "f").exists()
    error = refused(sc, {"op": "lose-unsynced", "metadata": True, "model": "ext2"})
    assert "model must be one of journal, strict" in error


# --- reports ---------------------------------------------------------------------------


def test_a_pending_size_change_is_reported_as_bytes_a_cut_would_lose(lazy):
    mnt = lazy.mountpoint
    write_file(mnt / "wal", b"", sync=True)
    fd = os.open(mnt / "wal", os.O_RDWR)
    try:
        os.ftruncate(fd, 64 * MIB)  # a write-ahead log's preallocation, never synced
    finally:
        os.close(fd)
    report = ask(lazy, "report-unsynced")["unsynced"]
    assert report["files"] == {"wal": 64 * MIB} and report["bytes"] == 64 * MIB
    assert report["sizes"] == {"wal": {"now": 64 * MIB, "after_cut": 0}}
    assert report["writes"]["wal"] == {"count": 1, "ops": [{"i": 1, "truncate": 64 * MIB}]}
    assert ask(lazy, "lose-unsynced")["lost"]["bytes"] == 64 * MIB
    assert os.stat(mnt / "wal").st_size == 0


# --- tearing ---------------------------------------------------------------------------


def three_writes(path: Path) -> None:
    write_file(path, b"." * 300, sync=True)
    fd = os.open(path, os.O_WRONLY)
    try:
        for i, off in enumerate((0, 100, 200)):
            os.pwrite(fd, bytes([ord("A") + i]) * 100, off)
    finally:
        os.close(fd)


def test_a_subset_tear_keeps_a_later_write_and_loses_an_earlier_one(lazy):
    mnt = lazy.mountpoint
    three_writes(mnt / "f")
    writes = ask(lazy, "report-unsynced")["unsynced"]["writes"]["f"]
    assert writes["ops"] == [
        {"i": 1, "off": 0, "len": 100},
        {"i": 2, "off": 100, "len": 100},
        {"i": 3, "off": 200, "len": 100},
    ]
    torn = ask(lazy, "torn-write", persist=[3])["torn"]
    assert torn["files"] == {"f": {"kept": 100, "lost": 200}}
    assert (mnt / "f").read_bytes() == b"." * 200 + b"C" * 100
    assert (lazy.original / "f").read_bytes() == b"." * 200 + b"C" * 100

    # No prefix of the same writes gives that: every byte count and every whole-write
    # cut that keeps the third write keeps the first.
    for keep in range(0, 301, 50):
        three_writes(mnt / "g")
        ask(lazy, "torn-write", path="g", keep=keep)
        data = (mnt / "g").read_bytes()
        assert not (data[200:] == b"C" * 100 and data[:100] != b"A" * 100), (keep, data)


def test_torn_write_refuses_a_file_a_live_process_is_writing(lazy, programs):
    mnt = lazy.mountpoint
    writer = programs([sys.executable, str(RECORDS), "records", str(mnt), "--name", "live.bin",
                       "--records", "10", "--sync-at", "4"])  # fmt: skip
    writer.wait_line(lambda line: "written" in line, what="the writer to finish writing")
    error = refused(lazy, {"op": "torn-write", "seed": 1, "actor": "test"})
    assert "live.bin" in error and str(writer.proc.pid) in error and "--force" in error
    assert ask(lazy, "report-unsynced")["unsynced"]["files"] == {"live.bin": 5000}  # untouched
    torn = ask(lazy, "torn-write", seed=1, force=True)["torn"]
    assert any("live.bin" in w and str(writer.proc.pid) in w for w in torn["warnings"])
    assert writer.proc.poll() is None


def test_power_cut_with_tear_kills_tears_and_loses_in_one_step(lazy, programs):
    mnt = lazy.mountpoint
    (mnt / "other").write_bytes(b"o" * 500)  # one write: --persist 2 keeps none of it
    writer = programs([sys.executable, str(RECORDS), "records", str(mnt), "--name", "rec.bin",
                       "--records", "6", "--size", "100", "--sync-at", "1"])  # fmt: skip
    writer.wait_line(lambda line: "written" in line, what="the writer to finish writing")
    listed = ask(lazy, "report-unsynced", path="rec.bin")["unsynced"]["writes"]["rec.bin"]
    assert listed["count"] == 4
    reply = ask(lazy, "power-cut", tear={"persist": [2]}, metadata=True)
    assert [p["pid"] for p in reply["killed"]] == [writer.proc.pid]
    assert writer.proc.wait(5) == -signal.SIGKILL
    assert reply["survivors"] == []
    assert reply["torn"]["files"] == {
        "rec.bin": {"kept": 100, "lost": 300},
        "other": {"kept": 0, "lost": 500},
    }
    assert not (mnt / "other").exists() or (mnt / "other").read_bytes() == b""
    data = (mnt / "rec.bin").read_bytes()
    # Records 0-1 synced; of the four unsynced, only the second (record 3) survived:
    # record 2 is a hole of zeros before it.
    assert data == record(0, 100) + record(1, 100) + bytes(100) + record(3, 100)
    assert lazy_status(lazy)["unsynced_files"] == 0


def test_a_power_cut_that_leaves_a_process_alive_exits_non_zero(lazy, programs):
    mnt = lazy.mountpoint
    (mnt / "home").mkdir()
    sleeper = programs(["sleep", "300"], cwd=mnt / "home")
    wait_for(lambda: os.path.realpath(f"/proc/{sleeper.proc.pid}/cwd") == str(mnt / "home"))
    done = lazy.ctl("fault", "power-cut", "--pod", lazy.pod, "--signal", "STOP")
    try:
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert "left processes alive" in done.stdout and str(sleeper.proc.pid) in done.stdout
    finally:
        os.kill(sleeper.proc.pid, signal.SIGCONT)
    done = lazy.ctl("fault", "power-cut", "--pod", lazy.pod)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert sleeper.proc.wait(5) == -signal.SIGKILL
