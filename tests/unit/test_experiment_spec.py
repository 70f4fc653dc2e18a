"""The experiment spec layer on its own: manifests, schedules, selectors, pod choice.

Pure and fast: no NATS, no FUSE, no Kubernetes.
"""

from __future__ import annotations

import calendar
import copy
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import pytest

from chaosbus import labels as selectors
from chaosbus.experiments.cron import Schedule, parse_go_duration
from chaosbus.experiments.manifests import load_documents
from chaosbus.experiments.selection import choose, count_for
from chaosbus.experiments.spec import (
    Experiment,
    PodSelector,
    SpecError,
    parse_manifest,
)
from chaosbus.rules import FaultRule

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "experiments"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def load_example(name: str) -> dict:
    (doc,) = load_documents((EXAMPLES / name).read_bytes(), source=name)
    return doc


def v09(**spec) -> dict:
    base = {
        "action": "errno",
        "mode": "one",
        "selector": {"labelSelectors": {"app": "tikv"}},
    }
    base.update(spec)
    return {
        "apiVersion": "chaos-mesh.org/v1alpha1",
        "kind": "IoChaos",
        "metadata": {"name": "exp", "namespace": "chaos"},
        "spec": {k: v for k, v in base.items() if v is not None},
    }


def v2(**spec) -> dict:
    base = {
        "action": "latency",
        "mode": "one",
        "selector": {"labelSelectors": {"app": "etcd"}},
        "volumePath": "/var/run/etcd",
        "delay": "10ms",
    }
    base.update(spec)
    return {
        "apiVersion": "chaos-mesh.org/v1alpha1",
        "kind": "IOChaos",
        "metadata": {"name": "exp", "namespace": "chaos"},
        "spec": {k: v for k, v in base.items() if v is not None},
    }


def fs(**spec) -> dict:
    base = {"mode": "all", "rules": [{"action": "errno", "errno": "EIO"}]}
    base.update(spec)
    return {
        "apiVersion": "chaosbus.io/v1alpha1",
        "kind": "FsChaos",
        "metadata": {"name": "exp", "namespace": "chaos"},
        "spec": {k: v for k, v in base.items() if v is not None},
    }


def refusal(doc: dict) -> str:
    with pytest.raises(SpecError) as info:
        parse_manifest(doc)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- Chaos Mesh v0.9 examples -----------------------------------------------------------


def test_v09_errno_example_parses_unchanged():
    exp = parse_manifest(load_example("io-errno.yaml"))
    assert (exp.flavour, exp.kind, exp.key()) == (
        "v0.9",
        "IoChaos",
        "chaos-testing/io-errno-example",
    )
    assert (exp.mode, exp.value, exp.duration, exp.schedule) == ("one", None, 3.0, "@every 10m")
    assert exp.rules == (
        {"action": "errno", "errno": "random", "methods": ["read", "write"], "percent": 50},
    )
    # v0.9 with no namespaces looked in every namespace.
    assert exp.selector == PodSelector(labels="app=tikv")
    assert any(w.startswith("spec.configName is ignored") for w in exp.warnings)


def test_v09_delay_example_parses_unchanged():
    exp = parse_manifest(load_example("io-delay.yaml"))
    assert exp.flavour == "v0.9"
    assert exp.rules == (
        {"action": "latency", "delay": 0.01, "methods": ["read", "write"], "percent": 50},
    )


def test_v09_mixed_example_parses_unchanged():
    exp = parse_manifest(load_example("io-mixed.yaml"))
    assert exp.rules == (
        {
            "action": "mixed",
            "errno": 5,
            "delay": 0.01,
            "methods": ["fsync", "read", "write"],
            "path_regex": r"(raft|wal)/.*\.log$",
            "percent": 50,
        },
    )
    assert exp.selector.namespaces == ("tidb-cluster-demo",)


def test_every_example_parses_and_every_mode_has_one():
    modes = set()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in load_documents(path.read_bytes(), source=path.name):
            exp = parse_manifest(doc)
            modes.add(exp.mode)
            for rule in exp.rules:
                FaultRule.from_wire(rule)
    assert modes == {"one", "all", "fixed", "fixed-percent", "random-max-percent"}


def test_v09_errno_name_and_number():
    assert parse_manifest(v09(errno="EIO")).rules[0]["errno"] == "EIO"
    assert parse_manifest(v09(errno="eio")).rules[0]["errno"] == "EIO"
    assert parse_manifest(v09(errno="28")).rules[0]["errno"] == 28
    assert parse_manifest(v09(action="mixed", delay="1ms")).rules[0]["errno"] == "random"


def test_v09_defaults_and_ignored_fields():
    exp = parse_manifest(v09(errno="5", delay="1s", addr=":65534", layer=""))
    assert exp.rules == ({"action": "errno", "errno": 5, "percent": 100},)
    assert exp.duration is None and exp.schedule is None
    assert "spec.delay is ignored for action errno" in exp.warnings
    assert any(w.startswith("spec.addr is ignored") for w in exp.warnings)


