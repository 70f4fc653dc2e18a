"""A server SSLContext that picks up a rotated certificate without a restart.

cert-manager and Kubernetes secret volumes replace the files in place (a
symlink swap). Every few seconds the files' identity (inode, size, mtime) is
compared with what was loaded; on a change ``load_cert_chain`` is called on the
same SSLContext, which the listening socket keeps using: connections opened
afterwards get the new certificate, open ones keep theirs.

A pair is first loaded into a scratch context, from a private copy of the two
files taken once: OpenSSL drops the live context's private key when handed a
certificate that does not match it, so a pair caught half-way through a
rotation (key and cert from different generations) must never reach the live
context. Such a pair is retried on the next tick while the old one serves.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

from .metrics import Metrics

Stamp = tuple[tuple[int, int, int], ...]


def _stamp(*paths: str) -> Stamp:
    out = []
    for path in paths:
        st = os.stat(path)  # follows the symlinks a secret volume is made of
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ReloadingContext:
    def __init__(self, cert: str, key: str, interval: float, log: Any, metrics: Metrics) -> None:
        self.cert = cert
        self.key = key
        self.interval = interval
        self.log = log
        self.metrics = metrics
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        # Raises at start-up: a webhook without a certificate cannot serve at all.
        self._stamp = _stamp(cert, key)
        self.context.load_cert_chain(cert, key)

    def check(self) -> bool:
        """Reload if the files changed; True when a new certificate was loaded."""
        try:
            stamp = _stamp(self.cert, self.key)
        except OSError as exc:
            self.log.warning("tls_files_unreadable", error=str(exc))
            return False
        if stamp == self._stamp:
            return False
        try:
            self._load_checked()
        except (OSError, ssl.SSLError) as exc:
            self.metrics.tls_reloads.labels("failed").inc()
            self.log.warning(
                "tls_reload_failed", error=str(exc), hint="keeping the old certificate"
            )
            return False
        self._stamp = stamp
        self.metrics.tls_reloads.labels("ok").inc()
        self.log.info("tls_reloaded", cert=self.cert)
        return True

    def _load_checked(self) -> None:
        with tempfile.TemporaryDirectory(prefix="chaos-injector-tls-") as tmp:
            cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
            cert.write_bytes(Path(self.cert).read_bytes())
            key.touch(mode=0o600)
            key.write_bytes(Path(self.key).read_bytes())
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                cert, key
            )  # raises on a bad pair
            self.context.load_cert_chain(cert, key)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()
