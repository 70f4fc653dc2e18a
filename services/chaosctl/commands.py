"""What each chaosctl command does. Each returns an ``Outcome``: the exit code,
the text for a person and the object for ``--json``."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

from chaosbus import codec, desired, wire
from chaosbus.protocol import LAZY_OPS, CommandError, Target, parse_lazy
from chaosbus.rules import METHOD_SET, FaultRule, RuleError
from chaosbus.subjects import encode_token, parse_pod

from . import output
from .client import FleetResult, Session
from .rulespec import UsageError, lazy_from_args, rule_from_args, target_from_args

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


@dataclass
class Outcome:
    code: int
    text: str
    data: Any
    warnings: list[str] = dataclasses.field(default_factory=list)


def actor() -> str:
    """Who asked, and from which host: it goes into every audit event."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# --- one pod --------------------------------------------------------------------------


async def fault_set(s: Session, args: argparse.Namespace) -> Outcome:
    namespace, name = parse_pod(args.pod)
    rule = rule_from_args(args)
    reply = await s.set_rules(namespace, name, {"op": "set", "rules": [rule], "actor": actor()})
    # Recorded once the sidecar took it, so that a restart brings it back.
    entry = desired.Entry.of(rule, actor())
    warnings = await _record(s, desired.pod_key(namespace, name, rule["id"]), entry)
    return Outcome(EXIT_OK, output.rules_set(reply), reply, warnings)


async def fault_recover(s: Session, args: argparse.Namespace) -> Outcome:
    if args.fleet:
        return await fleet_recover(s, args)
    namespace, name = parse_pod(args.pod)
    command: dict[str, Any] = {"op": "recover", "actor": actor()}
    if args.all:
        command["all"] = True
    elif args.id:
        command["id"] = args.id
    else:
        command["method"] = args.method
    # The sidecar first (withdrawing first would let it converge and then answer
    # "no such rule"), then desired state, whatever the sidecar said: a recovered
    # rule must stay away, also from a sidecar that was unreachable just now.
    try:
        reply = await s.recover(namespace, name, command)
    finally:
        warnings = await _withdraw(s, namespace, name, args)
    return Outcome(EXIT_OK, output.recovered(reply), reply, warnings)


async def _withdraw(s: Session, namespace: str, name: str, args: argparse.Namespace) -> list[str]:
    """Take the recovered rules out of this pod's desired state, so they stay away."""
    try:
        kv = await s.desired_bucket()
        fleet, pods = await s.desired_entries()
        mine = pods.get(desired.pod_prefix(namespace, name), {})
        tomb = desired.Entry.of(None, actor())
        if args.all:
            for rule_id in mine:
                await kv.delete(desired.pod_key(namespace, name, rule_id))
            for rule_id in fleet:
                await kv.put(
                    desired.pod_key(namespace, name, rule_id), codec.encode(tomb.to_wire())
                )
        elif args.id:
            key = desired.pod_key(namespace, name, args.id)
            if args.id in fleet:
                await kv.put(key, codec.encode(tomb.to_wire()))
            elif args.id in mine:
                await kv.delete(key)
        else:
            status = await s.status(namespace, name)
            wanted = desired.compute(
                fleet, mine, namespace, name, status.get("labels") or {}, time.time()
            )
            for rule in wanted:
                if not rule.applies_to(args.method):
                    continue
                left = (rule.methods or METHOD_SET) - {args.method}
                entry = desired.Entry.of(
                    dataclasses.replace(rule, methods=frozenset(left)).to_wire() if left else None,
                    actor(),
                )
                await kv.put(
                    desired.pod_key(namespace, name, rule.id), codec.encode(entry.to_wire())
                )
    except Exception as exc:
        return [f"desired state not updated ({exc}); the sidecar may bring the rule back"]
    return []


async def fault_list(s: Session, args: argparse.Namespace) -> Outcome:
    namespace, name = parse_pod(args.pod)
    reply = await s.status(namespace, name)
    listing: wire.RuleList = {"pod": reply["pod"], "rules": reply["rules"]}
    return Outcome(EXIT_OK, output.rule_list(reply), listing)


