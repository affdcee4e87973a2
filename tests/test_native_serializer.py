"""The compiled serializer gives byte for byte the entry of the Python path, or defers to it.

Every case runs through ``orjson.dumps(build_entry(request))`` (the specification) and
through ``encode_entry`` with the native module; the bytes (or the exception type) must
be identical. The corpus is the cases of test_serializer.py / test_nginx_vars.py plus a
few thousand seeded random requests. Skipped when the module is not built
(``scripts/setup`` builds it when cargo is available).
"""

from __future__ import annotations

import enum
import http
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.routing import Mount, Route

from kafka_log_middleware import serializer
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import KafkaLogConfig, LogFormat, starlette_route
from kafka_log_middleware.custom_fields import set_serialize_value
from kafka_log_middleware.serializer import build_entry, encode_entry

from .test_serializer import _config, _get_scope, _post_scope, _raised, _request

native = pytest.importorskip("kafka_log_middleware_native")
if serializer._native is None:  # pragma: no cover
    pytest.skip("kafka_log_middleware_native is from another version", allow_module_level=True)

LAYOUTS: list[LogFormat] = ["kong2", "kong3"]
_RANDOM_ID = re.compile(rb',"id":"[0-9a-f]{32}"},"upstream_uri":')
_SAME_ID = b',"id":"<uuid4>"},"upstream_uri":'


def _outcome(encode: Callable[[], bytes]) -> tuple[str, Any]:
    try:
        data = encode()
    except Exception as exc:
        return "raised", type(exc)
    # kong3 without a request id header: a fresh uuid4 on each side
    return "bytes", _RANDOM_ID.sub(_SAME_ID, data)


def _native_result(request: CapturedRequest) -> Any:
    plan = serializer._plan(request.config)
    if plan is None:
        return None
    r = request
    return native.encode(
        plan, r, r.scope, r.status, r.response_headers, r.body_sent, r.body_read,
        r.file_path, r.client_gone, r.started_at, r.t_start, r.t_response, r.t_end,
    )  # fmt: skip


def assert_same(request: CapturedRequest) -> bool:
    """Both paths agree; True when the native encoder built the entry itself."""
    expected = _outcome(lambda: orjson.dumps(build_entry(request)))
    got = _outcome(lambda: encode_entry(request))
    assert got == expected
    try:
        return _native_result(request) is not None
    except Exception:
        return False


# -- the cases of test_serializer.py and test_nginx_vars.py ----------------------------


class _Route:
    name = "order"
    path = "/orders/{id}"
    methods = frozenset({"HEAD", "GET"})


