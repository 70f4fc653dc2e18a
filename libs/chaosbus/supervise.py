"""Long-running tasks that never end silently.

A service's watch loops and monitors are meant to run until the service stops. If one
returns or raises, ``supervised`` logs it (with the traceback) and starts it again
after a backoff that grows while it keeps failing, so a broken watch stream shows in
the logs and recovers instead of leaving the service half deaf until someone restarts
it. Cancellation (the service stopping) passes straight through.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

HEALTHY_AFTER = 60.0  # seconds of running that reset the backoff
CANCEL_AGAIN_AFTER = 0.5  # seconds a stopping job has to end before it is cancelled again


async def supervised(
    name: str,
    start: Callable[[], Awaitable[None]],
    log: Any,
    *,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
) -> None:
    """Run ``start()`` until cancelled, restarting it whenever it ends or fails."""
    delay = first_delay
    while True:
        began = time.monotonic()
        try:
            await start()
            log.error("task_ended", task=name, restart_in=delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("task_failed", task=name, error=repr(exc), restart_in=delay)
        if time.monotonic() - began >= HEALTHY_AFTER:
            delay = first_delay
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


class JobEnded(Exception):
    """A job of a service that is not restarted ended or failed: the service stops."""

    def __init__(self, name: str, error: BaseException | None = None) -> None:
        super().__init__(f"{name} {'failed: ' + repr(error) if error else 'ended'}")
        self.name = name
        self.error = error


async def cancel_until_done(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks until every one has ended, not once: on Python 3.11 a
    cancellation that lands as an awaited future completes is lost inside
    asyncio.wait_for (which nats-py's requests use), and the task would run on,
    holding its service up at SIGTERM for ever. Each hears it again until it ends."""
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=CANCEL_AGAIN_AFTER)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT: how every chaosbus service is asked to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_until_stopped(
    jobs: Mapping[str, Callable[[], Awaitable[None]]],
    stop: asyncio.Event,
    log: Any,
    *,
    restart: bool = True,
) -> None:
    """Run a service's long-running jobs together until ``stop`` is set.

    The jobs share one ``asyncio.TaskGroup`` (trio's nursery semantics): when the
    service stops, every job is cancelled and awaited before this returns, and none
    outlives it. With ``restart`` each job is ``supervised`` (a job that ends or fails
    is logged and started again); without it, the first job to end or fail stops them
    all and raises ``JobEnded`` naming it, so the service exits visibly instead of
    running on without that part.
    """

    tasks: list[asyncio.Task[None]] = []

    async def until_stop() -> None:
        await stop.wait()
        await cancel_until_done(tasks)
        raise _Stopping

    async def fatal(name: str, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("task_failed", task=name, error=repr(exc), exc_info=exc)
            raise JobEnded(name, exc) from exc
        log.error("task_ended", task=name)
        raise JobEnded(name)

    try:
        async with asyncio.TaskGroup() as tg:
            for name, job in jobs.items():
                task = supervised(name, job, log) if restart else fatal(name, job)
                tasks.append(tg.create_task(task, name=name))
            tg.create_task(until_stop(), name="stop")
    except* _Stopping:
        pass
    except* JobEnded as group:
        raise group.exceptions[0] from None


class _Stopping(Exception):
    """Raised by the stop watcher to end the task group (cancelling every job)."""
