"""Rule flags on the command line, turned into a rule the sidecars accept."""

from __future__ import annotations

import argparse
import datetime
import math
import re
import time
from typing import Any

from chaosbus import labels
from chaosbus.durations import parse_duration
from chaosbus.kvlist import parse_pairs
from chaosbus.protocol import CommandError, parse_lazy
from chaosbus.rules import ACTIONS, MAX_TTL_SECONDS, FaultRule, RuleError, new_rule_id
from chaosbus.sizes import parse_size


class UsageError(ValueError):
    pass


def add_rule_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--action", required=True, choices=ACTIONS)
    p.add_argument("--errno", help="EIO, 5, a comma list to pick from at random, or random")
    p.add_argument("--delay", type=duration, help="latency, such as 100ms")
    p.add_argument("--jitter", type=duration, help="extra random latency up to this")
    p.add_argument("--methods", help="comma-separated operations (default: all)")
    paths = p.add_mutually_exclusive_group()
    paths.add_argument("--path", help="glob relative to the mount root; ** spans directories")
    paths.add_argument(
        "--path-regex",
        help='RE2 regex searched anywhere in "/" + the path (Chaos Mesh v0.9 IoChaos path)',
    )
    p.add_argument("--percent", type=float, help="share of matching operations hit (100)")
    p.add_argument("--id", help="rule id (default: generated)")
    p.add_argument("--attr", type=parse_attrs, help="attr: overrides, e.g. size=123,mode=0600")
    p.add_argument("--filling", choices=("zero", "random"), help="mistake: what to write")
    p.add_argument("--max-occurrences", type=int, help="mistake: corrupted runs per operation")
    p.add_argument("--max-length", type=int, help="mistake: bytes per corrupted run")
    p.add_argument("--short-bytes", type=parse_size, help="short: bytes moved (default random)")
    p.add_argument("--quota", type=parse_size, help="enospc: growth allowed, e.g. 64KiB")
    p.add_argument("--count", type=int, help="fire on at most N operations")
    p.add_argument("--after", type=int, help="let the first K matching operations pass")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--ttl", type=duration, help="the sidecar drops the rule after this")
    expiry.add_argument("--expires-at", type=parse_time, help="absolute expiry (ISO 8601 or epoch)")
    p.add_argument("--caller-pid", type=int, help="only operations by this process id")
    p.add_argument("--caller-uid", type=int, help="only operations by this user id")
    p.add_argument("--caller-comm", help="only operations by processes of this name")
    p.add_argument("--seed", type=int, help="make the rule's random choices reproducible")
    p.add_argument("--dry-run", action="store_true", help="count what would happen, inject nothing")
    cut = p.add_argument_group("power-cut (lazy mode): cut the power at the matching operation")
    cut.add_argument(
        "--when",
        choices=("before", "after"),
        help="cut before the operation runs (it never happens; the default) or right after it",
    )
    cut.add_argument("--signal", help="sent to the app's processes: KILL (default), TERM, 9, ...")
    cut.add_argument(
        "--metadata",
        action="store_true",
        help="also lose the directory operations no fsync made durable",
    )
    cut.add_argument(
        "--strict-metadata",
        action="store_true",
        help="lose directory operations as strict POSIX allows (only a directory fsync "
        "makes them durable), not as a journaling file system does",
    )
    cut.add_argument("--tear-seed", help="tear the unsynced writes at a random cut first")
    cut.add_argument("--tear-keep", type=parse_size, help="tear: bytes of each file that survive")
    cut.add_argument("--tear-persist", help="tear: the writes that survive, by number: 1,3,5-7")
    cut.add_argument("--tear-align", type=parse_size, help="tear: torn writes end on multiples")
    cut.add_argument("--tear-whole-writes", action="store_true", help="tear between writes only")


_ATTR_INTS = ("size", "uid", "gid", "nlink", "ino", "blocks", "rdev")
_PASSED_THROUGH = (
    "attr",
    "filling",
    "max_occurrences",
    "max_length",
    "short_bytes",
    "quota",
    "count",
    "after",
    "expires_at",
    "caller_pid",
    "caller_uid",
    "caller_comm",
    "seed",
    "when",
)


