"""Lazy mode's actions on the bus and in chaosctl (report-unsynced, lose-unsynced,
torn-write and power-cut), in process: the command parser, the commands chaosctl's
flags turn into, and what chaosctl prints for each reply. chaosctl against a real
sidecar is tested in tests/test_chaosctl_lazy.py.
"""

from __future__ import annotations

import signal

import pytest

from chaosbus.protocol import LAZY_OPS, OPS, CommandError, LazyAction, parse_lazy
from chaosctl import commands, output
from chaosctl.cli import build_parser
from chaosctl.client import FleetResult

LAZY_OFF = "lazy mode is off"

# --- the command parser ---------------------------------------------------------------


def test_ops_gain_the_lazy_actions_and_keep_the_others():
    assert LAZY_OPS == ("report-unsynced", "lose-unsynced", "torn-write", "power-cut")
    assert set(LAZY_OPS) <= set(OPS)
    assert {"set", "recover", "methods", "injected", "status", "ping"} <= set(OPS)


@pytest.mark.parametrize("op", LAZY_OPS[:2] + LAZY_OPS[3:])
def test_defaults(op):
    action = parse_lazy({"op": op})
    assert isinstance(action, LazyAction)
    assert (action.op, action.path, action.metadata) == (op, "**", False)
    assert (action.seed, action.keep, action.whole_writes, action.align) == (None, None, False, 1)
    assert action.signal == signal.SIGKILL
    assert action.path_regex.match("any/depth/file") and action.path_regex.match("")


def test_good_commands():
    action = parse_lazy(
        {
            "op": "lose-unsynced",
            "path": "db/*.log",
            "metadata": True,
            "actor": "me@here",
            "target": {"namespaces": ["a"]},
        }
    )
    assert action.metadata and action.path == "db/*.log"
    assert action.path_regex.match("db/0001.log") and not action.path_regex.match("db/x/1.log")

    torn = parse_lazy({"op": "torn-write", "seed": 42, "whole_writes": True, "align": 4096})
    assert (torn.seed, torn.keep, torn.whole_writes, torn.align) == (42, None, True, 4096)
    assert parse_lazy({"op": "torn-write", "seed": "run-7"}).seed == "run-7"
    assert parse_lazy({"op": "torn-write", "seed": "s" * 256}).seed == "s" * 256
    assert parse_lazy({"op": "torn-write", "keep": 0}).keep == 0
    assert parse_lazy({"op": "torn-write", "keep": 10, "align": 1 << 20}).align == 1 << 20
    assert parse_lazy({"op": "torn-write", "seed": None, "keep": 5}).keep == 5

    for name, number in (
        ("KILL", 9),
        ("kill", 9),
        ("SIGTERM", 15),
        ("sigTerm", 15),
        ("Int", 2),
        (9, 9),
        (64, 64),
        (1, 1),
        ("15", 15),
    ):
        cut = parse_lazy({"op": "power-cut", "signal": name, "metadata": True})
        assert cut.signal == number, name
        assert cut.metadata


