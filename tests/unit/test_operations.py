"""The FUSE handlers called in process, as the kernel would call them, without a mount.

``ChaosOperations`` (the passthrough) and ``LazyOperations`` (lazy mode, the page
cache that a power cut empties) run under trio against a temporary directory, with
a stand-in for pyfuse3's request context, much as s3ql tests its Operations class.
What reaches the backing directory is checked on the directory itself. Fault rules
are set on the same engine between calls, as the bus thread sets them, and must
take effect on the very next call. The kernel's side (page cache, attribute
caching, permissions) needs a real mount and stays in the system tests
(tests/test_faults.py, tests/test_lazy.py, tests/test_posix.py).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing
from pyfuse3 import FUSEError

from chaosbus.protocol import parse_lazy
from chaosbus.rules import FaultRule
from chaosfs.backing import Backing, DirectBacking
from chaosfs.errnos import fuse_error, fuse_errors
from chaosfs.faults import FaultEngine
from chaosfs.inodes import InodeTable
from chaosfs.lazyfs import TRASH, LazyOperations
from chaosfs.passthrough import ChaosOperations, FileHandle

ROOT = pyfuse3.ROOT_INODE


@dataclass
class Ctx:
    """What pyfuse3 tells a handler about the caller (its RequestContext)."""

    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    pid: int = field(default_factory=os.getpid)
    umask: int = 0o022


@dataclass
class Fields:
    """Which attributes a setattr changes (pyfuse3's SetattrFields)."""

    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False


class Fs:
    """One chaosfs, plain or lazy, over a backing directory, and the engine it asks."""

    def __init__(self, backing: Path, lazy: bool) -> None:
        self.backing = backing
        self.table = InodeTable(os.open(backing, os.O_PATH | os.O_DIRECTORY))
        self.engine = FaultEngine(self.table)
        self.ops: ChaosOperations
        if lazy:
            self.ops = LazyOperations(self.table, self.engine, 1.0, 1 << 20)
        else:
            self.ops = ChaosOperations(self.table, self.engine, 1.0)
        self.ctx = Ctx()

    def rule(self, **wire: Any) -> None:
        self.engine.set_rules([FaultRule.from_wire({"id": "r", **wire})])

    async def lookup(self, path: str) -> int:
        node = ROOT
        for part in path.split("/"):
            entry = await self.ops.lookup(node, part.encode(), self.ctx)  # type: ignore[arg-type]
            node = entry.st_ino
            if node == 0:
                return 0
        return node

    async def create(self, path: str, data: bytes = b"", mode: int = 0o644) -> int:
        parent, _, name = path.rpartition("/")
        parent_id = await self.lookup(parent) if parent else ROOT
        info, entry = await self.ops.create(
            parent_id,
            name.encode(),
            stat.S_IFREG | mode,
            os.O_RDWR,
            self.ctx,  # type: ignore[arg-type]
        )
        assert entry.st_ino != 0
        if data:
            assert await self.ops.write(info.fh, 0, data) == len(data)
        return info.fh

    async def open(self, path: str, flags: int = os.O_RDWR, ctx: Ctx | None = None) -> int:
        info = await self.ops.open(await self.lookup(path), flags, ctx or self.ctx)  # type: ignore[arg-type]
        return info.fh

    async def read(self, path: str, size: int = 1 << 16, ctx: Ctx | None = None) -> bytes:
        fh = await self.open(path, os.O_RDONLY, ctx)
        try:
            return await self.ops.read(fh, 0, size)
        finally:
            await self.ops.release(fh)

    async def size(self, path: str) -> int:
        entry = await self.ops.getattr(await self.lookup(path), self.ctx)  # type: ignore[arg-type]
        return entry.st_size

    def on_disk(self, path: str) -> bytes | None:
        try:
            return (self.backing / path).read_bytes()
        except FileNotFoundError:
            return None

    def close(self) -> None:
        for fh in [*self.ops.files, *self.ops.dirs]:
            os.close(fh)
        if isinstance(self.ops, LazyOperations):
            self.ops.make_all_durable()  # closes the table too
        self.table.close_all()
        os.close(self.table.root.fd)


@pytest.fixture(params=["plain", "lazy"])
def fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fs]:
    made = Fs(tmp_path, lazy=request.param == "lazy")
    yield made
    made.close()