def test_v09_path_is_a_regex_and_empty_path_means_every_file():
    assert parse_manifest(v09(path="^/data/.*\\.sst$")).rules[0]["path_regex"] == (
        "^/data/.*\\.sst$"
    )
    assert "path_regex" not in parse_manifest(v09(path="")).rules[0]
    assert "path" not in parse_manifest(v09(path="")).rules[0]


def test_chaos_mesh_1x_iochaos_with_2x_actions_is_read_as_2x():
    doc = v2(scheduler={"cron": "@hourly"}, duration="10s")
    doc["kind"] = "IoChaos"
    exp = parse_manifest(doc)
    assert (exp.flavour, exp.kind, exp.schedule) == ("2.x", "IoChaos", "@hourly")


# --- Chaos Mesh 2.x ------------------------------------------------------------------------


def test_v2_latency_path_is_made_relative_to_volume_path():
    exp = parse_manifest(load_example("io-latency.yaml"))
    assert exp.flavour == "2.x"
    assert exp.rules == ({"action": "latency", "delay": 0.1, "path": "**/*", "percent": 50},)
    assert exp.volume_path == "/var/run/etcd"
    # 2.x looked in the experiment's own namespace when none was given.
    assert exp.selector.namespaces == ("chaos-testing",)


def test_v2_fault_methods_are_lowercased_and_container_names_kept():
    exp = parse_manifest(load_example("io-fault.yaml"))
    assert exp.rules == (
        {
            "action": "errno",
            "errno": 2,
            "methods": ["read", "write"],
            "path": "**/*",
            "percent": 100,
        },
    )
    assert (exp.mode, exp.value, exp.container_names) == ("fixed", "2", ("etcd",))


def test_v2_setattr_maps_to_the_calls_chaosfs_sees():
    exp = parse_manifest(v2(methods=["SETATTR", "open"]))
    assert exp.rules[0]["methods"] == ["chmod", "chown", "open", "truncate", "utimens"]
    assert "FORGET" in refusal(v2(methods=["FORGET"]))


def test_v2_attr_override_maps_fields_and_kinds():
    exp = parse_manifest(load_example("io-attr-override.yaml"))
    assert exp.rules[0]["attr"] == {"mode": 72, "nlink": 1, "size": 1048576, "mtime": 1600000000.0}
    exp = parse_manifest(
        v2(action="attrOverride", delay=None, attr={"kind": "namedPipe", "ino": 7, "uid": 0})
    )
    assert exp.rules[0] == {
        "action": "attr",
        "attr": {"kind": "fifo", "ino": 7, "uid": 0},
        "percent": 100,
    }
    for chaos_mesh, chaosbus in [
        ("charDevice", "chardev"),
        ("blockDevice", "blockdev"),
        ("directory", "dir"),
        ("regularFile", "file"),
        ("symlink", "symlink"),
        ("unixSocket", "socket"),
    ]:
        doc = v2(action="attrOverride", delay=None, attr={"kind": chaos_mesh})
        assert parse_manifest(doc).rules[0]["attr"] == {"kind": chaosbus}
    timed = v2(action="attrOverride", delay=None, attr={"atime": {"sec": 10, "nsec": 500_000_000}})
    assert parse_manifest(timed).rules[0]["attr"] == {"atime": 10.5}


def test_v2_mistake_maps_fields():
    exp = parse_manifest(load_example("io-mistake.yaml"))
    assert exp.rules[0] == {
        "action": "mistake",
        "filling": "random",
        "max_occurrences": 10,
        "max_length": 16,
        "methods": ["read", "write"],
        "path": "**/*",
        "percent": 10,
    }


def test_v2_warnings_for_volume_path_and_paths_outside_it():
    exp = parse_manifest(v2(volumePath="data", path="logs/*.log"))
    assert exp.rules[0]["path"] == "logs/*.log"
    assert any("not absolute" in w for w in exp.warnings)
    exp = parse_manifest(v2(path="/elsewhere/x.log"))
    assert exp.rules[0]["path"] == "elsewhere/x.log"
    assert any("not under volumePath" in w for w in exp.warnings)


# --- chaosbus FsChaos ------------------------------------------------------------------------


def test_fschaos_example_keeps_rule_vocabulary_and_steps():
    exp = parse_manifest(load_example("fschaos.yaml"))
    assert (exp.flavour, exp.duration, exp.schedule) == ("chaosbus", 30.0, "@every 2m")
    assert exp.rules[0] == {
        "action": "errno",
        "errno": "EIO",
        "methods": ["fsync"],
        "path": "raft/**/*.log",
        "after": 2,
        "count": 10,
        "caller_comm": "tikv-server",
    }
    assert exp.rules[1]["delay"] == 0.05 and exp.rules[1]["jitter"] == 0.02
    assert exp.rules[2]["dry_run"] is True and exp.rules[2]["path_regex"] == r"/db/[0-9]+\.sst$"
    assert [s["op"] for s in exp.steps] == ["report-unsynced", "torn-write"]


