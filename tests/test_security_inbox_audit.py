"""Per-role inbox prefixes and an audit trail no role can flood away, on the
locked-down NATS of deploy/nats/nats.conf (TLS, the shipped permissions).

Reuses tests/test_security.py's server, services and probes.
"""
# ruff: noqa: F811  (the fixtures imported from test_security are redefined as arguments)

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import nats.js.errors
import pytest
from test_security import (  # noqa: F401  (fixtures: pytest finds them by name)
    POD,
    ROLES,
    Probe,
    SecureBus,
    SecureSidecar,
    bus,
    sidecar,
    watcher,
)
from test_template_watcher import Watcher

from chaosbus import codec
from chaosbus.audit import (
    EVENT_LIMIT,
    MAX_MSG_SIZE,
    SIDECAR_STREAM,
    STREAM,
    audit_subject,
    ensure_stream,
    fit,
    make_event,
)
from chaosbus.bus import role_inbox_prefix
from conftest import wait_for

# What the template-watcher gives the streams by default (restored after the flood).
WATCHER_MAX_AGE, WATCHER_MAX_BYTES = 7 * 86400.0, 1 << 30

# --- inboxes -------------------------------------------------------------------------


def test_inbox_prefix_comes_from_the_user() -> None:
    assert role_inbox_prefix("operator") == "_INBOX_operator"
    assert role_inbox_prefix("template-watcher") == "_INBOX_template-watcher"
    assert role_inbox_prefix("a.b *>") == "_INBOX_a_b___"  # always one subject token
    assert role_inbox_prefix(None) == "_INBOX"  # no user, no auth: nats-py's own


@pytest.mark.parametrize("role", ROLES)
def test_each_role_subscribes_to_its_own_inbox_only(
    bus: SecureBus, watcher: Watcher, role: str
) -> None:
    allowed_call = {"injector": ("stream_info", "KV_RENDERINGS")}.get(role, ("stream_info", STREAM))

    async def probe() -> None:
        async with Probe(bus, role) as p:
            own = f"_INBOX_{role}"
            assert p.nc._inbox_prefix == own.encode()
            # Requests, JetStream API calls and consumers' deliveries all use it.
            js = p.nc.jetstream(timeout=2.0)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                # Answered either way (the watcher may not have made it yet): the
                # answer came to this role's inbox.
                await getattr(js, allowed_call[0])(allowed_call[1])
            await p.nc.subscribe(f"{own}.mine")
            await p.nc.flush()
            for other in [r for r in ROLES if r != role]:
                await p.nc.subscribe(f"_INBOX_{other}.>")
                await p.refused(f"_INBOX_{other}.>", what="subscription")
            for shared in ("_INBOX.>", ">", "_INBOX.*"):
                await p.nc.subscribe(shared)
                await p.refused(shared, what="subscription")
            # Its own prefix was never refused.
            assert not any(own.lower() in e for e in p.errors), p.errors

    asyncio.run(probe())


