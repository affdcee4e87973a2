"""KafkaLogConfig: Kong's defaults, validation at construction, identity, env, client mappings.

What the config accepts works (the edges are built into both clients' options and
published through a real broker); anything else is refused at construction, naming the
field.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.util
import inspect
import logging
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import confluent_kafka
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from kafka_log_middleware import (
    CapturedRequest,
    KafkaLogConfig,
    KafkaLogMiddleware,
    matched_route,
)
from kafka_log_middleware import config as config_module
from kafka_log_middleware.asgi import ASGIRequest
from kafka_log_middleware.config import (
    INT32_MAX,
    InvalidConfig,
    InvalidConfigType,
    KafkaLogFields,
)
from kafka_log_middleware.confluent import librdkafka_options
from kafka_log_middleware.serializer import build_entry
from tests.asgi_driver import http_scope, lifespan, request
from tests.kafka_helpers import consume, create_topic, unique_topic
from tests.polling import eventually
from tests.servers import free_port

BASE: dict[str, Any] = {"bootstrap_servers": "127.0.0.1:9092", "topic": "logs"}


def make(**changes: Any) -> KafkaLogConfig:
    return KafkaLogConfig(**{**BASE, **changes})


def test_defaults_are_the_kong_plugins() -> None:
    config = make()
    assert config.bootstrap_servers == ("127.0.0.1:9092",)
    assert config.timeout == 10000
    assert config.keepalive == 60000
    assert config.producer_request_acks is None and config.acks == 1
    assert config.producer_request_timeout == 2000
    assert config.producer_request_limits_messages_per_request == 200
    assert config.producer_request_limits_bytes_per_request == 1048576
    assert config.producer_request_retries_max_attempts == 10
    assert config.producer_request_retries_backoff_timeout == 100
    assert config.producer_async is True
    assert config.producer_async_flush_timeout == 1000
    assert config.producer_async_buffering_limits_messages_in_memory == 50000
    assert config.log_format == "kong2"
    assert config.redact_headers == ("authorization", "proxy-authorization", "cookie")
    assert config.redact_response_headers == ("set-cookie",)
    assert config.route is matched_route
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
        ({"max_entry_bytes": 0}, "max_entry_bytes"),
        ({"max_entry_bytes": 1048576 - 127}, "max_entry_bytes"),
        (
            {"producer_request_limits_bytes_per_request": 4096, "max_entry_bytes": 5000},
            "max_entry_bytes",
        ),
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


def test_the_entry_limit_leaves_room_for_a_records_framing() -> None:
    """Entries are cut to ``max_entry_bytes``, by default the batch limit less 128 bytes
    (what a record batch and a record add around a key and a value)."""
    assert make().entry_limit == 1048576 - 128
    assert make(producer_request_limits_bytes_per_request=4096).entry_limit == 4096 - 128
    assert make(max_entry_bytes=1000).entry_limit == 1000
    assert make(max_entry_bytes=1048576 - 128).entry_limit == 1048576 - 128
    assert make(producer_request_limits_bytes_per_request=100).entry_limit == 0
    with pytest.raises(ValueError, match=r"1048449 does not fit .* 1048448 at most"):
        make(max_entry_bytes=1048449)


def test_from_env() -> None:
    env = {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "KAFKA_LOG_TOPIC": "access",
        "KAFKA_LOG_PRODUCER_REQUEST_ACKS": "-1",
        "KAFKA_LOG_PRODUCER_ASYNC": "false",
        "KAFKA_LOG_LOG_FORMAT": "kong3",
        "KAFKA_LOG_REDACT_HEADERS": "authorization, x-api-key",
        "KAFKA_LOG_KEY_QUERY_ARG": "user",
        "KAFKA_LOG_MAX_ENTRY_BYTES": "900000",
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
    assert config.max_entry_bytes == 900000
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


# -- every field refused or accepted at construction ---------------------------------


def _hook(request: CapturedRequest) -> str:
    return "x"


async def _async_hook(request: CapturedRequest) -> str:
    return "x"


class _AsyncCallable:
    async def __call__(self, request: CapturedRequest) -> str:
        return "x"


class _UnhashableCallable:
    __hash__ = None  # type: ignore[assignment]

    def __call__(self, request: CapturedRequest) -> str:
        return "x"


INT_FIELDS = {
    # field: its lowest accepted value (the highest is INT32_MAX for all)
    "timeout": 10,
    "keepalive": 1,
    "producer_request_timeout": 1,
    "producer_request_limits_messages_per_request": 1,
    "producer_request_limits_bytes_per_request": 1,
    "producer_request_retries_max_attempts": 1,
    "producer_request_retries_backoff_timeout": 0,
    "producer_async_flush_timeout": 1,
    "producer_async_buffering_limits_messages_in_memory": 1,
    "shutdown_timeout": 1,
}
HOOKS = ("route", "consumer", "authenticated_entity", "key")

BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    *(({name: low - 1}, name) for name, low in INT_FIELDS.items()),
    *(({name: INT32_MAX + 1}, name) for name in INT_FIELDS),
    ({"producer_request_acks": -2}, "producer_request_acks"),
    ({"bootstrap_servers": ["a,b:1"]}, "bootstrap_servers"),
    ({"bootstrap_servers": "b\u00fccher.de:9092"}, "bootstrap_servers"),
    ({"bootstrap_servers": "host:\u0669\u0660\u0669\u0662"}, "bootstrap_servers"),
    ({"bootstrap_servers": "[::1:9092"}, "bootstrap_servers"),
    ({"bootstrap_servers": "[zz]:9092"}, "bootstrap_servers"),
    ({"bootstrap_servers": "[::1]"}, "bootstrap_servers"),
    ({"bootstrap_servers": "ho st:1"}, "bootstrap_servers"),
    ({"bootstrap_servers": "a..b:1"}, "bootstrap_servers"),
    ({"producer_backend": "kafka-python"}, "producer_backend"),
    ({"redact_headers": ["x-api key"]}, "redact_headers"),
    ({"redact_headers": [""]}, "redact_headers"),
    ({"redact_headers": ["x-\u00e9"]}, "redact_headers"),
    ({"service": {"tags": {"a", "b"}}}, "service"),
    ({"service": {"owner": object()}}, "service"),
    ({"service": {1: "one"}}, "service"),
    ({"service": {"n": 2**64}}, "service"),
    ({"service": {"name": "\ud800"}}, "service"),
    *(({name: _async_hook}, name) for name in HOOKS),
    *(({name: _AsyncCallable()}, name) for name in HOOKS),
    *(({name: lambda: 1}, name) for name in HOOKS),
    *(({name: lambda a, b: 1}, name) for name in HOOKS),
    ({"custom_fields": {"": _hook}}, "custom_fields"),
    ({"custom_fields": {"a.": _hook}}, "custom_fields"),
    ({"custom_fields": {"a": _async_hook}}, "custom_fields"),
    ({"custom_fields": {"a": lambda: 1}}, "custom_fields"),
    ({"custom_fields": {"\ud800": _hook}}, "custom_fields"),
    ({"key_query_arg": "\ud800"}, "key_query_arg"),
    ({"request_id_header": ""}, "request_id_header"),
    ({"request_id_header": "x id"}, "request_id_header"),
    ({"request_id_header": "x-\u0416"}, "request_id_header"),
    ({"request_id_header": "x-id:"}, "request_id_header"),
    ({"workspace": "\ud800"}, "workspace"),
    ({"workspace_name": "\ud800"}, "workspace_name"),
    ({"client_id": ""}, "client_id"),
    ({"client_id": "a\x00b"}, "client_id"),
    ({"client_id": "a\nb"}, "client_id"),
    ({"client_id": "x" * 32768}, "client_id"),
    ({"client_id": "\u00e9" * 16384}, "client_id"),
    ({"client_id": "\ud800"}, "client_id"),
]

WRONG_TYPES: list[tuple[dict[str, Any], str]] = [
    ({"bootstrap_servers": [b"a:1"]}, "bootstrap_servers"),
    ({"bootstrap_servers": ["a:1", 9092]}, "bootstrap_servers"),
    ({"bootstrap_servers": b"a:1"}, "bootstrap_servers"),
    ({"bootstrap_servers": {"a:1": 1}}, "bootstrap_servers"),
    ({"topic": 5}, "topic"),
    ({"topic": b"logs"}, "topic"),
    *(({name: True}, name) for name in INT_FIELDS),
    *(({name: 1000.0}, name) for name in INT_FIELDS),
    *(({name: "1000"}, name) for name in INT_FIELDS),
    ({"producer_request_acks": 1.0}, "producer_request_acks"),
    ({"producer_request_acks": "1"}, "producer_request_acks"),
    ({"producer_async": 1}, "producer_async"),
    ({"producer_async": None}, "producer_async"),
    ({"native_serializer": "true"}, "native_serializer"),
    ({"include_trace_id": "yes"}, "include_trace_id"),
    ({"log_format": 2}, "log_format"),
    ({"log_format": None}, "log_format"),
    ({"producer_backend": None}, "producer_backend"),
    ({"redact_headers": b"authorization"}, "redact_headers"),
    ({"redact_headers": [b"authorization"]}, "redact_headers"),
    ({"redact_headers": [5]}, "redact_headers"),
    ({"redact_headers": 5}, "redact_headers"),
    ({"service": "orders"}, "service"),
    *(({name: "not callable"}, name) for name in HOOKS),
    *(({name: _UnhashableCallable()}, name) for name in HOOKS),
    ({"custom_fields": [("a", _hook)]}, "custom_fields"),
    ({"custom_fields": {5: _hook}}, "custom_fields"),
    ({"custom_fields": {"a": _UnhashableCallable()}}, "custom_fields"),
    ({"key_query_arg": 5}, "key_query_arg"),
    ({"request_id_header": 5}, "request_id_header"),
    ({"request_id_header": b"x-request-id"}, "request_id_header"),
    ({"workspace": 5}, "workspace"),
    ({"workspace_name": 5}, "workspace_name"),
    ({"workspace_name": None}, "workspace_name"),
    ({"client_id": 5}, "client_id"),
    ({"client_id": None}, "client_id"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_VALUES)
def test_bad_values_raise_value_error_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field) as raised:
        make(**changes)
    assert isinstance(raised.value, InvalidConfig)
    assert raised.value.field == field


@pytest.mark.parametrize(("changes", "field"), WRONG_TYPES)
def test_wrong_types_raise_type_error_that_is_also_a_value_error(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(TypeError, match=field) as raised:
        make(**changes)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, InvalidConfigType)
    assert raised.value.field == field


def test_a_value_of_the_wrong_type_is_shown_by_its_type_only() -> None:
    with pytest.raises(TypeError) as raised:
        make(client_id=b"s3cret-bytes")
    assert "s3cret" not in str(raised.value) and "bytes" in str(raised.value)


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"timeout": 300_001}, "socket.timeout.ms"),
        ({"producer_request_timeout": 900_001}, "request.timeout.ms"),
        ({"producer_request_retries_backoff_timeout": 300_001}, "retry.backoff.ms"),
        ({"producer_request_limits_bytes_per_request": 999_998_977}, "message.max.bytes"),
        (
            {"producer_async_buffering_limits_messages_in_memory": INT32_MAX - 199},
            "queue.buffering.max.messages",
        ),
    ],
)
def test_confluent_refuses_what_librdkafka_would(changes: dict[str, Any], option: str) -> None:
    (field,) = changes
    with pytest.raises(ValueError, match=field) as raised:
        make(producer_backend="confluent", **changes)
    assert option in str(raised.value)
    make(**changes)  # within aiokafka's and Kafka's ranges


def _confluent_refusal(options: dict[str, Any]) -> str | None:
    """librdkafka's own verdict on ``options``: None when it creates the producer."""
    try:
        producer = confluent_kafka.Producer(options)
    except confluent_kafka.KafkaException as exc:
        return str(exc)
    del producer
    return None


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"timeout": 300_001}, "socket.timeout.ms"),
        ({"producer_request_timeout": 900_001}, "request.timeout.ms"),
        ({"producer_request_retries_backoff_timeout": 300_001}, "retry.backoff.ms"),
        ({"producer_request_limits_bytes_per_request": 999_998_977}, "message.max.bytes"),
        (
            {"producer_async_buffering_limits_messages_in_memory": INT32_MAX - 199},
            "queue.buffering.max.messages",
        ),
    ],
)
def test_librdkafka_itself_refuses_one_past_our_confluent_limits(
    changes: dict[str, Any], option: str
) -> None:
    # The mapping of a config that is valid for aiokafka, with the one value too big.
    options = librdkafka_options(make(**changes))
    options["bootstrap.servers"] = f"127.0.0.1:{free_port()}"
    refusal = _confluent_refusal(options)
    assert refusal is not None and option in refusal


