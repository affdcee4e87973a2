"""The Kong log entry, in both layouts, from captured request facts.

Everything here runs the Python serializer only (the compiled one is switched off for
this module): these tests hold every rule on their own, with the expected values
written out. The corpus at the end, one request per rule with its whole expected
entry, is also what tests/test_native_serializer.py holds the compiled serializer to.
"""

from __future__ import annotations

import copy
import enum
import http
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson
import pytest

from kafka_log_middleware import _log, nginx_vars, serializer
from kafka_log_middleware.asgi import ASGIRequest
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import KafkaLogConfig, LogFormat
from kafka_log_middleware.custom_fields import EDITS_KEY, set_serialize_value
from kafka_log_middleware.gateway import upstream
from kafka_log_middleware.serializer import build_entry, encode_entry, keyed_hash, message_key
from kafka_log_middleware.types import Message

LAYOUTS: list[LogFormat] = ["kong2", "kong3"]
REQUEST_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def python_serializer_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``encode_entry`` here is the Python path, whether or not the native module is built."""
    monkeypatch.setattr(serializer, "_native", None)


async def _receive() -> Message:
    return {"type": "http.disconnect"}


async def _send(message: Message) -> None:
    return None


def _config(log_format: LogFormat = "kong2", **options: Any) -> KafkaLogConfig:
    return KafkaLogConfig(
        bootstrap_servers=("127.0.0.1:9092",), topic="t", log_format=log_format, **options
    )


def _get_scope() -> dict[str, Any]:
    # GET /orders/42?page=2&tag=a&tag=b&debug HTTP/1.1 — 195 bytes, no body.
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/orders/42",
        "raw_path": b"/orders/42",
        "root_path": "",
        "query_string": b"page=2&tag=a&tag=b&debug",
        "headers": [
            (b"host", b"api.example.com:8000"),
            (b"user-agent", b"curl/8.5.0"),
            (b"accept", b"*/*"),
            (b"authorization", b"Bearer secret"),
            (b"x-request-id", REQUEST_ID.encode()),
        ],
        "client": ("10.0.0.7", 51234),
        "server": ("127.0.0.1", 8000),
    }


def _post_scope() -> dict[str, Any]:
    # POST /orders HTTP/1.1 with a 27-byte JSON body — 127 bytes.
    scope = _get_scope()
    scope.update(
        method="POST",
        path="/orders",
        raw_path=b"/orders",
        query_string=b"",
        headers=[
            (b"host", b"api.example.com"),
            (b"content-type", b"application/json"),
            (b"content-length", b"27"),
        ],
    )
    return scope


_RESPONSE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"13"),
    (b"set-cookie", b"a=1"),
    (b"set-cookie", b"b=2"),
]  # "HTTP/1.1 200 OK" + these + 13 body bytes = 118 bytes


def _request(
    scope: dict[str, Any] | None = None,
    config: KafkaLogConfig | None = None,
    **attributes: Any,
) -> CapturedRequest:
    """A request answered 200 after 12 ms, body sent 3 ms later, unless attributes say else."""
    request = ASGIRequest(scope or _get_scope(), config or _config(), _receive, _send)
    request.started_at = 1700000000.5
    request.t_start = 1000.0
    request.t_response = 1000.012
    request.t_end = 1000.015
    request.status = 200
    request.response_headers = _RESPONSE_HEADERS
    request.body_sent = 13
    for name, value in attributes.items():
        setattr(request, name, value)
    return request


def _raised(config: KafkaLogConfig) -> CapturedRequest:
    return _request(
        _post_scope(),
        config,
        status=0,
        response_headers=(),
        body_sent=0,
        body_read=27,
        t_response=0.0,
        t_end=1000.040,
        raised=True,
    )


def _json(entry: dict[str, Any]) -> Any:
    return orjson.loads(orjson.dumps(entry))


_GET_URI = "/orders/42?page=2&tag=a&tag=b&debug"
_GET_REQUEST: dict[str, Any] = {
    "uri": _GET_URI,
    "url": "http://api.example.com:8000" + _GET_URI,
    "querystring": {"page": "2", "tag": ["a", "b"], "debug": True},
    "method": "GET",
    "headers": {
        "host": "api.example.com:8000",
        "user-agent": "curl/8.5.0",
        "accept": "*/*",
        "authorization": "REDACTED",
        "x-request-id": REQUEST_ID,
    },
}
_GET_RESPONSE_HEADERS = {
    "content-type": "application/json",
    "content-length": "13",
    "set-cookie": ["REDACTED", "REDACTED"],  # redact_response_headers' default
}


# -- whole entries -------------------------------------------------------------------


def test_whole_entry_kong2_get() -> None:
    entry = build_entry(_request())
    assert _json(entry) == {
        "request": {**_GET_REQUEST, "size": "195"},
        "upstream_uri": _GET_URI,
        "response": {"status": 200, "headers": _GET_RESPONSE_HEADERS, "size": "118"},
        "latencies": {"request": 15, "proxy": 12, "kong": 3},
        "client_ip": "10.0.0.7",
        "started_at": 1700000000500,
    }


def test_whole_entry_kong3_get() -> None:
    config = _config("kong3", request_id_header="X-Request-ID")
    entry = build_entry(_request(config=config))
    assert _json(entry) == {
        "request": {**_GET_REQUEST, "size": 195, "id": REQUEST_ID},
        "upstream_uri": _GET_URI,
        "upstream_status": "200",
        "response": {"status": 200, "headers": _GET_RESPONSE_HEADERS, "size": 118},
        "latencies": {"request": 15, "proxy": 12, "kong": 0, "receive": 3},
        "client_ip": "10.0.0.7",
        "started_at": 1700000000500,
        "source": "upstream",
        "workspace_name": "default",
    }


_POST_REQUEST: dict[str, Any] = {
    "uri": "/orders",
    "url": "http://api.example.com:8000/orders",
    "querystring": {},
    "method": "POST",
    "headers": {
        "host": "api.example.com",
        "content-type": "application/json",
        "content-length": "27",
    },
}
_SERVER_500_HEADERS = {
    "content-type": "text/plain; charset=utf-8",
    "content-length": "21",
    "connection": "close",
}


def test_whole_entry_kong2_app_raised() -> None:
    entry = build_entry(_raised(_config()))
    assert _json(entry) == {
        "request": {**_POST_REQUEST, "size": "127"},
        "upstream_uri": "/orders",
        "response": {"status": 500, "headers": _SERVER_500_HEADERS, "size": "139"},
        "latencies": {"request": 40, "proxy": -1, "kong": 0},
        "client_ip": "10.0.0.7",
        "started_at": 1700000000500,
    }


def test_whole_entry_kong3_app_raised() -> None:
    entry = build_entry(_raised(_config("kong3")))
    request_id = entry["request"].pop("id")
    assert re.fullmatch("[0-9a-f]{32}", request_id)
    assert _json(entry) == {
        "request": {**_POST_REQUEST, "size": 127},
        "upstream_uri": "/orders",
        "upstream_status": "",
        "response": {"status": 500, "headers": _SERVER_500_HEADERS, "size": 139},
        "latencies": {"request": 40, "proxy": -1, "kong": 0, "receive": 0},
        "client_ip": "10.0.0.7",
        "started_at": 1700000000500,
        "source": "kong",
        "workspace_name": "default",
    }


# -- one rule at a time --------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_entry_is_one_json_object_without_nulls(layout: LogFormat) -> None:
    entry = build_entry(_request(config=_config(layout)))
    assert b"null" not in orjson.dumps(entry)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kong_only_fields_by_layout(layout: LogFormat) -> None:
    entry = build_entry(_request(config=_config(layout)))
    kong3_only = {"upstream_status", "source", "workspace_name"}
    assert kong3_only <= entry.keys() if layout == "kong3" else not kong3_only & entry.keys()
    assert ("id" in entry["request"]) == (layout == "kong3")
    assert ("receive" in entry["latencies"]) == (layout == "kong3")


@pytest.mark.parametrize(("layout", "kind"), [("kong2", str), ("kong3", int)])
def test_sizes_are_strings_in_kong2_and_numbers_in_kong3(layout: LogFormat, kind: type) -> None:
    entry = build_entry(_request(config=_config(layout)))
    assert type(entry["request"]["size"]) is kind
    assert type(entry["response"]["size"]) is kind


@pytest.mark.parametrize("layout", LAYOUTS)
def test_latencies_are_integer_milliseconds(layout: LogFormat) -> None:
    entry = build_entry(_request(config=_config(layout), t_response=1000.0123, t_end=1000.0159))
    assert all(type(v) is int for v in entry["latencies"].values())
    assert entry["latencies"]["request"] == 15
    assert entry["latencies"]["proxy"] == 12
    assert type(entry["started_at"]) is int


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_route_service_consumer_credential_tries_means_keys_absent(layout: LogFormat) -> None:
    entry = build_entry(_request(config=_config(layout)))
    for key in ("route", "service", "consumer", "authenticated_entity", "tries", "workspace"):
        assert key not in entry


@pytest.mark.parametrize("layout", LAYOUTS)
def test_route_service_consumer_credential_from_hooks_and_config(layout: LogFormat) -> None:
    config = _config(
        layout,
        service={"name": "orders"},
        route=lambda r: {"name": "get-order", "paths": ["/orders/{id}"]},
        consumer=lambda r: {"username": "ann"},
        authenticated_entity=lambda r: {"id": "c1", "consumer_id": "u1"},
    )
    entry = build_entry(_request(config=config))
    assert entry["service"] == {"name": "orders"}
    assert entry["route"] == {"name": "get-order", "paths": ["/orders/{id}"]}
    assert entry["consumer"] == {"username": "ann"}
    assert entry["authenticated_entity"] == {"id": "c1", "consumer_id": "u1"}


def test_starlette_route_is_the_default_route_hook() -> None:
    class Route:
        name = "order"
        path = "/orders/{id}"
        methods = frozenset({"HEAD", "GET"})

    scope = _get_scope()
    scope["route"] = Route()
    entry = build_entry(_request(scope))
    assert entry["route"] == {
        "name": "order",
        "paths": ["/orders/{id}"],
        "methods": ["GET", "HEAD"],
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_hook_that_raises_leaves_its_field_out(
    layout: LogFormat, caplog: pytest.LogCaptureFixture
) -> None:
    _log.reset()

    def broken(request: CapturedRequest) -> Any:
        raise RuntimeError("secret token abc")

    config = _config(layout, consumer=broken, custom_fields={"extra.x": broken, "ok": lambda r: 1})
    with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
        entry = build_entry(_request(config=config))
    assert "consumer" not in entry
    assert "extra" not in entry
    assert entry["ok"] == 1
    assert "RuntimeError" in caplog.text
    assert "extra.x" in caplog.text
    assert "secret" not in caplog.text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_workspace_is_kong3_only_and_configurable(layout: LogFormat) -> None:
    config = _config(layout, workspace="ws-uuid", workspace_name="team")
    entry = build_entry(_request(config=config))
    if layout == "kong3":
        assert (entry["workspace"], entry["workspace_name"]) == ("ws-uuid", "team")
    else:
        assert "workspace" not in entry
        assert "workspace_name" not in entry


@pytest.mark.parametrize("layout", LAYOUTS)
def test_authorization_headers_are_redacted_by_default(layout: LogFormat) -> None:
    scope = _get_scope()
    scope["headers"] = [(b"Authorization", b"Basic x"), (b"Proxy-Authorization", b"y")]
    headers = build_entry(_request(scope, _config(layout)))["request"]["headers"]
    assert headers == {"authorization": "REDACTED", "proxy-authorization": "REDACTED"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_redaction_is_configurable_and_applies_to_repeated_headers(layout: LogFormat) -> None:
    scope = _get_scope()
    scope["headers"] = [(b"authorization", b"a"), (b"x-api-key", b"k1"), (b"x-api-key", b"k2")]
    config = _config(layout, redact_headers=("X-Api-Key",))
    headers = build_entry(_request(scope, config))["request"]["headers"]
    assert headers == {"authorization": "a", "x-api-key": ["REDACTED", "REDACTED"]}


def test_redaction_none_absent_header_is_not_added() -> None:
    scope = _get_scope()
    scope["headers"] = [(b"accept", b"*/*")]
    assert build_entry(_request(scope))["request"]["headers"] == {"accept": "*/*"}


def test_response_headers_redacted_are_set_cookie_by_default_only() -> None:
    request = _request(response_headers=[(b"authorization", b"x"), (b"set-cookie", b"s")])
    assert build_entry(request)["response"]["headers"] == {
        "authorization": "x",
        "set-cookie": "REDACTED",
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_request_headers_at_all(layout: LogFormat) -> None:
    scope = _get_scope()
    scope["headers"] = []
    entry = build_entry(_request(scope, _config(layout)))
    assert entry["request"]["headers"] == {}
    # nginx's $host without a Host header (HTTP/1.0): Kong's server_name
    assert entry["request"]["url"] == "http://kong:8000" + _GET_URI


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mixed_case_header_names_are_lower_cased(layout: LogFormat) -> None:
    scope = _get_scope()
    scope["headers"] = [(b"X-Custom-Header", b"1"), (b"x-CUSTOM-header", b"2")]
    entry = build_entry(_request(scope, _config(layout)))
    assert entry["request"]["headers"] == {"x-custom-header": ["1", "2"]}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"arg1&arg2", {"arg1": True, "arg2": True}),
        (b"a=1&a=2&a", {"a": ["1", "2", True]}),
        (b"", {}),
        (b"q=hello+world&e=", {"q": "hello world", "e": ""}),
    ],
)
def test_querystring(layout: LogFormat, query: bytes, expected: dict[str, Any]) -> None:
    scope = _get_scope()
    scope["query_string"] = query
    assert build_entry(_request(scope, _config(layout)))["request"]["querystring"] == expected


@pytest.mark.parametrize(("layout", "value"), [("kong2", "zz"), ("kong3", "%zz")])
def test_querystring_invalid_escape_follows_each_kong_version(
    layout: LogFormat, value: str
) -> None:
    scope = _get_scope()
    scope["query_string"] = b"a=%zz"
    assert build_entry(_request(scope, _config(layout)))["request"]["querystring"] == {"a": value}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_url_and_uri(layout: LogFormat) -> None:
    scope = _get_scope()
    scope.update(scheme="https", raw_path=b"/caf%C3%A9", query_string=b"x=1")
    scope["headers"] = [(b"host", b"API.example.com")]
    entry = build_entry(_request(scope, _config(layout)))
    assert entry["request"]["uri"] == "/caf%C3%A9?x=1"
    assert entry["upstream_uri"] == "/caf%C3%A9?x=1"
    assert entry["request"]["url"] == "https://api.example.com:8000/caf%C3%A9?x=1"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_absolute_form_target_is_logged_path_only_without_credentials(layout: LogFormat) -> None:
    # uvicorn's h11 protocol hands over the whole target as the path.
    scope = _get_scope()
    target = b"http://user:s3cr3t@API.Example.com:8080/orders/42"
    scope.update(raw_path=target, path=target.decode(), query_string=b"page=2")
    request = _request(scope, _config(layout))
    entry = build_entry(request)
    assert entry["request"]["uri"] == entry["upstream_uri"] == "/orders/42?page=2"
    assert entry["request"]["url"] == "http://api.example.com:8000/orders/42?page=2"
    assert entry["request"]["querystring"] == {"page": "2"}
    head = len(b"GET  HTTP/1.1\r\n") + len(target + b"?page=2")
    headers = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
    assert int(entry["request"]["size"]) == head + headers + 2
    assert b"s3cr3t" not in orjson.dumps(entry)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_headers_nginx_ignores_are_not_logged_but_counted(layout: LogFormat) -> None:
    scope = _get_scope()
    scope["headers"] = [(b"host", b"h"), (b"x.dot", b"1"), (b"x_under", b"2"), (b"x-s", b" 3 ")]
    entry = build_entry(_request(scope, _config(layout)))
    assert entry["request"]["headers"] == {"host": "h", "x_under": "2", "x-s": "3"}
    size = len(f"GET {_GET_URI} HTTP/1.1\r\n") + len("host: h\r\nx.dot: 1\r\nx_under: 2\r\n")
    assert int(entry["request"]["size"]) == size + len("x-s:  3 \r\n\r\n")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_querystring_ends_at_a_fragment(layout: LogFormat) -> None:
    scope = _get_scope()
    scope["query_string"] = b"a=1#frag&b=2"
    entry = build_entry(_request(scope, _config(layout)))
    assert entry["request"]["querystring"] == {"a": "1"}
    assert entry["request"]["uri"] == "/orders/42?a=1#frag&b=2"


@pytest.mark.parametrize(
    ("layout", "url"), [("kong2", "https://h:443/p"), ("kong3", "https://h/p")]
)
def test_url_without_a_known_port(layout: LogFormat, url: str) -> None:
    scope = _get_scope()
    scope.update(scheme="https", raw_path=b"/p", query_string=b"", server=None)
    scope["headers"] = [(b"host", b"h")]
    assert build_entry(_request(scope, _config(layout)))["request"]["url"] == url


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tls_absent_on_plain_http_and_present_with_the_tls_extension(layout: LogFormat) -> None:
    assert "tls" not in build_entry(_request(config=_config(layout)))["request"]
    scope = _get_scope()
    scope.update(
        scheme="https", extensions={"tls": {"tls_version": 0x0304, "cipher_suite": 0x1301}}
    )
    entry = build_entry(_request(scope, _config(layout)))
    assert entry["request"]["tls"] == {
        "version": "TLSv1.3",
        "cipher": "TLS_AES_128_GCM_SHA256",
        "client_verify": "NONE",
    }


def test_kong3_request_id_from_header_else_a_fresh_uuid4_hex() -> None:
    config = _config("kong3", request_id_header="x-request-id")
    assert build_entry(_request(config=config))["request"]["id"] == REQUEST_ID
    first = build_entry(_request(config=_config("kong3")))["request"]["id"]
    second = build_entry(_request(config=_config("kong3")))["request"]["id"]
    assert re.fullmatch("[0-9a-f]{32}", first)
    assert first != second


@pytest.mark.parametrize("layout", LAYOUTS)
def test_client_ip_and_started_at(layout: LogFormat) -> None:
    entry = build_entry(_request(config=_config(layout), started_at=1700000000.1239))
    assert entry["client_ip"] == "10.0.0.7"
    assert entry["started_at"] == 1700000000123


@pytest.mark.parametrize("layout", LAYOUTS)
def test_app_raised_before_responding_is_a_500_not_proxied(layout: LogFormat) -> None:
    entry = build_entry(_raised(_config(layout)))
    assert entry["response"]["status"] == 500
    assert entry["latencies"]["proxy"] == -1
    if layout == "kong3":
        assert (entry["upstream_status"], entry["source"]) == ("", "kong")


def test_app_returned_without_responding_is_also_the_servers_500() -> None:
    request = _request(status=0, response_headers=(), body_sent=0, t_response=0.0)
    assert build_entry(request)["response"]["status"] == 500


def test_app_raised_after_responding_keeps_its_status() -> None:
    entry = build_entry(_request(config=_config("kong3"), raised=True, status=201))
    assert entry["response"]["status"] == 201
    assert (entry["upstream_status"], entry["source"]) == ("201", "upstream")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_client_gone_before_the_response_is_499(layout: LogFormat) -> None:
    request = _request(
        config=_config(layout),
        status=0,
        response_headers=(),
        body_sent=0,
        t_response=0.0,
        client_gone=True,
        raised=True,
    )
    entry = build_entry(request)
    assert entry["response"]["status"] == 499
    assert entry["response"]["headers"] == {}
    assert entry["response"]["size"] in ("0", 0)
    assert entry["latencies"]["proxy"] == -1


def test_client_gone_after_the_response_started_keeps_the_status() -> None:
    assert build_entry(_request(client_gone=True))["response"]["status"] == 200


@pytest.mark.parametrize("layout", LAYOUTS)
def test_upstream_status_is_a_string_in_kong3(layout: LogFormat) -> None:
    entry = build_entry(_request(config=_config(layout), status=404))
    if layout == "kong3":
        assert entry["upstream_status"] == "404"
    assert entry["response"]["status"] == 404


# -- custom fields and request edits ------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_custom_fields_are_set_after_redaction(layout: LogFormat) -> None:
    config = _config(
        layout,
        custom_fields={
            "request.headers.authorization": lambda r: "custom",
            "app.version": lambda r: "1.2",
            "client_ip": lambda r: None,
        },
    )
    entry = build_entry(_request(config=config))
    assert entry["request"]["headers"]["authorization"] == "custom"
    assert entry["app"] == {"version": "1.2"}
    assert "client_ip" not in entry


def test_custom_fields_receive_the_captured_request() -> None:
    seen: list[CapturedRequest] = []
    config = _config(custom_fields={"x": lambda r: seen.append(r)})
    request = _request(config=config)
    build_entry(request)
    assert seen == [request]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_request_edits_apply_after_custom_fields(layout: LogFormat) -> None:
    config = _config(layout, custom_fields={"app.version": lambda r: "1.2"})
    scope = _get_scope()
    set_serialize_value(scope, "app.version", "1.3", mode="replace")
    set_serialize_value(scope, "app.build", "7", mode="add")
    set_serialize_value(scope, "request.headers.accept", None)
    set_serialize_value(scope, "upstream_uri", "/internal/orders/42")
    entry = build_entry(_request(scope, config))
    assert entry["app"] == {"version": "1.3", "build": "7"}
    assert "accept" not in entry["request"]["headers"]
    assert entry["upstream_uri"] == "/internal/orders/42"


def test_edits_do_not_modify_the_configured_service() -> None:
    config = _config(service={"name": "orders"})
    scope = _get_scope()
    set_serialize_value(scope, "service.name", "other")
    assert build_entry(_request(scope, config))["service"] == {"name": "other"}
    assert config.service == {"name": "orders"}


# -- message key -----------------------------------------------------------------------


def _keyed(query: bytes, **options: Any) -> CapturedRequest:
    scope = _get_scope()
    scope["query_string"] = query
    return _request(scope, _config(**options))


def test_no_message_key_by_default() -> None:
    assert message_key(_request()) is None


@pytest.mark.parametrize(
    ("query", "key"),
    [
        (b"tenant=acme&x=1", b"acme"),
        (b"tenant=a%20b", b"a b"),
        (b"tenant=first&tenant=second", b"first"),
        (b"tenant", None),
        (b"tenant=", b""),
        (b"other=1", None),
        (b"", None),
        (b"tenant=caf%C3%A9", "caf\u00e9".encode()),
        (b"tenant=acme#frag", b"acme"),
    ],
)
def test_message_key_from_query_arg(query: bytes, key: bytes | None) -> None:
    assert message_key(_keyed(query, key_query_arg="tenant")) == key


@pytest.mark.parametrize(
    ("value", "key"), [("k1", b"k1"), (b"\x00k", b"\x00k"), (bytearray(b"b"), b"b"), (None, None)]
)
def test_message_key_from_the_key_hook(value: Any, key: bytes | None) -> None:
    assert message_key(_keyed(b"", key=lambda r: value)) == key


def test_message_key_hook_that_raises_or_returns_junk_gives_no_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _log.reset()

    def broken(request: CapturedRequest) -> Any:
        raise KeyError("x")

    with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
        assert message_key(_keyed(b"", key=broken)) is None
        assert message_key(_keyed(b"", key=lambda r: 42)) is None
    assert "KeyError" in caplog.text
    assert "int" in caplog.text


# -- exact bytes: key order and JSON form --------------------------------------------


def test_kong2_entry_bytes_in_key_order() -> None:
    scope = _get_scope()
    scope["extensions"] = {"tls": {"tls_version": 0x0304, "cipher_suite": 0x1301}}
    scope["headers"] = [(b"Host", b"h"), (b"X-Q", b'"\\\n\xc3\xa9\x01')]
    scope["query_string"] = b"a=1"
    config = _config(
        service={"name": "orders"},
        route=lambda r: {"name": "r"},
        consumer=lambda r: {"id": 1},
        authenticated_entity=lambda r: {"ok": True},
    )
    expected = (
        b'{"request":{"uri":"/orders/42?a=1","url":"http://h:8000/orders/42?a=1",'
        b'"querystring":{"a":"1"},"method":"GET","headers":{"host":"h",'
        b'"x-q":"\\"\\\\\\n\xc3\xa9\\u0001"},"size":"53","tls":{"version":"TLSv1.3",'
        b'"cipher":"TLS_AES_128_GCM_SHA256","client_verify":"NONE"}},'
        b'"upstream_uri":"/orders/42?a=1","response":{"status":200,"headers":'
        b'{"content-type":"application/json","content-length":"13","set-cookie":["REDACTED","REDACTED"]},'
        b'"size":"118"},"latencies":{"request":15,"proxy":12,"kong":3},'
        b'"client_ip":"10.0.0.7","started_at":1700000000500,"service":{"name":"orders"},'
        b'"route":{"name":"r"},"consumer":{"id":1},"authenticated_entity":{"ok":true}}'
    )
    request = _request(scope, config)
    assert encode_entry(request) == expected
    assert orjson.dumps(build_entry(request)) == expected


def test_kong3_entry_bytes_in_key_order() -> None:
    scope = _get_scope()
    scope["extensions"] = {"tls": {"tls_version": 0x0303, "cipher_suite": 0xC0FF}}
    scope["headers"] = [(b"x-request-id", b"id-1")]
    scope["query_string"] = b""
    config = _config(
        "kong3",
        request_id_header="x-request-id",
        workspace="ws",
        workspace_name="team",
        service={"name": "orders"},
        route=lambda r: {"name": "r"},
    )
    expected = (
        b'{"request":{"uri":"/orders/42","url":"http://kong:8000/orders/42",'
        b'"querystring":{},"method":"GET","headers":{"x-request-id":"id-1"},"size":47,'
        b'"tls":{"version":"TLSv1.2","cipher":"0xC0FF","client_verify":"NONE"},"id":"id-1"},'
        b'"upstream_uri":"/orders/42","response":{"status":200,'
        b'"headers":{"content-type":"application/json","content-length":"13",'
        b'"set-cookie":["REDACTED","REDACTED"]},"size":118},'
        b'"latencies":{"request":15,"proxy":12,"kong":0,"receive":3},'
        b'"client_ip":"10.0.0.7","started_at":1700000000500,"upstream_status":"200",'
        b'"source":"upstream",'
        b'"workspace":"ws","workspace_name":"team","service":{"name":"orders"},'
        b'"route":{"name":"r"}}'
    )
    request = _request(scope, config)
    assert encode_entry(request) == expected
    assert orjson.dumps(build_entry(request)) == expected


@pytest.mark.parametrize(
    ("seconds", "ms"),
    [
        (0.029, 29),  # 28.999999999999996 ms before the rounding to 1 us
        (1000.029 - 1000.0, 29),
        (0.0125, 12),
        (0.01296, 12),
        (0.0129994, 12),
        (0.0129996, 13),  # within 1 us of 13 ms
        (0.0005, 0),
        (0.000998, 0),
        (0.0009999, 1),  # within 1 us of 1 ms
        (0.001, 1),
        (1e-9, 0),
        (0.0, 0),
        (-0.5, 0),
        (float("nan"), 0),
        (5.9995, 5999),
        (123.4569995, 123456),  # 123456.99949999… ms
        (123.4569996, 123457),
        (1700000000.5, 1700000000500),
    ],
)
def test_milliseconds_are_truncated_after_rounding_to_a_microsecond(
    seconds: float, ms: int
) -> None:
    assert nginx_vars.msec(seconds) == ms


def test_the_service_in_an_entry_is_a_copy_of_the_configured_one() -> None:
    config = _config(service={"name": "orders"})
    entry = build_entry(_request(config=config))
    entry["service"]["name"] = "changed"
    assert config.service == {"name": "orders"}


# -- the corpus: one request per rule, with its whole expected entry -----------------
#
# Each case gives the fields whose values differ from the GET entry's; every other
# field must have the GET entry's value. Sizes are the length of the bytes nginx
# counts, written out as those bytes.


class _Marker(enum.Enum):
    DROP = "the field is absent (a scope key: removed)"
    ANY_UUID4 = "a fresh uuid4 hex"


DROP = _Marker.DROP
ANY_UUID4 = _Marker.ANY_UUID4
_UUID4_HEX = re.compile("[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}")

Encoder = Literal["native", "finish", "python"]
"""How the compiled serializer encodes an entry: whole, its head only (orjson adds
hook values it does not write), or not at all (``build_entry`` does)."""


@dataclass(frozen=True)
class Size:
    """A size: a string in kong2 (every nginx variable is), a number in kong3."""

    n: int


class Per(NamedTuple):
    """A value that differs by layout."""

    kong2: Any
    kong3: Any


def kong3_only(value: Any) -> Per:
    """A field of the kong3 layout only."""
    return Per(DROP, value)


class InFiles(NamedTuple):
    """A path in the corpus's files directory (``f.txt`` holds ``hello``)."""

    name: str


