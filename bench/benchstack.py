"""Starting and stopping the child processes of a bench, and reading their logs.

The benches that run a stack of their own (nats-server, the injector, agents...)
share these: spawn a child with its stderr in a log file, find a free port and
see when it is listened on, stop children with SIGTERM (SIGKILL past a
timeout), turn SIGTERM to the bench into KeyboardInterrupt so the cleanup
runs, and on a failure show the tail of every child's log.

Each bench runs as ``python bench/<name>.py``, so this folder is on sys.path
and ``from benchstack import ...`` finds this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Protocol

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


class Stack(Protocol):
    """What show_logs and stack_cleanup need of a bench's stack."""

    @property
    def root(self) -> Path: ...

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]: ...

    def log(self, name: str) -> Path: ...

    def close(self) -> None: ...


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM if the bench dies without cleaning up."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    cmd: list[str], log: Path, preexec_fn: Callable[[], None] = die_with_parent
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its stderr appended to ``log``; ``preexec_fn`` runs in the
    child before exec."""
    # A session of its own: Ctrl-C reaches the bench only, which stops all in order.
    with open(log, "ab") as err:
        return subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )


def stop_all(procs: dict[str, subprocess.Popen[bytes]], timeout: float, bench: str) -> None:
    """SIGTERM to each of ``procs`` still running, then wait for them all, ``timeout``
    seconds in all; kill any still running then, saying so as ``bench``."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{bench}: {name} ignored SIGTERM for {timeout:g} s; killed", file=sys.stderr)
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the cleanup


def show_logs(stack: Stack, lines: int = 8) -> None:
    for name in stack.procs:
        with contextlib.suppress(OSError):
            tail = stack.log(name).read_text(errors="replace").splitlines()[-lines:]
            print(f"--- {name} log, last {len(tail)} lines", *tail, sep="\n", file=sys.stderr)


@contextlib.contextmanager
def stack_cleanup(stack: Stack, keep: bool, bench: str) -> Iterator[None]:
    """Around starting and using ``stack``: on a failure, close it and show its logs;
    always close it, then remove its temp dir unless ``keep``."""
    try:
        yield
    except Exception:
        stack.close()
        show_logs(stack)
        raise
    finally:
        stack.close()
        if keep:
            print(f"{bench}: logs kept in {stack.root}", file=sys.stderr)
        else:
            shutil.rmtree(stack.root, ignore_errors=True)
