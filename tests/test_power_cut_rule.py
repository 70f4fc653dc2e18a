"""A power cut at the N-th operation: a ``power-cut`` rule, set with chaosctl, on a
real lazy mount, against a writer that fsyncs after every record in a tight loop.

What survives tells where the cut landed: with ``--when after`` the third fsync's
record is on disk and no later one is, although the writer goes on writing and
fsyncing microseconds after the third fsync returns; with ``--when before`` the
third fsync never happens. Real parts: chaosfs -lazy over FUSE, nats-server,
the chaosctl command, the records program as its own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lazy_records import record
from test_fleet import audit

from conftest import Sidecar, chaosctl, wait_for

RECORDS = Path(__file__).resolve().parent / "lazy_records.py"
SIZE = 1000
CUT_AT_THIRD_FSYNC = ["--action", "power-cut", "--methods", "fsync", "--path", "wal/*",
                      "--after", "2", "--count", "1"]  # fmt: skip


def records(first: int, last: int) -> bytes:
    return b"".join(record(n, SIZE) for n in range(first, last))


def writer(sc: Sidecar) -> subprocess.Popen[str]:
    """Fifty records into wal/000001, an fsync after each one, as fast as it can."""
    (sc.mountpoint / "wal").mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        str(RECORDS),
        "records",
        str(sc.mountpoint / "wal"),
        "--name",
        "000001",
        "--records",
        "50",
        "--size",
        str(SIZE),
        "--sync-every",
        "1",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rule_of(sc: Sidecar, rule_id: str) -> dict[str, Any]:
    reply = sc.request({"op": "status"})
    return next(r for r in reply["rules"] if r["id"] == rule_id)


def cut_done(sc: Sidecar, rule_id: str) -> dict[str, Any]:
    """The rule's account of its cut, once the cut is over (the positive signal)."""
    return wait_for(lambda: rule_of(sc, rule_id)["stats"].get("last_cut"), what="the cut")


def acknowledged(proc: subprocess.Popen[str]) -> list[int]:
    """What the writer printed as durable before it died: its acknowledgements."""
    out, _ = proc.communicate(timeout=15)
    return [json.loads(line)["durable"] for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize(("when", "survive"), [("after", 3), ("before", 2)])
def test_a_cut_lands_exactly_at_the_third_fsync(make_sidecar, when, survive):
    sc = make_sidecar(pod="default/wal-0", extra=["-lazy"])
    done = sc.ctl("fault", "set", "--pod", sc.pod, *CUT_AT_THIRD_FSYNC, "--when", when,
                  "--id", "cut3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"when={when}" in done.stdout, done.stdout

    proc = writer(sc)
    cut = cut_done(sc, "cut3")
    acked = acknowledged(proc)

    # What survives is the state at the cut point, on disk and through the mount.
    assert (sc.original / "wal" / "000001").read_bytes() == records(0, survive)
    assert (sc.mountpoint / "wal" / "000001").read_bytes() == records(0, survive)
    # Nothing the writer was told is durable is gone (it may not have heard of the third).
    assert acked == list(range(1, len(acked) + 1)) and len(acked) <= survive, acked
    assert proc.returncode != 0  # killed, or failed by the dead disk first
    assert cut["operation"] == 3 and cut["when"] == when and cut["method"] == "fsync"
    assert cut["path"] == "wal/000001" and cut["survivors"] == []
    assert proc.pid in [k["pid"] for k in cut["killed"]] or proc.returncode == 1, cut

    rule = rule_of(sc, "cut3")
    assert rule["stats"]["fired"] == 1 and rule["spent"] is True
    # The mount answers again, and lazily as before: the restarted app finds what survived.
    (sc.mountpoint / "after.txt").write_text("back")
    assert (sc.mountpoint / "after.txt").read_text() == "back"
    listed = sc.ctl("fault", "list", "--pod", sc.pod)
    assert "power-cut" in listed.stdout and "(spent)" in listed.stdout, listed.stdout

    events = wait_for(lambda: audit(sc.nats_url, "--kind", "power.cut"), what="power.cut audit")
    assert events[0]["actor"] == "rule:cut3", events
    triggered = audit(sc.nats_url, "--kind", "power.cut.triggered")
    assert triggered and triggered[0]["operation"] == 3 and triggered[0]["when"] == when


def test_a_power_cut_rule_is_refused_where_the_mount_is_not_lazy(make_sidecar):
    sc = make_sidecar(pod="default/plain-0")
    done = sc.ctl("fault", "set", "--pod", sc.pod, *CUT_AT_THIRD_FSYNC)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "needs lazy mode" in done.stderr, done.stderr
    assert sc.request({"op": "status"})["rules"] == []
    wait_for(lambda: audit(sc.nats_url, "--kind", "rule.rejected"), what="rule.rejected audit")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--when", "later"], "invalid choice"),
        (["--signal", "NOPE"], "signal must be a name"),
    ],
)
def test_bad_power_cut_flags_exit_2(nats_server, flags, message):
    done = chaosctl(nats_server.url, "fault", "set", "--pod", "a/b", *CUT_AT_THIRD_FSYNC, *flags)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_errno_rules_take_no_cut_flags(nats_server):
    done = chaosctl(nats_server.url, "fault", "set", "--pod", "a/b", "--action", "errno",
                    "--errno", "EIO", "--when", "after")  # fmt: skip
    assert done.returncode == 2 and "only applies to the power-cut action" in done.stderr


