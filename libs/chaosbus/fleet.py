"""One publish to many sidecars, and every answer collected.

Every sidecar subscribes to the fleet subject without a queue group, so one
publish reaches all of them; the command's ``target`` says which of them act (and
answer), the others stay silent. The caller names the pods it expects from the
registry and stops waiting when all of them answered or the time is up, so a
lost sidecar costs one timeout, never a hang.

Used by chaosctl (``fault broadcast``) and by chaos-controller, which always
targets an explicit list of pods (``target.names``) so that exactly the pods an
experiment selected act. A list too long for one message is split into several
commands answered on the same inbox.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import nats.errors
from nats.aio.client import Client

from . import codec, wire
from .subjects import FLEET_COMMAND

REPLY_LIMIT = 16 * 1024 * 1024
# Sidecars refuse commands above codec.MAX_COMMAND_BYTES; stay well below it.
BATCH_BYTES = codec.MAX_COMMAND_BYTES - 8 * 1024


@dataclass
class FleetResult:
    expected: set[str] = field(default_factory=set)  # alive: waited for
    lost: set[str] = field(default_factory=set)  # recently lost: not waited for, still missing
    # Each acknowledging sidecar's reply; which shape depends on the command's op.
    acked: dict[str, wire.Reply] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        return sorted((self.expected | self.lost) - set(self.acked) - set(self.errors))

    @property
    def total(self) -> int:
        return len(self.expected | self.lost | set(self.acked) | set(self.errors))


def split_by_names(command: dict[str, Any]) -> list[dict[str, Any]]:
    """The command itself, or copies each naming a share of the pods in ``target.names``
    or ``target.name_hashes`` small enough for a sidecar to accept."""
    target = command.get("target") or {}
    field = "names" if target.get("names") else "name_hashes" if target.get("name_hashes") else None
    if field is None or len(codec.encode(command)) <= BATCH_BYTES:
        return [command]
    pods = target[field]
    step = 8 if field == "name_hashes" else 1  # whole digests only
    half = len(pods) // step // 2 * step
    out = []
    for part in (pods[:half], pods[half:]):
        out.extend(split_by_names({**command, "target": {**target, field: part}}))
    return out


async def broadcast(
    nc: Client,
    command: dict[str, Any],
    expected: set[str],
    *,
    timeout: float,
    lost: set[str] | None = None,
) -> FleetResult:
    """Publish ``command`` on the fleet subject; collect answers until every expected
    pod answered or ``timeout`` passed. With nobody expected, listen briefly, since
    unregistered sidecars may answer."""
    result = FleetResult(expected=set(expected), lost=set(lost or ()))
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.flush()
        for part in split_by_names(command):
            await nc.publish(FLEET_COMMAND, codec.encode(part), reply=inbox)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if expected and not (result.expected - set(result.acked) - set(result.errors)):
                break
            try:
                msg = await sub.next_msg(timeout=min(left, 0.5 if not expected else left))
            except nats.errors.TimeoutError:
                if not expected:
                    break
                continue
            try:
                reply = codec.decode(msg.data, limit=REPLY_LIMIT)
            except codec.DecodeError:
                continue
            pod = str(reply.get("pod"))
            if reply.get("ok"):
                # Taken as sent: wire.Reply describes it, nothing here checks it.
                result.acked[pod] = cast(wire.Reply, reply)
            else:
                result.errors[pod] = str(reply.get("error"))
    finally:
        await sub.unsubscribe()
    return result