def _known_cases(tmp: Path) -> Iterator[tuple[str, CapturedRequest]]:
    hooks: dict[str, Any] = {
        "service": {"name": "orders"},
        "route": lambda r: {"name": "get-order", "paths": ["/orders/{id}"]},
        "consumer": lambda r: {"username": "ann"},
        "authenticated_entity": lambda r: {"id": "c1", "consumer_id": "u1"},
    }
    file = tmp / "f.txt"
    file.write_bytes(b"hello")
    for layout in LAYOUTS:
        cfg = _config(layout)
        yield "get", _request(config=cfg)
        yield (
            "get with request id",
            _request(config=_config(layout, request_id_header="X-Request-ID")),
        )
        yield "raised", _raised(cfg)
        yield "hooks", _request(config=_config(layout, **hooks))
        scope = _get_scope()
        scope["route"] = _Route()
        yield "starlette route", _request(scope, cfg)
        yield "workspace", _request(config=_config(layout, workspace="ws", workspace_name="team"))
        for headers, options in [
            ([(b"Authorization", b"Basic x"), (b"Proxy-Authorization", b"y")], {}),
            (
                [(b"authorization", b"a"), (b"x-api-key", b"k1"), (b"x-api-key", b"k2")],
                {"redact_headers": ("X-Api-Key",)},
            ),
            ([(b"accept", b"*/*")], {}),
            ([], {}),
            ([(b"X-Custom-Header", b"1"), (b"x-CUSTOM-header", b"2")], {}),
            ([(b"x-utf8", "caf\u00e9".encode()), (b"x-latin1", b"caf\xe9")], {}),
            ([(b"x-h%d" % i, b"v") for i in range(120)], {}),
            ([(b"X-Foo", b"1"), (b"Accept", b"*/*"), (b"x-foo", b"2"), (b"X-FOO", b"3")], {}),
            ([(b"x-empty", b"")], {}),
            ([(b"host", b"h"), (b"content-length", b"5")], {}),
            ([(b"content-length", b"100")], {}),
            ([(b"content-length", b"x")], {}),
            ([(b"transfer-encoding", b"chunked")], {}),
            ([(b"Transfer-Encoding", b"gzip, Chunked \t"), (b"content-length", b"100")], {}),
            ([(b"transfer-encoding", b"chunked, gzip")], {}),
            ([(b"X_Under", b"1"), (b"x.dot", b"2"), (b"x\xe9", b"3"), (b"x-s", b"  4  ")], {}),
            (
                [(b"x.h%d" % i, b"v") for i in range(10)]
                + [(b"x-h%d" % i, b"v") for i in range(110)],
                {},
            ),
            ([(b"host", b" H.example  "), (b"x-t", b"\tt\t")], {}),
        ]:
            scope = _get_scope()
            scope["headers"] = headers
            yield (
                f"headers {headers[:2]}",
                _request(scope, _config(layout, **options), body_read=42),
            )
        yield (
            "response headers",
            _request(
                config=cfg, response_headers=[(b"authorization", b"x"), (b"set-cookie", b"s")]
            ),
        )
        for query in [
            b"arg1&arg2",
            b"a=1&a=2&a",
            b"",
            b"q=hello+world&e=",
            b"a=%zz",
            b"a=1&b=2",
            b"a=",
            b"a&a=x",
            b"=1&&b&=",
            b"a=%20x+y%2B",
            b"%61+b=c",
            b"k%3Dv=1",
            b"a=1=2",
            b"a=1;b=2",
            b"q=caf%C3%A9",
            b"q=%E9",
            b"a=%zz&b=%2&c=%",
            b"a=%%41",
            b"a=%2zx",
            b"a=x%2",
            b"a=%41+%2b",
            b"&".join(b"k%d=%d" % (i, i) for i in range(150)),
            b"&" * 300 + b"=x&" * 50 + b"&".join(b"k%d" % i for i in range(120)),
            b"a=1&a=2&a=3",
        ]:
            scope = _get_scope()
            scope["query_string"] = query
            yield f"query {query[:30]!r}", _request(scope, cfg)
        scope_changes: list[dict[str, Any]] = [
            {"scheme": "https", "raw_path": b"/caf%C3%A9", "query_string": b"x=1"},
            {"scheme": "https", "raw_path": b"/p", "query_string": b"", "server": None},
            {"raw_path": b"/a%20b/%7E", "query_string": b"x=%2F&y"},
            {"raw_path": None, "root_path": "/api", "path": "/caf\u00e9 x", "query_string": b"q=1"},
            {"raw_path": None, "root_path": "/api", "path": "/api/items"},
            {"headers": [], "server": ("/tmp/app.sock", None)},
            {"headers": [], "http_version": "1.0"},
            {"method": "HEAD"},
            {"extensions": {"tls": {"tls_version": 0x0304, "cipher_suite": 0x1301}}},
            {
                "extensions": {
                    "tls": {
                        "tls_version": 0x0303,
                        "cipher_suite": 0xC02F,
                        "client_cert_chain": ["-----BEGIN"],
                    }
                }
            },
            {"extensions": {"tls": {"tls_version": 0x0303, "cipher_suite": 0xC0FF}}},
            {"extensions": {"tls": {"tls_version": None, "cipher_suite": 0x1301}}},
            {"extensions": {"tls": {"tls_version": 0x0304}}},
            {"extensions": {}},
            {"raw_path": b"http://user:s3cr3t@Example.COM:8080/x", "query_string": b"y=1"},
            {"raw_path": b"http://example.com", "query_string": b"a=1"},
            {"raw_path": b"http://example.com", "query_string": b""},
            {"raw_path": b"https://[::1]:8443/p", "headers": []},
            {"raw_path": b"/apihttp://u:p@h/x", "root_path": "/api"},
            {"raw_path": b"/api/x@y", "root_path": "/api"},
            {"raw_path": b"user:s3cr3t@example.com:443", "method": "CONNECT"},
            {"raw_path": b"*", "method": "OPTIONS"},
            {"raw_path": b"/a#frag", "query_string": b"x=1"},
            {"raw_path": b"/a", "query_string": b"b=1#frag&c=2"},
            {"raw_path": None, "path": "http://u:p@h/caf\u00e9"},
        ]
        for overrides in scope_changes:
            scope = _get_scope()
            scope.update(overrides)
            yield f"scope {overrides}", _request(scope, cfg)
        for value in [b"Example.COM:8443", b"example.com.", b"[::1]:8000", b"[::1]"]:
            scope = _get_scope()
            scope["headers"] = [(b"Host", value)]
            yield f"host {value!r}", _request(scope, cfg)
        yield "started_at", _request(config=cfg, started_at=1700000000.1239)
        yield "latencies", _request(config=cfg, t_response=1000.0123, t_end=1000.0159)
        yield (
            "returned without response",
            _request(config=cfg, status=0, response_headers=(), body_sent=0, t_response=0.0),
        )
        yield "raised after responding", _request(config=cfg, raised=True, status=201)
        yield (
            "client gone",
            _request(
                config=cfg,
                status=0,
                response_headers=(),
                body_sent=0,
                t_response=0.0,
                client_gone=True,
                raised=True,
            ),
        )
        yield "client gone after response", _request(config=cfg, client_gone=True)
        yield "404", _request(config=cfg, status=404)
        yield "599", _request(config=cfg, status=599, response_headers=[])
        yield "pathsend", _request(config=cfg, file_path=str(file))
        yield "pathsend missing", _request(config=cfg, file_path=str(tmp / "gone"))
        yield "post", _request(_post_scope(), cfg, body_read=27)


