"""Mirror the RENDERINGS and NAMESPACES KV buckets into :class:`State`.

Both buckets are watched from the injector's own asyncio loop. A watch first
delivers the current value of every key, then updates. The snapshot is collected
aside and swapped in whole once a value arrives with nothing pending after it;
updates then apply one by one. nats-py also sends a ``None`` marker for the end of
the snapshot, but it can come before the last value, so it only completes the
snapshot of an empty bucket.

Creating the buckets is the template-watcher's job: while one is missing the
injector retries with backoff and stays not ready. Core NATS is at-most-once,
so after a reconnect (and every ``RESYNC_INTERVAL`` as a safety net) both
buckets are re-read from scratch; the old state keeps serving until the new
snapshot is complete, and replaces it whole, so a key deleted while the
connection was down disappears too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from chaosbus import codec
from chaosbus.bus import BusAuth, connect
from chaosbus.injection import (
    NAMESPACES_BUCKET,
    RENDERINGS_BUCKET,
    Rendering,
    parse_rendering_key,
)
from chaosbus.subjects import decode_token

from .metrics import Metrics
from .state import NamespaceInfo, State

BACKOFF_START = 0.1
BACKOFF_MAX = 2.0
RESYNC_INTERVAL = 300.0
JS_TIMEOUT = 2.0
MAX_VALUE_BYTES = 4 << 20

Decoder = Callable[[str, bytes], tuple[Any, Any]]


class BadValue(ValueError):
    pass


def decode_rendering(key: str, value: bytes) -> tuple[tuple[str, str], Rendering | None]:
    """(state key, rendering); the state key comes from the KV key alone, as a
    delete carries nothing else."""
    ident = parse_rendering_key(key)
    if not value:
        return ident, None
    try:
        rendering = Rendering.from_wire(codec.decode(value, limit=MAX_VALUE_BYTES))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadValue(f"{type(exc).__name__}: {exc}") from None
    if (rendering.namespace, rendering.name) != ident:
        raise BadValue(f"key {key!r} holds the rendering of {rendering.namespace}/{rendering.name}")
    if not isinstance(rendering.spec, dict) or not isinstance(rendering.selector, dict):
        raise BadValue("spec and selector must be maps")
    return ident, rendering


def _strings(doc: dict[str, Any], key: str) -> dict[str, str]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise BadValue(f"{key} must be a map")
    # Only strings can hold a request or a level; the rest are not ours to judge.
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def decode_namespace(key: str, value: bytes) -> tuple[str, NamespaceInfo | None]:
    name = decode_token(key)
    if not value:
        return name, None
    try:
        doc = codec.decode(value, limit=MAX_VALUE_BYTES)
    except ValueError as exc:
        raise BadValue(str(exc)) from None
    if not isinstance(doc, dict):
        raise BadValue("a namespace value must be a map")
    # "labels" is optional: a template-watcher that mirrors only annotations
    # leaves it out, and the namespace then enforces no Pod Security level here.
    return name, NamespaceInfo(_strings(doc, "annotations"), _strings(doc, "labels"))


class _NamespaceTarget:
    """The NAMESPACES bucket's updates, applied to both of the state's maps."""

    def __init__(self, state: State) -> None:
        self.state = state

    def pop(self, name: str, default: Any = None) -> None:
        self.state.put_namespace(name, None)

    def __setitem__(self, name: str, info: NamespaceInfo) -> None:
        self.state.put_namespace(name, info)


DECODERS: dict[str, Decoder] = {
    RENDERINGS_BUCKET: decode_rendering,
    NAMESPACES_BUCKET: decode_namespace,
}


class StoreSync:
    def __init__(
        self, url: str, state: State, metrics: Metrics, log: Any, auth: BusAuth | None = None
    ) -> None:
        self.auth = auth
        self.on_connect: Callable[[Client], None] | None = None  # once, with the connection
        self.url = url
        self.state = state
        self.metrics = metrics
        self.log = log
        self._resync = asyncio.Event()
        self._nc: Client | None = None
        self._waiting_for: set[str] = set()
        self._last_error = ""
        self._last_error_at = 0.0

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def _target(self, bucket: str) -> Any:
        """Where an update after the snapshot goes: a dict, or one like it."""
        if bucket == RENDERINGS_BUCKET:
            return self.state.renderings
        return _NamespaceTarget(self.state)

    # --- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: connect, mirror, re-read after every reconnect."""
        self._nc = await self._connect()
        if self.on_connect is not None:
            self.on_connect(self._nc)
        timer = asyncio.create_task(self._resync_timer())
        backoff = BACKOFF_START
        try:
            while True:
                self._resync.clear()
                started = time.monotonic()
                try:
                    await self._mirror(self._nc)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.log.warning("kv_watch_failed", error=f"{type(exc).__name__}: {exc}")
                    if time.monotonic() - started > 10:
                        backoff = BACKOFF_START  # it worked for a while: retry promptly
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                # Asked for by a reconnect or the timer: watch again from scratch.
                self.metrics.resyncs.inc()
                self.log.info("kv_rewatch", **self.state.summary())
                backoff = BACKOFF_START
        finally:
            timer.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 2)

    async def _connect(self) -> Client:
        backoff = BACKOFF_START
        while True:
            try:
                nc: Client = await connect(
                    self.url,
                    name="chaos-injector",
                    auth=self.auth,
                    on_reconnect=self._on_reconnect,
                    on_disconnect=self._on_disconnect,
                    on_error=self._on_error,
                )
                self.log.info(
                    "nats_connected",
                    url=nc.connected_url.geturl() if nc.connected_url else self.url,
                )
                return nc
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("nats_connect_failed", url=self.url, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _on_reconnect(self) -> None:
        self.log.info("nats_reconnected")
        self._resync.set()

    async def _on_disconnect(self) -> None:
        self.log.warning("nats_disconnected")

    async def _on_error(self, exc: Exception) -> None:
        # nats-py reports every retry while the server is away (also before the
        # first connection succeeds): log each distinct error once in a while.
        text = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if text != self._last_error or now - self._last_error_at > 30:
            self.log.warning("nats_error", url=self.url, error=text)
            self._last_error, self._last_error_at = text, now

    async def _resync_timer(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            self._resync.set()

    # --- mirroring ---------------------------------------------------------------

    async def _mirror(self, nc: Client) -> None:
        """Watch both buckets until a resync is asked for; raise on failure."""
        js = nc.jetstream(timeout=JS_TIMEOUT)
        buckets = {b: await self._open(js, b) for b in (RENDERINGS_BUCKET, NAMESPACES_BUCKET)}
        watchers: list[KeyValue.KeyWatcher] = []

        async def until_resync() -> None:
            await self._resync.wait()
            raise _Resync

        async def follow(bucket: str, watcher: KeyValue.KeyWatcher, kv: KeyValue) -> None:
            await self._follow(bucket, watcher, kv)
            raise _Resync  # a watch that ends is opened again, both buckets with it

        try:
            for kv in buckets.values():
                watchers.append(await kv.watchall())
            # One task group: the first follower to fail ends the other (its error
            # goes up to run(), which retries), and a resync request ends both.
            async with asyncio.TaskGroup() as tg:
                for (bucket, kv), watcher in zip(buckets.items(), watchers, strict=True):
                    tg.create_task(follow(bucket, watcher, kv), name=f"follow {bucket}")
                tg.create_task(until_resync(), name="resync")
        except* _Resync:
            pass
        except* Exception as group:
            raise group.exceptions[0] from None
        finally:
            for watcher in watchers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watcher.stop(), 1)  # type: ignore[no-untyped-call]

    async def _open(self, js: Any, bucket: str) -> KeyValue:
        backoff = BACKOFF_START
        while True:
            try:
                kv: KeyValue = await js.key_value(bucket)
            except BucketNotFoundError:
                if bucket not in self._waiting_for:
                    self.log.warning("kv_bucket_missing", bucket=bucket, hint="waiting for it")
                    self._waiting_for.add(bucket)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if bucket in self._waiting_for:
                self._waiting_for.discard(bucket)
                self.log.info("kv_bucket_found", bucket=bucket)
            return kv

    async def _follow(
        self, bucket: str, watcher: KeyValue.KeyWatcher, kv: KeyValue | None = None
    ) -> None:
        decode = DECODERS[bucket]
        snapshot: dict[Any, Any] = {}
        initial = True

        def complete() -> None:
            # Swap the whole bucket in one assignment: handlers on this
            # loop see the old or the new snapshot, never a mix.
            nonlocal initial
            if bucket == RENDERINGS_BUCKET:
                self.state.renderings = snapshot
            else:
                self.state.load_namespaces(snapshot)
            was_ready = self.state.ready
            self.state.loaded.add(bucket)
            initial = False
            self._count()
            self.log.info("kv_snapshot", bucket=bucket, keys=len(snapshot))
            if self.state.ready and not was_ready:
                self.log.info("ready", **self.state.summary())

        async for entry in watcher:
            if entry is None:
                # nats-py's end-of-snapshot marker can come before the last value
                # (libs/chaosbus/kv.py): it completes the snapshot only for an empty
                # bucket; otherwise the value with nothing pending after it does.
                if initial and not snapshot and (kv is None or await _is_empty(kv)):
                    complete()
                continue
            target = snapshot if initial else self._target(bucket)
            deleted = entry.operation in (KV_DEL, KV_PURGE)
            try:
                ident, value = decode(entry.key, b"" if deleted else (entry.value or b""))
            except BadValue as exc:
                # A value we cannot read counts as absent: no stale config lingers.
                self.metrics.bad_values.labels(bucket).inc()
                self.log.warning("kv_bad_value", bucket=bucket, key=entry.key, error=str(exc))
                with contextlib.suppress(Exception):
                    target.pop(decode(entry.key, b"")[0], None)
                ident, value = None, None
            else:
                if value is None:
                    target.pop(ident, None)
                else:
                    target[ident] = value
            if initial:
                if entry.delta == 0:
                    complete()
                continue
            if ident is not None:
                self._count()
                self.log.info(
                    "kv_update",
                    bucket=bucket,
                    key=entry.key,
                    op="delete" if value is None else "put",
                    revision=entry.revision,
                )
        raise ConnectionError(f"the watch on {bucket} ended")

    def _count(self) -> None:
        self.metrics.renderings.set(len(self.state.renderings))
        self.metrics.namespaces.set(len(self.state.namespaces))
        self.metrics.ready.set(1 if self.state.ready else 0)


async def _is_empty(kv: KeyValue) -> bool:
    """No value in the bucket's stream at all (then the marker is the end of nothing)."""
    info = await kv._js.stream_info(kv._stream)  # nats-py 2.16 keeps them there
    return not info.state.messages


class _Resync(Exception):
    """Ends the mirroring task group when a reconnect or the timer asks to watch again."""
