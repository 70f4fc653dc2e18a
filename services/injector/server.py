"""The HTTPS server: routes, and running everything on one asyncio loop."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from aiohttp import web

from chaosbus.audit import AuditLog
from chaosbus.hostport import parse_hostport
from chaosbus.supervise import run_until_stopped, stop_on_signals

from . import admission
from .config import Config
from .metrics import Metrics
from .state import State
from .store import StoreSync
from .tls import ReloadingContext

INJECT_PATH = "/inject-v1-pod"
# A pod object is at most ~1.5 MiB in etcd; leave room for the review around it.
MAX_BODY = 8 << 20
SHUTDOWN_GRACE = 10.0


def _exit_anyway_after(seconds: float) -> None:
    """A stop must stop: if a library task swallows its cancellation or a thread
    will not join, leave anyway rather than hang a rollout until SIGKILL."""
    timer = threading.Timer(seconds, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


AUDIT_KINDS = {
    admission.INJECTED: "pod.injected",
    admission.UNCHANGED: "pod.skipped",
    admission.SKIPPED: "pod.skipped",
    admission.ERROR: "pod.error",
    admission.INVALID: "admission.invalid",
}
# A refused injection (the pod admitted without it, see admission.py).
AUDIT_REFUSED = "pod.refused"
# The API server's second call added the sidecar's mounts to a later container.
AUDIT_COMPLETED = "pod.completed"


def audit_kind(verdict: admission.Verdict) -> str | None:
    """The audit event an answer makes, or None for none.

    A dry run's pod is never created, and the webhook is declared
    ``sideEffects: NoneOnDryRun``: nothing is recorded for it. Neither for the
    API server's second call on an injected pod that finds nothing to add (it
    comes after every pod creation whose pod another plugin changed after us).
    """
    if verdict.dry_run or verdict.reinvocation == admission.REINVOKED_UNCHANGED:
        return None
    if verdict.reinvocation == admission.REINVOKED_PATCHED:
        return AUDIT_COMPLETED
    if verdict.refused:
        return AUDIT_REFUSED
    return AUDIT_KINDS.get(verdict.outcome, "admission")


def count(metrics: Metrics, verdict: admission.Verdict) -> None:
    """The metrics of one answer; a dry run and a reinvocation have their own."""
    if verdict.dry_run:
        metrics.dry_runs.labels(verdict.outcome).inc()
    elif verdict.reinvocation:
        metrics.reinvocations.labels(verdict.reinvocation).inc()
    else:
        metrics.admissions.labels(verdict.outcome).inc()
        for rule in verdict.refused:
            metrics.refusals.labels(rule).inc()


def build_app(
    state: State, prefix: str, metrics: Metrics, log: Any, audit: AuditLog | None = None
) -> web.Application:
    async def inject(request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            body = await request.read()
            verdict = admission.review(body, state, prefix)
        except web.HTTPException:
            raise  # aiohttp's own 4xx, e.g. a body over the size limit
        except Exception as exc:
            # review() catches everything after parsing; this is the last line of
            # defence so that no bug can turn into a 5xx and block pod creation.
            log.exception("admission_crashed")
            verdict = admission.Verdict(
                400, {"error": f"cannot read the request: {exc}"}, admission.INVALID, str(exc)
            )
        elapsed = time.perf_counter() - started
        count(metrics, verdict)
        metrics.latency.observe(elapsed)
        level = log.warning if verdict.outcome in (admission.ERROR, admission.INVALID) else log.info
        level(
            "admission",
            outcome=verdict.outcome,
            reason=verdict.reason,
            status=verdict.status,
            ms=round(elapsed * 1000, 3),
            **verdict.fields,
        )
        kind = audit_kind(verdict)
        if audit is not None and kind is not None:
            # Queued, never awaited: admission does not wait for the audit trail.
            fields = verdict.fields
            pod = f"{fields.get('namespace')}/{fields.get('pod')}" if fields.get("pod") else None
            extra = {"refused": verdict.refused} if verdict.refused else {}
            audit.record(
                kind,
                pod=pod,
                outcome=verdict.outcome,
                reason=verdict.reason,
                config=fields.get("config"),
                uid=fields.get("uid"),
                **extra,
            )
        return web.json_response(verdict.body, status=verdict.status)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        summary = state.summary()
        return web.json_response(summary, status=200 if state.ready else 503)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(INJECT_PATH, inject)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(config: Config, log: Any) -> None:
    metrics = Metrics()
    state = State()
    tls = ReloadingContext(
        config.tls_cert, config.tls_key, config.tls_reload_interval, log, metrics
    )
    sync = StoreSync(config.nats_url, state, metrics, log, config.auth)
    audit = AuditLog("injector", log)
    sync.on_connect = audit.start
    runners: list[web.AppRunner] = []

    runner = web.AppRunner(build_app(state, config.prefix, metrics, log, audit), access_log=None)
    await runner.setup()
    runners.append(runner)
    host, port = parse_hostport(config.listen, what="--listen")
    await web.TCPSite(runner, host, port, ssl_context=tls.context).start()
    log.info("listening", addr=config.listen, path=INJECT_PATH, prefix=config.prefix)

    if config.metrics_addr:
        metrics_runner = web.AppRunner(metrics.app(), access_log=None)
        await metrics_runner.setup()
        runners.append(metrics_runner)
        mhost, mport = parse_hostport(config.metrics_addr, what="--metrics-addr")
        await web.TCPSite(metrics_runner, mhost, mport).start()
        log.info("metrics_listening", addr=config.metrics_addr)

    try:
        # The bucket sync and the certificate watcher are supervised: either one that
        # fails is logged and started again while the webhook keeps serving.
        await run_until_stopped(
            {"store sync": sync.run, "certificate reload": tls.watch}, stop_on_signals(), log
        )
    finally:
        log.info("stopping")
        _exit_anyway_after(SHUTDOWN_GRACE)
        for r in runners:
            await r.cleanup()
