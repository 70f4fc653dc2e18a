"""The injector's pure parts: the mutation, Chaos Mesh's pod rules, the selector
and the AdmissionReview handler, in process; hypothesis for what no one thought of."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaosbus.injection import NAMESPACES_BUCKET, RENDERINGS_BUCKET, Rendering
from injector import admission
from injector.mutate import (
    POSTSTART_MARKER,
    MutationError,
    escape_pointer,
    mutate,
    unwrap_command,
    wrap_command,
)
from injector.policy import decide, requested
from injector.selector import match
from injector.state import State

PREFIX = "admission-webhook.chaos-mesh.org"
STATUS = f"{PREFIX}/status"
REQUEST = f"{PREFIX}/request"
WAIT = "/tmp/scripts/wait-fuse.sh"

# Chaos Mesh v0.9.1's chaosfs-sidecar template, rendered by hand with
# the chaosfs-tikv config's arguments: DataPath /var/lib/tikv/data, MountPath
# /var/lib/tikv, VolumeName tikv, ContainerName tikv.
TIKV_SPEC: dict[str, Any] = {
    "initContainers": [
        {
            "name": "inject-scripts",
            "image": "pingcap/chaos-scripts:v0.9.1",
            "imagePullPolicy": "IfNotPresent",
            "command": [
                "sh",
                "-c",
                "/scripts/init.sh -d /var/lib/tikv/data -f /var/lib/tikv/fuse-data",
            ],
        }
    ],
    "containers": [
        {
            "name": "chaosfs",
            "image": "pingcap/chaos-fs:v0.9.1",
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 65534}],
            "securityContext": {"privileged": True},
            "command": [
                "/usr/local/bin/chaosfs",
                "-addr=:65534",
                "-pidfile=/tmp/fuse/pid",
                "-original=/var/lib/tikv/fuse-data",
                "-mountpoint=/var/lib/tikv/data",
            ],
            "volumeMounts": [
                {"name": "tikv", "mountPath": "/var/lib/tikv", "mountPropagation": "Bidirectional"}
            ],
        }
    ],
    "volumeMounts": [
        {"name": "tikv", "mountPath": "/var/lib/tikv", "mountPropagation": "HostToContainer"},
        {"name": "scripts", "mountPath": "/tmp/scripts"},
        {"name": "fuse", "mountPath": "/tmp/fuse"},
    ],
    "volumes": [{"name": "scripts", "emptyDir": {}}, {"name": "fuse", "emptyDir": {}}],
    "postStart": {"tikv": {"command": [WAIT]}},
}


def tikv_rendering(namespace: str = "tidb", **spec_changes: Any) -> Rendering:
    return Rendering(
        namespace=namespace,
        name="chaosfs-tikv",
        template="chaosfs-sidecar",
        selector={"labelSelectors": {"app.kubernetes.io/component": "tikv"}},
        spec={**copy.deepcopy(TIKV_SPEC), **spec_changes},
        source=f"{namespace}/chaosfs-tikv",
        revision="1",
    )


def tikv_pod(name: str | None = "tikv-0", annotations: dict[str, str] | None = None) -> dict:
    metadata: dict[str, Any] = {
        "namespace": "tidb",
        "labels": {"app.kubernetes.io/component": "tikv", "app.kubernetes.io/instance": "basic"},
    }
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = "tikv-"
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [
                {
                    "name": "tikv",
                    "image": "pingcap/tikv:v4.0.0",
                    "command": ["/tikv-server"],
                    "args": ["--pd=http://pd:2379", "--data-dir=/var/lib/tikv/data"],
                    "env": [{"name": "TZ", "value": "UTC"}],
                    "volumeMounts": [
                        {"name": "tikv", "mountPath": "/var/lib/tikv"},
                        {"name": "config", "mountPath": "/etc/tikv", "readOnly": True},
                    ],
                }
            ],
            "volumes": [
                {"name": "tikv", "persistentVolumeClaim": {"claimName": "tikv-tikv-0"}},
                {"name": "config", "configMap": {"name": "tikv"}},
            ],
        },
    }


def review_body(pod: dict, api_version: str = "admission.k8s.io/v1", uid: str = "u-1") -> bytes:
    return json.dumps(
        {
            "apiVersion": api_version,
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "tidb",
                "operation": "CREATE",
                "object": pod,
            },
        }
    ).encode()


def applied(pod: dict, patch: list[dict]) -> dict:
    return jsonpatch.apply_patch(pod, patch)


def assert_tikv_injected(pod: dict) -> None:
    """What Chaos Mesh v0.9's template must do to the TiKV pod, checked on the result."""
    spec = pod["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["inject-scripts"]
    init = spec["initContainers"][0]
    assert (
        init["command"][-1] == "/scripts/init.sh -d /var/lib/tikv/data -f /var/lib/tikv/fuse-data"
    )
    assert {m["name"] for m in init["volumeMounts"]} == {"tikv", "scripts", "fuse"}

    assert [c["name"] for c in spec["containers"]] == ["tikv", "chaosfs"]
    tikv, chaosfs = spec["containers"]
    assert chaosfs["command"] == TIKV_SPEC["containers"][0]["command"]
    assert chaosfs["securityContext"] == {"privileged": True}
    chaos_mounts = {m["name"]: m for m in chaosfs["volumeMounts"]}
    assert chaos_mounts["tikv"]["mountPropagation"] == "Bidirectional"
    assert set(chaos_mounts) == {"tikv", "scripts", "fuse"}

    tikv_mounts = {m["name"]: m for m in tikv["volumeMounts"]}
    assert tikv_mounts["tikv"] == {
        "name": "tikv",
        "mountPath": "/var/lib/tikv",
        "mountPropagation": "HostToContainer",
    }
    assert tikv_mounts["config"] == {"name": "config", "mountPath": "/etc/tikv", "readOnly": True}
    assert tikv_mounts["scripts"]["mountPath"] == "/tmp/scripts"
    assert tikv_mounts["fuse"]["mountPath"] == "/tmp/fuse"
    assert tikv["env"] == [{"name": "TZ", "value": "UTC"}]
    # The app waits for the FUSE mount, then execs its own command; args stay.
    assert tikv["command"][:2] == ["/bin/sh", "-c"]
    assert tikv["command"][2] == f'{WAIT} && exec "$@"'
    assert tikv["command"][3:] == [POSTSTART_MARKER, "/tikv-server"]
    assert tikv["args"] == ["--pd=http://pd:2379", "--data-dir=/var/lib/tikv/data"]

    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["scripts"] == {"name": "scripts", "emptyDir": {}}
    assert volumes["fuse"] == {"name": "fuse", "emptyDir": {}}
    assert volumes["tikv"]["persistentVolumeClaim"] == {"claimName": "tikv-tikv-0"}
    assert pod["metadata"]["annotations"][STATUS] == "injected"


# --- the mutation ------------------------------------------------------------------


def test_tikv_pod_gets_the_chaos_mesh_v09_sidecar() -> None:
    pod = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    mutation = mutate(pod, tikv_rendering(), PREFIX)
    assert mutation.warnings == []
    # Whole top-level fields, the annotation by its escaped key.
    assert [(op["op"], op["path"]) for op in mutation.patch] == [
        ("add", "/metadata/annotations/admission-webhook.chaos-mesh.org~1status"),
        ("add", "/spec/initContainers"),
        ("replace", "/spec/containers"),
        ("replace", "/spec/volumes"),
    ]
    assert_tikv_injected(applied(pod, mutation.patch))


def test_mutating_a_mutated_pod_changes_nothing() -> None:
    pod = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    once = applied(pod, mutate(pod, tikv_rendering(), PREFIX).patch)
    again = mutate(once, tikv_rendering(), PREFIX)
    assert again.patch == [] and again.warnings == []


def test_the_wrapped_command_waits_then_runs_the_original_with_its_args(tmp_path) -> None:
    """Run the wrapper the way the kubelet would: command + args, no shell of ours."""
    marker = tmp_path / "waited"
    before = ["sh", "-c", f"echo waited > {marker}"]
    original = ["sh", "-c", 'test -f "$0" && printf "%s|" "$@"', str(marker)]
    args = ["two words", "it's", '"q"', "$HOME", ""]
    out = subprocess.run(
        [*wrap_command(before, original), *args], capture_output=True, text=True, check=True
    )
    assert out.stdout == 'two words|it\'s|"q"|$HOME||'
    assert unwrap_command(wrap_command(before, original)) == original


def test_no_annotations_gets_the_whole_map_and_keys_are_escaped() -> None:
    pod = tikv_pod(annotations=None)
    patch = mutate(pod, tikv_rendering(), PREFIX).patch
    assert patch[0] == {"op": "add", "path": "/metadata/annotations", "value": {STATUS: "injected"}}
    odd = "odd~prefix/x"
    pod = tikv_pod(annotations={"other": "1"})
    patch = mutate(pod, tikv_rendering(), odd).patch
    assert patch[0]["path"] == "/metadata/annotations/odd~0prefix~1x~1status"
    assert applied(pod, patch)["metadata"]["annotations"] == {
        "other": "1",
        f"{odd}/status": "injected",
    }
    assert escape_pointer("a/~b") == "a~1~0b"


def test_existing_mounts_and_env_survive_and_same_name_is_replaced() -> None:
    pod = tikv_pod()
    app = pod["spec"]["containers"][0]
    app["volumeMounts"] = [
        {"name": "logs", "mountPath": "/logs"},
        {"name": "tikv", "mountPath": "/var/lib/tikv", "readOnly": False},
        {"name": "old-scripts", "mountPath": "/tmp/scripts"},  # the spec's path, another name
    ]
    sidecar = {"name": "metrics", "image": "x", "env": [{"name": "A", "value": "1"}]}
    pod["spec"]["containers"].append(sidecar)
    mutation = mutate(pod, tikv_rendering(), PREFIX)
    result = applied(pod, mutation.patch)
    tikv, metrics, _ = result["spec"]["containers"]
    assert [m["name"] for m in tikv["volumeMounts"]] == ["logs", "tikv", "scripts", "fuse"]
    assert tikv["volumeMounts"][1]["mountPropagation"] == "HostToContainer"
    assert tikv["env"] == [{"name": "TZ", "value": "UTC"}]
    assert metrics["env"] == [{"name": "A", "value": "1"}]
    assert [m["name"] for m in metrics["volumeMounts"]] == ["tikv", "scripts", "fuse"]
    assert len(mutation.warnings) == 1 and "'old-scripts'" in mutation.warnings[0]


def test_a_mount_of_the_same_volume_elsewhere_is_reported() -> None:
    pod = tikv_pod()
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "tikv", "mountPath": "/data"}]
    mutation = mutate(pod, tikv_rendering(), PREFIX)
    assert any("'/data'" in w and "'/var/lib/tikv'" in w for w in mutation.warnings)


