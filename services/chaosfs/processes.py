"""The app's processes that use the mount, found through /proc, and killing them.

A power cut stops every program at once. In a pod whose containers share one
process namespace (the sidecar template sets ``shareProcessNamespace``), the
sidecar sees the app's processes in /proc: those with a file open, their
working directory or a mapping under the mount are the ones the cut must hit.
Only /proc's own text is read (link targets, maps), never the mount itself,
so a process stuck in a request on this mount cannot stall the search.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Victim:
    pid: int
    comm: str


def _under(path: str, mountpoint: str) -> bool:
    return path == mountpoint or path.startswith(mountpoint + "/")


def _uses(pid: str, mountpoint: str) -> bool:
    base = f"/proc/{pid}"
    with contextlib.suppress(OSError):
        if _under(os.readlink(f"{base}/cwd"), mountpoint):
            return True
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"{base}/fd"):
            with contextlib.suppress(OSError):
                if _under(os.readlink(f"{base}/fd/{fd}"), mountpoint):
                    return True
    maps = f"{base}/maps"
    with contextlib.suppress(OSError), open(maps, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split(None, 5)
            if len(fields) == 6 and _under(fields[5].rstrip("\n"), mountpoint):
                return True
    return False


def comm(pid: int) -> str:
    """A process's command name, or an empty string when it is gone."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def users_of(mountpoint: str) -> list[Victim]:
    """Every process but this one that has something open under ``mountpoint``."""
    mountpoint = os.path.realpath(mountpoint).rstrip("/") or "/"
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and _uses(entry, mountpoint):
            found.append(Victim(int(entry), comm(int(entry))))
    return found


def alive(pid: int) -> bool:
    """Whether a process still runs: a zombie holds no files any more."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie holds no files any more


def kill_all(victims: list[Victim], signum: int, wait: float = 5.0) -> list[Victim]:
    """Signal them all at once, then wait until they are gone; return the survivors."""
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.pid, signum)
    deadline = time.monotonic() + wait
    left = victims
    while left and time.monotonic() < deadline:
        left = [v for v in left if alive(v.pid)]
        if left:
            time.sleep(0.01)
    return left
