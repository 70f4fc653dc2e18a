"""How much chaosfs costs an application, against libfuse's C passthrough_ll.

Two tables, each measured on the same backing file system in one run:

1. **Unpinned, as users run them** (the headline): chaosfs and passthrough_ll with
   their defaults and no CPU affinity for anyone. chaosfs: ``-cache-timeout 5s``,
   keep_cache on every handle that may read, direct_io on write-only handles, one
   FUSE thread. passthrough_ll: ``-f -o source=DIR`` (and fsname/subtype, which only
   name the mount), so its defaults hold:
   its multi-threaded loop, ``cache=auto`` (1 s entry and attribute timeouts, a
   file's cached pages dropped at each open), no ``default_permissions``.
2. **Pinned**: the bench on one CPU, both daemons on the other, passthrough_ll with
   chaosfs's caching as near as its options allow (``cache=always,timeout=5,
   allow_other,default_permissions``): what one request costs each of them when
   neither can use a second CPU.

Targets, interleaved round by round and in a rotating order (a run right after
another on the same ext4 is slower: it skips inodes freed moments ago):

* native: a plain directory on the backing file system;
* chaosfs: a chaosfs mount of another directory, no rules;
* chaosfs+rules: the same mount with 100 rules that match no file (every method,
  path globs ``nomatch-N/**``): their cost must stay within 5%;
* passthrough_ll: built from the source Debian's libfuse3-dev ships
  (/usr/share/doc/libfuse3-dev/examples, gzipped or not) with ``gcc -O2 -Wall
  passthrough_ll.c $(pkg-config fuse3 --cflags --libs)``. When the source, gcc or
  pkg-config is missing, or the build or the mount fails, the bench says why and
  goes on without it.

Each figure is the median of ``--repeats`` rounds (time.perf_counter), beside the
native figure of the same run. Per workload the unpinned table also gives each
daemon's CPU time (all its threads, /proc/PID/task/*/schedstat) per operation,
the FUSE requests per operation (counted with the kernel's fuse_request_send
tracepoint in a tracing instance of the bench's own, where tracefs is there) and
so the CPU time per request. The rules' cost is chaosfs's extra CPU time per
operation with them (its throughput loss is shown too, but swings by tens of
percent on a busy machine). A round during which other processes (anything but
the bench and its daemons) took more than BUSY_PERCENT of a CPU is run again, up
to MAX_REDONE times per workload.

Usage: ``python bench/fs_bench.py [--quick] [--repeats N] [--only W,...]
[--tables unpinned,pinned] [--dir DIR] [--chaosfs CMD] [--no-passthrough-ll]``.
Needs root and /dev/fuse, like the tests. Benchmarks are not tests: the exit
status says whether the bench ran, not whether the goals were met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchstack import (
    OthersMeter,
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
POD_NAMESPACE, POD_NAME = "bench", "b0"
RULE_COUNT = 100
SEED = 20240601
SEQ_FILE = "seq.bin"
RAND_FILE = "rand.bin"

NATIVE, CHAOSFS, RULED, LL = "native", "chaosfs", "chaosfs+rules", "passthrough_ll"
DAEMONS = (CHAOSFS, LL)
LL_EXAMPLES = Path("/usr/share/doc/libfuse3-dev/examples")
LL_NAMES = "fsname=passthrough_ll,subtype=passthrough_ll"  # names the mount, changes nothing
# The pinned table's passthrough_ll: chaosfs's caching (5 s timeouts, keep_cache on
# every open, default_permissions) as near as the example's options allow.
LL_ALIKE = f"cache=always,timeout=5,allow_other,default_permissions,{LL_NAMES}"


# --- configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    write_mib: int  # sequential file, written and read in 1 MiB chunks
    rand_file_mib: int  # file the cold 4 KiB random reads go to
    rand_ops: int  # distinct random pages read per round
    meta_files: int  # files created, stat'ed and unlinked per round
    repeats: int  # rounds of the unpinned table
    pinned_repeats: int


FULL = Sizes(write_mib=256, rand_file_mib=64, rand_ops=10_000, meta_files=5_000, repeats=5,
             pinned_repeats=3)  # fmt: skip
QUICK = Sizes(write_mib=16, rand_file_mib=8, rand_ops=1_000, meta_files=300, repeats=1,
              pinned_repeats=1)  # fmt: skip


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    placement: str  # benchstack's: free (unpinned) or split
    ll_options: str
    costs: bool  # print CPU time and requests per operation
    goals: bool  # judge chaosfs / passthrough_ll against the workloads' goals


UNPINNED = Table("unpinned", "unpinned, both daemons with their defaults (as users run them)",
                 "free", LL_NAMES, costs=True, goals=True)  # fmt: skip
PINNED = Table("pinned", "pinned: bench on one CPU, both daemons on the other, "
               "passthrough_ll with chaosfs's caching", "split", LL_ALIKE, costs=False,
               goals=False)  # fmt: skip
TABLES = {t.key: t for t in (UNPINNED, PINNED)}


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    unit: str
    per: str  # what one operation is, for the cost columns
    goal: float | None  # chaosfs / passthrough_ll to reach, unpinned; None: for information
    run: Callable[[Target, Sizes], tuple[float, int]]  # (figure, operations)
    default: bool = True


@dataclass
class Target:
    name: str
    root: Path
    fuse: bool
    pid: int = 0  # the daemon serving it (0: none)
    connection: int = 0  # st_dev of its mount: the FUSE connection's number


@dataclass
class Results:
    figures: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # seconds per op
    requests: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    ops: dict[tuple[str, str], int] = field(default_factory=dict)  # operations traced
    redone: dict[str, int] = field(default_factory=dict)  # rounds run again: machine busy
    other_load: list[float] = field(default_factory=list)  # per kept round, % of one CPU

    def add(self, workload: str, target: str, value: float, cpu: float | None) -> None:
        self.figures.setdefault((workload, target), []).append(value)
        if cpu is not None:
            self.cpu.setdefault((workload, target), []).append(cpu)

    def count(self, workload: str, target: str, requests: Counter[str], ops: int) -> None:
        self.requests.setdefault((workload, target), Counter()).update(requests)
        self.ops[(workload, target)] = self.ops.get((workload, target), 0) + ops

    def median(self, workload: str, target: str) -> float | None:
        values = self.figures.get((workload, target))
        return statistics.median(values) if values else None

    def cpu_per_op(self, workload: str, target: str) -> float | None:
        values = self.cpu.get((workload, target))
        return statistics.median(values) if values else None

    def requests_per_op(self, workload: str, target: str) -> float | None:
        ops = self.ops.get((workload, target))
        return sum(self.requests[(workload, target)].values()) / ops if ops else None


# --- helpers ---------------------------------------------------------------------


def drop_fuse_cache(target: Target, fd: int) -> None:
    """Forget the mount's cached pages of ``fd`` so that reads reach the daemon.

    The backing file keeps its own cached pages, so the daemon reads from memory.
    Never done natively: that would send the baseline to the disk.
    """
    if target.fuse:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_through(fd: int, chunk: int = MIB) -> int:
    buf = bytearray(chunk)
    total = 0
    while n := os.readv(fd, [buf]):
        total += n
    return total


def make_file(path: Path, size_mib: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        block = random.Random(SEED).randbytes(MIB)
        for _ in range(size_mib):
            write_all(fd, block)
    finally:
        os.close(fd)


def cpu_seconds(pid: int) -> float:
    """CPU time of all the threads of a process so far, in nanoseconds' precision (the
    scheduler's own count; /proc/PID/stat's is in ticks of 10 ms); 0 once it is gone."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, ValueError),
                open(f"/proc/{pid}/task/{task}/schedstat") as f,
            ):
                total += int(f.read().split()[0])
    return total / 1e9


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