def test_fschaos_accepts_seconds_and_steps_only():
    exp = parse_manifest(
        fs(duration=1.5, rules=[{"action": "latency", "delay": 0.25}], schedule="*/5 * * * *")
    )
    assert (exp.duration, exp.rules[0]["delay"]) == (1.5, 0.25)
    exp = parse_manifest(fs(rules=None, steps=[{"op": "power-cut", "signal": "TERM"}]))
    assert exp.rules == () and exp.steps == ({"op": "power-cut", "signal": "TERM"},)


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (v09(percent="101"), 'spec.percent: must be from 0 to 100, got "101"'),
        (v09(percent="abc"), 'spec.percent: must be a whole number from 0 to 100, got "abc"'),
        (v09(percent="-1"), 'spec.percent: must be from 0 to 100, got "-1"'),
        (v09(percent=50.5), "spec.percent: must be a whole number from 0 to 100, got 50.5"),
        (v09(action="explode"), "spec.action: must be one of delay, errno, mixed"),
        (v09(action=None), "spec.action: required"),
        (v09(mode="some"), "spec.mode: must be one of one, all, fixed"),
        (v09(mode=None), "spec.mode: required"),
        (v09(mode="fixed"), "spec.value: mode fixed needs a value"),
        (v09(mode="fixed", value="two"), 'spec.value: must be a whole number, got "two"'),
        (v09(mode="fixed", value="0"), 'spec.value: mode fixed needs at least 1 pod, got "0"'),
        (v09(mode="fixed-percent", value="0"), "spec.value: mode fixed-percent needs a percentage"),
        (v09(mode="random-max-percent", value="101"), "spec.value: mode random-max-percent"),
        (v09(mode="fixed", value=True), "spec.value: must be a whole number, got True"),
        (v09(scheduler={"cron": "61 * * * *"}, duration="1s"), "spec.scheduler.cron: minute"),
        (v09(scheduler={"cron": "* * * *"}, duration="1s"), "spec.scheduler.cron: expected 5"),
        (v09(scheduler={"cron": "@every 10m"}), "spec.duration: required with a schedule"),
        (v09(scheduler={"cron": "@every 10m", "x": 1}, duration="1s"), "spec.scheduler.x"),
        (v09(duration="soon"), 'spec.duration: invalid duration "soon"'),
        (v09(duration="10"), 'spec.duration: invalid duration "10"'),
        (v09(duration="-5s"), 'spec.duration: must not be negative, got "-5s"'),
        (v09(duration="0s"), 'spec.duration: must be above zero, got "0s"'),
        (v09(duration=5), "spec.duration: must be a Go duration"),
        (v09(layer="block"), 'spec.layer: only the "fs" layer exists in chaosbus, got "block"'),
        (v09(errno="EWHAT"), "spec.errno: unknown errno name 'EWHAT'"),
        (v09(errno="-5"), "spec.errno: "),
        (v09(action="delay"), "spec.delay: required for action delay"),
        (v09(action="delay", delay="2h"), "spec.delay: at most 3600 seconds"),
        (v09(action="delay", delay="0ms"), "spec.delay: must be above zero"),
        (v09(path="wal/(.*"), "spec.path: not a valid RE2 regular expression: missing )"),
        (v09(path="(a)\\1"), "spec.path: not a valid RE2 regular expression"),
        (v09(path="a" * 1025), "spec.path: longer than 1024 characters"),
        (v09(methods=["read", "teleport"]), 'spec.methods: unknown method "teleport"'),
        (v09(methods="read"), "spec.methods: must be a list of strings"),
        (v09(volumePath="/data"), "spec.volumePath: unknown field for a Chaos Mesh v0.9 IoChaos"),
        (v09(colour="red"), "spec.colour: unknown field"),
        (v09(addr=5), "spec.addr: must be a string"),
        (v09(selector={"labelSelectors": {"app": "a b"}}), "spec.selector.labelSelectors:"),
        (v09(selector={"labelSelector": {"app": "x"}}), "spec.selector.labelSelector: unknown"),
        (v09(selector={"namespaces": ["Bad_NS"]}), "spec.selector.namespaces[0]"),
        (v09(selector={"namespaces": ["!"]}), "spec.selector.namespaces[0]"),
        (v09(selector={"pods": {"ns": ["Web_0"]}}), "spec.selector.pods.ns"),
        (v09(selector={"podPhaseSelectors": ["Sleeping"]}), "spec.selector.podPhaseSelectors"),
        (
            v09(selector={"expressionSelectors": [{"key": "a", "operator": "Near"}]}),
            "spec.selector.expressionSelectors[0].operator",
        ),
        (
            v09(selector={"expressionSelectors": [{"key": "a", "operator": "In", "values": []}]}),
            "spec.selector.expressionSelectors[0].values",
        ),
        (v2(remoteCluster="east"), "spec.remoteCluster: chaosbus runs experiments only"),
        (v2(delay=None), "spec.delay: required for action latency"),
        (v2(action="fault", delay=None), "spec.errno: required for action fault"),
        (v2(action="attrOverride", delay=None), "spec.attr: required"),
        (v2(action="attrOverride", delay=None, attr={"colour": 1}), "spec.attr.colour: unknown"),
        (v2(action="attrOverride", delay=None, attr={"kind": "pipe"}), "spec.attr.kind:"),
        (v2(action="attrOverride", delay=None, attr={"perm": 70000}), "spec.attr.perm:"),
        (v2(action="attrOverride", delay=None, attr={"size": -1}), "spec.attr.size: must not be"),
        (
            v2(action="attrOverride", delay=None, attr={"mtime": {"sec": 1, "nsec": 10**9}}),
            "spec.attr.mtime.nsec",
        ),
        (
            v2(action="attrOverride", delay=None, attr={"kind": "directory"}, methods=["GETATTR"]),
            "spec: attr kind needs the lookup method",
        ),
        (v2(action="mistake", delay=None), "spec.mistake: required"),
        (v2(action="mistake", delay=None, mistake={"filling": "ones"}), "spec.mistake.filling"),
        (v2(action="mistake", delay=None, mistake={"maxLength": 0}), "spec.mistake.maxLength"),
        (v2(action="mistake", delay=None, methods=["OPEN"]), "spec.mistake: required"),
        (v2(percent=101), "spec.percent: must be from 0 to 100, got 101"),
        (v2(methods=["TELEPORT"]), 'spec.methods: unknown method "TELEPORT"'),
        (v2(path="a/**b"), "spec.path: '**' must be a whole path segment"),
        (v2(configName="x"), "spec.configName: unknown field for a Chaos Mesh 2.x IOChaos"),
        (fs(mode=None), "spec.mode: required"),
        (fs(rules=None), "spec.rules: an FsChaos needs at least one rule or step"),
        (fs(rules=[{"action": "errno", "errno": "EIO", "id": "x"}]), "spec.rules[0].id: not"),
        (fs(rules=[{"action": "errno", "errno": "EIO", "ttl": 5}]), "spec.rules[0].ttl: not"),
        (fs(rules=[{"action": "errno", "errno": "EIO", "colour": 1}]), "spec.rules[0].colour"),
        (fs(rules=[{"action": "explode"}]), "spec.rules[0]: action must be one of"),
        (fs(rules=[{"action": "latency", "delay": "soon"}]), "spec.rules[0].delay: invalid"),
        (fs(rules=[{"action": "latency", "delay": -1}]), "spec.rules[0].delay: must not be"),
        (fs(rules=[{"action": "errno", "errno": "EIO", "count": -1}]), "spec.rules[0]: count"),
        (
            fs(rules=[{"action": "errno", "errno": "EIO", "percent": float("nan")}]),
            "spec.rules[0].percent: must be a finite number, got nan",
        ),
        (
            fs(rules=[{"action": "errno", "errno": "EIO", "after": float("-inf")}]),
            "spec.rules[0].after: must be a finite number, got -inf",
        ),
        (
            fs(rules=[{"action": "errno", "errno": "EIO", "path": "a", "path_regex": "b"}]),
            "spec.rules[0].path_regex: give path (a glob) or path_regex, not both",
        ),
        (
            fs(rules=[{"action": "errno", "errno": "EIO", "path_regex": "(("}]),
            "spec.rules[0].path_regex: not a valid RE2",
        ),
        (fs(steps=[{"op": "torn-write"}]), "spec.steps[0]: torn-write needs exactly one of"),
        (fs(steps=[{"op": "jump"}]), "spec.steps[0]: 'jump' is not a lazy-mode op"),
        (fs(steps=[{"op": "power-cut", "target": {}}]), "spec.steps[0].target: not allowed"),
        (fs(duration=-1), "spec.duration: must be above zero"),
        (fs(duration=float("inf")), "spec.duration: must be a finite number, got inf"),
        (fs(schedule="@every 500ms", duration="1s"), "spec.schedule: @every needs at least 1s"),
        (fs(schedule="0 0 30 2 *", duration="1s"), 'spec.schedule: "0 0 30 2 *" names a date'),
        (fs(value=float("nan"), mode="fixed"), "spec.value: must be a finite number, got nan"),
        (fs(frobnicate=1), "spec.frobnicate: unknown field for FsChaos"),
    ],
)
def test_invalid_manifests_give_one_line_naming_the_field(doc, expected):
    assert refusal(doc).startswith(expected)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"apiVersion": "v1"}, 'apiVersion: unknown "v1"'),
        ({"apiVersion": None}, "apiVersion: required"),
        ({"kind": "NetworkChaos"}, 'kind: "NetworkChaos" is not a kind chaosbus runs'),
        ({"metadata": None}, "metadata.name: required"),
        ({"metadata": {"namespace": "x"}}, "metadata.name: required"),
        ({"metadata": {"name": "Exp_1"}}, "metadata.name: must be a DNS-1123 subdomain"),
        ({"metadata": {"name": "a" * 254}}, "metadata.name: must be a DNS-1123 subdomain"),
        ({"metadata": {"name": "x", "namespace": "a.b"}}, "metadata.namespace: must be a DNS"),
        ({"spec": None}, "spec: required"),
        ({"spec": ["x"]}, "spec: must be a map, got a list"),
        ({"extra": 1}, "extra: unknown field"),
    ],
)
def test_invalid_envelopes(change, expected):
    doc = v09()
    doc.update(change)
    if doc["metadata"] is None:
        del doc["metadata"]
    assert refusal(doc).startswith(expected)


