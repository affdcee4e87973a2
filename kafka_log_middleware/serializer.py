"""Turn a :class:`CapturedRequest` into Kong's log entry (``kong2`` or ``kong3`` layout).

``kong2`` is the basic serializer of Kong 2.0.x, ``kong3`` ``kong.log.serialize()`` of
Kong 3.x; see ``kong-log-format.md``. A field that Kong leaves nil is absent, never null.
Runs in the background, once per request.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import orjson

from . import _log, bodies, native, nginx_vars
from .bodies import body_fields, header
from .custom_fields import EDITS_KEY, apply_edit, apply_edits, request_edits
from .gateway import UPSTREAM_KEY, Upstream, apply_upstream
from .routes import matched_route
from .tracing import trace_id

if TYPE_CHECKING:
    from .capture import CapturedRequest
    from .config import Hook, KafkaLogConfig

REDACTED = "REDACTED"


def encode_entry(request: CapturedRequest) -> bytes:
    """The entry as the JSON bytes of one Kafka message.

    With the compiled serializer installed (``kafka-log-middleware-native``) and
    ``native_serializer`` on, the same bytes come from one native call. It hands back
    to ``build_entry`` whatever it does not reproduce exactly (``custom_fields``,
    request edits, a gateway's upstream facts, unusual types in the scope), deciding
    so before any hook runs. Body fields are built here, in Python, and written by it.
    """
    if _native is not None:
        config = request.config
        last = _last_plan
        plan = last[1] if last[0] is config else _plan(config)
        if plan is not None and UPSTREAM_KEY not in request.scope:
            r = request
            out = _native.encode(
                plan, r, r.scope, r.status, r.response_headers, r.body_sent, r.body_read,
                r.file_path, r.client_gone, r.started_at, r.t_start, r.t_response, r.t_end,
                trace_id(r) if config.trace_ids else None,
                None if r.request_body is None else _request_body(r),
                None if r.response_body is None else _response_body(r),
            )  # fmt: skip
            if type(out) is bytes:
                return out
            if out is not None:
                return _finish(*out)
    return orjson.dumps(build_entry(request))


def encode_run(
    requests: list[CapturedRequest], start: int, config: KafkaLogConfig, limit: int
) -> tuple[list[tuple[bytes | None, bytes]], int, object] | None:
    """The entries of ``requests[start:]`` in one native call, while each has ``config``
    and no upstream facts, and fits ``limit`` bytes: the messages ``(None, entry)``, their
    total bytes, and what :func:`rest_of_run` needs for the request the run stopped at.
    Bodies are written natively from their ``BodyCopy`` (what only Python writes stops
    the run). None when ``config``'s entries are not built natively (``encode_entry``)."""
    if _native is None:
        return None
    last = _last_plan
    plan = last[1] if last[0] is config else _plan(config)
    if plan is None:
        return None
    tracer = trace_id if config.trace_ids else None
    run: tuple[list[tuple[bytes | None, bytes]], int, object]
    run = _native.encode_run(plan, config, requests, start, limit, UPSTREAM_KEY, tracer)
    return run


def rest_of_run(request: CapturedRequest, rest: object) -> bytes:
    """The entry of the request an :func:`encode_run` stopped at, from what it left: None
    (nothing ran for it yet), its bytes (over the limit), ``(entry, fields)``, or the
    exception its hooks raised (raised again here, as ``encode_entry`` would)."""
    if rest is None:
        return encode_entry(request)
    if type(rest) is bytes:
        return rest
    if isinstance(rest, BaseException):
        raise rest
    head, fields = cast(tuple[bytes, list[tuple[str, Any]]], rest)
    return _finish(head, fields)


# -- the compiled serializer (optional) ------------------------------------------------

# A module built from another version of this package (another protocol) is ignored.
_native = native.module

_plans: dict[int, tuple[KafkaLogConfig, Any]] = {}
"""id(config) → (config, its native Plan or None); holding the config keeps the id unique."""
_MAX_PLANS = 64
_last_plan: tuple[KafkaLogConfig | None, Any] = (None, None)
"""The entry of ``_plans`` used last: most apps have a single config."""
_native_tables: Any = None
"""The native Tables, made with the first Plan."""


def _plan(config: KafkaLogConfig) -> Any:
    """The native Plan of ``config``, made once; None when ``build_entry`` does its entries
    (``custom_fields``, for one)."""
    global _last_plan
    cached = _plans.get(id(config))
    if cached is None or cached[0] is not config:
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        cached = _plans[id(config)] = (config, _new_plan(config))
    _last_plan = cached
    return cached[1]


def _new_plan(config: KafkaLogConfig) -> Any:
    global _native_tables
    plan = None
    python_only = (
        config.redact_query_args or config.redaction_key is not None or config.custom_fields
    )
    if _native is not None and config.native_serializer and not python_only:
        try:
            if _native_tables is None:
                # The constants the entry depends on, from their Python definitions.
                _native_tables = _native.Tables(
                    reasons={code: nginx_vars.reason_phrase(code) for code in range(1000)},
                    tls_versions=nginx_vars._TLS_VERSIONS,
                    ciphers=nginx_vars._CIPHERS,
                    server_error_headers=nginx_vars.SERVER_ERROR_HEADERS,
                    server_error_body=len(nginx_vars.SERVER_ERROR_BODY),
                    redacted=REDACTED,
                    server_name=nginx_vars.SERVER_NAME,
                    edits_key=EDITS_KEY,
                    warn=warn_hook,
                    body_kind=bodies._kind,
                    body_omitted_type=bodies.OMITTED_TYPE,
                )
            plan = _native.Plan(
                _native_tables,
                kong3=config.log_format == "kong3",
                redact_headers=config.redact_headers,
                redact_response_headers=config.redact_response_headers,
                request_id_header=config.request_id_header,
                workspace=config.workspace,
                workspace_name=config.workspace_name,
                service=config.service,
                route=config.route,
                route_is_default=config.route is matched_route,
                consumer=config.consumer,
                authenticated_entity=config.authenticated_entity,
                body_content_types=config.body_content_types,
                redact_body_keys=bool(config.redact_body_keys),
            )
        except Exception:
            plan = None  # a config the native Plan cannot take: the Python path
    return plan


def _finish(head: bytes, fields: list[tuple[str, Any]]) -> bytes:
    # Hook values the native encoder does not write itself (floats, subclasses, …):
    # orjson adds them, last and in order, as the Python path does.
    entry = orjson.loads(head)
    for field, value in fields:
        entry[field] = value
    return orjson.dumps(entry)


def build_entry(request: CapturedRequest) -> dict[str, Any]:
    """The Kong log entry of one request: layout, redaction, custom fields, request edits."""
    config = request.config
    scope = request.scope
    kong3 = config.log_format == "kong3"
    answered = request.status != 0
    target = nginx_vars.target(scope)
    if config.redact_query_args:
        target = _redacted_target(target, config)
    uri = nginx_vars.text(target.uri)
    entry: dict[str, Any] = {
        "request": _request(request, target, uri, kong3),
        "upstream_uri": uri,
        "response": _response(request, kong3),
        "latencies": _latencies(request, kong3),
        "client_ip": _client_ip(scope),
        "started_at": nginx_vars.msec(request.started_at),
    }
    if kong3:
        entry["upstream_status"] = str(request.status) if answered else ""
        entry["source"] = "upstream" if answered else "kong"
        if config.workspace is not None:
            entry["workspace"] = config.workspace
        entry["workspace_name"] = config.workspace_name
    upstream = scope.get(UPSTREAM_KEY)
    if isinstance(upstream, Upstream):
        apply_upstream(entry, upstream, request.t_start, _ended_at(request), kong3)
        if config.redact_query_args and "?" in entry["upstream_uri"]:
            entry["upstream_uri"] = _redacted_uri(entry["upstream_uri"], config)
    if config.service is not None:
        entry["service"] = dict(config.service)
    for field in ("route", "consumer", "authenticated_entity"):
        hook = getattr(config, field)
        if hook is not None:
            value = _call(hook, request, field)
            if value is not None:
                entry[field] = value
    # Kong's tracing plugins add it with set_serialize_value: after the entry's own
    # fields, before the logging plugin's custom fields.
    trace = trace_id(request)
    if trace is not None:
        entry["trace_id"] = {"w3c": trace}
    for field, hook in config.custom_fields.items():
        try:
            value = hook(request)
        except Exception as exc:
            warn_hook(f"custom_fields[{field!r}]", exc)
            continue
        apply_edit(entry, field, value, "set")
    edits = request_edits(scope)
    if edits:
        apply_edits(entry, edits)
    return entry


def _request(
    request: CapturedRequest, target: nginx_vars.Target, uri: str, kong3: bool
) -> dict[str, Any]:
    scope = request.scope
    config = request.config
    headers = nginx_vars.request_headers(scope.get("headers", ()))
    _redact(headers, config.redact_headers, config, scope.get("headers", ()))
    size = nginx_vars.request_length(request, target)
    out: dict[str, Any] = {
        "uri": uri,
        "url": _url(scope, target, uri, kong3),
        # Kong 2.0 ran lua-nginx-module 0.10.15, whose unescaping drops invalid escapes.
        "querystring": nginx_vars.uri_args(target.args, legacy_unescape=not kong3),
        "method": scope.get("method", "GET"),
        "headers": headers,
        "size": size if kong3 else str(size),
    }
    tls = nginx_vars.tls(scope)
    if tls is not None:
        out["tls"] = tls
    if kong3:
        out["id"] = _request_id(request)
    if request.request_body is not None:
        out.update(_request_body(request))
    return out


def _request_body(request: CapturedRequest) -> dict[str, Any]:
    """The request's body fields (``include_request_body``)."""
    assert request.request_body is not None
    content_type = header(request.scope.get("headers", ()), b"content-type")
    config = request.config
    return body_fields(request.request_body, content_type, config, _body_mark(config))


def _response_body(request: CapturedRequest) -> dict[str, Any] | None:
    """The response's body fields (``include_response_body``); None without a response."""
    if request.response_body is None or not request.status:
        return None
    content_type = header(request.response_headers, b"content-type")
    config = request.config
    return body_fields(request.response_body, content_type, config, _body_mark(config))


def _url(scope: Any, target: nginx_vars.Target, uri: str, kong3: bool) -> str:
    scheme = scope.get("scheme", "http")
    host = nginx_vars.host(scope, target)
    port = nginx_vars.server_port(scope)
    if port is None:
        if kong3:
            return f"{scheme}://{host}{uri}"
        # nginx always knows $server_port; without one, the scheme's default port.
        port = 443 if scheme == "https" else 80
    return f"{scheme}://{host}:{port}{uri}"


def _request_id(request: CapturedRequest) -> str:
    # kong3 $kong_request_id: the configured incoming header, else a fresh uuid4.
    wanted = request.config.request_id_header
    if wanted is not None:
        name = wanted.encode("latin-1")
        for key, value in request.scope.get("headers", ()):
            if key.lower() == name:
                return nginx_vars.text(value)
    return uuid.uuid4().hex


def _response(request: CapturedRequest, kong3: bool) -> dict[str, Any]:
    status = request.status
    raw_headers: Any = request.response_headers
    if not status:
        # No response from the app: nginx logs 499 when the client left first, else the
        # server answers 500 itself.
        if request.client_gone:
            status, raw_headers = 499, ()
        else:
            status, raw_headers = 500, nginx_vars.SERVER_ERROR_HEADERS
    size = nginx_vars.bytes_sent(request)
    headers = nginx_vars.headers(raw_headers)
    config = request.config
    _redact(headers, config.redact_response_headers, config, raw_headers)
    out: dict[str, Any] = {
        "status": status,
        "headers": headers,
        "size": size if kong3 else str(size),
    }
    if request.response_body is not None:
        out.update(_response_body(request) or {})
    return out


def _redact(
    headers: dict[str, Any], names: tuple[str, ...], config: KafkaLogConfig, raw: Any
) -> None:
    """Each value of the ``names`` headers as ``"REDACTED"`` (a repeated one stays a list),
    or, with a ``redaction_key``, as its keyed hash."""
    key = config.redaction_key
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        if key is None:
            headers[name] = [REDACTED] * len(value) if isinstance(value, list) else REDACTED
            continue
        wanted = name.encode("latin-1", "replace")
        marks = [
            keyed_hash(key, raw_value.strip(b" \t"))
            for raw_name, raw_value in raw
            if raw_name.lower() == wanted
        ]
        count = len(value) if isinstance(value, list) else 1
        marks = marks[:count]
        headers[name] = marks if isinstance(value, list) else marks[0]


HASH_PREFIX = "hmac-sha256:"
"""What a redacted value starts with in the keyed-hash mode (``redaction_key``)."""


def keyed_hash(key: bytes, value: bytes) -> str:
    """``value``'s HMAC-SHA256 under ``key``, as logged in place of a redacted value: the
    same credential gives the same mark, so entries can be correlated, never reversed."""
    return HASH_PREFIX + hmac.new(key, value, hashlib.sha256).hexdigest()


def _mark(config: KafkaLogConfig) -> Callable[[bytes], bytes]:
    key = config.redaction_key
    if key is None:
        return lambda value: REDACTED.encode()
    return lambda value: keyed_hash(key, value).encode()


def _redacted_value(value: Any) -> str:
    return REDACTED


def _body_mark(config: KafkaLogConfig) -> Callable[[Any], str]:
    """A redacted JSON body value's mark: ``"REDACTED"``, or with a ``redaction_key`` the
    keyed hash of the string (of its JSON text, for another value)."""
    key = config.redaction_key
    if key is None:
        return _redacted_value
    return lambda value: keyed_hash(
        key, value.encode() if isinstance(value, str) else orjson.dumps(value)
    )


def _redacted_target(target: nginx_vars.Target, config: KafkaLogConfig) -> nginx_vars.Target:
    """``target`` with the ``redact_query_args`` values redacted in ``$request_uri`` (so in
    ``uri``, ``url``, ``upstream_uri``) and ``$args`` (so in ``querystring``)."""
    names, mark = frozenset(config.redact_query_args), _mark(config)
    path, sep, query = target.uri.partition(b"?")
    uri = path + sep + nginx_vars.redact_args(query, names, mark) if sep else target.uri
    args = nginx_vars.redact_args(target.args, names, mark)
    return target._replace(uri=uri, args=args)


def _redacted_uri(uri: str, config: KafkaLogConfig) -> str:
    """A gateway's ``upstream_uri`` with the ``redact_query_args`` values redacted."""
    path, _, query = uri.partition("?")
    raw = query.encode("utf-8", "surrogateescape")
    redacted = nginx_vars.redact_args(raw, frozenset(config.redact_query_args), _mark(config))
    return path + "?" + redacted.decode("utf-8", "surrogateescape")


def _latencies(request: CapturedRequest, kong3: bool) -> dict[str, int]:
    start = request.t_start
    responded = request.t_response
    end = _ended_at(request)
    proxy = nginx_vars.msec(responded - start) if responded else -1
    receive = nginx_vars.msec(end - responded) if responded else 0
    # Kong's own time (entry → app invoked) is 0: the middleware calls the app at once.
    kong = 0
    total = nginx_vars.msec(end - start)
    if kong3:
        return {"request": total, "proxy": proxy, "kong": kong, "receive": receive}
    return {"request": total, "proxy": proxy, "kong": kong + receive}


def _ended_at(request: CapturedRequest) -> float:
    """``perf_counter()`` at the request's end: its last byte, else its response start,
    else its start."""
    return request.t_end or request.t_response or request.t_start


def _client_ip(scope: Any) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _call(hook: Hook, request: CapturedRequest, what: str, outcome: str = "field left out") -> Any:
    try:
        return hook(request)
    except Exception as exc:
        warn_hook(what, exc, outcome)
        return None


def warn_hook(what: str, exc: Exception, outcome: str = "field left out") -> None:
    """Warn (rate-limited) that the hook ``what`` raised, and what became of the entry;
    by the exception's type only: its message may quote request data."""
    _log.warn(f"hook:{what}", "%s hook raised %s; %s", what, type(exc).__name__, outcome)


def message_key(request: CapturedRequest) -> bytes | None:
    """The Kafka message key: the ``key`` hook's result, else the ``key_query_arg`` value.

    With ``key_query_arg``, a repeated argument gives its first value, a bare ``?k`` none.
    """
    config = request.config
    if config.key is not None:
        value = _call(config.key, request, "key", "no message key")
        if value is None or isinstance(value, bytes):
            return value
        if isinstance(value, bytearray):
            return bytes(value)
        if isinstance(value, str):
            return value.encode()
        _log.warn(
            "hook:key:type",
            "key hook returned %s, not str/bytes/None; no message key",
            type(value).__name__,
        )
        return None
    name = config.key_query_arg
    if name is None:
        return None
    query = nginx_vars.query_args(request.scope)
    if not query:
        return None
    value = nginx_vars.uri_args(query, legacy_unescape=config.log_format == "kong2").get(name)
    if type(value) is list:
        value = value[0]
    return value.encode() if isinstance(value, str) else None