BAD = [
    ({"op": "ping"}, "not a lazy-mode op"),
    ({"op": "report-unsynced", "colour": 1}, "unknown field(s) for op 'report-unsynced': colour"),
    ({"op": "report-unsynced", "metadata": True}, "unknown field(s)"),
    ({"op": "lose-unsynced", "seed": 1}, "unknown field(s) for op 'lose-unsynced': seed"),
    ({"op": "lose-unsynced", "signal": "KILL"}, "unknown field(s)"),
    ({"op": "torn-write", "seed": 1, "metadata": True}, "unknown field(s)"),
    ({"op": "torn-write", "seed": 1, "signal": 9}, "unknown field(s)"),
    ({"op": "power-cut", "keep": 1}, "unknown field(s)"),
    ({"op": "power-cut", "align": 4096}, "unknown field(s)"),
    ({"op": "report-unsynced", "path": 7}, "path must be a glob string"),
    ({"op": "report-unsynced", "path": ["a"]}, "path must be a glob string"),
    ({"op": "lose-unsynced", "path": "a/[b"}, "unclosed '['"),
    ({"op": "lose-unsynced", "path": "a/**b"}, "'**' must be a whole path segment"),
    ({"op": "lose-unsynced", "path": "x" * 2000}, "longer than 1024"),
    ({"op": "lose-unsynced", "metadata": "yes"}, "metadata must be true or false"),
    ({"op": "lose-unsynced", "metadata": 1}, "metadata must be true or false"),
    ({"op": "torn-write"}, "exactly one of seed"),
    ({"op": "torn-write", "seed": 1, "keep": 2}, "exactly one of seed"),
    ({"op": "torn-write", "keep": -1}, "keep must be a number of bytes"),
    ({"op": "torn-write", "keep": "10"}, "keep must be a number of bytes"),
    ({"op": "torn-write", "keep": 1.5}, "keep must be a number of bytes"),
    ({"op": "torn-write", "keep": True}, "keep must be a number of bytes"),
    ({"op": "torn-write", "seed": "s" * 257}, "seed string must be 1-256 characters"),
    ({"op": "torn-write", "seed": ""}, "seed string must be 1-256 characters"),
    ({"op": "torn-write", "seed": 1.5}, "seed must be a whole number or a string"),
    ({"op": "torn-write", "seed": True}, "seed must be a whole number or a string"),
    ({"op": "torn-write", "seed": [1]}, "seed must be a whole number or a string"),
    ({"op": "torn-write", "seed": 1, "whole_writes": "no"}, "whole_writes must be true or false"),
    ({"op": "torn-write", "seed": 1, "align": 3}, "align must be a power of two"),
    ({"op": "torn-write", "seed": 1, "align": 0}, "align must be a power of two"),
    ({"op": "torn-write", "seed": 1, "align": -4}, "align must be a power of two"),
    ({"op": "torn-write", "seed": 1, "align": 2 << 20}, "align must be a power of two"),
    ({"op": "torn-write", "seed": 1, "align": "4096"}, "align must be a power of two"),
    ({"op": "torn-write", "seed": 1, "align": True}, "align must be a power of two"),
    ({"op": "power-cut", "signal": "FOO"}, "signal must be a name like KILL"),
    ({"op": "power-cut", "signal": "SIG"}, "signal must be a name like KILL"),
    ({"op": "power-cut", "signal": ""}, "signal must be a name like KILL"),
    ({"op": "power-cut", "signal": 0}, "a number from 1 to 64, got 0"),
    ({"op": "power-cut", "signal": 65}, "a number from 1 to 64, got 65"),
    ({"op": "power-cut", "signal": -9}, "a number from 1 to 64"),
    ({"op": "power-cut", "signal": True}, "signal must be a name like KILL"),
    ({"op": "power-cut", "signal": 9.0}, "signal must be a name like KILL"),
    ({"op": "power-cut", "signal": None}, "signal must be a name like KILL"),
]


@pytest.mark.parametrize(("command", "reason"), BAD, ids=lambda v: str(v)[:60])
def test_bad_commands_are_refused_with_a_sentence(command, reason):
    with pytest.raises(CommandError) as caught:
        parse_lazy(command)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_flags_turn_into_the_command_the_spec_describes():
    parser = build_parser()

    def command(*argv: str) -> dict:
        got = commands.lazy_command(parser.parse_args(["fault", *argv]))
        assert got.pop("actor")
        return got

    assert command("report-unsynced", "--pod", "a/b") == {"op": "report-unsynced"}
    assert command("lose-unsynced", "--fleet", "--path", "db/**", "--metadata") == {
        "op": "lose-unsynced",
        "path": "db/**",
        "metadata": True,
        "target": {},
    }
    assert command("report-unsynced", "--fleet", "--namespace", "a", "--selector", "app=db") == {
        "op": "report-unsynced",
        "target": {"namespaces": ["a"], "selector": "app=db"},
    }
    assert command(
        "torn-write", "--pod", "a/b", "--keep", "64KiB", "--whole-writes", "--align", "4KiB"
    ) == {"op": "torn-write", "keep": 65536, "whole_writes": True, "align": 4096}
    assert command("torn-write", "--pod", "a/b", "--seed", "42")["seed"] == 42
    assert command("torn-write", "--pod", "a/b", "--seed", "run-7")["seed"] == "run-7"
    assert command("power-cut", "--pod", "a/b") == {"op": "power-cut"}
    assert command("power-cut", "--pod", "a/b", "--signal", "15", "--metadata") == {
        "op": "power-cut",
        "signal": 15,
        "metadata": True,
    }


# --- what a person reads ------------------------------------------------------------------


