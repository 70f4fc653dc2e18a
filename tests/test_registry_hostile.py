"""One bad registry entry (any sidecar's credentials can write one) must not block the
operator: listing, broadcasting and the fleet-wide emergency recover keep working."""

from __future__ import annotations

import asyncio
import json

import nats

from chaosbus import codec, registry
from conftest import chaosctl


def _poison(url: str) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        kv = await nc.jetstream().key_value(registry.BUCKET)
        await kv.put(
            "evil.entry", codec.encode({"pod": "evil/entry", "heartbeat_interval": "soon"})
        )
        await kv.put("evil.nan", codec.encode({"pod": "evil/nan", "time": float("nan")}))
        await nc.close()

    asyncio.run(go())


def test_poisoned_registry_entries_leave_sidecars_broadcast_and_recover_working(sidecar):
    url = sidecar.nats_url
    _poison(url)
    done = chaosctl(url, "sidecars")
    assert done.returncode == 0, done.stderr
    assert sidecar.pod in done.stdout and "evil/entry" in done.stdout
    done = chaosctl(
        url, "--json", "fault", "broadcast", "--action", "errno", "--errno", "EIO", "--id", "b1"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["acked"] == [sidecar.pod]
    done = chaosctl(url, "--json", "fault", "recover", "--fleet", "--all")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["acked"] == [sidecar.pod]
