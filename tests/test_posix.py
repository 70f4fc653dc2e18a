"""POSIX behaviour of the chaosfs passthrough, with no fault rule set.

Every test drives a real chaosfs process over a real FUSE mount and checks what a
program would see. Where it makes sense the same operation is done on the native
file system (the backing directory, or a scratch directory beside it) and the two
results are compared, so the test states "behaves like the real thing" rather
than a guess at what the real thing does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import pickle
import resource
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import wait_for

USER = 12345  # an unprivileged uid and gid that exist nowhere else
OTHER_GROUP = 4242

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]  # fmt: skip
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


def utimensat(path: Path, atime: tuple[int, int], mtime: tuple[int, int], follow=True) -> None:
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    if _libc.utimensat(AT_FDCWD, bytes(path), times, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def errno_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """The errno ``fn`` fails with, or 0 if it succeeds."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return 0


def as_user(cwd: Path, fn: Callable[[], Any], uid: int = USER, gid: int = USER,
            groups: tuple[int, ...] = (), umask: int = 0o022) -> Any:  # fmt: skip
    """Run ``fn`` in a child that has become ``uid:gid`` inside ``cwd``.

    The child changes directory while still root (pytest's temporary tree is not
    searchable by others), then drops to the user. ``fn``'s result comes back; an
    ``OSError`` it raises is raised again here with the same errno.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read_end)
            os.chdir(cwd)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            os.umask(umask)
            try:
                result: tuple = ("ok", fn())
            except OSError as exc:
                result = ("oserror", exc.errno, str(exc))
            except BaseException as exc:
                result = ("error", repr(exc))
            with os.fdopen(write_end, "wb") as out:
                out.write(pickle.dumps(result))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the child failed to report"
    result = pickle.loads(data)
    if result[0] == "oserror":
        raise OSError(result[1], result[2])
    if result[0] == "error":
        raise AssertionError(f"child raised {result[1]}")
    return result[1]


# chaosfs's flags for each kind of mount: plain, and lazy with each model of what a
# power cut keeps of directory operations (the model must change nothing else).
MODES = {
    "passthrough": [],
    "lazy": ["-lazy"],  # the journal model, the default
    "lazy-strict": ["-lazy", "-lazy-metadata", "strict"],
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test runs on a plain and on lazy mounts, but those that look at the
    # backing directory only on the plain one: lazy mode keeps what was not
    # synced out of it, on purpose.
    if "fs" in metafunc.fixturenames:
        backing = metafunc.definition.get_closest_marker("backing") is not None
        modes = ["passthrough"] if backing else list(MODES)
        metafunc.parametrize("fs", modes, indirect=True)


@pytest.fixture
def fs(make_sidecar, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A sidecar (no fault rules, so no need to wait for the bus), checked
    afterwards to still be alive and answering. Lazy mode must be just as
    good a file system: only a power cut may tell it apart."""
    sidecar = make_sidecar(bus=False, extra=MODES[request.param])
    yield sidecar
    assert sidecar.proc is not None and sidecar.proc.poll() is None, (
        f"chaosfs died; log: {sidecar.log.read_text(errors='replace')[-3000:]}"
    )
    os.listdir(sidecar.mountpoint)


@pytest.fixture
def native(tmp_path: Path) -> Path:
    """A directory on the native file system the backing directory lives on."""
    path = tmp_path / "native"
    path.mkdir()
    return path


def shared_dir(base: Path, name: str = "shared") -> Path:
    path = base / name
    path.mkdir()
    os.chmod(path, 0o777)
    return path


# --- lookup and getattr --------------------------------------------------------------


@pytest.mark.backing
def test_lookup_and_getattr_show_the_backing_inode(fs):
    (fs.original / "made-below").write_bytes(b"x" * 5000)
    fs.path("made-above").write_bytes(b"y" * 7)
    for name in ("made-below", "made-above"):
        above = os.stat(fs.path(name))
        below = os.stat(fs.original / name)
        for field in ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                      "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):  # fmt: skip
            assert getattr(above, field) == getattr(below, field), (name, field)
    assert errno_of(os.stat, fs.path("missing")) == errno.ENOENT
    assert errno_of(os.stat, fs.path("made-above/child")) == errno.ENOTDIR
    # A name that was missing is found once it exists.
    fs.path("missing").write_bytes(b"")
    assert os.path.exists(fs.path("missing"))


# --- setattr -------------------------------------------------------------------------


@pytest.mark.backing
def test_truncate_by_path_and_by_descriptor(fs, native):
    for base in (fs.mountpoint, native):
        path = base / "t"
        path.write_bytes(b"abcdefgh" * 1000)
        os.truncate(path, 10)
        with open(path, "r+b") as f:
            os.ftruncate(f.fileno(), 20000)
            f.seek(19998)
            f.write(b"zz")
        os.truncate(path, 19999)
    assert fs.path("t").read_bytes() == (native / "t").read_bytes()
    assert fs.path("t").read_bytes() == b"abcdefghab" + bytes(19988) + b"z"
    assert os.stat(fs.path("t")).st_size == 19999
    assert (fs.original / "t").read_bytes() == (native / "t").read_bytes()


def test_chmod_and_chown_as_root(fs, native):
    for base in (fs.mountpoint, native):
        (base / "f").write_bytes(b"data")
        os.mkdir(base / "d")
        os.symlink("f", base / "l")
        os.chmod(base / "f", 0o4751)
        os.chmod(base / "d", 0o1777)
        os.chown(base / "f", USER, OTHER_GROUP)
        os.chown(base / "d", -1, OTHER_GROUP)
        os.chown(base / "l", USER, USER, follow_symlinks=False)
    for name in ("f", "d", "l"):
        above = os.lstat(fs.path(name))
        for other in (os.lstat(native / name), os.lstat(fs.original / name)):
            assert (above.st_mode, above.st_uid, above.st_gid) == (
                other.st_mode,
                other.st_uid,
                other.st_gid,
            ), name
    assert os.stat(fs.path("f")).st_uid == USER  # chown of the link left the target alone
    # chmod after chown: setuid asked for explicitly is kept
    os.chmod(fs.path("f"), 0o6755)
    assert stat.S_IMODE(os.stat(fs.original / "f").st_mode) == 0o6755