def test_fschaos_kind_must_match_its_group():
    doc = fs()
    doc["kind"] = "IoChaos"
    assert refusal(doc).startswith('kind: "IoChaos" is not a kind chaosbus runs from chaosbus.io')


def test_namespace_defaults_and_old_api_group():
    doc = v09()
    del doc["metadata"]["namespace"]
    assert parse_manifest(doc, default_namespace="team-a").namespace == "team-a"
    doc["apiVersion"] = "pingcap.com/v1alpha1"
    exp = parse_manifest(doc)
    assert exp.flavour == "v0.9" and any("old API group" in w for w in exp.warnings)


def test_value_is_normalized_and_ignored_where_chaos_mesh_ignored_it():
    assert parse_manifest(v09(mode="fixed", value=3)).value == "3"
    assert parse_manifest(v09(mode="fixed-percent", value=" 40 ")).value == "40"
    exp = parse_manifest(v09(mode="all", value="5"))
    assert exp.value is None and "spec.value is ignored in mode all" in exp.warnings


# --- wire round trip -----------------------------------------------------------------------


def test_experiment_round_trips_through_msgpack():
    doc = fs(
        selector={
            "pods": {"b": ["p2", "p1"], "a": ["p0"]},
            "annotationSelectors": {"team": "db"},
            "fieldSelectors": {"spec.nodeName": "n1"},
            "podPhaseSelectors": ["Running"],
            "nodes": ["node-1"],
            "nodeSelectors": {"disk": "ssd"},
            "labelSelectors": {"app": "x"},
        },
        duration="2m",
        schedule="0 */2 * * *",
        steps=[{"op": "lose-unsynced", "metadata": True}],
    )
    exp = parse_manifest(doc)
    wire = msgpack.unpackb(msgpack.packb(exp.to_wire(), use_bin_type=True), raw=False)
    assert Experiment.from_wire(wire) == exp
    assert wire["selector"]["pods"] == {"a": ["p0"], "b": ["p1", "p2"]}
    for name in ("io-errno.yaml", "io-attr-override.yaml", "fschaos.yaml"):
        exp = parse_manifest(load_example(name))
        wire = msgpack.unpackb(msgpack.packb(exp.to_wire(), use_bin_type=True), raw=False)
        assert Experiment.from_wire(wire) == exp


