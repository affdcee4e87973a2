"""The nginx variables and ngx APIs Kong reads, rebuilt from ASGI facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kafka_log_middleware import nginx_vars
from kafka_log_middleware.asgi import ASGIRequest
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import KafkaLogConfig
from kafka_log_middleware.types import Message

CONFIG = KafkaLogConfig(bootstrap_servers=("127.0.0.1:9092",), topic="t")


async def _receive() -> Message:
    return {"type": "http.disconnect"}


async def _send(message: Message) -> None:
    return None


def _scope(**overrides: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/a b",
        "raw_path": b"/a%20b",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"example.com")],
        "client": ("10.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(overrides)
    return scope


def _captured(scope: dict[str, Any], **attributes: Any) -> CapturedRequest:
    request = ASGIRequest(scope, CONFIG, _receive, _send)
    for name, value in attributes.items():
        setattr(request, name, value)
    return request


# -- $request_uri ----------------------------------------------------------------


def test_request_uri_is_raw_path_with_query() -> None:
    scope = _scope(raw_path=b"/a%20b/%7E", query_string=b"x=%2F&y")
    assert nginx_vars.request_uri(scope) == "/a%20b/%7E?x=%2F&y"


def test_request_uri_without_query_has_no_question_mark() -> None:
    assert nginx_vars.request_uri(_scope()) == "/a%20b"


def test_request_uri_without_raw_path_percent_encodes_root_path_and_path() -> None:
    scope = _scope(raw_path=None, root_path="/api", path="/caf\u00e9 x", query_string=b"q=1")
    assert nginx_vars.request_uri(scope) == "/api/caf%C3%A9%20x?q=1"


def test_request_uri_without_raw_path_does_not_repeat_root_path_already_in_path() -> None:
    scope = _scope(raw_path=None, root_path="/api", path="/api/items")
    assert nginx_vars.request_uri(scope) == "/api/items"


# -- absolute-form and other targets -----------------------------------------------------


@pytest.mark.parametrize(
    ("raw_path", "query", "uri", "named"),
    [
        (b"http://user:pass@Example.COM:8080/x", b"y=1", b"/x?y=1", b"Example.COM:8080"),
        (b"https://h.example/a/b", b"", b"/a/b", b"h.example"),
        (b"http://[::1]:8080/p", b"", b"/p", b"[::1]:8080"),
        (b"http://example.com", b"", b"/", b"example.com"),  # nginx: "/" for no path
        (b"http://example.com", b"a=1", b"?a=1", b"example.com"),  # and nothing before "?"
        (b"http://u:p@", b"", b"/", None),
        (b"HTTP+x.y-z://h/p", b"", b"/p", b"h"),
        (b"/x/http://h/p", b"", b"/x/http://h/p", None),  # the origin form stays as it is
        (b"/a@b/c", b"", b"/a@b/c", None),
    ],
)
def test_absolute_form_target_is_path_only_and_names_the_host(
    raw_path: bytes, query: bytes, uri: bytes, named: bytes | None
) -> None:
    target = nginx_vars.target(_scope(raw_path=raw_path, query_string=query))
    assert (target.uri, target.host) == (uri, named)
    assert target.size == len(raw_path) + (len(query) + 1 if query else 0)


def test_absolute_form_after_root_path_and_in_a_path_without_raw_path() -> None:
    scope = _scope(raw_path=b"/apihttp://u:s3cr3t@h/x", root_path="/api")
    assert nginx_vars.target(scope)[:2] == (b"/api/x", b"h")
    scope = _scope(raw_path=b"/api/x@y", root_path="/api")
    assert nginx_vars.target(scope)[:2] == (b"/api/x@y", None)
    scope = _scope(raw_path=None, path="http://u:s3cr3t@h/caf\u00e9")
    assert nginx_vars.target(scope)[:2] == (b"/caf%C3%A9", b"h")


@pytest.mark.parametrize(
    ("raw_path", "uri"), [(b"user:s3cr3t@example.com:443", b"example.com:443"), (b"*", b"*")]
)
def test_other_targets_are_logged_as_sent_without_userinfo(raw_path: bytes, uri: bytes) -> None:
    assert nginx_vars.target(_scope(raw_path=raw_path)) == (uri, None, b"", len(raw_path))


def test_args_end_at_a_fragment_and_a_fragment_in_the_path_leaves_none() -> None:
    # nginx cuts $args at "#"; after a "#" in the path a "?" starts no args at all.
    assert nginx_vars.target(_scope(raw_path=b"/a", query_string=b"b=1#f&c")).args == b"b=1"
    target = nginx_vars.target(_scope(raw_path=b"/a#f", query_string=b"x=1"))
    assert (target.uri, target.args) == (b"/a#f?x=1", b"")
    assert nginx_vars.query_args(_scope(query_string=b"k=v")) == b"k=v"


# -- $host, $server_port -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Example.COM:8443", "example.com"),
        (b"example.com", "example.com"),
        (b"example.com.", "example.com"),
        (b"[::1]:8000", "[::1]"),
        (b"[::1]", "[::1]"),
    ],
)
def test_host_is_host_header_without_port_lower_cased(value: bytes, expected: str) -> None:
    assert nginx_vars.host(_scope(headers=[(b"Host", value)])) == expected


@pytest.mark.parametrize("server", [("127.0.0.1", 8000), ("/tmp/app.sock", None), None])
def test_host_without_host_header_is_kongs_server_name(server: Any) -> None:
    # HTTP/1.0 without Host: nginx's $host is the server_name, "kong" in Kong's template.
    assert nginx_vars.host(_scope(headers=[], server=server)) == "kong"


def test_host_of_an_absolute_form_target_wins_over_the_host_header() -> None:
    scope = _scope(raw_path=b"http://u:p@API.example.com.:8080/x", headers=[(b"host", b"other")])
    assert nginx_vars.host(scope) == "api.example.com"
    assert nginx_vars.host(scope, nginx_vars.target(scope)) == "api.example.com"


def test_host_header_loses_the_spaces_around_it() -> None:
    assert nginx_vars.host(_scope(headers=[(b"host", b" Example.com  ")])) == "example.com"


def test_server_port() -> None:
    assert nginx_vars.server_port(_scope()) == 8000
    assert nginx_vars.server_port(_scope(server=None)) is None
    assert nginx_vars.server_port(_scope(server=("/tmp/app.sock", None))) is None


# -- $request_length -------------------------------------------------------------


def test_request_length_counts_request_line_headers_and_body() -> None:
    scope = _scope(
        method="POST",
        raw_path=b"/p",
        query_string=b"a=1",
        headers=[(b"host", b"h"), (b"content-length", b"5")],
    )
    raw = b"POST /p?a=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nhello"
    assert nginx_vars.request_length(_captured(scope, body_read=5)) == len(raw)


def test_request_length_counts_content_length_when_the_app_read_less() -> None:
    scope = _scope(raw_path=b"/", headers=[(b"content-length", b"100")])
    base = len(b"GET / HTTP/1.1\r\ncontent-length: 100\r\n\r\n")
    assert nginx_vars.request_length(_captured(scope, body_read=10)) == base + 100


def test_request_length_counts_body_read_when_larger_than_content_length() -> None:
    scope = _scope(raw_path=b"/", headers=[(b"content-length", b"2")])
    base = len(b"GET / HTTP/1.1\r\ncontent-length: 2\r\n\r\n")
    assert nginx_vars.request_length(_captured(scope, body_read=42)) == base + 42


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"gzip, chunked"])
def test_request_length_counts_a_chunked_body_as_one_chunk(value: bytes) -> None:
    scope = _scope(raw_path=b"/", headers=[(b"transfer-encoding", value)])
    head = b"GET / HTTP/1.1\r\ntransfer-encoding: %s\r\n\r\n" % value
    body = b"2a\r\n" + b"x" * 42 + b"\r\n0\r\n\r\n"
    assert nginx_vars.request_length(_captured(scope, body_read=42)) == len(head + body)
    assert nginx_vars.request_length(_captured(scope)) == len(head + b"0\r\n\r\n")


def test_request_length_of_a_chunked_body_ignores_content_length() -> None:
    headers = [(b"transfer-encoding", b"chunked"), (b"content-length", b"100")]
    raw = b"GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n"
    raw += b"5\r\nhello\r\n0\r\n\r\n"
    assert nginx_vars.request_length(
        _captured(_scope(raw_path=b"/", headers=headers), body_read=5)
    ) == len(raw)


@pytest.mark.parametrize(("body", "framing"), [(0, 5), (1, 10), (15, 10), (16, 11), (4096, 13)])
def test_chunk_framing(body: int, framing: int) -> None:
    assert nginx_vars.chunk_framing(body) == framing


def test_request_length_counts_the_target_as_sent_and_headers_nginx_ignores() -> None:
    headers = [(b"host", b"other"), (b"x.dot", b"1")]
    scope = _scope(raw_path=b"http://u:p@h/x", query_string=b"y=1", headers=headers)
    raw = b"GET http://u:p@h/x?y=1 HTTP/1.1\r\nhost: other\r\nx.dot: 1\r\n\r\n"
    assert nginx_vars.request_length(_captured(scope)) == len(raw)


def test_request_length_uses_the_request_http_version() -> None:
    scope = _scope(raw_path=b"/", headers=[], http_version="1.0")
    assert nginx_vars.request_length(_captured(scope)) == len(b"GET / HTTP/1.0\r\n\r\n")


def test_request_length_ignores_an_invalid_content_length() -> None:
    scope = _scope(raw_path=b"/", headers=[(b"content-length", b"x")])
    assert nginx_vars.request_length(_captured(scope)) == len(
        b"GET / HTTP/1.1\r\ncontent-length: x\r\n\r\n"
    )


# -- $bytes_sent -----------------------------------------------------------------

_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n"


def test_bytes_sent_counts_status_line_headers_and_body() -> None:
    request = _captured(_scope(), status=200, response_headers=_HEADERS, body_sent=5)
    assert nginx_vars.bytes_sent(request) == len(_HEAD + b"hello")


def test_bytes_sent_for_head_counts_no_body() -> None:
    request = _captured(_scope(method="HEAD"), status=200, response_headers=_HEADERS, body_sent=5)
    assert nginx_vars.bytes_sent(request) == len(_HEAD)


def test_bytes_sent_for_pathsend_counts_the_file_size(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello")
    request = _captured(_scope(), status=200, response_headers=_HEADERS, file_path=str(path))
    assert nginx_vars.bytes_sent(request) == len(_HEAD + b"hello")


def test_bytes_sent_for_pathsend_of_a_missing_file_counts_no_body(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone")
    request = _captured(_scope(), status=200, response_headers=_HEADERS, file_path=missing)
    assert nginx_vars.bytes_sent(request) == len(_HEAD)


def test_bytes_sent_when_the_app_raised_before_responding_is_the_servers_500() -> None:
    request = _captured(_scope(), raised=True)
    expected = (
        b"HTTP/1.1 500 Internal Server Error\r\n"
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\n"
        b"connection: close\r\n\r\nInternal Server Error"
    )
    assert nginx_vars.bytes_sent(request) == len(expected)


def test_bytes_sent_is_zero_when_the_client_left_before_the_response() -> None:
    assert nginx_vars.bytes_sent(_captured(_scope(), client_gone=True)) == 0


def test_bytes_sent_for_an_unknown_status_has_an_empty_reason() -> None:
    request = _captured(_scope(), status=599, response_headers=[])
    assert nginx_vars.bytes_sent(request) == len(b"HTTP/1.1 599 \r\n\r\n")


@pytest.mark.parametrize(
    ("status", "phrase"), [(200, "OK"), (404, "Not Found"), (503, "Service Unavailable"), (599, "")]
)
def test_reason_phrase(status: int, phrase: str) -> None:
    assert nginx_vars.reason_phrase(status) == phrase


# -- ngx.req.get_uri_args ----------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", {}),
        (b"a=1&b=2", {"a": "1", "b": "2"}),
        (b"arg1&arg2", {"arg1": True, "arg2": True}),
        (b"a=", {"a": ""}),
        (b"a=1&a=2&a", {"a": ["1", "2", True]}),
        (b"a&a=x", {"a": [True, "x"]}),
        (b"=1&&b&=", {"b": True}),
        (b"a=%20x+y%2B", {"a": " x y+"}),
        (b"%61+b=c", {"a b": "c"}),
        (b"k%3Dv=1", {"k=v": "1"}),
        (b"a=1=2", {"a": "1=2"}),
        (b"a=1;b=2", {"a": "1;b=2"}),
        (b"q=caf%C3%A9", {"q": "caf\u00e9"}),
        (b"q=%E9", {"q": "\u00e9"}),
        (b"a=%zz&b=%2&c=%", {"a": "%zz", "b": "%2", "c": "%"}),
        (b"a=%%41", {"a": "%A"}),
    ],
)
def test_uri_args(query: bytes, expected: dict[str, Any]) -> None:
    assert nginx_vars.uri_args(query) == expected


# lua-nginx-module < 0.10.20 (OpenResty < 1.19.9.1): Kong 2.0 (0.10.15) to 2.5.
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"a=%zz", {"a": "zz"}),
        (b"a=%2zx", {"a": "x"}),
        (b"a=x%2", {"a": "x"}),
        (b"a=%%41", {"a": "%41"}),
        (b"a=%41+%2b", {"a": "A +"}),
    ],
)
def test_uri_args_legacy_unescape_of_kong2(query: bytes, expected: dict[str, Any]) -> None:
    assert nginx_vars.uri_args(query, legacy_unescape=True) == expected


def test_uri_args_keeps_the_first_100_args() -> None:
    query = b"&".join(b"k%d=%d" % (i, i) for i in range(150))
    args = nginx_vars.uri_args(query)
    assert list(args) == [f"k{i}" for i in range(100)]


def test_uri_args_repeats_count_toward_the_limit() -> None:
    assert nginx_vars.uri_args(b"a=1&a=2&a=3", max_args=2) == {"a": ["1", "2"]}


def test_uri_args_dropped_empty_keys_do_not_count_toward_the_limit() -> None:
    # lua-nginx-module's FFI parser stops when it has kept max_args arguments.
    query = b"&" * 300 + b"=x&" * 50 + b"&".join(b"k%d" % i for i in range(120))
    args = nginx_vars.uri_args(query)
    assert list(args) == [f"k{i}" for i in range(100)]


def test_uri_args_limit_zero_means_no_limit() -> None:
    query = b"&".join(b"k%d" % i for i in range(300))
    assert len(nginx_vars.uri_args(query, max_args=0)) == 300


# -- ngx.req.get_headers -----------------------------------------------------------


def test_headers_lower_cases_names_and_lists_repeats_in_order() -> None:
    raw = [(b"X-Foo", b"1"), (b"Accept", b"*/*"), (b"x-foo", b"2"), (b"X-FOO", b"3")]
    assert nginx_vars.headers(raw) == {"x-foo": ["1", "2", "3"], "accept": "*/*"}


def test_headers_none_is_an_empty_object() -> None:
    assert nginx_vars.headers([]) == {}


def test_headers_keeps_empty_values() -> None:
    assert nginx_vars.headers([(b"x-empty", b"")]) == {"x-empty": ""}


def test_headers_keeps_the_first_100() -> None:
    raw = [(b"x-h%d" % i, b"v") for i in range(120)]
    assert list(nginx_vars.headers(raw)) == [f"x-h{i}" for i in range(100)]
    assert len(nginx_vars.headers(raw, max_headers=0)) == 120


def test_request_headers_leave_out_the_names_nginx_ignores() -> None:
    # Letters, digits, "-" and (Kong: underscores_in_headers on) "_"; others are ignored.
    raw = [(b"X_Under", b"1"), (b"x.dot", b"2"), (b"x~t", b"3"), (b"x\xe9", b"4"), (b"A-1", b"5")]
    assert nginx_vars.request_headers(raw) == {"x_under": "1", "a-1": "5"}


def test_request_headers_ignored_do_not_count_toward_the_limit() -> None:
    raw = [(b"x.h%d" % i, b"v") for i in range(10)] + [(b"x-h%d" % i, b"v") for i in range(110)]
    assert list(nginx_vars.request_headers(raw)) == [f"x-h{i}" for i in range(100)]


def test_request_headers_trim_spaces_around_values_not_tabs() -> None:
    raw = [(b"x-a", b"  padded  "), (b"x-b", b"\ttab\t"), (b"x-c", b"   ")]
    assert nginx_vars.request_headers(raw) == {"x-a": "padded", "x-b": "\ttab\t", "x-c": ""}


def test_response_headers_are_kept_as_sent() -> None:
    assert nginx_vars.headers([(b"x.dot", b" 1 ")]) == {"x.dot": " 1 "}


def test_headers_decode_utf8_and_fall_back_to_latin1() -> None:
    raw = [(b"x-utf8", "caf\u00e9".encode()), (b"x-latin1", b"caf\xe9")]
    assert nginx_vars.headers(raw) == {"x-utf8": "caf\u00e9", "x-latin1": "caf\u00e9"}


# -- request.tls ---------------------------------------------------------------------


def _tls(**info: Any) -> dict[str, Any]:
    return _scope(scheme="https", extensions={"tls": info})


def test_tls_absent_on_plain_http() -> None:
    assert nginx_vars.tls(_scope()) is None
    assert nginx_vars.tls(_scope(extensions={})) is None


def test_tls_version_cipher_and_no_client_certificate() -> None:
    scope = _tls(tls_version=0x0304, cipher_suite=0x1302, client_cert_chain=[])
    assert nginx_vars.tls(scope) == {
        "version": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "client_verify": "NONE",
    }


def test_tls12_with_a_verified_client_certificate() -> None:
    scope = _tls(tls_version=0x0303, cipher_suite=0xC02F, client_cert_chain=["-----BEGIN"])
    assert nginx_vars.tls(scope) == {
        "version": "TLSv1.2",
        "cipher": "ECDHE-RSA-AES128-GCM-SHA256",
        "client_verify": "SUCCESS",
    }


def test_tls_unknown_cipher_is_hex_and_unknown_version_is_absent() -> None:
    info = nginx_vars.tls(_tls(tls_version=0x0303, cipher_suite=0xC0FF))
    assert info is not None
    assert info["cipher"] == "0xC0FF"
    assert nginx_vars.tls(_tls(tls_version=None, cipher_suite=0x1301)) is None


def test_tls_without_cipher_leaves_cipher_absent() -> None:
    assert nginx_vars.tls(_tls(tls_version=0x0304)) == {
        "version": "TLSv1.3",
        "client_verify": "NONE",
    }


# -- rules the mutation run (scripts/mutation) found unheld ------------------------------


def test_a_scope_without_raw_path_root_path_or_path_is_the_root() -> None:
    """ASGI's defaults: ``path`` "/" and ``root_path`` "" when the server gives none."""
    assert nginx_vars.request_uri({"type": "http"}) == "/"
    assert nginx_vars.request_uri({"type": "http", "path": "/a b"}) == "/a%20b"


