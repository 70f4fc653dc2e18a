"""Prometheus metrics, in a registry of their own (tests build several)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.admissions = Counter(
            "chaos_injector_admissions",
            "Pod creations answered, by outcome (injected, unchanged, skipped, error, invalid); "
            "dry runs and reinvocations are counted apart",
            ["outcome"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "chaos_injector_refusals",
            "Injections refused (the pod admitted without the sidecar, counted as skipped), by "
            "rule: container-clash, volume-clash, mount-lost, missing-volume, host-pid, "
            "pod-security, invalid-pod",
            ["rule"],
            registry=self.registry,
        )
        self.reinvocations = Counter(
            "chaos_injector_reinvocations",
            "The API server's second calls on injected pods, by result (unchanged, patched)",
            ["result"],
            registry=self.registry,
        )
        self.dry_runs = Counter(
            "chaos_injector_dry_runs",
            "Dry-run AdmissionReviews answered (the pod is never created), by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "chaos_injector_admission_seconds",
            "Time to answer one AdmissionReview",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.renderings = Gauge(
            "chaos_injector_renderings", "Renderings loaded from NATS", registry=self.registry
        )
        self.namespaces = Gauge(
            "chaos_injector_namespaces",
            "Namespaces with injection annotations loaded from NATS",
            registry=self.registry,
        )
        self.ready = Gauge(
            "chaos_injector_ready",
            "1 once the first complete snapshot of both buckets was read",
            registry=self.registry,
        )
        self.resyncs = Counter(
            "chaos_injector_resyncs", "Times the KV buckets were re-read", registry=self.registry
        )
        self.bad_values = Counter(
            "chaos_injector_bad_values",
            "KV values that could not be decoded, by bucket",
            ["bucket"],
            registry=self.registry,
        )
        self.tls_reloads = Counter(
            "chaos_injector_tls_reloads",
            "Certificate reloads, by result",
            ["result"],
            registry=self.registry,
        )

    def app(self) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app
