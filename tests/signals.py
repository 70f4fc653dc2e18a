"""Positive signals for the system tests: what proves that a part did something.

A system test never sleeps a fixed time and then looks: a sleep that is too short
fails on a busy machine, and "nothing changed after 0.5 s" passes just as well when
nothing was processed at all. It waits instead for a sign that the part under test
has done the thing (a log record, an audit event, a counter in ``status``), and
only then asserts the state. Where time itself is the behaviour under test (a
ttl, a latency), the test waits for that time to pass on the clock the part
uses, and asserts with a window no narrower than what the behaviour promises.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from conftest import Sidecar, chaosctl, wait_for

Record = dict[str, Any]


# --- a sidecar's own log: one JSON record a line ------------------------------------


def log_offset(sc: Sidecar) -> int:
    """Where the sidecar's log ends now: records after it are newer than this call."""
    return sc.log.stat().st_size if sc.log.exists() else 0


def log_events(sc: Sidecar, event: str, since: int = 0) -> list[Record]:
    """The sidecar's log records named ``event``, from byte ``since`` on, oldest first."""
    with open(sc.log, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                out.append(record)
    return out


def logged_at(record: Record) -> float:
    """When the sidecar logged ``record``, as a wall-clock time (its ISO timestamp)."""
    stamp = record["timestamp"].replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def wait_logged(
    sc: Sidecar,
    event: str,
    since: int = 0,
    where: Callable[[Record], bool] = lambda r: True,
    timeout: float = 10.0,
) -> Record:
    """The first record ``event`` (after ``since``) that ``where`` accepts, once logged."""

    def found() -> Record | None:
        return next((r for r in log_events(sc, event, since) if where(r)), None)

    return wait_for(found, timeout=timeout, what=f"{event!r} in {sc.log}")


def wait_desired_state_read(sc: Sidecar, since: int = 0, fleet: int = 0) -> Record:
    """The sidecar has read its whole desired state (at least ``fleet`` fleet entries)
    and applied it: it logs ``desired_state_read`` and converges in the same step of
    its loop, before it can answer another command (services/chaosfs/convergence.py)."""
    return wait_logged(sc, "desired_state_read", since, where=lambda r: r.get("fleet", 0) >= fleet)


# --- a sidecar's status -------------------------------------------------------------


def rule_stats(sc: Sidecar, rule_id: str) -> Record | None:
    """The counters of one rule in force (``status``), or None if it is not."""
    for rule in sc.request({"op": "status"})["rules"]:
        if rule["id"] == rule_id:
            return rule["stats"]
    return None


def wait_fired(sc: Sidecar, rule_id: str, at_least: int = 1, timeout: float = 10.0) -> Record:
    """The rule has fired ``at_least`` times: the engine counts a firing when it decides,
    before a latency fault starts to wait, so this also says an operation is held."""

    def fired() -> Record | None:
        stats = rule_stats(sc, rule_id)
        return stats if stats is not None and stats["fired"] >= at_least else None

    return wait_for(fired, timeout=timeout, what=f"rule {rule_id} to fire {at_least}x")


def sleep_past(wall_time: float, margin: float = 0.05) -> None:
    """Let a deadline on the wall clock (a rule's ``expires_at``) pass, where that time
    passing is itself the behaviour under test."""
    time.sleep(max(0.0, wall_time + margin - time.time()))


# --- the audit trail ----------------------------------------------------------------


def audit(url: str, *args: str) -> list[Record]:
    """The audit trail as ``chaosctl audit --json ARGS`` shows it, oldest first."""
    done = chaosctl(url, "audit", "--json", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]
