"""What chaosctl prints for a person (``--json`` prints the data instead).

Sidecar replies are read as ``chaosbus.wire`` describes them, the shapes the sidecar's
command handler builds, so that the type checker holds both sides to one description.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from typing import Any

from chaosbus import registry, wire
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
    "path_regex",
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
    if "path_regex" in rule:
        parts.append(f"path_regex={rule['path_regex']}")
    else:
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


def rules_set(reply: wire.SetReply) -> str:
    return "\n".join(
        f"rule {r['id']} set on {reply['pod']}: {describe_rule(r)}" for r in reply["rules"]
    )


def recovered(reply: wire.RecoverReply) -> str:
    ids = reply["recovered"]
    return f"recovered {len(ids)} rule(s) on {reply['pod']}" + (
        f": {', '.join(ids)}" if ids else ""
    )


def rule_list(reply: wire.RuleList) -> str:
    if not reply["rules"] and not reply.get("rules_omitted"):
        return f"no rules in force on {reply['pod']}"
    return "\n".join([*(rule_line(r) for r in reply["rules"]), *_omitted(reply)])


def _omitted(reply: wire.RuleList) -> list[str]:
    """The sidecar cut its answer to fit the bus's payload limit: say so, with how many."""
    n = reply.get("rules_omitted")
    if not isinstance(n, int) or n <= 0:
        return []
    return [f"(+{n} more rules not shown: the answer was cut to fit the bus's payload limit)"]


def status(reply: wire.StatusReply) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(time.time() - reply["uptime"]))
    lines = [
        f"pod:        {reply['pod']}",
        f"version:    {reply['version']}",
        f"mountpoint: {reply['mountpoint']} (original {reply['original']})",
        f"uptime:     {format_duration(round(reply['uptime']))} (since {when})",
        f"rules:      {len(reply['rules']) + (reply.get('rules_omitted') or 0)}",
    ]
    lines += ["  " + rule_line(r) for r in reply["rules"]]
    lines += ["  " + line for line in _omitted(reply)]
    lines += _lazy_status(reply.get("lazy") or {})
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


# --- lazy mode ---------------------------------------------------------------------

MAX_FILES_SHOWN = 50  # per reply; --json has them all


def lazy(reply: wire.LazyReply) -> str:
    """What a lazy-mode action did on one sidecar, file by file, with totals.

    Any lazy-mode reply, or a part of one that the caller split off."""
    pod = reply.get("pod", "?")
    if "torn" in reply:
        return _torn(pod, reply["torn"])
    if "unsynced" in reply:
        return _unsynced(pod, reply["unsynced"])
    if "killed" in reply:
        return _power_cut(pod, reply)
    if "lost" in reply:
        return "\n".join(_lost(pod, reply["lost"]))
    return f"{pod}: done (the reply carried no figures)"


def _unsynced(pod: str, unsynced: wire.UnsyncedReport) -> str:
    files, dir_ops = unsynced.get("files") or {}, unsynced.get("dir_ops") or []
    if not files and not dir_ops:
        return f"{pod}: nothing unsynced; a power cut now would lose nothing"
    head = f"{pod}: a power cut now would lose {_bytes(unsynced.get('bytes', 0))} in " + _n(
        len(files), "file"
    )
    if dir_ops:
        head += f"; with --metadata also {_n(len(dir_ops), 'directory operation')}"
    lines = [head]
    lines += _file_lines(files, lambda n: _bytes(n) + " unsynced")
    lines += _dir_op_lines(dir_ops, "not yet durable")
    return "\n".join(lines)


def _lost(pod: str, lost: wire.LostReport) -> list[str]:
    files, dir_ops = lost.get("files") or {}, lost.get("dir_ops") or []
    head = f"{pod}: lost {_bytes(lost.get('bytes', 0))} in {_n(len(files), 'file')}"
    if dir_ops:
        head += f" and rolled back {_n(len(dir_ops), 'directory operation')}"
    lines = [head]
    lines += _file_lines(files, lambda n: _bytes(n) + " lost")
    lines += _dir_op_lines(dir_ops, "rolled back")
    return lines


def _torn(pod: str, torn: wire.TornReport) -> str:
    files = torn.get("files") or {}
    lines = [
        f"{pod}: tore {_n(len(files), 'file')}: kept {_bytes(torn.get('kept', 0))}, "
        f"lost {_bytes(torn.get('lost', 0))}"
    ]
    lines += _file_lines(
        files, lambda f: f"kept {_bytes(f.get('kept', 0))}, lost {_bytes(f.get('lost', 0))}"
    )
    return "\n".join(lines)


def _power_cut(pod: str, reply: wire.LazyReply) -> str:
    killed, survivors = reply.get("killed") or [], reply.get("survivors") or []
    if killed:
        what = f"killed {_n(len(killed), 'process', 'processes')}: {_procs(killed)}"
    elif not survivors:
        what = "no process had the mount in use"
    else:
        what = "killed no process"
    lines = [f"{pod}: power cut; {what}"]
    if survivors:
        lines.append(f"{pod}: still alive after the signal: {_procs(survivors)}")
    return "\n".join(lines + _lost(pod, reply.get("lost") or {}))


