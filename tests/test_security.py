"""Secured Kafka against real listeners: SASL (PLAIN, SCRAM-SHA-256/512) over
SASL_PLAINTEXT and SASL_SSL, TLS with server authentication, and mTLS, on both backends.

One broker (its own JVM, for the session) has every listener (``SecuredListeners``),
with certificates made here (``devtools/kafka_tls.py``). Each case publishes through
its listener and the entries are read back through the broker's PLAINTEXT listener and
compared whole with what the same requests give without security; so do a Flask app's
(the WSGI door, its settings in ``app.config``). Refusals (a wrong password, an unknown
user, an untrusted, expired or mismatched broker certificate, a missing client
certificate, a token that cannot be had) are named, counted and fixed by
``update_config()``; nothing we emit holds a planted secret.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devtools.kafka_tls import Certificates
from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware, _log
from tests.asgi_driver import http_scope, lifespan, request
from tests.kafka_helpers import PASSWORD, USER, SecuredKafka, consume, unique_topic
from tests.oauth_server import token_endpoint, unsecured_token
from tests.polling import eventually, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def sasl(mechanism: str) -> dict[str, Any]:
    return {"strategy": "sasl", "mechanism": mechanism, "user": USER, "password": PASSWORD}


Settings = Callable[[Certificates], dict[str, Any]]
CASES: dict[str, tuple[str, Settings]] = {
    "sasl-plain": ("SASL_PLAINTEXT", lambda c: {"authentication": sasl("PLAIN")}),
    "sasl-scram-sha-256": ("SASL_PLAINTEXT", lambda c: {"authentication": sasl("SCRAM-SHA-256")}),
    "sasl-scram-sha-512": ("SASL_PLAINTEXT", lambda c: {"authentication": sasl("SCRAM-SHA-512")}),
    "ssl": ("SSL", lambda c: {"security": {"ssl": True, "cafile": str(c.ca)}}),
    "mtls": (
        "MTLS",
        lambda c: {
            "security": {
                "ssl": True,
                "cafile": str(c.ca),
                "certfile": str(c.client_cert),
                "keyfile": str(c.client_key),
            }
        },
    ),
    "mtls-encrypted-key": (
        "MTLS",
        lambda c: {
            "security": {
                "ssl": True,
                "cafile": str(c.ca),
                "certfile": str(c.client_cert),
                "keyfile": str(c.client_key_encrypted),
                "keyfile_password": c.key_password,
            }
        },
    ),
    "sasl-ssl-plain": (
        "SASL_SSL",
        lambda c: {"authentication": sasl("PLAIN"), "security": {"ssl": True, "cafile": str(c.ca)}},
    ),
    "sasl-ssl-scram-sha-512": (
        "SASL_SSL",
        lambda c: {
            "authentication": sasl("SCRAM-SHA-512"),
            "security": {"ssl": True, "cafile": str(c.ca)},
        },
    ),
}


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["item_id"]})


def scopes() -> list[dict[str, Any]]:
    return [
        http_scope(
            f"/items/{n}",
            query=f"n={n}".encode(),
            headers=[(b"host", b"testserver"), (b"x-n", str(n).encode())],
        )
        for n in range(3)
    ]


async def publish(config: KafkaLogConfig) -> dict[str, int]:
    """Serve ``scopes()`` through the middleware; its stats once all is delivered."""
    app = Starlette(routes=[Route("/items/{item_id}", item, name="item")])
    middleware = KafkaLogMiddleware(app, config)
    async with lifespan(middleware):
        for scope in scopes():
            assert (await request(middleware, scope)).status == 200
        await eventually(lambda: middleware.stats()["delivered"] == len(scopes()), timeout=60)
        return middleware.stats()


def comparable(raw: bytes) -> dict[str, Any]:
    """An entry without what differs from run to run (times)."""
    entry: dict[str, Any] = orjson.loads(raw)
    entry.pop("latencies")
    entry.pop("started_at")
    return entry


async def entries(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    records = await consume(bootstrap, topic, len(scopes()), settle=0.5)
    found = [comparable(record.value) for record in records if record.value is not None]
    return sorted(found, key=lambda e: str(e["request"]["headers"]["x-n"]))


@pytest.fixture(scope="module")
def reference() -> dict[str, list[dict[str, Any]]]:
    """Per backend, the entries of ``scopes()`` published without security (filled once)."""
    return {}


async def publish_reference(
    secured_kafka: SecuredKafka, backend: str, reference: dict[str, list[dict[str, Any]]]
) -> None:
    """Fill ``reference[backend]``: the entries of ``scopes()`` published without security."""
    if backend in reference:
        return
    plaintext = secured_kafka.broker.bootstrap_servers
    topic = unique_topic(f"security-reference-{backend}")
    await publish(
        KafkaLogConfig(
            bootstrap_servers=(plaintext,),
            topic=topic,
            producer_backend=backend,  # type: ignore[arg-type]
            producer_async_flush_timeout=20,
        )
    )
    reference[backend] = await entries(plaintext, topic)
    assert len(reference[backend]) == len(scopes())


@pytest.mark.parametrize("case", list(CASES))
async def test_each_mechanism_publishes_the_same_entries(
    secured_kafka: SecuredKafka,
    backend: str,
    case: str,
    reference: dict[str, list[dict[str, Any]]],
) -> None:
    await publish_reference(secured_kafka, backend, reference)
    broker, certs = secured_kafka.broker, secured_kafka.certs
    plaintext = broker.bootstrap_servers
    listener, settings = CASES[case]
    topic = unique_topic(f"security-{case}-{backend}")
    config = KafkaLogConfig(
        bootstrap_servers=(broker.listener(listener),),
        topic=topic,
        producer_backend=backend,  # type: ignore[arg-type]
        producer_async_flush_timeout=20,
        **settings(certs),
    )
    stats = await publish(config)
    assert stats["enqueued"] == stats["delivered"] == len(scopes())
    assert stats["dropped"] == 0
    assert await entries(plaintext, topic) == reference[backend]


# -- refusals at runtime: named, counted, never the secret; update_config recovers -------

PLANTED = "PLANTED-wrong-password-7f3a"
"""A wrong password: it must not appear in anything we log."""


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A listener that refuses ``wrong`` settings, the settings that fix it (towards
    ``fixed_listener`` when the fault is the broker's), and what the warning names."""

    listener: str
    wrong: Settings
    right: Settings
    cause: str
    fixed_listener: str | None = None