def _sent(*raw: bytes, body: int = 0) -> Size:
    """``$request_length``/``$bytes_sent`` of these bytes, then ``body`` bytes."""
    return Size(sum(map(len, raw)) + body)


@dataclass(frozen=True)
class Case:
    """One request of the corpus and its whole expected entry."""

    name: str
    expected: Mapping[str, Any] = field(default_factory=dict)
    """Dotted fields whose value differs from the GET entry's (DROP: absent)."""
    scope: Mapping[str, Any] = field(default_factory=dict)
    """Changes to the GET (or POST) scope; DROP removes a key."""
    config: Mapping[str, Any] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    """``CapturedRequest`` attributes that differ from ``_request``'s."""
    post: bool = False
    layouts: tuple[LogFormat, ...] = ("kong2", "kong3")
    encoder: Encoder = "native"
    """What the compiled serializer does with it (held by test_native_serializer.py)."""

    def request(self, layout: LogFormat, files: Path) -> CapturedRequest:
        """A new request of this case, in ``layout``."""
        scope = _post_scope() if self.post else _get_scope()
        for key, value in copy.deepcopy(dict(self.scope)).items():
            if value is DROP:
                del scope[key]
            else:
                scope[key] = value
        facts = {
            name: str(files / value.name) if isinstance(value, InFiles) else value
            for name, value in self.facts.items()
        }
        return _request(scope, _config(layout, **self.config), **facts)

    def entry(self, layout: LogFormat) -> dict[str, Any]:
        """The expected entry in ``layout`` (with ANY_UUID4 for a fresh request id)."""
        entry: dict[str, Any] = _resolve(_GET_ENTRY, layout)
        for key, value in self.expected.items():
            *parents, last = key.split(".")
            node = entry
            for part in parents:
                node = node.setdefault(part, {})
            resolved = _resolve(value, layout)
            if resolved is DROP:
                node.pop(last, None)
            else:
                node[last] = resolved
        return entry


