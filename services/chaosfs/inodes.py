"""The inode table: FUSE node ids to O_PATH handles on the backing tree.

Each inode the kernel knows is held open as an O_PATH descriptor, and every
operation works relative to those descriptors (``*at`` calls), never by gluing
the original directory's path to a name. That keeps names of NAME_MAX bytes and
paths near PATH_MAX working exactly as on the backing file system, and keeps
hard links on one node, so link counts are right.

Node ids are the backing inode numbers, so ``stat`` shows the real ones; the
root is always 1, and the rare number that would collide (another device below
the mount, or an inode numbered 1) gets a synthetic id instead.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat
import threading

import pyfuse3

ROOT = pyfuse3.ROOT_INODE
_SYNTHETIC_BASE = 1 << 62


class Inode:
    __slots__ = (
        "fd",
        "id",
        "is_dir",
        "is_symlink",
        "key",
        "lookups",
        "match",
        "name",
        "parent",
        "path_memo",
        "shown_kind",
    )

    def __init__(self, node_id: int, fd: int, key: tuple[int, int], mode: int) -> None:
        self.id = node_id
        self.fd = fd
        self.key = key
        self.lookups = 0
        self.parent: Inode | None = None
        self.name = b""
        self.is_dir = stat.S_ISDIR(mode)
        self.is_symlink = stat.S_ISLNK(mode)
        # (rules version, topology generation, {method: rules}) for the fault engine.
        self.match: tuple[int, int, dict[str, tuple]] | None = None
        # The file type an attr rule made the kernel believe (0: the real one). The
        # kernel accepts a type only from a lookup and fails any later reply that
        # disagrees, so every reply for this inode must show the same.
        self.shown_kind = 0
        self.path_memo: tuple[int, str] | None = None  # (topology generation, path)

    @property
    def proc(self) -> str:
        """A path that reopens this very inode, whatever its name is now."""
        return f"/proc/self/fd/{self.fd}"


class InodeTable:
    def __init__(self, root_fd: int) -> None:
        st = os.stat(root_fd)
        self.root_dev = st.st_dev
        root = Inode(ROOT, root_fd, (st.st_dev, st.st_ino), st.st_mode)
        root.lookups = 1  # the kernel never forgets the root
        self.by_id: dict[int, Inode] = {ROOT: root}
        self.by_key: dict[tuple[int, int], Inode] = {root.key: root}
        self.root = root
        # Bumped whenever a name moves, so cached path matches are recomputed.
        self.generation = 0
        self._next_synthetic = _SYNTHETIC_BASE
        # Inode numbers whose node id the kernel holds as a dead directory (see renumber).
        self._burnt: set[int] = set()
        self._retired: list[Inode] = []

    def __getitem__(self, node_id: int) -> Inode:
        return self.by_id[node_id]

    def _node_id(self, st: os.stat_result) -> int:
        ino = st.st_ino
        if (
            st.st_dev == self.root_dev
            and 1 < ino < _SYNTHETIC_BASE
            and ino not in self.by_id
            and ino not in self._burnt
        ):
            return ino
        self._next_synthetic += 1
        return self._next_synthetic

    def attach(
        self, parent: Inode, name: bytes, st: os.stat_result, fd: int | None = None
    ) -> Inode:
        """The inode for ``parent/name`` (just stat'ed as ``st``), opened if new.

        Does not count a lookup: callers add one once the kernel has the reply.
        """
        key = (st.st_dev, st.st_ino)
        inode = self.by_key.get(key)
        if inode is None:
            if fd is None:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=parent.fd)
            inode = Inode(self._node_id(st), fd, key, st.st_mode)
            self.by_id[inode.id] = inode
            self.by_key[key] = inode
        elif fd is not None:
            os.close(fd)
        if inode.parent is not parent or inode.name != name:
            inode.parent = parent
            inode.name = name
            inode.match = None
            inode.path_memo = None
            if inode.is_dir:
                self.generation += 1  # the paths below it moved too
        return inode

    def drop_if_unused(self, inode: Inode) -> None:
        if inode.lookups <= 0 and inode.id != ROOT:
            self.by_id.pop(inode.id, None)
            if self.by_key.get(inode.key) is inode:
                del self.by_key[inode.key]
            close_inode_fd(inode.fd)

    def forget(self, node_id: int, count: int) -> None:
        inode = self.by_id.get(node_id)
        if inode is not None:
            inode.lookups -= count
            self.drop_if_unused(inode)

    def renumber(self, inode: Inode) -> None:
        """A removed directory came back (lazy mode's rollback) under a node id the
        kernel has marked dead, and would keep refusing: forget it here, so that its
        next lookup gives the kernel a fresh node id."""
        self.by_id.pop(inode.id, None)
        if self.by_key.get(inode.key) is inode:
            del self.by_key[inode.key]
        self._burnt.add(inode.key[1])
        self.generation += 1
        # Kept open: children may still name it as their parent until looked up again.
        self._retired.append(inode)

    def moved(self, inode: Inode, parent: Inode, name: bytes) -> None:
        inode.parent = parent
        inode.name = name
        self.generation += 1

    def path(self, inode: Inode) -> str:
        """The path relative to the mount root by which the inode was last reached.

        Remembered per inode until a name moves: rules are matched against it on
        every faultable operation while any rule is in force.
        """
        memo = inode.path_memo
        if memo is not None and memo[0] == self.generation:
            return memo[1]
        path = self._walk(inode)
        inode.path_memo = (self.generation, path)
        return path

    def _walk(self, inode: Inode) -> str:
        parts: list[bytes] = []
        node: Inode | None = inode
        while node is not None and node.id != ROOT:
            parts.append(node.name)
            node = node.parent
        return os.fsdecode(b"/".join(reversed(parts)))

    def child_path(self, parent: Inode, name: bytes) -> str:
        base = self.path(parent)
        child = os.fsdecode(name)
        return f"{base}/{child}" if base else child

    def close_all(self) -> None:
        """Close every descriptor but the root's; may be called again (it is then a no-op)."""
        for inode in [*self.by_id.values(), *self._retired]:
            if inode.id != ROOT:
                os.close(inode.fd)
        self.by_id = {ROOT: self.root}
        self.by_key = {self.root.key: self.root}
        self._retired = []


_BIG = 1 << 20  # bytes a close may free before it is worth handing to the closer thread
_to_close: queue.SimpleQueue[int] = queue.SimpleQueue()
_closer: threading.Thread | None = None
# Descriptors handed to the closer thread and not yet closed: space that a native
# unlink would already have freed.
_freeing = threading.Condition()
_pending_frees = 0
_frees_done = 0


def close_inode_fd(fd: int) -> None:
    """Close an inode's O_PATH descriptor, off the FUSE thread if that frees a big file.

    Ours is often the last reference to an unlinked file, and the last close frees
    all its blocks and cached pages before it returns: about a quarter of a second
    for 1 GiB, during which every other request on the mount would wait. Requests
    that need that space see it free all the same: see ``frees_pending``.
    """
    global _closer, _pending_frees
    try:
        st = os.fstat(fd)
    except OSError:
        st = None
    if st is None or st.st_nlink > 0 or st.st_blocks * 512 < _BIG:
        os.close(fd)
        return
    if _closer is None:
        _closer = threading.Thread(target=_close_forever, name="chaosfs-closer", daemon=True)
        _closer.start()
    with _freeing:
        _pending_frees += 1
    _to_close.put(fd)


def frees_pending() -> bool:
    """Whether a deleted file's space is still being freed by the closer thread."""
    return _pending_frees > 0


def frees_done() -> int:
    """How many frees the closer thread has finished: a change means space came free."""
    return _frees_done


def wait_for_frees(timeout: float) -> bool:
    """Block until the closer thread has freed all it was given (not on the FUSE thread)."""
    with _freeing:
        return _freeing.wait_for(lambda: _pending_frees == 0, timeout)


def _close_forever() -> None:
    global _pending_frees, _frees_done
    while True:
        fd = _to_close.get()
        try:
            with contextlib.suppress(OSError):
                os.close(fd)
        finally:
            with _freeing:
                _frees_done += 1
                _pending_frees -= 1
                _freeing.notify_all()
