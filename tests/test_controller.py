"""chaos-controller end to end: real nats-server, real chaosfs mounts, the real controller.

Each test applies experiments, then checks what a user would see: which pods'
files fail, the experiment's status and its audit trail.
"""

from __future__ import annotations

import errno
import itertools
import time
from pathlib import Path

import pytest
from controller_helpers import (
    Controller,
    audit,
    io_chaos,
    put,
    set_flags,
    spec_exists,
    status,
    wait_status,
)

from conftest import chaosctl, wait_for


def faulted(sc) -> bool:
    """Does opening a file through this sidecar's mount fail with EIO now?"""
    try:
        with open(sc.path("probe")):
            return False
    except OSError as exc:
        assert exc.errno == errno.EIO, exc
        return True


@pytest.fixture
def controller(nats_server, tmp_path: Path):
    ctl = Controller(nats_server.url, tmp_path / "controller.log")
    ctl.start()
    yield ctl
    ctl.stop()


def tikv(make_sidecar, n: int, namespace: str = "default", app: str = "tikv"):
    out = []
    for i in range(n):
        sc = make_sidecar(
            f"{namespace}/{app}-{i}", env={"POD_LABELS": f"app={app}"}, extra=["-heartbeat", "1s"]
        )
        (sc.original / "probe").write_text("x")
        out.append(sc)
    return out


def running(st) -> bool:
    return st.phase == "Running" and st.run >= 1


def test_each_mode_picks_the_right_pods(make_sidecar, nats_server, controller):
    url = nats_server.url
    pods = tikv(make_sidecar, 5)
    cases = [
        ("one", None, 1),
        ("all", None, 5),
        ("fixed", "2", 2),
        ("fixed-percent", "40", 2),
    ]
    for mode, value, expected in cases:
        spec = {"mode": mode, **({"value": value} if value else {})}
        ref = put(url, io_chaos(f"mode-{mode}", **spec))
        st = wait_status(url, ref, running, what=f"{mode} running")
        assert len(st.selected) == expected, (mode, st.selected)
        assert st.acked == st.selected and st.missing == []
        hit = sorted(sc.pod for sc in pods if faulted(sc))
        assert hit == st.selected, (mode, hit, st.selected)
        set_flags(url, ref, deleting=True)
        wait_for(lambda ref=ref: not spec_exists(url, ref), what=f"{mode} deleted")
        assert not any(faulted(sc) for sc in pods), f"{mode}: a fault outlived its experiment"
        injected = audit(url, ref, "experiment.injected")
        assert sorted(e["pod"] for e in injected) == st.selected
        assert [e["kind"] for e in audit(url, ref, "experiment.deleted")] == ["experiment.deleted"]
    # random-max-percent 60 of 5: never more than 3 pods, over several runs.
    ref = put(url, io_chaos("mode-rmp", mode="random-max-percent", value="60"))
    st = wait_status(url, ref, lambda s: s.phase in ("Running", "Failed") and s.run >= 1)
    assert len(st.selected) <= 3


def test_duration_recovers_on_time_and_schedule_repeats_without_overlap(
    make_sidecar, nats_server, controller
):
    url = nats_server.url
    (sc,) = tikv(make_sidecar, 1)
    ref = put(url, io_chaos("short", duration="2s"))
    st = wait_status(url, ref, running)
    assert faulted(sc)
    wait_for(lambda: not faulted(sc), timeout=10, what="the fault to end")
    late = time.time() - st.ends_at
    assert late < 1.0, f"recovered {late:.2f}s after the run's end"
    st = wait_status(url, ref, lambda s: s.phase == "Finished")
    assert st.pods[sc.pod].outcome == "recovered"
    set_flags(url, ref, deleting=True)
    wait_for(lambda: not spec_exists(url, ref), what="deleted")

    # Every 2 s, for 1 s: at least three runs, each starting after the previous ended.
    ref = put(url, io_chaos("every", duration="1s", scheduler={"cron": "@every 2s"}))
    wait_status(url, ref, lambda s: s.run >= 3 and s.phase == "Waiting", timeout=20)
    events = audit(url, ref)
    started = [e for e in events if e["kind"] == "experiment.started"]
    recovered = [e for e in events if e["kind"] == "experiment.recovered"]
    assert len(started) >= 3 and len(recovered) >= 2
    # Chaos Mesh's cron library rounds @every ticks to whole seconds: the first gap
    # may be shorter than 2 s, none may be longer than 2 s plus a little.
    for first, second in itertools.pairwise(started):
        assert 1.0 <= second["time"] - first["time"] <= 2.5
    for run in range(1, 3):
        end = next(e["time"] for e in recovered if e["run"] == run)
        nxt = next(e["time"] for e in started if e["run"] == run + 1)
        assert end <= nxt, f"run {run + 1} started before run {run} was recovered"


