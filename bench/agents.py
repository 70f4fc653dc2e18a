"""``bench/agents.py``: many mount-less sidecars in one process, for scale tests
and benchmarks of the control plane (bus_bench, experiment_bench). A bench
harness, not part of what chaosbus ships.

Each agent is the real sidecar control plane (commands, fleet broadcasts,
desired state, registry, heartbeats, audit) over a fault engine, with no FUSE
mount behind it: what a fleet of a thousand pods looks like to NATS, on one
machine. Each has its own NATS connection, engine and tasks. By default they all
run on one asyncio loop (BusControl.serve): a real sidecar is a process of its
own, whose control plane never waits for another sidecar's to let go of the
interpreter lock, which hundreds of threads in one process would. With
``--thread-per-agent`` each runs on its own thread and loop instead, as in a
sidecar, to measure what that contention costs.

Usage: python bench/agents.py --nats URL --count N [--namespace NS] [--labels k=v,...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

from chaosbus.bus import BusAuth, default_url
from chaosbus.logs import configure
from chaosfs.cli import env_labels
from chaosfs.config import Config
from chaosfs.control import BusControl
from chaosfs.faults import FaultEngine
from chaosfs.inodes import InodeTable

STOP_TIMEOUT = 10.0  # seconds for every agent to say goodbye and close


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agents.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nats", default=None, help="NATS URL (default $NATS_URL)")
    parser.add_argument("--count", type=int, required=True, help="how many agents")
    parser.add_argument("--namespace", default="agents", help="their namespace")
    parser.add_argument("--prefix", default="agent-", help="pod names: PREFIX0, PREFIX1, ...")
    parser.add_argument("--labels", default="", help="labels of every agent: k=v,k2=v2")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds between beats")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--thread-per-agent",
        action="store_true",
        help="each agent on a thread and loop of its own (default: all on one loop)",
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    log = configure("chaosfs-agents", args.log_level)
    labels = env_labels({"POD_LABELS": args.labels})
    empty = tempfile.mkdtemp(prefix="chaosfs-agents-")
    agents = []
    for i in range(args.count):
        config = Config(
            original=empty,
            mountpoint="(no mount)",
            pidfile=None,
            nats_url=args.nats or default_url(),
            namespace=args.namespace,
            pod=f"{args.prefix}{i}",
            cache_timeout=0.0,
            heartbeat=args.heartbeat,
            log_level=args.log_level,
            ignored_addr=None,
            labels=labels,
            auth=BusAuth.resolve({}, os.environ),
        )
        engine = FaultEngine(InodeTable(os.open(empty, os.O_PATH | os.O_DIRECTORY)))
        agents.append(BusControl(config, engine, None, None, log.bind(pod=config.pod_ref)))
    if not args.thread_per_agent:
        asyncio.run(_serve_all(agents))
        os.rmdir(empty)
        return 0
    for agent in agents:
        agent.start()
    print(f"{len(agents)} agents running", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    for agent in agents:
        agent.request_stop()  # all at once: each says "gone" on its own thread
    # Then wait for every agent's thread to end: one still running at interpreter exit
    # can be frozen holding the logging lock that the exit's clean-up needs.
    deadline = time.monotonic() + STOP_TIMEOUT
    for agent in agents:
        agent.stop(timeout=max(0.0, deadline - time.monotonic()))
    os.rmdir(empty)
    return 0


async def _serve_all(agents: list[BusControl]) -> None:
    """Every agent on this loop until SIGTERM or SIGINT; then each says goodbye."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = [asyncio.create_task(agent.serve()) for agent in agents]
    print(f"{len(agents)} agents running", flush=True)
    await stop.wait()
    for agent in agents:
        agent.stop_serving()
    await asyncio.wait(serving, timeout=STOP_TIMEOUT)


if __name__ == "__main__":
    sys.exit(main())
