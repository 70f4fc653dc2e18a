"""The shared libraries, on their own."""

from __future__ import annotations

import errno

import pytest

from chaosbus import codec, subjects
from chaosbus.durations import parse_duration
from chaosbus.globs import GlobError, compile_glob
from chaosbus.goflags import Flag, FlagError, parse_flags
from chaosbus.protocol import CommandError, Target
from chaosbus.rules import FaultRule, RuleError


@pytest.mark.parametrize("name", ["web", "web.v1.2", "a%2Eb", "x*y>z", "tab\tand space", "ü.ß"])
def test_subject_tokens_are_single_and_reversible(name):
    token = subjects.encode_token(name)
    assert "." not in token and "*" not in token and ">" not in token and " " not in token
    assert subjects.decode_token(token) == name


def test_pod_subject_and_event_round_trip():
    subject = subjects.pod_event("ready", "prod", "web.v1")
    assert subject.count(".") == 5
    assert subjects.pod_from_event_subject(subject) == ("prod", "web.v1")
    assert subjects.pod_command("a", "b.c") != subjects.pod_command("a.b", "c")


@pytest.mark.parametrize(
    ("glob", "yes", "no"),
    [
        ("**", ["", "a", "a/b/c"], []),
        ("*.log", ["x.log"], ["d/x.log", "x.txt"]),
        ("**/*.log", ["x.log", "d/e/x.log"], ["x.txt"]),
        ("data/**", ["data", "data/x", "data/x/y"], ["database", "x/data"]),
        ("a/**/b", ["a/b", "a/x/b", "a/x/y/b"], ["a/bb", "b"]),
        ("f[0-9]", ["f1"], ["fa", "f10"]),
        ("f[!0-9]", ["fa"], ["f1"]),
        ("/abs/path", ["abs/path"], ["abs"]),
        ("?.db", ["a.db"], ["ab.db", "/.db"]),
    ],
)
def test_globs(glob, yes, no):
    rx = compile_glob(glob)
    for path in yes:
        assert rx.match(path), (glob, path)
    for path in no:
        assert not rx.match(path), (glob, path)


@pytest.mark.parametrize("bad", ["[abc", "a]", "a**", "a//b", "x" * 2000, "a\x00b", "[]"])
def test_bad_globs_are_refused(bad):
    with pytest.raises(GlobError):
        compile_glob(bad)


def test_durations():
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("1m30s") == 90
    assert parse_duration("2") == 2
    assert parse_duration("250us") == pytest.approx(0.00025)
    for bad in ("", "fast", "-1s", "10 parsecs", "1s2"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_go_flags_forms():
    flags = [Flag("original", "o"), Flag("version", "v", default=False, boolean=True)]
    for argv in (["-original", "/x"], ["--original=/x"], ["-original=/x"], ["--original", "/x"]):
        assert parse_flags(flags, argv)["original"] == "/x"
    assert parse_flags(flags, ["-version"])["version"] is True
    with pytest.raises(FlagError, match="not defined"):
        parse_flags(flags, ["-nope"])
    with pytest.raises(FlagError, match="needs an argument"):
        parse_flags(flags, ["-original"])
    with pytest.raises(FlagError, match="unexpected argument"):
        parse_flags(flags, ["stray"])


def test_codec_is_strict():
    assert codec.decode(codec.encode({"op": "ping"})) == {"op": "ping"}
    for bad in (b"", b"\xc1", codec.encode([1]), b"\xd4\x01\x00", b"\x81\x01\x02"):
        with pytest.raises(codec.DecodeError):
            codec.decode(bad)
    with pytest.raises(codec.DecodeError, match="exceeds"):
        codec.decode(b"\x80" * (codec.MAX_COMMAND_BYTES + 1))


def test_rule_round_trip_and_defaults():
    rule = FaultRule.from_wire(
        {
            "action": "mixed",
            "errno": ["eio", 28],
            "delay": 0.1,
            "methods": ["read"],
            "path": "d/**",
            "percent": 50,
        }
    )
    assert rule.errnos == (errno.EIO, errno.ENOSPC)
    again = FaultRule.from_wire(rule.to_wire())
    assert again == rule
    plain = FaultRule.from_wire({"action": "errno", "errno": "EIO"})
    assert plain.methods == frozenset() and plain.applies_to("statfs")
    assert plain.percent == 100 and len(plain.id) == 12


@pytest.mark.parametrize(
    "wire",
    [
        "rule",
        {"action": "errno"},
        {"action": "errno", "errno": True},
        {"action": "errno", "errno": []},
        {"action": "latency", "delay": -1},
        {"action": "latency", "delay": 10_000},
        {"action": "latency", "delay": 0},
        {"action": "latency", "delay": 1, "errno": "EIO"},
        {"action": "errno", "errno": "EIO", "delay": 1},
        {"action": "errno", "errno": "EIO", "id": "bad id!"},
        {"action": "errno", "errno": "EIO", "methods": "read"},
        {"action": "errno", "errno": "EIO", "percent": True},
        {"action": "errno", "errno": "EIO", "path": 5},
    ],
)
def test_invalid_rules(wire):
    with pytest.raises(RuleError):
        FaultRule.from_wire(wire)


def test_fleet_target():
    t = Target({"namespaces": ["prod"], "selector": {"app": "tikv"}, "pods": "tikv-*"})
    assert t.matches("prod", "tikv-0", {"app": "tikv", "x": "y"})
    assert not t.matches("dev", "tikv-0", {"app": "tikv"})
    assert not t.matches("prod", "tikv-0", {"app": "pd"})
    assert not t.matches("prod", "pd-0", {"app": "tikv"})
    assert Target(None).matches("any", "pod", {})
    with pytest.raises(CommandError):
        Target({"selector": {"a": 1}})
