"""`make demo`: chaosbus end to end on this machine, narrated.

Starts a nats-server, one chaosfs sidecar over a temporary data directory, and a
small "app" that reads and writes through the mount; then injects faults with
chaosctl, shows what the app sees, recovers, and cleans everything up, also on
Ctrl-C or failure. Exits non-zero if any step did not behave.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
POD = "demo/tikv-0"
failures: list[str] = []


def say(step: str) -> None:
    print(f"\n\033[1m==> {step}\033[0m", flush=True)


def check(ok: bool, what: str) -> None:
    print(f"    [{'ok' if ok else 'FAILED'}] {what}", flush=True)
    if not ok:
        failures.append(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def chaosctl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "chaosctl"), "--nats", url, *args]
    print("    $ chaosctl " + " ".join(args), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    for line in (done.stdout + done.stderr).strip().splitlines():
        print(f"      {line}")
    return done


def app_read(path: Path) -> str:
    """The 'application': read its data file, report what happened."""
    try:
        return f"read {len(path.read_bytes())} bytes"
    except OSError as exc:
        return f"error: {errno.errorcode.get(exc.errno, exc.errno)} ({exc.strerror})"


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="chaosbus-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    mountpoint = work / "tikv" / "data"
    try:
        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        say(f"Starting nats-server on {url}")
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "nats-server"),
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-js",
                    "-sd",
                    str(work / "js"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(lambda: _listening(port), 10, "nats-server")
        check(True, "nats-server is listening")

        say(f"Starting the chaosfs sidecar for pod {POD} (seed-style flags)")
        original = work / "tikv" / "fuse-data"
        original.mkdir(parents=True)
        (original / "000001.sst").write_bytes(os.urandom(64 * 1024))
        pidfile = work / "fuse" / "pid"
        cmd = [
            str(BIN / "chaosfs"),
            f"-original={original}",
            f"-mountpoint={mountpoint}",
            f"-pidfile={pidfile}",
            f"-pod={POD}",
            f"-nats={url}",
        ]
        print("    $ " + " ".join(cmd[0:1]) + " " + " ".join(cmd[1:]))
        procs.append(subprocess.Popen(cmd, stderr=open(work / "chaosfs.log", "wb")))  # noqa: SIM115
        wait_for(pidfile.exists, 15, "the chaosfs pidfile")
        check(True, f"mounted {original} on {mountpoint}; pidfile {pidfile} written")
        data = mountpoint / "000001.sst"
        result = app_read(data)
        check(result == "read 65536 bytes", f"app: {result}")

        say("Injecting EIO into every read of *.sst files")
        done = chaosctl(
            url,
            "fault",
            "set",
            "--pod",
            POD,
            "--action",
            "errno",
            "--errno",
            "EIO",
            "--methods",
            "read",
            "--path",
            "**/*.sst",
            "--id",
            "sick-disk",
        )
        check(done.returncode == 0, "the sidecar acknowledged the rule")
        result = app_read(data)
        check(result.startswith("error: EIO"), f"app: {result}")

        say("Adding 200ms of latency to writes")
        done = chaosctl(
            url,
            "fault",
            "set",
            "--pod",
            POD,
            "--action",
            "latency",
            "--delay",
            "200ms",
            "--methods",
            "write",
            "--id",
            "slow-writes",
        )
        started = time.monotonic()
        with open(mountpoint / "wal.log", "ab", buffering=0) as f:
            f.write(b"commit 1\n")
        took = time.monotonic() - started
        check(done.returncode == 0 and took >= 0.2, f"app: a WAL append took {took * 1000:.0f} ms")

        say("What the sidecar did")
        done = chaosctl(url, "status", "--pod", POD)
        check(done.returncode == 0 and "fired 1" in done.stdout, "status counts the faults")

        say("Recovering every fault")
        done = chaosctl(url, "fault", "recover", "--pod", POD, "--all")
        check(done.returncode == 0, "the sidecar acknowledged the recovery")
        result = app_read(data)
        check(result == "read 65536 bytes", f"app: {result}")

        say("Asking a pod that has no sidecar")
        done = chaosctl(url, "status", "--pod", "demo/nobody")
        check(done.returncode == 3, "chaosctl says nobody answers, exit code 3")
    except KeyboardInterrupt:
        failures.append("interrupted")
    except Exception as exc:
        failures.append(str(exc))
        print(f"    [FAILED] {exc}")
    finally:
        say("Cleaning up")
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            if proc.poll() is None:
                proc.kill()
        if os.path.ismount(mountpoint):
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        shutil.rmtree(work, ignore_errors=True)
        print("    stopped every process, unmounted, removed", work)
    print()
    if failures:
        print(f"demo FAILED: {len(failures)} step(s) misbehaved: " + "; ".join(failures))
        return 1
    print(
        "demo passed: the sidecar mounted, injected EIO and latency on command, "
        "counted what it did, and recovered."
    )
    return 0


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
        return True
    return False


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
