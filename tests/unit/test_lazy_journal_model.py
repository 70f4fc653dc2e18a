"""Lazy mode's pure core, the parts a page cache and a journal add: the journal
model of directory operations, subset tearing, the bytes a cut would change, and
the blocks pending data needs. Checked against plain models, with hypothesis."""

from __future__ import annotations

import copy

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from chaosfs.lazy import DirtyFile, LazyCache, MetaJournal
from unit.test_lazy_model import MACHINE, JournalMachine

# --- the journal model -----------------------------------------------------------------


def test_a_file_sync_commits_its_creation_and_everything_before_it() -> None:
    j: MetaJournal[str] = MetaJournal()
    j.create("d", b"older", node="o")
    j.create("d", b"f", node="f")
    j.create("e", b"newer", node="n")
    j.sync("f")  # no pending data: up to the op that named it
    assert [op.name for op in j.lost(model="journal")] == [b"newer"]
    assert [op.name for op in j.lost(model="strict")] == [b"older", b"f", b"newer"]
    j.sync("n", everything=True)  # with data: every op so far
    assert j.lost(model="journal") == []
    assert len(j) == 3  # still pending for a strict cut


def test_a_rename_names_the_file_too() -> None:
    j: MetaJournal[str] = MetaJournal()
    j.create("d", b"tmp", node="f")
    j.rename("d", b"tmp", "d", b"final", node="f")
    j.create("d", b"other", node="x")
    j.sync("f")
    assert [op.name for op in j.lost(model="journal")] == [b"other"]


def test_fsyncdir_commits_up_to_the_directorys_newest_change() -> None:
    j: MetaJournal[str] = MetaJournal()
    j.create("a", b"1")
    j.create("b", b"2")
    j.create("c", b"3")
    durable = j.fsyncdir("b")
    assert [op.name for op in durable] == [b"2"]  # strict: only b's
    assert [op.name for op in j.lost(model="journal")] == [b"3"]  # journal: a's too


def test_a_journal_cut_makes_its_survivors_durable_for_good() -> None:
    j: MetaJournal[str] = MetaJournal()
    j.create("d", b"kept", node="k")
    j.create("d", b"lost", node="l")
    j.sync("k")
    lost, plan, survived = j.cut(model="journal")
    assert [op.name for op in lost] == [b"lost"]
    assert [op.name for op in survived] == [b"kept"]
    assert [(s.action, s.name) for s in plan] == [("unlink", b"lost")]
    assert j.lost(model="strict") == []  # a later strict cut cannot take it back


def test_settle_makes_the_oldest_ops_durable_in_both_models() -> None:
    j: MetaJournal[str] = MetaJournal()
    j.create("d", b"1")
    j.create("d", b"2")
    j.create("d", b"3")
    assert [op.name for op in j.settle(2)] == [b"1", b"2"]
    assert [op.name for op in j.lost(model="strict")] == [b"3"]
    assert [op.name for op in j.lost(model="journal")] == [b"3"]


class JournalModelMachine(JournalMachine):
    """The strict machine's trees and rules, plus journal commits; a journal cut
    must keep every committed op and roll the rest back as cleanly as strict does."""

    @rule(what=st.integers(0, 3))
    def commit(self, what: int) -> None:
        if what == 0:
            self.journal.sync(object(), everything=True)
        elif what == 1:
            self.settle(self.journal.settle(self.journal.seq))
        else:
            self.journal.sync(object())  # names nothing pending: commits nothing

    @invariant()
    def a_journal_cut_keeps_the_committed_prefix_and_rolls_back_the_rest(self) -> None:
        committed = self.journal.committed
        strict = {op.seq for op in self.journal.lost(model="strict")}
        journal = copy.deepcopy(self.journal)
        lost, plan, survived = journal.cut(model="journal")
        assert all(op.seq > committed for op in lost)
        assert {op.seq for op in lost} <= strict
        assert all(op.seq <= committed for op in survived)
        assert {op.seq for op in lost} | {op.seq for op in survived} == strict
        twin = self.tree.copy()
        twin.run(plan)
        for op in survived:  # durable now: their parked entries are deleted
            if op.trash is not None:
                twin.trash.pop(op.trash)
        assert not twin.trash
        assert journal.lost(model="strict") == []


