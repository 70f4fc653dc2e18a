"""``chaos-controller``: runs declarative experiments (Chaos Mesh IoChaos/IOChaos, chaosbus
FsChaos) over the bus.

Experiments come from the ``EXPERIMENTS`` bucket, written by ``chaosctl apply``; with
``--kubernetes`` the controller also keeps that bucket in step with FsChaos objects
(and, with ``--chaos-mesh``, chaos-mesh.org IoChaos objects) and writes their status
back. Any number of replicas may run: one holds the lease and acts, the others wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from chaosbus.audit import AuditLog, ensure_stream
from chaosbus.bus import add_bus_arguments, auth_from_args, connect, default_url
from chaosbus.durations import parse_duration
from chaosbus.experiments.store import ExperimentStore, lease_bucket
from chaosbus.hostport import hostport_arg
from chaosbus.logs import configure
from chaosbus.metrics import start_metrics
from chaosbus.sizes import parse_size
from chaosbus.supervise import JobEnded, run_until_stopped, stop_on_signals

from . import metrics
from .engine import Engine
from .lease import Lease, LeaseLost
from .targets import ClusterPods, PodSource, RegistryPods

RESTART_AFTER = 1.0  # seconds before leading again after the engine failed


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above zero, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chaos-controller", description=__doc__)
    p.add_argument(
        "--kubernetes",
        action="store_true",
        help="also follow FsChaos objects in the cluster and write their status",
    )
    p.add_argument(
        "--chaos-mesh",
        action="store_true",
        help="with --kubernetes: also run chaos-mesh.org/v1alpha1 IoChaos objects "
        "(only where Chaos Mesh itself is not installed)",
    )
    p.add_argument("--namespace", help="with --kubernetes: only this namespace (default all)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    p.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="this replica's name in the lease (default $POD_NAME, then the host name)",
    )
    p.add_argument("--lease-ttl", type=_positive_duration, default=5.0, help="lease length (5s)")
    p.add_argument(
        "--ack-timeout",
        type=_positive_duration,
        default=3.0,
        help="how long a run waits for the selected sidecars to acknowledge (3s)",
    )
    add_bus_arguments(p)
    p.add_argument(
        "--metrics-addr", help="serve Prometheus /metrics on HOST:PORT", type=hostport_arg
    )
    p.add_argument("--audit-max-age", type=parse_duration, default=7 * 86400.0)
    p.add_argument("--audit-max-bytes", type=parse_size, default=1 << 30)
    p.add_argument("--log-level", default="info")
    return p


async def _pods(args: argparse.Namespace, nc: Any, log: Any) -> tuple[PodSource, Any]:
    if not args.kubernetes:
        return RegistryPods(nc, log), None
    from template_watcher.kube_source import make_api_client

    from .pods import KubePods

    api = await make_api_client(args.kubeconfig)
    return ClusterPods(nc, KubePods(api), log), api


async def _lead(args: argparse.Namespace, nc: Any, audit: AuditLog, log: Any) -> None:
    """Wait for the lease, then run the engine (and the Kubernetes source) while it holds."""
    store = await ExperimentStore.open(nc)
    lease = Lease(await lease_bucket(nc, args.lease_ttl), args.identity, args.lease_ttl, log)
    try:
        while True:
            await lease.acquire()
            metrics.LEADER.set(1)
            log.info("leading", identity=args.identity)
            audit.record("controller.leading", identity=args.identity)
            pods, api = await _pods(args, nc, log)
            engine = Engine(nc, store, audit, log, pods, timeout=args.ack_timeout)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(lease.hold(), name="lease")
                    tg.create_task(engine.run(), name="engine")
                    if api is not None:
                        from .kube import KubeSource

                        source = KubeSource(
                            api,
                            store,
                            log,
                            audit,
                            chaos_mesh=args.chaos_mesh,
                            namespace=args.namespace,
                        )
                        tg.create_task(source.run(), name="kubernetes")
            except* LeaseLost as group:
                log.warning("lease_lost", error=str(group.exceptions[0]))
            except* Exception as group:
                # Supervised: the failure is logged, then this replica tries to lead again.
                for exc in group.exceptions:
                    log.error("engine_failed", error=repr(exc), exc_info=exc)
                await asyncio.sleep(RESTART_AFTER)
            finally:
                metrics.LEADER.set(0)
                if api is not None:
                    with contextlib.suppress(Exception):
                        await api.close()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(lease.release())


async def run(args: argparse.Namespace) -> int:
    log = configure("controller", args.log_level)
    if args.chaos_mesh and not args.kubernetes:
        print("chaos-controller: --chaos-mesh needs --kubernetes", file=sys.stderr)
        return 2
    if args.metrics_addr:
        start_metrics(args.metrics_addr)
    nc = await connect(
        args.nats or default_url(), name="chaos-controller", auth=auth_from_args(args)
    )
    await ensure_stream(nc, max_age=args.audit_max_age, max_bytes=args.audit_max_bytes)
    audit = AuditLog("controller", log)
    audit.start(nc)
    code = 0
    try:
        # Leadership is not restarted in place: a controller whose lease loop failed
        # exits non-zero and its Deployment starts a fresh one.
        await run_until_stopped(
            {"leader": lambda: _lead(args, nc, audit, log)}, stop_on_signals(), log, restart=False
        )
    except JobEnded as exc:
        log.error("controller_failed", error=str(exc))
        code = 1
    log.info("stopping")
    await audit.stop(timeout=1.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 2.0)
    log.info("stopped")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:
        print(f"chaos-controller: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
