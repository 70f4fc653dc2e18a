"""Lazy mode at its edges: descriptors, forgotten inodes, renames over things,
another file system below the backing directory, and path globs for --metadata.

Each test is a case a review found broken once; each runs on a real -lazy mount.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from typing import Any

import pytest
from test_lazy import fsync_path, write_file

from conftest import Sidecar


def ask(sc: Sidecar, op: str, **fields: Any) -> dict[str, Any]:
    reply = sc.request({"op": op, "actor": "test_lazy_edges", **fields}, timeout=15)
    assert reply["ok"], reply
    return reply


def lazy_status(sc: Sidecar) -> dict[str, Any]:
    return sc.request({"op": "status"})["lazy"]


def descriptors(sc: Sidecar) -> int:
    assert sc.proc is not None
    return len(os.listdir(f"/proc/{sc.proc.pid}/fd"))


def forget_inodes() -> None:
    """Make the kernel forget every inode it can (chaosfs gets FORGETs)."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
    time.sleep(0.3)


@pytest.fixture
def lazy(make_sidecar) -> Sidecar:
    return make_sidecar(pod="default/edges-0", extra=["-lazy"])


@pytest.mark.host_global  # forget_inodes: the whole host's dentry and inode caches
def test_a_deleted_unsynced_file_holds_nothing_once_forgotten(lazy):
    mnt = lazy.mountpoint
    fsync_path(mnt)
    before = descriptors(lazy)
    for i in range(20):
        write_file(mnt / f"tmp{i}", b"x" * 1000)  # never synced, then deleted
        os.unlink(mnt / f"tmp{i}")
    forget_inodes()
    fsync_path(mnt)  # the unlinks are durable: nobody can reach those files again
    status = lazy_status(lazy)
    assert (status["unsynced_files"], status["held_bytes"]) == (0, 0), status
    assert ask(lazy, "report-unsynced")["unsynced"]["files"] == {}
    assert descriptors(lazy) <= before


@pytest.mark.host_global  # forget_inodes: the whole host's dentry and inode caches
def test_renames_within_one_directory_release_their_directories(lazy):
    mnt = lazy.mountpoint
    fsync_path(mnt)
    before = descriptors(lazy)
    for i in range(30):
        d = mnt / f"d{i}"
        d.mkdir()
        write_file(d / "a", b"1", sync=True)
        os.rename(d / "a", d / "b")
        fsync_path(d)
        fsync_path(mnt)
        os.unlink(d / "b")
        fsync_path(d)
        d.rmdir()
        fsync_path(mnt)
    forget_inodes()
    assert lazy_status(lazy)["pending_dir_ops"] == 0
    assert descriptors(lazy) <= before + 2


def test_running_out_of_descriptors_fails_calls_not_the_mount(lazy):
    mnt = lazy.mountpoint
    for j in range(5):
        (mnt / f"d{j}").mkdir()
    write_file(mnt / "src", b"s", sync=True)
    fsync_path(mnt)
    assert lazy.proc is not None
    limit = descriptors(lazy) + 40
    subprocess.run(["prlimit", f"--pid={lazy.proc.pid}", f"--nofile={limit}:{limit}"], check=True)
    held = []
    try:
        for i in range(100):
            # EMFILE from chaosfs is expected once its table is full.
            with contextlib.suppress(OSError):
                held.append(os.open(mnt / f"f{i}", os.O_RDWR | os.O_CREAT, 0o644))
        for j in range(5):
            with contextlib.suppress(OSError):  # a clean error is fine; a dead mount is not
                os.link(mnt / "src", mnt / f"d{j}" / "lnk")
        assert lazy.proc.poll() is None, lazy.log.read_text()[-2000:]
    finally:
        for fd in held:
            os.close(fd)
    assert (mnt / "src").read_bytes() == b"s"
    write_file(mnt / "after", b"ok")
    assert (mnt / "after").read_bytes() == b"ok"


@pytest.fixture
def nested(lazy):
    """A tmpfs mounted below the backing directory: parking there is EXDEV."""
    below = lazy.original / "sub"
    below.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(below)], check=True)
    yield lazy.mountpoint / "sub"
    subprocess.run(["umount", "-l", str(below)], check=False)


@pytest.mark.host_global  # forget_inodes: the whole host's dentry and inode caches
def test_another_file_system_below_the_backing_directory(lazy, nested):
    write_file(nested / "f", b"1", sync=True)
    os.unlink(nested / "f")  # cannot be parked: removed for real
    (nested / "dd").mkdir()
    (nested / "dd").rmdir()
    write_file(nested / "new", b"NEW")
    write_file(nested / "cur", b"CUR")
    os.rename(nested / "new", nested / "cur")  # replaced for real, never half done
    forget_inodes()
    assert sorted(os.listdir(nested)) == ["cur"]
    assert (nested / "cur").read_bytes() == b"NEW"


