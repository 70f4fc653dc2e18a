"""Admission as kube-apiserver handles it: every patch applied with the JSON
patch rules the API server uses, to the pod as the API server encodes it, and
the result checked strictly (the 1.32 schema, and the Pod validation rules an
injection can break). The webhook must never hand the API server a pod it then
refuses, nor one that loses the app's data or leaves the app waiting for a
sidecar that is not there; it refuses such injections and admits the pod as it
came, with the reason.

Also here: the API server's second call (reinvocationPolicy: IfNeeded) completes a
pod that a later webhook added a container to, and is silent otherwise. What the
webhook server records (audit events, metrics, nothing for dry runs) is tested over
HTTP in tests/test_admission_rules.py.
"""

from __future__ import annotations

import base64
import copy
import json
from collections import Counter
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chaosbus import codec
from injector import admission
from injector.mutate import mutate
from injector.state import NamespaceInfo, State
from injector.store import BadValue, decode_namespace

from .test_injector_mutate import PREFIX, REQUEST, STATUS, loaded_state, tikv_pod, tikv_rendering

K8S_VERSION = "1.32.0"
ENFORCE = "pod-security.kubernetes.io/enforce"
INIT_REQUEST = f"{PREFIX}/init-request"
# The template's env, as Chaos Mesh's injection configs may carry it.
TEMPLATE_ENV = [{"name": "CHAOS", "value": "on"}, {"name": "TZ", "value": "Asia/Tokyo"}]
# What the API server's ServiceAccount plugin adds to every container.
TOKEN_VOLUME = {
    "name": "kube-api-access-7x2q",
    "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
}
TOKEN_MOUNT = {
    "name": "kube-api-access-7x2q",
    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
    "readOnly": True,
}


def rendering() -> Any:
    """Chaos Mesh v0.9's TiKV rendering, with env, sharing the process namespace as both
    of chaosbus's templates do."""
    return tikv_rendering(env=copy.deepcopy(TEMPLATE_ENV), shareProcessNamespace=True)


def state(labels: dict[str, str] | None = None) -> State:
    """Renderings loaded; namespace tidb asks for chaosfs-tikv for every pod."""
    st_ = loaded_state(rendering(), namespaces={"tidb": {INIT_REQUEST: "chaosfs-tikv"}})
    st_.labels = {"tidb": labels} if labels else {}
    return st_


def review(pod: dict, uid: str = "uid-1", dry_run: bool = False) -> bytes:
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "tidb",
        "operation": "CREATE",
        "object": pod,
    }
    if dry_run:
        request["dryRun"] = True
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    return json.dumps(body).encode()


def answer(pod: dict, st_: State | None = None, **kw: Any) -> admission.Verdict:
    return admission.review(review(pod, **kw), st_ or state(), PREFIX)


# --- the API server's side --------------------------------------------------------------

# Maps the Go types leave out when empty; every other empty object (emptyDir: {},
# securityContext: {}) is a struct the API server keeps.
OMITTED_EMPTY_MAPS = frozenset({"annotations", "labels", "nodeSelector"})


def encoded(value: Any, key: str = "") -> Any:
    """The pod as kube-apiserver encodes it before applying a webhook's patch.

    It applies the patch to its own JSON encoding of the pod (Go structs), not
    to the bytes it sent: null members and empty lists and maps of optional
    fields are not there (every list of a Pod is ``omitempty`` but
    ``spec.containers``), so a patch that "replace"s one of them, or adds into
    an empty annotations map, fails there and the pod creation with it.
    """
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if v is None:
                continue
            v = encoded(v, k)
            if v == [] and k != "containers":
                continue
            if v == {} and k in OMITTED_EMPTY_MAPS:
                continue
            out[k] = v
        return out
    if isinstance(value, list):
        return [encoded(v) for v in value]
    return value


def apiserver_applies(pod: dict, response: dict) -> dict:
    """The pod after the API server applied the answer's patch.

    RFC 6902 as kube-apiserver's json-patch library applies it: a path that
    does not resolve (a "replace" of a missing member, an "add" under a missing
    parent) is an error, and so is what `jsonpatch` refuses.
    """
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(encoded(pod), patch)