def test_an_absolute_form_after_a_root_path_with_path_characters_is_cut_after_it() -> None:
    # root_path is quoted as a path is (";", ":", "@"… stay) before it is matched.
    scope = _scope(raw_path=b"/v1;x:y@zhttp://h/p", root_path="/v1;x:y@z")
    assert nginx_vars.target(scope)[:2] == (b"/v1;x:y@z/p", b"h")


@pytest.mark.parametrize(
    ("raw_path", "uri"),
    [
        (b"host:80/a@b", b"host:80/a@b"),  # an "@" after the first "/" is no userinfo
        (b"host:80/a@b/c", b"host:80/a@b/c"),
        (b"a@b@host:80", b"host:80"),  # userinfo ends at the last "@"
        (b"@host:80", b"host:80"),
        (b"u:s3cr3t@", b""),
    ],
)
def test_userinfo_of_another_target_ends_at_its_last_at_before_the_first_slash(
    raw_path: bytes, uri: bytes
) -> None:
    assert nginx_vars.target(_scope(raw_path=raw_path))[:2] == (uri, None)


@pytest.mark.parametrize(
    ("raw_path", "uri", "named"),
    [
        (b"http://h/x@y", b"/x@y", b"h"),  # an "@" in the path is not userinfo
        (b"http://a@b@h:1/x", b"/x", b"h:1"),  # the host starts after the last "@"
    ],
)
def test_the_host_of_an_absolute_form_follows_the_last_at_of_its_authority(
    raw_path: bytes, uri: bytes, named: bytes
) -> None:
    assert nginx_vars.target(_scope(raw_path=raw_path))[:2] == (uri, named)


