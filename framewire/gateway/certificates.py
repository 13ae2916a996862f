"""A local certificate authority and a server certificate it signs (``serve --tls-self-signed``).

fal's clients speak only https and wss. For a server on a laptop or a LAN, this makes a
private CA once (kept in the data dir's ``tls/`` folder, key readable by its owner only) and
a server certificate for the names the server is reached by, so a client trusts the server
by trusting one file: ``SSL_CERT_FILE=<data dir>/tls/ca-bundle.pem`` (the CA appended to
certifi's public roots, so the same process still reaches public HTTPS sites).

The server certificate is made again when it is missing, expires within 30 days, or lacks
a name it is asked for; the CA is kept, so clients set up once stay set up.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
#: Kept under the 398 days browsers accept for a server certificate.
SERVER_DAYS = 397
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class LocalTls:
    """The files ``--tls-self-signed`` serves with, and the one clients trust."""

    certfile: Path  # the server certificate
    keyfile: Path
    ca_file: Path  # the CA alone (to import into a browser or OS store)
    ca_bundle: Path  # public roots + the CA: what SSL_CERT_FILE points at
    names: tuple[str, ...]  # the names and addresses the certificate is valid for


def server_names(host: str) -> tuple[str, ...]:
    """What a server listening on ``host`` is reached by: localhost, loopback addresses,
    this machine's name and, for a specific interface, that address or name."""
    names = ["localhost", "127.0.0.1", "::1"]
    hostname = socket.gethostname()
    if hostname and hostname not in names:
        names.append(hostname)
    if host and host not in ("0.0.0.0", "::", "") and host not in names:
        names.append(host)
    return tuple(names)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by its owner only, then move it into place."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(folder: Path, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    if cert_path.is_file() and key_path.is_file():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc - now > RENEW_BEFORE:
            return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FrameWire local CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"FrameWire local CA ({socket.gethostname()})"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _server_current(cert_path: Path, ca: x509.Certificate, names: Iterable[str], now: datetime.datetime) -> bool:
    if not cert_path.is_file():
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if cert.issuer != ca.subject or cert.not_valid_after_utc - now <= RENEW_BEFORE:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):  # signed by another CA of the same name
        return False
    have = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    return all(_general_name(n) in have for n in names)


def ensure(folder: Path, names: tuple[str, ...], *, now: datetime.datetime | None = None) -> LocalTls:
    """The CA and server certificate in ``folder`` (made or renewed as needed) for ``names``."""
    now = now or datetime.datetime.now(datetime.UTC)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, ca_key = _load_ca(folder, now)
    cert_path, key_path = folder / "server.pem", folder / "server-key.pem"
    if not (_server_current(cert_path, ca, names, now) and key_path.is_file()):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_file = folder / "ca.pem"
    bundle = folder / "ca-bundle.pem"
    bundle.write_bytes(_public_roots() + b"\n" + ca_file.read_bytes())
    return LocalTls(cert_path, key_path, ca_file, bundle, names)


def _public_roots() -> bytes:
    """certifi's root certificates (what httpx and fal's clients trust by default)."""
    import certifi

    return Path(certifi.where()).read_bytes()
