"""Hypothesis against a real sidecar over a real nats-server: every command op with
arbitrary values (NaN, infinities, huge numbers, wrong types, nesting, bytes), and
arbitrary values stored in its desired state.

For every command: an answer always comes (a pod's command subject never stays silent),
an error answer leaves the rule set as it was, and afterwards the sidecar still serves
and its CPU is back to idle within a second.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaosbus import codec, desired
from chaosbus.kv import open_bucket
from chaosbus.protocol import OPS
from chaosbus.rules import ACTIONS, METHODS
from chaosbus.subjects import pod_command
from conftest import wait_for

COMMANDS = int(os.environ.get("CHAOSBUS_FUZZ_COMMANDS", "10000"))
STORED = int(os.environ.get("CHAOSBUS_FUZZ_STORED", "500"))
RULE_FIELDS = (
    "id",
    "action",
    "errno",
    "delay",
    "jitter",
    "methods",
    "path",
    "path_regex",
    "percent",
    "attr",
    "count",
    "after",
    "ttl",
    "expires_at",
    "caller_pid",
    "caller_comm",
    "seed",
    "dry_run",
    "quota",
    "short_bytes",
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=16),
    st.sampled_from(["EIO", "random", "**", "1s", "nan", "inf", "-1", *ACTIONS, *METHODS]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
rules = st.dictionaries(st.sampled_from(RULE_FIELDS), values, max_size=6) | st.fixed_dictionaries(
    {"action": st.sampled_from(ACTIONS), "errno": values, "delay": values, "ttl": values}
)
commands = st.fixed_dictionaries(
    {"op": st.sampled_from([*OPS, "explode"])},
    optional={
        "rules": st.lists(rules, max_size=3) | values,
        "id": values,
        "ids": values,
        "all": values,
        "method": values,
        "target": values,
        "actor": values,
        "path": values,
        "seed": values,
        "keep": values,
        "signal": values,
    },
)


class Bus:
    """One connection on its own loop thread, so hypothesis's examples reuse it."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nc = self.run(nats.connect(url))

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def request(self, subject: str, payload: bytes) -> dict[str, Any]:
        msg = self.run(self.nc.request(subject, payload, timeout=5))
        return codec.decode(msg.data, limit=1 << 24)

    def close(self) -> None:
        self.run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rules_of(bus: Bus, subject: str) -> list[dict[str, Any]]:
    return sorted(
        ({k: v for k, v in r.items() if k != "stats"} for r in status(bus, subject)["rules"]),
        key=lambda r: r["id"],
    )


def status(bus: Bus, subject: str) -> dict[str, Any]:
    reply = bus.request(subject, codec.encode({"op": "status"}))
    assert reply["ok"], reply
    return reply


def back_to_idle(pid: int) -> None:
    """Within a second of the last message, the sidecar uses next to no CPU (nothing spins)."""
    time.sleep(1.0)  # the second it is allowed, then a window that must be quiet
    before = cpu_seconds(pid)
    time.sleep(1.0)
    assert cpu_seconds(pid) - before < 0.15, "the sidecar kept a CPU busy after the fuzzing"


@pytest.mark.timeout(600)
def test_fuzzed_commands_always_get_an_answer_and_errors_change_nothing(sidecar):
    ns, name = sidecar.pod.split("/")
    subject = pod_command(ns, name)
    bus = Bus(sidecar.nats_url)
    seen = {"ok": 0, "refused": 0}
    try:

        @settings(
            max_examples=COMMANDS,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(command=commands)
        def check(command: dict[str, Any]) -> None:
            payload = codec.encode(command)
            if command["op"] in ("set", "recover"):
                before = rules_of(bus, subject)
            reply = bus.request(subject, payload)  # never silent: a timeout fails here
            assert isinstance(reply.get("ok"), bool), reply
            if reply["ok"]:
                seen["ok"] += 1
            else:
                seen["refused"] += 1
                assert isinstance(reply.get("error"), str) and reply["error"], reply
                if command["op"] in ("set", "recover"):
                    assert rules_of(bus, subject) == before, (command, reply)
            if command["op"] == "set" and reply["ok"]:
                bus.request(subject, codec.encode({"op": "recover", "all": True}))

        check()
        assert seen["refused"] > COMMANDS // 2 and seen["ok"] > 0, seen
        assert sidecar.proc is not None
        back_to_idle(sidecar.proc.pid)
        assert bus.request(subject, codec.encode({"op": "ping"}))["ok"]
    finally:
        bus.close()


@pytest.mark.timeout(300)
def test_fuzzed_desired_state_never_stops_convergence(sidecar):
    ns, name = sidecar.pod.split("/")
    subject = pod_command(ns, name)
    bus = Bus(sidecar.nats_url)
    kv = bus.run(open_bucket(bus.nc, desired.BUCKET))
    try:

        @settings(max_examples=STORED, deadline=None, database=None)
        @given(
            key=st.sampled_from(["fleet.", f"{desired.pod_prefix(ns, name)}."]),
            token=st.sampled_from(["a", "b", "c"]),
            value=st.one_of(
                st.binary(max_size=64),
                st.builds(
                    lambda e: codec.encode(e),
                    st.fixed_dictionaries(
                        {"v": st.sampled_from([1, 2, "1", math.nan])},
                        optional={"rule": rules | values, "target": values, "time": values},
                    ),
                ),
            ),
        )
        def store(key: str, token: str, value: bytes) -> None:
            bus.run(kv.put(key + token, value))

        store()
        # A canary written last still converges: nothing stored before it jammed the watch.
        canary = {"id": "canary", "action": "errno", "errno": "EIO", "path": "canary"}
        entry = desired.Entry.of(canary, "fuzzer").to_wire()
        bus.run(kv.put(desired.pod_key(ns, name, "canary"), codec.encode(entry)))
        wait_for(
            lambda: "canary" in {r["id"] for r in status(bus, subject)["rules"]},
            timeout=5,
            what="the canary rule to converge after the fuzzed entries",
        )
        assert sidecar.proc is not None
        back_to_idle(sidecar.proc.pid)
    finally:
        bus.close()