def lowest(**changes: Any) -> KafkaLogConfig:
    return make(**{**INT_FIELDS, **changes})


def highest(backend: str, **changes: Any) -> KafkaLogConfig:
    """Every integer field at the most ``backend`` takes."""
    values: dict[str, Any] = dict.fromkeys(INT_FIELDS, INT32_MAX)
    if backend == "confluent":
        values.update(
            timeout=300_000,
            producer_request_timeout=900_000,
            producer_request_retries_backoff_timeout=300_000,
            producer_request_limits_bytes_per_request=1_000_000_000 - 1024,
            producer_async_buffering_limits_messages_in_memory=INT32_MAX - 200,
            producer_request_limits_messages_per_request=200,
        )
    return make(producer_backend=backend, **{**values, **changes})


def test_edge_values_build_a_librdkafka_producer() -> None:
    for config in (lowest(producer_backend="confluent"), highest("confluent")):
        options = librdkafka_options(config)
        options["bootstrap.servers"] = f"127.0.0.1:{free_port()}"
        assert _confluent_refusal(options) is None, config


async def test_edge_values_build_an_aiokafka_producer() -> None:
    for config in (lowest(), highest("aiokafka")):
        producer = AIOKafkaProducer(**config.aiokafka_options())
        await producer.stop()


