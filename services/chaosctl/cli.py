"""``chaosctl``: set and recover faults, and look at sidecars.

Exit codes: 0 the sidecar acknowledged; 1 it refused (the reason is printed);
2 the command line is wrong; 3 nobody answered (no NATS, or no sidecar).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from chaosbus.bus import default_url
from chaosbus.durations import format_duration, parse_duration
from chaosbus.rules import ACTIONS, FaultRule, RuleError
from chaosbus.sizes import parse_size
from chaosbus.subjects import parse_pod

from .client import Refused, Unreachable, request_pod

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class UsageError(ValueError):
    pass


def _common() -> argparse.ArgumentParser:
    # Accepted before or after the subcommand, as operators type them either way.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats", default=argparse.SUPPRESS, help="NATS URL ($NATS_URL)")
    common.add_argument(
        "--timeout",
        default=argparse.SUPPRESS,
        type=parse_duration,
        help="how long to wait for an answer (default 3s)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="chaosctl", parents=[common], description="Steer chaosfs sidecars over NATS."
    )
    top = parser.add_subparsers(dest="command", required=True)

    fault = top.add_parser("fault", help="set, recover and list fault rules", parents=[common])
    verbs = fault.add_subparsers(dest="verb", required=True)

    set_ = verbs.add_parser("set", help="add or replace a rule on one sidecar", parents=[common])
    set_.add_argument("--pod", required=True, help="NAMESPACE/NAME")
    set_.add_argument("--action", required=True, choices=ACTIONS)
    set_.add_argument("--errno", help="EIO, 5, a comma list to pick from at random, or random")
    set_.add_argument("--delay", type=parse_duration, help="latency, such as 100ms")
    set_.add_argument("--jitter", type=parse_duration, help="extra random latency up to this")
    set_.add_argument("--methods", help="comma-separated operations (default: all)")
    set_.add_argument("--path", help="glob relative to the mount root; ** spans directories")
    set_.add_argument("--percent", type=float, help="share of matching operations hit (100)")
    set_.add_argument("--id", help="rule id (default: generated)")
    _add_rule_details(set_)

    rec = verbs.add_parser("recover", help="remove rules from one sidecar", parents=[common])
    rec.add_argument("--pod", required=True, help="NAMESPACE/NAME")
    which = rec.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="remove the rule with this id")
    which.add_argument("--method", help="stop faulting this operation in every rule")
    which.add_argument("--all", action="store_true", help="remove every rule")

    lst = verbs.add_parser("list", help="the rules in force on one sidecar", parents=[common])
    lst.add_argument("--pod", required=True, help="NAMESPACE/NAME")

    meth = verbs.add_parser("methods", help="operations a sidecar can fault", parents=[common])
    meth.add_argument("--pod", required=True, help="NAMESPACE/NAME")

    status = top.add_parser("status", help="one sidecar's state and counters", parents=[common])
    status.add_argument("--pod", required=True, help="NAMESPACE/NAME")
    return parser


def _add_rule_details(p: argparse.ArgumentParser) -> None:
    """The fault engine's fields beyond errno and latency."""
    p.add_argument("--attr", type=parse_attrs, help="attr: overrides, e.g. size=123,mode=0600")
    p.add_argument("--filling", choices=("zero", "random"), help="mistake: what to write")
    p.add_argument("--max-occurrences", type=int, help="mistake: corrupted runs per operation")
    p.add_argument("--max-length", type=int, help="mistake: bytes per corrupted run")
    p.add_argument("--short-bytes", type=parse_size, help="short: bytes moved (default random)")
    p.add_argument("--quota", type=parse_size, help="enospc: growth allowed, e.g. 64KiB")
    p.add_argument("--count", type=int, help="fire on at most N operations")
    p.add_argument("--after", type=int, help="let the first K matching operations pass")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--ttl", type=parse_duration, help="the sidecar drops the rule after this")
    expiry.add_argument("--expires-at", type=parse_time, help="absolute expiry (ISO 8601 or epoch)")
    p.add_argument("--caller-pid", type=int, help="only operations by this process id")
    p.add_argument("--caller-uid", type=int, help="only operations by this user id")
    p.add_argument("--caller-comm", help="only operations by processes of this name")
    p.add_argument("--seed", type=int, help="make the rule's random choices reproducible")
    p.add_argument("--dry-run", action="store_true", help="count what would happen, inject nothing")


_ATTR_INTS = ("size", "uid", "gid", "nlink", "ino", "blocks", "rdev")


