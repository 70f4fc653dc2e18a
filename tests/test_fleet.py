"""The fleet: broadcasts with acknowledgements, the registry, desired state that
survives restarts, and the audit trail."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from signals import audit, log_offset, sleep_past, wait_desired_state_read

from conftest import AGENTS_CMD, BIN, chaosctl, wait_for


def ctl_json(url: str, *args: str) -> tuple[int, object]:
    done = chaosctl(url, "--json", *args)
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON: {done.stdout!r} {done.stderr!r}") from None


def rule_ids(sc) -> list[str]:
    return sorted(r["id"] for r in sc.request({"op": "status"})["rules"])


def rules_by_id(sc) -> dict[str, dict]:
    return {r["id"]: r for r in sc.request({"op": "status"})["rules"]}


@pytest.fixture
def fleet(make_sidecar):
    return {
        "a/tikv-0": make_sidecar(
            "a/tikv-0", env={"POD_LABELS": "app=tikv"}, extra=["-heartbeat", "300ms"]
        ),
        "a/pd-0": make_sidecar(
            "a/pd-0", env={"POD_LABELS": "app=pd"}, extra=["-heartbeat", "300ms"]
        ),
        "b/tikv-0": make_sidecar(
            "b/tikv-0", env={"POD_LABELS": "app=tikv"}, extra=["-heartbeat", "300ms"]
        ),
    }


def registered(url: str, n: int) -> bool:
    code, data = ctl_json(url, "sidecars")
    return code == 0 and sum(not e["lost"] for e in data) == n


def test_broadcast_reaches_every_matching_sidecar_and_says_so(fleet, nats_server):
    url = nats_server.url
    wait_for(lambda: registered(url, 3), what="3 registered sidecars")
    done = chaosctl(
        url,
        "fault",
        "broadcast",
        "--selector",
        "app=tikv",
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--methods",
        "read",
        "--id",
        "sick",
    )
    assert done.returncode == 0, done.stderr
    assert "applied on 2 of 2 sidecars" in done.stdout
    assert rule_ids(fleet["a/tikv-0"]) == ["sick"] and rule_ids(fleet["b/tikv-0"]) == ["sick"]
    assert rule_ids(fleet["a/pd-0"]) == []

    code, data = ctl_json(
        url,
        "fault",
        "broadcast",
        "--namespace",
        "a",
        "--action",
        "latency",
        "--delay",
        "1ms",
        "--id",
        "slow",
    )
    assert code == 0 and data == {"acked": ["a/pd-0", "a/tikv-0"], "missing": [], "errors": []}
    code, data = ctl_json(
        url,
        "fault",
        "broadcast",
        "--pods",
        "pd-*",
        "--action",
        "latency",
        "--delay",
        "1ms",
        "--id",
        "pds",
    )
    assert code == 0 and data["acked"] == ["a/pd-0"]

    code, data = ctl_json(url, "fault", "recover", "--fleet", "--id", "sick")
    assert code == 0 and sorted(data["acked"]) == ["a/pd-0", "a/tikv-0", "b/tikv-0"]
    assert rule_ids(fleet["a/tikv-0"]) == ["slow"]
    code, data = ctl_json(url, "fault", "recover", "--fleet", "--all")
    assert code == 0 and all(rule_ids(sc) == [] for sc in fleet.values())


def test_a_sidecar_that_does_not_answer_is_named_and_fails_the_command(fleet, nats_server):
    url = nats_server.url
    wait_for(lambda: registered(url, 3), what="3 registered sidecars")
    fleet["b/tikv-0"].proc.send_signal(signal.SIGSTOP)  # alive and registered, but mute
    try:
        done = chaosctl(
            url,
            "--timeout",
            "1.5s",
            "--json",
            "fault",
            "broadcast",
            "--selector",
            "app=tikv",
            "--action",
            "errno",
            "--errno",
            "EIO",
        )
        data = json.loads(done.stdout)
        assert done.returncode != 0
        assert data["acked"] == ["a/tikv-0"] and data["missing"] == ["b/tikv-0"]
        text = chaosctl(
            url,
            "--timeout",
            "1s",
            "fault",
            "broadcast",
            "--selector",
            "app=tikv",
            "--action",
            "errno",
            "--errno",
            "EIO",
        )
        assert "applied on 1 of 2 sidecars" in text.stdout and "b/tikv-0" in text.stdout
    finally:
        fleet["b/tikv-0"].proc.send_signal(signal.SIGCONT)


def test_errors_are_reported_per_sidecar(fleet, nats_server):
    url = nats_server.url
    wait_for(lambda: registered(url, 3), what="3 registered sidecars")
    # 1020 rules fill a tikv sidecar up; the next broadcast fails there only.
    rules = [
        {"id": f"f{i}", "action": "latency", "delay": 0.001, "path": f"n{i}"} for i in range(1024)
    ]
    assert fleet["a/tikv-0"].request({"op": "set", "rules": rules})["ok"]
    code, data = ctl_json(
        url,
        "fault",
        "broadcast",
        "--namespace",
        "a",
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--id",
        "one-more",
    )
    assert code == 1
    assert data["acked"] == ["a/pd-0"]
    assert data["errors"][0]["pod"] == "a/tikv-0" and "at most 1024" in data["errors"][0]["error"]


def test_registry_lists_sidecars_and_marks_the_lost(fleet, nats_server):
    url = nats_server.url
    wait_for(lambda: registered(url, 3), what="3 registered sidecars")
    fleet["a/tikv-0"].request(
        {"op": "set", "rules": [{"id": "r", "action": "errno", "errno": "EIO", "path": "x"}]}
    )
    code, data = ctl_json(url, "sidecars")
    assert code == 0 and [e["pod"] for e in data] == ["a/pd-0", "a/tikv-0", "b/tikv-0"]
    entry = next(e for e in data if e["pod"] == "a/tikv-0")
    assert entry["version"] and entry["mountpoint"] == str(fleet["a/tikv-0"].mountpoint)
    wait_for(
        lambda: (
            next(e for e in ctl_json(url, "sidecars")[1] if e["pod"] == "a/tikv-0")["rules"]
            == [{"id": "r", "action": "errno", "fired": 0}]
        ),
        what="rules in registry",
    )
    fleet["a/pd-0"].stop(signal.SIGKILL)  # no goodbye: it must show as lost
    wait_for(
        lambda: next(e for e in ctl_json(url, "sidecars")[1] if e["pod"] == "a/pd-0")["lost"],
        timeout=5,
        what="a/pd-0 lost",
    )
    fleet["b/tikv-0"].stop()  # a clean stop leaves the registry
    wait_for(
        lambda: "b/tikv-0" not in [e["pod"] for e in ctl_json(url, "sidecars")[1]],
        what="b/tikv-0 gone",
    )
    text = chaosctl(url, "sidecars", "--namespace", "a").stdout
    assert "lost" in text and "alive" in text and "b/tikv-0" not in text


def test_desired_state_survives_kill_9_and_reaches_late_sidecars(make_sidecar, nats_server):
    url = nats_server.url
    sc = make_sidecar("a/db-0", env={"POD_LABELS": "app=db"})
    assert (
        chaosctl(
            url,
            "fault",
            "set",
            "--pod",
            "a/db-0",
            "--action",
            "errno",
            "--errno",
            "EIO",
            "--methods",
            "read",
            "--id",
            "keep",
        ).returncode
        == 0
    )
    assert (
        chaosctl(
            url,
            "fault",
            "broadcast",
            "--selector",
            "app=db",
            "--action",
            "latency",
            "--delay",
            "1ms",
            "--id",
            "everyone",
        ).returncode
        == 0
    )
    assert (
        chaosctl(
            url,
            "fault",
            "set",
            "--pod",
            "a/db-0",
            "--action",
            "errno",
            "--errno",
            "EIO",
            "--id",
            "brief",
            "--ttl",
            "2s",
            "--path",
            "nothing",
        ).returncode
        == 0
    )
    # "brief" is set last, with room for a loaded machine: it must still be in force
    # here and expire only once the sidecar is down.
    held = rules_by_id(sc)
    assert sorted(held) == ["brief", "everyone", "keep"]
    brief_expires_at = held["brief"]["expires_at"]
    sc.stop(signal.SIGKILL)
    # "brief" expires while the sidecar is down: time passing is what is tested here.
    sleep_past(brief_expires_at)
    sc.start()
    wait_for(lambda: rule_ids(sc) == ["everyone", "keep"], what="rules restored from KV")
    (sc.mountpoint / "f").write_text("x")
    with pytest.raises(OSError):
        (sc.mountpoint / "f").read_text()

    # A sidecar that starts after the broadcast still gets the fleet's rules.
    late = make_sidecar("a/db-1", env={"POD_LABELS": "app=db"})
    wait_for(lambda: rule_ids(late) == ["everyone"], what="the late sidecar converged")
    other = make_sidecar("a/web-0", env={"POD_LABELS": "app=web"})
    # It has read the fleet's entries ("everyone" among them) and converged on them.
    wait_desired_state_read(other, fleet=1)
    assert rule_ids(other) == []

    # Recover takes rules out of desired state: a restart does not bring them back.
    assert chaosctl(url, "fault", "recover", "--pod", "a/db-0", "--id", "keep").returncode == 0
    assert chaosctl(url, "fault", "recover", "--pod", "a/db-0", "--id", "everyone").returncode == 0
    sc.stop(signal.SIGKILL)
    since = log_offset(sc)
    sc.start()
    # The restarted sidecar has read its desired state, the withdrawal included.
    wait_desired_state_read(sc, since, fleet=1)
    assert rule_ids(sc) == []
    assert rule_ids(late) == ["everyone"]  # withdrawn from a/db-0 only


def test_status_shows_drift_from_desired_state(sidecar, nats_server):
    url = nats_server.url
    assert (
        sidecar.ctl(
            "fault",
            "set",
            "--pod",
            sidecar.pod,
            "--action",
            "errno",
            "--errno",
            "EIO",
            "--id",
            "d1",
            "--path",
            "x",
        ).returncode
        == 0
    )
    _code, data = ctl_json(url, "status", "--pod", sidecar.pod)
    assert data["drift"] == {"missing": [], "unexpected": [], "different": []}
    assert "desired state: in sync" in sidecar.ctl("status", "--pod", sidecar.pod).stdout
    # Behind chaosctl's back: a raw command drops the rule, another adds one.
    sidecar.request({"op": "recover", "id": "d1"})
    sidecar.request({"op": "set", "rules": [{"id": "rogue", "action": "latency", "delay": 0.01}]})
    _, data = ctl_json(url, "status", "--pod", sidecar.pod)
    assert data["drift"] == {"missing": ["d1"], "unexpected": ["rogue"], "different": []}
    text = sidecar.ctl("status", "--pod", sidecar.pod).stdout
    assert "missing: d1" in text and "unexpected: rogue" in text


def test_audit_trail_replays_filters_and_follows(sidecar, nats_server):
    url = nats_server.url
    sidecar.ctl(
        "fault",
        "set",
        "--pod",
        sidecar.pod,
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--id",
        "a1",
        "--path",
        "x",
    )
    sidecar.request({"op": "set", "rules": [{"action": "melt"}], "actor": "mallory@evil"})
    sidecar.ctl("fault", "recover", "--pod", sidecar.pod, "--all")
    wait_for(lambda: any(e["kind"] == "rule.recovered" for e in audit(url)), what="audit")
    events = audit(url)
    kinds = [e["kind"] for e in events]
    assert kinds.index("sidecar.ready") < kinds.index("rule.set") < kinds.index("rule.recovered")
    for e in events:
        assert {"kind", "pod", "time", "id", "v", "actor"} <= set(e)
    rule_set = next(e for e in events if e["kind"] == "rule.set")
    assert rule_set["pod"] == sidecar.pod and "@" in rule_set["actor"]
    assert rule_set["rules"][0]["id"] == "a1"
    rejected = next(e for e in events if e["kind"] == "rule.rejected")
    assert rejected["actor"] == "mallory@evil" and "action must be one of" in rejected["reason"]
    assert [e["kind"] for e in audit(url, "--kind", "rule.set")] == ["rule.set"]
    assert audit(url, "--pod", "other/pod") == []
    assert all(e["seq"] >= 3 for e in audit(url, "--since-seq", "3"))
    assert len(audit(url, "--since", "10m")) == len(events)
    assert "rule.set" in chaosctl(url, "audit").stdout  # the human form

    follower = subprocess.Popen(
        [str(BIN / "chaosctl"), "--nats", url, "audit", "--json", "--follow", "--kind", "rule.set"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(follower.stdout.readline())
        assert first["rules"][0]["id"] == "a1"
        sidecar.ctl(
            "fault",
            "set",
            "--pod",
            sidecar.pod,
            "--action",
            "errno",
            "--errno",
            "EIO",
            "--id",
            "a2",
            "--path",
            "x",
        )
        second = json.loads(follower.stdout.readline())
        assert second["rules"][0]["id"] == "a2"
    finally:
        follower.terminate()
        follower.wait(5)


def test_nats_restart_keeps_desired_state_and_the_audit_trail(make_sidecar, nats_server):
    url = nats_server.url
    sc = make_sidecar("a/db-0", env={"POD_LABELS": "app=db"})
    assert (
        chaosctl(
            url,
            "fault",
            "set",
            "--pod",
            "a/db-0",
            "--action",
            "errno",
            "--errno",
            "EIO",
            "--id",
            "kept",
            "--path",
            "x",
        ).returncode
        == 0
    )
    assert (
        chaosctl(
            url,
            "fault",
            "broadcast",
            "--selector",
            "app=db",
            "--action",
            "latency",
            "--delay",
            "1ms",
            "--id",
            "fleetwide",
        ).returncode
        == 0
    )
    before = audit(url)
    assert any(e["kind"] == "rule.set" for e in before)
    nats_server.stop()
    nats_server.start()  # same store directory: JetStream files survive
    wait_for(
        lambda: chaosctl(url, "status", "--pod", "a/db-0").returncode == 0,
        timeout=20,
        what="the sidecar back on the bus",
    )
    after = audit(url)
    assert [e["id"] for e in after[: len(before)]] == [e["id"] for e in before]
    # Desired state is intact: a sidecar that restarts now converges to it.
    sc.stop(signal.SIGKILL)
    sc.start()
    wait_for(lambda: rule_ids(sc) == ["fleetwide", "kept"], what="rules from KV after restart")
    _, data = ctl_json(url, "status", "--pod", "a/db-0")
    assert data["drift"] == {"missing": [], "unexpected": [], "different": []}


def test_bad_input_on_the_fleet_subject_and_in_desired_state(sidecar, nats_server):
    import asyncio

    import nats as nats_client

    from chaosbus import codec, desired
    from chaosbus.subjects import FLEET_COMMAND

    url = nats_server.url
    sidecar.ctl(
        "fault",
        "set",
        "--pod",
        sidecar.pod,
        "--action",
        "errno",
        "--errno",
        "EIO",
        "--id",
        "keep",
        "--path",
        "x",
    )

    async def poke() -> list[dict]:
        nc = await nats_client.connect(url)
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.flush()
        for bad in (b"\xc1junk", codec.encode({"op": "set", "rules": [{"action": "melt"}]})):
            await nc.publish(FLEET_COMMAND, bad, reply=inbox)
        replies = [codec.decode((await sub.next_msg(timeout=5)).data) for _ in range(2)]
        kv = await nc.jetstream().key_value(desired.BUCKET)
        ns, name = sidecar.pod.split("/")
        await kv.put(desired.pod_key(ns, name, "garbage"), b"\x00not msgpack")
        await nc.close()
        return replies

    replies = asyncio.run(poke())
    assert all(r["ok"] is False and r["error"] for r in replies)
    wait_for(
        lambda: any(e["kind"] == "desired.rejected" for e in audit(url)),
        what="the unreadable desired entry audited",
    )
    assert rule_ids(sidecar) == ["keep"]
    assert sidecar.proc.poll() is None
    rejected = [e for e in audit(url) if e["kind"] == "rule.rejected"]
    assert len(rejected) >= 2


def test_three_sidecars_and_200_agents_broadcast_by_namespace(make_sidecar, nats_server, tmp_path):
    url = nats_server.url
    for i in range(3):
        make_sidecar(f"mounted/db-{i}", env={"POD_LABELS": "app=db"})
    agents = [
        subprocess.Popen(
            [
                *AGENTS_CMD,
                "--nats",
                url,
                "--count",
                "100",
                "--namespace",
                ns,
                "--labels",
                "app=db",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"{ns}.log", "wb"),  # noqa: SIM115
        )
        for ns in ("agents-a", "agents-b")
    ]
    try:
        wait_for(lambda: registered(url, 203), timeout=60, interval=0.5, what="203 sidecars")
        code, data = ctl_json(
            url,
            "--timeout",
            "10s",
            "fault",
            "broadcast",
            "--namespace",
            "agents-a",
            "--action",
            "errno",
            "--errno",
            "EIO",
            "--id",
            "a-only",
        )
        assert code == 0, data
        assert len(data["acked"]) == 100 and data["missing"] == [] and data["errors"] == []
        assert all(p.startswith("agents-a/") for p in data["acked"])
        code, data = ctl_json(
            url,
            "--timeout",
            "10s",
            "fault",
            "broadcast",
            "--selector",
            "app=db",
            "--action",
            "latency",
            "--delay",
            "1ms",
            "--id",
            "everyone",
        )
        assert code == 0 and len(data["acked"]) == 203
        code, data = ctl_json(url, "--timeout", "10s", "fault", "recover", "--fleet", "--all")
        assert code == 0 and len(data["acked"]) == 203
    finally:
        for proc in agents:
            proc.terminate()
        for proc in agents:
            proc.wait(30)
