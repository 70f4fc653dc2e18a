"""The fault engine's sense of time, driven by a clock that moves only when told.

A rule's expiry, the time it last fired and the time on each injection event are
wall-clock time; the budget that limits injection events refills on monotonic time.
With a ``ManualClock`` these are checked at exact instants: a rule that expires at
T still fires at the last representable moment before T and no longer at T itself,
with no sleeping and no tolerance window. Counting (``after``, ``count``) does not
depend on time at all, however far the clock moves.
"""

from __future__ import annotations

import errno
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaosbus.clock import SYSTEM_CLOCK, ManualClock
from chaosbus.rules import FaultRule
from chaosfs.faults import EVENTS_PER_SECOND, Decision, FaultEngine, PowerCut
from chaosfs.inodes import Inode, InodeTable

START = 1_000_000.0  # seconds since the epoch at which the tests' clock starts


class Mount:
    """A real directory with one file, an inode table and an engine on a manual clock."""

    def __init__(self, root: Path) -> None:
        (root / "data").write_bytes(b"")
        self.clock = ManualClock(wall=START, monotonic=50.0)
        self.table = InodeTable(os.open(root, os.O_PATH | os.O_DIRECTORY))
        self.engine = FaultEngine(self.table, clock=self.clock)
        st = os.stat("data", dir_fd=self.table.root.fd, follow_symlinks=False)
        self.node: Inode = self.table.attach(self.table.root, b"data", st)

    def rule(self, **wire: Any) -> FaultRule:
        """A rule as it arrives now by the mount's clock (a ttl counts from now)."""
        return FaultRule.from_wire({"id": "r", **wire}, now=self.clock.wall())

    def set(self, **wire: Any) -> FaultRule:
        rule = self.rule(**wire)
        self.engine.set_rules([rule])
        return rule

    def decide(self, method: str = "read") -> Decision | None:
        return self.engine.for_inode(method, self.node)

    def fires(self, method: str = "read") -> bool:
        return self.decide(method) is not None

    def stats(self, rule_id: str = "r") -> dict[str, Any]:
        item = next(d for d in self.engine.describe() if d["id"] == rule_id)
        stats: dict[str, Any] = item["stats"]
        return stats


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    m = Mount(tmp_path)
    yield m
    m.table.close_all()


# --- the clocks themselves -------------------------------------------------------------


def test_a_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(wall=100.0, monotonic=7.0)
    assert (clock.wall(), clock.monotonic()) == (100.0, 7.0)
    assert (clock.wall(), clock.monotonic()) == (100.0, 7.0)  # reading it moves nothing
    clock.advance(2.5)
    assert (clock.wall(), clock.monotonic()) == (102.5, 9.5)
    clock.set_wall(50.0)  # the wall clock set back: elapsed time is not undone
    assert (clock.wall(), clock.monotonic()) == (50.0, 9.5)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    assert clock.monotonic() == 9.5


def test_the_system_clock_is_the_time_modules_own_functions() -> None:
    """What keeps the request path as cheap as before: no wrapper between the engine
    and ``time``, once the engine has bound the clock's methods."""
    assert SYSTEM_CLOCK.wall is time.time
    assert SYSTEM_CLOCK.monotonic is time.monotonic
    engine = FaultEngine(InodeTable(os.open("/", os.O_PATH | os.O_DIRECTORY)))
    assert engine.clock is SYSTEM_CLOCK
    before = time.time()
    assert before <= engine.clock.wall() <= time.time()
    engine.table.close_all()


# --- expiry: at the clock's instant, not within a window ----------------------------------


def test_a_ttl_ends_exactly_at_the_clocks_time(mount: Mount) -> None:
    rule = mount.set(action="errno", errno="EIO", methods=["read"], ttl=5)
    assert rule.expires_at == START + 5
    assert mount.fires()
    mount.clock.advance(4.5)
    assert mount.fires()
    assert mount.engine.expire() == []  # the engine's own clock, when no time is given
    mount.clock.set_wall(math.nextafter(START + 5, 0))  # the last instant before expiry
    assert mount.fires()
    assert mount.engine.expire() == []
    mount.clock.set_wall(START + 5)
    assert not mount.fires()  # stops at once, before the timer drops it
    assert mount.engine.expire() == [rule]
    assert mount.engine.rules.rules == ()


def test_an_absolute_expiry_ends_exactly_at_that_time(mount: Mount) -> None:
    rule = mount.set(action="latency", delay=0.25, methods=["write"], expires_at=START + 60)
    mount.clock.advance(59)
    decision = mount.decide("write")
    assert decision is not None and decision.delay == 0.25
    mount.clock.advance(1)
    assert mount.decide("write") is None
    assert mount.engine.expire() == [rule]


