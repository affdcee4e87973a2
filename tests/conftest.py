"""Shared fixtures: a real Kafka broker for the whole session, extra brokers and a 3-node
cluster on demand."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) does not add it
    sys.path.insert(0, str(_REPO_ROOT))

from devtools.kafka_broker import (  # noqa: E402
    KafkaBroker,
    KafkaCluster,
    SecuredListeners,
    ensure_jars,
)
from devtools.kafka_tls import make_certificates  # noqa: E402
from tests.kafka_helpers import PASSWORD, USER, BrokerFactory, SecuredKafka  # noqa: E402


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a live broker: ``$KAFKA_BOOTSTRAP_SERVERS``, or one started here."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external
        return
    ensure_jars()
    broker = KafkaBroker(workdir=tmp_path_factory.mktemp("kafka-session"))
    broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.close()


@pytest.fixture(scope="session")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    """A broker (its own JVM, for the session) with every secured listener beside
    PLAINTEXT (``SecuredListeners``: SASL_PLAINTEXT, SSL, MTLS, SASL_SSL, ...), with
    certificates made here and the SASL user ``USER``/``PASSWORD``."""
    ensure_jars()
    certs = make_certificates(tmp_path_factory.mktemp("tls"))
    broker = KafkaBroker(
        workdir=tmp_path_factory.mktemp("kafka-secured"),
        secured=SecuredListeners(
            certs.broker_keystore,
            certs.ca,
            certs.wrong_host_keystore,
            certs.expired_keystore,
            {USER: PASSWORD},
        ),
    )
    broker.start()
    try:
        yield SecuredKafka(broker, certs)
    finally:
        broker.close()


@pytest.fixture
def kafka_broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerFactory]:
    """Make extra, NOT yet started brokers (port pre-picked, so ``bootstrap_servers`` is known
    before ``start()``). Every broker made here is stopped at teardown.

    Keyword arguments are passed to :class:`KafkaBroker` (``port``, ``heap``, ...).
    """
    ensure_jars()
    brokers: list[KafkaBroker] = []

    def make(**kwargs: object) -> KafkaBroker:
        kwargs.setdefault("workdir", tmp_path_factory.mktemp("kafka-extra"))
        broker = KafkaBroker(**kwargs)  # type: ignore[arg-type]
        brokers.append(broker)
        return broker

    yield make
    errors: list[BaseException] = []
    for broker in brokers:
        try:
            broker.close()
        except Exception as exc:  # keep stopping the others
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def _kafka_cluster_of_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One 3-node cluster per test module that asks for ``kafka_cluster``."""
    ensure_jars()
    cluster = KafkaCluster(size=3, workdir=tmp_path_factory.mktemp("kafka-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def kafka_cluster(_kafka_cluster_of_module: KafkaCluster) -> KafkaCluster:
    """A running 3-node KRaft cluster, shared within a module: nodes that an earlier test
    stopped or killed are started again first (same ports, same data)."""
    _kafka_cluster_of_module.start()
    return _kafka_cluster_of_module


@pytest.fixture(params=["aiokafka", "confluent"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each Kafka client backend in turn (``producer_backend``)."""
    return str(request.param)
