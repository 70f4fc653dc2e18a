"""Throwaway certificates for tests, the demo and the benches, made with trustme.

``CA`` keeps a certificate authority in a folder (``ca.crt`` to trust) and issues
leaf certificates from it. trustme's leaves are good for both server and client
authentication, which is what NATS route certificates need (each server both accepts
and opens TLS connections) and harmless elsewhere. ``serving_pair`` writes one leaf
and its key the way a Secret volume update does, for servers that reload them.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

LOCALHOST = ("localhost", "127.0.0.1")


@dataclass
class CA:
    """A CA kept in ``folder``: ``ca.crt`` to trust, and ``issue`` for leaf certificates."""

    folder: Path
    authority: trustme.CA

    @property
    def cert_path(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def pem(self) -> bytes:
        return self.authority.cert_pem.bytes()

    @classmethod
    def create(cls, folder: Path, name: str = "chaosbus test CA") -> CA:
        folder.mkdir(parents=True, exist_ok=True)
        ca = cls(folder, trustme.CA(organization_name=name))
        ca.authority.cert_pem.write_to_path(str(ca.cert_path))
        return ca

    def issue(self, name: str, hostnames: Sequence[str] = LOCALHOST) -> tuple[Path, Path]:
        """Write ``<name>.crt`` and ``<name>.key``: a certificate for ``hostnames``
        (DNS names or IP addresses), good for server and client authentication."""
        leaf = self.authority.issue_cert(*hostnames, common_name=name)
        cert_path, key_path = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        _write_aside(cert_path, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        _write_aside(key_path, leaf.private_key_pem.bytes(), mode=0o600)
        return cert_path, key_path


@dataclass(frozen=True)
class Serving:
    """A server's certificate as written, and what a client must trust to accept it."""

    der: bytes  # the certificate the server presents (compare with getpeercert)
    trust_pem: str  # the CA that issued it


def serving_pair(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    hostnames: Sequence[str] = LOCALHOST,
) -> Serving:
    """A fresh CA and a serving certificate from it, written to ``cert_path`` and
    ``key_path``; each file is written aside and renamed into place, so a server that
    reloads them never reads half a file."""
    authority = trustme.CA()
    leaf = authority.issue_cert(*hostnames)
    pem = leaf.cert_chain_pems[0].bytes()
    _write_aside(Path(key_path), leaf.private_key_pem.bytes(), mode=0o600)
    _write_aside(Path(cert_path), pem)
    return Serving(ssl.PEM_cert_to_DER_cert(pem.decode()), authority.cert_pem.bytes().decode())


def _write_aside(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)
