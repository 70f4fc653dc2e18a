"""``chaosfs-agents``: many mount-less sidecars in one process, for scale tests
and benchmarks of the control plane.

Each agent is the real sidecar control plane (commands, fleet broadcasts,
desired state, registry, heartbeats, audit) over a fault engine, with no FUSE
mount behind it: what a fleet of a thousand pods looks like to NATS, on one
machine.

Usage: chaosfs-agents --nats URL --count N [--namespace NS] [--labels k=v,...]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

from chaosbus.bus import BusAuth, default_url
from chaosbus.logs import configure

from .cli import Config, env_labels
from .control import BusControl
from .faults import FaultEngine
from .inodes import InodeTable

STOP_TIMEOUT = 10.0  # seconds for every agent to say goodbye and close


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chaosfs-agents",
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
        agent = BusControl(config, engine, None, None, log.bind(pod=config.pod_ref))
        agent.start()
        agents.append(agent)
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


if __name__ == "__main__":
    sys.exit(main())
