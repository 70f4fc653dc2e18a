"""chaosctl's experiment verbs in process, without a bus: reading manifests from files,
directories and stdin, when an experiment counts as settled, and every line chaosctl
prints about experiments. The verbs against a real nats-server are tested in
tests/test_chaosctl_experiments.py.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest

from chaosbus.experiments.spec import parse_manifest
from chaosbus.experiments.store import PodRecord, SpecEntry, Status
from chaosctl import experiment_output as show
from chaosctl import experiments
from chaosctl.rulespec import UsageError

REF = "default/io-delay"


def manifest(
    name: str = "io-delay",
    *,
    namespace: str | None = "default",
    labels: dict[str, str] | None = None,
    delay: str = "10ms",
    extra_spec: dict[str, Any] | None = None,
    kind: str = "IoChaos",
) -> dict[str, Any]:
    """A Chaos Mesh v0.9 IoChaos, as its documentation showed them."""
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "chaos-mesh.org/v1alpha1",
        "kind": kind,
        "metadata": meta,
        "spec": {
            "action": "delay",
            "mode": "one",
            "duration": "60s",
            "layer": "fs",
            "path": "/wal/.*",
            "percent": "50",
            "delay": delay,
            "selector": {"labelSelectors": labels or {"app": "db"}},
            **(extra_spec or {}),
        },
    }


def running(uid: str, phase: str = "Running", **more: Any) -> Status:
    return Status(
        phase=phase,
        run=1,
        selected=["default/db-0"],
        pods={"default/db-0": PodRecord("injected", time.time())},
        started_at=time.time(),
        ends_at=time.time() + 60,
        uid=uid,
        kind="IoChaos",
        **more,
    )


# --- pure parts -----------------------------------------------------------------------------


def test_read_sources(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for name in ("b.YAML", "a.yml", "c.json", "d.txt"):
        (folder / name).write_text(name)
    got = experiments.read_sources([str(folder), "-"], stdin=io.BytesIO(b"piped"))
    assert [(Path(s.name).name, s.data) for s in got] == [
        ("a.yml", b"a.yml"),
        ("b.YAML", b"b.YAML"),
        ("c.json", b"c.json"),
        ("stdin", b"piped"),
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"no \.yaml, \.yml or \.json file"):
        experiments.read_sources([str(tmp_path / "empty")])
    with pytest.raises(UsageError, match="cannot read it"):
        experiments.read_sources([str(tmp_path / "missing.yaml")])
    with pytest.raises(UsageError, match="given twice"):
        experiments.read_sources(["-", "-"], stdin=io.BytesIO(b""))


def test_settled():
    assert experiments.settled(running("u"))
    assert experiments.settled(running("u", "Failed"))
    assert not experiments.settled(Status(phase="Pending"))
    assert not experiments.settled(Status(phase="Injecting", run=1))
    assert not experiments.settled(Status(phase="Running", run=0))
    assert experiments.settled(Status(phase="Waiting", run=0, next_run=time.time() + 60))


def test_output_times():
    assert [show.span(s) for s in (0, 8.4, 59.6, 61, 3600, 3720, 90000, -5)] == [
        "0s", "8s", "1m", "1m1s", "1h", "1h2m", "1d1h", "0s",
    ]  # fmt: skip
    assert show.next_run(None, 100) == "-"
    assert show.next_run(108, 100) == "in 8s"
    assert show.next_run(90, 100) == "due"
    assert show.time_left(None, 100) == "-"
    assert show.time_left(130, 100) == "30s"
    assert show.stamp(0, 60) == "1970-01-01T00:00:00Z (1m ago)"


def test_output_lines():
    assert show.applied("FsChaos", "a/b", "created") == "fschaos a/b created"
    assert show.rejection("f.yaml", 2, "IoChaos", "a/b", "why") == (
        "f.yaml: document 2 (IoChaos a/b): why"
    )
    assert show.rejection("f.yaml", 1, None, None, "why") == "f.yaml: document 1: why"
    assert show.rejection("f.yaml", None, None, None, "why") == "f.yaml: why"
    assert show.rule({"action": "latency", "delay": 0.01, "methods": [], "path_regex": "^/w"}) == (
        "latency methods=all delay=10ms path_regex=^/w"
    )
    assert show.experiments([], 0) == "no experiments"


def test_output_describe_without_a_status():
    doc = manifest()
    stored = SpecEntry(doc, "chaosctl", "me@here", 0, paused=True, uid="u")
    text = show.describe(REF, stored, parse_manifest(doc), None, None, None, [], 60)
    assert "Paused:      yes" in text
    assert "Status:      Pending (no controller yet)" in text
    assert "Events:      none in the audit trail" in text
    broken = show.describe(REF, stored, None, "spec.mode: bad", None, "phase: bad", [], 60)
    assert "Spec:        unreadable: spec.mode: bad" in broken
    assert "Status:      unreadable: phase: bad" in broken
