"""chaos-injector end to end: a real nats-server with the KV buckets, the real
process, real HTTPS with a self-signed certificate the client verifies."""

from __future__ import annotations

import asyncio
import base64
import copy
import http.client
import json
import os
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from tls_helpers import serving_pair
from unit.test_injector_mutate import (
    PREFIX,
    REQUEST,
    STATUS,
    assert_tikv_injected,
    review_body,
    reviews,
    tikv_pod,
    tikv_rendering,
)

from chaosbus import codec
from chaosbus.audit import STREAM as AUDIT_STREAM
from chaosbus.audit import SUBJECT_ROOT
from chaosbus.injection import NAMESPACES_BUCKET, RENDERINGS_BUCKET, Rendering, rendering_key
from conftest import BIN, NatsServer, free_port, wait_for

# --- NATS side: what the template-watcher would do ------------------------------------


async def _kv(url: str, bucket: str, create: bool) -> tuple[Any, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    if create:
        return nc, await js.create_key_value(bucket=bucket)
    return nc, await js.key_value(bucket)


def kv_op(url: str, bucket: str, op: str, key: str = "", value: bytes = b"") -> None:
    async def run() -> None:
        nc, kv = await _kv(url, bucket, create=op == "create")
        try:
            if op == "put":
                await kv.put(key, value)
            elif op == "delete":
                await kv.delete(key)
        finally:
            await nc.close()

    asyncio.run(run())


def put_rendering(url: str, rendering: Rendering) -> None:
    key = rendering_key(rendering.namespace, rendering.name)
    kv_op(url, RENDERINGS_BUCKET, "put", key, codec.encode(rendering.to_wire()))


def put_namespace(
    url: str, namespace: str, annotations: dict[str, str], labels: dict[str, str] | None = None
) -> None:
    value: dict[str, Any] = {"annotations": annotations}
    if labels is not None:
        value["labels"] = labels  # as a template-watcher that mirrors labels writes it
    kv_op(url, NAMESPACES_BUCKET, "put", namespace, codec.encode(value))


def create_audit_stream(url: str) -> None:
    async def run() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(name=AUDIT_STREAM, subjects=[f"{SUBJECT_ROOT}.>"])
        finally:
            await nc.close()

    asyncio.run(run())


def audit_events(url: str) -> list[dict[str, Any]]:
    """Every event in the AUDIT stream, oldest first."""

    async def run() -> list[dict[str, Any]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            state = (await js.stream_info(AUDIT_STREAM)).state
            if not state.messages:
                return []
            return [
                codec.decode((await js.get_msg(AUDIT_STREAM, seq)).data)
                for seq in range(state.first_seq, state.last_seq + 1)
            ]
        finally:
            await nc.close()

    return asyncio.run(run())


def create_buckets(url: str) -> None:
    kv_op(url, RENDERINGS_BUCKET, "create")
    kv_op(url, NAMESPACES_BUCKET, "create")


# --- the injector process and an HTTPS client ----------------------------------------


class Client:
    """Keep-alive HTTPS that trusts only the given certificate."""

    def __init__(self, port: int, ca_pem: str) -> None:
        self.port = port
        self.context = ssl.create_default_context(cadata=ca_pem)
        self.conn: http.client.HTTPSConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, context=self.context, timeout=10
                )
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else None
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def review(self, body: bytes) -> tuple[int, Any]:
        return self.request("POST", "/inject-v1-pod", body)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Injector:
    def __init__(self, tmp: Path, nats_url: str) -> None:
        self.cert, self.key = tmp / "tls.crt", tmp / "tls.key"
        self.serving = serving_pair(self.cert, self.key)
        self.der = self.serving.der
        self.port = free_port()
        self.metrics_port = free_port()
        self.log = tmp / "injector.log"
        self.nats_url = nats_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = Client(self.port, self.serving.trust_pem)

    def start(self) -> None:
        cmd = [
            str(BIN / "chaos-injector"),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--tls-cert",
            str(self.cert),
            "--tls-key",
            str(self.key),
            "--tls-reload-interval",
            "0.2",
            "--nats",
            self.nats_url,
            "--metrics-addr",
            f"127.0.0.1:{self.metrics_port}",
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115
        )
        wait_for(self._healthy, what=f"injector /healthz (log: {self.log})")

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        try:
            return self.client.request("GET", "/healthz")[0] == 200
        except OSError:
            self.client.close()
            return False

    def ready(self) -> int:
        return self.client.request("GET", "/readyz")[0]

    def wait_ready(self) -> None:
        wait_for(lambda: self.ready() == 200, what=f"injector /readyz (log: {self.log})")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()

    def stop(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def injector(tmp_path: Path, nats_server: NatsServer) -> Iterator[Injector]:
    inj = Injector(tmp_path, nats_server.url)
    yield inj
    inj.stop()


@pytest.fixture
def ready_injector(injector: Injector, nats_server: NatsServer) -> Injector:
    create_buckets(nats_server.url)
    put_rendering(nats_server.url, tikv_rendering())
    injector.start()
    injector.wait_ready()
    return injector


def patched(pod: dict, answer: dict) -> dict:
    response = answer["response"]
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    return jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))


