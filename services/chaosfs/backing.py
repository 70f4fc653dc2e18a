"""Where the mount's data and names live: the backing store the FUSE operations use.

The FUSE operations (``passthrough.ChaosOperations``) decide faults and speak to
the kernel; what a read, write, truncate, sync or directory change does to the
backing tree is the backing store's. Two stores exist:

- ``DirectBacking`` (here): system calls straight to the backing files, what a
  plain chaosfs does;
- ``lazyfs.LazyBacking``: the page cache of lazy mode, which holds writes and
  directory operations until they are synced, so that a power cut can lose them.

Every method runs on the trio thread and raises ``OSError`` as the system call
would; the operations turn that into the caller's errno.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Protocol

from pyfuse3 import EntryAttributes

from . import sysio
from .inodes import Inode, InodeTable

if TYPE_CHECKING:
    from .passthrough import DirHandle, FileHandle


class Backing(Protocol):
    """What the FUSE operations ask of the store behind the mount."""

    # Whether what the kernel is shown differs from the backing file's stat (show).
    reshapes: bool
    # Whether the store must hear of the nodes the kernel forgets (forgotten).
    watches_forgets: bool
    # Open flags the store carries out itself, left out of the backing open.
    open_strip: int
    # A (parent node id, name) the mount never shows, if any.
    hidden: tuple[int, bytes] | None

    def start(self) -> None:
        """Inside the trio run, before the first request: start what runs alongside."""
        ...

    def show(self, inode: Inode, st: os.stat_result, entry: EntryAttributes) -> None:
        """Make ``entry``, made from the backing file's ``st``, what the caller sees."""
        ...

    def opened(self, node: Inode, fh: int, flags: int) -> None:
        """``node`` was opened as ``fh`` with ``flags`` (``open_strip`` left out of
        the backing open); raising closes it again and fails the open."""
        ...

    def created(self, fh: int, flags: int) -> None:
        """A file was created and opened as ``fh`` with ``flags``."""
        ...

    def closed(self, fh: int) -> None:
        """The open file ``fh`` is being released."""
        ...

    def mtime_set(self, node: Inode, mtime_ns: int) -> None:
        """A setattr set the file's mtime on the backing file, to ``mtime_ns``."""
        ...

    def reserved(self) -> int:
        """Bytes of the backing file system's free space the store has promised."""
        ...

    def forgotten(self, keys: list[tuple[int, int]]) -> None:
        """The kernel forgot the nodes of these (st_dev, st_ino)."""
        ...

    def make_room(self) -> bool:
        """Out of space: free what space the store itself holds; whether it did."""
        ...

    def pread(self, handle: FileHandle, fh: int, size: int, off: int) -> bytes:
        """Up to ``size`` bytes at ``off`` of the open file ``fh``, as the caller sees it."""
        ...

    def pwrite(self, handle: FileHandle, fh: int, buf: bytes, off: int) -> int:
        """Write ``buf`` at ``off``; the bytes taken (fewer is a short write)."""
        ...

    def size(self, node: Inode, fd: int) -> int:
        """The file's size as the caller sees it (``fd``: any descriptor of it)."""
        ...

    def truncate(self, node: Inode, fh: int | None, size: int) -> None:
        """Set the size; by the open file ``fh`` when the caller gave one."""
        ...

    def before_sync(self, handle: FileHandle) -> None:
        """What must reach the backing file before it is synced."""
        ...

    def before_sync_dir(self, handle: DirHandle) -> None:
        """What must reach the backing directory before it is synced."""
        ...

    def listdir(self, handle: DirHandle) -> list[bytes]:
        """The names the caller sees in the open directory."""
        ...

    def unlink(self, parent: Inode, name: bytes) -> Inode | None:
        """Remove ``parent/name``; the file it was the last name of, if known to the
        kernel, whose space a native file system would free once nothing holds it."""
        ...

    def rmdir(self, parent: Inode, name: bytes) -> None: ...

    def rename(
        self, old_parent: Inode, old: bytes, new_parent: Inode, new: bytes, flags: int
    ) -> None:
        """rename(2), or renameat2(2) with ``flags``."""
        ...

    def made(self, parent: Inode, name: bytes, node: Inode) -> None:
        """A new name ``parent/name`` for ``node`` exists (create, mknod, mkdir,
        symlink, link)."""
        ...


class DirectBacking:
    """The backing files themselves: every call goes straight to the file system."""

    __slots__ = ("table",)
    reshapes = False
    watches_forgets = False
    open_strip = 0
    hidden: tuple[int, bytes] | None = None

    def __init__(self, table: InodeTable) -> None:
        self.table = table

    def start(self) -> None:
        """Nothing runs alongside."""

    def show(self, inode: Inode, st: os.stat_result, entry: EntryAttributes) -> None:
        """Nothing: the caller sees the backing file as it is (never called: reshapes)."""

    def opened(self, node: Inode, fh: int, flags: int) -> None:
        """Nothing: the backing open did all."""

    def created(self, fh: int, flags: int) -> None:
        """Nothing: the backing open did all."""

    def closed(self, fh: int) -> None:
        """Nothing: the operations close the descriptor."""

    def mtime_set(self, node: Inode, mtime_ns: int) -> None:
        """Nothing: the backing file has it."""

    def reserved(self) -> int:
        return 0

    def forgotten(self, keys: list[tuple[int, int]]) -> None:
        """Nothing to drop (never called: watches_forgets)."""

    def make_room(self) -> bool:
        return False

    def pread(self, handle: FileHandle, fh: int, size: int, off: int) -> bytes:
        return os.pread(fh, size, off)

    def pwrite(self, handle: FileHandle, fh: int, buf: bytes, off: int) -> int:
        return os.pwrite(fh, buf, off)

    def size(self, node: Inode, fd: int) -> int:
        return os.fstat(fd).st_size

    def truncate(self, node: Inode, fh: int | None, size: int) -> None:
        if fh is not None:
            os.ftruncate(fh, size)
        else:
            os.truncate(node.proc, size)

    def before_sync(self, handle: FileHandle) -> None:
        """Nothing: the data is in the backing file already."""

    def before_sync_dir(self, handle: DirHandle) -> None:
        """Nothing: the entries are in the backing directory already."""

    def listdir(self, handle: DirHandle) -> list[bytes]:
        return [os.fsencode(n) for n in os.listdir(handle.fd)]

    def unlink(self, parent: Inode, name: bytes) -> Inode | None:
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        os.unlink(name, dir_fd=parent.fd)
        if st.st_nlink == 1 and stat.S_ISREG(st.st_mode):
            return self.table.by_key.get((st.st_dev, st.st_ino))
        return None

    def rmdir(self, parent: Inode, name: bytes) -> None:
        os.rmdir(name, dir_fd=parent.fd)

    def rename(
        self, old_parent: Inode, old: bytes, new_parent: Inode, new: bytes, flags: int
    ) -> None:
        if flags:
            sysio.renameat2(old_parent.fd, old, new_parent.fd, new, flags)
        else:
            os.rename(old, new, src_dir_fd=old_parent.fd, dst_dir_fd=new_parent.fd)

    def made(self, parent: Inode, name: bytes, node: Inode) -> None:
        """Nothing to remember: the name is on the backing file system already."""