def test_output_for_each_reply_shape():
    pod = "tikv/tikv-0"
    text = output.lazy(
        {
            "ok": True,
            "pod": pod,
            "unsynced": {
                "files": {"db/wal": 4096, "db/a.sst": 1},
                "bytes": 4097,
                "dir_ops": [
                    {"kind": "create", "path": "db/a.sst", "to": None},
                    {"kind": "rename", "path": "db/tmp", "to": "db/CURRENT"},
                ],
            },
        }
    )
    assert text.splitlines() == [
        f"{pod}: a power cut now would lose 4097 bytes (4.0 KiB) in 2 files; "
        "with --metadata also 2 directory operations",
        "  db/a.sst: 1 byte unsynced",
        "  db/wal: 4096 bytes (4.0 KiB) unsynced",
        "  create db/a.sst (not yet durable)",
        "  rename db/tmp -> db/CURRENT (not yet durable)",
    ]
    empty = {"files": {}, "bytes": 0, "dir_ops": []}
    assert "nothing unsynced" in output.lazy({"pod": pod, "unsynced": empty})

    lost = {"files": {"wal": 10}, "bytes": 10, "dir_ops": [{"kind": "mkdir", "path": "d"}]}
    assert output.lazy({"pod": pod, "lost": lost}).splitlines() == [
        f"{pod}: lost 10 bytes in 1 file and rolled back 1 directory operation",
        "  wal: 10 bytes lost",
        "  mkdir d (rolled back)",
    ]

    torn = {"files": {"wal": {"kept": 3, "lost": 7}}, "kept": 3, "lost": 7}
    assert output.lazy({"pod": pod, "torn": torn}).splitlines() == [
        f"{pod}: tore 1 file: kept 3 bytes, lost 7 bytes",
        "  wal: kept 3 bytes, lost 7 bytes",
    ]

    cut = output.lazy(
        {
            "pod": pod,
            "killed": [{"pid": 12, "comm": "tikv-server"}, {"pid": 13, "comm": "sh"}],
            "survivors": [{"pid": 14, "comm": "stuck"}],
            "lost": {"files": {}, "bytes": 0, "dir_ops": []},
        }
    )
    assert cut.splitlines() == [
        f"{pod}: power cut; killed 2 processes: 12 (tikv-server), 13 (sh)",
        f"{pod}: still alive after the signal: 14 (stuck)",
        f"{pod}: lost 0 bytes in 0 files",
    ]

    many = {f"f{i:03}": 1 for i in range(output.MAX_FILES_SHOWN + 5)}
    lines = output.lazy({"pod": pod, "lost": {"files": many, "bytes": len(many)}}).splitlines()
    assert lines[-1] == "  ... and 5 more (--json lists them all)"


def test_fleet_outcome_carries_each_sidecars_figures():
    lost = {"files": {"wal": 10}, "bytes": 10, "dir_ops": []}
    result = FleetResult(
        expected={"a/x", "a/y", "a/z"},
        acked={"a/x": {"ok": True, "pod": "a/x", "lost": lost}},
        errors={"a/y": "lazy mode is off: start chaosfs with -lazy"},
    )
    outcome = commands._fleet_outcome(result, [], results=True)
    assert outcome.code == commands.EXIT_REFUSED
    assert outcome.data == {
        "acked": ["a/x"],
        "missing": ["a/z"],
        "errors": [{"pod": "a/y", "error": "lazy mode is off: start chaosfs with -lazy"}],
        "results": {"a/x": {"ok": True, "pod": "a/x", "lost": lost}},
    }
    assert outcome.text.splitlines() == [
        "applied on 1 of 3 sidecars",
        "no answer from: a/z",
        "failed on a/y: lazy mode is off: start chaosfs with -lazy",
        "a/x: lost 10 bytes in 1 file",
        "  wal: 10 bytes lost",
    ]
    # Rule broadcasts keep their shape; a fleet that only refused exits 1, not 3.
    refused = FleetResult(expected={"a/y"}, errors={"a/y": "no"})
    plain = commands._fleet_outcome(refused, [])
    assert set(plain.data) == {"acked", "missing", "errors"}
    assert plain.code == commands.EXIT_REFUSED
    assert commands._fleet_outcome(FleetResult(expected={"a/z"}), []).code == 3


def test_status_shows_lazy_mode_only_when_it_is_on():
    reply = {
        "pod": "a/x",
        "version": "0",
        "mountpoint": "/m",
        "original": "/o",
        "uptime": 1.0,
        "rules": [],
        "drift": {},
    }
    assert "lazy" not in output.status({**reply, "lazy": {"enabled": False}})
    stats = dict.fromkeys(("flushes", "early_flushes", "lost_files", "torn_files"), 1)
    lazy = {
        "enabled": True,
        "max_bytes": 1 << 20,
        "held_bytes": 10,
        "unsynced_files": 1,
        "unsynced_bytes": 10,
        "pending_dir_ops": 2,
        "stats": {**stats, "flushed_bytes": 4096, "lost_bytes": 3},
    }
    text = output.status({**reply, "lazy": lazy})
    assert (
        "lazy mode:  10 bytes unsynced in 1 file, 2 directory operations pending; "
        "holding 10 bytes of 1048576 bytes (1.0 MiB)"
    ) in text.splitlines()
    assert "  written back 4096 bytes (4.0 KiB) in 1 flush;" in text