def test_the_cases_of_the_python_tests(tmp_path: Path) -> None:
    cases = list(_known_cases(tmp_path))
    not_native = [name for name, request in cases if not assert_same(request)]
    assert len(cases) > 140
    assert not_native == []  # only plain facts there: all built natively


# -- generated cases -----------------------------------------------------------------


class _Status(enum.IntEnum):
    OK = 200


class _Headers:
    """An iterable of header pairs that is not a list or tuple."""

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter([(b"x", b"1")])


def _text_bytes(rng: random.Random, size: int = 12) -> bytes:
    kind = rng.random()
    if kind < 0.55:
        alphabet = b"abcXYZ019 -_/.:;=,*"
        return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, size)))
    if kind < 0.7:
        return "".join(rng.choice('aé€😀"\\\u2028') for _ in range(rng.randint(0, 6))).encode()
    if kind < 0.85:
        return bytes(rng.choice(b"a\xe9\xff\x80\xc3\x22\x5c") for _ in range(rng.randint(0, 6)))
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, size)))


def _query(rng: random.Random) -> bytes:
    pieces = [
        b"a",
        b"A",
        b"b",
        b"",
        b"%61",
        b"%zz",
        b"%4",
        b"%",
        b"%%41",
        b"+",
        b"x+y",
        b"%2B",
        b"%C3%A9",
        b"%E9",
        b"%c3",
        b"caf\xc3\xa9",
        b"\xe9",
        b"k%3Dv",
        b"%00",
        b"%22",
        b"%5C",
        b"=",
        b"%0a",
        b"#",
    ]
    count = rng.choice([0, 1, 2, 3, 5, 8, 20, 105, 130])
    parts = []
    for _ in range(count):
        key = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 3)))
        if rng.random() < 0.3:
            parts.append(key)
        else:
            value = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 3)))
            parts.append(key + b"=" + value)
    return b"&".join(parts)