def _procs(procs: list[wire.Process]) -> str:
    return ", ".join(f"{p.get('pid')} ({p.get('comm', '?')})" for p in procs)


def _lazy_status(lazy: wire.LazyStatus) -> list[str]:
    """Status lines of a sidecar in lazy mode (none for one that is not)."""
    if not lazy.get("enabled"):
        return []
    lines = [
        f"lazy mode:  {_bytes(lazy.get('unsynced_bytes', 0))} unsynced in "
        f"{_n(lazy.get('unsynced_files', 0), 'file')}, "
        f"{_n(lazy.get('pending_dir_ops', 0), 'directory operation')} pending; "
        f"holding {_bytes(lazy.get('held_bytes', 0))} of {_bytes(lazy.get('max_bytes', 0))}"
    ]
    stats = lazy.get("stats") or {}
    if stats:
        get = stats.get
        lines += [
            f"  written back {_bytes(get('flushed_bytes', 0))} in "
            f"{_n(get('flushes', 0), 'flush', 'flushes')}; early (over the memory bound) "
            f"{_bytes(get('early_bytes', 0))} in {_n(get('early_flushes', 0), 'flush', 'flushes')}",
            f"  lost {_bytes(get('lost_bytes', 0))} in {_n(get('lost_files', 0), 'file')}; "
            f"torn {_n(get('torn_files', 0), 'file')}: kept {_bytes(get('torn_kept_bytes', 0))}, "
            f"lost {_bytes(get('torn_lost_bytes', 0))}",
        ]
    return lines


def _file_lines(files: Mapping[str, Any], describe: Any) -> list[str]:
    names = sorted(files)
    lines = [f"  {name or '.'}: {describe(files[name])}" for name in names[:MAX_FILES_SHOWN]]
    if len(names) > MAX_FILES_SHOWN:
        lines.append(f"  ... and {len(names) - MAX_FILES_SHOWN} more (--json lists them all)")
    return lines


def _dir_op_lines(ops: list[wire.DirOpView], state: str) -> list[str]:
    lines = []
    for op in ops[:MAX_FILES_SHOWN]:
        move = f" -> {op['to']}" if op.get("to") is not None else ""
        lines.append(f"  {op.get('kind')} {op.get('path')}{move} ({state})")
    if len(ops) > MAX_FILES_SHOWN:
        lines.append(
            f"  ... and {len(ops) - MAX_FILES_SHOWN} more directory operations "
            "(--json lists them all)"
        )
    return lines


def _bytes(n: int) -> str:
    n = int(n)
    text = f"{n} byte" + ("" if n == 1 else "s")
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{text} ({n / size:.1f} {unit})"
    return text


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def sidecars(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no sidecars registered"
    rows: list[tuple[str, ...]] = [
        ("POD", "STATE", "VERSION", "UPTIME", "HEARTBEAT", "RULES", "FIRED", "MOUNTPOINT")
    ]
    now = time.time()
    for e in entries:
        try:
            rows.append(_sidecar_row(e, now))
        except (TypeError, ValueError, AttributeError, OverflowError):
            # Every sidecar writes its own entry; one bad entry must not hide the others.
            rows.append((str(e.get("pod"))[:80], "unreadable", "?", "?", "?", "?", "?", "?"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _sidecar_row(e: dict[str, Any], now: float) -> tuple[str, ...]:
    rules = e.get("rules") or []
    started = registry.last_seen({"time": e.get("started")}) or now
    return (
        str(e.get("pod")),
        "lost" if e.get("lost") else "alive",
        str(e.get("version", "?")),
        format_duration(round(max(0.0, now - started))),
        _ago(registry.last_seen(e)),
        str(len(rules)),
        str(sum(int(r.get("fired", 0)) for r in rules)),
        str(e.get("mountpoint", "")),
    )


def audit_line(event: dict[str, Any]) -> str:
    try:
        when = datetime.datetime.fromtimestamp(registry.last_seen(event), datetime.UTC)
    except (OverflowError, OSError, ValueError):
        when = datetime.datetime.fromtimestamp(0, datetime.UTC)
    hidden = ("v", "id", "time", "kind", "pod", "actor", "service", "host", "subject", "origin")
    details = {k: v for k, v in event.items() if k not in hidden}
    extra = " ".join(f"{k}={v}" for k, v in details.items())
    pod = event.get("pod") or "-"
    # The origin is the subject's service, which NATS permissions vouch for; the body's
    # service is only a claim, shown when it disagrees.
    origin = event.get("origin") or event.get("service")
    claim = event.get("service")
    claimed = f" (body claims service={claim})" if "origin" in event and claim != origin else ""
    return (
        f"{when:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + f"Z [{origin}] {event.get('kind')!s:<20} "
        f"{pod!s:<28} by {event.get('actor')}{claimed} {extra}"
    ).rstrip()


def _ago(when: float) -> str:
    if not when:
        return "never"
    return f"{format_duration(round(max(0.0, time.time() - when), 1))} ago"
