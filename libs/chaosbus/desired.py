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


class Memo:
    """What ``compute`` worked out about each entry, for one sidecar (its namespace,
    name and labels never change): whether a fleet entry's target takes it in, and
    each wanted rule parsed, or why it is invalid. Kept while the entry is the same
    object, which it is until its key is written again (every revision of a key is
    read into an Entry of its own): a change to one key then costs one entry's
    parse, not every entry's. Holds only the entries of the last call."""

    __slots__ = ("rules", "sidecar", "targets")

    def __init__(self) -> None:
        self.targets: dict[str, tuple[Entry, bool | str]] = {}  # True, False or the error
        self.rules: dict[str, tuple[dict[str, Any], FaultRule | str]] = {}
        # Whom the targets were matched for: asked for another sidecar (or after its
        # labels changed), the memo starts empty.
        self.sidecar: tuple[str, str, dict[str, str]] | None = None

    def check(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        if self.sidecar != (namespace, name, labels):
            self.targets, self.rules = {}, {}
            self.sidecar = (namespace, name, dict(labels))


def compute(
    fleet: dict[str, Entry],
    pod: dict[str, Entry],
    namespace: str,
    name: str,
    labels: dict[str, str],
    now: float,
    log: Any = None,
    memo: Memo | None = None,
) -> list[FaultRule]:
    """The rules one sidecar should hold, from the fleet's and its own entries.

    ``memo`` (one per sidecar) keeps the work on entries that did not change since
    the last call; the result is the same with or without it.
    """
    if memo is not None:
        memo.check(namespace, name, labels)
    targets: dict[str, tuple[Entry, bool | str]] = {}
    wanted: dict[str, dict[str, Any]] = {}
    for key, entry in fleet.items():
        if entry.rule is None:
            continue
        known = memo.targets.get(key) if memo is not None else None
        taken = known[1] if known is not None and known[0] is entry else None
        if taken is None:
            try:
                taken = Target(entry.target).matches(namespace, name, labels)
            except ValueError as exc:
                taken = str(exc)
        targets[key] = (entry, taken)
        if taken is True:
            wanted[str(entry.rule.get("id"))] = entry.rule
        elif taken is not False and log is not None:
            log.warning("desired_entry_invalid", error=taken)
    for entry_id, entry in pod.items():
        if entry.rule is None:
            wanted.pop(entry_id, None)
        else:
            wanted[str(entry.rule.get("id"))] = entry.rule
    parsed: dict[str, tuple[dict[str, Any], FaultRule | str]] = {}
    rules = []
    for rule_id, wire in wanted.items():
        known_rule = memo.rules.get(rule_id) if memo is not None else None
        rule: FaultRule | str
        if known_rule is not None and known_rule[0] is wire:
            rule = known_rule[1]
            parsed[rule_id] = known_rule
        else:
            try:
                rule = FaultRule.from_wire(dict(wire), now=now)
            except RuleError as exc:
                rule = str(exc)
            # A relative ttl ends the rule counting from this parse: parsed again
            # each time, as it always was, rather than kept.
            if "ttl" not in wire:
                parsed[rule_id] = (wire, rule)
        if isinstance(rule, str):
            if log is not None:
                log.warning("desired_rule_invalid", rule=wire.get("id"), error=rule)
            continue
        if rule.expires_at is not None and rule.expires_at <= now:
            continue  # its experiment is over: never brought back
        rules.append(rule)
    if memo is not None:
        memo.targets, memo.rules = targets, parsed
    return rules