TLS = {"ssl": True}
REFUSALS: dict[str, Refusal] = {
    "wrong-password": Refusal(
        "SASL_PLAINTEXT",
        lambda c: {"authentication": {**sasl("SCRAM-SHA-256"), "password": PLANTED}},
        lambda c: {"authentication": sasl("SCRAM-SHA-256")},
        "SASL authentication failed",
    ),
    "unknown-user": Refusal(
        "SASL_PLAINTEXT",
        lambda c: {"authentication": {**sasl("SCRAM-SHA-512"), "user": "mallory"}},
        lambda c: {"authentication": sasl("SCRAM-SHA-512")},
        "SASL authentication failed",
    ),
    "untrusted-certificate": Refusal(
        "SSL",
        lambda c: {"security": {**TLS, "cafile": str(c.other_ca)}},
        lambda c: {"security": {**TLS, "cafile": str(c.ca)}},
        "the broker's certificate is not accepted (self-signed certificate in certificate chain)",
    ),
    "expired-certificate": Refusal(
        "SSL_EXPIRED",
        lambda c: {"security": {**TLS, "cafile": str(c.ca)}},
        lambda c: {"security": {**TLS, "cafile": str(c.ca)}},
        "the broker's certificate is not accepted (certificate has expired)",
        fixed_listener="SSL",
    ),
    "hostname-mismatch": Refusal(
        "SSL_WRONG_HOST",
        lambda c: {"security": {**TLS, "cafile": str(c.ca)}},
        lambda c: {"security": {**TLS, "cafile": str(c.ca), "check_hostname": False}},
        "the broker's certificate is not accepted (IP address mismatch",
    ),
    "no-client-certificate": Refusal(
        "MTLS",
        lambda c: {"security": {**TLS, "cafile": str(c.ca)}},
        CASES["mtls"][1],
        "the broker requires a client certificate",
    ),
}


