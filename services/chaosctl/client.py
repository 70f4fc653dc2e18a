"""chaosctl's side of the bus: commands to one sidecar or the fleet, the registry,
desired state. Errors come out as ``Unreachable`` or ``Refused`` with a sentence
an operator can act on."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import nats.errors
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError

from chaosbus import codec, desired, fleet, registry, wire
from chaosbus.bus import connect
from chaosbus.fleet import REPLY_LIMIT, FleetResult
from chaosbus.kv import contents, open_bucket
from chaosbus.protocol import Target
from chaosbus.subjects import decode_token, pod_command

__all__ = ["FleetResult", "Refused", "Session", "Unreachable"]


class Unreachable(RuntimeError):
    """Nobody answered: no NATS server, or no sidecar for the pod."""


class Refused(RuntimeError):
    """The sidecar answered with an error; nothing changed."""


class Session:
    def __init__(self, nc: Client, timeout: float) -> None:
        self.nc = nc
        self.timeout = timeout

    @classmethod
    async def open(cls, url: str, timeout: float, **auth: Any) -> Session:
        # Bounded here as a whole: with reconnects off, nats-py 2.16 still retries
        # a refused first connection forever (max_reconnect_attempts=0 is "no limit"),
        # but gives up on the first server that fails after accepting (a server dying
        # during the handshake): then try again, nats-py shuffling the URLs anew.
        deadline = time.monotonic() + max(timeout, 2.0)
        while True:
            try:
                nc = await asyncio.wait_for(
                    connect(
                        url,
                        name="chaosctl",
                        reconnect_forever=False,
                        connect_timeout=min(timeout, 2.0),
                        **auth,
                    ),
                    timeout=max(0.1, deadline - time.monotonic()),
                )
                return cls(nc, timeout)
            except TimeoutError:
                raise Unreachable(
                    f"cannot reach NATS at {url} within {max(timeout, 2.0):g}s"
                ) from None
            except Exception as exc:
                if "," not in url or time.monotonic() >= deadline:
                    raise Unreachable(
                        f"cannot reach NATS at {url}: {exc or type(exc).__name__}"
                    ) from None
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.nc.close()

    # --- one sidecar ------------------------------------------------------------------

    async def request_pod(self, namespace: str, name: str, command: dict[str, Any]) -> Any:
        """The reply to any command, as sent (one of ``chaosbus.wire.Reply``); the typed
        methods below say which shape each op gets back."""
        return await self._request(namespace, name, command)

    async def set_rules(self, namespace: str, name: str, command: dict[str, Any]) -> wire.SetReply:
        return cast(wire.SetReply, await self._request(namespace, name, command))

    async def recover(
        self, namespace: str, name: str, command: dict[str, Any]
    ) -> wire.RecoverReply:
        return cast(wire.RecoverReply, await self._request(namespace, name, command))

    async def status(self, namespace: str, name: str) -> wire.StatusReply:
        reply = await self._request(namespace, name, {"op": "status"})
        return cast(wire.StatusReply, reply)

    async def methods(self, namespace: str, name: str) -> wire.MethodsReply:
        reply = await self._request(namespace, name, {"op": "methods"})
        return cast(wire.MethodsReply, reply)

    async def lazy(self, namespace: str, name: str, command: dict[str, Any]) -> wire.LazyReply:
        return cast(wire.LazyReply, await self._request(namespace, name, command))

    async def _request(self, namespace: str, name: str, command: dict[str, Any]) -> dict[str, Any]:
        """The sidecar's reply if it said ``ok``; ``Refused`` with its reason if not."""
        pod = f"{namespace}/{name}"
        try:
            msg = await self.nc.request(
                pod_command(namespace, name), codec.encode(command), timeout=self.timeout
            )
        except nats.errors.NoRespondersError:
            raise Unreachable(f"no sidecar answers for {pod}") from None
        except nats.errors.TimeoutError:
            raise Unreachable(f"no sidecar answered for {pod} within {self.timeout:g}s") from None
        try:
            reply = codec.decode(msg.data, limit=REPLY_LIMIT)
        except codec.DecodeError as exc:
            raise Refused(f"{pod} sent an unreadable reply: {exc}") from None
        if not reply.get("ok"):
            refusal = cast(wire.ErrorReply, reply)
            raise Refused(f"{pod} refused: {refusal.get('error', 'no reason given')}")
        return reply

    # --- the fleet --------------------------------------------------------------------

    async def broadcast(
        self, command: dict[str, Any], expected: set[str], lost: set[str] | None = None
    ) -> FleetResult:
        """One publish to every sidecar; collect answers until all expected ones are in."""
        return await fleet.broadcast(self.nc, command, expected, timeout=self.timeout, lost=lost)

    async def sidecars(self) -> list[dict[str, Any]]:
        """Every registered sidecar, each marked lost or not."""
        return await registry.entries(self.nc)

    async def expected(self, target: dict[str, Any]) -> tuple[set[str], set[str]]:
        """Registered sidecars the target selects: (alive, recently lost).

        Alive ones are waited for. Lost ones (no heartbeat lately) are not, but
        they are reported as missing for a while, since the command cannot have
        reached them; entries lost long ago are pods that are simply gone.
        """
        selector = Target(target)
        alive: set[str] = set()
        lost: set[str] = set()
        now = time.time()
        for e in await self.sidecars():
            if not selector.matches(
                e.get("namespace", ""), e.get("name", ""), e.get("labels") or {}
            ):
                continue
            if not e["lost"]:
                alive.add(e["pod"])
            elif not registry.forgotten(e, now):
                lost.add(e["pod"])
        return alive, lost

    # --- desired state ----------------------------------------------------------------

    async def desired_bucket(self) -> Any:
        return await open_bucket(self.nc, desired.BUCKET)

    async def desired_entries(self) -> tuple[dict[str, desired.Entry], dict[str, dict]]:
        """(fleet entries by rule id, {pod prefix: {rule id: entry}})."""
        try:
            kv = await open_bucket(self.nc, desired.BUCKET, create=False)
        except BucketNotFoundError:
            return {}, {}
        fleet: dict[str, desired.Entry] = {}
        pods: dict[str, dict[str, desired.Entry]] = {}
        for key, value in (await contents(kv)).items():
            try:
                entry = desired.Entry.from_wire(codec.decode(value, limit=REPLY_LIMIT))
            except ValueError:
                continue
            prefix, _, token = key.rpartition(".")
            if prefix == "fleet":
                fleet[decode_token(token)] = entry
            else:
                pods.setdefault(prefix, {})[decode_token(token)] = entry
        return fleet, pods
