"""The request fields of the entry, held against real nginx on the same raw requests.

Each raw request of the corpus goes over TCP to nginx set up as Kong's proxy
(``devtools/nginx``: ``server_name kong``, ``underscores_in_headers on``, basic.lua's
request fields computed in the log phase from nginx's own variables and APIs) and to
uvicorn with each of its HTTP parsers (h11, httptools), where the request is captured
as the middleware captures it and serialized in both layouts. Every field must match,
except the differences listed with their case, each with its reason. Requests a server
refuses are listed too; whatever uvicorn accepts must never log credentials.

nginx's lua module (Debian bookworm: lua-nginx-module 0.10.23) has the query unescaping
of Kong >= 2.6 and 3.x; Kong 2.0 ran 0.10.15, so kong2 differs on invalid escapes.
Skipped with a reason where nginx is missing, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, NamedTuple, NoReturn

import orjson
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from devtools.nginx import KongNginx, NginxUnavailable
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import KafkaLogConfig, LogFormat
from kafka_log_middleware.nginx_vars import text
from kafka_log_middleware.serializer import build_entry, encode_entry
from kafka_log_middleware.types import Receive, Scope, Send

from .test_request_size import Recorder, uvicorn_on_free_port

PARSERS = ("h11", "httptools")


def _httptools_strips_trailing_spaces() -> bool:
    """Whether the installed uvicorn trims the spaces after a value httptools keeps (it
    newer releases do: RFC 9110 leaves them out of the value)."""
    protocol = SimpleNamespace(headers=[], expect_100_continue=False)
    HttpToolsProtocol.on_header(protocol, b"host", b"example.com  ")  # type: ignore[arg-type]
    return bool(protocol.headers == [(b"host", b"example.com")])


STRIPPING_PARSERS = ("h11", "httptools") if _httptools_strips_trailing_spaces() else ("h11",)
LAYOUTS: tuple[LogFormat, ...] = ("kong2", "kong3")
FIELDS = ("uri", "url", "querystring", "method", "headers", "size")
SECRET = b"s3cr3t"
"""The password of every request that carries credentials: never in an entry."""

CONFIGS = {
    layout: KafkaLogConfig(
        bootstrap_servers=("127.0.0.1:9092",),
        topic="t",
        log_format=layout,
        # nginx has no redaction: compare raw header values
        redact_headers=(),
        redact_response_headers=(),
    )
    for layout in LAYOUTS
}


@dataclass(frozen=True)
class Diff:
    """A documented difference in one field of the request entry, and why it is there."""

    field: str
    reason: str
    parsers: tuple[str, ...] = PARSERS
    layouts: tuple[LogFormat, ...] = LAYOUTS


@dataclass(frozen=True)
class Case:
    """One raw request; the servers that refuse it and the fields that differ, with why."""

    name: str
    raw: bytes
    refused: Mapping[str, str] = field(default_factory=dict)
    """Server (``nginx``, ``h11``, ``httptools``) → why it answers with an error."""
    differs: tuple[Diff, ...] = ()


def _diffs(reason: str, *fields: str, parsers: tuple[str, ...] = PARSERS) -> tuple[Diff, ...]:
    return tuple(Diff(name, reason, parsers) for name in fields)


def _get(target: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    lines = b"".join(h + b"\r\n" for h in headers)
    return b"GET %s HTTP/%s\r\nHost: example.com\r\n%s\r\n" % (target, version, lines)


def _post(headers: bytes, body: bytes) -> bytes:
    return b"POST /submit HTTP/1.1\r\nHost: example.com\r\n%s\r\n%s" % (headers, body)


def _sized(body: bytes, *headers: bytes) -> bytes:
    lines = b"".join(h + b"\r\n" for h in (*headers, b"Content-Length: %d" % len(body)))
    return _post(lines, body)


# Reasons shared by several cases.
HTTPTOOLS_TARGET = (
    "uvicorn's httptools protocol keeps only the path and the query of the target "
    "(no scheme, host or fragment): not in the scope"
)
VALUE_SPACES = "the spaces around a header value are not in the scope: counted as ': '"
CHUNKS = "ASGI gives a chunked body's bytes, not its chunks: counted as one chunk"
IGNORED_NAME = "not an HTTP token: uvicorn refuses the header that nginx only ignores"
BAD_ESCAPES = (
    "Kong 2.0 ran lua-nginx-module 0.10.15, which drops invalid escapes; this nginx keeps "
    "them (>= 0.10.20, Kong >= 2.6 and 3.x)"
)

CASES = [
    # -- querystring: ngx.req.get_uri_args(100) ---------------------------------------
    Case("query: repeats, bare and empty keys", _get(b"/s?a=1&a=2&a&b=&=x&&c&a=3")),
    Case("query: + and valid escapes", _get(b"/q?q=kong+log&e=%20x%2By&k%3Dv=1&%61=b&u=caf%C3%A9")),
    Case(
        "query: invalid and truncated escapes",
        _get(b"/?q=%zz&r=%&s=%4&t=%%41&u=%2zx&v=x%2&w=%+&x=%41"),
        differs=(Diff("querystring", BAD_ESCAPES, layouts=("kong2",)),),
    ),
    Case("query: escapes of invalid UTF-8", _get(b"/?q=%E9&k%FF=1&r=caf%C3")),
    Case("query: '=' in a value, ';' is no separator", _get(b"/?a=1=2&b=1;c=2&d==")),
    Case(
        "query: more than 100 args", _get(b"/?" + b"&".join(b"k%d=%d" % (i, i) for i in range(150)))
    ),
    Case(
        "query: empty parts do not count toward 100",
        _get(b"/?" + b"&" * 40 + b"=x&" * 20 + b"&".join(b"k%d" % i for i in range(120))),
    ),
    Case("query: repeats count toward 100", _get(b"/?" + b"&".join([b"a=1"] * 60 + [b"b"] * 60))),
    Case(
        "query: a fragment ends the args",
        _get(b"/a?b=1#frag&c=2"),
        differs=_diffs(HTTPTOOLS_TARGET, "uri", "url", "size", parsers=("httptools",)),
    ),
    Case(
        "query: none after a fragment in the path",
        _get(b"/a#frag?x=1"),
        differs=_diffs(HTTPTOOLS_TARGET, "uri", "url", "size", parsers=("httptools",)),
    ),
    Case(
        "query: a bare '?'",
        _get(b"/p?"),
        differs=_diffs("an empty query is not in the scope, nor its '?'", "uri", "url", "size"),
    ),
    # -- headers: ngx.req.get_headers(100) ---------------------------------------------
    Case(
        "headers: repeated, mixed case",
        _get(
            b"/",
            b"X-Dup: one",
            b"x-dup: two",
            b"X-DUP: three",
            b"Accept: */*",
            b"User-Agent: raw/1.0",
            b"Authorization: Basic dXNlcjpwYXNz",
            b"Cookie: a=1; b=2",
        ),
    ),
    Case("headers: more than 100", _get(b"/", *(b"X-H%d: v%d" % (i, i) for i in range(120)))),
    Case(
        "headers: names nginx ignores, underscores kept (Kong)",
        _get(b"/", *(b"X%s: %d" % (bytes([c]), c) for c in b"_.~!#$%&'*+^`|"), b"X_Under: 1"),
    ),
    Case(
        "headers: ignored names do not count toward 100",
        _get(b"/", *(b"x.h%d: v" % i for i in range(10)), *(b"X-H%d: v" % i for i in range(101))),
    ),
    Case(
        "headers: names that are not tokens",
        _get(b"/", b"x@y: 1", b"X-Ok: 2"),
        refused={"h11": IGNORED_NAME, "httptools": IGNORED_NAME},
    ),
    Case(
        "headers: a non-ASCII name",
        _get(b"/", b"x\xe9: 1", b"X-Ok: 2"),
        refused={"h11": IGNORED_NAME, "httptools": IGNORED_NAME},
    ),
    Case(
        "headers: spaces around a value",
        _get(b"/", b"X-B:   padded  "),
        differs=(Diff("size", VALUE_SPACES),),
    ),
    Case(
        "headers: no space after the colon",
        _get(b"/", b"X-A:1"),
        differs=(Diff("size", VALUE_SPACES),),
    ),
    Case(
        "headers: tabs around a value",
        _get(b"/", b"X-C: \ttab\t"),
        differs=(
            Diff("headers", "h11 strips tabs around a value, nginx keeps them", ("h11",)),
            Diff("size", "h11 strips tabs around a value: not in the scope", ("h11",)),
            Diff(
                "headers", "llhttp strips a value's leading tabs, nginx keeps them", ("httptools",)
            ),
            Diff("size", "llhttp strips a value's leading tabs: not in the scope", ("httptools",)),
        ),
    ),
    Case(
        "headers: UTF-8 and invalid UTF-8 values", _get(b"/", b"X-U: caf\xc3\xa9", b"X-L: caf\xe9")
    ),
    Case("headers: empty values", _get(b"/", b"X-E: ", b"X-F: ")),
    # -- $host ---------------------------------------------------------------------------
    Case(
        "host: port, case and a trailing dot",
        b"GET / HTTP/1.1\r\nHost: API.Example.COM.:8443\r\n\r\n",
    ),
    Case("host: IPv6 literal", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"),
    Case(
        "host: spaces after the value",
        b"GET / HTTP/1.1\r\nHost: example.com  \r\n\r\n",
        differs=(
            Diff(
                "size",
                "uvicorn strips the spaces after a value: not in the scope",
                STRIPPING_PARSERS,
            ),
        ),
    ),
    Case("host: HTTP/1.0 without Host is the server name", b"GET /old HTTP/1.0\r\n\r\n"),
    Case("host: HTTP/1.0 with Host", _get(b"/old", version=b"1.0")),
    Case(
        "host: HTTP/1.1 without Host",
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        refused={"nginx": "Host is required in HTTP/1.1", "h11": "Host is required in HTTP/1.1"},
    ),
    Case(
        "host: two Host headers",
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        refused={"nginx": "duplicate Host", "h11": "duplicate Host"},
    ),
    Case(
        "host: empty Host",
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        refused={"nginx": "an empty host is invalid"},
    ),
    # -- absolute-form targets -------------------------------------------------------------
    Case(
        "absolute form: host, port and query",
        b"GET http://Example.COM:8080/x?y=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
        differs=_diffs(HTTPTOOLS_TARGET, "url", "size", parsers=("httptools",)),
    ),
    Case(
        "absolute form: IPv6 literal",
        b"GET http://[::1]:8080/p HTTP/1.1\r\nHost: other.example\r\n\r\n",
        differs=_diffs(HTTPTOOLS_TARGET, "url", "size", parsers=("httptools",)),
    ),
    Case(
        "absolute form: https on plain HTTP, trailing dot",
        b"GET https://example.org./p HTTP/1.1\r\nHost: other.example\r\n\r\n",
        differs=_diffs(HTTPTOOLS_TARGET, "url", "size", parsers=("httptools",)),
    ),
    Case(
        "absolute form: no path",
        b"GET http://example.org HTTP/1.1\r\nHost: other.example\r\n\r\n",
        refused={"httptools": "llhttp refuses a target without a path"},
    ),
    Case(
        "absolute form: no path, a query",
        b"GET http://example.org?a=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
        refused={"httptools": "llhttp refuses a target without a path"},
    ),
    Case(
        "absolute form: userinfo",
        b"GET http://user:%s@example.org/x?y=1 HTTP/1.1\r\nHost: other.example\r\n\r\n" % SECRET,
        refused={"nginx": "no userinfo in the request line"},
    ),
    Case(
        "authority form: CONNECT with userinfo",
        b"CONNECT user:%s@example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n" % SECRET,
        refused={"nginx": "only origin and absolute forms", "httptools": "CONNECT is an upgrade"},
    ),
    Case(
        "asterisk form",
        b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n",
        refused={"nginx": "only origin and absolute forms"},
    ),
    # -- $request_length -------------------------------------------------------------------
    Case(
        "size: body with Content-Length",
        _sized(b'{"item": "caf\xc3\xa9", "n": 1}', b"Content-Type: application/json"),
    ),
    Case("size: body larger than nginx's buffer", _sized(b"x" * 20000)),
    Case(
        "size: HTTP/1.0 body",
        b"POST /old HTTP/1.0\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello",
    ),
    Case(
        "size: chunked body in one chunk",
        _post(b"Transfer-Encoding: chunked\r\n", b"b\r\nhello world\r\n0\r\n\r\n"),
    ),
    Case(
        "size: empty chunked body",
        _post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    ),
    Case(
        "size: chunked body in three chunks",
        _post(
            b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
        ),
        differs=(Diff("size", CHUNKS),),
    ),
    Case(
        "size: chunk extension and trailer",
        _post(b"Transfer-Encoding: chunked\r\n", b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"),
        differs=(
            Diff("size", "ASGI shows neither chunk extensions nor trailers", ("h11",)),
            Diff("size", "ASGI shows no chunk extension", ("httptools",)),
            Diff(
                "headers",
                "uvicorn's httptools protocol adds the trailer to the scope's headers",
                ("httptools",),
            ),
        ),
    ),
    Case(
        "size: Transfer-Encoding in mixed case",
        _post(b"Transfer-Encoding: Chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        differs=(Diff("headers", "h11 lower-cases the Transfer-Encoding value", ("h11",)),),
    ),
    Case(
        "size: Transfer-Encoding and Content-Length",
        _post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        refused={"nginx": "both framings at once", "httptools": "both framings at once"},
    ),
    Case(
        "size: bare LF line ends",
        b"GET /lf HTTP/1.1\nHost: example.com\nX-A: 1\n\n",
        refused={"httptools": "llhttp requires CRLF"},
        differs=(
            Diff("size", "the scope does not say how lines ended: counted as CRLF", ("h11",)),
        ),
    ),
    # -- method and target bytes ---------------------------------------------------------
    Case(
        "method: DELETE with a percent-encoded path",
        b"DELETE /caf%C3%A9/%7Eu%20x?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ),
    Case(
        "method: lower case",
        b"get / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        refused={"nginx": "methods are upper case", "httptools": "unknown method"},
    ),
    Case(
        "target: raw UTF-8 and invalid UTF-8",
        b"GET /caf\xc3\xa9?q=\xe9 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        refused={"h11": "non-ASCII target", "httptools": "non-ASCII target"},
    ),
]


# -- servers ---------------------------------------------------------------------------


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, as Kong does to proxy it, and answers 200 "ok"."""
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


