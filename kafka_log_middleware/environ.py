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

from .native import module as _native
from .types import Scope

_SPECIAL_HEADERS = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}
_PLANS: dict[tuple[str, ...], tuple[tuple[str, bytes], ...]] = {}
"""An environ's keys, in order → its header keys and their ASGI names. A server gives
each client the same keys request after request, so a few plans serve nearly every
request (one tuple and one lookup instead of a look at every key); up to ``_MAX_PLANS``
are kept, other environs are planned afresh each time."""
_MAX_PLANS = 256


def scope_of(environ: dict[str, Any], native: bool = False) -> Scope:
    """The ASGI HTTP scope of ``environ``'s request (a copy: nothing of ``environ`` kept).

    With ``native`` (a config's ``native_serializer``) and the compiled module
    installed, the same dict comes from one native call when it can.
    """
    if native and _native is not None:
        scope: Scope | None = _native.scope_of(environ)
        if scope is not None:
            return scope
    keys = tuple(environ)
    plan = _PLANS.get(keys)
    if plan is None:
        plan = _plan(keys)
    headers: list[tuple[bytes, bytes]] = []
    append = headers.append
    for key, name in plan:
        value = environ[key]
        if type(value) is str and value:  # CONTENT_* may be present but empty
            append((name, value.encode("latin-1", "replace")))
    get = environ.get
    protocol: str = get("SERVER_PROTOCOL", "HTTP/1.1")
    scope = {
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


def _plan(keys: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
    """The header keys among ``keys``, in order, with their ASGI names; remembered."""
    plan = tuple((key, name) for key in keys if (name := _header_name(key)) is not None)
    if len(_PLANS) < _MAX_PLANS:
        _PLANS[keys] = plan
    return plan


def request_path(environ: dict[str, Any]) -> str:
    """The request's whole path (``SCRIPT_NAME`` + ``PATH_INFO``), decoded as ASGI's
    ``scope["path"]`` is: what ``exclude_paths`` is matched against."""
    get = environ.get
    return _unwsgi(get("SCRIPT_NAME", "") + get("PATH_INFO", "")) or "/"


def _header_name(key: str) -> bytes | None:
    """``HTTP_X_FORWARDED_FOR`` → ``b"x-forwarded-for"``, other keys (but ``CONTENT_*``)
    → None. A character beyond latin-1 (a server that upper-cased the micro sign)
    becomes ``?``."""
    if key[:5] == "HTTP_":
        return key[5:].replace("_", "-").lower().encode("latin-1", "replace")
    return _SPECIAL_HEADERS.get(key)


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