# --- workloads: each returns (figure, operations) ------------------------------------


def seq_write(target: Target, sizes: Sizes) -> tuple[float, int]:
    """MiB/s writing an emptied file in 1 MiB chunks, open to close, no fsync."""
    path = target.root / SEQ_FILE
    # Truncate rather than unlink, and before the clock starts: through a FUSE mount
    # an unlinked file is freed only when the kernel's FORGET arrives, which may be
    # in the middle of the next round (and frees 256 MiB of page cache there).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    os.sync()  # earlier rounds' dirty pages must not be written back during this one
    chunk = random.Random(SEED).randbytes(MIB)

    def write() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            for _ in range(sizes.write_mib):
                write_all(fd, chunk)
        finally:
            os.close(fd)

    return sizes.write_mib / timed(write), sizes.write_mib


def _seq_read(target: Target, drop: bool) -> tuple[float, int]:
    path = target.root / SEQ_FILE
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop:
            drop_fuse_cache(target, fd)
        else:
            read_through(fd)  # warm every cache on the way, then read again
            os.lseek(fd, 0, os.SEEK_SET)
        total = 0

        def read() -> None:
            nonlocal total
            total = read_through(fd)

        elapsed = timed(read)
    finally:
        os.close(fd)
    return total / MIB / elapsed, max(1, total // MIB)


def seq_read(target: Target, sizes: Sizes) -> tuple[float, int]:
    """MiB/s reading the written file in 1 MiB chunks; every byte goes through the daemon."""
    return _seq_read(target, drop=True)


def seq_reread(target: Target, sizes: Sizes) -> tuple[float, int]:
    """MiB/s re-reading it with the mount's page cache warm."""
    return _seq_read(target, drop=False)


def random_offsets(size_mib: int, count: int) -> list[int]:
    pages = (size_mib * MIB) // PAGE
    return [p * PAGE for p in random.Random(SEED).sample(range(pages), min(count, pages))]


def _rand_read(target: Target, path: Path, offsets: list[int], drop: bool, warm: bool) -> float:
    fd = os.open(path, os.O_RDONLY)

    def read() -> None:
        for offset in offsets:
            if len(os.pread(fd, PAGE, offset)) != PAGE:
                raise RuntimeError(f"short read at {offset}")

    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # as a database would: no readahead
        if drop:
            drop_fuse_cache(target, fd)
        if warm:
            read()  # the same pages, once, untimed
        return len(offsets) / timed(read)
    finally:
        os.close(fd)


def rand_after_seq(target: Target, sizes: Sizes) -> tuple[float, int]:
    """ops/s of 4 KiB preads at distinct random offsets of the sequential file, opened
    anew right after reading it through: what each daemon's page cache keeps for a
    program that reads a file again (chaosfs keeps it across opens; passthrough_ll's
    default drops it at each open)."""
    path = target.root / SEQ_FILE
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_fuse_cache(target, fd)  # the sequential read, as in the read workload
        read_through(fd)
    finally:
        os.close(fd)
    offsets = random_offsets(sizes.write_mib, sizes.rand_ops)
    return _rand_read(target, path, offsets, drop=False, warm=False), len(offsets)


def rand_cold(target: Target, sizes: Sizes) -> tuple[float, int]:
    """ops/s of 4 KiB preads at distinct random offsets with the mount's cache dropped:
    each one is a request to the daemon."""
    offsets = random_offsets(sizes.rand_file_mib, sizes.rand_ops)
    path = target.root / RAND_FILE
    return _rand_read(target, path, offsets, drop=True, warm=False), len(offsets)


def rand_reread(target: Target, sizes: Sizes) -> tuple[float, int]:
    """ops/s of the cold preads again, after reading the same pages once untimed."""
    offsets = random_offsets(sizes.rand_file_mib, sizes.rand_ops)
    path = target.root / RAND_FILE
    return _rand_read(target, path, offsets, drop=True, warm=True), len(offsets)


def metadata(target: Target, sizes: Sizes) -> tuple[float, int]:
    """files/s: create (with 100 bytes), then stat, then unlink N files in one directory."""
    directory = Path(tempfile.mkdtemp(prefix="meta-", dir=target.root))
    names = [f"f{i:06d}" for i in range(sizes.meta_files)]
    payload = b"m" * 100
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    def churn() -> None:
        for name in names:
            fd = os.open(name, flags, 0o644, dir_fd=dfd)
            os.write(fd, payload)
            os.close(fd)
        for name in names:
            os.stat(name, dir_fd=dfd)
        for name in names:
            os.unlink(name, dir_fd=dfd)

    try:
        return len(names) / timed(churn), len(names)
    finally:
        os.close(dfd)
        shutil.rmtree(directory, ignore_errors=True)


WORKLOADS = (
    Workload("write", "1 MiB seq write", "MiB/s", "MiB", 1.0, seq_write),
    Workload("read", "1 MiB seq read", "MiB/s", "MiB", 1.0, seq_read),
    Workload("rand", "4 KiB random read after the seq read", "ops/s", "read", 1.0, rand_after_seq),
    Workload("randcold", "4 KiB random read, FUSE cache dropped", "ops/s", "read", None, rand_cold),
    Workload("meta", "create+stat+unlink", "files/s", "file", 0.7, metadata),
    Workload(
        "reread",
        "1 MiB seq re-read, FUSE cache warm",
        "MiB/s",
        "MiB",
        None,
        seq_reread,
        default=False,
    ),
    Workload(
        "rereadrand",
        "4 KiB random re-read, FUSE cache warm",
        "ops/s",
        "read",
        None,
        rand_reread,
        default=False,
    ),
)
RULES_COST_GOAL = 5.0  # percent, chaosfs+rules against chaosfs
BUSY_PERCENT = 20.0  # a round during which others used more CPU than this is run again
MAX_REDONE = 3  # per workload; after that, busy rounds are kept (and the report says so)


# --- counting FUSE requests ------------------------------------------------------------


TRACEFS = Path("/sys/kernel/tracing")


class RequestCounter:
    """FUSE requests sent to one connection, by opcode, from the kernel's
    fuse_request_send tracepoint, in a tracing instance of the bench's own (so
    nobody else's tracing is touched); ``note`` says why not, when it cannot."""

    def __init__(self) -> None:
        self.note = ""
        self.instance = TRACEFS / "instances" / f"chaosfs-bench-{os.getpid()}"
        event = TRACEFS / "events" / "fuse" / "fuse_request_send"
        if not event.exists() and TRACEFS.is_dir() and not any(TRACEFS.iterdir()):
            # Not mounted (a VM without systemd): mount it where it belongs.
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)],
                           capture_output=True, check=False)  # fmt: skip
        if not event.exists():
            self.note = f"no {event} (tracefs, or this kernel's fuse tracepoints)"
            return
        try:
            self.instance.mkdir()
            (self.instance / "buffer_size_kb").write_text("32768")
        except OSError as exc:
            self.note = f"cannot make a tracing instance: {exc}"

    @property
    def event(self) -> Path:
        return self.instance / "events" / "fuse" / "fuse_request_send"

    def start(self, connection: int) -> None:
        if self.note:
            return
        (self.instance / "trace").write_text("")
        (self.event / "filter").write_text(f"connection == {connection}")
        (self.event / "enable").write_text("1")

    def stop(self) -> Counter[str]:
        if self.note:
            return Counter()
        (self.event / "enable").write_text("0")
        text = (self.instance / "trace").read_text(errors="replace")
        (self.instance / "trace").write_text("")
        return Counter(re.findall(r"\(FUSE_(\w+)\)", text))

    def close(self) -> None:
        if not self.note:
            with contextlib.suppress(OSError):
                self.instance.rmdir()


