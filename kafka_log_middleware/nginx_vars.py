"""The nginx variables and ngx APIs Kong's serializers read, rebuilt from ASGI facts.

Each function reproduces one variable (``$request_uri``, ``$host``, ``$request_length``,
``$bytes_sent``…) or one OpenResty API (``ngx.req.get_uri_args``, ``ngx.req.get_headers``)
with the same rules, so that the entry has the values Kong would log.
"""

from __future__ import annotations

import http
import os
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, unquote_to_bytes

from .types import Scope

if TYPE_CHECKING:
    from .capture import CapturedRequest

MAX_ARGS = 100
"""``lua_max_uri_args`` default: Kong logs at most this many query arguments."""
MAX_HEADERS = 100
"""``lua_max_req_headers`` default: Kong logs at most this many headers."""
SERVER_NAME = "kong"
"""``$host`` of a request that names no host: the ``server_name`` of Kong's proxy server."""

SERVER_ERROR_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"21"),
    (b"connection", b"close"),
)
"""Headers of the 500 response uvicorn sends when the app raised before responding."""
SERVER_ERROR_BODY = b"Internal Server Error"
"""Body of that response."""

_REASONS: dict[int, str] = {s.value: s.phrase for s in http.HTTPStatus}
_STATUS_LINES: dict[int, int] = {}
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")
# Header name characters nginx accepts: letters, digits, "-" and, as Kong turns on
# `underscores_in_headers`, "_". Names with any other byte are ignored (ignore_invalid_headers).
_NAME_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

_TLS_VERSIONS = {
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
}
# IANA cipher suite id → OpenSSL name, as in nginx's $ssl_cipher.
_CIPHERS = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
    0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
    0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
    0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
    0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305",
    0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
    0xCCAA: "DHE-RSA-CHACHA20-POLY1305",
    0x009E: "DHE-RSA-AES128-GCM-SHA256",
    0x009F: "DHE-RSA-AES256-GCM-SHA384",
    0xC023: "ECDHE-ECDSA-AES128-SHA256",
    0xC024: "ECDHE-ECDSA-AES256-SHA384",
    0xC027: "ECDHE-RSA-AES128-SHA256",
    0xC028: "ECDHE-RSA-AES256-SHA384",
    0xC009: "ECDHE-ECDSA-AES128-SHA",
    0xC00A: "ECDHE-ECDSA-AES256-SHA",
    0xC013: "ECDHE-RSA-AES128-SHA",
    0xC014: "ECDHE-RSA-AES256-SHA",
    0x009C: "AES128-GCM-SHA256",
    0x009D: "AES256-GCM-SHA384",
    0x003C: "AES128-SHA256",
    0x003D: "AES256-SHA256",
    0x002F: "AES128-SHA",
    0x0035: "AES256-SHA",
}


def text(raw: bytes) -> str:
    """Bytes as the JSON string Kong would emit: UTF-8, each invalid byte as its latin-1
    character.

    Kong writes the raw bytes, so UTF-8 input must stay UTF-8; an invalid byte cannot be
    valid JSON text, and latin-1 keeps one character per byte (the rest of the string
    stays readable: one stray byte does not turn it all into mojibake).
    """
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape").translate(_STRAY_BYTES)


_STRAY_BYTES = {0xDC80 + i: 0x80 + i for i in range(128)}
"""``surrogateescape``'s stand-ins for the bytes 0x80-0xFF → those bytes as latin-1."""


class Target(NamedTuple):
    """The request target as Kong's nginx reads it, from the ASGI path and query."""

    uri: bytes
    """``$request_uri``: the target as sent, path-only for an absolute-form target."""
    host: bytes | None
    """The host an absolute-form target names (it wins over the Host header), else None."""
    args: bytes
    """``$args``, what ``ngx.req.get_uri_args()`` parses: the query before any ``#``."""
    size: int
    """Bytes of the target as the client sent it (part of ``$request_length``)."""


def target(scope: Scope) -> Target:
    """The request target: ``raw_path`` (else the quoted ``root_path + path``) and ``?query``.

    nginx cuts ``$args`` at a ``#`` and, after a ``#`` in the path, sees no arguments at
    all; ``$request_uri`` keeps them as sent.
    """
    path = _raw_path(scope)
    query = scope.get("query_string") or b""
    size = len(path) + len(query) + 1 if query else len(path)
    args = query
    if b"#" in path:
        args = b""
    elif b"#" in query:
        args = query.partition(b"#")[0]
    host = None
    root = scope.get("root_path")
    if path[:1] != b"/" or root:
        path, host = _origin_form(path, root, bool(query))
    return Target(path + b"?" + query if query else path, host, args, size)


