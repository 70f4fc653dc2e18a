"""The fault engine's actions and triggers, felt through a real mount."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import threading
import time

import nats
import pytest
from signals import log_offset, logged_at, wait_logged

from chaosbus import codec
from chaosbus.subjects import event_filter
from conftest import set_rule as fault_set
from conftest import wait_for


def set_rule(sc, *args: str) -> dict:
    return fault_set(sc, *args)["rules"][0]


def rules(sc) -> list[dict]:
    return sc.request({"op": "status"})["rules"]


def test_attr_overrides_show_in_stat_and_go_after_recover(sidecar):
    target = sidecar.path("f")
    target.write_bytes(b"12345")
    real = os.stat(target)
    set_rule(
        sidecar,
        "--action",
        "attr",
        "--attr",
        "size=12345,mode=0600,uid=1000,gid=2000,nlink=7,mtime=1000000000",
        "--path",
        "f",
        "--id",
        "lie",
    )
    seen = os.stat(target)
    assert (seen.st_size, seen.st_uid, seen.st_gid, seen.st_nlink) == (12345, 1000, 2000, 7)
    assert oct(seen.st_mode & 0o7777) == oct(0o600)
    assert seen.st_mtime == 1000000000
    assert os.path.isfile(target)  # the kind is untouched unless asked
    assert os.stat(sidecar.path(".")).st_uid == real.st_uid  # other paths are not affected
    assert sidecar.ctl("fault", "recover", "--pod", sidecar.pod, "--id", "lie").returncode == 0
    back = os.stat(target)
    assert (back.st_size, back.st_uid, back.st_mode) == (5, real.st_uid, real.st_mode)


def test_attr_kind_and_ino(sidecar):
    target = sidecar.path("k")
    target.write_bytes(b"k")
    set_rule(
        sidecar,
        "--action",
        "attr",
        "--attr",
        "kind=fifo,ino=4242",
        "--path",
        "k",
    )
    seen = os.stat(target)
    assert seen.st_ino == 4242
    import stat

    assert stat.S_ISFIFO(seen.st_mode)


def test_mistake_on_read_changes_1_to_max_length_bytes_and_keeps_length(sidecar):
    original = b"\xaa" * 65536
    sidecar.path("m").write_bytes(original)
    set_rule(
        sidecar,
        "--action",
        "mistake",
        "--filling",
        "zero",
        "--max-occurrences",
        "1",
        "--max-length",
        "16",
        "--methods",
        "read",
        "--path",
        "m",
    )
    for _ in range(20):
        fd = os.open(sidecar.path("m"), os.O_RDONLY)
        try:
            data = os.read(fd, 65536)
        finally:
            os.close(fd)
        assert len(data) == len(original)
        changed = [i for i, (a, b) in enumerate(zip(data, original, strict=True)) if a != b]
        assert 1 <= len(changed) <= 16
        assert changed == list(range(changed[0], changed[0] + len(changed)))  # one run
        assert set(data[changed[0] : changed[-1] + 1]) == {0}
    assert (sidecar.original / "m").read_bytes() == original  # reads never touch the disk


def test_mistake_on_write_corrupts_what_reaches_the_disk(sidecar):
    set_rule(
        sidecar,
        "--action",
        "mistake",
        "--filling",
        "random",
        "--max-occurrences",
        "3",
        "--max-length",
        "8",
        "--methods",
        "write",
        "--path",
        "w",
        "--seed",
        "7",
    )
    payload = bytes(range(256)) * 16
    fd = os.open(sidecar.path("w"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, payload) == len(payload)
    finally:
        os.close(fd)
    stored = (sidecar.original / "w").read_bytes()
    assert len(stored) == len(payload)
    changed = sum(a != b for a, b in zip(stored, payload, strict=True))
    assert 1 <= changed <= 24


def test_short_reads_return_fewer_bytes_and_a_looping_reader_gets_everything(sidecar):
    payload = os.urandom(256 * 1024)
    sidecar.path("s").write_bytes(payload)
    set_rule(
        sidecar, "--action", "short", "--short-bytes", "1000", "--methods", "read", "--path", "s"
    )
    fd = os.open(sidecar.path("s"), os.O_RDONLY)
    try:
        assert len(os.read(fd, 65536)) == 1000
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    assert b"".join(chunks) == payload
    assert len(chunks) == len(payload) // 1000 + 1


def test_short_writes_move_fewer_bytes(sidecar):
    set_rule(sidecar, "--action", "short", "--methods", "write", "--path", "sw", "--seed", "3")
    fd = os.open(sidecar.path("sw"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, b"x" * 100_000)
    finally:
        os.close(fd)
    assert 1 <= written < 100_000
    assert (sidecar.original / "sw").stat().st_size == written


def test_quota_stops_a_200kb_write_and_statfs_agrees(sidecar):
    set_rule(sidecar, "--action", "enospc", "--quota", "64KiB", "--path", "db/**", "--id", "q")
    sidecar.path("db").mkdir()
    free = os.statvfs(sidecar.mountpoint)
    assert free.f_bavail * free.f_frsize <= 64 * 1024
    with pytest.raises(OSError) as info, open(sidecar.path("db/big"), "wb") as f:
        f.write(b"z" * 200_000)
    assert info.value.errno == errno.ENOSPC
    assert (sidecar.original / "db" / "big").stat().st_size <= 64 * 1024
    assert os.statvfs(sidecar.mountpoint).f_bavail == 0
    (rule,) = rules(sidecar)
    assert rule["stats"]["quota_used"] == 64 * 1024 and rule["stats"]["fired"] >= 1
    # Other paths still have the real disk.
    sidecar.path("elsewhere").write_bytes(b"e" * 100_000)


def test_quota_with_edquot(sidecar):
    set_rule(sidecar, "--action", "enospc", "--quota", "0", "--errno", "EDQUOT")
    with pytest.raises(OSError) as info, open(sidecar.path("x"), "wb") as f:
        f.write(b"1")
    assert info.value.errno == errno.EDQUOT


def _writes(path, n: int) -> list[bool]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    out = []
    try:
        for i in range(n):
            try:
                os.pwrite(fd, b"w", i)
                out.append(True)
            except OSError as exc:
                assert exc.errno == errno.EIO
                out.append(False)
    finally:
        os.close(fd)
    return out


def test_count_3_fails_exactly_3_of_5_writes(sidecar):
    set_rule(sidecar, "--action", "errno", "--errno", "EIO", "--methods", "write", "--count", "3")
    assert _writes(sidecar.path("c"), 5) == [False, False, False, True, True]
    (rule,) = rules(sidecar)
    assert rule["spent"] is True and rule["stats"]["fired"] == 3


def test_after_lets_the_first_k_pass(sidecar):
    set_rule(
        sidecar,
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--methods",
        "write",
        "--after",
        "2",
        "--count",
        "1",
    )
    assert _writes(sidecar.path("a"), 4) == [True, True, False, True]


def test_ttl_ends_the_rule_even_with_nats_stopped(sidecar, nats_server):
    sidecar.path("t").write_text("t")
    since = log_offset(sidecar)
    rule = set_rule(
        sidecar, "--action", "errno", "--errno", "EIO", "--methods", "read", "--ttl", "3s"
    )
    # chaosctl fixed the expiry on this host's clock before sending the rule: that, not
    # when it returned, is when the rule must end.
    expires_at = rule["expires_at"]
    nats_server.stop()
    with pytest.raises(OSError):
        sidecar.path("t").read_text()
    # The ttl elapsing is the behaviour under test, so this waits on the clock: reads
    # fail until the expiry, then succeed, with NATS down all along.
    while True:
        try:
            assert sidecar.path("t").read_text() == "t"
            break
        except OSError:
            # The old window's upper end (3 s + 2 s after the set): one that still
            # tells "ends at its ttl" from "never ends without the bus", yet leaves
            # a loaded machine time for a few polls.
            assert time.time() < expires_at + 2, "the rule outlived its ttl"
            time.sleep(0.05)
    # Never early: a read that succeeds has started after the expiry it was checked
    # against (the engine compares each operation with expires_at).
    assert time.time() >= expires_at
    # The sidecar's sweeper drops the rule too (the engine already ignores it), on time
    # by its own log's clock, which a loaded test process's polling does not blur.
    expired = wait_logged(
        sidecar, "rule_expired", since, where=lambda r: r.get("rule") == rule["id"]
    )
    assert 0 <= logged_at(expired) - expires_at < 1.0, expired


def _pattern(sc, seed: str, rule_id: str) -> list[bool]:
    set_rule(
        sc,
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--methods",
        "read",
        "--percent",
        "30",
        "--seed",
        seed,
        "--id",
        rule_id,
        "--path",
        "p",
    )
    fd = os.open(sc.path("p"), os.O_RDONLY)
    hits = []
    try:
        for _ in range(200):
            try:
                os.pread(fd, 1, 0)
                hits.append(False)
            except OSError:
                hits.append(True)
    finally:
        os.close(fd)
    sc.ctl("fault", "recover", "--pod", sc.pod, "--all")
    return hits


def test_same_seed_hits_the_same_operations(sidecar):
    sidecar.path("p").write_text("p")
    first = _pattern(sidecar, "42", "one")
    second = _pattern(sidecar, "42", "two")
    other = _pattern(sidecar, "43", "three")
    assert first == second
    assert first != other
    assert 30 <= sum(first) <= 90


def test_seeded_rules_are_independent_of_each_other(sidecar):
    sidecar.path("p").write_text("p")
    alone = _pattern(sidecar, "42", "one")
    # Another seeded rule on another path consumes its own random numbers.
    set_rule(
        sidecar,
        "--action",
        "latency",
        "--delay",
        "1ms",
        "--percent",
        "50",
        "--seed",
        "9",
        "--path",
        "p",
        "--methods",
        "open",
        "--id",
        "noise",
    )
    assert _pattern(sidecar, "42", "again") == alone


def test_dry_run_changes_nothing_but_counts(sidecar):
    sidecar.path("d").write_text("d")
    set_rule(
        sidecar,
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--methods",
        "read",
        "--dry-run",
        "--path",
        "d",
    )
    fd = os.open(sidecar.path("d"), os.O_RDONLY)
    try:
        for _ in range(25):
            assert os.pread(fd, 1, 0) == b"d"
    finally:
        os.close(fd)
    (rule,) = rules(sidecar)
    assert rule["dry_run"] is True
    assert rule["stats"]["matched"] == 25 and rule["stats"]["fired"] == 25


def test_caller_comm_hits_only_that_program(sidecar):
    sidecar.path("c").write_text("hello")
    set_rule(
        sidecar,
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--methods",
        "read,open",
        "--caller-comm",
        "cat",
    )
    cat = subprocess.run(["cat", str(sidecar.path("c"))], capture_output=True, text=True)
    assert cat.returncode != 0 and "Input/output error" in cat.stderr
    head = subprocess.run(["head", "-c", "5", str(sidecar.path("c"))], capture_output=True)
    assert head.returncode == 0 and head.stdout == b"hello"
    assert sidecar.path("c").read_text() == "hello"


def test_caller_uid_and_pid(sidecar):
    sidecar.path("u").write_text("u")
    set_rule(
        sidecar,
        "--action",
        "errno",
        "--errno",
        "EACCES",
        "--methods",
        "open",
        "--caller-uid",
        "4321",
    )
    assert sidecar.path("u").read_text() == "u"  # we are root
    set_rule(
        sidecar,
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--methods",
        "open",
        "--caller-pid",
        str(os.getpid()),
        "--id",
        "me",
    )
    with pytest.raises(OSError):
        sidecar.path("u").read_text()
    assert subprocess.run(["cat", str(sidecar.path("u"))]).returncode == 0


async def _collect(url: str, ready: threading.Event, stop: threading.Event, out: list) -> None:
    nc = await nats.connect(url)
    sub = await nc.subscribe(event_filter("inject"))
    await nc.flush()
    ready.set()
    while not stop.is_set():
        try:
            msg = await sub.next_msg(timeout=0.1)
        except nats.errors.TimeoutError:
            continue
        out.append(codec.decode(msg.data))
    await nc.close()


def test_injection_events_say_what_happened_to_whom(sidecar):
    events: list[dict] = []
    ready, stop = threading.Event(), threading.Event()
    listener = threading.Thread(
        target=lambda: asyncio.run(_collect(sidecar.nats_url, ready, stop, events))
    )
    listener.start()
    assert ready.wait(5), "the event listener never subscribed"
    try:
        sidecar.path("e").write_text("e")
        set_rule(
            sidecar,
            "--action",
            "errno",
            "--errno",
            "EIO",
            "--methods",
            "read",
            "--path",
            "e",
            "--id",
            "seen",
        )
        assert subprocess.run(["cat", str(sidecar.path("e"))], capture_output=True).returncode
        wait_for(lambda: events, timeout=5, what="the injection event")
    finally:
        stop.set()
        listener.join()
    event = events[0]
    assert event["rule"] == "seen" and event["method"] == "read" and event["path"] == "e"
    assert event["outcome"] == "errno EIO" and event["pod"] == sidecar.pod
    assert event["pid"] > 0 and event["comm"] in ("cat", None)
    assert event["time"] == pytest.approx(time.time(), abs=10)


def test_injection_events_are_rate_limited_and_never_slow_io(sidecar):
    sidecar.path("r").write_text("r")
    set_rule(sidecar, "--action", "errno", "--errno", "EIO", "--methods", "read", "--path", "r")
    fd = os.open(sidecar.path("r"), os.O_RDONLY)
    started = time.monotonic()
    try:
        for _ in range(3000):
            with pytest.raises(OSError):
                os.pread(fd, 1, 0)
    finally:
        os.close(fd)
    assert time.monotonic() - started < 10
    # Asked at once, while the bus thread still has the burst's events to rate-limit:
    # its answer is the sign that the burst did not jam it.
    heartbeat_source = sidecar.request({"op": "status"})
    assert heartbeat_source["ok"]


BAD_RULES = [
    ({"action": "attr"}, "attr must be a non-empty map"),
    ({"action": "attr", "attr": {"colour": 1}}, "unknown attr field"),
    ({"action": "attr", "attr": {"mode": 0o17777}}, "attr mode must be from"),
    ({"action": "attr", "attr": {"kind": "pipe"}}, "attr kind must be one of"),
    ({"action": "attr", "attr": {"size": -1}}, "attr size must be from"),
    ({"action": "attr", "attr": {"size": 1}, "methods": ["read"]}, "cannot apply to read"),
    ({"action": "mistake", "filling": "ones"}, "filling must be zero or random"),
    ({"action": "mistake", "max_length": 0}, "max_length must be from 1"),
    ({"action": "mistake", "max_occurrences": "3"}, "max_occurrences must be a whole number"),
    ({"action": "mistake", "methods": ["getattr"]}, "cannot apply to getattr"),
    ({"action": "short", "short_bytes": -4}, "short_bytes must be from"),
    ({"action": "enospc"}, "needs a quota"),
    ({"action": "enospc", "quota": 10, "methods": ["read"]}, "cannot apply to read"),
    ({"action": "enospc", "quota": 10, "errno": "EIO"}, "ENOSPC or EDQUOT only"),
    ({"action": "errno", "errno": "EIO", "count": 0}, "count must be from 1"),
    ({"action": "errno", "errno": "EIO", "after": -1}, "after must be from 0"),
    ({"action": "errno", "errno": "EIO", "ttl": -3}, "ttl must be a positive number"),
    ({"action": "errno", "errno": "EIO", "ttl": 1, "expires_at": 2e9}, "not both"),
    ({"action": "errno", "errno": "EIO", "caller_comm": "a/b"}, "caller_comm must be"),
    ({"action": "errno", "errno": "EIO", "caller_comm": "x" * 16}, "caller_comm must be"),
    ({"action": "errno", "errno": "EIO", "caller_pid": "1"}, "caller_pid must be a whole"),
    ({"action": "errno", "errno": "EIO", "seed": 1.5}, "seed must be a whole number"),
    ({"action": "errno", "errno": "EIO", "dry_run": "yes"}, "dry_run must be true or false"),
    ({"action": "errno", "errno": "EIO", "quota": 5}, "quota only applies"),
    ({"action": "latency", "delay": 1, "filling": "zero"}, "filling only applies"),
    ({"action": "attr", "attr": {"kind": "dir"}, "methods": ["getattr"]}, "needs the lookup"),
]


@pytest.mark.parametrize(("rule", "reason"), BAD_RULES, ids=lambda v: str(v)[:50])
def test_bad_new_fields_are_refused_and_change_nothing(sidecar, rule, reason):
    keep = {"id": "keep", "action": "latency", "delay": 0.001, "path": "nothing"}
    assert sidecar.request({"op": "set", "rules": [keep]})["ok"]
    reply = sidecar.request({"op": "set", "rules": [rule]})
    assert reply["ok"] is False
    assert reason in reply["error"]
    assert [r["id"] for r in rules(sidecar)] == ["keep"]
