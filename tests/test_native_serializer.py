"""The compiled serializer gives byte for byte the entry of the Python path, and each
request takes the path it must.

``encode_entry`` runs with the native module, and the test notes what the native
encoder did with each request: the whole entry (``native``), the entry without the hook
values it leaves to orjson (``finish``: its head), or nothing (``python``:
``build_entry`` made it). That path must be the one the request calls for, so a
request that silently falls back fails. The bytes must be those of the Python path
(``orjson.dumps(build_entry(request))``, or the same exception type), and, for what
the native encoder did not write itself, those of an expectation the Python path does
not produce on its own:

- the corpus of test_serializer.py: one request per rule, its whole entry written out;
- generated requests (seeded): native-ready ones, some given a quirk that only the
  Python path handles (custom fields, request edits, unusual types). A quirked request
  must equal its native-ready twin's entry with the quirk's effect applied to the JSON
  (or raise what the quirk makes the Python path raise);
- a ``finish`` entry's head must be the Python entry without the fields orjson adds.

Skipped when the module is not built (``scripts/setup`` builds it when cargo is
available).
"""

from __future__ import annotations

import http
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import orjson
import pytest
from starlette.routing import Mount, Route

from kafka_log_middleware import nginx_vars, serializer
from kafka_log_middleware.asgi import ASGIRequest, NativeASGIRequest
from kafka_log_middleware.bodies import BodyCopy
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import KafkaLogConfig, LogFormat
from kafka_log_middleware.custom_fields import set_serialize_value
from kafka_log_middleware.gateway import UPSTREAM_KEY, Upstream
from kafka_log_middleware.routes import matched_route
from kafka_log_middleware.serializer import build_entry, encode_entry
from kafka_log_middleware.tracing import trace_id

from .native_module import native_module
from .test_serializer import (
    Case,
    Encoder,
    _config,
    _get_scope,
    _Pairs,
    _request,
    assert_entry,
    corpus_files,
    corpus_params,
)

native = native_module()

LAYOUTS: list[LogFormat] = ["kong2", "kong3"]
_RANDOM_ID = re.compile(rb',"id":"[0-9a-f]{32}"},"upstream_uri":')
_SAME_ID = b',"id":"<uuid4>"},"upstream_uri":'

Outcome = tuple[str, Any]
"""``("bytes", the entry with a fresh request id made comparable)`` or ``("raised", type)``."""
Entry = dict[str, Any]


def _outcome(encode: Callable[[], bytes]) -> Outcome:
    try:
        data = encode()
    except Exception as exc:
        return "raised", type(exc)
    return _bytes(data)


def _bytes(data: bytes) -> Outcome:
    # kong3 without a request id header: a fresh uuid4 on each side
    return "bytes", _RANDOM_ID.sub(_SAME_ID, data)


class Recorder:
    """Stands in for ``serializer._native``, keeping what each ``encode`` returned."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.results: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def encode(self, *args: Any) -> Any:
        """The native encoder's result, recorded."""
        result = self.module.encode(*args)
        self.results.append(result)
        return result

    def run(self, request: CapturedRequest) -> Run:
        """``encode_entry(request)``, the path it took and the native encoder's result."""
        self.results.clear()
        data: bytes | None = None
        try:
            data = encode_entry(request)
        except Exception as exc:
            outcome: Outcome = ("raised", type(exc))
        else:
            outcome = _bytes(data)
        assert len(self.results) <= 1
        result = self.results[0] if self.results else None
        path: Encoder = (
            "python" if result is None else "native" if type(result) is bytes else "finish"
        )
        return Run(outcome, path, result, data)


class Run(NamedTuple):
    """One ``encode_entry`` call, as the recorder saw it."""

    outcome: Outcome
    path: Encoder
    result: Any
    """What the native encoder returned (None: not called, or it declined)."""
    data: bytes | None
    """The bytes (None: it raised)."""


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """``encode_entry`` through the native module, noting which path each entry took."""
    spy = Recorder(serializer._native)
    monkeypatch.setattr(serializer, "_native", spy)
    return spy


def _python(request: CapturedRequest) -> Outcome:
    return _outcome(lambda: orjson.dumps(build_entry(request)))


def _assert_head(result: Any, request: CapturedRequest) -> None:
    """A ``finish`` result's head is the Python entry without the fields left to orjson,
    which are its last ones, in order."""
    head, fields = result
    entry = build_entry(request)
    names = [name for name, _ in fields]
    assert names == list(entry)[len(entry) - len(names) :]
    rest = {key: value for key, value in entry.items() if key not in names}
    assert _bytes(head) == _outcome(lambda: orjson.dumps(rest))


def _native_result(request: CapturedRequest) -> Any:
    plan = serializer._plan(request.config)
    if plan is None:
        return None
    r = request
    return native.encode(
        plan, r, r.scope, r.status, r.response_headers, r.body_sent, r.body_read,
        r.file_path, r.client_gone, r.started_at, r.t_start, r.t_response, r.t_end,
        trace_id(r),
        None if r.request_body is None else serializer._request_body(r),
        None if r.response_body is None else serializer._response_body(r),
    )  # fmt: skip


# -- the corpus of test_serializer.py: every rule, with its whole entry -----------------