def _twice(values: list[Any]) -> list[Any]:
    return sorted({v for v in values if values.count(v) > 1}, key=str)


def rule_breaks(pod: dict) -> list[str]:
    """The Pod validation rules an injection can break, checked independently of
    the injector's own copy of them (services/injector/podrules.py)."""
    spec = pod["spec"]
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    out = [f"container name {n!r} twice" for n in _twice([c["name"] for c in containers])]
    volumes = [v["name"] for v in spec.get("volumes") or []]
    out += [f"volume name {n!r} twice" for n in _twice(volumes)]
    if spec.get("hostPID") is True and spec.get("shareProcessNamespace") is True:
        out.append("hostPID with shareProcessNamespace")
    for c in containers:
        mounts = c.get("volumeMounts") or []
        out += [
            f"{c['name']} mounts missing volume {m['name']!r}"
            for m in mounts
            if m["name"] not in volumes
        ]
        out += [
            f"{c['name']} mounts twice at {p!r}" for p in _twice([m["mountPath"] for m in mounts])
        ]
        out += [
            f"{c['name']} sets env {e!r} twice"
            for e in _twice([e["name"] for e in c.get("env") or []])
        ]
        privileged = (c.get("securityContext") or {}).get("privileged") is True
        if not privileged and any(m.get("mountPropagation") == "Bidirectional" for m in mounts):
            out.append(f"{c['name']} has a Bidirectional mount without privileged")
    return out


def strictly_valid(pod: dict) -> None:
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert rule_breaks(pod) == [], rule_breaks(pod)


def _view(mount: dict) -> tuple[Any, ...]:
    return (mount["name"], mount["mountPath"], mount.get("subPath", ""))


def harm(before: dict, after: dict) -> list[str]:
    """What creating ``after`` instead of ``before`` would break for the user."""
    out = [b for b in rule_breaks(after) if b not in rule_breaks(before)]
    spec_b, spec_a = before["spec"], after["spec"]
    volumes_a = {v["name"]: v for v in spec_a.get("volumes") or []}
    for volume in spec_b.get("volumes") or []:
        if volumes_a.get(volume["name"]) != volume:
            out.append(f"the pod's volume {volume['name']!r} was replaced")
    containers_a = {
        c["name"]: c for c in (spec_a.get("initContainers") or []) + spec_a["containers"]
    }
    for c in (spec_b.get("initContainers") or []) + spec_b["containers"]:
        now = containers_a.get(c["name"])
        if now is None or now.get("image") != c.get("image"):
            out.append(f"the pod's container {c['name']!r} was replaced or dropped")
            continue
        views = {_view(m) for m in now.get("volumeMounts") or []}
        out += [
            f"{c['name']} lost its mount of {m['name']!r} at {m['mountPath']!r}"
            for m in c.get("volumeMounts") or []
            if _view(m) not in views
        ]
        out += [
            f"{c['name']} lost env {e['name']}"
            for e in c.get("env") or []
            if e not in (now.get("env") or [])
        ]
    app = [c["name"] for c in spec_a["containers"]]
    init = [c["name"] for c in spec_a.get("initContainers") or []]
    if "chaosfs" not in app or "inject-scripts" not in init:
        out.append("the sidecar or its init step is missing: the app would wait for it forever")
    return out


def assert_complete(pod: dict) -> None:
    """Every app container has the sidecar's mounts and the template's env."""
    spec = pod["spec"]
    assert pod["metadata"]["annotations"][STATUS] == "injected"
    assert "inject-scripts" in [c["name"] for c in spec["initContainers"]]
    for c in spec["containers"]:
        if c["name"] == "chaosfs":
            continue
        assert {"tikv", "scripts", "fuse"} <= {m["name"] for m in c.get("volumeMounts") or []}, c
        assert {"CHAOS", "TZ"} <= {e["name"] for e in c.get("env") or []}, c


def later_webhook_adds_a_container(pod: dict) -> dict:
    """What a webhook called after ours does: a proxy container, its own volume."""
    pod = copy.deepcopy(pod)
    pod["spec"]["containers"].append(
        {
            "name": "proxy",
            "image": "example/proxy",
            "volumeMounts": [{"name": "proxy-certs", "mountPath": "/etc/proxy"}],
        }
    )
    pod["spec"]["volumes"].append({"name": "proxy-certs", "secret": {"secretName": "certs"}})
    return pod