def test_injected_containers_get_env_and_the_mounts_they_lack() -> None:
    env = [{"name": "CHAOS", "value": "on"}, {"name": "TZ", "value": "Asia/Tokyo"}]
    rendering = tikv_rendering(env=env)
    rendering.spec["containers"][0]["env"] = [{"name": "TZ", "value": "UTC"}]
    result = applied(tikv_pod(), mutate(tikv_pod(), rendering, PREFIX).patch)
    chaosfs = result["spec"]["containers"][1]
    assert chaosfs["env"] == [{"name": "TZ", "value": "UTC"}, {"name": "CHAOS", "value": "on"}]
    assert result["spec"]["initContainers"][0]["env"] == env
    # App containers get the variables they lack and keep their own value of one
    # they set, as in Chaos Mesh v0.9 (its TZ stays UTC, not the template's).
    assert result["spec"]["containers"][0]["env"] == [
        {"name": "TZ", "value": "UTC"},
        {"name": "CHAOS", "value": "on"},
    ]


def test_volumes_are_replaced_by_name() -> None:
    pod = tikv_pod()
    pod["spec"]["volumes"].append({"name": "fuse", "hostPath": {"path": "/x"}})
    result = applied(pod, mutate(pod, tikv_rendering(), PREFIX).patch)
    assert [v["name"] for v in result["spec"]["volumes"]] == ["tikv", "config", "fuse", "scripts"]
    assert result["spec"]["volumes"][2] == {"name": "fuse", "emptyDir": {}}


