"""The two test tiers keep their promises, checked on the tests collected in this run.

A unit test asks for nothing a system test needs (a nats-server, a mounted sidecar),
so the unit tier runs as an unprivileged user without FUSE, NATS or network. A
system test on a machine that lacks a capability is skipped with the reason, not
left to fail and not allowed to stop the session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SYSTEM_NEEDS, missing

UNIT = Path(__file__).resolve().parent
# The fixtures of tests/conftest.py that start real processes or mounts.
SYSTEM_FIXTURES = {"nats_server", "make_sidecar", "sidecar"}


def collected(request: pytest.FixtureRequest, unit: bool) -> list[pytest.Item]:
    return [item for item in request.session.items if (UNIT in item.path.resolve().parents) == unit]


def test_no_unit_test_asks_for_a_system_fixture(request: pytest.FixtureRequest) -> None:
    offenders = [
        item.nodeid
        for item in collected(request, unit=True)
        if SYSTEM_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    assert offenders == []


def test_unit_tests_are_never_skipped_for_a_missing_capability(
    request: pytest.FixtureRequest,
) -> None:
    skipped = [
        item.nodeid
        for item in collected(request, unit=True)
        if any(m.name.startswith("needs_") for m in item.iter_markers())
        or any(m.name == "skip" for m in item.iter_markers())
    ]
    assert skipped == []


def test_system_tests_are_skipped_with_the_reason_the_machine_gives(
    request: pytest.FixtureRequest,
) -> None:
    reason = next((why for why in map(missing, SYSTEM_NEEDS) if why is not None), None)
    for item in collected(request, unit=False):
        reasons = [m.kwargs.get("reason") for m in item.iter_markers("skip")]
        if reason is None:
            assert not any(r and r.startswith("needs ") for r in reasons), item.nodeid
        else:
            assert reason in reasons, item.nodeid
