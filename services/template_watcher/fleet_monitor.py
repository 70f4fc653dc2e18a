"""Noticing lost sidecars, for the audit trail.

A sidecar says when it is ready and when it goes, but a killed one, or one on a
node that vanished, says nothing: somebody has to notice that its heartbeats
stopped. The template-watcher is the control plane's one always-running,
single-replica service, so it keeps that watch: it mirrors the registry bucket
and audits ``sidecar.lost`` once per silence.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nats.aio.client import Client

from chaosbus import codec, registry
from chaosbus.audit import AuditLog
from chaosbus.kv import open_bucket

CHECK_INTERVAL = 1.0


async def monitor(nc: Client, audit: AuditLog, log: Any) -> None:
    entries: dict[str, dict[str, Any]] = {}
    reported: set[str] = set()
    while True:
        try:
            kv = await open_bucket(nc, registry.BUCKET)
            watcher = await kv.watchall()
            checker = asyncio.create_task(_check(entries, reported, audit, log))
            try:
                async for entry in watcher:
                    if entry is None:
                        continue  # end of the initial values
                    if entry.operation in ("DEL", "PURGE") or entry.value is None:
                        entries.pop(entry.key, None)
                        continue
                    try:
                        entries[entry.key] = codec.decode(entry.value, limit=1 << 20)
                    except codec.DecodeError:
                        continue
            finally:
                checker.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("fleet_monitor_failed", error=str(exc))
        await asyncio.sleep(CHECK_INTERVAL)


async def _check(
    entries: dict[str, dict[str, Any]], reported: set[str], audit: AuditLog, log: Any
) -> None:
    while True:
        await asyncio.sleep(CHECK_INTERVAL)
        now = time.time()
        for key, entry in list(entries.items()):
            pod = str(entry.get("pod"))
            if registry.is_lost(entry, now):
                if key not in reported:
                    reported.add(key)
                    silent = round(now - registry.last_seen(entry), 1)
                    log.warning("sidecar_lost", pod=pod, silent_for=silent)
                    audit.record(
                        "sidecar.lost", pod=pod, last_heartbeat=entry.get("time"), silent_for=silent
                    )
            else:
                reported.discard(key)
        reported.intersection_update(entries)