def test_post_start_on_a_container_without_command_warns_and_leaves_it() -> None:
    pod = tikv_pod()
    del pod["spec"]["containers"][0]["command"]
    mutation = mutate(pod, tikv_rendering(), PREFIX)
    tikv = applied(pod, mutation.patch)["spec"]["containers"][0]
    assert "command" not in tikv and tikv["args"] == pod["spec"]["containers"][0]["args"]
    assert len(mutation.warnings) == 1
    assert "no command" in mutation.warnings[0] and WAIT in mutation.warnings[0]


def test_post_start_naming_a_missing_container_warns() -> None:
    mutation = mutate(tikv_pod(), tikv_rendering(postStart={"pd": {"command": [WAIT]}}), PREFIX)
    assert mutation.warnings == ["postStart names container 'pd', which the pod does not have"]


def test_a_command_wrapped_by_an_older_template_is_rewrapped_once() -> None:
    pod = tikv_pod()
    pod["spec"]["containers"][0]["command"] = wrap_command(["/old-wait"], ["/tikv-server"])
    tikv = applied(pod, mutate(pod, tikv_rendering(), PREFIX).patch)["spec"]["containers"][0]
    assert tikv["command"] == wrap_command([WAIT], ["/tikv-server"])


def test_host_aliases_merge_and_share_process_namespace() -> None:
    pod = tikv_pod()
    pod["spec"]["hostAliases"] = [{"ip": "10.0.0.1", "hostnames": ["pd"]}]
    aliases = [
        {"ip": "10.0.0.1", "hostnames": ["pd", "pd-0"]},
        {"ip": "10.0.0.2", "hostnames": ["tikv"]},
    ]
    rendering = tikv_rendering(hostAliases=aliases, shareProcessNamespace=True)
    mutation = mutate(pod, rendering, PREFIX)
    result = applied(pod, mutation.patch)
    assert result["spec"]["hostAliases"] == [
        {"ip": "10.0.0.1", "hostnames": ["pd", "pd-0"]},
        {"ip": "10.0.0.2", "hostnames": ["tikv"]},
    ]
    assert result["spec"]["shareProcessNamespace"] is True
    assert mutate(result, rendering, PREFIX).patch == []


