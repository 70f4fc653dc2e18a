"""A transaction load on LMDB, for the lazy-mode power-cut tests.

``python lazy_lmdb_load.py ENV [--writemap]``: opens (creating) the LMDB
environment directory ENV with ``sync=True`` (a commit returns once durable:
fdatasync of the data file and an O_DSYNC write of the meta page, or with
``--writemap`` msync of the map), fsyncs ENV's directory and its parent once,
as an application must do for its new files (LMDB never syncs a directory),
then commits one write transaction after another, each putting a record
(counter, payload, sha256 of both) and updating a running total, and prints
the counter (flushed) once its commit has returned: a printed counter is one
the application was told is durable. Runs until killed, or for ``--count``
transactions; ``--pause-after N`` stops committing after counter N, prints
``paused`` and waits, environment open, to be killed. ``--check`` verifies an
environment and prints what it holds as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys

import lmdb

MAP_SIZE = 64 << 20
RECORDS = b"records"
TOTAL = b"total"


def payload(counter: int) -> bytes:
    """A record's payload: a few hundred to a few thousand bytes, from the counter alone."""
    size = 200 + (counter * 997) % 3000
    seed = hashlib.sha256(b"%d" % counter).digest()
    return (seed * (size // len(seed) + 1))[:size]


def checksum(counter: int, data: bytes) -> bytes:
    return hashlib.sha256(b"%d:" % counter + data).digest()


def key(counter: int) -> bytes:
    return counter.to_bytes(8, "big")  # sorts as the counters do


def open_env(path: str, writemap: bool = False) -> tuple[lmdb.Environment, object, object]:
    env = lmdb.open(path, map_size=MAP_SIZE, max_dbs=2, writemap=writemap, sync=True,
                    metasync=True)  # fmt: skip
    return env, env.open_db(RECORDS), env.open_db(TOTAL)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def load(args: argparse.Namespace) -> int:
    env, records, total = open_env(args.env, args.writemap)
    fsync_dir(args.env)
    fsync_dir(os.path.dirname(os.path.abspath(args.env)))
    say(json.dumps({"ready": {"writemap": args.writemap, "version": lmdb.version()}}))
    with env.begin(db=records) as txn, txn.cursor() as cursor:
        counter = int.from_bytes(cursor.key(), "big") if cursor.last() else 0
    while args.count is None or counter < args.count:
        if counter == args.pause_after:
            say("paused")
            signal.pause()
        counter += 1
        data = payload(counter)
        with env.begin(write=True) as txn:
            txn.put(key(counter), checksum(counter, data) + data, db=records)
            n, added = json.loads(txn.get(TOTAL, b"[0, 0]", db=total))
            txn.put(TOTAL, json.dumps([n + 1, added + counter]).encode(), db=total)
        say(f"{counter}")  # the with block committed: LMDB said it is durable
    env.close()
    return 0


def check(path: str) -> dict[str, object]:
    """What a restarted application finds: the records, and whether they agree."""
    env, records, total = open_env(path)
    try:
        counters, bad = [], []
        with env.begin() as txn:
            for raw, value in txn.cursor(db=records):
                counter = int.from_bytes(raw, "big")
                counters.append(counter)
                digest, data = value[:32], value[32:]
                if data != payload(counter) or digest != checksum(counter, data):
                    bad.append(counter)
            n, added = json.loads(txn.get(TOTAL, b"[0, 0]", db=total))
            entries = txn.stat(records)["entries"]
        last_txnid = env.info()["last_txnid"]
    finally:
        env.close()
    return {"counters": counters, "bad": bad, "n": n, "sum": added, "entries": entries,
            "last_txnid": last_txnid}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("env")
    parser.add_argument("--writemap", action="store_true", help="write through a shared mmap")
    parser.add_argument("--count", type=int, help="stop after so many transactions")
    parser.add_argument("--pause-after", type=int, help="stop committing after this counter")
    parser.add_argument("--check", action="store_true", help="verify the environment, print JSON")
    args = parser.parse_args(argv)
    if args.check:
        print(json.dumps(check(args.env)))
        return 0
    return load(args)


if __name__ == "__main__":
    sys.exit(main())