_NAMES = [
    b"host",
    b"Host",
    b"accept",
    b"Accept",
    b"user-agent",
    b"authorization",
    b"Authorization",
    b"proxy-authorization",
    b"x-api-key",
    b"cookie",
    b"x-request-id",
    b"X-Request-ID",
    b"x-corr",
    b"content-length",
    b"Content-Length",
    b"x-\xe9",
    b"X-\xc9",
    b'x-"q"',
    b"x-\x01",
    b"set-cookie",
    b"X_Under",
    b"x.dot",
    b"transfer-encoding",
    b"Transfer-Encoding",
]


def _headers(rng: random.Random, limit: int) -> list[tuple[bytes, bytes]]:
    count = rng.choice([0, 1, 3, 5, 7, 8, limit]) if limit else 0
    headers = []
    for _ in range(count):
        name = rng.choice(_NAMES)
        if name.lower() == b"host":
            value = rng.choice(
                [
                    b"api.example.com:8000",
                    b"API.Example.com",
                    b"h.",
                    b"[::1]:80",
                    b"[::1",
                    b"",
                    b"caf\xc3\xa9.com",
                    b"\xe9x",
                ]
            )
        elif name.lower() == b"content-length":
            value = rng.choice([b"0", b"27", b"0012", b"x", b"", b"-1", b"99999999999999"])
        elif name.lower() == b"transfer-encoding":
            value = rng.choice([b"chunked", b"Chunked ", b"gzip, chunked", b"chunked, gzip", b""])
        else:
            value = _text_bytes(rng)
        headers.append((name, value))
    return headers


def _hook(rng: random.Random, name: str) -> Any:
    choice = rng.randrange(9)
    if choice == 0:
        return None
    if choice == 1:
        return lambda r: None
    if choice == 2:
        return lambda r: {"name": name, "n": 7, "ok": True, "tags": ["a", ("b", None)]}

    def raises(request: CapturedRequest) -> Any:
        raise RuntimeError("hook")

    options: list[Any] = [
        raises,
        lambda r: {"ratio": 0.5, "name": name},  # a float: orjson finishes the entry
        lambda r: {"big": 2**70},  # orjson raises, in both paths
        lambda r: {"emoji": "\U0001f600", "quote": '"\\\n', "u": "\u2028"},
        lambda r: {"nested": [[[[{"a": [1, -2, 2**63, -(2**63)]}]]]]},
    ]
    return options[choice - 3] if choice - 3 < len(options) else lambda r: "plain"


def _route_object(rng: random.Random) -> Any:
    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        return None

    class Odd:
        name = rng.choice(["", "n", None, 3, "caf\u00e9"])
        path = rng.choice(["/p/{id}", None, "", 5])
        methods = rng.choice(
            [
                {"GET", "POST"},
                frozenset({"B", "A"}),
                ["Z", "A"],
                ("x",),
                set(),
                None,
                "GET",
                ["a", 1],
            ]
        )

    class Broken:
        @property
        def name(self) -> str:
            raise ValueError("route")

    return rng.choice(
        [
            None,
            Route("/orders/{id}", endpoint, name="get_order", methods=["GET", "POST"]),
            Route("/x", endpoint),
            Mount("/static", routes=[]),
            Odd(),
            Broken(),
            object(),
        ]
    )


