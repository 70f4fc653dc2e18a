"""A supervised task that fails or ends is logged and started again; cancelling stops it."""

from __future__ import annotations

import asyncio

import pytest

from chaosbus.supervise import supervised


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def error(self, event: str, **kw: object) -> None:
        self.events.append((event, kw))

    def exception(self, event: str, **kw: object) -> None:
        self.events.append((event, kw))


def test_a_failing_then_ending_task_is_restarted_until_cancelled():
    log = Log()
    starts: list[int] = []
    running = asyncio.Event

    async def main() -> None:
        healthy = running()

        async def job() -> None:
            starts.append(len(starts))
            if len(starts) == 1:
                raise RuntimeError("watch stream broke")
            if len(starts) == 2:
                return  # ended: must not go unnoticed either
            healthy.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(supervised("watch", job, log, first_delay=0.01))
        await asyncio.wait_for(healthy.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert len(starts) == 3
    assert [e for e, _ in log.events] == ["task_failed", "task_ended"]
    assert "watch stream broke" in log.events[0][1]["error"]