def test_accepted_values_are_normalised() -> None:
    config = make(
        bootstrap_servers=[" a:09092 ", "", "[::1]:9092", "[fe80::1%eth0]:1", "k_1.local.:2"],
        redact_headers=["X-Api-Key", "x-api-key", " Cookie "],
        request_id_header="X-Request-ID",
        producer_request_acks=0,
    )
    assert config.bootstrap_servers == ("a:9092", "[::1]:9092", "[fe80::1%eth0]:1", "k_1.local.:2")
    assert config.redact_headers == ("x-api-key", "cookie")
    assert config.request_id_header == "x-request-id"


def test_str_and_int_subclasses_become_plain_values() -> None:
    class Text(str):
        pass

    class Number(int):
        pass

    config = make(topic=Text("logs"), timeout=Number(3000), client_id=Text("me"))
    assert type(config.topic) is str and type(config.client_id) is str
    assert type(config.timeout) is int and config.timeout == 3000


def test_hooks_of_one_argument_in_any_form_are_accepted() -> None:
    class Hook:
        def __call__(self, request: CapturedRequest) -> str:
            return "x"

    def two(request: CapturedRequest, extra: int = 1) -> int:
        return extra

    accepted = [Hook(), two, functools.partial(lambda a, r: a, 1), lambda *args: 1, len]
    for hook in accepted:
        for name in HOOKS:
            assert getattr(make(**{name: hook}), name) is hook
        assert make(custom_fields={"a.b": hook}).custom_fields == {"a.b": hook}


def test_strings_accept_any_unicode_text() -> None:
    config = make(
        workspace="w\u00e9",
        workspace_name="",
        client_id="caf\u00e9 \U0001f600",
        key_query_arg="\u00e9",
        custom_fields={"x y.\u00e9": _hook},
    )
    assert config.workspace == "w\u00e9" and config.workspace_name == ""


def test_service_is_kept_as_the_json_it_will_be_logged_as() -> None:
    when = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)
    tags = ["a"]
    original = {"name": "orders", "tags": tags, "pair": (1, 2), "since": when, "ratio": 0.5}
    config = make(service=original)
    assert config.service == orjson.loads(orjson.dumps(original))
    tags.append("b")  # the caller's objects may change afterwards: the entry does not
    original["name"] = "changed"
    scope = http_scope()

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        pass

    entry = build_entry(ASGIRequest(scope, config, receive, send))
    assert entry["service"] == {
        "name": "orders",
        "tags": ["a"],
        "pair": [1, 2],
        "since": "2024-05-01T12:00:00+00:00",
        "ratio": 0.5,
    }
    assert config == make(service=config.service)


def test_checks_cover_every_field_in_order() -> None:
    assert list(config_module._CHECKS) == [f.name for f in dataclasses.fields(KafkaLogConfig)]


def test_a_config_rebuilt_from_its_own_values_is_equal() -> None:
    config = make(
        bootstrap_servers="a:1,[::1]:2",
        service={"name": "s"},
        redact_headers=["X-A"],
        request_id_header="X-Id",
        custom_fields={"a": _hook},
        producer_backend="confluent",
    )
    # Reading the derived values (as the publisher does) must leave vars() the fields.
    assert (config.trace_ids, config.entry_limit, config.producer_key()) is not None
    assert KafkaLogConfig(**vars(config)) == config


