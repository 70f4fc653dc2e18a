"""The sidecar's command handler (services/chaosfs/commands.py), called directly.

No bus, no mount: each test builds a fault engine over a scratch directory, a clock
that moves only when told, and the bytes of a command as chaosctl would send them,
and reads what the handler answers, records and asks the control plane to do.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from chaosbus import codec, protocol, wire
from chaosbus.clock import ManualClock
from chaosbus.globs import PathPattern
from chaosctl import output
from chaosfs import commands
from chaosfs.commands import HANDLERS, LAZY_OFF, Invalidation, Outcome, Sidecar, handle
from chaosfs.config import Config
from chaosfs.faults import FaultEngine
from chaosfs.inodes import InodeTable

WALL = 1_700_000_000.0
MONOTONIC = 5_000.0


def config(**fields: Any) -> Config:
    values: dict[str, Any] = {
        "original": "/data/real",
        "mountpoint": "/data/app",
        "pidfile": None,
        "nats_url": "nats://127.0.0.1:4222",
        "namespace": "db",
        "pod": "pg-0",
        "cache_timeout": 5.0,
        "heartbeat": 5.0,
        "log_level": "info",
        "ignored_addr": None,
        "labels": {"app": "pg", "tier": "db"},
    }
    return Config(**{**values, **fields})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall=WALL, monotonic=MONOTONIC)


@pytest.fixture
def engine(tmp_path: Path, clock: ManualClock) -> Iterator[FaultEngine]:
    table = InodeTable(os.open(tmp_path, os.O_PATH | os.O_DIRECTORY))
    yield FaultEngine(table, clock=clock)
    table.close_all()


def sidecar(engine: FaultEngine, lazy: commands.LazyActions | None = None, **cfg: Any) -> Sidecar:
    return Sidecar(config(**cfg), engine, engine.clock, lazy, started=MONOTONIC, pid=4242)


def ask(
    sc: Sidecar, command: dict[str, Any], *, fleet: bool = False, raw: bytes | None = None
) -> Outcome | None:
    data = codec.encode(command) if raw is None else raw
    return asyncio.run(handle(sc, data, fleet=fleet, subject="chaosbus.fs.cmd.db.pg-0"))


def answer(sc: Sidecar, command: dict[str, Any], **how: Any) -> Outcome:
    outcome = ask(sc, command, **how)
    assert outcome is not None
    return outcome


def errno_rule(rule_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": rule_id, "action": "errno", "errno": "EIO", "methods": ["read"], **fields}


# --- the table ---------------------------------------------------------------------------


def test_every_op_of_the_protocol_has_a_handler() -> None:
    assert set(HANDLERS) == set(protocol.OPS)


# --- set and recover ---------------------------------------------------------------------


def test_set_puts_the_rules_in_force_and_says_what_to_do(engine: FaultEngine) -> None:
    sc = sidecar(engine)
    out = answer(sc, {"op": "set", "rules": [errno_rule("a")], "actor": "ann@host"})
    reply: Any = out.reply
    assert reply["ok"] is True and reply["pod"] == "db/pg-0" and reply["v"] == 1
    assert [r["id"] for r in reply["rules"]] == ["a"]
    assert [r.id for r in engine.rules.rules] == ["a"]
    assert (out.op, out.result) == ("set", "ok")
    # The control plane must drop the kernel's caches of what the new rule covers.
    assert [r.id for r in out.drop_caches] == ["a"] and out.rules_moved
    [(kind, fields)] = out.audits
    assert kind == "rule.set" and fields["actor"] == "ann@host" and fields["fleet"] is False
    assert [line.event for line in out.logs] == ["rules_set"]


def test_a_ttl_counts_from_the_engines_clock(engine: FaultEngine, clock: ManualClock) -> None:
    sc = sidecar(engine)
    clock.advance(100.0)
    answer(sc, {"op": "set", "rules": [errno_rule("t", ttl=30)]})
    [rule] = engine.rules.rules
    assert rule.expires_at == WALL + 100.0 + 30.0
    clock.advance(29.0)
    assert engine.expire() == []
    clock.advance(1.0)
    assert [r.id for r in engine.expire()] == ["t"]


def test_recover_by_id_and_all(engine: FaultEngine) -> None:
    sc = sidecar(engine)
    answer(sc, {"op": "set", "rules": [errno_rule("a"), errno_rule("b"), errno_rule("c")]})
    out = answer(sc, {"op": "recover", "id": "b", "actor": "ann"})
    reply: Any = out.reply
    assert reply["recovered"] == ["b"] and [r.id for r in out.drop_caches] == ["b"]
    assert out.audits[0][0] == "rule.recovered" and out.audits[0][1]["how"] == "id"
    out = answer(sc, {"op": "recover", "all": True})
    assert sorted(out.reply["recovered"]) == ["a", "c"]  # type: ignore[typeddict-item]
    assert engine.rules.rules == ()


def test_recovering_an_unknown_id_is_refused_for_one_pod_not_for_the_fleet(
    engine: FaultEngine,
) -> None:
    sc = sidecar(engine)
    out = answer(sc, {"op": "recover", "id": "nope"})
    assert out.result == "rejected" and out.reply["ok"] is False
    assert "no rule with id 'nope'" in out.reply["error"]  # type: ignore[typeddict-item]
    fleet = answer(sc, {"op": "recover", "id": "nope"}, fleet=True)
    assert fleet.result == "ok" and fleet.reply["recovered"] == []  # type: ignore[typeddict-item]


# --- bad commands ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ({"op": "set", "rules": [errno_rule("x"), {"action": "nope"}]}, "rule 1: action"),
        ({"op": "set", "rules": [errno_rule("x"), errno_rule("x")]}, "must be unique"),
        ({"op": "explode"}, "unknown op 'explode'"),
        ({"op": "recover"}, "recover needs exactly one of"),
    ],
)
def test_a_bad_command_is_refused_and_changes_nothing(
    engine: FaultEngine, command: dict[str, Any], reason: str
) -> None:
    sc = sidecar(engine)
    answer(sc, {"op": "set", "rules": [errno_rule("held")]})
    before = engine.rules
    out = answer(sc, {**command, "actor": "mallory"})
    assert out.reply["ok"] is False and reason in out.reply["error"]  # type: ignore[typeddict-item]
    assert out.result == "rejected"
    assert engine.rules is before  # the very same rule set: nothing was swapped in
    assert not out.drop_caches and not out.rules_moved
    [(kind, fields)] = out.audits
    assert kind == "rule.rejected" and reason in fields["reason"]
    assert fields["subject"] == "chaosbus.fs.cmd.db.pg-0"


def test_unreadable_bytes_are_refused_as_invalid(engine: FaultEngine) -> None:
    out = answer(sidecar(engine), {}, raw=b"\xc1 not msgpack")
    assert (out.op, out.result) == ("invalid", "rejected") and out.reply["ok"] is False
    assert out.audits[0][1]["actor"] == "unknown"


# --- questions ---------------------------------------------------------------------------


def test_status_reports_rules_identity_and_uptime_by_the_monotonic_clock(
    engine: FaultEngine, clock: ManualClock
) -> None:
    sc = sidecar(engine)
    answer(sc, {"op": "set", "rules": [errno_rule("a")]})
    clock.advance(12.5)
    clock.set_wall(WALL - 3600)  # someone sets the wall clock back: uptime does not care
    out = answer(sc, {"op": "status"})
    reply: Any = out.reply
    assert reply["uptime"] == 12.5
    assert reply["injected"] is True and [r["id"] for r in reply["rules"]] == ["a"]
    assert reply["rules"][0]["stats"]["fired"] == 0 and reply["rules"][0]["spent"] is False
    assert reply["lazy"] == {"enabled": False}  # a plain mount
    assert (reply["namespace"], reply["name"], reply["pid"]) == ("db", "pg-0", 4242)
    assert reply["labels"] == {"app": "pg", "tier": "db"} and reply["managed"] == []
    assert not out.audits and not out.drop_caches  # a question changes nothing


def test_list_reads_the_status_rules(engine: FaultEngine) -> None:
    sc = sidecar(engine)
    answer(sc, {"op": "set", "rules": [errno_rule("a"), errno_rule("b", path="wal/*")]})
    reply: wire.StatusReply = answer(sc, {"op": "status"}).reply  # type: ignore[assignment]
    listed: wire.RuleList = reply
    assert [(r["id"], r["path"]) for r in listed["rules"]] == [("a", "**"), ("b", "wal/*")]


def test_methods_injected_and_ping(engine: FaultEngine) -> None:
    sc = sidecar(engine)
    methods: Any = answer(sc, {"op": "methods"}).reply
    assert "read" in methods["methods"] and "fsync" in methods["methods"]
    assert answer(sc, {"op": "injected"}).reply["injected"] is False  # type: ignore[typeddict-item]
    ping: Any = answer(sc, {"op": "ping"}).reply
    assert ping["ok"] and ping["mountpoint"] == "/data/app" and ping["version"]


# --- the fleet ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "answers"),
    [
        ({}, True),
        ({"namespaces": ["db"]}, True),
        ({"namespaces": ["web"]}, False),
        ({"selector": "app=pg,tier!=cache"}, True),
        ({"selector": "app=redis"}, False),
        ({"pods": "pg-*"}, True),
        ({"names": ["db/pg-1"]}, False),
        ({"name_hashes": protocol.name_hashes(["db/pg-0", "db/pg-9"])}, True),
    ],
)
def test_a_fleet_command_is_answered_only_by_the_sidecars_it_targets(
    engine: FaultEngine, target: dict[str, Any], answers: bool
) -> None:
    sc = sidecar(engine)
    command = {"op": "set", "rules": [errno_rule("f")], "target": target}
    out = ask(sc, command, fleet=True)
    if answers:
        assert out is not None and out.reply["ok"] and [r.id for r in engine.rules.rules] == ["f"]
    else:
        assert out is None  # silent, as a sidecar that never heard it
        assert engine.rules.rules == ()


def test_a_bad_target_is_refused(engine: FaultEngine) -> None:
    out = answer(sidecar(engine), {"op": "ping", "target": {"names": []}}, fleet=True)
    assert out.result == "rejected" and "non-empty list" in out.reply["error"]  # type: ignore[typeddict-item]


# --- lazy mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", protocol.LAZY_OPS)
def test_lazy_ops_are_refused_on_a_plain_mount(engine: FaultEngine, op: str) -> None:
    command: dict[str, Any] = {"op": op}
    if op == "torn-write":
        command["keep"] = 0
    out = answer(sidecar(engine), command)
    assert out.result == "rejected" and out.reply["error"] == LAZY_OFF  # type: ignore[typeddict-item]


class FakeLazy:
    """Lazy mode as the handler sees it, with every call recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def status(self) -> wire.LazyStatus:
        return {"enabled": True, "held_bytes": 10}

    async def unsynced(self, regex: PathPattern, model: str) -> dict[str, Any]:
        self.calls.append(("unsynced", model))
        return {"model": model, "files": {"a": 3}, "bytes": 3, "dir_ops": []}

    async def stop_writers(self, signal: int) -> tuple[list[wire.Process], list[wire.Process]]:
        self.calls.append(("stop_writers", signal))
        return [{"pid": 7, "comm": "postgres"}], []

    async def tear(
        self, regex: PathPattern, *args: Any
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        self.calls.append(("tear", args))
        return {"files": {"a": {"kept": 1, "lost": 2}}, "kept": 1, "lost": 2}, [(5, 1, b"a")]

    async def lose(
        self, regex: PathPattern, metadata: bool, model: str
    ) -> tuple[dict[str, Any], list[Invalidation]]:
        self.calls.append(("lose", (metadata, model)))
        return {"files": {"b": 4}, "bytes": 4, "dir_ops": []}, [(6, 1, b"b")]


def test_report_unsynced_uses_the_sidecars_metadata_model(engine: FaultEngine) -> None:
    lazy = FakeLazy()
    out = answer(sidecar(engine, lazy, lazy_metadata="strict"), {"op": "report-unsynced"})
    reply: Any = out.reply
    assert reply["unsynced"]["bytes"] == 3 and lazy.calls == [("unsynced", "strict")]
    assert out.audits[0][0] == "unsynced.reported"


def test_a_power_cut_kills_tears_loses_and_asks_for_the_kernel_entries_to_go(
    engine: FaultEngine,
) -> None:
    lazy = FakeLazy()
    command = {"op": "power-cut", "signal": "KILL", "tear": {"keep": 1}, "actor": "ann"}
    out = answer(sidecar(engine, lazy), command)
    reply: Any = out.reply
    assert [c[0] for c in lazy.calls] == ["stop_writers", "tear", "lose"]
    assert reply["killed"] == [{"pid": 7, "comm": "postgres"}] and reply["survivors"] == []
    assert reply["lost"]["bytes"] == 4 and reply["torn"]["kept"] == 1
    assert out.invalidate == [(5, 1, b"a"), (6, 1, b"b")]
    [(kind, fields)] = out.audits
    assert kind == "power.cut" and fields["torn"] == {"kept": 1, "lost": 2}
    assert fields["actor"] == "ann" and fields["bytes"] == 4


def test_status_shows_lazy_mode(engine: FaultEngine) -> None:
    reply: Any = answer(sidecar(engine, FakeLazy()), {"op": "status"}).reply
    assert reply["lazy"] == {"enabled": True, "held_bytes": 10}


def test_the_mount_going_away_is_a_refusal(engine: FaultEngine) -> None:
    class Closing(FakeLazy):
        async def unsynced(self, regex: PathPattern, model: str) -> dict[str, Any]:
            raise commands.MountClosing("the mount is shutting down")

    out = answer(sidecar(engine, Closing()), {"op": "report-unsynced"})
    assert out.result == "rejected" and "shutting down" in out.reply["error"]  # type: ignore[typeddict-item]


def test_a_failure_of_the_sidecars_own_is_an_internal_error(engine: FaultEngine) -> None:
    class Broken(FakeLazy):
        async def status(self) -> wire.LazyStatus:
            raise RuntimeError("boom")

    out = answer(sidecar(engine, Broken()), {"op": "status"})
    assert out.result == "error" and out.reply["error"] == "internal error: boom"  # type: ignore[typeddict-item]
    assert out.logs[0].event == "command_failed"


# --- the receiving side: chaosctl reads what the handler sends ----------------------------


def test_chaosctl_prints_the_handlers_replies(engine: FaultEngine) -> None:
    sc = sidecar(engine)
    set_reply = cast(wire.SetReply, answer(sc, {"op": "set", "rules": [errno_rule("a")]}).reply)
    assert output.rules_set(set_reply).startswith("rule a set on db/pg-0: errno errno=EIO")
    status = cast(wire.StatusReply, answer(sc, {"op": "status"}).reply)
    assert output.rule_list(status).startswith("a: errno")
    assert "pod:        db/pg-0" in output.status(status)
    recovered = cast(wire.RecoverReply, answer(sc, {"op": "recover", "all": True}).reply)
    assert output.recovered(recovered) == "recovered 1 rule(s) on db/pg-0: a"


def test_chaosctl_prints_a_power_cut_reply(engine: FaultEngine) -> None:
    reply = answer(sidecar(engine, FakeLazy()), {"op": "power-cut"}).reply
    text = output.lazy(reply)
    assert "power cut; killed 1 process: 7 (postgres)" in text and "lost 4 bytes" in text
