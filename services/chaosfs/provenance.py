"""Whether a message on a command subject is a command that somebody sent.

Only the operator and the controller may publish commands, but NATS has two ways
around publish permissions: nats-server (2.15) does not check where a push consumer
delivers against the permissions of the client that created it, and a stream's
``republish`` sends its messages on to any subject. A role that may create a
consumer on a bucket it can write (or change a stream's settings) can thereby put a
message it wrote onto a pod's command subject or the fleet's. Such a message is not
a command, and the server marks it in ways no publisher can imitate:

- a consumer's delivery keeps the subject it was stored under (the subscription's
  subject is the deliver subject), and has a reply subject ``$JS.ACK.<stream>.
  <consumer>...``, whatever the consumer's ack policy, ``none`` included;
- its idle heartbeats and flow-control requests carry a ``Status`` header, the
  latter with a reply subject ``$JS.FC...``; ``headers_only`` deliveries carry
  ``Nats-Msg-Size``;
- a republished message carries ``Nats-Stream``, ``Nats-Subject`` and
  ``Nats-Sequence``.

A command sent with ``request`` or ``publish`` has none of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

JS_ACK = "$JS.ACK."
JS_REPLY = "$JS."
# Headers the server sets on what it delivers or republishes from a stream.
SERVER_HEADERS = ("Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Msg-Size", "Status")


@dataclass(frozen=True)
class Refusal:
    reason: str
    # Where it came from, as far as the server said: stream, consumer, stored subject.
    source: dict[str, str]


def refusal(
    subject: str, reply: str | None, headers: Mapping[Any, str] | None, listening_on: str
) -> Refusal | None:
    """Why the message is not a command, or None if it is one to read.

    ``subject`` and ``reply`` are the message's, ``listening_on`` the command subject
    the sidecar subscribed to (its pod's or the fleet's).
    """
    reply = reply or ""
    if reply.startswith(JS_ACK):
        return Refusal("delivered by a JetStream consumer", _consumer(reply, subject))
    if reply.startswith(JS_REPLY):
        return Refusal("a JetStream flow-control request", {"reply": reply[:200]})
    if headers:
        found = [h for h in SERVER_HEADERS if h in headers]
        if "Status" in found:
            return Refusal("a JetStream status message", {"status": str(headers["Status"])})
        if found:
            source = {"stream": str(headers.get("Nats-Stream", "")), "subject": subject}
            stored = headers.get("Nats-Subject")
            if stored:
                source["stored_subject"] = str(stored)[:200]
            return Refusal("republished from a JetStream stream", source)
    if subject != listening_on:
        return Refusal("delivered under another subject", {"subject": subject[:200]})
    return None


def republished_from(headers: Mapping[Any, str] | None) -> str | None:
    """The stream a stored message was republished from, or None.

    A stream's republish writes into any subject, a bucket's too: nats-server 2.15
    checks no permission, so the template-watcher (which may change its own buckets'
    streams) could plant an entry in a pod's desired state. Such an entry keeps the
    headers the server added; nothing chaosbus writes has them.
    """
    if not headers or "Nats-Stream" not in headers:
        return None
    return str(headers["Nats-Stream"])[:200]


def _consumer(reply: str, subject: str) -> dict[str, str]:
    """Stream and consumer named by an ack subject: ``$JS.ACK.<stream>.<consumer>.``
    then seven numbers (or, from servers that add a domain and an account,
    ``$JS.ACK.<domain>.<account>.<stream>.<consumer>...``)."""
    tokens = reply.split(".")
    out = {"subject": subject[:200]}
    if len(tokens) >= 12:
        out.update(stream=tokens[4], consumer=tokens[5])
    elif len(tokens) >= 4:
        out.update(stream=tokens[2], consumer=tokens[3])
    return out
