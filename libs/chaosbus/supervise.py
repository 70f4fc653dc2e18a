"""Long-running tasks that never end silently.

A service's watch loops and monitors are meant to run until the service stops. If one
returns or raises, ``supervised`` logs it (with the traceback) and starts it again
after a backoff that grows while it keeps failing, so a broken watch stream shows in
the logs and recovers instead of leaving the service half deaf until someone restarts
it. Cancellation (the service stopping) passes straight through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

HEALTHY_AFTER = 60.0  # seconds of running that reset the backoff


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