def _raw_path(scope: Scope) -> bytes:
    path: bytes | None = scope.get("raw_path")
    if path is not None:
        return path
    root = scope.get("root_path", "")
    full = scope.get("path", "/")
    if root and not full.startswith(root):
        full = root + full
    return quote(full, safe=_PATH_SAFE).encode("ascii")


def _origin_form(path: bytes, root: Any, has_query: bool) -> tuple[bytes, bytes | None]:
    """An absolute-form path (``http://user@host:port/p``) as nginx logs it: ``/p``, and its host.

    uvicorn (h11) hands the absolute form over as the path, after its ``root_path``.
    nginx's ``$request_uri`` starts at the path ("/" when there is none, nothing before
    a bare ``?query``). Userinfo, which nginx refuses, is never kept: neither from an
    absolute-form target nor from another one that does not start with ``/`` (CONNECT's
    ``host:port``, ``*``).
    """
    start = 0
    if path[:1] == b"/":
        prefix = quote(root, safe=_PATH_SAFE).encode("ascii")
        if not path.startswith(prefix):
            return path, None
        start = len(prefix)
    scheme = _SCHEME.match(path, start)
    if scheme is None:
        if start:  # the origin form, after root_path
            return path, None
        end = path.find(b"/")
        at = path.rfind(b"@", 0, end if end >= 0 else len(path))
        return path[at + 1 :], None
    authority = scheme.end()
    end = path.find(b"/", authority)
    if end < 0:
        end = len(path)
    host_start = max(path.rfind(b"@", authority, end) + 1, authority)
    return path[:start] + (path[end:] or (b"" if has_query else b"/")), path[host_start:end] or None


def request_uri(scope: Scope) -> str:
    """``$request_uri``: the original request target, not decoded, with its ``?query``."""
    return text(target(scope).uri)


def query_args(scope: Scope) -> bytes:
    """``$args``: the query string as ``ngx.req.get_uri_args()`` sees it (see :func:`target`)."""
    return target(scope).args


def host(scope: Scope, parsed: Target | None = None) -> str:
    """``$host``: the host of an absolute-form target, else the Host header's, else Kong's
    server name; without its port, lower-cased. ``parsed``: the scope's target, if known."""
    name = (parsed if parsed is not None else target(scope)).host
    if name is not None:
        return _host_name(name)
    for key, value in scope.get("headers", ()):
        if key.lower() == b"host":
            return _host_name(value)
    return SERVER_NAME


def _host_name(value: bytes) -> str:
    # ngx_http_validate_host: an IPv6 literal keeps its brackets; one trailing dot goes.
    # nginx has already trimmed the spaces around a header value.
    value = value.strip(b" ")
    if value.startswith(b"["):
        end = value.find(b"]")
        name = value[: end + 1] if end > 0 else value
    else:
        name = value.partition(b":")[0]
    if name.endswith(b"."):
        name = name[:-1]
    return text(name.lower())


def msec(seconds: float) -> int:
    """Whole milliseconds, truncated as nginx's clock is (0 for a negative span)."""
    # Rounding to 1 µs first keeps float noise (0.029 * 1000 == 28.999…) from losing one.
    return int(round(seconds * 1000, 3)) if seconds > 0 else 0


def server_port(scope: Scope) -> int | None:
    """``$server_port``: the port the server accepted the request on; None if unknown."""
    server = scope.get("server")
    if not server or server[1] is None:
        return None
    return int(server[1])


def request_length(request: CapturedRequest, parsed: Target | None = None) -> int:
    """``$request_length``: bytes of the request line, header block and body.

    Header lines count as ``name: value CRLF``, those nginx ignores included. A chunked
    body counts as one chunk: its framing is not visible to ASGI (see :func:`chunk_framing`).
    ``parsed``: the scope's target, if known.
    """
    scope = request.scope
    if parsed is None:
        parsed = target(scope)
    # "METHOD SP target SP HTTP/x.y CRLF": "HTTP/" + version is 5 + len(version).
    size = len(scope.get("method", "GET")) + parsed.size
    size += len(scope.get("http_version", "1.1")) + 9
    declared = 0
    chunked = False
    for name, value in scope.get("headers", ()):
        size += len(name) + len(value) + 4  # "name: value CRLF"
        if len(name) == 14 and name.lower() == b"content-length":
            length = declared_length(value)
            if length is not None:
                declared = length
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            # The server de-chunked the body when "chunked" is the last coding.
            chunked = value.rpartition(b",")[2].strip(b" \t").lower() == b"chunked"
    if chunked:
        return size + 2 + request.body_read + chunk_framing(request.body_read)
    return size + 2 + max(request.body_read, declared)


