"""The fault engine: which rules hit an operation, and what they do to it.

Two threads meet here, so the design is: the bus thread is the only writer and
publishes a new immutable ``RuleSet`` by swapping one attribute; the trio thread
that serves FUSE only reads the current set and updates per-rule counters. No
lock is ever taken on the file-system path, so a stuck control plane cannot
stall I/O. What the trio side reports back (injection events) goes into a
bounded deque the bus thread drains; appending never blocks.

A power-cut rule (lazy mode) is decided here too, but the cut itself (killing
the app's processes, dropping what was never synced) is slow, so the FUSE thread
only marks the cut point and hands the cut over (``on_power_cut``). From that
moment until the cut is done (``cut_done``) every operation fails with EIO, as on
a disk that lost power: nothing the app does after the cut point reaches the disk,
and no request is held (a killed process waiting on a held request could not die).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno as errno_mod
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import re2
import trio

from chaosbus.clock import SYSTEM_CLOCK, Clock
from chaosbus.globs import compile_re2, encode
from chaosbus.protocol import CommandError, parse_lazy
from chaosbus.rules import MAX_RULES, METHOD_SET, METHODS, FaultRule, RuleError

from .inodes import Inode, InodeTable

EVENTS_PER_SECOND = 100.0  # injection events kept for the bus; the rest are counted
EVENT_BACKLOG = 4096
CUT_ERRNO = errno_mod.EIO  # what the mount answers between a cut point and the cut


# The random choices of rules without a seed (percent, jitter, errno lists, corruption,
# short lengths) all come from this one generator, seeded once from the OS: a
# generator of their own, seeded from the OS for every new rule, cost a system call
# and 2.5 KB of state per rule on every sidecar a broadcast reaches. Only the FUSE
# thread draws from it. A rule with a seed gets its own generator (rule_rng), so that
# its choices repeat for the same sequence of operations whatever other rules do.
_UNSEEDED = random.Random()


def rule_rng(rule: FaultRule) -> random.Random:
    """The generator of a rule's random choices: its own, seeded, if the rule has a
    seed (the README's promise: the same choices for the same operations), else the
    shared one."""
    return _UNSEEDED if rule.seed is None else random.Random(rule.seed)


@dataclass(slots=True)
class RuleState:
    """What a rule has done so far; lives as long as the rule."""

    rng: random.Random
    matched: int = 0
    fired: int = 0
    last_fired: float | None = None  # wall clock, for operators
    quota_used: int = 0
    last_cut: dict[str, Any] | None = None  # power-cut: what the last cut did

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "matched": self.matched,
            "fired": self.fired,
            "last_fired": self.last_fired,
            "quota_used": self.quota_used,
        }
        if self.last_cut is not None:
            out["last_cut"] = self.last_cut
        return out


@dataclass(slots=True)
class PowerCut:
    """A cut a power-cut rule asked for: made on the FUSE thread, carried out and
    closed (``FaultEngine.cut_done``) by the bus thread."""

    rule: FaultRule
    method: str
    path: str
    pid: int
    operation: int  # the rule's matching operation that triggered it (1 is the first)
    at: float  # wall clock
    refused: int = 0  # operations answered EIO while the cut was under way
    # The trio task whose operation a cut "after" lets finish: its engine calls in
    # the step that triggered the cut still pass (a setattr asks once per field).
    spared: Any = None


class _SpareUntilStepEnds(trio.abc.Instrument):
    """Ends a cut's exemption of the triggering task once that task yields: by then
    its operation has made its changes, and whatever it asks next is after the cut."""

    def __init__(self, cut: PowerCut) -> None:
        self.cut = cut

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.cut.spared:
            self.cut.spared = None
            trio.lowlevel.remove_instrument(self)


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: int
    rules: tuple[FaultRule, ...] = ()
    by_method: dict[str, tuple[FaultRule, ...]] = field(default_factory=dict)
    quotas: tuple[FaultRule, ...] = ()
    attr_rules: tuple[FaultRule, ...] = ()
    # RE2 patterns that fullmatch "/" + path iff some rule's glob or path regex
    # covers path: a match or a few (linear in the path, whatever the patterns)
    # settle the common case, no rule covers the path, instead of a Python loop
    # over all rules. Several, each joining rules up to a program size, because
    # RE2's fast DFA gives up on one huge join of hostile patterns and falls back
    # to a matcher that is linear but slow (tens of ms for 1024 "*a*a..." globs).
    any_path: tuple[Any, ...] = ()
    # Each glob up to its first wildcard ("" for a path regex, which may match
    # anywhere): a path below a directory that none of them is prefix-compatible
    # with cannot match any rule (see FaultEngine.below).
    prefixes: tuple[str, ...] = ()

    @classmethod
    def build(cls, version: int, rules: tuple[FaultRule, ...]) -> RuleSet:
        # One pass over the rules, each visiting only its own methods (rules keep
        # their order within a method), rather than every method asking every rule.
        lists: dict[str, list[FaultRule]] = {}
        for rule in rules:
            for method in rule.methods or METHODS:
                lists.setdefault(method, []).append(rule)
        by_method = {m: tuple(lists[m]) for m in METHODS if m in lists}
        quotas = tuple(r for r in rules if r.action == "enospc" and not r.dry_run)
        attr_rules = tuple(r for r in rules if r.action == "attr" and not r.dry_run)
        # Each path once, in the rules' order: rules that share paths share joins.
        paths = tuple({r.path_regex.rooted: r.path_regex.size for r in rules}.items())
        any_path = _combine(paths)
        prefixes = tuple(sorted({_reach(r) for r in rules}))
        return cls(version, rules, by_method, quotas, attr_rules, any_path, prefixes)

    def covers(self, path: str) -> bool:
        """False only if no rule's path matches ``path`` (then no rule applies)."""
        return self.covers_encoded(encode(path))

    def covers_encoded(self, data: bytes) -> bool:
        """``covers`` for a path already passed through ``chaosbus.globs.encode``."""
        rooted = b"/" + data
        return any(rx.fullmatch(rooted) is not None for rx in self.any_path)


JOIN_PROGRAM_SIZE = 16_000  # RE2 program size of one join of rules' paths
# Joins kept by the paths they join, the least recently used dropped first: a rule
# recovered and set again, a rule replaced by one with the same path, or a fleet
# command and the desired-state entry that records it give the same paths again,
# and compiling a join is most of what building a rule set costs. Only joins that
# fit one pattern are kept (about a megabyte at most, measured), and only a few:
# a sidecar's memory stays bounded whatever rule sets it is sent.
JOIN_CACHE_SIZE = 8


def _combine(paths: tuple[tuple[str, int], ...]) -> tuple[Any, ...]:
    """RE2 patterns that together cover exactly what the paths cover: each path as
    (RE2 source of "/" + path, its program size), distinct. The compiled patterns
    are only ever matched against, so rule sets may share them."""
    if sum(size for _, size in paths) <= JOIN_PROGRAM_SIZE:
        return _combine_kept(paths)
    return _join(paths)


@functools.lru_cache(maxsize=JOIN_CACHE_SIZE)
def _combine_kept(paths: tuple[tuple[str, int], ...]) -> tuple[Any, ...]:
    return _join(paths)


def _join(paths: tuple[tuple[str, int], ...]) -> tuple[Any, ...]:
    groups: list[list[str]] = []
    total = 0
    for rooted, size in paths:
        if not groups or total + size > JOIN_PROGRAM_SIZE:
            groups.append([])
            total = 0
        groups[-1].append(rooted)
        total += size
    out = []
    for group in groups:
        try:
            out.append(compile_re2("|".join(f"(?:{a})" for a in group)))
        except re2.error:  # two path regexes naming a group alike, say: one by one
            out.extend(compile_re2(a) for a in group)
    return tuple(out)


def _reach(rule: FaultRule) -> str:
    """A prefix of every path the rule can match below the mount root."""
    if rule.regex is not None:
        return ""  # a regex can match anywhere; reading its literal prefix is not worth the risk
    glob = rule.path.strip("/")
    cut = min((i for i in (glob.find(c) for c in "*?[") if i >= 0), default=len(glob))
    return glob[:cut]


class Decision:
    """What to do to one operation. The handler applies it in this order: wait
    ``delay``, fail with ``errno``, then shorten, corrupt or limit the data."""

    __slots__ = ("attrs", "delay", "errno", "mistake", "quota", "short", "wall")

    def __init__(self, wall: Callable[[], float] = SYSTEM_CLOCK.wall) -> None:
        self.wall = wall  # stamps a quota refusal's firing: the engine's wall clock
        self.delay = 0.0
        self.errno = 0
        self.attrs: list[tuple[str, int]] = []
        self.mistake: tuple[FaultRule, RuleState] | None = None
        self.short: tuple[FaultRule, RuleState] | None = None
        self.quota: tuple[FaultRule, RuleState] | None = None

    def corrupt(self, data: bytes) -> bytes:
        """Overwrite 1..max_occurrences runs of 1..max_length bytes; length unchanged."""
        assert self.mistake is not None
        rule, state = self.mistake
        if not data:
            return data
        rng = state.rng
        buf = bytearray(data)
        for _ in range(rng.randint(1, rule.max_occurrences)):
            length = rng.randint(1, min(rule.max_length, len(buf)))
            start = rng.randrange(0, len(buf) - length + 1)
            if rule.filling == "zero":
                buf[start : start + length] = bytes(length)
            else:
                buf[start : start + length] = rng.randbytes(length)
        return bytes(buf)

    def quota_left(self) -> int:
        assert self.quota is not None
        rule, state = self.quota
        return max(0, rule.quota - state.quota_used)

    def charge(self, growth: int, refused: bool) -> None:
        """Account ``growth`` bytes against the quota; a refusal counts as the rule firing."""
        assert self.quota is not None
        _, state = self.quota
        state.quota_used += growth
        if refused:
            state.fired += 1
            state.last_fired = self.wall()

    def shorten(self, size: int) -> int:
        """How many of ``size`` bytes to move: fewer, but never zero (zero means EOF)."""
        assert self.short is not None
        rule, state = self.short
        if size <= 1:
            return size
        if rule.short_bytes is not None:
            return max(1, min(rule.short_bytes, size - 1))
        return state.rng.randint(1, size - 1)


class FaultEngine:
    def __init__(self, table: InodeTable, clock: Clock = SYSTEM_CLOCK) -> None:
        self.table = table
        # Expiry, last_fired and event times are wall-clock time (operators and other
        # machines read them); the event budget refills on monotonic time, which a
        # clock being set cannot stall or flood. The two methods are bound once here:
        # the request path calls them directly, as cheaply as the time module itself.
        self.clock = clock
        self._wall = clock.wall
        self._monotonic = clock.monotonic
        self.rules = RuleSet(0)
        self.state: dict[str, RuleState] = {}
        self.events: collections.deque[tuple] = collections.deque(maxlen=EVENT_BACKLOG)
        # Called (from the FUSE thread) when an event lands in an empty queue, so the
        # bus thread's publisher need not poll; it must never block.
        self.on_first_event: Callable[[], None] | None = None
        self.events_dropped = 0
        self.managed: set[str] = set()  # ids that desired state put here
        self.fired_by: dict[tuple[str, str], int] = {}  # (action, method): for metrics
        self._budget = EVENTS_PER_SECOND
        self._budget_at = self._monotonic()
        # Power-cut rules: allowed on a lazy mount only (the bus side says which), and
        # handed over through on_power_cut, which must never block; it returns whether
        # the cut will be carried out. ``cutting`` is the cut under way, if any.
        self.power_cuts = False
        self.on_power_cut: Callable[[PowerCut], bool] | None = None
        self.cutting: PowerCut | None = None

    # --- trio thread: the request path -------------------------------------------

    def _memo(self, inode: Inode, rules: RuleSet) -> dict[str, Any]:
        """What was worked out about this inode under ``rules`` and the current tree:
        each method's matching rules, "(attr)" and "(below)". Forgotten once the
        rules change or a name moves. The caller passes the rule set it read once,
        as the bus thread may swap in another at any moment."""
        cached = inode.match
        generation = self.table.generation
        if cached is None or cached[0] != rules.version or cached[1] != generation:
            cached = (rules.version, generation, {})
            inode.match = cached
        return cached[2]

    def for_inode(self, method: str, inode: Inode, pid: int = 0, uid: int = 0) -> Decision | None:
        if self.cutting is not None and self._powerless():
            return _dead_disk()
        rules = self.rules
        candidates = rules.by_method.get(method)
        if not candidates:
            return None
        per_method = self._memo(inode, rules)
        hits = per_method.get(method)
        if hits is None:
            if inode.parent is not None and not self.below(inode.parent):
                hits = ()
            elif rules.covers_encoded(data := encode(self.table.path(inode))):
                hits = tuple(r for r in candidates if r.path_regex.hit(data))
            else:
                hits = ()
            per_method[method] = hits
        if not hits:
            return None
        return self._decide(method, hits, pid, uid, inode, None)

    def for_path(
        self, method: str, parent: Inode, name: bytes, pid: int = 0, uid: int = 0
    ) -> Decision | None:
        """For operations on a name that may not have an inode (create, unlink, ...)."""
        if self.cutting is not None and self._powerless():
            return _dead_disk()
        candidates = self.rules.by_method.get(method)
        if not candidates or not self.below(parent):
            return None
        path = self.table.child_path(parent, name)
        data = encode(path)
        if not self.rules.covers_encoded(data):
            return None
        hits = tuple(r for r in candidates if r.path_regex.hit(data))
        return self._decide(method, hits, pid, uid, None, path) if hits else None

    def below(self, directory: Inode) -> bool:
        """Whether some rule's path may match a path below ``directory``.

        Remembered per directory until the rules or the tree change: creating,
        looking up and removing files in a directory no rule reaches then costs a
        dict lookup, not a path built and matched per request.
        """
        rules = self.rules
        memo = self._memo(directory, rules)
        hit = memo.get("(below)")
        if hit is None:
            base = self.table.path(directory)
            base = base + "/" if base else ""
            hit = any(p.startswith(base) or base.startswith(p) for p in rules.prefixes)
            memo["(below)"] = hit
        return bool(hit)

    def reads_faulted(self, inode: Inode) -> bool:
        """Whether reads of this inode must bypass the kernel page cache."""
        candidates = self.rules.by_method.get("read")
        if not candidates:
            return False
        if inode.parent is not None and not self.below(inode.parent):
            return False
        data = encode(self.table.path(inode))
        if not self.rules.covers_encoded(data):
            return False
        return any(r.path_regex.hit(data) for r in candidates)

    def attrs_faulted(self, inode: Inode) -> bool:
        """Whether an attr rule covers this inode, so the kernel must not cache its attributes."""
        rules = self.rules
        memo = self._memo(inode, rules)
        hit = memo.get("(attr)")
        if hit is None:
            data = encode(self.table.path(inode))
            hit = tuple(r for r in rules.attr_rules if r.path_regex.hit(data))
            memo["(attr)"] = hit
        return bool(hit)

    def quota_free(self) -> int | None:
        """Bytes left under the tightest quota in force, for statfs; None if none."""
        quotas = self.rules.quotas
        if not quotas:
            return None
        now = self._wall()
        left = [
            max(0, r.quota - st.quota_used)
            for r in quotas
            if (st := self.state.get(r.id)) is not None
            and (r.expires_at is None or now < r.expires_at)
        ]
        return min(left) if left else None

    def _decide(
        self,
        method: str,
        hits: tuple[FaultRule, ...],
        pid: int,
        uid: int,
        inode: Inode | None,
        path: str | None,
    ) -> Decision | None:
        decision: Decision | None = None
        states = self.state
        now = 0.0
        for rule in hits:
            st = states.get(rule.id)
            if st is None:  # recovered between the snapshot read and now
                continue
            if rule.action == "power-cut" and self.cutting is not None:
                continue  # the operation a cut "after" lets finish: one cut at a time
            if rule.expires_at is not None:
                now = now or self._wall()
                if now >= rule.expires_at:
                    continue
            if rule.caller_filtered and not _caller_matches(rule, pid, uid):
                continue
            st.matched += 1
            if st.matched <= rule.after:
                continue
            if rule.count is not None and st.fired >= rule.count:
                continue  # spent
            if rule.percent < 100 and st.rng.random() * 100 >= rule.percent:
                continue
            if rule.action in ("errno", "mixed") and decision is not None and decision.errno:
                continue  # the first failing rule decides the errno
            if rule.action == "enospc":
                # Only writes past the quota count as fired; the handler knows which.
                if not rule.dry_run and decision is None:
                    decision = Decision()
                if decision is not None and decision.quota is None and not rule.dry_run:
                    decision.quota = (rule, st)
                    decision.wall = self._wall
                continue
            st.fired += 1
            st.last_fired = now or self._wall()
            key = (rule.action, method)
            self.fired_by[key] = self.fired_by.get(key, 0) + 1
            self._record(method, rule, pid, inode, path)
            if rule.dry_run:
                continue
            if rule.action == "power-cut":
                if self._cut(rule, st, method, pid, inode, path) and rule.when == "before":
                    decision = decision or Decision()
                    decision.errno = CUT_ERRNO  # the operation never happens
                continue
            if decision is None:
                decision = Decision()
            _apply(rule, st, decision)
        return decision

    # --- power cuts: the cut point on the FUSE thread, the cut on the bus thread -------

    def _cut(
        self,
        rule: FaultRule,
        st: RuleState,
        method: str,
        pid: int,
        inode: Inode | None,
        path: str | None,
    ) -> bool:
        """Mark the cut point and hand the cut over; bounded work, never blocks."""
        handoff = self.on_power_cut
        if handoff is None or not self.power_cuts:
            return False
        if path is None:
            path = self.table.path(inode) if inode is not None else ""
        cut = PowerCut(rule, method, path, pid, st.matched, self._wall())
        if rule.when == "after":
            with contextlib.suppress(RuntimeError):  # outside trio: nothing to spare
                cut.spared = trio.lowlevel.current_task()
                trio.lowlevel.add_instrument(_SpareUntilStepEnds(cut))
        self.cutting = cut  # from here on the mount is powerless
        try:
            accepted = handoff(cut)
        except Exception:
            accepted = False
        if not accepted:  # nobody can carry it out (the bus loop is gone): no gate either
            self.cutting = None
        return accepted

    def _powerless(self) -> bool:
        """Whether this operation comes after the cut point (then it fails with EIO)."""
        cut = self.cutting
        if cut is None:
            return False
        if cut.spared is not None:
            with contextlib.suppress(RuntimeError):
                if trio.lowlevel.current_task() is cut.spared:
                    return False
        cut.refused += 1
        return True

    def cut_done(self, cut: PowerCut, result: dict[str, Any]) -> None:
        """Bus thread: the cut is over; the mount answers again, and the rule says what
        the cut did. The rule's state is written before the gate opens, so whoever
        sees the result also finds the mount answering."""
        st = self.state.get(cut.rule.id)
        if st is not None:
            st.last_cut = {
                "at": cut.at,
                "method": cut.method,
                "path": cut.path,
                "operation": cut.operation,
                "when": cut.rule.when,
                "refused": cut.refused,
                **result,
            }
        if self.cutting is cut:
            self.cutting = None

    def _record(
        self, method: str, rule: FaultRule, pid: int, inode: Inode | None, path: str | None
    ) -> None:
        """Sample an injection event for the bus, within a rate budget."""
        now = self._monotonic()
        self._budget = min(
            EVENTS_PER_SECOND, self._budget + (now - self._budget_at) * EVENTS_PER_SECOND
        )
        self._budget_at = now
        if self._budget < 1:
            self.events_dropped += 1
            return
        self._budget -= 1
        if path is None:
            path = self.table.path(inode) if inode is not None else ""
        outcome = "dry-run" if rule.dry_run else _outcome(rule)
        if not self.events and self.on_first_event is not None:
            self.on_first_event()
        self.events.append((self._wall(), method, path, pid, rule.id, outcome))

    # --- bus thread: the only writer -----------------------------------------------

    def _publish(self, rules: tuple[FaultRule, ...]) -> RuleSet:
        for rule in rules:
            if rule.id not in self.state:
                self.state[rule.id] = RuleState(rng=rule_rng(rule))
        new = RuleSet.build(self.rules.version + 1, rules)
        self.rules = new
        live = {r.id for r in rules}
        for rule_id in [k for k in self.state if k not in live]:
            del self.state[rule_id]
        return new

    def set_rules(self, incoming: list[FaultRule]) -> list[FaultRule]:
        """Add rules, replacing any with the same id. Returns the rules that changed.

        A rule sent again unchanged keeps its counters (commands and desired state
        often deliver the same rule twice).
        """
        for rule in incoming:
            if rule.action == "power-cut":
                check_cut(rule, self.power_cuts)
        current = {r.id: r for r in self.rules.rules}
        if len(current.keys() | {r.id for r in incoming}) > MAX_RULES:
            raise RuleError(f"a sidecar holds at most {MAX_RULES} rules")
        incoming = [r for r in incoming if current.get(r.id) != r]
        if not incoming:
            return []
        replaced = [current[r.id] for r in incoming if r.id in current]
        for rule in incoming:
            if rule.id in current:
                self.state.pop(rule.id, None)  # a replaced rule starts counting afresh
            current[rule.id] = rule
        self._publish(tuple(current.values()))
        return replaced + incoming

    def converge(self, wanted: list[FaultRule]) -> tuple[list[FaultRule], list[FaultRule]]:
        """Make the rules desired state manages exactly ``wanted``; leave others alone.

        Returns (rules added or changed, rules removed). Power-cut rules are left out
        where the mount is not lazy: a broadcast's set was refused here already.
        """
        wanted = [r for r in wanted if r.action != "power-cut" or _cut_ok(r, self.power_cuts)]
        current = {r.id: r for r in self.rules.rules}
        wanted_ids = {r.id for r in wanted}
        removed = [current[i] for i in sorted(self.managed - wanted_ids) if i in current]
        changed = [r for r in wanted if current.get(r.id) != r]
        self.managed = wanted_ids
        if not changed and not removed:
            return [], []
        for rule in removed:
            del current[rule.id]
        for rule in changed:
            if rule.id in current:
                self.state.pop(rule.id, None)
            current[rule.id] = rule
        if len(current) > MAX_RULES:
            raise RuleError(f"desired state asks for more than {MAX_RULES} rules")
        self._publish(tuple(current.values()))
        return changed, removed

    def recover_id(self, rule_id: str) -> list[FaultRule]:
        gone = [r for r in self.rules.rules if r.id == rule_id]
        if gone:
            self._publish(tuple(r for r in self.rules.rules if r.id != rule_id))
        return gone

    def recover_ids(self, rule_ids: list[str]) -> list[FaultRule]:
        """Drop the rules with these ids, in one rule-set swap; ids not held are no error
        (an experiment's recover reaches every pod it selected, whatever each holds)."""
        wanted = set(rule_ids)
        gone = [r for r in self.rules.rules if r.id in wanted]
        if gone:
            self._publish(tuple(r for r in self.rules.rules if r.id not in wanted))
        return gone

    def recover_all(self) -> list[FaultRule]:
        gone = list(self.rules.rules)
        self._publish(())
        return gone

    def recover_method(self, method: str) -> list[FaultRule]:
        """Chaos Mesh v0.9's RecoverMethod: stop faulting ``method``, keep the rest of each rule."""
        kept: list[FaultRule] = []
        touched: list[FaultRule] = []
        for rule in self.rules.rules:
            if not rule.applies_to(method):
                kept.append(rule)
                continue
            touched.append(rule)
            remaining = (rule.methods or METHOD_SET) - {method}
            if remaining:
                kept.append(dataclasses.replace(rule, methods=frozenset(remaining)))
        self._publish(tuple(kept))
        return touched

    def expire(self, now: float | None = None) -> list[FaultRule]:
        """Drop rules whose expiry has passed (at ``now``, else the engine's clock's
        time); runs on a timer, bus or no bus."""
        if now is None:
            now = self._wall()
        gone = [r for r in self.rules.rules if r.expires_at is not None and now >= r.expires_at]
        if gone:
            ids = {r.id for r in gone}
            self._publish(tuple(r for r in self.rules.rules if r.id not in ids))
        return gone

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for rule in self.rules.rules:
            item = rule.to_wire()
            st = self.state.get(rule.id)
            item["stats"] = (st or RuleState(rng=_UNSEEDED)).to_wire()
            item["spent"] = rule.count is not None and st is not None and st.fired >= rule.count
            out.append(item)
        return out

    def drain_events(self, limit: int) -> list[tuple]:
        out: list[tuple] = []
        while self.events and len(out) < limit:
            out.append(self.events.popleft())
        return out


POWER_CUT_NEEDS_LAZY = (
    "a power-cut rule needs lazy mode (start chaosfs with -lazy): only there is there "
    "unsynced data for a power cut to lose"
)


def check_cut(rule: FaultRule, lazy: bool) -> None:
    """Refuse a power-cut rule this mount cannot carry out, or whose cut is invalid."""
    if not lazy:
        raise RuleError(POWER_CUT_NEEDS_LAZY)
    try:
        parse_lazy(rule.cut_command())
    except CommandError as exc:
        raise RuleError(f"rule {rule.id}: its power cut: {exc}") from None


def _cut_ok(rule: FaultRule, lazy: bool) -> bool:
    try:
        check_cut(rule, lazy)
    except RuleError:
        return False  # refused when it was set on this sidecar, logged and audited
    return True


def _dead_disk() -> Decision:
    decision = Decision()
    decision.errno = CUT_ERRNO
    return decision


def _caller_matches(rule: FaultRule, pid: int, uid: int) -> bool:
    if rule.caller_pid is not None and pid != rule.caller_pid:
        return False
    if rule.caller_uid is not None and uid != rule.caller_uid:
        return False
    return rule.caller_comm is None or process_name(pid) == rule.caller_comm


def process_name(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode(errors="replace")
    except OSError:
        return None


def _apply(rule: FaultRule, st: RuleState, decision: Decision) -> None:
    action = rule.action
    if rule.delay or rule.jitter:
        decision.delay += rule.delay + (st.rng.uniform(0, rule.jitter) if rule.jitter else 0.0)
    if action in ("errno", "mixed"):
        errnos = rule.errnos
        decision.errno = errnos[0] if len(errnos) == 1 else st.rng.choice(errnos)
    elif action == "attr":
        decision.attrs.extend(rule.attrs)
    elif action == "mistake":
        decision.mistake = decision.mistake or (rule, st)
    elif action == "short":
        decision.short = decision.short or (rule, st)


def _outcome(rule: FaultRule) -> str:
    if rule.action in ("errno", "mixed", "enospc") and rule.errnos:
        names = ",".join(errno_mod.errorcode.get(e, str(e)) for e in rule.errnos)
        return f"{rule.action} {names}"
    if rule.action == "latency":
        return f"latency {rule.delay:g}s"
    if rule.action == "power-cut":
        return f"power-cut {rule.when}"
    return rule.action
