"""The fault engine on its own: which rules hit an operation and what they decide.

Every trigger (count, after, percent, seed, dry run, caller filters, methods, paths,
expiry) and every action (errno, latency, mixed, attr, mistake, short, enospc) is
checked on a real directory tree and a real ``InodeTable``, in process, with no
mount: the engine is what the FUSE handlers ask before each operation, so what it
decides here is what an application sees through the mount. The mounted tests
(tests/test_engine.py, tests/test_faults.py) keep checking the kernel's side.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaosbus.rules import MAX_RULES, FaultRule, RuleError
from chaosfs.faults import EVENTS_PER_SECOND, Decision, FaultEngine
from chaosfs.inodes import Inode, InodeTable

FILES = ["db/wal/000.log", "db/data.sst", "db/sub/deep/x.sst", "logs/app.log", "top"]


class Tree:
    """A real directory tree with an inode for every entry, as lookups would make them."""

    def __init__(self, root: Path) -> None:
        for name in FILES:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"")
        self.root = root
        self.table = InodeTable(os.open(root, os.O_PATH | os.O_DIRECTORY))
        self.engine = FaultEngine(self.table)

    def node(self, path: str) -> Inode:
        node = self.table.root
        for part in path.split("/"):
            st = os.stat(part, dir_fd=node.fd, follow_symlinks=False)
            node = self.table.attach(node, part.encode(), st)
        return node

    def set(self, **wire: Any) -> FaultRule:
        rule = FaultRule.from_wire({"id": "r", **wire})
        self.engine.set_rules([rule])
        return rule

    def decide(self, method: str, path: str, pid: int = 0, uid: int = 0) -> Decision | None:
        return self.engine.for_inode(method, self.node(path), pid, uid)

    def stats(self, rule_id: str = "r") -> dict[str, Any]:
        return next(d for d in self.engine.describe() if d["id"] == rule_id)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    t = Tree(tmp_path)
    yield t
    t.table.close_all()


def fired(tree: Tree, n: int, method: str = "read", path: str = "db/data.sst") -> list[bool]:
    return [tree.decide(method, path) is not None for _ in range(n)]


# --- no rule, no decision ---------------------------------------------------------------


def test_without_rules_nothing_is_decided(tree: Tree) -> None:
    assert tree.decide("read", "db/data.sst") is None
    assert tree.engine.for_path("create", tree.table.root, b"new") is None
    assert tree.engine.quota_free() is None
    assert tree.engine.drain_events(10) == []


# --- methods and paths ----------------------------------------------------------------


def test_errno_hits_only_its_methods_and_paths(tree: Tree) -> None:
    tree.set(action="errno", errno="EIO", methods=["read"], path="db/**")
    hit = tree.decide("read", "db/data.sst")
    assert hit is not None and hit.errno == errno.EIO and hit.delay == 0
    assert tree.decide("write", "db/data.sst") is None  # another method
    assert tree.decide("read", "logs/app.log") is None  # another path
    assert tree.decide("read", "top") is None


def test_no_methods_means_every_method(tree: Tree) -> None:
    tree.set(action="errno", errno="EACCES", path="top")
    for method in ("open", "read", "write", "getattr", "fsync", "flush", "truncate", "lookup"):
        decision = tree.decide(method, "top")
        assert decision is not None and decision.errno == errno.EACCES, method


@pytest.mark.parametrize(
    ("glob", "hit", "missed"),
    [
        ("db/*", ["db/data.sst", "db/wal", "db/sub"], ["db/wal/000.log", "db", "top"]),
        ("db/**", ["db", "db/data.sst", "db/wal/000.log", "db/sub/deep/x.sst"], ["top", "logs"]),
        ("**/*.sst", ["db/data.sst", "db/sub/deep/x.sst"], ["db/wal/000.log", "top"]),
        ("*", ["top", "db", "logs"], ["db/data.sst", "logs/app.log"]),
        ("**", ["top", "db/sub/deep/x.sst", "logs/app.log"], []),
        ("db/wal/00?.log", ["db/wal/000.log"], ["db/wal", "db/data.sst"]),
    ],
)
def test_globs_within_and_across_directories(
    tree: Tree, glob: str, hit: list[str], missed: list[str]
) -> None:
    tree.set(action="errno", errno="EIO", methods=["getattr"], path=glob)
    for path in hit:
        assert tree.decide("getattr", path) is not None, path
    for path in missed:
        assert tree.decide("getattr", path) is None, path


def test_a_path_regex_is_searched_in_the_rooted_path(tree: Tree) -> None:
    tree.set(action="errno", errno="EIO", methods=["read"], path_regex=r"\.sst$")
    assert tree.decide("read", "db/sub/deep/x.sst") is not None
    assert tree.decide("read", "db/wal/000.log") is None


def test_names_not_yet_made_are_matched_by_path(tree: Tree) -> None:
    """create, mkdir, unlink and rename are decided on the name in its directory."""
    tree.set(action="errno", errno="EROFS", methods=["create", "unlink"], path="db/wal/*.log")
    wal = tree.node("db/wal")
    created = tree.engine.for_path("create", wal, b"001.log")
    assert created is not None and created.errno == errno.EROFS
    assert tree.engine.for_path("create", wal, b"001.tmp") is None
    assert tree.engine.for_path("mkdir", wal, b"001.log") is None  # not its method
    assert tree.engine.for_path("create", tree.node("logs"), b"001.log") is None


def test_a_moved_file_is_matched_by_its_new_name(tree: Tree) -> None:
    tree.set(action="errno", errno="EIO", methods=["read"], path="logs/**")
    node = tree.node("db/data.sst")
    assert tree.engine.for_inode("read", node) is None
    os.rename(tree.root / "db/data.sst", tree.root / "logs/data.sst")
    tree.table.moved(node, tree.node("logs"), b"data.sst")
    assert tree.engine.for_inode("read", node) is not None


# --- triggers ---------------------------------------------------------------------------


def test_count_fires_that_many_times_then_the_rule_is_spent(tree: Tree) -> None:
    tree.set(action="errno", errno="EIO", methods=["read"], count=3)
    assert fired(tree, 6) == [True, True, True, False, False, False]
    stats = tree.stats()
    assert stats["spent"] is True
    assert stats["stats"]["fired"] == 3 and stats["stats"]["matched"] == 6


def test_after_lets_the_first_matches_pass(tree: Tree) -> None:
    tree.set(action="errno", errno="EIO", methods=["read"], after=2)
    assert fired(tree, 5) == [False, False, True, True, True]


def test_after_and_count_together_make_a_window(tree: Tree) -> None:
    tree.set(action="errno", errno="EIO", methods=["read"], after=1, count=2)
    assert fired(tree, 5) == [False, True, True, False, False]


def test_percent_zero_never_fires_but_counts_the_matches(tree: Tree) -> None:
    tree.set(action="errno", errno="EIO", methods=["read"], percent=0)
    assert not any(fired(tree, 50))
    assert tree.stats()["stats"] == {
        "matched": 50,
        "fired": 0,
        "last_fired": None,
        "quota_used": 0,
    }


def test_percent_hits_about_that_share_and_a_seed_repeats_it(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        tree = Tree(tmp_path / name)
        tree.set(action="errno", errno="EIO", methods=["read"], percent=30, seed=7)
        runs.append(fired(tree, 2000))
        tree.table.close_all()
    assert runs[0] == runs[1]  # the same seed, the same operations: the same hits
    assert 450 <= sum(runs[0]) <= 750  # 30% of 2000 is 600; far outside is a broken draw


def test_a_seed_repeats_the_choice_among_errnos_and_another_seed_differs(tmp_path: Path) -> None:
    def errnos(seed: int, where: str) -> list[int]:
        tree = Tree(tmp_path / where)
        tree.set(action="errno", errno=["EIO", "ENOSPC", "EPERM"], methods=["write"], seed=seed)
        out = []
        for _ in range(60):
            decision = tree.decide("write", "top")
            assert decision is not None
            out.append(decision.errno)
        tree.table.close_all()
        return out

    first, again, other = errnos(1, "a"), errnos(1, "b"), errnos(2, "c")
    assert first == again
    assert first != other
    assert set(first) == {errno.EIO, errno.ENOSPC, errno.EPERM}


def test_dry_run_injects_nothing_but_counts_and_reports(tree: Tree) -> None:
    tree.set(action="errno", errno="EIO", methods=["read"], dry_run=True, count=2)
    assert not any(fired(tree, 4))
    assert tree.stats()["stats"]["fired"] == 2  # what would have happened, counted
    events = tree.engine.drain_events(10)
    assert [(e[1], e[2], e[4], e[5]) for e in events] == [
        ("read", "db/data.sst", "r", "dry-run"),
        ("read", "db/data.sst", "r", "dry-run"),
    ]


def test_caller_pid_and_uid_pick_the_callers_operations(tree: Tree) -> None:
    tree.set(action="errno", errno="EIO", methods=["read"], caller_pid=4242, caller_uid=1000)
    assert tree.decide("read", "top", pid=4242, uid=1000) is not None
    assert tree.decide("read", "top", pid=4242, uid=0) is None
    assert tree.decide("read", "top", pid=1, uid=1000) is None
    # Operations of other callers are not even matches: after and count are theirs alone.
    assert tree.stats()["stats"]["matched"] == 1


def test_caller_comm_is_the_process_name_the_kernel_keeps(tree: Tree) -> None:
    me = os.getpid()
    comm = Path(f"/proc/{me}/comm").read_text().rstrip("\n")
    tree.set(action="errno", errno="EIO", methods=["read"], caller_comm=comm)
    assert tree.decide("read", "top", pid=me) is not None
    tree.set(action="errno", errno="EIO", methods=["read"], caller_comm="not-" + comm[:10])
    assert tree.decide("read", "top", pid=me) is None


def test_an_expired_rule_stops_at_once_and_expire_drops_it(tree: Tree) -> None:
    now = time.time()
    past = FaultRule.from_wire(
        {"id": "past", "action": "errno", "errno": "EIO", "methods": ["read"], "ttl": 1},
        now=now - 10,
    )
    future = FaultRule.from_wire(
        {"id": "future", "action": "errno", "errno": "EPERM", "methods": ["read"], "ttl": 3600},
        now=now,
    )
    tree.engine.set_rules([past, future])
    decision = tree.decide("read", "top")
    assert decision is not None and decision.errno == errno.EPERM  # past no longer fires
    assert tree.engine.expire(now) == [past]
    assert [r.id for r in tree.engine.rules.rules] == ["future"]
    assert tree.engine.expire(now + 3599) == []
    assert tree.engine.expire(now + 3600) == [future]
    assert tree.decide("read", "top") is None


def test_the_first_failing_rule_decides_the_errno_and_delays_add_up(tree: Tree) -> None:
    rules = [
        FaultRule.from_wire({"id": "a", "action": "mixed", "errno": "EIO", "delay": 0.5}),
        FaultRule.from_wire({"id": "b", "action": "errno", "errno": "EPERM"}),
        FaultRule.from_wire({"id": "c", "action": "latency", "delay": 0.25}),
    ]
    tree.engine.set_rules(rules)
    decision = tree.decide("read", "top")
    assert decision is not None
    assert decision.errno == errno.EIO
    assert decision.delay == pytest.approx(0.75)
    assert tree.stats("b")["stats"]["fired"] == 0  # it had nothing left to decide


# --- actions ---------------------------------------------------------------------------


def test_latency_waits_at_least_the_delay_plus_a_seeded_jitter(tmp_path: Path) -> None:
    def delays(where: str) -> list[float]:
        tree = Tree(tmp_path / where)
        tree.set(action="latency", delay=0.1, jitter=0.05, methods=["read"], seed=3)
        out = []
        for _ in range(30):
            decision = tree.decide("read", "top")
            assert decision is not None and decision.errno == 0
            out.append(decision.delay)
        tree.table.close_all()
        return out

    first = delays("a")
    assert all(0.1 <= d <= 0.15 for d in first)
    assert len(set(first)) > 1  # the jitter varies
    assert delays("b") == first


def test_attr_lists_the_overrides(tree: Tree) -> None:
    tree.set(action="attr", attr={"size": 7, "uid": 1234}, path="top")
    node = tree.node("top")
    decision = tree.engine.for_inode("getattr", node)
    assert decision is not None and sorted(decision.attrs) == [("size", 7), ("uid", 1234)]
    assert tree.engine.attrs_faulted(node)
    assert not tree.engine.attrs_faulted(tree.node("logs/app.log"))
    assert tree.engine.for_inode("read", node) is None  # attr applies to getattr and lookup


@pytest.mark.parametrize("filling", ["zero", "random"])
def test_mistake_corrupts_runs_of_bytes_and_keeps_the_length(tree: Tree, filling: str) -> None:
    tree.set(action="mistake", filling=filling, max_occurrences=3, max_length=4, seed=11)
    original = bytes(range(1, 200))
    for _ in range(50):
        decision = tree.decide("read", "top")
        assert decision is not None and decision.mistake is not None
        data = decision.corrupt(original)
        changed = [i for i, (a, b) in enumerate(zip(data, original, strict=True)) if a != b]
        assert len(data) == len(original)
        assert len(changed) <= 3 * 4
        if filling == "zero":
            assert changed and all(data[i] == 0 for i in changed)
    assert decision.corrupt(b"") == b""


def test_short_moves_fewer_bytes_never_zero(tree: Tree) -> None:
    tree.set(action="short", seed=5)
    for _ in range(50):
        decision = tree.decide("write", "top")
        assert decision is not None and decision.short is not None
        assert 1 <= decision.shorten(100) <= 99
        assert decision.shorten(1) == 1  # one byte cannot be shortened without reading as EOF
    tree.set(action="short", short_bytes=10)
    decision = tree.decide("read", "top")
    assert decision is not None
    assert decision.shorten(100) == 10 and decision.shorten(5) == 4


def test_enospc_is_a_quota_charged_by_the_handler(tree: Tree) -> None:
    tree.set(action="enospc", quota=100, path="db/**")
    decision = tree.decide("write", "db/data.sst")
    assert decision is not None and decision.quota is not None and decision.errno == 0
    assert decision.quota_left() == 100 and tree.engine.quota_free() == 100
    decision.charge(60, refused=False)
    assert tree.engine.quota_free() == 40
    assert tree.stats()["stats"]["fired"] == 0  # growth within the quota is no fault
    again = tree.decide("truncate", "db/data.sst")
    assert again is not None and again.quota_left() == 40
    again.charge(0, refused=True)
    assert tree.stats()["stats"]["fired"] == 1
    assert tree.decide("write", "logs/app.log") is None


def test_a_dry_run_quota_is_not_enforced(tree: Tree) -> None:
    tree.set(action="enospc", quota=1, dry_run=True)
    assert tree.decide("write", "top") is None
    assert tree.engine.quota_free() is None


def test_reads_faulted_says_when_the_page_cache_must_be_bypassed(tree: Tree) -> None:
    tree.set(action="errno", errno="EIO", methods=["read"], path="db/**")
    assert tree.engine.reads_faulted(tree.node("db/data.sst"))
    assert not tree.engine.reads_faulted(tree.node("top"))
    tree.set(action="errno", errno="EIO", methods=["write"], path="db/**")
    assert not tree.engine.reads_faulted(tree.node("db/data.sst"))


# --- the rule set: set, replace, recover, converge ------------------------------------------


def test_a_rule_sent_again_unchanged_keeps_its_counters_a_changed_one_restarts(
    tree: Tree,
) -> None:
    rule = tree.set(action="errno", errno="EIO", methods=["read"], count=2)
    fired(tree, 3)
    assert tree.engine.set_rules([rule]) == []
    assert tree.stats()["stats"]["fired"] == 2
    changed = FaultRule.from_wire({**rule.to_wire(), "count": 5})
    assert tree.engine.set_rules([changed]) == [rule, changed]
    assert tree.stats()["stats"]["fired"] == 0
    assert fired(tree, 6) == [True] * 5 + [False]


def test_a_new_rule_set_takes_effect_on_the_next_operation(tree: Tree) -> None:
    node = tree.node("top")
    assert tree.engine.for_inode("read", node) is None  # remembered: no rule here
    tree.set(action="errno", errno="EIO", methods=["read"], path="top")
    assert tree.engine.for_inode("read", node) is not None
    tree.engine.recover_all()
    assert tree.engine.for_inode("read", node) is None


def test_at_most_max_rules(tree: Tree) -> None:
    rules = [
        FaultRule.from_wire({"id": f"r{i}", "action": "latency", "delay": 1})
        for i in range(MAX_RULES)
    ]
    tree.engine.set_rules(rules)
    extra = FaultRule.from_wire({"id": "one-more", "action": "latency", "delay": 1})
    with pytest.raises(RuleError, match=f"at most {MAX_RULES} rules"):
        tree.engine.set_rules([extra])
    assert len(tree.engine.rules.rules) == MAX_RULES


def test_recover_by_id_ids_and_all(tree: Tree) -> None:
    rules = [FaultRule.from_wire({"id": i, "action": "errno", "errno": "EIO"}) for i in "abcd"]
    tree.engine.set_rules(rules)
    assert tree.engine.recover_id("a") == [rules[0]]
    assert tree.engine.recover_id("a") == []
    assert tree.engine.recover_ids(["b", "nope", "c"]) == [rules[1], rules[2]]
    assert [r.id for r in tree.engine.rules.rules] == ["d"]
    assert tree.engine.recover_all() == [rules[3]]
    assert tree.engine.rules.rules == () and tree.engine.state == {}


def test_recover_method_keeps_the_rest_of_each_rule(tree: Tree) -> None:
    both = FaultRule.from_wire(
        {"id": "both", "action": "errno", "errno": "EIO", "methods": ["read", "write"]}
    )
    only = FaultRule.from_wire(
        {"id": "only", "action": "errno", "errno": "EIO", "methods": ["read"]}
    )
    every = FaultRule.from_wire({"id": "every", "action": "latency", "delay": 1})
    tree.engine.set_rules([both, only, every])
    assert tree.engine.recover_method("read") == [both, only, every]
    kept = {r.id: r.methods for r in tree.engine.rules.rules}
    assert kept["both"] == {"write"}
    assert "only" not in kept
    assert "read" not in kept["every"] and "write" in kept["every"]
    assert tree.decide("read", "top") is None
    decision = tree.decide("write", "top")
    assert decision is not None and decision.errno == errno.EIO and decision.delay == 1


def test_converge_manages_only_the_rules_desired_state_put_there(tree: Tree) -> None:
    def rule(rule_id: str, delay: float = 1) -> FaultRule:
        return FaultRule.from_wire({"id": rule_id, "action": "latency", "delay": delay})

    own = rule("by-hand")
    tree.engine.set_rules([own])
    assert tree.engine.converge([rule("d1"), rule("d2")]) == ([rule("d1"), rule("d2")], [])
    assert tree.engine.converge([rule("d1"), rule("d2")]) == ([], [])
    changed, removed = tree.engine.converge([rule("d2", delay=2)])
    assert changed == [rule("d2", delay=2)] and removed == [rule("d1")]
    assert sorted(r.id for r in tree.engine.rules.rules) == ["by-hand", "d2"]
    assert tree.engine.managed == {"d2"}


# --- injection events --------------------------------------------------------------------


def test_events_name_the_operation_and_wake_the_publisher_once(tree: Tree) -> None:
    woken: list[int] = []
    tree.engine.on_first_event = lambda: woken.append(1)
    tree.set(action="errno", errno=["EIO", "EPERM"], methods=["read", "unlink"], path="db/**")
    tree.decide("read", "db/data.sst", pid=99)
    tree.engine.for_path("unlink", tree.node("db"), b"gone", 98)
    assert woken == [1]  # the queue was empty only before the first
    events = tree.engine.drain_events(10)
    assert [(e[1], e[2], e[3], e[4], e[5]) for e in events] == [
        ("read", "db/data.sst", 99, "r", "errno EIO,EPERM"),
        ("unlink", "db/gone", 98, "r", "errno EIO,EPERM"),
    ]
    assert tree.engine.fired_by == {("errno", "read"): 1, ("errno", "unlink"): 1}


def test_a_burst_of_faults_is_sampled_not_queued_without_bound(tree: Tree) -> None:
    tree.set(action="latency", delay=0.001, methods=["read"])
    burst = 10 * int(EVENTS_PER_SECOND)
    assert all(fired(tree, burst))
    kept = len(tree.engine.drain_events(burst))
    assert kept + tree.engine.events_dropped == burst
    assert tree.engine.events_dropped > 0
    assert tree.stats()["stats"]["fired"] == burst  # the counters still see every fault


def test_random_errno_rules_draw_from_the_documented_set(tree: Tree) -> None:
    tree.set(action="errno", errno="random", methods=["read"], seed=9)
    seen = set()
    for _ in range(200):
        decision = tree.decide("read", "top")
        assert decision is not None
        seen.add(decision.errno)
    assert len(seen) > 1 and 0 not in seen
