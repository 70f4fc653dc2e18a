"""``chaosctl audit``: replay and tail the audit stream."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from chaosbus import codec
from chaosbus.audit import SIDECAR_SERVICE, STREAM, STREAMS, SUBJECT_ROOT, stream_of
from chaosbus.subjects import decode_token, encode_token

from .client import Session


def stamp(subject: str) -> dict[str, str]:
    """Where an event really came from: the subject it was published on, which NATS
    permissions tie to the publishing role (``chaosbus.audit.<service>.<kind>``),
    unlike the ``service`` and ``actor`` its body claims."""
    parts = subject.split(".")
    origin = decode_token(parts[2]) if len(parts) > 3 else "?"
    stamped = {"subject": subject, "origin": origin}
    if len(parts) == 6:
        # A sidecar with its own identity (the auth callout) publishes only below its
        # pod, chaosbus.audit.chaosfs.<namespace>.<pod>.<kind>: the pod is vouched for too.
        stamped["origin_pod"] = f"{decode_token(parts[3])}/{decode_token(parts[4])}"
    return stamped


class _Cursor:
    """One audit stream's ordered consumer, read one message ahead."""

    def __init__(self, order: int, sub: Any, caught_up: bool) -> None:
        self.order, self.sub = order, sub
        self.head: Any = None
        self.caught_up = caught_up

    async def advance(self) -> None:
        """The next stored message as ``head``, or ``caught_up`` when there is none."""
        self.head = None
        if self.caught_up:
            return
        try:
            self.head = await self.sub.next_msg(timeout=1.0)
        except nats.errors.TimeoutError:
            self.caught_up = True  # nothing (more) to replay

    def key(self) -> tuple[datetime.datetime, int]:
        # The server's time of storing, which no publisher chooses.
        return (self.head.metadata.timestamp, self.order)


def _event(msg: Any) -> dict[str, Any]:
    try:
        event = codec.decode(msg.data, limit=1 << 24)
    except codec.DecodeError as exc:
        # Shown, not hidden: an unreadable event is itself worth seeing.
        event = {"kind": "(malformed)", "malformed": str(exc)[:200]}
    event.update(stamp(msg.subject))
    event["seq"] = msg.metadata.sequence.stream
    event["stream"] = msg.metadata.stream
    return event


async def events(
    s: Session,
    *,
    since: float | None,
    since_seq: int | None,
    kind: str | None,
    pod: str | None,
    follow: bool,
    service: str | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Events from the audit streams, oldest first; without ``follow``, stop when
    caught up.

    The services' events (``AUDIT``) and the sidecars' (``AUDIT_SIDECARS``) are
    merged by the time the server stored them; ``since_seq`` applies to each
    stream's own sequence, and ``stream`` says which one an event is from. An
    installation whose ``AUDIT`` still holds everything (no ``AUDIT_SIDECARS``)
    reads as before.
    """
    js = s.nc.jetstream()
    by = encode_token(service) if service else "*"
    subject = f"{SUBJECT_ROOT}.{by}.{encode_token(kind) if kind else '>'}"
    subjects = [subject]
    if kind and service in (None, SIDECAR_SERVICE):
        # Sidecars with their own identity publish below their pod (see stamp).
        subjects.append(f"{SUBJECT_ROOT}.{SIDECAR_SERVICE}.*.*.{encode_token(kind)}")
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if since_seq is not None:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=since_seq
        )
    elif since is not None:
        start = datetime.datetime.fromtimestamp(since, datetime.UTC)
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            # nats-py sends this field as given; its type hint says datetime.
            opt_start_time=start.isoformat().replace("+00:00", "Z"),  # type: ignore[arg-type]
        )
    # A service's events are in its own stream, chaosfs's also in an unsplit AUDIT.
    streams = STREAMS if service in (None, SIDECAR_SERVICE) else (stream_of(service),)
    cursors: list[_Cursor] = []
    try:
        for order, stream in enumerate(streams):
            try:
                info = await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                if stream == STREAM:
                    raise
                continue  # not split (yet): AUDIT holds the sidecars' events too
            empty = info.state.messages == 0
            if empty and not follow:
                continue
            for wanted in subjects:
                if not any(_overlap(wanted, own) for own in info.config.subjects or ()):
                    continue
                # A copy each: nats-py fills in the config it is given (deliver subject...).
                sub = await js.subscribe(
                    wanted, stream=stream, ordered_consumer=True, config=copy.deepcopy(config)
                )
                cursors.append(_Cursor(order, sub, caught_up=empty))
        # The stored events, merged by time.
        for cursor in cursors:
            await cursor.advance()
        while heads := [c for c in cursors if c.head is not None]:
            cursor = min(heads, key=_Cursor.key)
            msg = cursor.head
            event = _event(msg)
            if pod is None or event.get("pod") == pod:
                yield event
            if msg.metadata.num_pending == 0:
                cursor.head, cursor.caught_up = None, True
            else:
                await cursor.advance()
        if not follow or not cursors:
            return
        # Then live, as they come, from either stream.
        arrived: asyncio.Queue[Any] = asyncio.Queue()

        async def pump(sub: Any) -> None:
            while True:
                await arrived.put(await sub.next_msg(timeout=None))

        pumps = [asyncio.create_task(pump(c.sub)) for c in cursors]
        try:
            while True:
                msg = await arrived.get()
                event = _event(msg)
                if pod is None or event.get("pod") == pod:
                    yield event
        finally:
            for task in pumps:
                task.cancel()
    finally:
        for cursor in cursors:
            with contextlib.suppress(Exception):
                await cursor.sub.unsubscribe()


def _overlap(filter_subject: str, stream_subject: str) -> bool:
    """Whether some subject matches both (a filter outside a stream's subjects is
    an error to the server)."""
    a, b = filter_subject.split("."), stream_subject.split(".")
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x == ">" or y == ">":
            return True
        if x != y and "*" not in (x, y):
            return False
        if i == len(a) - 1 or i == len(b) - 1:
            return len(a) == len(b)
    return False
