"""Opening JetStream KV buckets the same way everywhere, and the JetStream
settings every bucket and stream share.

Replicas: ``CHAOSBUS_JS_REPLICAS`` (1 to 5) is how many servers of a JetStream
cluster hold each bucket and stream. Unset, new ones get one replica and existing
ones are left as they are; set, new ones get that many and existing ones with
another count are changed to it, by whichever process is allowed to change them
(nats.conf grants that to the role that creates them; the others' attempts are
refused by the server, noticed within a round trip, and skipped). One variable,
read where buckets and streams are opened, so every service follows it without a
flag of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import structlog
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import APIError, BucketNotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

REPLICAS_ENV = "CHAOSBUS_JS_REPLICAS"
MAX_REPLICAS = 5  # JetStream's own limit for a stream's replicas
API_PREFIX = "$JS.API"
API_TIMEOUT = 5.0  # nats-py's default for a JetStream API request
_WHOLE = re.compile(r"[0-9]+")


# Size limits of each bucket (largest value, whole bucket): a client writing where it
# may (any sidecar writes the registry) can fill a bucket, but not the server's disk,
# and no one value can outgrow what its readers accept. Values: the sidecars read
# desired-state entries of up to 64 KiB; a registry entry holds its rules' counters.
BUCKET_LIMITS: dict[str, tuple[int, int]] = {
    "DESIRED": (64 * 1024, 256 * 1024 * 1024),
    "SIDECARS": (256 * 1024, 256 * 1024 * 1024),
    "RENDERINGS": (1024 * 1024, 256 * 1024 * 1024),
    "NAMESPACES": (64 * 1024, 64 * 1024 * 1024),
    "EXPERIMENTS": (1024 * 1024, 256 * 1024 * 1024),
    "EXPERIMENT_STATUS": (1024 * 1024, 256 * 1024 * 1024),
    "CONTROLLER_LEASE": (4 * 1024, 1024 * 1024),
}


class Refused(PermissionError):
    """The server refused a JetStream request under this connection's permissions."""


def configured_replicas(env: Mapping[str, str] | None = None) -> int | None:
    """``CHAOSBUS_JS_REPLICAS`` as a number, or None when it is unset or empty.

    A value that is not a whole number from 1 to 5 raises ValueError, so a typo
    stops a service at start instead of quietly leaving the data on one server.
    """
    text = (os.environ if env is None else env).get(REPLICAS_ENV, "").strip()
    if not text:
        return None
    if not _WHOLE.fullmatch(text) or not 1 <= int(text) <= MAX_REPLICAS:
        raise ValueError(
            f"{REPLICAS_ENV}={text!r}: the number of servers holding each JetStream bucket "
            f"and stream must be a whole number from 1 to {MAX_REPLICAS}"
        )
    return int(text)


async def api_request(
    nc: Client, subject: str, body: dict[str, Any] | None = None, timeout: float = API_TIMEOUT
) -> dict[str, Any]:
    """One JetStream API request (``subject`` after ``$JS.API.``); the response as a dict.

    nats-server does not answer a request that the user's permissions forbid: it
    drops it and sends the connection an error, so a plain request would wait its
    whole timeout. Here a ping follows the request, and as the server answers in
    order, the refusal (if any) has arrived by the time the ping's answer has:
    ``Refused`` is raised within two round trips. An error answer raises nats-py's
    APIError subclasses (NotFoundError, BadRequestError, ...).
    """
    full = f"{API_PREFIX}.{subject}"
    before = nc.last_error
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        payload = json.dumps(body).encode() if body is not None else b""
        await nc.publish(full, payload, reply=inbox)
        # nats-py writes a ping ahead of the publishes it still holds, so the first
        # flush may overtake the request; the second follows it on the wire.
        await nc.flush(max(1, round(timeout)))  # nats-py takes whole seconds here
        await nc.flush(max(1, round(timeout)))
        error = nc.last_error
        if error is not None and error is not before and _refuses(error, full):
            raise Refused(f"the NATS server refused {full} to this user: {error}")
        msg = await sub.next_msg(timeout)
    finally:
        with contextlib.suppress(Exception):  # a connection closing meanwhile ends it anyway
            await sub.unsubscribe()
    if msg.headers and msg.headers.get("Status") == "503" and not msg.data:
        raise NoRespondersError
    response: dict[str, Any] = json.loads(msg.data)
    if response.get("error"):
        APIError.from_error(response["error"])  # raises
    return response