@pytest.fixture
def lazy(tmp_path: Path) -> Iterator[Fs]:
    made = Fs(tmp_path, lazy=True)
    yield made
    made.close()


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run a test body under trio with a virtual clock: a latency fault's wait is
    measured on it, and costs no real time."""
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def is_lazy(fs: Fs) -> bool:
    return isinstance(fs.ops, LazyOperations)


def raises_errno(code: int) -> pytest.RaisesExc[FUSEError]:
    return pytest.raises(FUSEError, check=lambda e: e.errno == code)


# --- names and data -------------------------------------------------------------------------


def test_create_write_read_and_the_sizes_agree(fs: Fs) -> None:
    async def body() -> None:
        fh = await fs.create("f", b"hello world")
        assert await fs.ops.read(fh, 6, 100) == b"world"
        await fs.ops.release(fh)
        assert await fs.read("f") == b"hello world"
        assert await fs.size("f") == 11

    run(body)
    # Lazy mode keeps the data until the file is synced; plain mode writes through.
    assert fs.on_disk("f") == (b"" if is_lazy(fs) else b"hello world")


def test_a_created_file_belongs_to_the_caller_with_the_mode_it_asked_for(fs: Fs) -> None:
    async def body() -> None:
        fh = await fs.create("mine", mode=0o640)
        await fs.ops.release(fh)

    run(body)
    st = os.stat(fs.backing / "mine")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (os.getuid(), os.getgid(), 0o640)


def test_lookup_finds_what_exists_and_answers_a_missing_name_with_no_node(fs: Fs) -> None:
    (fs.backing / "here").write_bytes(b"x")

    async def body() -> None:
        assert await fs.lookup("here") != 0
        assert await fs.lookup("missing") == 0  # a negative entry the kernel may cache

    run(body)


def test_fsync_makes_the_data_durable(fs: Fs) -> None:
    async def body() -> None:
        fh = await fs.create("f", b"synced")
        await fs.ops.fsync(fh, False)
        await fs.ops.release(fh)

    run(body)
    assert fs.on_disk("f") == b"synced"


def test_rename_moves_the_name(fs: Fs) -> None:
    async def body() -> None:
        fh = await fs.create("old", b"data")
        await fs.ops.fsync(fh, False)
        await fs.ops.release(fh)
        await fs.ops.rename(ROOT, b"old", ROOT, b"new", 0, fs.ctx)  # type: ignore[arg-type]
        assert await fs.lookup("old") == 0
        assert await fs.read("new") == b"data"

    run(body)
    assert fs.on_disk("new") == b"data" and fs.on_disk("old") is None


def test_unlink_removes_the_name(fs: Fs) -> None:
    (fs.backing / "gone").write_bytes(b"x")

    async def body() -> None:
        await fs.lookup("gone")
        await fs.ops.unlink(ROOT, b"gone", fs.ctx)  # type: ignore[arg-type]
        assert await fs.lookup("gone") == 0

    run(body)
    assert fs.on_disk("gone") is None  # lazy mode parks it in the hidden trash


def test_setattr_truncates_and_changes_the_mode(fs: Fs) -> None:
    (fs.backing / "t").write_bytes(b"0123456789")
    os.chmod(fs.backing / "t", 0o644)

    async def body() -> None:
        node = await fs.lookup("t")
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 4
        attr.st_mode = stat.S_IFREG | 0o600
        entry = await fs.ops.setattr(
            node, attr, Fields(update_size=True, update_mode=True), None, fs.ctx
        )  # type: ignore[arg-type]
        assert entry.st_size == 4 and stat.S_IMODE(entry.st_mode) == 0o600
        assert await fs.read("t") == b"0123"

    run(body)
    assert stat.S_IMODE(os.stat(fs.backing / "t").st_mode) == 0o600
    assert fs.on_disk("t") == (b"0123456789" if is_lazy(fs) else b"0123")


def test_mkdir_and_a_file_inside(fs: Fs) -> None:
    async def body() -> None:
        entry = await fs.ops.mkdir(ROOT, b"d", stat.S_IFDIR | 0o755, fs.ctx)  # type: ignore[arg-type]
        assert stat.S_ISDIR(entry.st_mode)
        fh = await fs.create("d/f", b"in d")
        await fs.ops.release(fh)
        assert await fs.read("d/f") == b"in d"

    run(body)
    assert (fs.backing / "d").is_dir()


def test_an_unknown_node_is_stale(fs: Fs) -> None:
    async def body() -> None:
        with raises_errno(errno.ESTALE):
            await fs.ops.getattr(987654, fs.ctx)  # type: ignore[arg-type]

    run(body)


# --- a fault rule takes effect on the next call -------------------------------------------


def test_an_errno_rule_fails_the_next_read_and_recovering_heals_it(fs: Fs) -> None:
    (fs.backing / "f").write_bytes(b"payload")

    async def body() -> None:
        fh = await fs.open("f", os.O_RDONLY)
        assert await fs.ops.read(fh, 0, 100) == b"payload"
        fs.rule(action="errno", errno="EIO", methods=["read"], path="f")
        with raises_errno(errno.EIO):
            await fs.ops.read(fh, 0, 100)  # the same open file: the next call fails
        fs.engine.recover_all()
        assert await fs.ops.read(fh, 0, 100) == b"payload"
        await fs.ops.release(fh)

    run(body)


def test_a_rule_on_create_refuses_the_name_and_makes_nothing(fs: Fs) -> None:
    fs.rule(action="errno", errno="EROFS", methods=["create", "mkdir"], path="ro*")

    async def body() -> None:
        with raises_errno(errno.EROFS):
            await fs.create("ro-file")
        with raises_errno(errno.EROFS):
            await fs.ops.mkdir(ROOT, b"ro-dir", stat.S_IFDIR | 0o755, fs.ctx)  # type: ignore[arg-type]
        fh = await fs.create("rw-file")
        await fs.ops.release(fh)

    run(body)
    assert sorted(os.listdir(fs.backing)) == sorted(
        ["rw-file", *([TRASH.decode()] if is_lazy(fs) else [])]
    )


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("unlink", lambda fs: fs.ops.unlink(ROOT, b"f", fs.ctx)),
        ("rename", lambda fs: fs.ops.rename(ROOT, b"f", ROOT, b"g", 0, fs.ctx)),
        ("getattr", None),
        ("fsync", None),
    ],
)
def test_rules_on_names_and_syncs_fail_the_call_and_change_nothing(
    fs: Fs, method: str, call: Callable[[Fs], Awaitable[Any]] | None
) -> None:
    (fs.backing / "f").write_bytes(b"kept")

    async def body() -> None:
        node = await fs.lookup("f")
        fh = await fs.open("f")
        fs.rule(action="errno", errno="EPERM", methods=[method], path="f")
        with raises_errno(errno.EPERM):
            if call is not None:
                await call(fs)
            elif method == "getattr":
                await fs.ops.getattr(node, fs.ctx)  # type: ignore[arg-type]
            else:
                await fs.ops.fsync(fh, False)
        await fs.ops.release(fh)

    run(body)
    assert fs.on_disk("f") == b"kept" and fs.on_disk("g") is None


def test_latency_holds_the_call_for_the_delay(fs: Fs) -> None:
    (fs.backing / "f").write_bytes(b"slow")

    async def body() -> None:
        fh = await fs.open("f", os.O_RDONLY)
        fs.rule(action="latency", delay=2.5, methods=["read"])
        started = trio.current_time()
        assert await fs.ops.read(fh, 0, 10) == b"slow"
        assert trio.current_time() - started == pytest.approx(2.5)
        await fs.ops.release(fh)

    run(body)


def test_count_and_after_shape_which_calls_fail(fs: Fs) -> None:
    (fs.backing / "f").write_bytes(b"x")

    async def body() -> list[str]:
        fh = await fs.open("f", os.O_RDONLY)
        fs.rule(action="errno", errno="EIO", methods=["read"], after=1, count=2)
        out = []
        for _ in range(5):
            try:
                out.append((await fs.ops.read(fh, 0, 1)).decode())
            except FUSEError as exc:
                out.append(errno.errorcode[exc.errno])
        await fs.ops.release(fh)
        return out

    assert run(body) == ["x", "EIO", "EIO", "x", "x"]


def test_caller_uid_faults_only_that_callers_opens(fs: Fs) -> None:
    (fs.backing / "f").write_bytes(b"mine")
    other = Ctx(uid=os.getuid() + 4242)
    fs.rule(action="errno", errno="EACCES", methods=["read"], caller_uid=other.uid)

    async def body() -> None:
        assert await fs.read("f") == b"mine"
        with raises_errno(errno.EACCES):
            await fs.read("f", ctx=other)  # reads are the opener's

    run(body)


def test_mistake_and_short_change_what_a_read_returns(fs: Fs) -> None:
    data = bytes(range(1, 101))
    (fs.backing / "f").write_bytes(data)

    async def body() -> tuple[bytes, bytes]:
        fs.rule(action="mistake", filling="zero", max_length=8, methods=["read"], seed=1)
        corrupted = await fs.read("f")
        fs.rule(action="short", short_bytes=30, methods=["read"])
        short = await fs.read("f")
        return corrupted, short

    corrupted, short = run(body)
    assert len(corrupted) == len(data) and corrupted != data
    assert 1 <= sum(a != b for a, b in zip(corrupted, data, strict=True)) <= 8
    assert short == data[:30]  # a read fault makes the handle bypass the page cache
    assert fs.on_disk("f") == data  # reads never touch the disk


def test_a_mistake_on_write_reaches_the_data_written(fs: Fs) -> None:
    fs.rule(action="mistake", filling="zero", max_length=4, methods=["write"], seed=2)
    data = b"\xff" * 64

    async def body() -> bytes:
        fh = await fs.create("w", data)
        await fs.ops.fsync(fh, False)
        await fs.ops.release(fh)
        fs.engine.recover_all()
        return await fs.read("w")

    written = run(body)
    assert len(written) == 64 and 1 <= written.count(0) <= 4
    assert fs.on_disk("w") == written


def test_an_enospc_quota_cuts_the_write_at_the_quota(fs: Fs) -> None:
    async def body() -> list[Any]:
        fh = await fs.create("big")
        fs.rule(action="enospc", quota=25, path="big")
        results: list[Any] = []
        offset = 0
        for _ in range(4):  # a writer that carries on where the last write ended
            try:
                written = await fs.ops.write(fh, offset, b"z" * 10)
            except FUSEError as exc:
                results.append(errno.errorcode[exc.errno])
            else:
                results.append(written)
                offset += written
        await fs.ops.fsync(fh, False)
        await fs.ops.release(fh)
        return results

    assert run(body) == [10, 10, 5, "ENOSPC"]
    assert fs.engine.describe()[0]["stats"]["quota_used"] == 25
    assert fs.engine.describe()[0]["stats"]["fired"] == 2  # the cut write and the refused one
    assert fs.on_disk("big") == b"z" * 25


def test_a_write_past_the_end_of_file_cannot_grow_it_past_the_quota(fs: Fs) -> None:
    async def body() -> Any:
        fh = await fs.create("holey")
        fs.rule(action="enospc", quota=25, path="holey")
        assert await fs.ops.write(fh, 0, b"z" * 25) == 25
        try:
            return await fs.ops.write(fh, 30, b"z" * 10)
        except FUSEError as exc:
            return errno.errorcode[exc.errno]
        finally:
            await fs.ops.fsync(fh, False)
            await fs.ops.release(fh)

    assert run(body) == "ENOSPC"
    assert fs.on_disk("holey") == b"z" * 25


def test_statfs_shows_the_tightest_quota_as_free_space(fs: Fs) -> None:
    block = os.statvfs(fs.backing).f_frsize

    async def body() -> tuple[int, int]:
        before = (await fs.ops.statfs(fs.ctx)).f_bavail  # type: ignore[arg-type]
        fs.rule(action="enospc", quota=5 * block + 7)
        during = (await fs.ops.statfs(fs.ctx)).f_bavail  # type: ignore[arg-type]
        return before, during

    before, during = run(body)
    assert during == min(before, 5)


def test_an_enospc_quota_refuses_a_truncate_that_grows_past_it(fs: Fs) -> None:
    (fs.backing / "t").write_bytes(b"")

    async def body() -> None:
        node = await fs.lookup("t")
        fs.rule(action="enospc", quota=100, path="t", errno="EDQUOT")
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 101
        with raises_errno(errno.EDQUOT):
            await fs.ops.setattr(node, attr, Fields(update_size=True), None, fs.ctx)  # type: ignore[arg-type]
        attr.st_size = 100
        entry = await fs.ops.setattr(node, attr, Fields(update_size=True), None, fs.ctx)  # type: ignore[arg-type]
        assert entry.st_size == 100

    run(body)


def test_attr_rules_change_what_getattr_shows_not_the_file(fs: Fs) -> None:
    (fs.backing / "f").write_bytes(b"12345")

    async def body() -> None:
        node = await fs.lookup("f")
        fs.rule(action="attr", attr={"size": 4096, "mode": 0o600}, path="f")
        entry = await fs.ops.getattr(node, fs.ctx)  # type: ignore[arg-type]
        assert entry.st_size == 4096 and stat.S_IMODE(entry.st_mode) == 0o600
        assert stat.S_ISREG(entry.st_mode)
        assert entry.attr_timeout == 0  # every stat must ask again while the rule holds
        fs.engine.recover_all()
        entry = await fs.ops.getattr(node, fs.ctx)  # type: ignore[arg-type]
        assert entry.st_size == 5 and entry.attr_timeout == 1.0

    run(body)
    assert os.stat(fs.backing / "f").st_size == 5


def test_a_dry_run_rule_changes_nothing_and_counts(fs: Fs) -> None:
    (fs.backing / "f").write_bytes(b"same")
    fs.rule(action="errno", errno="EIO", methods=["read"], dry_run=True)

    async def body() -> bytes:
        return await fs.read("f")

    assert run(body) == b"same"
    assert fs.engine.describe()[0]["stats"]["fired"] == 1


# --- lazy mode: what a power cut loses --------------------------------------------------------


def everything() -> Any:
    return parse_lazy({"op": "lose-unsynced", "path": "**"}).path_regex


def test_lazy_unsynced_data_is_reported_and_lost_synced_data_stays(lazy: Fs) -> None:
    async def body() -> dict[str, Any]:
        fh = await lazy.create("a", b"synced")
        await lazy.ops.fsync(fh, True)
        assert await lazy.ops.write(fh, 6, b" and more") == 9
        await lazy.ops.release(fh)
        fh = await lazy.create("b", b"never synced")
        await lazy.ops.release(fh)
        assert isinstance(lazy.ops, LazyOperations)
        report = lazy.ops.unsynced(everything())
        lost, _ = lazy.ops.lose(everything(), metadata=False)
        assert lost["files"] == report["files"]
        assert await lazy.read("a") == b"synced"
        assert await lazy.read("b") == b""
        return report

    report = run(body)
    assert report["files"] == {"a": 9, "b": 12} and report["bytes"] == 21
    assert lazy.on_disk("a") == b"synced"


def test_lazy_metadata_loss_undoes_what_no_directory_fsync_covered(lazy: Fs) -> None:
    (lazy.backing / "kept").write_bytes(b"old")

    async def body() -> None:
        fh = await lazy.create("durable", b"1")
        await lazy.ops.fsync(fh, False)
        await lazy.ops.release(fh)
        root = await lazy.ops.opendir(ROOT, lazy.ctx)  # type: ignore[arg-type]
        await lazy.ops.fsyncdir(root, False)
        await lazy.ops.releasedir(root)
        fh = await lazy.create("fresh", b"2")
        await lazy.ops.release(fh)
        await lazy.lookup("kept")
        await lazy.ops.unlink(ROOT, b"kept", lazy.ctx)  # type: ignore[arg-type]
        assert isinstance(lazy.ops, LazyOperations)
        report, _ = lazy.ops.lose(everything(), metadata=True)
        assert sorted((op["kind"], op["path"]) for op in report["dir_ops"]) == [
            ("create", "fresh"),
            ("unlink", "kept"),
        ]
        assert await lazy.lookup("fresh") == 0
        assert await lazy.read("kept") == b"old"  # the unlinked file comes back

    run(body)
    assert lazy.on_disk("durable") == b"1"
    assert lazy.on_disk("fresh") is None and lazy.on_disk("kept") == b"old"


def test_lazy_torn_write_keeps_a_prefix_of_the_unsynced_writes(lazy: Fs) -> None:
    async def body() -> dict[str, Any]:
        fh = await lazy.create("t", b"A" * 100)
        assert await lazy.ops.write(fh, 100, b"B" * 100) == 100
        await lazy.ops.release(fh)
        assert isinstance(lazy.ops, LazyOperations)
        action = parse_lazy({"op": "torn-write", "keep": 150})
        report, _ = lazy.ops.tear(action.path_regex, None, 150, False, 1)
        return report

    report = run(body)
    assert report["files"] == {"t": {"kept": 150, "lost": 50}}
    assert lazy.on_disk("t") == b"A" * 100 + b"B" * 50


def test_lazy_trash_is_hidden_from_the_mount(lazy: Fs) -> None:
    async def body() -> int:
        return await lazy.lookup(TRASH.decode())

    assert run(body) == 0
    assert (lazy.backing / TRASH.decode()).is_dir()


def test_lazy_status_counts_what_is_held(lazy: Fs) -> None:
    async def body() -> dict[str, Any]:
        fh = await lazy.create("s", b"x" * 1000)
        await lazy.ops.release(fh)
        assert isinstance(lazy.ops, LazyOperations)
        return lazy.ops.status()

    status = run(body)
    assert status["enabled"] is True and status["max_bytes"] == 1 << 20
    assert status["unsynced_files"] == 1 and status["unsynced_bytes"] == 1000
    assert status["pending_dir_ops"] == 1  # the create


# --- the seams: errno translation, the backing store, setattr's steps ------------------------


class _FailingBacking(DirectBacking):
    """The files themselves, except that reads fail without an errno and syncs fail
    with EROFS: what a backing store's own errors become for the caller."""

    def pread(self, handle: FileHandle, fh: int, size: int, off: int) -> bytes:
        raise OSError("failed, and said nothing more")

    def before_sync(self, handle: FileHandle) -> None:
        raise OSError(errno.EROFS, "read-only file system")