# --- libfuse's passthrough_ll ------------------------------------------------------


def example_sources() -> list[Path]:
    """The directories that may hold libfuse's examples, most likely first."""
    found = [LL_EXAMPLES, *sorted(Path("/usr/share/doc").glob("libfuse*-dev/examples"))]
    return [d for i, d in enumerate(found) if d not in found[:i] and d.is_dir()]


def copy_example(source: Path, dest: Path) -> None:
    """Copy a .c or .h file of the examples, decompressing it if Debian gzipped it."""
    if source.name.endswith(".gz"):
        with gzip.open(source, "rb") as f:
            (dest / source.name[: -len(".gz")]).write_bytes(f.read())
    else:
        shutil.copyfile(source, dest / source.name)


def build_passthrough_ll(workdir: Path) -> tuple[Path | None, str]:
    """Compile libfuse's example passthrough_ll: (the binary, "") or (None, why not)."""
    names = ("passthrough_ll.c", "passthrough_ll.c.gz")
    found = [d for d in example_sources() if any((d / name).exists() for name in names)]
    examples = found[0] if found else None
    if examples is None:
        return None, (f"no passthrough_ll.c(.gz) under {LL_EXAMPLES} (it ships with Debian's "
                      "libfuse3-dev: make setup installs it)")  # fmt: skip
    build = workdir / "passthrough_ll-build"
    try:
        build.mkdir(exist_ok=True)
        for item in examples.iterdir():  # the .c and the headers it includes
            if item.name.endswith((".h", ".h.gz", "passthrough_ll.c", "passthrough_ll.c.gz")):
                copy_example(item, build)
        pkg = ["pkg-config", "fuse3", "--cflags", "--libs"]
        run = {"check": True, "capture_output": True, "text": True}
        flags = subprocess.run(pkg, timeout=60, **run).stdout.split()
        cmd = ["gcc", "-O2", "-Wall", "passthrough_ll.c", *flags, "-o", "passthrough_ll"]
        subprocess.run(cmd, cwd=build, timeout=300, **run)
    except FileNotFoundError as exc:
        return None, f"cannot build passthrough_ll: {exc.filename or exc} not found"
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()[-3:]
        return None, (f"{shlex.join(exc.cmd)} failed with {exc.returncode}"
                      + "".join(f"\n    {line}" for line in detail))  # fmt: skip
    except (subprocess.TimeoutExpired, OSError) as exc:
        return None, f"cannot build passthrough_ll: {exc}"
    return build / "passthrough_ll", ""


