"""One program's fsync must not stall everybody else's I/O on the mount.

A database fsyncs its log while other sessions read: on a real disk those reads
go on. chaosfs serves every request on one trio thread, so a sync that waited for
the disk there would hold each of them for as long as the disk takes.
(Lazy mode still writes a file's unsynced data back on that thread: see README.)
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for

BIG = 256  # MiB written, then synced: long enough a sync to see a stall


def _small_reads(path: Path, stop: threading.Event, worst: list[float]) -> None:
    while not stop.is_set():
        began = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.pread(fd, 4096, 0)
        finally:
            os.close(fd)
        worst.append(time.perf_counter() - began)
        time.sleep(0.001)


def test_a_long_fsync_does_not_stall_reads_of_other_files(make_sidecar):
    sc = make_sidecar(bus=False)
    small = sc.path("small")
    small.write_bytes(b"s" * 4096)
    latencies: list[float] = []
    stop = threading.Event()
    reader = threading.Thread(target=_small_reads, args=(small, stop, latencies))
    chunk = b"x" * (1 << 20)
    fd = os.open(sc.path("big"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for _ in range(BIG):
            os.write(fd, chunk)
        reader.start()
        wait_for(lambda: len(latencies) >= 3, what="the reader to be reading")
        began = time.perf_counter()
        os.fsync(fd)
        sync_time = time.perf_counter() - began
        # Two more reads recorded: the one the sync may have held is among them.
        done = len(latencies)
        wait_for(lambda: len(latencies) >= done + 2, what="reads after the sync")
    finally:
        stop.set()
        if reader.is_alive():
            reader.join()
        os.close(fd)
    if sync_time < 0.04:
        pytest.skip(f"the disk synced {BIG} MiB in {sync_time * 1000:.0f} ms: too fast to show")
    during = max(latencies)
    assert during < sync_time / 2, (
        f"a {sync_time * 1000:.0f} ms fsync held a small read for {during * 1000:.0f} ms"
    )
