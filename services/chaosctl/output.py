"""What chaosctl prints for a person (``--json`` prints the data instead)."""

from __future__ import annotations

import datetime
import time
from typing import Any

from chaosbus.durations import format_duration

from .client import FleetResult

_SHOWN = {
    "id",
    "action",
    "errno",
    "delay",
    "jitter",
    "methods",
    "path",
    "percent",
    "attr",
    "expires_at",
    "stats",
    "spent",
}


def describe_rule(rule: dict[str, Any]) -> str:
    parts = [rule["action"]]
    if rule.get("errno"):
        parts.append("errno=" + ",".join(str(e) for e in rule["errno"]))
    if rule.get("delay") or rule.get("jitter"):
        parts.append(f"delay={format_duration(rule['delay'])}")
        if rule.get("jitter"):
            parts.append(f"jitter={format_duration(rule['jitter'])}")
    parts.append("methods=" + (",".join(rule["methods"]) or "all"))
    parts.append(f"path={rule['path']}")
    if rule.get("percent", 100) != 100:
        parts.append(f"percent={rule['percent']:g}")
    if "attr" in rule:
        parts.append("attr=" + ",".join(f"{k}={v}" for k, v in rule["attr"].items()))
    if "expires_at" in rule:
        left = rule["expires_at"] - time.time()
        parts.append(f"expires in {format_duration(max(0.0, round(left, 1)))}")
    parts += [f"{k}={v}" for k, v in rule.items() if k not in _SHOWN]
    if rule.get("spent"):
        parts.append("(spent)")
    return " ".join(parts)


def rule_line(rule: dict[str, Any]) -> str:
    stats = rule.get("stats", {})
    fired = f"fired {stats.get('fired', 0)}"
    if stats.get("last_fired"):
        fired += f", last {_ago(stats['last_fired'])}"
    return f"{rule['id']}: {describe_rule(rule)} (matched {stats.get('matched', 0)}, {fired})"


def rules_set(reply: dict[str, Any]) -> str:
    return "\n".join(
        f"rule {r['id']} set on {reply['pod']}: {describe_rule(r)}" for r in reply["rules"]
    )


def recovered(reply: dict[str, Any]) -> str:
    ids = reply["recovered"]
    return f"recovered {len(ids)} rule(s) on {reply['pod']}" + (
        f": {', '.join(ids)}" if ids else ""
    )


def rule_list(reply: dict[str, Any]) -> str:
    if not reply["rules"]:
        return f"no rules in force on {reply['pod']}"
    return "\n".join(rule_line(r) for r in reply["rules"])


def status(reply: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(time.time() - reply["uptime"]))
    lines = [
        f"pod:        {reply['pod']}",
        f"version:    {reply['version']}",
        f"mountpoint: {reply['mountpoint']} (original {reply['original']})",
        f"uptime:     {format_duration(round(reply['uptime']))} (since {when})",
        f"rules:      {len(reply['rules'])}",
    ]
    lines += ["  " + rule_line(r) for r in reply["rules"]]
    drift = reply.get("drift") or {}
    if any(drift.values()):
        lines.append("drift from desired state:")
        for kind in ("missing", "unexpected", "different"):
            if drift.get(kind):
                lines.append(f"  {kind}: {', '.join(drift[kind])}")
    else:
        lines.append("desired state: in sync")
    return "\n".join(lines)


def fleet(result: FleetResult) -> str:
    lines = [f"applied on {len(result.acked)} of {result.total} sidecars"]
    if result.missing:
        names = [f"{p} (lost)" if p in result.lost else p for p in result.missing]
        lines.append("no answer from: " + ", ".join(names))
    for pod, error in sorted(result.errors.items()):
        lines.append(f"failed on {pod}: {error}")
    if result.total == 0:
        lines.append("no sidecar matches (none registered, or the selectors exclude them all)")
    return "\n".join(lines)


def sidecars(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no sidecars registered"
    rows = [("POD", "STATE", "VERSION", "UPTIME", "HEARTBEAT", "RULES", "FIRED", "MOUNTPOINT")]
    now = time.time()
    for e in entries:
        rules = e.get("rules") or []
        rows.append(
            (
                str(e.get("pod")),
                "lost" if e.get("lost") else "alive",
                str(e.get("version", "?")),
                format_duration(round(max(0.0, now - float(e.get("started") or now)))),
                _ago(float(e.get("time") or 0)),
                str(len(rules)),
                str(sum(int(r.get("fired", 0)) for r in rules)),
                str(e.get("mountpoint", "")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def audit_line(event: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(float(event.get("time", 0)), datetime.UTC)
    details = {
        k: v
        for k, v in event.items()
        if k not in ("v", "id", "time", "kind", "pod", "actor", "service", "host")
    }
    extra = " ".join(f"{k}={v}" for k, v in details.items())
    pod = event.get("pod") or "-"
    return (
        f"{when:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + f"Z {event.get('kind'):<20} {pod:<28} "
        f"by {event.get('actor')} {extra}"
    ).rstrip()


def _ago(when: float) -> str:
    if not when:
        return "never"
    return f"{format_duration(round(max(0.0, time.time() - when), 1))} ago"