def image_of_chaosfs(client: Client, pod: dict) -> str | None:
    status, answer = client.review(review_body(pod))
    assert status == 200
    containers = patched(pod, answer)["spec"]["containers"]
    return next((c["image"] for c in containers if c["name"] == "chaosfs"), None)


# --- tests --------------------------------------------------------------------------------


def test_ready_only_after_both_buckets_are_read(
    injector: Injector, nats_server: NatsServer
) -> None:
    injector.start()
    # No buckets yet: alive, not ready, and waiting rather than creating them.
    time.sleep(0.5)
    assert injector.ready() == 503
    pod = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    status, answer = injector.client.review(review_body(pod))
    assert status == 200 and answer["response"]["allowed"] is True
    assert "patch" not in answer["response"]
    assert "not loaded" in answer["response"]["auditAnnotations"]["reason"]

    kv_op(nats_server.url, RENDERINGS_BUCKET, "create")
    put_rendering(nats_server.url, tikv_rendering())
    time.sleep(0.5)
    assert injector.ready() == 503  # NAMESPACES is still missing
    kv_op(nats_server.url, NAMESPACES_BUCKET, "create")
    injector.wait_ready()
    assert image_of_chaosfs(injector.client, pod) == "pingcap/chaos-fs:v0.9.1"


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_tikv_pod_is_injected_over_https(ready_injector: Injector, api_version: str) -> None:
    pod = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    status, answer = ready_injector.client.review(review_body(pod, api_version, uid="uid-42"))
    assert status == 200
    assert answer["apiVersion"] == api_version and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "uid-42" and answer["response"]["allowed"] is True
    assert_tikv_injected(patched(pod, answer))
    # The API server reinvokes webhooks after other mutations: no second injection.
    status, again = ready_injector.client.review(review_body(patched(pod, answer)))
    assert status == 200 and "patch" not in again["response"]
    assert "already injected" in again["response"]["auditAnnotations"]["reason"]


def test_skips_and_malformed_bodies_over_https(ready_injector: Injector) -> None:
    client = ready_injector.client
    other_labels = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    other_labels["metadata"]["labels"] = {"app.kubernetes.io/component": "pd"}
    in_system = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    in_system["metadata"]["namespace"] = "kube-system"
    skips = {
        "no injection requested": tikv_pod(annotations={}),
        "already injected": tikv_pod(annotations={REQUEST: "chaosfs-tikv", STATUS: "injected"}),
        "does not exist": tikv_pod(annotations={REQUEST: "chaosfs-nope"}),
        "selector": other_labels,
        "never injected": in_system,
    }
    for why, pod in skips.items():
        status, answer = client.review(review_body(pod))
        assert status == 200, why
        response = answer["response"]
        assert (
            response["allowed"] is True and "patch" not in response and "warnings" not in response
        )
        assert why in response["auditAnnotations"]["reason"]

    for body, why in [
        (b"{", "not valid JSON"),
        (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}', "no request"),
        (json.dumps({"kind": "Pod"}).encode(), "kind must be AdmissionReview"),
    ]:
        status, answer = client.review(body)
        assert status == 400 and why in answer["error"]
    metrics = ready_injector.metrics()
    assert 'chaos_injector_admissions_total{outcome="skipped"} 5.0' in metrics
    assert 'chaos_injector_admissions_total{outcome="invalid"} 3.0' in metrics
    assert "chaos_injector_renderings 1.0" in metrics
    assert "chaos_injector_admission_seconds_count 8.0" in metrics