async def refused_then_fixed(
    config: KafkaLogConfig, fixed: KafkaLogConfig, caplog: pytest.LogCaptureFixture
) -> tuple[dict[str, int], list[str]]:
    """Serve ``scopes()`` under ``config`` until all are dropped as refused, then under
    ``fixed`` (``update_config``) until all are delivered: the final stats, and what we
    showed meanwhile (reprs, stats), for the planted-secret grep."""
    app = Starlette(routes=[Route("/items/{item_id}", item, name="item")])
    middleware = KafkaLogMiddleware(app, config)
    with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
        async with lifespan(middleware):
            for scope in scopes():
                assert (await request(middleware, scope)).status == 200
            await eventually(lambda: middleware.stats()["dropped_security"] == 3, timeout=60)
            middleware.update_config(fixed)
            for scope in scopes():
                assert (await request(middleware, scope)).status == 200
            await eventually(lambda: middleware.stats()["delivered"] == 3, timeout=60)
            stats = middleware.stats()
            emitted = [repr(middleware), str(middleware.config), repr(stats)]
            emitted += [repr(producer) for producer in middleware.producers()]
    return stats, emitted


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_refused_connection_is_named_counted_and_fixed_by_update_config(
    secured_kafka: SecuredKafka, backend: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused on every attempt: one warning naming the cause (never the secret), the
    entries dropped as ``security`` after the retry budget, the app unaffected; the
    fixed settings given to ``update_config()`` deliver the next entries."""
    _log.reset()
    broker, certs = secured_kafka.broker, secured_kafka.certs
    refusal = REFUSALS[case]
    topic = unique_topic(f"refused-{case}-{backend}")
    config = KafkaLogConfig(
        bootstrap_servers=(broker.listener(refusal.listener),),
        topic=topic,
        producer_backend=backend,  # type: ignore[arg-type]
        producer_async_flush_timeout=20,
        producer_request_retries_max_attempts=2,
        **refusal.wrong(certs),
    )
    fixed = config.replace(
        bootstrap_servers=(broker.listener(refusal.fixed_listener or refusal.listener),),
        **refusal.right(certs),
    )
    stats, emitted = await refused_then_fixed(config, fixed, caplog)
    assert stats["enqueued"] == 6
    assert stats["dropped"] == stats["dropped_security"] == 3
    assert stats["pending"] == 0
    refusals = [
        r.getMessage() for r in caplog.records if "refuses the connection" in r.getMessage()
    ]
    assert refusals, caplog.text
    assert all(refusal.cause in message for message in refusals), refusals
    emitted += [r.getMessage() for r in caplog.records]
    emitted += [repr(config), caplog.text]
    assert not [text for text in emitted if PLANTED in text or PASSWORD in text]
    assert len(await consume(broker.bootstrap_servers, topic, 3, settle=0.5)) == 3


# -- OAUTHBEARER (Kafka's unsecured-JWS validator) ----------------------------------------


def sync_provider() -> str:
    return unsecured_token("logger")


async def async_provider() -> tuple[str, float]:
    return unsecured_token("logger"), time.time() + 3600


def failing_provider() -> str:
    raise RuntimeError(f"the identity provider is down ({PLANTED})")


@pytest.mark.parametrize("listener", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("provider", [sync_provider, async_provider], ids=["sync", "async"])
async def test_oauthbearer_with_a_token_provider(
    secured_kafka: SecuredKafka,
    backend: str,
    listener: str,
    provider: Any,
    reference: dict[str, list[dict[str, Any]]],
) -> None:
    await publish_reference(secured_kafka, backend, reference)
    security = (
        {"ssl": True, "cafile": str(secured_kafka.certs.ca)} if listener == "SASL_SSL" else None
    )
    topic = unique_topic(f"oauth-{backend}")
    config = KafkaLogConfig(
        bootstrap_servers=(secured_kafka.broker.listener(listener),),
        topic=topic,
        producer_backend=backend,  # type: ignore[arg-type]
        producer_async_flush_timeout=20,
        authentication={"mechanism": "OAUTHBEARER", "token_provider": provider},
        security=security,
    )
    stats = await publish(config)
    assert stats["delivered"] == len(scopes()) and stats["dropped"] == 0
    assert await entries(secured_kafka.broker.bootstrap_servers, topic) == reference[backend]


async def test_oauthbearer_by_client_credentials(
    secured_kafka: SecuredKafka, backend: str, reference: dict[str, list[dict[str, Any]]]
) -> None:
    """Kong 3.15's form: the token comes from the token endpoint (client-credentials grant)."""
    await publish_reference(secured_kafka, backend, reference)
    topic = unique_topic(f"oauth-grant-{backend}")
    with token_endpoint("kafka-log", PASSWORD) as (url, grants):
        config = KafkaLogConfig(
            bootstrap_servers=(secured_kafka.broker.listener("SASL_PLAINTEXT"),),
            topic=topic,
            producer_backend=backend,  # type: ignore[arg-type]
            producer_async_flush_timeout=20,
            authentication={
                "strategy": "sasl",
                "mechanism": "OAUTHBEARER",
                "token_endpoint_url": url,
                "client_id": "kafka-log",
                "client_secret": PASSWORD,
                "scopes": ["logs", "write"],
            },
        )
        stats = await publish(config)
    assert stats["delivered"] == len(scopes())
    assert grants and grants[0] == {"grant_type": "client_credentials", "scope": "logs write"}
    assert await entries(secured_kafka.broker.bootstrap_servers, topic) == reference[backend]


@pytest.mark.parametrize("failure", ["provider-raises", "endpoint-refuses"])
async def test_oauthbearer_without_a_token_is_named_counted_and_fixed_by_update_config(
    secured_kafka: SecuredKafka, backend: str, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    _log.reset()
    topic = unique_topic(f"oauth-refused-{backend}")
    with token_endpoint("kafka-log", PASSWORD) as (url, _):
        wrong: dict[str, Any] = (
            {"mechanism": "OAUTHBEARER", "token_provider": failing_provider}
            if failure == "provider-raises"
            else {
                "mechanism": "OAUTHBEARER",
                "token_endpoint_url": url,
                "client_id": "kafka-log",
                "client_secret": PLANTED,
            }
        )
        config = KafkaLogConfig(
            bootstrap_servers=(secured_kafka.broker.listener("SASL_PLAINTEXT"),),
            topic=topic,
            producer_backend=backend,  # type: ignore[arg-type]
            producer_async_flush_timeout=20,
            producer_request_retries_max_attempts=2,
            authentication=wrong,
        )
        fixed = config.replace(
            authentication={"mechanism": "OAUTHBEARER", "token_provider": sync_provider}
        )
        _, emitted = await refused_then_fixed(config, fixed, caplog)
    cause = "token provider raised RuntimeError" if failure == "provider-raises" else "HTTP 401"
    refusals = [
        r.getMessage() for r in caplog.records if "refuses the connection" in r.getMessage()
    ]
    assert refusals and all("OAUTHBEARER: " in m and cause in m for m in refusals)
    emitted += [caplog.text, repr(config)]
    assert not [text for text in emitted if PLANTED in text or PASSWORD in text]


# -- the WSGI door (Flask), configured by app.config ---------------------------------------


def flask_entries(bootstrap: str, topic: str, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Serve three requests through a Flask app whose ``app.config["KAFKA_LOG"]`` is
    ``settings``; the entries read back from ``topic``."""
    from flask import Flask

    from kafka_log_middleware.flask import KafkaLog

    app = Flask("secured")

    @app.get("/items/<item_id>")
    def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    app.config["KAFKA_LOG"] = settings
    KafkaLog(app)
    middleware = KafkaLog.middleware(app)
    try:
        for n in range(3):
            client = app.test_client()
            response = client.get(f"/items/{n}?n={n}", headers={"x-n": str(n)}, buffered=True)
            assert response.status_code == 200
        wait_until(lambda: middleware.stats()["delivered"] == 3, timeout=60)
        assert middleware.stats()["dropped"] == 0
    finally:
        middleware.close()
    records = asyncio.run(consume(bootstrap, topic, 3, settle=0.5))
    found = [comparable(record.value) for record in records if record.value is not None]
    return sorted(found, key=lambda e: str(e["request"]["headers"]["x-n"]))


def test_flask_settings_publish_over_sasl_ssl_as_over_plaintext(
    secured_kafka: SecuredKafka, backend: str
) -> None:
    """``authentication`` and ``security`` as plain dicts in Flask's config, through the
    WSGI door: the same entries as without security."""
    broker, certs = secured_kafka.broker, secured_kafka.certs
    base = {"producer_backend": backend, "producer_async_flush_timeout": 20}
    plain_topic = unique_topic(f"flask-plaintext-{backend}")
    reference = flask_entries(
        broker.bootstrap_servers,
        plain_topic,
        {**base, "bootstrap_servers": broker.bootstrap_servers, "topic": plain_topic},
    )
    topic = unique_topic(f"flask-sasl-ssl-{backend}")
    secured = {
        **base,
        "bootstrap_servers": broker.listener("SASL_SSL"),
        "topic": topic,
        "authentication": sasl("SCRAM-SHA-512"),
        "security": {"ssl": True, "cafile": str(certs.ca)},
    }
    assert flask_entries(broker.bootstrap_servers, topic, secured) == reference