def _refuses(error: Exception, subject: str) -> bool:
    # nats-py lowercases the server's error: 'permissions violation for publish to "..."'.
    text = str(error).lower()
    return "permissions violation" in text and f'"{subject.lower()}"' in text


async def converge_replicas(nc: Client, stream: str, replicas: int) -> bool:
    """Change ``stream``'s replicas to ``replicas`` if they differ and this user may.

    Only the replica count changes: the rest of the configuration is sent back
    exactly as the server gave it, including settings this nats-py does not know.
    Returns whether the stream now has that many; False when the server refused
    the change to this user (the role allowed to make it will).
    """
    return await converge_stream(nc, stream, {"num_replicas": replicas})


async def converge_stream(nc: Client, stream: str, wanted: Mapping[str, Any]) -> bool:
    """Change the settings in ``wanted`` (stream config names) where they differ, and
    nothing else; False when this user may not (the role allowed to will)."""
    try:
        config = (await api_request(nc, f"STREAM.INFO.{stream}"))["config"]
    except Refused:
        return False
    before = {k: config.get(k) for k in wanted}
    if all(
        before[k] == v or (k == "num_replicas" and (before[k] or 1) == v) for k, v in wanted.items()
    ):
        return True
    try:
        await api_request(nc, f"STREAM.UPDATE.{stream}", {**config, **wanted})
    except Refused:
        return False
    except APIError as exc:  # e.g. a cluster that cannot hold that many replicas now
        note("stream_change_refused", stream=stream, wanted=dict(wanted), error=str(exc))
        return False
    if "num_replicas" in wanted:
        note(
            "stream_replicas_changed",
            stream=stream,
            replicas_before=before["num_replicas"] or 1,
            replicas=wanted["num_replicas"],
        )
    note("stream_changed", stream=stream, before=before, after=dict(wanted))
    return True


def note(event: str, **fields: Any) -> None:
    """Log a change made to a stream, in a service's log."""
    # Services configure structlog (JSON lines on stderr); chaosctl does not, and
    # structlog's default would print on stdout among its output: stay silent there.
    if structlog.is_configured():
        structlog.get_logger("chaosbus.kv").info(event, **fields)


async def open_bucket(
    nc: Client, name: str, *, create: bool = True, history: int = 1, **config: Any
) -> KeyValue:
    """Bind to a bucket, creating it (file storage) when allowed and missing; ``config``
    holds further KeyValueConfig settings for the creation (ttl, max_value_size, ...).

    Its replicas follow ``CHAOSBUS_JS_REPLICAS`` (module docstring): a new bucket is
    made with that many, an existing one with another count is changed to it when
    this user may change it. ``replicas=`` in ``config`` overrides the variable.
    """
    replicas = config.pop("replicas", None) or configured_replicas()
    limits = BUCKET_LIMITS.get(name)
    if limits is not None:
        config.setdefault("max_value_size", limits[0])
        config.setdefault("max_bytes", limits[1])
    js = nc.jetstream()
    try:
        kv = await js.key_value(name)
    except BucketNotFoundError:
        if not create:
            raise
        return await js.create_key_value(
            KeyValueConfig(
                bucket=name,
                history=history,
                storage=StorageType.FILE,
                replicas=replicas or 1,
                **config,
            )
        )
    wanted: dict[str, Any] = {}
    if replicas is not None:
        wanted["num_replicas"] = replicas
    if limits is not None and create:  # the roles that may create a bucket keep its limits
        wanted.update(max_msg_size=config["max_value_size"], max_bytes=config["max_bytes"])
    if wanted:
        await converge_stream(nc, f"KV_{name}", wanted)
    return kv


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
