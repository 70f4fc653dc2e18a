"""What chaosctl prints about experiments (``--json`` prints the data instead).

Small pure functions: each takes what was read from the bus and the current time,
and returns text, so that they are tested without a server.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from chaosbus.durations import format_duration
from chaosbus.experiments.spec import Experiment, PodSelector
from chaosbus.experiments.store import Condition, PodRecord, SpecEntry, Status

from . import output

NO_CONTROLLER = "Pending (no controller yet)"
MAX_EVENTS_SHOWN = 50  # describe's text; --json has them all

# --- apply and delete --------------------------------------------------------------------


def document_label(index: int, kind: str | None, ref: str | None) -> str:
    """``document 2 (IoChaos default/io-delay)``: which document of a file, 1-based."""
    if kind is None and ref is None:
        return f"document {index}"
    return f"document {index} ({kind or '?'} {ref or '?'})"


def rejection(
    source: str, index: int | None, kind: str | None, ref: str | None, reason: str
) -> str:
    """The one line (after ``chaosctl: ``) that says why an apply wrote nothing."""
    if index is None:
        return f"{source}: {reason}"
    return f"{source}: {document_label(index, kind, ref)}: {reason}"


def applied(kind: str, ref: str, action: str) -> str:
    """``iochaos default/io-delay created``, as kubectl says it."""
    return f"{kind.lower()} {ref} {action}"


def settled(ref: str, status: Status) -> str:
    """What the controller made of an experiment that ``apply --wait`` waited for."""
    text = f"{ref} is {status.phase} (run {status.run}"
    if status.selected:
        text += f"; injected on {len(status.acked)} of {len(status.selected)} pods"
    text += ")"
    if status.message:
        text += f": {status.message}"
    return text


# --- times -----------------------------------------------------------------------------


def span(seconds: float) -> str:
    """A duration for a table: ``8s``, ``4m10s``, ``2h5m``, ``3d4h``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def next_run(when: float | None, now: float) -> str:
    if when is None:
        return "-"
    if when <= now:
        return "due"
    return f"in {span(when - now)}"


def time_left(ends_at: float | None, now: float) -> str:
    if ends_at is None:
        return "-"
    return span(ends_at - now)


def stamp(when: float | None, now: float) -> str:
    """A UTC time and how far it is from now: ``2025-01-02T03:04:05Z (12s ago)``."""
    if when is None:
        return "-"
    text = f"{datetime.datetime.fromtimestamp(when, datetime.UTC):%Y-%m-%dT%H:%M:%S}Z"
    if when > now:
        return f"{text} (in {span(when - now)})"
    return f"{text} ({span(now - when)} ago)"


# --- the list ------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def phase_of(row: Mapping[str, Any]) -> str:
    """The PHASE column: the controller's phase, or why there is none."""
    if row.get("error"):
        return f"unreadable: {row['error']}"
    if row.get("status_error"):
        return f"status unreadable: {row['status_error']}"
    if row.get("status") is None:
        return "Deleting (no controller yet)" if row.get("deleting") else NO_CONTROLLER
    return str(row.get("phase"))


def experiments(rows: Sequence[Mapping[str, Any]], now: float) -> str:
    """The table of ``chaosctl experiments``; rows are what ``--json`` prints."""
    if not rows:
        return "no experiments"
    lines = [("NAME", "KIND", "PHASE", "TARGETS", "ACKED", "MISSING", "NEXT RUN", "TIME LEFT")]
    for row in rows:
        known = row.get("status") is not None
        lines.append(
            (
                str(row["experiment"]),
                str(row.get("kind") or "?"),
                phase_of(row),
                str(len(row.get("selected") or ())) if known else "-",
                str(len(row.get("acked") or ())) if known else "-",
                str(len(row.get("missing") or ())) if known else "-",
                next_run(row.get("next_run"), now) if known else "-",
                time_left(row.get("ends_at"), now) if known else "-",
            )
        )
    return table(lines)


# --- describe ------------------------------------------------------------------------------


def mode(experiment: Experiment) -> str:
    if experiment.value is None:
        return experiment.mode
    if experiment.mode.endswith("percent"):
        return f"{experiment.mode} {experiment.value}%"
    return f"{experiment.mode} {experiment.value}"


