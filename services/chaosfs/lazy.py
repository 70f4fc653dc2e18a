"""Lazy mode's core: what a program wrote but has not made durable yet.

In lazy mode chaosfs plays the page cache and write-back a kernel would: data
written through the mount stays here until the program makes it durable
(fsync, fdatasync; fsyncdir for directory entries), so a power-cut fault can
lose it, or persist only part of it, exactly where a real machine could have.
This module is the pure part of that: no system calls, no locks, no awaits.
The passthrough passes the backing file's I/O in as callables, from its one
trio thread, so nothing here is shared between threads.

``DirtyFile``   the unsynced writes and truncates of one inode, held twice at no
                copying cost: an *op log* in write order (a torn write-back must
                replay any prefix of it) and a *piece table* over file offsets
                (reads and flushes need the latest byte at each offset). Pieces
                point into the logged ``bytes`` objects, so a write of any size
                copies nothing and costs O(log n + pieces it overlaps).
``LazyCache``   the DirtyFile of every inode under one memory budget.
``MetaJournal`` directory operations no fsyncdir has covered yet, and the
                operations that roll them back.
"""

from __future__ import annotations

import errno
import random
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

Buffer = bytes | bytearray | memoryview
# The backing file's I/O, as the passthrough binds it to a descriptor:
PRead = Callable[[int, int], bytes]  # (offset, size) -> data, short at end of file (os.pread)
PWrite = Callable[[Buffer, int], int]  # (data, offset) -> bytes written (os.pwrite)
Truncate = Callable[[int], None]  # (size) (os.ftruncate)

K = TypeVar("K", bound=Hashable)

# A flush joins runs of adjacent small pieces (database pages, log records) into one
# pwrite of up to _JOIN_LIMIT: fewer system calls for a copy. A big piece (FUSE
# sends up to 128 KiB-1 MiB a write) goes out alone, with no copy.
_JOIN_BELOW = 64 << 10
_JOIN_LIMIT = 1 << 20