@pytest.mark.parametrize(("case", "layout"), corpus_params())
def test_the_corpus(case: Case, layout: LogFormat, tmp_path: Path, recorder: Recorder) -> None:
    files = corpus_files(tmp_path)
    request = case.request(layout, files)
    run = recorder.run(request)
    assert run.path == case.encoder
    assert run.data is not None
    assert_entry(orjson.loads(run.data), case.entry(layout))
    assert run.outcome == _python(request)
    if run.path == "finish":
        _assert_head(run.result, request)


def test_the_corpus_is_mostly_native() -> None:
    # the rest: custom fields, request edits, facts of other types, hook values for orjson
    paths = Counter(param.values[0].encoder for param in corpus_params())
    assert paths["native"] >= 200
    assert paths["native"] >= 0.85 * sum(paths.values())


# -- generated requests ----------------------------------------------------------------


@dataclass
class Generated:
    """A generated request and what its encoding must be."""

    request: CapturedRequest
    finish: bool
    """A hook value (or the service) has a type the native encoder leaves to orjson."""
    plain: CapturedRequest | None = None
    """Without its quirks (None: it has none): the same facts, ready for the native encoder."""
    quirks: list[str] = field(default_factory=list)
    fixes: list[Callable[[Entry], None]] = field(default_factory=list)
    """What the quirks do to the plain request's entry, in order."""
    raises: type[Exception] | None = None
    """The exception the quirks make the Python path raise."""

    @property
    def path(self) -> Encoder:
        """The path ``encode_entry`` must take."""
        if self.quirks:
            return "python"
        return "finish" if self.finish else "native"


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
    b"X-Api-Key",
    b"cookie",
    b"x-request-id",
    b"X-Request-ID",
    b"x-corr",
    b"X-CORR",
    b"content-length",
    b"Content-Length",
    b"CONTENT-LENGTH",
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
_SIZE_HEADERS = (b"content-length", b"transfer-encoding")


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
                    b" h ",
                    b"caf\xc3\xa9.com",
                    b"\xe9x",
                ]
            )
        elif name.lower() == b"content-length":
            value = rng.choice([b"0", b"27", b"0012", b"x", b"", b"-1", b"99999999999999"])
        elif name.lower() == b"transfer-encoding":
            value = rng.choice(
                [
                    b"chunked",
                    b"Chunked ",
                    b"gzip, chunked",
                    b"chunked, gzip",
                    b"gzip,\tCHUNKED",
                    b"",
                ]
            )
        else:
            value = _text_bytes(rng)
        headers.append((name, value))
    return headers


def _hook(rng: random.Random, name: str) -> tuple[Any, bool]:
    """A random hook (or None), and whether its value is one orjson must write."""

    def raises(request: CapturedRequest) -> Any:
        raise RuntimeError("hook")

    hooks: list[tuple[float, Any, bool]] = [
        (0.2, None, False),
        (0.1, lambda r: None, False),
        (0.2, lambda r: {"name": name, "n": 7, "ok": True, "tags": ["a", ("b", None)]}, False),
        (0.1, raises, False),
        (0.1, lambda r: {"emoji": "\U0001f600", "quote": '"\\\n', "u": "\u2028"}, False),
        (0.1, lambda r: {"nested": [[[[{"a": [1, -2, 2**63, -(2**63)]}]]]]}, False),
        (0.15, lambda r: "plain", False),
        (0.03, lambda r: {"ratio": 0.5, "name": name}, True),  # a float
        (0.02, lambda r: {"big": 2**70}, True),  # orjson raises, in both paths
    ]
    weights = [weight for weight, _, _ in hooks]
    _, hook, finish = rng.choices(hooks, weights)[0]
    return hook, finish


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
        "tls_version": rng.choice([0x0304, 0x0303, 0x0300, 0x0999, None]),
        "cipher_suite": rng.choice([0x1301, 0xC02F, 0xC0FF, 0x0001, 0x12345, "MY-CIPHER", None]),
    }
    if rng.random() < 0.5:
        info["client_cert_chain"] = rng.choice([[], ["cert"], (), None])
    return rng.choice([None, {}, {"tls": None}, {"tls": {}}, {"tls": info}, {"tls": info}])


def _config_for(rng: random.Random) -> tuple[KafkaLogConfig, bool]:
    """A random config, and whether one of its values is one orjson must write."""
    route, route_finish = rng.choice(
        [(matched_route, False), (matched_route, False), (None, False), _hook(rng, "route")]
    )
    consumer, consumer_finish = _hook(rng, "consumer")
    credential, credential_finish = _hook(rng, "credential")
    service = rng.choices(
        [
            None,
            {"name": "orders"},
            {"name": "x", "port": 8080, "tags": ["a"], "on": False},
            {"ratio": 1.5},
        ],
        [0.35, 0.3, 0.3, 0.05],
    )[0]
    config = _config(
        rng.choice(LAYOUTS),
        redact_headers=rng.choice(
            [
                ("authorization", "proxy-authorization"),
                (),
                ("X-Api-Key", "cookie"),
                ("X-Corr", "X-Request-ID"),
            ]
        ),
        request_id_header=rng.choice([None, "X-Request-ID", "x-corr", "X-Corr", "user-agent"]),
        workspace=rng.choice([None, "ws-uuid", 'w\u00e9"']),
        workspace_name=rng.choice(["default", "team \u00e9", 'q"\\']),
        service=service,
        route=route,
        consumer=consumer,
        authenticated_entity=credential,
        include_trace_id=rng.choice([None, None, True, False]),
    )
    finish = route_finish or consumer_finish or credential_finish or service == {"ratio": 1.5}
    return config, finish