def fuse_opt_escape(value: str) -> str:
    """A value inside ``-o a=b,c=d``: libfuse splits on commas unless escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


@dataclass
class Bench:
    root: Path
    chaosfs_cmd: list[str]
    table: Table
    chaosfs_cpus: set[int] | None = None
    rules_on: bool = False
    nats_port: int = field(default_factory=free_port)
    nats: subprocess.Popen[bytes] | None = None
    chaosfs: subprocess.Popen[bytes] | None = None
    want_ll: bool = True
    ll: subprocess.Popen[bytes] | None = None  # libfuse's passthrough_ll, if it runs
    ll_cmd: list[str] = field(default_factory=list)
    ll_note: str = ""  # why passthrough_ll is not measured

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def mountpoint(self) -> Path:
        return self.root / "mnt"

    @property
    def original(self) -> Path:
        return self.root / "original"

    @property
    def native(self) -> Path:
        return self.root / "native"

    @property
    def ll_original(self) -> Path:
        return self.root / "original-ll"

    @property
    def ll_mountpoint(self) -> Path:
        return self.root / "mnt-ll"

    def start(self) -> None:
        for directory in (self.native, self.original, self.mountpoint):
            directory.mkdir(exist_ok=True)
        if self.want_ll:
            self.start_ll()
        else:
            self.ll_note = "left out (--no-passthrough-ll)"
        cmd = [local_bin("nats-server"), "-a", "127.0.0.1", "-p", str(self.nats_port)]
        self.nats = spawn(cmd, self.root / "nats.log", pinned(None))
        wait_for(lambda: port_open(self.nats_port), 10, "nats-server to listen")
        pidfile = self.root / "chaosfs.pid"
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        self.chaosfs = spawn(
            [*self.chaosfs_cmd, "-original", str(self.original), "-mountpoint",
             str(self.mountpoint), "-pidfile", str(pidfile), "-pod",
             f"{POD_NAMESPACE}/{POD_NAME}", "-nats", self.nats_url],
            self.root / "chaosfs.log",
            pinned(self.chaosfs_cpus),
        )  # fmt: skip
        wait_for(lambda: pidfile.exists() or self.chaosfs.poll() is not None, 20, "chaosfs")
        if self.chaosfs.poll() is not None:
            log = (self.root / "chaosfs.log").read_text(errors="replace")
            raise RuntimeError(f"chaosfs exited with {self.chaosfs.returncode}:\n{log}")

    def start_ll(self) -> None:
        """Build and mount passthrough_ll; on any failure, note why and go on without it."""
        binary, self.ll_note = build_passthrough_ll(self.root)
        if binary is None:
            return
        for directory in (self.ll_original, self.ll_mountpoint):
            directory.mkdir(exist_ok=True)
        source = fuse_opt_escape(str(self.ll_original))
        self.ll_cmd = [str(binary), "-f", "-o", f"source={source},{self.table.ll_options}",
                       str(self.ll_mountpoint)]  # fmt: skip
        log = self.root / "passthrough_ll.log"
        try:
            self.ll = spawn(self.ll_cmd, log, pinned(self.chaosfs_cpus))
            wait_for(lambda: is_mounted(self.ll_mountpoint) or self.ll.poll() is not None, 10,
                     "passthrough_ll to mount")  # fmt: skip
            if self.ll.poll() is not None:
                raise RuntimeError(f"exited with {self.ll.returncode}")
            os.stat(self.ll_mountpoint)  # it answers
        except (RuntimeError, OSError) as exc:
            text = log.read_text(errors="replace").strip() if log.exists() else ""
            self.ll_note = f"passthrough_ll did not start: {exc}" + (f"\n{text}" if text else "")
            self.stop_ll()

    def stop_ll(self) -> None:
        stop(self.ll, timeout=5.0)  # SIGTERM: libfuse's handler unmounts
        unmount(self.ll_mountpoint)
        self.ll = None

    def stop_all(self) -> None:
        """Stop the daemons and nats-server; the data stays for the next table."""
        self.stop_ll()
        stop(self.chaosfs)
        unmount(self.mountpoint)
        stop(self.nats)
        self.rules_on = False

    def close(self) -> None:
        self.stop_all()
        left = [str(m) for m in (self.mountpoint, self.ll_mountpoint) if is_mounted(m)]
        if left:
            print(f"warning: {', '.join(left)} still mounted; leaving {self.root}")
            return
        shutil.rmtree(self.root, ignore_errors=True)

    def command(self, command: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
        subject = pod_command(POD_NAMESPACE, POD_NAME)
        reply = asyncio.run(nats_request(self.nats_url, subject, codec.encode(command), timeout))
        if not reply.get("ok"):
            raise RuntimeError(f"chaosfs refused {command.get('op')}: {reply.get('error')}")
        return reply

    def set_rules(self, on: bool) -> None:
        """Set the non-matching rules, or recover them all; nothing if already so."""
        if on == self.rules_on:
            return
        if on:
            rules = [{"id": f"bench-{i}", "action": "errno", "errno": "EIO",
                      "path": f"nomatch-{i}/**"} for i in range(RULE_COUNT)]  # fmt: skip
            reply = self.command({"op": "set", "rules": rules})
            if len(reply.get("rules", [])) != RULE_COUNT:
                raise RuntimeError(f"expected {RULE_COUNT} rules to be set, got {reply}")
        else:
            self.command({"op": "recover", "all": True})
        self.rules_on = on

    def pids(self) -> list[int]:
        return [p.pid for p in (self.chaosfs, self.nats, self.ll) if p is not None]

    def read_ahead_kb(self, mountpoint: Path | None = None) -> str:
        dev = os.stat(mountpoint or self.mountpoint).st_dev
        path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        with contextlib.suppress(OSError):
            return path.read_text().strip()
        return "?"


# --- running -------------------------------------------------------------------------


def prepare(bench: Bench, sizes: Sizes, make_data: bool) -> tuple[Target, ...]:
    assert bench.chaosfs is not None
    mount = os.stat(bench.mountpoint).st_dev
    targets = [Target(NATIVE, bench.native, fuse=False),
               Target(CHAOSFS, bench.mountpoint, True, bench.chaosfs.pid, mount),
               Target(RULED, bench.mountpoint, True, bench.chaosfs.pid, mount)]  # fmt: skip
    backing = [bench.native, bench.original]
    if bench.ll is not None:
        ll_mount = os.stat(bench.ll_mountpoint).st_dev
        targets.append(Target(LL, bench.ll_mountpoint, True, bench.ll.pid, ll_mount))
        backing.append(bench.ll_original)
    if make_data:
        for directory in backing:
            make_file(directory / RAND_FILE, sizes.rand_file_mib)
            make_file(directory / SEQ_FILE, sizes.write_mib)  # for --only read without write
        os.sync()
    return tuple(targets)


Run = tuple[float, int, float | None, Counter[str]]  # figure, operations, CPU s, requests


def run_target(
    workload: Workload, target: Target, sizes: Sizes, counter: RequestCounter | None
) -> Run:
    """(figure, operations, daemon CPU seconds, FUSE requests) of one run."""
    if counter is not None and target.fuse:
        counter.start(target.connection)
    cpu_before = cpu_seconds(target.pid) if target.pid else 0.0
    try:
        figure, ops = workload.run(target, sizes)
    finally:
        cpu = cpu_seconds(target.pid) - cpu_before if target.pid else None
        requests = counter.stop() if counter is not None and target.fuse else Counter()
    return figure, ops, cpu, requests


def run_round(bench: Bench, workload: Workload, targets: tuple[Target, ...], sizes: Sizes,
              turn: int, counter: RequestCounter | None) -> tuple[list[tuple], float]:  # fmt: skip
    """One run per target, and the CPU % others took meanwhile.

    Each round starts with another target (``turn``): a run right after another one
    on the same file system is slower (ext4 skips inodes freed moments ago), so a
    fixed order would charge that to whichever target always comes second.
    """
    meter = OthersMeter(bench.pids())
    runs = []
    turn %= len(targets)
    for target in targets[turn:] + targets[:turn]:
        if target.name in (CHAOSFS, RULED):  # passthrough_ll runs whatever chaosfs holds
            bench.set_rules(target.name == RULED)
        runs.append((target.name, *run_target(workload, target, sizes, counter)))
    return runs, meter.percent()


def run_workload(
    bench: Bench,
    workload: Workload,
    targets: tuple[Target, ...],
    repeats: int,
    sizes: Sizes,
    results: Results,
    counter: RequestCounter | None,
) -> None:
    kept = redone = 0
    while kept < repeats:
        runs, other = run_round(bench, workload, targets, sizes, kept + redone, counter)
        if other > BUSY_PERCENT and redone < MAX_REDONE:
            redone += 1  # someone else used the CPUs: this round says little
            continue
        for name, figure, ops, cpu, requests in runs:
            results.add(workload.key, name, figure, None if cpu is None else cpu / ops)
            if requests:
                results.count(workload.key, name, requests, ops)
        results.other_load.append(other)
        kept += 1
    results.redone[workload.key] = redone


# --- reporting -------------------------------------------------------------------------


def ratio_cell(value: float | None, base: float | None, goal: float | None = None) -> str:
    if value is None or not base:
        return "-"
    ratio = value / base
    if goal is None:
        return f"{ratio:.2f}x"
    return f"{ratio:.2f}x {'ok' if ratio >= goal else 'LOW'}"


def rules_cost(results: Results, key: str) -> float | None:
    """How much more CPU time chaosfs spends per operation with the rules in force, in %.

    The goal's measure: CPU time per operation stays steady while other programs
    load the machine, when throughput swings by tens of percent (rules_bench
    measures the same way).
    """
    plain, ruled = results.cpu_per_op(key, CHAOSFS), results.cpu_per_op(key, RULED)
    if not plain or ruled is None:
        return None
    return (ruled - plain) / plain * 100


def rules_slowdown(results: Results, key: str) -> float | None:
    """How much lower chaosfs's throughput is with the rules in force, in %."""
    plain, ruled = results.median(key, CHAOSFS), results.median(key, RULED)
    if not plain or ruled is None:
        return None
    return (plain - ruled) / plain * 100