def _tls(rng: random.Random) -> Any:
    info: dict[str, Any] = {
        "tls_version": rng.choice([0x0304, 0x0303, 0x0300, 0x0999, None, True]),
        "cipher_suite": rng.choice(
            [0x1301, 0xC02F, 0xC0FF, 0x0001, 0x12345, "MY-CIPHER", None, -1]
        ),
    }
    if rng.random() < 0.5:
        info["client_cert_chain"] = rng.choice([[], ["cert"], (), None])
    return rng.choice([None, {}, {"tls": None}, {"tls": {}}, {"tls": info}, {"tls": info}])


def _config_for(rng: random.Random) -> KafkaLogConfig:
    options: dict[str, Any] = {
        "redact_headers": rng.choice(
            [
                ("authorization", "proxy-authorization"),
                (),
                ("X-Api-Key", "cookie"),
                ("X-Corr", "X-Request-ID"),
            ]
        ),
        "request_id_header": rng.choice([None, "X-Request-ID", "x-corr", "X-Corr", "user-agent"]),
        "workspace": rng.choice([None, "ws-uuid", 'w\u00e9"']),
        "workspace_name": rng.choice(["default", "team \u00e9", 'q"\\']),
        "service": rng.choice(
            [
                None,
                {"name": "orders"},
                {"name": "x", "port": 8080, "tags": ["a"], "on": False},
                {"ratio": 1.5},
            ]
        ),
        "route": rng.choice([starlette_route, starlette_route, None, _hook(rng, "route")]),
        "consumer": _hook(rng, "consumer"),
        "authenticated_entity": _hook(rng, "credential"),
    }
    if rng.random() < 0.05:
        options["custom_fields"] = {"app.version": lambda r: "1.2"}
    return _config(rng.choice(LAYOUTS), **options)


