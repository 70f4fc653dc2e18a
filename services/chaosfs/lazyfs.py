"""Lazy mode: chaosfs plays the machine's page cache, so a power cut can lose data.

``LazyOperations`` is the passthrough with its backing-store hooks replaced:

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

A clean stop writes everything back and empties the trash: a pod that is shut
down loses nothing, as a machine that unmounts cleanly loses nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import shutil
import stat
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pyfuse3
import structlog
from pyfuse3 import EntryAttributes, FileInfo, RequestContext

from . import sysio
from .faults import FaultEngine
from .inodes import ROOT, Inode, InodeTable
from .lazy import DirOp, LazyCache, MetaJournal, Undo
from .passthrough import ChaosOperations, DirHandle, FileHandle

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


class LazyOperations(ChaosOperations):
    def __init__(
        self,
        table: InodeTable,
        faults: FaultEngine,
        cache_timeout: float,
        max_bytes: int,
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        super().__init__(table, faults, cache_timeout)
        self.log = log or structlog.get_logger("chaosfs")
        self.cache: LazyCache[Key] = LazyCache(max_bytes)
        self.journal: MetaJournal[Key] = MetaJournal()
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

    # --- what the kernel sees ---------------------------------------------------------

    def _entry(self, inode: Inode, st: os.stat_result) -> EntryAttributes:
        entry = super()._entry(inode, st)
        dirty = self.cache.get(inode.key)
        if dirty is not None:
            entry.st_size = dirty.size(st.st_size)
        parked = self.parked.get(inode.key)
        if parked:
            entry.st_nlink = max(0, st.st_nlink - parked)
        return entry

    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        if parent_inode == ROOT and name == TRASH:
            entry = EntryAttributes()
            entry.st_ino = 0
            entry.entry_timeout = self.timeout
            return entry
        return await super().lookup(parent_inode, name, ctx)

    def _list(self, handle: DirHandle) -> list[bytes]:
        names = super()._list(handle)
        if handle.inode.id == ROOT:
            names = [n for n in names if n != TRASH]
        return names

    # --- data -------------------------------------------------------------------------

    def _dirty(self, node: Inode) -> None:
        if node.key not in self.writers:
            if len(self.writers) >= self.max_writers:
                # Many small dirty files (an untar, no fsync) must not run the process
                # out of descriptors: write back the oldest-dirtied, as write-back would.
                self._write_back(next(iter(self.writers)), early=True)
            self.writers[node.key] = os.open(node.proc, os.O_WRONLY)
            self.paths[node.key] = self.table.path(node)

    def _pread(self, handle: FileHandle, fh: int, size: int, off: int) -> bytes:
        dirty = self.cache.get(handle.inode.key)
        if dirty is None:
            return os.pread(fh, size, off)
        return dirty.read(off, size, lambda o, n: os.pread(fh, n, o), os.fstat(fh).st_size)

    def _pwrite(self, handle: FileHandle, fh: int, buf: bytes, off: int) -> int:
        node = handle.inode
        self._dirty(node)
        for victim in self.cache.write(node.key, off, buf):
            self._write_back(victim, early=True)
        if fh in self.synchronous:
            # O_DSYNC (O_SYNC): durable when write() returns, as LMDB's meta page
            # expects. For a write-only (direct_io) handle no fsync follows from the
            # kernel, so this is the only chance.
            self._write_back(node.key)
            os.fdatasync(fh)
        return len(buf)

    def _size(self, node: Inode, fd: int) -> int:
        return self.cache.size(node.key, os.fstat(fd).st_size)

    def _truncate(self, node: Inode, fh: int | None, size: int) -> None:
        self._dirty(node)
        self.cache.truncate(node.key, size)

    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        # O_TRUNC empties the file in the cache, not on disk: a power cut brings it back.
        info = await super().open(inode, flags & ~os.O_TRUNC, ctx)
        self._note_synchronous(info.fh, flags)
        if flags & os.O_TRUNC:  # even O_RDONLY: Linux truncates, the kernel checked the right
            try:
                self._truncate(self.table[inode], None, 0)
            except OSError as exc:
                await self.release(info.fh)
                raise pyfuse3.FUSEError(exc.errno) from None
        return info

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: RequestContext
    ) -> tuple[FileInfo, EntryAttributes]:
        info, entry = await super().create(parent_inode, name, mode, flags, ctx)
        self._note_synchronous(info.fh, flags)
        return info, entry

    def _note_synchronous(self, fh: int, flags: int) -> None:
        if flags & os.O_DSYNC:  # O_SYNC includes this bit on Linux
            self.synchronous.add(fh)

    async def release(self, fh: int) -> None:
        self.synchronous.discard(fh)
        await super().release(fh)

    def _before_sync(self, handle: FileHandle) -> None:
        self._write_back(handle.inode.key)

    def _write_back(self, key: Key, *, early: bool = False) -> None:
        fd = self.writers.get(key)
        if fd is not None and key in self.cache:
            # Raises with everything kept: the caller's fsync fails, as on a sick disk.
            self.cache.flush(key, partial(os.pwrite, fd), partial(os.ftruncate, fd), early=early)
        self._clean(key)

    def _clean(self, key: Key) -> None:
        fd = self.writers.pop(key, None)
        self.paths.pop(key, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        keys = [self.table.by_id[n].key for n, _ in inode_list if n in self.table.by_id]
        await super().forget(inode_list)
        for key in keys:
            fd = self.writers.get(key)
            if fd is not None and key not in self.table.by_key:
                self._drop_if_gone(key)

    def _drop_if_gone(self, key: Key) -> None:
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
                    self._drop_if_gone(key)
            for key in op.dirs:
                self._unpin(key)

    def _made(self, parent: Inode, name: bytes, node: Inode) -> None:
        if not self._pin_all(parent):
            return
        if node.is_dir:
            self._retire(self.journal.mkdir(parent.key, name, child=node.key))
        else:
            self._retire(self.journal.create(parent.key, name))

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

    def _unlink(self, parent: Inode, name: bytes) -> None:
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        self._refuse_trash(parent, name)
        trash = self._parked(parent, name, (st.st_dev, st.st_ino))
        if trash is None:
            return super()._unlink(parent, name)
        self._retire(self.journal.unlink(parent.key, name, trash))

    def _rmdir(self, parent: Inode, name: bytes) -> None:
        self._refuse_trash(parent, name)
        st = _empty_directory(parent.fd, name)
        trash = self._parked(parent, name, None)
        if trash is None:
            return super()._rmdir(parent, name)
        child = (st.st_dev, st.st_ino)
        self._retire(self.journal.rmdir(parent.key, name, trash, child))

    def _refuse_trash(self, parent: Inode, name: bytes) -> None:
        if parent.id == ROOT and name == TRASH:
            raise PermissionError(errno.EPERM, "reserved for lazy mode")

    def _rename(
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
            super()._rename(old_parent, old, new_parent, new, flags)
        elif flags & pyfuse3.RENAME_EXCHANGE or target is None or flags & pyfuse3.RENAME_NOREPLACE:
            try:
                super()._rename(old_parent, old, new_parent, new, flags)
            except OSError:
                self._unpin_all(old_parent, new_parent)
                raise
            exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
            op = self.journal.rename(old_parent.key, old, new_parent.key, new, exchange=exchange)
            self._retire(op)
        elif _same(source, target):
            self._unpin_all(old_parent, new_parent)  # rename(2) does nothing then
            super()._rename(old_parent, old, new_parent, new, flags)
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
        )
        self._retire(op)

    def _before_sync_dir(self, handle: DirHandle) -> None:
        self._retire(self.journal.fsyncdir(handle.inode.key))

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

    def unsynced(self, regex: re.Pattern[str]) -> dict[str, Any]:
        match = self._matcher(regex)
        files = self._by_path({k: n for k, n in self.cache.report().items() if match(k)})  # type: ignore[arg-type]
        ops = self.journal.lost(entries=self._entries(regex))
        return {
            "files": files,
            "bytes": sum(files.values()),
            "dir_ops": [self._describe(op) for op in ops],
        }

    def lose(
        self, regex: re.Pattern[str], metadata: bool
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        """Power went out: drop what matches and was never made durable."""
        match = self._matcher(regex)
        names = {key: self._path(key) for key in self.writers}
        lost = self.cache.lose(match)
        files: dict[str, int] = {}
        targets: list[Invalidation] = []
        for key, n in lost.items():
            path = names.get(key) or self._path(key)
            files[path] = files.get(path, 0) + n
            self._clean(key)
            node = self.table.by_key.get(key)
            if node is not None:
                targets.append((node.id, 0, b""))
        described: list[dict[str, Any]] = []
        failures: list[str] = []
        if metadata:
            entries = self._entries(regex)
            ops = self.journal.lost(entries=entries)
            described = [self._describe(op) for op in ops]
            targets += self._undo(self.journal.lose(entries=entries), failures)
            for op in ops:
                for key in op.dirs:
                    self._unpin(key)
            self.table.generation += 1
            for key in list(self.writers):  # files whose creation was undone
                self._drop_if_gone(key)
        report: dict[str, Any] = {
            "files": files,
            "bytes": sum(files.values()),
            "dir_ops": described,
        }
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

    def tear(
        self,
        regex: re.Pattern[str],
        seed: int | str | None,
        keep: int | None,
        whole_writes: bool,
        align: int,
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        """Power went out mid write-back: persist a prefix of each file's unsynced writes."""
        plans = self.cache.tear(
            self._matcher(regex),
            seed if seed is not None else 0,
            keep=keep,
            whole_writes=whole_writes,
            align=align,
            name=self._path,  # by path, not inode number: the same history tears the same way
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
        if failures:
            report["failures"] = failures
        return report, targets

    def make_all_durable(self) -> None:
        """A clean stop (the mount is gone): empty the trash, then write every file
        back, as an unmount would.

        In that order: the deletions parked in the trash are final now, and on a
        nearly full disk the space they free is what the write-back may need.
        """
        self._retire(self.journal.pending())
        self.journal = MetaJournal()
        # The trash's files are unlinked, but a descriptor of ours still holds each
        # one the kernel knew or an app had open; no request comes any more, so all
        # can be closed (write-back has descriptors of its own).
        for fh in [*self.files, *self.dirs]:
            with contextlib.suppress(OSError):
                os.close(fh)
        self.files.clear()
        self.dirs.clear()
        self.table.close_all()
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
