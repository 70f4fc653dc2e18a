"""``chaosctl``: set and recover faults on one sidecar or the fleet, lose or tear
unsynced data and cut the power (sidecars in lazy mode), list the sidecars, read
the audit trail, and apply, watch, pause and delete experiments (Chaos Mesh
IoChaos-style fault runs carried out by the chaos-controller).

Exit codes: 0 every sidecar asked acknowledged (or the controller did what was
asked); 1 one refused or failed (the reason is printed); 2 the command line or a
manifest is wrong; 3 nobody answered (no NATS, no sidecar for the pod, none of the
fleet, or no chaos-controller in time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import nats.errors
from nats.js.errors import ServiceUnavailableError

from chaosbus.bus import add_bus_arguments, auth_from_args, default_url
from chaosbus.durations import parse_duration
from chaosbus.sizes import parse_size

from . import commands, crashtest, experiments, output
from .auditlog import events
from .client import Refused, Session, Unreachable
from .commands import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, Outcome
from .rulespec import UsageError, add_lazy_flags, add_rule_flags, rule_from_args

# Lazy-mode actions may write back or kill processes (power-cut waits up to 5 s
# for them to die), so they wait longer for answers unless --timeout says otherwise.
LAZY_TIMEOUT = 10.0
LAZY_VERBS = {
    "report-unsynced": "what a power cut would lose now: unsynced files, bytes, directory ops",
    "lose-unsynced": "drop every unsynced write, as if the power went out now",
    "torn-write": "persist only part of the unsynced writes (--seed, --keep or --persist), "
    "drop the rest",
    "power-cut": "kill the app's processes that use the mount, then lose the unsynced data "
    "(--tear: tear it first)",
}


def _more_lazy_flags(p: argparse.ArgumentParser, verb: str) -> None:
    """The lazy verbs' flags for the metadata model, subset tearing and power-cut --tear."""
    if verb in ("report-unsynced", "lose-unsynced", "power-cut"):
        p.add_argument(
            "--strict-metadata",
            action="store_true",
            help="directory operations follow strict POSIX: only a directory fsync makes "
            "them durable (default: the sidecar's model, journal unless -lazy-metadata "
            "says otherwise); for lose-unsynced and power-cut it implies --metadata",
        )
    if verb == "torn-write":
        p.add_argument(
            "--persist",
            help="exactly these unsynced writes survive, by the numbers report-unsynced "
            "lists (1,3 or 2-5): a later write can survive an earlier one",
        )
        p.add_argument(
            "--force",
            action="store_true",
            help="tear files a live process is writing (refused otherwise)",
        )
    if verb == "power-cut":
        p.add_argument(
            "--tear",
            action="store_true",
            help="after the kill, tear the unsynced writes (--seed, --keep or --persist) "
            "before the rest is lost",
        )
        p.add_argument("--seed", help="with --tear: a random cut, the same for the same seed")
        p.add_argument(
            "--keep", type=parse_size, help="with --tear: bytes of each file's writes that survive"
        )
        p.add_argument("--persist", help="with --tear: the writes that survive, by number")
        p.add_argument(
            "--whole-writes", action="store_true", help="with --tear: cut only between writes"
        )
        p.add_argument(
            "--align", type=parse_size, help="with --tear: a torn write ends on a multiple of this"
        )


