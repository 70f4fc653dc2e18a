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
        yield from _lazy_metrics(getattr(self.control, "ops", None))


def _lazy_metrics(ops: Any) -> Iterator[Any]:
    """Lazy mode's memory and what power-cut faults did; plain ints, read unlocked."""
    cache = getattr(ops, "cache", None)
    if cache is None:
        return
    held = GaugeMetricFamily("chaosfs_lazy_held_bytes", "Unsynced write data held in memory")
    held.add_metric([], cache.held)
    yield held
    budget = GaugeMetricFamily("chaosfs_lazy_max_bytes", "Lazy mode's memory budget")
    budget.add_metric([], cache.max_bytes)
    yield budget
    files = GaugeMetricFamily("chaosfs_lazy_unsynced_files", "Files with unsynced writes")
    files.add_metric([], len(cache))
    yield files
    stats = cache.stats
    for name, what in (
        ("flushed_bytes", "Bytes written back because a program synced them"),
        ("early_bytes", "Bytes written back early to stay within the budget"),
        ("early_flushes", "Files written back early to stay within the budget"),
        ("expired_bytes", "Bytes written back by the timer, dirty longer than -lazy-expire"),
        ("expired_flushes", "Files written back by the timer"),
        ("lost_bytes", "Unsynced bytes dropped by lose-unsynced and power-cut"),
        ("torn_lost_bytes", "Unsynced bytes dropped by torn-write"),
    ):
        counter = CounterMetricFamily(f"chaosfs_lazy_{name}", what)
        counter.add_metric([], getattr(stats, name))
        yield counter


def serve(addr: str, engine: FaultEngine, control: Any) -> None:
    registry = CollectorRegistry()
    registry.register(ChaosfsCollector(engine, control))
    host, port = parse_addr(addr)
    start_http_server(port, addr=host, registry=registry)
