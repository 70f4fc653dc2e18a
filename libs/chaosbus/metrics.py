"""Prometheus endpoints: one HTTP server per process, on its own thread."""

from __future__ import annotations

from prometheus_client import start_http_server

from .hostport import parse_hostport


def parse_addr(addr: str) -> tuple[str, int]:
    return parse_hostport(addr, what="metrics address")


def start_metrics(addr: str) -> None:
    host, port = parse_addr(addr)
    start_http_server(port, addr=host)
