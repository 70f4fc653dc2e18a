"""Opening JetStream KV buckets the same way everywhere."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue


async def open_bucket(
    nc: Client, name: str, *, create: bool = True, history: int = 1, **config: Any
) -> KeyValue:
    """Bind to a bucket, creating it (file storage) when allowed and missing; ``config``
    holds further KeyValueConfig settings for the creation (ttl, max_value_size, ...)."""
    js = nc.jetstream()
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        if not create:
            raise
        return await js.create_key_value(
            KeyValueConfig(bucket=name, history=history, storage=StorageType.FILE, **config)
        )


async def contents(bucket: KeyValue, timeout: float = 5.0) -> dict[str, bytes]:
    """Every key's current value (deleted keys left out); empty for an empty bucket.

    One ordered consumer delivering the last message of every key, read until
    the server says none is pending: one pass over the stream, where
    ``keys()`` then a ``get`` per key costs a round trip per key, and where
    nats-py's ``keys()`` now and then ends its listing before the first key.
    """
    js = bucket._js  # nats-py 2.16's KeyValue keeps its context, stream and prefix here
    info = await js.stream_info(bucket._stream)
    if not info.state.messages:
        return {}
    sub = await js.subscribe(
        f"{bucket._pre}>",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        stream=bucket._stream,
    )
    out: dict[str, bytes] = {}
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except TimeoutError:
                # Only if the stream emptied between the look and the read.
                return out
            key = msg.subject[len(bucket._pre) :]
            operation = (msg.headers or {}).get(KV_OP)
            if operation in (KV_DEL, KV_PURGE):
                out.pop(key, None)
            else:
                out[key] = msg.data
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()
