"""The cheaper FUSE request loop (services/chaosfs/app.py) keeps every fault semantic."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from conftest import set_rule


def test_a_lookup_rule_reaches_a_name_the_kernel_remembers_as_missing(sidecar):
    missing = sidecar.path("not-there")
    for _ in range(3):  # the kernel now holds a negative entry (cache timeout 5 s)
        with pytest.raises(FileNotFoundError):
            os.stat(missing)
    set_rule(
        sidecar,
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--methods",
        "lookup",
        "--path",
        "not-there",
        "--id",
        "l1",
    )
    with pytest.raises(OSError) as info:
        os.stat(missing)
    assert info.value.errno == errno.EIO
    # Other missing names stay cached and plain.
    with pytest.raises(FileNotFoundError):
        os.stat(sidecar.path("other-missing"))


def test_a_negative_entry_still_gives_way_to_a_create(sidecar):
    name = sidecar.path("later")
    with pytest.raises(FileNotFoundError):
        os.stat(name)
    name.write_text("now")
    assert name.read_text() == "now"


def test_a_held_read_does_not_hold_the_others(sidecar):
    slow, fast = sidecar.path("slow"), sidecar.path("fast")
    slow.write_bytes(b"s" * 4096)
    fast.write_bytes(b"f" * 4096)
    set_rule(
        sidecar,
        "--action",
        "latency",
        "--delay",
        "1s",
        "--methods",
        "read",
        "--path",
        "slow",
        "--id",
        "lat",
    )
    done = threading.Event()

    def read_slow() -> None:
        fd = os.open(slow, os.O_RDONLY)
        try:
            os.pread(fd, 4096, 0)
        finally:
            os.close(fd)
        done.set()

    t = threading.Thread(target=read_slow)
    began = time.monotonic()
    t.start()
    time.sleep(0.1)
    # While the slow read is held in chaosfs, many requests on other files go on.
    for _ in range(200):
        fd = os.open(fast, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(fd, 4096, 0) == b"f" * 4096
        os.close(fd)
        os.stat(sidecar.path("fast"))
    assert not done.is_set(), "the other reads waited for the held one"
    assert time.monotonic() - began < 1.0
    t.join(5)
    assert done.is_set()
