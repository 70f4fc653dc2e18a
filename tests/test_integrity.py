"""Data integrity of the chaosfs passthrough under a random workload.

A seeded random sequence of writes, reads, truncates, renames and reopens runs on
a few files through the mount and, mirrored step by step, on a shadow directory
on the native file system. After every step the bytes a program reads through
the mount must equal the shadow's; at the end the backing files must too.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

SEED = 20240611
STEPS = 3000
FILES = 8
NAMES = [f"file-{i}" for i in range(FILES + 4)]  # renames move files among these
MAX_IO = 1 << 20
MAX_OFFSET = 3 << 20


class Mirror:
    """One file system tree (the mount or the shadow) with its open descriptors."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: dict[str, int] = {}

    def open(self, name: str, flags: int = 0) -> None:
        self.fds[name] = os.open(self.root / name, os.O_RDWR | os.O_CREAT | flags, 0o644)

    def close(self, name: str) -> None:
        os.close(self.fds.pop(name))

    def close_all(self) -> None:
        for name in list(self.fds):
            self.close(name)

    def read_all(self, name: str) -> bytes:
        fd = self.fds[name]
        size = os.fstat(fd).st_size
        return os.pread(fd, size + 1, 0)


def _read_fresh(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "mode",
    [
        [],
        ["-lazy"],  # chaosfs holds every unsynced byte: reads must overlay them exactly
        ["-lazy", "-lazy-max-bytes", "256KiB"],  # and writes them back early, often
    ],
    ids=["passthrough", "lazy", "lazy-small-budget"],
)
def test_random_workload_matches_the_native_file_system(
    make_sidecar, tmp_path: Path, mode: list[str]
):
    sidecar = make_sidecar(extra=mode, bus=False)
    rng = random.Random(SEED)
    shadow_root = tmp_path / "shadow"
    shadow_root.mkdir()
    fuse = Mirror(sidecar.mountpoint)
    shadow = Mirror(shadow_root)
    pattern = rng.randbytes(MAX_IO + 4096)
    counts: dict[str, int] = {}

    def check(name: str, step: int, what: str) -> None:
        expected = shadow.read_all(name)
        got = fuse.read_all(name)
        if got != expected:
            first = next(
                (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                min(len(got), len(expected)),
            )
            raise AssertionError(
                f"step {step} ({what}) on {name}: {len(got)} bytes through the mount, "
                f"{len(expected)} in the shadow; first difference at byte {first}"
            )

    try:
        for name in NAMES[:FILES]:
            fuse.open(name)
            shadow.open(name)
        for step in range(STEPS):
            live = sorted(fuse.fds)
            name = rng.choice(live)
            op = rng.choices(
                ("write", "read", "truncate", "rename", "reopen", "fresh-read", "append", "fsync"),
                weights=(40, 25, 10, 8, 8, 9, 5, 3),
            )[0]
            counts[op] = counts.get(op, 0) + 1
            if op == "write":
                small = rng.random() < 0.6
                length = rng.randint(1, 8192 if small else MAX_IO)
                offset = rng.randint(0, MAX_OFFSET)
                start = rng.randint(0, 4096)
                data = pattern[start : start + length]
                for side in (fuse, shadow):
                    assert os.pwrite(side.fds[name], data, offset) == length
            elif op == "read":
                length = rng.randint(1, MAX_IO)
                offset = rng.randint(0, MAX_OFFSET + MAX_IO)
                got = os.pread(fuse.fds[name], length, offset)
                want = os.pread(shadow.fds[name], length, offset)
                assert got == want, f"step {step}: read {length}@{offset} of {name} differs"
            elif op == "truncate":
                size = os.fstat(shadow.fds[name]).st_size
                new_size = rng.choice((0, rng.randint(0, size), rng.randint(size, size + MAX_IO)))
                by_path = rng.random() < 0.5
                for side in (fuse, shadow):
                    if by_path:
                        os.truncate(side.root / name, new_size)
                    else:
                        os.ftruncate(side.fds[name], new_size)
            elif op == "rename":
                target = rng.choice([n for n in NAMES if n != name])
                for side in (fuse, shadow):
                    if target in side.fds:
                        side.close(target)  # the replaced file's last descriptor
                    os.rename(side.root / name, side.root / target)
                    side.fds[target] = side.fds.pop(name)  # still open on the moved file
                name = target
            elif op == "reopen":
                flags = os.O_TRUNC if rng.random() < 0.1 else 0
                for side in (fuse, shadow):
                    side.close(name)
                    side.open(name, flags)
            elif op == "append":  # another descriptor, opened O_APPEND for one write
                data = pattern[: rng.randint(1, 65536)]
                for side in (fuse, shadow):
                    fd = os.open(side.root / name, os.O_WRONLY | os.O_APPEND)
                    try:
                        assert os.write(fd, data) == len(data)
                    finally:
                        os.close(fd)
            elif op == "fsync":
                for side in (fuse, shadow):
                    os.fdatasync(side.fds[name])
            else:  # a new open through the mount, as another program would read it
                assert _read_fresh(fuse.root / name) == _read_fresh(shadow.root / name), (
                    f"step {step}: fresh read of {name} differs"
                )
            check(name, step, op)
            assert os.fstat(fuse.fds[name]).st_size == os.fstat(shadow.fds[name]).st_size
            while len(fuse.fds) < FILES:  # a rename replaced a file: make a new one
                fresh = rng.choice([n for n in NAMES if n not in fuse.fds])
                fuse.open(fresh, os.O_TRUNC)
                shadow.open(fresh, os.O_TRUNC)
        for name in sorted(fuse.fds):
            check(name, STEPS, "final")
    finally:
        fuse.close_all()
        shadow.close_all()

    assert all(counts.get(op, 0) > 50 for op in ("write", "truncate", "rename", "reopen", "append"))
    assert sorted(os.listdir(sidecar.mountpoint)) == sorted(os.listdir(shadow_root))
    # A clean stop makes everything durable, lazy or not: the backing tree is the app's.
    assert sidecar.stop() == 0
    assert sorted(os.listdir(sidecar.original)) == sorted(os.listdir(shadow_root))
    for name in os.listdir(shadow_root):
        assert (sidecar.original / name).read_bytes() == (shadow_root / name).read_bytes(), name
        assert os.stat(sidecar.original / name).st_size == os.stat(shadow_root / name).st_size


@pytest.mark.timeout(60)
def test_concurrent_writers_on_one_file_and_on_their_own(sidecar, tmp_path: Path):
    """Threads write through the mount at once: each owns a file, and all share one.

    Writes to the shared file go to disjoint, unaligned slices, so that writers
    meet inside the same pages; the result must be exactly what each wrote.
    """
    workers = 4
    rounds = 300
    slice_size = 3001  # not a multiple of the page size
    shared = sidecar.path("shared")
    shared.write_bytes(b"")
    errors: list[BaseException] = []
    expected_shared = bytearray(workers * rounds * slice_size)
    expected_own: list[bytes] = [b""] * workers

    def work(worker: int) -> None:
        try:
            rng = random.Random(SEED + worker)
            own_path = sidecar.path(f"own-{worker}")
            own = bytearray()
            fd_shared = os.open(shared, os.O_RDWR)
            fd_own = os.open(own_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                for step in range(rounds):
                    data = rng.randbytes(slice_size)
                    offset = (step * workers + worker) * slice_size
                    assert os.pwrite(fd_shared, data, offset) == slice_size
                    expected_shared[offset : offset + slice_size] = data
                    at = rng.randint(0, len(own) + 100)
                    chunk = rng.randbytes(rng.randint(1, 20000))
                    os.pwrite(fd_own, chunk, at)
                    if at > len(own):
                        own.extend(bytes(at - len(own)))
                    own[at : at + len(chunk)] = chunk
                    if step % 50 == 0:
                        assert os.pread(fd_own, len(own) + 1, 0) == own, (worker, step)
                expected_own[worker] = bytes(own)
            finally:
                os.close(fd_own)
                os.close(fd_shared)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert shared.read_bytes() == expected_shared
    assert (sidecar.original / "shared").read_bytes() == expected_shared
    for worker in range(workers):
        assert sidecar.path(f"own-{worker}").read_bytes() == expected_own[worker]
        assert (sidecar.original / f"own-{worker}").read_bytes() == expected_own[worker]