def test_parsing_does_not_share_or_change_the_input():
    doc = load_example("fschaos.yaml")
    before = copy.deepcopy(doc)
    exp = parse_manifest(doc)
    exp.rules[0]["count"] = 99
    assert doc == before


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"v": 2}, "experiment.v: unsupported version 2"),
        ({"flavour": "v3"}, "experiment.flavour"),
        ({"mode": "most"}, "experiment.mode"),
        ({"duration": -1}, "experiment.duration: must be above zero"),
        ({"rules": ["x"]}, "experiment.rules: must be a list of maps"),
        ({"selector": {"labels": "a in ("}}, "label selector 'a in ('"),
        ({"name": None}, "experiment.name: must be a string"),
    ],
)
def test_from_wire_refuses_malformed(change, expected):
    wire = parse_manifest(v09()).to_wire()
    wire.update(change)
    with pytest.raises(SpecError) as info:
        Experiment.from_wire(wire)
    assert str(info.value).startswith(expected)


# --- selectors -----------------------------------------------------------------------------


def test_pod_selector_matches_registered_sidecars():
    exp = parse_manifest(
        v2(
            selector={
                "namespaces": ["db", "cache"],
                "labelSelectors": {"app": "tikv"},
                "matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["b", "a"]},
                    {"key": "canary", "operator": "DoesNotExist"},
                ],
            }
        )
    )
    sel = exp.selector
    assert sel.labels == "app=tikv,!canary,zone in (a,b)"
    assert not sel.needs_kubernetes()
    assert sel.matches_sidecar("db", "tikv-0", {"app": "tikv", "zone": "a"})
    assert not sel.matches_sidecar("db", "tikv-0", {"app": "tikv", "zone": "c"})
    assert not sel.matches_sidecar("db", "tikv-0", {"app": "tikv", "zone": "a", "canary": "1"})
    assert not sel.matches_sidecar("web", "tikv-0", {"app": "tikv", "zone": "a"})