# -- the environment --------------------------------------------------------------------

ENV = {"KAFKA_LOG_BOOTSTRAP_SERVERS": "k1:9092", "KAFKA_LOG_TOPIC": "access"}


@pytest.fixture
def env_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Fresh once-per-process memory of warned variables; captures the package's log."""
    config_module._warned_env.clear()
    caplog.set_level(logging.DEBUG, logger="kafka_log_middleware")
    yield caplog
    config_module._warned_env.clear()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("KAFKA_LOG_TIMOUT", "KAFKA_LOG_TIMEOUT"),
        ("KAFKA_LOG_BOOTSTRAP_SERVER", "KAFKA_LOG_BOOTSTRAP_SERVERS"),
        ("KAFKA_LOG_FORMAT", "KAFKA_LOG_LOG_FORMAT"),
        ("KAFKA_LOG_ACKS", "KAFKA_LOG_PRODUCER_REQUEST_ACKS"),
        ("KAFKA_LOG_SERVERS", "KAFKA_LOG_BOOTSTRAP_SERVERS"),
        ("KAFKA_LOG_SHUTDOWN", "KAFKA_LOG_SHUTDOWN_TIMEOUT"),
        ("KAFKA_LOG_topic", "KAFKA_LOG_TOPIC"),
        ("KAFKA_LOG_KEEP_ALIVE", "KAFKA_LOG_KEEPALIVE"),
    ],
)
def test_a_misspelt_variable_is_ignored_with_one_warning_naming_the_closest(
    env_warnings: pytest.LogCaptureFixture, variable: str, suggestion: str
) -> None:
    env = {**ENV, variable: "s3cret"}
    assert KafkaLogConfig.from_env(environ=env) == make(bootstrap_servers="k1:9092", topic="access")
    KafkaLogConfig.from_env(environ=env)  # once per variable per process
    [warning] = warnings_of(env_warnings)
    assert variable in warning and f"did you mean {suggestion}?" in warning
    assert "s3cret" not in warning
    assert {r.name for r in env_warnings.records} == {"kafka_log_middleware"}


def test_variables_of_kafkas_own_images_are_not_warned_about(
    env_warnings: pytest.LogCaptureFixture,
) -> None:
    broker_settings = [
        "DIRS", "DIR", "RETENTION_HOURS", "RETENTION_BYTES", "RETENTION_MS",
        "RETENTION_CHECK_INTERVAL_MS", "SEGMENT_BYTES", "ROLL_HOURS", "CLEANUP_POLICY",
        "CLEANER_ENABLE", "CLEANER_THREADS", "FLUSH_INTERVAL_MESSAGES", "FLUSH_INTERVAL_MS",
        "MESSAGE_FORMAT_VERSION", "MESSAGE_TIMESTAMP_TYPE", "INDEX_SIZE_MAX_BYTES",
        "PREALLOCATE", "LOCAL_RETENTION_MS", "LEVEL",
    ]  # fmt: skip
    env = {**ENV, **{f"KAFKA_LOG_{name}": "1" for name in broker_settings}}
    KafkaLogConfig.from_env(environ=env)
    assert warnings_of(env_warnings) == []
    # A quiet mention, for whoever turns debug logging on.
    assert any("KAFKA_LOG_DIRS" in r.getMessage() for r in env_warnings.records)


@pytest.mark.parametrize(
    "field", ["route", "consumer", "authenticated_entity", "custom_fields", "key"]
)
def test_a_variable_for_a_hook_is_ignored_with_a_warning(
    env_warnings: pytest.LogCaptureFixture, field: str
) -> None:
    variable = f"KAFKA_LOG_{field.upper()}"
    config = KafkaLogConfig.from_env(environ={**ENV, variable: "mod:fn"})
    assert getattr(config, field) == getattr(make(), field)
    [warning] = warnings_of(env_warnings)
    assert variable in warning and f"from_env({field}=...)" in warning


def test_service_comes_from_the_environment_as_a_json_object() -> None:
    env = {**ENV, "KAFKA_LOG_SERVICE": '{"name": "orders", "tags": ["a"]}'}
    assert KafkaLogConfig.from_env(environ=env).service == {"name": "orders", "tags": ["a"]}
    overridden = KafkaLogConfig.from_env(environ=env, service={"name": "default"})
    assert overridden.service == {"name": "orders", "tags": ["a"]}  # keywords are defaults
    assert KafkaLogConfig.from_env(environ={**ENV, "KAFKA_LOG_SERVICE": " "}).service is None


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("KAFKA_LOG_SERVICE", '["s3cret"]'),
        ("KAFKA_LOG_SERVICE", "s3cret"),
        ("KAFKA_LOG_TIMEOUT", "s3cret"),
        ("KAFKA_LOG_PRODUCER_ASYNC", "s3cret"),
        ("KAFKA_LOG_NATIVE_SERIALIZER", "s3cret"),
    ],
)
def test_a_variable_that_does_not_parse_is_named_and_never_quoted(variable: str, raw: str) -> None:
    with pytest.raises(ValueError, match=variable) as raised:
        KafkaLogConfig.from_env(environ={**ENV, variable: raw})
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "raw", "field"),
    [
        ("KAFKA_LOG_TIMEOUT", "5", "timeout"),
        ("KAFKA_LOG_PRODUCER_REQUEST_RETRIES_MAX_ATTEMPTS", "0", "producer_request_retries"),
        ("KAFKA_LOG_REQUEST_ID_HEADER", "x id", "request_id_header"),
        ("KAFKA_LOG_LOG_FORMAT", "kong1", "log_format"),
        ("KAFKA_LOG_TOPIC", "a/b", "topic"),
    ],
)
def test_a_value_refused_by_the_config_names_its_variable(
    variable: str, raw: str, field: str
) -> None:
    with pytest.raises(InvalidConfig, match=f"^{variable}: {field}"):
        KafkaLogConfig.from_env(environ={**ENV, variable: raw})


