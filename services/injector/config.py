"""What chaos-injector runs with, read from its flags (cli.py) and used by the server."""

from __future__ import annotations

from dataclasses import dataclass, field

from chaosbus.bus import BusAuth


@dataclass(frozen=True)
class Config:
    listen: str
    tls_cert: str
    tls_key: str
    nats_url: str
    prefix: str
    log_level: str
    metrics_addr: str | None
    tls_reload_interval: float
    auth: BusAuth = field(default_factory=BusAuth)