def _plain_request(rng: random.Random, tmp: Path) -> Generated:
    """A random request with facts of the types ASGI servers give: native-ready."""
    method = rng.choice(["GET", "GET", "POST", "HEAD", "PUT", "DELETE", "M-SEARCH", "GÉT"])
    scope: dict[str, Any] = {
        "type": "http",
        "http_version": rng.choice(["1.1", "1.1", "1.0", "2"]),
        "method": method,
        "scheme": rng.choice(["http", "https", "http"]),
        "headers": _headers(rng, rng.choice([8, 8, 8, 130])),
        "query_string": _query(rng) if rng.random() < 0.97 else None,
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
            scope["root_path"] = rng.choice(["", "/api", "/\u00e9"])
    else:
        scope["path"] = rng.choice(
            ["/a b", "/caf\u00e9", "/api/items", "/q?x", "", "/~:@!", "http://u:p@h/x", "a#b"]
        )
        scope["root_path"] = rng.choice(["", "/api", "/\u00e9"])
    if rng.random() < 0.3:
        scope["extensions"] = _tls(rng)
    if rng.random() < 0.4:
        scope["route"] = _route_object(rng)
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
    config, finish = _config_for(rng)
    request = ASGIRequest(scope, config, _receive, _send)
    request.started_at = rng.choice([1700000000.5, 1700000000.1239, rng.uniform(1.6e9, 1.8e9)])
    request.t_start = start
    request.t_response = respond if answered and status else 0.0
    request.t_end = rng.choice(
        [0.0, respond + rng.choice([0.0, 0.003, rng.uniform(0, 2)]), float("nan")]
        if rng.random() < 0.02
        else [0.0, respond + rng.choice([0.0, 0.003, rng.uniform(0, 2)])]
    )
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
    if rng.random() < 0.3:
        request.trace_id = rng.choice([1, rng.getrandbits(128)])  # the span's
    if rng.random() < 0.4 and isinstance(scope.get("headers"), list):
        scope["headers"].append((b"traceparent", rng.choice(_TRACEPARENTS)))
    return Generated(request, finish)


_TRACEPARENTS = [
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-future",
    b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    b"00-4bf92f3577b34da6a3ce929d0e0e4736",
]


def _clone(request: CapturedRequest) -> CapturedRequest:
    """The same facts, in a scope of its own (its values shared)."""
    clone = ASGIRequest(dict(request.scope), request.config, _receive, _send)
    for name in _CLONED:
        setattr(clone, name, getattr(request, name))
    return clone


_CLONED = (
    "started_at",
    "t_start",
    "t_response",
    "t_end",
    "status",
    "response_headers",
    "body_sent",
    "body_read",
    "file_path",
    "raised",
    "client_gone",
    "trace_id",
)


def _set_tls(entry: Entry, tls: dict[str, str]) -> None:
    # request.tls comes right after request.size
    request = entry["request"]
    request.pop("tls", None)
    items = list(request.items())
    at = [key for key, _ in items].index("size") + 1
    entry["request"] = dict([*items[:at], ("tls", tls), *items[at:]])


# Each quirk changes the request `r` (the plain one's clone) in a way only the Python
# path handles, and returns what that does to the entry: a fix of the JSON, None when
# the entry is the same, or the exception the Python path raises; NotImplemented when
# it does not apply to this request.
Quirk = Callable[[random.Random, CapturedRequest], Any]
_SAME = None


def _custom_fields(rng: random.Random, r: CapturedRequest) -> Any:
    fields: dict[str, Any] = {}
    fixes: list[Callable[[Entry], None]] = []
    options: list[tuple[str, Any, Callable[[Entry], None]]] = [
        ("app.version", "1.2", lambda e: e.setdefault("app", {}).update(version="1.2")),
        (
            "request.headers.x-extra",
            "1",
            lambda e: e["request"]["headers"].update({"x-extra": "1"}),
        ),
        ("client_ip", None, lambda e: e.pop("client_ip")),
        ("latencies.kong", 7, lambda e: e["latencies"].update(kong=7)),
    ]
    for key, value, fix in rng.sample(options, rng.randint(1, len(options))):
        fields[key] = lambda request, value=value: value
        fixes.append(fix)
    r.config = r.config.replace(custom_fields=fields)
    return fixes


def _edits(rng: random.Random, r: CapturedRequest) -> Any:
    options: list[tuple[str, Any, Any, Callable[[Entry], None]]] = [
        ("upstream_uri", "/internal", "set", lambda e: e.update(upstream_uri="/internal")),
        ("latencies.proxy", None, "set", lambda e: e["latencies"].pop("proxy")),
        ("response.status", 299, "replace", lambda e: e["response"].update(status=299)),
        ("app.build", "7", "add", lambda e: e.setdefault("app", {}).setdefault("build", "7")),
        ("nowhere.x", 1, "replace", lambda e: None),
        ("request.method", "PATCH", "add", lambda e: None),  # present: kept
    ]
    fixes = []
    for key, value, mode, fix in rng.sample(options, rng.randint(1, len(options))):
        set_serialize_value(r.scope, key, value, mode)
        fixes.append(fix)
    return fixes


def _bytes_root_path(rng: random.Random, r: CapturedRequest) -> Any:
    root = r.scope.get("root_path")
    if r.scope.get("raw_path") is None or not root:
        return NotImplemented
    r.scope["root_path"] = root.encode()  # quote() takes bytes too
    return _SAME


def _bool_tls_version(rng: random.Random, r: CapturedRequest) -> Any:
    r.scope["extensions"] = {"tls": {"tls_version": True, "cipher_suite": 0x1301}}
    return lambda e: e["request"].pop("tls", None)  # True == 1: no TLS version


def _negative_cipher(rng: random.Random, r: CapturedRequest) -> Any:
    r.scope["extensions"] = {"tls": {"tls_version": 0x0303, "cipher_suite": -1}}
    tls = {"version": "TLSv1.2", "cipher": "0x-001", "client_verify": "NONE"}
    return lambda e: _set_tls(e, tls)


def _bytearray_header(rng: random.Random, r: CapturedRequest) -> Any:
    headers = r.scope.get("headers")
    if not headers:
        return NotImplemented
    headers = list(headers)
    i = rng.randrange(len(headers))
    name, value = headers[i]
    headers[i] = (bytearray(name), value) if rng.random() < 0.5 else (name, bytearray(value))
    r.scope["headers"] = headers
    return _SAME


def _bytearray_response_header(rng: random.Random, r: CapturedRequest) -> Any:
    headers = list(r.response_headers)
    if not r.status or not headers:
        return NotImplemented  # the native encoder reads no response headers without a status
    name, value = headers[0]
    r.response_headers = [(name, bytearray(value)), *headers[1:]]  # type: ignore[list-item]
    return _SAME


def _enum_status(rng: random.Random, r: CapturedRequest) -> Any:
    try:
        r.status = http.HTTPStatus(r.status)
    except ValueError:
        return NotImplemented
    return _SAME


def _int_started_at(rng: random.Random, r: CapturedRequest) -> Any:
    seconds = int(r.started_at)
    r.started_at = seconds
    return lambda e: e.update(started_at=seconds * 1000)


def _iterable_response_headers(rng: random.Random, r: CapturedRequest) -> Any:
    if not r.status:
        return NotImplemented
    r.response_headers = _Pairs(list(r.response_headers))
    return _SAME


def _str_server_port(rng: random.Random, r: CapturedRequest) -> Any:
    server = r.scope.get("server")
    if not server or server[1] is None:
        return NotImplemented
    r.scope["server"] = (server[0], str(server[1]))
    return _SAME


def _no_client_address(rng: random.Random, r: CapturedRequest) -> Any:
    r.scope["client"] = (None, 1)
    return lambda e: e.update(client_ip="None")


def _huge_body(rng: random.Random, r: CapturedRequest) -> Any:
    headers = r.scope.get("headers", ())
    if any(name.lower() in _SIZE_HEADERS for name, _ in headers):
        return NotImplemented
    read = r.body_read
    r.body_read = 2**70
    if r.config.log_format == "kong3":
        return orjson.JSONEncodeError  # a number beyond 64 bits

    def fix(e: Entry) -> None:
        e["request"]["size"] = str(int(e["request"]["size"]) - read + 2**70)

    return fix


def _str_header_names(rng: random.Random, r: CapturedRequest) -> Any:
    headers = r.scope.get("headers")
    if not headers:
        return NotImplemented
    r.scope["headers"] = [(bytes(name).decode("latin-1"), value) for name, value in headers]
    return TypeError


def _three_item_header(rng: random.Random, r: CapturedRequest) -> Any:
    r.scope["headers"] = [(b"x-a", b"1", b"extra")]
    return ValueError


def _no_method(rng: random.Random, r: CapturedRequest) -> Any:
    r.scope["method"] = None
    return TypeError


def _str_raw_path(rng: random.Random, r: CapturedRequest) -> Any:
    r.scope["raw_path"] = "/str"
    return TypeError


def _surrogate_path(rng: random.Random, r: CapturedRequest) -> Any:
    r.scope.pop("raw_path", None)
    r.scope["root_path"] = ""
    r.scope["path"] = "/\udcff"
    return UnicodeEncodeError


_QUIRKS: list[Quirk] = [
    _custom_fields,
    _edits,
    _bytes_root_path,
    _bool_tls_version,
    _negative_cipher,
    _bytearray_header,
    _bytearray_response_header,
    _enum_status,
    _int_started_at,
    _iterable_response_headers,
    _str_server_port,
    _no_client_address,
    _huge_body,
]
_LAST: list[Quirk | None] = [None, _custom_fields, _edits]
_RAISING_QUIRKS: list[Quirk] = [
    _str_header_names,
    _three_item_header,
    _no_method,
    _str_raw_path,
    _surrogate_path,
]


def _generated(rng: random.Random, tmp: Path) -> Generated:
    """A plain request, and one time in five one or two quirks on a clone of it."""
    case = _plain_request(rng, tmp)
    if rng.random() >= 0.2:
        return case
    plain = case.request
    request = _clone(plain)
    # in build_entry's order: the facts, then custom fields, then edits
    quirks = sorted(
        rng.sample(_QUIRKS, rng.choice([1, 1, 2])),
        key=lambda q: _LAST.index(q if q in _LAST else None),
    )
    if rng.random() < 0.25:
        quirks.append(rng.choice(_RAISING_QUIRKS))  # last: it replaces what it changes
    for quirk in quirks:
        effect = quirk(rng, request)
        if effect is NotImplemented:
            continue
        case.quirks.append(quirk.__name__)
        if isinstance(effect, type):
            case.raises = effect  # the raising quirk comes last and raises first
        elif isinstance(effect, list):
            case.fixes.extend(effect)
        elif effect is not None:
            case.fixes.append(effect)
    if case.quirks:
        case.request, case.plain = request, plain
    return case


def _quirked(plain: Outcome, case: Generated) -> Outcome:
    """The plain request's outcome with the quirks' effects: what the quirked one must give."""
    if case.raises is not None:
        return "raised", case.raises
    if plain[0] == "raised":
        return plain
    entry = orjson.loads(plain[1])
    for fix in case.fixes:
        fix(entry)
    return "bytes", orjson.dumps(entry)


async def _receive() -> Any:
    return {"type": "http.disconnect"}


async def _send(message: Any) -> None:
    return None


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "f.txt").write_bytes(b"x" * 1234)
    return tmp_path


