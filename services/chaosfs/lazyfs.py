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
        return len(buf)

    def _size(self, node: Inode, fd: int) -> int:
        return self.cache.size(node.key, os.fstat(fd).st_size)

    def _truncate(self, node: Inode, fh: int | None, size: int) -> None:
        self._dirty(node)
        self.cache.truncate(node.key, size)

    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        # O_TRUNC empties the file in the cache, not on disk: a power cut brings it back.
        info = await super().open(inode, flags & ~os.O_TRUNC, ctx)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            try:
                self._truncate(self.table[inode], None, 0)
            except OSError as exc:
                await self.release(info.fh)
                raise pyfuse3.FUSEError(exc.errno) from None
        return info

    def _sync(self, handle: FileHandle, fh: int, datasync: bool) -> None:
        self._write_back(handle.inode.key)
        super()._sync(handle, fh, datasync)

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
            if fd is None or key in self.table.by_key:
                continue
            # No name left and the kernel forgot it: nobody can read or sync it again.
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_nlink == 0:
                    self.cache.forget(key)
                    self._clean(key)

    # --- directory entries ------------------------------------------------------------

    def _pin(self, node: Inode) -> None:
        pin = self.dir_pins.get(node.key)
        if pin is None:
            self.dir_pins[node.key] = [os.dup(node.fd), 1]
        else:
            pin[1] += 1

    def _unpin(self, key: Key) -> None:
        pin = self.dir_pins.get(key)
        if pin is None:
            return
        pin[1] -= 1
        if pin[1] <= 0:
            del self.dir_pins[key]
            os.close(pin[0])

    def _record(self, durable: list[DirOp[Key]], *dirs: Inode) -> None:
        for node in dirs:
            self._pin(node)
        self._retire(durable)

    def _retire(self, durable: list[DirOp[Key]]) -> None:
        """Ops made durable: their removals happen for good, their directories are free."""
        for op in durable:
            if op.trash is not None:
                self._unpark(op.trash)
                try:
                    self._delete(self.trash_fd, op.trash)
                except OSError as exc:
                    self.log.warning("trash_delete_failed", entry=op.trash, error=str(exc))
            for key in op.dirs:
                self._unpin(key)

    def _made(self, parent: Inode, name: bytes, node: Inode) -> None:
        if node.is_dir:
            self._record(self.journal.mkdir(parent.key, name, child=node.key), parent)
        else:
            self._record(self.journal.create(parent.key, name), parent)

    def _unlink(self, parent: Inode, name: bytes) -> None:
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        trash = self._park(parent.fd, name, (st.st_dev, st.st_ino))
        self._record(self.journal.unlink(parent.key, name, trash), parent)

    def _rmdir(self, parent: Inode, name: bytes) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent.fd)
        try:
            if os.listdir(fd):
                raise OSError(errno.ENOTEMPTY, "directory not empty")
            st = os.fstat(fd)
        finally:
            os.close(fd)
        trash = self._park(parent.fd, name, None)
        child = (st.st_dev, st.st_ino)
        self._record(self.journal.rmdir(parent.key, name, trash, child), parent)

    def _rename(
        self, old_parent: Inode, old: bytes, new_parent: Inode, new: bytes, flags: int
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            super()._rename(old_parent, old, new_parent, new, flags)
            op = self.journal.rename(old_parent.key, old, new_parent.key, new, exchange=True)
            self._record(op, old_parent, new_parent)
            return
        try:
            target = os.stat(new, dir_fd=new_parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            target = None
        source = os.stat(old, dir_fd=old_parent.fd, follow_symlinks=False)
        if target is None or flags & pyfuse3.RENAME_NOREPLACE or _same(source, target):
            super()._rename(old_parent, old, new_parent, new, flags)
            if target is None:
                op = self.journal.rename(old_parent.key, old, new_parent.key, new)
                self._record(op, old_parent, new_parent)
            return
        # Replacing a target: swap, then park the old target, so the name never
        # goes missing and a power cut can bring it back. rename(2)'s own checks
        # first, since an exchange would not make them.
        source_dir = stat.S_ISDIR(source.st_mode)
        target_dir = stat.S_ISDIR(target.st_mode)
        if source_dir and not target_dir:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        if target_dir and not source_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        if target_dir:
            fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY, dir_fd=new_parent.fd)
            try:
                if os.listdir(fd):
                    raise OSError(errno.ENOTEMPTY, "directory not empty")
            finally:
                os.close(fd)
        sysio.renameat2(old_parent.fd, old, new_parent.fd, new, pyfuse3.RENAME_EXCHANGE)
        replaced = (target.st_dev, target.st_ino)
        trash = self._park(old_parent.fd, old, None if target_dir else replaced)
        op = self.journal.rename(
            old_parent.key,
            old,
            new_parent.key,
            new,
            trash=trash,
            child=replaced if target_dir else None,
        )
        self._record(op, old_parent, new_parent)

    def _sync_dir(self, handle: DirHandle) -> None:
        self._retire(self.journal.fsyncdir(handle.inode.key))
        super()._sync_dir(handle)

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

    def unsynced(self, regex: re.Pattern[str]) -> dict[str, Any]:
        match = self._matcher(regex)
        files = {
            self._path(key): n
            for key, n in self.cache.report().items()
            if match(key)  # type: ignore[arg-type]
        }
        ops = self.journal.lost(match)
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
        targets: list[Invalidation] = []
        for key in lost:
            self._clean(key)
            node = self.table.by_key.get(key)
            if node is not None:
                targets.append((node.id, 0, b""))
        ops: list[DirOp[Key]] = []
        failures: list[str] = []
        if metadata:
            ops = self.journal.lost(match)
            described = [self._describe(op) for op in ops]
            plan = self.journal.lose(match)
            targets += self._undo(plan, failures)
            for op in ops:
                for key in op.dirs:
                    self._unpin(key)
            self.table.generation += 1
        else:
            described = []
        report = {
            "files": {names.get(key, self._path(key)): n for key, n in lost.items()},
            "bytes": sum(lost.values()),
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
        for key, plan in plans.items():
            fd = self.writers[key]
            path = self._path(key)
            self.cache.apply_tear(key, plan, partial(os.pwrite, fd), partial(os.ftruncate, fd))
            self._clean(key)
            files[path] = {"kept": plan.kept, "lost": plan.lost}
            node = self.table.by_key.get(key)
            if node is not None:
                targets.append((node.id, 0, b""))
        report = {
            "files": files,
            "kept": sum(f["kept"] for f in files.values()),
            "lost": sum(f["lost"] for f in files.values()),
        }
        return report, targets

    def make_all_durable(self) -> None:
        """A clean stop: write every file back and empty the trash, as an unmount would."""
        for key in list(self.writers):
            try:
                self._write_back(key)
            except OSError as exc:
                self.log.error("write_back_failed", path=self._path(key), error=str(exc))
        self._retire(self.journal.pending())
        self.journal = MetaJournal()
        with contextlib.suppress(OSError):
            os.rmdir(TRASH, dir_fd=self.table.root.fd)  # leave the app's directory as it was


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
