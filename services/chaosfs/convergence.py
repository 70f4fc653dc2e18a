"""Converging a sidecar to its desired state in JetStream KV.

Two watches, one on the fleet's entries and one on this pod's, feed one view;
once both have delivered their current values (the ``None`` marker), every
change recomputes the rules this sidecar should hold and hands them to the
engine. After a reconnect the watches are started afresh, so whatever was missed
while away is read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError

from chaosbus import codec, desired
from chaosbus.rules import FaultRule
from chaosbus.subjects import decode_token

Apply = Callable[[list[FaultRule]], Awaitable[None]]


class DesiredState:
    def __init__(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        apply: Apply,
        log: Any,
        audit: Callable[..., None] | None = None,
    ) -> None:
        self.audit = audit
        self.namespace = namespace
        self.name = name
        self.labels = labels
        self.apply = apply
        self.log = log
        self.fleet: dict[str, desired.Entry] = {}
        self.pod: dict[str, desired.Entry] = {}
        self.synced = asyncio.Event()

    async def run(self, nc: Client, restart: asyncio.Event) -> None:
        """Watch until cancelled; start over whenever ``restart`` is set (a reconnect)."""
        delay = 0.2
        while True:
            restart.clear()
            try:
                await self._watch(nc, restart)
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except BucketNotFoundError:
                await asyncio.sleep(delay)  # nobody has set a rule yet: nothing to converge to
            except Exception as exc:
                self.log.warning("desired_state_watch_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _watch(self, nc: Client, restart: asyncio.Event) -> None:
        kv = await nc.jetstream().key_value(desired.BUCKET)
        prefix = desired.pod_prefix(self.namespace, self.name)
        fleet_watch = await kv.watch("fleet.>")
        pod_watch = await kv.watch(f"{prefix}.>")
        fleet: dict[str, desired.Entry] = {}
        pod: dict[str, desired.Entry] = {}
        initial = {"fleet": False, "pod": False}
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def pump(which: str, watcher: Any) -> None:
            async for entry in watcher:
                await queue.put((which, entry))

        tasks = [
            asyncio.create_task(pump("fleet", fleet_watch)),
            asyncio.create_task(pump("pod", pod_watch)),
        ]
        restarted = asyncio.create_task(restart.wait())
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, restarted}, return_when="FIRST_COMPLETED")
                if restarted in done:
                    getter.cancel()
                    return
                which, entry = getter.result()
                table = fleet if which == "fleet" else pod
                if entry is None:
                    initial[which] = True
                else:
                    self._update(table, entry)
                if all(initial.values()):
                    self.fleet, self.pod = fleet, pod
                    await self.converge()
                    self.synced.set()
        finally:
            restarted.cancel()
            for task in tasks:
                task.cancel()
            for watcher in (fleet_watch, pod_watch):
                with contextlib.suppress(Exception):
                    await watcher.stop()

    def _update(self, table: dict[str, desired.Entry], entry: Any) -> None:
        rule_id = entry.key.rsplit(".", 1)[-1]
        if entry.operation in ("DEL", "PURGE") or entry.value is None:
            table.pop(decode_token(rule_id), None)
            return
        try:
            table[decode_token(rule_id)] = desired.Entry.from_wire(codec.decode(entry.value))
        except (ValueError, codec.DecodeError) as exc:
            # Dropped, logged and audited; the rest of the desired state still applies.
            self.log.warning("desired_entry_unreadable", key=entry.key, error=str(exc))
            if self.audit is not None:
                self.audit("desired.rejected", key=entry.key, reason=str(exc))

    async def converge(self) -> None:
        rules = desired.compute(
            self.fleet, self.pod, self.namespace, self.name, self.labels, time.time(), self.log
        )
        await self.apply(rules)