def test_namespace_terms_include_and_exclude_as_chaos_mesh_read_them():
    sel = parse_manifest(fs(selector={"namespaces": ["!kube-system", " !cache"]})).selector
    assert sel.namespaces == ("!cache", "!kube-system")  # no default: only exclusions given
    assert sel.matches_sidecar("db", "p", {})
    assert not sel.matches_sidecar("kube-system", "p", {})
    assert not sel.matches_sidecar("cache", "p", {})
    sel = parse_manifest(fs(selector={"namespaces": ["db", "web", "!web"]})).selector
    assert sel.matches_sidecar("db", "p", {})
    assert not sel.matches_sidecar("web", "p", {})
    assert not sel.matches_sidecar("other", "p", {})
    phases = parse_manifest(v09(selector={"podPhaseSelectors": ["Running", "!Failed"]})).selector
    assert phases.phases == ("!Failed", "Running") and phases.needs_kubernetes()


def test_pods_win_over_every_other_selector():
    sel = parse_manifest(
        fs(selector={"pods": {"db": ["tikv-1"]}, "labelSelectors": {"app": "nope"}})
    ).selector
    assert sel.namespaces == ()  # no default namespace when pods are named
    assert sel.matches_sidecar("db", "tikv-1", {})
    assert not sel.matches_sidecar("db", "tikv-2", {"app": "nope"})


@pytest.mark.parametrize(
    ("selector", "field"),
    [
        ({"annotationSelectors": {"a": "b"}}, "annotationSelectors"),
        ({"fieldSelectors": {"status.phase": "Running"}}, "fieldSelectors"),
        ({"podPhaseSelectors": ["Running"]}, "podPhaseSelectors"),
        ({"nodes": ["n1"]}, "nodes"),
        ({"nodeSelectors": {"disk": "ssd"}}, "nodeSelectors"),
    ],
)
def test_kubernetes_only_selectors_are_flagged(selector, field):
    sel = parse_manifest(v09(selector=selector)).selector
    assert sel.needs_kubernetes()
    with pytest.raises(SpecError, match=f"selector: {field} need the Kubernetes API"):
        sel.matches_sidecar("ns", "pod", {})


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {}, True),
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("app!=web", {"app": "web"}, False),
        ("tier in (a, b)", {"tier": "b"}, True),
        ("tier in (a,b)", {}, False),
        ("tier notin (a,b)", {}, True),
        ("tier notin (a,b)", {"tier": "a"}, False),
        ("canary", {"canary": ""}, True),
        ("canary", {}, False),
        ("!canary", {}, True),
        ("!canary", {"canary": "1"}, False),
        ("app=web, example.com/team=db,!old", {"app": "web", "example.com/team": "db"}, True),
        ("empty=", {"empty": ""}, True),
        ("empty=", {"empty": "x"}, False),
    ],
)
def test_label_selector_dialect(text, labels, expected):
    assert selectors.parse(text).matches(labels) is expected


def test_label_selector_prints_canonically():
    assert str(selectors.parse(" zone in (b,a) , app = web,!x ")) == "app=web,!x,zone in (a,b)"
    assert str(selectors.parse("a==b")) == "a=b"


@pytest.mark.parametrize(
    "text",
    ["app=", "a=b=c", "=b", "a in b", "a in (b", "a in ()", "a,", ",a", "a b", "-a=b", "a=b c"],
)
def test_label_selector_refusals(text):
    if text == "app=":
        assert selectors.parse(text).matches({"app": ""})
        return
    with pytest.raises(selectors.SelectorError) as info:
        selectors.parse(text)
    assert "\n" not in str(info.value) and "label selector" in str(info.value)


# --- cron ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/5 * * * *", "2024-01-01 00:00", "2024-01-01 00:05"),
        ("*/5 * * * *", "2024-01-01 00:04:59", "2024-01-01 00:05"),
        ("0 * * * *", "2024-01-01 10:30", "2024-01-01 11:00"),
        ("@hourly", "2024-12-31 23:59", "2025-01-01 00:00"),
        ("@daily", "2024-02-28 12:00", "2024-02-29 00:00"),
        ("@weekly", "2024-01-01 00:00", "2024-01-07 00:00"),  # the next Sunday
        ("@monthly", "2024-01-31 00:00", "2024-02-01 00:00"),
        ("@yearly", "2024-06-01 00:00", "2025-01-01 00:00"),
        ("30 9 * * mon-fri", "2024-01-05 10:00", "2024-01-08 09:30"),  # Friday -> Monday
        ("0 0 29 feb *", "2023-03-01 00:00", "2024-02-29 00:00"),
        ("0 0 31 * *", "2024-04-01 00:00", "2024-05-31 00:00"),
        ("0 0 1,15 * 1", "2024-01-02 00:00", "2024-01-08 00:00"),  # OR: Monday comes first
        ("0 0 */2 * *", "2024-01-31 00:00", "2024-02-01 00:00"),  # */2 restricts: AND with *
        ("0 0 */1 * 1", "2024-01-02 00:00", "2024-01-08 00:00"),  # */1 is *: Mondays only
        ("5-10/5 1 * JAN,Mar *", "2024-01-31 01:06", "2024-01-31 01:10"),
        ("5-10/5 1 * JAN,Mar *", "2024-01-31 01:10", "2024-03-01 01:05"),
        ("CRON_TZ=UTC 0 12 * * *", "2024-01-01 12:00", "2024-01-02 12:00"),
        ("0 0 13 * 5", "2024-01-01 00:00", "2024-01-05 00:00"),
    ],
)
def test_cron_next_times(expr, after, expected):
    assert iso(Schedule.parse(expr).next_after(ts(after))) == expected


