"""The injector's view of a bucket is complete before it serves from it, even when
nats-py delivers its end-of-snapshot marker before the last value (as it can)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from chaosbus import codec
from chaosbus.subjects import encode_token
from injector.metrics import Metrics
from injector.state import State
from injector.store import NAMESPACES_BUCKET, StoreSync


@dataclass
class Entry:
    key: str
    value: bytes
    delta: int
    operation: str | None = None
    revision: int = 0


class Watcher:
    def __init__(self, items: list[Entry | None]) -> None:
        self.items = items

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> Entry | None:
        if not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)


class Log:
    def info(self, *a: object, **k: object) -> None: ...
    def warning(self, *a: object, **k: object) -> None: ...


def ns(name: str, delta: int) -> Entry:
    value = codec.encode({"annotations": {"a/inject": name}})
    return Entry(encode_token(name), value, delta)


def test_an_early_marker_does_not_complete_the_snapshot():
    state = State()
    sync = StoreSync("nats://unused", state, Metrics(), Log())
    views: list[int] = []
    loaded = state.load_namespaces

    def record(snapshot):  # every swap the injector would serve from
        views.append(len(snapshot))
        loaded(snapshot)

    state.load_namespaces = record  # type: ignore[method-assign]
    items = [ns("a", 2), None, ns("b", 1), ns("c", 0)]

    async def follow() -> None:
        # The watcher runs out at the end, as a closed watch does.
        with contextlib.suppress(ConnectionError):
            await sync._follow(NAMESPACES_BUCKET, Watcher(items))  # type: ignore[arg-type]

    asyncio.run(follow())
    assert views == [3], views  # one swap, with every namespace in it
    assert set(state.namespaces) == {"a", "b", "c"}
    assert NAMESPACES_BUCKET in state.loaded
