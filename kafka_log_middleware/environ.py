"""A WSGI environ, snapshotted as the ASGI-shaped scope the serializer reads.

The WSGI door never keeps the environ (servers such as uWSGI reuse it, and it holds
the input stream): it copies the facts a Kong entry needs into a small dict with
ASGI's keys, on the request path. What WSGI cannot tell is documented in the README:
the server has already folded repeated request headers into one and changed the case
and the ``-``/``_`` of every header name; the ``raw_path`` is the server's
``RAW_URI``/``REQUEST_URI`` when it gives one, else the quoted path.
"""

from __future__ import annotations

from typing import Any

from .types import Scope

_UNSEEN = b""
_HEADER_NAMES: dict[str, bytes | None] = {
    "CONTENT_TYPE": b"content-type",
    "CONTENT_LENGTH": b"content-length",
}
"""Environ keys seen → their ASGI header name, or None for what is no header (grows with
the keys seen, up to ``_MAX_HEADER_NAMES``: one dict lookup per key on the request path)."""
_MAX_HEADER_NAMES = 1024


def scope_of(environ: dict[str, Any]) -> Scope:
    """The ASGI HTTP scope of ``environ``'s request (a copy: nothing of ``environ`` kept)."""
    headers: list[tuple[bytes, bytes]] = []
    append = headers.append
    names = _HEADER_NAMES
    for key, value in environ.items():
        name = names.get(key, _UNSEEN)
        if name is None:
            continue
        if name is _UNSEEN:
            name = _header_name(key)
            if name is None:
                continue
        if type(value) is str and value:  # CONTENT_* may be present but empty
            append((name, value.encode("latin-1", "replace")))
    get = environ.get
    protocol: str = get("SERVER_PROTOCOL", "HTTP/1.1")
    scope: Scope = {
        "type": "http",
        "http_version": protocol[5:] if protocol[:5] == "HTTP/" else protocol,
        "method": get("REQUEST_METHOD", "GET"),
        "scheme": get("wsgi.url_scheme", "http"),
        "path": _unwsgi(get("PATH_INFO", "")) or "/",
        "query_string": get("QUERY_STRING", "").encode("latin-1", "replace"),
        "root_path": _unwsgi(get("SCRIPT_NAME", "")),
        "headers": headers,
        "client": _address(get("REMOTE_ADDR"), get("REMOTE_PORT")),
        "server": _address(get("SERVER_NAME"), get("SERVER_PORT")),
    }
    raw = get("RAW_URI") or get("REQUEST_URI")
    if raw:
        scope["raw_path"] = raw.encode("latin-1", "replace").partition(b"?")[0]
    return scope


def request_path(environ: dict[str, Any]) -> str:
    """The request's whole path (``SCRIPT_NAME`` + ``PATH_INFO``), decoded as ASGI's
    ``scope["path"]`` is: what ``exclude_paths`` is matched against."""
    get = environ.get
    return _unwsgi(get("SCRIPT_NAME", "") + get("PATH_INFO", "")) or "/"


def _header_name(key: str) -> bytes | None:
    """``HTTP_X_FORWARDED_FOR`` → ``b"x-forwarded-for"``, other keys → None; remembered.
    A character beyond latin-1 (a server that upper-cased the micro sign) becomes ``?``."""
    name = None
    if key[:5] == "HTTP_":
        name = key[5:].replace("_", "-").lower().encode("latin-1", "replace")
    if len(_HEADER_NAMES) < _MAX_HEADER_NAMES:
        _HEADER_NAMES[key] = name
    return name


def _unwsgi(value: str) -> str:
    """A PEP 3333 "bytes as latin-1" string as the text ASGI gives (UTF-8)."""
    if value.isascii():
        return value
    return value.encode("latin-1", "replace").decode("utf-8", "replace")


def _address(host: Any, port: Any) -> tuple[str, int | None] | None:
    if not host:
        return None
    try:
        return (host, int(port)) if port else (host, None)
    except ValueError:
        return (host, None)