TestJournalModelMachine = JournalModelMachine.TestCase
TestJournalModelMachine.settings = MACHINE


# --- one file: subset tears, bytes a cut changes, blocks ---------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 300), st.binary(min_size=1, max_size=64)),
        st.tuples(st.integers(0, 400), st.none()),
    ),
    max_size=12,
)


def replay(base: bytes, ops: list[tuple[int, bytes | None]]) -> bytearray:
    out = bytearray(base)
    for off, data in ops:
        if data is None:
            del out[off:]
            out.extend(bytes(off - len(out)))
        else:
            out.extend(bytes(max(0, off - len(out))))
            out[off : off + len(data)] = data
    return out


class Disk:
    def __init__(self, content: bytes) -> None:
        self.data = bytearray(content)

    def pwrite(self, buf, off: int) -> int:
        self.data.extend(bytes(max(0, off - len(self.data))))
        self.data[off : off + len(buf)] = buf
        return len(buf)

    def truncate(self, size: int) -> None:
        del self.data[size:]
        self.data.extend(bytes(size - len(self.data)))


@given(base=st.binary(max_size=200), ops=OPS, chosen=st.sets(st.integers(1, 14)))
def test_a_subset_tear_persists_exactly_the_chosen_writes(base, ops, chosen) -> None:
    f = DirtyFile(len(base))
    for off, data in ops:
        if data is None:
            f.truncate(off)
        else:
            f.write(off, data)
    plan = f.tear(persist=tuple(chosen))
    kept = [op for i, op in enumerate(ops, 1) if i in chosen]
    assert plan.kept == sum(len(d) for _, d in kept if d is not None)
    disk = Disk(base)
    f.apply_tear(plan, disk.pwrite, disk.truncate)
    assert disk.data == replay(base, kept)


@given(base=st.binary(max_size=200), ops=OPS)
def test_changed_counts_every_byte_a_cut_would_change_and_grown_the_new_ones(base, ops) -> None:
    f = DirtyFile(len(base))
    for off, data in ops:
        if data is None:
            f.truncate(off)
        else:
            f.write(off, data)
    now = f.size(len(base))
    touched: set[int] = set()
    for a, b in f.extents():
        touched.update(range(a, b))
    touched.update(range(min(now, len(base)), max(now, len(base))))
    assert f.changed(len(base)) == len(touched)
    # Pending bytes past the backing size (or a truncate below it) need new blocks.
    floor = len(base)
    for off, data in ops:
        if data is None:
            floor = min(floor, off)
    assert f.grown == sum(max(0, b - max(a, floor)) for a, b in f.extents())
    assert f.blocks(0, 4096) * 512 >= f.grown


def test_listing_numbers_writes_and_truncates_from_one() -> None:
    f = DirtyFile(0)
    f.write(0, b"abc")
    f.truncate(10)
    assert f.listing(10) == [{"i": 1, "off": 0, "len": 3}, {"i": 2, "truncate": 10}]
    assert f.listing(1) == [{"i": 1, "off": 0, "len": 3}] and f.op_count == 2


@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 3),  # file
            st.sampled_from(["write", "truncate", "flush", "lose", "forget"]),
            st.integers(0, 300),
            st.binary(min_size=1, max_size=64),
        ),
        max_size=30,
    )
)
def test_the_caches_total_of_new_bytes_is_the_sum_of_its_files(steps) -> None:
    cache: LazyCache[int] = LazyCache(1 << 20)
    disks = {k: Disk(b"") for k in range(4)}
    for key, what, off, data in steps:
        if what in ("write", "truncate"):
            cache.begin(key, len(disks[key].data))
            if what == "write":
                cache.write(key, off, data)
            else:
                cache.truncate(key, off)
        elif what == "flush":
            cache.flush(key, disks[key].pwrite, disks[key].truncate)
        elif what == "lose":
            cache.lose(lambda k, key=key: k == key)
        else:
            cache.forget(key)
        files = [cache.get(k) for k in range(4)]
        assert cache.grown == sum(f.grown for f in files if f is not None)
        assert cache.held == sum(f.held_bytes for f in files if f is not None)
