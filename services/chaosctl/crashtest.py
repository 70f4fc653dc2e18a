"""``chaosctl crash-test``: a campaign of power cuts against one lazy-mode pod.

For each cut: start the workload (a command printing one line per record the
database acknowledged), cut the power at a moment the cut's seed picks (a random
wait, or the N-th matching operation through a power-cut rule), stop the
workload, run the restart command, run the check command (it prints the records
it finds, and exits non-zero if it finds the data corrupt), and count what was
acknowledged and is gone. Every cut's seed is printed; ``--replay SEED`` makes
that one cut again, at the same place. The pod is named with ``--pod``, or found
in the registry by its mount point (``--mount``) for a chaosfs on this machine.

The commands run here, through ``sh -c``, each in a process group of its own, with
CRASH_TEST_CUT, CRASH_TEST_SEED, CRASH_TEST_POD and CRASH_TEST_MOUNT set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from chaosbus.durations import parse_duration
from chaosbus.protocol import CommandError, parse_lazy
from chaosbus.rules import METHOD_SET, FaultRule, RuleError
from chaosbus.sizes import parse_size
from chaosbus.subjects import parse_pod

from .client import Refused, Session, Unreachable
from .commands import EXIT_OK, EXIT_REFUSED, Outcome, actor
from .crashtest_plan import (
    CutPlan,
    Ledger,
    Settings,
    cut_seeds,
    digest,
    passed,
    plan_cut,
    table,
    totals,
)
from .rulespec import UsageError

POLL = 0.05  # seconds between looks at the rule while waiting for its cut
STOP_GRACE = 5.0  # seconds a workload has to end by itself once its app is dead
TAIL = 20  # lines of a command's output kept for the report
MAX_CUTS = 10_000


def add_parser(top: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = top.add_parser(
        "crash-test",
        help="lazy mode: a campaign of power cuts, restarts and checks, with a table of losses",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--pod", help="NAMESPACE/NAME of a lazy-mode sidecar")
    where.add_argument("--mount", help="the mount point of a chaosfs -lazy on this machine")
    p.add_argument("--workload", required=True, help="prints one line per acknowledged record")
    p.add_argument("--restart", required=True, help="brings the app up (also before cut 1)")
    p.add_argument("--check", required=True, help="prints the records found; non-zero: corrupt")
    p.add_argument("--cuts", type=int, default=10, help="how many cuts (10)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="campaign seed: the same cuts again")
    seeds.add_argument("--replay", type=int, metavar="SEED", help="make the one cut of this seed")
    p.add_argument(
        "--at",
        choices=("time", "op"),
        default="time",
        help="cut after a random wait (time) or at a random matching operation (op)",
    )
    p.add_argument(
        "--earliest",
        type=parse_duration,
        default=0.1,
        help="time: shortest wait after the first acknowledged record (100ms)",
    )
    p.add_argument("--latest", type=parse_duration, default=1.0, help="time: longest wait (1s)")
    p.add_argument("--methods", default="fsync", help="op: the operations counted (fsync)")
    p.add_argument("--path", default="**", help="op: only operations on this glob (**)")
    p.add_argument(
        "--ops", type=int, default=50, help="op: cut at one of the first N matching operations (50)"
    )
    p.add_argument(
        "--when",
        choices=("before", "after", "random"),
        default="random",
        help="op: cut before or after the operation (random: by the seed)",
    )
    p.add_argument(
        "--metadata",
        action="store_true",
        help="cuts also lose directory operations no fsync made durable",
    )
    p.add_argument(
        "--strict-metadata",
        action="store_true",
        help="cuts lose directory operations as strict POSIX allows, not as a journal does",
    )
    p.add_argument(
        "--tear",
        action="store_true",
        help="cuts tear the unsynced writes at a random place, the cut's seed choosing it",
    )
    p.add_argument("--tear-align", type=parse_size, help="with --tear: tear on multiples of this")
    p.add_argument("--signal", default="KILL", help="sent to the app's processes (KILL)")
    p.add_argument(
        "--loss-window",
        type=parse_duration,
        metavar="DURATION",
        help="losses of records acknowledged within this long before a cut are "
        "expected (Redis everysec: 2s) and do not fail the campaign",
    )
    p.add_argument(
        "--cut-timeout",
        type=parse_duration,
        default=30.0,
        help="longest wait for the workload's first record or the operation (30s)",
    )
    p.add_argument(
        "--command-timeout",
        type=parse_duration,
        default=120.0,
        help="longest a restart or check may take (2m)",
    )


def check_args(args: argparse.Namespace) -> Settings:
    """Refuse a bad command line before anything connects."""
    if not args.pod and not args.mount:
        raise UsageError("crash-test needs --pod NAMESPACE/NAME or --mount PATH")
    if args.pod:
        parse_pod(args.pod)
    if not 1 <= args.cuts <= MAX_CUTS:
        raise UsageError(f"--cuts must be from 1 to {MAX_CUTS}, got {args.cuts}")
    if not 0 <= args.earliest <= args.latest:
        raise UsageError("--earliest must be at least 0 and at most --latest")
    if args.ops < 1:
        raise UsageError(f"--ops must be at least 1, got {args.ops}")
    for name in ("cut_timeout", "command_timeout"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be above zero")
    if args.loss_window is not None and args.loss_window < 0:
        raise UsageError("--loss-window must not be negative")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = sorted(set(methods) - METHOD_SET)
    if unknown:
        raise UsageError(f"--methods: unknown operation(s) {', '.join(unknown)}")
    for name in ("workload", "restart", "check"):
        if not getattr(args, name).strip():
            raise UsageError(f"--{name} must not be empty")
    settings = Settings(
        args.at, args.earliest, args.latest, methods, args.path, args.ops, args.when
    )
    if args.tear_align is not None and not args.tear:
        raise UsageError("--tear-align needs --tear")
    try:  # the rule and the command the cuts use, checked as the sidecar will
        rule = _cut_rule(plan_cut(0, Settings(**{**settings.__dict__, "at": "op"})), args, "c")
        parse_lazy(FaultRule.from_wire(rule).cut_command())
    except (RuleError, CommandError) as exc:
        raise UsageError(f"invalid cut: {exc}") from None
    return settings


def _cut_fields(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """What every cut of the campaign does besides killing: the metadata model, the
    tear (seeded by the cut's seed, so that a replay tears alike) and the signal."""
    fields: dict[str, Any] = {"metadata": bool(args.metadata or args.strict_metadata)}
    if args.strict_metadata:
        fields["model"] = "strict"
    if args.tear:
        fields["tear"] = {"seed": seed}
        if args.tear_align is not None:
            fields["tear"]["align"] = args.tear_align
    sig = args.signal.strip()
    fields["signal"] = int(sig) if sig.isdigit() else sig
    return fields


def _cut_rule(plan: CutPlan, args: argparse.Namespace, rule_id: str) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "id": rule_id,
        "action": "power-cut",
        "methods": [m.strip() for m in args.methods.split(",") if m.strip()],
        "path": args.path,
        "after": plan.after,
        "count": 1,
        "when": plan.when or "before",
        **_cut_fields(args, plan.seed),
        # Gone by itself should this campaign die: it must not cut a later run.
        "ttl": args.cut_timeout + 60.0,
    }
    FaultRule.from_wire(dict(rule))
    return rule