def test_every_is_an_interval_from_the_given_time():
    every = Schedule.parse("@every 10m")
    assert every.next_after(1000.7) == 1600.0
    assert Schedule.parse("@every 1.5s").next_after(10.0) == 11.0  # fractions dropped
    assert Schedule.parse("@every 1h30m").every == 5400.0


def test_cron_matches_a_minute_by_minute_scan():
    rng = random.Random(7)
    start = ts("2024-02-20 00:00")
    for expr in ["7,37 */3 * * *", "0 6 1-7 * sun", "15 4 10-12 * 2,4", "*/20 1 * * sat"]:
        sched = Schedule.parse(expr)
        t = start + rng.randrange(0, 86400 * 20)
        found = sched.next_after(t)
        probe = (int(t) // 60 + 1) * 60
        while not _brute_matches(sched, probe):
            probe += 60
        assert found == probe, expr


def _brute_matches(sched: Schedule, t: float) -> bool:
    d = datetime.fromtimestamp(t, UTC)
    dow = (calendar.weekday(d.year, d.month, d.day) + 1) % 7
    dom_ok, dow_ok = d.day in sched.days, dow in sched.weekdays
    day_ok = dom_ok and dow_ok if sched.days_star or sched.weekdays_star else dom_ok or dow_ok
    return (
        d.minute in sched.minutes and d.hour in sched.hours and d.month in sched.months and day_ok
    )


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("0 0 30 2 *", "never occurs"),
        ("0 0 31 4,6,9,11 *", "never occurs"),
        ("* * * * 7", "outside 0-6"),
        ("60 * * * *", "outside 0-59"),
        ("* 5-2 * * *", "starts after it ends"),
        ("*/0 * * * *", "step"),
        ("* * * * * *", "expected 5 fields"),
        ("@sometimes", "unknown descriptor"),
        ("@every", "needs a duration"),
        ("@every 0.5s", "at least 1s"),
        ("@every -5m", "must not be negative"),
        ("TZ=Europe/Paris 0 0 * * *", "not supported"),
        ("a * * * *", "is not a number"),
        ("1-2-3 * * * *", "too many '-'"),
        ("", "empty schedule"),
    ],
)
def test_cron_refusals(expr, expected):
    with pytest.raises(SpecError, match=r"^schedule: ") as info:
        Schedule.parse(expr)
    assert expected in str(info.value)


def test_rare_dates_are_found_quickly():
    sched = Schedule.parse("0 0 29 2 *")
    began = time.perf_counter()
    assert iso(sched.next_after(ts("2097-03-01 00:00"))) == "2104-02-29 00:00"  # 2100 is no leap
    assert time.perf_counter() - began < 0.5


def test_go_durations():
    assert parse_go_duration("1h2m3.5s", field="d") == 3723.5
    assert parse_go_duration("250ms", field="d") == 0.25
    assert parse_go_duration("10us", field="d") == pytest.approx(1e-5)
    assert parse_go_duration("10µs", field="d") == pytest.approx(1e-5)
    assert parse_go_duration("0", field="d") == 0.0
    for bad in ["", "5", "5 s", "1d", "inf", "nan", "1e3s", "--1s"]:
        with pytest.raises(SpecError, match=r"^d: "):
            parse_go_duration(bad, field="d")


# --- selection -----------------------------------------------------------------------------

PODS = [f"ns/pod-{i}" for i in range(5)]


def test_one_and_all():
    picked = choose("one", None, PODS, random.Random(1))
    assert len(picked) == 1 and picked[0] in PODS
    assert choose("all", None, list(reversed(PODS)), random.Random(1)) == PODS
    assert choose("all", None, [], random.Random(1)) == []


def test_fixed_and_fixed_percent_counts():
    assert len(choose("fixed", "2", PODS, random.Random(1))) == 2
    assert choose("fixed", "9", PODS, random.Random(1)) == PODS
    assert len(choose("fixed-percent", "40", PODS, random.Random(1))) == 2
    # Chaos Mesh floored: 10 percent of 5 pods is no pod.
    assert choose("fixed-percent", "10", PODS, random.Random(1)) == []
    assert choose("fixed-percent", "100", PODS, random.Random(1)) == PODS