def service_account_plugin(pod: dict) -> dict:
    """What the API server's ServiceAccount plugin does on its second pass."""
    pod = copy.deepcopy(pod)
    pod["spec"].setdefault("volumes", []).append(copy.deepcopy(TOKEN_VOLUME))
    for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        c.setdefault("volumeMounts", []).append(copy.deepcopy(TOKEN_MOUNT))
    return pod


# --- fixed cases ---------------------------------------------------------------------------


def test_the_tikv_pod_is_strictly_valid_after_the_api_server_applies_the_patch() -> None:
    pod = tikv_pod()
    strictly_valid(pod)
    verdict = answer(pod)
    assert verdict.outcome == admission.INJECTED and verdict.refused == []
    injected = apiserver_applies(pod, verdict.body["response"])
    strictly_valid(injected)
    assert harm(pod, injected) == []
    assert_complete(injected)


def test_empty_and_null_members_are_patched_where_the_api_server_has_none() -> None:
    """The API server's encoding leaves out `volumes: []`, `annotations: {}`, nulls:
    a "replace" there, or an "add" under the empty map, would fail the pod."""
    pod = tikv_pod(annotations={})
    pod["spec"]["initContainers"] = []
    pod["spec"]["hostAliases"] = None
    pod["spec"]["shareProcessNamespace"] = None
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "tikv-logs", "mountPath": "/l"})
    pod["spec"]["volumes"].append({"name": "tikv-logs", "emptyDir": {}})
    verdict = answer(pod)
    injected = apiserver_applies(pod, verdict.body["response"])
    strictly_valid(injected)
    assert_complete(injected)
    # The same with every list empty that may be.
    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x", "namespace": "tidb", "labels": pod["metadata"]["labels"]},
        "spec": {"containers": [{"name": "tikv", "image": "i"}], "initContainers": []},
    }
    bare["metadata"]["annotations"] = {}
    bare["spec"]["volumes"] = []
    verdict = answer(bare)
    assert verdict.refused == ["missing-volume"]  # no data volume: refused, and it says so
    bare["spec"]["volumes"] = [{"name": "tikv", "emptyDir": {}}]
    injected = apiserver_applies(bare, answer(bare).body["response"])
    strictly_valid(injected)
    assert_complete(injected)


def test_template_env_reaches_app_containers_and_never_overwrites() -> None:
    pod = tikv_pod()
    pod["spec"]["containers"].append({"name": "exporter", "image": "example/exporter"})
    injected = apiserver_applies(pod, answer(pod).body["response"])
    tikv, exporter, chaosfs = injected["spec"]["containers"]
    # Chaos Mesh v0.9's rule: the variables a container lacks are added, one it
    # sets keeps its own value.
    assert tikv["env"] == [{"name": "TZ", "value": "UTC"}, {"name": "CHAOS", "value": "on"}]
    assert exporter["env"] == TEMPLATE_ENV
    assert chaosfs["env"] == TEMPLATE_ENV
    strictly_valid(injected)


def _own_scripts_configmap(pod: dict) -> None:
    pod["spec"]["volumes"].append({"name": "scripts", "configMap": {"name": "tikv-scripts"}})
    pod["spec"]["containers"][0]["volumeMounts"].append(
        {"name": "scripts", "mountPath": "/opt/scripts"}
    )


def _data_volume_named_otherwise(pod: dict) -> None:
    pod["spec"]["volumes"][0]["name"] = "data"
    pod["spec"]["containers"][0]["volumeMounts"][0]["name"] = "data"


def _app_container_named_chaosfs(pod: dict) -> None:
    pod["spec"]["containers"].append({"name": "chaosfs", "image": "example/my-chaosfs"})


def _init_container_named_chaosfs(pod: dict) -> None:
    pod["spec"]["initContainers"] = [{"name": "chaosfs", "image": "example/prepare"}]


def _app_container_named_inject_scripts(pod: dict) -> None:
    pod["spec"]["containers"].append({"name": "inject-scripts", "image": "example/x"})