def test_utimens_exact_now_and_omit(fs, native):
    results = {}
    for label, base in (("fuse", fs.mountpoint), ("native", native)):
        path = base / "f"
        path.write_bytes(b"x")
        os.symlink("f", base / "l")
        os.utime(path, ns=(1_000_000_123, 2_000_000_456))
        exact = os.stat(path)
        # UTIME_OMIT for atime: only mtime changes.
        utimensat(path, (0, UTIME_OMIT), (3, 789))
        omit_atime = os.stat(path)
        # UTIME_NOW for atime, UTIME_OMIT for mtime.
        before = time.time_ns()
        utimensat(path, (0, UTIME_NOW), (0, UTIME_OMIT))
        after = time.time_ns()
        now_atime = os.stat(path)
        # Both UTIME_NOW, as touch(1) does.
        utimensat(path, (0, UTIME_NOW), (0, UTIME_NOW))
        both_now = os.stat(path)
        # The link's own times, not the target's.
        utimensat(base / "l", (5, 6), (7, 8), follow=False)
        link = os.lstat(base / "l")
        results[label] = (exact, omit_atime, now_atime, both_now, link, before, after)

    for label in ("fuse", "native"):
        exact, omit_atime, now_atime, both_now, link, before, after = results[label]
        assert (exact.st_atime_ns, exact.st_mtime_ns) == (1_000_000_123, 2_000_000_456), label
        assert (omit_atime.st_atime_ns, omit_atime.st_mtime_ns) == (1_000_000_123, 3_000_000_789)
        assert now_atime.st_mtime_ns == 3_000_000_789, label
        # The file system's clock is coarser than time_ns(): allow one tick of slack.
        assert before - 10_000_000 <= now_atime.st_atime_ns <= after + 10_000_000, label
        assert both_now.st_mtime_ns >= now_atime.st_atime_ns - 10_000_000, label
        assert both_now.st_mtime_ns > 3_000_000_789, label
        assert (link.st_atime_ns, link.st_mtime_ns) == (5_000_000_006, 7_000_000_008), label
    below = os.stat(fs.original / "f")
    assert below.st_mtime_ns == results["fuse"][3].st_mtime_ns


def test_utimens_now_by_a_writer_who_is_not_the_owner(fs):
    shared = shared_dir(fs.mountpoint)
    target = shared / "f"
    target.write_bytes(b"x")
    os.chmod(target, 0o666)
    os.utime(target, ns=(10**9, 10**9))
    # Write permission suffices for "now"; explicit times need ownership.
    as_user(shared, lambda: utimensat(Path("f"), (0, UTIME_NOW), (0, UTIME_NOW)))
    assert os.stat(fs.original / "shared/f").st_mtime_ns > 10**9
    with pytest.raises(PermissionError):
        as_user(shared, lambda: os.utime("f", ns=(5, 5)))


# --- directories -----------------------------------------------------------------------


def test_readdir_of_2000_entries_is_complete(fs):
    big = fs.path("big")
    big.mkdir()
    names = {f"entry-{i:05d}-" + "n" * (i % 97) for i in range(2000)}
    for name in names:
        (fs.original / "big" / name).write_bytes(b"")
    listed = os.listdir(big)
    assert len(listed) == len(names)
    assert set(listed) == names
    with os.scandir(big) as entries:
        scanned = {e.name: e.inode() for e in entries}
    assert set(scanned) == names
    for name in list(names)[:50]:
        assert scanned[name] == os.stat(fs.original / "big" / name).st_ino
    # Changes through the mount show up in the next listing.
    os.unlink(big / "entry-00000-")
    (big / "added").write_bytes(b"")
    assert set(os.listdir(big)) == (names - {"entry-00000-"}) | {"added"}
    assert sorted(os.listdir(big)) == sorted(os.listdir(fs.original / "big"))


def test_readdir_never_silently_drops_names_when_descriptors_run_out(fs):
    # chaosfs holds a descriptor per inode the kernel knows, and a listing makes
    # the kernel know every entry. Out of descriptors, a listing must fail with an
    # error, never come back short as if the missing files did not exist.
    names = {f"f{i:04d}" for i in range(2000)}
    (fs.original / "big").mkdir()
    for name in names:
        (fs.original / "big" / name).write_bytes(b"")
    pid = fs.proc.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 500, limits[1]))
    try:
        try:
            listed = set(os.listdir(fs.path("big")))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        else:
            assert listed == names
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    assert set(os.listdir(fs.path("big"))) == names


@pytest.mark.backing
@pytest.mark.host_global  # drops the whole host's dentry and inode caches
def test_inodes_the_kernel_forgets_are_released_and_found_again(fs):
    # The kernel forgets inodes it no longer caches; chaosfs must then close their
    # descriptors, and still serve what stays open or is looked up again.
    pid = fs.proc.pid
    d = fs.path("d")
    d.mkdir()
    for i in range(300):
        (d / f"f{i}").write_bytes(b"x%d" % i)
    os.link(d / "f1", fs.path("hard"))
    held_file = open(d / "f2", "rb")  # noqa: SIM115
    held_dir = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    old_cwd = os.getcwd()
    os.chdir(d)
    try:
        before = len(os.listdir(f"/proc/{pid}/fd"))
        assert before > 300
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")  # dentries and inodes only
        wait_for(lambda: len(os.listdir(f"/proc/{pid}/fd")) < 100, what="forgotten inodes")
        assert held_file.read() == b"x2"
        assert open("f3", "rb").read() == b"x3"  # noqa: SIM115
        assert os.stat("../hard").st_nlink == 2
        assert len(os.listdir(".")) == 300 and len(os.listdir(held_dir)) == 300
        os.rename("f4", "../moved")
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
        assert fs.path("moved").read_bytes() == b"x4"
        assert os.fstat(held_file.fileno()).st_ino == os.stat(fs.original / "d/f2").st_ino
    finally:
        os.chdir(old_cwd)
        os.close(held_dir)
        held_file.close()


@pytest.mark.backing
def test_rmtree_of_a_large_directory(fs):
    # Listing and unlinking interleaved, as rm -r does.
    top = fs.path("tree")
    for sub in ("a", "b/c"):
        os.makedirs(top / sub)
        for i in range(700):
            (fs.original / "tree" / sub / (f"{i:03d}-" + "x" * 100)).write_bytes(b"")
    shutil.rmtree(top)
    assert not top.exists()
    assert os.listdir(fs.original) == []


@pytest.mark.backing
def test_names_that_are_not_utf8(fs, native):
    name = b"\xff\xfe-latin1-\xe9"
    for base in (fs.mountpoint, native):
        with open(os.fsencode(base) + b"/" + name, "wb") as f:
            f.write(b"bytes")
    assert os.listdir(os.fsencode(fs.mountpoint)) == [name]
    assert os.listdir(os.fsencode(fs.original)) == [name]
    with open(os.fsencode(fs.mountpoint) + b"/" + name, "rb") as f:
        assert f.read() == b"bytes"


def test_mkdir_rmdir(fs, native):
    for base in (fs.mountpoint, native):
        os.mkdir(base / "d", 0o750)
        (base / "d" / "f").write_bytes(b"")
    for base in (fs.mountpoint, native):
        assert errno_of(os.mkdir, base / "d") == errno.EEXIST
        assert errno_of(os.rmdir, base / "d") == errno.ENOTEMPTY
        assert errno_of(os.rmdir, base / "d" / "f") == errno.ENOTDIR
        assert errno_of(os.rmdir, base / "nothing") == errno.ENOENT
    assert stat.S_IMODE(os.stat(fs.path("d")).st_mode) == 0o750
    os.unlink(fs.path("d/f"))
    os.rmdir(fs.path("d"))
    assert not os.path.exists(fs.path("d"))
    assert not os.path.exists(fs.original / "d")