def _random_request(rng: random.Random, tmp: Path) -> CapturedRequest:
    method = rng.choice(["GET", "GET", "POST", "HEAD", "PUT", "DELETE", "M-SEARCH", "GÉT"])
    scope: dict[str, Any] = {
        "type": "http",
        "http_version": rng.choice(["1.1", "1.1", "1.0", "2"]),
        "method": method,
        "scheme": rng.choice(["http", "https", "http"]),
        "headers": _headers(rng, rng.choice([8, 8, 8, 130])),
        "query_string": _query(rng),
        "client": rng.choice([("10.0.0.7", 51234), ["::1", 1], None, (), ("\u00e9",)]),
        "server": rng.choice([("127.0.0.1", 8000), ["h", 443], None, ("/s.sock", None), ()]),
    }
    if rng.random() < 0.8:
        scope["raw_path"] = rng.choice(
            [
                b"/orders/42",
                b"/caf%C3%A9",
                b"/caf\xc3\xa9",
                b"/caf\xe9",
                b"/",
                b"",
                b'/"q"\\',
                b"/a%20b",
                b"http://user:pw@Example.COM:8080/x",
                b"http://h",
                b"https://[::1]/p",
                b"x://@/",
                b"u:pw@h:443",
                b"*",
                b"/a#f",
                b"/api/x",
                b"/apihttp://u@h/x",
            ]
        )
        scope["path"] = "/ignored"
        if rng.random() < 0.3:
            scope["root_path"] = rng.choice(["", "/api", "/\u00e9", b"/api"])
    else:
        scope["path"] = rng.choice(
            ["/a b", "/caf\u00e9", "/api/items", "/q?x", "", "/~:@!", "http://u:p@h/x", "a#b"]
        )
        scope["root_path"] = rng.choice(["", "/api", "/\u00e9"])
    if rng.random() < 0.3:
        scope["extensions"] = _tls(rng)
    if rng.random() < 0.4:
        scope["route"] = _route_object(rng)
    if rng.random() < 0.04:
        set_serialize_value(scope, "upstream_uri", "/internal")
    if rng.random() < 0.03:
        del scope[
            rng.choice(
                ["method", "headers", "query_string", "scheme", "http_version", "client", "server"]
            )
        ]

    status = rng.choice([200, 200, 201, 204, 301, 404, 500, 503, 599, 999, 0, 0, 42])
    start = rng.uniform(1000.0, 200000.0)
    answered = rng.random() < 0.85
    respond = start + rng.choice([0.0, 0.0005, 0.012, 0.029, rng.uniform(0, 5)])
    request = CapturedRequest(scope, _config_for(rng), _receive, _send)
    request.started_at = rng.choice([1700000000.5, 1700000000.1239, rng.uniform(1.6e9, 1.8e9)])
    request.t_start = start
    request.t_response = respond if answered and status else 0.0
    request.t_end = rng.choice([0.0, respond + rng.choice([0.0, 0.003, rng.uniform(0, 2)])])
    request.status = status
    request.response_headers = rng.choice(
        [
            [(b"content-type", b"application/json"), (b"content-length", b"13")],
            ((b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-Trace", b"t\xe9")),
            [],
            _headers(rng, 8),
        ]
    )
    request.body_sent = rng.choice([0, 13, 100000])
    request.body_read = rng.choice([0, 27, 5000])
    request.client_gone = rng.random() < 0.3
    request.raised = rng.random() < 0.2
    if rng.random() < 0.1:
        request.file_path = rng.choice([str(tmp / "f.txt"), str(tmp / "missing")])
    return request


def _odd_request(rng: random.Random, tmp: Path) -> CapturedRequest:
    """A request with a fact of an unusual type: the Python path decides what happens."""
    request = _random_request(rng, tmp)
    scope = request.scope
    change = rng.randrange(14)
    if change == 0:
        scope["headers"] = [(name.decode("latin-1"), value) for name, value in scope["headers"]]
    elif change == 1:
        scope["headers"] = [(bytearray(b"x-a"), b"1"), (b"x-b", bytearray(b"2"))]
    elif change == 2:
        scope["headers"] = [(b"x-a", b"1", b"extra")]
    elif change == 3:
        request.status = _Status.OK
    elif change == 4:
        request.started_at = 1700000000  # int
    elif change == 5:
        request.t_end = float("nan")
    elif change == 6:
        request.response_headers = _Headers()
    elif change == 7:
        scope["method"] = None
    elif change == 8:
        scope["query_string"] = None
    elif change == 9:
        scope["raw_path"] = "/str"
    elif change == 10:
        scope["server"] = ("h", "8000")
    elif change == 11:
        scope["client"] = (None, 1)
    elif change == 12:
        scope["path"] = "/\udcff"
        scope.pop("raw_path", None)
    else:
        request.body_read = 2**70
    return request


async def _receive() -> Any:
    return {"type": "http.disconnect"}


async def _send(message: Any) -> None:
    return None


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "f.txt").write_bytes(b"x" * 1234)
    return tmp_path


def test_generated_requests_give_identical_bytes(files: Path) -> None:
    rng = random.Random(20240611)
    total = 3000
    built = sum(assert_same(_random_request(rng, files)) for _ in range(total))
    assert built >= total * 0.6  # the rest: custom fields, edits, hook values orjson finishes…


def test_generated_requests_with_unusual_types_agree(files: Path) -> None:
    rng = random.Random(7)
    for _ in range(600):
        assert_same(_odd_request(rng, files))


# -- fallbacks and hooks -------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_custom_fields_use_the_python_path(layout: LogFormat) -> None:
    config = _config(layout, custom_fields={"app.version": lambda r: "1.2"})
    request = _request(config=config)
    assert assert_same(request)  # the native encoder could: encode_entry does not ask it
    assert orjson.loads(encode_entry(request))["app"] == {"version": "1.2"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_request_edits_use_the_python_path(layout: LogFormat) -> None:
    scope = _get_scope()
    set_serialize_value(scope, "upstream_uri", "/internal")
    request = _request(scope, _config(layout))
    assert not assert_same(request)
    assert orjson.loads(encode_entry(request))["upstream_uri"] == "/internal"


def test_native_serializer_false_never_uses_the_native_encoder() -> None:
    request = _request(config=_config(native_serializer=False))
    assert serializer._plan(request.config) is None
    assert encode_entry(request) == orjson.dumps(build_entry(request))


def test_a_request_id_header_that_is_no_header_name_is_refused_by_the_config() -> None:
    # It could never match a header, and every entry would fail to encode.
    with pytest.raises(ValueError, match="request_id_header"):
        _config("kong3", request_id_header="x-\u0416")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_hook_runs_once_per_entry(layout: LogFormat) -> None:
    calls: list[str] = []

    def hook(name: str, value: Any) -> Any:
        def call(request: CapturedRequest) -> Any:
            calls.append(name)
            return value

        return call

    config = _config(
        layout,
        route=hook("route", {"ratio": 0.5}),  # left to orjson: the rest follows it
        consumer=hook("consumer", {"username": "ann"}),
        authenticated_entity=hook("credential", None),
    )
    request = _request(config=config)
    assert isinstance(_native_result(request), tuple)
    calls.clear()
    data = encode_entry(request)
    assert calls == ["route", "consumer", "credential"]
    assert _outcome(lambda: data) == _outcome(lambda: orjson.dumps(build_entry(request)))
    assert list(orjson.loads(data))[-2:] == ["route", "consumer"]


def test_hook_values_orjson_must_write_keep_their_place() -> None:
    config = _config(
        "kong3",
        service={"weight": 0.25},
        route=lambda r: {"name": "r"},
        consumer=lambda r: {"id": 1},
    )
    request = _request(config=config)
    head, fields = _native_result(request)
    assert [name for name, _ in fields] == ["service", "route", "consumer"]
    assert head.endswith(b'"workspace_name":"default"}')
    assert assert_same(request)


def test_a_hook_that_raises_is_logged_and_left_out(caplog: pytest.LogCaptureFixture) -> None:
    from kafka_log_middleware import _log

    _log.reset()

    def broken(request: CapturedRequest) -> Any:
        raise RuntimeError("secret")

    request = _request(config=_config(consumer=broken))
    with caplog.at_level("WARNING", logger="kafka_log_middleware"):
        data = encode_entry(request)
    assert "consumer" not in orjson.loads(data)
    assert "RuntimeError" in caplog.text
    assert "secret" not in caplog.text


def test_a_hook_that_raises_a_base_exception_propagates() -> None:
    def interrupted(request: CapturedRequest) -> Any:
        raise KeyboardInterrupt

    request = _request(config=_config(route=interrupted))
    with pytest.raises(KeyboardInterrupt):
        encode_entry(request)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_starlette_route_is_computed_natively(layout: LogFormat) -> None:
    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        return None

    scope = _get_scope()
    scope["route"] = Route("/orders/{id}", endpoint, name="get_order", methods=["GET"])
    request = _request(scope, _config(layout))
    result = _native_result(request)
    assert type(result) is bytes
    assert result.endswith(
        b'"route":{"name":"get_order","paths":["/orders/{id}"],"methods":["GET","HEAD"]}}'
    )
    assert assert_same(request)


def test_kong3_request_id_is_a_uuid4_hex() -> None:
    request = _request(config=_config("kong3"))
    ids = {orjson.loads(encode_entry(request))["request"]["id"] for _ in range(50)}
    assert len(ids) == 50
    for value in ids:
        assert re.fullmatch("[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", value)


@pytest.mark.parametrize(
    "seconds",
    [0.029, 0.0125, 0.0129994, 0.0129996, 0.0005, 0.0004999, 1e-9, 5.9995, 123.4569995],
)
def test_milliseconds_are_truncated_like_the_python_path(seconds: float) -> None:
    request = _request(t_start=1000.0, t_response=1000.0 + seconds, t_end=1000.0 + 2 * seconds)
    assert assert_same(request)


def test_reason_phrases_come_from_http_status() -> None:
    for status in http.HTTPStatus:
        assert assert_same(_request(status=int(status)))