def parse_attrs(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in parse_pairs(text, what="--attr"):
        if not value:
            raise ValueError(f"--attr: {name} needs a value")
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


def duration(text: str) -> float:
    """A duration flag. "nan" and "inf" come back as such, for ``check_numbers`` to
    refuse in one line rather than argparse in a screenful of usage."""
    try:
        value = float(text)
    except ValueError:
        return parse_duration(text)
    return value if not math.isfinite(value) else parse_duration(text)


# Numeric flags (attribute name, flag) that must be finite: NaN passes every range
# check, and a NaN or infinite expiry makes the sidecar's expiry timer spin.
_FINITE = (
    ("delay", "--delay"),
    ("jitter", "--jitter"),
    ("percent", "--percent"),
    ("ttl", "--ttl"),
    ("expires_at", "--expires-at"),
)


def check_numbers(args: argparse.Namespace) -> None:
    """Refuse NaN and infinities in rule flags; needs no connection, so it can run first."""
    for name, flag in _FINITE:
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise UsageError(f"invalid rule: {flag} must be a finite number, got {value}")
    for name, value in (getattr(args, "attr", None) or {}).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"invalid rule: --attr {name} must be a finite number, got {value}")


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
    """The rule's wire form, validated here with the sidecar's own rules.

    The id is fixed now and a ttl becomes an absolute expiry, so that the command
    and the desired state recorded for it describe the very same rule.
    """
    check_numbers(args)
    rule: dict[str, Any] = {"action": args.action, "id": args.id or new_rule_id()}
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
    if args.path_regex is not None:
        rule["path_regex"] = args.path_regex
    if args.percent is not None:
        rule["percent"] = args.percent
    for name in _PASSED_THROUGH:
        value = getattr(args, name)
        if value is not None:
            rule[name] = value
    if args.ttl is not None:
        if args.ttl <= 0:
            raise UsageError("invalid rule: ttl must be a positive number of seconds")
        if args.ttl > MAX_TTL_SECONDS:
            raise UsageError(f"invalid rule: ttl may be at most {MAX_TTL_SECONDS:g} seconds")
        rule["expires_at"] = time.time() + args.ttl
    if args.dry_run:
        rule["dry_run"] = True
    if getattr(args, "signal", None) is not None:
        rule["signal"] = int(args.signal) if args.signal.strip().isdigit() else args.signal
    if getattr(args, "metadata", False):
        rule["metadata"] = True
    if getattr(args, "strict_metadata", False):
        rule["model"] = "strict"
        rule["metadata"] = True
    tear = _tear_from_args(args)
    if tear:
        rule["tear"] = tear
    try:
        made = FaultRule.from_wire(dict(rule))
        if made.action == "power-cut":
            parse_lazy(made.cut_command())  # the cut it will make, checked as the sidecar will
    except (RuleError, CommandError) as exc:
        raise UsageError(f"invalid rule: {exc}") from None
    return rule


def _tear_from_args(args: argparse.Namespace) -> dict[str, Any]:
    tear: dict[str, Any] = {}
    if getattr(args, "tear_seed", None) is not None:
        tear["seed"] = _seed(args.tear_seed)
    if getattr(args, "tear_keep", None) is not None:
        tear["keep"] = args.tear_keep
    if getattr(args, "tear_persist", None) is not None:
        tear["persist"] = _numbers(args.tear_persist)
    if tear and getattr(args, "tear_align", None) is not None:
        tear["align"] = args.tear_align
    if tear and getattr(args, "tear_whole_writes", False):
        tear["whole_writes"] = True
    if not tear and (getattr(args, "tear_align", None) or getattr(args, "tear_whole_writes", 0)):
        raise UsageError("--tear-align and --tear-whole-writes need --tear-seed, -keep or -persist")
    return tear


def _numbers(text: str) -> list[int]:
    """1,3,5-7: write numbers as report-unsynced lists them."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise UsageError(f"--tear-persist takes write numbers such as 1,3 or 2-5, got {text!r}")
        low, high = int(first), int(last) if dash else int(first)
        if high < low or high - low > 4096:
            raise UsageError(f"--tear-persist: bad range {part!r}")
        out.extend(range(low, high + 1))
    return out


def target_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """A fleet target from --namespace (repeatable), --selector (a Kubernetes label
    selector) and --pods GLOB."""
    selector = (args.selector or "").strip()
    if selector:
        try:
            labels.parse(selector)
        except labels.SelectorError as exc:
            raise UsageError(f"--selector: {exc}") from None
    target: dict[str, Any] = {}
    if args.namespace:
        target["namespaces"] = list(args.namespace)
    if selector:
        target["selector"] = selector
    if args.pods:
        target["pods"] = args.pods
    return target


def add_lazy_flags(p: argparse.ArgumentParser, verb: str) -> None:
    """Flags of the lazy-mode verbs: report-unsynced, lose-unsynced, torn-write, power-cut."""
    p.add_argument("--path", help="only files under this glob (default **, everything)")
    if verb in ("lose-unsynced", "power-cut"):
        p.add_argument(
            "--metadata",
            action="store_true",
            help="also roll back directory operations (create, rename, unlink, ...) "
            "that no fsync of their directory made durable",
        )
    if verb == "power-cut":
        p.add_argument("--signal", help="sent to the app's processes: KILL (default), TERM, 9, ...")
    if verb == "torn-write":
        p.add_argument("--seed", help="a random cut, the same for the same writes and seed")
        p.add_argument(
            "--keep", type=parse_size, help="bytes of each file's unsynced writes that survive"
        )
        p.add_argument(
            "--whole-writes", action="store_true", help="cut only between writes, never inside one"
        )
        p.add_argument(
            "--align", type=parse_size, help="a torn write ends on a multiple of this (4KiB, ...)"
        )


def lazy_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The fields of a lazy-mode command; the sidecar's defaults stand for those not given."""
    fields: dict[str, Any] = {}
    if args.path is not None:
        fields["path"] = args.path
    if getattr(args, "metadata", False):
        fields["metadata"] = True
    if getattr(args, "signal", None) is not None:
        fields["signal"] = int(args.signal) if args.signal.isdigit() else args.signal
    if args.verb == "torn-write":
        if args.seed is not None and args.keep is not None:
            raise UsageError("torn-write takes --seed or --keep, not both")
        if args.seed is None and args.keep is None:
            raise UsageError(
                "torn-write needs --seed S (a random cut), --keep BYTES (what survives) "
                "or --persist N,M (which writes survive)"
            )
        if args.seed is not None:
            fields["seed"] = _seed(args.seed)
        else:
            fields["keep"] = args.keep
        if args.whole_writes:
            fields["whole_writes"] = True
        if args.align is not None:
            fields["align"] = args.align
    return fields


def _seed(text: str) -> int | str:
    """A number stays a number (it prints and audits as one); anything else is a string."""
    if not re.fullmatch(r"-?[0-9]+", text):
        return text
    value = int(text)
    return value if -(2**63) <= value < 2**63 else text