def test_kv_changes_are_served_within_a_second(
    ready_injector: Injector, nats_server: NatsServer
) -> None:
    client, url = ready_injector.client, nats_server.url
    pod = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    newer = tikv_rendering()
    newer.spec["containers"][0]["image"] = "chaosbus/chaosfs:v2"

    def served_within(image: str | None, pod: dict) -> float:
        started = time.monotonic()
        wait_for(lambda: image_of_chaosfs(client, pod) == image, timeout=1.0, interval=0.01)
        return time.monotonic() - started

    put_rendering(url, newer)
    served_within("chaosbus/chaosfs:v2", pod)
    kv_op(url, RENDERINGS_BUCKET, "delete", rendering_key("tidb", "chaosfs-tikv"))
    served_within(None, pod)

    # Asked by the namespace, for this pod by name, then for every pod.
    put_rendering(url, tikv_rendering())
    unasked = tikv_pod(annotations={})
    put_namespace(url, "tidb", {f"{PREFIX}/request-tikv-0": "chaosfs-tikv"})
    served_within("pingcap/chaos-fs:v0.9.1", unasked)
    generated = tikv_pod(name=None, annotations={})
    assert image_of_chaosfs(client, generated) is None  # its name is not known yet
    put_namespace(url, "tidb", {f"{PREFIX}/init-request": "chaosfs-tikv"})
    served_within("pingcap/chaos-fs:v0.9.1", generated)

    # A value that cannot be read counts as absent, and is reported.
    kv_op(url, RENDERINGS_BUCKET, "put", rendering_key("tidb", "chaosfs-tikv"), b"\xc1garbage")
    served_within(None, pod)
    assert 'chaos_injector_bad_values_total{bucket="RENDERINGS"} 1.0' in ready_injector.metrics()


def test_the_kv_is_read_again_after_nats_comes_back(
    ready_injector: Injector, nats_server: NatsServer
) -> None:
    pod = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    nats_server.stop()
    # Still serving what it had: a NATS outage must not stop injections.
    assert image_of_chaosfs(ready_injector.client, pod) == "pingcap/chaos-fs:v0.9.1"
    assert ready_injector.ready() == 200
    nats_server.start()
    newer = tikv_rendering()
    newer.spec["containers"][0]["image"] = "chaosbus/chaosfs:after-restart"
    put_rendering(nats_server.url, newer)
    wait_for(
        lambda: image_of_chaosfs(ready_injector.client, pod) == "chaosbus/chaosfs:after-restart",
        timeout=10,
        what=f"the update after a NATS restart (log: {ready_injector.log})",
    )


def test_a_rotated_certificate_is_served_to_new_connections(
    ready_injector: Injector, tmp_path: Path
) -> None:
    old_conn = ready_injector.client
    assert old_conn.request("GET", "/healthz")[0] == 200  # a keep-alive connection is open
    assert old_conn.conn is not None and old_conn.conn.sock is not None
    assert old_conn.conn.sock.getpeercert(binary_form=True) == ready_injector.der

    new_dir = tmp_path / "new"
    new_dir.mkdir()
    new = serving_pair(new_dir / "tls.crt", new_dir / "tls.key", ["127.0.0.1"])

    # Half a rotation: the new certificate next to the old key. The pair must be
    # refused as a whole and the old certificate keep serving new connections.
    os.replace(new_dir / "tls.crt", ready_injector.cert)
    time.sleep(0.8)  # four reload ticks
    old_trust = Client(ready_injector.port, ready_injector.serving.trust_pem)
    assert old_trust.request("GET", "/healthz")[0] == 200
    old_trust.close()

    os.replace(new_dir / "tls.key", ready_injector.key)
    # Trusts only the new certificate.
    fresh = Client(ready_injector.port, new.trust_pem)

    def handshake_ok() -> bool:
        try:
            return fresh.request("GET", "/healthz")[0] == 200
        except ssl.SSLError:
            fresh.close()
            return False

    wait_for(handshake_ok, timeout=5, what="the rotated certificate")
    assert fresh.conn is not None and fresh.conn.sock is not None
    assert fresh.conn.sock.getpeercert(binary_form=True) == new.der
    fresh.close()
    # The connection opened before the rotation keeps working.
    assert old_conn.conn is not None
    old_conn.conn.request("GET", "/healthz")
    assert old_conn.conn.getresponse().status == 200
    assert 'chaos_injector_tls_reloads_total{result="ok"} 1.0' in ready_injector.metrics()