def _resolve(value: Any, layout: LogFormat) -> Any:
    if isinstance(value, Per):
        return _resolve(value.kong3 if layout == "kong3" else value.kong2, layout)
    if isinstance(value, Size):
        return value.n if layout == "kong3" else str(value.n)
    if isinstance(value, dict):
        items = ((k, _resolve(v, layout)) for k, v in value.items())
        return {k: v for k, v in items if v is not DROP}
    if isinstance(value, list):
        return [_resolve(v, layout) for v in value]
    return value


def assert_entry(entry: Mapping[str, Any], expected: dict[str, Any]) -> None:
    """``entry`` (as JSON) is ``expected``; ANY_UUID4 there matches a uuid4 hex."""
    got = _json(dict(entry))
    if expected.get("request", {}).get("id") is ANY_UUID4:
        request_id = got.get("request", {}).get("id")
        assert isinstance(request_id, str)
        assert _UUID4_HEX.fullmatch(request_id)
        expected["request"]["id"] = request_id
    assert got == expected


def corpus_files(directory: Path) -> Path:
    """``directory`` with the files the corpus names."""
    (directory / "f.txt").write_bytes(b"hello")
    return directory


_GET_LINE = b"GET /orders/42?page=2&tag=a&tag=b&debug HTTP/1.1\r\n"
_GET_HEADER_LINES = (
    b"host: api.example.com:8000\r\n"
    b"user-agent: curl/8.5.0\r\n"
    b"accept: */*\r\n"
    b"authorization: Bearer secret\r\n"
    b"x-request-id: 0123456789abcdef0123456789abcdef\r\n"
)
_RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: application/json\r\n"
    b"content-length: 13\r\n"
    b"set-cookie: a=1\r\n"
    b"set-cookie: b=2\r\n"
    b"\r\n"
)
_GET_ENTRY: dict[str, Any] = {
    "request": {
        **_GET_REQUEST,
        "size": _sent(_GET_LINE, _GET_HEADER_LINES, b"\r\n"),  # 195
        "id": kong3_only(ANY_UUID4),
    },
    "upstream_uri": _GET_URI,
    "upstream_status": kong3_only("200"),
    "response": {
        "status": 200,
        "headers": _GET_RESPONSE_HEADERS,
        "size": _sent(_RESPONSE_HEAD, body=13),  # 118
    },
    "latencies": Per(
        {"request": 15, "proxy": 12, "kong": 3},
        {"request": 15, "proxy": 12, "kong": 0, "receive": 3},
    ),
    "client_ip": "10.0.0.7",
    "started_at": 1700000000500,
    "source": kong3_only("upstream"),
    "workspace_name": kong3_only("default"),
}
_KONG_URL = "http://kong:8000" + _GET_URI


