"""What the benches share: their child processes, the machine's load, a fleet of
agents, and the figures of their reports.

The benches that run a stack of their own (nats-server, the injector, agents,
chaosfs...) share these: spawn a child with its stderr in a log file, find a
free port and see when it is listened on, stop children with SIGTERM (SIGKILL
past a timeout), turn SIGTERM to the bench into KeyboardInterrupt so the cleanup
runs, and on a failure show the tail of every child's log. bus_bench and
experiment_bench both start a fleet of mount-less agents (``bench/agents.py``)
over one nats-server: FleetStack, start_agents. Each bench reports how busy the
rest of the machine was while it measured (OthersMeter).

Each bench runs as ``python bench/<name>.py``, so this folder is on sys.path
and ``from benchstack import ...`` finds this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import nats
import nats.errors
from nats.aio.msg import Msg

from chaosbus import codec, desired
from chaosbus.subjects import event_filter, pod_from_event_subject
from chaosctl.cli import build_parser
from chaosctl.client import Session

# One way to find ports, shared with the tests and the demo (tests/ports.py): servers
# that can pick their own do; free_port for those that must be told one.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ports import free_port as free_port  # the benches import it from here
from ports import nats_client_port

BIN = Path(sys.executable).parent  # the venv's: nats-server, chaosfs and the services
BUSY_WARNING = 20.0  # percent of one CPU used by other processes that makes figures noisy

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


# --- child processes -------------------------------------------------------------------


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


def child_setup() -> None:
    """In each child before exec: get SIGTERM if the bench dies without cleaning up,
    and as many open files as allowed (an agent holds a socket, an O_PATH descriptor
    and its loop's self-pipe)."""
    die_with_parent()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pinned(cpus: set[int] | None) -> Callable[[], None]:
    """A ``preexec_fn`` for spawn that runs the child on ``cpus`` (None: anywhere)."""

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)  # before exec: every thread inherits it

    return pin


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


def local_bin(name: str) -> str:
    """The program ``name`` beside this python if it is there, else as PATH finds it."""
    return str(BIN / name) if (BIN / name).exists() else name


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM to ``proc`` if it runs, and SIGKILL if it still does ``timeout`` s later."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


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


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the cleanup


@contextlib.contextmanager
def exit_on_failure(
    bench: str,
    cleaned: str = "processes and temp dir",
    *,
    signals: Sequence[signal.Signals] = (signal.SIGTERM,),
    errors: tuple[type[Exception], ...] = (RuntimeError,),
    name_errors: bool = False,
) -> Iterator[None]:
    """Around a bench's run, which cleans up after itself (``cleaned``): each of
    ``signals`` raises KeyboardInterrupt there, so that the cleanup runs, and the
    bench exits 130; one of ``errors`` makes it exit 1. Either is said in one line
    as ``bench``, an error with its type's name too if ``name_errors``."""
    for sig in signals:
        signal.signal(sig, _terminate)
    try:
        yield
    except KeyboardInterrupt:
        print(f"{bench}: interrupted; {cleaned} cleaned up", file=sys.stderr)
        raise SystemExit(130) from None
    except errors as exc:
        said = f"{type(exc).__name__}: {exc}" if name_errors else str(exc)
        print(f"{bench}: {said}", file=sys.stderr)
        raise SystemExit(1) from None


# --- FUSE mounts (fs_bench, lazy_bench, rules_bench) -----------------------------------------


def fuse_ok(bench: str) -> bool:
    """Root and /dev/fuse, which mounting chaosfs needs; if not, say so as ``bench``."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print(f"{bench}: needs root and /dev/fuse (it mounts chaosfs)", file=sys.stderr)
        return False
    return True


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return any(line.split()[4] == str(path) for line in f)


def unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], check=False)


PLACEMENTS = ("free", "split", "same")


def placement_cpus(placement: str) -> tuple[set[int] | None, set[int] | None]:
    """CPUs for (the bench, chaosfs): left to the scheduler, apart, or shared."""
    cpus = sorted(os.sched_getaffinity(0))
    if placement == "free" or (placement == "split" and len(cpus) < 2):
        return None, None
    if placement == "same":
        return {cpus[0]}, {cpus[0]}
    return {cpus[0]}, {cpus[-1]}


async def nats_request(url: str, subject: str, data: bytes, timeout: float) -> dict[str, Any]:
    """One request, retried until chaosfs has subscribed (it connects in the background)."""
    nc = await nats.connect(url, connect_timeout=2)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = await nc.request(subject, data, timeout=5)
                return codec.decode(msg.data, limit=1 << 24)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


# --- the machine -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            after_name = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU time all CPUs spent neither idle nor waiting for I/O, since boot."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class OthersMeter:
    """How busy the machine was with processes other than the bench and its stack
    (``pids``), from its creation on."""

    pids: list[int]
    started: float = field(default_factory=time.monotonic)
    busy: float = field(default_factory=busy_seconds)
    ours: float = 0.0

    def __post_init__(self) -> None:
        self.ours = self._ours()

    def _ours(self) -> float:
        own = os.times()
        return own.user + own.system + sum(cpu_seconds(pid) for pid in self.pids)

    def percent(self) -> float:
        """Their average CPU use so far, in percent of one CPU."""
        elapsed = time.monotonic() - self.started
        others = (busy_seconds() - self.busy) - (self._ours() - self.ours)
        return max(0.0, 100 * others / elapsed)


def busy_note(others_percent: float) -> str:
    """What to add to a report's figure of the other processes' CPU use."""
    noisy = others_percent > BUSY_WARNING
    return " (the machine was busy: expect noisy figures)" if noisy else ""


# --- a fleet of agents (bus_bench, experiment_bench) ----------------------------------------

NAMESPACE = "bench"  # the fleet's
AGENTS = Path(__file__).resolve().with_name("agents.py")  # the fleet's harness
AGENTS_PER_PROCESS = 250  # the default split
WATCHES_PER_AGENT = 2  # desired state: the fleet's entries and the pod's own
COMMAND_TIMEOUT = 10.0  # chaosctl's --timeout, for every command of the bench
FLEET_STOP_TIMEOUT = 20.0


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal counts."""
    return [total // parts + (i < total % parts) for i in range(parts)]


@dataclass(frozen=True)
class Batch:
    """One agents process: its name in the stack, how many agents, their name prefix."""

    name: str
    count: int
    prefix: str


@dataclass
class FleetStack:
    """A nats-server (JetStream in ``root``) and agents processes (bench/agents.py), each
    logging into ``root``; more children may join ``procs``."""

    root: Path
    bench: str  # the bench's name, to speak as
    port: int = 0  # nats-server picks it (tests/ports.py)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    agents: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # name: (ns, pods)
    nats_version: str = ""
    agent_args: list[str] = field(default_factory=list)  # more flags for bench/agents.py

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    @property
    def fleet_pids(self) -> list[int]:
        return [self.procs[name].pid for name, (ns, _) in self.agents.items() if ns == NAMESPACE]

    def start_nats(self) -> None:
        conf = self.root / "nats.conf"
        conf.write_text(
            'listen: "127.0.0.1:-1"\n'
            f'ports_file_dir: "{self.root}"\n'
            f'jetstream {{ store_dir: "{self.root / "js"}", '
            "limits { default_max_consumers: -1 } }\n"
        )
        server = str(BIN / "nats-server")
        version = subprocess.run([server, "--version"], capture_output=True, text=True)
        self.nats_version = version.stdout.strip().rpartition(" ")[2]
        self.procs["nats"] = spawn([server, "-c", str(conf)], self.log("nats"), child_setup)
        self.port = nats_client_port(self.root, self.procs["nats"])
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for nats-server to listen")
            time.sleep(0.02)

    def start_agents(self, batch: Batch, namespace: str) -> None:
        """Spawn one agents process (bench/agents.py)."""
        cmd = [
            sys.executable,
            str(AGENTS),
            *("--nats", self.url),
            *("--count", str(batch.count)),
            *("--namespace", namespace),
            *("--prefix", batch.prefix),
            *self.agent_args,
        ]
        self.procs[batch.name] = spawn(cmd, self.log(batch.name), child_setup)
        self.agents[batch.name] = (namespace, [f"{batch.prefix}{i}" for i in range(batch.count)])

    @property
    def fleet(self) -> list[str]:
        """The fleet's pod names, all in NAMESPACE."""
        return [pod for ns, pods in self.agents.values() if ns == NAMESPACE for pod in pods]

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log(name)}")

    def close(self) -> None:
        """Every client at once (each agent says goodbye), then the server."""
        clients = {n: p for n, p in self.procs.items() if n != "nats"}
        stop_all(clients, FLEET_STOP_TIMEOUT, self.bench)
        server = {n: p for n, p in self.procs.items() if n == "nats"}
        stop_all(server, FLEET_STOP_TIMEOUT, self.bench)


