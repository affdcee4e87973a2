"""A WSGI environ, snapshotted as the ASGI-shaped scope the serializer reads.

The WSGI doors never keep the environ (servers such as uWSGI reuse it, and it holds
the input stream): on the request path an ``EnvironRequest`` takes a shallow copy
without the server's streams, and ``scope_of`` turns that copy into a small dict with
ASGI's keys, in the background. What WSGI cannot tell is documented in the README:
the server has already folded repeated request headers into one and changed the case
and the ``-``/``_`` of every header name; the ``raw_path`` is the server's
``RAW_URI``/``REQUEST_URI`` when it gives one, else the quoted path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .capture import CapturedRequest
from .native import module as _native
from .types import Scope

if TYPE_CHECKING:
    from .config import KafkaLogConfig

_SPECIAL_HEADERS = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}
_PLANS: dict[tuple[str, ...], tuple[tuple[str, bytes], ...]] = {}
"""An environ's keys, in order → its header keys and their ASGI names. A server gives
each client the same keys request after request, so a few plans serve nearly every
request (one tuple and one lookup instead of a look at every key); up to ``_MAX_PLANS``
are kept, other environs are planned afresh each time."""
_MAX_PLANS = 256
_STREAM_KEYS = ("wsgi.input", "wsgi.errors", "gunicorn.socket")
"""Environ keys left out of a snapshot: the server's streams and socket."""
_UNBUILT: Scope = {}
"""An ``EnvironRequest``'s scope until it is first read (never changed)."""


class EnvironRequest(CapturedRequest):
    """Facts of a request served from a WSGI environ, recorded by copying only.

    The request path takes a shallow copy of the environ (the server's streams left
    out) and the response's headers as ``str`` pairs; ``scope`` and
    ``response_headers`` are built from them on first use, in the background. Facts a
    door learns for the scope meanwhile (the route, what the app left) wait beside it
    (``add_to_scope``). With no environ (a door that has an ASGI scope), set ``scope``.
    """

    __slots__ = ("_header_strs", "_headers", "_scope", "_scope_facts", "_snapshot")

    _scope: Scope
    _headers: Iterable[tuple[bytes, bytes]] | None

    def __init__(self, environ: dict[str, Any] | None, config: KafkaLogConfig) -> None:
        snapshot: dict[str, Any] = {}
        if environ is not None:
            snapshot = environ.copy()
            for key in _STREAM_KEYS:  # the server's, valid only while it serves the request
                snapshot.pop(key, None)
        self._snapshot = snapshot
        self._scope_facts: dict[str, Any] | None = None
        self._header_strs: Iterable[tuple[str, str]] = ()
        super().__init__(_UNBUILT, config)

    @property
    def scope(self) -> Scope:
        """The request as an ASGI HTTP scope, with the facts added to it."""
        scope = self._scope
        if scope is _UNBUILT:
            scope = self._scope = scope_of(self._snapshot, self.config.native_serializer)
            if self._scope_facts:
                scope.update(self._scope_facts)
        return scope

    @scope.setter
    def scope(self, scope: Scope) -> None:
        self._scope = scope

    def add_to_scope(self, key: str, value: Any) -> None:
        """Set ``scope[key]``, without building the scope on the request path."""
        if self._scope is _UNBUILT:
            facts = self._scope_facts
            if facts is None:
                facts = self._scope_facts = {}
            facts[key] = value
        else:
            self._scope[key] = value

    @property
    def response_headers(self) -> Iterable[tuple[bytes, bytes]]:
        """The response's headers as ASGI's raw pairs (latin-1, ``?`` beyond it)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = [
                (name.encode("latin-1", "replace"), value.encode("latin-1", "replace"))
                for name, value in self._header_strs
            ]
        return headers

    @response_headers.setter
    def response_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self._headers = headers

    def set_header_strs(self, headers: Iterable[tuple[str, str]]) -> None:
        """Record the response's headers as the app gave them (``str`` pairs, a list
        nobody changes afterwards); encoded when first read."""
        self._header_strs = headers
        self._headers = None


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
