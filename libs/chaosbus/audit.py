"""The audit trail: every change any service makes, as events in JetStream.

Services call ``AuditLog.record`` from anywhere on their asyncio loop; it only
appends to a bounded queue and returns, so writing an audit event never blocks
file I/O or admission. A background task publishes the queue to the ``AUDIT``
stream (file storage, limited by age and size), with the event id as
``Nats-Msg-Id`` so that a retried publish is stored once.
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
SCHEMA_VERSION = 1
QUEUE_LIMIT = 10_000
# JetStream's "stream name already in use with a different configuration".
STREAM_EXISTS_OTHERWISE = 10058
# The settings ensure_stream owns; all others stay as the server has them.
MANAGED = (
    "subjects",
    "storage",
    "max_age",
    "max_bytes",
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


async def ensure_stream(nc: Client, *, max_age: float, max_bytes: int) -> None:
    """Create the audit stream, or bring its limits (and its replicas, when
    ``CHAOSBUS_JS_REPLICAS`` is set) to the configured ones.

    Creating needs the right to create it (a role without it gets ``kv.Refused``
    at once); changing a stream that exists is left to the roles allowed to
    (the template-watcher in nats.conf): for the others it is skipped, as the
    stream works as it is. Unset, ``CHAOSBUS_JS_REPLICAS`` leaves an existing
    stream's replicas alone.
    """
    replicas = configured_replicas()
    wanted = StreamConfig(
        name=STREAM,
        subjects=[f"{SUBJECT_ROOT}.>"],
        storage=StorageType.FILE,
        max_age=max_age,
        max_bytes=max_bytes,
        discard=DiscardPolicy.OLD,
        duplicate_window=120.0,
        num_replicas=replicas or 1,
    ).as_dict()
    try:
        # Creating a stream that exists with the very same settings succeeds and
        # changes nothing: the usual case costs one request.
        await api_request(nc, f"STREAM.CREATE.{STREAM}", wanted)
        return
    except BadRequestError as exc:
        if exc.err_code != STREAM_EXISTS_OTHERWISE:
            raise
    try:
        current = (await api_request(nc, f"STREAM.INFO.{STREAM}"))["config"]
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
        await api_request(nc, f"STREAM.UPDATE.{STREAM}", merged)
    except Refused:
        return
    changed = sorted(k for k in MANAGED if merged.get(k) != current.get(k))
    note("stream_updated", stream=STREAM, changed=changed)


class AuditLog:
    def __init__(self, service: str, log: Any) -> None:
        self.service = service
        self.log = log
        self.dropped = 0
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = make_event(self.service, kind, **fields)
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
