"""Connecting to NATS the same way from every service and from chaosctl.

Credentials and TLS come from flags, the environment or files, in that order:
user and password (``NATS_USER``, ``NATS_PASSWORD`` or ``NATS_PASSWORD_FILE``),
a token (``NATS_TOKEN``, or ``NATS_TOKEN_FILE``, read again at every connect), a
creds file (``NATS_CREDS``), an nkey seed file (``NATS_NKEY``), and TLS
(``NATS_CA``, ``NATS_CERT``, ``NATS_KEY``).

Each role's replies arrive under its own inbox prefix, ``_INBOX_<user>`` (see
``role_inbox_prefix``), which deploy/nats/nats.conf lets only that user subscribe to:
no role can read the replies and consumer deliveries meant for another. A sidecar
that connects with its pod's token (the auth callout of
deploy/nats/nats-callout.conf) has no user name: its inboxes are its pod's, see
``pod_inbox_prefix``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from .subjects import encode_token

DEFAULT_URL = "nats://127.0.0.1:4222"
# nats-py's own prefix, kept when there is no user name (local runs without auth,
# tokens, creds files): the server's permissions, if any, then decide.
DEFAULT_INBOX_PREFIX = "_INBOX"
_NOT_IN_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def role_inbox_prefix(user: str | None) -> str:
    """The inbox prefix of a NATS user: ``_INBOX_<user>``, one subject token.

    nats-py derives every inbox from it: request replies (``request``, and so
    every JetStream API call and KV get), JetStream publish acks, the deliver
    subjects of push and ordered consumers (KV watches, ``chaosctl audit``) and
    pull consumers' inboxes. Characters a subject token cannot hold (``.``,
    ``*``, ``>``, spaces) become ``_``.
    """
    if not user:
        return DEFAULT_INBOX_PREFIX
    return f"{DEFAULT_INBOX_PREFIX}_{_NOT_IN_TOKEN.sub('_', user)}"


def pod_inbox_prefix(namespace: str, pod: str) -> str:
    """The inbox prefix of one pod's sidecar under the auth callout:
    ``_INBOX_chaosfs.<namespace>.<pod>``, names escaped into single tokens.

    chaos-auth lets that pod, and no other client, subscribe below it; no static
    user is called ``chaosfs``, so no role's own prefix covers it.
    """
    return f"{DEFAULT_INBOX_PREFIX}_chaosfs.{encode_token(namespace)}.{encode_token(pod)}"


class _QuietTLSClose(logging.Filter):
    """asyncio warns on every TLS connection nats-py closes; it means nothing here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_QuietTLSClose())


def default_url() -> str:
    return os.environ.get("NATS_URL") or DEFAULT_URL


@dataclass(frozen=True)
class BusAuth:
    user: str | None = None
    password: str | None = None
    password_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    creds: str | None = None
    nkey: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def resolve(cls, given: Mapping[str, str | None], env: Mapping[str, str]) -> BusAuth:
        """Flags first, then ``NATS_*`` environment variables."""
        values = {}
        for f in fields(cls):
            values[f.name] = given.get(f.name) or env.get(f"NATS_{f.name.upper()}") or None
        return cls(**values)

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``; raises ValueError on unreadable files."""
        out: dict[str, Any] = {}
        password = self.password
        if password is None and self.password_file:
            password = _read(self.password_file, "password file").strip()
        if self.user:
            out["user"] = self.user
            out["password"] = password or ""
            # Only this user may subscribe to its prefix (nats.conf).
            out["inbox_prefix"] = role_inbox_prefix(self.user)
        if self.token_file:
            out["token"] = _token_reader(self.token_file)
        elif self.token:
            out["token"] = self.token
        if self.creds:
            _read(self.creds, "creds file")
            out["user_credentials"] = self.creds
        if self.nkey:
            _read(self.nkey, "nkey seed file")
            out["nkeys_seed"] = self.nkey
        if self.ca or self.cert:
            context = ssl.create_default_context(cafile=self.ca)
            if self.cert:
                context.load_cert_chain(self.cert, self.key)
            out["tls"] = context
        return out


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read NATS {what} {path}: {exc.strerror}") from None


def _token_reader(path: str) -> Callable[[], str]:
    """The token in ``path``, read at every connect and reconnect (nats-py calls a
    callable token each time it sends CONNECT).

    The kubelet renews a pod's projected ServiceAccount token in place, well before it
    expires, and the auth callout checks the token again at every reconnect: a token
    read once at start would be refused after a server restart an hour later. An
    unreadable file at start is an error; later (a renewal caught half-way), the last
    token read is sent again.
    """
    last = _read(path, "token file").strip()
    if not last:
        raise ValueError(f"NATS token file {path} is empty")

    def read() -> str:
        nonlocal last
        with contextlib.suppress(ValueError):
            last = _read(path, "token file").strip() or last
        return last

    return read


def add_bus_arguments(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """--nats and the credential/TLS flags, for the argparse-based commands."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("NATS connection")
    group.add_argument("--nats", default=default, help="NATS URL(s) (default $NATS_URL)")
    for name, text in (
        ("user", "user name ($NATS_USER)"),
        ("password-file", "file holding the password ($NATS_PASSWORD_FILE; or $NATS_PASSWORD)"),
        ("creds", "creds file, JWT and nkey seed ($NATS_CREDS)"),
        ("nkey", "nkey seed file ($NATS_NKEY)"),
        ("tls-ca", "CA bundle to verify the server ($NATS_CA)"),
        ("tls-cert", "client certificate ($NATS_CERT)"),
        ("tls-key", "client key ($NATS_KEY)"),
    ):
        group.add_argument(f"--nats-{name}", default=default, help=text)


def auth_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> BusAuth:
    def get(name: str) -> str | None:
        value: str | None = getattr(args, f"nats_{name}", None)
        return value

    given = {
        "user": get("user"),
        "password_file": get("password_file"),
        "creds": get("creds"),
        "nkey": get("nkey"),
        "ca": get("tls_ca"),
        "cert": get("tls_cert"),
        "key": get("tls_key"),
    }
    return BusAuth.resolve(given, os.environ if env is None else env)


async def connect(
    url: str,
    *,
    name: str,
    reconnect_forever: bool = True,
    connect_timeout: float = 2.0,
    auth: BusAuth | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_error: Callable[[Exception], Awaitable[None]] | None = None,
    inbox_prefix: str | None = None,
    **extra: Any,
) -> Client:
    """Open a connection; services reconnect forever, chaosctl fails fast.

    Replies come under ``inbox_prefix`` when given, else under the user's own
    (``_INBOX_<user>``), else under nats-py's ``_INBOX``.
    """

    async def _quiet_error(exc: Exception) -> None:
        if on_error is not None:
            await on_error(exc)

    options: dict[str, Any] = {
        "servers": [u.strip() for u in url.split(",") if u.strip()],
        "name": name,
        "connect_timeout": connect_timeout,
        "allow_reconnect": reconnect_forever,
        "max_reconnect_attempts": -1 if reconnect_forever else 0,
        "reconnect_time_wait": 0.5,
        "error_cb": _quiet_error,
        **(auth or BusAuth.resolve({}, os.environ)).options(),
        **extra,
    }
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    if on_reconnect is not None:
        options["reconnected_cb"] = on_reconnect
    if on_disconnect is not None:
        options["disconnected_cb"] = on_disconnect
    return await nats.connect(**options)
