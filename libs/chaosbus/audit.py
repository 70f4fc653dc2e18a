"""The audit trail: every change any service makes, as events in JetStream.

Services call ``AuditLog.record`` from anywhere on their asyncio loop; it only
encodes the event, appends it to a bounded queue and returns, so writing an audit
event never blocks file I/O or admission. A background task publishes the queue to
the ``AUDIT`` stream (file storage, limited by age and size), with the event id as
``Nats-Msg-Id`` so that a retried publish is stored once: whatever is queued goes
out at once, one publish after the other without waiting, and the stream's
acknowledgements are then awaited together. An event counts as written only once
the stream has acknowledged it; what is not acknowledged is sent again, in order.

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
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.nuid import NUID

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
# Publishes sent before their acknowledgements are awaited together, and how long
# those may take before the batch is sent again.
PUBLISH_BATCH = 256
PUBLISH_TIMEOUT = 2.0
# Looked up once: the host does not change under a running process.
_HOST = socket.gethostname()
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


def audit_subject(service: str, kind: str, scope: tuple[str, ...] = ()) -> str:
    """``chaosbus.audit.<service>[.<scope>...].<kind>``, each part one escaped token.

    A sidecar under the auth callout has its pod (namespace, name) as scope: chaos-auth
    lets each pod publish below its own only, so the subject, which the server vouches
    for, says which pod an event came from, whatever its body claims.
    """
    tokens = (service, *scope, kind)
    return ".".join((SUBJECT_ROOT, *(encode_token(t) for t in tokens)))


def make_event(
    service: str,
    kind: str,
    *,
    actor: str | None = None,
    pod: str | None = None,
    event_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION,
        "id": uuid.uuid4().hex if event_id is None else event_id,
        "time": time.time(),
        "service": service,
        "host": _HOST,
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


@dataclass(frozen=True, slots=True)
class _Queued:
    subject: str
    payload: bytes
    event_id: str
    kind: str


class AuditLog:
    def __init__(self, service: str, log: Any, scope: tuple[str, ...] = ()) -> None:
        self.service = service
        self.scope = scope
        self.log = log
        self.dropped = 0
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        # Event ids: unique (the stream drops a repeated Nats-Msg-Id), and cheaper than a
        # uuid4, which reads the kernel's random source each time. One generator per
        # log: it is not to be shared between threads.
        self._ids = NUID()
        self._subjects: dict[str, str] = {}  # by kind: escaping a name costs

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = make_event(self.service, kind, event_id=self._ids.next().decode(), **fields)
        payload = codec.encode(event)
        if len(payload) > EVENT_LIMIT:
            # The streams refuse anything bigger: cut here rather than lose the event.
            event = fit(event)
            payload = codec.encode(event)
        subject = self._subjects.get(kind)
        if subject is None:
            subject = audit_subject(self.service, kind, self.scope)
            if len(self._subjects) < 256:  # kinds are a handful of names
                self._subjects[kind] = subject
        try:
            self._queue.put_nowait(_Queued(subject, payload, event["id"], event["kind"]))
        except asyncio.QueueFull:
            self.dropped += 1  # never wait: the data plane and admission come first
        return event

    def start(self, nc: Client) -> None:
        self._task = asyncio.create_task(self._drain(nc))

    async def stop(self, timeout: float = 2.0) -> None:
        """Flush what is queued, the events being sent included (briefly), then stop."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)
        if self._task is not None:
            self._task.cancel()
            # Bounded: a cancelled publish inside nats-py can take its time to unwind.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 1.0)

    async def _drain(self, nc: Client) -> None:
        acks = _Acks()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < PUBLISH_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            delay = 0.2
            while True:
                error = await acks.send(nc, batch)
                if not error:
                    break
                # Kept, and the whole batch sent again in order (the stream keeps its
                # order; the ids make the copies of those already stored harmless).
                self.log.warning(
                    "audit_publish_failed", kind=batch[0].kind, waiting=len(batch), error=error
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            for _ in batch:
                # Counted done only once stored: stop() waits for these too.
                self._queue.task_done()


class _Acks:
    """The stream's acknowledgements of a batch of publishes, counted on one reply
    subject of the batch's own: one subscription for the life of the log, and for each
    event a publish and an acknowledgement, no future, timer or lock of its own."""

    def __init__(self) -> None:
        self._prefix = ""
        self._batches = 0
        self._reply = ""
        self._expected = 0
        self._acked = 0
        self._errors: list[str] = []
        self._all: asyncio.Future[None] | None = None

    async def send(self, nc: Client, batch: list[_Queued]) -> str:
        """Publish ``batch``; "" once the stream stored every event, else why not."""
        try:
            if not self._prefix:
                self._prefix = nc.new_inbox()
                await nc.subscribe(f"{self._prefix}.*", cb=self._on_ack)
            self._batches += 1
            self._reply = f"{self._prefix}.{self._batches}"
            self._expected, self._acked, self._errors = len(batch), 0, []
            self._all = asyncio.get_running_loop().create_future()
            for item in batch:
                await nc.publish(
                    item.subject,
                    item.payload,
                    reply=self._reply,
                    headers={"Nats-Msg-Id": item.event_id},
                )
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self._all
        except TimeoutError:
            return f"{self._acked} of {len(batch)} acknowledged by the stream in time"
        except Exception as exc:
            return str(exc) or type(exc).__name__
        finally:
            self._reply = ""  # late acknowledgements of this batch count for nothing
        return "; ".join(self._errors[:3])

    async def _on_ack(self, msg: Msg) -> None:
        if msg.subject != self._reply or self._all is None or self._all.done():
            return
        status = (msg.headers or {}).get("Status")
        if status:  # 503: no stream stores the subject
            self._errors.append(f"no stream answered (status {status})")
        elif b'"error"' in msg.data:
            self._errors.append(msg.data.decode(errors="replace")[:200])
        self._acked += 1
        if self._acked >= self._expected:
            self._all.set_result(None)