def test_an_expired_rule_no_longer_counts_matches(mount: Mount) -> None:
    mount.set(action="errno", errno="EIO", methods=["read"], ttl=1)
    assert mount.fires()
    mount.clock.advance(1)
    for _ in range(3):
        assert not mount.fires()
    assert (mount.stats()["matched"], mount.stats()["fired"]) == (1, 1)


def test_a_quota_stops_limiting_statfs_when_it_expires(mount: Mount) -> None:
    mount.set(action="enospc", quota=4096, ttl=10)
    assert mount.engine.quota_free() == 4096
    mount.clock.advance(9.75)
    assert mount.engine.quota_free() == 4096
    mount.clock.advance(0.25)
    assert mount.engine.quota_free() is None


# --- last_fired, event times and cut times: the clock's wall time ----------------------------


def test_last_fired_is_the_clocks_time_of_the_last_fault(mount: Mount) -> None:
    mount.set(action="errno", errno="EIO", methods=["read"])
    assert mount.stats()["last_fired"] is None
    assert mount.fires()
    assert mount.stats()["last_fired"] == START
    mount.clock.advance(7.25)
    assert mount.fires()
    assert mount.stats()["last_fired"] == START + 7.25
    events = mount.engine.drain_events(10)
    assert [e[0] for e in events] == [START, START + 7.25]  # each event when it happened


def test_a_quota_refusal_is_stamped_with_the_clocks_time(mount: Mount) -> None:
    mount.set(action="enospc", quota=10)
    mount.clock.advance(3)
    decision = mount.decide("write")
    assert decision is not None and decision.quota is not None
    decision.charge(10, refused=False)  # growth within the quota fires nothing
    assert mount.stats()["last_fired"] is None
    mount.clock.advance(2)
    decision.charge(0, refused=True)
    assert mount.stats()["fired"] == 1
    assert mount.stats()["last_fired"] == START + 5


def test_a_power_cut_is_stamped_with_the_clocks_time(mount: Mount) -> None:
    cuts: list[PowerCut] = []

    def hand_over(cut: PowerCut) -> bool:  # where chaosfs hands the cut to its bus thread
        cuts.append(cut)
        return True

    mount.engine.power_cuts = True
    mount.engine.on_power_cut = hand_over
    mount.set(action="power-cut", methods=["fsync"], after=1)
    mount.clock.advance(1)
    assert mount.decide("fsync") is None  # the first passes
    mount.clock.advance(1)
    decision = mount.decide("fsync")
    assert decision is not None and decision.errno == errno.EIO  # cut before it happens
    assert [c.at for c in cuts] == [START + 2]
    mount.engine.cut_done(cuts[0], {"killed": []})
    assert mount.stats()["last_cut"]["at"] == START + 2
    assert mount.stats()["last_fired"] == START + 2


# --- the event budget: monotonic time ----------------------------------------------------------


def test_the_event_budget_refills_on_the_monotonic_clock(mount: Mount) -> None:
    budget = int(EVENTS_PER_SECOND)
    mount.set(action="latency", delay=0.001, methods=["read"])
    assert all(mount.fires() for _ in range(budget + 1))
    assert len(mount.engine.drain_events(10 * budget)) == budget  # a full second's worth
    assert mount.engine.events_dropped == 1

    mount.clock.set_wall(START + 3600)  # the wall clock jumps: no time has passed
    assert mount.fires()
    assert mount.engine.events_dropped == 2 and mount.engine.drain_events(10) == []

    mount.clock.advance(0.5)  # half a second: half the budget comes back
    assert all(mount.fires() for _ in range(budget))
    assert len(mount.engine.drain_events(10 * budget)) == budget // 2
    assert mount.engine.events_dropped == 2 + budget - budget // 2

    mount.clock.advance(3600)  # a long quiet spell refills it to one second's worth, no more
    assert all(mount.fires() for _ in range(2 * budget))
    assert len(mount.engine.drain_events(10 * budget)) == budget
    assert mount.stats()["fired"] == 1 + budget + 1 + budget + 2 * budget  # every fault counted


# --- counting does not depend on time --------------------------------------------------------


def test_after_and_count_are_unaffected_by_the_clock(mount: Mount) -> None:
    mount.set(action="errno", errno="EIO", methods=["read"], after=2, count=2, ttl=3600)
    seen = []
    for step in (0.0, 600.0, 0.0, 1200.0, 1.0, 1700.0):  # 3501 s in all: before the expiry
        mount.clock.advance(step)
        seen.append(mount.fires())
    assert seen == [False, False, True, True, False, False]
    assert (mount.stats()["matched"], mount.stats()["fired"]) == (6, 2)
    assert mount.stats()["last_fired"] == START + 1800  # the second and last firing
    mount.clock.set_wall(START - 86400)  # the wall clock set back a day: still spent
    assert not mount.fires()
