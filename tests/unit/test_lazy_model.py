"""Lazy mode's pure core (chaosfs.lazy) against plain models of what it stands for.

A file is checked against two bytearrays: what the page cache shows (every write
and truncate applied in order) and what is durable (the backing file, changed
only by a flush or a torn write-back). The directory journal is checked against
a small in-memory tree on which its undo plans must apply exactly.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from chaosfs.lazy import DirtyFile, LazyCache, MetaJournal, TearPlan, Undo

# database=None: no .hypothesis directory in the work tree; failures print their example.
MACHINE = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class Backing:
    """A backing file in memory, whose pwrite takes at most ``chunk`` bytes a call."""

    def __init__(self, content: bytes = b"", chunk: int | None = None) -> None:
        self.data = bytearray(content)
        self.chunk = chunk
        self.pwrites = 0
        self.truncates: list[int] = []

    def pread(self, off: int, size: int) -> bytes:
        return bytes(self.data[off : off + size])

    def pwrite(self, buf, off: int) -> int:
        self.pwrites += 1
        view = memoryview(buf)
        if self.chunk is not None:
            view = view[: self.chunk]
        if off > len(self.data):
            self.data.extend(bytes(off - len(self.data)))
        self.data[off : off + len(view)] = view
        return len(view)

    def truncate(self, size: int) -> None:
        self.truncates.append(size)
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))

    def read_via(self, f: DirtyFile, off: int, size: int) -> bytes:
        return f.read(off, size, self.pread, len(self.data))


def replay(base: bytes | bytearray, ops: list[tuple[int, bytes | None]]) -> bytearray:
    """The file after ``ops`` in order, one at a time: the reference for everything."""
    out = bytearray(base)
    for off, data in ops:
        if data is None:
            if off < len(out):
                del out[off:]
            else:
                out.extend(bytes(off - len(out)))
        elif data:
            if off > len(out):
                out.extend(bytes(off - len(out)))
            out[off : off + len(data)] = data
    return out


def check_pieces(f: DirtyFile) -> None:
    extents = f.extents()
    assert all(a < b for a, b in extents)
    assert all(extents[i][1] <= extents[i + 1][0] for i in range(len(extents) - 1))
    assert f.dirty_bytes == sum(b - a for a, b in extents)


# --- DirtyFile: examples ---------------------------------------------------------------


def test_reads_overlay_pending_writes_on_the_backing_bytes() -> None:
    backing = Backing(b"abcdefghij")
    f = DirtyFile()
    f.write(2, b"XY")
    f.write(12, b"Z")  # past the end: a hole of two zeros before it
    assert backing.read_via(f, 0, 100) == b"abXYefghij\0\0Z"
    assert backing.read_via(f, 3, 2) == b"Ye"
    assert backing.read_via(f, 13, 5) == b""
    assert f.size(len(backing.data)) == 13
    assert backing.data == b"abcdefghij"  # nothing reaches the backing file before a flush


def test_a_truncate_hides_the_backing_bytes_it_cut_even_after_regrowing() -> None:
    backing = Backing(b"abcdefghij")
    f = DirtyFile()
    f.truncate(3)
    f.truncate(6)  # regrown: zeros, not "def"
    f.write(8, b"Q")
    assert backing.read_via(f, 0, 20) == b"abc\0\0\0\0\0Q"
    f.flush(backing.pwrite, backing.truncate)
    assert backing.data == b"abc\0\0\0\0\0Q"
    assert backing.truncates == [3]  # the final size comes from the write


def test_a_truncate_that_extends_past_every_write_sets_the_final_size() -> None:
    backing = Backing(b"abc")
    f = DirtyFile()
    f.write(1, b"Z")
    f.truncate(10)
    f.flush(backing.pwrite, backing.truncate)
    assert backing.data == b"aZc" + bytes(7)
    assert backing.truncates == [10]  # the floor truncate already set it


def test_last_write_wins_and_overwrites_do_not_count_twice() -> None:
    backing = Backing()
    f = DirtyFile()
    for fill in b"abc":
        f.write(0, bytes([fill]) * 8)
    f.write(4, b"zz")
    assert backing.read_via(f, 0, 8) == b"cccczzcc"
    assert (f.dirty_bytes, f.held_bytes) == (8, 26)
    check_pieces(f)
    assert f.flush(backing.pwrite, backing.truncate) == 8
    assert backing.data == b"cccczzcc"
    assert not f.pending and f.held_bytes == 0


def test_flush_joins_small_adjacent_writes_into_one_pwrite() -> None:
    backing = Backing()
    f = DirtyFile()
    for i in range(64):
        f.write(i * 512, bytes([i]) * 512)
    f.write(1 << 20, b"far")  # not adjacent: a write of its own
    f.flush(backing.pwrite, backing.truncate)
    assert backing.pwrites == 2
    assert backing.data[:32768] == b"".join(bytes([i]) * 512 for i in range(64))


def test_a_big_write_is_held_without_a_copy() -> None:
    data = bytes(1 << 20)
    f = DirtyFile()
    f.write(0, data)
    f.write(100, b"x")  # splits it: both halves still point into the caller's bytes
    assert f._bufs[0] is data and f._bufs[2] is data


def test_zero_length_writes_change_nothing() -> None:
    f = DirtyFile()
    f.write(100, b"")
    assert not f.pending
    assert f.size(5) == 5


def test_short_backing_writes_are_retried_to_completion() -> None:
    backing = Backing(chunk=3)
    f = DirtyFile()
    f.write(0, b"0123456789")
    f.flush(backing.pwrite, backing.truncate)
    assert backing.data == b"0123456789"
    assert backing.pwrites == 4


def test_a_failed_flush_forgets_nothing_and_a_retry_succeeds() -> None:
    backing = Backing(b"abcdefgh")
    f = DirtyFile()
    f.truncate(2)
    f.write(4, b"WXYZ")
    f.write(0, b"Q")

    def broken(buf, off: int) -> int:
        raise OSError(5, "EIO")

    with pytest.raises(OSError):
        f.flush(broken, backing.truncate)
    assert f.pending and backing.read_via(f, 0, 100) == b"Qb\0\0WXYZ"
    f.flush(backing.pwrite, backing.truncate)
    assert backing.data == b"Qb\0\0WXYZ"


def test_drop_returns_to_the_durable_bytes() -> None:
    backing = Backing(b"durable")
    f = DirtyFile()
    f.write(0, b"DUR")
    f.truncate(3)
    assert f.drop() == 3
    assert backing.read_via(f, 0, 100) == b"durable"


# --- DirtyFile: tearing ------------------------------------------------------------------


def torn_file() -> DirtyFile:
    f = DirtyFile()
    f.write(0, b"A" * 10)
    f.truncate(5)
    f.write(20, b"B" * 10)
    return f


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (0, TearPlan(0, 0, 0, 20, 3)),  # nothing survives
        (4, TearPlan(0, 4, 4, 16, 3)),  # part of the first write
        (10, TearPlan(1, 0, 10, 10, 3)),  # the first write whole; the truncate at the cut, not
        (11, TearPlan(2, 1, 11, 9, 3)),  # the truncate, and a byte of the second write
        (20, TearPlan(3, 0, 20, 0, 3)),  # everything
        (99, TearPlan(3, 0, 20, 0, 3)),
    ],
)
def test_the_offset_rule_cuts_the_write_stream_at_keep(keep: int, expected: TearPlan) -> None:
    assert torn_file().tear(keep=keep) == expected


def test_a_torn_write_keeps_whole_sectors_only() -> None:
    f = DirtyFile()
    f.write(100, bytes(5000))
    assert f.tear(keep=4000, align=512) == TearPlan(0, 3996, 3996, 1004, 1)  # up to 4096
    assert f.tear(keep=300, align=512) == TearPlan(0, 0, 0, 5000, 1)  # not one whole sector


def test_tearing_is_reproducible_with_a_seed() -> None:
    def plans(seed: int) -> list[TearPlan]:
        return [
            torn_file().tear(random.Random(seed)),
            torn_file().tear(random.Random(seed), whole_writes=True),
        ]

    assert plans(7) == plans(7)
    assert len({tuple(plans(seed)) for seed in range(30)}) > 3


def test_whole_write_tears_never_split_a_write() -> None:
    for seed in range(50):
        plan = torn_file().tear(random.Random(seed), whole_writes=True)
        assert plan.partial == 0 and plan.ops < 3  # something is always lost


def test_apply_tear_persists_the_prefix_and_forgets_the_rest() -> None:
    backing = Backing(b"0123456789" * 3)
    f = torn_file()
    plan = f.tear(keep=13)
    assert plan == TearPlan(2, 3, 13, 7, 3)
    f.apply_tear(plan, backing.pwrite, backing.truncate)
    assert backing.data == b"AAAAA" + bytes(15) + b"BBB"
    assert not f.pending


def test_a_plan_for_another_state_is_refused() -> None:
    f = torn_file()
    plan = f.tear(keep=3)
    f.write(0, b"later")
    with pytest.raises(ValueError):
        f.apply_tear(plan, Backing().pwrite, Backing().truncate)
    with pytest.raises(TypeError):
        f.tear()


# --- DirtyFile: the model --------------------------------------------------------------------


class DirtyFileMachine(RuleBasedStateMachine):
    @initialize(content=st.binary(max_size=300), chunk=st.sampled_from([None, 37]))
    def start(self, content: bytes, chunk: int | None) -> None:
        self.f = DirtyFile()
        self.backing = Backing(content, chunk)
        self.durable = bytearray(content)  # what a power cut leaves
        self.shown = bytearray(content)  # what the page cache shows
        self.log: list[tuple[int, bytes | None]] = []  # since the last flush, in order

    @rule(off=st.integers(0, 400), data=st.binary(max_size=120))
    def write(self, off: int, data: bytes) -> None:
        self.f.write(off, data)
        if data:
            self.log.append((off, data))
            self.shown = replay(self.shown, [(off, data)])

    @rule(size=st.integers(0, 500))
    def truncate(self, size: int) -> None:
        self.f.truncate(size)
        self.log.append((size, None))
        self.shown = replay(self.shown, [(size, None)])

    @rule(off=st.integers(0, 520), size=st.integers(0, 200))
    def read(self, off: int, size: int) -> None:
        assert self.backing.read_via(self.f, off, size) == bytes(self.shown[off : off + size])

    @rule()
    def flush(self) -> None:
        written = self.f.flush(self.backing.pwrite, self.backing.truncate)
        assert written <= sum(len(d) for _, d in self.log if d is not None)
        self.durable = bytearray(self.shown)
        self.log = []

    @rule()
    def drop(self) -> None:
        self.f.drop()
        self.shown = bytearray(self.durable)
        self.log = []

    @rule(
        seed=st.integers(0, 2**32),
        whole=st.booleans(),
        align=st.sampled_from([1, 4, 64]),
    )
    def tear_at_random(self, seed: int, whole: bool, align: int) -> None:
        plan = self.f.tear(random.Random(seed), whole_writes=whole, align=align)
        assert plan == self.f.tear(random.Random(seed), whole_writes=whole, align=align)
        if whole:
            assert plan.partial == 0
        self.apply(plan, align)

    @rule(keep=st.integers(0, 600), align=st.sampled_from([1, 8]))
    def tear_at_offset(self, keep: int, align: int) -> None:
        plan = self.f.tear(keep=keep, align=align)
        assert plan.kept <= keep or not self.log
        self.apply(plan, align)

    def apply(self, plan: TearPlan, align: int) -> None:
        written = [d for _, d in self.log if d is not None]
        assert plan.of == len(self.log)
        assert plan.kept + plan.lost == sum(map(len, written))
        prefix = self.log[: plan.ops]
        assert plan.kept == sum(len(d) for _, d in prefix if d is not None) + plan.partial
        if plan.partial:
            off, data = self.log[plan.ops]
            assert data is not None and 0 < plan.partial < len(data)
            assert (off + plan.partial) % align == 0
            prefix = [*prefix, (off, data[: plan.partial])]
        self.f.apply_tear(plan, self.backing.pwrite, self.backing.truncate)
        self.durable = replay(self.durable, prefix)
        self.shown = bytearray(self.durable)
        self.log = []

    @invariant()
    def agrees(self) -> None:
        assert self.backing.data == self.durable  # only flushes and tears reach it
        assert self.f.size(len(self.backing.data)) == len(self.shown)
        assert self.f.pending == bool(self.log)
        assert self.f.held_bytes == sum(len(d) for _, d in self.log if d is not None)
        check_pieces(self.f)


TestDirtyFileModel = DirtyFileMachine.TestCase
TestDirtyFileModel.settings = MACHINE


# --- LazyCache ---------------------------------------------------------------------------


def test_over_budget_the_oldest_dirtied_files_are_flushed_early() -> None:
    cache: LazyCache[int] = LazyCache(max_bytes=100)
    files = {1: Backing(), 2: Backing(), 3: Backing()}
    assert cache.write(1, 0, b"a" * 60) == []
    assert cache.write(2, 0, b"b" * 30) == []
    assert cache.write(3, 0, b"c" * 30) == [1]  # 120 held: file 1 alone frees enough
    assert cache.flush(1, files[1].pwrite, files[1].truncate, early=True) == 60
    assert (cache.held, cache.stats.early_flushes, cache.stats.early_bytes) == (60, 1, 60)
    assert files[1].data == b"a" * 60
    # One write bigger than the budget: the file just written goes too, oldest first.
    assert cache.write(1, 0, b"A" * 200) == [2, 3, 1]
    # Overwrites are held too (a torn write-back may replay them): they count.
    for _ in range(3):
        cache.write(2, 0, b"z" * 10)
    second = cache.get(2)
    assert second is not None and (second.dirty_bytes, second.held_bytes) == (30, 60)
    assert cache.held == 200 + 60 + 30


def test_budget_skips_files_that_only_hold_a_size_change() -> None:
    cache: LazyCache[str] = LazyCache(max_bytes=10)
    cache.truncate("t", 0)
    assert cache.write("w", 0, b"x" * 11) == ["w"]
    assert cache.write("w", 0, b"") == []


def test_a_durable_flush_is_counted_apart_from_early_ones() -> None:
    cache: LazyCache[int] = LazyCache(max_bytes=1000)
    backing = Backing(b"old")
    cache.write(1, 0, b"new!")
    assert cache.read(1, 0, 10, backing.pread, len(backing.data)) == b"new!"
    assert cache.size(1, len(backing.data)) == 4
    cache.flush(1, backing.pwrite, backing.truncate)
    assert (cache.stats.flushes, cache.stats.flushed_bytes, cache.stats.early_flushes) == (1, 4, 0)
    assert 1 not in cache and cache.held == 0
    assert cache.flush(1, backing.pwrite, backing.truncate) == 0  # nothing left to do
    # A clean file reads and sizes straight from the backing file.
    assert cache.read(1, 0, 10, backing.pread, len(backing.data)) == b"new!"
    assert cache.size(1, 4) == 4


def test_report_and_lose_on_matching_files() -> None:
    cache: LazyCache[int] = LazyCache(max_bytes=1 << 20)
    paths = {1: "db/wal", 2: "db/data", 3: "logs/app.log"}
    cache.write(1, 0, b"w" * 100)
    cache.write(2, 4096, b"d" * 10)
    cache.truncate(3, 0)
    assert cache.report(paths.__getitem__) == {"db/wal": 100, "db/data": 10, "logs/app.log": 0}
    assert cache.report() == {1: 100, 2: 10, 3: 0}
    lost = cache.lose(lambda k: paths[k].startswith("db/"))
    assert lost == {1: 100, 2: 10}
    assert (cache.stats.lost_files, cache.stats.lost_bytes) == (2, 110)
    assert list(cache.report()) == [3] and cache.held == 0
    assert cache.lose() == {3: 0} and len(cache) == 0


def test_tear_plans_per_file_do_not_depend_on_other_dirty_files() -> None:
    def cache_with(extra: bool) -> LazyCache[int]:
        cache: LazyCache[int] = LazyCache(max_bytes=1 << 20)
        if extra:
            cache.write(9, 0, b"other" * 50)
        for i in range(5):
            cache.write(1, i * 100, bytes([i]) * 100)
        return cache

    names = {1: "db/wal", 9: "x"}.__getitem__
    a = cache_with(False).tear(None, "seed", name=names)
    b = cache_with(True).tear(lambda k: k == 1, "seed", name=names)
    assert a == b and list(a) == [1]
    cache = cache_with(True)
    plan = cache.tear(None, 3, keep=250)[1]
    assert plan == TearPlan(2, 50, 250, 250, 5)
    backing = Backing()
    cache.apply_tear(1, plan, backing.pwrite, backing.truncate)
    assert backing.data == bytes(100) + bytes([1]) * 100 + bytes([2]) * 50
    assert 1 not in cache and cache.held == 250
    assert (cache.stats.torn_files, cache.stats.torn_kept_bytes) == (1, 250)
    assert cache.stats.torn_lost_bytes == 250


def test_forget_is_not_a_loss() -> None:
    cache: LazyCache[int] = LazyCache(max_bytes=100)
    cache.write(1, 0, b"gone with the file")
    assert cache.forget(1) == 18 and cache.forget(1) == 0
    assert cache.held == 0 and cache.stats.lost_files == 0


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LazyCache(0)
    with pytest.raises(ValueError):
        MetaJournal(max_ops=0)


# --- MetaJournal: examples -------------------------------------------------------------

ROOT, A, B, D = 1, 2, 3, 5


def test_an_unsynced_create_is_undone_by_an_unlink() -> None:
    j: MetaJournal[int] = MetaJournal()
    assert j.create(ROOT, b"f") == []
    j.link(ROOT, b"g")
    plan = j.undo_plan()
    assert plan == [Undo("unlink", ROOT, b"g"), Undo("unlink", ROOT, b"f")]
    assert len(j) == 2  # a plan alone changes nothing
    assert j.lose() == plan
    assert len(j) == 0 and j.undo_plan() == []


def test_fsyncdir_makes_that_directorys_ops_durable_and_hands_back_trash() -> None:
    j: MetaJournal[int] = MetaJournal()
    trash = j.trash_name()
    j.unlink(A, b"old", trash)
    j.create(B, b"other")
    durable = j.fsyncdir(A)
    assert [(op.kind, op.trash) for op in durable] == [("unlink", trash)]
    assert [op.kind for op in j.pending()] == ["create"]
    assert j.fsyncdir(A) == []
    assert j.trash_name() != trash


def test_an_unsynced_unlink_is_restored_from_the_trash() -> None:
    j: MetaJournal[int] = MetaJournal()
    j.unlink(A, b"f", b"7")
    j.create(A, b"f")  # a new file under the old name
    assert j.undo_plan() == [Undo("unlink", A, b"f"), Undo("restore", A, b"f", trash=b"7")]


def test_a_rename_is_undone_and_the_target_it_replaced_comes_back() -> None:
    j: MetaJournal[int] = MetaJournal()
    j.rename(A, b"tmp", B, b"db", trash=b"3")
    j.rename(A, b"x", B, b"y", exchange=True)
    assert j.undo_plan() == [
        Undo("exchange", A, b"x", B, b"y"),
        Undo("rename", B, b"db", A, b"tmp"),
        Undo("restore", B, b"db", trash=b"3"),
    ]


def test_a_rename_is_durable_by_either_directory_with_what_it_built_on() -> None:
    j: MetaJournal[int] = MetaJournal()
    j.create(A, b"f")
    j.create(A, b"unrelated")  # older and in a directory the rename changed: committed too
    j.rename(A, b"f", B, b"g")
    j.create(A, b"newer")  # newer than the rename, and A was not fsynced: stays
    durable = j.fsyncdir(B)
    assert [op.name for op in durable] == [b"f", b"unrelated", b"f"]
    assert j.undo_plan() == [Undo("unlink", A, b"newer")]


def test_a_durable_new_directory_is_lost_whole_if_its_own_entry_is_not() -> None:
    j: MetaJournal[int] = MetaJournal()
    j.mkdir(ROOT, b"d", child=D)
    j.create(D, b"f")
    assert [op.kind for op in j.fsyncdir(D)] == ["create"]  # fsync of d, not of its parent
    assert j.undo_plan() == [Undo("rmtree", ROOT, b"d")]


def test_a_durable_rmdir_takes_the_removals_inside_it_along() -> None:
    j: MetaJournal[int] = MetaJournal()
    j.unlink(D, b"f", b"1")
    j.rmdir(ROOT, b"d", b"2", child=D)
    assert [op.trash for op in j.fsyncdir(ROOT)] == [b"1", b"2"]
    assert len(j) == 0


def test_losing_only_matching_directories_takes_what_depends_on_them() -> None:
    j: MetaJournal[int] = MetaJournal()
    j.create(B, b"kept")  # older, only in B: survives
    j.create(A, b"f")
    j.rename(A, b"f", B, b"g")  # changed A
    j.create(B, b"after")  # B was changed by a lost rename: lost too
    j.create(ROOT, b"elsewhere")
    plan = j.lose(lambda d: d == A)
    assert plan == [
        Undo("unlink", B, b"after"),
        Undo("rename", B, b"g", A, b"f"),
        Undo("unlink", A, b"f"),
    ]
    assert [op.name for op in j.pending()] == [b"kept", b"elsewhere"]


def test_a_lost_mkdir_takes_later_ops_inside_it() -> None:
    j: MetaJournal[int] = MetaJournal()
    j.mkdir(A, b"d", child=D)
    j.create(D, b"f")
    assert j.lose(lambda d: d == A) == [Undo("unlink", D, b"f"), Undo("rmtree", A, b"d")]


def test_beyond_max_ops_the_oldest_become_durable_early() -> None:
    j: MetaJournal[int] = MetaJournal(max_ops=2)
    j.create(A, b"1")
    j.unlink(A, b"2", b"t")
    spilled = j.create(A, b"3")
    assert [op.name for op in spilled] == [b"1"]
    assert [op.trash for op in j.create(A, b"4")] == [b"t"]
    assert j.early_durable == 2 and len(j) == 2


# --- MetaJournal: the model --------------------------------------------------------------

NAMES = [b"a", b"b", b"c"]


class Tree:
    """Directories by id: name -> ("f", file id) or ("d", directory id); a trash."""

    def __init__(self) -> None:
        self.dirs: dict[int, dict[bytes, tuple[str, int]]] = {0: {}}
        self.trash: dict[bytes, tuple[str, int]] = {}
        self.doomed: list[int] = []  # taken out by rmtree steps, deleted after the plan
        self.destroyed: set[int] = set()  # deleted for good: no step may touch them
        self.next_id = 1

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def reachable(self) -> list[int]:
        out, todo = [], [0]
        while todo:
            d = todo.pop()
            out.append(d)
            todo.extend(i for kind, i in self.dirs[d].values() if kind == "d")
        return sorted(out)

    def below(self, top: int) -> set[int]:
        out, todo = set(), [top]
        while todo:
            d = todo.pop()
            out.add(d)
            todo.extend(i for kind, i in self.dirs[d].values() if kind == "d")
        return out

    def shape(self, d: int = 0) -> dict:
        return {
            name: (kind, i, self.shape(i) if kind == "d" else None)
            for name, (kind, i) in self.dirs[d].items()
        }

    def destroy(self, top: int) -> None:
        self.destroyed |= self.below(top)

    def copy(self) -> Tree:
        twin = Tree()
        twin.dirs = {d: dict(entries) for d, entries in self.dirs.items()}
        twin.trash = dict(self.trash)
        twin.destroyed = set(self.destroyed)
        twin.next_id = self.next_id
        return twin

    def run(self, plan: list[Undo[int]]) -> None:
        for step in plan:
            self.undo(step)
        while self.doomed:
            self.destroy(self.doomed.pop())

    def undo(self, step: Undo[int]) -> None:
        """Carry out one rollback step, refusing anything a real tree would refuse."""
        assert step.dir not in self.destroyed and step.to_dir not in self.destroyed
        entries = self.dirs[step.dir]
        if step.action == "unlink":
            assert entries.pop(step.name)[0] == "f"
        elif step.action == "rmtree":
            kind, i = entries.pop(step.name)
            assert kind == "d"
            self.doomed.append(i)
        elif step.action == "restore":
            assert step.name not in entries
            assert step.trash is not None
            entries[step.name] = self.trash.pop(step.trash)
        else:
            assert step.to_dir is not None and step.to_name is not None
            target = self.dirs[step.to_dir]
            if step.action == "rename":
                assert step.to_name not in target
                target[step.to_name] = entries.pop(step.name)
            else:
                entries[step.name], target[step.to_name] = target[step.to_name], entries[step.name]


class JournalMachine(RuleBasedStateMachine):
    @initialize(max_ops=st.sampled_from([1000, 1000, 3]))
    def start(self, max_ops: int) -> None:
        self.tree = Tree()
        for top in (b"x", b"y", b"z"):  # durable already: rules start among several dirs
            d = self.tree.new_id()
            self.tree.dirs[0][top] = ("d", d)
            self.tree.dirs[d] = {b"a": ("f", self.tree.new_id())}
        self.journal: MetaJournal[int] = MetaJournal(max_ops=max_ops)
        self.synced: dict[int, dict] = {}  # listings as an fsyncdir left them
        self.baseline = self.tree.shape()  # the tree when nothing was pending
        self.clean = True  # nothing became durable since the baseline

    def pick(self, index: int) -> int:
        alive = self.tree.reachable()
        return alive[index % len(alive)]

    def recorded(self, durable: list, touched: tuple[int, ...]) -> None:
        for d in touched:
            self.synced.pop(d, None)
        self.settle(durable)

    def settle(self, durable: list) -> None:
        for op in durable:
            self.clean = False
            if op.trash is not None:
                kind, i = self.tree.trash.pop(op.trash)  # deleted for good
                if kind == "d":
                    self.tree.destroy(i)

    @rule(d=st.integers(0, 99), name=st.sampled_from(NAMES), kind=st.sampled_from("fdl"))
    def create(self, d: int, name: bytes, kind: str) -> None:
        parent = self.pick(d)
        entries = self.tree.dirs[parent]
        if name in entries:
            return
        if kind == "d":
            child = self.tree.new_id()
            self.tree.dirs[child] = {}
            entries[name] = ("d", child)
            self.recorded(self.journal.mkdir(parent, name, child), (parent,))
        elif kind == "l" and any(k == "f" for k, _ in entries.values()):
            entries[name] = next(e for e in entries.values() if e[0] == "f")
            self.recorded(self.journal.link(parent, name), (parent,))
        else:
            entries[name] = ("f", self.tree.new_id())
            self.recorded(self.journal.create(parent, name), (parent,))

    def existing(self, d: int, k: int) -> tuple[int, bytes | None]:
        """The k-th entry of a directory: rules act on names that exist."""
        parent = self.pick(d)
        names = sorted(self.tree.dirs[parent])
        return parent, (names[k % len(names)] if names else None)

    @rule(d=st.integers(0, 99), k=st.integers(0, 9))
    def remove(self, d: int, k: int) -> None:
        parent, name = self.existing(d, k)
        if name is None:
            return
        entries = self.tree.dirs[parent]
        kind, i = entries[name]
        if kind == "d" and self.tree.dirs[i]:
            return  # ENOTEMPTY
        trash = self.journal.trash_name()
        self.tree.trash[trash] = entries.pop(name)
        if kind == "f":
            self.recorded(self.journal.unlink(parent, name, trash), (parent,))
        else:
            self.recorded(self.journal.rmdir(parent, name, trash, i), (parent, i))

    @rule(
        src=st.integers(0, 99),
        k=st.integers(0, 9),
        dst=st.integers(0, 99),
        to_name=st.sampled_from(NAMES),
        exchange=st.booleans(),
    )
    def rename(self, src: int, k: int, dst: int, to_name: bytes, exchange: bool) -> None:
        a, name = self.existing(src, k)
        b = self.pick(dst)
        tree = self.tree
        if name is None or (a, name) == (b, to_name):
            return
        moving = tree.dirs[a][name]
        if moving[0] == "d" and b in tree.below(moving[1]):
            return  # EINVAL: into itself
        target = tree.dirs[b].get(to_name)
        if exchange:
            if target is None or moving[0] == "d" or target[0] == "d":
                return
            tree.dirs[a][name], tree.dirs[b][to_name] = target, moving
            self.recorded(self.journal.rename(a, name, b, to_name, exchange=True), (a, b))
            return
        trash = None
        if target is not None:
            if moving[0] == "d" or target[0] == "d":
                return
            trash = self.journal.trash_name()
            tree.trash[trash] = target
        tree.dirs[b][to_name] = tree.dirs[a].pop(name)
        self.recorded(self.journal.rename(a, name, b, to_name, trash=trash), (a, b))

    # One rule for everything but the changes themselves, mostly an fsyncdir: as
    # rules of their own, syncs and losses would empty the journal too often for
    # deep states to build up (the invariant below checks a loss at every step).
    @rule(
        d=st.integers(0, 99), dirs=st.sets(st.integers(0, 99), max_size=3), what=st.integers(0, 19)
    )
    def sync_or_cut(self, d: int, dirs: set[int], what: int) -> None:
        if what == 0:
            self.lose_everything()
        elif what == 1:
            chosen = {self.pick(x) for x in dirs}
            self.apply(self.journal.lose(chosen.__contains__))
        elif what == 2:
            for target in self.tree.reachable():
                self.fsync(target)
            assert len(self.journal) == 0 and not self.tree.trash
            self.baseline, self.clean = self.tree.shape(), True
        else:
            self.fsync(self.pick(d))

    def fsync(self, target: int) -> None:
        self.settle(self.journal.fsyncdir(target))
        self.synced[target] = dict(self.tree.dirs[target])

    def lose_everything(self) -> None:
        self.apply(self.journal.lose())
        assert len(self.journal) == 0
        assert not self.tree.trash  # every parked entry was purged or put back
        if self.clean:
            assert self.tree.shape() == self.baseline
        self.baseline, self.clean = self.tree.shape(), True

    def apply(self, plan: list[Undo[int]]) -> None:
        self.tree.run(plan)
        self.check_synced(self.tree)

    def check_synced(self, tree: Tree) -> None:
        """What an fsyncdir made durable, and nothing changed since, a rollback keeps."""
        alive = set(tree.reachable())
        for d, listing in self.synced.items():
            if d in alive:
                assert tree.dirs[d] == listing, d

    @invariant()
    def a_power_cut_now_would_roll_back_cleanly(self) -> None:
        # Every state, not only those where a lose rule was drawn: the full plan
        # and the plan for each directory alone must apply to a copy of the tree.
        if not len(self.journal):
            assert not self.tree.trash
            return
        twin = self.tree.copy()
        twin.run(self.journal.undo_plan())
        self.check_synced(twin)
        assert not twin.trash
        if self.clean:
            assert twin.shape() == self.baseline
        for d in self.tree.reachable():
            twin = self.tree.copy()
            twin.run(self.journal.undo_plan(d.__eq__))
            self.check_synced(twin)


TestJournalModel = JournalMachine.TestCase
TestJournalModel.settings = MACHINE


# --- cost: no copies, no quadratic paths -----------------------------------------------------


def test_many_big_sequential_writes_stay_cheap() -> None:
    chunk = bytes(128 << 10)  # one object: the log holds references, not copies
    f = DirtyFile()
    for i in range(8192):  # 1 GiB of writes through the mount
        f.write(i * len(chunk), chunk)
    assert f.held_bytes == 1 << 30 and len(f.extents()) == 8192
    assert f.read(5 << 20, 8, Backing().pread, 0) == bytes(8)
    calls = []
    assert f.flush(lambda buf, off: calls.append(off) or len(buf), Backing().truncate) == 1 << 30
    assert len(calls) == 8192  # pieces of 128 KiB go out as they are, no joining copies


def test_many_small_random_overwrites_stay_cheap() -> None:
    rng = random.Random(1)
    page = bytes(4096)
    f = DirtyFile()
    for _ in range(30000):
        f.write(rng.randrange(8192) * 4096, page)
    check_pieces(f)
    assert len(f.extents()) <= 8192 and f.dirty_bytes <= 8192 * 4096