@dataclass
class Workload:
    """The workload's process and the lines it printed, each with when it was read."""

    proc: asyncio.subprocess.Process
    lines: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    async def _read(self, stream: asyncio.StreamReader | None, out: bool) -> None:
        if stream is None:
            return
        while line := await stream.readline():
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            if out:
                self.lines.append((time.time(), text))
                self.first.set()
            else:
                self.errors = [*self.errors[-(TAIL - 1) :], text]

    async def stop(self) -> None:
        """Give it STOP_GRACE to end by itself (its app is dead), then kill its group."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), STOP_GRACE)
        _kill_group(self.proc)
        await self.proc.wait()
        await asyncio.gather(*self.readers, return_exceptions=True)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class Campaign:
    def __init__(self, s: Session, args: argparse.Namespace, settings: Settings) -> None:
        self.s = s
        self.args = args
        self.settings = settings
        self.namespace = ""
        self.name = ""
        self.mount = args.mount or ""
        self.ledger = Ledger()
        self.rows: list[dict[str, Any]] = []

    # --- the commands --------------------------------------------------------------

    def _env(self, cut: int, seed: int) -> dict[str, str]:
        return {
            **os.environ,
            "CRASH_TEST_CUT": str(cut),
            "CRASH_TEST_SEED": str(seed),
            "CRASH_TEST_POD": f"{self.namespace}/{self.name}",
            "CRASH_TEST_MOUNT": self.mount,
        }

    async def _spawn(self, cmd: str, env: dict[str, str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_shell(
            cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own group: stopped whole, never hit by our signals
        )

    async def _run(self, cmd: str, env: dict[str, str]) -> tuple[int, list[str], list[str]]:
        """A restart or check: exit code (-1: timed out), stdout lines, stderr tail."""
        proc = await self._spawn(cmd, env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.args.command_timeout)
        except TimeoutError:
            _kill_group(proc)
            await proc.wait()
            return -1, [], [f"timed out after {self.args.command_timeout:g}s"]
        lines = [x.strip() for x in out.decode(errors="replace").splitlines() if x.strip()]
        errs = [x for x in err.decode(errors="replace").splitlines() if x.strip()][-TAIL:]
        return proc.returncode or 0, lines, errs

    async def _workload(self, env: dict[str, str]) -> Workload:
        proc = await self._spawn(self.args.workload, env)
        work = Workload(proc)
        work.readers = [
            asyncio.create_task(work._read(proc.stdout, True)),
            asyncio.create_task(work._read(proc.stderr, False)),
        ]
        return work

    # --- the pod -------------------------------------------------------------------

    async def find_pod(self) -> None:
        if self.args.pod:
            self.namespace, self.name = parse_pod(self.args.pod)
        else:
            wanted = os.path.realpath(self.args.mount)
            found = [
                e
                for e in await self.s.sidecars()
                if not e.get("lost")
                and isinstance(e.get("mountpoint"), str)
                and os.path.realpath(e["mountpoint"]) == wanted
            ]
            if not found:
                raise Unreachable(f"no live sidecar in the registry serves the mount {wanted}")
            self.namespace, self.name = parse_pod(str(found[0]["pod"]))
        status = await self.s.status(self.namespace, self.name)
        if not (status.get("lazy") or {}).get("enabled"):
            raise Refused(f"{self.pod} is not in lazy mode: start its chaosfs with -lazy")
        self.mount = self.mount or str(status.get("mountpoint") or "")
        here = os.path.realpath(os.getcwd())
        mount = os.path.realpath(self.mount).rstrip("/") + "/" if self.args.mount else None
        if mount is not None and (here + "/").startswith(mount):
            # The cut kills whatever has its working directory under the mount: us too.
            raise UsageError(f"run crash-test from outside the mount {self.mount}")

    @property
    def pod(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        return await self.s.request_pod(self.namespace, self.name, {**command, "actor": actor()})

    async def _power_cut(self, seed: int) -> dict[str, Any]:
        reply = await self._ask({"op": "power-cut", **_cut_fields(self.args, seed)})
        return {"killed": reply.get("killed", []), "survivors": reply.get("survivors", [])}

    async def _rule_cut(self, rule_id: str, work: Workload) -> dict[str, Any] | None:
        """Wait for the rule's cut; None if the workload ended or time ran out first."""
        deadline = time.monotonic() + self.args.cut_timeout
        while time.monotonic() < deadline:
            status = await self._ask({"op": "status"})
            rule = next((r for r in status.get("rules", []) if r.get("id") == rule_id), None)
            last = ((rule or {}).get("stats") or {}).get("last_cut")
            if last:
                return dict(last)
            if work.proc.returncode is not None and not ((rule or {}).get("stats") or {}).get(
                "fired"
            ):
                return None  # the workload is over and the operation never came
            await asyncio.sleep(POLL)
        return None

    # --- one cut -------------------------------------------------------------------

    async def cut(self, index: int, plan: CutPlan) -> dict[str, Any]:
        env = self._env(index, plan.seed)
        row: dict[str, Any] = {"cut": index, "seed": plan.seed, "trigger": plan.to_wire()}
        row["trigger"]["text"] = plan.describe()
        rule_id = f"crash-test-{plan.seed}-{index}"
        if plan.at == "op":
            await self._ask({"op": "set", "rules": [_cut_rule(plan, self.args, rule_id)]})
        work = await self._workload(env)
        try:
            cut: dict[str, Any] | None = None
            if plan.at == "op":
                cut = await self._rule_cut(rule_id, work)
                if cut is None:
                    row["trigger"]["missed"] = True
                    row["trigger"]["text"] += " (missed)"
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work.first.wait(), self.args.cut_timeout)
                await asyncio.sleep(plan.delay)
            if cut is None:
                cut = await self._power_cut(plan.seed)
                # When the reply came: the app was dead by then, so no record it
                # acknowledged is younger (a little older than the kill itself).
                cut["at"] = time.time()
        finally:
            await work.stop()
            if plan.at == "op":
                with contextlib.suppress(Refused, Unreachable):
                    await self._ask({"op": "recover", "id": rule_id})
        acks = list(work.lines)
        row.update(acknowledged=len(acks), survivors=cut.get("survivors", []))
        row["killed"] = len(cut.get("killed", []))
        if not acks and work.errors:
            row["workload_errors"] = work.errors
        self.ledger.acknowledge(acks)
        await self._restart_and_check(row, env, float(cut.get("at") or time.time()))
        return row

    async def _restart_and_check(self, row: dict[str, Any], env: dict[str, str], at: float) -> None:
        code, _, errs = await self._run(self.args.restart, env)
        row.update(restart="ok", check="skipped", corruption=None, lost=0, beyond_window=0)
        row.update(lost_window=None, lost_records=[], found=None, survived=None)
        if code != 0:
            row["restart"] = "failed"
            row["restart_errors"] = errs
            return
        code, found, errs = await self._run(self.args.check, env)
        present = set(found)
        row["check"] = "ok"
        if code != 0:
            row["corruption"] = (errs or found or [f"exit {code}"])[-1]
            row["check_errors"] = errs
        loss = self.ledger.settle(present, at, self.args.loss_window)
        row.update(lost=len(loss.lost), lost_window=loss.window, beyond_window=loss.beyond)
        row.update(lost_records=loss.lost[:TAIL], found=len(present), survived=digest(present))

    # --- the campaign ----------------------------------------------------------------

    async def run(self, seeds: list[int]) -> None:
        code, _, errs = await self._run(self.args.restart, self._env(0, 0))
        if code != 0:
            raise Refused("the restart command failed before the first cut: " + " | ".join(errs))
        for index, seed in enumerate(seeds, 1):
            if self.rows and self.rows[-1]["restart"] == "failed":
                code, _, errs = await self._run(self.args.restart, self._env(index, seed))
                if code != 0:
                    break  # the app stays down: no later cut could tell anything
            plan = plan_cut(seed, self.settings)
            try:
                row = await self.cut(index, plan)
            except (Refused, Unreachable) as exc:
                self.rows.append(_failed_row(index, plan, str(exc)))
                break
            self.rows.append(row)
            print(_progress(row, len(seeds)), file=sys.stderr, flush=True)


