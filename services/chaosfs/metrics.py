"""chaosfs's Prometheus metrics, read from the engine when scraped.

Nothing here runs on the FUSE request path: the engine keeps plain counters,
and this collector turns them into metrics only when Prometheus asks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from chaosbus.metrics import parse_addr

from .faults import FaultEngine


class ChaosfsCollector(Collector):
    def __init__(self, engine: FaultEngine, control: Any) -> None:
        self.engine = engine
        self.control = control

    def collect(self) -> Iterator[Any]:
        rules = GaugeMetricFamily("chaosfs_rules", "Fault rules in force", labels=["action"])
        by_action: dict[str, int] = {}
        for rule in self.engine.rules.rules:
            by_action[rule.action] = by_action.get(rule.action, 0) + 1
        for action, n in sorted(by_action.items()):
            rules.add_metric([action], n)
        yield rules
        fired = CounterMetricFamily(
            "chaosfs_faults_fired", "Faults fired", labels=["action", "method"]
        )
        for (action, method), n in sorted(dict(self.engine.fired_by).items()):
            fired.add_metric([action, method], n)
        yield fired
        commands = CounterMetricFamily(
            "chaosfs_commands", "Bus commands received", labels=["op", "result"]
        )
        for (op, result), n in sorted(dict(self.control.commands).items()):
            commands.add_metric([op, result], n)
        yield commands
        dropped = CounterMetricFamily(
            "chaosfs_injection_events_dropped", "Injection events not sent (rate limit)"
        )
        dropped.add_metric([], self.engine.events_dropped)
        yield dropped
        connected = GaugeMetricFamily("chaosfs_bus_connected", "1 while connected to NATS")
        connected.add_metric([], 1 if self.control.connected else 0)
        yield connected


def serve(addr: str, engine: FaultEngine, control: Any) -> None:
    registry = CollectorRegistry()
    registry.register(ChaosfsCollector(engine, control))
    host, port = parse_addr(addr)
    start_http_server(port, addr=host, registry=registry)
