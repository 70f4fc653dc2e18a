"""The sidecar on the bus: bad input, events, a slow handler, a dying server."""

from __future__ import annotations

import asyncio
import mmap
import os
import threading
import time

import msgpack
import nats
import pytest

from chaosbus import codec
from chaosbus.subjects import event_filter
from conftest import wait_for

GOOD_RULE = {"id": "keep", "action": "errno", "errno": "EIO", "methods": ["read"], "path": "x"}


def rule_ids(sc) -> list[str]:
    return [r["id"] for r in sc.request({"op": "status"})["rules"]]


BAD_COMMANDS = [
    (b"\xc1\xff garbage", "not valid msgpack"),
    (msgpack.packb([1, 2, 3]), "must be a msgpack map"),
    (codec.encode({"op": "explode"}), "unknown op"),
    (codec.encode({"op": "set", "rules": "nope"}), "non-empty list of rules"),
    (codec.encode({"op": "set", "rules": [{"action": "melt"}]}), "action must be one of"),
    (codec.encode({"op": "set", "rules": [{"action": "errno", "errno": 0}]}), "errno 0"),
    (codec.encode({"op": "set", "rules": [{"action": "errno", "errno": -5}]}), "errno -5"),
    (codec.encode({"op": "set", "rules": [{"action": "errno", "errno": "EWHAT"}]}), "EWHAT"),
    (
        codec.encode({"op": "set", "rules": [{"action": "errno", "errno": "EIO", "percent": 101}]}),
        "percent must be from 0 to 100",
    ),
    (
        codec.encode({"op": "set", "rules": [{"action": "errno", "errno": "EIO", "path": "a/[b"}]}),
        "unclosed '['",
    ),
    (
        codec.encode(
            {"op": "set", "rules": [{"action": "errno", "errno": "EIO", "percent": "50"}]}
        ),
        "percent must be a number",
    ),
    (codec.encode({"op": "set", "rules": [{"action": "latency"}]}), "needs a delay"),
    (
        codec.encode(
            {"op": "set", "rules": [{"action": "errno", "errno": "EIO", "methods": ["fly"]}]}
        ),
        "unknown method",
    ),
    (
        codec.encode({"op": "set", "rules": [{"action": "errno", "errno": "EIO", "colour": 1}]}),
        "unknown rule field",
    ),
    (codec.encode({"op": "recover"}), "exactly one of id, ids, method or all"),
    (codec.encode({"op": "recover", "id": "nosuchrule"}), "no rule with id"),
    (b"\x00" * (10 * 1024 * 1024), "exceeds the limit"),
]


@pytest.mark.parametrize(("payload", "reason"), BAD_COMMANDS, ids=lambda v: str(v)[:40])
def test_bad_input_gets_an_error_reply_and_changes_nothing(sidecar, payload, reason):
    assert sidecar.request({"op": "set", "rules": [GOOD_RULE]})["ok"]
    reply = sidecar.request(payload)
    assert reply["ok"] is False
    assert reason in reply["error"]
    assert rule_ids(sidecar) == ["keep"]
    assert sidecar.proc.poll() is None
    assert "command_rejected" in sidecar.log.read_text()


def test_a_batch_with_one_bad_rule_changes_nothing(sidecar):
    batch = [dict(GOOD_RULE, id="new"), {"action": "errno", "errno": 0}]
    reply = sidecar.request({"op": "set", "rules": batch})
    assert reply["ok"] is False and "rule 1" in reply["error"]
    assert rule_ids(sidecar) == []


def test_pod_names_with_dots_get_their_own_subject(make_sidecar):
    a = make_sidecar(pod="prod/web.v1.2-0")
    b = make_sidecar(pod="prod/web")
    done = a.ctl(
        "fault",
        "set",
        "--pod",
        "prod/web.v1.2-0",
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--id",
        "only-a",
    )
    assert done.returncode == 0, done.stderr
    assert rule_ids(a) == ["only-a"]
    assert rule_ids(b) == []


def test_no_sidecar_fails_fast_and_says_so(nats_server):
    from conftest import chaosctl

    started = time.monotonic()
    done = chaosctl(nats_server.url, "status", "--pod", "ghost/town")
    assert done.returncode == 3
    assert "no sidecar answers for ghost/town" in done.stderr
    assert time.monotonic() - started < 5


def test_invalid_rule_from_chaosctl_is_refused_with_reason(sidecar):
    done = sidecar.ctl(
        "fault",
        "set",
        "--pod",
        sidecar.pod,
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--percent",
        "150",
    )
    assert done.returncode == 2
    assert "percent must be from 0 to 100" in done.stderr


