"""The Kong log entry, in both layouts, from captured request facts."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
import pytest

from kafka_log_middleware import _log
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import KafkaLogConfig, LogFormat
from kafka_log_middleware.custom_fields import set_serialize_value
from kafka_log_middleware.serializer import build_entry, message_key
from kafka_log_middleware.types import Message

LAYOUTS: list[LogFormat] = ["kong2", "kong3"]
REQUEST_ID = "0123456789abcdef0123456789abcdef"


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
    request = CapturedRequest(scope or _get_scope(), config or _config(), _receive, _send)
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
_GET_REQUEST = {
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
    "set-cookie": ["a=1", "b=2"],
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


_POST_REQUEST = {
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
    assert headers == {"authorization": "a", "x-api-key": "REDACTED"}


def test_redaction_none_absent_header_is_not_added() -> None:
    scope = _get_scope()
    scope["headers"] = [(b"accept", b"*/*")]
    assert build_entry(_request(scope))["request"]["headers"] == {"accept": "*/*"}


def test_response_headers_are_never_redacted() -> None:
    request = _request(response_headers=[(b"authorization", b"x"), (b"set-cookie", b"s")])
    assert build_entry(request)["response"]["headers"] == {"authorization": "x", "set-cookie": "s"}


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
