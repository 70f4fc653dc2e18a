"""``HOST:PORT`` as every chaosbus service takes it for a listening address.

The host may be a name, an IPv4 address or an IPv6 address in brackets
(``[::1]:9090``, as in URLs); an empty host (``:9090``) means every IPv4 interface.
A bare IPv6 address without brackets is refused: ``::1:9090`` could be read two ways.
"""

from __future__ import annotations

import argparse

ANY_HOST = "0.0.0.0"


def parse_hostport(text: str, *, what: str = "address") -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT``; ValueError with a one-line reason otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    value = text.strip()
    host, sep, port = value.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or len(port) > 5:
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    if int(port) > 65535:
        raise ValueError(f"{what}: port must be from 0 to 65535, got {port}")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"{what}: unclosed '[' in {text!r}")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(
            f"{what}: write an IPv6 address in brackets, like [::1]:9090, got {text!r}"
        )
    if any(c.isspace() or c in "[]/" for c in host):
        raise ValueError(f"{what}: {host!r} is not a host name or address")
    return host or ANY_HOST, int(port)


def hostport_arg(text: str) -> str:
    """An argparse ``type=``: a malformed address stops the program at start (exit 2)
    with the reason, not when the server is about to listen."""
    try:
        parse_hostport(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
