"""Certificates for the test broker's TLS listeners, made with ``cryptography``.

``make_certificates(directory)`` writes a CA, the broker's PEM keystore (a PKCS#8 key
followed by its chain, as Kafka's ``ssl.keystore.type=PEM`` wants it), a client
certificate signed by the same CA (mTLS), its key in clear and encrypted, and a second,
unrelated CA (a broker it does not vouch for is untrusted). The broker's certificate
names ``localhost`` and ``127.0.0.1``; ``wrong_host`` is one that names neither, and
``expired`` one that names them but expired yesterday.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_PASSWORD = "client-key-password"
"""The password of ``Certificates.client_key_encrypted``."""


@dataclass(frozen=True)
class Certificates:
    """Paths of what ``make_certificates`` wrote."""

    ca: Path
    other_ca: Path
    broker_keystore: Path
    wrong_host_keystore: Path
    expired_keystore: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    key_password: str = KEY_PASSWORD


def make_certificates(directory: Path) -> Certificates:
    """Write a CA, broker and client certificates into ``directory`` (see the module)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _authority("kafka-log-middleware test CA")
    other_key, other = _authority("an unrelated CA")
    broker_key, broker = _leaf(
        ca_key, ca, "localhost", ExtendedKeyUsageOID.SERVER_AUTH, ["localhost", "127.0.0.1"]
    )
    wrong_key, wrong = _leaf(
        ca_key, ca, "kafka.example.com", ExtendedKeyUsageOID.SERVER_AUTH, ["kafka.example.com"]
    )
    expired_key, expired = _leaf(
        ca_key,
        ca,
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        ["localhost", "127.0.0.1"],
        expired=True,
    )
    client_key, client = _leaf(ca_key, ca, "kafka-log-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    paths = Certificates(
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        broker_keystore=directory / "broker-keystore.pem",
        wrong_host_keystore=directory / "wrong-host-keystore.pem",
        expired_keystore=directory / "expired-keystore.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        client_key_encrypted=directory / "client-key-encrypted.pem",
    )
    paths.ca.write_bytes(_pem(ca))
    paths.other_ca.write_bytes(_pem(other))
    paths.broker_keystore.write_bytes(_key(broker_key) + _pem(broker) + _pem(ca))
    paths.wrong_host_keystore.write_bytes(_key(wrong_key) + _pem(wrong) + _pem(ca))
    paths.expired_keystore.write_bytes(_key(expired_key) + _pem(expired) + _pem(ca))
    paths.client_cert.write_bytes(_pem(client))
    paths.client_key.write_bytes(_key(client_key))
    paths.client_key_encrypted.write_bytes(_key(client_key, KEY_PASSWORD))
    del other_key
    return paths


def _authority(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    name: str,
    usage: x509.ObjectIdentifier,
    hosts: list[str],
    expired: bool = False,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        now -= datetime.timedelta(days=31)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key(key: ec.EllipticCurvePrivateKey, password: str | None = None) -> bytes:
    """PKCS#8 (``BEGIN PRIVATE KEY``): the form Kafka's PEM keystore loads."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password.encode())
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
