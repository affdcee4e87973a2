"""KafkaLogConfig: Kong's defaults, validation at construction, identity, env, aiokafka mapping."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kafka_log_middleware import KafkaLogConfig, starlette_route
from kafka_log_middleware.config import KafkaLogFields

BASE: dict[str, Any] = {"bootstrap_servers": "127.0.0.1:9092", "topic": "logs"}


def make(**changes: Any) -> KafkaLogConfig:
    return KafkaLogConfig(**{**BASE, **changes})


def test_defaults_are_the_kong_plugins() -> None:
    config = make()
    assert config.bootstrap_servers == ("127.0.0.1:9092",)
    assert config.timeout == 10000
    assert config.keepalive == 60000
    assert config.producer_request_acks == 1
    assert config.producer_request_timeout == 2000
    assert config.producer_request_limits_messages_per_request == 200
    assert config.producer_request_limits_bytes_per_request == 1048576
    assert config.producer_request_retries_max_attempts == 10
    assert config.producer_request_retries_backoff_timeout == 100
    assert config.producer_async is True
    assert config.producer_async_flush_timeout == 1000
    assert config.producer_async_buffering_limits_messages_in_memory == 50000
    assert config.log_format == "kong2"
    assert config.redact_headers == ("authorization", "proxy-authorization")
    assert config.route is starlette_route
    assert config.service is None and config.consumer is None and config.key is None


def test_servers_accept_list_tuple_and_comma_string() -> None:
    expected = ("a:1", "b:2", "[::1]:9092")
    assert make(bootstrap_servers=["a:1", "b:2", "[::1]:9092"]).bootstrap_servers == expected
    assert make(bootstrap_servers="a:1, b:2,[::1]:9092").bootstrap_servers == expected


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"bootstrap_servers": []}, "bootstrap_servers"),
        ({"bootstrap_servers": ""}, "bootstrap_servers"),
        ({"bootstrap_servers": "localhost"}, "bootstrap_servers"),
        ({"bootstrap_servers": ":9092"}, "bootstrap_servers"),
        ({"bootstrap_servers": "host:0"}, "bootstrap_servers"),
        ({"bootstrap_servers": "host:65536"}, "bootstrap_servers"),
        ({"bootstrap_servers": "host:port"}, "bootstrap_servers"),
        ({"bootstrap_servers": "a:b:9092"}, "bootstrap_servers"),
        ({"bootstrap_servers": 9092}, "bootstrap_servers"),
        ({"topic": ""}, "topic"),
        ({"topic": "has space"}, "topic"),
        ({"topic": "a/b"}, "topic"),
        ({"topic": ".."}, "topic"),
        ({"topic": "x" * 250}, "topic"),
        ({"producer_request_acks": 2}, "producer_request_acks"),
        ({"producer_request_acks": True}, "producer_request_acks"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -5}, "timeout"),
        ({"keepalive": 0}, "keepalive"),
        ({"producer_request_timeout": -1}, "producer_request_timeout"),
        ({"producer_async_flush_timeout": 0}, "producer_async_flush_timeout"),
        (
            {"producer_request_limits_messages_per_request": 0},
            "producer_request_limits_messages_per_request",
        ),
        (
            {"producer_async_buffering_limits_messages_in_memory": -1},
            "producer_async_buffering_limits_messages_in_memory",
        ),
        (
            {"producer_request_retries_backoff_timeout": -1},
            "producer_request_retries_backoff_timeout",
        ),
        ({"timeout": 1.5}, "timeout"),
        ({"producer_async": "yes"}, "producer_async"),
        ({"log_format": "kong1"}, "log_format"),
        ({"redact_headers": "authorization"}, "redact_headers"),
        ({"service": ["orders"]}, "service"),
        ({"route": "not callable"}, "route"),
        ({"custom_fields": {"a..b": lambda r: 1}}, "custom_fields"),
        ({"custom_fields": {"a": 1}}, "custom_fields"),
        ({"key_query_arg": ""}, "key_query_arg"),
        ({"key_query_arg": "id", "key": lambda r: b"k"}, "key"),
        ({"shutdown_timeout": 0}, "shutdown_timeout"),
    ],
)
def test_invalid_values_raise_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make(**changes)


def test_topic_is_required() -> None:
    with pytest.raises(TypeError):
        KafkaLogConfig(bootstrap_servers=("a:1",))  # type: ignore[call-arg]


def test_immutable() -> None:
    config = make()
    with pytest.raises(AttributeError):
        config.topic = "other"  # type: ignore[misc]


def test_equal_configs_are_equal_and_hash_alike() -> None:
    a = make(service={"name": "orders", "tags": ["x"]}, redact_headers=["Authorization"])
    b = make(service={"tags": ["x"], "name": "orders"}, redact_headers=("authorization",))
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != make(topic="other")


def test_producer_key_ignores_message_only_settings() -> None:
    a = make()
    assert a.producer_key() == make(topic="other", log_format="kong3").producer_key()
    assert a.producer_key() != make(producer_request_acks=-1).producer_key()
    assert a.producer_key() != make(bootstrap_servers="127.0.0.1:9093").producer_key()


def test_aiokafka_options_map_kong_names() -> None:
    options = make(
        producer_request_acks=-1,
        timeout=3000,
        keepalive=7000,
        producer_request_retries_backoff_timeout=250,
        producer_request_limits_bytes_per_request=65536,
    ).aiokafka_options()
    assert options["acks"] == "all"
    assert options["request_timeout_ms"] == 3000
    assert options["connections_max_idle_ms"] == 7000
    assert options["retry_backoff_ms"] == 250
    assert options["max_batch_size"] == 65536 and options["max_request_size"] == 65536
    assert options["enable_idempotence"] is False
    assert make(producer_request_acks=0).aiokafka_options()["acks"] == 0


def test_replace_validates() -> None:
    config = make()
    assert config.replace(topic="b").topic == "b"
    with pytest.raises(ValueError, match="topic"):
        config.replace(topic="")


def test_from_env() -> None:
    env = {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "KAFKA_LOG_TOPIC": "access",
        "KAFKA_LOG_PRODUCER_REQUEST_ACKS": "-1",
        "KAFKA_LOG_PRODUCER_ASYNC": "false",
        "KAFKA_LOG_LOG_FORMAT": "kong3",
        "KAFKA_LOG_REDACT_HEADERS": "authorization, x-api-key",
        "KAFKA_LOG_KEY_QUERY_ARG": "user",
        "UNRELATED": "x",
    }
    config = KafkaLogConfig.from_env(environ=env, service={"name": "svc"})
    assert config.bootstrap_servers == ("k1:9092", "k2:9092")
    assert config.topic == "access"
    assert config.producer_request_acks == -1
    assert config.producer_async is False
    assert config.log_format == "kong3"
    assert config.redact_headers == ("authorization", "x-api-key")
    assert config.key_query_arg == "user"
    assert config.service == {"name": "svc"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_LOG_TOPIC": "t"}, "KAFKA_LOG_BOOTSTRAP_SERVERS"),
        (
            {
                "KAFKA_LOG_BOOTSTRAP_SERVERS": "a:1",
                "KAFKA_LOG_TOPIC": "t",
                "KAFKA_LOG_TIMEOUT": "ten",
            },
            "KAFKA_LOG_TIMEOUT",
        ),
        (
            {
                "KAFKA_LOG_BOOTSTRAP_SERVERS": "a:1",
                "KAFKA_LOG_TOPIC": "t",
                "KAFKA_LOG_PRODUCER_ASYNC": "maybe",
            },
            "KAFKA_LOG_PRODUCER_ASYNC",
        ),
        ({"KAFKA_LOG_BOOTSTRAP_SERVERS": "nohost", "KAFKA_LOG_TOPIC": "t"}, "bootstrap_servers"),
    ],
)
def test_from_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KafkaLogConfig.from_env(environ=env)


def test_repr_shows_changed_fields_only() -> None:
    text = repr(make(log_format="kong3"))
    assert "log_format='kong3'" in text and "timeout" not in text


def test_typed_keyword_fields_match_the_config() -> None:
    names = {field.name for field in dataclasses.fields(KafkaLogConfig)}
    assert set(KafkaLogFields.__annotations__) == names
