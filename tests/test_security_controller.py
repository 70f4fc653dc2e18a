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
import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controller_helpers import Controller, io_chaos
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig
from test_security import POD, Probe, SecureBus, SecureSidecar
from test_security import sidecar as sidecar  # fixture, set up on this module's bus
from test_security import watcher as watcher  # fixture, likewise

from chaosbus import codec, desired
from chaosbus.audit import STREAM as AUDIT_STREAM
from chaosbus.audit import audit_subject, make_event
from chaosbus.experiments.store import LEASE, SPECS, STATUS, SpecEntry, key_of
from chaosbus.injection import NAMESPACES_BUCKET, RENDERINGS_BUCKET
from chaosbus.registry import BUCKET as REGISTRY_BUCKET
from chaosbus.subjects import pod_command
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


# --- a known hole: consumers deliver where their creator says --------------------------------


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="nats-server 2.15 does not check a push consumer's deliver subject against its "
    "creator's permissions, and chaosfs takes what a consumer delivers on its command "
    "subscription for a command (deploy/nats/README.md, Limits)",
)
@pytest.mark.parametrize(
    ("role", "bucket"), [("controller", STATUS), ("template-watcher", NAMESPACES_BUCKET)]
)
def test_a_role_cannot_deliver_a_bucket_onto_a_pods_command_subject(
    bus: SecureBus,
    sidecar: SecureSidecar,
    controller: Controller,
    role: str,
    bucket: str,
) -> None:
    """A role that may write a bucket and read it may not thereby send a command to a
    pod: what a consumer delivers on a command subject is not a command."""
    actor = f"mallory-{role}"
    rule = {"id": f"evil-{role}", "action": "errno", "errno": "EIO"}
    stored = f"$KV.{bucket}.evil.{uuid.uuid4().hex}"

    async def attempt() -> dict[str, Any]:
        async with Probe(bus, "operator") as watch, Probe(bus, role) as p:
            events = await watch.nc.subscribe("chaosbus.audit.chaosfs.>")
            await watch.nc.flush()
            js = p.nc.jetstream(timeout=2.0)
            command = {"op": "set", "rules": [rule], "actor": actor}
            await js.publish(stored, codec.encode(command))
            await js.add_consumer(
                f"KV_{bucket}",
                ConsumerConfig(
                    deliver_subject=pod_command(NS, NAME),
                    filter_subject=stored,
                    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ),
            )
            # The sidecar's answer to it, set or rejected, is in its audit trail (a
            # timeout here is a real failure: a refusal must be audited, not silent).
            while True:
                msg = await events.next_msg(timeout=10)
                event = codec.decode(msg.data)
                # Refused or not, the event names the claimed actor or the stored subject.
                if event.get("actor") == actor or event.get("subject") == stored:
                    return event

    try:
        event = asyncio.run(attempt())
        assert event["kind"] == "rule.rejected", event
        assert rule["id"] not in sidecar.rule_ids()
    finally:
        sidecar.request({"op": "recover", "id": rule["id"], "actor": "test cleanup"})
