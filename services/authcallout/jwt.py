"""NATS JWTs (nats-io/jwt v2): claims signed with an nkey.

A NATS JWT is ``header.payload.signature``, each part base64url without padding; the
header says ``ed25519-nkey``, the signature is Ed25519 over the first two parts, and
``iss`` is the public nkey that signed it. The server verifies every JWT the callout
returns the same way, so what is encoded here must be exactly that shape.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

from . import nkeys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
VERSION = 2


class JwtError(ValueError):
    """A JWT that is malformed, wrongly signed, or not of the expected kind."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], signer: nkeys.KeyPair) -> str:
    """Sign ``claims`` (``iss``, ``iat`` and ``jti`` are filled in here)."""
    body = {**claims, "iss": signer.public_key, "iat": int(time.time()), "jti": ""}
    # As nats-io/jwt does: the id is a hash of the claims without it.
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


def decode(token: str, *, issuer_role: int, now: float | None = None) -> dict[str, Any]:
    """The claims of a JWT signed by the nkey (of ``issuer_role``) named in its ``iss``;
    raises JwtError when it is not one, or has expired."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError("not a JWT")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except ValueError:
        raise JwtError("not a JWT") from None
    if not isinstance(header, dict) or header.get("alg") != HEADER["alg"]:
        raise JwtError("not signed with an nkey")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise JwtError("no issuer")
    signed = f"{parts[0]}.{parts[1]}".encode()
    if not nkeys.verify(claims["iss"], issuer_role, signed, signature):
        raise JwtError("bad signature")
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp <= (time.time() if now is None else now):
        raise JwtError("expired")
    return claims


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of any JWT, its signature unchecked: for reading what someone who did
    check it (the Kubernetes API server) has vouched for. {} when it has none."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(_unb64(parts[1]))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}