def test_a_backing_stores_errors_reach_the_caller_as_their_errno_or_eio(tmp_path: Path) -> None:
    fs = Fs(tmp_path, lazy=False)
    fs.ops = ChaosOperations(fs.table, fs.engine, 1.0, _FailingBacking(fs.table))
    (tmp_path / "f").write_bytes(b"data")

    async def body() -> None:
        fh = await fs.open("f")
        with raises_errno(errno.EIO):
            await fs.ops.read(fh, 0, 4)  # an OSError with no errno: EIO, never a crash
        with raises_errno(errno.EROFS):
            await fs.ops.fsync(fh, False)
        await fs.ops.release(fh)

    try:
        run(body)
    finally:
        fs.close()


def test_errno_translation_keeps_the_errno_and_lets_other_errors_through() -> None:
    with raises_errno(errno.ENOENT), fuse_errors:
        raise FileNotFoundError(errno.ENOENT, "missing")
    with raises_errno(errno.EIO), fuse_errors:
        raise OSError("no errno")
    with pytest.raises(KeyError), fuse_errors:
        raise KeyError("not a system call's failure")
    assert fuse_error(OSError(errno.ENOSPC, "full")).errno == errno.ENOSPC


def test_both_backing_stores_answer_the_whole_protocol(lazy: Fs) -> None:
    assert isinstance(lazy.ops, LazyOperations)
    wanted = {
        name
        for name, value in vars(Backing).items()
        if callable(value) and not name.startswith("_")
    }
    assert wanted >= {"pread", "pwrite", "truncate", "unlink", "rename", "made"}
    for store in (DirectBacking(lazy.table), lazy.ops.backing, lazy.ops.store):
        assert all(callable(getattr(store, name, None)) for name in wanted), store
    assert lazy.ops.backing is lazy.ops.store


