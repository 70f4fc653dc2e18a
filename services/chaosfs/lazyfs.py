"""Lazy mode: chaosfs plays the machine's page cache, so a power cut can lose data.

Two parts: ``LazyBacking``, the backing store (``backing.Backing``) that holds
what is unsynced, and ``LazyOperations``, the FUSE operations over it, which add
what the kernel must be shown differently (sizes and times from the cache, the
trash hidden). What they do:

- Writes and truncates go into a ``LazyCache`` (see ``lazy``) instead of the
  backing file; reads and sizes see them, as a page cache would. fsync and
  fdatasync write the file back, then sync it. Beyond the memory budget the
  oldest dirty files are written back early, which a kernel may do too.
- Directory operations are made so that they can be rolled back until an
  fsyncdir covers them: removals (unlink, rmdir, a rename over a target) park
  the entry in a trash directory beside the data, hidden from the mount, and
  each operation is recorded in a ``MetaJournal``.
- The control plane asks, on the trio thread, for what is unsynced
  (``unsynced``), for it to be lost (``lose``), or torn (``tear``); each returns
  what the kernel must forget (see ``control._invalidate``).
- What stat shows is what a page cache with delayed allocation shows: the
  pending size, blocks reserved for pending data, mtime and ctime of the last
  write or truncate (and a time the program set explicitly, kept through the
  write-back). Errors the backing file system would give at the call are given
  at the call: EFBIG past its largest file, ENOSPC when pending data would not
  fit in its free space.
- A timer writes back what has been dirty longer than ``expire`` seconds, and
  makes directory operations that old durable, as a kernel's flusher threads
  and a journal's periodic commit do (0: never).

A clean stop writes everything back and empties the trash: a pod that is shut
down loses nothing, as a machine that unmounts cleanly loses nothing.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import re
import resource
import shutil
import stat
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pyfuse3
import structlog
import trio
from pyfuse3 import EntryAttributes

from chaosbus.protocol import CommandError

from . import processes, sysio
from .backing import DirectBacking
from .faults import FaultEngine
from .inodes import ROOT, Inode, InodeTable
from .lazy import DirOp, DirtyFile, LazyCache, MetaJournal, Model, Undo
from .passthrough import AT_FDCWD, ChaosOperations, DirHandle, FileHandle

# Beside the data, on the same file system (renames into it are atomic and
# free), and never shown through the mount.
TRASH = b".chaosfs-trash"
# Dirty files held at once, each with a writable descriptor; an eighth of the
# descriptor limit at most, the rest is the inode table's.
MAX_WRITERS = 4096
Key = tuple[int, int]  # (st_dev, st_ino): stable while the kernel forgets and relearns nodes
# Invalidations for the kernel: (node id, 0, b"") drops an inode's cached pages and
# attributes, (0, parent node id, name) a directory entry; see control._invalidate.
Invalidation = tuple[int, int, bytes]
# The kernel's defaults: dirty data older than 30 s is written back
# (vm.dirty_expire_centisecs), the flusher looks every 5 s (dirty_writeback_centisecs).
DEFAULT_EXPIRE = 30.0
DEFAULT_INTERVAL = 5.0
# Pending directory operations at most (each may park an entry in the trash);
# beyond it the oldest become durable early, as a journal that fills up commits.
MAX_DIR_OPS = 4096
# Unsynced writes report-unsynced lists per file (by number, for torn-write --persist).
LISTED_WRITES = 256
# Times shown for files written back, remembered at most (see _entry).
CTIMES_KEPT = 65536
# How long a free-space reading stays good for the ENOSPC check (other writers share
# the file system).
SPACE_RECHECK = 1.0
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


class LazyBacking:
    """Lazy mode's backing store: the page cache (a ``backing.Backing``).

    Holds unsynced writes and size changes (``cache``), the pending directory
    operations (``journal``) and the trash their removals are parked in, writes
    back on sync, on the memory budget and by age, and answers the control
    plane's questions (what is unsynced) and actions (lose, tear) about them.
    """

    reshapes = True  # sizes, times and link counts as the page cache shows them (show)
    watches_forgets = True  # a forgotten dirty file with no name left is dropped
    open_strip = os.O_TRUNC  # truncates in the cache, not on disk (opened)
    hidden: tuple[int, bytes] | None = (ROOT, TRASH)

    def __init__(
        self,
        table: InodeTable,
        max_bytes: int,
        log: structlog.stdlib.BoundLogger,
        *,
        expire: float = DEFAULT_EXPIRE,
        interval: float = DEFAULT_INTERVAL,
        max_dir_ops: int = MAX_DIR_OPS,
    ) -> None:
        self.table = table
        # The operations' open files (they set it): who still writes what (tear).
        self.files: dict[int, FileHandle] = {}
        self.direct = DirectBacking(table)  # for what cannot be journaled (see _pin_all)
        self.log = log
        self.cache: LazyCache[Key] = LazyCache(max_bytes)
        self.journal: MetaJournal[Key] = MetaJournal(max_dir_ops)
        # Write-back by age (0: off): files dirty longer than expire, directory ops
        # older than that, looked for every interval seconds.
        self.expire = expire
        self.interval = interval if interval > 0 else DEFAULT_INTERVAL
        self.checkpoints: collections.deque[tuple[float, int]] = collections.deque()
        self.expired_dir_ops = 0
        # ctime shown for a file written back: (shown, the backing ctime it stands
        # for). The write-back itself changed the backing ctime, which a page cache's
        # write-back would not; once anything else changes it, the backing is right.
        self.ctimes: collections.OrderedDict[Key, tuple[int, int]] = collections.OrderedDict()
        # Free space: good until the dirty files need more than space_ok new bytes
        # or SPACE_RECHECK passed.
        self.space_ok = -1
        self.space_at = 0.0
        # A writable descriptor per dirty file: write-back goes through it, also
        # after every handle closed or the kernel forgot the node.
        self.writers: dict[Key, int] = {}
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.max_writers = min(MAX_WRITERS, max(16, soft // 8))
        self.synchronous: set[int] = set()  # handles opened O_DSYNC or O_SYNC
        self.paths: dict[Key, str] = {}  # where each dirty file was when first dirtied
        # Directories pending ops refer to: [descriptor, ops pinning it].
        self.dir_pins: dict[Key, list[int]] = {}
        self.parked: dict[Key, int] = {}  # links of an inode parked in the trash
        self.parked_as: dict[bytes, Key] = {}  # trash name -> the inode parked there
        self.trash_fd = self._open_trash(table.root.fd)
        self.max_file_size = _largest_file(self.trash_fd)

    # --- the trash --------------------------------------------------------------------

    def _open_trash(self, root_fd: int) -> int:
        with contextlib.suppress(FileExistsError):
            os.mkdir(TRASH, 0o700, dir_fd=root_fd)
        fd = os.open(TRASH, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
        # Left by a chaosfs that died: their removal happened, nobody can undo it now.
        for name in os.listdir(f"/proc/self/fd/{fd}"):
            self._delete(fd, os.fsencode(name))
        return fd

    @staticmethod
    def _delete(dir_fd: int, name: bytes) -> None:
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                shutil.rmtree(os.fsdecode(name), dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass

    def _park(self, parent_fd: int, name: bytes, key: Key | None) -> bytes:
        trash = self.journal.trash_name()
        os.rename(name, trash, src_dir_fd=parent_fd, dst_dir_fd=self.trash_fd)
        if key is not None:
            self.parked[key] = self.parked.get(key, 0) + 1
            self.parked_as[trash] = key
        return trash

    def _unpark(self, trash: bytes) -> None:
        key = self.parked_as.pop(trash, None)
        if key is not None:
            left = self.parked.get(key, 0) - 1
            if left > 0:
                self.parked[key] = left
            else:
                self.parked.pop(key, None)

    def listdir(self, handle: DirHandle) -> list[bytes]:
        """The directory's names, less the trash (it lives beside the data)."""
        names = self.direct.listdir(handle)
        if handle.inode.id == ROOT:
            names = [n for n in names if n != TRASH]
        return names

    # --- what the kernel sees ---------------------------------------------------------

    def show(self, inode: Inode, st: os.stat_result, entry: EntryAttributes) -> None:
        """The backing file's attributes as the page cache shows them: the pending
        size, blocks and times; link counts without the names parked in the trash."""
        key = inode.key
        dirty = self.cache.get(key)
        if dirty is not None:
            entry.st_size = dirty.size(st.st_size)
            entry.st_blocks = dirty.blocks(st.st_blocks, st.st_blksize)
            if dirty.mtime_ns is not None:
                entry.st_mtime_ns = dirty.mtime_ns
            if dirty.ctime_ns is not None:
                entry.st_ctime_ns = max(st.st_ctime_ns, dirty.ctime_ns)
        elif self.ctimes:
            shown = self.ctimes.get(key)
            if shown is not None:
                if shown[1] == st.st_ctime_ns:
                    entry.st_ctime_ns = shown[0]
                else:
                    # Changed since through the mount: the backing is right.
                    del self.ctimes[key]
        parked = self.parked.get(key)
        if parked:
            entry.st_nlink = max(0, st.st_nlink - parked)
        if inode.id == ROOT and st.st_nlink > 2:
            # The trash directory's ".." is a link to the root that no program made
            # (file systems that count no subdirectory links show 1: left alone).
            entry.st_nlink -= 1

    # --- what open handles, setattr and statfs leave to the page cache -----------------

    def opened(self, node: Inode, fh: int, flags: int) -> None:
        """``node`` was opened with ``flags`` as ``fh``; the backing open left O_TRUNC
        out, which empties the file in the cache, not on disk: a power cut brings
        it back."""
        self.note_synchronous(fh, flags)
        if flags & os.O_TRUNC:  # even O_RDONLY: Linux truncates, the kernel checked the right
            self.truncate(node, None, 0)

    def created(self, fh: int, flags: int) -> None:
        self.note_synchronous(fh, flags)

    def note_synchronous(self, fh: int, flags: int) -> None:
        if flags & os.O_DSYNC:  # O_SYNC includes this bit on Linux
            self.synchronous.add(fh)

    def closed(self, fh: int) -> None:
        self.synchronous.discard(fh)

    def mtime_set(self, node: Inode, mtime_ns: int) -> None:
        """A time set went to the backing file: the page cache shows it from now on,
        and the write-back keeps it (tar, cp -p, rsync -t, touch -d)."""
        dirty = self.cache.get(node.key)
        if dirty is not None:
            dirty.mtime_ns = mtime_ns

    def reserved(self) -> int:
        """Blocks unsynced data will take are not free, as with delayed allocation."""
        return self.cache.grown

    def start(self) -> None:
        if self.expire > 0:
            trio.lowlevel.spawn_system_task(self.flusher, name="lazy write-back")

    def make_room(self) -> bool:
        return self.free_trash()

    def forgotten(self, keys: list[Key]) -> None:
        """The kernel forgot the nodes of ``keys``: a dirty file without a name left
        goes (see drop_if_gone)."""
        for key in keys:
            if key in self.writers and key not in self.table.by_key:
                self.drop_if_gone(key)

    # --- data -------------------------------------------------------------------------

    def _dirty(self, node: Inode) -> DirtyFile:
        key = node.key
        dirty = self.cache.get(key)
        if dirty is not None and key in self.writers:
            return dirty
        fd = self.writers.get(key)
        if fd is None:
            if len(self.writers) >= self.max_writers:
                # Many small dirty files (an untar, no fsync) must not run the process
                # out of descriptors: write back the oldest-dirtied, as write-back would.
                self._write_back(next(iter(self.writers)), early=True)
            fd = self.writers[key] = os.open(node.proc, os.O_WRONLY)
            self.paths[key] = self.table.path(node)
        self.ctimes.pop(key, None)
        return self.cache.begin(key, os.fstat(fd).st_size, time.monotonic())

    def pread(self, handle: FileHandle, fh: int, size: int, off: int) -> bytes:
        dirty = self.cache.get(handle.inode.key)
        if dirty is None:
            return os.pread(fh, size, off)
        return dirty.read(off, size, lambda o, n: os.pread(fh, n, o), os.fstat(fh).st_size)

    def pwrite(self, handle: FileHandle, fh: int, buf: bytes, off: int) -> int:
        node = handle.inode
        if off + len(buf) > self.max_file_size:
            # What the backing file system would say at the call, not at fsync.
            if off >= self.max_file_size:
                raise OSError(errno.EFBIG, "past the backing file system's largest file")
            buf = buf[: self.max_file_size - off]
        dirty = self._dirty(node)
        growth = max(0, off + len(buf) - max(off, dirty.alloc_base))
        if growth:
            buf = self._reserve(buf, growth, handle.uid)
        now = time.time_ns()
        dirty.mtime_ns = dirty.ctime_ns = now
        for victim in self.cache.write(node.key, off, buf):
            self._write_back(victim, early=True)
        if fh in self.synchronous:
            # O_DSYNC (O_SYNC): durable when write() returns, as LMDB's meta page
            # expects. For a write-only (direct_io) handle no fsync follows from the
            # kernel, so this is the only chance.
            self._write_back(node.key)
            os.fdatasync(fh)
            self.journal.sync(node.key, everything=True)
        return len(buf)

    def _reserve(self, buf: bytes, growth: int, uid: int) -> bytes:
        """The part of ``buf`` the backing file system has room for, as delayed
        allocation reserves blocks at write(): all of it, a short write, or ENOSPC."""
        need = self.cache.grown + growth
        now = time.monotonic()
        if need <= self.space_ok and now - self.space_at < SPACE_RECHECK:
            return buf
        free = self._free_bytes(uid)
        if need > free and self.free_trash():
            free = self._free_bytes(uid)
        self.space_at = now
        self.space_ok = self.cache.grown + (free - self.cache.grown) // 2
        short = need - free
        if short <= 0:
            return buf
        if short >= len(buf):
            raise OSError(errno.ENOSPC, "no space left for unsynced data")
        return buf[: len(buf) - short]

    def _free_bytes(self, uid: int) -> int:
        sv = os.statvfs(self.table.root.fd)
        # The reserved blocks (ext4's 5 %) are root's, as the kernel gives them.
        blocks = sv.f_bfree if uid == 0 else sv.f_bavail
        return blocks * sv.f_frsize

    def size(self, node: Inode, fd: int) -> int:
        return self.cache.size(node.key, os.fstat(fd).st_size)

    def truncate(self, node: Inode, fh: int | None, size: int) -> None:
        if size > self.max_file_size:
            raise OSError(errno.EFBIG, "past the backing file system's largest file")
        dirty = self._dirty(node)
        self.cache.truncate(node.key, size)
        dirty.mtime_ns = dirty.ctime_ns = time.time_ns()

    def before_sync(self, handle: FileHandle) -> None:
        key = handle.inode.key
        had_data = key in self.cache
        self._write_back(key)
        # The journal model: the sync commits the file's creation and renames (and,
        # if it had data or a size change, everything before: see MetaJournal).
        self.journal.sync(key, everything=had_data)

    def _write_back(self, key: Key, *, early: bool = False, expired: bool = False) -> None:
        fd = self.writers.get(key)
        dirty = self.cache.get(key)
        if fd is not None and dirty is not None:
            mtime, ctime = dirty.mtime_ns, dirty.ctime_ns
            if ctime is not None:
                with contextlib.suppress(OSError):  # a chmod since shows its own ctime
                    ctime = max(ctime, os.fstat(fd).st_ctime_ns)
            flush = partial(
                self.cache.flush,
                key,
                partial(os.pwrite, fd),
                partial(os.ftruncate, fd),
                early=early,
                expired=expired,
            )
            try:
                # Raises with everything kept: the caller's fsync fails, as on a sick disk.
                flush()
            except OSError as exc:
                if exc.errno not in _OUT_OF_SPACE or not self.free_trash():
                    raise
                flush()
            self._keep_times(key, fd, mtime, ctime)
        self._clean(key)

    def _keep_times(self, key: Key, fd: int, mtime: int | None, ctime: int | None) -> None:
        """After a write-back: the backing file shows the times the page cache showed,
        not the time of the write-back."""
        try:
            if mtime is not None:
                sysio.utimensat(AT_FDCWD, b"/proc/self/fd/%d" % fd, None, mtime, follow=True)
            st = os.fstat(fd)
        except OSError as exc:
            self.log.warning("times_not_kept", path=self._path(key), error=str(exc))
            return
        if ctime is not None and ctime < st.st_ctime_ns:
            self.ctimes[key] = (ctime, st.st_ctime_ns)
            self.ctimes.move_to_end(key)
            if len(self.ctimes) > CTIMES_KEPT:
                self.ctimes.popitem(last=False)

    def _clean(self, key: Key) -> None:
        fd = self.writers.pop(key, None)
        self.paths.pop(key, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def drop_if_gone(self, key: Key) -> None:
        """A dirty file with no name left that the kernel forgot: nobody can read or
        sync it again, so its data is no loss, and holds memory and a descriptor."""
        fd = self.writers.get(key)
        if fd is None or key in self.table.by_key:
            return
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_nlink == 0:
                self.cache.forget(key)
                self._clean(key)

    # --- directory entries ------------------------------------------------------------
    #
    # Each op pins the directories a rollback would work in before it changes
    # anything. Where that or parking is impossible (no descriptor left, the
    # entry on another file system: EXDEV), the op happens for real and is not
    # journaled: early durability is always allowed.

    def _pin_all(self, *dirs: Inode) -> bool:
        pinned: list[Key] = []
        try:
            for node in {node.key: node for node in dirs}.values():
                pin = self.dir_pins.get(node.key)
                if pin is None:
                    self.dir_pins[node.key] = [os.dup(node.fd), 1]
                else:
                    pin[1] += 1
                pinned.append(node.key)
        except OSError as exc:
            for key in pinned:
                self._unpin(key)
            self.log.warning("journal_skipped", reason="cannot pin a directory", error=str(exc))
            return False
        return True

    def _unpin(self, key: Key) -> None:
        pin = self.dir_pins.get(key)
        if pin is None:
            return
        pin[1] -= 1
        if pin[1] <= 0:
            del self.dir_pins[key]
            os.close(pin[0])

    def _unpin_all(self, *dirs: Inode) -> None:
        for key in {node.key for node in dirs}:
            self._unpin(key)

    def _retire(self, durable: list[DirOp[Key]]) -> None:
        """Ops made durable: their removals happen for good, their directories are free."""
        for op in durable:
            if op.trash is not None:
                key = self.parked_as.get(op.trash)
                self._unpark(op.trash)
                try:
                    self._delete(self.trash_fd, op.trash)
                except OSError as exc:
                    self.log.warning("trash_delete_failed", entry=op.trash, error=str(exc))
                if key is not None:
                    self.drop_if_gone(key)
            for key in op.dirs:
                self._unpin(key)

    def made(self, parent: Inode, name: bytes, node: Inode) -> None:
        if not self._pin_all(parent):
            return
        if node.is_dir:
            self._retire(self.journal.mkdir(parent.key, name, child=node.key))
        else:  # a hard link too: undone the same way, and reports tell them apart
            self._retire(self.journal.create(parent.key, name, node=node.key))

    def _parked(self, parent: Inode, name: bytes, key: Key | None) -> bytes | None:
        """Pin ``parent`` and park ``parent/name`` in the trash; its trash name, or
        None if either is impossible (the caller then removes it for real)."""
        if not self._pin_all(parent):
            return None
        try:
            return self._park(parent.fd, name, key)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EMFILE, errno.ENFILE, errno.ENOSPC):
                self._unpin_all(parent)
                raise
        self._unpin_all(parent)
        path = self.table.child_path(parent, name)
        self.log.warning("journal_skipped", reason="cannot park", path=path)
        return None

    def unlink(self, parent: Inode, name: bytes) -> Inode | None:
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        self._refuse_trash(parent, name)
        trash = self._parked(parent, name, (st.st_dev, st.st_ino))
        if trash is None:
            return self.direct.unlink(parent, name)
        self._retire(self.journal.unlink(parent.key, name, trash))
        return None  # parked: its space stays taken until the removal is durable

    def rmdir(self, parent: Inode, name: bytes) -> None:
        self._refuse_trash(parent, name)
        st = _empty_directory(parent.fd, name)
        trash = self._parked(parent, name, None)
        if trash is None:
            return self.direct.rmdir(parent, name)
        child = (st.st_dev, st.st_ino)
        self._retire(self.journal.rmdir(parent.key, name, trash, child))

    def _refuse_trash(self, parent: Inode, name: bytes) -> None:
        if parent.id == ROOT and name == TRASH:
            raise PermissionError(errno.EPERM, "reserved for lazy mode")

    def rename(
        self, old_parent: Inode, old: bytes, new_parent: Inode, new: bytes, flags: int
    ) -> None:
        self._refuse_trash(old_parent, old)
        self._refuse_trash(new_parent, new)
        source = os.stat(old, dir_fd=old_parent.fd, follow_symlinks=False)
        moved = (source.st_dev, source.st_ino)
        try:
            target = os.stat(new, dir_fd=new_parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            target = None
        if not self._pin_all(old_parent, new_parent):
            self.direct.rename(old_parent, old, new_parent, new, flags)
        elif flags & pyfuse3.RENAME_EXCHANGE or target is None or flags & pyfuse3.RENAME_NOREPLACE:
            try:
                self.direct.rename(old_parent, old, new_parent, new, flags)
            except OSError:
                self._unpin_all(old_parent, new_parent)
                raise
            exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
            op = self.journal.rename(
                old_parent.key, old, new_parent.key, new, exchange=exchange, node=moved
            )
            self._retire(op)
        elif _same(source, target):
            self._unpin_all(old_parent, new_parent)  # rename(2) does nothing then
            self.direct.rename(old_parent, old, new_parent, new, flags)
        else:
            try:
                self._replace(old_parent, old, new_parent, new, source, target)
            except OSError:
                self._unpin_all(old_parent, new_parent)
                raise
        # Reports name a dirty file by where it is, also once the kernel forgot it.
        if moved in self.paths:
            self.paths[moved] = self.table.child_path(new_parent, new)
        if target is not None and flags & pyfuse3.RENAME_EXCHANGE:
            swapped = (target.st_dev, target.st_ino)
            if swapped in self.paths:
                self.paths[swapped] = self.table.child_path(old_parent, old)

    def _replace(
        self,
        old_parent: Inode,
        old: bytes,
        new_parent: Inode,
        new: bytes,
        source: os.stat_result,
        target: os.stat_result,
    ) -> None:
        """A rename over a target: swap, then park the old target, so the name never
        goes missing and a power cut can bring it back."""
        # rename(2)'s own checks first: an exchange would not make them.
        source_dir = stat.S_ISDIR(source.st_mode)
        target_dir = stat.S_ISDIR(target.st_mode)
        if source_dir and not target_dir:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        if target_dir and not source_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        if target_dir:
            _empty_directory(new_parent.fd, new)
        sysio.renameat2(old_parent.fd, old, new_parent.fd, new, pyfuse3.RENAME_EXCHANGE)
        replaced = (target.st_dev, target.st_ino)
        try:
            trash = self._park(old_parent.fd, old, None if target_dir else replaced)
        except OSError as exc:
            # Swap back and replace for real, unjournaled; or fail with nothing changed.
            sysio.renameat2(old_parent.fd, old, new_parent.fd, new, pyfuse3.RENAME_EXCHANGE)
            self.log.warning("journal_skipped", reason="cannot park", error=str(exc))
            os.rename(old, new, src_dir_fd=old_parent.fd, dst_dir_fd=new_parent.fd)
            self._unpin_all(old_parent, new_parent)
            return
        op = self.journal.rename(
            old_parent.key,
            old,
            new_parent.key,
            new,
            trash=trash,
            child=replaced if target_dir else None,
            node=(source.st_dev, source.st_ino),
        )
        self._retire(op)

    def before_sync_dir(self, handle: DirHandle) -> None:
        self._retire(self.journal.fsyncdir(handle.inode.key))

    # --- space, and write-back by age ---------------------------------------------------

    def free_trash(self) -> bool:
        """Out of space: the files parked in the trash hold space a native unlink
        would have freed. Make their removals durable now (early, as a full journal
        would commit); return whether any was."""
        pending = self.journal.pending()
        last = max((op.seq for op in pending if op.trash is not None), default=0)
        if not last:
            return False
        durable = self.journal.settle(last)
        self.journal.early_durable += len(durable)
        self._retire(durable)
        self.log.warning("trash_freed_early", reason="out of space", dir_ops=len(durable))
        return True

    async def flusher(self) -> None:
        """The flusher: every interval, write back what is older than expire."""
        while True:
            await trio.sleep(self.interval)
            try:
                await self.write_back_expired(time.monotonic())
            except Exception as exc:  # never end the mount; the next tick tries again
                self.log.warning("timed_write_back_failed", error=str(exc))

    async def write_back_expired(self, now: float) -> None:
        before = now - self.expire
        self.checkpoints.append((now, self.journal.seq))
        through = 0
        while self.checkpoints and self.checkpoints[0][0] <= before:
            through = self.checkpoints.popleft()[1]
        if through:
            durable = self.journal.settle(through)
            self.expired_dir_ops += len(durable)
            self._retire(durable)
        for key in self.cache.expired(before):
            dirty = self.cache.get(key)
            if dirty is None or dirty.since > before:
                continue  # synced, or dirtied anew, while others were written back
            self._write_back(key, expired=True)
            await trio.sleep(0)  # requests go on between files

    # --- for the control plane (trio thread only) -------------------------------------

    def _path(self, key: Key) -> str:
        node = self.table.by_key.get(key)
        if node is not None:
            return self.table.path(node)
        return self.paths.get(key, f"(inode {key[1]})")

    def _dir_path(self, key: Key, name: bytes | None) -> str:
        base = self._path(key)
        if name is None:
            return base
        child = os.fsdecode(name)
        return f"{base}/{child}" if base else child

    def _describe(self, op: DirOp[Key]) -> dict[str, Any]:
        to = None
        if op.to_dir is not None:
            to = self._dir_path(op.to_dir, op.to_name)
        return {"kind": op.kind, "path": self._dir_path(op.dir, op.name), "to": to}

    def _matcher(self, regex: re.Pattern[str]) -> Callable[[Key], bool]:
        return lambda key: bool(regex.match(self._path(key)))

    def status(self) -> dict[str, Any]:
        stats = self.cache.stats
        return {
            "enabled": True,
            "max_bytes": self.cache.max_bytes,
            "held_bytes": self.cache.held,
            "unsynced_files": len(self.cache),
            "unsynced_bytes": sum(self.cache.report().values()),
            "pending_dir_ops": len(self.journal),
            "early_durable_dir_ops": self.journal.early_durable,
            "expired_dir_ops": self.expired_dir_ops,
            "trash_entries": len(os.listdir(f"/proc/self/fd/{self.trash_fd}")),
            "expire": self.expire,
            "flush_interval": self.interval,
            "max_file_size": self.max_file_size,
            "stats": {name: getattr(stats, name) for name in stats.__slots__},
        }

    def _entries(self, regex: re.Pattern[str]) -> Callable[[Key, bytes], bool]:
        return lambda key, name: bool(regex.match(self._dir_path(key, name)))

    def _by_path(self, sizes: dict[Key, int]) -> dict[str, int]:
        """Per path; two inodes can share one (an open file replaced by a rename)."""
        out: dict[str, int] = {}
        for key, n in sizes.items():
            path = self._path(key)
            out[path] = out.get(path, 0) + n
        return out

    def _backing_size(self, key: Key) -> int:
        fd = self.writers.get(key)
        try:
            return os.fstat(fd).st_size if fd is not None else 0
        except OSError:
            return 0

    def unsynced(self, regex: re.Pattern[str], model: Model = "journal") -> dict[str, Any]:
        """What a power cut now would lose: per file, every byte whose content would
        change (pending writes and size changes); ``with_metadata``, the same for a
        cut with --metadata under ``model``, which also takes away the files whose
        creation it undoes; the size changes; each file's unsynced writes by number
        (torn-write --persist takes them); the directory ops undone."""
        match = self._matcher(regex)
        files: dict[str, int] = {}
        sizes: dict[str, dict[str, int]] = {}
        writes: dict[str, dict[str, Any]] = {}
        for key in [k for k in self.writers if k in self.cache and match(k)]:
            dirty = self.cache.get(key)
            assert dirty is not None
            path, base = self._path(key), self._backing_size(key)
            files[path] = files.get(path, 0) + dirty.changed(base)
            if dirty.size(base) != base:
                sizes[path] = {"now": dirty.size(base), "after_cut": base}
            writes[path] = {"count": dirty.op_count, "ops": dirty.listing(LISTED_WRITES)}
        ops = self.journal.lost(entries=self._entries(regex), model=model)
        with_metadata = dict(files)
        for path, n in self._undone_bytes(ops).items():
            with_metadata[path] = max(with_metadata.get(path, 0), n)
        return {
            "model": model,
            "files": files,
            "bytes": sum(files.values()),
            "with_metadata": {"files": with_metadata, "bytes": sum(with_metadata.values())},
            "sizes": sizes,
            "writes": writes,
            "dir_ops": [self._describe(op) for op in ops],
        }

    def _undone_bytes(self, ops: list[DirOp[Key]]) -> dict[str, int]:
        """Bytes that undoing ``ops`` would take away with the names they made: a file
        created (its only name), everything under a directory made."""
        out: dict[str, int] = {}
        for op in ops:
            if op.kind not in ("create", "mkdir"):
                continue
            pin = self.dir_pins.get(op.dir)
            if pin is None:
                continue
            try:
                st = os.stat(op.name, dir_fd=pin[0], follow_symlinks=False)
            except OSError:
                continue  # renamed away since: the rename's own undo brings it back
            path = self._dir_path(op.dir, op.name)
            if stat.S_ISREG(st.st_mode) and st.st_nlink - self.parked.get(_key(st), 0) <= 1:
                size = self.cache.size(_key(st), st.st_size)
                if size:
                    out[path] = size
            elif stat.S_ISDIR(st.st_mode):
                for child, (key, size) in _tree_files(pin[0], op.name).items():
                    size = self.cache.size(key, size)
                    if size:
                        out[f"{path}/{child}"] = size
        return out

    def lose(
        self, regex: re.Pattern[str], metadata: bool, model: Model = "journal"
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        """Power went out: drop what matches and was never made durable; with
        ``metadata`` also the directory ops ``model`` says did not reach the disk."""
        match = self._matcher(regex)
        names = {key: self._path(key) for key in self.writers}
        changed = {
            key: dirty.changed(self._backing_size(key))
            for key in self.writers
            if (dirty := self.cache.get(key)) is not None and match(key)
        }
        lost = self.cache.lose(match)
        files: dict[str, int] = {}
        targets: list[Invalidation] = []
        for key in lost:
            path = names.get(key) or self._path(key)
            files[path] = files.get(path, 0) + changed.get(key, 0)
            self._clean(key)
            self.ctimes.pop(key, None)
            node = self.table.by_key.get(key)
            if node is not None:
                targets.append((node.id, 0, b""))
        described: list[dict[str, Any]] = []
        failures: list[str] = []
        if metadata:
            entries = self._entries(regex)
            ops = self.journal.lost(entries=entries, model=model)
            for path, n in self._undone_bytes(ops).items():
                files[path] = max(files.get(path, 0), n)
            described = [self._describe(op) for op in ops]
            ops, plan, survived = self.journal.cut(entries=entries, model=model)
            targets += self._undo(plan, failures)
            for op in ops:
                for key in op.dirs:
                    self._unpin(key)
            self._retire(survived)  # on the disk now, whatever a later cut asks
            self.table.generation += 1
            for key in list(self.writers):  # files whose creation was undone
                self.drop_if_gone(key)
        report: dict[str, Any] = {
            "files": files,
            "bytes": sum(files.values()),
            "dir_ops": described,
        }
        if metadata:
            report["model"] = model
        if failures:
            report["failures"] = failures
        return report, targets

    def _undo(self, plan: list[Undo[Key]], failures: list[str]) -> list[Invalidation]:
        """Roll the backing tree back, newest op first; return the entries that changed."""
        targets: list[Invalidation] = []
        trees: list[bytes] = []
        for step in plan:
            try:
                where = self.dir_pins[step.dir][0]
                if step.action == "unlink":
                    os.unlink(step.name, dir_fd=where)
                elif step.action == "rmtree":
                    # Out of the tree now; deleted once the older steps that may still
                    # work inside it have run.
                    trees.append(self._park(where, step.name, None))
                elif step.action == "restore":
                    assert step.trash is not None
                    os.rename(step.trash, step.name, src_dir_fd=self.trash_fd, dst_dir_fd=where)
                    self._unpark(step.trash)
                    self._revive(where, step.name)
                else:
                    assert step.to_dir is not None and step.to_name is not None
                    there = self.dir_pins[step.to_dir][0]
                    if step.action == "rename":
                        os.rename(step.name, step.to_name, src_dir_fd=where, dst_dir_fd=there)
                    else:
                        sysio.renameat2(
                            where, step.name, there, step.to_name, pyfuse3.RENAME_EXCHANGE
                        )
            except (OSError, KeyError) as exc:
                failures.append(f"{step.action} {self._dir_path(step.dir, step.name)}: {exc}")
                self.log.warning("rollback_step_failed", step=step.action, error=str(exc))
            for key, name in ((step.dir, step.name), (step.to_dir, step.to_name)):
                parent = self.table.by_key.get(key) if key is not None else None
                if parent is not None and name is not None:
                    targets.append((0, parent.id, name))
        for trash in trees:
            try:
                self._delete(self.trash_fd, trash)
            except OSError as exc:
                failures.append(f"delete rolled-back directory: {exc}")
        return targets

    def _revive(self, dir_fd: int, name: bytes) -> None:
        """A removed directory is back: the kernel holds its old node id as dead."""
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        node = self.table.by_key.get((st.st_dev, st.st_ino))
        if node is not None and stat.S_ISDIR(st.st_mode):
            self.table.renumber(node)

    def live_writers(self, keys: set[Key]) -> list[dict[str, Any]]:
        """Processes still alive that hold one of ``keys`` open for writing."""
        found: dict[tuple[int, Key], dict[str, Any]] = {}
        for fh, handle in list(self.files.items()):
            key = handle.inode.key
            if key not in keys or (handle.pid, key) in found or not processes.alive(handle.pid):
                continue
            try:
                mode = fcntl.fcntl(fh, fcntl.F_GETFL) & os.O_ACCMODE
            except OSError:
                continue
            if mode != os.O_RDONLY:
                found[(handle.pid, key)] = {
                    "pid": handle.pid,
                    "comm": processes.comm(handle.pid),
                    "path": self._path(key),
                }
        return list(found.values())

    def tear(
        self,
        regex: re.Pattern[str],
        seed: int | str | None,
        keep: int | None,
        whole_writes: bool,
        align: int,
        persist: tuple[int, ...] | None = None,
        force: bool = True,
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        """Power went out mid write-back: persist a prefix of each file's unsynced
        writes (or exactly the writes numbered in ``persist``).

        A file a live process is writing is refused unless ``force``: tearing its
        data while the program goes on writing corrupts it in a way no power cut
        can (the program never restarts). With ``force`` the reply warns."""
        plans = self.cache.tear(
            self._matcher(regex),
            seed if seed is not None else 0,
            keep=keep,
            whole_writes=whole_writes,
            align=align,
            name=self._path,  # by path, not inode number: the same history tears the same way
            persist=persist,
        )
        writers = self.live_writers(set(plans))
        if writers and not force:
            who = ", ".join(f"{w['path']} (pid {w['pid']} {w['comm']})" for w in writers[:5])
            raise CommandError(
                f"refusing to tear files a live process is writing: {who}; stop it first "
                "(power-cut --tear kills, then tears), or pass --force"
            )
        files: dict[str, dict[str, int]] = {}
        targets: list[Invalidation] = []
        failures: list[str] = []
        for key, plan in plans.items():
            fd = self.writers[key]
            path = self._path(key)
            node = self.table.by_key.get(key)
            if node is not None:
                targets.append((node.id, 0, b""))
            try:
                self.cache.apply_tear(key, plan, partial(os.pwrite, fd), partial(os.ftruncate, fd))
            except OSError as exc:  # the file keeps its unsynced data: nothing was torn
                failures.append(f"{path}: {exc}")
                continue
            self._clean(key)
            mine = files.setdefault(path, {"kept": 0, "lost": 0})
            mine["kept"] += plan.kept
            mine["lost"] += plan.lost
        report: dict[str, Any] = {
            "files": files,
            "kept": sum(f["kept"] for f in files.values()),
            "lost": sum(f["lost"] for f in files.values()),
        }
        if writers:
            report["warnings"] = [
                f"{w['path']} was being written by pid {w['pid']} ({w['comm']}): torn under it"
                for w in writers
            ]
            self.log.warning("torn_under_a_live_writer", writers=writers)
        if failures:
            report["failures"] = failures
        return report, targets

    def settle_all(self) -> None:
        """Every pending directory operation is durable now: removals happen for good."""
        self._retire(self.journal.pending())
        self.journal = MetaJournal()

    def write_back_all(self) -> None:
        """Write every dirty file back (the mount is gone: nothing reads it any more)."""
        for key in list(self.writers):
            fd = self.writers[key]
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_nlink == 0:
                    # Deleted for good: writing it back would take space for nothing.
                    self.cache.forget(key)
                    self._clean(key)
                    continue
            try:
                self._write_back(key)
            except OSError as exc:
                self.log.error("write_back_failed", path=self._path(key), error=str(exc))
        with contextlib.suppress(OSError):
            os.rmdir(TRASH, dir_fd=self.table.root.fd)  # leave the app's directory as it was


class LazyOperations(ChaosOperations):
    """The FUSE operations over a ``LazyBacking``, with lazy mode's actions for the
    control plane (what is unsynced, lose it, tear it) and its clean stop."""

    def __init__(
        self,
        table: InodeTable,
        faults: FaultEngine,
        cache_timeout: float,
        max_bytes: int,
        log: structlog.stdlib.BoundLogger | None = None,
        *,
        expire: float = DEFAULT_EXPIRE,
        interval: float = DEFAULT_INTERVAL,
        max_dir_ops: int = MAX_DIR_OPS,
    ) -> None:
        self.log = log or structlog.get_logger("chaosfs")
        self.store = LazyBacking(
            table, max_bytes, self.log, expire=expire, interval=interval, max_dir_ops=max_dir_ops
        )
        super().__init__(table, faults, cache_timeout, self.store)
        self.store.files = self.files

    def make_all_durable(self) -> None:
        """A clean stop (the mount is gone): empty the trash, then write every file
        back, as an unmount would.

        In that order: the deletions parked in the trash are final now, and on a
        nearly full disk the space they free is what the write-back may need.
        """
        self.store.settle_all()
        # The trash's files are unlinked, but a descriptor of ours still holds each
        # one the kernel knew or an app had open; no request comes any more, so all
        # can be closed (write-back has descriptors of its own).
        for fh in [*self.files, *self.dirs]:
            with contextlib.suppress(OSError):
                os.close(fh)
        self.files.clear()
        self.dirs.clear()
        self.table.close_all()
        self.store.write_back_all()

    # --- for the control plane (trio thread only) -------------------------------------

    def status(self) -> dict[str, Any]:
        return self.store.status()

    def unsynced(self, regex: re.Pattern[str], model: Model = "journal") -> dict[str, Any]:
        return self.store.unsynced(regex, model)

    def lose(
        self, regex: re.Pattern[str], metadata: bool, model: Model = "journal"
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        return self.store.lose(regex, metadata, model)

    def tear(
        self,
        regex: re.Pattern[str],
        seed: int | str | None,
        keep: int | None,
        whole_writes: bool,
        align: int,
        persist: tuple[int, ...] | None = None,
        force: bool = True,
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        return self.store.tear(regex, seed, keep, whole_writes, align, persist, force)

    async def write_back_expired(self, now: float) -> None:
        await self.store.write_back_expired(now)


def _key(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino)


def _tree_files(dir_fd: int, name: bytes, limit: int = 10_000) -> dict[str, tuple[Key, int]]:
    """The regular files under ``dir_fd/name``: relative path -> (key, backing size),
    the first ``limit`` entries only (a report must stay quick)."""
    out: dict[str, tuple[Key, int]] = {}
    seen = 0
    try:
        top = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return out
    try:
        for where, _, names, fd in os.fwalk(dir_fd=top, follow_symlinks=False):
            for child in names:
                seen += 1
                if seen > limit:
                    return out
                with contextlib.suppress(OSError):
                    st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        rel = os.path.normpath(os.path.join(where, child))
                        out[rel] = (_key(st), st.st_size)
    finally:
        os.close(top)
    return out


def _largest_file(dir_fd: int) -> int:
    """The largest file size the file system under ``dir_fd`` allows, found by
    extending a scratch file (sparse: nothing is written) until it says EFBIG."""
    top = 2**63 - 1
    name = b"largest-file-probe"
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=dir_fd)
    try:
        try:
            os.ftruncate(fd, top)
            return top
        except OSError as exc:
            if exc.errno != errno.EFBIG:
                return top  # no limit to learn here; the backing file system tells at fsync
        lo, hi = 0, top
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                os.ftruncate(fd, mid)
                lo = mid
            except OSError:
                hi = mid - 1
        return lo
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)


def _empty_directory(dir_fd: int, name: bytes) -> os.stat_result:
    """Stat the directory ``name``, or fail as rmdir(2) would if it is not empty."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        if os.listdir(fd):
            raise OSError(errno.ENOTEMPTY, "directory not empty")
        return os.fstat(fd)
    finally:
        os.close(fd)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