def test_container_name_clashes_are_warned_not_duplicated() -> None:
    pod = tikv_pod()
    pod["spec"]["initContainers"] = [{"name": "chaosfs", "image": "mine"}]
    pod["spec"]["containers"].append({"name": "inject-scripts", "image": "mine"})
    mutation = mutate(pod, tikv_rendering(), PREFIX)
    result = applied(pod, mutation.patch)
    names = [c["name"] for c in result["spec"]["initContainers"] + result["spec"]["containers"]]
    assert sorted(names) == sorted(set(names))
    assert len(mutation.warnings) == 2


def test_a_pod_that_cannot_be_mutated_raises() -> None:
    for broken in ({"spec": {"containers": "nope"}}, {"metadata": {}}, {"spec": {"volumes": [1]}}):
        with pytest.raises(MutationError):
            mutate(broken, tikv_rendering(), PREFIX)
    with pytest.raises(MutationError):
        mutate(tikv_pod(), tikv_rendering(postStart={"tikv": {"command": "x"}}), PREFIX)


# --- which pods ----------------------------------------------------------------------


def loaded_state(*renderings: Rendering, namespaces: dict | None = None) -> State:
    state = State()
    state.renderings = {(r.namespace, r.name): r for r in renderings}
    state.namespaces = namespaces or {}
    state.loaded = {RENDERINGS_BUCKET, NAMESPACES_BUCKET}
    return state


SKIPS = [
    ("kube-system", tikv_pod(annotations={REQUEST: "chaosfs-tikv"}), "never injected"),
    ("kube-public", tikv_pod(annotations={REQUEST: "chaosfs-tikv"}), "never injected"),
    ("tidb", tikv_pod(annotations={REQUEST: "chaosfs-tikv", STATUS: "Injected"}), "already"),
    ("tidb", tikv_pod(annotations={}), "no injection requested"),
    ("tidb", tikv_pod(annotations={REQUEST: "chaosfs-pd"}), "does not exist"),
    ("other", tikv_pod(annotations={REQUEST: "chaosfs-tikv"}), "does not exist in namespace other"),
    ("", tikv_pod(annotations={REQUEST: "chaosfs-tikv"}), "namespace is unknown"),
]


