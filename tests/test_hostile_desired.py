"""Hostile values stored in desired state never stop convergence: a wrong-typed rule
(here an attr rule whose kind is a list) is skipped, and a canary rule written after
it still reaches the sidecar at once, under the fleet's keys and under the pod's."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from chaosbus import codec, desired
from chaosbus.kv import open_bucket
from conftest import wait_for

POISON = {"id": "poison", "action": "attr", "attr": {"kind": ["file"]}, "methods": ["lookup"]}


def rule_ids(sc) -> set[str]:
    return {r["id"] for r in sc.request({"op": "status"})["rules"]}


@pytest.mark.parametrize("scope", ["fleet", "pod"])
def test_a_wrong_typed_entry_is_skipped_and_a_canary_still_converges(sidecar, scope):
    ns, name = sidecar.pod.split("/")

    def key(rule_id: str) -> str:
        if scope == "fleet":
            return desired.fleet_key(rule_id)
        return desired.pod_key(ns, name, rule_id)

    async def put(rule: dict) -> None:
        nc = await nats.connect(sidecar.nats_url)
        kv = await open_bucket(nc, desired.BUCKET)
        await kv.put(key(rule["id"]), codec.encode(desired.Entry.of(rule, "tester").to_wire()))
        await nc.close()

    asyncio.run(put(POISON))
    started = time.monotonic()
    asyncio.run(put({"id": "canary", "action": "errno", "errno": "EIO", "path": "canary"}))
    wait_for(lambda: "canary" in rule_ids(sidecar), timeout=5, what="the canary rule")
    assert time.monotonic() - started < 1.0
    assert "poison" not in rule_ids(sidecar)
    assert sidecar.proc is not None and sidecar.proc.poll() is None


def test_buckets_refuse_values_larger_than_their_readers_accept(sidecar):
    """Any sidecar may write the registry: one value can no longer be megabytes."""
    from chaosbus import registry

    async def oversized() -> str:
        nc = await nats.connect(sidecar.nats_url)
        try:
            kv = await open_bucket(nc, registry.BUCKET)
            try:
                await kv.put("evil.flood", b"x" * (1024 * 1024))
            except Exception as exc:
                return type(exc).__name__ + str(exc)
            return "stored"
        finally:
            await nc.close()

    outcome = asyncio.run(oversized())
    assert outcome != "stored" and "maximum" in outcome.lower(), outcome
