"""``chaos-auth``: the NATS auth callout that gives each chaosfs sidecar its own user.

It connects as the callout user of deploy/nats/nats-callout.conf, checks the
ServiceAccount token every sidecar connects with (TokenReview), and answers with a user
JWT that lets that sidecar use its own pod's subjects only, signed with the issuer seed
whose public key the server's ``auth_callout.issuer`` names.

``chaos-auth --issuer-seed FILE --keygen`` makes a new issuer seed and prints its public
key; ``--public-key`` prints the public key of an existing one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from chaosbus.bus import add_bus_arguments, auth_from_args, connect, default_url
from chaosbus.logs import configure
from template_watcher.kube_source import make_api_client

from . import nkeys
from .service import QUEUE, Callout
from .tokenreview import TokenReviewer

DEFAULT_AUDIENCE = "chaosbus"
DEFAULT_ACCOUNT = "CHAOSBUS"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chaos-auth", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--issuer-seed",
        required=True,
        metavar="FILE",
        help="account nkey seed (SA...) that signs the users' JWTs",
    )
    p.add_argument("--keygen", action="store_true", help="write a new seed to FILE and exit")
    p.add_argument("--public-key", action="store_true", help="print FILE's public key and exit")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    p.add_argument(
        "--audience",
        default=DEFAULT_AUDIENCE,
        help=f"audience the pods' projected tokens are made for ({DEFAULT_AUDIENCE})",
    )
    p.add_argument(
        "--account",
        default=DEFAULT_ACCOUNT,
        help=f"account the sidecars are placed in ({DEFAULT_ACCOUNT})",
    )
    p.add_argument("--queue", default=QUEUE, help=f"queue group shared by replicas ({QUEUE})")
    add_bus_arguments(p)
    p.add_argument("--log-level", default="info")
    return p


def read_issuer(path: str) -> nkeys.KeyPair:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"chaos-auth: cannot read --issuer-seed {path}: {exc.strerror}") from None
    try:
        issuer = nkeys.KeyPair.from_seed(text)
    except nkeys.NkeyError as exc:
        raise SystemExit(f"chaos-auth: --issuer-seed {path}: {exc}") from None
    if issuer.role != nkeys.ACCOUNT:
        raise SystemExit(f"chaos-auth: --issuer-seed {path} is not an account seed (SA...)")
    return issuer


def keygen(path: str) -> str:
    issuer = nkeys.KeyPair.generate(nkeys.ACCOUNT)
    try:
        # The seed is a secret: never readable by others, never written over.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise SystemExit(f"chaos-auth: cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(issuer.seed + "\n")
    return issuer.public_key


async def serve(args: argparse.Namespace) -> int:
    log = configure("chaos-auth", args.log_level)
    issuer = read_issuer(args.issuer_seed)
    api = await make_api_client(args.kubeconfig)
    callout = Callout(issuer, TokenReviewer(api, args.audience), args.account, log)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=str(exc) or type(exc).__name__)

    try:
        nc = await connect(
            args.nats or default_url(),
            name="chaos-auth",
            auth=auth_from_args(args),
            on_error=on_error,
        )
    except Exception as exc:
        log.error("nats_unreachable", error=str(exc) or type(exc).__name__)
        await api.close()
        return 1
    try:
        sub = await callout.listen(nc, args.queue)
        log.info("callout_listening", issuer=issuer.public_key, audience=args.audience)
        await stopping.wait()
        # Stop taking requests (another replica gets them), answer those under way, go.
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        await callout.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
        await api.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.keygen:
        print(keygen(args.issuer_seed))
        return 0
    if args.public_key:
        print(read_issuer(args.issuer_seed).public_key)
        return 0
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
