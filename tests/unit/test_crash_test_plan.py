"""crash-test's arithmetic: seeds, where each cut lands, what counts as lost, and the
command line refused before anything connects. No process, mount or bus."""

from __future__ import annotations

import pytest

from chaosctl.cli import build_parser
from chaosctl.crashtest import check_args
from chaosctl.crashtest_plan import (
    Ledger,
    Settings,
    cut_seeds,
    digest,
    passed,
    plan_cut,
    table,
    totals,
)
from chaosctl.rulespec import UsageError


def test_a_campaign_seed_gives_the_same_cut_seeds():
    assert cut_seeds(7, 10) == cut_seeds(7, 10)
    assert cut_seeds(7, 10) != cut_seeds(8, 10)
    assert cut_seeds(7, 3) == cut_seeds(7, 10)[:3]  # a longer campaign starts the same
    assert len(set(cut_seeds(7, 100))) == 100


def test_a_cut_seed_alone_places_the_cut():
    op = Settings(at="op", ops=30)
    plans = [plan_cut(seed, op) for seed in cut_seeds(1, 200)]
    assert all(0 <= p.after < 30 for p in plans)
    assert {p.when for p in plans} == {"before", "after"}
    assert plan_cut(1234, op) == plan_cut(1234, op)
    assert plan_cut(1234, Settings(at="op", when="after")).when == "after"
    timed = [plan_cut(seed, Settings(earliest=0.2, latest=0.5)) for seed in range(100)]
    assert all(0.2 <= p.delay <= 0.5 and p.at == "time" for p in timed)
    assert plan_cut(5, op).to_wire() == {
        "at": "op",
        "operation": plan_cut(5, op).after + 1,
        "when": plan_cut(5, op).when,
    }


def test_the_ledger_counts_each_loss_once_with_its_age():
    ledger = Ledger()
    ledger.acknowledge([(10.0, "1:1"), (10.5, "1:2"), (11.8, "1:3"), (11.9, "1:4")])
    loss = ledger.settle({"1:1", "1:2"}, cut_at=12.0, allowed=1.0)
    assert loss.lost == ["1:3", "1:4"]
    assert loss.window == pytest.approx(0.2) and loss.beyond == 0
    # Lost once, reported once; written and acknowledged again, it counts again.
    ledger.acknowledge([(20.0, "1:3")])
    loss = ledger.settle({"1:2"}, cut_at=23.5, allowed=1.0)
    assert loss.lost == ["1:1", "1:3"] and loss.beyond == 2
    assert loss.window == pytest.approx(13.5)
    assert ledger.settle(set(), cut_at=30.0, allowed=None).lost == ["1:2"]


def test_without_a_window_every_loss_counts():
    ledger = Ledger()
    ledger.acknowledge([(1.0, "a"), (1.1, "b")])
    assert ledger.settle(set(), cut_at=1.2, allowed=None).beyond == 2
    assert ledger.settle({"x"}, cut_at=2.0, allowed=None).window is None


def test_the_digest_is_of_the_set():
    assert digest(["b", "a", "a"]) == digest(["a", "b"]) != digest(["a"])


def row(cut: int, **fields) -> dict:
    base = {"cut": cut, "seed": 1000 + cut, "trigger": {"text": "op #3 after"},
            "acknowledged": 5, "lost": 0, "beyond_window": 0, "restart": "ok", "check": "ok",
            "corruption": None, "survivors": [], "lost_window": None}  # fmt: skip
    return {**base, **fields}


def test_totals_and_the_table():
    rows = [row(1), row(2, lost=2, beyond_window=0, lost_window=0.4),
            row(3, restart="failed", check="skipped"), row(4, corruption="hole: 4:2")]  # fmt: skip
    summary = totals(rows)
    assert summary["cuts"] == 4 and summary["acknowledged"] == 20 and summary["lost"] == 2
    assert summary["failed_restarts"] == 1 and summary["corruption_reports"] == 1
    assert summary["max_lost_window"] == 0.4
    assert not passed(summary)
    assert passed(totals([row(1), row(2, lost=3, lost_window=0.5)]))  # within the window
    text = table("head", rows, summary)
    for r in rows:
        assert str(r["seed"]) in text
    assert "corrupt: hole: 4:2" in text and "failed" in text
    assert "cuts 4, acknowledged 20, lost 2, failed restarts 1, corruption reports 1" in text
    assert "--replay SEED" in text


def crash_args(*flags: str):
    base = ["crash-test", "--workload", "w", "--restart", "r", "--check", "c"]
    return build_parser().parse_args([*base, *flags])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "needs --pod"),
        (["--pod", "nopod"], "NAMESPACE/NAME"),
        (["--pod", "a/b", "--cuts", "0"], "--cuts"),
        (["--pod", "a/b", "--earliest", "2s", "--latest", "1s"], "--earliest"),
        (["--pod", "a/b", "--methods", "fsync,sync"], "unknown operation"),
        (["--pod", "a/b", "--ops", "0"], "--ops"),
        (["--pod", "a/b", "--signal", "NOPE"], "signal"),
        (["--pod", "a/b", "--path", "[a"], "invalid cut"),
        (["--pod", "a/b", "--tear-align", "512"], "needs --tear"),
        (["--pod", "a/b", "--tear", "--tear-align", "500"], "align must be a power of two"),
    ],
)
def test_a_bad_campaign_is_refused_before_connecting(flags, message):
    with pytest.raises((UsageError, ValueError), match=message):
        check_args(crash_args(*flags))


def test_a_good_campaign_gives_its_settings():
    settings = check_args(crash_args("--mount", "/x", "--at", "op", "--methods", "fsync,write"))
    assert settings.at == "op" and settings.methods == ("fsync", "write")