def test_setattr_sets_times_and_owner_and_faults_each_change_by_its_own_method(fs: Fs) -> None:
    (fs.backing / "f").write_bytes(b"x")
    os.symlink("f", fs.backing / "link")
    st = os.lstat(fs.backing / "f")

    async def body() -> None:
        node = await fs.lookup("f")
        attr = pyfuse3.EntryAttributes()
        attr.st_atime_ns = 1_000_000_000
        attr.st_mtime_ns = 2_000_000_000
        attr.st_uid, attr.st_gid = st.st_uid, st.st_gid
        attr.st_mode = stat.S_IFREG | 0o640
        times = Fields(update_atime=True, update_mtime=True)
        entry = await fs.ops.setattr(node, attr, times, None, fs.ctx)  # type: ignore[arg-type]
        assert entry.st_mtime_ns == 2_000_000_000
        owner = Fields(update_uid=True, update_gid=True)
        entry = await fs.ops.setattr(node, attr, owner, None, fs.ctx)  # type: ignore[arg-type]
        assert (entry.st_uid, entry.st_gid) == (st.st_uid, st.st_gid)
        # A symlink's own times, by its own descriptor: the target keeps its times.
        link = await fs.lookup("link")
        attr.st_mtime_ns = 3_000_000_000
        await fs.ops.setattr(link, attr, Fields(update_mtime=True), None, fs.ctx)  # type: ignore[arg-type]
        fs.rule(action="errno", errno="EACCES", methods=["chmod"], path="f")
        with raises_errno(errno.EACCES):
            await fs.ops.setattr(node, attr, Fields(update_mode=True), None, fs.ctx)  # type: ignore[arg-type]
        attr.st_mtime_ns = 4_000_000_000
        entry = await fs.ops.setattr(node, attr, Fields(update_mtime=True), None, fs.ctx)  # type: ignore[arg-type]
        assert entry.st_mtime_ns == 4_000_000_000  # a chmod rule leaves utimens alone

    run(body)
    assert os.lstat(fs.backing / "link").st_mtime_ns == 3_000_000_000
    assert os.stat(fs.backing / "f").st_mtime_ns == 4_000_000_000
    assert stat.S_IMODE(os.stat(fs.backing / "f").st_mode) == 0o644  # the chmod failed