def _headers_case(
    headers: list[tuple[bytes, bytes]],
    logged: dict[str, Any],
    size: Size,
    url: str = _KONG_URL,
    name: str = "",
    **more: Any,
) -> Case:
    """The GET request with only these headers, and 42 body bytes read."""
    expected = {"request.headers": logged, "request.size": size, "request.url": url}
    expected.update(more.pop("expected", {}))
    facts = {"body_read": 42, **more.pop("facts", {})}
    name = name or f"headers {headers[:3]}"
    return Case(name, expected, {"headers": headers}, facts=facts, **more)


def _query_case(query: bytes, querystring: Any) -> Case:
    """The GET request with this query string."""
    uri = "/orders/42?" + query.decode() if query else "/orders/42"
    return Case(
        f"query {query[:40]!r}",
        {
            "request.uri": uri,
            "upstream_uri": uri,
            "request.url": "http://api.example.com:8000" + uri,
            "request.querystring": querystring,
            "request.size": _sent(
                b"GET %s HTTP/1.1\r\n" % uri.encode(), _GET_HEADER_LINES, b"\r\n"
            ),
        },
        {"query_string": query},
    )


def _target_case(
    scope: dict[str, Any],
    line: bytes,
    uri: str,
    url: Any,
    querystring: Any,
    encoder: Encoder = "native",
    **expected: Any,
) -> Case:
    """The GET request with this target (``line``: its request line as sent)."""
    return Case(
        f"target {scope}",
        {
            "request.uri": uri,
            "upstream_uri": uri,
            "request.url": url,
            "request.querystring": querystring,
            "request.size": _sent(line, _GET_HEADER_LINES, b"\r\n"),
            **{key.replace("__", "."): value for key, value in expected.items()},
        },
        scope,
        encoder=encoder,
    )


def _host_case(value: bytes, host: str) -> Case:
    """The GET request with only this Host header."""
    return Case(
        f"host {value!r}",
        {
            "request.headers": {"host": value.decode()},
            "request.url": f"http://{host}:8000" + _GET_URI,
            "request.size": _sent(_GET_LINE, b"Host: " + value + b"\r\n", b"\r\n"),
        },
        {"headers": [(b"Host", value)]},
    )


def _tls_case(info: Any, tls: Any, encoder: Encoder = "native") -> Case:
    return Case(f"tls {info}", {"request.tls": tls}, {"extensions": info}, encoder=encoder)


class _Pairs:
    """Header pairs in an iterable that is not a list or tuple."""

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.pairs = pairs

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.pairs)


class _Route:
    name = "order"
    path = "/orders/{id}"
    methods = frozenset({"HEAD", "GET"})


_NO_RESPONSE: dict[str, Any] = {
    "status": 0,
    "response_headers": (),
    "body_sent": 0,
    "t_response": 0.0,
}
_KONG_ANSWERED = {"upstream_status": kong3_only(""), "source": kong3_only("kong")}
_SERVER_500 = {
    "status": 500,
    "headers": _SERVER_500_HEADERS,
    "size": _sent(
        b"HTTP/1.1 500 Internal Server Error\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: 21\r\n"
        b"connection: close\r\n"
        b"\r\n"
        b"Internal Server Error"
    ),  # 139
}
_POST_LINES = (
    b"POST /orders HTTP/1.1\r\n"
    b"host: api.example.com\r\n"
    b"content-type: application/json\r\n"
    b"content-length: 27\r\n"
    b"\r\n"
)
_POST_EXPECTED: dict[str, Any] = {
    "request.uri": "/orders",
    "request.url": "http://api.example.com:8000/orders",
    "request.querystring": {},
    "request.method": "POST",
    "request.headers": _POST_REQUEST["headers"],
    "request.size": _sent(_POST_LINES, body=27),  # 127
    "upstream_uri": "/orders",
}
_HOOKS = {
    "service": {"name": "orders"},
    "route": lambda r: {"name": "get-order", "paths": ["/orders/{id}"]},
    "consumer": lambda r: {"username": "ann"},
    "authenticated_entity": lambda r: {"id": "c1", "consumer_id": "u1"},
}


def _raises(request: CapturedRequest) -> Any:
    raise RuntimeError("hook")


_X120 = b"".join(b"x-h%d: v\r\n" % i for i in range(120))