def test_operator_paths_work_with_its_inbox(bus: SecureBus, sidecar: SecureSidecar) -> None:
    rule = ["--action", "errno", "--errno", "EIO", "--path", "nothing"]
    for args in (
        ["fault", "set", "--pod", POD, *rule, "--id", "inbox1"],
        ["status", "--pod", POD],
        ["fault", "broadcast", "--namespace", "a", *rule, "--id", "inbox2"],
        ["sidecars"],
        ["audit", "--kind", "rule.set", "--since", "10m"],
    ):
        done = bus.ctl(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "warning" not in done.stderr, (args, done.stderr)
    # The sidecar's replies reach the operator's inbox (allow_responses).
    assert {"inbox1", "inbox2"} <= set(sidecar.rule_ids())
    status = bus.ctl_json("status", "--pod", POD)
    assert {r["id"] for r in status["rules"]} >= {"inbox1", "inbox2"}
    assert bus.ctl("fault", "recover", "--fleet", "--all").returncode == 0
    assert sidecar.rule_ids() == []
    assert bus.violations("chaosctl", "chaosfs", "chaos-template-watcher") == []


# --- the audit trail ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def streams(bus: SecureBus, watcher: Watcher) -> None:
    """Both audit streams, as the template-watcher makes them at start."""

    async def exist() -> bool:
        async with Probe(bus, "operator") as p:
            js = p.nc.jetstream(timeout=2.0)
            try:
                for name in (STREAM, SIDECAR_STREAM):
                    await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                return False
            return True

    wait_for(lambda: asyncio.run(exist()), timeout=15, what="the audit streams")


def test_audit_streams_are_split_and_refuse_big_messages(bus: SecureBus, streams: None) -> None:
    async def run() -> dict[str, Any]:
        async with Probe(bus, "operator") as p:
            js = p.nc.jetstream(timeout=2.0)
            return {name: (await js.stream_info(name)).config for name in (STREAM, SIDECAR_STREAM)}

    configs = asyncio.run(run())
    assert "chaosbus.audit.chaosfs.>" not in configs[STREAM].subjects
    assert "chaosbus.audit.chaosctl.>" in configs[STREAM].subjects
    assert configs[SIDECAR_STREAM].subjects == ["chaosbus.audit.chaosfs.>"]
    assert configs[STREAM].max_msg_size == configs[SIDECAR_STREAM].max_msg_size == MAX_MSG_SIZE


def test_a_flood_of_big_sidecar_events_is_refused(bus: SecureBus, streams: None) -> None:
    async def run() -> tuple[int, int, list[str]]:
        async with Probe(bus, "sidecar") as p, Probe(bus, "operator") as op:
            js, ojs = p.nc.jetstream(timeout=2.0), op.nc.jetstream(timeout=2.0)
            before = (await ojs.stream_info(SIDECAR_STREAM)).state.messages
            big = b"x" * (1000 * 1024)
            refusals = []
            for i in range(20):
                with pytest.raises(nats.js.errors.APIError) as caught:
                    await js.publish(f"chaosbus.audit.chaosfs.flood{i}", big)
                refusals.append(str(caught.value))
            # What a sidecar legitimately writes, even cut from a huge rule set, fits.
            event = fit(make_event("chaosfs", "rule.set", pod=POD, rules=_rules(1024)))
            await js.publish(audit_subject("chaosfs", "rule.set"), codec.encode(event))
            after = (await ojs.stream_info(SIDECAR_STREAM)).state.messages
            return before, after, refusals

    before, after, refusals = asyncio.run(run())
    assert after == before + 1
    assert all("maximum" in r.lower() and "size" in r.lower() for r in refusals), refusals


def test_a_flood_of_small_sidecar_events_evicts_no_other_roles_event(
    bus: SecureBus, streams: None
) -> None:
    small = 256 * 1024

    async def run() -> tuple[int, int, int]:
        # The template-watcher (the role that keeps the limits) gives the sidecars'
        # stream a small budget, so that the flood fills it many times over here.
        async with Probe(bus, "template-watcher") as tw:
            await ensure_stream(
                tw.nc, max_age=WATCHER_MAX_AGE, max_bytes=WATCHER_MAX_BYTES, sidecar_max_bytes=small
            )
        async with Probe(bus, "operator") as op, Probe(bus, "sidecar") as sc:
            ojs, sjs = op.nc.jetstream(timeout=5.0), sc.nc.jetstream(timeout=5.0)
            genuine_before = (await ojs.stream_info(STREAM)).state.messages
            await ojs.publish(
                audit_subject("chaosctl", "flood.before"),
                codec.encode(make_event("chaosctl", "flood.before", actor="alice")),
            )
            payload = codec.encode({"kind": "flood", "pad": "y" * 900})
            sent = 0
            for batch in range(20):  # 4,000 events of ~1 KiB: 16 times the budget
                await asyncio.gather(
                    *(
                        sjs.publish(f"chaosbus.audit.chaosfs.flood.{batch}.{i}", payload)
                        for i in range(200)
                    )
                )
                sent += 200
            await ojs.publish(
                audit_subject("chaosctl", "flood.after"),
                codec.encode(make_event("chaosctl", "flood.after", actor="alice")),
            )
            genuine_after = (await ojs.stream_info(STREAM)).state.messages
            sidecar_state = (await ojs.stream_info(SIDECAR_STREAM)).state
            assert sidecar_state.bytes <= small
            assert sidecar_state.messages < sent  # the sidecars' own oldest went
            return genuine_before, genuine_after, sidecar_state.messages

    try:
        genuine_before, genuine_after, _ = asyncio.run(run())
        # Every genuine event is still there (and the two new ones).
        assert genuine_after == genuine_before + 2
        done = bus.ctl("--json", "audit", "--since", "10m")
        assert done.returncode == 0, done.stderr
        events = [json.loads(line) for line in done.stdout.splitlines()]
        kinds = [e["kind"] for e in events]
        # Both streams, merged in the order the server stored them.
        first, last = kinds.index("flood.before"), kinds.index("flood.after")
        assert "flood" in kinds[first:last] and "flood" not in kinds[last:]
        assert {e["stream"] for e in events} == {STREAM, SIDECAR_STREAM}
    finally:

        async def restore() -> None:
            async with Probe(bus, "template-watcher") as tw:
                await ensure_stream(tw.nc, max_age=WATCHER_MAX_AGE, max_bytes=WATCHER_MAX_BYTES)

        asyncio.run(restore())


def _rules(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"rule-{i:04d}",
            "action": "latency",
            "delay": "1ms",
            "path": f"/var/lib/tikv/db/{'deep/' * 8}{i:04d}/**/*.sst",
            "methods": ["read", "write", "open", "fsync"],
            "percent": 100,
        }
        for i in range(n)
    ]


def test_big_events_are_truncated_not_lost() -> None:
    started = time.monotonic()
    event = make_event("chaosfs", "rule.set", pod=POD, actor="alice", rules=_rules(1024))
    assert len(codec.encode(event)) > MAX_MSG_SIZE
    cut = fit(event)
    assert time.monotonic() - started < 1.0
    assert len(codec.encode(cut)) <= EVENT_LIMIT
    assert cut["truncated"] is True and cut["rules_count"] == 1024
    assert 0 < len(cut["rules"]) < 1024 and cut["rules"][0] == event["rules"][0]
    assert {k: cut[k] for k in ("id", "kind", "pod", "actor")} == {
        k: event[k] for k in ("id", "kind", "pod", "actor")
    }
    # A small event is left exactly as it was.
    small = make_event("chaosctl", "rule.set", rules=_rules(3))
    assert fit(small) is small
    # A huge field of another type is dropped, the marker kept.
    odd = fit(make_event("chaosfs", "odd", blob="z" * (200 * 1024), note="kept"))
    assert odd["blob"] is None and odd["note"] == "kept" and odd["truncated"] is True
