"""Connecting to NATS the same way from every service and from chaosctl."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client

DEFAULT_URL = "nats://127.0.0.1:4222"


def default_url() -> str:
    return os.environ.get("NATS_URL") or DEFAULT_URL


async def connect(
    url: str,
    *,
    name: str,
    reconnect_forever: bool = True,
    connect_timeout: float = 2.0,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_error: Callable[[Exception], Awaitable[None]] | None = None,
    **extra: Any,
) -> Client:
    """Open a connection; services reconnect forever, chaosctl fails fast."""

    async def _quiet_error(exc: Exception) -> None:
        if on_error is not None:
            await on_error(exc)

    options: dict[str, Any] = {
        "servers": [u.strip() for u in url.split(",") if u.strip()],
        "name": name,
        "connect_timeout": connect_timeout,
        "allow_reconnect": reconnect_forever,
        "max_reconnect_attempts": -1 if reconnect_forever else 0,
        "reconnect_time_wait": 0.5,
        "error_cb": _quiet_error,
        **extra,
    }
    if on_reconnect is not None:
        options["reconnected_cb"] = on_reconnect
    if on_disconnect is not None:
        options["disconnected_cb"] = on_disconnect
    return await nats.connect(**options)