def test_a_refusal_of_a_keyword_default_does_not_blame_a_variable() -> None:
    with pytest.raises(InvalidConfig, match=r"^timeout") as raised:
        KafkaLogConfig.from_env(environ=ENV, timeout=5)
    assert "KAFKA_LOG" not in str(raised.value)


# -- the edge values through a real broker ----------------------------------------------


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _publish_one(config: KafkaLogConfig) -> dict[str, int]:
    middleware = KafkaLogMiddleware(Starlette(routes=[Route("/", _ok)]), config)
    async with lifespan(middleware):
        assert (await request(middleware, http_scope("/"))).status == 200
        await eventually(lambda: middleware.stats()["pending"] == 0, timeout=60)
    return middleware.stats()


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_the_highest_values_deliver(kafka_bootstrap: str, backend: str) -> None:
    # producer_async=False: with the longest flush timer, entries would wait 24 days; the
    # topic exists first: aiokafka waits retry_backoff_ms between metadata polls for a new one.
    config = highest(
        backend,
        bootstrap_servers=kafka_bootstrap,
        topic=unique_topic("config-highest"),
        producer_async=False,
        producer_request_acks=-1,
    )
    await create_topic(kafka_bootstrap, config.topic)
    stats = await _publish_one(config)
    assert (stats["delivered"], stats["dropped"]) == (1, 0)
    assert len(await consume(kafka_bootstrap, config.topic, 1, timeout=10)) == 1


@pytest.mark.kafka
@pytest.mark.timeout(120)
async def test_the_lowest_values_deliver(kafka_bootstrap: str, backend: str) -> None:
    # Every integer at its minimum but those that bound a delivery on a busy machine:
    # `timeout` (10 ms) and one attempt may legitimately fail here, and no entry fits in
    # one byte (it would be dropped as too_large, as configured).
    config = lowest(
        bootstrap_servers=kafka_bootstrap,
        topic=unique_topic("config-lowest"),
        producer_backend=backend,
        timeout=10000,
        producer_request_retries_max_attempts=10,
        producer_request_limits_bytes_per_request=4096,
        shutdown_timeout=5000,
    )
    stats = await _publish_one(config)
    assert (stats["delivered"], stats["dropped"]) == (1, 0)
    assert len(await consume(kafka_bootstrap, config.topic, 1, timeout=10)) == 1


# -- rules the mutation run (scripts/mutation) found unheld ------------------------------


def _capture(scope: dict[str, Any]) -> CapturedRequest:
    async def never(*message: Any) -> Any:
        raise AssertionError("not called")

    return ASGIRequest(scope, make(), never, never)


def test_the_starlette_route_takes_only_the_attributes_a_route_has() -> None:
    """A Mount or a custom route may lack ``name``, ``path`` or ``methods``."""
    route = matched_route
    assert route(_capture({"route": SimpleNamespace(path="/x")})) == {"paths": ["/x"]}
    assert route(_capture({"route": SimpleNamespace(name="n")})) == {"name": "n"}
    assert route(_capture({"route": object()})) is None


def test_configs_differing_only_in_a_nested_value_differ() -> None:
    assert make(service={"name": "a"}) != make(service={"name": "b"})
    assert make(service={"tags": ["a"]}) != make(service={"tags": ["b"]})
    assert make(redact_headers=["x-a"]) != make(redact_headers=["x-b"])
    assert make(bootstrap_servers="h:1") != make(bootstrap_servers="h:2")


def test_configs_hash_by_their_values() -> None:
    """Not all alike: producers are kept in dicts keyed by config."""
    configs = [make(topic=f"t{n}") for n in range(8)]
    assert len({hash(config) for config in configs}) > 1


def test_repr_lists_changed_fields_comma_separated_without_the_custom_fields() -> None:
    config = make(log_format="kong3", custom_fields={"x": len})
    assert repr(config) == (
        "KafkaLogConfig(bootstrap_servers=('127.0.0.1:9092',), topic='logs', log_format='kong3')"
    )


def test_from_env_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_LOG_BOOTSTRAP_SERVERS", "envhost:9092")
    monkeypatch.setenv("KAFKA_LOG_TOPIC", "from-env")
    config = KafkaLogConfig.from_env()
    assert (config.bootstrap_servers, config.topic) == (("envhost:9092",), "from-env")


@pytest.mark.parametrize(
    ("env", "field", "message"),
    [
        ({"KAFKA_LOG_TOPIC": "t"}, "bootstrap_servers", "bootstrap_servers is required: set "),
        ({**ENV, "KAFKA_LOG_TIMEOUT": "ten"}, "timeout", "KAFKA_LOG_TIMEOUT: expected an integer"),
        (
            {**ENV, "KAFKA_LOG_NATIVE_SERIALIZER": "maybe"},
            "native_serializer",
            "KAFKA_LOG_NATIVE_SERIALIZER: expected true or false",
        ),
        (
            {**ENV, "KAFKA_LOG_SERVICE": "[1]"},
            "service",
            'KAFKA_LOG_SERVICE: expected a JSON object, e.g. {"name": "orders"}',
        ),
        ({**ENV, "KAFKA_LOG_TIMEOUT": "5"}, "timeout", "KAFKA_LOG_TIMEOUT: timeout must be "),
    ],
)
def test_from_env_errors_carry_the_field_and_say_what_was_expected(
    env: dict[str, str], field: str, message: str
) -> None:
    with pytest.raises(InvalidConfig) as raised:
        KafkaLogConfig.from_env(environ=env)
    assert raised.value.field == field
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        *((word, True) for word in ("1", "true", "True", " YES ", "on")),
        *((word, False) for word in ("0", "false", "no", "OFF")),
    ],
)
@pytest.mark.parametrize("field", ["producer_async", "native_serializer", "include_trace_id"])
def test_from_env_booleans(field: str, raw: str, value: bool) -> None:
    config = KafkaLogConfig.from_env(environ={**ENV, f"KAFKA_LOG_{field.upper()}": raw})
    assert getattr(config, field) is value


