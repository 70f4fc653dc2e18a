"""Talking to sidecars: one request, one answer, and errors an operator can act on."""

from __future__ import annotations

from typing import Any

import nats.errors

from chaosbus import codec
from chaosbus.bus import connect
from chaosbus.subjects import pod_command


class Unreachable(RuntimeError):
    """Nobody answered: no NATS server, or no sidecar for the pod."""


class Refused(RuntimeError):
    """The sidecar answered with an error; nothing changed."""


async def request_pod(
    url: str, namespace: str, name: str, command: dict[str, Any], timeout: float
) -> dict[str, Any]:
    pod = f"{namespace}/{name}"
    try:
        nc = await connect(
            url, name="chaosctl", reconnect_forever=False, connect_timeout=min(timeout, 2.0)
        )
    except Exception as exc:
        raise Unreachable(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from None
    try:
        try:
            msg = await nc.request(
                pod_command(namespace, name), codec.encode(command), timeout=timeout
            )
        except nats.errors.NoRespondersError:
            raise Unreachable(f"no sidecar answers for {pod}") from None
        except nats.errors.TimeoutError:
            raise Unreachable(f"no sidecar answered for {pod} within {timeout:g}s") from None
        try:
            reply = codec.decode(msg.data, limit=16 * 1024 * 1024)
        except codec.DecodeError as exc:
            raise Refused(f"{pod} sent an unreadable reply: {exc}") from None
        if not reply.get("ok"):
            raise Refused(f"{pod} refused: {reply.get('error', 'no reason given')}")
        return reply
    finally:
        await nc.close()
