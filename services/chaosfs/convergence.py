"""Converging a sidecar to its desired state in JetStream KV.

Two feeds, one on the fleet's entries and one on this pod's, fill one view.
Nothing is applied until both have delivered every current value; from then on,
every change recomputes the rules this sidecar should hold and hands them to the
engine. After a reconnect the feeds are started afresh, so whatever was missed
while away is read again.

Each feed is one ordered consumer of the bucket's stream that delivers the last
value of every key in its range and then every later write, in stream order: no
write between reading the current values and following the changes can be lost.
The current values are complete with the first message the server sends with
nothing left pending, or at once when the server says it has sent nothing and
has nothing to send. nats-py's KV watch decides this from a consumer-info reply
that races the deliveries, and can mark the values complete before the last one,
or before the first: converging on part of the desired state would remove rules
that are still wanted and reset their counters.

Every consumer a sidecar makes has a name (see ``NamedConsumer``), so that the
server is asked on a subject that shows the consumer's filter: the auth callout
lets a pod read its own desired state and the fleet's, and no other pod's, that way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE

from chaosbus import codec, desired
from chaosbus.rules import FaultRule
from chaosbus.subjects import decode_token

from . import provenance

Apply = Callable[[list[FaultRule]], Awaitable[None]]
# nats-server 2.11+ marks a key removed by a per-message expiry with this header
# instead of KV-Operation.
MARKER_REASON = "Nats-Marker-Reason"
INACTIVE_THRESHOLD = 300.0  # seconds before the server drops a feed whose sidecar vanished
COMPLETE = object()  # queued when a feed has delivered every current value
CONVERGE_SETTLE = 0.1  # seconds a change waits for the rest of its burst


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
        self._memo = desired.Memo()  # each entry parsed once per revision, not per change

    async def run(self, nc: Client, restart: asyncio.Event) -> None:
        """Follow until cancelled; start over whenever ``restart`` is set (a reconnect)."""
        delay = 0.2
        while True:
            restart.clear()
            try:
                await self._follow(nc, restart)
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except BucketNotFoundError:
                await asyncio.sleep(delay)  # nobody has set a rule yet: nothing to converge to
            except Exception as exc:
                self.log.warning("desired_state_watch_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _follow(self, nc: Client, restart: asyncio.Event) -> None:
        kv = await nc.jetstream().key_value(desired.BUCKET)
        prefix = desired.pod_prefix(self.namespace, self.name)
        # What the feeds delivered and this loop has not taken yet, and the event that
        # wakes it: one wait per burst, no task made for each (a thousand sidecars
        # wake at every fleet change).
        pending: collections.deque[tuple[str, Any]] = collections.deque()
        wake = asyncio.Event()

        def put(item: tuple[str, Any]) -> None:
            pending.append(item)
            wake.set()

        subs: list[Any] = []
        restarted = asyncio.create_task(restart.wait())
        restarted.add_done_callback(lambda _: wake.set())
        try:
            for which, keys in (("fleet", "fleet.>"), ("pod", f"{prefix}.>")):
                subs.append(await _feed(nc, kv, keys, which, put))
            fleet: dict[str, desired.Entry] = {}
            pod: dict[str, desired.Entry] = {}
            complete = {"fleet": False, "pod": False}
            read = False
            while True:
                if not pending:
                    wake.clear()
                    await wake.wait()
                if restarted.done():
                    return  # a reconnect: read everything again
                if not pending:
                    continue
                if read and any(which == "fleet" for which, _ in pending):
                    # Desired state was applied already: let a burst of fleet changes
                    # settle and apply it once (a fleet recover deletes many keys; a
                    # broadcast's record lands just before its command, which then sets
                    # the rule first and leaves the record nothing to change). Not for
                    # this pod's own keys: chaosctl records them right after its command,
                    # and a record held back would be applied after the pod's next
                    # command (a recover), bringing back the rule it just took away.
                    await asyncio.sleep(CONVERGE_SETTLE)
                    if restarted.done():
                        return
                # Everything queued by now is taken in one go, and applied once.
                batch = list(pending)
                pending.clear()
                for which, item in batch:
                    if item is COMPLETE:
                        complete[which] = True
                        continue
                    self._update(fleet if which == "fleet" else pod, item)
                    if item.metadata.num_pending == 0:
                        complete[which] = True
                if all(complete.values()):
                    if not read:
                        read = True
                        self.log.info("desired_state_read", fleet=len(fleet), pod=len(pod))
                    self.fleet, self.pod = fleet, pod
                    await self.converge()
                    self.synced.set()
        finally:
            restarted.cancel()
            for sub in subs:
                # While the connection is open this also ends nats-py's heartbeat and
                # flow-control tasks for the feed; the shutdown relies on that.
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    def _update(self, table: dict[str, desired.Entry], msg: Msg) -> None:
        key = msg.subject.split(".", 2)[2]  # $KV.<bucket>.<key>
        rule_id = decode_token(key.rsplit(".", 1)[-1])
        headers = msg.headers or {}
        if headers.get(KV_OP) in (KV_DEL, KV_PURGE) or MARKER_REASON in headers:
            table.pop(rule_id, None)
            return
        source = provenance.republished_from(headers)
        if source is not None:
            # Not written by a role allowed to write desired state: the key holds
            # nothing trustworthy any more.
            table.pop(rule_id, None)
            reason = f"republished from stream {source}, not written to desired state"
            self.log.warning("desired_entry_refused", key=key, reason=reason)
            if self.audit is not None:
                self.audit("desired.rejected", key=key, reason=reason)
            return
        try:
            table[rule_id] = desired.Entry.from_wire(codec.decode(msg.data))
        except (ValueError, codec.DecodeError) as exc:
            # Dropped, logged and audited; the rest of the desired state still applies.
            self.log.warning("desired_entry_unreadable", key=key, error=str(exc))
            if self.audit is not None:
                self.audit("desired.rejected", key=key, reason=str(exc))

    async def converge(self) -> None:
        rules = desired.compute(
            self.fleet,
            self.pod,
            self.namespace,
            self.name,
            self.labels,
            time.time(),
            self.log,
            memo=self._memo,
        )
        await self.apply(rules)


class NamedConsumer(ConsumerConfig):
    """A consumer config whose name follows its deliver subject.

    With a name, nats-py creates the consumer on
    ``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``, a subject NATS permissions
    can check, and the server holds the request's filter to it. Without one the
    filter travels in the body only, where permissions cannot see it, so chaos-auth
    refuses that form. An ordered consumer that falls behind is made again by nats-py
    with a new deliver subject (an inbox, unique) while the old consumer may still
    exist: deriving the name from the inbox gives the new one a new name too.
    """

    def __getattribute__(self, key: str) -> Any:
        if key == "name":
            deliver = object.__getattribute__(self, "deliver_subject")
            if deliver:
                return "chaosfs_" + deliver.rsplit(".", 1)[-1]
        return object.__getattribute__(self, key)


async def subscribe_last_values(
    nc: Client,
    subject: str,
    stream: str,
    *,
    cb: Callable[[Msg], Awaitable[None]] | None = None,
    inactive_threshold: float = INACTIVE_THRESHOLD,
) -> Any:
    """An ordered push consumer of ``stream`` filtered on ``subject``: the last value
    of each matching subject, then every later one."""
    sub = await nc.jetstream(timeout=2.0).subscribe(
        subject,
        stream=stream,
        cb=cb,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=inactive_threshold,
        config=NamedConsumer(),
    )
    if cb is not None:
        _stop_flow_control_poll(sub)
    return sub


def _stop_flow_control_poll(sub: Any) -> None:
    """End nats-py's (2.16) poll for flow-control answers of a callback subscription.

    Every ordered consumer gets a task that wakes four times a second to send a
    flow-control answer it might have put off. With a callback, nats-py counts a
    message delivered as soon as it arrives, so it always answers at once and the
    task never has anything to send; but a thousand sidecars' two thousand of them
    kept a third of a CPU busy waking up. Should an answer ever be put off, the
    server's idle heartbeat asks again for a stalled consumer, and nats-py answers
    that one at once too.
    """
    jsi = getattr(getattr(sub, "_sub", None), "_jsi", None)
    task = getattr(jsi, "_fctask", None)
    if isinstance(task, asyncio.Task):
        task.cancel()


async def _feed(
    nc: Client, kv: Any, keys: str, which: str, put: Callable[[tuple[str, Any]], None]
) -> Any:
    """Start one feed of ``keys`` into ``put``: (which, message) for each value, then
    for each change; (which, COMPLETE) if the range holds no value at all."""

    async def deliver(msg: Msg) -> None:
        put((which, msg))

    # nats-py 2.16's KeyValue keeps its stream and subject prefix here.
    sub = await subscribe_last_values(nc, f"{kv._pre}{keys}", kv._stream, cb=deliver)
    try:
        info = await sub.consumer_info()
    except BaseException:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        raise
    # Nothing sent and nothing to send: the range is empty. Anything sent has a
    # message with nothing pending after it on its way, which marks completeness.
    if (info.delivered is None or info.delivered.consumer_seq == 0) and not info.num_pending:
        put((which, COMPLETE))
    return sub
