"""Preparing a mountpoint and a pidfile, and recovering from a previous crash."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time

from . import sysio

FSTYPE = "fuse.chaosfs"


class StartError(RuntimeError):
    """chaosfs cannot start; the message says why."""


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mount_at(path: str) -> tuple[str, str] | None:
    """("major:minor", fstype) of the file system mounted exactly at ``path``, or None.

    Read from mountinfo, never by stat(): on the FUSE thread that would wait on itself.
    """
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and _unescape(fields[4]) == path:
                found = (fields[2], right.split()[0])  # the last mount on a path wins
    return found


def mount_fstype(path: str) -> str | None:
    found = _mount_at(path)
    return found[1] if found else None


def mount_device(path: str) -> str | None:
    found = _mount_at(path)
    return found[0] if found else None


READ_AHEAD_KB = 1024


def raise_read_ahead(mountpoint: str, log, kb: int = READ_AHEAD_KB) -> None:
    """Let the kernel read ahead ``kb`` KiB on the mount instead of FUSE's 128 KiB.

    Every readahead window becomes READ requests of at most 1 MiB (the kernel's
    max_pages); at 128 KiB a sequential reader costs chaosfs eight round trips per
    MiB. The FUSE protocol can only lower read-ahead, so it is raised in sysfs,
    which needs root and a writable /sys; without them chaosfs works as before.
    """
    device = mount_device(mountpoint)
    if device is None:
        return
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w", encoding="ascii") as f:
            f.write(str(kb))
    except OSError as exc:
        log.info("read_ahead_unchanged", device=device, error=str(exc))


def read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile, encoding="ascii") as f:
            return int(f.read().strip() or "0") or None
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


PROBE_TIMEOUT = 2.0  # seconds a mount may take to answer before it counts as stuck
MAX_STACKED = 16  # dead mounts detached at most from one mountpoint


def probe(path: str, timeout: float = PROBE_TIMEOUT) -> int | None:
    """Ask the file system mounted at ``path`` something only its daemon can answer.

    None if it answered; else the errno it failed with (ENOTCONN: its FUSE daemon
    died), or ETIMEDOUT if no answer came within ``timeout``. statvfs, because the
    kernel sends every statfs to a FUSE daemon, where it answers a stat of the
    mount root from attributes cached for up to -cache-timeout, dead daemon or not.
    In a thread, because a daemon that is alive but stopped would hold the caller
    for as long as it is stopped.
    """
    outcome: list[int | None] = []

    def ask() -> None:
        try:
            os.statvfs(path)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc.errno)

    asker = threading.Thread(target=ask, name="chaosfs-probe", daemon=True)
    asker.start()
    asker.join(timeout)
    return outcome[0] if outcome else errno.ETIMEDOUT


def prepare_mountpoint(mountpoint: str, pidfile: str | None, log) -> None:
    """Make ``mountpoint`` ready to mount on, cleaning up after a crashed chaosfs."""
    owner = read_pid(pidfile) if pidfile else None
    alive = owner is not None and owner != os.getpid() and pid_alive(owner)
    if alive and mount_fstype(mountpoint) == FSTYPE:
        raise StartError(f"{mountpoint} is already served by chaosfs pid {owner}")
    for _ in range(MAX_STACKED):
        fstype = mount_fstype(mountpoint)
        if fstype is None:
            break
        failure = probe(mountpoint)
        if failure is None:
            if fstype == FSTYPE:
                # It answers, so its daemon is alive, whatever the pidfile says.
                raise StartError(f"{mountpoint} is already a live chaosfs mount")
            break  # some other file system: mounting over it is the caller's choice
        if failure == errno.ETIMEDOUT:
            raise StartError(
                f"the mount at {mountpoint} did not answer within {PROBE_TIMEOUT:g}s:"
                " its daemon is alive but stopped or stuck"
            )
        if failure != errno.ENOTCONN:
            raise StartError(f"cannot use mountpoint {mountpoint}: {os.strerror(failure)}")
        # The FUSE daemon behind this mount died: detach the dead mount.
        log.warning("stale_mount_detached", mountpoint=mountpoint, fstype=fstype)
        sysio.lazy_unmount(mountpoint)
    try:
        os.stat(mountpoint)
    except FileNotFoundError:
        os.makedirs(mountpoint, exist_ok=True)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise StartError(f"cannot use mountpoint {mountpoint}: {exc.strerror}") from None
        # A dead mount that mountinfo names by another path (a symlink on the way).
        log.warning("stale_mount_detached", mountpoint=mountpoint)
        sysio.lazy_unmount(mountpoint)
    if not os.path.isdir(mountpoint):
        raise StartError(f"mountpoint {mountpoint} is not a directory")
    if pidfile and owner is not None and not pid_alive(owner):
        log.warning("stale_pidfile_removed", pidfile=pidfile, pid=owner)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)


def wait_until_mounted(mountpoint: str, timeout: float = 10.0) -> None:
    """Block until the mount answers a request (run it off the FUSE thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mount_fstype(mountpoint) == FSTYPE:
            os.stat(mountpoint)  # a real round trip through the file system
            os.listdir(mountpoint)
            return
        time.sleep(0.01)
    raise StartError(f"the mount at {mountpoint} did not appear within {timeout:g}s")


def write_pidfile(pidfile: str) -> None:
    os.makedirs(os.path.dirname(pidfile) or ".", exist_ok=True)
    tmp = f"{pidfile}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, pidfile)


def remove_pidfile(pidfile: str) -> None:
    if read_pid(pidfile) == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
