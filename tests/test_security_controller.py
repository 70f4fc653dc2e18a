"""chaos-controller and chaosctl's experiment verbs on the locked-down NATS of
deploy/nats/nats.conf.

The same server as tests/test_security.py (the shipped file, TLS, the role
passwords from the environment) with the real template-watcher, a real chaosfs
sidecar, the real chaos-controller as the ``controller`` user and the real
chaosctl as the ``operator``: an experiment goes from ``chaosctl apply`` to a
fault on the pod and back, and nobody asks for anything the file refuses. Then
each thing the controller has no business doing is tried with its credentials
and refused, as are the sidecar's (and the other roles') attempts to start or
fake an experiment.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controller_helpers import Controller, io_chaos
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RePublish, StreamConfig
from test_security import POD, Probe, SecureBus, SecureSidecar
from test_security import sidecar as sidecar  # fixture, set up on this module's bus
from test_security import watcher as watcher  # fixture, likewise

from chaosbus import codec, desired
from chaosbus.audit import STREAM as AUDIT_STREAM
from chaosbus.audit import audit_subject, make_event
from chaosbus.experiments.store import LEASE, SPECS, STATUS, SpecEntry, key_of
from chaosbus.injection import NAMESPACES_BUCKET, RENDERINGS_BUCKET
from chaosbus.registry import BUCKET as REGISTRY_BUCKET
from chaosbus.subjects import FLEET_COMMAND, pod_command
from conftest import wait_for

EXPERIMENT = "a/eio"
NS, NAME = POD.split("/")


class ControllerBus(SecureBus):
    """SecureBus with a password for the controller user as well (nats.conf needs it)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        if "controller" not in self.passwords:
            self.passwords["controller"] = "p" + secrets.token_hex(20)
            self.password_file("controller").write_text(self.passwords["controller"] + "\n")


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBus]:
    server = ControllerBus(tmp_path_factory.mktemp("secure-nats-controller"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def controller(bus: SecureBus, sidecar: SecureSidecar) -> Iterator[Controller]:
    """The real chaos-controller with the controller user's credentials, leading."""
    c = Controller(bus.url, bus.root / "controller.log", "ctl-0", *bus.flags("controller"))
    c.start()
    yield c
    c.stop()


def write_manifest(bus: SecureBus, manifest: dict[str, Any], name: str) -> Path:
    path = bus.root / name
    path.write_text(json.dumps(manifest))
    return path


def eio_experiment() -> dict[str, Any]:
    """Chaos Mesh v0.9 IoChaos: EIO on every open on the pods labelled app=db in
    namespace a, until deleted."""
    manifest = io_chaos("eio", selector={"labelSelectors": {"app": "db"}})
    manifest["metadata"]["namespace"] = NS
    return manifest


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.args, done.stdout, done.stderr)
    assert "warning" not in done.stderr, done.stderr
    return done.stdout


def opens(sidecar: SecureSidecar) -> bool:
    """Whether a file on the pod's mount opens (the experiment fails every open)."""
    try:
        (sidecar.mountpoint / "f").read_text()
    except OSError:
        return False
    return True


# --- the legitimate path ----------------------------------------------------------------------


def test_an_experiment_runs_end_to_end_with_the_controller_and_operator_users(
    bus: SecureBus,
    sidecar: SecureSidecar,
    request: pytest.FixtureRequest,
) -> None:
    (sidecar.original / "f").write_text("data")
    assert opens(sidecar)
    wait_for(
        lambda: [e["pod"] for e in bus.ctl_json("sidecars") if not e["lost"]] == [POD],
        what="the sidecar in the registry",
    )
    # Before any controller ran: chaosctl makes the experiment buckets itself.
    path = write_manifest(bus, eio_experiment(), "eio.json")
    assert "created" in ok(bus.ctl("apply", "-f", str(path)))
    assert [r["experiment"] for r in bus.ctl_json("experiments")] == [EXPERIMENT]

    request.getfixturevalue("controller")  # now the controller starts, and runs it
    status = wait_for(
        lambda: (bus.ctl_json("experiment", "describe", EXPERIMENT)["status"] or {}).get("pods"),
        timeout=15,
        what="the controller to inject the pod",
    )
    assert status == {POD: {"outcome": "injected", "error": None, "time": status[POD]["time"]}}
    assert not opens(sidecar)
    described = bus.ctl_json("experiment", "describe", EXPERIMENT)
    assert described["status"]["phase"] == "Running"
    kinds = [e["kind"] for e in described["events"]]  # the controller's audit events
    assert "experiment.started" in kinds and "experiment.injected" in kinds, kinds

    # Applying the same manifest again is a no-op; pause and resume go through the controller.
    assert "unchanged" in ok(bus.ctl("apply", "-f", str(path), "--wait"))
    assert "paused" in ok(bus.ctl("experiment", "pause", EXPERIMENT))
    assert opens(sidecar)
    assert "resumed" in ok(bus.ctl("experiment", "resume", EXPERIMENT))
    assert not opens(sidecar)
    (row,) = bus.ctl_json("experiments")
    assert (row["phase"], row["acked"], row["missing"]) == ("Running", [POD], [])

    # A manifest chaosctl refuses is audited under chaosctl's name.
    bad = {**eio_experiment(), "spec": {**eio_experiment()["spec"], "mode": "most"}}
    done = bus.ctl("apply", "-f", str(write_manifest(bus, bad, "bad.json")))
    assert done.returncode == 2 and "spec.mode" in done.stderr, done.stderr
    assert "not written to the audit trail" not in done.stderr, done.stderr
    rejected = bus.ctl("audit", "--json", "--kind", "experiment.rejected")
    assert rejected.returncode == 0 and "spec.mode" in rejected.stdout, rejected.stderr

    # Deleting: the controller recovers the pod, then removes the experiment.
    assert f"{EXPERIMENT} deleted" in ok(bus.ctl("delete", EXPERIMENT))
    assert opens(sidecar)
    assert bus.ctl_json("experiments") == []
    assert sidecar.rule_ids() == []
    recovered = bus.ctl("audit", "--json", "--kind", "experiment.recovered", "--pod", POD)
    assert recovered.returncode == 0 and EXPERIMENT in recovered.stdout, recovered.stderr

    # Nobody asked for anything their user may not do.
    assert bus.violations("chaos-controller", "chaosctl", "chaosfs") == []


# --- what the controller may not do -----------------------------------------------------------


def test_controller_user_cannot_command_one_pod_or_touch_other_roles_data(
    bus: SecureBus,
    sidecar: SecureSidecar,
    controller: Controller,
) -> None:
    before = sidecar.rule_ids()
    evil_rule = {"id": "evil", "action": "errno", "errno": "EIO"}
    entry = codec.encode(desired.Entry.of(evil_rule, "mallory").to_wire())
    pod_key = desired.pod_key(NS, NAME, "evil")
    forged = make_event("chaosfs", "rule.set", actor="mallory", pod=POD)

    async def probe() -> None:
        async with Probe(bus, "controller") as p:
            nc, js = p.nc, p.nc.jetstream(timeout=1.0)
            # A command to one pod: the controller only ever sends fleet commands.
            command = codec.encode({"op": "set", "rules": [evil_rule], "actor": "mallory"})
            await nc.publish(pod_command(NS, NAME), command, reply=nc.new_inbox())
            await p.refused(pod_command(NS, NAME))
            # Nor listen to one pod's commands, or to events other than "ready".
            for subject in ("chaosbus.fs.cmd.>", "chaosbus.fs.evt.>"):
                await nc.subscribe(subject)
                await p.refused(subject, what="subscription")
            audit = StreamConfig(name=AUDIT_STREAM, subjects=["chaosbus.audit.>"], max_msgs=1)
            await p.denied_js(
                # A pod's desired state (it writes fleet.<rule id> entries only).
                (f"$KV.DESIRED.{pod_key}", js.publish(f"$KV.DESIRED.{pod_key}", entry)),
                # The other roles' buckets.
                (f"$KV.{RENDERINGS_BUCKET}.x", js.publish(f"$KV.{RENDERINGS_BUCKET}.x", b"\x80")),
                (f"$KV.{NAMESPACES_BUCKET}.x", js.publish(f"$KV.{NAMESPACES_BUCKET}.x", b"\x80")),
                (f"$KV.{REGISTRY_BUCKET}.x.y", js.publish(f"$KV.{REGISTRY_BUCKET}.x.y", b"\x80")),
                # Any lease key but the one it holds.
                (f"$KV.{LEASE}.other", js.publish(f"$KV.{LEASE}.other", b"\x80")),
                # Audit events in another service's name.
                (
                    audit_subject("chaosfs", "rule.set"),
                    js.publish(audit_subject("chaosfs", "rule.set"), codec.encode(forged)),
                ),
                # Changing, purging or deleting the audit trail, or any stream.
                ("$JS.API.STREAM.UPDATE.AUDIT", js.update_stream(audit)),
                ("$JS.API.STREAM.PURGE.AUDIT", js.purge_stream(AUDIT_STREAM)),
                ("$JS.API.STREAM.DELETE.AUDIT", js.delete_stream(AUDIT_STREAM)),
                (f"$JS.API.STREAM.DELETE.KV_{SPECS}", js.delete_stream(f"KV_{SPECS}")),
                (
                    "$JS.API.STREAM.CREATE.EVIL",
                    js.add_stream(StreamConfig(name="EVIL", subjects=["chaosbus.fs.cmd.>"])),
                ),
                # Reading desired state or renderings.
                (
                    "$JS.API.CONSUMER.CREATE.KV_DESIRED",
                    js.add_consumer("KV_DESIRED", ConsumerConfig(deliver_subject=nc.new_inbox())),
                ),
                (
                    f"$JS.API.CONSUMER.CREATE.KV_{RENDERINGS_BUCKET}",
                    js.add_consumer(
                        f"KV_{RENDERINGS_BUCKET}", ConsumerConfig(deliver_subject=nc.new_inbox())
                    ),
                ),
            )
            # Its own audit events still go through on this very connection.
            ack = await js.publish(
                audit_subject("controller", "probe"),
                codec.encode(make_event("controller", "probe")),
            )
            assert ack.stream == AUDIT_STREAM

    asyncio.run(probe())
    assert sidecar.rule_ids() == before
    status = bus.ctl_json("status", "--pod", POD)
    assert "evil" not in json.dumps(status) and status["drift"]["missing"] == []
    trail = bus.ctl("audit", "--json", "--pod", POD)
    assert trail.returncode == 0 and forged["id"] not in trail.stdout, trail.stderr


@pytest.mark.parametrize("role", ["sidecar", "template-watcher", "injector"])
def test_no_other_role_can_start_or_fake_an_experiment(
    bus: SecureBus, controller: Controller, role: str
) -> None:
    """Writing an experiment's spec, its status or the lease is for chaosctl and the
    controller: a sidecar (every pod has its password) cannot make the controller
    fault pods, pretend an experiment ran, or take the lease."""
    manifest = eio_experiment()
    manifest["metadata"]["name"] = "evil"
    ref = f"{NS}/evil"
    spec = SpecEntry(manifest, "chaosctl", "mallory", 0.0, uid=uuid.uuid4().hex)
    status = {"v": 1, "phase": "Finished", "run": 1, "uid": spec.uid}

    async def probe() -> None:
        async with Probe(bus, role) as p:
            js = p.nc.jetstream(timeout=1.0)
            calls = [
                (
                    f"$KV.{SPECS}.{key_of(ref)}",
                    js.publish(f"$KV.{SPECS}.{key_of(ref)}", codec.encode(spec.to_wire())),
                ),
                (
                    f"$KV.{STATUS}.{key_of(ref)}",
                    js.publish(f"$KV.{STATUS}.{key_of(ref)}", codec.encode(status)),
                ),
                (f"$KV.{LEASE}.leader", js.publish(f"$KV.{LEASE}.leader", b"\x80")),
            ]
            await p.denied_js(*calls)

    asyncio.run(probe())
    assert ref not in [r["experiment"] for r in bus.ctl_json("experiments")]


def test_operator_cannot_write_an_experiments_status_or_the_lease(
    bus: SecureBus, controller: Controller
) -> None:
    async def probe() -> None:
        async with Probe(bus, "operator") as p:
            js = p.nc.jetstream(timeout=1.0)
            status = codec.encode({"v": 1, "phase": "Finished", "run": 1, "uid": "x"})
            await p.denied_js(
                (f"$KV.{STATUS}.a.x", js.publish(f"$KV.{STATUS}.a.x", status)),
                (f"$KV.{LEASE}.leader", js.publish(f"$KV.{LEASE}.leader", b"\x80")),
            )

    asyncio.run(probe())
    assert "a/x" not in [r["experiment"] for r in bus.ctl_json("experiments")]


# --- consumers and republish deliver where their creator says --------------------------------
#
# nats-server 2.15 does not check a push consumer's deliver subject, nor a stream's
# republish destination, against the permissions of whoever set them: a role that may
# write a bucket and create consumers on it (or change its stream) can put what it
# wrote onto a pod's command subject. chaosfs refuses what the server delivers from a
# stream there (deploy/nats/README.md, Limits).


async def _next_refusal(events: Any, stored_prefix: str, timeout: float = 10) -> dict[str, Any]:
    """The sidecar's next audit event about a subject under ``stored_prefix``; a timeout
    here is a real failure (a refusal must be audited, not silent)."""
    while True:
        event = codec.decode((await events.next_msg(timeout=timeout)).data)
        if str(event.get("subject", "")).startswith(stored_prefix) or "mallory" in str(
            event.get("actor")
        ):
            return event


@pytest.mark.parametrize(
    ("role", "bucket", "ack"),
    [
        ("controller", STATUS, AckPolicy.EXPLICIT),
        ("template-watcher", NAMESPACES_BUCKET, AckPolicy.NONE),
    ],
)
def test_a_role_cannot_deliver_a_bucket_onto_a_pods_command_subject(
    bus: SecureBus,
    sidecar: SecureSidecar,
    controller: Controller,
    role: str,
    bucket: str,
    ack: AckPolicy,
) -> None:
    """A role that may write a bucket and read it may not thereby send a command to a
    pod: what a consumer delivers on a command subject is not a command."""
    actor = f"mallory-{role}"
    rule = {"id": f"evil-{role}", "action": "errno", "errno": "EIO"}
    stored = f"$KV.{bucket}.evil.{uuid.uuid4().hex}"

    async def attempt() -> tuple[dict[str, Any], Any]:
        async with Probe(bus, "operator") as watch, Probe(bus, role) as p:
            events = await watch.nc.subscribe("chaosbus.audit.chaosfs.>")
            await watch.nc.flush()
            js = p.nc.jetstream(timeout=2.0)
            command = {"op": "set", "rules": [rule], "actor": actor}
            await js.publish(stored, codec.encode(command))
            consumer = await js.add_consumer(
                f"KV_{bucket}",
                ConsumerConfig(
                    deliver_subject=pod_command(NS, NAME),
                    filter_subject=stored,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                    ack_policy=ack,
                    ack_wait=0.5,
                ),
            )
            event = await _next_refusal(events, stored)
            # Terminated rather than left to be delivered again every ack_wait.
            info = await wait_async(
                lambda: js.consumer_info(f"KV_{bucket}", consumer.name),
                lambda i: i.num_ack_pending == 0,
            )
            return event, info

    try:
        event, info = asyncio.run(attempt())
        assert event["kind"] == "command.refused", event
        assert event["reason"] == "delivered by a JetStream consumer"
        assert (event["stream"], event["subject"]) == (f"KV_{bucket}", stored)
        assert event["via"] == pod_command(NS, NAME)
        assert event["actor"] == "unknown"  # the body's claims are not read
        assert event["count"] == 1
        assert info.num_redelivered == 0 and info.delivered.consumer_seq == 1
        assert rule["id"] not in sidecar.rule_ids()
    finally:
        sidecar.request({"op": "recover", "id": rule["id"], "actor": "test cleanup"})


def test_a_republished_bucket_entry_is_not_a_fleet_command(
    bus: SecureBus, sidecar: SecureSidecar
) -> None:
    """The template-watcher may change its own buckets' streams, republish included,
    and the server sends a republished message wherever the stream says."""
    rule = {"id": "evil-republish", "action": "errno", "errno": "EIO"}
    stored = f"$KV.{RENDERINGS_BUCKET}.evil.{uuid.uuid4().hex}"
    stream = f"KV_{RENDERINGS_BUCKET}"

    async def attempt() -> dict[str, Any]:
        async with Probe(bus, "operator") as watch, Probe(bus, "template-watcher") as p:
            events = await watch.nc.subscribe("chaosbus.audit.chaosfs.>")
            await watch.nc.flush()
            js = p.nc.jetstream(timeout=2.0)
            before = (await js.stream_info(stream)).config
            changed = copy.deepcopy(before)
            changed.republish = RePublish(src=stored, dest=FLEET_COMMAND)
            await js.update_stream(changed)
            try:
                command = {"op": "set", "rules": [rule], "actor": "mallory"}
                await js.publish(stored, codec.encode(command))
                return await _next_refusal(events, FLEET_COMMAND)
            finally:
                await js.update_stream(before)

    try:
        event = asyncio.run(attempt())
        assert event["kind"] == "command.refused", event
        assert event["reason"] == "republished from a JetStream stream"
        assert (event["stream"], event["stored_subject"]) == (stream, stored)
        assert rule["id"] not in sidecar.rule_ids()
    finally:
        sidecar.request({"op": "recover", "id": rule["id"], "actor": "test cleanup"})


def test_a_flood_of_deliveries_is_counted_but_audited_once_a_second(
    bus: SecureBus, sidecar: SecureSidecar, controller: Controller
) -> None:
    """Every refusal is logged and counted, but the audit trail gets at most one event a
    second, saying how many refusals it stands for: a flood costs the trail next to
    nothing, and none goes unrecorded."""
    prefix = f"$KV.{STATUS}.flood.{uuid.uuid4().hex}"
    flood = 40

    async def attempt() -> list[dict[str, Any]]:
        async with Probe(bus, "operator") as watch, Probe(bus, "controller") as p:
            events = await watch.nc.subscribe("chaosbus.audit.chaosfs.>")
            await watch.nc.flush()
            js = p.nc.jetstream(timeout=2.0)
            for i in range(flood):
                await js.publish(f"{prefix}.{i}", codec.encode({"op": "ping"}))
            await js.add_consumer(
                f"KV_{STATUS}",
                ConsumerConfig(
                    deliver_subject=pod_command(NS, NAME),
                    filter_subject=f"{prefix}.>",
                    ack_policy=AckPolicy.NONE,
                ),
            )
            audited: list[dict[str, Any]] = []
            while sum(e["count"] for e in audited) < flood:
                audited.append(await _next_refusal(events, prefix))
            return audited

    audited = asyncio.run(attempt())
    assert {e["kind"] for e in audited} == {"command.refused"}
    assert sum(e["count"] for e in audited) == flood
    assert len(audited) <= 2, [e["count"] for e in audited]
    if len(audited) == 2:
        assert audited[0]["count"] == 1  # the first at once, the rest a second later
        assert audited[1]["time"] - audited[0]["time"] >= 0.9
    log = [json.loads(line) for line in sidecar.log.read_text().splitlines() if "{" in line[:1]]
    refusals = [r for r in log if r.get("event") == "command_refused"]
    assert {r["reason"] for r in refusals} >= {"delivered by a JetStream consumer"}
    assert sidecar.request({"op": "ping"})["ok"] is True


async def wait_async(get: Any, done: Any, timeout: float = 5.0) -> Any:
    """Poll ``get()`` until ``done(result)``; the last result either way."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await get()
        if done(result) or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.05)


def test_a_republished_bucket_entry_is_not_desired_state(
    bus: SecureBus, sidecar: SecureSidecar
) -> None:
    """The same republish, into a pod's desired state: the server stores it in
    KV_DESIRED (no permission is checked), and chaosfs skips it as it would any
    entry nobody allowed to write desired state wrote."""
    rule = {"id": "evil-desired", "action": "errno", "errno": "EIO"}
    stored = f"$KV.{RENDERINGS_BUCKET}.evil.{uuid.uuid4().hex}"
    stream = f"KV_{RENDERINGS_BUCKET}"
    target = f"$KV.DESIRED.{desired.pod_key(NS, NAME, rule['id'])}"

    async def attempt() -> dict[str, Any]:
        async with Probe(bus, "operator") as watch, Probe(bus, "template-watcher") as p:
            events = await watch.nc.subscribe("chaosbus.audit.chaosfs.>")
            await watch.nc.flush()
            js = p.nc.jetstream(timeout=2.0)
            before = (await js.stream_info(stream)).config
            changed = copy.deepcopy(before)
            changed.republish = RePublish(src=stored, dest=target)
            await js.update_stream(changed)
            try:
                entry = desired.Entry.of(rule, "mallory").to_wire()
                await js.publish(stored, codec.encode(entry))
                while True:
                    event = codec.decode((await events.next_msg(timeout=10)).data)
                    if event.get("kind") in ("desired.rejected", "rule.converged"):
                        return event
            finally:
                await js.update_stream(before)

    async def clean_up() -> None:
        async with Probe(bus, "operator") as p:
            kv = await p.nc.jetstream().key_value("DESIRED")
            await kv.delete(desired.pod_key(NS, NAME, rule["id"]))

    try:
        event = asyncio.run(attempt())
        assert event["kind"] == "desired.rejected", event
        assert event["reason"] == f"republished from stream {stream}, not written to desired state"
        assert rule["id"] not in sidecar.rule_ids()
    finally:
        asyncio.run(clean_up())
