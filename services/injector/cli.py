"""The ``chaos-injector`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from chaosbus.bus import add_bus_arguments, auth_from_args, default_url
from chaosbus.hostport import hostport_arg
from chaosbus.logs import configure

from .config import Config

DEFAULT_PREFIX = "admission-webhook.chaos-mesh.org"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chaos-injector",
        description="Mutating admission webhook that injects the chaosfs sidecar into pods, "
        "from the renderings the template-watcher publishes on NATS.",
    )
    p.add_argument(
        "--listen",
        default="0.0.0.0:9443",
        metavar="HOST:PORT",
        help="HTTPS address",
        type=hostport_arg,
    )
    p.add_argument("--tls-cert", required=True, metavar="FILE", help="serving certificate (PEM)")
    p.add_argument("--tls-key", required=True, metavar="FILE", help="its private key (PEM)")
    p.add_argument(
        "--tls-reload-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often to look for a rotated certificate (default 2)",
    )
    add_bus_arguments(p)
    p.add_argument(
        "--annotation-namespace",
        default=DEFAULT_PREFIX,
        metavar="PREFIX",
        help=f"prefix of the request and status annotations (default {DEFAULT_PREFIX})",
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")
    p.add_argument(
        "--metrics-addr",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus /metrics here",
        type=hostport_arg,
    )
    return p


def parse_config(argv: Sequence[str]) -> Config:
    args = parser().parse_args(argv)
    if args.tls_reload_interval <= 0:
        parser().error("--tls-reload-interval must be positive")
    for path in (args.tls_cert, args.tls_key):
        if not os.path.isfile(path):
            parser().error(f"no such file: {path}")
    return Config(
        listen=args.listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        nats_url=args.nats or default_url(),
        prefix=args.annotation_namespace.rstrip("/"),
        log_level=args.log_level,
        metrics_addr=args.metrics_addr,
        tls_reload_interval=args.tls_reload_interval,
        auth=auth_from_args(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(sys.argv[1:] if argv is None else argv)
    log = configure("chaos-injector", config.log_level)
    from .server import serve  # after logging is set up; keeps --help fast

    try:
        asyncio.run(serve(config, log))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        log.error("fatal", error=f"{type(exc).__name__}: {exc}")
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
