"""``chaos-template-watcher``: watch templates and injection configs, publish renderings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, cast

from chaosbus.audit import AuditLog, ensure_stream
from chaosbus.bus import add_bus_arguments, auth_from_args, connect, default_url
from chaosbus.durations import parse_duration
from chaosbus.hostport import hostport_arg
from chaosbus.labels import LabelSelector, SelectorError
from chaosbus.labels import parse as parse_selector
from chaosbus.logs import configure
from chaosbus.metrics import start_metrics
from chaosbus.sizes import parse_size
from chaosbus.supervise import run_until_stopped, stop_on_signals

from .core import TemplateWatcher
from .fleet_monitor import monitor
from .store import KVStore

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_PREFIX = "admission-webhook.chaos-mesh.org"
RESYNC_INTERVAL = 5.0


def _webhook_namespaces(text: str) -> LabelSelector:
    # A malformed selector is refused at start, with the reason, not on the first event.
    try:
        return parse_selector(text)
    except SelectorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _selector(text: str) -> str:
    _webhook_namespaces(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chaos-template-watcher", description=__doc__)
    p.add_argument(
        "--source",
        default="kubernetes",
        help="kubernetes, or dir:PATH for a folder of ConfigMap YAML files",
    )
    p.add_argument("--namespace", help="where template ConfigMaps live (default: the pod's own)")
    p.add_argument(
        "--template-labels", type=_selector, default="app.kubernetes.io/component=template"
    )
    p.add_argument("--config-labels", type=_selector, default="app.kubernetes.io/component=webhook")
    p.add_argument(
        "--webhook-namespaces",
        type=_webhook_namespaces,
        help="the webhook's namespaceSelector as a label selector (kubernetes.io/metadata.name "
        "holds a namespace's name): configs published elsewhere are warned about and audited",
    )
    p.add_argument(
        "--annotation-namespace",
        default=DEFAULT_PREFIX,
        help="prefix of the pod and namespace annotations that ask for injection",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    add_bus_arguments(p)
    p.add_argument(
        "--metrics-addr", help="serve Prometheus /metrics on HOST:PORT", type=hostport_arg
    )
    p.add_argument("--audit-max-age", type=parse_duration, default=7 * 86400.0)
    p.add_argument("--audit-max-bytes", type=parse_size, default=1 << 30)
    p.add_argument("--log-level", default="info")
    return p


def default_namespace() -> str:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


async def _streams(
    args: argparse.Namespace, namespace: str, log: Any
) -> dict[str, Callable[[], AsyncIterator]]:
    """A way to open each stream; opened again (starting with a fresh list) if it fails."""
    if args.source.startswith("dir:"):
        from .dir_source import watch_dir

        folder = Path(args.source[4:])
        if not folder.is_dir():
            raise SystemExit(f"chaos-template-watcher: {folder} is not a directory")

        def stream(kind: str, ns: str | None, labels: str | None) -> AsyncIterator:
            return watch_dir(
                folder,
                kind,
                namespace=ns,
                label_selector=labels,
                default_namespace=namespace,
                log=log,
            )
    elif args.source == "kubernetes":
        from .kube_source import Kind, make_api_client, watch_objects

        api = await make_api_client(args.kubeconfig)

        def stream(kind: str, ns: str | None, labels: str | None) -> AsyncIterator:
            return watch_objects(
                api, cast(Kind, kind), namespace=ns, label_selector=labels, log=log
            )
    else:
        raise SystemExit(f"chaos-template-watcher: unknown --source {args.source!r}")
    return {
        "templates": lambda: stream("configmaps", namespace, args.template_labels),
        "configs": lambda: stream("configmaps", None, args.config_labels),
        "namespaces": lambda: stream("namespaces", None, None),
    }


async def _consume(watcher: TemplateWatcher, name: str, stream: AsyncIterator, log: Any) -> None:
    async for event in stream:
        try:
            await watcher.apply(name, event)
        except Exception:
            # Whatever went wrong (the bus away, say), the next resync tries again.
            log.exception("apply_failed", stream=name)


async def _resync(watcher: TemplateWatcher, log: Any) -> None:
    while True:
        await asyncio.sleep(RESYNC_INTERVAL)
        try:
            await watcher.resync()
        except Exception as exc:
            log.warning("resync_failed", error=str(exc))


async def run(args: argparse.Namespace) -> int:
    log = configure("template-watcher", args.log_level)
    namespace = args.namespace or default_namespace()
    url = args.nats or default_url()
    if args.metrics_addr:
        start_metrics(args.metrics_addr)
    nc = await connect(url, name="chaos-template-watcher", auth=auth_from_args(args))
    audit = AuditLog("template-watcher", log)
    await ensure_stream(nc, max_age=args.audit_max_age, max_bytes=args.audit_max_bytes)
    audit.start(nc)
    store = KVStore(nc, audit, log)
    published, published_namespaces = await store.open()
    watcher = TemplateWatcher(
        store,
        annotation_prefix=args.annotation_namespace,
        log=log,
        published=published,
        published_namespaces=published_namespaces,
        webhook_namespaces=args.webhook_namespaces,
    )
    streams = await _streams(args, namespace, log)
    log.info(
        "watching",
        source=args.source,
        namespace=namespace,
        template_labels=args.template_labels,
        config_labels=args.config_labels,
    )

    def consume(name: str, open_stream: Callable[[], AsyncIterator]) -> Callable[[], Any]:
        return lambda: _consume(watcher, name, open_stream(), log)

    jobs: dict[str, Callable[[], Any]] = {
        **{f"watch {n}": consume(n, opener) for n, opener in streams.items()},
        "resync": lambda: _resync(watcher, log),
        "fleet monitor": lambda: monitor(nc, audit, log),
    }
    # Every job is supervised: a watch stream that fails is logged and opened again,
    # never left dead while the service looks healthy.
    await run_until_stopped(jobs, stop_on_signals(), log)
    log.info("stopping")
    await audit.stop(timeout=1.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 2.0)
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:
        print(f"chaos-template-watcher: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
