"""How long a chaos-controller experiment takes, from apply to every selected pod
acknowledged, against the same rule sent by ``chaosctl fault broadcast``.

Starts its own stack as bus_bench does (benchstack's FleetStack): a nats-server,
N mount-less sidecars (``bench/agents.py``) in P processes, then one
``chaos-controller``, and waits until every agent is registered and the controller
leads. Two cases, each in R rounds in which the experiment and the broadcast take
turns going first:

- ``mode: all``: a Chaos Mesh v0.9 IoChaos (errno EIO on every open) over the
  agents' namespace, against ``chaosctl fault broadcast --namespace NS`` of the same
  rule;
- ``mode: fixed-percent``, value 10: the controller picks one agent in ten at random,
  against a broadcast to the agents whose names end in 0 (``--pods '*0'``: each
  agents process runs a multiple of ten, so that this glob covers exactly one in ten).

An experiment is timed from just before ``chaosctl apply -f`` to the first status
in EXPERIMENT_STATUS (watched as it is written) that says Running with every
selected pod "injected"; then it is deleted (``deleting`` set, as ``chaosctl
delete`` does) and the bench waits for the controller to remove it. A broadcast is
timed from the start of ``chaosctl fault broadcast`` to its return, every target
acknowledged; then ``fault recover --fleet --id`` takes the rule off. Both chaosctl
commands run in this process, through chaosctl's own parser and handlers, so
neither figure counts Python's start-up. Before each run the bench waits until
the stack is back to its idle CPU use, so that the audit writes of the previous
run do not land in the next one.

Usage: ``python bench/experiment_bench.py [--quick] [--count N] [--processes P]
[--rounds R] [--keep]``. ``--quick`` is a smoke run (50 agents, 2 rounds).
Benchmarks are not tests: the exit status says whether every run was fully
acknowledged, not whether the goal was met.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
from benchstack import (
    AGENTS_PER_PROCESS,
    BIN,
    COMMAND_TIMEOUT,
    NAMESPACE,
    Batch,
    FleetStack,
    OthersMeter,
    busy_note,
    child_setup,
    cpu_seconds,
    ctl,
    fmt_ms,
    running_fleet,
    since,
    spawn,
    split,
    start_agents,
    verdict,
)

from chaosbus import codec
from chaosbus.experiments.store import MAX_ENTRY_BYTES, ExperimentStore, Status, key_of
from chaosbus.protocol import Target
from chaosctl import commands, experiments
from chaosctl.client import Session

ACK_TIMEOUT = "10s"  # the controller's --ack-timeout
OVERHEAD_GOAL = 20.0  # percent the experiment may take beyond the broadcast
PERCENT = 10  # the fixed-percent case's value
PERCENT_GLOB = "*0"  # names ending in 0: one agent in ten, with ten per process
RULE_FLAGS = ("--action", "errno", "--errno", "EIO", "--methods", "open")
RUN_TIMEOUT = 60.0  # seconds for one experiment to be injected, or deleted
QUIET_WINDOW = 0.2  # seconds of CPU use sampled when waiting for the stack to be idle
QUIET_MARGIN = 0.1  # of one CPU above the idle rate that still counts as idle
QUIET_TIMEOUT = 15.0


@dataclass(frozen=True)
class Plan:
    agents: int
    processes: int
    rounds: int


FULL = Plan(agents=1000, processes=4, rounds=5)
QUICK = Plan(agents=50, processes=2, rounds=2)


@dataclass(frozen=True)
class Case:
    name: str  # also the experiments' and rules' name stem
    mode: str
    value: str | None
    pods_glob: str | None  # the broadcast's --pods


CASES = (
    Case("all", "all", None, None),
    Case("percent", "fixed-percent", str(PERCENT), PERCENT_GLOB),
)


@dataclass
class Runs:
    """One case's timings (ms), one entry per round."""

    targets: int = 0
    experiment: list[float] = field(default_factory=list)  # apply to every pod injected
    apply: list[float] = field(default_factory=list)  # the apply command alone
    started: list[float] = field(default_factory=list)  # apply to the run's start
    controller_cpu: list[float] = field(default_factory=list)  # during each experiment
    broadcast: list[float] = field(default_factory=list)


