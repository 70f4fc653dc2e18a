"""What the sidecar does with a command before and after the fault engine: the checks
a ``set`` or ``recover`` command passes (``chaosbus.protocol``), every rule field's
validation with the sentence an operator reads (``FaultRule.from_wire``), the reply
cut to the bus's payload limit, and the engine changes a command makes.

chaosfs's command handler (services/chaosfs/commands.py) runs these; it is called
directly in test_command_handler.py, and its bus transport (services/chaosfs/control.py)
is tested with a real nats-server in the system tests.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Any

import pytest

from chaosbus import codec
from chaosbus.protocol import (
    PROTOCOL_VERSION,
    CommandError,
    error,
    fit,
    ok,
    parse_recover,
    parse_rules,
)
from chaosbus.rules import MAX_RULES, MAX_TTL_SECONDS, METHODS, FaultRule, RuleError
from chaosfs.faults import FaultEngine
from chaosfs.inodes import InodeTable


def errno_rule(rule_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": rule_id, "action": "errno", "errno": "EIO", **fields}


# --- set ---------------------------------------------------------------------------------


def test_set_returns_the_rules_in_order() -> None:
    rules = parse_rules({"op": "set", "actor": "me", "rules": [errno_rule("a"), errno_rule("b")]})
    assert [r.id for r in rules] == ["a", "b"]


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ({"op": "set"}, "set needs a non-empty list of rules"),
        ({"op": "set", "rules": []}, "set needs a non-empty list of rules"),
        ({"op": "set", "rules": {"id": "a"}}, "set needs a non-empty list of rules"),
        (
            {"op": "set", "rules": [errno_rule("a")] * (MAX_RULES + 1)},
            f"at most {MAX_RULES} rules per command",
        ),
        (
            {"op": "set", "rules": [errno_rule("a"), {"action": "nope"}]},
            "rule 1: action must be one of",
        ),
        (
            {"op": "set", "rules": [errno_rule("a"), errno_rule("a")]},
            "rule ids within one command must be unique",
        ),
        ({"op": "set", "rules": [errno_rule("a")], "id": "a"}, "unknown field(s) for op 'set': id"),
    ],
)
def test_bad_set_commands_are_refused_with_a_sentence(command: dict, reason: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_rules(command)
    assert reason in str(info.value)


# --- recover -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "parsed"),
    [
        ({"op": "recover", "all": True}, ("all", None)),
        ({"op": "recover", "id": "r1"}, ("id", "r1")),
        ({"op": "recover", "method": "write"}, ("method", "write")),
        ({"op": "recover", "ids": ["b", "a", "b"]}, ("ids", ["b", "a"])),
    ],
)
def test_recover_forms(command: dict, parsed: tuple) -> None:
    assert parse_recover(command) == parsed


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ({"op": "recover"}, "exactly one of id, ids, method or all"),
        ({"op": "recover", "id": "a", "all": True}, "exactly one of id, ids, method or all"),
        ({"op": "recover", "all": 1}, "recover all must be true"),
        ({"op": "recover", "id": ""}, "recover id must be a non-empty string"),
        ({"op": "recover", "method": "reed"}, "unknown method 'reed'"),
        ({"op": "recover", "ids": []}, "non-empty list of rule ids"),
        ({"op": "recover", "ids": ["ok", "not ok"]}, "'not ok' is not a rule id"),
        ({"op": "recover", "all": True, "path": "x"}, "unknown field(s) for op 'recover': path"),
    ],
)
def test_bad_recover_commands_are_refused(command: dict, reason: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_recover(command)
    assert reason in str(info.value)


# --- the engine changes a command makes ---------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> FaultEngine:
    table = InodeTable(os.open(tmp_path, os.O_PATH | os.O_DIRECTORY))
    return FaultEngine(table)


def test_set_then_recover_by_each_form(engine: FaultEngine) -> None:
    """What control.py does for set and recover, step by step, on a real engine."""
    set_command = {
        "op": "set",
        "rules": [
            errno_rule("a", methods=["read", "write"]),
            errno_rule("b"),
            errno_rule("c", methods=["read"]),
        ],
    }
    changed = engine.set_rules(parse_rules(set_command))
    assert [r.id for r in changed] == ["a", "b", "c"]

    how, value = parse_recover({"op": "recover", "method": "read"})
    assert how == "method"
    assert [r.id for r in engine.recover_method(value)] == ["a", "b", "c"]
    assert {r.id: sorted(r.methods) for r in engine.rules.rules} == {
        "a": ["write"],
        "b": sorted(set(METHODS) - {"read"}),
    }
    _, ids = parse_recover({"op": "recover", "ids": ["a", "never-set"]})
    assert [r.id for r in engine.recover_ids(ids)] == ["a"]
    assert [r.id for r in engine.recover_all()] == ["b"]


def test_a_ttl_becomes_an_expiry_from_the_time_the_rule_arrives(engine: FaultEngine) -> None:
    rule = FaultRule.from_wire(errno_rule("t", ttl=30), now=1_000_000.0)
    assert rule.expires_at == 1_000_030.0
    engine.set_rules([rule])
    assert engine.expire(1_000_029.9) == []
    assert engine.expire(1_000_030.0) == [rule]


def test_status_describes_each_rule_with_its_counters(engine: FaultEngine) -> None:
    engine.set_rules(parse_rules({"op": "set", "rules": [errno_rule("a", count=1)]}))
    [item] = engine.describe()
    assert item["id"] == "a" and item["errno"] == ["EIO"] and item["count"] == 1
    assert item["stats"] == {"matched": 0, "fired": 0, "last_fired": None, "quota_used": 0}
    assert item["spent"] is False
    assert codec.decode(codec.encode({"rules": engine.describe()}))  # it travels on the bus


# --- replies ---------------------------------------------------------------------------------


def test_reply_shapes() -> None:
    assert ok("ns/p", rules=[]) == {"ok": True, "pod": "ns/p", "v": PROTOCOL_VERSION, "rules": []}
    assert error("ns/p", "why") == {
        "ok": False,
        "pod": "ns/p",
        "v": PROTOCOL_VERSION,
        "error": "why",
    }


def test_a_reply_that_fits_is_sent_as_it_is() -> None:
    reply = ok("ns/p", rules=[{"id": "a"}])
    assert codec.decode(fit(reply, 4096)) == reply


def test_a_status_too_big_for_the_bus_is_cut_and_says_how_many_rules_it_left_out() -> None:
    rules = [{"id": f"rule-{i}", "path": "x" * 200} for i in range(1000)]
    reply = ok("ns/p", rules=rules)
    limit = 64 * 1024
    data = fit(reply, limit)
    assert len(data) <= limit
    cut = codec.decode(data, limit=1 << 24)
    kept = len(cut["rules"])
    assert 0 < kept < 1000 and cut["rules_omitted"] == 1000 - kept
    assert cut["rules"] == rules[:kept]
    # As many as fit: one more would not.
    one_more = {**reply, "rules": rules[: kept + 1], "rules_omitted": 999 - kept}
    assert len(codec.encode(one_more)) > limit


def test_a_reply_that_cannot_be_cut_becomes_an_error_saying_so() -> None:
    data = fit(ok("ns/p", note="x" * 10_000), 1000)
    reply = codec.decode(data)
    assert (
        reply["ok"] is False and "exceeds the bus's payload limit of 1000 bytes" in reply["error"]
    )


# --- every rule field, checked --------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ({"action": "errno"}, "action errno needs an errno"),
        ({"action": "errno", "errno": "ENOTANERRNO"}, "ENOTANERRNO"),
        ({"action": "latency"}, "action latency needs a delay"),
        ({"action": "latency", "delay": 0, "jitter": 0}, "a latency needs a delay or jitter"),
        ({"action": "mixed", "errno": "EIO"}, "action mixed needs a delay"),
        ({"action": "attr", "attr": {"size": 1}, "methods": ["read"]}, "cannot apply to read"),
        ({"action": "attr", "attr": {"kind": "dir"}, "methods": ["getattr"]}, "lookup method"),
        ({"action": "mistake", "filling": "ones"}, "filling must be zero or random"),
        ({"action": "mistake", "max_length": 0}, "max_length"),
        ({"action": "short", "methods": ["open"]}, "cannot apply to open"),
        ({"action": "enospc"}, "needs a quota"),
        ({"action": "enospc", "quota": 1, "errno": "EIO"}, "ENOSPC or EDQUOT only"),
        ({"action": "errno", "errno": "EIO", "quota": 1}, "quota only applies to the enospc"),
        ({"action": "errno", "errno": "EIO", "filling": "zero"}, "filling only applies"),
        ({"action": "errno", "errno": "EIO", "percent": 101}, "percent must be from 0 to 100"),
        ({"action": "errno", "errno": "EIO", "count": 0}, "count"),
        ({"action": "errno", "errno": "EIO", "after": -1}, "after"),
        ({"action": "errno", "errno": "EIO", "ttl": 0}, "ttl must be a positive"),
        ({"action": "errno", "errno": "EIO", "ttl": MAX_TTL_SECONDS + 1}, "ttl may be at most"),
        ({"action": "errno", "errno": "EIO", "ttl": 5, "expires_at": 9e9}, "either ttl or"),
        ({"action": "errno", "errno": "EIO", "expires_at": -1}, "seconds since the epoch"),
        ({"action": "errno", "errno": "EIO", "caller_comm": "x" * 16}, "1-15 characters"),
        ({"action": "errno", "errno": "EIO", "caller_comm": "a/b"}, "caller_comm"),
        ({"action": "errno", "errno": "EIO", "caller_pid": -1}, "caller_pid"),
        ({"action": "errno", "errno": "EIO", "seed": 2**63}, "seed"),
        ({"action": "errno", "errno": "EIO", "dry_run": "yes"}, "dry_run must be true or false"),
        ({"action": "errno", "errno": "EIO", "methods": ["reed"]}, "reed"),
        ({"action": "errno", "errno": "EIO", "path": "a", "path_regex": "a"}, "not both"),
        ({"action": "errno", "errno": "EIO", "nonsense": 1}, "unknown rule field(s): nonsense"),
        ({"action": "errno", "errno": "EIO", "delay": math.nan}, "delay only applies"),
    ],
)
def test_each_rule_field_is_checked_with_a_reason(wire: dict, reason: str) -> None:
    with pytest.raises(RuleError) as info:
        FaultRule.from_wire(wire)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)  # one line, for chaosctl to print


@pytest.mark.parametrize(
    "wire",
    [
        {"action": "errno", "errno": ["EIO", "ENOSPC"], "count": 3, "after": 2, "seed": 1},
        {"action": "latency", "delay": 0.5, "jitter": 0.1, "methods": ["fsync"], "percent": 12.5},
        {"action": "mixed", "errno": 5, "delay": 1, "caller_pid": 10, "caller_uid": 0},
        {
            "action": "attr",
            "attr": {"size": 1, "mode": 0o600, "kind": "dir"},
            "methods": ["lookup"],
        },
        {"action": "mistake", "filling": "random", "max_occurrences": 3, "max_length": 9},
        {"action": "short", "short_bytes": 7, "caller_comm": "postgres"},
        {"action": "enospc", "quota": 4096, "errno": "EDQUOT", "path": "db/**"},
        {"action": "errno", "errno": "EIO", "path_regex": r"\.sst$", "dry_run": True},
        {"action": "errno", "errno": "EIO", "expires_at": 2e9},
    ],
)
def test_every_rule_survives_the_trip_to_the_sidecar_and_back(wire: dict) -> None:
    rule = FaultRule.from_wire({"id": "r", **wire})
    assert FaultRule.from_wire(codec.decode(codec.encode(rule.to_wire()))) == rule


def test_errno_names_numbers_and_random() -> None:
    assert FaultRule.from_wire(errno_rule("a", errno="eio")).errnos == (errno.EIO,)
    assert FaultRule.from_wire(errno_rule("a", errno=28)).errnos == (errno.ENOSPC,)
    randoms = FaultRule.from_wire(errno_rule("a", errno="random")).errnos
    assert len(randoms) > 1 and errno.EIO in randoms
