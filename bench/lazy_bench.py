"""What lazy mode costs: chaosfs -lazy against plain chaosfs, both against native, in one run.

Lazy mode holds every write in chaosfs's memory until the program makes it
durable, and writes it to the backing file then. Two workloads show the two ends:

* fsync-heavy: 4 KiB appended, then fdatasync, N times (a database's log);
  every write is held and flushed at once by the next fdatasync;
* buffered: 1 MiB sequential writes, 256 MiB in all, one fsync at the end
  (a bulk load); lazy mode holds it all and writes it back in that fsync.

A third workload prices lazy mode's directory journal: create a file, write 4 KiB,
fsync it, its directory never fsynced (PostgreSQL's relation files, a mail queue).

Beside lazy mode as it starts by default (the journal model, write-back after
30 s), three variants show what its choices cost: the strict model
(-lazy-metadata strict), no write-back timer (-lazy-expire 0), and an eager one
(-lazy-expire 1s -lazy-flush-interval 100ms), each as a ratio to the default.

Three targets, interleaved round by round so that drift hits all alike: native
(a plain directory on the backing file system), chaosfs (a mount with no
rules), chaosfs -lazy (another mount, same file system, lazy mode, default
-lazy-max-bytes). The best of ``--repeats`` rounds is kept; every figure is
printed beside native and the lazy one beside passthrough, as ratios. The
fsyncs reach the backing disk in all three, so ``--dir /dev/shm`` measures
chaosfs alone and the default ``/var/tmp`` what an application on that disk sees.

Usage: ``python bench/lazy_bench.py [--quick] [--repeats N] [--dir DIR]
[--placement split|same|free]``. Needs root and /dev/fuse. The exit status says
whether the bench ran, not whether lazy mode was fast enough.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchstack import (
    PLACEMENTS,
    exit_on_failure,
    fmt_rate,
    free_port,
    fuse_ok,
    is_mounted,
    local_bin,
    nats_request,
    pinned,
    placement_cpus,
    port_open,
    print_table,
    spawn,
    stop,
    unmount,
    wait_for,
)

from chaosbus import codec
from chaosbus.subjects import pod_command

MIB = 1 << 20
PAGE = 4096
NAMESPACE = "bench"
FILE = "bench.bin"


@dataclass(frozen=True)
class Sizes:
    fsyncs: int  # 4 KiB write + fdatasync pairs per round
    buffered_mib: int  # written in 1 MiB chunks, then one fsync
    repeats: int
    creates: int = 1000  # files created, written and fsynced per round


FULL = Sizes(fsyncs=2000, buffered_mib=256, repeats=3, creates=1000)
QUICK = Sizes(fsyncs=200, buffered_mib=16, repeats=1, creates=100)

# Lazy mode's variants: (target name, chaosfs flags), the default first.
LAZY = "chaosfs -lazy"
VARIANTS = (
    (LAZY, ["-lazy"]),
    ("lazy strict", ["-lazy", "-lazy-metadata", "strict"]),
    ("lazy no timer", ["-lazy", "-lazy-expire", "0"]),
    ("lazy timer 1s", ["-lazy", "-lazy-expire", "1s", "-lazy-flush-interval", "100ms"]),
)


@dataclass
class Target:
    name: str
    root: Path


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def empty(path: Path) -> None:
    """Before the clock: an empty file, durably so (no pending truncate in lazy mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()  # earlier rounds' dirty pages must not be written back during this one


def fsync_heavy(target: Target, sizes: Sizes) -> float:
    """ops/s: pwrite 4 KiB at the end, then fdatasync, as a write-ahead log does."""
    path = target.root / FILE
    empty(path)
    block = os.urandom(PAGE)
    fd = os.open(path, os.O_WRONLY)
    try:
        start = time.perf_counter()
        for i in range(sizes.fsyncs):
            write_all(fd, block, i * PAGE)
            os.fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return sizes.fsyncs / elapsed


def buffered(target: Target, sizes: Sizes) -> float:
    """MiB/s: 1 MiB sequential writes, then one fsync, open to close."""
    path = target.root / FILE
    empty(path)
    chunk = os.urandom(MIB)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range(sizes.buffered_mib):
            write_all(fd, chunk, i * MIB)
        os.fsync(fd)
    finally:
        os.close(fd)
    return sizes.buffered_mib / (time.perf_counter() - start)


def create_fsync(target: Target, sizes: Sizes) -> float:
    """files/s: create, write 4 KiB, fsync; the directory is never fsynced."""
    top = target.root / "creates"
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir()
    sync_dir(target.root)
    os.sync()
    block = os.urandom(PAGE)
    start = time.perf_counter()
    for i in range(sizes.creates):
        fd = os.open(top / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, block, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - start
    shutil.rmtree(top)
    sync_dir(target.root)  # durable removals: lazy mode empties its trash
    return sizes.creates / elapsed


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    unit: str
    run: Callable[[Target, Sizes], float]


WORKLOADS = (
    Workload("fsync", "4 KiB write + fdatasync", "ops/s", fsync_heavy),
    Workload("buffered", "1 MiB writes, fsync at end", "MiB/s", buffered),
    Workload("create", "create + 4 KiB + fsync", "files/s", create_fsync),
)


# --- processes -------------------------------------------------------------------


@dataclass
class Mount:
    name: str  # also the pod name
    flags: list[str]
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def original(self) -> Path:
        return self.root / f"{self.name}-original"

    @property
    def mountpoint(self) -> Path:
        return self.root / f"{self.name}-mnt"

    def start(self, chaosfs: list[str], nats_url: str, cpus: set[int] | None) -> None:
        self.original.mkdir()
        self.mountpoint.mkdir()
        pidfile = self.root / f"{self.name}.pid"
        log = self.root / f"{self.name}.log"
        cmd = [*chaosfs, "-original", str(self.original), "-mountpoint", str(self.mountpoint),
               "-pidfile", str(pidfile), "-pod", f"{NAMESPACE}/{self.name}", "-nats", nats_url,
               *self.flags]  # fmt: skip
        self.proc = spawn(cmd, log, pinned(cpus))
        wait_for(lambda: pidfile.exists() or self.proc.poll() is not None, 20, self.name)
        if self.proc.poll() is not None:
            text = log.read_text(errors="replace")
            raise RuntimeError(f"chaosfs ({self.name}) exited with {self.proc.returncode}:\n{text}")

    def close(self) -> None:
        stop(self.proc)
        unmount(self.mountpoint)


@dataclass
class Bench:
    root: Path
    chaosfs: list[str]
    cpus: set[int] | None
    port: int = field(default_factory=free_port)
    nats: subprocess.Popen[bytes] | None = None
    mounts: list[Mount] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> tuple[Target, ...]:
        self.nats = spawn([local_bin("nats-server"), "-a", "127.0.0.1", "-p", str(self.port)],
                          self.root / "nats.log", pinned(None))  # fmt: skip
        wait_for(lambda: port_open(self.port), 10, "nats-server to listen")
        native = self.root / "native"
        native.mkdir()
        mounts = [("plain", "chaosfs", [])]
        mounts += [(f"lazy{i}", target, flags) for i, (target, flags) in enumerate(VARIANTS)]
        targets = [Target("native", native)]
        for name, target, flags in mounts:
            mount = Mount(name, flags, self.root)
            self.mounts.append(mount)
            mount.start(self.chaosfs, self.url, self.cpus)
            targets.append(Target(target, mount.mountpoint))
        status = self.status("lazy0").get("lazy") or {}
        if status.get("enabled") is not True:
            raise RuntimeError(f"chaosfs -lazy does not report lazy mode: {status}")
        return tuple(targets)

    def status(self, pod: str) -> dict[str, Any]:
        data = codec.encode({"op": "status"})
        reply = asyncio.run(nats_request(self.url, pod_command(NAMESPACE, pod), data, 20))
        if not reply.get("ok"):
            raise RuntimeError(f"status refused: {reply.get('error')}")
        return reply

    def close(self) -> None:
        for mount in self.mounts:
            mount.close()
        stop(self.nats)
        if any(is_mounted(m.mountpoint) for m in self.mounts):
            print(f"warning: a mount is still there; leaving {self.root}")
            return
        shutil.rmtree(self.root, ignore_errors=True)


# --- running and reporting ---------------------------------------------------------


def run(bench_targets: tuple[Target, ...], sizes: Sizes) -> dict[tuple[str, str], float]:
    best: dict[tuple[str, str], float] = {}
    for workload in WORKLOADS:
        for _ in range(sizes.repeats):
            for target in bench_targets:
                value = workload.run(target, sizes)
                key = (workload.key, target.name)
                best[key] = max(best.get(key, 0.0), value)
        for target in bench_targets:
            (target.root / FILE).unlink(missing_ok=True)
            fd = os.open(target.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)  # a durable unlink: lazy mode frees the file now
            finally:
                os.close(fd)
    return best


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "-"


def report(best: dict[tuple[str, str], float], sizes: Sizes, lazy_stats: dict[str, Any]) -> None:
    header = ("workload", "unit", "native", "chaosfs", "vs native", "chaosfs -lazy",
              "vs native", "lazy/passthrough")  # fmt: skip
    rows = [header]
    for w in WORKLOADS:
        native = best.get((w.key, "native"))
        plain = best.get((w.key, "chaosfs"))
        lazy = best.get((w.key, "chaosfs -lazy"))
        rows.append((w.label, w.unit, fmt_rate(native), fmt_rate(plain), ratio(plain, native),
                     fmt_rate(lazy), ratio(lazy, native), ratio(lazy, plain)))  # fmt: skip
    print_table(rows)
    print(f"\nbest of {sizes.repeats}; higher is better; lazy/passthrough = chaosfs -lazy / "
          "chaosfs (1.00x: lazy mode costs nothing)")  # fmt: skip
    print(f"fsync-heavy: {sizes.fsyncs:,} x (pwrite 4 KiB at the end of the file, fdatasync).")
    print(f"buffered: {sizes.buffered_mib} MiB in 1 MiB pwrites into an emptied file, then one "
          "fsync; open to close.")  # fmt: skip
    print(f"create: {sizes.creates:,} x (create, pwrite 4 KiB, fsync), directory never synced.")
    print("\nlazy mode's choices, each beside the default (journal model, write-back after "
          "30 s; 1.00x: the choice costs nothing):")  # fmt: skip
    rows = [("workload", "unit", LAZY, *(f"{name}" for name, _ in VARIANTS[1:]))]
    for w in WORKLOADS:
        base = best.get((w.key, LAZY))
        cells = [f"{fmt_rate(best.get((w.key, n)))} ({ratio(best.get((w.key, n)), base)})"
                 for n, _ in VARIANTS[1:]]  # fmt: skip
        rows.append((w.label, w.unit, fmt_rate(base), *cells))
    print_table(rows)
    print("lazy strict / lazy: what the journal model costs (its commit on each fsync); lazy "
          "no timer and lazy timer 1s: what write-back by age costs.")  # fmt: skip
    print("lazy mode's own counters: " + ", ".join(f"{k} {v:,}" for k, v in lazy_stats.items()))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke run")
    parser.add_argument("--repeats", type=int, help="rounds per workload (best is kept)")
    parser.add_argument("--dir", default="/var/tmp", help="where native and -original live")
    parser.add_argument("--placement", choices=PLACEMENTS, default="split",
                        help="CPUs of the bench and chaosfs (as in fs_bench.py)")  # fmt: skip
    parser.add_argument("--chaosfs", help="command that runs chaosfs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not fuse_ok("lazy_bench"):
        return 2
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = Sizes(sizes.fsyncs, sizes.buffered_mib, args.repeats, sizes.creates)
    chaosfs = args.chaosfs.split() if args.chaosfs else [local_bin("chaosfs")]
    own_cpus, chaosfs_cpus = placement_cpus(args.placement)
    started = time.perf_counter()
    bench = Bench(Path(tempfile.mkdtemp(prefix="chaosfs-lazy-bench-", dir=args.dir)), chaosfs,
                  chaosfs_cpus)  # fmt: skip
    # Closed after exit_on_failure has said why the bench ends, if it does.
    with contextlib.closing(bench), exit_on_failure("lazy_bench", "mounts and processes"):
        targets = bench.start()
        if own_cpus:
            os.sched_setaffinity(0, own_cpus)
        print(f"lazy bench: kernel {platform.release()}, {os.cpu_count()} CPUs, python "
              f"{platform.python_version()}; placement {args.placement}; data under "
              f"{bench.root}\n")  # fmt: skip
        best = run(targets, sizes)
        lazy_stats = bench.status("lazy0")["lazy"]["stats"]
    report(best, sizes, lazy_stats)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