async def _collect_events(url: str, stop: threading.Event, out: list) -> None:
    nc = await nats.connect(url)
    sub = await nc.subscribe(event_filter())
    await nc.flush()
    out.append("subscribed")
    while not stop.is_set():
        try:
            msg = await sub.next_msg(timeout=0.1)
        except nats.errors.TimeoutError:
            continue
        out.append(codec.decode(msg.data))
    await nc.close()


def _listen(url: str) -> tuple[threading.Event, list, threading.Thread]:
    stop, events = threading.Event(), []
    thread = threading.Thread(target=lambda: asyncio.run(_collect_events(url, stop, events)))
    thread.start()
    wait_for(lambda: "subscribed" in events, timeout=5, interval=0.01, what="the subscription")
    return stop, events, thread


def test_ready_heartbeat_and_gone_events(make_sidecar, nats_server):
    stop, events, thread = _listen(nats_server.url)
    try:
        sc = make_sidecar(pod="ns/evt.pod", extra=["-heartbeat", "300ms"])

        def kinds_seen() -> list[str]:
            return [e["kind"] for e in events[1:]]

        wait_for(lambda: kinds_seen().count("heartbeat") >= 2, what="two heartbeats")
        sc.stop()
        wait_for(lambda: "gone" in kinds_seen(), what="the gone event")
    finally:
        stop.set()
        thread.join()
    kinds = [e["kind"] for e in events[1:]]
    assert kinds[0] == "ready" and kinds[-1] == "gone"
    assert kinds.count("heartbeat") >= 2
    ready = events[1]
    assert ready["pod"] == "ns/evt.pod"
    assert ready["mountpoint"] == str(sc.mountpoint)
    assert ready["pidfile"] == str(sc.pidfile)
    assert ready["version"]


def _read_latencies(path, seconds: float) -> list[float]:
    """O_DIRECT reads, so that every read is a real FUSE request."""
    buf = mmap.mmap(-1, 4096)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    out = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            os.preadv(fd, [buf], 0)
            out.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    return out


def test_a_blocked_bus_handler_does_not_slow_file_reads(make_sidecar):
    sc = make_sidecar(env={"CHAOSFS_TEST_HANDLER_DELAY": "0.5"})
    target = sc.path("hot")
    target.write_bytes(b"h" * 4096)
    baseline = max(_read_latencies(target, 1.0))

    latencies: list[float] = []
    reader = threading.Thread(target=lambda: latencies.extend(_read_latencies(target, 2.5)))
    reader.start()
    for _ in range(3):  # each one holds the bus thread for 0.5 s
        assert sc.request({"op": "ping"}, timeout=5)["ok"]
    reader.join()
    assert len(latencies) > 100
    assert max(latencies) <= baseline + 0.05, (max(latencies), baseline)


async def _ready_events_stream(url: str, create: bool) -> int:
    """Ready events kept in a file-backed stream, which survives the server restart."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        if create:
            await js.add_stream(name="READY", subjects=["chaosbus.fs.evt.ready.>"], storage="file")
        return (await js.stream_info("READY")).state.messages
    finally:
        await nc.close()


def test_nats_restart_mid_io_loses_nothing_and_sidecar_announces_again(make_sidecar, nats_server):
    asyncio.run(_ready_events_stream(nats_server.url, create=True))
    sc = make_sidecar(extra=["-heartbeat", "300ms"])
    target = sc.path("journal")
    written: list[bytes] = []
    stop = threading.Event()

    def writer() -> None:
        with open(target, "ab", buffering=0) as f:
            n = 0
            while not stop.is_set():
                record = b"record %06d\n" % n
                f.write(record)
                written.append(record)
                n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: written, what="the writer to start")
        assert asyncio.run(_ready_events_stream(nats_server.url, create=False)) == 1
        nats_server.stop()
        # The server stays down until the writer has gone on for 100 records without it
        # (rather than for a fixed second): I/O is what must not wait for the bus.
        at_stop = len(written)
        wait_for(lambda: len(written) >= at_stop + 100, what="writes while NATS is down")
        nats_server.start()

        def announced_again() -> int:
            n = asyncio.run(_ready_events_stream(nats_server.url, create=False))
            return n if n >= 2 else 0

        readies = wait_for(
            announced_again, timeout=15, interval=0.2, what="a ready event after the restart"
        )
    finally:
        stop.set()
        thread.join()
    assert readies == 2, "the sidecar did not announce itself after the restart"
    expected = b"".join(written)
    assert len(written) > 100
    assert target.read_bytes() == expected
    assert (sc.original / "journal").read_bytes() == expected
    assert sc.request({"op": "ping"})["ok"]