def test_generated_requests(files: Path, recorder: Recorder) -> None:
    rng = random.Random(20240611)
    total = 4000
    paths: Counter[str] = Counter()
    quirks: Counter[str] = Counter()
    traced = 0
    for _ in range(total):
        case = _generated(rng, files)
        run = recorder.run(case.request)
        assert run.path == case.path, case.quirks
        assert run.outcome == _python(case.request)
        if case.plain is not None:
            plain = recorder.run(case.plain)
            assert plain.path == ("finish" if case.finish else "native")
            assert run.outcome == _quirked(plain.outcome, case), case.quirks
        if run.path == "finish":
            _assert_head(run.result, case.request)
        paths[run.path] += 1
        quirks.update(case.quirks)
        if run.path == "native" and b',"trace_id":{"w3c":' in (run.data or b""):
            traced += 1
    # Only the quirked requests fall back: most are encoded natively, whole.
    assert paths["native"] >= 0.6 * total
    assert paths["finish"] >= 0.05 * total
    assert paths["python"] >= 0.1 * total
    assert set(quirks) == {quirk.__name__ for quirk in _QUIRKS + _RAISING_QUIRKS}
    assert min(quirks.values()) >= 15
    assert traced >= 0.1 * total  # trace ids, from spans and headers, written natively


