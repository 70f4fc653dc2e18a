"""NATS subject naming.

Every subject chaosbus uses is built here, so services and chaosctl cannot
disagree about them. Pod names may contain dots (they are DNS subdomains), and a
dot separates subject tokens, so names are escaped into one reversible token.
"""

from __future__ import annotations

import re

PREFIX = "chaosbus"

# Kept as they are: what is safe in a NATS subject token and in a JetStream KV
# key alike. Everything else (the dot above all) becomes "=XX" per UTF-8 byte,
# and "=" itself is escaped, so decoding is unambiguous.
_SAFE = re.compile(r"[A-Za-z0-9_-]")
_ESCAPED = re.compile(r"(?:=[0-9A-F]{2})+")


def encode_token(value: str) -> str:
    """Turn any non-empty string into a single NATS subject token (and KV key part)."""
    if not value:
        raise ValueError("a subject token cannot be empty")
    return "".join(
        ch if _SAFE.fullmatch(ch) else "".join(f"={b:02X}" for b in ch.encode()) for ch in value
    )


def decode_token(token: str) -> str:
    return _ESCAPED.sub(
        lambda m: bytes.fromhex(m.group().replace("=", "")).decode(errors="surrogateescape"),
        token,
    )


def parse_pod(ref: str) -> tuple[str, str]:
    """Split ``NAMESPACE/NAME``; raise ValueError with a readable reason."""
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"pod must be NAMESPACE/NAME, got {ref!r}")
    return namespace, name


def pod_command(namespace: str, name: str) -> str:
    """Request/reply subject a single sidecar answers on."""
    return f"{PREFIX}.fs.cmd.{encode_token(namespace)}.{encode_token(name)}"


FLEET_COMMAND = f"{PREFIX}.fs.fleet"
"""Every sidecar subscribes here (no queue group): one publish reaches all."""

EVENT_KINDS = ("ready", "heartbeat", "gone", "inject")


def pod_event(kind: str, namespace: str, name: str) -> str:
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return f"{PREFIX}.fs.evt.{kind}.{encode_token(namespace)}.{encode_token(name)}"


def event_filter(kind: str = "*", namespace: str | None = None) -> str:
    ns = encode_token(namespace) if namespace else "*"
    return f"{PREFIX}.fs.evt.{kind}.{ns}.*"


def pod_from_event_subject(subject: str) -> tuple[str, str]:
    parts = subject.split(".")
    return decode_token(parts[-2]), decode_token(parts[-1])
