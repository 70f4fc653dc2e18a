"""A transaction load on SQLite, for the lazy-mode power-cut tests.

``python lazy_sqlite_load.py DB --journal delete|wal [--synchronous FULL]``:
sets the journal mode, then commits one transaction after another, each
inserting a row (counter, payload, sha256 of the payload) and updating a
one-row running total, and prints the counter (flushed) once its commit has
returned: a printed counter is one the application was told is durable.
Runs until killed, or for ``--count`` transactions. ``check`` verifies a database.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys


def payload(counter: int) -> bytes:
    """A row's payload: a few hundred to a few thousand bytes, from the counter alone."""
    size = 200 + (counter * 997) % 3000
    seed = hashlib.sha256(b"%d" % counter).digest()
    return (seed * (size // len(seed) + 1))[:size]


def checksum(counter: int, data: bytes) -> str:
    return hashlib.sha256(b"%d:" % counter + data).hexdigest()


def load(args: argparse.Namespace) -> int:
    db = sqlite3.connect(args.db, isolation_level=None, timeout=30)
    mode = db.execute(f"PRAGMA journal_mode={args.journal}").fetchone()[0]
    if mode.lower() != args.journal.lower():
        raise SystemExit(f"journal_mode {args.journal} refused: {mode}")
    db.execute(f"PRAGMA synchronous={args.synchronous}")
    db.execute(
        "CREATE TABLE IF NOT EXISTS t (counter INTEGER PRIMARY KEY, payload BLOB NOT NULL,"
        " checksum TEXT NOT NULL)"
    )
    db.execute("CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY, n INTEGER, sum INTEGER)")
    db.execute("INSERT OR IGNORE INTO total VALUES (1, 0, 0)")
    sys.stdout.write(json.dumps({"ready": mode}) + "\n")
    sys.stdout.flush()
    counter = db.execute("SELECT coalesce(max(counter), 0) FROM t").fetchone()[0]
    while args.count is None or counter < args.count:
        counter += 1
        data = payload(counter)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?, ?)", (counter, data, checksum(counter, data)))
        db.execute("UPDATE total SET n = n + 1, sum = sum + ? WHERE id = 1", (counter,))
        db.execute("COMMIT")
        sys.stdout.write(f"{counter}\n")
        sys.stdout.flush()
    db.close()
    return 0


def check(path: str) -> dict[str, object]:
    """What a restarted application finds: integrity, rows, and whether they agree."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        integrity = [row[0] for row in db.execute("PRAGMA integrity_check")]
        counters = []
        bad = []
        for counter, data, digest in db.execute("SELECT counter, payload, checksum FROM t"):
            counters.append(counter)
            if data != payload(counter) or digest != checksum(counter, data):
                bad.append(counter)
        n, total = db.execute("SELECT n, sum FROM total WHERE id = 1").fetchone()
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        db.close()
    return {
        "integrity": integrity,
        "counters": counters,
        "bad": bad,
        "n": n,
        "sum": total,
        "journal_mode": mode,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("db")
    parser.add_argument("--journal", default="delete", choices=["delete", "wal"])
    parser.add_argument("--synchronous", default="FULL", choices=["NORMAL", "FULL", "EXTRA"])
    parser.add_argument("--count", type=int, help="stop after so many transactions")
    parser.add_argument("--check", action="store_true", help="verify the database, print JSON")
    args = parser.parse_args(argv)
    if args.check:
        print(json.dumps(check(args.db)))
        return 0
    return load(args)


if __name__ == "__main__":
    sys.exit(main())
