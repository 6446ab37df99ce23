"""Throwaway TLS material for tests: a CA, a server certificate and a client certificate.

Everything is made with ``cryptography`` in a directory the test owns (its
tmp_path); nothing is fetched or kept.  The client key can be encrypted with a
password, as the SSL block's ``password`` expects.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with ``password`` when one was given
    other_cert: Path  # a client certificate of another CA, with its key unencrypted
    other_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, usage: x509.ObjectIdentifier | None,
          ) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: str | None) -> None:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password
        else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8, enc))


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_tls_files(where: Path, password: str | None = None) -> TlsFiles:
    where.mkdir(parents=True, exist_ok=True)
    ca_key, other_ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    server_key, client_key, other_key = (ec.generate_private_key(ec.SECP256R1())
                                         for _ in range(3))
    files = TlsFiles(*(where / n for n in (
        "ca.pem", "server.pem", "server.key", "client.pem", "client.key", "other.pem",
        "other.key")))
    _write_cert(files.ca, _cert("Test CA", ca_key, "Test CA", ca_key, ca=True, usage=None))
    _write_cert(files.server_cert, _cert("server.test", server_key, "Test CA", ca_key, ca=False,
                                         usage=ExtendedKeyUsageOID.SERVER_AUTH))
    _write_key(files.server_key, server_key, None)
    _write_cert(files.client_cert, _cert("director.test", client_key, "Test CA", ca_key,
                                         ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    _write_key(files.client_key, client_key, password)
    _write_cert(files.other_cert, _cert("stranger.test", other_key, "Other CA", other_ca_key,
                                        ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    _write_key(files.other_key, other_key, None)
    return files