# -- fallbacks and hooks -------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_custom_fields_use_the_python_path(layout: LogFormat, recorder: Recorder) -> None:
    config = _config(layout, custom_fields={"app.version": lambda r: "1.2"})
    request = _request(config=config)
    # custom fields are Python callables: the config gets no native plan at all
    assert serializer._plan(config) is None
    run = recorder.run(request)
    assert run.path == "python"
    assert run.data is not None
    assert orjson.loads(run.data)["app"] == {"version": "1.2"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_request_edits_use_the_python_path(layout: LogFormat, recorder: Recorder) -> None:
    scope = _get_scope()
    set_serialize_value(scope, "upstream_uri", "/internal")
    request = _request(scope, _config(layout))
    assert _native_result(request) is None
    run = recorder.run(request)
    assert run.path == "python"
    assert run.data is not None
    assert orjson.loads(run.data)["upstream_uri"] == "/internal"


def test_native_serializer_false_never_uses_the_native_encoder(recorder: Recorder) -> None:
    request = _request(config=_config(native_serializer=False))
    assert serializer._plan(request.config) is None
    run = recorder.run(request)
    assert run.path == "python"
    assert recorder.results == []
    assert run.outcome == _python(request)


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
    assert _bytes(data) == _python(request)
    assert list(orjson.loads(data))[-2:] == ["route", "consumer"]


def test_trace_id_keeps_its_place_after_fields_left_to_orjson() -> None:
    config = _config("kong3", route=lambda r: {"name": "r"}, consumer=lambda r: {"w": 0.5})
    request = _request(config=config, trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736)
    result = _native_result(request)
    _, fields = result
    assert [name for name, _ in fields] == ["consumer", "trace_id"]
    assert fields[1][1] == {"w3c": "4bf92f3577b34da6a3ce929d0e0e4736"}
    _assert_head(result, request)
    assert _outcome(lambda: encode_entry(request)) == _python(request)


def test_trace_id_is_written_natively() -> None:
    scope = _get_scope()
    scope["headers"].append((b"traceparent", b"00-" + b"ab" * 16 + b"-" + b"cd" * 8 + b"-01"))
    request = _request(scope, _config("kong3", route=lambda r: {"name": "r"}))
    data = _native_result(request)
    assert type(data) is bytes
    assert data.endswith(b',"route":{"name":"r"},"trace_id":{"w3c":"' + b"ab" * 16 + b'"}}')
    assert _bytes(data) == _python(request)


def test_hook_values_orjson_must_write_keep_their_place() -> None:
    config = _config(
        "kong3",
        service={"weight": 0.25},
        route=lambda r: {"name": "r"},
        consumer=lambda r: {"id": 1},
    )
    request = _request(config=config)
    result = _native_result(request)
    head, fields = result
    assert [name for name, _ in fields] == ["service", "route", "consumer"]
    assert head.endswith(b'"workspace_name":"default"}')
    _assert_head(result, request)
    assert _outcome(lambda: encode_entry(request)) == _python(request)


def test_a_hook_that_raises_is_logged_and_left_out(caplog: pytest.LogCaptureFixture) -> None:
    from kafka_log_middleware import _log

    _log.reset()

    def broken(request: CapturedRequest) -> Any:
        raise RuntimeError("secret")

    request = _request(config=_config(consumer=broken))
    assert type(_native_result(request)) is bytes
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
    assert _bytes(result) == _python(request)


def test_kong3_request_id_is_a_uuid4_hex() -> None:
    request = _request(config=_config("kong3"))
    assert type(_native_result(request)) is bytes
    ids = {orjson.loads(encode_entry(request))["request"]["id"] for _ in range(50)}
    assert len(ids) == 50
    for value in ids:
        assert re.fullmatch("[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", value)


@pytest.mark.parametrize(
    ("seconds", "ms"),
    [
        (0.029, 29),
        (0.0125, 12),
        (0.01296, 12),
        (0.0129994, 12),
        (0.0129996, 13),
        (0.0005, 0),
        (0.0009999, 1),
        (1e-9, 0),
        (5.9995, 5999),
        (123.4569995, 123456),
        (123.4569996, 123457),
    ],
)
def test_milliseconds_are_truncated_like_the_python_path(seconds: float, ms: int) -> None:
    # from t_start 0.0: the latencies are exactly these seconds
    request = _request(t_start=0.0, t_response=seconds, t_end=2 * seconds)
    result = _native_result(request)
    assert type(result) is bytes
    latencies = orjson.loads(result)["latencies"]
    assert latencies["proxy"] == ms
    assert latencies["request"] == nginx_vars.msec(2 * seconds)
    assert _bytes(result) == _python(request)


def test_reason_phrases_come_from_http_status() -> None:
    for status in http.HTTPStatus:
        request = _request(status=int(status))
        result = _native_result(request)
        assert type(result) is bytes
        status_line = len(f"HTTP/1.1 {status.value} {status.phrase}\r\n")
        size = status_line + 88 + 13  # headers and blank line, body
        assert orjson.loads(result)["response"]["size"] == str(size)
        assert _bytes(result) == _python(request)


# -- bodies: built in Python, written natively ---------------------------------------------

BODY_TEXT = 'say "hi" \\ \t\n\x00\x1f é ✓ '
BODY_CASES: list[tuple[str, dict[str, Any], Any, Any]] = [
    (
        "json",
        {},
        (b'{"a": [1, "x"]}', b"application/json"),
        ([b'{"b":', b" 2}"], b"application/json"),
    ),
    ("short text", {}, (BODY_TEXT.encode(), b"text/plain"), ([BODY_TEXT.encode()], b"text/html")),
    ("dense text", {}, (BODY_TEXT.encode() * 40, b"text/plain"), ([b'"\\' * 300], b"text/plain")),
    ("invalid utf-8", {}, (b"a\xff\xfeb" * 100, b"text/plain"), ([b"\xc3"], b"text/plain")),
    ("latin-1", {}, ("é".encode("latin-1"), b"text/plain; charset=latin-1"), None),
    (
        "binary",
        {"body_content_types": ["*/*"]},
        (bytes(range(256)), b"application/octet-stream"),
        ([b"\x00\x01"], b"image/png"),
    ),
    (
        "truncated",
        {"max_request_body_bytes": 10, "max_response_body_bytes": 3},
        (b"x" * 20, b"text/plain"),
        ([b"ab", b"cd"], b"text/plain"),
    ),
    ("omitted", {}, (b"\x89PNG", b"image/png"), ([b"x"], b"application/pdf")),
    ("no type", {}, (b"x", b""), ([b""], b"text/plain")),
    (
        "redacted",
        {"redact_body_keys": ["password"]},
        (b'{"u": {"Password": "s"}}', b"application/json"),
        ([b"{"], b"application/json"),
    ),
]


def _without_id(outcome: Outcome) -> Outcome:
    """``outcome`` with kong3's ``request.id`` (a fresh uuid4 per build) blanked."""
    kind, data = outcome
    if isinstance(data, bytes):
        data = re.sub(rb'"id":"[0-9a-f]{32}"', b'"id":""', data)
    return (kind, data)


@pytest.mark.parametrize("layout", ["kong2", "kong3"])
@pytest.mark.parametrize(
    ("name", "changes", "request_body", "response"), BODY_CASES, ids=[c[0] for c in BODY_CASES]
)
def test_entries_with_bodies_are_native_and_identical(
    name: str,
    changes: dict[str, Any],
    request_body: Any,
    response: Any,
    layout: LogFormat,
    recorder: Recorder,
) -> None:
    from tests.test_bodies import captured

    config = KafkaLogConfig(
        bootstrap_servers=("127.0.0.1:9",),
        topic="t",
        log_format=layout,
        include_request_body=True,
        include_response_body=True,
        **changes,
    )
    request = captured(config, request_body, response)
    run = recorder.run(request)
    assert run.path == "native"
    assert _without_id(run.outcome) == _without_id(_python(request))
    entry = orjson.loads(run.data or b"")
    assert any(key.startswith("body") for key in entry["request"])


def test_random_bodies_are_native_and_identical(recorder: Recorder) -> None:
    from tests.test_bodies import captured

    rng = random.Random(11)
    config = KafkaLogConfig(
        bootstrap_servers=("127.0.0.1:9",),
        topic="t",
        include_request_body=True,
        include_response_body=True,
        max_response_body_bytes=300,
    )
    alphabet = [b'"', b"\\", b"\x00", b"\x1f", b"\n", b"a", "é".encode(), "✓".encode(), b"\xff"]
    for _ in range(200):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 600)))
        request = captured(config, (body, b"text/plain"), ([body[:100], body[100:]], b"text/csv"))
        run = recorder.run(request)
        assert run.path == "native"
        assert _without_id(run.outcome) == _without_id(_python(request))