@pytest.mark.parametrize(("namespace", "pod", "why"), SKIPS)
def test_skip_reasons(namespace: str, pod: dict, why: str) -> None:
    decision = decide(pod, namespace, loaded_state(tikv_rendering()), PREFIX)
    assert decision.rendering is None and why in decision.reason


def test_selector_mismatch_and_not_ready_are_skips() -> None:
    pod = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    pod["metadata"]["labels"]["app.kubernetes.io/component"] = "pd"
    decision = decide(pod, "tidb", loaded_state(tikv_rendering()), PREFIX)
    assert decision.rendering is None and "selector" in decision.reason
    decision = decide(tikv_pod(annotations={REQUEST: "x"}), "tidb", State(), PREFIX)
    assert "not loaded" in decision.reason


def test_request_sources_and_their_precedence() -> None:
    ns = {f"{PREFIX}/request-tikv-0": "by-pod-name", f"{PREFIX}/init-request": "by-init"}
    assert requested({REQUEST: "Pod-Asked"}, "tikv-0", ns, PREFIX)[0] == "pod-asked"
    assert requested({}, "tikv-0", ns, PREFIX) == (
        "by-pod-name",
        f"namespace {PREFIX}/request-tikv-0",
    )
    assert requested({}, "tikv-1", ns, PREFIX)[0] == "by-init"
    # generateName only: the name is not known yet, only init-request can match.
    assert requested({}, "", {f"{PREFIX}/request-": "x"}, PREFIX) == ("", "")
    state = loaded_state(
        tikv_rendering(), namespaces={"tidb": {f"{PREFIX}/init-request": "chaosfs-tikv"}}
    )
    assert decide(tikv_pod(name=None, annotations={}), "tidb", state, PREFIX).rendering is not None


def test_selectors() -> None:
    labels = {"app": "tikv", "tier": "db"}
    assert match({}, labels, {}, "ns") == (True, "")
    assert match({"labelSelectors": {"app": "tikv"}}, labels, {}, "ns")[0]
    assert not match({"labelSelectors": {"app": "pd"}}, labels, {}, "ns")[0]
    assert match({"matchLabels": {"tier": "db"}, "namespaces": ["ns"]}, labels, {}, "ns")[0]
    assert not match({"namespaces": ["other"]}, labels, {}, "ns")[0]
    assert match({"annotationSelectors": {"a": "b"}}, labels, {"a": "b"}, "ns")[0]
    exprs = [
        {"key": "app", "operator": "In", "values": ["tikv", "pd"]},
        {"key": "tier", "operator": "NotIn", "values": ["web"]},
        {"key": "tier", "operator": "Exists"},
        {"key": "gone", "operator": "DoesNotExist"},
    ]
    assert match({"expressionSelectors": exprs}, labels, {}, "ns")[0]
    assert not match(
        {"matchExpressions": [{"key": "app", "operator": "Exists", "values": []}]}, {}, {}, "ns"
    )[0]
    assert not match({"matchExpressions": [{"key": "app", "operator": "Near"}]}, labels, {}, "ns")[
        0
    ]
    ok, why = match({"fieldSelectors": {"spec.nodeName": "n1"}}, labels, {}, "ns")
    assert not ok and "not supported" in why
    assert match({"fieldSelectors": {}, "podPhaseSelectors": None}, labels, {}, "ns")[0]


# --- the AdmissionReview handler -----------------------------------------------------


def answer(body: bytes, state: State | None = None) -> admission.Verdict:
    return admission.review(body, state or loaded_state(tikv_rendering()), PREFIX)


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_review_answers_in_the_request_api_version(api_version: str) -> None:
    pod = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    verdict = answer(review_body(pod, api_version, uid="abc"))
    assert verdict.status == 200 and verdict.outcome == admission.INJECTED
    assert verdict.body["apiVersion"] == api_version and verdict.body["kind"] == "AdmissionReview"
    response = verdict.body["response"]
    assert response["uid"] == "abc" and response["allowed"] is True
    assert response["patchType"] == "JSONPatch" and "warnings" not in response
    assert_tikv_injected(applied(pod, json.loads(base64.b64decode(response["patch"]))))
    assert response["auditAnnotations"]["outcome"] == "injected"


