"""NATS nkeys: Ed25519 keys in NATS's text form, with ``cryptography`` doing the maths.

An nkey is base32 (no padding) of a prefix byte naming its role, the 32-byte key and a
CRC-16 (XMODEM, little-endian). A seed carries two prefix bytes: "seed" and the role of
the public key it makes. Only what the callout needs is here: reading and making
account seeds, public keys of any role, signing and verifying.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SEED = 18 << 3  # "S"
ACCOUNT = 0  # "A"
SERVER = 13 << 3  # "N"
USER = 20 << 3  # "U"
OPERATOR = 14 << 3  # "O"
_ROLES = {ACCOUNT, SERVER, USER, OPERATOR}


class NkeyError(ValueError):
    """Not a well-formed nkey of the expected kind."""


def _crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0)  # CRC-16/XMODEM, the one nkeys use


def _encode(raw: bytes) -> str:
    raw += _crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).decode().rstrip("=")


def _decode(text: str) -> bytes:
    text = text.strip()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise NkeyError("not base32") from None
    if len(raw) < 4:
        raise NkeyError("too short")
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if _crc16(body) != crc:
        raise NkeyError("checksum mismatch")
    return body


def encode_public(role: int, key: bytes) -> str:
    return _encode(bytes([role]) + key)


def decode_public(text: str, role: int) -> bytes:
    """The raw 32-byte key of a public nkey, which must be of ``role``."""
    body = _decode(text)
    if len(body) != 33 or body[0] != role:
        raise NkeyError("not a public key of the expected kind")
    return body[1:]


def public_role(text: str) -> int:
    body = _decode(text)
    if len(body) != 33 or body[0] not in _ROLES:
        raise NkeyError("not a public key")
    return body[0]


@dataclass(frozen=True)
class KeyPair:
    role: int
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, role: int = ACCOUNT) -> KeyPair:
        return cls(role, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        body = _decode(seed)
        if len(body) != 34 or body[0] & 0xF8 != SEED:
            raise NkeyError("not an nkey seed")
        role = ((body[0] & 0x07) << 5) | (body[1] >> 3)
        if role not in _ROLES:
            raise NkeyError("a seed of an unknown kind")
        return cls(role, Ed25519PrivateKey.from_private_bytes(body[2:]))

    @property
    def seed(self) -> str:
        raw = self.private.private_bytes_raw()
        return _encode(bytes([SEED | self.role >> 5, (self.role & 31) << 3]) + raw)

    @property
    def public_key(self) -> str:
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return encode_public(self.role, raw)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def verify(public_key: str, role: int, data: bytes, signature: bytes) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(decode_public(public_key, role))
        key.verify(signature, data)
    except (NkeyError, InvalidSignature, ValueError):
        return False
    return True