def test_random_max_percent_stays_in_range_and_can_pick_none():
    rng = random.Random(11)
    sizes = [len(choose("random-max-percent", "60", PODS, rng)) for _ in range(200)]
    assert set(sizes) == {0, 1, 2, 3}


def test_choice_is_deterministic_and_ignores_input_order():
    first = [choose("fixed", "2", PODS, random.Random(s)) for s in range(20)]
    again = [choose("fixed", "2", list(reversed(PODS)), random.Random(s)) for s in range(20)]
    assert first == again
    assert all(p == sorted(p) for p in first)
    assert len({tuple(p) for p in first}) > 3


@pytest.mark.parametrize(
    ("mode", "value"),
    [
        ("fixed", "0"),
        ("fixed", "x"),
        ("fixed-percent", "0"),
        ("random-max-percent", "101"),
        ("most", None),
        ("fixed", None),
    ],
)
def test_bad_modes_and_values_raise(mode, value):
    with pytest.raises(ValueError):
        count_for(mode, value, 5, random.Random(0))


# --- loading files -------------------------------------------------------------------------


def test_multi_document_yaml_skips_empty_and_expands_lists():
    text = (
        "---\n# nothing here\n---\n"
        + (EXAMPLES / "io-errno.yaml").read_text()
        + "\n---\napiVersion: v1\nkind: List\nitems:\n"
        + "  - apiVersion: chaosbus.io/v1alpha1\n    kind: FsChaos\n    metadata: {name: a}\n"
        + "    spec: {mode: all, rules: [{action: short}]}\n---\n"
    )
    docs = load_documents(text, source="many.yaml")
    assert [d["kind"] for d in docs] == ["IoChaos", "FsChaos"]
    assert [parse_manifest(d).key() for d in docs] == [
        "chaos-testing/io-errno-example",
        "default/a",
    ]


def test_json_documents_and_kubectl_output_load():
    import json

    doc = load_example("io-latency.yaml")
    doc["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    listed = {"apiVersion": "v1", "kind": "IOChaosList", "items": [doc]}
    (loaded,) = load_documents(json.dumps(listed).encode(), source="x.json")
    assert loaded == doc
    (from_yaml,) = load_documents(
        b"kind: X\nmetadata:\n  creationTimestamp: 2024-01-01T00:00:00Z\n", source="y"
    )
    assert from_yaml["metadata"]["creationTimestamp"] == "2024-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xfe" * 10, "x.yaml: not UTF-8 text"),
        (b"a: b\x00", "x.yaml: contains a NUL byte"),
        (b"- a\n- b\n", "x.yaml: document 1: must be a map (a manifest), got a list"),
        (b"a: 1\n---\nhello\n", "x.yaml: document 2: must be a map"),
        (b"{{{: ][", "x.yaml: line 1 column"),
        (b"a: !!python/object:os.system x\n", "x.yaml: line 1 column 4: could not determine"),
        (b"a: !!set {x}\n", "x.yaml: document 1: a: values of type set are not supported"),
        (b"kind: List\nitems: [1]\n", "x.yaml: document 1.items[0]: must be a map"),
        (b"[" * 100 + b"]" * 100, "x.yaml: document 1: nested deeper than 64 levels"),
        (b"- " * 200_000 + b"x", "x.yaml: line 1: nested deeper than 64 levels"),
        (b"[" * 500_000, "x.yaml: nested deeper than 64 levels"),
        ("a: " + "[1, " * 30 + "1" + "]" * 30, None),
    ],
)
def test_bad_files_are_refused(data, expected):
    if expected is None:
        assert load_documents(data, source="x.yaml")
        return
    with pytest.raises(SpecError) as info:
        load_documents(data, source="x.yaml")
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_oversized_input_is_refused_before_parsing():
    began = time.perf_counter()
    for data in (b"\x00garbage" * 1_250_000, "x" * (1024 * 1024 + 1)):
        with pytest.raises(SpecError, match="byte limit"):
            load_documents(data, source="big")
    assert time.perf_counter() - began < 0.5


def test_alias_bombs_are_refused_quickly():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        ref = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([ref] * 10)}]")
    began = time.perf_counter()
    with pytest.raises(SpecError, match="more than 100000 values once aliases are expanded"):
        load_documents("\n".join(lines), source="bomb.yaml")
    merge = ["m0: &m0 {k: v}"] + [
        f"m{i}: &m{i} {{<<: [*m{i - 1}], x{i}: [*m{i - 1}, *m{i - 1}, *m{i - 1}]}}"
        for i in range(1, 25)
    ]
    with pytest.raises(SpecError, match="once aliases are expanded"):
        load_documents("\n".join(merge), source="merge.yaml")
    many = "items:\n" + "  - [1, 2, 3, 4, 5, 6, 7, 8, 9]\n" * 12_000
    with pytest.raises(SpecError, match="more than 100000 values"):
        load_documents(many, source="many.yaml")
    assert time.perf_counter() - began < 2