def test_host_with_a_parsed_target_does_not_parse_the_scope_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scope = _scope(raw_path=b"http://Named.example/x")
    parsed = nginx_vars.target(scope)

    def no_parsing(scope: Any) -> nginx_vars.Target:
        raise AssertionError("target() called again")

    monkeypatch.setattr(nginx_vars, "target", no_parsing)
    assert nginx_vars.host(scope, parsed) == "named.example"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"X.Example.COM", "x.example.com"),  # only spaces are trimmed, no other character
        (b"[::1]x]", "[::1]"),  # an IPv6 literal ends at its first "]"
        (b"[]:80", "[]"),
    ],
)
def test_host_name_rules(value: bytes, expected: str) -> None:
    assert nginx_vars.host(_scope(headers=[(b"host", value)])) == expected


def test_request_length_chunked_stays_chunked_after_other_headers_of_its_length() -> None:
    # "x-forwarded-proto" has 17 bytes, as "transfer-encoding" does.
    headers = [(b"transfer-encoding", b"chunked"), (b"x-forwarded-proto", b"https")]
    head = b"GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\nx-forwarded-proto: https\r\n\r\n"
    scope = _scope(raw_path=b"/", headers=headers)
    assert nginx_vars.request_length(_captured(scope, body_read=5)) == len(
        head + b"5\r\nhello\r\n0\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("value", "chunked"),
    [(b"gzip,  chunked \t", True), (b"chunked, gzip", False), (b"chunkedX", False)],
)
def test_request_length_is_chunked_when_chunked_is_the_last_coding(
    value: bytes, chunked: bool
) -> None:
    scope = _scope(raw_path=b"/", headers=[(b"transfer-encoding", value)])
    head = len(b"GET / HTTP/1.1\r\ntransfer-encoding: \r\n\r\n") + len(value)
    framing = len(b"5\r\n\r\n0\r\n\r\n") if chunked else 0
    assert nginx_vars.request_length(_captured(scope, body_read=5)) == head + 5 + framing


def test_status_line_sizes_are_computed_then_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nginx_vars, "_STATUS_LINES", {})
    request = _captured(_scope(), status=201, response_headers=[])
    size = len(b"HTTP/1.1 201 Created\r\n\r\n")
    assert nginx_vars.bytes_sent(request) == size
    cache = nginx_vars._STATUS_LINES
    assert cache == {201: size - 2}
    assert nginx_vars.bytes_sent(request) == size


def test_headers_keep_only_the_first_when_the_limit_is_one() -> None:
    raw = [(b"x-a", b"1"), (b"x-b", b"2")]
    assert nginx_vars.headers(raw, max_headers=1) == {"x-a": "1"}
    assert nginx_vars.request_headers(raw, max_headers=1) == {"x-a": "1"}