def cost_cell(cost: float | None, goal: bool = True) -> str:
    if cost is None:
        return "-"
    if not goal:
        return f"{cost:+.1f}%"
    return f"{cost:+.1f}% {'ok' if cost <= RULES_COST_GOAL else 'HIGH'}"


def micros(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.1f}" if seconds < 1e-3 else \
        f"{seconds * 1e6:,.0f}"  # fmt: skip


def headline(table: Table, results: Results, workloads: list[Workload], ll_note: str) -> str:
    """The goals, measured in this run: chaosfs / passthrough_ll, and the rules' cost."""
    costs = [c for w in workloads if (c := rules_cost(results, w.key)) is not None]
    worst = f"; {RULE_COUNT} rules cost at most {max(costs):+.1f}%" if costs else ""
    if costs:
        worst += " ok" if max(costs) <= RULES_COST_GOAL else " HIGH"
    if ll_note:
        return f"{table.key}: chaosfs / passthrough_ll not measured: {ll_note.splitlines()[0]}"
    if not table.goals:  # the goals are for the unpinned table: here, figures only
        cells = [f"{w.key} {ratio_cell(results.median(w.key, CHAOSFS), results.median(w.key, LL))}"
                 for w in workloads]  # fmt: skip
        return f"{table.key}, chaosfs / passthrough_ll, same run: {', '.join(cells)}{worst}"
    cells, met, goals = [], 0, 0
    for w in workloads:
        plain, ll = results.median(w.key, CHAOSFS), results.median(w.key, LL)
        if w.goal is None or not plain or not ll:
            continue
        goals += 1
        met += plain / ll >= w.goal
        cells.append(f"{w.key} {ratio_cell(plain, ll, w.goal)} (>= {w.goal:g})")
    if not goals:
        return f"{table.key}: no goal workload was run{worst}"
    return (f"{table.key}, chaosfs / passthrough_ll, same run: {', '.join(cells)}: "
            f"met on {met} of {goals}{worst}")  # fmt: skip


