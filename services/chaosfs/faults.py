"""The fault engine: which rules hit an operation, and what they do to it.

Two threads meet here, so the design is: the bus thread is the only writer and
publishes a new immutable ``RuleSet`` by swapping one attribute; the trio thread
that serves FUSE only reads the current set and bumps counters. No lock is ever
taken on the file-system path, so a stuck control plane cannot stall I/O.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from typing import Any

from chaosbus.rules import MAX_RULES, METHOD_SET, METHODS, FaultRule, RuleError

from .inodes import Inode, InodeTable


@dataclass(slots=True)
class RuleStats:
    matched: int = 0
    fired: int = 0
    last_fired: float | None = None  # wall clock, for operators

    def to_wire(self) -> dict[str, Any]:
        return {"matched": self.matched, "fired": self.fired, "last_fired": self.last_fired}


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: int
    rules: tuple[FaultRule, ...] = ()
    by_method: dict[str, tuple[FaultRule, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, version: int, rules: tuple[FaultRule, ...]) -> RuleSet:
        by_method = {m: tuple(r for r in rules if r.applies_to(m)) for m in METHODS}
        return cls(version, rules, {m: rs for m, rs in by_method.items() if rs})


class Decision:
    """What to do to one operation: wait ``delay`` seconds, then fail with ``errno``."""

    __slots__ = ("delay", "errno")

    def __init__(self, delay: float, errno: int) -> None:
        self.delay = delay
        self.errno = errno


class FaultEngine:
    def __init__(self, table: InodeTable, rng: random.Random | None = None) -> None:
        self.table = table
        self.rules = RuleSet(0)
        self.stats: dict[str, RuleStats] = {}
        self._rng = rng or random.Random()

    # --- trio thread: the request path -------------------------------------------

    def for_inode(self, method: str, inode: Inode) -> Decision | None:
        rules = self.rules
        candidates = rules.by_method.get(method)
        if not candidates:
            return None
        cached = inode.match
        generation = self.table.generation
        if cached is None or cached[0] != rules.version or cached[1] != generation:
            cached = (rules.version, generation, {})
            inode.match = cached
        per_method = cached[2]
        hits = per_method.get(method)
        if hits is None:
            path = self.table.path(inode)
            hits = tuple(r for r in candidates if r.path_regex.match(path))
            per_method[method] = hits
        return self._decide(hits) if hits else None

    def for_path(self, method: str, parent: Inode, name: bytes) -> Decision | None:
        """For operations on a name that may not have an inode (create, unlink, ...)."""
        candidates = self.rules.by_method.get(method)
        if not candidates:
            return None
        path = self.table.child_path(parent, name)
        hits = tuple(r for r in candidates if r.path_regex.match(path))
        return self._decide(hits) if hits else None

    def reads_faulted(self, inode: Inode) -> bool:
        """Whether reads of this inode must bypass the kernel page cache."""
        candidates = self.rules.by_method.get("read")
        if not candidates:
            return False
        path = self.table.path(inode)
        return any(r.path_regex.match(path) for r in candidates)

    def _decide(self, hits: tuple[FaultRule, ...]) -> Decision | None:
        delay = 0.0
        err = 0
        stats = self.stats
        rng = self._rng
        for rule in hits:
            st = stats.get(rule.id)
            if st is None:  # recovered between snapshot read and now
                continue
            st.matched += 1
            if rule.percent < 100 and rng.random() * 100 >= rule.percent:
                continue
            if err and rule.errnos:
                continue  # the first failing rule decides the errno
            st.fired += 1
            st.last_fired = time.time()
            if rule.delay or rule.jitter:
                delay += rule.delay + (rng.uniform(0, rule.jitter) if rule.jitter else 0.0)
            if rule.errnos:
                err = rule.errnos[0] if len(rule.errnos) == 1 else rng.choice(rule.errnos)
        if not delay and not err:
            return None
        return Decision(delay, err)

    # --- bus thread: the only writer -----------------------------------------------

    def _publish(self, rules: tuple[FaultRule, ...]) -> RuleSet:
        for rule in rules:
            self.stats.setdefault(rule.id, RuleStats())
        new = RuleSet.build(self.rules.version + 1, rules)
        self.rules = new
        live = {r.id for r in rules}
        for rule_id in [k for k in self.stats if k not in live]:
            del self.stats[rule_id]
        return new

    def set_rules(self, incoming: list[FaultRule]) -> list[FaultRule]:
        """Add rules, replacing any with the same id. Returns the rules that changed."""
        current = {r.id: r for r in self.rules.rules}
        replaced = [current[r.id] for r in incoming if r.id in current]
        for rule in incoming:
            if rule.id in current:
                self.stats.pop(rule.id, None)  # a replaced rule starts counting afresh
            current[rule.id] = rule
        if len(current) > MAX_RULES:
            raise RuleError(f"a sidecar holds at most {MAX_RULES} rules")
        self._publish(tuple(current.values()))
        return replaced + incoming

    def recover_id(self, rule_id: str) -> list[FaultRule]:
        gone = [r for r in self.rules.rules if r.id == rule_id]
        if gone:
            self._publish(tuple(r for r in self.rules.rules if r.id != rule_id))
        return gone

    def recover_all(self) -> list[FaultRule]:
        gone = list(self.rules.rules)
        self._publish(())
        return gone

    def recover_method(self, method: str) -> list[FaultRule]:
        """The seed's RecoverMethod: stop faulting ``method``, keep the rest of each rule."""
        kept: list[FaultRule] = []
        touched: list[FaultRule] = []
        for rule in self.rules.rules:
            if not rule.applies_to(method):
                kept.append(rule)
                continue
            touched.append(rule)
            remaining = (rule.methods or METHOD_SET) - {method}
            if remaining:
                kept.append(_with_methods(rule, remaining))
        self._publish(tuple(kept))
        return touched

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for rule in self.rules.rules:
            item = rule.to_wire()
            stats = self.stats.get(rule.id)
            item["stats"] = stats.to_wire() if stats else RuleStats().to_wire()
            out.append(item)
        return out


def _with_methods(rule: FaultRule, methods: frozenset[str]) -> FaultRule:
    return dataclasses.replace(rule, methods=frozenset(methods))
