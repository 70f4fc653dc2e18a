"""The few Linux calls the os module does not expose in the form we need."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_libc.fchownat.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_int,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MNT_DETACH = 2


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def renameat2(old_dir: int, old: bytes, new_dir: int, new: bytes, flags: int) -> None:
    _check(_libc.renameat2(old_dir, old, new_dir, new, flags), "renameat2")


def _spec(ns: int | None) -> _Timespec:
    if ns is None:
        return _Timespec(0, UTIME_OMIT)
    return _Timespec(ns // 1_000_000_000, ns % 1_000_000_000)


def utimensat(
    dir_fd: int, name: bytes, atime_ns: int | None, mtime_ns: int | None, *, follow: bool
) -> None:
    """Set either or both times; ``None`` leaves that time untouched (UTIME_OMIT).

    An empty ``name`` means ``dir_fd`` itself (AT_EMPTY_PATH; Linux 5.8 or later
    for utimensat), which may be an O_PATH descriptor on a symlink.
    """
    times = (_Timespec * 2)(_spec(atime_ns), _spec(mtime_ns))
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    if not name:
        flags |= AT_EMPTY_PATH
    _check(_libc.utimensat(dir_fd, name, times, flags), "utimensat")


def lchown_fd(fd: int, uid: int, gid: int) -> None:
    """chown the very inode ``fd`` (an O_PATH descriptor) stands for, never following it.

    ``-1`` leaves that id unchanged, as for chown(2).
    """
    flags = AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW
    _check(_libc.fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, flags), "fchownat")


def lazy_unmount(path: str) -> None:
    _check(_libc.umount2(os.fsencode(path), MNT_DETACH), "umount2")