def report(table: Table, results: Results, workloads: list[Workload], repeats: int,
           ll_note: str, counter_note: str) -> None:  # fmt: skip
    with_ll = not ll_note
    print(f"== {table.title} ==")
    print(headline(table, results, workloads, ll_note) + "\n")
    header: tuple[str, ...] = ("workload", "unit", "native", "chaosfs", "/native")
    if with_ll:
        header += (LL, "/native", "chaosfs / passthrough_ll")
    header += ("+100 rules", "slower by", "rules cost (CPU)")
    rows: list[tuple[str, ...]] = [header]
    for w in workloads:
        native, plain = results.median(w.key, NATIVE), results.median(w.key, CHAOSFS)
        row: tuple[str, ...] = (w.label, w.unit, fmt_rate(native), fmt_rate(plain),
                                ratio_cell(plain, native))  # fmt: skip
        if with_ll:
            ll = results.median(w.key, LL)
            if not table.goals:
                cell = ratio_cell(plain, ll)
            elif w.goal is None:
                cell = ratio_cell(plain, ll) + " (info)"
            else:
                cell = f"{ratio_cell(plain, ll, w.goal)} (>= {w.goal:g})"
            row += (fmt_rate(ll), ratio_cell(ll, native), cell)
        row += (fmt_rate(results.median(w.key, RULED)),
                cost_cell(rules_slowdown(results, w.key), goal=False),
                cost_cell(rules_cost(results, w.key)))  # fmt: skip
        rows.append(row)
    print_table(rows)
    print(f"median of {repeats} round(s); with {RULE_COUNT} non-matching rules in force, "
          "slower by = chaosfs's throughput lost,\n  rules cost = chaosfs's extra CPU time per "
          f"operation (goal <= {RULES_COST_GOAL:g}%: steadier than throughput on a busy "
          "machine)")  # fmt: skip
    if table.costs:
        print()
        cost_table(results, workloads, with_ll, counter_note)
    print()