@pytest.mark.parametrize("field", ["key_query_arg", "request_id_header", "workspace"])
def test_from_env_an_empty_optional_string_is_none(field: str) -> None:
    config = KafkaLogConfig.from_env(environ={**ENV, f"KAFKA_LOG_{field.upper()}": "  "})
    assert getattr(config, field) is None


def test_from_env_an_empty_workspace_name_stays_empty() -> None:
    config = KafkaLogConfig.from_env(environ={**ENV, "KAFKA_LOG_WORKSPACE_NAME": ""})
    assert config.workspace_name == ""


def test_every_misspelt_variable_is_warned_about_whatever_comes_before_it(
    env_warnings: pytest.LogCaptureFixture,
) -> None:
    env = {"HOME": "/root", **ENV, "OTHER": "x", "KAFKA_LOG_TIMOUT": "1", "KAFKA_LOG_ROUTE": "f"}
    KafkaLogConfig.from_env(environ=env)
    assert warnings_of(env_warnings) == [
        "KAFKA_LOG_TIMOUT is no kafka_log_middleware setting and is ignored; "
        "did you mean KAFKA_LOG_TIMEOUT?",
        "KAFKA_LOG_ROUTE is ignored: route is a function, pass it to from_env(route=...)",
    ]


def test_an_unrelated_variable_of_the_prefix_is_one_debug_message(
    env_warnings: pytest.LogCaptureFixture,
) -> None:
    KafkaLogConfig.from_env(environ={**ENV, "KAFKA_LOG_DIRS": "/data"})
    assert env_warnings.messages == ["KAFKA_LOG_DIRS is no kafka_log_middleware setting; ignored"]


# The check factories run when config.py is imported (to build _CHECKS): held here
# directly, as a config built later no longer calls them.


def test_int_in_accepts_exactly_its_range_of_integers() -> None:
    check = config_module._int_in(2, 5)
    assert [check("n", value) for value in (2, 5)] == [2, 5]
    assert type(check("n", IntSubclass(3))) is int
    for value in (1, 6):
        with pytest.raises(InvalidConfig, match=f"^n must be from 2 to 5, not {value}$") as bad:
            check("n", value)
        assert bad.value.field == "n" and not isinstance(bad.value, TypeError)
    for wrong in (True, 3.0, "3", None):
        with pytest.raises(InvalidConfigType, match=r"^n must be an integer, not ") as typed:
            check("n", wrong)
        assert typed.value.field == "n" and type(wrong).__name__ in str(typed.value)


def test_int_in_goes_up_to_int32_by_default() -> None:
    check = config_module._int_in(0)
    assert check("n", INT32_MAX) == INT32_MAX
    with pytest.raises(InvalidConfig, match=f"from 0 to {INT32_MAX}, not"):
        check("n", INT32_MAX + 1)


def test_choice_accepts_exactly_its_choices_as_plain_strings() -> None:
    check = config_module._choice("a", "b")
    assert type(check("c", StrSubclass("b"))) is str and check("c", "a") == "a"
    with pytest.raises(InvalidConfig, match=r"^c must be 'a' or 'b', not 'z'$") as bad:
        check("c", "z")
    assert bad.value.field == "c" and not isinstance(bad.value, TypeError)
    with pytest.raises(InvalidConfigType, match=r"^c must be 'a' or 'b', not int$") as typed:
        check("c", 1)
    assert typed.value.field == "c"


def test_optional_passes_none_and_checks_anything_else() -> None:
    seen: list[tuple[str, Any]] = []

    def check(name: str, value: Any) -> Any:
        seen.append((name, value))
        return "checked"

    optional = config_module._optional(check)
    assert optional("f", None) is None and seen == []
    assert optional("f", 0) == "checked" and seen == [("f", 0)]


def test_confluent_without_confluent_kafka_is_refused_naming_producer_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "confluent_kafka" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(InvalidConfig) as raised:
        make(producer_backend="confluent")
    assert raised.value.field == "producer_backend"
    assert str(raised.value) == (
        "producer_backend='confluent' needs confluent-kafka: "
        "pip install 'kafka-log-middleware[confluent]'"
    )


def test_a_librdkafka_range_refusal_carries_the_field() -> None:
    with pytest.raises(InvalidConfig) as raised:
        make(producer_backend="confluent", timeout=300_001)
    assert raised.value.field == "timeout"
    assert str(raised.value) == (
        "timeout=300001 is out of range with producer_backend='confluent': it gives "
        "librdkafka's socket.timeout.ms=300001, which must be from 10 to 300000"
    )


class IntSubclass(int):
    pass


class StrSubclass(str):
    __slots__ = ()


def test_key_and_key_query_arg_together_are_refused_naming_key() -> None:
    with pytest.raises(InvalidConfig) as raised:
        make(key=len, key_query_arg="k")
    assert raised.value.field == "key"
    assert str(raised.value) == "key and key_query_arg are exclusive: give one of them"


def test_aiokafka_sends_at_once_our_batches() -> None:
    assert make().aiokafka_options()["linger_ms"] == 0


async def _async_generator(request: Any) -> Any:
    yield request


