"""A service's jobs run in one task group: stopping cancels them all, and a job that
dies either comes back (supervised) or stops the service visibly, never silently."""

from __future__ import annotations

import asyncio

import pytest

from chaosbus.supervise import JobEnded, run_until_stopped


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def _add(self, event: str, **kw: object) -> None:
        self.events.append((event, kw))

    error = exception = info = warning = _add


def test_stop_cancels_every_job_and_waits_for_it():
    cleaned: list[str] = []

    async def job(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(name)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_soon(stop.set)
        await run_until_stopped({"a": lambda: job("a"), "b": lambda: job("b")}, stop, Log())

    asyncio.run(asyncio.wait_for(main(), 5))
    assert sorted(cleaned) == ["a", "b"]


def test_a_supervised_job_that_fails_is_logged_and_started_again():
    starts = 0
    log = Log()

    async def main() -> None:
        stop = asyncio.Event()

        async def flaky() -> None:
            nonlocal starts
            starts += 1
            if starts == 3:
                stop.set()
                await asyncio.Event().wait()
            raise RuntimeError("watch stream broke")

        await run_until_stopped({"watch": flaky}, stop, log)

    # supervised's first backoff is 0.5 s, then 1 s: the third start comes after both.
    asyncio.run(asyncio.wait_for(main(), 10))
    assert starts == 3
    assert [e for e, kw in log.events if kw.get("task") == "watch"] == ["task_failed"] * 2


@pytest.mark.parametrize("ending", ["raises", "returns"])
def test_without_restart_the_first_job_to_end_stops_the_others_and_is_named(ending):
    other_cancelled = asyncio.Event()
    log = Log()

    async def leader() -> None:
        await asyncio.sleep(0)
        if ending == "raises":
            raise RuntimeError("lease lost")

    async def other() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            other_cancelled.set()
            raise

    async def main() -> None:
        await run_until_stopped(
            {"leader": leader, "other": other}, asyncio.Event(), log, restart=False
        )

    with pytest.raises(JobEnded) as info:
        asyncio.run(asyncio.wait_for(main(), 5))
    assert info.value.name == "leader"
    assert ("lease lost" in str(info.value)) is (ending == "raises")
    assert other_cancelled.is_set()
    assert log.events[0][0] == ("task_failed" if ending == "raises" else "task_ended")


@pytest.mark.parametrize("restart", [True, False])
def test_a_job_that_loses_its_first_cancellation_still_stops(restart):
    """On Python 3.11, asyncio.wait_for can lose a cancellation that lands as the
    awaited future completes; the job then runs on. Stopping must not hang on it."""
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 1:
                    continue  # as a lost cancellation: the loop goes on
                raise

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        await run_until_stopped({"stubborn": stubborn}, stop, Log(), restart=restart)

    asyncio.run(asyncio.wait_for(main(), 5))
    assert swallowed == 2