def test_the_trash_name_is_reserved(lazy):
    mnt = lazy.mountpoint
    (mnt / "e").mkdir()
    with pytest.raises(PermissionError):
        os.rename(mnt / "e", mnt / ".chaosfs-trash")
    write_file(mnt / "f", b"secret")
    os.unlink(mnt / "f")  # parked in the trash, which must stay out of sight
    assert sorted(os.listdir(mnt)) == ["e"]
    assert os.listdir(mnt / "e") == []


def test_metadata_glob_matches_entries_not_directories(lazy):
    mnt = lazy.mountpoint
    (mnt / "sub").mkdir()
    fsync_path(mnt)
    # Older than x.log: a rollback of x.log leaves it (a newer op in the same
    # directory would go too, as an ordered journal would lose it).
    write_file(mnt / "sub" / "keep.txt", b"data", sync=True)
    write_file(mnt / "sub" / "x.log", b"data", sync=True)  # data synced, entry not
    write_file(mnt / "app.db", b"db", sync=True)  # at the root
    # The strict model: file fsyncs commit no entry (the journal model keeps them all).
    report = ask(lazy, "report-unsynced", path="sub/*.log", model="strict")["unsynced"]
    assert [op["path"] for op in report["dir_ops"]] == ["sub/x.log"]
    lost = ask(lazy, "lose-unsynced", path="sub/*.log", metadata=True, model="strict")["lost"]
    assert [op["path"] for op in lost["dir_ops"]] == ["sub/x.log"]
    assert sorted(os.listdir(mnt / "sub")) == ["keep.txt"]
    lost = ask(lazy, "lose-unsynced", path="app.db", metadata=True, model="strict")["lost"]
    assert [op["path"] for op in lost["dir_ops"]] == ["app.db"]
    assert sorted(os.listdir(mnt)) == ["sub"]


@pytest.mark.host_global  # forget_inodes: the whole host's dentry and inode caches
def test_a_renamed_file_is_reported_where_it_is_after_the_kernel_forgot_it(lazy):
    mnt = lazy.mountpoint
    write_file(mnt / "a", b"x" * 100)
    os.rename(mnt / "a", mnt / "b")
    forget_inodes()
    assert ask(lazy, "report-unsynced", path="b")["unsynced"]["files"] == {"b": 100}
    assert ask(lazy, "lose-unsynced", path="b")["lost"]["files"] == {"b": 100}
    assert (mnt / "b").read_bytes() == b""


def test_two_files_under_one_name_are_both_counted(lazy):
    mnt = lazy.mountpoint
    fd = os.open(mnt / "db", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"old" * 100)  # still open, about to be replaced
        write_file(mnt / "db.tmp", b"new" * 10)
        os.rename(mnt / "db.tmp", mnt / "db")
        report = ask(lazy, "report-unsynced")["unsynced"]
        assert report["bytes"] == 330 and report["files"] == {"db": 330}
    finally:
        os.close(fd)


def test_a_restored_directory_works_while_its_old_self_is_held(lazy):
    mnt = lazy.mountpoint
    (mnt / "d").mkdir()
    fsync_path(mnt)
    write_file(mnt / "d" / "f", b"F", sync=True)
    fsync_path(mnt / "d")
    held = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.unlink(mnt / "d" / "f")
        (mnt / "d").rmdir()
        ask(lazy, "lose-unsynced", metadata=True)
        assert os.listdir(mnt / "d") == ["f"]
        assert (mnt / "d" / "f").read_bytes() == b"F"
        write_file(mnt / "d" / "new", b"n")
        assert sorted(os.listdir(mnt / "d")) == ["f", "new"]
    finally:
        os.close(held)


def test_o_trunc_on_a_read_only_open_truncates_as_linux_does(lazy):
    mnt = lazy.mountpoint
    write_file(mnt / "t", b"content", sync=True)
    os.close(os.open(mnt / "t", os.O_RDONLY | os.O_TRUNC))
    assert (mnt / "t").read_bytes() == b""
    ask(lazy, "lose-unsynced")
    assert (mnt / "t").read_bytes() == b"content"  # the truncate was never synced


@pytest.mark.parametrize("flag", [os.O_DSYNC, os.O_SYNC], ids=["O_DSYNC", "O_SYNC"])
@pytest.mark.parametrize("access", [os.O_WRONLY, os.O_RDWR], ids=["write-only", "read-write"])
def test_a_synchronous_write_is_durable_when_it_returns(lazy, flag, access):
    mnt = lazy.mountpoint
    fd = os.open(mnt / "meta", access | os.O_CREAT | flag, 0o644)
    try:
        os.pwrite(fd, b"committed", 0)
        ask(lazy, "lose-unsynced")  # no fsync came: the flag alone must have done it
    finally:
        os.close(fd)
    assert (mnt / "meta").read_bytes() == b"committed"
    assert (lazy.original / "meta").read_bytes() == b"committed"
