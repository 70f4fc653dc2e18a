"""Desired state: the rules that should be in force, kept in JetStream KV.

Core NATS delivers a command at most once, so a sidecar that was away (restart,
``kill -9``, a partition) would miss it. chaosctl therefore records every rule it
sets, per pod or for the fleet, in the ``DESIRED`` bucket before it sends the
command, and every sidecar converges to what the bucket says whenever it starts
or reconnects. Keys:

- ``fleet.<rule id>``: a fleet rule and the target it was broadcast to;
- ``pod.<namespace>.<pod>.<rule id>``: a rule for one pod, or a tombstone that
  withdraws a fleet rule of that id from this pod only.

A pod entry overrides a fleet entry of the same id. Rules past their expiry are
never brought back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .protocol import Target
from .rules import FaultRule, RuleError
from .subjects import encode_token

BUCKET = "DESIRED"
SCHEMA_VERSION = 1


def fleet_key(rule_id: str) -> str:
    return f"fleet.{encode_token(rule_id)}"


def pod_prefix(namespace: str, name: str) -> str:
    return f"pod.{encode_token(namespace)}.{encode_token(name)}"


def pod_key(namespace: str, name: str, rule_id: str) -> str:
    return f"{pod_prefix(namespace, name)}.{encode_token(rule_id)}"


@dataclass(frozen=True)
class Entry:
    rule: dict[str, Any] | None  # None: a tombstone
    target: dict[str, Any] | None = None
    actor: str = ""
    time: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": SCHEMA_VERSION, "actor": self.actor, "time": self.time}
        if self.rule is None:
            out["recovered"] = True
        else:
            out["rule"] = self.rule
        if self.target is not None:
            out["target"] = self.target
        return out

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Entry:
        if data.get("v") != SCHEMA_VERSION:
            raise ValueError(f"unsupported desired-state schema {data.get('v')!r}")
        rule = None if data.get("recovered") else data.get("rule")
        if rule is not None and not isinstance(rule, dict):
            raise ValueError("desired rule must be a map")
        return cls(rule, data.get("target"), data.get("actor", ""), data.get("time", 0.0))

    @classmethod
    def of(
        cls, rule: dict[str, Any] | None, actor: str, target: dict[str, Any] | None = None
    ) -> Entry:
        return cls(rule, target, actor, time.time())


def compute(
    fleet: dict[str, Entry],
    pod: dict[str, Entry],
    namespace: str,
    name: str,
    labels: dict[str, str],
    now: float,
    log: Any = None,
) -> list[FaultRule]:
    """The rules one sidecar should hold, from the fleet's and its own entries."""
    wanted: dict[str, dict[str, Any]] = {}
    for entry in fleet.values():
        if entry.rule is None:
            continue
        try:
            if Target(entry.target).matches(namespace, name, labels):
                wanted[str(entry.rule.get("id"))] = entry.rule
        except ValueError as exc:
            if log is not None:
                log.warning("desired_entry_invalid", error=str(exc))
    for entry_id, entry in pod.items():
        if entry.rule is None:
            wanted.pop(entry_id, None)
        else:
            wanted[str(entry.rule.get("id"))] = entry.rule
    rules = []
    for wire in wanted.values():
        try:
            rule = FaultRule.from_wire(dict(wire), now=now)
        except RuleError as exc:
            if log is not None:
                log.warning("desired_rule_invalid", rule=wire.get("id"), error=str(exc))
            continue
        if rule.expires_at is not None and rule.expires_at <= now:
            continue  # its experiment is over: never brought back
        rules.append(rule)
    return rules