CORPUS: list[Case] = [
    Case("get"),
    # -- kong3 request.id
    Case(
        "request id from the configured header",
        {"request.id": kong3_only(REQUEST_ID)},
        config={"request_id_header": "X-Request-ID"},
    ),
    Case(
        "request id header matched case-insensitively, the first one",
        {
            "request.id": kong3_only("abc"),
            "request.headers": {"x-request-id": ["abc", "second"]},
            "request.url": _KONG_URL,
            "request.size": _sent(
                _GET_LINE, b"X-Request-Id: abc\r\nx-request-id: second\r\n", b"\r\n"
            ),
        },
        {"headers": [(b"X-Request-Id", b"abc"), (b"x-request-id", b"second")]},
        config={"request_id_header": "x-request-id"},
    ),
    Case("request id header absent: a uuid4", config={"request_id_header": "x-corr"}),
    # -- the entities
    Case(
        "hooks and service",
        {
            "service": {"name": "orders"},
            "route": {"name": "get-order", "paths": ["/orders/{id}"]},
            "consumer": {"username": "ann"},
            "authenticated_entity": {"id": "c1", "consumer_id": "u1"},
        },
        config=_HOOKS,
    ),
    Case(
        "hooks returning None or raising leave their fields out",
        config={"route": lambda r: None, "consumer": _raises, "authenticated_entity": _raises},
    ),
    Case(
        "starlette route",
        {"route": {"name": "order", "paths": ["/orders/{id}"], "methods": ["GET", "HEAD"]}},
        {"route": _Route()},
    ),
    Case(
        "hook values orjson writes",
        {"service": {"weight": 0.25}, "consumer": {"ratio": 0.5}},
        config={"service": {"weight": 0.25}, "consumer": lambda r: {"ratio": 0.5}},
        encoder="finish",
    ),
    Case(
        "workspace",
        {"workspace": kong3_only("ws"), "workspace_name": kong3_only("team")},
        config={"workspace": "ws", "workspace_name": "team"},
    ),
    # -- custom fields and request edits
    Case(
        "custom fields",
        {
            "request.headers": {**_GET_REQUEST["headers"], "authorization": "custom"},
            "app": {"version": "1.2"},
            "client_ip": DROP,
        },
        config={
            "custom_fields": {
                "request.headers.authorization": lambda r: "custom",
                "app.version": lambda r: "1.2",
                "client_ip": lambda r: None,
            }
        },
        encoder="python",
    ),
    Case(
        "request edits",
        {
            "upstream_uri": "/internal",
            "request.headers": {k: v for k, v in _GET_REQUEST["headers"].items() if k != "accept"},
            "app": {"build": "7"},
            "response.status": 299,
        },
        {
            EDITS_KEY: [
                ("upstream_uri", "/internal", "set"),
                ("request.headers.accept", None, "set"),
                ("app.build", "7", "add"),
                ("response.status", 299, "replace"),
                ("nowhere.x", 1, "replace"),
                ("request.method", "PATCH", "add"),
            ]
        },
        encoder="python",
    ),
    # -- request headers: names, repeats, limits, redaction, sizes
    _headers_case(
        [(b"Authorization", b"Basic x"), (b"Proxy-Authorization", b"y")],
        {"authorization": "REDACTED", "proxy-authorization": "REDACTED"},
        _sent(_GET_LINE, b"Authorization: Basic x\r\nProxy-Authorization: y\r\n\r\n", body=42),
    ),
    _headers_case(
        [(b"authorization", b"a"), (b"x-api-key", b"k1"), (b"X-API-KEY", b"k2")],
        {"authorization": "a", "x-api-key": ["REDACTED", "REDACTED"]},
        _sent(_GET_LINE, b"authorization: a\r\nx-api-key: k1\r\nX-API-KEY: k2\r\n\r\n", body=42),
        config={"redact_headers": ("X-Api-Key",)},
    ),
    _headers_case(
        [(b"authorization", b"a")],
        {"authorization": "a"},
        _sent(_GET_LINE, b"authorization: a\r\n\r\n", body=42),
        config={"redact_headers": ()},
    ),
    _headers_case(
        [(b"accept", b"*/*")], {"accept": "*/*"}, _sent(_GET_LINE, b"accept: */*\r\n\r\n", body=42)
    ),
    _headers_case([], {}, _sent(_GET_LINE, b"\r\n", body=42)),
    _headers_case(
        [(b"X-Custom-Header", b"1"), (b"x-CUSTOM-header", b"2")],
        {"x-custom-header": ["1", "2"]},
        _sent(_GET_LINE, b"X-Custom-Header: 1\r\nx-CUSTOM-header: 2\r\n\r\n", body=42),
    ),
    _headers_case(
        [(b"X-Foo", b"1"), (b"Accept", b"*/*"), (b"x-foo", b"2"), (b"X-FOO", b"3")],
        {"x-foo": ["1", "2", "3"], "accept": "*/*"},
        _sent(_GET_LINE, b"X-Foo: 1\r\nAccept: */*\r\nx-foo: 2\r\nX-FOO: 3\r\n\r\n", body=42),
    ),
    _headers_case(
        [(b"x-utf8", b"caf\xc3\xa9"), (b"x-latin1", b"caf\xe9")],
        {"x-utf8": "caf\u00e9", "x-latin1": "caf\u00e9"},
        _sent(_GET_LINE, b"x-utf8: caf\xc3\xa9\r\nx-latin1: caf\xe9\r\n\r\n", body=42),
    ),
    _headers_case(
        [(b"x-h%d" % i, b"v") for i in range(120)],
        {f"x-h{i}": "v" for i in range(100)},  # the first 100
        _sent(_GET_LINE, _X120, b"\r\n", body=42),
    ),
    _headers_case(
        [(b"x.h%d" % i, b"v") for i in range(10)] + [(b"x-h%d" % i, b"v") for i in range(120)],
        {f"x-h{i}": "v" for i in range(100)},  # ignored names do not count
        _sent(_GET_LINE, b"".join(b"x.h%d: v\r\n" % i for i in range(10)), _X120, b"\r\n", body=42),
    ),
    _headers_case(
        [(b"x-empty", b"")], {"x-empty": ""}, _sent(_GET_LINE, b"x-empty: \r\n\r\n", body=42)
    ),
    _headers_case(
        [(b"X_Under", b"1"), (b"x.dot", b"2"), (b"x\xe9", b"3"), (b"x-s", b"  4  ")],
        {"x_under": "1", "x-s": "4"},
        _sent(_GET_LINE, b"X_Under: 1\r\nx.dot: 2\r\nx\xe9: 3\r\nx-s:   4  \r\n\r\n", body=42),
    ),
    _headers_case(
        [(b"host", b" H.example  "), (b"x-t", b"\tt\t")],
        {"host": "H.example", "x-t": "\tt\t"},
        _sent(_GET_LINE, b"host:  H.example  \r\nx-t: \tt\t\r\n\r\n", body=42),
        "http://h.example:8000" + _GET_URI,
    ),
    # content-length and transfer-encoding, any case
    _headers_case(
        [(b"host", b"h"), (b"content-length", b"5")],
        {"host": "h", "content-length": "5"},
        _sent(_GET_LINE, b"host: h\r\ncontent-length: 5\r\n\r\n", body=42),  # read more
        "http://h:8000" + _GET_URI,
    ),
    _headers_case(
        [(b"Host", b"h"), (b"Content-Length", b"100")],
        {"host": "h", "content-length": "100"},
        _sent(_GET_LINE, b"Host: h\r\nContent-Length: 100\r\n\r\n", body=100),  # read less
        "http://h:8000" + _GET_URI,
    ),
    _headers_case(
        [(b"content-length", b"100")],
        {"content-length": "100"},
        _sent(_GET_LINE, b"content-length: 100\r\n\r\n", body=100),
    ),
    _headers_case(
        [(b"CONTENT-LENGTH", b"0012")],
        {"content-length": "0012"},
        _sent(_GET_LINE, b"CONTENT-LENGTH: 0012\r\n\r\n", body=12),
        facts={"body_read": 0},
    ),
    _headers_case(
        [(b"content-length", b"x")],
        {"content-length": "x"},
        _sent(_GET_LINE, b"content-length: x\r\n\r\n", body=42),
    ),
    _headers_case(
        [(b"transfer-encoding", b"chunked")],
        {"transfer-encoding": "chunked"},
        _sent(
            _GET_LINE, b"transfer-encoding: chunked\r\n\r\n", b"2a\r\n", b"\r\n0\r\n\r\n", body=42
        ),
    ),
    _headers_case(
        [(b"Transfer-Encoding", b"Chunked")],
        {"transfer-encoding": "Chunked"},
        _sent(
            _GET_LINE, b"Transfer-Encoding: Chunked\r\n\r\n", b"ff\r\n", b"\r\n0\r\n\r\n", body=255
        ),
        facts={"body_read": 255},
    ),
    _headers_case(
        [(b"transfer-encoding", b"chunked")],
        {"transfer-encoding": "chunked"},
        _sent(_GET_LINE, b"transfer-encoding: chunked\r\n\r\n", b"0\r\n\r\n"),
        facts={"body_read": 0},
        name="an empty chunked body: the last chunk only",
    ),
    _headers_case(
        [(b"Transfer-Encoding", b"gzip, Chunked \t"), (b"content-length", b"100")],
        {"transfer-encoding": "gzip, Chunked \t", "content-length": "100"},
        _sent(
            _GET_LINE,
            b"Transfer-Encoding: gzip, Chunked \t\r\ncontent-length: 100\r\n\r\n",
            b"2a\r\n",
            b"\r\n0\r\n\r\n",
            body=42,
        ),
    ),
    _headers_case(
        [(b"transfer-encoding", b"chunked, gzip")],
        {"transfer-encoding": "chunked, gzip"},
        _sent(_GET_LINE, b"transfer-encoding: chunked, gzip\r\n\r\n", body=42),
    ),
    Case(
        "response headers: set-cookie redacted by default, each value",
        {
            "response.headers": {"authorization": "x", "set-cookie": ["REDACTED", "REDACTED"]},
            "response.size": _sent(
                b"HTTP/1.1 200 OK\r\nauthorization: x\r\nset-cookie: s\r\nset-cookie: t\r\n\r\n",
                body=13,
            ),
        },
        facts={
            "response_headers": [
                (b"authorization", b"x"),
                (b"set-cookie", b"s"),
                (b"set-cookie", b"t"),
            ]
        },
    ),
    Case(
        "response headers: raw with redact_response_headers=()",
        {
            "response.headers": {"authorization": "x", "set-cookie": "s"},
            "response.size": _sent(
                b"HTTP/1.1 200 OK\r\nauthorization: x\r\nset-cookie: s\r\n\r\n", body=13
            ),
        },
        facts={"response_headers": [(b"authorization", b"x"), (b"set-cookie", b"s")]},
        config={"redact_response_headers": ()},
    ),
    Case(
        "response headers: configured names redacted",
        {
            "response.headers": {"x-token": "REDACTED", "set-cookie": "s"},
            "response.size": _sent(
                b"HTTP/1.1 200 OK\r\nX-Token: x\r\nset-cookie: s\r\n\r\n", body=13
            ),
        },
        facts={"response_headers": [(b"X-Token", b"x"), (b"set-cookie", b"s")]},
        config={"redact_response_headers": ("X-Token",)},
    ),
    Case(
        "response headers: names lower-cased, repeats in a list",
        {
            "response.headers": {"x-a": ["1", "2"], "x-b": "caf\u00e9"},
            "response.size": _sent(
                b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nx-b: caf\xe9\r\n\r\n", body=13
            ),
        },
        facts={"response_headers": ((b"X-A", b"1"), (b"x-a", b"2"), (b"x-b", b"caf\xe9"))},
    ),
    # -- query strings
    _query_case(b"arg1&arg2", {"arg1": True, "arg2": True}),
    _query_case(b"a=1&a=2&a", {"a": ["1", "2", True]}),
    _query_case(b"", {}),
    _query_case(b"q=hello+world&e=", {"q": "hello world", "e": ""}),
    _query_case(b"a=%zz", Per({"a": "zz"}, {"a": "%zz"})),
    _query_case(b"a=1&b=2", {"a": "1", "b": "2"}),
    _query_case(b"a=", {"a": ""}),
    _query_case(b"a&a=x", {"a": [True, "x"]}),
    _query_case(b"=1&&b&=", {"b": True}),
    _query_case(b"a=%20x+y%2B", {"a": " x y+"}),
    _query_case(b"%61+b=c", {"a b": "c"}),
    _query_case(b"k%3Dv=1", {"k=v": "1"}),
    _query_case(b"a=1=2", {"a": "1=2"}),
    _query_case(b"a=1;b=2", {"a": "1;b=2"}),
    _query_case(b"q=caf%C3%A9", {"q": "caf\u00e9"}),
    _query_case(b"q=%E9", {"q": "\u00e9"}),
    _query_case(
        b"a=%zz&b=%2&c=%", Per({"a": "zz", "b": "", "c": ""}, {"a": "%zz", "b": "%2", "c": "%"})
    ),
    _query_case(b"a=%%41", Per({"a": "%41"}, {"a": "%A"})),
    _query_case(b"a=%2zx", Per({"a": "x"}, {"a": "%2zx"})),
    _query_case(b"a=x%2", Per({"a": "x"}, {"a": "x%2"})),
    _query_case(b"a=%41+%2b", {"a": "A +"}),
    _query_case(b"%C3%A9=1&%E9=2", {"\u00e9": ["1", "2"]}),
    _query_case(
        b"&".join(b"k%d=%d" % (i, i) for i in range(150)), {f"k{i}": str(i) for i in range(100)}
    ),
    _query_case(
        b"&" * 300 + b"=x&" * 50 + b"&".join(b"k%d" % i for i in range(120)),
        {f"k{i}": True for i in range(100)},  # empty keys do not count
    ),
    _query_case(b"&".join([b"a"] * 60 + [b"b"] * 60), {"a": [True] * 60, "b": [True] * 40}),
    _query_case(b"a=1&a=2&a=3", {"a": ["1", "2", "3"]}),
    # -- the request target, host and url
    _target_case(
        {"scheme": "https", "raw_path": b"/caf%C3%A9", "query_string": b"x=1"},
        b"GET /caf%C3%A9?x=1 HTTP/1.1\r\n",
        "/caf%C3%A9?x=1",
        "https://api.example.com:8000/caf%C3%A9?x=1",
        {"x": "1"},
    ),
    _target_case(
        {"scheme": "https", "raw_path": b"/p", "query_string": b"", "server": None},
        b"GET /p HTTP/1.1\r\n",
        "/p",
        Per("https://api.example.com:443/p", "https://api.example.com/p"),
        {},
    ),
    _target_case(
        {"raw_path": b"/p", "query_string": b"", "server": ()},
        b"GET /p HTTP/1.1\r\n",
        "/p",
        Per("http://api.example.com:80/p", "http://api.example.com/p"),
        {},
    ),
    _target_case(
        {"raw_path": b"/a%20b/%7E", "query_string": b"x=%2F&y"},
        b"GET /a%20b/%7E?x=%2F&y HTTP/1.1\r\n",
        "/a%20b/%7E?x=%2F&y",
        "http://api.example.com:8000/a%20b/%7E?x=%2F&y",
        {"x": "/", "y": True},
    ),
    _target_case(
        {"raw_path": None, "root_path": "/api", "path": "/caf\u00e9 x", "query_string": b"q=1"},
        b"GET /api/caf%C3%A9%20x?q=1 HTTP/1.1\r\n",
        "/api/caf%C3%A9%20x?q=1",
        "http://api.example.com:8000/api/caf%C3%A9%20x?q=1",
        {"q": "1"},
    ),
    _target_case(
        {"raw_path": None, "root_path": "/api", "path": "/api/items", "query_string": b""},
        b"GET /api/items HTTP/1.1\r\n",
        "/api/items",
        "http://api.example.com:8000/api/items",
        {},
    ),
    _target_case(
        {"raw_path": DROP, "path": "/~u/a b;c=d", "query_string": b""},
        b"GET /~u/a%20b;c=d HTTP/1.1\r\n",
        "/~u/a%20b;c=d",
        "http://api.example.com:8000/~u/a%20b;c=d",
        {},
    ),
    _target_case(
        {"raw_path": b"http://user:s3cr3t@Example.COM:8080/x", "query_string": b"y=1"},
        b"GET http://user:s3cr3t@Example.COM:8080/x?y=1 HTTP/1.1\r\n",
        "/x?y=1",
        "http://example.com:8000/x?y=1",
        {"y": "1"},
    ),
    _target_case(
        {"raw_path": b"http://example.com", "query_string": b"a=1"},
        b"GET http://example.com?a=1 HTTP/1.1\r\n",
        "?a=1",
        "http://example.com:8000?a=1",
        {"a": "1"},
    ),
    _target_case(
        {"raw_path": b"http://example.com", "query_string": b""},
        b"GET http://example.com HTTP/1.1\r\n",
        "/",
        "http://example.com:8000/",
        {},
    ),
    _target_case(
        {"raw_path": b"/apihttp://u:p@h/x", "root_path": "/api", "query_string": b""},
        b"GET /apihttp://u:p@h/x HTTP/1.1\r\n",
        "/api/x",
        "http://h:8000/api/x",
        {},
    ),
    _target_case(
        {"raw_path": b"/api/x@y", "root_path": "/api", "query_string": b""},
        b"GET /api/x@y HTTP/1.1\r\n",
        "/api/x@y",
        "http://api.example.com:8000/api/x@y",
        {},
    ),
    _target_case(
        {"raw_path": None, "path": "http://u:p@h/caf\u00e9", "query_string": b""},
        b"GET http://u:p@h/caf%C3%A9 HTTP/1.1\r\n",
        "/caf%C3%A9",
        "http://h:8000/caf%C3%A9",
        {},
    ),
    _target_case(
        {"raw_path": b"user:s3cr3t@example.com:443", "method": "CONNECT", "query_string": b""},
        b"CONNECT user:s3cr3t@example.com:443 HTTP/1.1\r\n",
        "example.com:443",
        "http://api.example.com:8000example.com:443",
        {},
        request__method="CONNECT",
    ),
    _target_case(
        {"raw_path": b"*", "method": "OPTIONS", "query_string": b""},
        b"OPTIONS * HTTP/1.1\r\n",
        "*",
        "http://api.example.com:8000*",
        {},
        request__method="OPTIONS",
    ),
    _target_case(
        {"raw_path": b"/a#frag", "query_string": b"x=1"},
        b"GET /a#frag?x=1 HTTP/1.1\r\n",
        "/a#frag?x=1",
        "http://api.example.com:8000/a#frag?x=1",
        {},  # after a "#" in the path, nginx sees no arguments
    ),
    _target_case(
        {"raw_path": b"/a", "query_string": b"b=1#frag&c=2"},
        b"GET /a?b=1#frag&c=2 HTTP/1.1\r\n",
        "/a?b=1#frag&c=2",
        "http://api.example.com:8000/a?b=1#frag&c=2",
        {"b": "1"},
    ),
    _target_case(
        {"raw_path": b"https://[::1]:8443/p", "query_string": b"", "headers": []},
        b"GET https://[::1]:8443/p HTTP/1.1\r\n",
        "/p",
        "http://[::1]:8000/p",
        {},
        request__headers={},
        request__size=_sent(b"GET https://[::1]:8443/p HTTP/1.1\r\n\r\n"),
    ),
    Case(
        "a unix socket: no port",
        {
            "request.headers": {},
            "request.url": Per("http://kong:80" + _GET_URI, "http://kong" + _GET_URI),
            "request.size": _sent(_GET_LINE, b"\r\n"),
        },
        {"headers": [], "server": ("/tmp/app.sock", None)},
    ),
    Case(
        "HTTP/1.0 without a Host header",
        {
            "request.headers": {},
            "request.url": _KONG_URL,
            "request.size": _sent(b"GET /orders/42?page=2&tag=a&tag=b&debug HTTP/1.0\r\n\r\n"),
        },
        {"headers": [], "http_version": "1.0"},
    ),
    Case(
        "HTTP/2",
        {
            "request.size": _sent(
                b"GET /orders/42?page=2&tag=a&tag=b&debug HTTP/2\r\n", _GET_HEADER_LINES, b"\r\n"
            )
        },
        {"http_version": "2"},
    ),
    Case("no method in the scope: GET", scope={"method": DROP}),
    Case(
        "HEAD: no response body counted",
        {
            "request.method": "HEAD",
            "request.size": _sent(b"HEAD" + _GET_LINE[3:], _GET_HEADER_LINES, b"\r\n"),
            "response.size": _sent(_RESPONSE_HEAD),
        },
        {"method": "HEAD"},
    ),
    _host_case(b"Example.COM:8443", "example.com"),
    _host_case(b"example.com.", "example.com"),
    _host_case(b"[::1]:8000", "[::1]"),
    _host_case(b"[::1]", "[::1]"),
    _host_case(b"caf\xc3\xa9.COM", "caf\u00e9.com"),
    # -- TLS
    _tls_case(
        {"tls": {"tls_version": 0x0304, "cipher_suite": 0x1301}},
        {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "client_verify": "NONE"},
    ),
    _tls_case(
        {
            "tls": {
                "tls_version": 0x0303,
                "cipher_suite": 0xC02F,
                "client_cert_chain": ["-----BEGIN"],
            }
        },
        {"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES128-GCM-SHA256", "client_verify": "SUCCESS"},
    ),
    _tls_case(
        {"tls": {"tls_version": 0x0301, "cipher_suite": 0xC0FF, "client_cert_chain": []}},
        {"version": "TLSv1", "cipher": "0xC0FF", "client_verify": "NONE"},
    ),
    _tls_case(
        {"tls": {"tls_version": 0x0300, "cipher_suite": "MY-CIPHER"}},
        {"version": "SSLv3", "cipher": "MY-CIPHER", "client_verify": "NONE"},
    ),
    _tls_case({"tls": {"tls_version": 0x0302}}, {"version": "TLSv1.1", "client_verify": "NONE"}),
    _tls_case({"tls": {"tls_version": None, "cipher_suite": 0x1301}}, DROP),
    _tls_case({"tls": {"tls_version": 0x0999, "cipher_suite": 0x1301}}, DROP),
    _tls_case({"tls": None}, DROP),
    _tls_case({}, DROP),
    # -- client, times
    Case("client without an address", {"client_ip": ""}, {"client": ()}),
    Case("no client", {"client_ip": ""}, {"client": None}),
    Case("client ip as given", {"client_ip": "::1"}, {"client": ["::1", 1]}),
    Case(
        "started_at truncated to the millisecond",
        {"started_at": 1700000000123},
        facts={"started_at": 1700000000.1239},
    ),
    Case(
        "latencies truncated to the millisecond",
        {
            "latencies": Per(
                {"request": 15, "proxy": 12, "kong": 3},
                {"request": 15, "proxy": 12, "kong": 0, "receive": 3},
            )
        },
        facts={"t_response": 1000.0123, "t_end": 1000.0159},
    ),
    Case(
        "latencies rounded to the microsecond first",
        {
            "latencies": Per(
                {"request": 58, "proxy": 29, "kong": 29},
                {"request": 58, "proxy": 29, "kong": 0, "receive": 29},
            )
        },
        facts={"t_start": 1000.0, "t_response": 1000.029, "t_end": 1000.058},
    ),
    Case(
        "latencies over a second",
        {
            "latencies": Per(
                {"request": 5999, "proxy": 1000, "kong": 4999},
                {"request": 5999, "proxy": 1000, "kong": 0, "receive": 4999},
            )
        },
        facts={"t_start": 2000.0, "t_response": 2001.0, "t_end": 2005.9995},
    ),
    Case(
        "no end time: the request ends with the response start",
        {
            "latencies": Per(
                {"request": 12, "proxy": 12, "kong": 0},
                {"request": 12, "proxy": 12, "kong": 0, "receive": 0},
            )
        },
        facts={"t_end": 0.0},
    ),
    # -- responses
    Case(
        "app raised before responding",
        {
            **_POST_EXPECTED,
            "response": _SERVER_500,
            "latencies": Per(
                {"request": 40, "proxy": -1, "kong": 0},
                {"request": 40, "proxy": -1, "kong": 0, "receive": 0},
            ),
            **_KONG_ANSWERED,
        },
        post=True,
        facts={**_NO_RESPONSE, "body_read": 27, "t_end": 1000.040, "raised": True},
    ),
    Case(
        "app returned without responding",
        {
            "response": _SERVER_500,
            "latencies": Per(
                {"request": 15, "proxy": -1, "kong": 0},
                {"request": 15, "proxy": -1, "kong": 0, "receive": 0},
            ),
            **_KONG_ANSWERED,
        },
        facts=_NO_RESPONSE,
    ),
    Case(
        "app returned without responding, no end time",
        {
            "response": _SERVER_500,
            "latencies": Per(
                {"request": 0, "proxy": -1, "kong": 0},
                {"request": 0, "proxy": -1, "kong": 0, "receive": 0},
            ),
            **_KONG_ANSWERED,
        },
        facts={**_NO_RESPONSE, "t_end": 0.0},
    ),
    Case(
        "app raised after responding",
        {
            "response.status": 201,
            "response.size": _sent(b"HTTP/1.1 201 Created" + _RESPONSE_HEAD[15:], body=13),
            "upstream_status": kong3_only("201"),
        },
        facts={"raised": True, "status": 201},
    ),
    Case(
        "client gone before the response",
        {
            "response": {"status": 499, "headers": {}, "size": Size(0)},
            "latencies": Per(
                {"request": 15, "proxy": -1, "kong": 0},
                {"request": 15, "proxy": -1, "kong": 0, "receive": 0},
            ),
            **_KONG_ANSWERED,
        },
        facts={**_NO_RESPONSE, "client_gone": True, "raised": True},
    ),
    Case("client gone after the response started", facts={"client_gone": True}),
    Case(
        "404",
        {
            "response.status": 404,
            "response.size": _sent(b"HTTP/1.1 404 Not Found" + _RESPONSE_HEAD[15:], body=13),
            "upstream_status": kong3_only("404"),
        },
        facts={"status": 404},
    ),
    Case(
        "599: no reason phrase",
        {
            "response": {
                "status": 599,
                "headers": {},
                "size": _sent(b"HTTP/1.1 599 \r\n\r\n", body=13),
            },
            "upstream_status": kong3_only("599"),
        },
        facts={"status": 599, "response_headers": []},
    ),
    Case(
        "pathsend: the file's size",
        {"response.size": _sent(_RESPONSE_HEAD, b"hello")},
        facts={"file_path": InFiles("f.txt")},
    ),
    Case(
        "pathsend of a missing file: no body",
        {"response.size": _sent(_RESPONSE_HEAD)},
        facts={"file_path": InFiles("gone")},
    ),
    Case("post", _POST_EXPECTED, post=True, facts={"body_read": 27}),
    # -- facts of other types than the ASGI servers give, as the Python path reads them
    Case(
        "bytearray header name and value",
        {
            "request.headers": {"host": "h", "x-a": "1"},
            "request.url": "http://h:8000" + _GET_URI,
            "request.size": _sent(_GET_LINE, b"Host: h\r\nx-a: 1\r\n\r\n"),
        },
        {"headers": [(bytearray(b"Host"), b"h"), (b"x-a", bytearray(b"1"))]},
        encoder="python",
    ),
    Case(
        "bytearray response header",
        {
            "response.headers": {"x-a": "1"},
            "response.size": _sent(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\n", body=13),
        },
        facts={"response_headers": [(b"x-a", bytearray(b"1"))]},
        encoder="python",
    ),
    Case(
        "response headers in an iterable of another type",
        facts={"response_headers": _Pairs(_RESPONSE_HEADERS)},
        encoder="python",
    ),
    Case(
        "an IntEnum status is its number",
        {
            "response.status": 404,
            "response.size": _sent(b"HTTP/1.1 404 Not Found" + _RESPONSE_HEAD[15:], body=13),
            "upstream_status": kong3_only("404"),
        },
        facts={"status": http.HTTPStatus.NOT_FOUND},
        encoder="python",
    ),
    Case(
        "an int started_at",
        {"started_at": 1700000000000},
        facts={"started_at": 1700000000},
        encoder="python",
    ),
    Case(
        "a server port given as a string",
        scope={"server": ("127.0.0.1", "8000")},
        encoder="python",
    ),
    Case("a client address None", {"client_ip": "None"}, {"client": (None, 1)}, encoder="python"),
    _tls_case(
        {"tls": {"tls_version": 0x0303, "cipher_suite": -1}},
        {"version": "TLSv1.2", "cipher": "0x-001", "client_verify": "NONE"},
        encoder="python",
    ),
    _tls_case({"tls": {"tls_version": True, "cipher_suite": 0x1301}}, DROP, encoder="python"),
    _target_case(
        {"raw_path": b"/api/x", "root_path": b"/api", "query_string": b""},
        b"GET /api/x HTTP/1.1\r\n",
        "/api/x",
        "http://api.example.com:8000/api/x",
        {},
        encoder="python",
    ),
    Case(
        "a body beyond 64 bits (kong3: orjson refuses the number)",
        {"request.size": _sent(_GET_LINE, _GET_HEADER_LINES, b"\r\n", body=2**70)},
        facts={"body_read": 2**70},
        layouts=("kong2",),
        encoder="python",
    ),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    ("scope", "facts", "error"),
    [
        ({"headers": [("host", b"h")]}, {}, TypeError),
        ({"headers": [(b"x-a", b"1", b"extra")]}, {}, ValueError),
        ({"method": None}, {}, TypeError),
        ({"raw_path": "/str"}, {}, TypeError),
        ({"raw_path": None, "path": "/\udcff"}, {}, UnicodeEncodeError),
        ({"raw_path": None, "root_path": b"/api"}, {}, TypeError),
    ],
)
def test_facts_that_cannot_make_an_entry_raise(
    layout: LogFormat, scope: dict[str, Any], facts: dict[str, Any], error: type[Exception]
) -> None:
    request = _request({**_get_scope(), **scope}, _config(layout), **facts)
    with pytest.raises(error):
        build_entry(request)
    with pytest.raises(error):
        encode_entry(request)


def test_a_number_beyond_64_bits_cannot_be_encoded() -> None:
    request = _request(config=_config("kong3"), body_read=2**70)
    assert build_entry(request)["request"]["size"] == 195 + 2**70
    with pytest.raises(orjson.JSONEncodeError):
        encode_entry(request)


def test_finish_adds_the_fields_left_to_orjson_last_and_in_order() -> None:
    head = b'{"request":{},"client_ip":"x"}'
    fields = [("service", {"w": 0.5}), ("client_ip", "y"), ("route", {"r": 2**63 - 1})]
    assert (
        serializer._finish(head, fields)
        == b'{"request":{},"client_ip":"y","service":{"w":0.5},"route":{"r":9223372036854775807}}'
    )


def corpus_params() -> list[Any]:
    """``(case, layout)`` for every case of the corpus, as pytest params."""
    return [
        pytest.param(case, layout, id=f"{layout}: {case.name}")
        for case in CORPUS
        for layout in case.layouts
    ]


@pytest.mark.parametrize(("case", "layout"), corpus_params())
def test_corpus(case: Case, layout: LogFormat, tmp_path: Path) -> None:
    files = corpus_files(tmp_path)
    assert_entry(build_entry(case.request(layout, files)), case.entry(layout))
    assert_entry(orjson.loads(encode_entry(case.request(layout, files))), case.entry(layout))


def test_the_corpus_names_are_unique() -> None:
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names))


