"""Opening JetStream KV buckets the same way everywhere."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue


async def open_bucket(nc: Client, name: str, *, create: bool = True, history: int = 1) -> KeyValue:
    """Bind to a bucket, creating it (file storage) when allowed and missing."""
    js = nc.jetstream()
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        if not create:
            raise
        return await js.create_key_value(
            KeyValueConfig(bucket=name, history=history, storage=StorageType.FILE)
        )


async def contents(bucket: KeyValue) -> dict[str, bytes]:
    """Every key's current value (deleted keys left out); empty for an empty bucket."""
    try:
        keys = await bucket.keys()
    except NoKeysError:
        return {}
    out: dict[str, bytes] = {}
    for key in keys:
        try:
            entry = await bucket.get(key)
        except KeyNotFoundError:
            continue  # deleted between the listing and the read
        if entry.value is not None:
            out[key] = entry.value
    return out