async def fault_methods(s: Session, args: argparse.Namespace) -> Outcome:
    namespace, name = parse_pod(args.pod)
    reply = await s.methods(namespace, name)
    return Outcome(EXIT_OK, " ".join(reply["methods"]), reply)


async def status(s: Session, args: argparse.Namespace) -> Outcome:
    namespace, name = parse_pod(args.pod)
    reply = await s.status(namespace, name)
    fleet, pods = await s.desired_entries()
    wanted = desired.compute(
        fleet,
        pods.get(desired.pod_prefix(namespace, name), {}),
        namespace,
        name,
        reply.get("labels") or {},
        time.time(),
    )
    # A cut answer (rules_omitted) cannot tell which wanted rules are missing: no drift then.
    reply["drift"] = drift(wanted, reply["rules"]) if not reply.get("rules_omitted") else {}
    return Outcome(EXIT_OK, output.status(reply), reply)


def drift(wanted: list[FaultRule], actual: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Desired against actual: rules missing, rules nobody asked for, rules that differ."""
    have: dict[str, FaultRule | None] = {}
    for item in actual:
        wire = {k: v for k, v in item.items() if k not in ("stats", "spent")}
        try:
            have[item["id"]] = FaultRule.from_wire(wire)
        except RuleError:
            have[item["id"]] = None
    want = {r.id: r for r in wanted}
    return {
        "missing": sorted(set(want) - set(have)),
        "unexpected": sorted(set(have) - set(want)),
        "different": sorted(i for i in set(want) & set(have) if want[i] != have[i]),
    }


# --- the fleet --------------------------------------------------------------------------


async def fault_broadcast(s: Session, args: argparse.Namespace) -> Outcome:
    target = target_from_args(args)
    Target(target)  # refuse a bad selector before anything is written
    rule = rule_from_args(args)
    warnings = await _record(
        s, desired.fleet_key(rule["id"]), desired.Entry.of(rule, actor(), target)
    )
    command = {"op": "set", "rules": [rule], "target": target, "actor": actor()}
    alive, lost = await s.expected(target)
    return _fleet_outcome(await s.broadcast(command, alive, lost), warnings)


async def fleet_recover(s: Session, args: argparse.Namespace) -> Outcome:
    if args.method:
        raise ValueError("recover --fleet takes --id or --all")
    target = target_from_args(args)
    Target(target)
    expected, lost = await s.expected(target)
    warnings: list[str] = []
    try:
        kv = await s.desired_bucket()
        fleet, pods = await s.desired_entries()
        if args.id:
            if args.id in fleet:
                await kv.delete(desired.fleet_key(args.id))
        elif not target:
            for rule_id in fleet:
                await kv.delete(desired.fleet_key(rule_id))
            for prefix, entries in pods.items():
                for rule_id in entries:
                    await kv.delete(f"{prefix}.{encode_token(rule_id)}")
        else:
            tomb = codec.encode(desired.Entry.of(None, actor()).to_wire())
            for pod in expected | lost:
                namespace, name = parse_pod(pod)
                for rule_id in pods.get(desired.pod_prefix(namespace, name), {}):
                    await kv.delete(desired.pod_key(namespace, name, rule_id))
                for rule_id in fleet:
                    await kv.put(desired.pod_key(namespace, name, rule_id), tomb)
    except Exception as exc:
        warnings.append(f"desired state not updated ({exc}); sidecars may bring rules back")
    command: dict[str, Any] = {"op": "recover", "target": target, "actor": actor()}
    if args.all:
        command["all"] = True
    else:
        command["id"] = args.id
    return _fleet_outcome(await s.broadcast(command, expected, lost), warnings)


def _fleet_outcome(result: FleetResult, warnings: list[str], *, results: bool = False) -> Outcome:
    """The fleet's answer: who acknowledged, who is missing, who refused (and why).

    With ``results`` (the answer to a lazy-mode action), ``--json`` also carries each
    acknowledging sidecar's reply under ``results`` and the text says what each one did.
    """
    data: dict[str, Any] = {
        "acked": sorted(result.acked),
        "missing": result.missing,
        "errors": [{"pod": p, "error": e} for p, e in sorted(result.errors.items())],
    }
    text = output.fleet(result)
    if results:
        replies = _lazy_replies(result)
        data["results"] = {pod: replies[pod] for pod in sorted(replies)}
        text = "\n".join([text, *(output.lazy(replies[p]) for p in sorted(replies))])
    ok = result.total > 0 and not result.missing and not result.errors
    # A refusal is an answer: 3 only when nobody answered at all.
    answered = result.acked or result.errors
    code = EXIT_OK if ok else (EXIT_REFUSED if answered else EXIT_UNREACHABLE)
    return Outcome(code, text, data, warnings)


# --- lazy mode: one-shot actions on unsynced data, one pod or the fleet -------------------


def lazy_command(args: argparse.Namespace) -> dict[str, Any]:
    """The command for a lazy verb, checked with the sidecar's own parser before
    anything is sent: a bad command line never reaches a sidecar."""
    if args.verb not in LAZY_OPS:
        raise UsageError(f"{args.verb} is not a lazy-mode action")
    if args.pod and args.fleet:
        raise UsageError(f"fault {args.verb} takes --pod or --fleet, not both")
    if not args.pod and not args.fleet:
        raise UsageError(f"fault {args.verb} needs --pod NAMESPACE/NAME or --fleet")
    if args.pod:
        parse_pod(args.pod)
        if args.namespace or args.selector or args.pods:
            raise UsageError("--namespace, --selector and --pods choose sidecars for --fleet only")
    command = {"op": args.verb, **_lazy_fields(args), "actor": actor()}
    try:
        parse_lazy(command)
        if args.fleet:
            command["target"] = target_from_args(args)
            Target(command["target"])
    except CommandError as exc:
        raise UsageError(str(exc)) from None
    return command


def _lazy_fields(args: argparse.Namespace) -> dict[str, Any]:
    """lazy_from_args, plus the metadata model, --persist, --force and power-cut --tear."""
    persist = _persist(args.persist) if getattr(args, "persist", None) is not None else None
    tearing = getattr(args, "tear", False)
    if args.verb == "torn-write" and persist is not None:
        if args.seed is not None or args.keep is not None:
            raise UsageError("torn-write takes one of --seed, --keep or --persist")
        fields = lazy_from_args(argparse.Namespace(**{**vars(args), "keep": 0}))
        del fields["keep"]
        fields["persist"] = persist
    else:
        fields = lazy_from_args(args)
    if getattr(args, "strict_metadata", False):
        fields["model"] = "strict"
        if args.verb != "report-unsynced":
            fields["metadata"] = True
    if getattr(args, "force", False):
        fields["force"] = True
    if args.verb == "power-cut":
        given = [n for n in ("seed", "keep", "persist") if getattr(args, n, None) is not None]
        if not tearing:
            if given or args.whole_writes or args.align is not None:
                raise UsageError(
                    "--seed, --keep, --persist, --whole-writes and --align need --tear"
                )
        else:
            if len(given) != 1:
                raise UsageError("power-cut --tear needs one of --seed, --keep or --persist")
            tear: dict[str, Any] = {}
            if args.seed is not None:
                tear["seed"] = int(args.seed) if args.seed.lstrip("-").isdigit() else args.seed
            elif args.keep is not None:
                tear["keep"] = args.keep
            else:
                tear["persist"] = persist
            if args.whole_writes:
                tear["whole_writes"] = True
            if args.align is not None:
                tear["align"] = args.align
            fields["tear"] = tear
    return fields


def _persist(text: str) -> list[int]:
    """1,3,5 or 2-4 (or both): write numbers as report-unsynced lists them."""
    numbers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise UsageError(f"--persist takes write numbers such as 1,3 or 2-5, got {text!r}")
        lo, hi = int(first), int(last) if dash else int(first)
        if hi < lo or hi - lo > 4096:
            raise UsageError(f"--persist: bad range {part!r}")
        numbers.extend(range(lo, hi + 1))
    return numbers


def _lazy_text(reply: wire.LazyReply) -> str:
    """output.lazy, plus what it does not show: a cut's tear, the size changes and the
    numbered writes of a report, a tear's warnings, processes a cut left alive."""
    pod = reply.get("pod", "?")
    if "killed" in reply and "torn" in reply:
        # output.lazy shows one part of a reply: the cut first, then its tear on its own.
        cut = reply.copy()
        del cut["torn"]
        text = output.lazy(cut)
        text += "\n" + output.lazy({"pod": pod, "torn": reply["torn"]})
    else:
        text = output.lazy(reply)
    lines = [text]
    unsynced = reply.get("unsynced") or {}
    meta = unsynced.get("with_metadata") or {}
    if unsynced.get("model") and (meta.get("bytes") or unsynced.get("dir_ops")):
        lines.append(
            f"  with --metadata ({unsynced['model']} model): "
            f"{meta.get('bytes', 0)} bytes in {len(meta.get('files') or {})} file(s)"
        )
    for path, size in sorted((unsynced.get("sizes") or {}).items()):
        lines.append(
            f"  {path or '.'}: size {size.get('now')} now, {size.get('after_cut')} after a cut"
        )
    for path, writes in sorted((unsynced.get("writes") or {}).items()):
        shown = []
        for op in writes.get("ops") or []:
            if "truncate" in op:
                shown.append(f"#{op['i']} truncate to {op['truncate']}")
            else:
                shown.append(f"#{op['i']} {op['len']} B at {op['off']}")
        more = writes.get("count", 0) - len(shown)
        tail = f" (+{more} more)" if more > 0 else ""
        lines.append(f"  {path or '.'} writes: {', '.join(shown)}{tail}")
    for warning in (reply.get("torn") or {}).get("warnings") or []:
        lines.append(f"  warning: {warning}")
    survivors = reply.get("survivors")
    if survivors:
        lines.append(
            "  error: the cut left processes alive (a power cut stops everything): "
            + ", ".join(f"{p.get('pid')} ({p.get('comm')})" for p in survivors)
        )
    return "\n".join(lines)


async def fault_lazy(s: Session, args: argparse.Namespace) -> Outcome:
    """One-shot, so nothing goes into desired state: one pod's reply, or the fleet's.

    A power cut that left a process alive (--signal STOP, or one that would not
    die) is not the cut that was asked for: exit 1."""
    command = lazy_command(args)
    if args.pod:
        namespace, name = parse_pod(args.pod)
        reply = await s.lazy(namespace, name, command)
        code = EXIT_REFUSED if reply.get("survivors") else EXIT_OK
        return Outcome(code, _lazy_text(reply), reply)
    alive, lost = await s.expected(command["target"])
    result = await s.broadcast(command, alive, lost)
    outcome = _fleet_outcome(result, [], results=True)
    if any(reply.get("survivors") for reply in _lazy_replies(result).values()):
        outcome = dataclasses.replace(outcome, code=EXIT_REFUSED)
    return outcome


def _lazy_replies(result: FleetResult) -> dict[str, wire.LazyReply]:
    """The acknowledgements of a lazy-mode broadcast: a sidecar that said ``ok`` to a
    lazy-mode command answered with a lazy-mode reply (as ``Session.lazy`` says of one pod)."""
    return {pod: cast(wire.LazyReply, reply) for pod, reply in result.acked.items()}


async def sidecars(s: Session, args: argparse.Namespace) -> Outcome:
    entries = await s.sidecars()
    if args.namespace:
        entries = [e for e in entries if e.get("namespace") in args.namespace]
    return Outcome(EXIT_OK, output.sidecars(entries), entries)


# --- helpers ------------------------------------------------------------------------------


async def _record(s: Session, key: str, entry: desired.Entry) -> list[str]:
    try:
        kv = await s.desired_bucket()
        await kv.put(key, codec.encode(entry.to_wire()))
    except Exception as exc:
        return [f"desired state not recorded ({exc}); a restarted sidecar will not reapply it"]
    return []