def _common() -> argparse.ArgumentParser:
    # Accepted before or after the subcommand, as operators type them either way.
    common = argparse.ArgumentParser(add_help=False)
    add_bus_arguments(common, suppress=True)
    common.add_argument(
        "--timeout",
        default=argparse.SUPPRESS,
        type=parse_duration,
        help="how long to wait for answers (default 3s)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    return common


def _targets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", action="append", help="only sidecars in this namespace")
    p.add_argument(
        "--selector",
        help="only pods whose labels match this Kubernetes label selector: "
        "app=db,tier!=cache,zone in (a,b),canary,!legacy",
    )
    p.add_argument("--pods", help="only pods whose name matches this glob")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="chaosctl",
        parents=[common],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top = parser.add_subparsers(dest="command", required=True)

    fault = top.add_parser(
        "fault", help="set, broadcast, recover and list fault rules", parents=[common]
    )
    verbs = fault.add_subparsers(dest="verb", required=True)
    set_ = verbs.add_parser("set", help="add or replace a rule on one sidecar", parents=[common])
    set_.add_argument("--pod", required=True, help="NAMESPACE/NAME")
    add_rule_flags(set_)

    cast = verbs.add_parser(
        "broadcast", help="one publish sets a rule on every matching sidecar", parents=[common]
    )
    _targets(cast)
    add_rule_flags(cast)

    rec = verbs.add_parser(
        "recover", help="remove rules from one sidecar or the fleet", parents=[common]
    )
    where = rec.add_mutually_exclusive_group(required=True)
    where.add_argument("--pod", help="NAMESPACE/NAME")
    where.add_argument("--fleet", action="store_true", help="every matching sidecar")
    _targets(rec)
    which = rec.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="remove the rule with this id")
    which.add_argument("--method", help="stop faulting this operation in every rule (one pod)")
    which.add_argument("--all", action="store_true", help="remove every rule")

    for verb, text in LAZY_VERBS.items():
        p = verbs.add_parser(
            verb, help=f"lazy mode: {text}", description=text + ".", parents=[common]
        )
        # --pod or --fleet is checked by the command, so that a missing or doubled
        # one is a one-line error like the other command-line mistakes here.
        p.add_argument("--pod", help="NAMESPACE/NAME")
        p.add_argument("--fleet", action="store_true", help="every matching sidecar")
        _targets(p)
        add_lazy_flags(p, verb)
        _more_lazy_flags(p, verb)

    for verb, text in (
        ("list", "the rules in force on one sidecar"),
        ("methods", "operations a sidecar can fault"),
    ):
        p = verbs.add_parser(verb, help=text, parents=[common])
        p.add_argument("--pod", required=True, help="NAMESPACE/NAME")

    status = top.add_parser(
        "status", help="one sidecar's state, counters and drift", parents=[common]
    )
    status.add_argument("--pod", required=True, help="NAMESPACE/NAME")

    cars = top.add_parser("sidecars", help="every registered sidecar", parents=[common])
    cars.add_argument("--namespace", action="append", help="only this namespace")

    audit = top.add_parser("audit", help="replay and tail the audit trail", parents=[common])
    since = audit.add_mutually_exclusive_group()
    since.add_argument("--since", type=parse_duration, help="events of the last 10m, 2h, ...")
    since.add_argument("--since-seq", type=int, help="events from this stream sequence on")
    audit.add_argument("--follow", action="store_true", help="keep printing new events")
    audit.add_argument("--pod", help="only events about NAMESPACE/NAME")
    audit.add_argument("--kind", help="only events of this kind, e.g. rule.set")
    _experiment_parsers(top, common)
    crashtest.add_parser(top, common)
    return parser