def test_a_skip_is_a_plain_allow_with_the_reason_for_the_audit_log() -> None:
    verdict = answer(review_body(tikv_pod(annotations={})))
    assert verdict.outcome == admission.SKIPPED
    assert verdict.body["response"] == {
        "uid": "u-1",
        "allowed": True,
        "auditAnnotations": {"outcome": "skipped", "reason": "no injection requested"},
    }


def test_an_internal_error_admits_the_pod_unchanged_with_a_warning() -> None:
    pod = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    pod["spec"]["containers"][0]["volumeMounts"] = "not a list"
    verdict = answer(review_body(pod))
    assert verdict.status == 200 and verdict.outcome == admission.ERROR
    response = verdict.body["response"]
    assert response["allowed"] is True and "patch" not in response
    assert response["warnings"] == [
        "chaos-injector: cannot inject: container 'tikv' volumeMounts must be a list of objects; "
        "the pod was admitted unchanged"
    ]


def test_a_bug_admits_the_pod_unchanged_and_keeps_the_trace() -> None:
    class Broken(State):
        def rendering(self, namespace: str, name: str) -> Rendering | None:
            raise RuntimeError("boom")

    state = loaded_state()
    broken = Broken()
    broken.loaded = state.loaded
    verdict = answer(review_body(tikv_pod(annotations={REQUEST: "chaosfs-tikv"})), broken)
    assert verdict.status == 200 and verdict.outcome == admission.ERROR
    assert verdict.body["response"]["allowed"] is True
    assert "internal error (RuntimeError: boom)" in verdict.body["response"]["warnings"][0]
    assert "Traceback" in verdict.fields["traceback"]


MALFORMED = [
    (b"not json", "not valid JSON"),
    (b'{"x": NaN}', "NaN"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"kind": "Pod"}', "kind must be AdmissionReview"),
    (b'{"kind": "AdmissionReview", "apiVersion": "v1"}', "apiVersion must be"),
    (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}', "no request"),
    (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {}}', "no uid"),
    (
        b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": '
        b'{"uid": "1", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"}}}',
        "only mutates core/v1 Pods",
    ),
    (
        b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": '
        b'{"uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"}}}',
        "no Pod object",
    ),
    (b"[" * 100000, "not valid JSON"),
]


@pytest.mark.parametrize(("body", "why"), MALFORMED)
def test_malformed_bodies_are_400(body: bytes, why: str) -> None:
    verdict = answer(body)
    assert verdict.status == 400 and why in verdict.body["error"]