# -- query arguments and the keyed-hash mode (issue 9) ------------------------------------

_KEY = b"k" * 32


def _query_scope(query: bytes) -> dict[str, Any]:
    scope = _get_scope()
    scope["query_string"] = query
    scope["raw_path"] = b"/orders/42"
    return scope


@pytest.mark.parametrize("layout", LAYOUTS)
def test_redacted_query_args_everywhere_the_query_appears(layout: LogFormat) -> None:
    query = b"apikey=s3cr%65t&page=2&token=a&token=b&apikey&x%20y=1&access_token="
    config = _config(layout, redact_query_args=("apikey", "token", "x y", "access_token"))
    entry = build_entry(_request(_query_scope(query), config))
    redacted = "apikey=REDACTED&page=2&token=REDACTED&token=REDACTED&apikey&x%20y=REDACTED"
    redacted += "&access_token=REDACTED"
    assert entry["request"]["uri"] == entry["upstream_uri"] == f"/orders/42?{redacted}"
    assert entry["request"]["url"].endswith(f"/orders/42?{redacted}")
    assert entry["request"]["querystring"] == {
        "apikey": ["REDACTED", True],
        "page": "2",
        "token": ["REDACTED", "REDACTED"],
        "x y": "REDACTED",
        "access_token": "REDACTED",
    }
    assert b"s3cr" not in encode_entry(_request(_query_scope(query), config))
    size = build_entry(_request(_query_scope(query), _config(layout)))["request"]["size"]
    assert entry["request"]["size"] == size  # the size is what was sent