# -- runs: the publisher's one native call per run of plain entries -----------------


def _by_runs(requests: list[CapturedRequest], limit: int, kinds: Counter[str]) -> list[Outcome]:
    """``requests`` encoded as the publisher does: runs of ``encode_run``, and each request
    a run stops at through ``rest_of_run``; ``kinds`` counts the runs and the stops."""
    out: list[Outcome] = []
    index = 0
    while index < len(requests):
        request = requests[index]
        run = serializer.encode_run(requests, index, request.config, limit)
        if run is None:  # a config only the Python path serves (custom fields)
            kinds["no run"] += 1
            out.append(_outcome(lambda r=request: encode_entry(r)))  # type: ignore[misc]
            index += 1
            continue
        messages, size, rest = run
        assert size == sum(len(value) for _, value in messages)
        assert all(key is None and len(value) <= limit for key, value in messages)
        out += [_bytes(value) for _, value in messages]
        kinds["run of 2 or more" if len(messages) > 1 else f"run of {len(messages)}"] += 1
        index += len(messages)
        if index == len(requests):
            break
        kinds["stop: " + type(rest).__name__] += 1
        stopped = requests[index]
        out.append(_outcome(lambda r=stopped, left=rest: serializer.rest_of_run(r, left)))  # type: ignore[misc]
        index += 1
    return out


