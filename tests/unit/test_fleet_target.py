"""Which sidecars a fleet command reaches: ``target`` as chaosfs reads it."""

from __future__ import annotations

import argparse

import pytest

from chaosbus.protocol import CommandError, Target
from chaosctl.rulespec import UsageError, target_from_args

DB = {"app": "db", "tier": "data", "zone": "a"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=db", True),
        ("app==db,tier!=cache", True),
        ("zone in (a,b)", True),
        ("zone notin (a)", False),
        ("canary", False),
        ("!canary,app", True),
        ({"app": "db"}, True),  # the map older chaosctl sends still means "all equal"
        ({"app": "web"}, False),
        ("", True),
        (None, True),
    ],
)
def test_a_fleet_target_takes_the_kubernetes_selector_dialect(selector, expected):
    target = Target({"selector": selector} if selector is not None else {})
    assert target.matches("ns", "db-0", DB) is expected


@pytest.mark.parametrize(
    "selector", ["a in (b", "=x", 7, ["app=db"], {"app": 1}, "x" * 9000, "a b"]
)
def test_a_malformed_fleet_selector_is_refused_with_the_reason(selector):
    with pytest.raises(CommandError) as info:
        Target({"selector": selector})
    assert "selector" in str(info.value) and "\n" not in str(info.value)


def _args(**kw):
    base = {"namespace": None, "selector": None, "pods": None}
    base.update(kw)
    return argparse.Namespace(**base)


def test_chaosctl_sends_the_selector_as_written_and_the_sidecar_reads_it():
    target = target_from_args(_args(selector="app=db, zone in (a,b)", namespace=["ns"]))
    assert target == {"namespaces": ["ns"], "selector": "app=db, zone in (a,b)"}
    assert Target(target).matches("ns", "db-0", DB)
    assert not Target(target).matches("other", "db-0", DB)


def test_chaosctl_refuses_a_bad_selector_before_sending():
    with pytest.raises(UsageError) as info:
        target_from_args(_args(selector="zone in (a"))
    assert "--selector" in str(info.value)
