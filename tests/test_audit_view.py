"""``chaosctl audit`` shows where an event really came from (its subject, which NATS
permissions tie to a role) and never fails on a malformed event."""

from __future__ import annotations

import asyncio
import json

import nats

from chaosbus import codec
from chaosbus.audit import audit_subject, ensure_stream
from conftest import chaosctl


def _publish(url: str) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        await ensure_stream(nc, max_age=3600, max_bytes=1 << 20)
        js = nc.jetstream()
        forged = {"v": 1, "id": "f1", "time": 1.0, "kind": "rule.set", "service": "chaosctl"}
        forged["actor"] = "alice"
        await js.publish(audit_subject("chaosfs", "rule.set"), codec.encode(forged))
        await js.publish(audit_subject("chaosfs", "odd"), codec.encode({"kind": {"a": 1}}))
        await js.publish(audit_subject("chaosfs", "junk"), b"\xc1 not msgpack")
        await nc.close()

    asyncio.run(go())


def test_audit_shows_the_origin_and_renders_malformed_events(nats_server):
    _publish(nats_server.url)
    done = chaosctl(nats_server.url, "audit")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    forged, odd, junk = lines
    assert "[chaosfs]" in forged and "body claims service=chaosctl" in forged
    assert "[chaosfs]" in odd and "{'a': 1}" in odd
    assert "(malformed)" in junk and "[chaosfs]" in junk
    done = chaosctl(nats_server.url, "audit", "--json")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["origin"] for e in events] == ["chaosfs"] * 3
    assert events[0]["subject"] == audit_subject("chaosfs", "rule.set")
