"""``chaosctl audit``: replay and tail the audit stream."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from chaosbus import codec
from chaosbus.audit import STREAM, SUBJECT_ROOT
from chaosbus.subjects import encode_token

from .client import Session


async def events(
    s: Session,
    *,
    since: float | None,
    since_seq: int | None,
    kind: str | None,
    pod: str | None,
    follow: bool,
) -> AsyncIterator[dict[str, Any]]:
    """Events from the stream, oldest first; without ``follow``, stop when caught up."""
    js = s.nc.jetstream()
    subject = f"{SUBJECT_ROOT}.*.{encode_token(kind)}" if kind else f"{SUBJECT_ROOT}.>"
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if since_seq is not None:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=since_seq
        )
    elif since is not None:
        start = datetime.datetime.fromtimestamp(since, datetime.UTC)
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=start.isoformat().replace("+00:00", "Z"),
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
            except codec.DecodeError:
                continue
            event["seq"] = msg.metadata.sequence.stream
            if pod is None or event.get("pod") == pod:
                yield event
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()
