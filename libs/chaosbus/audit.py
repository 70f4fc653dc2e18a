"""The audit trail: every change any service makes, as events in JetStream.

Services call ``AuditLog.record`` from anywhere on their asyncio loop; it only
appends to a bounded queue and returns, so writing an audit event never blocks
file I/O or admission. A background task publishes the queue to the ``AUDIT``
stream (file storage, limited by age and size), with the event id as
``Nats-Msg-Id`` so that a retried publish is stored once.

The sidecars' events (``chaosbus.audit.chaosfs.>``) go to a stream of their
own, ``AUDIT_SIDECARS``, with its own byte budget: sidecar credentials are on
every node, and a flood through them evicts only sidecar events, never the
operator's, the controller's or the template-watcher's. Both streams refuse
messages above ``MAX_MSG_SIZE``; ``AuditLog.record`` truncates its own bigger
events (``truncated: true``) rather than lose them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from typing import Any

from nats.aio.client import Client
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from . import codec
from .kv import Refused, api_request, configured_replicas, note
from .subjects import PREFIX, encode_token

STREAM = "AUDIT"
SUBJECT_ROOT = f"{PREFIX}.audit"
# The sidecars' audit events, in a stream of their own (see above).
SIDECAR_SERVICE = "chaosfs"
SIDECAR_STREAM = "AUDIT_SIDECARS"
STREAMS = (STREAM, SIDECAR_STREAM)
# The services whose events AUDIT stores: a stream's subjects cannot say "all but
# chaosfs", and each role may publish under its own service name only (nats.conf).
SERVICES = ("chaosctl", "template-watcher", "injector", "controller")
# Both streams refuse a bigger message (headers included): 1,100 events of
# 1000 KiB no longer push a GiB of history out in seconds.
MAX_MSG_SIZE = 64 * 1024
# What record() lets an event's payload grow to: room left for the headers.
EVENT_LIMIT = MAX_MSG_SIZE - 2 * 1024
# Kept whole when an event is truncated (strings cut to this many characters).
BASE_FIELDS = ("v", "id", "time", "service", "host", "kind", "actor", "pod")
BASE_TEXT_LIMIT = 1024
SCHEMA_VERSION = 1
QUEUE_LIMIT = 10_000
# JetStream's "stream name already in use with a different configuration".
STREAM_EXISTS_OTHERWISE = 10058
# JetStream's "subjects overlap with an existing stream".
SUBJECTS_OVERLAP = 10065
# The settings ensure_stream owns; all others stay as the server has them.
MANAGED = (
    "subjects",
    "storage",
    "max_age",
    "max_bytes",
    "max_msg_size",
    "discard",
    "duplicate_window",
    "num_replicas",
)


def audit_subject(service: str, kind: str) -> str:
    return f"{SUBJECT_ROOT}.{encode_token(service)}.{encode_token(kind)}"


def make_event(
    service: str, kind: str, *, actor: str | None = None, pod: str | None = None, **fields: Any
) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION,
        "id": uuid.uuid4().hex,
        "time": time.time(),
        "service": service,
        "host": socket.gethostname(),
        "kind": kind,
        "actor": actor or service,
        "pod": pod,
        **fields,
    }


def stream_subjects(stream: str) -> list[str]:
    if stream == SIDECAR_STREAM:
        return [f"{SUBJECT_ROOT}.{encode_token(SIDECAR_SERVICE)}.>"]
    return [f"{SUBJECT_ROOT}.{encode_token(service)}.>" for service in SERVICES]


def stream_of(service: str) -> str:
    """The stream that stores ``service``'s events."""
    return SIDECAR_STREAM if service == SIDECAR_SERVICE else STREAM


async def ensure_stream(
    nc: Client, *, max_age: float, max_bytes: int, sidecar_max_bytes: int | None = None
) -> None:
    """Create the two audit streams, or bring their limits (and their replicas,
    when ``CHAOSBUS_JS_REPLICAS`` is set) to the configured ones.

    ``AUDIT`` holds the services' events, ``AUDIT_SIDECARS`` the sidecars', each
    with ``max_age``; ``AUDIT_SIDECARS`` keeps ``sidecar_max_bytes`` (by default
    ``max_bytes`` too). Creating needs the right to create them (a role without it
    gets ``kv.Refused`` at once); changing a stream that exists is left to the
    roles allowed to (the template-watcher in nats.conf): for the others it is
    skipped, as the stream works as it is. Unset, ``CHAOSBUS_JS_REPLICAS`` leaves
    an existing stream's replicas alone.

    An ``AUDIT`` made before the split (subjects ``chaosbus.audit.>``) is narrowed
    first, by a role allowed to; until then it keeps the sidecars' events too and
    ``AUDIT_SIDECARS`` cannot be created (its subjects would overlap): that is
    noted and skipped.
    """
    await _ensure(nc, STREAM, max_age=max_age, max_bytes=max_bytes)
    try:
        await _ensure(
            nc,
            SIDECAR_STREAM,
            max_age=max_age,
            max_bytes=max_bytes if sidecar_max_bytes is None else sidecar_max_bytes,
        )
    except BadRequestError as exc:
        if exc.err_code != SUBJECTS_OVERLAP:
            raise
        note("stream_not_split", stream=SIDECAR_STREAM, reason=exc.description)


