"""Lazy mode's actions on the bus and in chaosctl (issue 7): report-unsynced,
lose-unsynced, torn-write and power-cut.

The command parser is tested on its own; chaosctl against a real nats-server and a
real sidecar started without -lazy, which must refuse every action and say why;
and chaosctl's command line, whose mistakes are told before anything is sent.
What a lazy sidecar does with the actions is tested with the sidecar itself.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from chaosbus.protocol import LAZY_OPS, OPS, CommandError, LazyAction, parse_lazy
from chaosctl import commands, output
from chaosctl.cli import build_parser
from chaosctl.client import FleetResult
from conftest import chaosctl, free_port, wait_for

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


# --- chaosctl against a real sidecar that is not in lazy mode ---------------------------
#
# These need the sidecar's answer {"ok": False, "error": "lazy mode is off: start chaosfs
# with -lazy"} for every lazy op (services/chaosfs/control.py).

VERB_ARGS = {
    "report-unsynced": [],
    "lose-unsynced": ["--metadata"],
    "torn-write": ["--seed", "7", "--align", "4KiB"],
    "power-cut": ["--signal", "TERM"],
}


@pytest.mark.parametrize("verb", LAZY_OPS)
def test_each_action_on_one_pod_is_refused_when_lazy_mode_is_off(sidecar, verb):
    (sidecar.mountpoint / "kept").write_bytes(b"data")
    done = sidecar.ctl("fault", verb, "--pod", sidecar.pod, "--path", "**", *VERB_ARGS[verb])
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.strip() == (
        f"chaosctl: {sidecar.pod} refused: lazy mode is off: start chaosfs with -lazy"
    )
    assert done.stdout == ""
    # Refused means untouched: no process killed, no data lost.
    assert sidecar.proc.poll() is None
    assert (sidecar.mountpoint / "kept").read_bytes() == b"data"
    # The bus gives the same answer to a request of its own.
    reply = sidecar.request({"op": verb, "actor": "test"})
    assert reply["ok"] is False and reply["error"].startswith(LAZY_OFF)


def registered(url: str, pods: set[str]) -> bool:
    done = chaosctl(url, "--json", "sidecars")
    return (
        done.returncode == 0
        and {e["pod"] for e in json.loads(done.stdout) if not e["lost"]} >= pods
    )


@pytest.mark.parametrize("verb", LAZY_OPS)
def test_each_action_on_the_fleet_names_every_refusal(make_sidecar, nats_server, verb):
    url = nats_server.url
    a = make_sidecar("a/db-0", env={"POD_LABELS": "app=db"})
    b = make_sidecar("b/db-0", env={"POD_LABELS": "app=db"})
    make_sidecar("a/web-0", env={"POD_LABELS": "app=web"})
    wait_for(lambda: registered(url, {"a/db-0", "b/db-0", "a/web-0"}), what="3 sidecars")

    done = chaosctl(url, "fault", verb, "--fleet", "--selector", "app=db", *VERB_ARGS[verb])
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert lines[0] == "applied on 0 of 2 sidecars"
    assert sorted(lines[1:]) == [
        f"failed on {p}: lazy mode is off: start chaosfs with -lazy" for p in ("a/db-0", "b/db-0")
    ]

    done = chaosctl(
        url,
        "--json",
        "fault",
        verb,
        "--fleet",
        "--namespace",
        "a",
        "--pods",
        "db-*",
        *VERB_ARGS[verb],
    )
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert data["acked"] == [] and data["missing"] == [] and data.get("results", {}) == {}
    assert [e["pod"] for e in data["errors"]] == ["a/db-0"]
    assert data["errors"][0]["error"].startswith(LAZY_OFF)
    assert a.proc.poll() is None and b.proc.poll() is None


def test_an_action_nobody_can_receive_exits_3(nats_server):
    done = chaosctl(nats_server.url, "--timeout", "1s", "fault", "lose-unsynced", "--pod", "x/y")
    assert done.returncode == 3
    assert done.stderr.strip() == "chaosctl: no sidecar answers for x/y"
    done = chaosctl(
        nats_server.url, "--timeout", "1s", "fault", "power-cut", "--fleet", "--namespace", "none"
    )
    assert done.returncode == 3
    assert done.stdout.splitlines()[0] == "applied on 0 of 0 sidecars"


def test_no_nats_server_exits_3_quickly():
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = chaosctl(url, "--timeout", "1s", "fault", "report-unsynced", "--pod", "a/b")
    assert done.returncode == 3
    assert done.stderr.startswith(f"chaosctl: cannot reach NATS at {url}")
    assert time.monotonic() - started < 10


# --- the command line -------------------------------------------------------------------

USAGE = [
    (["report-unsynced"], "chaosctl: fault report-unsynced needs --pod NAMESPACE/NAME or --fleet"),
    (["power-cut", "--signal", "KILL"], "chaosctl: fault power-cut needs --pod"),
    (["lose-unsynced", "--pod", "a/b", "--fleet"], "takes --pod or --fleet, not both"),
    (
        ["torn-write", "--pod", "a/b", "--seed", "1", "--keep", "10"],
        "chaosctl: torn-write takes --seed or --keep, not both",
    ),
    (["torn-write", "--fleet"], "chaosctl: torn-write needs --seed S (a random cut) or --keep"),
    (["torn-write", "--pod", "a/b", "--keep", "1", "--align", "3"], "align must be a power of two"),
    (["torn-write", "--pod", "a/b", "--seed", "1", "--align", "2MiB"], "from 1 to 1048576"),
    (["torn-write", "--pod", "a/b", "--seed", "x" * 300], "seed string must be 1-256"),
    (["power-cut", "--pod", "a/b", "--signal", "NOPE"], "signal must be a name like KILL"),
    (["power-cut", "--pod", "a/b", "--signal", "99"], "a number from 1 to 64, got 99"),
    (["lose-unsynced", "--pod", "a/b", "--path", "a/[b"], "unclosed '['"),
    (["lose-unsynced", "--pod", "ab"], "chaosctl: pod must be NAMESPACE/NAME, got 'ab'"),
    (["report-unsynced", "--pod", "a/b", "--namespace", "a"], "choose sidecars for --fleet only"),
    (["power-cut", "--fleet", "--selector", "app in (x"], "--selector: label selector"),
]


@pytest.mark.parametrize(("args", "message"), USAGE, ids=lambda v: " ".join(v)[:50])
def test_usage_errors_exit_2_with_one_line_before_connecting(args, message):
    # Nothing listens there: the mistake is told without trying to connect.
    done = chaosctl(f"nats://127.0.0.1:{free_port()}", "fault", *args, timeout=10)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""


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
        "target": {"namespaces": ["a"], "selector": {"app": "db"}},
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