# --- hypothesis ------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
names = st.sampled_from(["tikv", "chaosfs", "inject-scripts", "app", "fuse", "scripts", ""])
paths = st.sampled_from(["/var/lib/tikv", "/tmp/fuse", "/tmp/scripts", "/data", "/"])
mounts = st.fixed_dictionaries(
    {"name": names, "mountPath": paths},
    optional={"readOnly": st.booleans(), "subPath": st.text(max_size=3)},
)
containers = st.fixed_dictionaries(
    {"name": names},
    optional={
        "command": st.lists(st.text(max_size=5), max_size=3) | json_values,
        "args": st.lists(st.text(max_size=5), max_size=3),
        "volumeMounts": st.lists(mounts, max_size=4) | json_values,
        "env": st.lists(st.fixed_dictionaries({"name": names}), max_size=2),
        "image": json_values,
    },
)
requesting_metadata = st.fixed_dictionaries(
    {
        "namespace": st.just("tidb"),
        "labels": st.just({"app.kubernetes.io/component": "tikv"}),
        "annotations": st.dictionaries(
            st.sampled_from([STATUS, "x/y~z"]), st.sampled_from(["injected", ""]), max_size=1
        ).map(lambda a: {REQUEST: "chaosfs-tikv", **a}),
    },
    optional={"name": st.sampled_from(["tikv-0", ""]), "generateName": st.just("tikv-")},
)
any_metadata = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["tikv-0", "web", ""]) | json_values,
        "generateName": st.just("tikv-"),
        "namespace": st.sampled_from(["tidb", "kube-system", ""]),
        "labels": st.just({"app.kubernetes.io/component": "tikv"}) | json_values,
        "annotations": st.dictionaries(
            st.sampled_from([REQUEST, STATUS, "x/y~z"]),
            st.sampled_from(["chaosfs-tikv", "injected", "CHAOSFS-TIKV", ""]),
        )
        | json_values,
    },
)
any_volumes = st.lists(st.fixed_dictionaries({"name": names}), max_size=3)
# With the data volume the template mounts (the config's VolumeName): without
# it the injection is refused (the pod would mount a volume it does not have).
with_data_volume = st.lists(st.fixed_dictionaries({"name": names}), max_size=2).map(
    lambda extra: [{"name": "tikv", "persistentVolumeClaim": {"claimName": "d"}}, *extra]
)
pod_spec_fields = {
    "containers": st.lists(containers, max_size=3) | json_values,
    "initContainers": st.lists(containers, max_size=2),
    "volumes": any_volumes,
    "hostAliases": st.lists(
        st.fixed_dictionaries({"ip": st.sampled_from(["1.1.1.1", "2.2.2.2"])}), max_size=2
    ),
    "shareProcessNamespace": json_values,
}
injectable_specs = st.fixed_dictionaries(
    {"volumes": with_data_volume},
    optional={k: v for k, v in pod_spec_fields.items() if k != "volumes"},
)
pod_specs = injectable_specs | st.fixed_dictionaries({}, optional=pod_spec_fields)
# Mostly pods that ask for the TiKV config, so that most examples reach the
# mutation; the rest anything JSON can hold.
pods = st.fixed_dictionaries(
    {
        "metadata": requesting_metadata | requesting_metadata | any_metadata | json_values,
        "spec": pod_specs | pod_specs | pod_specs | json_values,
    },
    optional={"kind": json_values},
)
reviews = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]),
        "kind": st.just("AdmissionReview"),
        "request": st.fixed_dictionaries(
            {
                "uid": st.text(min_size=1, max_size=20),
                "kind": st.just({"group": "", "version": "v1", "kind": "Pod"}),
                "object": pods,
            },
            optional={
                "namespace": st.sampled_from(["tidb", "other"]) | json_values,
                "operation": st.sampled_from(["CREATE", "UPDATE"]),
            },
        ),
    }
)
# database=None: no .hypothesis directory in the work tree; failures print their example.
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def check_verdict(verdict: admission.Verdict, sent: dict | None) -> None:
    """The contract every answer keeps, whatever came in."""
    assert verdict.status in (200, 400)
    text = json.dumps(verdict.body, allow_nan=False)  # valid JSON, no NaN sneaking through
    if sent is not None:
        assert verdict.status == 200, verdict.body
        response = json.loads(text)["response"]
        assert response["uid"] == sent["request"]["uid"] and response["allowed"] is True
        assert response["auditAnnotations"]["outcome"] in (
            "injected",
            "unchanged",
            "skipped",
            "error",
        )
        if "patch" in response:
            patch = json.loads(base64.b64decode(response["patch"]))
            # The patch applies to what was sent, and the result needs no second pass.
            result = applied(sent["request"]["object"], patch)
            state = loaded_state(tikv_rendering())
            again = admission.review(review_body(result), state, PREFIX)
            assert "patch" not in again.body["response"]


@SETTINGS
@given(reviews)
def test_generated_reviews_always_get_a_valid_answer(doc: dict) -> None:
    check_verdict(answer(json.dumps(doc).encode()), doc)


@settings(max_examples=200, deadline=None, database=None)
@given(json_values | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_generated_junk_is_400_never_a_crash(doc: Any) -> None:
    body = (
        doc.encode("utf-8", "surrogatepass") if isinstance(doc, str) else json.dumps(doc).encode()
    )
    check_verdict(answer(body), None)


@SETTINGS
@given(pods)
def test_generated_pods_mutate_exactly_or_refuse(pod: Any) -> None:
    original = copy.deepcopy(pod)
    try:
        mutation = mutate(pod, tikv_rendering(), PREFIX)
    except MutationError:
        return
    finally:
        assert pod == original  # a pure function: the input is left alone
    result = applied(pod, mutation.patch)
    assert result["metadata"]["annotations"][STATUS] == "injected"
    names_ = [c["name"] for c in result["spec"].get("initContainers") or []]
    names_ += [c["name"] for c in result["spec"].get("containers") or []]
    assert "chaosfs" in names_ or any("chaosfs" in w for w in mutation.warnings)
    assert mutate(result, tikv_rendering(), PREFIX).patch == []
