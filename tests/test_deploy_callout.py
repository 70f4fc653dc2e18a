"""deploy/optional/auth-callout: one NATS identity per sidecar, checked offline.

The component added to each overlay builds, validates strictly and keeps the prod
hardening; the server gets nats-callout.conf (also through the prod cluster's
include) and accepts it; chaos-auth reaches NATS as its user and the API server
with a service account allowed TokenReviews and nothing more; the sidecar templates
are the base's with only the login changed, and an injected pod is valid;
deploy/auth-secrets.sh makes Secrets that agree with each other.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_deploy import (
    CLUSTER_SCOPED,
    DEPLOY,
    NAMESPACE,
    OVERLAYS,
    RESTRICTED,
    VERSION,
    all_containers,
    assert_resources,
    container,
    effective_security,
    env,
    find,
    kubernetes_validate,
    needs_kubectl,
    pod_spec,
    rendered_templates,
    run_with_fake_kubectl,
    secret_file,
    tool,
)

from conftest import BIN

COMPONENT = DEPLOY / "optional" / "auth-callout"
TOKEN_DIR = "/var/run/secrets/chaosbus"

# How the component's templates differ from the base's: the login, nothing else.
LOGIN_STATIC = """\
  - name: NATS_USER
    value: sidecar
  - name: NATS_PASSWORD_FILE
    value: /etc/chaosbus/nats/password
"""
LOGIN_TOKEN = f"""\
  # The pod's own identity on the bus (chaos-auth checks it): a ServiceAccount
  # token for the audience chaosbus, renewed in place by the kubelet and read
  # again at every connect.
  - name: NATS_TOKEN_FILE
    value: {TOKEN_DIR}/token
"""
MOUNT_STATIC = """\
  - name: chaosbus-nats
    mountPath: /etc/chaosbus/nats
    readOnly: true
"""
MOUNT_TOKEN = f"""{MOUNT_STATIC}\
  - name: chaosbus-token
    mountPath: {TOKEN_DIR}
    readOnly: true
"""
VOLUME_STATIC = """\
- name: chaosbus-nats
  secret:
    secretName: chaosbus-sidecar
    items:
    - key: password
      path: password
    - key: ca.crt
      path: ca.crt
"""
VOLUME_TOKEN = """\
- name: chaosbus-nats
  secret:
    secretName: chaosbus-sidecar
    items:
    - key: ca.crt
      path: ca.crt
- name: chaosbus-token
  projected:
    sources:
    - serviceAccountToken:
        audience: chaosbus
        expirationSeconds: 3600
        path: token
"""
HEADER = """\
# deploy/optional/auth-callout: this is deploy/base/templates/{name} with chaosfs
# logging in to NATS with its pod's token (NATS_TOKEN_FILE, audience chaosbus)
# instead of the shared sidecar password; tests/test_deploy_callout.py keeps the
# two in step. chaosbus-sidecar needs only its ca.crt here.
"""


def callout_template(name: str) -> str:
    """The component's version of base template ``name``."""
    text = (DEPLOY / "base" / "templates" / name).read_text()
    for old, new in (
        (LOGIN_STATIC, LOGIN_TOKEN),
        (MOUNT_STATIC, MOUNT_TOKEN),
        (VOLUME_STATIC, VOLUME_TOKEN),
    ):
        assert text.count(old) == 1, f"{name}: the base template changed around {old!r}"
        text = text.replace(old, new)
    return HEADER.format(name=name) + text


@pytest.mark.parametrize("name", ["chaosfs-sidecar.tmpl", "chaosfs-sidecar-native.tmpl"])
def test_templates_are_the_bases_with_the_token_login(name: str) -> None:
    current = (COMPONENT / "templates" / name).read_text()
    assert current == callout_template(name), (
        f"deploy/optional/auth-callout/templates/{name} is out of step with the base's: "
        "write callout_template(name) of tests/test_deploy_callout.py into it"
    )


def test_nats_callout_conf_copy_is_current() -> None:
    """kustomize reads no file outside the component's directory."""
    assert (COMPONENT / "nats-callout.conf").read_bytes() == (
        DEPLOY / "nats" / "nats-callout.conf"
    ).read_bytes(), "cp deploy/nats/nats-callout.conf deploy/optional/auth-callout/"


