"""Clocks that code asks for the time, so that tests can decide what time it is.

Two kinds of time are read, for different purposes: wall-clock time (seconds since the
epoch) for what an operator reads or another machine compares, such as a rule's expiry
or when it last fired; and monotonic time for measuring how long something took, which
never jumps when the system clock is set. ``SystemClock`` reads the machine's clocks;
``ManualClock`` stands still until a test moves it, so a test can put a deadline exactly
at "now" instead of sleeping and asserting a window.

Code on a hot path should read ``clock.wall`` and ``clock.monotonic`` once, into
attributes, and call those: for ``SystemClock`` they are ``time.time`` and
``time.monotonic`` themselves, so nothing is added per call.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Where code reads the time."""

    def wall(self) -> float:
        """Seconds since the epoch, as ``time.time()``: may jump when the clock is set."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, as ``time.monotonic()``: never goes back."""
        ...


class SystemClock:
    """The machine's clocks. The methods are the ``time`` functions themselves, not
    wrappers, so a caller that binds them once pays nothing over calling ``time``."""

    __slots__ = ()

    wall = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock for tests: it moves only when told to.

    ``advance`` lets time pass (both clocks move together, as they do on a machine
    whose clock nobody sets); ``set_wall`` sets the wall clock alone, as an operator
    or NTP would, leaving the monotonic clock where it was.
    """

    __slots__ = ("_monotonic", "_wall")

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1_000.0) -> None:
        self._wall = float(wall)
        self._monotonic = float(monotonic)

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass; time never runs backwards, so a negative step is refused."""
        if seconds < 0:
            raise ValueError(f"time cannot run backwards: advance({seconds})")
        self._wall += seconds
        self._monotonic += seconds

    def set_wall(self, wall: float) -> None:
        """Set the wall clock to ``wall`` (forwards or back); the monotonic clock stays."""
        self._wall = float(wall)