def _compiled_clone(request: CapturedRequest) -> CapturedRequest:
    """A ``NativeASGIRequest`` with the same facts, where they fit its fields (else an
    ``ASGIRequest``: a quirk gave one of them a type or size only a Python capture holds)."""
    clone = NativeASGIRequest(dict(request.scope), request.config, _receive, _send)
    try:
        for name in _CLONED:
            setattr(clone, name, getattr(request, name))
    except (TypeError, OverflowError):
        return _clone(request)
    return cast(CapturedRequest, clone)


def _neighbours(rng: random.Random, tmp: Path, count: int) -> list[CapturedRequest]:
    """Generated requests, each followed by 0 to 3 clones (the same config: a run), half
    of them compiled captures (``NativeASGIRequest``)."""
    requests: list[CapturedRequest] = []
    for _ in range(count):
        request = _generated(rng, tmp).request
        requests.append(request)
        for _ in range(rng.choice([0, 1, 3])):
            compiled = NativeASGIRequest is not None and rng.random() < 0.5
            requests.append(_compiled_clone(request) if compiled else _clone(request))
    return requests


@pytest.mark.parametrize("limit", [1 << 30, 900])
def test_runs_give_the_entries_of_encode_entry(files: Path, limit: int) -> None:
    requests = _neighbours(random.Random(20261204 + limit), files, 600)
    kinds: Counter[str] = Counter()
    expected = [_outcome(lambda r=r: encode_entry(r)) for r in requests]  # type: ignore[misc]
    assert _by_runs(requests, limit, kinds) == expected
    if NativeASGIRequest is not None:
        assert sum(type(r) is NativeASGIRequest for r in requests) >= 200
    assert kinds["run of 2 or more"] >= 100
    assert kinds["stop: NoneType"] >= 50  # another config, or the native encoder declined
    assert kinds["stop: tuple"] >= 20  # hook values left to orjson
    assert kinds["no run"] >= 10
    if limit < 1 << 30:
        assert kinds["stop: bytes"] >= 20  # over the limit: left to the publisher to fit


def test_a_run_stops_where_python_must_look_first() -> None:
    config = _config("kong2")
    other = config.replace(topic="other")
    plain = _request(config=config)
    gateway = _request(config=config)
    gateway.scope[UPSTREAM_KEY] = Upstream()
    bodies = _request(config=config)
    bodies.response_body = BodyCopy(100)
    bodies.response_body.add(b"written natively")
    redacting = config.replace(redact_body_keys=("password",), include_response_body=True)
    redacted = _request(config=redacting, response_headers=[(b"content-type", b"application/json")])
    redacted.response_body = BodyCopy(100)
    redacted.response_body.add(b'{"password": 1}')
    requests = [plain, _clone(plain), gateway, _clone(plain), _request(config=other), bodies]
    requests.append(redacted)
    starts = []
    index = 0
    while index < len(requests):
        run = serializer.encode_run(requests, index, requests[index].config, 1 << 30)
        assert run is not None
        messages, _, rest = run
        assert rest is None
        starts.append((index, len(messages)))
        index += len(messages) or 1
    # the gateway's entry, then the redaction are Python's
    assert starts == [(0, 2), (2, 0), (3, 1), (4, 1), (5, 1), (6, 0)]