@pytest.mark.parametrize(
    ("changes", "field", "kind"),
    [
        ({"producer_async": "yes"}, "producer_async", "str"),
        ({"redact_headers": 5}, "redact_headers", "int"),
        ({"bootstrap_servers": 5}, "bootstrap_servers", "int"),
        ({"service": 5}, "service", "int"),
        ({"route": 5}, "route", "int"),
        ({"custom_fields": 5}, "custom_fields", "int"),
        ({"custom_fields": {1: len}}, "custom_fields", "int"),
    ],
)
def test_a_refused_type_is_named_in_the_message(
    changes: dict[str, Any], field: str, kind: str
) -> None:
    with pytest.raises(InvalidConfigType) as raised:
        make(**changes)
    assert raised.value.field == field
    assert str(raised.value).endswith(f"not {kind}")


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"bootstrap_servers": " , "}, "bootstrap_servers", "must name at least one 'host:port'"),
        ({"bootstrap_servers": ":9092"}, "bootstrap_servers", "':9092' is not 'host:port'"),
        ({"topic": "."}, "topic", "(1-249 of A-Z a-z 0-9 . _ -, not '.' or '..')"),
        ({"custom_fields": {".a": len}}, "custom_fields", "'.a' is not a dotted field name"),
        ({"route": _async_generator}, "route", "must be a plain function"),
    ],
)
def test_refusals_name_the_field_and_the_rule(
    changes: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidConfig) as raised:
        make(**changes)
    assert raised.value.field == field
    assert message in str(raised.value)


def test_the_edges_of_hosts_and_client_ids_are_accepted() -> None:
    host = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters, DNS's most
    assert make(bootstrap_servers=f"{host}:1").bootstrap_servers == (f"{host}:1",)
    with pytest.raises(InvalidConfig, match="invalid host"):
        make(bootstrap_servers=f"{host}b:1")
    assert make(bootstrap_servers="[::ffff:1.2.3.4]:9092").bootstrap_servers == (
        "[::ffff:1.2.3.4]:9092",
    )
    assert len(make(client_id="x" * 32767).client_id) == 32767
    with pytest.raises(InvalidConfig, match="at most 32767 bytes"):
        make(client_id="x" * 32768)


def test_a_builtin_without_a_signature_is_trusted_as_a_hook() -> None:
    try:
        inspect.signature(vars)
    except ValueError:
        pass
    else:  # pragma: no cover - depends on the Python version
        pytest.skip("vars has a signature on this Python")
    assert make(route=vars).route is vars


# -- delivery modes, idempotence, compression, the byte bound -------------------------------


def test_delivery_defaults_are_kongs_at_most_once() -> None:
    config = make()
    assert (config.delivery, config.acks, config.idempotent) == ("at_most_once", 1, False)
    assert (config.compression_type, config.overflow) == ("none", "drop_newest")
    assert config.buffer_max_bytes == 64 * 1024 * 1024
    options = config.aiokafka_options()
    assert (options["acks"], options["enable_idempotence"], options["compression_type"]) == (
        1,
        False,
        None,
    )


def test_at_least_once_asks_all_replicas_and_the_idempotent_producer() -> None:
    config = make(delivery="at_least_once")
    assert (config.acks, config.idempotent) == (-1, True)
    options = config.aiokafka_options()
    assert (options["acks"], options["enable_idempotence"]) == ("all", True)
    rdkafka = librdkafka_options(config.replace(producer_backend="confluent"))
    assert (rdkafka["acks"], rdkafka["enable.idempotence"]) == ("all", True)
    assert rdkafka["retries"] == INT32_MAX  # librdkafka's idempotence needs its retries
    # From a default config too: the unset acks follow the delivery mode.
    assert make().replace(delivery="at_least_once").acks == -1
    assert make(delivery="at_least_once", producer_request_acks=-1) == config.replace(
        producer_request_acks=-1
    )
    assert not make(delivery="at_least_once", enable_idempotence=False).idempotent


def test_idempotence_alone_needs_all_acks() -> None:
    assert make(enable_idempotence=True, producer_request_acks=-1).idempotent
    assert librdkafka_options(make(producer_backend="confluent"))["retries"] == 0


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"delivery": "at_least_once", "producer_request_acks": 1}, "producer_request_acks", "-1"),
        ({"delivery": "at_least_once", "producer_request_acks": 0}, "producer_request_acks", "-1"),
        ({"enable_idempotence": True}, "enable_idempotence", "producer_request_acks=-1"),
        ({"delivery": "exactly_once"}, "delivery", "'at_most_once' or 'at_least_once'"),
        ({"overflow": "spill"}, "overflow", "'drop_newest' or 'drop_oldest'"),
        ({"compression_type": "brotli"}, "compression_type", "'zstd'"),
        ({"compression_type": None}, "compression_type", "not NoneType"),
        ({"enable_idempotence": "yes"}, "enable_idempotence", "True or False"),
        ({"buffer_max_bytes": 1023}, "buffer_max_bytes", "from 1024"),
        ({"buffer_max_bytes": 4096, "max_entry_bytes": 8192}, "buffer_max_bytes", "8192"),
    ],
)
def test_delivery_refusals_name_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidConfig) as refused:
        make(**changes)
    assert refused.value.field == field
    assert words in str(refused.value)


def test_a_byte_bound_below_the_batch_limit_caps_an_entry() -> None:
    assert make(buffer_max_bytes=100_000).entry_limit == 100_000
    assert make().entry_limit == 1048576 - 128


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_every_codec_builds_both_clients(codec: str) -> None:
    config = make(compression_type=codec)
    producer = AIOKafkaProducer(**config.aiokafka_options())  # refuses a codec it cannot load
    await producer.stop()
    confluent_kafka.Producer(librdkafka_options(config.replace(producer_backend="confluent")))