class Uvicorn(NamedTuple):
    recorder: Recorder
    port: int


@pytest.fixture(scope="module")
def nginx() -> Iterator[KongNginx]:
    """Kong's nginx, or a skip with the reason (a failure under CI=true)."""
    try:
        server = KongNginx()
    except NginxUnavailable as exc:
        unavailable(exc)
    try:
        server.start()
    except NginxUnavailable as exc:
        server.close()
        unavailable(exc)
    try:
        yield server
    finally:
        server.close()


def unavailable(reason: NginxUnavailable) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the differential test: {reason}")
    pytest.skip(str(reason))


@pytest.fixture(scope="module")
def uvicorns() -> Iterator[dict[str, Uvicorn]]:
    """``app`` behind a :class:`Recorder`, under uvicorn with each HTTP parser."""
    h11, httptools = Recorder(app), Recorder(app)
    with (
        uvicorn_on_free_port(h11, "h11") as h11_port,
        uvicorn_on_free_port(httptools, "httptools") as httptools_port,
    ):
        yield {"h11": Uvicorn(h11, h11_port), "httptools": Uvicorn(httptools, httptools_port)}


def exchange(port: int, raw: bytes) -> tuple[int, int]:
    """Send ``raw`` on a new connection and read the whole response: (status, client port)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        client_port = conn.getsockname()[1]
        conn.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        while chunk and (length is None or len(body) < int(length.group(1))):
            chunk = conn.recv(65536)
            body += chunk
    return int(head.split(b" ", 2)[1]), client_port


# -- the comparison ------------------------------------------------------------------------


def expected_request(line: dict[bytes, Any], layout: LogFormat, port: int) -> dict[str, Any]:
    """basic.lua's request fields from nginx's line, as JSON text, for a server on ``port``.

    nginx writes the raw bytes; the entry has them as ``text()`` decodes them. ``url``
    gets the other server's port.
    """
    request = line[b"request"]
    authority = b"%s://%s:" % (line[b"scheme"], line[b"host"])
    assert request[b"url"] == authority + line[b"server_port"] + request[b"uri"]
    size = text(request[b"size"])
    return {
        "uri": text(request[b"uri"]),
        "url": text(authority + b"%d" % port + request[b"uri"]),
        "querystring": _text(request[b"querystring"]),
        "method": text(request[b"method"]),
        "headers": _text(request[b"headers"]),
        "size": int(size) if layout == "kong3" else size,
    }


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return text(value)
    if isinstance(value, list):
        return [_text(item) for item in value]
    if isinstance(value, dict):
        return {text(key): _text(item) for key, item in value.items()}
    return value


def entries(capture: CapturedRequest) -> dict[LogFormat, bytes]:
    """The encoded entry in each layout; the Python and the native paths give the same bytes."""
    out = {}
    for layout in LAYOUTS:
        capture.config = CONFIGS[layout]
        data = encode_entry(capture)
        python = orjson.dumps(build_entry(capture))
        assert _RANDOM_ID.sub(b"", data) == _RANDOM_ID.sub(b"", python)
        out[layout] = data
    return out


_RANDOM_ID = re.compile(rb',"id":"[0-9a-f]{32}"')
"""kong3's request.id: a fresh uuid4 in each encoding."""