def test_a_base_exception_in_a_run_is_handed_back() -> None:
    def consumer(request: CapturedRequest) -> Any:
        raise KeyboardInterrupt

    plain = _request(config=_config("kong2"))
    hooked = _request(config=_config("kong2", consumer=consumer))
    run = serializer.encode_run([plain, hooked], 0, plain.config, 1 << 30)
    assert run is not None
    assert len(run[0]) == 1
    run = serializer.encode_run([hooked], 0, hooked.config, 1 << 30)
    assert run is not None
    messages, size, rest = run
    assert (messages, size) == ([], 0)
    assert isinstance(rest, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        serializer.rest_of_run(hooked, rest)


def test_no_run_for_a_config_the_native_encoder_cannot_take() -> None:
    config = _config("kong2", custom_fields={"x": lambda request: 1})
    assert serializer.encode_run([_request(config=config)], 0, config, 1 << 30) is None


def test_runs_write_bodies_natively_as_the_python_path_does(files: Path) -> None:
    """Bodies in runs: written natively from each side's ``BodyCopy`` (no body fields built
    in Python), byte for byte those of ``encode_entry``; the cases it leaves to Python
    (JSON keys to redact, another charset, invalid UTF-8) stop the run."""
    from tests.test_bodies import captured

    rng = random.Random(20261205)
    pieces = [b'"', b"\\", b"\x00", b"\x1f", b"\n", b"a", b"{}", "é".encode(), "✓".encode()]
    pieces += ["😀".encode(), b"\xff", b"\xed\xa0\x80", b"\xf4\x90"]
    types = [b"application/json", b"text/plain", b"text/csv; charset=utf-8", b"", b"image/png"]
    types += [b"application/octet-stream", b"text/plain; charset=latin-1", b"Application/JSON"]
    requests: list[CapturedRequest] = []
    for _ in range(400):
        config = KafkaLogConfig(
            bootstrap_servers=("127.0.0.1:9",),
            topic="t",
            log_format=rng.choice(LAYOUTS),
            include_request_body=rng.random() < 0.9,
            include_response_body=rng.random() < 0.9,
            max_request_body_bytes=rng.choice([1, 7, 64, 512 * 1024]),
            max_response_body_bytes=rng.choice([2, 9, 100, 512 * 1024]),
            body_content_types=rng.choice([("text/*", "application/json"), ("*/*",)]),
            redact_body_keys=rng.choice([(), (), (), ("password",)]),
        )
        alphabet = pieces[:9] if rng.random() < 0.8 else pieces  # some with invalid UTF-8
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        chunks = [body[: len(body) // 2], body[len(body) // 2 :]]
        request = captured(config, (body, rng.choice(types)), (chunks, rng.choice(types)))
        requests += [request, *(_clone_bodies(request) for _ in range(rng.choice([0, 2])))]
    kinds: Counter[str] = Counter()
    expected = [_without_id(_python(r)) for r in requests]
    assert [_without_id(o) for o in _by_runs(requests, 1 << 30, kinds)] == expected
    assert kinds["run of 2 or more"] >= 100
    assert kinds["stop: NoneType"] >= 30  # left to Python (or another config next)


def _clone_bodies(request: CapturedRequest) -> CapturedRequest:
    compiled = NativeASGIRequest is not None and request.t_start % 2 < 1  # half, at random
    clone = _compiled_clone(request) if compiled else _clone(request)
    clone.request_body, clone.response_body = request.request_body, request.response_body
    return clone


def _traceparent(rng: random.Random) -> bytes:
    """A ``traceparent`` value: valid, or broken in one of the ways W3C forbids."""
    hex_digits = "0123456789abcdef"
    version = rng.choice(["00", "00", "01", "fe", "ff", "0g", "0A"])
    trace = "".join(rng.choice(hex_digits) for _ in range(32))
    parent = "".join(rng.choice(hex_digits) for _ in range(16))
    trace = rng.choice([trace, trace, "0" * 32, trace.upper(), trace[:31] + "x"])
    parent = rng.choice([parent, parent, "0" * 16])
    value = f"{version}-{trace}-{parent}-{rng.choice(['01', '00', 'zz'])}"
    value += rng.choice(["", "", "", "-more", "x", "-"])
    value = rng.choice(["", " ", "\t", " \t"]) + value + rng.choice(["", " ", "\t "])
    return value.encode()[: rng.choice([1000, 1000, 54, 20])]


def test_runs_write_trace_ids_as_the_python_path_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """kong3 runs read the span's id and parse ``traceparent`` natively, byte for byte
    ``tracing.trace_id``'s, and leave unusual types to it."""
    rng = random.Random(20261206)
    config = _config("kong3")
    requests: list[CapturedRequest] = []
    names = [b"traceparent", b"TraceParent", b"traceparent ", b"tracestate"]
    for _ in range(1500):
        request = _request(config=config)
        headers = [pair for pair in request.scope["headers"] if pair[0] != b"traceparent"]
        for _ in range(rng.choice([0, 1, 1, 1, 2])):
            headers.insert(rng.randrange(len(headers) + 1), (rng.choice(names), _traceparent(rng)))
        request.scope["headers"] = rng.choice([headers, headers, tuple(headers)])
        request.trace_id = rng.choice([0, 0, 0, 1, rng.getrandbits(128), 2**128, -5, True])
        if NativeASGIRequest is not None and rng.random() < 0.5:
            request = _compiled_clone(request)
        requests.append(request)
    kinds: Counter[str] = Counter()
    expected = [_without_id(_python(r)) for r in requests]
    asked: list[CapturedRequest] = []

    def python_trace_id(request: CapturedRequest) -> str | None:
        asked.append(request)
        return trace_id(request)

    monkeypatch.setattr(serializer, "trace_id", python_trace_id)
    assert [_without_id(o) for o in _by_runs(requests, 1 << 30, kinds)] == expected
    # Only unusual span ids (a bool, a negative one, one over 128 bits) ask Python.
    assert all(type(r.trace_id) is bool or not 0 <= r.trace_id < 2**128 for r in asked)
    assert 0 < len(asked) < 0.4 * len(requests)
    logged = [orjson.loads(o[1]).get("trace_id") for o in expected if o[0] == "bytes"]
    assert sum(1 for t in logged if t is not None) >= 300  # spans and valid headers
    assert sum(1 for t in logged if t is None) >= 300  # none, several, or invalid