def with_callout(overlay: str, root: Path) -> list[dict[str, Any]]:
    """``overlay`` with the component, built from an overlay of its own in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
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
    done = subprocess.run(
        [tool("kubectl") or "kubectl", "kustomize", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if tool("kubectl") is None:
        pytest.skip("kubectl is not installed (its built-in kustomize builds deploy/)")
    overlay = request.param
    return overlay, with_callout(overlay, tmp_path_factory.mktemp(f"callout-{overlay}"))


@needs_kubectl
def test_the_component_builds_and_validates(built: Any) -> None:
    _, docs = built
    ids = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids)), "an object appears twice"
    for kind, namespace, name in ids:
        if kind not in CLUSTER_SCOPED:
            assert namespace, f"{kind} {name} has no namespace (kubectl would pick the context's)"
    if tool("kubernetes-validate") is None:
        pytest.skip("kubernetes-validate is not installed (PyPI kubernetes-validate)")
    kubernetes_validate([d for d in docs if not d["apiVersion"].startswith("cert-manager.io/")])


@needs_kubectl
def test_the_server_runs_the_callout_configuration(built: Any, tmp_path: Path) -> None:
    overlay, docs = built
    config = find(
        docs,
        "ConfigMap",
        next(
            d["metadata"]["name"]
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nats-config")
        ),
    )
    conf = config["data"]["nats.conf"]
    assert conf == (DEPLOY / "nats" / "nats-callout.conf").read_text()
    if overlay == "prod":  # the cluster's file includes it as it is
        assert "include ./nats.conf" in config["data"]["nats-cluster.conf"]
    nats = find(docs, "StatefulSet", "nats")
    server = container(nats, "nats")
    secrets = [s["secretRef"]["name"] for s in server["envFrom"]]
    assert secrets == ["chaosbus-nats-users", "chaosbus-auth-nats"]
    # Every variable the file reads comes from one of them.
    variables = set(re.findall(r"^\s*\w+: \$([A-Z][A-Z0-9_]*)\s*$", conf, re.MULTILINE))
    assert variables == {
        "OPERATOR_PASSWORD",
        "TEMPLATE_WATCHER_PASSWORD",
        "INJECTOR_PASSWORD",
        "CONTROLLER_PASSWORD",
        "CHAOS_AUTH_PASSWORD",
        "CHAOS_AUTH_ISSUER",
    }
    # nats-server itself accepts the file as built (TLS and store paths made local).
    text = conf
    for path in ("/etc/nats/tls/tls.crt", "/etc/nats/tls/tls.key", "/etc/nats/tls/ca.crt"):
        text = text.replace(path, str(tmp_path / Path(path).name))
    from tls_helpers import CA

    ca = CA.create(tmp_path / "ca")
    cert, key = ca.issue("nats", ["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(cert.read_bytes())
    (tmp_path / "tls.key").write_bytes(key.read_bytes())
    (tmp_path / "ca.crt").write_bytes(ca.cert_path.read_bytes())
    text = text.replace("/data/jetstream", str(tmp_path / "js"))
    (tmp_path / "nats.conf").write_text(text)
    issuer = subprocess.run(
        [str(BIN / "chaos-auth"), "--issuer-seed", str(tmp_path / "issuer.nk"), "--keygen"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    environment = {name: "p" + name.lower().replace("_", "") for name in variables}
    environment["CHAOS_AUTH_ISSUER"] = issuer
    done = subprocess.run(
        [str(BIN / "nats-server"), "-c", str(tmp_path / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_kubectl
def test_chaos_auth_reaches_nats_and_may_only_review_tokens(built: Any) -> None:
    _, docs = built
    deployment = find(docs, "Deployment", "chaos-auth")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["spec"]["replicas"] >= 2
    spec = pod_spec(deployment)
    (c,) = spec["containers"]
    variables = env(c)
    assert variables["NATS_USER"]["value"] == "chaos-auth"
    assert "chaos-auth" in (DEPLOY / "nats" / "nats-callout.conf").read_text()
    password = variables["NATS_PASSWORD_FILE"]["value"]
    assert secret_file(deployment, c, password) == ("chaosbus-nats-chaos-auth", "password")
    assert secret_file(deployment, c, variables["NATS_CA"]["value"]) == ("nats-tls", "ca.crt")
    seed = c["args"][c["args"].index("--issuer-seed") + 1]
    assert secret_file(deployment, c, seed) == ("chaosbus-auth-issuer", "issuer.nk")
    assert c["args"][c["args"].index("--audience") + 1] == "chaosbus"
    assert c["image"] == f"chaosbus/chaos-auth:{VERSION}"  # built from services/authcallout
    # Its service account may create TokenReviews (and SubjectAccessReviews), no more.
    assert spec["serviceAccountName"] == "chaos-auth"
    binding = find(docs, "ClusterRoleBinding", "chaosbus-chaos-auth")
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "chaos-auth", "namespace": NAMESPACE}
    ]
    assert [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(s.get("name") == "chaos-auth" for s in d.get("subjects") or [])
    ] == ["chaosbus-chaos-auth"]
    # Hardened as every other chaosbus container in prod, in every overlay.
    assert_resources("chaos-auth", c)
    security = effective_security(spec, c)
    for key, value in RESTRICTED.items():
        assert security.get(key) == value, f"chaos-auth: {key} is {security.get(key)!r}"
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsUser"] != 0


@needs_kubectl
def test_injected_sidecars_log_in_with_their_pods_token(built: Any) -> None:
    _, docs = built
    templates = rendered_templates(docs)
    assert set(templates) == {"chaosfs-sidecar", "chaosfs-sidecar-native"}
    for name, spec in templates.items():
        (chaosfs,) = [c for c in all_containers(spec) if c["name"] == "chaosfs"]
        variables = env(chaosfs)
        assert "NATS_USER" not in variables and "NATS_PASSWORD_FILE" not in variables, name
        assert variables["NATS_TOKEN_FILE"]["value"] == f"{TOKEN_DIR}/token"
        volumes = {v["name"]: v for v in spec["volumes"]}
        (source,) = volumes["chaosbus-token"]["projected"]["sources"]
        assert source["serviceAccountToken"]["audience"] == "chaosbus"
        assert source["serviceAccountToken"]["expirationSeconds"] >= 600  # the API's minimum
        mounts = {m["name"]: m for m in chaosfs["volumeMounts"]}
        assert mounts["chaosbus-token"]["mountPath"] == TOKEN_DIR
        # The namespace's Secret still brings the CA, and no password is mounted.
        assert volumes["chaosbus-nats"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]


def test_auth_secrets_script_makes_agreeing_secrets(tmp_path: Path) -> None:
    script = DEPLOY / "auth-secrets.sh"
    done, calls = run_with_fake_kubectl(
        tmp_path, "auth-secrets.sh", ["chaosbus-x"], {}, {"CHAOS_AUTH": str(BIN / "chaos-auth")}
    )
    assert done.returncode == 0, done.stderr
    made = {c["args"][c["args"].index("generic") + 1]: c for c in calls if "create" in c["args"]}
    assert set(made) == {"chaosbus-auth-issuer", "chaosbus-nats-chaos-auth", "chaosbus-auth-nats"}
    assert all(c["namespace"] == "chaosbus-x" for c in made.values())
    seed = made["chaosbus-auth-issuer"]["files"]["issuer.nk"].strip()
    password = made["chaosbus-nats-chaos-auth"]["files"]["password"]
    server = made["chaosbus-auth-nats"]["files"]
    assert re.fullmatch(r"[a-z][0-9a-f]{48}", password)
    assert server["CHAOS_AUTH_PASSWORD"] == password
    # The server trusts exactly the key that signs.
    (tmp_path / "seed").write_text(seed + "\n")
    public = subprocess.run(
        [str(BIN / "chaos-auth"), "--issuer-seed", str(tmp_path / "seed"), "--public-key"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert seed.startswith("SA") and server["CHAOS_AUTH_ISSUER"] == public
    for call in calls:  # secrets never on a command line
        assert not any(s in " ".join(call["args"]) for s in (seed, password))
    assert script.read_text().startswith("#!/bin/sh\n")


def test_auth_secrets_script_keeps_existing_secrets(tmp_path: Path) -> None:
    state = {"chaosbus-x/chaosbus-auth-issuer": {"issuer.nk": "SA..."}}
    done, calls = run_with_fake_kubectl(
        tmp_path, "auth-secrets.sh", ["chaosbus-x"], state, {"CHAOS_AUTH": str(BIN / "chaos-auth")}
    )
    assert done.returncode == 1 and "chaosbus-auth-issuer exists" in done.stderr
    assert not [c for c in calls if "create" in c["args"]]


def test_auth_secrets_script_passes_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian shellcheck)")
    done = subprocess.run(
        [shellcheck, str(DEPLOY / "auth-secrets.sh")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout
