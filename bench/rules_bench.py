"""What an active rule that matches nothing costs, per action.

Every FUSE request consults the fault engine; a rule whose path glob matches no
file must cost (next to) nothing. One chaosfs, one nats-server; for each action a
rule of that kind on every method it may apply to, with a path that matches no
file, is set, measured, and recovered; "no rules" is measured in between, and the
best of several interleaved rounds is kept. Each figure is printed beside the
no-rule baseline of the same run, as a ratio.

Workloads: O_DIRECT 4 KiB reads (every read is a FUSE request) and
create+stat+unlink of small files (lookup, create, getattr, flush, release, unlink).
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from benchstack import BIN, cpu_seconds, free_port, port_open, stop, unmount

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "libs"))
from chaosbus import codec
from chaosbus.subjects import pod_command

POD = ("bench", "rules-0")
ACTIONS: dict[str, dict[str, Any]] = {
    "errno": {"action": "errno", "errno": "EIO"},
    "latency": {"action": "latency", "delay": 0.1},
    "mixed": {"action": "mixed", "errno": "EIO", "delay": 0.1},
    "attr": {"action": "attr", "attr": {"size": 1}},
    "mistake": {"action": "mistake", "max_length": 8},
    "short": {"action": "short"},
    "enospc": {"action": "enospc", "quota": 0},
    "errno+caller+ttl": {
        "action": "errno",
        "errno": "EIO",
        "caller_comm": "nobody",
        "ttl": 3600,
        "percent": 50,
        "seed": 1,
    },
}


def request(url: str, command: dict[str, Any]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        nc = await nats.connect(url)
        try:
            msg = await nc.request(pod_command(*POD), codec.encode(command), timeout=10)
            return codec.decode(msg.data, limit=1 << 24)
        finally:
            await nc.close()

    reply = asyncio.run(go())
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error"))
    return reply


def direct_reads(path: Path, seconds: float) -> float:
    buf = mmap.mmap(-1, 4096)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    n = 0
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for _ in range(100):
                os.preadv(fd, [buf], (n % 256) * 4096)
                n += 1
        return n / seconds
    finally:
        os.close(fd)


def metadata(folder: Path, seconds: float) -> float:
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for i in range(50):
            p = folder / f"f{n + i}"
            fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
            os.close(fd)
            os.stat(p)
            os.unlink(p)
        n += 50
    return n / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds: a smoke run")
    args = parser.parse_args()
    seconds, rounds = (0.3, 1) if args.quick else (1.5, 3)
    work = Path(tempfile.mkdtemp(prefix="chaosfs-rules-bench-", dir="/var/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    mountpoint = work / "mnt"
    try:
        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        procs.append(
            subprocess.Popen(
                [str(BIN / "nats-server"), "-a", "127.0.0.1", "-p", str(port)],
                stderr=subprocess.DEVNULL,
            )
        )
        (work / "orig").mkdir()
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "chaosfs"),
                    "-original",
                    str(work / "orig"),
                    "-mountpoint",
                    str(mountpoint),
                    "-pidfile",
                    str(work / "pid"),
                    "-pod",
                    "/".join(POD),
                    "-nats",
                    url,
                ],
                stderr=open(work / "chaosfs.log", "wb"),  # noqa: SIM115
            )
        )
        deadline = time.monotonic() + 20
        while not port_open(port):
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.05)
        while True:
            try:
                request(url, {"op": "ping"})
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        data = mountpoint / "data.bin"
        data.write_bytes(os.urandom(1 << 20))
        meta_dir = mountpoint / "meta"
        meta_dir.mkdir()

        chaosfs_pid = procs[-1].pid

        def measure(work: Callable[[], float]) -> float:
            """chaosfs's own CPU time per operation, in microseconds: unlike
            throughput, it hardly moves when other processes share the machine."""
            cpu = cpu_seconds(chaosfs_pid)
            rate = work()
            return (cpu_seconds(chaosfs_pid) - cpu) / (rate * seconds) * 1e6

        best: dict[str, list[float]] = {name: [1e9, 1e9] for name in ("no rules", *ACTIONS)}
        for _ in range(rounds):
            for name, spec in [("no rules", None), *ACTIONS.items()]:
                if spec is not None:
                    rule = {"id": "r", "path": "nomatch/**", **spec}
                    request(url, {"op": "set", "rules": [rule]})
                reads = measure(lambda: direct_reads(data, seconds))
                files = measure(lambda: metadata(meta_dir, seconds))
                best[name] = [min(best[name][0], reads), min(best[name][1], files)]
                if spec is not None:
                    request(url, {"op": "recover", "all": True})
        base_reads, base_files = best["no rules"]
        print(
            "cost of one active rule that matches nothing, per action: chaosfs CPU time per "
            f"operation (best of {rounds} interleaved rounds of {seconds:g}s)\n"
        )
        print(
            f"{'rule':<18} | {'O_DIRECT 4K read':>17} | {'ratio':>6} | "
            f"{'create+stat+unlink':>19} | {'ratio':>6} | goal"
        )
        print(
            "-" * 19 + "+" + "-" * 19 + "+" + "-" * 8 + "+" + "-" * 21 + "+" + "-" * 8 + "+------"
        )
        worst = 1.0
        for name, (reads, files) in best.items():
            r1, r2 = reads / base_reads, files / base_files
            if name != "no rules":
                worst = max(worst, r1, r2)
            verdict = "" if name == "no rules" else ("ok" if max(r1, r2) <= 1.05 else "HIGH")
            print(
                f"{name:<18} | {reads:>14,.1f} us | {r1:>5.2f}x | {files:>16,.1f} us | {r2:>5.2f}x"
                f" | {verdict}"
            )
        print(f"\nworst cost ratio to no rules: {worst:.2f}x (goal: within 5%, <= 1.05x)")
        return 0
    finally:
        for proc in reversed(procs):
            stop(proc, 10.0)
        unmount(mountpoint)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