def test_fsyncdir(fs):
    fs.path("d").mkdir()
    (fs.path("d") / "f").write_bytes(b"x")
    fd = os.open(fs.path("d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    fd = os.open(fs.mountpoint, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- files ----------------------------------------------------------------------------


@pytest.mark.backing
def test_open_create_read_write_flush_fsync_release(fs):
    path = fs.path("f")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640)
    try:
        assert os.write(fd, b"hello world") == 11
        os.fsync(fd)
        os.fdatasync(fd)
        assert os.pread(fd, 5, 6) == b"world"
        assert os.pwrite(fd, b"W", 6) == 1
        assert os.pread(fd, 100, 0) == b"hello World"
        assert os.pread(fd, 100, 11) == b""
        fd2 = os.dup(fd)
        os.close(fd2)  # a flush with the file still open
        assert os.fstat(fd).st_size == 11
    finally:
        os.close(fd)
    assert (fs.original / "f").read_bytes() == b"hello World"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert errno_of(os.open, path, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert errno_of(os.open, fs.path("nothing"), os.O_RDONLY) == errno.ENOENT
    assert errno_of(os.open, fs.mountpoint, os.O_WRONLY) == errno.EISDIR
    # Opening a file that exists with O_CREAT (no O_EXCL) opens it.
    fd = os.open(path, os.O_CREAT | os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"hello World"
    finally:
        os.close(fd)
    # A read-only descriptor cannot write, a write-only one cannot read.
    with open(path, "rb") as f:
        assert errno_of(os.write, f.fileno(), b"x") == errno.EBADF
    with open(path, "ab") as f:
        assert errno_of(os.read, f.fileno(), 1) == errno.EBADF


def test_o_append_o_trunc_and_sparse_files(fs, native):
    for base in (fs.mountpoint, native):
        path = base / "f"
        path.write_bytes(b"start")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"-one")
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, b"-two")
            os.pwrite(fd, b"-three", 0)  # Linux appends even pwrite on O_APPEND
        finally:
            os.close(fd)
        # A second, non-append writer in between: appends still land at the end.
        with open(path, "ab") as appender, open(path, "r+b") as other:
            appender.write(b"!")
            appender.flush()
            other.seek(0, os.SEEK_END)
            other.write(b"?" * 10)
            other.flush()
            appender.write(b"$")
    assert fs.path("f").read_bytes() == (native / "f").read_bytes()
    assert fs.path("f").read_bytes() == b"start-one-two-three!" + b"?" * 10 + b"$"

    fd = os.open(fs.path("f"), os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(fs.path("f")).st_size == 0
    assert (fs.original / "f").read_bytes() == b""

    sparse = fs.path("sparse")
    with open(sparse, "wb") as f:
        f.seek(10 << 20)
        f.write(b"end")
    st = os.stat(sparse)
    assert st.st_size == (10 << 20) + 3
    assert st.st_blocks * 512 < 1 << 20  # still sparse below
    with open(sparse, "rb") as f:
        data = f.read()
    assert data[: 10 << 20] == bytes(10 << 20)
    assert data[10 << 20 :] == b"end"
    # The blocks a native file system shows for the same file, synced or not (lazy
    # mode shows what delayed allocation reserved; its backing file is still empty).
    native_sparse = native / "sparse"
    with open(native_sparse, "wb") as f:
        f.seek(10 << 20)
        f.write(b"end")
    assert os.stat(native_sparse).st_blocks == st.st_blocks
    if "-lazy" not in fs.extra:
        assert os.stat(fs.original / "sparse").st_blocks == st.st_blocks


@pytest.mark.backing
def test_o_direct_open_read_write_keeps_the_mount_alive(fs):
    path = fs.path("direct")
    path.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    buf = mmap.mmap(-1, 8192)  # page aligned, as O_DIRECT wants
    try:
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        try:
            assert os.preadv(fd, [buf], 4096) == 8192
            assert bytes(buf) == (bytes(range(256)) * 64)[4096:12288]
            buf[:] = b"\xab" * 8192
            assert os.pwritev(fd, [buf], 8192) == 8192
            assert os.fstat(fd).st_size == 16384
        finally:
            os.close(fd)
        # O_DIRECT on create, too.
        fd = os.open(fs.path("direct-new"), os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o644)
        try:
            assert os.pwritev(fd, [buf], 0) == 8192
        finally:
            os.close(fd)
    finally:
        buf.close()
    assert (fs.original / "direct").read_bytes()[8192:] == b"\xab" * 8192
    assert path.read_bytes()[8192:] == b"\xab" * 8192
    assert (fs.original / "direct-new").read_bytes() == b"\xab" * 8192
    assert os.listdir(fs.mountpoint)


def test_o_direct_descriptors_behave_as_natively(fs, native):
    # Buffered and O_DIRECT users of one file see each other's writes, and an
    # O_DIRECT descriptor can be mapped shared, as on the native file system.
    outcomes = {}
    for label, base in (("fuse", fs.mountpoint), ("native", native)):
        path = base / "f"
        path.write_bytes(b"a" * 16384)
        buffered = os.open(path, os.O_RDWR)
        direct = os.open(path, os.O_RDWR | os.O_DIRECT)
        buf = mmap.mmap(-1, 4096)
        try:
            assert os.pread(buffered, 4, 0) == b"aaaa"  # now in the page cache
            buf[:] = b"D" * 4096
            os.pwritev(direct, [buf], 0)
            seen_buffered = os.pread(buffered, 4, 0)
            os.pwrite(buffered, b"B" * 4096, 4096)
            os.preadv(direct, [buf], 4096)
            seen_direct = bytes(buf[:4])
            shared = mmap.mmap(direct, 8192)
            try:
                shared[:3] = b"map"
                shared.flush()
            finally:
                shared.close()
            # Misaligned O_DIRECT I/O may work or fail with EINVAL, never worse.
            misaligned = errno_of(os.pread, direct, 100, 3)
            assert misaligned in (0, errno.EINVAL)
            outcomes[label] = (seen_buffered, seen_direct, os.pread(buffered, 4, 0))
        finally:
            buf.close()
            os.close(direct)
            os.close(buffered)
    assert outcomes["fuse"] == outcomes["native"] == (b"DDDD", b"BBBB", b"mapD")
    assert (fs.original / "f").read_bytes()[:4] == b"mapD"


def test_unprivileged_writes_clear_setuid_and_setgid(make_sidecar, native):
    # The kernel clears the bits itself for buffered and O_DIRECT writes, but
    # leaves it to the daemon for a file served with direct_io (while a read
    # fault covers it). A write by root keeps them, as natively.
    sidecar = make_sidecar()
    names = ("buffered", "direct", "read-faulted", "by-root")
    rule = ["--action", "errno", "--errno", "EIO", "--methods", "read"]
    done = sidecar.ctl("fault", "set", "--pod", sidecar.pod, *rule, "--path", "shared/read-faulted")
    assert done.returncode == 0, done.stderr
    modes = {}
    for label, base in (("fuse", sidecar.mountpoint), ("native", native)):
        shared = shared_dir(base)
        for name in names:
            (shared / name).write_bytes(bytes(8192))
            os.chown(shared / name, USER, USER)
            os.chmod(shared / name, 0o6775)

        def write() -> None:
            with open("buffered", "r+b") as f:
                f.write(b"x")
            buf = mmap.mmap(-1, 4096)
            fd = os.open("direct", os.O_RDWR | os.O_DIRECT)
            try:
                os.pwritev(fd, [buf], 0)
            finally:
                os.close(fd)
            fd = os.open("read-faulted", os.O_WRONLY)
            try:
                os.pwrite(fd, b"y", 0)
            finally:
                os.close(fd)

        as_user(shared, write)
        with open(shared / "by-root", "r+b") as f:
            f.write(b"z")
        modes[label] = {n: stat.S_IMODE(os.stat(shared / n).st_mode) for n in names}
    assert modes["fuse"] == modes["native"]
    assert modes["fuse"]["read-faulted"] == 0o775 and modes["fuse"]["by-root"] == 0o6775
    assert stat.S_IMODE(os.stat(sidecar.original / "shared/read-faulted").st_mode) == 0o775


def test_unlink_keeps_open_files_readable(fs):
    path = fs.path("f")
    path.write_bytes(b"still here")
    with open(path, "rb") as f:
        os.unlink(path)
        assert not os.path.exists(path)
        assert not os.path.exists(fs.original / "f")
        assert f.read() == b"still here"
        assert os.fstat(f.fileno()).st_nlink == 0
    assert errno_of(os.unlink, path) == errno.ENOENT
    fs.path("d").mkdir()
    assert errno_of(os.unlink, fs.path("d")) == errno.EISDIR
    # The name can be used again at once.
    path.write_bytes(b"new")
    assert path.read_bytes() == b"new"


# --- names ---------------------------------------------------------------------------


def test_rename_plain_replacing_noreplace_and_exchange(fs, native):
    for base in (fs.mountpoint, native):
        (base / "a").write_bytes(b"A")
        (base / "b").write_bytes(b"B")
        (base / "c").write_bytes(b"C")
        os.mkdir(base / "sub")
        os.rename(base / "a", base / "sub" / "a2")  # plain, across directories
        os.rename(base / "b", base / "c")  # replaces c
        (base / "d").write_bytes(b"D")
        (base / "e").write_bytes(b"E")
        assert errno_of(renameat2, base / "d", base / "e", RENAME_NOREPLACE) == errno.EEXIST
        renameat2(base / "d", base / "f", RENAME_NOREPLACE)
        renameat2(base / "f", base / "e", RENAME_EXCHANGE)
        assert errno_of(renameat2, base / "f", base / "zz", RENAME_EXCHANGE) == errno.ENOENT
    # Lazy mode parks a replaced target until a sync: the backing tree differs.
    backing = [] if "-lazy" in fs.extra else [fs.original]
    for base in (fs.mountpoint, *backing, native):
        assert sorted(os.listdir(base)) == ["c", "e", "f", "sub"], base
        assert (base / "sub" / "a2").read_bytes() == b"A"
        assert (base / "c").read_bytes() == b"B"
        assert (base / "e").read_bytes() == b"D"
        assert (base / "f").read_bytes() == b"E"
    assert not os.path.exists(fs.path("a"))


def test_renamed_open_file_and_directory_stay_usable(fs):
    fs.path("dir").mkdir()
    fs.path("dir/inner").write_bytes(b"in")
    with open(fs.path("dir/inner"), "r+b") as f:
        os.rename(fs.path("dir"), fs.path("moved"))
        f.seek(0, os.SEEK_END)
        f.write(b"side")
    assert fs.path("moved/inner").read_bytes() == b"inside"
    fs.path("moved/new").write_bytes(b"n")
    os.symlink("new", fs.path("moved/link"))
    os.rename(fs.path("moved"), fs.path("again"))
    # Symlink operations go by the link's directory and name: they must follow it.
    os.chown(fs.path("again/link"), USER, USER, follow_symlinks=False)
    os.utime(fs.path("again/link"), ns=(10**9, 10**9), follow_symlinks=False)
    below = os.lstat(fs.original / "again/link")
    assert (below.st_uid, below.st_mtime_ns) == (USER, 10**9)
    assert os.readlink(fs.path("again/link")) == "new"


def test_rename_errors_match_the_native_file_system(fs, native):
    outcomes = {}
    for label, base in (("fuse", fs.mountpoint), ("native", native)):
        os.makedirs(base / "d1" / "sub")
        os.makedirs(base / "full")
        (base / "full" / "x").write_bytes(b"")
        os.makedirs(base / "empty")
        (base / "f").write_bytes(b"f")
        os.link(base / "f", base / "f-link")
        outcomes[label] = [
            errno_of(os.rename, base / "d1", base / "d1" / "sub" / "in"),  # EINVAL
            errno_of(os.rename, base / "d1", base / "full"),  # ENOTEMPTY
            errno_of(os.rename, base / "f", base / "d1"),  # EISDIR
            errno_of(os.rename, base / "d1", base / "f"),  # ENOTDIR
            errno_of(os.rename, base / "missing", base / "m2"),  # ENOENT
            errno_of(os.rename, base / "f", base / "f-link"),  # the same file: nothing
            errno_of(os.rename, base / "d1", base / "empty"),  # a dir over an empty dir
            sorted(os.listdir(base)),
            sorted(os.listdir(base / "empty")),
        ]
    assert outcomes["fuse"] == outcomes["native"]
    assert outcomes["fuse"][:4] == [errno.EINVAL, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR]


def test_chown_and_utimens_of_a_symlink_replaced_by_rename(fs):
    # An O_PATH descriptor keeps the old link alive after a file is renamed over
    # its name; changing the link must not touch the file that now has that name.
    fs.path("target").write_bytes(b"t")
    os.symlink("target", fs.path("link"))
    fd = os.open(fs.path("link"), os.O_PATH | os.O_NOFOLLOW)
    try:
        fs.path("newcomer").write_bytes(b"n")
        os.rename(fs.path("newcomer"), fs.path("link"))
        _libc.fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                                   ctypes.c_int]  # fmt: skip
        assert _libc.fchownat(fd, b"", USER, USER, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0
        times = (_Timespec * 2)(_Timespec(7, 0), _Timespec(7, 0))
        assert _libc.utimensat(fd, b"", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0
        st = os.stat(fd)  # fstat of the O_PATH descriptor: the old link itself
        assert stat.S_ISLNK(st.st_mode) and st.st_uid == USER and st.st_mtime_ns == 7 * 10**9
    finally:
        os.close(fd)
    newcomer = os.lstat(fs.original / "link")
    assert stat.S_ISREG(newcomer.st_mode)
    assert newcomer.st_uid == 0 and newcomer.st_mtime_ns != 7 * 10**9


def test_link_counts(fs):
    path = fs.path("orig")
    path.write_bytes(b"linked")
    assert os.stat(path).st_nlink == 1  # cached by the kernel before the link
    with open(path, "rb") as f:
        os.link(path, fs.path("second"))
        assert os.fstat(f.fileno()).st_nlink == 2
    assert os.stat(path).st_nlink == 2
    assert os.stat(fs.path("second")).st_nlink == 2
    assert os.stat(path).st_ino == os.stat(fs.path("second")).st_ino
    fs.path("sub").mkdir()
    os.link(fs.path("second"), fs.path("sub/third"))
    assert os.stat(path).st_nlink == 3
    assert os.stat(fs.original / "orig").st_nlink == 3
    os.unlink(path)
    assert os.stat(fs.path("second")).st_nlink == 2
    assert fs.path("sub/third").read_bytes() == b"linked"
    fs.path("sub/third").write_bytes(b"changed")
    assert fs.path("second").read_bytes() == b"changed"
    assert errno_of(os.link, fs.path("second"), fs.path("sub/third")) == errno.EEXIST
    assert errno_of(os.link, fs.path("sub"), fs.path("dirlink")) == errno.EPERM
    # A hard link to a symlink links the symlink itself.
    os.symlink("second", fs.path("sym"))
    os.link(fs.path("sym"), fs.path("sym2"), follow_symlinks=False)
    assert os.readlink(fs.path("sym2")) == "second"
    assert os.lstat(fs.path("sym")).st_nlink == 2
    assert os.lstat(fs.original / "sym2").st_ino == os.lstat(fs.original / "sym").st_ino


def test_symlink_and_readlink(fs, native):
    for base in (fs.mountpoint, native):
        (base / "target").write_bytes(b"t")
        os.symlink("target", base / "rel")
        os.symlink("/nonexistent/dangling", base / "dangling")
        os.symlink("x" * 4000, base / "long")
        assert errno_of(os.symlink, "target", base / "rel") == errno.EEXIST
    for name in ("rel", "dangling", "long"):
        assert os.readlink(fs.path(name)) == os.readlink(native / name)
        st = os.lstat(fs.path(name))
        assert stat.S_ISLNK(st.st_mode)
        assert st.st_size == os.lstat(native / name).st_size
    assert fs.path("rel").read_bytes() == b"t"
    assert os.stat(fs.path("rel")).st_ino == os.stat(fs.path("target")).st_ino
    assert errno_of(os.stat, fs.path("dangling")) == errno.ENOENT
    assert errno_of(os.readlink, fs.path("target")) == errno.EINVAL


def test_mknod_fifo_socket_and_char_device(fs, native):
    for base in (fs.mountpoint, native):
        os.mkfifo(base / "fifo", 0o640)
        os.mknod(base / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mknod(base / "plain", stat.S_IFREG | 0o600)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_cwd = os.getcwd()
    os.chdir(fs.mountpoint)  # keep the socket path short
    try:
        sock.bind("sock")
        sock.listen(1)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect("sock")
        client.close()
    finally:
        os.chdir(old_cwd)
        sock.close()
    for name, kind in (("fifo", stat.S_ISFIFO), ("null", stat.S_ISCHR), ("plain", stat.S_ISREG),
                       ("sock", stat.S_ISSOCK)):  # fmt: skip
        above = os.lstat(fs.path(name))
        below = os.lstat(fs.original / name)
        assert kind(above.st_mode) and above.st_mode == below.st_mode, name
        assert above.st_rdev == below.st_rdev
    for name in ("fifo", "null", "plain"):
        assert os.lstat(fs.path(name)).st_mode == os.lstat(native / name).st_mode
    assert os.lstat(fs.path("null")).st_rdev == os.makedev(1, 3)
    # A fifo in the mount passes data like any fifo.
    reader = os.open(fs.path("fifo"), os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fs.path("fifo"), os.O_WRONLY)
    try:
        os.write(writer, b"through the pipe")
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(writer)
        os.close(reader)


# --- file system and attributes --------------------------------------------------------


def test_statfs_matches_the_backing_file_system(fs):
    above = os.statvfs(fs.mountpoint)
    below = os.statvfs(fs.original)
    for field in ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax"):
        assert getattr(above, field) == getattr(below, field), field
    # Free space moves while the test runs; it must be the same order of magnitude.
    assert abs(above.f_bfree - below.f_bfree) <= max(below.f_blocks // 100, 1024)
    assert abs(above.f_bavail - below.f_bavail) <= max(below.f_blocks // 100, 1024)


def test_xattrs(fs, native):
    for base in (fs.mountpoint, native):
        (base / "f").write_bytes(b"")
        os.mkdir(base / "d")
        for name in ("f", "d"):
            os.setxattr(base / name, "user.one", b"1")
            os.setxattr(base / name, "user.big", b"v" * 4000)
            os.setxattr(base / name, "user.empty", b"")
    for name in ("f", "d"):
        path = fs.path(name)
        assert os.getxattr(path, "user.one") == b"1"
        assert os.getxattr(path, "user.big") == b"v" * 4000
        assert os.getxattr(path, "user.empty") == b""
        assert sorted(os.listxattr(path)) == sorted(os.listxattr(native / name))
        assert sorted(os.listxattr(path)) == sorted(os.listxattr(fs.original / name))
        assert errno_of(os.getxattr, path, "user.missing") == errno.ENODATA
        os.setxattr(path, "user.one", b"uno", os.XATTR_REPLACE)
        assert os.getxattr(fs.original / name, "user.one") == b"uno"
        assert errno_of(os.setxattr, path, "user.one", b"x", os.XATTR_CREATE) == errno.EEXIST
        assert errno_of(os.setxattr, path, "user.no", b"x", os.XATTR_REPLACE) == errno.ENODATA
        os.removexattr(path, "user.one")
        assert errno_of(os.getxattr, path, "user.one") == errno.ENODATA
        assert errno_of(os.removexattr, path, "user.one") == errno.ENODATA
        assert "user.one" not in os.listxattr(path)
        assert "user.one" not in os.listxattr(fs.original / name)
    os.symlink("f", fs.path("l"))
    os.symlink("f", native / "l")
    assert errno_of(os.setxattr, fs.path("l"), "user.x", b"1", follow_symlinks=False) == (
        errno_of(os.setxattr, native / "l", "user.x", b"1", follow_symlinks=False)
    )
    assert os.listxattr(fs.path("l"), follow_symlinks=False) == os.listxattr(
        native / "l", follow_symlinks=False
    )
    # Through the link to its target.
    assert os.getxattr(fs.path("l"), "user.big") == b"v" * 4000


def test_access(fs, native):
    results = {}
    for label, base in (("fuse", fs.mountpoint), ("native", native)):
        shared = shared_dir(base)
        for name, mode, owner in (("mine", 0o600, USER), ("theirs", 0o640, 0),
                                  ("exec", 0o751, 0), ("none", 0o000, USER)):  # fmt: skip
            (shared / name).write_bytes(b"")
            os.chmod(shared / name, mode)
            os.chown(shared / name, owner, OTHER_GROUP)

        def check() -> dict[str, tuple[bool, ...]]:
            modes = (os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.W_OK)
            return {n: tuple(os.access(n, m) for m in modes)
                    for n in ("mine", "theirs", "exec", "none", "absent")}  # fmt: skip

        results[label] = (
            as_user(shared, check),
            as_user(shared, check, groups=(OTHER_GROUP,)),
            {
                n: tuple(os.access(shared / n, m) for m in (os.R_OK, os.W_OK, os.X_OK))
                for n in ("mine", "theirs", "exec", "none")
            },
        )
    assert results["fuse"] == results["native"]


# --- ownership and permissions ------------------------------------------------------------


def _make_everything() -> dict[str, tuple[int, int, int]]:
    fd = os.open("file", os.O_CREAT | os.O_WRONLY, 0o666)
    os.close(fd)
    with open("opened", "w") as f:  # the default 0o666 of open()
        f.write("x")
    os.mkdir("dir", 0o777)
    os.symlink("file", "link")
    os.mkfifo("fifo", 0o666)
    os.mknod("node", stat.S_IFREG | 0o666)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
    out = {}
    for name in ("file", "opened", "dir", "link", "fifo", "node", "sock"):
        st = os.lstat(name)
        out[name] = (st.st_uid, st.st_gid, st.st_mode)
    return out


def test_new_entries_belong_to_the_unprivileged_caller(fs, native):
    above = as_user(shared_dir(fs.mountpoint), _make_everything)
    below = as_user(shared_dir(native), _make_everything)
    assert above == below
    assert above["file"] == (USER, USER, stat.S_IFREG | 0o644)
    assert above["dir"] == (USER, USER, stat.S_IFDIR | 0o755)
    assert above["fifo"] == (USER, USER, stat.S_IFIFO | 0o644)
    assert above["link"][:2] == (USER, USER)
    for name in above:
        st = os.lstat(fs.original / "shared" / name)
        assert (st.st_uid, st.st_gid, st.st_mode) == above[name], name


def test_setuid_and_setgid_bits_asked_for_are_kept(fs, native):
    def make() -> dict[str, int]:
        os.close(os.open("created", os.O_CREAT | os.O_WRONLY, 0o6755))
        os.mknod("node", stat.S_IFREG | 0o6755)
        os.mkfifo("fifo", 0o6755)
        os.mkdir("dir", 0o3777)
        return {n: os.lstat(n).st_mode for n in ("created", "node", "fifo", "dir")}

    results = []
    for base in (fs.mountpoint, native):
        results.append(as_user(shared_dir(base), make))
        os.mknod(base / "by-root", stat.S_IFREG | 0o6755)
        results.append(os.stat(base / "by-root").st_mode)
    assert results[:2] == results[2:]
    assert results[0]["node"] == stat.S_IFREG | 0o6755
    assert results[1] == stat.S_IFREG | 0o6755


def test_umask_077_and_explicit_modes(fs):
    shared = shared_dir(fs.mountpoint)

    def make() -> tuple[int, int]:
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o666))
        os.mkdir("d", 0o777)
        return stat.S_IMODE(os.stat("f").st_mode), stat.S_IMODE(os.stat("d").st_mode)

    assert as_user(shared, make, umask=0o077) == (0o600, 0o700)


def _attempts() -> list[int]:
    """What an unprivileged user gets trying things on root's entries (see below)."""
    return [
        errno_of(os.open, "roots", os.O_WRONLY),
        errno_of(os.open, "roots", os.O_RDONLY | os.O_TRUNC),
        errno_of(os.open, "secret", os.O_RDONLY),
        errno_of(os.truncate, "roots", 0),
        errno_of(os.chown, "mine", 0, 0),
        errno_of(os.chown, "mine", -1, OTHER_GROUP),
        errno_of(os.chown, "roots", USER, USER),
        errno_of(os.chmod, "roots", 0o666),
        errno_of(os.utime, "roots", ns=(1, 1)),
        errno_of(os.setxattr, "roots", "user.x", b"1"),
        errno_of(os.mkdir, "closed/sub"),
        errno_of(os.open, "closed/f", os.O_CREAT | os.O_WRONLY, 0o644),
        errno_of(os.rename, "closed", "renamed"),  # a directory moves by its ".."
        errno_of(os.unlink, "sticky/roots"),  # the sticky bit protects others' files
        errno_of(os.rename, "sticky/roots", "stolen"),
        errno_of(os.chmod, "mine", 0o600),  # allowed: the owner
        errno_of(os.chown, "mine", USER, USER),  # allowed: no change
        errno_of(os.unlink, "sticky/mine"),  # allowed: the owner
    ]


@pytest.mark.backing
def test_default_permissions_deny_the_unprivileged(fs, native):
    results = {}
    for label, base in (("fuse", fs.mountpoint), ("native", native)):
        shared = shared_dir(base)
        (shared / "roots").write_bytes(b"root's")
        os.chmod(shared / "roots", 0o644)
        (shared / "secret").write_bytes(b"s")
        os.chmod(shared / "secret", 0o600)
        os.mkdir(shared / "closed", 0o755)
        (shared / "mine").write_bytes(b"m")
        os.chown(shared / "mine", USER, USER)
        os.mkdir(shared / "sticky")
        os.chmod(shared / "sticky", 0o1777)
        (shared / "sticky" / "roots").write_bytes(b"")
        (shared / "sticky" / "mine").write_bytes(b"")
        os.chown(shared / "sticky" / "mine", USER, USER)
        results[label] = as_user(shared, _attempts)
    assert results["fuse"] == results["native"]
    got = results["fuse"]
    assert got[0] == errno.EACCES and got[4] == errno.EPERM and got[13] == errno.EPERM
    assert got[-3:] == [0, 0, 0]
    assert (fs.original / "shared" / "roots").read_bytes() == b"root's"
    assert (fs.original / "shared" / "sticky" / "roots").exists()


def test_setgid_directory_passes_its_group(fs, native):
    def make() -> dict[str, tuple[int, int]]:
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o666))
        os.mkdir("d", 0o777)
        os.mkfifo("p")
        os.symlink("f", "l")
        return {n: (os.lstat(n).st_gid, os.lstat(n).st_mode) for n in ("f", "d", "p", "l")}

    results = []
    for base in (fs.mountpoint, native):
        group_dir = base / "group"
        group_dir.mkdir()
        os.chown(group_dir, 0, OTHER_GROUP)
        os.chmod(group_dir, 0o2777)
        results.append(as_user(group_dir, make))
    assert results[0] == results[1]
    assert results[0]["f"][0] == OTHER_GROUP
    assert results[0]["d"] == (OTHER_GROUP, stat.S_IFDIR | stat.S_ISGID | 0o755)
    # A member of the group may ask for a setgid file there, and keeps the bit.
    os.chown(fs.path("group/f"), USER, OTHER_GROUP)

    def setgid_file() -> int:
        fd = os.open("g", os.O_CREAT | os.O_WRONLY, 0o2755)
        os.close(fd)
        return os.stat("g").st_mode

    mode = as_user(fs.path("group"), setgid_file, groups=(OTHER_GROUP,))
    assert mode == stat.S_IFREG | stat.S_ISGID | 0o755
    assert os.stat(fs.original / "group/g").st_mode == mode


# --- long names and paths ----------------------------------------------------------------


def test_name_max(fs, native):
    longest = "n" * 255
    too_long = "n" * 256
    for base in (fs.mountpoint, native):
        (base / longest).write_bytes(b"255")
        os.mkdir(base / ("d" * 255))
        os.symlink(longest, base / ("s" * 255))
        os.rename(base / longest, base / ("r" * 255))
    for base in (fs.mountpoint, native):
        assert (base / ("s" * 255)).exists() is False  # now dangling
        assert (base / ("r" * 255)).read_bytes() == b"255"
        assert sorted(os.listdir(base)) == sorted(["d" * 255, "s" * 255, "r" * 255])
        for call, args in (
            (os.stat, (base / too_long,)),
            (os.open, (base / too_long, os.O_CREAT | os.O_WRONLY, 0o644)),
            (os.mkdir, (base / too_long,)),
            (os.symlink, ("x", base / too_long)),
            (os.rename, (base / ("r" * 255), base / too_long)),
            (os.link, (base / ("r" * 255), base / too_long)),
            (os.mkfifo, (base / too_long,)),
        ):
            assert errno_of(call, *args) == errno.ENAMETOOLONG, (base, call)


def _deep_tree(top: Path, total: int) -> tuple[Path, int]:
    """Create directories below ``top`` until the path is ``total`` bytes long.

    Each level is made and entered relative to the previous one's descriptor, so
    no call ever gets a path longer than one name. Returns the deepest directory
    and an ``O_PATH`` descriptor on it.
    """
    fd = os.open(top, os.O_PATH | os.O_DIRECTORY)
    path = top
    level = 0
    while (room := total - len(bytes(path)) - 1) > 0:
        name = f"{level:03d}" + "L" * (min(200, room) - 3) if room > 3 else "z" * room
        os.mkdir(name, 0o755, dir_fd=fd)
        inner = os.open(name, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
        path = path / name
        level += 1
    assert len(bytes(path)) == total
    return path, fd


def test_paths_near_path_max(fs, native):
    # Pad both tops to the same length, so the paths below are equally long.
    width = max(len(bytes(fs.mountpoint)), len(bytes(native))) + 20
    results = {}
    for label, base in (("fuse", fs.mountpoint), ("native", native)):
        top = base / ("p" * (width - len(bytes(base)) - 1))
        top.mkdir()
        deep, fd = _deep_tree(top, 3900)
        try:
            leaf = "f" * (4090 - len(bytes(deep)) - 1)
            full = deep / leaf
            assert len(bytes(full)) == 4090  # PATH_MAX is 4096 with the NUL
            with open(full, "wb") as f:
                f.write(b"deep data")
            with open(full, "rb") as f:
                data = f.read()
            st = os.stat(full)
            os.chmod(full, 0o600)
            os.setxattr(full, "user.deep", b"1")
            mode = stat.S_IMODE(os.stat(full).st_mode)
            os.rename(full, deep / "short")
            os.symlink(leaf, deep / "s")
            listed = sorted(os.listdir(deep))
            # Past PATH_MAX fails in the kernel, before any file system.
            over = deep / ("x" * 250) / ("y" * 250)
            too_long = errno_of(os.stat, over)
            with open(os.open("short", os.O_RDONLY, dir_fd=fd), "rb") as f:
                relative = f.read()
            link = os.readlink(deep / "s")
            xattr = os.getxattr(deep / "short", "user.deep")
            results[label] = (data, st.st_size, mode, listed, too_long, relative, link, xattr)
        finally:
            os.close(fd)
    assert results["fuse"] == results["native"]
    assert results["fuse"][0] == b"deep data" and results["fuse"][4] == errno.ENAMETOOLONG


@pytest.mark.backing
def test_deep_tree_walk_by_chdir(fs):
    deep, fd = _deep_tree(fs.mountpoint, 4000)
    os.close(fd)
    old = os.getcwd()
    try:
        os.chdir(fs.mountpoint)
        for part in deep.relative_to(fs.mountpoint).parts:
            os.chdir(part)
        with open("here", "wb") as f:
            f.write(b"x" * 10000)
        assert os.stat("here").st_size == 10000
        assert os.getcwd() == str(deep)
        os.mkdir("sub")
        os.chdir("sub")
        assert os.listdir("..") == ["here", "sub"] or sorted(os.listdir("..")) == ["here", "sub"]
    finally:
        os.chdir(old)
    assert os.stat(fs.original / deep.relative_to(fs.mountpoint) / "here").st_size == 10000


# --- the mount survives misuse ---------------------------------------------------------------


def test_errors_never_kill_the_mount(fs):
    path = fs.path("f")
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        for call, args in (
            (os.pread, (fd, 10, 1 << 62)),
            (os.lseek, (fd, -1, os.SEEK_SET)),
            (os.ftruncate, (fd, 1)),
        ):
            with contextlib.suppress(OSError, ValueError, OverflowError):
                call(*args)
    finally:
        os.close(fd)
    assert errno_of(os.truncate, path, -1) == errno.EINVAL
    assert errno_of(os.open, fs.path("f/x"), os.O_CREAT | os.O_WRONLY) == errno.ENOTDIR
    assert errno_of(os.listdir, path) == errno.ENOTDIR
    assert errno_of(os.readlink, fs.mountpoint) == errno.EINVAL
    assert path.read_bytes() == b"x"


# --- what a page cache shows: times, blocks, links, errors at the call --------------
#
# Lazy mode holds unsynced data in chaosfs's memory, as a kernel's page cache holds
# it; what a program sees must not tell the two apart. Each test does the same on
# the native file system and compares.

TICK = 0.02  # longer than a file system clock tick (4 ms at HZ=250)


def _times(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_ctime_ns


def _changes(path: Path, fd: int) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("write", lambda: os.pwrite(fd, b"y", 10)),
        ("ftruncate down", lambda: os.ftruncate(fd, 50)),
        ("ftruncate up", lambda: os.ftruncate(fd, 5000)),
        ("truncate", lambda: os.truncate(path, 60)),
        ("open O_TRUNC", lambda: os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))),
        ("append", lambda: os.write(fd, b"z")),
    ]


def test_writes_and_truncates_change_mtime_and_ctime_at_the_call(fs, native):
    for base in (fs.mountpoint, native):
        path = base / "f"
        path.write_bytes(b"x" * 100)
        fd = os.open(path, os.O_RDWR)
        try:
            for what, change in _changes(path, fd):
                before = _times(path)
                time.sleep(TICK)
                change()
                after = _times(path)
                assert after[0] > before[0], (base, what, "mtime")
                assert after[1] > before[1], (base, what, "ctime")
                assert after[1] >= after[0], (base, what)
        finally:
            os.close(fd)


def test_fsync_changes_no_time(fs, native):
    for base in (fs.mountpoint, native):
        path = base / "f"
        with open(path, "wb") as f:
            f.write(b"data" * 5000)
            f.flush()
            before = os.stat(path)
            time.sleep(TICK)
            os.fsync(f.fileno())
        after = os.stat(path)
        assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)
        assert after.st_size == 20000