def parse_attrs(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"expected name=value, got {item!r}")
        if name == "mode":
            out[name] = int(value, 8)
        elif name == "kind":
            out[name] = value
        elif name in ("atime", "mtime", "ctime"):
            out[name] = parse_time(value)
        elif name == "size":
            out[name] = parse_size(value)
        elif name in _ATTR_INTS:
            out[name] = int(value, 0)
        else:
            raise ValueError(f"unknown attribute {name!r}")
    return out


def parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use ISO 8601 or seconds since the epoch"
        ) from None


def rule_from_args(args: argparse.Namespace) -> dict[str, Any]:
    rule: dict[str, Any] = {"action": args.action}
    if args.id:
        rule["id"] = args.id
    if args.errno is not None:
        parts = [p.strip() for p in args.errno.split(",") if p.strip()]
        values: list[Any] = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
        rule["errno"] = values[0] if len(values) == 1 else values
    if args.delay is not None:
        rule["delay"] = args.delay
    if args.jitter is not None:
        rule["jitter"] = args.jitter
    if args.methods:
        rule["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.path is not None:
        rule["path"] = args.path
    if args.percent is not None:
        rule["percent"] = args.percent
    for name in (
        "attr",
        "filling",
        "max_occurrences",
        "max_length",
        "short_bytes",
        "quota",
        "count",
        "after",
        "ttl",
        "expires_at",
        "caller_pid",
        "caller_uid",
        "caller_comm",
        "seed",
    ):
        value = getattr(args, name)
        if value is not None:
            rule[name] = value
    if args.dry_run:
        rule["dry_run"] = True
    try:
        FaultRule.from_wire(dict(rule))  # refuse locally with the sidecar's own reasons
    except RuleError as exc:
        raise UsageError(f"invalid rule: {exc}") from None
    return rule


def _actor() -> str:
    return f"chaosctl@{socket.gethostname()}"


def command_for(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "status":
        return {"op": "status"}
    if args.verb == "set":
        return {"op": "set", "rules": [rule_from_args(args)], "actor": _actor()}
    if args.verb == "recover":
        command: dict[str, Any] = {"op": "recover", "actor": _actor()}
        if args.all:
            command["all"] = True
        elif args.id:
            command["id"] = args.id
        else:
            command["method"] = args.method
        return command
    if args.verb == "list":
        return {"op": "status"}
    return {"op": "methods"}


def _describe_rule(rule: dict[str, Any]) -> str:
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
    shown = {
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
    parts += [f"{k}={v}" for k, v in rule.items() if k not in shown]
    if rule.get("spent"):
        parts.append("(spent)")
    return " ".join(parts)


def render(args: argparse.Namespace, reply: dict[str, Any]) -> str:
    pod = reply["pod"]
    if args.command == "status":
        when = time.strftime("%H:%M:%S", time.localtime(time.time() - reply["uptime"]))
        lines = [
            f"pod:        {pod}",
            f"version:    {reply['version']}",
            f"mountpoint: {reply['mountpoint']} (original {reply['original']})",
            f"uptime:     {format_duration(round(reply['uptime']))} (since {when})",
            f"rules:      {len(reply['rules'])}",
        ]
        lines += ["  " + _rule_line(r) for r in reply["rules"]]
        return "\n".join(lines)
    if args.verb == "set":
        return "\n".join(
            f"rule {r['id']} set on {pod}: {_describe_rule(r)}" for r in reply["rules"]
        )
    if args.verb == "recover":
        ids = reply["recovered"]
        return f"recovered {len(ids)} rule(s) on {pod}" + (f": {', '.join(ids)}" if ids else "")
    if args.verb == "list":
        if not reply["rules"]:
            return f"no rules in force on {pod}"
        return "\n".join(_rule_line(r) for r in reply["rules"])
    return " ".join(reply["methods"])


def _rule_line(rule: dict[str, Any]) -> str:
    stats = rule.get("stats", {})
    return (
        f"{rule['id']}: {_describe_rule(rule)} "
        f"(matched {stats.get('matched', 0)}, fired {stats.get('fired', 0)})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    url = getattr(args, "nats", None) or default_url()
    timeout = getattr(args, "timeout", 3.0)
    as_json = getattr(args, "json", False)
    try:
        namespace, name = parse_pod(args.pod)
        command = command_for(args)
    except (UsageError, ValueError) as exc:
        print(f"chaosctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        reply = asyncio.run(request_pod(url, namespace, name, command, timeout))
    except Unreachable as exc:
        print(f"chaosctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Refused as exc:
        print(f"chaosctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if as_json:
        print(json.dumps(reply, sort_keys=True))
    else:
        print(render(args, reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