def test_redacted_query_args_in_a_gateways_upstream_uri() -> None:
    request = _request(_query_scope(b"token=t1"), _config(redact_query_args=("token",)))
    call = upstream(request.scope, "/v1/orders?token=t2&page=1")
    with call.attempt("10.0.0.5", 8080) as attempt:
        attempt.received(200)
    assert build_entry(request)["upstream_uri"] == "/v1/orders?token=REDACTED&page=1"


def test_the_keyed_hash_mode_correlates_without_revealing() -> None:
    scope = _query_scope(b"apikey=abc")
    scope["headers"] = [(b"authorization", b"Bearer t1"), (b"cookie", b"a=1"), (b"cookie", b"b=2")]
    config = _config(redact_query_args=("apikey",), redaction_key=_KEY)
    request = _request(scope, config, response_headers=[(b"set-cookie", b"sid=9")])
    entry = build_entry(request)

    def mark(value: bytes) -> str:
        return keyed_hash(_KEY, value)

    assert entry["request"]["headers"]["authorization"] == mark(b"Bearer t1")
    assert entry["request"]["headers"]["cookie"] == [mark(b"a=1"), mark(b"b=2")]
    assert entry["response"]["headers"]["set-cookie"] == mark(b"sid=9")
    assert entry["request"]["querystring"]["apikey"] == mark(b"abc")
    assert entry["request"]["uri"] == f"/orders/42?apikey={mark(b'abc')}"
    assert mark(b"abc").startswith("hmac-sha256:") and len(mark(b"abc")) == 12 + 64
    other = build_entry(_request(scope, _config(redaction_key=b"o" * 32)))
    assert other["request"]["headers"]["authorization"] != mark(b"Bearer t1")
    assert orjson.loads(encode_entry(request)) == entry  # the Python path, natively or not
    assert "redaction_key=<hidden>" in repr(config) and "kkkk" not in repr(config)