def _failed_row(index: int, plan: CutPlan, error: str) -> dict[str, Any]:
    trigger = {**plan.to_wire(), "text": plan.describe()}
    return {
        "cut": index,
        "seed": plan.seed,
        "trigger": trigger,
        "acknowledged": 0,
        "lost": 0,
        "beyond_window": 0,
        "restart": "skipped",
        "check": "skipped",
        "corruption": None,
        "survivors": [],
        "lost_window": None,
        "error": error,
    }


def _progress(row: dict[str, Any], cuts: int) -> str:
    return (
        f"crash-test: cut {row['cut']}/{cuts} seed {row['seed']} at {row['trigger']['text']}: "
        f"acknowledged {row['acknowledged']}, lost {row['lost']}, restart {row['restart']}, "
        f"check {'corrupt' if row['corruption'] else row['check']}"
    )


async def crash_test(s: Session, args: argparse.Namespace) -> Outcome:
    settings = check_args(args)
    if "timeout" not in vars(args):
        s.timeout = 10.0  # a power cut waits up to 5 s for the processes to die
    if args.replay is not None:
        campaign_seed = None
        seeds = [args.replay]
    else:
        campaign_seed = args.seed
        if campaign_seed is None:
            campaign_seed = random.SystemRandom().randrange(2**32)
        seeds = cut_seeds(campaign_seed, args.cuts)
    campaign = Campaign(s, args, settings)
    await campaign.find_pod()
    await campaign.run(seeds)
    summary = totals(campaign.rows)
    ok = passed(summary) and len(campaign.rows) == len(seeds)
    where = f"operations ({args.methods} on {args.path})" if args.at == "op" else "random moments"
    seeded = f"campaign seed {campaign_seed}" if args.replay is None else f"replay {args.replay}"
    head = f"crash-test of {campaign.pod}: {len(seeds)} cut(s) at {where}, {seeded}"
    data = {
        "pod": campaign.pod,
        "mount": campaign.mount,
        "campaign_seed": campaign_seed,
        "replay": args.replay,
        "at": args.at,
        "loss_window": args.loss_window,
        "cuts": campaign.rows,
        "totals": summary,
        "ok": ok,
    }
    return Outcome(EXIT_OK if ok else EXIT_REFUSED, table(head, campaign.rows, summary), data)
