"""The programs the crash-test tests hand to ``chaosctl crash-test``; no tests here.

Run as ``python test_crash_test_apps.py MODE ...``:

- ``sqlite-load DB --synchronous FULL|OFF [--fresh] [--tag T]``: SQLite in WAL mode,
  one row per transaction, prints ``T:N`` once transaction N's COMMIT returned.
- ``sqlite-check GLOB``: prints every row of every database the glob names; exits 1
  (saying why on stderr) if SQLite finds a database corrupt, a row's payload does
  not match its checksum, or a tag's rows have a hole (N missing, N+1 there).
- ``redis-start DIR PORT POLICY LOG``: starts Debian's redis-server on DIR with the
  append-only file and ``appendfsync POLICY``, returns once it answers PING; exits 1
  with its log's tail if it dies first (it could not load what survived).
- ``redis-load PORT [--tag T]``: RPUSH of ``T:N`` to the list ``records``, prints each
  once Redis acknowledged it; ends when the server goes away.
- ``redis-check PORT``: prints the list; exits 1 on duplicates or holes.

The tag defaults to $CRASH_TEST_CUT, so every cut's records are its own.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from typing import Any

REDIS_WAIT = 20.0  # seconds redis-server may take to load what survived


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def payload(tag: str, n: int) -> bytes:
    """A row's content, from its name alone: a few hundred bytes to a few KiB."""
    seed = hashlib.sha256(f"{tag}:{n}".encode()).digest()
    return seed * (8 + n % 100)


def tag_of(args: argparse.Namespace) -> str:
    return args.tag or os.environ.get("CRASH_TEST_CUT", "0")


def holes(records: list[str]) -> list[str]:
    """Records of a tag missing below one that is there: an ordered log never does that."""
    highest: dict[str, int] = {}
    seen: dict[str, set[int]] = {}
    for record in records:
        tag, _, n = record.rpartition(":")
        seen.setdefault(tag, set()).add(int(n))
        highest[tag] = max(highest.get(tag, 0), int(n))
    return [f"{t}:{n}" for t, top in highest.items() for n in range(1, top) if n not in seen[t]]


# --- SQLite --------------------------------------------------------------------------------


def sqlite_load(args: argparse.Namespace) -> int:
    if args.fresh:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(args.db + suffix):
                os.unlink(args.db + suffix)
    tag = tag_of(args)
    db = sqlite3.connect(args.db, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={args.synchronous}")
    db.execute("CREATE TABLE IF NOT EXISTS t (tag TEXT, n INTEGER, payload BLOB, sum TEXT,"
               " PRIMARY KEY (tag, n))")  # fmt: skip
    n = db.execute("SELECT coalesce(max(n), 0) FROM t WHERE tag = ?", (tag,)).fetchone()[0]
    while args.count is None or n < args.count:
        n += 1
        data = payload(tag, n)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?, ?, ?)",
                   (tag, n, data, hashlib.sha256(data).hexdigest()))  # fmt: skip
        db.execute("COMMIT")
        say(f"{tag}:{n}")
    return 0


def sqlite_check(args: argparse.Namespace) -> int:
    problems: list[str] = []
    records: list[str] = []
    for path in sorted(glob.glob(args.glob)):
        db = sqlite3.connect(path, isolation_level=None)
        try:
            verdict = [row[0] for row in db.execute("PRAGMA integrity_check")]
            if verdict != ["ok"]:
                problems.append(f"{path}: integrity_check: {'; '.join(verdict)[:300]}")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if "t" not in tables:
                continue  # created, never durable: everything in it was lost, nothing is wrong
            for tag, n, data, digest in db.execute("SELECT tag, n, payload, sum FROM t"):
                records.append(f"{tag}:{n}")
                if data != payload(tag, n) or hashlib.sha256(data).hexdigest() != digest:
                    problems.append(f"{path}: row {tag}:{n} does not hold what was written")
        except sqlite3.DatabaseError as exc:
            problems.append(f"{path}: {exc}")
        finally:
            db.close()
    for record in records:
        say(record)
    problems += [f"hole: {r} is missing below a later record" for r in holes(records)[:10]]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


# --- Redis ------------------------------------------------------------------------------------


class Redis:
    """Just enough of the Redis protocol for RPUSH, LRANGE and PING."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def call(self, *words: str) -> Any:
        out = [b"*%d\r\n" % len(words)]
        for word in words:
            data = word.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self) -> Any:
        line = self.file.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise RuntimeError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            return None if size < 0 else self.file.read(size + 2)[:-2].decode()
        if kind == b"*":
            return [self._reply() for _ in range(int(body))]
        raise RuntimeError(f"unexpected reply {line!r}")


def redis_start(args: argparse.Namespace) -> int:
    os.makedirs(args.dir, exist_ok=True)
    cmd = ["redis-server", "--port", str(args.port), "--bind", "127.0.0.1", "--dir", args.dir,
           "--appendonly", "yes", "--appendfsync", args.policy, "--save", "",
           "--protected-mode", "no", "--logfile", args.log]  # fmt: skip
    # Its own session: a daemon of the test, not of this short-lived starter.
    server = subprocess.Popen(cmd, cwd=args.dir, start_new_session=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + REDIS_WAIT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            if Redis(args.port, timeout=1.0).call("PING") == "PONG":
                return 0
        except (OSError, RuntimeError):
            pass  # still loading, or not listening yet
        time.sleep(0.05)
    server.kill()
    with open(args.log, errors="replace") as f:
        tail = f.read().splitlines()[-5:]
    print("redis-server did not come up: " + " | ".join(tail), file=sys.stderr)
    return 1


def redis_load(args: argparse.Namespace) -> int:
    tag = tag_of(args)
    try:
        client = Redis(args.port)
        n = 0
        while args.count is None or n < args.count:
            n += 1
            client.call("RPUSH", "records", f"{tag}:{n}")
            say(f"{tag}:{n}")
    except (OSError, ConnectionError) as exc:
        print(f"redis went away: {exc}", file=sys.stderr)
        return 1
    return 0


def redis_check(args: argparse.Namespace) -> int:
    records = Redis(args.port).call("LRANGE", "records", "0", "-1")
    for record in records:
        say(record)
    problems = [f"duplicate: {r}" for r in sorted({r for r in records if records.count(r) > 1})]
    problems += [f"hole: {r} is missing below a later record" for r in holes(records)[:10]]
    for problem in problems[:20]:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    load = modes.add_parser("sqlite-load")
    load.add_argument("db")
    load.add_argument("--synchronous", default="FULL", choices=["OFF", "NORMAL", "FULL"])
    load.add_argument("--fresh", action="store_true", help="start from no database")
    check = modes.add_parser("sqlite-check")
    check.add_argument("glob")
    start = modes.add_parser("redis-start")
    for name in ("dir", "port", "policy", "log"):
        start.add_argument(name, type=int if name == "port" else str)
    rload = modes.add_parser("redis-load")
    rcheck = modes.add_parser("redis-check")
    for mode in (rload, rcheck):
        mode.add_argument("port", type=int)
    for mode in (load, rload):
        mode.add_argument("--tag", help="records are TAG:N (default $CRASH_TEST_CUT)")
        mode.add_argument("--count", type=int, help="stop after so many records")
    args = parser.parse_args(argv)
    run = {"sqlite-load": sqlite_load, "sqlite-check": sqlite_check, "redis-start": redis_start,
           "redis-load": redis_load, "redis-check": redis_check}  # fmt: skip
    return run[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