OFF_T_MAX = 2**63 - 1
"""The largest length nginx parses (``off_t``); beyond it, it refuses the request."""


def declared_length(value: bytes) -> int | None:
    """A ``Content-Length`` value as nginx parses it: digits only, at most ``OFF_T_MAX``;
    None for anything else (a 25-digit one included: it is never sent in full)."""
    digits = value.lstrip(b"0")
    if not value.isdigit() or len(digits) > 19:
        return None
    length = int(digits or b"0")
    return length if length <= OFF_T_MAX else None


def chunk_framing(body: int) -> int:
    """Bytes of chunked framing around ``body`` bytes sent as one chunk (none if empty).

    ``hex CRLF data CRLF``, then the last chunk ``0 CRLF CRLF``: the least framing a body
    of that size can have. More chunks, chunk extensions or trailer fields add bytes
    nginx counts and ASGI does not show.
    """
    return (len(f"{body:x}") + 4 if body else 0) + 5


def bytes_sent(request: CapturedRequest) -> int:
    """``$bytes_sent``: bytes sent to the client, status line and headers included.

    Counts what the app sent, not the headers the server adds itself (``date``,
    ``server``). No response and the client gone: 0 (nginx's 499). No response and the
    app raised or returned: the server's own 500 (uvicorn's, see ``SERVER_ERROR_*``).
    """
    status = request.status
    response_headers: Iterable[tuple[bytes, bytes]]
    if status:
        response_headers = request.response_headers
        body = _body_size(request)
    elif request.client_gone:
        return 0
    else:
        status, response_headers, body = 500, SERVER_ERROR_HEADERS, len(SERVER_ERROR_BODY)
    # nginx and uvicorn answer HTTP/1.x requests with an HTTP/1.1 status line.
    size = _status_line_size(status) + 2 + body
    for name, value in response_headers:
        size += len(name) + len(value) + 4
    return size


def _body_size(request: CapturedRequest) -> int:
    if request.scope.get("method") == "HEAD":
        return 0
    if request.file_path is not None:
        try:
            return os.stat(request.file_path).st_size
        except OSError:
            return 0
    return request.body_sent


def _status_line_size(status: int) -> int:
    size = _STATUS_LINES.get(status)
    if size is None:
        size = _STATUS_LINES[status] = len(f"HTTP/1.1 {status} {reason_phrase(status)}\r\n")
    return size


def reason_phrase(status: int) -> str:
    """The reason phrase servers send for ``status`` (Python's ``HTTPStatus``); "" if unknown."""
    return _REASONS.get(status, "")


def uri_args(
    query_string: bytes, max_args: int = MAX_ARGS, *, legacy_unescape: bool = False
) -> dict[str, Any]:
    """``ngx.req.get_uri_args(max_args)`` of ``$args``: Kong's ``request.querystring``.

    Values are URL-decoded (``+`` is a space); ``?a`` → True, ``?a=`` → "", repeats → a
    list in order; empty keys are dropped and do not count toward ``max_args`` (the FFI
    parser counts only kept args); ``max_args`` 0 means no limit. An invalid ``%``
    escape stays as sent, as in lua-nginx-module >= 0.10.20 (OpenResty >= 1.19.9.1:
    Kong >= 2.6 and 3.x); ``legacy_unescape`` drops it as the older module did (Kong 2.0
    ran 0.10.15 in OpenResty 1.15.8): ``%zz`` → ``zz``; ``%4z`` and a truncated ``%4`` vanish.
    """
    args: dict[str, Any] = {}
    if not query_string:
        return args
    unescape = _unescape_legacy if legacy_unescape else _unescape
    count = 0
    for part in query_string.split(b"&"):
        if not part:
            continue
        raw_key, eq, raw_value = part.partition(b"=")
        key = unescape(raw_key)
        if not key:
            continue
        value: str | bool = unescape(raw_value) if eq else True
        old = args.get(key)
        if old is None:
            args[key] = value
        elif type(old) is list:
            old.append(value)
        else:
            args[key] = [old, value]
        count += 1
        if count == max_args:
            break
    return args


