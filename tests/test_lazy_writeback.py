"""Lazy mode's write-back by age, as a kernel's flusher threads and a journal's
periodic commit do: what stays dirty longer than -lazy-expire reaches the disk
unasked, so a power cut after that loses only what is younger.

Real parts: chaosfs over a real FUSE mount, a real nats-server.
"""

from __future__ import annotations

import os
import time

from test_lazy import ask, lazy_status, write_file

from conftest import wait_for


def test_dirty_data_and_entries_older_than_the_expiry_reach_the_disk(make_sidecar):
    sc = make_sidecar(
        pod="default/expire-0",
        extra=["-lazy", "-lazy-expire", "1s", "-lazy-flush-interval", "200ms"],
    )
    status = lazy_status(sc)
    assert (status["expire"], status["flush_interval"]) == (1.0, 0.2)
    write_file(sc.mountpoint / "log", b"x" * 10_000)  # no fsync, directory never synced
    started = time.monotonic()
    wait_for(
        lambda: (sc.original / "log").exists() and (sc.original / "log").stat().st_size == 10_000,
        timeout=10,
        what="the write-back by age",
    )
    assert time.monotonic() - started >= 0.8  # not before it expired
    wait_for(lambda: lazy_status(sc)["pending_dir_ops"] == 0, what="the create to be durable")
    stats = lazy_status(sc)["stats"]
    assert stats["expired_flushes"] == 1 and stats["expired_bytes"] == 10_000
    assert stats["flushes"] == 0  # nobody synced it
    # A cut now loses nothing: the kernel would have written it back by now too.
    lost = ask(sc, "lose-unsynced", metadata=True)["lost"]
    assert lost["bytes"] == 0 and lost["dir_ops"] == []
    assert (sc.mountpoint / "log").read_bytes() == b"x" * 10_000


def test_an_expiry_of_zero_never_writes_back(make_sidecar):
    on = make_sidecar(
        pod="default/expire-1",
        extra=["-lazy", "-lazy-expire", "300ms", "-lazy-flush-interval", "100ms"],
    )
    off = make_sidecar(
        pod="default/expire-2",
        extra=["-lazy", "-lazy-expire", "0", "-lazy-flush-interval", "100ms"],
    )
    for sc in (on, off):
        write_file(sc.mountpoint / "f", b"y" * 4096)
    # Once the timed one wrote back (the positive signal), the other had as long.
    wait_for(lambda: lazy_status(on)["stats"]["expired_flushes"] == 1, what="the timed write-back")
    time.sleep(0.5)
    assert lazy_status(off)["stats"]["expired_flushes"] == 0
    assert os.stat(off.original / "f").st_size == 0
    assert ask(off, "report-unsynced")["unsynced"]["files"] == {"f": 4096}


def test_bad_expiry_flags_are_refused(make_sidecar):
    for flags, message in (
        (["-lazy-expire", "soon"], "-lazy-expire"),
        (["-lazy-expire", "-1s"], "-lazy-expire"),
        (["-lazy-flush-interval", "0"], "-lazy-flush-interval must be above zero"),
        (["-lazy-metadata", "ext2"], "-lazy-metadata must be journal or strict"),
    ):
        sc = make_sidecar(pod="default/bad-0", extra=["-lazy", *flags], start=False)
        sc.start(wait=False)
        assert sc.proc is not None
        assert sc.proc.wait(10) != 0
        assert message in sc.log.read_text(), (flags, sc.log.read_text()[-500:])