async def _ensure(nc: Client, stream: str, *, max_age: float, max_bytes: int) -> None:
    replicas = configured_replicas()
    wanted = StreamConfig(
        name=stream,
        subjects=stream_subjects(stream),
        storage=StorageType.FILE,
        max_age=max_age,
        max_bytes=max_bytes,
        max_msg_size=MAX_MSG_SIZE,
        discard=DiscardPolicy.OLD,
        duplicate_window=120.0,
        num_replicas=replicas or 1,
    ).as_dict()
    try:
        # Creating a stream that exists with the very same settings succeeds and
        # changes nothing: the usual case costs one request.
        await api_request(nc, f"STREAM.CREATE.{stream}", wanted)
        return
    except BadRequestError as exc:
        if exc.err_code != STREAM_EXISTS_OTHERWISE:
            raise
    try:
        current = (await api_request(nc, f"STREAM.INFO.{stream}"))["config"]
    except Refused:
        return
    if replicas is None:
        wanted["num_replicas"] = current.get("num_replicas") or 1
    # Only what this function sets is compared and changed; the server's other
    # settings (and any this nats-py does not know) go back as they came.
    merged = {**current, **{k: wanted[k] for k in MANAGED if k in wanted}}
    if merged == current:
        return
    try:
        await api_request(nc, f"STREAM.UPDATE.{stream}", merged)
    except Refused:
        return
    changed = sorted(k for k in MANAGED if merged.get(k) != current.get(k))
    note("stream_updated", stream=stream, changed=changed)


def fit(event: dict[str, Any], limit: int = EVENT_LIMIT) -> dict[str, Any]:
    """``event`` if it encodes within ``limit`` bytes, else a copy cut to fit and
    marked ``truncated: true`` (with ``truncated_bytes``, the size it had): the
    biggest fields go first, a list keeping its first items (``<field>_count``
    says how many it had), any other value replaced by None; the base fields
    (id, time, service, kind, actor, pod...) stay, long strings cut."""
    size = len(codec.encode(event))
    if size <= limit:
        return event
    out = {**event, "truncated": True, "truncated_bytes": size}
    others = [k for k in event if k not in BASE_FIELDS]
    others.sort(key=lambda k: len(codec.encode({k: event[k]})), reverse=True)
    for name in others:
        if len(codec.encode(out)) <= limit:
            return out
        value = event[name]
        if isinstance(value, list | tuple):
            out[f"{name}_count"] = len(value)
            out[name] = []
            lo, hi = 0, len(value)  # the most items that fit, by bisection
            while lo < hi:
                mid = (lo + hi + 1) // 2
                out[name] = list(value[:mid])
                if len(codec.encode(out)) <= limit:
                    lo = mid
                else:
                    hi = mid - 1
            out[name] = list(value[:lo])
        else:
            out[name] = None
    for name in BASE_FIELDS:
        if len(codec.encode(out)) <= limit:
            break
        value = out.get(name)
        if isinstance(value, str) and len(value) > BASE_TEXT_LIMIT:
            out[name] = value[:BASE_TEXT_LIMIT]
    if len(codec.encode(out)) > limit:  # base fields of another type: keep only the marker
        out = {k: out.get(k) for k in ("v", "id", "time", "service", "kind")}
        out.update(truncated=True, truncated_bytes=size)
    return out


class AuditLog:
    def __init__(self, service: str, log: Any) -> None:
        self.service = service
        self.log = log
        self.dropped = 0
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        # The streams refuse anything bigger: cut here rather than lose the event.
        event = fit(make_event(self.service, kind, **fields))
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1  # never wait: the data plane and admission come first
        return event

    def start(self, nc: Client) -> None:
        self._task = asyncio.create_task(self._drain(nc))

    async def stop(self, timeout: float = 2.0) -> None:
        """Flush what is queued, the event being sent included (briefly), then stop."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)
        if self._task is not None:
            self._task.cancel()
            # Bounded: a cancelled publish inside nats-py can take its time to unwind.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 1.0)

    async def _drain(self, nc: Client) -> None:
        js = nc.jetstream()
        while True:
            event = await self._queue.get()
            subject = audit_subject(self.service, event["kind"])
            payload = codec.encode(event)
            delay = 0.2
            while True:
                try:
                    await js.publish(
                        subject, payload, headers={"Nats-Msg-Id": event["id"]}, timeout=2
                    )
                    # Counted done only once stored: stop() waits for this one too.
                    self._queue.task_done()
                    break
                except Exception as exc:
                    # Keep the event and retry; the id makes a duplicate harmless.
                    self.log.warning("audit_publish_failed", kind=event["kind"], error=str(exc))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