def test_a_short_or_mistyped_redaction_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        _config(redaction_key="short")
    with pytest.raises(TypeError, match="bytes or a string"):
        _config(redaction_key=16)
    with pytest.raises(TypeError, match="list of argument names"):
        _config(redact_query_args="token")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("digits", [20, 25, 5000])
def test_an_absurd_content_length_is_not_counted_and_the_entry_goes_out(
    layout: LogFormat, digits: int
) -> None:
    """nginx parses no Content-Length beyond off_t: such a body is never sent in full."""
    scope = _get_scope()
    scope["headers"] = [*scope["headers"], (b"content-length", b"9" * digits)]
    request = _request(scope, _config(layout), body_read=5)
    honest = _get_scope()
    honest["headers"] = [*honest["headers"], (b"content-length", b"0" * digits)]
    expected = build_entry(_request(honest, _config(layout), body_read=5))["request"]["size"]
    assert orjson.loads(encode_entry(request))["request"]["size"] == expected


def test_a_stray_byte_leaves_the_rest_of_the_target_readable() -> None:
    scope = _get_scope()
    scope["raw_path"] = b"/caf\xc3\xa9"
    scope["query_string"] = b"q=\xc3\xa9t\xc3\xa9\xff&r=%ff"
    entry = orjson.loads(encode_entry(_request(scope)))
    assert entry["request"]["uri"] == "/caf\u00e9?q=\u00e9t\u00e9\u00ff&r=%ff"
    assert entry["request"]["querystring"] == {"q": "\u00e9t\u00e9\u00ff", "r": "\u00ff"}
    assert entry == build_entry(_request(scope)) | {"latencies": entry["latencies"]}


# -- trace ids (tracing.py): placed as Kong's tracing plugins' set_serialize_value ------

_TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_whole_entry_kong3_with_a_trace_id() -> None:
    scope = _get_scope()
    scope["headers"].append((b"traceparent", _TRACEPARENT))
    config = _config("kong3", request_id_header="X-Request-ID", consumer=lambda r: {"id": "c"})
    entry = build_entry(_request(scope, config))
    headers = {**_GET_REQUEST["headers"], "traceparent": _TRACEPARENT.decode()}
    assert _json(entry) == {
        "request": {**_GET_REQUEST, "headers": headers, "size": 265, "id": REQUEST_ID},
        "upstream_uri": _GET_URI,
        "upstream_status": "200",
        "response": {"status": 200, "headers": _GET_RESPONSE_HEADERS, "size": 118},
        "latencies": {"request": 15, "proxy": 12, "kong": 0, "receive": 3},
        "client_ip": "10.0.0.7",
        "started_at": 1700000000500,
        "source": "upstream",
        "workspace_name": "default",
        "consumer": {"id": "c"},
        "trace_id": {"w3c": "4bf92f3577b34da6a3ce929d0e0e4736"},
    }
    assert list(entry)[-2:] == ["consumer", "trace_id"]


def test_trace_id_comes_before_custom_fields_which_may_replace_it() -> None:
    scope = _get_scope()
    scope["headers"].append((b"traceparent", _TRACEPARENT))
    config = _config("kong3", custom_fields={"app": lambda r: "1"})
    assert list(build_entry(_request(scope, config)))[-2:] == ["trace_id", "app"]
    config = _config("kong3", custom_fields={"trace_id.w3c": lambda r: "mine"})
    assert build_entry(_request(scope, config))["trace_id"] == {"w3c": "mine"}


@pytest.mark.parametrize(
    ("layout", "include", "logged"),
    [("kong2", None, False), ("kong3", None, True), ("kong2", True, True), ("kong3", False, False)],
)
def test_trace_id_by_layout_and_include_trace_id(
    layout: LogFormat, include: bool | None, logged: bool
) -> None:
    scope = _get_scope()
    scope["headers"].append((b"traceparent", _TRACEPARENT))
    entry = build_entry(_request(scope, _config(layout, include_trace_id=include)))
    assert ("trace_id" in entry) is logged
    assert "trace_id" not in build_entry(_request(config=_config(layout, include_trace_id=include)))


def test_the_spans_trace_id_wins_over_the_header() -> None:
    scope = _get_scope()
    scope["headers"].append((b"traceparent", _TRACEPARENT))
    entry = build_entry(_request(scope, _config("kong3"), trace_id=0xABC))
    assert entry["trace_id"] == {"w3c": "abc".rjust(32, "0")}