def redact_args(query: bytes, names: frozenset[str], mark: Callable[[bytes], bytes]) -> bytes:
    """``query`` with the value of each argument named in ``names`` (as
    ``get_uri_args`` decodes names) replaced by ``mark(value)``; a valueless one stays."""
    parts = query.split(b"&")
    changed = False
    for i, part in enumerate(parts):
        raw_key, eq, raw_value = part.partition(b"=")
        if eq and raw_key and _unescape(raw_key) in names:
            parts[i] = raw_key + b"=" + mark(raw_value)
            changed = True
    return b"&".join(parts) if changed else query


def _unescape(raw: bytes) -> str:
    # ngx_http_lua_unescape_uri (>= 0.10.20): an invalid "%" escape stays literal.
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
    return text(raw)


def _unescape_legacy(raw: bytes) -> str:
    # ngx_http_lua_unescape_uri (< 0.10.20): "%" + a non-hex char drops the "%";
    # "%" + hex + non-hex drops all three; a truncated escape at the end is dropped.
    if b"%" not in raw:
        return text(raw.replace(b"+", b" "))
    out = bytearray()
    state = high = 0
    for char in raw:
        if state == 0:
            if char == 0x25:
                state = 1
            else:
                out.append(0x20 if char == 0x2B else char)
        elif state == 1:
            digit = _HEX.get(char)
            if digit is None:
                state = 0
                out.append(char)
            else:
                high, state = digit, 2
        else:
            state = 0
            digit = _HEX.get(char)
            if digit is not None:
                out.append(high * 16 + digit)
    return text(bytes(out))


def request_headers(
    raw: Iterable[tuple[bytes, bytes]], max_headers: int = MAX_HEADERS
) -> dict[str, Any]:
    """``ngx.req.get_headers(100)`` of the request headers, as Kong's nginx has them.

    nginx ignores a header whose name has a byte other than a letter, a digit, ``-`` or
    ``_`` (``ignore_invalid_headers``; Kong allows ``_``): it is neither logged nor
    counted toward ``max_headers``. Values lose the spaces around them, as nginx's parser
    trims them (tabs stay). Otherwise as :func:`headers`.
    """
    return _lua_table(raw, max_headers, True)


def headers(raw: Iterable[tuple[bytes, bytes]], max_headers: int = MAX_HEADERS) -> dict[str, Any]:
    """``ngx.req.get_headers(100)``: names lower-cased, repeats → a list in order, first 100.

    ``max_headers`` 0 means no limit, as in ngx.
    """
    return _lua_table(raw, max_headers, False)


def _lua_table(
    raw: Iterable[tuple[bytes, bytes]], max_headers: int, parsed_by_nginx: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    limit = max_headers if max_headers > 0 else -1
    count = 0
    for name, value in raw:
        if parsed_by_nginx:
            if name.translate(None, _NAME_CHARS):
                continue  # a byte other than the name characters
            value = value.strip(b" ")
        if count == limit:
            break
        count += 1
        key = name.lower().decode("latin-1")
        val = text(value)
        old = out.get(key)
        if old is None:
            out[key] = val
        elif type(old) is list:
            old.append(val)
        else:
            out[key] = [old, val]
    return out


def tls(scope: Scope) -> dict[str, str] | None:
    """``request.tls`` from the ASGI ``tls`` extension; None on plain HTTP (the key is absent).

    ``version`` is ``get_tls1_version_str()``, ``cipher`` ``$ssl_cipher`` (OpenSSL name),
    ``client_verify`` ``$ssl_client_verify``.
    """
    extensions = scope.get("extensions")
    info = extensions.get("tls") if extensions else None
    if not info:
        return None
    version = _TLS_VERSIONS.get(info.get("tls_version"))
    if version is None:
        return None
    out = {"version": version}
    cipher = info.get("cipher_suite")
    if cipher is not None:
        out["cipher"] = cipher if isinstance(cipher, str) else cipher_name(cipher)
    out["client_verify"] = "SUCCESS" if info.get("client_cert_chain") else "NONE"
    return out


def cipher_name(suite: int) -> str:
    """OpenSSL name of a TLS cipher suite id; unknown ids as ``0xC0FF``."""
    return _CIPHERS.get(suite) or f"0x{suite:04X}"