def test_a_broadcast_cuts_each_pod_at_its_own_third_fsync(make_sidecar, nats_server):
    pods = [make_sidecar(pod=f"db/cut-{i}", extra=["-lazy"]) for i in range(2)]
    plain = make_sidecar(pod="db/plain-0")
    done = chaosctl(
        nats_server.url,
        "fault",
        "broadcast",
        "--namespace",
        "db",
        "--pods",
        "cut-*",
        *CUT_AT_THIRD_FSYNC,
        "--when",
        "after",
        "--id",
        "fleet-cut",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(json.loads(done.stdout)["acked"]) == ["db/cut-0", "db/cut-1"]

    procs = [writer(sc) for sc in pods]
    for sc, proc in zip(pods, procs, strict=True):
        cut = cut_done(sc, "fleet-cut")
        acknowledged(proc)
        assert cut["operation"] == 3 and cut["survivors"] == []
        assert (sc.original / "wal" / "000001").read_bytes() == records(0, 3)

    # A plain sidecar the broadcast also reaches refuses it, and says why.
    refused = chaosctl(nats_server.url, "fault", "broadcast", "--namespace", "db",
                       *CUT_AT_THIRD_FSYNC, "--id", "fleet-cut-2", "--json")  # fmt: skip
    assert refused.returncode == 1, refused.stdout
    errors = json.loads(refused.stdout)["errors"]
    assert [e["pod"] for e in errors] == [plain.pod] and "lazy mode" in errors[0]["error"]


def test_a_cut_at_an_operation_can_tear_the_unsynced_writes(make_sidecar):
    """One rule: at the second fsync, before it runs, cut the power and let the first
    1500 bytes of the unsynced records reach the disk, as a torn write-back would."""
    sc = make_sidecar(pod="default/tear-0", extra=["-lazy"])
    done = sc.ctl(
        "fault",
        "set",
        "--pod",
        sc.pod,
        "--action",
        "power-cut",
        "--methods",
        "fsync",
        "--after",
        "1",
        "--count",
        "1",
        "--tear-keep",
        "1500",
        "--id",
        "torn",
    )
    assert done.returncode == 0, done.stderr
    cmd = [sys.executable, str(RECORDS), "records", str(sc.mountpoint), "--records", "6",
           "--size", str(SIZE), "--sync-at", "1,5"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cut = cut_done(sc, "torn")
    assert acknowledged(proc) == [2]  # the first fsync returned; the second never ran
    assert cut["operation"] == 2 and cut["survivors"] == []
    survived = (sc.original / "records.bin").read_bytes()
    assert survived == records(0, 2) + records(2, 6)[:1500]