def cost_table(results: Results, workloads: list[Workload], with_ll: bool, note: str) -> None:
    daemons = [d for d in DAEMONS if d != LL or with_ll]
    header: tuple[str, ...] = ("workload", "per")
    for d in daemons:
        header += (f"{d} CPU us/op", "requests/op", "CPU us/request")
    rows: list[tuple[str, ...]] = [header]
    for w in workloads:
        row: tuple[str, ...] = (w.label, w.per)
        for d in daemons:
            cpu, requests = results.cpu_per_op(w.key, d), results.requests_per_op(w.key, d)
            per_request = cpu / requests if cpu is not None and requests else None
            row += (micros(cpu), "-" if requests is None else f"{requests:.2f}",
                    micros(per_request))  # fmt: skip
        rows.append(row)
    print_table(rows)
    print(
        "CPU = the daemon's user + system time (all its threads) during the timed run, "
        "median per operation;\nrequests = FUSE requests the kernel sent it "
        "(fuse_request_send tracepoint)" + (f": not counted: {note}" if note else "")
    )
    mix = []
    for w in workloads:
        for d in daemons:
            counts, ops = results.requests.get((w.key, d)), results.ops.get((w.key, d))
            if counts and ops:
                top = ", ".join(f"{k} {v / ops:.2f}" for k, v in counts.most_common(8))
                mix.append(f"  {w.key} {d}: {top}")
    if mix:
        print("requests per operation, by kind:\n" + "\n".join(mix))


def notes(sizes: Sizes) -> str:
    return (
        f"write: {sizes.write_mib} MiB into a file emptied (and synced) before the clock starts, "
        "open to close, no fsync.\n"
        "read: backing page cache warm, the mount's page cache dropped (fadvise DONTNEED on the\n"
        "  FUSE fd) so every byte passes the daemon; native is a warm page-cache read.\n"
        f"random after the seq read: that file read through once more (mount cache dropped "
        f"first), then opened anew;\n  {sizes.rand_ops:,} distinct 4 KiB pages, fixed seed, "
        "POSIX_FADV_RANDOM: what each daemon's page cache keeps across opens.\n"
        f"random, cache dropped: {sizes.rand_ops:,} distinct 4 KiB pages of a "
        f"{sizes.rand_file_mib} MiB file, the mount's cache dropped:\n  one request per read.\n"
        f"metadata: {sizes.meta_files:,} files of 100 bytes: create all, stat all, unlink all, "
        "in one fresh directory.\n  ext4 without a journal skips inodes deleted in the last "
        "minutes when it creates files,\n  so a busy file system lowers every target's figure; "
        "--dir /dev/shm is steadier."
    )


def describe_setup(bench: Bench, table: Table) -> None:
    where = "nothing pinned"
    daemons = "chaosfs and passthrough_ll" if bench.ll is not None else "chaosfs"
    if bench.chaosfs_cpus:
        own = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        where = f"bench on CPU {own}, {daemons} on CPU {','.join(map(str, bench.chaosfs_cpus))}"
    print(f"{table.key}: {where}; chaosfs: {shlex.join(bench.chaosfs_cmd)}, FUSE "
          f"read_ahead_kb={bench.read_ahead_kb()}")  # fmt: skip
    if bench.ll is not None:
        print(f"  passthrough_ll ({fuse_version()}): {shlex.join(bench.ll_cmd)}, FUSE "
              f"read_ahead_kb={bench.read_ahead_kb(bench.ll_mountpoint)}")  # fmt: skip
    else:
        print(f"  passthrough_ll: not measured: {bench.ll_note}")