def _pwrite_all(pwrite: PWrite, data: Buffer, off: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = pwrite(view[done:], off + done)
        if n <= 0:  # pwrite never does this for a regular file; do not spin if it does
            raise OSError(errno.EIO, "the backing file took no bytes")
        done += n


# --- one file -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TearPlan:
    """Which prefix of a file's unsynced writes survives a torn write-back.

    The writes and truncates since the last flush, in the order they were made,
    form a stream: the first ``ops`` of them survive whole, then the first
    ``partial`` bytes of the next one (always a write), and nothing after that.
    """

    ops: int
    partial: int
    kept: int  # bytes of written data that survive: the whole writes plus ``partial``
    lost: int  # bytes of written data that do not
    of: int  # how many ops the file held when planned; the plan is for that state only
    # Instead of a prefix: exactly these ops survive (indices from 0, in write order),
    # whatever came before or after them, as a disk that reorders its writes allows.
    subset: tuple[int, ...] | None = None


class DirtyFile:
    """The unsynced state of one inode over its backing file.

    Reads see what a page cache would: the backing bytes, cut at the smallest
    size any pending truncate set, overlaid with pending writes; holes read as
    zeros. Sizes are given by the backing file's size, which only ``flush`` and
    ``apply_tear`` change (the passthrough passes in fstat's each time).

    ``base`` is the backing file's size when the file became dirty (None: not
    known); ``grown`` counts the pending bytes at or past it, or past a pending
    truncate below it: the blocks a file system with delayed allocation would
    have reserved for them (st_blocks, and ENOSPC at the call). ``mtime_ns`` and
    ``ctime_ns`` are the times a page cache shows for the pending changes, set by
    the caller (no clock here); ``since`` when the file became dirty, for
    write-back by age.
    """

    __slots__ = (
        "_bufs",
        "_ends",
        "_floor",
        "_ops",
        "_size",
        "_skips",
        "_starts",
        "_wend",
        "alloc_base",
        "ctime_ns",
        "dirty_bytes",
        "grown",
        "held_bytes",
        "mtime_ns",
        "since",
    )

    def __init__(self, base: int | None = None, since: float = 0.0) -> None:
        # The op log: (offset, data) for a write, (size, None) for a truncate.
        self._ops: list[tuple[int, bytes | None]] = []
        # The piece table: sorted, non-overlapping [start, end) ranges whose latest
        # content is _bufs[i][_skips[i] : _skips[i] + end - start]. Parallel lists
        # keep bisect on plain ints.
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._bufs: list[bytes] = []
        self._skips: list[int] = []
        # The size the last truncate set, grown by writes since; None while no
        # truncate is pending: then the size is the backing file's grown to _wend.
        self._size: int | None = None
        self._wend = 0
        # The smallest size truncated to: backing bytes from here on are gone (a
        # later extension or write brings back zeros or new data, never them).
        self._floor: int | None = None
        self.dirty_bytes = 0  # bytes of content that would be lost: the pieces' lengths
        self.held_bytes = 0  # bytes held in memory: every logged write, overwritten or not
        # Pending bytes with no block on the backing file yet: pieces at or past
        # alloc_base (the backing size, or a smaller size a truncate cut it to).
        self.alloc_base = base if base is not None else 0
        self.grown = 0
        self.mtime_ns: int | None = None
        self.ctime_ns: int | None = None
        self.since = since

    @property
    def pending(self) -> bool:
        return bool(self._ops)

    def size(self, backing_size: int) -> int:
        if self._size is not None:
            return self._size
        return max(backing_size, self._wend)

    def extents(self) -> list[tuple[int, int]]:
        """The pending [start, end) ranges, in offset order (for reports)."""
        return list(zip(self._starts, self._ends, strict=True))

    def write(self, off: int, data: Buffer) -> None:
        n = len(data)
        if n == 0:
            return  # a zero-length write changes nothing, not even the size
        if type(data) is not bytes:
            data = bytes(data)  # kept beyond the call: a caller's buffer may change
        end = off + n
        self._ops.append((off, data))
        self.held_bytes += n
        starts, ends, bufs, skips = self._starts, self._ends, self._bufs, self._skips
        lo = bisect_right(ends, off)  # pieces ending at or before off stay as they are,
        hi = bisect_left(starts, end, lo)  # and so do those starting at or after end
        new_s, new_e, new_b, new_k = [off], [end], [data], [0]
        covered = 0
        base = self.alloc_base
        grew = max(0, end - max(off, base))
        if lo < hi:
            for i in range(lo, hi):
                a, b = max(starts[i], off), min(ends[i], end)
                covered += b - a
                if b > base:
                    grew -= b - max(a, base)
            if starts[lo] < off:  # the first piece overlapped keeps its head
                new_s.insert(0, starts[lo])
                new_e.insert(0, off)
                new_b.insert(0, bufs[lo])
                new_k.insert(0, skips[lo])
            last = hi - 1
            if ends[last] > end:  # and the last its tail
                new_s.append(end)
                new_e.append(ends[last])
                new_b.append(bufs[last])
                new_k.append(skips[last] + end - starts[last])
        starts[lo:hi] = new_s
        ends[lo:hi] = new_e
        bufs[lo:hi] = new_b
        skips[lo:hi] = new_k
        self.dirty_bytes += n - covered
        self.grown += grew
        if self._size is None:
            self._wend = max(self._wend, end)
        else:
            self._size = max(self._size, end)

    def truncate(self, size: int) -> None:
        self._ops.append((size, None))
        starts, ends = self._starts, self._ends
        cut = bisect_left(starts, size)  # pieces from here on start at or past the end
        removed = 0
        for i in range(cut, len(starts)):
            removed += ends[i] - starts[i]
        del starts[cut:], ends[cut:], self._bufs[cut:], self._skips[cut:]
        if cut and ends[cut - 1] > size:
            removed += ends[cut - 1] - size
            ends[cut - 1] = size
        self.dirty_bytes -= removed
        if size < self.alloc_base:
            # Every piece left ends at or before size: none needs a new block past it.
            self.alloc_base = size
            self.grown = 0
        else:
            self.grown -= removed  # all of it lay at or past size, so past alloc_base
        self._size = size
        self._floor = size if self._floor is None else min(self._floor, size)

    def read(self, off: int, size: int, backing_read: PRead, backing_size: int) -> bytes:
        end = min(off + size, self.size(backing_size))
        if end <= off:
            return b""
        starts, ends = self._starts, self._ends
        first = bisect_right(ends, off)
        if first < len(starts) and starts[first] <= off and end <= ends[first]:
            # All of it in one piece: reading back what was just written.
            skip = self._skips[first] + off - starts[first]
            return self._bufs[first][skip : skip + end - off]
        last = bisect_left(starts, end, first)
        # The backing file shows through up to its size and the smallest truncate;
        # past that, what no piece covers is a hole.
        shown = min(end, backing_size)
        if self._floor is not None:
            shown = min(shown, self._floor)
        got = backing_read(off, shown - off)[: shown - off] if shown > off else b""
        if first == last and len(got) == end - off:
            return got  # nothing pending in range
        out = bytearray(end - off)
        out[: len(got)] = got
        bufs, skips = self._bufs, self._skips
        for i in range(first, last):
            a = max(starts[i], off)
            b = min(ends[i], end)
            k = skips[i] + a - starts[i]
            out[a - off : b - off] = memoryview(bufs[i])[k : k + b - a]
        return bytes(out)

    def flush(self, backing_pwrite: PWrite, backing_truncate: Truncate) -> int:
        """Make the backing file what reads show now; return the data bytes written.

        Not a replay: one truncate to the smallest size any pending truncate set
        (which drops the backing bytes they cut), the latest content of every
        pending range in offset order, then the final size if a truncate left it
        past all that. Last write wins at every offset. If a call raises, nothing
        is forgotten, and a retry is safe: it writes the same bytes again.
        """
        if not self._ops:
            return 0
        if self._floor is not None:
            backing_truncate(self._floor)
        written = 0
        for off, data in self._runs():
            _pwrite_all(backing_pwrite, data, off)
            written += len(data)
        if self._size is not None:
            reached = max(self._floor or 0, self._ends[-1] if self._ends else 0)
            if self._size > reached:
                backing_truncate(self._size)
        self.drop()
        return written

    def _view(self, i: int) -> Buffer:
        buf, skip, n = self._bufs[i], self._skips[i], self._ends[i] - self._starts[i]
        if skip == 0 and n == len(buf):
            return buf
        return memoryview(buf)[skip : skip + n]

    def _runs(self) -> Iterator[tuple[int, Buffer]]:
        starts, ends = self._starts, self._ends
        i, count = 0, len(starts)
        while i < count:
            j = i + 1
            if ends[i] - starts[i] < _JOIN_BELOW:
                while (
                    j < count
                    and starts[j] == ends[j - 1]
                    and ends[j] - starts[j] < _JOIN_BELOW
                    and ends[j] - starts[i] <= _JOIN_LIMIT
                ):
                    j += 1
            if j == i + 1:
                yield starts[i], self._view(i)
            else:
                yield starts[i], b"".join(self._view(x) for x in range(i, j))
            i = j

    def drop(self) -> int:
        """Forget everything pending (power went out); return the dirty bytes lost."""
        lost = self.dirty_bytes
        self._ops.clear()
        self._starts.clear()
        self._ends.clear()
        self._bufs.clear()
        self._skips.clear()
        self._size = self._floor = None
        self._wend = self.dirty_bytes = self.held_bytes = self.grown = 0
        return lost

    # --- what reports and stat show ---------------------------------------------------

    def blocks(self, backing_blocks: int, block: int) -> int:
        """st_blocks (512-byte units) as a file system with delayed allocation shows
        them: the backing file's, less what a pending truncate freed, plus blocks
        reserved for the pending bytes that have none yet."""
        block = max(512, block)
        shown = backing_blocks
        if self._floor is not None:
            shown = min(shown, -(-self._floor // block) * (block // 512))
        return shown + -(-self.grown // block) * (block // 512)

    def changed(self, backing_size: int) -> int:
        """Bytes a power cut now would change: the pending writes' latest content,
        plus the span between the size shown and the durable size (a pending
        ftruncate up, whose zeros would vanish; a truncate down, whose bytes come back)."""
        now = self.size(backing_size)
        lo, hi = min(now, backing_size), max(now, backing_size)
        if lo == hi:
            return self.dirty_bytes
        inside = 0  # pending bytes already counted by the span
        starts, ends = self._starts, self._ends
        for i in range(bisect_right(ends, lo), len(starts)):
            if starts[i] >= hi:
                break
            inside += min(ends[i], hi) - max(starts[i], lo)
        return self.dirty_bytes + (hi - lo) - inside

    def listing(self, limit: int) -> list[dict[str, int]]:
        """The pending ops in write order, numbered from 1 as ``persist`` takes them:
        ``{"i", "off", "len"}`` for a write, ``{"i", "truncate"}`` for a truncate."""
        out: list[dict[str, int]] = []
        for i, (off, data) in enumerate(self._ops[:limit]):
            if data is None:
                out.append({"i": i + 1, "truncate": off})
            else:
                out.append({"i": i + 1, "off": off, "len": len(data)})
        return out

    @property
    def op_count(self) -> int:
        return len(self._ops)

    def tear(
        self,
        rng: random.Random | None = None,
        *,
        keep: int | None = None,
        whole_writes: bool = False,
        align: int = 1,
        persist: tuple[int, ...] | None = None,
    ) -> TearPlan:
        """Choose which prefix of the unsynced writes survives; change nothing yet.

        ``persist`` (LazyFS's torn-seq): instead of a prefix, exactly the ops with
        these numbers (from 1, in write order, as ``listing`` shows them) survive,
        in their order, and every other one is lost: a later write can survive an
        earlier one, as on a disk that reorders writes. Numbers past the last op
        are ignored (another file matched by the same path may have more).

        ``keep`` (the offset rule): the first ``keep`` bytes of data written since
        the last flush, in write order, survive, so the write that straddles
        ``keep`` is torn there; a truncate survives if it comes before the cut (at
        the cut only when nothing at all is lost). Otherwise ``rng`` chooses: a cut
        at a random byte of that stream (big writes are the likeliest to tear),
        or with ``whole_writes`` a random op, before which everything survives and
        from which nothing does. ``align``: a torn write keeps only up to a file
        offset that is a multiple of it (512 or 4096: sectors and pages tear,
        bytes do not). Reproducible: the same history and ``random.Random(seed)``
        give the same plan.
        """
        total = self.held_bytes
        count = len(self._ops)
        if persist is not None:
            chosen = tuple(sorted({i - 1 for i in persist if 1 <= i <= count}))
            kept = sum(len(d) for i in chosen if (d := self._ops[i][1]) is not None)
            return TearPlan(0, 0, kept, total - kept, count, chosen)
        if keep is None:
            if rng is None:
                raise TypeError("tear needs an rng or keep")
            if not count:
                return TearPlan(0, 0, 0, 0, 0)
            if whole_writes or total == 0:
                cut = rng.randrange(count)
                kept = sum(len(d) for _, d in self._ops[:cut] if d is not None)
                return TearPlan(cut, 0, kept, total - kept, count)
            keep = rng.randrange(total)
        if keep >= total:
            return TearPlan(count, 0, total, 0, count)
        pos = 0
        for i, (off, data) in enumerate(self._ops):
            if data is None:
                if pos >= keep:
                    return TearPlan(i, 0, pos, total - pos, count)
                continue
            if pos + len(data) > keep:
                partial = keep - pos
                if align > 1:
                    partial = max(0, (off + partial) // align * align - off)
                return TearPlan(i, partial, pos + partial, total - pos - partial, count)
            pos += len(data)
        raise AssertionError("unreachable: keep < total")

    def apply_tear(self, plan: TearPlan, backing_pwrite: PWrite, backing_truncate: Truncate) -> int:
        """Persist what ``plan`` keeps, forget the rest; return the data bytes written."""
        if plan.of != len(self._ops) or plan.ops > len(self._ops):
            raise ValueError("the plan was made for another state of this file")
        survivor = DirtyFile()
        kept = (
            self._ops[: plan.ops]
            if plan.subset is None
            else [self._ops[i] for i in plan.subset if i < len(self._ops)]
        )
        for off, data in kept:
            if data is None:
                survivor.truncate(off)
            else:
                survivor.write(off, data)
        if plan.partial and plan.subset is None:
            off, data = self._ops[plan.ops]
            assert data is not None
            survivor.write(off, memoryview(data)[: plan.partial])
        written = survivor.flush(backing_pwrite, backing_truncate)
        self.drop()
        return written


# --- every file, under a budget ------------------------------------------------------


@dataclass(slots=True)
class LazyStats:
    flushes: int = 0  # files written back because a program made them durable
    flushed_bytes: int = 0
    early_flushes: int = 0  # files written back unasked, to stay under the budget
    early_bytes: int = 0
    expired_flushes: int = 0  # files written back by age, as a kernel's flusher does
    expired_bytes: int = 0
    lost_files: int = 0  # by lose-unsynced
    lost_bytes: int = 0
    torn_files: int = 0  # by torn-write
    torn_kept_bytes: int = 0
    torn_lost_bytes: int = 0


class LazyCache(Generic[K]):
    """The DirtyFile of every inode with unsynced data, keyed by the caller's id.

    The budget bounds ``held``: the bytes every logged write keeps in memory,
    overwritten ones included, since a torn write-back may replay any of them.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("the lazy budget must be positive")
        self.max_bytes = max_bytes
        # In the order files were first dirtied since their last flush: the kernel
        # writes back oldest-dirtied inodes first, and so do early flushes here.
        self._files: dict[K, DirtyFile] = {}
        self.held = 0
        self.grown = 0  # bytes the dirty files need new blocks for (see DirtyFile)
        self.stats = LazyStats()

    def __contains__(self, key: K) -> bool:
        return key in self._files

    def __len__(self) -> int:
        return len(self._files)

    def get(self, key: K) -> DirtyFile | None:
        return self._files.get(key)

    def _file(self, key: K) -> DirtyFile:
        f = self._files.get(key)
        if f is None:
            f = self._files[key] = DirtyFile()
        return f

    def write(self, key: K, off: int, data: Buffer) -> list[K]:
        """Hold a write; return the files to flush early now, oldest first (usually none).

        The caller flushes each with ``flush(key, ..., early=True)``; the file
        just written may be among them (one write bigger than the budget).
        """
        if not data:
            return []
        f = self._file(key)
        before, grown = f.held_bytes, f.grown
        f.write(off, data)
        self.held += f.held_bytes - before
        self.grown += f.grown - grown
        if self.held <= self.max_bytes:
            return []
        excess = self.held - self.max_bytes
        victims = []
        for victim, vf in self._files.items():
            if vf.held_bytes:  # one holding only truncates frees nothing
                victims.append(victim)
                excess -= vf.held_bytes
                if excess <= 0:
                    break
        return victims

    def truncate(self, key: K, size: int) -> None:
        f = self._file(key)
        grown = f.grown
        f.truncate(size)
        self.grown += f.grown - grown

    def begin(self, key: K, base: int, since: float = 0.0) -> DirtyFile:
        """The file ``key`` becomes dirty now, over a backing file of ``base`` bytes
        (a no-op if it already is)."""
        f = self._files.get(key)
        if f is None:
            f = self._files[key] = DirtyFile(base, since)
        return f

    def expired(self, before: float) -> list[K]:
        """Files dirty since ``before`` or earlier, oldest first: due for write-back."""
        out = []
        for key, f in self._files.items():  # in the order they became dirty
            if f.since > before:
                break
            out.append(key)
        return out

    def size(self, key: K, backing_size: int) -> int:
        f = self._files.get(key)
        return backing_size if f is None else f.size(backing_size)

    def read(self, key: K, off: int, size: int, backing_read: PRead, backing_size: int) -> bytes:
        f = self._files.get(key)
        if f is None:
            return backing_read(off, size)
        return f.read(off, size, backing_read, backing_size)

    def flush(
        self,
        key: K,
        backing_pwrite: PWrite,
        backing_truncate: Truncate,
        *,
        early: bool = False,
        expired: bool = False,
    ) -> int:
        """Write one file back (fsync, ``early`` to honour the budget, ``expired``
        by age); return its bytes."""
        f = self._files.get(key)
        if f is None:
            return 0
        held, grown = f.held_bytes, f.grown
        written = f.flush(backing_pwrite, backing_truncate)  # raises: all kept, retry later
        self.held -= held
        self.grown -= grown
        del self._files[key]
        if expired:
            self.stats.expired_flushes += 1
            self.stats.expired_bytes += written
        elif early:
            self.stats.early_flushes += 1
            self.stats.early_bytes += written
        else:
            self.stats.flushes += 1
            self.stats.flushed_bytes += written
        return written

    def forget(self, key: K) -> int:
        """Drop a file that no longer matters (unlinked and closed): not a loss."""
        f = self._files.pop(key, None)
        if f is None:
            return 0
        self.held -= f.held_bytes
        self.grown -= f.grown
        return f.drop()

    def lose(self, match: Callable[[K], bool] | None = None) -> dict[K, int]:
        """lose-unsynced: drop the pending data of matching files; return bytes lost each."""
        lost: dict[K, int] = {}
        for key in [k for k in self._files if match is None or match(k)]:
            f = self._files.pop(key)
            self.held -= f.held_bytes
            self.grown -= f.grown
            lost[key] = f.drop()
        self.stats.lost_files += len(lost)
        self.stats.lost_bytes += sum(lost.values())
        return lost

    def tear(
        self,
        match: Callable[[K], bool] | None,
        seed: int | str,
        *,
        keep: int | None = None,
        whole_writes: bool = False,
        align: int = 1,
        name: Callable[[K], str] | None = None,
        persist: tuple[int, ...] | None = None,
    ) -> dict[K, TearPlan]:
        """torn-write: plan each matching file's tear; ``apply_tear`` carries them out.

        Each file draws from its own ``random.Random(f"{seed}:{name}")``, so its
        plan does not depend on which other files are dirty; ``name`` (a path,
        say) keeps plans reproducible across runs where inode ids differ.
        """
        plans: dict[K, TearPlan] = {}
        for key, f in self._files.items():
            if match is None or match(key):
                rng = random.Random(f"{seed}:{name(key) if name else key}")
                plans[key] = f.tear(
                    rng, keep=keep, whole_writes=whole_writes, align=align, persist=persist
                )
        return plans

    def apply_tear(
        self, key: K, plan: TearPlan, backing_pwrite: PWrite, backing_truncate: Truncate
    ) -> int:
        f = self._files[key]
        held, grown = f.held_bytes, f.grown
        written = f.apply_tear(plan, backing_pwrite, backing_truncate)
        self.held -= held
        self.grown -= grown
        del self._files[key]
        self.stats.torn_files += 1
        self.stats.torn_kept_bytes += plan.kept
        self.stats.torn_lost_bytes += plan.lost
        return written

    def report(self, name: Callable[[K], str] | None = None) -> dict[K | str, int]:
        """report-unsynced: dirty bytes per file (0: only a size change is pending)."""
        return {(name(k) if name else k): f.dirty_bytes for k, f in self._files.items()}


# --- directory operations ------------------------------------------------------------

OpKind = Literal["create", "mkdir", "link", "unlink", "rmdir", "rename", "exchange"]
# What a power cut keeps of directory operations (see MetaJournal):
#   journal  as ext4 (data=ordered) and xfs: operations reach the disk in the order
#            they were made, and a sync of a file commits its creation and the
#            renames that gave it its name, with every operation made before them;
#   strict   POSIX alone: only an fsync of the directory makes its entries durable.
Model = Literal["journal", "strict"]
MODELS: tuple[Model, ...] = ("journal", "strict")
UndoAction = Literal["unlink", "rmtree", "rename", "exchange", "restore"]
EntryMatch = Callable[[K, bytes], bool]  # (directory, name) -> whether a path glob covers it


@dataclass(slots=True, eq=False)
class DirOp(Generic[K]):
    """A directory operation no fsyncdir has made durable yet.

    ``dir``/``name`` is the entry created or removed, or a rename's source;
    ``to_dir``/``to_name`` a rename's (or exchange's) target. ``trash``: the name
    in the caller's trash directory where the removed entry is parked (unlink,
    rmdir, or the target a rename replaced) until the removal is durable.
    ``child``: the directory created (mkdir) or removed (rmdir, replaced).
    ``node``: the inode the op gave a name (create, link, mkdir, a rename's source).
    """

    seq: int
    kind: OpKind
    dir: K
    name: bytes
    to_dir: K | None = None
    to_name: bytes | None = None
    trash: bytes | None = None
    child: K | None = None
    node: K | None = None

    @property
    def dirs(self) -> tuple[K, ...]:
        """The directories whose entries this op changed."""
        if self.to_dir is None or self.to_dir == self.dir:
            return (self.dir,)
        return (self.dir, self.to_dir)

    @property
    def entries(self) -> tuple[tuple[K, bytes], ...]:
        """The names this op changed, as (directory, name)."""
        if self.to_dir is None or self.to_name is None:
            return ((self.dir, self.name),)
        return ((self.dir, self.name), (self.to_dir, self.to_name))

    @property
    def deps(self) -> tuple[K, ...]:
        """The directories this op ties to others' durability (see MetaJournal)."""
        if self.child is not None and self.kind != "mkdir":
            return (*self.dirs, self.child)
        return self.dirs


@dataclass(frozen=True, slots=True)
class Undo(Generic[K]):
    """One step of a rollback, for the passthrough to carry out on the backing tree.

    unlink    remove the entry ``dir/name`` (a file, symlink, node or hard link)
    rmtree    take the directory ``dir/name`` out of the tree at once (park it in the
              trash) and delete it with all it holds once the whole plan has run:
              later steps may still work inside it, by directory id (an older op in
              a directory a durable rename moved into it, say)
    rename    rename ``dir/name`` to ``to_dir/to_name`` (which does not exist)
    exchange  swap ``dir/name`` and ``to_dir/to_name``
    restore   rename the parked trash entry ``trash`` back to ``dir/name``
    """

    action: UndoAction
    dir: K
    name: bytes
    to_dir: K | None = None
    to_name: bytes | None = None
    trash: bytes | None = None


def _inverse(op: DirOp[K]) -> list[Undo[K]]:
    if op.kind in ("create", "link"):
        return [Undo("unlink", op.dir, op.name)]
    if op.kind == "mkdir":
        # Entries made inside since, even durably, go with it: a real crash leaves
        # them unreachable (lost+found at best).
        return [Undo("rmtree", op.dir, op.name)]
    if op.kind in ("unlink", "rmdir"):
        return [Undo("restore", op.dir, op.name, trash=op.trash)]
    assert op.to_dir is not None and op.to_name is not None
    if op.kind == "exchange":
        return [Undo("exchange", op.dir, op.name, op.to_dir, op.to_name)]
    steps = [Undo("rename", op.to_dir, op.to_name, op.dir, op.name)]
    if op.trash is not None:
        steps.append(Undo("restore", op.to_dir, op.to_name, trash=op.trash))
    return steps


class MetaJournal(Generic[K]):
    """Directory operations not yet durable, oldest first, keyed by directory ids.

    Removals cannot be undone from nothing, so in lazy mode the passthrough does
    not remove: it renames the entry into a trash directory of its own (same file
    system, hidden from the mount) under ``trash_name()``, records the op with
    that name, and deletes the parked entry for good once the op is durable; a
    rollback renames it back. A rename over an existing target parks the target
    the same way (renameat2 RENAME_EXCHANGE, then park the old target: the name
    never goes missing). If parking is impossible (EXDEV: the directory is on
    another file system), remove for real and record nothing: early durability
    is always allowed.

    Durability, as on a journaling file system: ``fsyncdir(d)`` makes durable
    every pending op that changed ``d`` (a rename or exchange, both of its
    directories at once), and with them every older op sharing a directory with
    one made durable, so no rollback ever undoes what a durable op built on.
    A removed directory counts as changed by its removal, so that removal takes
    the removals of its entries with it. A mkdir made durable with its contents
    is the exception on purpose: fsync of a new directory does not make its
    entry in the parent durable, the bug an rmtree rollback shows.

    Every mutating call returns the ops that became durable (oldest first): the
    caller deletes their trash entries and stops pinning their ``deps``. Beyond
    ``max_ops`` pending ops the oldest become durable early, as write-back would,
    and are counted.

    That is the strict model. The journal model is kept beside it, so that each
    power cut may choose: ``committed`` is the newest op a journal commit covered.
    A journal writes operations in order, so what it keeps is always the oldest
    ops up to one point: ``sync`` of a file moves the point to the newest op that
    named it (all of them if the file had pending data: its size and times go
    into the newest transaction), ``fsyncdir`` to the newest op that changed the
    directory. Ops stay pending (and parked entries in the trash) until durable
    in the strict sense too, since a later cut may ask for that model.
    """

    def __init__(self, max_ops: int = 10_000) -> None:
        if max_ops <= 0:
            raise ValueError("max_ops must be positive")
        self.max_ops = max_ops
        self._ops: list[DirOp[K]] = []
        self._seq = 0
        self._trash_seq = 0
        self.early_durable = 0
        self.committed = 0  # journal model: every op with seq up to this is durable
        self._named: dict[K, int] = {}  # inode -> the newest op that named it (sync's lookup)

    def __len__(self) -> int:
        return len(self._ops)

    def pending(self) -> list[DirOp[K]]:
        """report-unsynced: the ops a power cut would undo, oldest first."""
        return list(self._ops)

    def trash_name(self) -> bytes:
        """A fresh name to park a removed entry under in the trash directory."""
        self._trash_seq += 1
        return b"%d" % self._trash_seq

    def _record(self, op: DirOp[K]) -> list[DirOp[K]]:
        self._ops.append(op)
        if op.node is not None:
            self._named[op.node] = op.seq
            if len(self._named) > 4 * self.max_ops:  # forget inodes no pending op names
                self._named = {o.node: o.seq for o in self._ops if o.node is not None}
        if len(self._ops) <= self.max_ops:
            return []
        # The oldest first: undoing only newer ops stays consistent.
        spill = len(self._ops) - self.max_ops
        durable, self._ops = self._ops[:spill], self._ops[spill:]
        self.early_durable += spill
        return durable

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    # After the operation succeeded on the backing tree, record it:

    @property
    def seq(self) -> int:
        """The newest op's number (ops are numbered from 1 in the order made)."""
        return self._seq

    def create(self, dir: K, name: bytes, node: K | None = None) -> list[DirOp[K]]:
        """A new file, device node or symlink ``dir/name`` (the inode ``node``)."""
        return self._record(DirOp(self._next(), "create", dir, name, node=node))

    def mkdir(self, dir: K, name: bytes, child: K | None = None) -> list[DirOp[K]]:
        return self._record(DirOp(self._next(), "mkdir", dir, name, child=child, node=child))

    def link(self, dir: K, name: bytes, node: K | None = None) -> list[DirOp[K]]:
        """A new hard link ``dir/name`` to ``node``."""
        return self._record(DirOp(self._next(), "link", dir, name, node=node))

    def unlink(self, dir: K, name: bytes, trash: bytes) -> list[DirOp[K]]:
        """``dir/name`` was parked in the trash as ``trash`` instead of unlinked."""
        return self._record(DirOp(self._next(), "unlink", dir, name, trash=trash))

    def rmdir(self, dir: K, name: bytes, trash: bytes, child: K | None = None) -> list[DirOp[K]]:
        """The empty directory ``dir/name`` (id ``child``) was parked as ``trash``."""
        return self._record(DirOp(self._next(), "rmdir", dir, name, trash=trash, child=child))

    def rename(
        self,
        dir: K,
        name: bytes,
        to_dir: K,
        to_name: bytes,
        *,
        trash: bytes | None = None,
        child: K | None = None,
        exchange: bool = False,
        node: K | None = None,
    ) -> list[DirOp[K]]:
        """``dir/name`` (the inode ``node``) became ``to_dir/to_name``; ``trash``:
        where the replaced target was parked (``child``: its id if it was a
        directory); ``exchange``: RENAME_EXCHANGE swapped the two."""
        kind: OpKind = "exchange" if exchange else "rename"
        op = DirOp(self._next(), kind, dir, name, to_dir, to_name, trash, child, node)
        return self._record(op)

    def sync(self, node: K, everything: bool = False) -> None:
        """Journal model: an fsync of the file ``node``. Its creation and the renames
        that named it become durable, with every op made before them; with
        ``everything`` (it had pending data or a size change) every op so far."""
        if everything:
            self.committed = self._seq
            return
        seq = self._named.get(node)
        if seq is None or seq <= self.committed:
            return
        at = bisect_left(self._ops, seq, key=lambda op: op.seq)
        if at < len(self._ops) and self._ops[at].seq == seq:  # not rolled back since
            self.committed = seq

    def settle(self, through: int) -> list[DirOp[K]]:
        """Every op numbered up to ``through`` becomes durable in both models (the
        periodic commit of a journal, the write-back of a kernel); return them."""
        self.committed = max(self.committed, through)
        cut = 0
        while cut < len(self._ops) and self._ops[cut].seq <= through:
            cut += 1
        durable, self._ops = self._ops[:cut], self._ops[cut:]
        return durable

    def fsyncdir(self, dir: K) -> list[DirOp[K]]:
        for op in reversed(self._ops):  # journal: the transaction of its newest change
            if op.seq <= self.committed:
                break
            if dir in op.deps:
                self.committed = op.seq
                break
        touched = {dir}
        durable: list[DirOp[K]] = []
        kept: list[DirOp[K]] = []
        for op in reversed(self._ops):  # newest first: closure runs back in time only
            deps = op.deps
            if touched.isdisjoint(deps):
                kept.append(op)
            else:
                durable.append(op)
                touched.update(deps)
        if durable:
            kept.reverse()
            self._ops = kept
            durable.reverse()
        return durable

    def _lost(
        self,
        match: Callable[[K], bool] | None,
        entries: EntryMatch[K] | None = None,
        model: Model = "strict",
    ) -> list[DirOp[K]]:
        ops = self._ops
        if model == "journal":
            ops = [op for op in ops if op.seq > self.committed]
        if match is None and entries is None:
            return list(ops)
        # An op is lost if it changed a matching directory or entry, or if an older
        # lost op touched a directory it changed too: keeping it while undoing what
        # it built on would leave a rollback that cannot apply. (Under the journal
        # model the ops that survive are older than every lost one: unaffected.)
        tainted: set[K] = set()
        lost = []
        for op in ops:
            deps = op.dirs if op.child is None else (*op.dirs, op.child)  # mkdir's too
            if (
                not tainted.isdisjoint(deps)
                or (match is not None and any(match(d) for d in op.dirs))
                or (entries is not None and any(entries(d, n) for d, n in op.entries))
            ):
                lost.append(op)
                tainted.update(deps)
        return lost

    def lost(
        self,
        match: Callable[[K], bool] | None = None,
        entries: EntryMatch[K] | None = None,
        model: Model = "strict",
    ) -> list[DirOp[K]]:
        """The ops ``lose(match, entries, model)`` would roll back, oldest first."""
        return self._lost(match, entries, model)

    def undo_plan(self, match: Callable[[K], bool] | None = None) -> list[Undo[K]]:
        """The steps, newest op first, that roll back what a power cut would lose
        (``match``: only in matching directories, and what depends on them)."""
        return [step for op in reversed(self._lost(match)) for step in _inverse(op)]

    def lose(
        self,
        match: Callable[[K], bool] | None = None,
        entries: EntryMatch[K] | None = None,
        model: Model = "strict",
    ) -> list[Undo[K]]:
        """lose-unsynced --metadata: forget the lost ops; the caller runs the plan.

        ``match`` picks ops by the directories they changed, ``entries`` by the
        names they made, removed or moved (directory, name); with neither, all."""
        return self.cut(match, entries, model)[1]

    def cut(
        self,
        match: Callable[[K], bool] | None = None,
        entries: EntryMatch[K] | None = None,
        model: Model = "strict",
    ) -> tuple[list[DirOp[K]], list[Undo[K]], list[DirOp[K]]]:
        """A power cut: (the ops lost, oldest first; the plan that rolls them back;
        the ops it covered that survived it, durable from now on in both models).

        What survived a power cut is on the disk: a later cut under the other
        model must not take it back."""
        lost = self._lost(match, entries, model)
        plan = [step for op in reversed(lost) for step in _inverse(op)]
        gone = {op.seq for op in lost}
        survivors: list[DirOp[K]] = []
        if model == "journal":
            covered = self._lost(match, entries, "strict")
            survivors = [op for op in covered if op.seq <= self.committed]
            gone |= {op.seq for op in survivors}
        self._ops = [op for op in self._ops if op.seq not in gone]
        return lost, plan, survivors
