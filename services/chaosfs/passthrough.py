"""The FUSE operations: a faithful passthrough with a fault check in front.

Every handler works from O_PATH handles (see ``inodes``), runs its system calls
directly on the trio thread (a thread hop costs more than the calls), except the
syncs, which wait for the disk and go to a worker thread, and turns
any ``OSError`` into the same errno for the caller (see ``errnos``). What reads,
writes, truncates, syncs and directory changes do to the backing tree is the
backing store's (see ``backing``): the files themselves, or lazy mode's page
cache. Faults are decided by the engine before the real operation runs; a
latency fault sleeps in trio, so other requests keep flowing while one is held.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, RequestContext, SetattrFields

from . import inodes, sysio
from .backing import Backing, DirectBacking
from .errnos import fuse_error, fuse_errors
from .faults import Decision, FaultEngine
from .inodes import Inode, InodeTable

AT_FDCWD = -100
# Flags the kernel already acted on, or that make no sense on the backing open.
_OPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | os.O_DIRECT
# Seconds a request short of space waits for the space of files deleted through the
# mount: for the kernel to forget them, then for the closer thread to free them.
FORGET_WAIT = 1.0
FREE_WAIT = 10.0
UNLINKED_KEPT = 64  # unlinked files remembered at most while the kernel still knows them
NEGATIVES_KEPT = 65_536  # negative entries handed out and remembered at most (see _negative)
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)
_T = TypeVar("_T")


def _privileges(mode: int) -> int:
    """The bits a write by an unprivileged user clears, as the kernel does."""
    bits = mode & stat.S_ISUID
    if mode & (stat.S_ISGID | stat.S_IXGRP) == stat.S_ISGID | stat.S_IXGRP:
        bits |= stat.S_ISGID
    return bits


class FileHandle:
    """An open file. FUSE does not say who reads or writes, so the opener stands in."""

    __slots__ = ("direct", "inode", "pid", "uid")

    def __init__(self, inode: Inode, pid: int, uid: int, direct: bool) -> None:
        self.inode = inode
        self.pid = pid
        self.uid = uid
        self.direct = direct  # bypasses the page cache: short reads reach the caller


class DirHandle:
    __slots__ = ("fd", "inode", "names")

    def __init__(self, fd: int, inode: Inode) -> None:
        self.fd = fd
        self.inode = inode
        self.names: list[bytes] | None = None


async def _inflict(decision: Decision) -> None:
    if decision.delay:
        await trio.sleep(decision.delay)
    if decision.errno:
        raise FUSEError(decision.errno)


_ATTR_SETTERS = {
    "size": "st_size",
    "uid": "st_uid",
    "gid": "st_gid",
    "nlink": "st_nlink",
    "blocks": "st_blocks",
    "rdev": "st_rdev",
    "atime": "st_atime_ns",
    "mtime": "st_mtime_ns",
    "ctime": "st_ctime_ns",
}


def _override(entry: EntryAttributes, attrs: list[tuple[str, int]], *, node_id: bool) -> None:
    """Show the kernel the attributes an attr rule dictates.

    ``node_id``: the reply is a getattr's, whose inode number is only displayed;
    in a lookup's it is the node id itself and must stay.
    """
    for name, value in attrs:
        if name == "mode":
            entry.st_mode = stat.S_IFMT(entry.st_mode) | value
        elif name == "kind":
            # The kernel takes a new file type only from a lookup (a getattr that
            # changed it would make the inode bad, EIO); see Inode.shown_kind.
            if not node_id:
                entry.st_mode = value | stat.S_IMODE(entry.st_mode)
        elif name == "ino":
            if node_id:
                entry.st_ino = value
        else:
            setattr(entry, _ATTR_SETTERS[name], value)


def _charge_truncate(decision: Decision, size_before: int, size_after: int) -> None:
    growth = max(0, size_after - size_before)
    if growth > decision.quota_left():
        decision.charge(0, refused=True)
        assert decision.quota is not None
        raise FUSEError(decision.quota[0].errnos[0])
    decision.charge(growth, refused=False)


class ChaosOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False  # writes must reach us to be faulted
    enable_acl = False

    def __init__(
        self,
        table: InodeTable,
        faults: FaultEngine,
        cache_timeout: float,
        backing: Backing | None = None,
    ) -> None:
        super().__init__()
        self.table = table
        # What reads, writes and directory changes do to the backing tree (see backing).
        self.backing: Backing = backing if backing is not None else DirectBacking(table)
        # Read once: the hot handlers test these instead of calling the store.
        self._open_flags = ~(_OPEN_STRIP | self.backing.open_strip)
        self._reshapes = self.backing.reshapes
        self._hidden = self.backing.hidden
        self.faults = faults
        self.timeout = cache_timeout
        self.files: dict[int, FileHandle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self.kill_privs: set[int] = set()  # file handles, see _note_privileges
        # Negative entries the kernel may still hold: (parent id, name) -> when it
        # forgets them (time.monotonic), oldest first (see _negative).
        self.negatives: dict[tuple[int, bytes], float] = {}
        self.own_uid = os.geteuid()  # as what chaosfs creates files (see _made_as_caller)
        self.own_gid = os.getegid()
        # Files whose last name an unlink through the mount removed, while the kernel
        # may still hold their node (see _space_coming).
        self.unlinked: list[Inode] = []

    def init(self) -> None:
        # Called by pyfuse3 inside the trio run, before the first request.
        self.backing.start()

    # --- helpers --------------------------------------------------------------

    def _entry(self, inode: Inode, st: os.stat_result) -> EntryAttributes:
        entry = EntryAttributes()
        entry.st_ino = inode.id
        entry.generation = 0
        entry.entry_timeout = self.timeout
        entry.attr_timeout = self.timeout
        if self.faults.rules.attr_rules and self.faults.attrs_faulted(inode):
            entry.attr_timeout = 0  # every stat must ask us while attr rules cover it
        entry.st_mode = st.st_mode
        if inode.shown_kind:
            entry.st_mode = inode.shown_kind | stat.S_IMODE(st.st_mode)
        entry.st_nlink = st.st_nlink
        entry.st_uid = st.st_uid
        entry.st_gid = st.st_gid
        entry.st_rdev = st.st_rdev
        entry.st_size = st.st_size
        entry.st_blksize = st.st_blksize
        entry.st_blocks = st.st_blocks
        entry.st_atime_ns = st.st_atime_ns
        entry.st_mtime_ns = st.st_mtime_ns
        entry.st_ctime_ns = st.st_ctime_ns
        if self._reshapes:
            self.backing.show(inode, st, entry)
        return entry

    def _made_as_caller(self, ctx: RequestContext) -> bool:
        """Whether what chaosfs just created already belongs to the caller as it should.

        chaosfs creates as its own user and group; for a caller with the same ids
        the kernel has then given the entry exactly the owner _owner would (the
        group of a setgid directory included), so the stat of the parent and the
        chown can go.
        """
        return ctx.uid == self.own_uid and ctx.gid == self.own_gid

    def _owner(self, parent: Inode, ctx: RequestContext) -> tuple[int, int]:
        """Owner of a new entry: the caller, with the group a setgid directory imposes."""
        gid = ctx.gid
        parent_st = os.stat(parent.fd)
        if parent_st.st_mode & stat.S_ISGID:
            gid = parent_st.st_gid
        return ctx.uid, gid

    def _new_entry(
        self, parent: Inode, name: bytes, ctx: RequestContext, mode: int = 0
    ) -> EntryAttributes:
        """Give a just-created ``parent/name`` to the caller and hand it to the kernel.

        ``mode``: what mknod asked for, whose setuid/setgid bits chown cleared.
        """
        if not self._made_as_caller(ctx):
            uid, gid = self._owner(parent, ctx)
            os.chown(name, uid, gid, dir_fd=parent.fd, follow_symlinks=False)
            if mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(name, stat.S_IMODE(mode), dir_fd=parent.fd)  # never a symlink
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        inode = self.table.attach(parent, name, st)
        inode.lookups += 1
        self._named(parent, name)
        self.backing.made(parent, name, inode)
        return self._entry(inode, st)

    async def _check_path(
        self, method: str, parent: Inode, name: bytes, ctx: RequestContext
    ) -> None:
        decision = self.faults.for_path(method, parent, name, ctx.pid, ctx.uid)
        if decision is not None:
            await _inflict(decision)

    async def _check(
        self, method: str, inode: Inode, ctx: RequestContext | FileHandle | None = None
    ) -> Decision | None:
        """Apply a rule's delay and errno; return the decision for what remains."""
        if ctx is None:
            decision = self.faults.for_inode(method, inode)
        else:
            decision = self.faults.for_inode(method, inode, ctx.pid, ctx.uid)
        if decision is not None:
            await _inflict(decision)
        return decision

    def _inode(self, node_id: int) -> Inode:
        try:
            return self.table[node_id]
        except KeyError:
            raise FUSEError(errno.ESTALE) from None

    # --- space a native file system would have freed already ---------------------------
    #
    # A native unlink of a file nobody holds open frees its space before it returns.
    # Through the mount, our descriptor of the file keeps it until the kernel sends
    # FORGET for its node, which can reach us after the requests that follow the
    # unlink, and then a big file is freed by the closer thread (see
    # inodes.close_inode_fd). So a request that runs out of space while such space
    # is on its way waits for it and tries again; no other request waits.

    def _space_coming(self, freed: int | None = None) -> bool:
        """Whether space that a native file system would have freed is on its way, or
        came (the closer thread finished a free since ``freed``, inodes.frees_done())."""
        if inodes.frees_pending() or (freed is not None and freed != inodes.frees_done()):
            return True
        if not self.unlinked:
            return False
        held_open = {handle.inode for handle in self.files.values()}
        by_id = self.table.by_id
        # Still known to the kernel, and not open (then a native file system would
        # keep its space too).
        self.unlinked = [
            node for node in self.unlinked if by_id.get(node.id) is node and node not in held_open
        ]
        return bool(self.unlinked)

    async def _wait_for_space(self) -> None:
        deadline = trio.current_time() + FORGET_WAIT
        while self.unlinked and self._space_coming() and trio.current_time() < deadline:
            await trio.sleep(0.001)  # other requests, FORGET among them, go on meanwhile
        self.unlinked.clear()  # still not forgotten: something else holds them
        if inodes.frees_pending():
            await trio.to_thread.run_sync(inodes.wait_for_frees, FREE_WAIT)

    async def _with_space(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``call(*args, **kwargs)``, once more if it ran out of space and space came,
        or the backing store could free some of its own."""
        try:
            return await self._with_freed_space(call, *args, **kwargs)
        except OSError as exc:
            if exc.errno not in _OUT_OF_SPACE or not self.backing.make_room():
                raise
        return call(*args, **kwargs)

    async def _with_freed_space(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``call(*args, **kwargs)``, once more when space is on its way if it ran out."""
        freed = inodes.frees_done()
        try:
            return call(*args, **kwargs)
        except OSError as exc:
            if exc.errno not in _OUT_OF_SPACE or not self._space_coming(freed):
                raise
        await self._wait_for_space()
        return call(*args, **kwargs)

    def _note_unlinked(self, node: Inode) -> None:
        """An unlink through the mount removed the last name of ``node``."""
        self.unlinked.append(node)
        if len(self.unlinked) > UNLINKED_KEPT:
            # The kernel forgets most within milliseconds; the rest are held
            # open, and the newest matter most.
            by_id = self.table.by_id
            alive = [n for n in self.unlinked if by_id.get(n.id) is n]
            self.unlinked = alive[-UNLINKED_KEPT:]

    # --- names ----------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        hidden = self._hidden
        if hidden is not None and name == hidden[1] and parent_inode == hidden[0]:
            entry = EntryAttributes()
            entry.st_ino = 0
            entry.entry_timeout = self.timeout
            return entry
        parent = self._inode(parent_inode)
        await self._check_path("lookup", parent, name, ctx)
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            inode = self.table.attach(parent, name, st)
        except FileNotFoundError:
            return self._negative(parent, name)
        except OSError as exc:
            raise fuse_error(exc) from None
        inode.lookups += 1
        if inode.shown_kind or self.faults.rules.attr_rules:
            # A lookup is where the kernel learns (or unlearns) a pretended file type.
            inode.shown_kind = 0
            entry = self._entry(inode, st)
            decision = self.faults.for_inode("lookup", inode, ctx.pid, ctx.uid)
            if decision is not None and decision.attrs:
                _override(entry, decision.attrs, node_id=False)
                if stat.S_IFMT(entry.st_mode) != stat.S_IFMT(st.st_mode):
                    inode.shown_kind = stat.S_IFMT(entry.st_mode)
            return entry
        return self._entry(inode, st)

    def _negative(self, parent: Inode, name: bytes) -> EntryAttributes:
        """A reply of "no such entry", which the kernel may remember for the cache timeout.

        chaosfs is the only writer, and every create through it replaces the
        kernel's negative entry. While the kernel remembers one, a stat, open or
        unlink of that name fails in the kernel without asking chaosfs, so a rule
        set meanwhile would not be seen: each one handed out is noted until it
        expires, and a rule change drops those its paths match (inodes_matching).
        When too many are noted, the reply is not cached at all.
        """
        entry = EntryAttributes()
        entry.st_ino = 0
        if self.timeout <= 0:
            return entry
        now = time.monotonic()
        negatives = self.negatives
        key = (parent.id, name)
        negatives.pop(key, None)  # re-inserted at the end: oldest expiry first
        if len(negatives) >= NEGATIVES_KEPT:
            for old, expiry in list(negatives.items()):
                if expiry > now or len(negatives) < NEGATIVES_KEPT // 2:
                    break
                del negatives[old]
            if len(negatives) >= NEGATIVES_KEPT:
                return entry  # too many to track: this one is not cached
        # The kernel counts the timeout from when it gets the reply, a little later.
        negatives[key] = now + self.timeout + 1.0
        entry.entry_timeout = self.timeout
        return entry

    def _named(self, parent: Inode, name: bytes) -> None:
        """``parent/name`` exists now: the kernel replaced its negative entry, if any."""
        if self.negatives:
            self.negatives.pop((parent.id, name), None)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        if not self.backing.watches_forgets:
            self._forget(inode_list)
            return
        by_id = self.table.by_id
        keys = [by_id[n].key for n, _ in inode_list if n in by_id]
        self._forget(inode_list)
        self.backing.forgotten(keys)

    def _forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for node_id, count in inode_list:
            with contextlib.suppress(OSError):
                self.table.forget(node_id, count)

    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        node = self._inode(inode)
        decision = await self._check("getattr", node, ctx)
        try:
            entry = self._entry(node, os.stat(node.fd))
        except OSError as exc:
            raise fuse_error(exc) from None  # the hot path: a try costs nothing
        if decision is not None and decision.attrs:
            # A getattr reply's inode number is only shown, never used as a node id.
            _override(entry, decision.attrs, node_id=True)
        return entry

    async def setattr(
        self,
        inode: int,
        attr: EntryAttributes,
        fields: SetattrFields,
        fh: int | None,
        ctx: RequestContext,
    ) -> EntryAttributes:
        node = self._inode(inode)
        quota = None
        # Each change a setattr stands for is checked as its own operation (Chaos
        # Mesh v0.9 names them truncate, chmod, chown and utimens), in this order.
        if fields.update_size:
            decision = await self._check("truncate", node, ctx)
            if decision is not None and decision.quota is not None:
                quota = decision  # a virtual quota: the growth is charged in _set
        if fields.update_mode:
            await self._check("chmod", node, ctx)
        if fields.update_uid or fields.update_gid:
            await self._check("chown", node, ctx)
        if fields.update_atime or fields.update_mtime:
            await self._check("utimens", node, ctx)
        try:
            return self._set(node, attr, fields, fh, quota)
        except OSError as exc:
            raise fuse_error(exc) from None  # every truncate and utime: a try costs nothing

    def _set(
        self,
        node: Inode,
        attr: EntryAttributes,
        fields: SetattrFields,
        fh: int | None,
        quota: Decision | None,
    ) -> EntryAttributes:
        """Make a setattr's changes and answer with the attributes they leave."""
        if fields.update_size:
            if quota is not None:
                _charge_truncate(quota, self.backing.size(node, node.fd), attr.st_size)
            self.backing.truncate(node, fh, attr.st_size)
        # In this order: chown may clear setuid/setgid bits that chmod then sets.
        if fields.update_uid or fields.update_gid:
            self._set_owner(node, attr, fields)
        if fields.update_mode and not node.is_symlink:
            os.chmod(node.proc, stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            self._set_times(node, attr, fields)
        st = os.stat(node.fd)
        if fields.update_mtime:
            # A time the program set (tar, cp -p, rsync -t, touch -d) is kept.
            self.backing.mtime_set(node, st.st_mtime_ns)
        return self._entry(node, st)

    @staticmethod
    def _set_owner(node: Inode, attr: EntryAttributes, fields: SetattrFields) -> None:
        uid = attr.st_uid if fields.update_uid else -1
        gid = attr.st_gid if fields.update_gid else -1
        if node.is_symlink:
            # By the link's own descriptor: its last known name may belong to
            # another file by now (a rename over it, or an unlink and re-create).
            sysio.lchown_fd(node.fd, uid, gid)
        else:
            os.chown(node.proc, uid, gid)

    def _set_times(self, node: Inode, attr: EntryAttributes, fields: SetattrFields) -> None:
        atime = attr.st_atime_ns if fields.update_atime else None
        mtime = attr.st_mtime_ns if fields.update_mtime else None
        if node.is_symlink:
            self._lutimens(node, atime, mtime)
        else:
            sysio.utimensat(AT_FDCWD, node.proc.encode(), atime, mtime, follow=True)

    @staticmethod
    def _lutimens(node: Inode, atime: int | None, mtime: int | None) -> None:
        try:
            # By the link's own descriptor, as for chown (_set_owner).
            sysio.utimensat(node.fd, b"", atime, mtime, follow=False)
        except OSError as exc:
            if exc.errno != errno.EINVAL or node.parent is None:
                raise
            # A kernel before 5.8 has no AT_EMPTY_PATH for utimensat: go by name.
            sysio.utimensat(node.parent.fd, node.name, atime, mtime, follow=False)

    async def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        node = self._inode(inode)
        await self._check("readlink", node, ctx)
        with fuse_errors:
            return os.readlink(b"", dir_fd=node.fd)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: RequestContext
    ) -> EntryAttributes:
        parent = self._inode(parent_inode)
        await self._check_path("mknod", parent, name, ctx)
        with fuse_errors:
            await self._with_space(os.mknod, name, mode, rdev, dir_fd=parent.fd)
            return self._new_entry(parent, name, ctx, mode)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: RequestContext
    ) -> EntryAttributes:
        parent = self._inode(parent_inode)
        await self._check_path("mkdir", parent, name, ctx)
        with fuse_errors:
            await self._with_space(os.mkdir, name, mode, dir_fd=parent.fd)
            return self._new_entry(parent, name, ctx)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        parent = self._inode(parent_inode)
        await self._check_path("symlink", parent, name, ctx)
        with fuse_errors:
            await self._with_space(os.symlink, target, name, dir_fd=parent.fd)
            return self._new_entry(parent, name, ctx)

    async def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        parent = self._inode(parent_inode)
        await self._check_path("unlink", parent, name, ctx)
        with fuse_errors:
            gone = self.backing.unlink(parent, name)
        if gone is not None:
            self._note_unlinked(gone)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        parent = self._inode(parent_inode)
        await self._check_path("rmdir", parent, name, ctx)
        with fuse_errors:
            self.backing.rmdir(parent, name)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: RequestContext,
    ) -> None:
        old_parent = self._inode(parent_inode_old)
        new_parent = self._inode(parent_inode_new)
        await self._check_path("rename", old_parent, name_old, ctx)
        with fuse_errors:
            self.backing.rename(old_parent, name_old, new_parent, name_new, flags)
        self._named(new_parent, name_new)
        self._track_move(new_parent, name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            self._track_move(old_parent, name_old)
        self.table.generation += 1

    def _track_move(self, parent: Inode, name: bytes) -> None:
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return
        moved = self.table.by_key.get((st.st_dev, st.st_ino))
        if moved is not None:
            self.table.moved(moved, parent, name)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        node = self._inode(inode)
        parent = self._inode(new_parent_inode)
        await self._check_path("link", parent, new_name, ctx)
        with fuse_errors:
            await self._with_space(
                os.link, node.proc, new_name, dst_dir_fd=parent.fd, follow_symlinks=True
            )
            st = os.stat(node.fd)
            self._named(parent, new_name)
            self.backing.made(parent, new_name, node)
        node.lookups += 1
        return self._entry(node, st)

    # --- files ----------------------------------------------------------------

    def _file_info(self, fd: int, inode: Inode, ctx: RequestContext, flags: int) -> FileInfo:
        info = FileInfo(fh=fd)
        # O_DIRECT needs no direct_io here: the kernel sends O_DIRECT I/O to us
        # anyway, and only its own O_DIRECT path clears setuid/setgid on a write by
        # an unprivileged user (a direct_io write leaves that to the daemon).
        # A write-only handle has nothing to cache: direct_io sends its writes
        # straight to us, without a copy into the mount's page cache and without
        # the getxattr("security.capability") the kernel sends before each cached
        # write. The kernel still invalidates other handles' cached pages it covers.
        write_only = flags & os.O_ACCMODE == os.O_WRONLY
        direct = write_only or self.faults.reads_faulted(inode)
        if direct:
            # Every read must reach us while a read fault covers this file (the
            # page cache would hide it).
            info.direct_io = True
            if ctx.uid != 0:
                self._note_privileges(fd)
        else:
            info.keep_cache = True  # we are the only writer, so cached pages stay true
        self.files[fd] = FileHandle(inode, ctx.pid, ctx.uid, direct)
        return info

    def _note_privileges(self, fd: int) -> None:
        """Remember a direct_io handle whose first write must clear setuid/setgid.

        The kernel leaves that to the daemon for direct_io writes, and pyfuse3 does
        not pass on its FUSE_WRITE_KILL_SUIDGID flag, so an unprivileged opener
        stands in for "the writer lacks CAP_FSETID".
        """
        with contextlib.suppress(OSError):
            if _privileges(os.fstat(fd).st_mode):
                self.kill_privs.add(fd)

    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        node = self._inode(inode)
        await self._check("open", node, ctx)
        try:
            fd = os.open(node.proc, flags & self._open_flags)
        except OSError as exc:
            raise fuse_error(exc) from None  # the hot path: a try costs nothing
        info = self._file_info(fd, node, ctx, flags)
        try:
            self.backing.opened(node, fd, flags)
        except OSError as exc:
            await self.release(fd)
            raise fuse_error(exc) from None
        return info

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: RequestContext
    ) -> tuple[FileInfo, EntryAttributes]:
        parent = self._inode(parent_inode)
        await self._check_path("create", parent, name, ctx)
        with fuse_errors:
            fd = await self._with_space(
                os.open,
                name,
                (flags & ~_OPEN_STRIP) | os.O_CREAT | os.O_EXCL,
                mode,
                dir_fd=parent.fd,
            )
        try:
            if not self._made_as_caller(ctx):
                uid, gid = self._owner(parent, ctx)
                os.fchown(fd, uid, gid)
                if mode & (stat.S_ISUID | stat.S_ISGID):
                    os.fchmod(fd, stat.S_IMODE(mode))  # chown cleared them
            st = os.fstat(fd)
            node = self.table.attach(parent, name, st)
            self._named(parent, name)
            self.backing.made(parent, name, node)
        except OSError as exc:
            os.close(fd)
            raise fuse_error(exc) from None
        node.lookups += 1
        info = self._file_info(fd, node, ctx, flags)
        self.backing.created(fd, flags)
        return info, self._entry(node, st)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.files[fh]
        decision = self.faults.for_inode("read", handle.inode, handle.pid, handle.uid)
        if decision is None:
            try:
                return self.backing.pread(handle, fh, size, off)
            except OSError as exc:
                raise fuse_error(exc) from None
        await _inflict(decision)
        if decision.short is not None and handle.direct:
            # Through the page cache a short read would read as end of file.
            size = decision.shorten(size)
        with fuse_errors:
            data = self.backing.pread(handle, fh, size, off)
        return decision.corrupt(data) if decision.mistake is not None else data

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.files[fh]
        decision = self.faults.for_inode("write", handle.inode, handle.pid, handle.uid)
        if decision is not None:
            await _inflict(decision)
            return await self._faulted_write(handle, fh, off, buf, decision)
        try:
            written = await self._write_data(handle, fh, buf, off)
        except OSError as exc:
            raise fuse_error(exc) from None
        self._after_write(fh)
        return written

    async def _write_data(self, handle: FileHandle, fh: int, buf: bytes, off: int) -> int:
        """_pwrite; out of space while space is on its way, wait for it and write the rest."""
        freed = inodes.frees_done()
        try:
            written = self.backing.pwrite(handle, fh, buf, off)
        except OSError as exc:
            if exc.errno not in _OUT_OF_SPACE or not self._space_coming(freed):
                raise
            written = 0
        else:
            if written == len(buf) or not self._space_coming(freed):
                return written
        await self._wait_for_space()
        try:
            return written + self.backing.pwrite(handle, fh, buf[written:], off + written)
        except OSError:
            if written:
                return written  # a short write, as the file system gave it
            raise

    async def _faulted_write(
        self, handle: FileHandle, fh: int, off: int, buf: bytes, decision: Decision
    ) -> int:
        with fuse_errors:
            size_before = self.backing.size(handle.inode, fh) if decision.quota is not None else 0
            refused = False
            if decision.quota is not None:
                # A virtual quota: the paths may grow by so many bytes, no more.
                growth = max(0, off + len(buf) - size_before)
                left = decision.quota_left()
                if growth > left:
                    refused = True
                    # What fits below size + left; nothing when the write starts past it
                    # (a negative length would slice from the end and grow the file).
                    buf = buf[: max(0, len(buf) - (growth - left))]
                    if not buf:
                        decision.charge(0, refused=True)
                        raise FUSEError(decision.quota[0].errnos[0])
            if decision.short is not None:
                buf = buf[: decision.shorten(len(buf))]
            if decision.mistake is not None:
                buf = decision.corrupt(buf)
            written = await self._write_data(handle, fh, buf, off)
            if decision.quota is not None:
                decision.charge(max(0, off + written - size_before), refused=refused)
        self._after_write(fh)
        return written

    def _after_write(self, fh: int) -> None:
        if self.kill_privs and fh in self.kill_privs:
            self.kill_privs.discard(fh)
            with contextlib.suppress(OSError):
                mode = os.fstat(fh).st_mode
                os.fchmod(fh, stat.S_IMODE(mode) & ~_privileges(mode))

    async def flush(self, fh: int) -> None:
        handle = self.files[fh]
        await self._check("flush", handle.inode, handle)
        try:
            # What close() would report on the backing file (NFS-style deferred errors).
            os.close(os.dup(fh))
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return  # no descriptor to ask with: the app's close must not fail for it
            raise fuse_error(exc) from None

    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.files[fh]
        await self._check("fsync", handle.inode, handle)
        with fuse_errors:
            self.backing.before_sync(handle)
            # A disk takes milliseconds to seconds to sync: on the trio thread that
            # would hold every other request on the mount just as long. (The kernel
            # keeps the file open until this request is answered, so fh stays valid.)
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)

    async def release(self, fh: int) -> None:
        self.backing.closed(fh)
        handle = self.files.pop(fh)
        self.kill_privs.discard(fh)
        try:
            # The kernel ignores release errors; a latency fault still holds close().
            await self._check("release", handle.inode, handle)
        finally:
            with contextlib.suppress(OSError):
                os.close(fh)

    # --- directories ----------------------------------------------------------

    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        node = self._inode(inode)
        await self._check("opendir", node, ctx)
        with fuse_errors:
            fd = os.open(node.proc, os.O_RDONLY | os.O_DIRECTORY)
        self.dirs[fd] = DirHandle(fd, node)
        return fd

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self.dirs[fh]
        parent = handle.inode
        await self._check("readdir", parent)
        with fuse_errors:
            if start_id == 0 or handle.names is None:
                handle.names = self.backing.listdir(handle)
        names = handle.names
        sent = False
        for index in range(start_id, len(names)):
            name = names[index]
            try:
                st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
                node = self.table.attach(parent, name, st)
            except FileNotFoundError:
                continue  # removed since the listing was taken
            except OSError as exc:
                # Never skip a name that exists: a listing silently missing entries
                # (EMFILE once every descriptor holds an inode) is worse than an error.
                # End this batch; the kernel asks again from here and gets the error.
                if sent:
                    return
                raise fuse_error(exc) from None
            if not pyfuse3.readdir_reply(token, name, self._entry(node, st), index + 1):
                self.table.drop_if_unused(node)
                return
            node.lookups += 1
            sent = True

    async def releasedir(self, fh: int) -> None:
        handle = self.dirs.pop(fh)
        try:
            await self._check("releasedir", handle.inode)
        finally:
            os.close(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        handle = self.dirs[fh]
        await self._check("fsyncdir", handle.inode)
        with fuse_errors:
            self.backing.before_sync_dir(handle)
            await trio.to_thread.run_sync(os.fsync, handle.fd)  # off the FUSE thread, as fsync

    # --- file system ----------------------------------------------------------

    async def statfs(self, ctx: RequestContext) -> pyfuse3.StatvfsData:
        await self._check("statfs", self.table.root, ctx)
        if self._space_coming():
            await self._wait_for_space()  # natively, a deleted file's space is free at once
        with fuse_errors:
            sv = os.statvfs(self.table.root.fd)
        data = pyfuse3.StatvfsData()
        for name in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
            "f_namemax",
        ):
            setattr(data, name, getattr(sv, name))
        quota_free = self.faults.quota_free()
        if quota_free is not None:
            # Free space that agrees with the tightest virtual quota in force.
            blocks = quota_free // max(1, sv.f_frsize)
            data.f_bfree = min(sv.f_bfree, blocks)
            data.f_bavail = min(sv.f_bavail, blocks)
        reserved = self.backing.reserved()
        if reserved:
            # Blocks the store promised (lazy mode's unsynced data) are not free.
            used = -(-reserved // max(1, data.f_frsize))
            data.f_bfree = max(0, data.f_bfree - used)
            data.f_bavail = max(0, data.f_bavail - used)
        return data

    async def access(self, inode: int, mode: int, ctx: RequestContext) -> bool:
        # With default_permissions the kernel checks access itself and rarely asks.
        node = self._inode(inode)
        await self._check("access", node, ctx)
        with fuse_errors:
            st = os.stat(node.fd)
        if ctx.uid == 0:
            return not (mode & os.X_OK) or bool(st.st_mode & 0o111) or node.is_dir
        if st.st_uid == ctx.uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == ctx.gid or st.st_gid in self._groups(ctx.pid):
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return mode & bits == mode

    @staticmethod
    def _groups(pid: int) -> set[int]:
        try:
            return pyfuse3.get_sup_groups(pid)
        except (OSError, ValueError, RuntimeError):
            # The caller is gone (its /proc entry with it): an uncaught error in a
            # handler would end the FUSE loop, and so the mount.
            return set()

    # --- extended attributes ----------------------------------------------------

    def _xattr_path(self, node: Inode) -> tuple[bytes, bool]:
        if node.is_symlink and node.parent is not None:
            return b"/proc/self/fd/%d/%s" % (node.parent.fd, node.name), False
        return node.proc.encode(), True

    async def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        node = self._inode(inode)
        await self._check("getxattr", node, ctx)
        path, follow = self._xattr_path(node)
        with fuse_errors:
            return os.getxattr(path, name, follow_symlinks=follow)

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: RequestContext) -> None:
        node = self._inode(inode)
        await self._check("setxattr", node, ctx)
        path, follow = self._xattr_path(node)
        with fuse_errors:
            os.setxattr(path, name, value, follow_symlinks=follow)

    async def listxattr(self, inode: int, ctx: RequestContext) -> list[bytes]:
        node = self._inode(inode)
        await self._check("listxattr", node, ctx)
        path, follow = self._xattr_path(node)
        with fuse_errors:
            return [os.fsencode(n) for n in os.listxattr(path, follow_symlinks=follow)]

    async def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        node = self._inode(inode)
        await self._check("removexattr", node, ctx)
        path, follow = self._xattr_path(node)
        with fuse_errors:
            os.removexattr(path, name, follow_symlinks=follow)

    # --- for the control plane ----------------------------------------------------

    def inodes_matching(self, regexes: list, lookups: bool) -> list[tuple[int, int, bytes]]:
        """(node id, parent id, name) of known inodes whose path matches, and
        (0, parent id, name) of the kernel's negative entries whose path matches
        (whatever the rule's methods: every operation on the name would fail in the
        kernel without asking); trio thread only."""
        out = []
        table = self.table
        for node in list(table.by_id.values()):
            path = table.path(node)
            if any(rx.match(path) for rx in regexes):
                parent = node.parent.id if (lookups and node.parent is not None) else 0
                out.append((node.id, parent, node.name))
        now = time.monotonic()
        for (parent_id, name), expiry in list(self.negatives.items()):
            directory = table.by_id.get(parent_id)
            if expiry <= now or directory is None:
                del self.negatives[(parent_id, name)]  # expired, or gone with its directory
                continue
            path = table.child_path(directory, name)
            if any(rx.match(path) for rx in regexes):
                out.append((0, parent_id, name))
        return out