def fuse_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["pkg-config", "fuse3", "--modversion"], capture_output=True,
                              text=True, timeout=10, check=True)  # fmt: skip
        return f"libfuse {done.stdout.strip()}"
    return "libfuse ?"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke run")
    parser.add_argument("--repeats", type=int, help="rounds per workload and table (the median "
                        "is kept)")  # fmt: skip
    parser.add_argument("--only", help="comma-separated workloads: "
                        + ",".join(w.key for w in WORKLOADS))  # fmt: skip
    parser.add_argument("--tables", default="unpinned,pinned",
                        help="which tables, in order: unpinned (both daemons with their "
                        "defaults, nothing pinned), pinned (one CPU for the bench, one for "
                        "the daemons)")  # fmt: skip
    parser.add_argument("--chaosfs", help="command that runs chaosfs (default: chaosfs beside "
                        "this python)")  # fmt: skip
    parser.add_argument("--dir", default="/var/tmp", help="where the temporary data goes "
                        "(native and the daemons' backing directories all live here)")  # fmt: skip
    parser.add_argument("--no-passthrough-ll", dest="passthrough_ll", action="store_false",
                        help="leave out libfuse's example passthrough_ll")  # fmt: skip
    return parser.parse_args(argv)


def choose(args: argparse.Namespace) -> tuple[Sizes, list[Workload], list[Table]]:
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = Sizes(sizes.write_mib, sizes.rand_file_mib, sizes.rand_ops, sizes.meta_files,
                      args.repeats, args.repeats)  # fmt: skip
    keys = args.only.split(",") if args.only else [w.key for w in WORKLOADS if w.default]
    unknown = set(keys) - {w.key for w in WORKLOADS}
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}")
    names = [t for t in args.tables.split(",") if t]
    if not names or set(names) - set(TABLES):
        raise SystemExit(f"--tables takes {' and/or '.join(TABLES)}")
    return sizes, [w for w in WORKLOADS if w.key in keys], [TABLES[t] for t in names]


def chaosfs_command(args: argparse.Namespace) -> list[str]:
    if args.chaosfs:
        return shlex.split(args.chaosfs)
    return [local_bin("chaosfs")]


@contextlib.contextmanager
def running(bench: Bench, table: Table) -> Iterator[Bench]:
    """The daemons of one table; the bench itself pinned as the table says, meanwhile."""
    own_cpus, _ = placement_cpus(table.placement)
    mine = os.sched_getaffinity(0)
    try:
        bench.start()
        if own_cpus:
            os.sched_setaffinity(0, own_cpus)  # after spawning: nats-server stays free
        yield bench
    finally:
        os.sched_setaffinity(0, mine)
        bench.stop_all()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not fuse_ok("fs_bench"):
        return 2
    sizes, workloads, tables = choose(args)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="chaosfs-bench-", dir=args.dir))
    print(f"chaosfs bench: kernel {platform.release()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}; data under {root}; {RULE_COUNT} rules like "
          f"'nomatch-N/**' on every method for chaosfs+rules\n")  # fmt: skip
    counter = RequestCounter()
    reports = []
    bench = None
    made = False
    try:
        with exit_on_failure("fs_bench", "mounts and processes"):
            for table in tables:
                _, chaosfs_cpus = placement_cpus(table.placement)
                bench = Bench(root, chaosfs_command(args), table, chaosfs_cpus,
                              want_ll=args.passthrough_ll)  # fmt: skip
                results = Results()
                repeats = sizes.repeats if table is UNPINNED else sizes.pinned_repeats
                with running(bench, table):
                    targets = prepare(bench, sizes, make_data=not made)
                    made = True
                    describe_setup(bench, table)
                    for workload in workloads:
                        run_workload(bench, workload, targets, repeats, sizes, results,
                                     counter if table.costs else None)  # fmt: skip
                reports.append((table, results, repeats, bench.ll_note))
    finally:
        counter.close()
        if bench is not None:
            bench.close()
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    for table, results, repeats, ll_note in reports:
        report(table, results, workloads, repeats, ll_note, counter.note)
    print(notes(sizes))
    load = [x for _, r, _, _ in reports for x in r.other_load]
    redone = sum(sum(r.redone.values()) for _, r, _, _ in reports)
    print(f"\ntotal {time.perf_counter() - started:.0f}s; {load_summary(load, redone)}")
    return 0


def load_summary(other_load: list[float], redone: int) -> str:
    """How quiet the machine was: the bench measures chaosfs, not its neighbours."""
    worst = max(other_load, default=0.0)
    median = statistics.median(other_load) if other_load else 0.0
    text = (f"other processes used {median:.0f}% of a CPU in the median kept round, at most "
            f"{worst:.0f}%; {redone} round(s) run again because the machine was busy")  # fmt: skip
    if worst > BUSY_PERCENT:
        text += "\nwarning: the machine was busy in some kept rounds, so some figures are noisy"
    return text


if __name__ == "__main__":
    sys.exit(main())
