"""Prometheus metrics of chaos-controller, where an operator looks first."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LEADER = Gauge("chaosbus_controller_leader", "1 while this replica holds the lease")
INJECTIONS = Counter(
    "chaosbus_controller_injections_total",
    "Pods an experiment run tried to fault, by outcome (acked or missing)",
    ["outcome"],
)
PHASES = Counter(
    "chaosbus_controller_status_writes_total",
    "Experiment status writes, by the phase written",
    ["phase"],
)
RECONCILE_ERRORS = Counter(
    "chaosbus_controller_reconcile_errors_total",
    "Reconciles that failed (bus away, store error) and will be retried",
)
