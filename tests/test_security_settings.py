"""``authentication`` and ``security`` (security.py): checked when the config is built,
naming the field and never quoting a secret; mapped onto both clients' settings."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.kafka_tls import Certificates, make_certificates
from kafka_log_middleware import KafkaLogConfig
from kafka_log_middleware.config import InvalidConfig
from kafka_log_middleware.confluent import librdkafka_options
from kafka_log_middleware.security import OAuthBearer, SaslAuthentication, TlsSettings

SECRET = "PLANTED-s3cret-9d1c"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def config(**fields: Any) -> KafkaLogConfig:
    return KafkaLogConfig(bootstrap_servers=("127.0.0.1:9092",), topic="t", **fields)


def sasl(**changes: Any) -> dict[str, Any]:
    return {
        "strategy": "sasl",
        "mechanism": "SCRAM-SHA-512",
        "user": "u",
        "password": SECRET,
    } | changes


def refused(field: str, **fields: Any) -> str:
    """The message of the refusal of ``fields``, which must name ``field`` and no secret."""
    with pytest.raises(InvalidConfig) as caught:
        config(**fields)
    assert caught.value.field == field
    message = str(caught.value)
    assert SECRET not in message and "-----BEGIN" not in message
    assert field in message
    return message


# -- authentication ---------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_maps_onto_both_clients(mechanism: str) -> None:
    made = config(authentication=sasl(mechanism=mechanism))
    assert made.authentication == SaslAuthentication(mechanism=mechanism, user="u", password=SECRET)  # type: ignore[arg-type]
    aio = made.aiokafka_options()
    assert aio["security_protocol"] == "SASL_PLAINTEXT"
    assert (aio["sasl_mechanism"], aio["sasl_plain_username"], aio["sasl_plain_password"]) == (
        mechanism,
        "u",
        SECRET,
    )
    assert "ssl_context" not in aio
    rd = librdkafka_options(made)
    assert rd["security.protocol"] == "SASL_PLAINTEXT"
    assert (rd["sasl.mechanism"], rd["sasl.username"], rd["sasl.password"]) == (
        mechanism,
        "u",
        SECRET,
    )


@pytest.mark.parametrize(
    ("authentication", "says"),
    [
        (sasl(mechanism="GSSAPI"), "mechanism must be one of"),
        (sasl(mechanism=None), "mechanism must be one of"),
        (sasl(strategy="ldap"), "strategy must be 'sasl'"),
        (sasl(tokenauth=True), "tokenauth"),
        (sasl(user=None), "user is required"),
        (sasl(user=""), "user is required"),
        (sasl(password=None), "password is required"),
        (sasl(password=b"bytes"), "password must be a string"),
        (sasl(passwd=SECRET), "'passwd' is not one of its keys"),
        ("PLAIN", "must be a mapping"),
    ],
)
def test_a_bad_authentication_is_refused_naming_the_field(authentication: Any, says: str) -> None:
    assert says in refused("authentication", authentication=authentication)


# -- security -----------------------------------------------------------------------------


def test_tls_with_a_ca_maps_onto_both_clients(certs: Certificates) -> None:
    made = config(security={"ssl": True, "cafile": str(certs.ca)})
    assert isinstance(made.security, TlsSettings)
    aio = made.aiokafka_options()
    assert aio["security_protocol"] == "SSL"
    context = aio["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    rd = librdkafka_options(made)
    assert rd["security.protocol"] == "SSL"
    assert rd["ssl.ca.location"] == str(certs.ca)
    assert rd["enable.ssl.certificate.verification"] is True
    assert rd["ssl.endpoint.identification.algorithm"] == "https"
    assert "ssl.certificate.location" not in rd


def test_mtls_with_an_encrypted_key_and_sasl_ssl(certs: Certificates) -> None:
    made = config(
        authentication=sasl(),
        security={
            "ssl": True,
            "cafile": str(certs.ca),
            "certfile": str(certs.client_cert),
            "keyfile": str(certs.client_key_encrypted),
            "keyfile_password": certs.key_password,
        },
    )
    assert made.aiokafka_options()["security_protocol"] == "SASL_SSL"
    rd = librdkafka_options(made)
    assert rd["security.protocol"] == "SASL_SSL"
    assert rd["ssl.certificate.location"] == str(certs.client_cert)
    assert rd["ssl.key.location"] == str(certs.client_key_encrypted)
    assert rd["ssl.key.password"] == certs.key_password


def test_without_verification_or_hostname_check(certs: Certificates) -> None:
    unverified = config(security={"ssl": True, "ssl_verify": False})
    context = unverified.aiokafka_options()["ssl_context"]
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    rd = librdkafka_options(unverified)
    assert rd["enable.ssl.certificate.verification"] is False
    assert rd["ssl.endpoint.identification.algorithm"] == "none"
    no_hostname = config(security={"ssl": True, "cafile": str(certs.ca), "check_hostname": False})
    assert not no_hostname.aiokafka_options()["ssl_context"].check_hostname
    assert librdkafka_options(no_hostname)["ssl.endpoint.identification.algorithm"] == "none"


def test_a_users_ssl_context_is_used_by_aiokafka_and_refused_for_librdkafka() -> None:
    context = ssl.create_default_context()
    made = config(security=context)
    assert made.aiokafka_options()["ssl_context"] is context
    assert config(security={"ssl": True, "ssl_context": context}).security == made.security
    assert config(security=ssl.create_default_context()).security != made.security
    pytest.importorskip("confluent_kafka")
    assert "cannot use an ssl.SSLContext" in refused(
        "security", security=context, producer_backend="confluent"
    )


def test_ssl_false_is_plaintext() -> None:
    assert config(security={"ssl": False}).security is None
    assert config(security=None).aiokafka_options()["security_protocol"] == "PLAINTEXT"


def bad_security(certs: Certificates, tmp: Path) -> list[tuple[dict[str, Any], str]]:
    garbage = tmp / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
    )
    unreadable = tmp / "unreadable.pem"
    unreadable.write_bytes(certs.client_key.read_bytes())
    return [
        ({"ssl": True, "cafile": str(tmp / "missing.pem")}, "no such file"),
        ({"ssl": True, "capath": str(tmp / "missing")}, "no such directory"),
        ({"ssl": True, "cafile": str(garbage)}, "cafile holds no usable CA certificate"),
        ({"ssl": True, "keyfile": str(certs.client_key)}, "keyfile needs"),
        (
            {"ssl": True, "ssl_verify": False, "certfile": str(certs.client_cert)},
            "ssl_verify=False",
        ),
        (
            {
                "ssl": True,
                "certfile": str(certs.client_cert),
                "keyfile": str(certs.client_key_encrypted),
                "keyfile_password": SECRET,
            },
            "do not load",
        ),
        (
            {"ssl": True, "certfile": str(certs.client_cert), "keyfile": str(certs.ca)},
            "do not load",
        ),
        ({"ssl": False, "cafile": str(certs.ca)}, "need ssl=True"),
        ({"ssl": "yes"}, "ssl must be True or False"),
        ({"ssl": True, "verify": False}, "'verify' is not one of its keys"),
        ({"ssl": True, "ssl_context": "ctx"}, "must be an ssl.SSLContext"),
        (
            {"ssl": True, "ssl_context": ssl.create_default_context(), "cafile": str(certs.ca)},
            "replaces cafile",
        ),
    ]


def test_a_bad_security_is_refused_naming_the_field(certs: Certificates, tmp_path: Path) -> None:
    for security, says in bad_security(certs, tmp_path):
        assert says in refused("security", security=security), security


# -- secrets ------------------------------------------------------------------------------


def test_reprs_never_show_a_secret(certs: Certificates) -> None:
    made = config(
        authentication=sasl(),
        security={
            "ssl": True,
            "certfile": str(certs.client_cert),
            "keyfile": str(certs.client_key_encrypted),
            "keyfile_password": certs.key_password,
        },
    )
    for shown in (repr(made), str(made), repr(made.authentication), repr(made.security)):
        assert SECRET not in shown and certs.key_password not in shown
        assert "<hidden>" in shown


def test_a_changed_password_is_another_producer() -> None:
    first = config(authentication=sasl())
    assert first == config(authentication=sasl())
    assert first.producer_key() != config(authentication=sasl(password="other")).producer_key()


def test_from_env_and_settings_take_the_same_objects(certs: Certificates) -> None:
    environ = {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "KAFKA_LOG_TOPIC": "t",
        "KAFKA_LOG_AUTHENTICATION": orjson.dumps(
            {"mechanism": "PLAIN", "user": "u", "password": SECRET}
        ).decode(),
        "KAFKA_LOG_SECURITY": f'{{"ssl": true, "cafile": "{certs.ca}"}}',
    }
    made = KafkaLogConfig.from_env(environ=environ)
    assert made.aiokafka_options()["security_protocol"] == "SASL_SSL"
    assert made == KafkaLogConfig.from_settings(
        {
            "bootstrap_servers": "127.0.0.1:9092",
            "topic": "t",
            "authentication": {"mechanism": "PLAIN", "user": "u", "password": SECRET},
            "security": {"ssl": True, "cafile": str(certs.ca)},
        }
    )
    broken = environ | {"KAFKA_LOG_AUTHENTICATION": f'{{"password": "{SECRET}"'}
    with pytest.raises(InvalidConfig) as caught:
        KafkaLogConfig.from_env(environ=broken)
    assert "KAFKA_LOG_AUTHENTICATION" in str(caught.value) and SECRET not in str(caught.value)
    missing = environ | {
        "KAFKA_LOG_AUTHENTICATION": f'{{"mechanism": "PLAIN", "password": "{SECRET}"}}'
    }
    with pytest.raises(InvalidConfig) as caught:
        KafkaLogConfig.from_env(environ=missing)
    assert "KAFKA_LOG_AUTHENTICATION" in str(caught.value) and "user is required" in str(
        caught.value
    )


# -- OAUTHBEARER ----------------------------------------------------------------------------


def provider() -> str:
    return "token"


def test_oauthbearer_maps_onto_both_clients() -> None:
    made = config(authentication={"mechanism": "OAUTHBEARER", "token_provider": provider})
    assert made.sasl == OAuthBearer(token_provider=provider)
    aio = made.aiokafka_options()
    assert (aio["security_protocol"], aio["sasl_mechanism"]) == ("SASL_PLAINTEXT", "OAUTHBEARER")
    assert "sasl_plain_password" not in aio
    rd = librdkafka_options(made)
    assert (rd["security.protocol"], rd["sasl.mechanism"]) == ("SASL_PLAINTEXT", "OAUTHBEARER")
    assert "sasl.password" not in rd


def test_the_client_credentials_form_hides_its_secret() -> None:
    made = config(
        authentication={
            "strategy": "sasl",
            "mechanism": "OAUTHBEARER",
            "token_endpoint_url": "https://idp.example.com/token",
            "client_id": "logger",
            "client_secret": SECRET,
            "scopes": ["kafka"],
        }
    )
    assert made.sasl == OAuthBearer(
        token_endpoint_url="https://idp.example.com/token",
        client_id="logger",
        client_secret=SECRET,
        scopes=("kafka",),
    )
    assert SECRET not in repr(made) and "<hidden>" in repr(made)


def grant(**changes: Any) -> dict[str, Any]:
    fields = {
        "mechanism": "OAUTHBEARER",
        "token_endpoint_url": "https://idp.example.com/token",
        "client_id": "logger",
        "client_secret": SECRET,
    }
    return {key: value for key, value in (fields | changes).items() if value is not None}


@pytest.mark.parametrize(
    ("authentication", "says"),
    [
        ({"mechanism": "OAUTHBEARER"}, "needs a token_provider"),
        ({"mechanism": "OAUTHBEARER", "token_provider": "token"}, "must be a function"),
        ({"mechanism": "OAUTHBEARER", "token_provider": lambda x: x}, "take no arguments"),
        (grant(token_provider=provider), "not both"),
        (grant(client_secret=None), "client_secret is required"),
        (grant(client_id=None), "client_id is required"),
        (grant(token_endpoint_url="ftp://idp/token"), "http(s) URL"),
        (grant(scopes="kafka"), "list of strings"),
        (grant(scopes=["a b"]), "without spaces"),
        (grant(user="u"), "'user' is not one of its keys"),
    ],
)
def test_a_bad_oauthbearer_is_refused_naming_the_field(authentication: Any, says: str) -> None:
    assert says in refused("authentication", authentication=authentication)
