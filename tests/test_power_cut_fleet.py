"""A fleet-wide power cut, as an operator runs it: chaosctl, selectors, the audit trail.

Three lazy sidecars on one real nats-server, each with a writer process holding
its log open: two pods in namespace ``db``, one in ``web``. One ``chaosctl fault
power-cut --fleet --namespace db`` must kill exactly the two db writers, lose
exactly their unsynced records, leave the web pod alone, say so in its JSON, and
leave one ``power.cut`` audit event per pod that names the killed process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lazy_records import record
from test_fleet import audit

from conftest import chaosctl, wait_for

RECORDS = Path(__file__).resolve().parent / "lazy_records.py"
SIZE = 1000


def writer(mountpoint: Path) -> subprocess.Popen[str]:
    """Twelve records, fsynced after the eighth; then it waits with the file open."""
    cmd = [sys.executable, str(RECORDS), "records", str(mountpoint)]
    proc = subprocess.Popen(
        [*cmd, "--records", "12", "--size", str(SIZE), "--sync-at", "7"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "written" in json.loads(line):
            return proc
    raise AssertionError(f"the writer ended early with {proc.wait()}")


def test_power_cut_by_namespace_hits_only_the_matching_pods(make_sidecar, nats_server):
    url = nats_server.url
    pods = {
        "db/pg-0": make_sidecar(pod="db/pg-0", extra=["-lazy"]),
        "db/pg-1": make_sidecar(pod="db/pg-1", extra=["-lazy"]),
        "web/api-0": make_sidecar(pod="web/api-0", extra=["-lazy"]),
    }
    writers = {pod: writer(sc.mountpoint) for pod, sc in pods.items()}
    everything = b"".join(record(n, SIZE) for n in range(12))
    synced = b"".join(record(n, SIZE) for n in range(8))
    try:
        for sc in pods.values():
            assert (sc.mountpoint / "records.bin").read_bytes() == everything
        done = chaosctl(url, "fault", "power-cut", "--fleet", "--namespace", "db", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(done.stdout)
        assert sorted(result["acked"]) == ["db/pg-0", "db/pg-1"]
        assert result["missing"] == [] and result["errors"] == []
        for pod in ("db/pg-0", "db/pg-1"):
            reply = result["results"][pod]
            assert [k["pid"] for k in reply["killed"]] == [writers[pod].pid], reply
            assert reply["lost"]["files"] == {"records.bin": 4 * SIZE}
            assert writers[pod].wait(5) == -9
            assert (pods[pod].mountpoint / "records.bin").read_bytes() == synced
        # The pod outside the selector: its writer lives, its unsynced data is still there.
        assert writers["web/api-0"].poll() is None
        assert (pods["web/api-0"].mountpoint / "records.bin").read_bytes() == everything
        status = chaosctl(url, "status", "--pod", "db/pg-0", "--json")
        assert status.returncode == 0, status.stderr
        lazy = json.loads(status.stdout)["lazy"]
        assert lazy["stats"]["lost_bytes"] == 4 * SIZE and lazy["unsynced_files"] == 0

        wait_for(lambda: len(audit(url, "--kind", "power.cut")) == 2, what="power.cut events")
        events = audit(url, "--kind", "power.cut")
        assert sorted(e["pod"] for e in events) == ["db/pg-0", "db/pg-1"]
        for event in events:
            assert event["fleet"] is True and "@" in event["actor"]
            assert [k["pid"] for k in event["killed"]] == [writers[event["pod"]].pid]
            assert event["bytes"] == 4 * SIZE
        assert audit(url, "--kind", "power.cut", "--pod", "web/api-0") == []
    finally:
        for proc in writers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_a_fleet_cut_that_leaves_a_process_alive_exits_1(make_sidecar, nats_server):
    sc = make_sidecar(pod="web/api-0", extra=["-lazy"])
    proc = writer(sc.mountpoint)
    try:
        done = chaosctl(nats_server.url, "fault", "power-cut", "--fleet", "--signal", "STOP",
                        "--json")  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        result = json.loads(done.stdout)
        assert result["acked"] == ["web/api-0"] and result["errors"] == []
        assert [p["pid"] for p in result["results"]["web/api-0"]["survivors"]] == [proc.pid]
    finally:
        proc.kill()
        proc.wait(5)