def test_hypothesis_reviews_over_https_never_fail(ready_injector: Injector) -> None:
    client = ready_injector.client
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(reviews)
    def one(doc: dict) -> None:
        status, answer = client.review(json.dumps(doc).encode())
        assert status == 200, answer
        response = answer["response"]
        assert response["uid"] == doc["request"]["uid"] and response["allowed"] is True
        outcome = response["auditAnnotations"]["outcome"]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if "patch" in response:
            result = patched(copy.deepcopy(doc["request"]["object"]), answer)
            assert result["metadata"]["annotations"][STATUS] == "injected"

    one()
    assert outcomes.get("injected", 0) > 10, outcomes
    # Junk never gets a 5xx either.
    for junk in (b"", b"\x00\xff", b"null", b'"x"', b"{}" * 1000, b'{"a":' * 5000):
        status, _ = client.review(junk)
        assert status == 400
    assert ready_injector.proc is not None and ready_injector.proc.poll() is None


def test_dry_runs_and_silent_reinvocations_leave_no_audit_record(
    injector: Injector, nats_server: NatsServer
) -> None:
    url = nats_server.url
    create_buckets(url)
    create_audit_stream(url)
    put_rendering(url, tikv_rendering())
    injector.start()
    injector.wait_ready()
    client = injector.client
    pod = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})

    def dry(body: bytes) -> bytes:
        doc = json.loads(body)
        doc["request"]["dryRun"] = True
        return json.dumps(doc).encode()

    # kubectl apply --dry-run=server: the same patch, for a pod never created.
    status, dry_answer = client.review(dry(review_body(pod, uid="dry")))
    assert status == 200 and "patch" in dry_answer["response"]
    status, real = client.review(review_body(pod, uid="real"))
    assert real["response"]["patch"] == dry_answer["response"]["patch"]
    injected = patched(pod, real)

    # The API server's second call after its ServiceAccount plugin added token mounts.
    tokens = copy.deepcopy(injected)
    tokens["spec"]["volumes"].append({"name": "kube-api-access-1", "projected": {"sources": []}})
    for c in tokens["spec"]["containers"]:
        c["volumeMounts"].append({"name": "kube-api-access-1", "mountPath": "/var/run/secrets"})
    status, again = client.review(review_body(tokens, uid="sa"))
    assert status == 200 and "patch" not in again["response"]

    # A refusal: the pod's init container has the sidecar's name.
    clash = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    clash["spec"]["initContainers"] = [{"name": "chaosfs", "image": "example/prepare"}]
    status, refused = client.review(review_body(clash, uid="refused"))
    assert "patch" not in refused["response"]
    assert "init container named 'chaosfs'" in refused["response"]["warnings"][0]

    # Events are published in order: once the last is there, so are the others.
    wait_for(
        lambda: any(e.get("uid") == "refused" for e in audit_events(url)),
        what=f"the refusal in the audit trail (log: {injector.log})",
    )
    pods = {e["uid"]: e["kind"] for e in audit_events(url) if e.get("uid")}
    assert pods == {"real": "pod.injected", "refused": "pod.refused"}
    metrics = injector.metrics()
    assert 'chaos_injector_admissions_total{outcome="injected"} 1.0' in metrics
    assert 'chaos_injector_admissions_total{outcome="skipped"} 1.0' in metrics
    assert 'chaos_injector_refusals_total{rule="container-clash"} 1.0' in metrics
    assert 'chaos_injector_dry_runs_total{outcome="injected"} 1.0' in metrics
    assert 'chaos_injector_reinvocations_total{result="unchanged"} 1.0' in metrics


def test_a_namespace_enforcing_pod_security_gets_no_privileged_sidecar(
    ready_injector: Injector, nats_server: NatsServer
) -> None:
    url, client = nats_server.url, ready_injector.client
    pod = tikv_pod(annotations={REQUEST: "chaosfs-tikv"})
    enforce = "pod-security.kubernetes.io/enforce"
    put_namespace(url, "tidb", {}, labels={enforce: "baseline"})

    def refused() -> bool:
        status, answer = client.review(review_body(pod))
        return status == 200 and "patch" not in answer["response"]

    wait_for(refused, timeout=5, what="the namespace's label at the injector")
    _, answer = client.review(review_body(pod))
    warning = answer["response"]["warnings"][0]
    assert "enforces the Pod Security level 'baseline'" in warning
    assert "container 'chaosfs' is privileged" in warning
    put_namespace(url, "tidb", {}, labels={enforce: "privileged"})
    wait_for(lambda: image_of_chaosfs(client, pod) is not None, timeout=5, what="injection")
    assert 'chaos_injector_refusals_total{rule="pod-security"}' in ready_injector.metrics()