def test_pause_recovers_resume_reapplies_delete_recovers_first(
    make_sidecar, nats_server, controller
):
    url = nats_server.url
    (sc,) = tikv(make_sidecar, 1)
    ref = put(url, io_chaos("pausable"))
    wait_status(url, ref, running)
    assert faulted(sc)
    set_flags(url, ref, paused=True)
    wait_status(url, ref, lambda s: s.phase == "Paused")
    assert not faulted(sc)
    set_flags(url, ref, paused=False)
    wait_status(url, ref, lambda s: s.phase == "Running" and s.run == 2)
    assert faulted(sc)
    set_flags(url, ref, deleting=True)
    wait_for(lambda: not spec_exists(url, ref), what="deleted")
    assert not faulted(sc)
    assert status(url, ref) is None
    kinds = [e["kind"] for e in audit(url, ref)]
    for kind in ("paused", "resumed", "recovered", "deleted"):
        assert f"experiment.{kind}" in kinds
    # Deleted only after its pod was recovered.
    assert kinds.index("experiment.deleted") > max(
        i for i, k in enumerate(kinds) if k == "experiment.recovered"
    )
    # Paused before its first run: nothing happens until resumed, then it runs.
    ref = put(url, io_chaos("born-paused", duration="30s"), paused=True)
    wait_status(url, ref, lambda s: s.phase == "Paused" and s.run == 0)
    assert not faulted(sc)
    set_flags(url, ref, paused=False)
    wait_status(url, ref, running)
    assert faulted(sc)


def test_a_pod_that_comes_up_during_a_mode_all_run_is_faulted_too(
    make_sidecar, nats_server, controller
):
    url = nats_server.url
    first = tikv(make_sidecar, 1)[0]
    ref = put(url, io_chaos("everyone"))
    wait_status(url, ref, running)
    late = make_sidecar("default/tikv-late", env={"POD_LABELS": "app=tikv"})
    (late.original / "probe").write_text("x")
    st = wait_status(url, ref, lambda s: late.pod in s.acked, what="the late pod to be injected")
    assert faulted(late) and faulted(first)
    assert sorted(st.selected) == sorted([first.pod, late.pod])


def test_a_missing_sidecar_is_recorded_and_does_not_stop_the_others(
    make_sidecar, nats_server, controller
):
    url = nats_server.url
    (sc,) = tikv(make_sidecar, 1)
    selector = {"pods": {"default": ["tikv-0", "tikv-gone"]}}
    ref = put(url, io_chaos("partly", selector=selector))
    st = wait_status(url, ref, running)
    assert st.pods["default/tikv-0"].outcome == "injected"
    assert st.pods["default/tikv-gone"].outcome == "missing"
    assert faulted(sc)
    # Neither the pod that never answered nor one deleted meanwhile holds up deletion.
    sc.stop()
    started = time.monotonic()
    set_flags(url, ref, deleting=True)
    wait_for(lambda: not spec_exists(url, ref), what="the deletion to finish")
    assert time.monotonic() - started < 5.0
    (deleted,) = audit(url, ref, "experiment.deleted")
    assert sorted(deleted["recovered"]) == ["default/tikv-0", "default/tikv-gone"]


def test_kill_9_mid_experiment_resumes_same_pods_and_recovers_on_time(
    make_sidecar, nats_server, controller
):
    url = nats_server.url
    pods = tikv(make_sidecar, 3)
    ref = put(url, io_chaos("survives", mode="fixed", value="2", duration="6s"))
    before = wait_status(url, ref, running)
    controller.kill()
    controller.start()
    hit = sorted(sc.pod for sc in pods if faulted(sc))
    assert hit == before.selected
    after = wait_status(url, ref, lambda s: s.phase == "Finished", timeout=20)
    assert after.selected == before.selected and after.run == 1
    assert time.time() - before.ends_at < 3.0
    assert not any(faulted(sc) for sc in pods)
    injected = audit(url, ref, "experiment.injected")
    assert sorted(e["pod"] for e in injected) == before.selected  # exactly one per pod

    # With the controller dead for good, the faults still end with the run.
    ref = put(url, io_chaos("orphaned", duration="3s"))
    st = wait_status(url, ref, running)
    controller.kill()
    assert all(faulted(sc) for sc in pods)
    wait_for(lambda: not any(faulted(sc) for sc in pods), timeout=10, what="sidecar expiry")
    assert time.time() - st.ends_at < 1.5


def test_two_replicas_never_both_run_an_experiment(make_sidecar, nats_server, tmp_path):
    url = nats_server.url
    (sc,) = tikv(make_sidecar, 1)
    a = Controller(url, tmp_path / "a.log", "ctl-a")
    b = Controller(url, tmp_path / "b.log", "ctl-b")
    a.start()
    b.start(wait_leading=False)
    try:
        wait_for(lambda: "lease_standby" in b.log.read_text(), what="b to stand by")
        ref = put(url, io_chaos("single"))
        wait_status(url, ref, running)
        assert not b.leading_since()
        a.kill()  # b takes over once the lease expires, and re-injects nothing
        wait_for(b.leading_since, timeout=10, what="b to lead")
        set_flags(url, ref, deleting=True)
        wait_for(lambda: not spec_exists(url, ref), what="b to finish the deletion")
        assert not faulted(sc)
        assert len(audit(url, ref, "experiment.injected")) == 1
    finally:
        a.stop()
        b.stop()


def test_bad_entries_change_nothing_and_the_controller_lives(make_sidecar, nats_server, controller):
    import asyncio

    import nats

    from chaosbus import codec
    from chaosbus.experiments.store import SPECS

    url = nats_server.url
    (sc,) = tikv(make_sidecar, 1)

    async def poison() -> None:
        nc = await nats.connect(url)
        kv = await nc.jetstream().key_value(SPECS)
        await kv.put("default.garbage", b"\xc1not msgpack")
        await kv.put("default.wrongtypes", codec.encode({"v": 1, "manifest": [], "source": 3}))
        await nc.close()

    asyncio.run(poison())
    bad = put(url, io_chaos("badmode", mode="sometimes"))
    st = wait_status(url, bad, lambda s: s.phase == "Failed")
    assert "mode" in st.message
    good = put(url, io_chaos("good"))
    wait_status(url, good, running)
    assert faulted(sc)
    rejected = audit(url, None, "experiment.rejected")
    assert {e["experiment"] for e in rejected} >= {"default/garbage", "default/wrongtypes"}
    assert controller.proc is not None and controller.proc.poll() is None


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "experiments"


def test_the_three_chaos_mesh_v09_examples_run_unchanged(make_sidecar, nats_server, controller):
    url = nats_server.url
    # io-mixed selects TiKV pods in another namespace, as its Chaos Mesh original did.
    pods = tikv(make_sidecar, 2, namespace="chaos-testing")
    pods += tikv(make_sidecar, 1, namespace="tidb-cluster-demo")
    files = [str(EXAMPLES / f"io-{name}.yaml") for name in ("delay", "errno", "mixed")]
    args = [a for f in files for a in ("-f", f)]
    done = chaosctl(url, "apply", *args, "--wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" created") == 3, done.stdout
    actions = {}
    for name, action in (("delay", "latency"), ("errno", "errno"), ("mixed", "mixed")):
        ref = f"chaos-testing/io-{name}-example"
        st = wait_status(url, ref, running)
        assert len(st.selected) == 1 and st.acked == st.selected  # mode one
        (sc,) = [sc for sc in pods if sc.pod == st.selected[0]]
        rules = {r["id"]: r for r in sc.request({"op": "status"})["rules"]}
        (rule,) = [r for i, r in rules.items() if i in st.rule_ids]
        actions[name] = rule
        assert rule["action"] == action and rule["percent"] == 50
        assert rule["expires_at"] == pytest.approx(st.ends_at)
    assert actions["mixed"]["path_regex"]
    done = chaosctl(url, "delete", *args)
    assert done.returncode == 0, done.stderr
    for sc in pods:
        assert not [r for r in sc.request({"op": "status"})["rules"] if r["id"].startswith("exp-")]