def test_a_time_set_after_unsynced_writes_survives_the_write_back(fs, native):
    # touch -d, cp -p, tar and rsync -t set mtime after writing; an fsync (or a
    # write-back) must not replace it with its own time.
    for base in (fs.mountpoint, native):
        path = base / "f"
        with open(path, "wb") as f:
            f.write(b"data" * 1000)
            f.flush()
            os.utime(path, ns=(1_000_000_000, 2_000_000_000))
            ctime = os.stat(path).st_ctime_ns
            time.sleep(TICK)
            os.fsync(f.fileno())
        st = os.stat(path)
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 2_000_000_000), base
        assert st.st_ctime_ns == ctime, base
        if base == fs.mountpoint:  # the disk has it too (lazy mode wrote it back)
            assert os.stat(fs.original / "f").st_mtime_ns == 2_000_000_000
        # And a write after it is a new change again.
        with open(path, "ab") as f:
            f.write(b"more")
        assert os.stat(path).st_mtime_ns > 2_000_000_000


def test_blocks_count_unsynced_data(fs, native):
    shown = {}
    for base in (fs.mountpoint, native):
        (base / "synced").write_bytes(b"s" * 100_000)
        fd = os.open(base / "synced", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        (base / "fresh").write_bytes(b"f" * 100_000)  # never synced
        with open(base / "synced", "wb") as f:  # O_TRUNC, then half as much, unsynced
            f.write(b"n" * 50_000)
        shown[base] = (os.stat(base / "fresh").st_blocks, os.stat(base / "synced").st_blocks)
    assert shown[fs.mountpoint] == shown[native]
    assert shown[native][0] * 512 >= 100_000


def test_the_mount_root_counts_only_the_programs_directories(fs, native):
    for base in (fs.mountpoint, native):
        os.mkdir(base / "a")
        os.mkdir(base / "b")
    assert os.stat(fs.mountpoint).st_nlink == os.stat(native).st_nlink
    os.rmdir(fs.path("b"))
    os.rmdir(native / "b")
    assert os.stat(fs.mountpoint).st_nlink == os.stat(native).st_nlink


def test_a_size_past_the_largest_file_fails_at_the_call(fs, native):
    huge = 1 << 62  # past ext4's 16 TiB; a file system that allows it allows it natively too
    results = {}
    for base in (fs.mountpoint, native):
        path = base / "f"
        path.write_bytes(b"x")
        fd = os.open(path, os.O_RDWR)
        try:
            results[base] = (
                errno_of(os.truncate, path, huge),
                errno_of(os.ftruncate, fd, huge),
                errno_of(os.pwrite, fd, b"y", huge),
                errno_of(os.fsync, fd),  # nothing was left to fail later
            )
        finally:
            os.close(fd)
        assert path.read_bytes() == b"x" or os.stat(path).st_size == huge
    assert results[fs.mountpoint] == results[native]


def test_lazy_mode_bookkeeping_is_invisible_and_its_trash_emptied(fs):
    trash = ".chaosfs-trash"
    assert os.listdir(fs.mountpoint) == []
    assert errno_of(os.stat, fs.path(trash)) == errno.ENOENT
    for i in range(100):
        fs.path(f"f{i}").write_bytes(b"x")
    os.mkdir(fs.path("d"))
    for i in range(100):
        os.unlink(fs.path(f"f{i}"))
    os.rmdir(fs.path("d"))
    assert os.listdir(fs.mountpoint) == []
    assert errno_of(os.rename, fs.path("nothing"), fs.path(trash)) == errno.ENOENT
    fd = os.open(fs.mountpoint, os.O_RDONLY)
    try:
        os.fsync(fd)  # the removals are durable: nothing left to bring back
    finally:
        os.close(fd)
    if "-lazy" in fs.extra:
        assert os.listdir(fs.original / trash) == []


@contextlib.contextmanager
def small_file_system(where: Path, size: str = "2m") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``where``, unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "chaosfs-test", str(where)],
                   check=True)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(path: Path) -> tuple[int, int]:
    """Write 64 KiB at a time until the file system says no: (bytes written, errno)."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while written < 64 << 20:
            try:
                written += os.write(fd, b"z" * (64 << 10))
            except OSError as exc:
                return written, exc.errno
    finally:
        os.close(fd)
    return written, 0


@pytest.mark.parametrize("mode", list(MODES))
def test_out_of_space_is_told_at_the_write(make_sidecar, tmp_path, mode):
    sidecar = make_sidecar(bus=False, start=False, extra=MODES[mode])
    with small_file_system(sidecar.original), small_file_system(tmp_path / "small-native"):
        sidecar.start(bus=False)
        try:
            above = _fill(sidecar.path("big"))
            native = _fill(tmp_path / "small-native" / "big")
            # At the write, as natively: not later at fsync or a write-back.
            assert above[1] == native[1] == errno.ENOSPC, (above, native)
            assert abs(above[0] - native[0]) <= 128 << 10, (above, native)
            assert sidecar.path("big").stat().st_size == above[0]
            # Freeing the space makes room again, without a directory fsync.
            os.unlink(sidecar.path("big"))
            wait_for(lambda: _fill(sidecar.path("again"))[0] >= native[0] - (128 << 10),
                     what="the space of the deleted file")  # fmt: skip
        finally:
            sidecar.stop()