def _data_mounted_with_a_sub_path(pod: dict) -> None:
    pod["spec"]["containers"][0]["volumeMounts"][0]["subPath"] = "tikv"


def _host_pid(pod: dict) -> None:
    pod["spec"]["hostPID"] = True


REFUSALS = [
    (_own_scripts_configmap, {"volume-clash", "mount-lost"}, "'scripts'"),
    (_data_volume_named_otherwise, {"missing-volume", "mount-lost"}, "VolumeName"),
    (_app_container_named_chaosfs, {"container-clash"}, "'chaosfs'"),
    (_init_container_named_chaosfs, {"container-clash"}, "init container named 'chaosfs'"),
    (_app_container_named_inject_scripts, {"container-clash"}, "'inject-scripts'"),
    (_data_mounted_with_a_sub_path, {"mount-lost"}, "subPath 'tikv'"),
    (_host_pid, {"host-pid"}, "hostPID"),
]


@pytest.mark.parametrize(
    ("change", "rules", "said"), REFUSALS, ids=[c.__name__.strip("_") for c, _, _ in REFUSALS]
)
def test_an_injection_that_would_hurt_the_pod_is_refused(change, rules, said) -> None:
    pod = tikv_pod()
    change(pod)
    strictly_valid(pod)
    # Without the refusal the pod would lose data, hang, or be refused by the API server.
    raw = mutate(pod, rendering(), PREFIX)
    assert harm(pod, jsonpatch.apply_patch(encoded(pod), raw.patch)) != []

    verdict = answer(pod)
    response = verdict.body["response"]
    assert response["allowed"] is True and "patch" not in response  # admitted as it came
    assert set(verdict.refused) == rules and verdict.outcome == admission.SKIPPED
    assert response["auditAnnotations"]["reason"].startswith("injection of 'chaosfs-tikv' refused")
    assert any(said in w for w in response["warnings"]), response["warnings"]
    assert all(
        w.startswith("chaos-injector: 'chaosfs-tikv' not injected: ") for w in response["warnings"]
    )


@pytest.mark.parametrize(
    ("labels", "refused"),
    [
        (None, False),
        ({ENFORCE: "privileged"}, False),
        ({"pod-security.kubernetes.io/warn": "restricted"}, False),  # warns, never refuses
        ({ENFORCE: "baseline"}, True),
        ({ENFORCE: "restricted"}, True),
        ({ENFORCE: "Baseline"}, True),  # not a level: Pod Security enforces restricted
    ],
)
def test_namespaces_enforcing_pod_security_get_no_privileged_sidecar(labels, refused) -> None:
    verdict = answer(tikv_pod(), state(labels))
    response = verdict.body["response"]
    assert ("patch" not in response) is refused
    if refused:
        assert verdict.refused == ["pod-security"]
        assert "container 'chaosfs' is privileged" in response["auditAnnotations"]["reason"]
        assert ENFORCE in response["warnings"][0]


def test_an_unprivileged_template_passes_baseline_but_not_restricted() -> None:
    spec = copy.deepcopy(rendering().spec)
    spec["containers"][0]["securityContext"] = {"capabilities": {"add": ["CHOWN"]}}
    spec["containers"][0]["volumeMounts"][0]["mountPropagation"] = "HostToContainer"
    st_ = state({ENFORCE: "baseline"})
    st_.renderings[("tidb", "chaosfs-tikv")] = tikv_rendering(**spec)
    assert answer(tikv_pod(), st_).outcome == admission.INJECTED
    st_.labels["tidb"] = {ENFORCE: "restricted"}
    reason = answer(tikv_pod(), st_).reason
    assert "allowPrivilegeEscalation" in reason and "runAsNonRoot" in reason