@contextlib.contextmanager
def running_fleet(bench: str, keep: bool) -> Iterator[FleetStack]:
    """Around a fleet bench's run: a FleetStack in a temp dir of its own, its
    nats-server started (no agents yet); cleaned up after (see stack_cleanup), its
    temp dir kept if ``keep``. An interrupt (SIGINT or SIGTERM), or an error of the
    bench's, the bus's or the system's, then ends the bench (see exit_on_failure)."""
    # Ctrl-C too: asyncio's own handler only cancels the task, which may swallow it.
    with exit_on_failure(
        bench,
        signals=(signal.SIGINT, signal.SIGTERM),
        errors=(RuntimeError, OSError, nats.errors.Error),
        name_errors=True,
    ):
        stack = FleetStack(Path(tempfile.mkdtemp(prefix=f"{bench.replace('_', '-')}-")), bench)
        with stack_cleanup(stack, keep, bench):
            stack.start_nats()
            yield stack


@functools.cache
def _parser() -> argparse.ArgumentParser:
    return build_parser()


def ctl(*argv: str) -> argparse.Namespace:
    """A chaosctl command line, parsed by chaosctl, as its handler receives it."""
    return _parser().parse_args(list(argv))


def since(t0: float) -> float:
    """Milliseconds since ``t0``, a time.perf_counter()."""
    return (time.perf_counter() - t0) * 1000


async def until(
    stack: FleetStack,
    done: Callable[[], Awaitable[bool]],
    what: str,
    timeout: float,
    pause: float,
) -> None:
    deadline = time.monotonic() + timeout
    while not await done():
        stack.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(pause)


@dataclass
class Startup:
    agents: int
    ready_s: float  # from the first spawn to the last ready event
    registered_s: float  # to every agent alive in the registry
    watching_s: float  # to every agent watching its desired state
    batch_s: list[float] = field(default_factory=list)  # each process, spawn to watching
    rss_mib: float = 0.0  # the fleet's processes
    threads: int = 0
    agents_cpu: float = 0.0  # percent of one CPU, idle
    nats_cpu: float = 0.0


async def start_agents(
    stack: FleetStack, s: Session, namespace: str, batches: list[Batch]
) -> Startup:
    """Spawn the agents one process at a time, each once the previous one's agents are
    all ready, registered and watching their desired state; time it all.

    Not all at once: a start-up storm of a thousand sidecars on a small machine makes
    JetStream slow to answer, and a sidecar that cannot open the registry within its
    first seconds never registers (see the error below).
    """
    seen: set[str] = set()

    async def on_ready(msg: Msg) -> None:
        seen.add(pod_from_event_subject(msg.subject)[1])

    sub = await s.nc.subscribe(event_filter("ready", namespace), cb=on_ready)
    await s.nc.flush()
    js = s.nc.jetstream()
    watches = f"KV_{desired.BUCKET}"
    before = (await js.stream_info(watches)).state.consumer_count
    want = 0

    async def all_ready() -> bool:
        return len(seen) >= want

    async def registered() -> int:
        alive, _lost = await s.expected({"namespaces": [namespace]})
        return len(alive)

    async def all_registered() -> bool:
        return await registered() >= want

    async def all_watching() -> bool:
        info = await js.stream_info(watches)
        return info.state.consumer_count - before >= WATCHES_PER_AGENT * want

    t0 = time.perf_counter()
    out = Startup(0, 0.0, 0.0, 0.0)
    for batch in batches:
        t1 = time.perf_counter()
        stack.start_agents(batch, namespace)
        want += batch.count
        timeout = 60 + batch.count * 0.2
        await until(stack, all_ready, f"{want} ready events", timeout, 0.02)
        out.ready_s = since(t0) / 1000
        try:
            await until(stack, all_registered, f"{want} agents in the registry", timeout, 0.2)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{exc}: {await registered()} there, {len(seen)} announced ready. A sidecar "
                "that cannot open the registry within 3 s of connecting never registers "
                "(chaosfs control.py, _prepare_jetstream): was the machine overloaded?"
            ) from None
        out.registered_s = since(t0) / 1000
        await until(stack, all_watching, f"{want} agents watching desired state", timeout, 0.1)
        out.watching_s = since(t0) / 1000
        out.batch_s.append(since(t1) / 1000)
    await sub.unsubscribe()
    out.agents = want
    return out


# --- the reports -------------------------------------------------------------------------


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile, interpolated between closest ranks (p99 of 1,000 is near the max)."""
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def fmt_ms(value: float) -> str:
    """A figure in milliseconds: 2, 1 or no decimals as it grows; "-" for NaN."""
    if math.isnan(value):
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def fmt_rate(value: float | None) -> str:
    """A throughput figure, with thousands separators; "-" for none."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def ratio(value: float, base: float) -> str:
    return "-" if math.isnan(value) or math.isnan(base) or base <= 0 else f"{value / base:.1f}x"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_table(rows: list[tuple[str, ...]]) -> None:
    """A header row, a rule under it, then the rows; the first two columns to the left,
    the others to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row)]
        print(" | ".join(cells))
        if index == 0:
            print("-+-".join("-" * w for w in widths))
