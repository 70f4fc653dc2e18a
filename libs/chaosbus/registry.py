"""The sidecar registry: who is alive, kept in JetStream KV.

Each sidecar writes its own entry when it is ready and on every heartbeat, and
deletes it when it goes. An entry whose heartbeat is older than a few intervals
belongs to a sidecar that is lost (killed, partitioned, its node gone).
"""

from __future__ import annotations

import math
import time
from typing import Any

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError

from . import codec
from .kv import contents, open_bucket
from .subjects import encode_token

ENTRY_LIMIT = 1 << 20

BUCKET = "SIDECARS"
LOST_AFTER_BEATS = 3
FORGET_LOST_AFTER = 300.0  # seconds: a sidecar lost longer than this is taken as gone


def key(namespace: str, name: str) -> str:
    return f"{encode_token(namespace)}.{encode_token(name)}"


def _number(value: Any, default: float) -> float:
    """A finite number from an entry, or the default: entries are written by every
    sidecar, and one bad value ("soon", NaN, a map) must not break whoever reads them."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return float(value)


def is_lost(entry: dict[str, Any], now: float | None = None) -> bool:
    now = time.time() if now is None else now
    interval = _number(entry.get("heartbeat_interval"), 5.0)
    if interval <= 0:
        interval = 5.0
    return now - _number(entry.get("time"), 0.0) > LOST_AFTER_BEATS * interval


def last_seen(entry: dict[str, Any]) -> float:
    return _number(entry.get("time"), 0.0)


def forgotten(entry: dict[str, Any], now: float) -> bool:
    """Lost so long ago that the pod is simply gone: no longer reported as missing."""
    return is_lost(entry, now) and now - last_seen(entry) >= FORGET_LOST_AFTER


async def entries(nc: Client) -> list[dict[str, Any]]:
    """Every readable entry, each a map marked ``lost`` or not, sorted by pod; an
    unreadable value (any sidecar may write one) is skipped. Empty with no bucket."""
    try:
        kv = await open_bucket(nc, BUCKET, create=False)
    except BucketNotFoundError:
        return []
    out = []
    now = time.time()
    for value in (await contents(kv)).values():
        try:
            entry = codec.decode(value, limit=ENTRY_LIMIT)
        except codec.DecodeError:
            continue
        entry["lost"] = is_lost(entry, now)
        out.append(entry)
    return sorted(out, key=lambda e: str(e.get("pod")))
