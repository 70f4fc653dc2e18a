"""chaosctl's experiment verbs: apply, delete, experiments, experiment describe|pause|resume.

Against a real nats-server with the real chaosctl command. No chaos-controller runs
here: where one is needed, the test plays it, writing statuses into the store (as the
controller does) and removing entries marked for deletion. Sidecars are registry
entries written by the test, except in one test that starts a real one, so that
apply is checked against what a real sidecar registers. What chaosctl reads and prints
is tested on its own in tests/unit/test_chaosctl_experiments.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError
from unit.test_chaosctl_experiments import REF, manifest, running

from chaosbus import codec, registry
from chaosbus.audit import STREAM, audit_subject, ensure_stream, make_event
from chaosbus.experiments.store import (
    Condition,
    ExperimentStore,
    PodRecord,
    SpecEntry,
    Status,
    key_of,
)
from chaosbus.kv import open_bucket
from conftest import BIN, chaosctl, wait_for


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text("\n---\n".join(json.dumps(d) for d in docs))
    return path


# --- the bus, as the test sees it ----------------------------------------------------------


def on_bus(url: str, fn: Any) -> Any:
    async def run() -> Any:
        nc = await nats.connect(url)
        try:
            return await fn(nc)
        finally:
            await nc.close()

    return asyncio.run(run())


def specs(url: str) -> dict[str, SpecEntry]:
    async def read(nc: Any) -> dict[str, SpecEntry]:
        try:
            store = await ExperimentStore.open(nc, create=False)
        except BucketNotFoundError:
            return {}
        good, bad = await store.specs()
        assert not bad
        return good

    return on_bus(url, read)


def put_spec(url: str, ref: str, entry: SpecEntry) -> None:
    async def put(nc: Any) -> None:
        await (await ExperimentStore.open(nc)).put_spec(ref, entry)

    on_bus(url, put)


def delete_spec(url: str, ref: str) -> None:
    async def delete(nc: Any) -> None:
        await (await ExperimentStore.open(nc)).delete_spec(ref)

    on_bus(url, delete)


def write_status(url: str, ref: str, status: Status) -> None:
    """What the controller does: compare-and-set on the revision it read."""

    async def put(nc: Any) -> None:
        store = await ExperimentStore.open(nc)
        got = await store.get_status(ref)
        await store.write_status(ref, status, got[1] if got else 0)

    on_bus(url, put)


def register(url: str, pod: str, labels: dict[str, str], *, lost: bool = False) -> None:
    """A registry entry as a sidecar writes it (a lost one stopped heartbeating)."""
    namespace, name = pod.split("/")
    now = time.time()
    entry = {
        "pod": pod,
        "namespace": namespace,
        "name": name,
        "labels": labels,
        "time": now - 60 if lost else now,
        "started": now - 100,
        "heartbeat_interval": 5.0,
        "rules": [],
    }

    async def put(nc: Any) -> None:
        kv = await open_bucket(nc, registry.BUCKET)
        await kv.put(registry.key(namespace, name), codec.encode(entry))

    on_bus(url, put)


def audit_events(url: str, service: str) -> list[dict[str, Any]]:
    async def read(nc: Any) -> list[dict[str, Any]]:
        js = nc.jetstream()
        subject = f"chaosbus.audit.{service}.>"
        info = await js.stream_info(STREAM, subjects_filter=subject)
        if not info.state.subjects:
            return []
        sub = await js.subscribe(
            subject,
            stream=STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        out = []
        while True:
            msg = await sub.next_msg(timeout=5)
            out.append(codec.decode(msg.data, limit=1 << 20))
            if msg.metadata.num_pending == 0:
                return out

    return on_bus(url, read)


def publish_controller_event(url: str, kind: str, **fields: Any) -> None:
    async def publish(nc: Any) -> None:
        await ensure_stream(nc, max_age=3600.0, max_bytes=1 << 24)
        event = make_event("controller", kind, **fields)
        await nc.jetstream().publish(audit_subject("controller", kind), codec.encode(event))

    on_bus(url, publish)


def ctl(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if stdin is None:
        return chaosctl(url, *args)
    return subprocess.run(
        [str(BIN / "chaosctl"), "--nats", url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=20,
    )


def start_ctl(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "chaosctl"), "--nats", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- apply: every refusal writes nothing, says why in one line, and is audited --------------


BAD_INPUTS = {
    "garbage": ("{{{ this: is: [not yaml", "bad.yaml: "),
    "not a mapping": ("- just\n- a list\n", "bad.yaml: "),
    "unknown kind": (
        json.dumps(manifest(kind="PodChaos")),
        "bad.yaml: document 1 (PodChaos default/io-delay): ",
    ),
    "no name": (
        json.dumps({**manifest(), "metadata": {"namespace": "default"}}),
        "bad.yaml: document 1",
    ),
    "NaN percent": (
        "apiVersion: chaos-mesh.org/v1alpha1\nkind: IoChaos\nmetadata: {name: io-delay}\n"
        "spec: {action: delay, mode: one, delay: 10ms, percent: .nan,"
        " selector: {labelSelectors: {app: db}}}\n",
        "bad.yaml: document 1 (IoChaos default/io-delay): ",
    ),
    "NaN duration": (
        json.dumps(manifest(extra_spec={"duration": "NaNs"})),
        "bad.yaml: document 1 (IoChaos default/io-delay): ",
    ),
    "needs kubernetes": (
        json.dumps(manifest(extra_spec={"selector": {"annotationSelectors": {"team": "storage"}}})),
        "bad.yaml: document 1 (IoChaos default/io-delay): selects by annotations, which "
        "needs the Kubernetes API: run it as an FsChaos object in a cluster",
    ),
    "selects no sidecar": (
        json.dumps(manifest(labels={"app": "web"})),
        "bad.yaml: document 1 (IoChaos default/io-delay): selects no sidecar",
    ),
    "duplicate": (
        json.dumps(manifest()) + "\n---\n" + json.dumps(manifest(delay="20ms")),
        "bad.yaml: document 2 (IoChaos default/io-delay): default/io-delay is also defined "
        "in bad.yaml document 1",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_apply_refuses_bad_input_in_one_line_writes_nothing_and_audits(
    nats_server, tmp_path, monkeypatch, case
):
    text, expected = BAD_INPUTS[case]
    register(nats_server.url, "default/db-0", {"app": "db"})
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(text)
    result = ctl(nats_server.url, "apply", "-f", "bad.yaml")
    assert result.returncode == 2, result
    assert one_line(result.stderr).startswith("chaosctl: " + expected), result.stderr
    assert result.stdout == ""
    assert specs(nats_server.url) == {}
    [event] = audit_events(nats_server.url, "chaosctl")
    assert event["kind"] == "experiment.rejected"
    assert event["source"] == "bad.yaml"
    assert event["reason"] and event["reason"] in result.stderr
    if "document 1 (" in expected:
        assert event["experiment"] == REF


def test_apply_refuses_a_huge_file_without_reading_it_all(nats_server, tmp_path):
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.write(b"# padding\n" * (1024 * 1024))  # 10 MiB
    result = ctl(nats_server.url, "apply", "-f", str(big))
    assert result.returncode == 2
    assert one_line(result.stderr) == f"chaosctl: {big}: larger than the 1048576 byte limit"
    assert specs(nats_server.url) == {}
    [event] = audit_events(nats_server.url, "chaosctl")
    assert event["kind"] == "experiment.rejected" and event["source"] == str(big)


def test_apply_checks_every_file_before_writing_any(nats_server, tmp_path):
    register(nats_server.url, "default/db-0", {"app": "db"})
    folder = tmp_path / "exps"
    folder.mkdir()
    write(folder / "a.yaml", manifest("first"))
    write(folder / "b.yml", manifest("second"), manifest("third", kind="NetworkChaos"))
    write(folder / "c.json", manifest("fourth"))
    result = ctl(nats_server.url, "apply", "-f", str(folder))
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(
        f"chaosctl: {folder / 'b.yml'}: document 2 (NetworkChaos default/third): "
    )
    assert specs(nats_server.url) == {}


def test_apply_refuses_a_namespace_other_than_the_one_given(nats_server, tmp_path):
    register(nats_server.url, "prod/db-0", {"app": "db"})
    path = write(tmp_path / "x.yaml", manifest(namespace="prod"))
    result = ctl(nats_server.url, "apply", "--namespace", "staging", "-f", str(path))
    assert result.returncode == 2
    assert "its namespace 'prod' is not the --namespace given ('staging')" in result.stderr
    assert specs(nats_server.url) == {}


# --- apply: writing -------------------------------------------------------------------------


def test_apply_creates_then_leaves_unchanged_then_configures(nats_server, tmp_path):
    url = nats_server.url
    register(url, "default/db-0", {"app": "db"}, lost=True)  # lost sidecars count
    path = write(tmp_path / "exp.yaml", manifest())
    result = ctl(url, "apply", "-f", str(path))
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "iochaos default/io-delay created\n",
        "",
    )
    [(ref, first)] = specs(url).items()
    assert ref == REF
    assert first.manifest == manifest()
    assert (first.source, first.paused, first.deleting) == ("chaosctl", False, False)
    assert len(first.uid) == 32 and "@" in first.actor
    assert abs(first.time - time.time()) < 30

    result = ctl(url, "apply", "-f", str(path), "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        "applied": [{"experiment": REF, "kind": "IoChaos", "action": "unchanged"}]
    }
    assert specs(url)[REF] == first

    # Paused meanwhile (as `chaosctl experiment pause` does): a change keeps that and the uid.
    put_spec(url, REF, dataclasses.replace(first, paused=True))
    changed = manifest(delay="20ms")
    result = ctl(url, "apply", "-f", "-", stdin=json.dumps(changed))
    assert (result.returncode, result.stdout) == (0, "iochaos default/io-delay configured\n")
    after = specs(url)[REF]
    assert after.manifest == changed
    assert (after.uid, after.paused, after.deleting) == (first.uid, True, False)


def test_apply_reads_a_directory_in_order_and_defaults_the_namespace(nats_server, tmp_path):
    url = nats_server.url
    register(url, "team/db-0", {"app": "db"})
    folder = tmp_path / "exps"
    (folder / "nested").mkdir(parents=True)
    write(folder / "b.yaml", manifest("beta", namespace=None))
    write(folder / "a.json", manifest("alpha", namespace=None))
    (folder / "notes.txt").write_text("not a manifest")
    write(folder / "nested" / "c.yaml", manifest("nested", namespace=None))
    result = ctl(url, "apply", "--namespace", "team", "-f", str(folder))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "iochaos team/alpha created",
        "iochaos team/beta created",
    ]
    assert sorted(specs(url)) == ["team/alpha", "team/beta"]


def test_apply_refuses_an_experiment_being_deleted(nats_server, tmp_path):
    url = nats_server.url
    register(url, "default/db-0", {"app": "db"})
    old = SpecEntry(manifest(), "chaosctl", "me@here", time.time(), deleting=True, uid="u1")
    put_spec(url, REF, old)
    result = ctl(url, "apply", "-f", str(write(tmp_path / "x.yaml", manifest(delay="1s"))))
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(
        f"chaosctl: {tmp_path / 'x.yaml'}: document 1 (IoChaos {REF}): {REF} is being deleted"
    )
    assert specs(url)[REF] == old
    [event] = audit_events(url, "chaosctl")
    assert event["experiment"] == REF and "is being deleted" in event["reason"]


def test_apply_against_a_real_sidecar(make_sidecar, tmp_path):
    sidecar = make_sidecar("default/db-0", env={"POD_LABELS": "app=db,tier=storage"})
    url = sidecar.nats_url
    web = write(tmp_path / "web.yaml", manifest(labels={"app": "web"}))
    none = ctl(url, "apply", "-f", str(web))
    assert none.returncode == 2 and "selects no sidecar" in none.stderr
    db = write(tmp_path / "db.yaml", manifest(labels={"tier": "storage"}))
    ok = ctl(url, "apply", "-f", str(db))
    assert (ok.returncode, ok.stdout) == (0, "iochaos default/io-delay created\n"), ok.stderr


# --- apply --wait -----------------------------------------------------------------------


def test_apply_wait_without_a_controller_times_out(nats_server, tmp_path):
    register(nats_server.url, "default/db-0", {"app": "db"})
    path = write(tmp_path / "x.yaml", manifest())
    result = ctl(nats_server.url, "apply", "-f", str(path), "--wait", "--timeout", "1s")
    assert result.returncode == 3
    assert result.stdout == "iochaos default/io-delay created\n"
    assert one_line(result.stderr) == (
        f"chaosctl: {REF}: no chaos-controller picked it up within 1s"
    )
    assert REF in specs(nats_server.url)  # written: the controller may come later


@pytest.mark.parametrize("outcome", ["Running", "Failed"])
def test_apply_wait_for_the_controller(nats_server, tmp_path, outcome):
    url = nats_server.url
    register(url, "default/db-0", {"app": "db"})
    # A status left by an earlier experiment of the same name must not count.
    write_status(url, REF, running("an-earlier-uid"))
    proc = start_ctl(url, "apply", "-f", str(write(tmp_path / "x.yaml", manifest())), "--wait")
    uid = wait_for(lambda: (specs(url).get(REF) or SpecEntry({}, "chaosctl", "", 0)).uid)
    if outcome == "Failed":
        write_status(url, REF, running(uid, "Failed", message="no pod answered"))
    else:
        write_status(url, REF, running(uid))
    code, out, err = finish(proc)
    if outcome == "Failed":
        assert code == 1
        assert one_line(err) == f"chaosctl: {REF} failed: no pod answered"
    else:
        assert (code, err) == (0, "")
        assert out.splitlines() == [
            "iochaos default/io-delay created",
            f"{REF} is Running (run 1; injected on 1 of 1 pods)",
        ]


# --- experiments and describe ------------------------------------------------------------


def entry(doc: dict[str, Any], **more: Any) -> SpecEntry:
    uid = "u-" + doc["metadata"]["name"]
    return SpecEntry(doc, "chaosctl", "me@here", time.time() - 30, uid=uid, **more)


def test_experiments_lists_every_state_and_never_crashes(nats_server):
    url = nats_server.url
    now = time.time()
    put_spec(url, "default/running", entry(manifest("running")))
    write_status(
        url,
        "default/running",
        Status(
            phase="Running",
            run=2,
            selected=["default/db-0", "default/db-1", "default/db-2"],
            pods={
                "default/db-0": PodRecord("injected", now),
                "default/db-1": PodRecord("injected", now),
                "default/db-2": PodRecord("missing", now, "no sidecar answered"),
            },
            started_at=now - 10,
            ends_at=now + 50.4,
            next_run=now + 8.4,
            uid="u-running",
        ),
    )
    put_spec(url, "default/new", entry(manifest("new")))
    put_spec(url, "other/elsewhere", entry(manifest("elsewhere", namespace="other")))

    async def garbage(nc: Any) -> None:
        store = await ExperimentStore.open(nc)
        await store.specs_kv.put(key_of("default/broken"), b"\xc1 not msgpack")

    on_bus(url, garbage)

    result = ctl(url, "experiments")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "NAME", "KIND", "PHASE", "TARGETS", "ACKED", "MISSING", "NEXT", "RUN", "TIME", "LEFT",
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == [
        "default/broken",
        "default/new",
        "default/running",
        "other/elsewhere",
    ]
    assert rows["default/running"].split() == [
        "default/running", "IoChaos", "Running", "3", "2", "1", "in", "8s", "50s",
    ]  # fmt: skip
    assert "Pending (no controller yet)" in rows["default/new"]
    assert "unreadable: " in rows["default/broken"]

    only = ctl(url, "experiments", "--namespace", "other", "--json")
    [item] = json.loads(only.stdout)
    assert item["experiment"] == "other/elsewhere"
    assert item["kind"] == "IoChaos" and item["status"] is None and item["uid"] == "u-elsewhere"

    everything = {i["experiment"]: i for i in json.loads(ctl(url, "experiments", "--json").stdout)}
    got = everything["default/running"]
    assert (got["phase"], got["run"]) == ("Running", 2)
    assert got["acked"] == ["default/db-0", "default/db-1"]
    assert got["missing"] == ["default/db-2"] and got["status"]["pods"]["default/db-2"]["error"]
    assert everything["default/broken"]["error"]


def test_experiments_with_no_bucket_yet(nats_server):
    result = ctl(nats_server.url, "experiments")
    assert (result.returncode, result.stdout) == (0, "no experiments\n")
    assert specs(nats_server.url) == {}  # reading created nothing


def test_describe_shows_spec_status_pods_and_the_audit_trail(nats_server):
    url = nats_server.url
    now = time.time()
    put_spec(url, REF, entry(manifest()))
    write_status(
        url,
        REF,
        Status(
            phase="Running",
            run=1,
            selected=["default/db-0", "default/db-1"],
            pods={
                "default/db-0": PodRecord("injected", now),
                "default/db-1": PodRecord("error", now, "refused: path_regex too long"),
            },
            started_at=now - 5,
            ends_at=now + 55,
            message="injected on 1 of 2 pods",
            conditions=[Condition("Selected", "True", "PodsSelected", "2 pods", now - 5)],
            uid="u-io-delay",
        ),
    )
    publish_controller_event(
        url, "experiment.injected", experiment=REF, pod="default/db-0", run=1, outcome="injected"
    )
    publish_controller_event(url, "experiment.started", experiment="default/other", run=1)
    result = ctl(url, "experiment", "describe", REF)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"Name:        {REF}" in text
    assert "Kind:        IoChaos (chaos-mesh.org/v1alpha1; Chaos Mesh v0.9)" in text
    assert "Mode:        one" in text
    assert "labels=app=db" in text
    assert "Duration:    1m" in text
    assert "  Phase:     Running (run 1)" in text
    assert "  Message:   injected on 1 of 2 pods" in text
    assert "PodsSelected" in text
    [db0] = [line for line in text.splitlines() if line.strip().startswith("default/db-0 ")]
    assert db0.split()[1:3] == ["injected", "-"]
    assert "refused: path_regex too long" in text
    assert "experiment.injected" in text and "default/other" not in text

    data = json.loads(ctl(url, "experiment", "describe", REF, "--json").stdout)
    assert data["spec"]["uid"] == "u-io-delay" and data["status"]["phase"] == "Running"
    assert [e["kind"] for e in data["events"]] == ["experiment.injected"]

    unknown = ctl(url, "experiment", "describe", "default/nope")
    assert unknown.returncode == 1
    assert one_line(unknown.stderr) == "chaosctl: no experiment default/nope"


# --- delete ---------------------------------------------------------------------------------


def test_delete_without_a_controller_times_out_and_leaves_it_marked(nats_server):
    url = nats_server.url
    put_spec(url, REF, entry(manifest()))
    result = ctl(url, "delete", REF, "--timeout", "1")
    assert result.returncode == 3
    assert one_line(result.stderr) == (
        f"chaosctl: {REF} marked for deletion; no chaos-controller finished it within 1s"
    )
    assert specs(url)[REF].deleting


def test_delete_waits_for_the_controller_to_remove_it(nats_server, tmp_path):
    url = nats_server.url
    put_spec(url, REF, entry(manifest()))
    put_spec(url, "default/other", entry(manifest("other")))
    path = write(tmp_path / "x.yaml", manifest())
    proc = start_ctl(url, "delete", "-f", str(path), "default/other")
    for ref in (REF, "default/other"):
        wait_for(lambda ref=ref: specs(url)[ref].deleting, what=f"{ref} marked")
        delete_spec(url, ref)  # the controller, once every pod is recovered
    code, out, err = finish(proc)
    assert (code, err) == (0, "")
    assert out.splitlines() == ["default/other deleted", f"{REF} deleted"]


def test_delete_of_an_unknown_experiment(nats_server):
    result = ctl(nats_server.url, "delete", "default/nope")
    assert result.returncode == 1
    assert one_line(result.stderr) == "chaosctl: no experiment default/nope"
    bad = ctl(nats_server.url, "delete", "nope")
    assert bad.returncode == 2 and "NAMESPACE/NAME" in one_line(bad.stderr)


# --- pause and resume ----------------------------------------------------------------------


def test_pause_and_resume_flip_the_flag_and_wait_for_the_controller(nats_server):
    url = nats_server.url
    put_spec(url, REF, entry(manifest()))
    write_status(url, REF, running("u-io-delay"))

    proc = start_ctl(url, "experiment", "pause", REF)
    wait_for(lambda: specs(url)[REF].paused, what="paused set")
    write_status(url, REF, running("u-io-delay", "Paused"))
    assert finish(proc) == (0, f"{REF} paused\n", "")

    proc = start_ctl(url, "experiment", "resume", REF)
    wait_for(lambda: not specs(url)[REF].paused, what="paused cleared")
    write_status(url, REF, running("u-io-delay"))
    assert finish(proc) == (0, f"{REF} resumed (now Running)\n", "")


def test_pause_without_a_controller_times_out(nats_server):
    url = nats_server.url
    put_spec(url, REF, entry(manifest()))
    result = ctl(url, "experiment", "pause", REF, "--timeout", "0.5")
    assert result.returncode == 3
    assert one_line(result.stderr) == (
        f"chaosctl: {REF} marked paused; no chaos-controller paused it within 0.5s"
    )
    assert specs(url)[REF].paused
    unknown = ctl(url, "experiment", "resume", "default/nope")
    assert unknown.returncode == 1 and "no experiment default/nope" in unknown.stderr


def test_bad_input_is_a_usage_error_even_without_nats(tmp_path):
    """No server to audit the refusal: still exit 2 with the reason, and a warning."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: chaos-mesh.org/v1alpha1\nkind: IoChaos\nspec: {}\n")
    done = chaosctl("nats://127.0.0.1:1", "apply", "-f", str(bad))
    assert done.returncode == 2, done.stderr
    assert "bad.yaml: document 1" in done.stderr and "refusal not audited" in done.stderr