def _experiment_parsers(top: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    apply = top.add_parser(
        "apply",
        help="create or update experiments from manifests (IoChaos, IOChaos, FsChaos)",
        description="Check every document of every file, then write them all (or none). "
        "A directory gives its *.yaml, *.yml and *.json files; - reads standard input.",
        parents=[common],
    )
    apply.add_argument(
        "-f", "--filename", dest="files", action="append", required=True, help="FILE, DIR or -"
    )
    apply.add_argument(
        "--namespace", help="namespace of manifests that name none (default: default)"
    )
    apply.add_argument(
        "--wait",
        action="store_true",
        help="wait until the chaos-controller runs each one (--timeout, default 10s)",
    )

    delete = top.add_parser(
        "delete",
        help="stop experiments: the controller recovers every pod, then removes them",
        description="Waits until the chaos-controller has recovered every pod and removed "
        "the experiment (--timeout, default 30s).",
        parents=[common],
    )
    delete.add_argument("refs", nargs="*", metavar="NAMESPACE/NAME")
    delete.add_argument(
        "-f", "--filename", dest="files", action="append", help="the experiments of FILE, DIR or -"
    )
    delete.add_argument(
        "--namespace", help="namespace of manifests that name none (default: default)"
    )

    listing = top.add_parser(
        "experiments", help="every experiment, with its phase and pods", parents=[common]
    )
    listing.add_argument("--namespace", action="append", help="only this namespace")

    one = top.add_parser(
        "experiment", help="describe, pause or resume one experiment", parents=[common]
    )
    verbs = one.add_subparsers(dest="verb", required=True)
    for verb, text in (
        ("describe", "spec, status, each pod's outcome and the audit trail"),
        ("pause", "recover its pods and hold it (waits, --timeout, default 10s)"),
        ("resume", "carry on after a pause (waits, --timeout, default 10s)"),
    ):
        p = verbs.add_parser(verb, help=text, description=text + ".", parents=[common])
        p.add_argument("ref", metavar="NAMESPACE/NAME")


HANDLERS: dict[tuple[str, str | None], Callable[..., Awaitable[Outcome]]] = {
    ("fault", "set"): commands.fault_set,
    ("fault", "broadcast"): commands.fault_broadcast,
    ("fault", "recover"): commands.fault_recover,
    ("fault", "list"): commands.fault_list,
    ("fault", "methods"): commands.fault_methods,
    **{("fault", verb): commands.fault_lazy for verb in LAZY_VERBS},
    ("status", None): commands.status,
    ("sidecars", None): commands.sidecars,
    ("apply", None): experiments.apply,
    ("delete", None): experiments.delete,
    ("experiments", None): experiments.list_experiments,
    ("experiment", "describe"): experiments.describe,
    ("experiment", "pause"): experiments.pause,
    ("experiment", "resume"): experiments.resume,
    ("crash-test", None): crashtest.crash_test,
}


async def _run(args: argparse.Namespace, url: str, timeout: float, as_json: bool) -> int:
    session = await Session.open(url, timeout, auth=auth_from_args(args))
    try:
        if args.command == "audit":
            return await _audit(session, args, as_json)
        handler = HANDLERS[(args.command, getattr(args, "verb", None))]
        outcome: Outcome = await handler(session, args)
    finally:
        await session.close()
    for warning in outcome.warnings:
        print(f"chaosctl: warning: {warning}", file=sys.stderr)
    if as_json:
        print(json.dumps(outcome.data, sort_keys=True, default=str))
    elif outcome.text:
        print(outcome.text)
    # Failures of the experiment verbs, after what did get done.
    for error in getattr(outcome, "errors", ()):
        print(f"chaosctl: {error}", file=sys.stderr)
    return outcome.code


async def _audit(session: Session, args: argparse.Namespace, as_json: bool) -> int:
    since = time.time() - args.since if args.since is not None else None
    async for event in events(
        session,
        since=since,
        since_seq=args.since_seq,
        kind=args.kind,
        pod=args.pod,
        follow=args.follow,
    ):
        print(
            json.dumps(event, sort_keys=True, default=str) if as_json else output.audit_line(event),
            flush=True,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = getattr(args, "nats", None) or default_url()
    lazy = args.command == "fault" and getattr(args, "verb", None) in LAZY_VERBS
    timeout = getattr(args, "timeout", LAZY_TIMEOUT if lazy else 3.0)
    # How long to wait for the chaos-controller; NATS itself still gets `timeout`.
    wait = experiments.WAIT_DEFAULTS.get((args.command, getattr(args, "verb", None)))
    if wait is not None:
        args.wait_timeout = getattr(args, "timeout", wait)
    as_json = getattr(args, "json", False)
    try:
        if lazy:
            commands.lazy_command(args)  # a bad command line is told before connecting
        elif args.command == "fault" and args.verb in ("set", "broadcast"):
            rule_from_args(args)  # likewise a bad rule (the handler builds it again)
        elif args.command == "crash-test":
            crashtest.check_args(args)  # likewise a bad campaign
        rejected = experiments.check_input(args) if args.command == "apply" else None
        try:
            return asyncio.run(_run(args, url, timeout, as_json))
        except Unreachable as exc:
            if rejected is None:
                raise
            # Bad input stays a usage error; the refusal could not be audited.
            print(f"chaosctl: {rejected.line}", file=sys.stderr)
            print(f"chaosctl: warning: refusal not audited: {exc}", file=sys.stderr)
            return EXIT_USAGE
    except (UsageError, ValueError) as exc:
        print(f"chaosctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        print(f"chaosctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Refused as exc:
        print(f"chaosctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (nats.errors.TimeoutError, ServiceUnavailableError) as exc:
        # On a NATS cluster a stream answers once its servers agree on a leader,
        # which takes seconds after one goes away: a retry soon will get through.
        print(f"chaosctl: NATS did not answer in time ({exc}); try again", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
