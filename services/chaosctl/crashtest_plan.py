"""The arithmetic of a crash-test campaign, apart from any process or bus.

A campaign is a list of cuts. Each cut has a seed, and the seed alone (with the
campaign's settings) decides where the cut lands: after how long a wait, or at
which matching operation and on which side of it. Replaying a seed replays the
cut. The ``Ledger`` keeps what the workload was told is durable, and says what a
check after a cut no longer finds, and how old the oldest of those was: the
window of writes a database documents it may lose (Redis ``appendfsync everysec``:
about a second, two at worst).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SEED_LIMIT = 2**32  # cut seeds are printed and typed back: short decimal numbers
TIMINGS = ("before", "after")


def cut_seeds(campaign_seed: int, cuts: int) -> list[int]:
    """The seeds of a campaign's cuts, the same for the same campaign seed."""
    rng = random.Random(campaign_seed)
    return [rng.randrange(SEED_LIMIT) for _ in range(cuts)]


@dataclass(frozen=True)
class Settings:
    """How cuts are placed. ``at`` is "time" (a random wait after the workload's
    first acknowledgement) or "op" (a random matching operation, by a power-cut rule)."""

    at: str = "time"
    earliest: float = 0.1  # seconds after the first acknowledgement (time)
    latest: float = 1.0
    methods: tuple[str, ...] = ("fsync",)  # the operations counted (op)
    path: str = "**"
    ops: int = 50  # the cut lands at one of the first so many matching operations
    when: str = "random"  # before, after, or either, by the seed


@dataclass(frozen=True)
class CutPlan:
    seed: int
    at: str
    delay: float = 0.0  # time: seconds after the first acknowledgement
    after: int = 0  # op: matching operations let through before the one cut at
    when: str = ""  # op: before or after that operation

    def describe(self) -> str:
        if self.at == "time":
            return f"{self.delay:.3f}s in"
        return f"op #{self.after + 1} {self.when}"

    def to_wire(self) -> dict[str, Any]:
        if self.at == "time":
            return {"at": "time", "delay": round(self.delay, 6)}
        return {"at": "op", "operation": self.after + 1, "when": self.when}


def plan_cut(seed: int, settings: Settings) -> CutPlan:
    """Where the cut with this seed lands; a pure function of the two."""
    rng = random.Random(seed)
    if settings.at == "time":
        return CutPlan(seed, "time", delay=rng.uniform(settings.earliest, settings.latest))
    after = rng.randrange(settings.ops)
    when = settings.when if settings.when in TIMINGS else rng.choice(TIMINGS)
    return CutPlan(seed, "op", after=after, when=when)


@dataclass
class Loss:
    """What one cut's check found missing."""

    lost: list[str]
    window: float | None  # seconds from the oldest lost acknowledgement to the cut
    beyond: int  # lost records acknowledged longer than the allowed window before the cut


@dataclass
class Ledger:
    """Every record the workload acknowledged and not yet found lost, with the time
    each was acknowledged. Records are the workload's lines, compared as text."""

    acked: dict[str, float] = field(default_factory=dict)

    def acknowledge(self, records: Iterable[tuple[float, str]]) -> None:
        for when, record in records:
            self.acked.setdefault(record, when)

    def settle(self, present: set[str], cut_at: float, allowed: float | None) -> Loss:
        """After a cut: which acknowledged records the check no longer finds. They
        leave the ledger (a workload may write and acknowledge them again later)."""
        lost = [r for r in self.acked if r not in present]
        ages = [max(0.0, cut_at - self.acked[r]) for r in lost]
        for record in lost:
            del self.acked[record]
        window = max(ages) if ages else None
        beyond = len(lost) if allowed is None else sum(1 for age in ages if age > allowed)
        return Loss(lost, window, beyond)


def digest(present: Iterable[str]) -> str:
    """What survived, in one comparable string: a replay must find the same."""
    h = hashlib.sha256()
    for record in sorted(set(present)):
        h.update(record.encode() + b"\n")
    return h.hexdigest()[:16]


TOTALS = ("cuts", "acknowledged", "lost", "failed_restarts", "corruption_reports")


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {
        "cuts": len(rows),
        "acknowledged": sum(r["acknowledged"] for r in rows),
        "lost": sum(r["lost"] for r in rows),
        "lost_beyond_window": sum(r["beyond_window"] for r in rows),
        "failed_restarts": sum(1 for r in rows if r["restart"] == "failed"),
        "corruption_reports": sum(1 for r in rows if r["corruption"]),
        "survivors": sum(len(r["survivors"]) for r in rows),
        "missed_triggers": sum(1 for r in rows if r["trigger"].get("missed")),
        "errors": sum(1 for r in rows if r.get("error")),
    }
    windows = [r["lost_window"] for r in rows if r["lost_window"] is not None]
    out["max_lost_window"] = max(windows) if windows else None
    return out


def passed(summary: dict[str, Any]) -> bool:
    """Nothing lost beyond the allowed window, every restart and check clean, every
    process killed, every cut made."""
    return not any(
        summary[k]
        for k in (
            "lost_beyond_window",
            "failed_restarts",
            "corruption_reports",
            "survivors",
            "errors",
        )
    )


def table(head: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The campaign for a person: one line per cut, then the totals."""
    columns = f"{'cut':>4}  {'seed':>10}  {'cut at':<16} {'acked':>6} {'lost':>5}  {'restart':<8}"
    lines = [head, columns + " check"]
    for r in rows:
        check = "corrupt: " + r["corruption"] if r["corruption"] else r["check"]
        lost = f"{r['lost']:>5}"
        if r["lost_window"] is not None:
            check += f" (lost the last {r['lost_window']:.2f}s)"
        if r["survivors"]:
            check += f"; {len(r['survivors'])} process(es) survived the cut"
        if r.get("error"):
            check += f"; {r['error']}"
        lines.append(
            f"{r['cut']:>4}  {r['seed']:>10}  {r['trigger']['text']:<16} "
            f"{r['acknowledged']:>6} {lost}  {r['restart']:<8} {check}"
        )
    s = summary
    lines.append(
        f"cuts {s['cuts']}, acknowledged {s['acknowledged']}, lost {s['lost']}, "
        f"failed restarts {s['failed_restarts']}, corruption reports {s['corruption_reports']}"
    )
    extra = []
    if s["lost"] and s["lost_beyond_window"] != s["lost"]:
        extra.append(f"{s['lost_beyond_window']} lost beyond the allowed window")
    if s["survivors"]:
        extra.append(f"{s['survivors']} process(es) survived a cut")
    if s["missed_triggers"]:
        extra.append(f"{s['missed_triggers']} cut(s) cut late: the operation never came")
    if extra:
        lines.append("; ".join(extra))
    if rows:
        lines.append("replay one cut exactly: the same command with --replay SEED")
    return "\n".join(lines)