def test_aiokafka_codecs_without_cramjam_are_refused_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cramjam" else real(name, *a)
    )
    with pytest.raises(InvalidConfig, match=r"kafka-log-middleware\[compression\]") as refused:
        make(compression_type="lz4")
    assert refused.value.field == "compression_type"
    assert make(compression_type="gzip").compression_type == "gzip"  # the standard library's


def test_delivery_fields_from_env() -> None:
    env = {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": "k:9092",
        "KAFKA_LOG_TOPIC": "t",
        "KAFKA_LOG_DELIVERY": "at_least_once",
        "KAFKA_LOG_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_LOG_COMPRESSION_TYPE": "zstd",
        "KAFKA_LOG_BUFFER_MAX_BYTES": "2000000",
        "KAFKA_LOG_OVERFLOW": "drop_oldest",
        "KAFKA_LOG_PRODUCER_REQUEST_ACKS": "",
    }
    assert KafkaLogConfig.from_env(environ=env) == make(
        bootstrap_servers="k:9092",
        topic="t",
        delivery="at_least_once",
        enable_idempotence=False,
        compression_type="zstd",
        buffer_max_bytes=2_000_000,
        overflow="drop_oldest",
    )


def test_delivery_settings_shape_the_producer() -> None:
    keys = {
        make().producer_key(),
        make(delivery="at_least_once").producer_key(),
        make(compression_type="gzip").producer_key(),
        make(producer_request_acks=-1).producer_key(),
    }
    assert len(keys) == 4
    assert make(producer_request_acks=1).producer_key() == make().producer_key()
    # The same client either way: how entries are retried is the publisher's business.
    idempotent = make(enable_idempotence=True, producer_request_acks=-1)
    assert make(delivery="at_least_once").producer_key() == idempotent.producer_key()


# -- the disk spool --------------------------------------------------------------------


def test_the_spool_goes_with_overflow_spool_and_at_least_once(tmp_path: Any) -> None:
    spooled = make(delivery="at_least_once", overflow="spool", spool_dir=tmp_path / "new")
    assert spooled.spool_dir == str(tmp_path / "new")  # absolute, made and probed now
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    assert list((tmp_path / "new").iterdir()) == []  # the probe file is gone
    assert (spooled.spool_max_bytes, spooled.spool_sync_interval) == (1024**3, 1000)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"delivery": "at_least_once", "overflow": "spool"}, "spool_dir", "needs spool_dir"),
        ({"delivery": "at_least_once", "spool_dir": "SPOOL"}, "overflow", "overflow='spool'"),
        ({"overflow": "spool", "spool_dir": "SPOOL"}, "delivery", "at_least_once"),
        ({"spool_dir": ""}, "spool_dir", "must not be empty"),
        ({"spool_max_bytes": 100}, "spool_max_bytes", "from 4096"),
        ({"spool_sync_interval": 0}, "spool_sync_interval", "from 1"),
    ],
)
def test_spool_refusals_name_the_field(
    tmp_path: Any, changes: dict[str, Any], field: str, words: str
) -> None:
    if changes.get("spool_dir") == "SPOOL":
        changes["spool_dir"] = str(tmp_path)
    with pytest.raises(InvalidConfig) as refused:
        make(**changes)
    assert refused.value.field == field
    assert words in str(refused.value)


def test_a_spool_dir_that_cannot_be_written_is_refused(tmp_path: Any) -> None:
    plain_file = tmp_path / "file"
    plain_file.write_text("")
    spool = {"delivery": "at_least_once", "overflow": "spool"}
    with pytest.raises(InvalidConfig, match="is not a directory"):
        make(**spool, spool_dir=str(plain_file))
    # os.access says yes to root here; creating and probing does not.
    with pytest.raises(InvalidConfig, match="not writable") as refused:
        make(**spool, spool_dir="/proc/kafka-log-spool")
    assert refused.value.field == "spool_dir"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root writes anywhere
        with pytest.raises(InvalidConfig, match="not writable"):
            make(**spool, spool_dir=str(locked / "spool"))


def test_spool_fields_from_env(tmp_path: Any) -> None:
    env = {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": "k:9092",
        "KAFKA_LOG_TOPIC": "t",
        "KAFKA_LOG_DELIVERY": "at_least_once",
        "KAFKA_LOG_OVERFLOW": "spool",
        "KAFKA_LOG_SPOOL_DIR": str(tmp_path),
        "KAFKA_LOG_SPOOL_MAX_BYTES": "1048576",
        "KAFKA_LOG_SPOOL_SYNC_INTERVAL": "250",
    }
    config = KafkaLogConfig.from_env(environ=env)
    assert (config.spool_dir, config.spool_max_bytes, config.spool_sync_interval) == (
        str(tmp_path),
        1048576,
        250,
    )


@pytest.mark.parametrize(("raw", "expected"), [("", None), (" ", None), ("on", True), ("0", False)])
def test_from_env_include_trace_id_empty_is_the_layouts_default(
    raw: str, expected: bool | None
) -> None:
    env = {**ENV, "KAFKA_LOG_INCLUDE_TRACE_ID": raw, "KAFKA_LOG_LOG_FORMAT": "kong3"}
    config = KafkaLogConfig.from_env(environ=env)
    assert config.include_trace_id is expected
    assert config.trace_ids is (True if expected is None else expected)


def test_from_env_include_trace_id_refuses_other_words() -> None:
    with pytest.raises(InvalidConfig) as raised:
        KafkaLogConfig.from_env(environ={**ENV, "KAFKA_LOG_INCLUDE_TRACE_ID": "maybe"})
    assert raised.value.field == "include_trace_id"
    assert str(raised.value).startswith("KAFKA_LOG_INCLUDE_TRACE_ID: expected true or false")