# --- the stack ----------------------------------------------------------------------------


def batches(plan: Plan) -> list[Batch]:
    """The agents processes, each running a multiple of ten agents (see PERCENT_GLOB)."""
    counts = [10 * n for n in split(plan.agents // 10, plan.processes)]
    return [Batch(f"agents-{i}", n, f"agent-p{i}-") for i, n in enumerate(counts)]


async def start_controller(stack: FleetStack) -> None:
    """Spawn chaos-controller and wait until it leads."""
    log = stack.log("controller")
    cmd = [
        str(BIN / "chaos-controller"),
        *("--nats", stack.url, "--identity", "bench", "--ack-timeout", ACK_TIMEOUT),
    ]
    stack.procs["controller"] = spawn(cmd, log, child_setup)
    deadline = time.monotonic() + 30
    while '"event": "leading"' not in log.read_text(errors="replace"):
        stack.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after 30 s waiting for chaos-controller to lead")
        await asyncio.sleep(0.05)


def stack_cpu(stack: FleetStack) -> float:
    return sum(cpu_seconds(p.pid) for p in stack.procs.values())


async def cpu_rate(stack: FleetStack, seconds: float) -> float:
    """The stack's CPU use over ``seconds``, in CPUs."""
    before = stack_cpu(stack)
    await asyncio.sleep(seconds)
    return (stack_cpu(stack) - before) / seconds


async def quiet(stack: FleetStack, idle: float) -> None:
    """Until the stack is back near its idle CPU use (the last run's audit writes and
    recoveries are done), at most QUIET_TIMEOUT."""
    deadline = time.monotonic() + QUIET_TIMEOUT
    while await cpu_rate(stack, QUIET_WINDOW) > idle + QUIET_MARGIN:
        stack.check_alive()
        if time.monotonic() > deadline:
            print("experiment_bench: the stack never went idle; timing anyway", file=sys.stderr)
            return


# --- one experiment -------------------------------------------------------------------------


def manifest(case: Case, name: str) -> dict[str, Any]:
    """A Chaos Mesh v0.9 IoChaos: errno EIO (5) on every open, the agents' namespace."""
    spec: dict[str, Any] = {
        "action": "errno",
        "errno": "5",
        "mode": case.mode,
        "layer": "fs",
        "percent": "100",
        "path": "",
        "methods": ["open"],
        "selector": {"namespaces": [NAMESPACE]},
    }
    if case.value is not None:
        spec["value"] = case.value
    return {
        "apiVersion": "chaos-mesh.org/v1alpha1",
        "kind": "IoChaos",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


async def apply(s: Session, path: Path) -> None:
    """``chaosctl apply -f PATH``, without --wait: it returns once the entry is written."""
    outcome = await experiments.apply(s, ctl("apply", "-f", str(path)))
    if outcome.code != commands.EXIT_OK:
        raise RuntimeError(f"chaosctl apply -f {path}: exit {outcome.code}: {outcome.text}")


async def running(stack: FleetStack, watcher: Any, ref: str) -> Status:
    """The first status of ``ref`` in phase Running, as the controller writes it."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        stack.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ref}: not running within {RUN_TIMEOUT:g} s")
        try:
            update = await watcher.updates(timeout=1.0)  # then see that the stack is alive
        except nats.errors.TimeoutError:
            continue
        if update is None or update.value is None:
            continue  # the end of the (empty) initial values
        st = Status.from_wire(codec.decode(update.value, limit=MAX_ENTRY_BYTES))
        if st.phase == "Failed":
            raise RuntimeError(f"{ref} failed: {st.message}")
        if st.phase == "Running":
            return st


def injected(st: Status) -> bool:
    return all(p in st.pods and st.pods[p].outcome == "injected" for p in st.selected)


async def experiment_run(
    stack: FleetStack, s: Session, store: ExperimentStore, case: Case, name: str, out: Runs
) -> None:
    ref = f"{NAMESPACE}/{name}"
    path = stack.root / f"{name}.json"
    path.write_text(json.dumps(manifest(case, name)))
    controller = stack.procs["controller"].pid
    watcher = await store.status_kv.watch(key_of(ref))
    try:
        cpu, wall, t0 = cpu_seconds(controller), time.time(), time.perf_counter()
        await apply(s, path)
        out.apply.append(since(t0))
        st = await running(stack, watcher, ref)
        total = since(t0)
        out.controller_cpu.append(round(1000 * (cpu_seconds(controller) - cpu), 1))
    finally:
        await watcher.stop()
    if not injected(st) or len(st.selected) != out.targets:
        raise RuntimeError(
            f"{ref}: {len(st.acked)} of {len(st.selected)} selected pods injected, "
            f"{out.targets} expected: {st.message}"
        )
    out.experiment.append(total)
    # The controller stamps the run's start with its clock, the same as ours here.
    out.started.append(1000 * ((st.started_at or math.nan) - wall))
    await delete(stack, store, ref)


async def delete(stack: FleetStack, store: ExperimentStore, ref: str) -> None:
    """Set ``deleting``, as ``chaosctl delete`` does; wait until the controller removed it."""
    found = await store.get_spec(ref)
    if found is None:
        raise RuntimeError(f"{ref} vanished before it was deleted")
    entry, revision = found
    await store.update_spec(ref, dataclasses.replace(entry, deleting=True), revision)
    deadline = time.monotonic() + RUN_TIMEOUT
    while await store.get_spec(ref) is not None:
        stack.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ref}: not deleted within {RUN_TIMEOUT:g} s")
        await asyncio.sleep(0.02)


# --- one broadcast ----------------------------------------------------------------------------


def target_flags(case: Case) -> list[str]:
    return ["--namespace", NAMESPACE, *(["--pods", case.pods_glob] if case.pods_glob else [])]


async def broadcast_run(s: Session, case: Case, rule_id: str, want: set[str], out: Runs) -> None:
    args = ctl("fault", "broadcast", *target_flags(case), *RULE_FLAGS, "--id", rule_id)
    t0 = time.perf_counter()
    outcome = await commands.fault_broadcast(s, args)
    ms = since(t0)
    acked = set(outcome.data["acked"])
    if outcome.code != commands.EXIT_OK or acked != want:
        raise RuntimeError(
            f"fault broadcast --id {rule_id}: exit {outcome.code}, {len(acked & want)} of "
            f"{len(want)} acknowledged, {len(acked - want)} others: {outcome.text[:300]}"
        )
    out.broadcast.append(ms)
    args = ctl("fault", "recover", "--fleet", *target_flags(case), "--id", rule_id)
    outcome = await commands.fault_recover(s, args)
    if outcome.code != commands.EXIT_OK:
        raise RuntimeError(f"fault recover --fleet --id {rule_id}: {outcome.text[:300]}")


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Results:
    runs: dict[str, Runs]
    idle: float  # the stack's CPU use at rest, in CPUs
    others_percent: float


async def measure(stack: FleetStack, plan: Plan) -> Results:
    s = await Session.open(stack.url, COMMAND_TIMEOUT)
    try:
        await s.desired_bucket()  # start_agents counts watches on it
        store = await ExperimentStore.open(s.nc)
        await start_agents(stack, s, NAMESPACE, batches(plan))
        await start_controller(stack)
        idle = await cpu_rate(stack, 1.0)
        meter = OthersMeter([p.pid for p in stack.procs.values()])
        results: dict[str, Runs] = {}
        for case in CASES:
            # Whom the broadcast reaches, by the sidecars' own matching; the experiment
            # must select as many.
            target = Target({"namespaces": [NAMESPACE], "pods": case.pods_glob})
            want = {f"{NAMESPACE}/{p}" for p in stack.fleet if target.matches(NAMESPACE, p, {})}
            runs = results[case.name] = Runs(targets=len(want))
            for r in range(plan.rounds):
                name = f"bench-{case.name}-{r}"
                kinds = ("experiment", "broadcast") if r % 2 == 0 else ("broadcast", "experiment")
                for kind in kinds:
                    await quiet(stack, idle)
                    if kind == "experiment":
                        await experiment_run(stack, s, store, case, name, runs)
                    else:
                        await broadcast_run(s, case, name, want, runs)
        return Results(results, idle, meter.percent())
    finally:
        await s.close()


# --- the report --------------------------------------------------------------------------------


LABEL = 68


def ms_row(label: str, values: list[float]) -> str:
    cells = "".join(f"{fmt_ms(v):>9}" for v in values)
    return f"{label:<{LABEL}}{cells}{fmt_ms(statistics.median(values)):>10}"


def report_case(case: Case, r: Runs, plan: Plan) -> None:
    how = "mode all" if case.value is None else f"mode {case.mode}, value {case.value}"
    print(f"\n{how}: {r.targets} of {plan.agents} agents, {plan.rounds} rounds (ms)")
    header = "".join(f"{f'run {i + 1}':>9}" for i in range(plan.rounds))
    print(f"{'':<{LABEL}}{header}{'median':>10}")
    print(ms_row("experiment: apply to every selected pod injected", r.experiment))
    print(ms_row("  of which chaosctl apply -f itself", r.apply))
    print(ms_row("  apply to the controller starting the run", r.started))
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    print(ms_row(f"  controller CPU time meanwhile (in {tick:g} ms ticks)", r.controller_cpu))
    flags = shlex.join(target_flags(case))
    print(ms_row(f"baseline: chaosctl fault broadcast {flags}", r.broadcast))
    ratios = [e / b for e, b in zip(r.experiment, r.broadcast, strict=True)]
    median = statistics.median(r.experiment) / statistics.median(r.broadcast)
    cells = "".join(f"{f'{x:.2f}x':>9}" for x in ratios)
    print(f"{'experiment / broadcast':<{LABEL}}{cells}{f'{median:.2f}x':>10}")
    overhead = 100 * (median - 1)
    print(
        f"goal: the controller's overhead on the broadcast under {OVERHEAD_GOAL:g}%: "
        f"{verdict(overhead < OVERHEAD_GOAL)} ({overhead:+.1f}% on the medians)"
    )


def report(results: Results, plan: Plan, stack: FleetStack, elapsed: float) -> None:
    sizes = sorted({b.count for b in batches(plan)})
    print(
        f"experiment_bench: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, nats-server {stack.nats_version}; {plan.agents} mount-less "
        f"agents in {plan.processes} processes of {' or '.join(map(str, sizes))}, one "
        f"chaos-controller (--ack-timeout {ACK_TIMEOUT}), all on one machine; chaosctl "
        "commands run in the bench's process; ratios are figure / baseline of this run"
    )
    for case in CASES:
        report_case(case, results.runs[case.name], plan)
    print(
        f"\ntotal {elapsed:.0f} s; the stack at rest used {100 * results.idle:.0f}% of one CPU; "
        f"processes other than the bench's used {results.others_percent:.0f}% of one CPU"
        + busy_note(results.others_percent)
    )


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[Plan, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="experiment_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    p.add_argument("--count", type=int, help="agents, a multiple of 10 (default 1000)")
    p.add_argument("--processes", type=int, help="processes the agents are split over")
    p.add_argument("--rounds", type=int, help="experiments and broadcasts of each case, each")
    p.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    agents = args.count or plan.agents
    if agents < 10 or agents % 10:
        p.error("--count must be a multiple of 10, so that a name glob covers one agent in ten")
    processes = args.processes or max(2, math.ceil(agents / AGENTS_PER_PROCESS))
    plan = Plan(agents, min(processes, agents // 10), args.rounds or plan.rounds)
    if plan.processes < 1 or plan.rounds < 1:
        p.error("--processes and --rounds must be positive")
    return plan, args


def main(argv: list[str] | None = None) -> int:
    plan, args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    with running_fleet("experiment_bench", args.keep) as stack:
        results = asyncio.run(measure(stack, plan))
    report(results, plan, stack, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
