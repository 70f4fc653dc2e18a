"""``chaosctl audit``: replay and tail the audit stream."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from chaosbus import codec
from chaosbus.audit import STREAM, SUBJECT_ROOT
from chaosbus.subjects import decode_token, encode_token

from .client import Session


def stamp(subject: str) -> dict[str, str]:
    """Where an event really came from: the subject it was published on, which NATS
    permissions tie to the publishing role (``chaosbus.audit.<service>.<kind>``),
    unlike the ``service`` and ``actor`` its body claims."""
    parts = subject.split(".")
    origin = decode_token(parts[2]) if len(parts) > 3 else "?"
    return {"subject": subject, "origin": origin}


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
    """Events from the stream, oldest first; without ``follow``, stop when caught up."""
    js = s.nc.jetstream()
    by = encode_token(service) if service else "*"
    subject = f"{SUBJECT_ROOT}.{by}.{encode_token(kind) if kind else '*'}"
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
    info = await js.stream_info(STREAM)
    if not follow and info.state.messages == 0:
        return
    sub = await js.subscribe(subject, stream=STREAM, ordered_consumer=True, config=config)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=None if follow else 1.0)
            except nats.errors.TimeoutError:
                return  # nothing (more) to replay
            try:
                event = codec.decode(msg.data, limit=1 << 24)
            except codec.DecodeError as exc:
                # Shown, not hidden: an unreadable event is itself worth seeing.
                event = {"kind": "(malformed)", "malformed": str(exc)[:200]}
            event.update(stamp(msg.subject))
            event["seq"] = msg.metadata.sequence.stream
            if pod is None or event.get("pod") == pod:
                yield event
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()
