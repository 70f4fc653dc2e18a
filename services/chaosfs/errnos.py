"""How a failed system call becomes the FUSE reply the caller sees.

A FUSE handler answers an error by raising ``pyfuse3.FUSEError`` with the errno
the caller's system call returns; any other exception escaping a handler is a
bug (pyfuse3 logs it and answers EIO at best). Each handler's system calls run
inside ``with fuse_errors:``, which turns an ``OSError`` into the same errno for
the caller. An ``OSError`` raised without an errno (one made by hand, or by a
library that wraps a failure) still means "the I/O failed": it becomes EIO,
never a reply pyfuse3 cannot send.

``fuse_errors`` is one shared object, not a new one per call, and a plain class
rather than ``contextlib.contextmanager`` (which builds a generator each time).
Even so, entering and leaving it costs two Python calls (about 0.25 us here),
while a ``try`` costs nothing until something fails. So the handlers every read,
write, open, stat, truncate or utime goes through (a small request costs about 25 us of CPU in
all) write ``except OSError as exc: raise fuse_error(exc) from None`` instead,
as do those that treat some errno apart (a missing name in lookup); the rest use
``with fuse_errors:``. Both give the same answer.
"""

from __future__ import annotations

import errno
from types import TracebackType

from pyfuse3 import FUSEError

__all__ = ["fuse_error", "fuse_errors"]


def fuse_error(exc: OSError) -> FUSEError:
    """The reply for ``exc``: its errno, or EIO when it carries none."""
    return FUSEError(exc.errno or errno.EIO)


class _FuseErrors:
    """``with fuse_errors:``: an ``OSError`` in the block is answered with its errno."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, OSError):
            # Without its context: the caller is told the errno, and the system
            # call's traceback would only clutter a log of an expected answer.
            raise FUSEError(exc.errno or errno.EIO) from None


fuse_errors = _FuseErrors()