def test_namespace_labels_come_from_the_namespaces_bucket() -> None:
    name, info = decode_namespace(
        "tidb", codec.encode({"annotations": {INIT_REQUEST: "x"}, "labels": {ENFORCE: "baseline"}})
    )
    assert name == "tidb" and info == NamespaceInfo({INIT_REQUEST: "x"}, {ENFORCE: "baseline"})
    # A template-watcher that mirrors only annotations: no labels, no level.
    assert decode_namespace("tidb", codec.encode({"annotations": {}}))[1] == NamespaceInfo({})
    with pytest.raises(BadValue):
        decode_namespace("tidb", codec.encode({"labels": ["not", "a", "map"]}))
    st_ = State()
    st_.load_namespaces({"tidb": info, "web": NamespaceInfo({INIT_REQUEST: "y"})})
    assert st_.namespace_labels("tidb") == {ENFORCE: "baseline"}
    assert st_.namespace_annotations("web") == {INIT_REQUEST: "y"}
    st_.put_namespace("tidb", NamespaceInfo({}))
    assert st_.namespace_labels("tidb") == {}
    st_.put_namespace("web", None)
    assert st_.namespace_annotations("web") == {}


def test_reinvocation_after_a_later_webhook_added_a_container_gives_it_the_mounts() -> None:
    pod = tikv_pod()
    injected = apiserver_applies(pod, answer(pod).body["response"])
    widened = later_webhook_adds_a_container(injected)
    verdict = answer(widened)
    assert verdict.reinvocation == admission.REINVOKED_PATCHED
    completed = apiserver_applies(widened, verdict.body["response"])
    strictly_valid(completed)
    assert_complete(completed)
    proxy = completed["spec"]["containers"][-1]
    assert [m["name"] for m in proxy["volumeMounts"]] == ["proxy-certs", "tikv", "scripts", "fuse"]
    assert "proxy" in verdict.reason and "got the sidecar's mounts" in verdict.reason
    # The rest of the pod is as the other webhook left it.
    assert completed["spec"]["containers"][:-1] == widened["spec"]["containers"][:-1]
    assert "patch" not in answer(completed).body["response"]


def test_reinvocation_after_the_service_account_plugin_is_silent() -> None:
    pod = tikv_pod()
    injected = apiserver_applies(pod, answer(pod).body["response"])
    tokens = service_account_plugin(injected)
    verdict = answer(tokens)
    assert "patch" not in verdict.body["response"] and "warnings" not in verdict.body["response"]
    assert verdict.reinvocation == admission.REINVOKED_UNCHANGED
    assert "already injected" in verdict.reason
    # chaosfs keeps the token mount the plugin gave it: nothing is put back.
    chaosfs = tokens["spec"]["containers"][1]
    assert TOKEN_MOUNT in chaosfs["volumeMounts"]


def test_a_pod_that_only_carries_the_status_annotation_is_skipped_as_before() -> None:
    """Copied from an injected pod, or injected by Chaos Mesh: not completed."""
    verdict = answer(tikv_pod(annotations={STATUS: "injected"}))
    assert verdict.outcome == admission.SKIPPED and verdict.reinvocation == ""
    assert "patch" not in verdict.body["response"]


# --- hypothesis: generated valid pods ----------------------------------------------------

SOURCES = [
    {"persistentVolumeClaim": {"claimName": "d"}},
    {"emptyDir": {}},
    {"configMap": {"name": "c"}},
]
# Where each volume usually goes; sometimes anywhere else.
HOME = {
    "tikv": "/var/lib/tikv",
    "data": "/data",
    "config": "/etc/app",
    "scripts": "/tmp/scripts",
    "fuse": "/tmp/fuse",
}
PATHS = [*HOME.values(), "/var/lib/tikv/data"]


