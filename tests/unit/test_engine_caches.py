"""The control plane's caches change nothing but speed: desired state computed with its
memo equals the plain computation, the rule set's per-method index equals a scan of the
rules, and a seeded rule repeats its choices whatever unseeded rules draw."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from chaosbus import desired
from chaosbus.rules import METHODS, FaultRule
from chaosfs.faults import FaultEngine, RuleSet
from chaosfs.inodes import InodeTable

PATHS = ["**", "*.sst", "a/**", "[", "x/**/y", "**/**/z"]
TARGETS = [
    None,
    {"namespaces": ["ns"]},
    {"namespaces": ["other"]},
    {"pods": "p-*"},
    {"bogus": 1},
    {"selector": "app=db"},
]


def _wire(rng: random.Random) -> dict:
    wire = {
        "id": f"r{rng.randrange(8)}",
        "action": rng.choice(["errno", "latency", "bad"]),
        "path": rng.choice(PATHS),
    }
    if wire["action"] == "errno":
        wire["errno"] = "EIO"
    if wire["action"] == "latency":
        wire["delay"] = 0.01
    if rng.random() < 0.2:
        wire["ttl"] = 5
    if rng.random() < 0.3:
        wire["methods"] = rng.sample(["read", "write", "open", "getattr"], 2)
    return wire


@pytest.mark.parametrize("seed", [5, 11])
def test_desired_state_with_its_memo_equals_the_plain_computation(seed: int) -> None:
    rng = random.Random(seed)
    memo = desired.Memo()
    fleet: dict = {}
    pod: dict = {}
    for step in range(1500):
        table = fleet if rng.random() < 0.6 else pod
        key = f"r{rng.randrange(8)}"
        if rng.random() < 0.25:
            table.pop(key, None)
        else:
            rule = None if rng.random() < 0.1 else _wire(rng)
            table[key] = desired.Entry(rule, rng.choice(TARGETS), "a", 0.0)
        labels = {"app": "db"} if step % 500 < 250 else {}
        memoized = desired.compute(fleet, pod, "ns", "p-1", labels, 1000.0, None, memo=memo)
        plain = desired.compute(fleet, pod, "ns", "p-1", labels, 1000.0, None)
        assert memoized == plain, step
        assert [r.path_regex.rooted for r in memoized] == [r.path_regex.rooted for r in plain]


def test_the_per_method_index_equals_a_scan_of_the_rules() -> None:
    rng = random.Random(3)
    usable = [p for p in PATHS if p != "["]
    for _ in range(200):
        rules = tuple(
            FaultRule.from_wire(
                {
                    "id": f"x{i}",
                    "action": "errno",
                    "errno": "EIO",
                    "path": rng.choice(usable),
                    **(
                        {"methods": rng.sample(list(METHODS), rng.randrange(1, 5))}
                        if rng.random() < 0.7
                        else {}
                    ),
                }
            )
            for i in range(rng.randrange(0, 12))
        )
        built = RuleSet.build(1, rules)
        scanned = {m: tuple(r for r in rules if r.applies_to(m)) for m in METHODS}
        scanned = {m: v for m, v in scanned.items() if v}
        assert built.by_method == scanned and list(built.by_method) == list(scanned)
        for path in ["a", "a/b.sst", "x/q/y", "z", ""]:
            assert built.covers(path) == any(r.path_regex.match(path) for r in rules)


def test_a_seeded_rule_repeats_whatever_unseeded_rules_draw(tmp_path: Path) -> None:
    rng = random.Random(1)

    def choices(seed: int) -> list[float]:
        engine = FaultEngine(InodeTable(os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)))
        other = FaultRule.from_wire({"id": "o", "action": "errno", "errno": "EIO", "percent": 50})
        seeded = FaultRule.from_wire(
            {"id": "s", "action": "latency", "delay": 0.001, "jitter": 1, "percent": 50}
            | {"seed": seed}
        )
        engine.set_rules([other, seeded])
        for _ in range(rng.randrange(50)):
            engine.state["o"].rng.random()  # the unseeded rule draws in between
        return [engine.state["s"].rng.random() for _ in range(5)]

    assert choices(7) == choices(7) != choices(8)
