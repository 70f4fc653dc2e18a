"""Self-signed serving certificates for tests and the demo.

One certificate that is its own CA: give its PEM to the client (or to the
MutatingWebhookConfiguration's caBundle) as the trusted root. Hostnames that
parse as IP addresses become IP SANs, the rest DNS SANs.

    python -m injector.certs CERT KEY [HOSTNAME...]
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1")


def write_self_signed(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    days: int = 365,
) -> bytes:
    """Write a key and a self-signed certificate (PEM); return the certificate's DER.

    Each file is written aside and renamed into place, as a secret volume
    update would, so a reloading server never reads half a file.
    """
    if not hostnames:
        raise ValueError("at least one hostname is needed")
    key = ec.generate_private_key(ec.SECP256R1())  # fast to make, accepted by Go and OpenSSL
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    sans: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _replace(Path(key_path), key_pem, 0o600)
    _replace(Path(cert_path), cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert.public_bytes(serialization.Encoding.DER)


def _replace(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python -m injector.certs CERT KEY [HOSTNAME...]", file=sys.stderr)
        return 2
    write_self_signed(args[0], args[1], args[2:] or DEFAULT_HOSTNAMES)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
