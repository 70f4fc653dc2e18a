"""key=value lists: one reading for chaosctl --attr and chaosfs's POD_LABELS."""

from __future__ import annotations

import pytest

from chaosbus.kvlist import parse_pairs
from chaosctl.rulespec import parse_attrs
from chaosfs.cli import FlagError, env_labels


def test_pairs_keep_their_order_and_lose_surrounding_spaces():
    assert parse_pairs(" app = db ,tier=data,, empty= ,") == [
        ("app", "db"),
        ("tier", "data"),
        ("empty", ""),
    ]
    assert parse_pairs("") == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("app", "key=value"),
        ("=db", "key=value"),
        ("a=1,a=2", "given twice"),
        ("x" * 70000, "longer"),
    ],
)
def test_bad_lists_are_refused_with_the_item(text, reason):
    with pytest.raises(ValueError) as info:
        parse_pairs(text, what="POD_LABELS")
    assert reason in str(info.value) and str(info.value).startswith("POD_LABELS")


def test_chaosfs_reads_pod_labels_and_refuses_a_malformed_list():
    assert env_labels({"POD_LABELS": "app=tikv, zone=a"}) == {"app": "tikv", "zone": "a"}
    with pytest.raises(FlagError, match="POD_LABELS must be key=value"):
        env_labels({"POD_LABELS": "app"})


def test_chaosctl_attr_overrides_read_as_the_same_list():
    assert parse_attrs("size=1KiB, mode=0600") == {"size": 1024, "mode": 0o600}
    with pytest.raises(ValueError, match="--attr: size needs a value"):
        parse_attrs("size=")
