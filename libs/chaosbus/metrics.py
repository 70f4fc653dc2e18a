"""Prometheus endpoints: one HTTP server per process, on its own thread."""

from __future__ import annotations

from prometheus_client import start_http_server


def parse_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address must be HOST:PORT, got {addr!r}")
    return host or "0.0.0.0", int(port)


def start_metrics(addr: str) -> None:
    host, port = parse_addr(addr)
    start_http_server(port, addr=host)
