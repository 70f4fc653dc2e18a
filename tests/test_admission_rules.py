"""What the admission webhook's HTTP server records: a dry run gets the real answer
and leaves no trace (no audit event, no admission counted), and the API server's
second call is recorded only when it adds something. Served by the real aiohttp
application on a loopback port; the admission rules themselves are tested in
tests/unit/test_admission_rules.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from unit.test_admission_rules import (
    _host_pid,
    answer,
    apiserver_applies,
    later_webhook_adds_a_container,
    review,
    service_account_plugin,
    state,
)
from unit.test_injector_mutate import PREFIX, tikv_pod

from injector.metrics import Metrics
from injector.server import INJECT_PATH, build_app
from injector.state import State

# --- the server: what is recorded --------------------------------------------------------------


class Recorder:
    """An audit log that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, kind: str, **fields: Any) -> None:
        self.events.append((kind, fields))


class QuietLog:
    def __getattr__(self, _: str) -> Any:
        return lambda *a, **kw: None


def serve_reviews(st_: State, bodies: list[bytes]) -> tuple[list[dict], Recorder, Metrics]:
    metrics, audit = Metrics(), Recorder()

    async def run() -> list[dict]:
        app = build_app(st_, PREFIX, metrics, QuietLog(), audit)  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as client:
            out = []
            for body in bodies:
                response = await client.post(INJECT_PATH, data=body)
                assert response.status == 200
                out.append(await response.json())
            return out

    return asyncio.run(run()), audit, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_dry_run_gets_the_real_answer_and_records_nothing() -> None:
    pod = tikv_pod()
    refused = tikv_pod()
    _host_pid(refused)
    answers, audit, metrics = serve_reviews(
        state(), [review(pod, "dry", dry_run=True), review(refused, "dry-2", dry_run=True)]
    )
    assert answers[0]["response"]["patch"] == answer(pod).body["response"]["patch"]
    assert "patch" not in answers[1]["response"] and answers[1]["response"]["warnings"]
    assert audit.events == []
    for outcome in ("injected", "skipped"):
        assert sample(metrics, "chaos_injector_admissions_total", outcome=outcome) == 0
    assert sample(metrics, "chaos_injector_refusals_total", rule="host-pid") == 0
    assert sample(metrics, "chaos_injector_dry_runs_total", outcome="injected") == 1

    # The same requests for real are recorded.
    _, audit, metrics = serve_reviews(state(), [review(pod, "real"), review(refused, "real-2")])
    assert [(kind, f["uid"]) for kind, f in audit.events] == [
        ("pod.injected", "real"),
        ("pod.refused", "real-2"),
    ]
    assert audit.events[1][1]["refused"] == ["host-pid"]
    assert sample(metrics, "chaos_injector_admissions_total", outcome="injected") == 1
    assert sample(metrics, "chaos_injector_refusals_total", rule="host-pid") == 1


def test_reinvocations_are_recorded_only_when_they_add_something() -> None:
    pod = tikv_pod()
    injected = apiserver_applies(pod, answer(pod).body["response"])
    bodies = [
        review(service_account_plugin(injected), "sa"),
        review(later_webhook_adds_a_container(injected), "proxy"),
    ]
    answers, audit, metrics = serve_reviews(state(), bodies)
    assert "patch" not in answers[0]["response"] and "patch" in answers[1]["response"]
    assert [(kind, f["uid"]) for kind, f in audit.events] == [("pod.completed", "proxy")]
    assert sample(metrics, "chaos_injector_admissions_total", outcome="skipped") == 0
    assert sample(metrics, "chaos_injector_admissions_total", outcome="unchanged") == 0
    assert sample(metrics, "chaos_injector_reinvocations_total", result="unchanged") == 1
    assert sample(metrics, "chaos_injector_reinvocations_total", result="patched") == 1
