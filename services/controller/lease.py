"""Leader election: one lease in JetStream KV, so two replicas never both run experiments.

The lease is the single key ``leader`` of the ``CONTROLLER_LEASE`` bucket, whose
TTL is the lease's length. The leader renews it with a compare-and-set on the
revision it holds, about three times per TTL; the server expires the key when the
leader stops (crash, partition), and a standby's create then succeeds. No replica's
clock decides anything. A leader whose renewal fails (someone else holds the key
now, or the bus was away longer than the TTL) stops acting at once by raising
``LeaseLost`` out of ``hold``; its in-flight status writes are compare-and-set too,
so a deposed leader cannot overwrite its successor's work.

A replica restarted under the same identity (the pod name in Kubernetes, where
``kill -9`` of the container keeps it) takes its own lease back at once instead of
waiting for the TTL, so a crash-looping controller resumes immediately.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from chaosbus import codec

KEY = "leader"


class LeaseLost(RuntimeError):
    """Another replica leads now; stop acting."""


class Lease:
    def __init__(self, kv: KeyValue, holder: str, ttl: float, log: Any) -> None:
        self.kv = kv
        self.holder = holder
        self.ttl = ttl
        self.log = log
        self.revision = 0

    def _value(self) -> bytes:
        return codec.encode({"holder": self.holder, "ttl": self.ttl})

    async def _current(self) -> tuple[str | None, int]:
        try:
            entry = await self.kv.get(KEY)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None:
            return None, entry.revision or 0
        try:
            holder = codec.decode(entry.value).get("holder")
        except codec.DecodeError:
            holder = None
        return (holder if isinstance(holder, str) else None), entry.revision or 0

    async def acquire(self) -> None:
        """Wait until this replica holds the lease."""
        announced = False
        while True:
            holder, revision = await self._current()
            try:
                if holder is None:
                    self.revision = await self.kv.create(KEY, self._value())
                    return
                if holder == self.holder:  # our own lease, from before a restart
                    self.revision = await self.kv.update(KEY, self._value(), last=revision)
                    return
            except Exception as exc:  # raced with another replica: look again
                self.log.debug("lease_race", error=str(exc))
            if not announced:
                self.log.info("lease_standby", leader=holder)
                announced = True
            await asyncio.sleep(self.ttl / 4)

    async def hold(self) -> None:
        """Renew until the lease is lost (then raise LeaseLost); never returns otherwise."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                self.revision = await asyncio.wait_for(
                    self.kv.update(KEY, self._value(), last=self.revision), self.ttl / 3
                )
            except Exception as exc:
                raise LeaseLost(f"lease renewal failed: {exc or type(exc).__name__}") from None

    async def release(self) -> None:
        """On a clean stop, so a standby takes over without waiting for the TTL."""
        try:
            holder, revision = await self._current()
            if holder == self.holder and revision == self.revision:
                await self.kv.delete(KEY, last=revision)
        except Exception as exc:
            self.log.warning("lease_release_failed", error=str(exc))