def diff_of(case: Case, parser: str, layout: LogFormat, name: str) -> Diff | None:
    for diff in case.differs:
        if diff.field == name and parser in diff.parsers and layout in diff.layouts:
            return diff
    return None


@pytest.fixture(scope="module")
def nginx_lines(nginx: KongNginx) -> dict[str, dict[bytes, Any] | None]:
    """Case name → nginx's line for it, None when nginx refused it (checked per case)."""
    lines: dict[str, dict[bytes, Any] | None] = {}
    for case in CASES:
        status, client_port = exchange(nginx.port, case.raw)
        lines[case.name] = nginx.entry(client_port) if status == 200 else None
    return lines


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_request_fields_match_nginx(
    case: Case,
    parser: str,
    nginx_lines: dict[str, dict[bytes, Any] | None],
    uvicorns: dict[str, Uvicorn],
) -> None:
    line = nginx_lines[case.name]
    assert (line is None) == ("nginx" in case.refused), "nginx's refusal is not as listed"
    recorder, port = uvicorns[parser]
    count = len(recorder.captures)
    status, _ = exchange(port, case.raw)
    assert (status != 200) == (parser in case.refused), f"{parser}'s refusal is not as listed"
    if status != 200:
        assert len(recorder.captures) == count
        return
    logged = entries(recorder.wait(count + 1))
    for data in logged.values():
        assert SECRET not in data
    if line is None:
        return  # nothing to compare with
    mismatched = []
    for layout, data in logged.items():
        request = orjson.loads(data)["request"]
        expected = expected_request(line, layout, port)
        for name in FIELDS:
            diff = diff_of(case, parser, layout, name)
            same = request[name] == expected[name]
            if diff is None and not same:
                mismatched.append(
                    f"{layout} {name}: {request[name]!r} != nginx's {expected[name]!r}"
                )
            elif diff is not None and same:
                mismatched.append(f"{layout} {name} agrees now: remove its Diff ({diff.reason})")
        assert orjson.loads(data)["client_ip"] == text(line[b"client_ip"])
    assert not mismatched, "\n".join(mismatched)