def _pairs(pairs: Sequence[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs)


def selector(sel: PodSelector) -> str:
    parts = []
    if sel.namespaces:
        parts.append("namespaces=" + ",".join(sel.namespaces))
    if sel.pods:
        parts.append("pods=" + ",".join(f"{ns}/{n}" for ns, names in sel.pods for n in names))
    if sel.labels:
        parts.append(f"labels={sel.labels}")
    if sel.annotations:
        parts.append("annotations=" + _pairs(sel.annotations))
    if sel.fields:
        parts.append("fields=" + _pairs(sel.fields))
    if sel.phases:
        parts.append("phases=" + ",".join(sel.phases))
    if sel.nodes:
        parts.append("nodes=" + ",".join(sel.nodes))
    if sel.node_selectors:
        parts.append("node selectors=" + _pairs(sel.node_selectors))
    return "; ".join(parts) or "every pod"


def rule(wire: Mapping[str, Any]) -> str:
    """One sidecar rule as the controller will set it (no id yet), key by key."""
    methods = wire.get("methods") or ()
    parts = [str(wire.get("action", "?")), "methods=" + (",".join(map(str, methods)) or "all")]
    for name, value in wire.items():
        if name in ("action", "methods") or value is None or value == [] or value == {}:
            continue
        if name in ("delay", "jitter") and isinstance(value, int | float):
            if not value:
                continue
            value = format_duration(value)
        elif isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{name}={value}")
    return " ".join(parts)


def _spec_lines(
    entry: SpecEntry, experiment: Experiment | None, spec_error: str | None, now: float
) -> list[str]:
    lines = [
        f"Source:      {entry.source}, applied by {entry.actor} at {stamp(entry.time, now)}",
        f"Paused:      {'yes' if entry.paused else 'no'}"
        + ("; being deleted" if entry.deleting else ""),
    ]
    if experiment is None:
        kind = entry.manifest.get("kind")
        return [
            f"Kind:        {kind if isinstance(kind, str) else '?'}",
            *lines,
            f"Spec:        unreadable: {spec_error}",
        ]
    lines = [
        f"Kind:        {experiment.kind} ({experiment.api_version}; "
        f"{_flavour(experiment.flavour)})",
        *lines,
        f"Mode:        {mode(experiment)}",
        f"Selector:    {selector(experiment.selector)}",
        "Duration:    "
        + (span(experiment.duration) if experiment.duration is not None else "until deleted"),
        f"Schedule:    {experiment.schedule or '-'}",
    ]
    if experiment.rules:
        lines.append("Rules:")
        lines += [f"  {i}: {rule(r)}" for i, r in enumerate(experiment.rules)]
    if experiment.steps:
        lines.append("Steps:")
        lines += [f"  {i}: {rule(s)}" for i, s in enumerate(experiment.steps)]
    if experiment.container_names:
        lines.append("Containers:  " + ",".join(experiment.container_names))
    lines += [f"Warning:     {w}" for w in experiment.warnings]
    return lines


def _flavour(flavour: str) -> str:
    return {"v0.9": "Chaos Mesh v0.9", "2.x": "Chaos Mesh 2.x"}.get(flavour, flavour)


def conditions(items: Sequence[Condition], now: float) -> list[str]:
    rows = [("TYPE", "STATUS", "REASON", "MESSAGE", "TIME")]
    rows += [(c.type, c.status, c.reason, c.message, stamp(c.time, now)) for c in items]
    return table(rows).splitlines()


def pods(records: Mapping[str, PodRecord], selected: Sequence[str], now: float) -> list[str]:
    """Every selected pod, with what happened to it (``-`` if nothing yet)."""
    rows = [("POD", "OUTCOME", "ERROR", "TIME")]
    for pod in sorted(set(records) | set(selected)):
        record = records.get(pod)
        if record is None:
            rows.append((pod, "-", "-", "-"))
        else:
            rows.append((pod, record.outcome, record.error or "-", stamp(record.time, now)))
    return table(rows).splitlines()


def _status_lines(status: Status | None, status_error: str | None, now: float) -> list[str]:
    if status_error:
        return [f"Status:      unreadable: {status_error}"]
    if status is None:
        return [f"Status:      {NO_CONTROLLER}"]
    lines = [
        "Status:",
        f"  Phase:     {status.phase} (run {status.run})",
        f"  Started:   {stamp(status.started_at, now)}",
        f"  Ends:      {stamp(status.ends_at, now)}",
        f"  Next run:  {stamp(status.next_run, now)}",
    ]
    if status.paused_at is not None:
        lines.append(f"  Paused:    {stamp(status.paused_at, now)}")
    if status.message:
        lines.append(f"  Message:   {status.message}")
    if status.conditions:
        lines.append("  Conditions:")
        lines += ["    " + line for line in conditions(status.conditions, now)]
    if status.pods or status.selected:
        lines.append(
            f"Pods:        {len(status.selected)} selected, {len(status.acked)} injected, "
            f"{len(status.missing)} missing or failed"
        )
        lines += ["  " + line for line in pods(status.pods, status.selected, now)]
    else:
        lines.append("Pods:        none selected")
    return lines


def describe(
    ref: str,
    entry: SpecEntry,
    experiment: Experiment | None,
    spec_error: str | None,
    status: Status | None,
    status_error: str | None,
    events: Sequence[dict[str, Any]],
    now: float,
) -> str:
    """``chaosctl experiment describe``: spec, status, pods, then the audit trail."""
    lines = [f"Name:        {ref}"]
    lines += _spec_lines(entry, experiment, spec_error, now)
    lines += _status_lines(status, status_error, now)
    if not events:
        lines.append("Events:      none in the audit trail")
    else:
        lines.append("Events:")
        if len(events) > MAX_EVENTS_SHOWN:
            lines.append(
                f"  ... {len(events) - MAX_EVENTS_SHOWN} earlier events (--json lists them all)"
            )
        lines += ["  " + output.audit_line(e) for e in events[-MAX_EVENTS_SHOWN:]]
    return "\n".join(lines)