@st.composite
def valid_pods(draw: st.DrawFn) -> dict:
    names = draw(st.lists(st.sampled_from(sorted(HOME)), unique=True, max_size=3))
    if draw(st.integers(0, 3)):  # mostly with the data volume the config names
        names = ["tikv", *[n for n in names if n != "tikv"]]
    volumes = []
    for n in names:
        # The template's own volumes are mostly the template's (a pod made from an
        # injected one), sometimes the pod's own volume of that name.
        ours = n in ("scripts", "fuse") and draw(st.integers(0, 3))
        source = SOURCES[1] if ours else draw(st.sampled_from(SOURCES))
        volumes.append({"name": n, **copy.deepcopy(source)})
    # Now and then containers named like the template's.
    clash = ["chaosfs", "inject-scripts"] if not draw(st.integers(0, 5)) else []
    app_names = draw(
        st.lists(
            st.sampled_from(["tikv", "app", "exporter", *clash]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    init_names = draw(
        st.lists(st.sampled_from(["setup", *clash]), max_size=1).filter(
            lambda ns: not set(ns) & set(app_names)
        )
    )

    def container(name: str) -> dict:
        c: dict[str, Any] = {"name": name, "image": f"example/{name}"}
        mounted = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
        mounts, paths = [], set()
        for volume in mounted:
            path = HOME[volume] if draw(st.integers(0, 3)) else draw(st.sampled_from(PATHS))
            if path in paths:
                continue
            paths.add(path)
            mount = {"name": volume, "mountPath": path}
            if not draw(st.integers(0, 5)):
                mount["subPath"] = "sub"
            mounts.append(mount)
        if mounts:
            c["volumeMounts"] = mounts
        env = draw(st.lists(st.sampled_from(["TZ", "CHAOS", "LANG"]), unique=True, max_size=2))
        if env:
            c["env"] = [{"name": e, "value": f"{name}-{e}"} for e in env]
        if draw(st.booleans()):
            c["command"] = [f"/bin/{name}"]
        return c

    spec: dict[str, Any] = {"containers": [container(n) for n in app_names]}
    if init_names or draw(st.booleans()):
        spec["initContainers"] = [container(n) for n in init_names]
    if volumes or draw(st.booleans()):
        spec["volumes"] = volumes
    host_pid = draw(st.sampled_from([None, None, None, False, True]))
    share = draw(st.sampled_from([None, None, False, True]))
    assume(not (host_pid and share))
    if host_pid is not None:
        spec["hostPID"] = host_pid
    if share is not None:
        spec["shareProcessNamespace"] = share
    metadata: dict[str, Any] = {
        "name": "tikv-0",
        "namespace": "tidb",
        "labels": {"app.kubernetes.io/component": "tikv"},
    }
    annotations = draw(st.sampled_from([None, {}, {"team": "db"}, {REQUEST: "chaosfs-tikv"}]))
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


levels = st.sampled_from([None, None, None, "privileged", "baseline", "restricted"])


def test_generated_pods_are_admitted_valid_and_whole_or_refused_for_a_reason() -> None:
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(valid_pods(), levels)
    def one(pod: dict, level: str | None) -> None:
        assert rule_breaks(pod) == []  # the generator makes pods the API server accepts
        st_ = state({ENFORCE: level} if level else None)
        verdict = answer(pod, st_)
        response = verdict.body["response"]
        assert verdict.status == 200 and response["allowed"] is True
        assert verdict.outcome in (admission.INJECTED, admission.SKIPPED), verdict.reason
        if "patch" not in response:
            # Every pod here asks for the config: a pod without the sidecar was refused,
            # with a reason, and only where injecting would have hurt it.
            assert verdict.refused, verdict.reason
            outcomes.update(verdict.refused)
            assert len(response["warnings"]) >= 1
            if "pod-security" in verdict.refused:
                assert level in ("baseline", "restricted")
            else:
                raw = mutate(pod, st_.renderings[("tidb", "chaosfs-tikv")], PREFIX)
                assert harm(pod, jsonpatch.apply_patch(encoded(pod), raw.patch)) != []
            return
        outcomes["injected"] += 1
        injected = apiserver_applies(pod, response)
        strictly_valid(injected)
        assert harm(pod, injected) == []
        assert_complete(injected)
        # The API server's second call changes nothing ...
        assert "patch" not in answer(injected, st_).body["response"]
        assert "patch" not in answer(service_account_plugin(injected), st_).body["response"]
        # ... but completes a container a later webhook added.
        widened = later_webhook_adds_a_container(injected)
        completed = apiserver_applies(widened, answer(widened, st_).body["response"])
        strictly_valid(completed)
        assert_complete(completed)
        assert "patch" not in answer(completed, st_).body["response"]

    one()
    # The generator reaches every branch, so the properties above were exercised.
    assert outcomes["injected"] >= 30, outcomes
    for rule in ("volume-clash", "mount-lost", "missing-volume", "container-clash", "host-pid"):
        assert outcomes[rule] >= 1, outcomes
    assert outcomes["pod-security"] >= 10, outcomes
