"""The lazy actions' newer fields, in process: the metadata model, subset tearing
(persist), force, and power-cut's tear; the commands chaosctl's flags make of them,
and what chaosctl prints and exits with for the replies that carry them."""

from __future__ import annotations

import pytest

from chaosbus.protocol import CommandError, LazyTear, parse_lazy
from chaosctl import commands
from chaosctl.cli import build_parser
from chaosctl.rulespec import UsageError


def test_the_model_and_persist_and_tear_are_parsed() -> None:
    action = parse_lazy({"op": "lose-unsynced", "metadata": True, "model": "strict"})
    assert (action.metadata, action.model) == (True, "strict")
    assert parse_lazy({"op": "report-unsynced"}).model is None  # the sidecar's own
    action = parse_lazy({"op": "torn-write", "persist": [3, 1, 3], "force": True})
    assert action.persist == (1, 3) and action.force
    assert action.tear == LazyTear(persist=(1, 3))
    action = parse_lazy({"op": "power-cut", "tear": {"keep": 100, "align": 512}})
    assert action.tear == LazyTear(keep=100, align=512)
    assert parse_lazy({"op": "power-cut"}).tear is None


BAD = [
    ({"op": "lose-unsynced", "model": "ext2"}, "model must be one of journal, strict"),
    ({"op": "torn-write", "persist": []}, "persist must be a list of 1 to 4096 write numbers"),
    ({"op": "torn-write", "persist": [0]}, "persist must be a list"),
    ({"op": "torn-write", "persist": ["1"]}, "persist must be a list"),
    ({"op": "torn-write", "persist": [True]}, "persist must be a list"),
    ({"op": "torn-write", "persist": [1], "seed": 1}, "needs exactly one of seed"),
    ({"op": "torn-write"}, "torn-write needs exactly one of seed"),
    ({"op": "torn-write", "seed": 1, "force": "yes"}, "force must be true or false"),
    ({"op": "power-cut", "tear": {}}, "power-cut tear needs exactly one of seed"),
    ({"op": "power-cut", "tear": 5}, "tear must be a map of"),
    ({"op": "power-cut", "tear": {"seed": 1, "path": "x"}}, "unknown field(s)"),
    ({"op": "lose-unsynced", "persist": [1]}, "unknown field(s)"),
    ({"op": "report-unsynced", "force": True}, "unknown field(s)"),
]


@pytest.mark.parametrize(("command", "reason"), BAD, ids=lambda v: str(v)[:60])
def test_bad_fields_are_refused_with_a_sentence(command, reason) -> None:
    with pytest.raises(CommandError) as caught:
        parse_lazy(command)
    assert reason in str(caught.value)


def command(*argv: str) -> dict:
    got = commands.lazy_command(build_parser().parse_args(["fault", *argv]))
    assert got.pop("actor")
    return got


def test_flags_make_the_commands() -> None:
    assert command("torn-write", "--pod", "a/b", "--persist", "2,5-7", "--force") == {
        "op": "torn-write",
        "persist": [2, 5, 6, 7],
        "force": True,
    }
    assert command("lose-unsynced", "--pod", "a/b", "--strict-metadata") == {
        "op": "lose-unsynced",
        "metadata": True,
        "model": "strict",
    }
    assert command("report-unsynced", "--pod", "a/b", "--strict-metadata") == {
        "op": "report-unsynced",
        "model": "strict",
    }
    assert command("power-cut", "--pod", "a/b", "--tear", "--persist", "3", "--metadata") == {
        "op": "power-cut",
        "metadata": True,
        "tear": {"persist": [3]},
    }
    assert command("power-cut", "--pod", "a/b", "--tear", "--seed", "7", "--align", "4KiB") == {
        "op": "power-cut",
        "tear": {"seed": 7, "align": 4096},
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["torn-write", "--pod", "a/b", "--persist", "1", "--seed", "2"], "one of --seed, --keep"),
        (["torn-write", "--pod", "a/b", "--persist", "x"], "--persist takes write numbers"),
        (["power-cut", "--pod", "a/b", "--seed", "1"], "need --tear"),
        (["power-cut", "--pod", "a/b", "--tear"], "power-cut --tear needs one of"),
    ],
)
def test_flag_mistakes_are_told(argv, message) -> None:
    with pytest.raises(UsageError) as caught:
        command(*argv)
    assert message in str(caught.value)


def test_what_chaosctl_prints_for_the_new_reply_fields() -> None:
    report = commands._lazy_text(
        {
            "pod": "a/b",
            "unsynced": {
                "model": "journal",
                "files": {"wal": 64 << 20},
                "bytes": 64 << 20,
                "with_metadata": {"files": {"wal": 64 << 20}, "bytes": 64 << 20},
                "sizes": {"wal": {"now": 64 << 20, "after_cut": 0}},
                "writes": {"wal": {"count": 300, "ops": [{"i": 1, "truncate": 64 << 20}]}},
                "dir_ops": [],
            },
        }
    )
    assert "wal: size 67108864 now, 0 after a cut" in report
    assert "wal writes: #1 truncate to 67108864 (+299 more)" in report
    cut = commands._lazy_text(
        {
            "pod": "a/b",
            "killed": [],
            "survivors": [{"pid": 42, "comm": "redis-server"}],
            "lost": {"files": {}, "bytes": 0, "dir_ops": []},
            "torn": {"files": {}, "kept": 0, "lost": 0, "warnings": ["f was being written"]},
        }
    )
    assert "left processes alive" in cut and "42 (redis-server)" in cut
    assert "warning: f was being written" in cut
