"""A program that writes the way a database log does, for the lazy-mode tests.

``records DIR``: writes numbered fixed-size records to ``DIR/NAME`` (content a
function of the record number only, see ``record``), fsyncs after some of
them, and prints one JSON line (flushed) each time records became durable:
``{"durable": N}`` means records 0..N-1 are on disk as far as this program
knows. Then ``{"written": W, "durable": N, "size": S}``, and it waits, file
still open, to be killed (power-cut), unless ``--exit``.

``meta DIR``: directory entries, made durable or not by fsync of their directory:
``DIR/SUB`` made and its entry synced; ``durable-I`` files created (content
fsynced) and the directory fsynced; ``victim`` likewise, then unlinked with no
directory fsync after; ``volatile-I`` files created with their content fsynced
but not their directory. Prints ``{"durable": [...], "volatile": [...],
"unlinked": [...]}`` (names relative to DIR) and waits, unless ``--exit``.

Run by the tests as a subprocess: ``python lazy_records.py records DIR --records 20
--size 1000 --sync-at 5`` or ``--sync-every 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys


def record(number: int, size: int) -> bytes:
    """Record ``number``'s bytes: a readable header, then bytes seeded by the number."""
    head = b"rec %08d|" % number
    if size <= len(head):
        return head[:size]
    return head + random.Random(number).randbytes(size - len(head))


def content(name: str) -> bytes:
    """What the meta mode writes into the file ``name``."""
    return f"content of {name}\n".encode() * 3


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run_records(args: argparse.Namespace) -> int | None:
    sync_at = {int(x) for x in args.sync_at.split(",") if x.strip()} if args.sync_at else set()
    path = os.path.join(args.dir, args.name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    durable = 0
    for number in range(args.records):
        write_all(fd, record(number, args.size))
        if number in sync_at or (args.sync_every and (number + 1) % args.sync_every == 0):
            if args.datasync:
                os.fdatasync(fd)
            else:
                os.fsync(fd)
            durable = number + 1
            say(durable=durable)
    say(written=args.records, durable=durable, size=args.size)
    return fd


def write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def run_meta(args: argparse.Namespace) -> int | None:
    sub = os.path.join(args.dir, args.subdir)
    os.mkdir(sub)
    fsync_dir(args.dir)  # the subdirectory's own entry is durable
    durable = [f"{args.subdir}/durable-{i}" for i in range(args.durable)]
    volatile = [f"{args.subdir}/volatile-{i}" for i in range(args.volatile)]
    victim = f"{args.subdir}/victim"
    for name in [*durable, victim]:
        write_file(os.path.join(args.dir, name), content(name))
    fsync_dir(sub)  # their entries are durable now
    os.unlink(os.path.join(args.dir, victim))  # and this removal is not
    for name in volatile:
        write_file(os.path.join(args.dir, name), content(name))  # data synced, entry not
    say(durable=durable, volatile=volatile, unlinked=[victim])
    return os.open(sub, os.O_RDONLY | os.O_DIRECTORY)  # hold something open under the mount


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    rec = modes.add_parser("records")
    rec.add_argument("dir")
    rec.add_argument("--name", default="records.bin")
    rec.add_argument("--records", type=int, default=20)
    rec.add_argument("--size", type=int, default=1000)
    rec.add_argument("--sync-at", default="", help="record numbers after which to fsync: 3,7")
    rec.add_argument("--sync-every", type=int, default=0, help="fsync after every Kth record")
    rec.add_argument("--datasync", action="store_true", help="fdatasync instead of fsync")
    meta = modes.add_parser("meta")
    meta.add_argument("dir")
    meta.add_argument("--subdir", default="sub")
    meta.add_argument("--durable", type=int, default=3)
    meta.add_argument("--volatile", type=int, default=3)
    for mode in (rec, meta):
        mode.add_argument("--exit", action="store_true", help="close and exit, do not wait")
    args = parser.parse_args(argv)
    held = run_records(args) if args.mode == "records" else run_meta(args)
    if args.exit:
        if held is not None:
            os.close(held)
        return 0
    while True:  # files open, like an app between transactions: power-cut me
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
