"""``KafkaLogMiddleware`` for Django's ``settings.MIDDLEWARE``, a thin shell over the core.

Configured by ``settings.KAFKA_LOG``: a dict of Kong's field names (hooks as callables
or dotted paths), or a ``KafkaLogConfig``; absent, from the environment
(``KAFKA_LOG_*``). A bad value raises ``ImproperlyConfigured`` naming the field when
Django loads its middleware (at startup). Sync and async capable: it works under
``runserver``, a WSGI server (gunicorn) and an ASGI server (uvicorn) alike; its
publisher runs in a background thread per process (``background.py``).

Each entry's route comes from ``request.resolver_match``: the view name, the URL
pattern, and for class-based views the methods they implement. ``authenticated_user``
is a ready ``consumer`` hook. Inside a process that wraps the Django application in
this package's WSGI or ASGI door, the middleware does not log a second time: it only
adds the route to the door's entry.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.utils.functional import empty
from django.utils.module_loading import import_string

from . import _log
from .background import BackgroundPipeline
from .capture import DOOR_KEY, CapturedRequest
from .config import InvalidConfig, KafkaLogConfig
from .environ import EnvironRequest
from .filters import excluded
from .routes import MatchedRoute
from .wsgi import ROUTE_KEY, _CountedInput, carry_app_facts

_perf = time.perf_counter
USER_KEY = "kafka_log_middleware.django_user"
"""Scope key of the authenticated user's ``(id, username)`` (see ``authenticated_user``)."""
_HOOK_FIELDS = ("route", "consumer", "authenticated_entity", "key", "should_log")
GetResponse = Callable[[HttpRequest], Any]


class KafkaLogMiddleware:
    """Log every request Django serves to Kafka, in Kong's format (``settings.MIDDLEWARE``).

    Put it first in ``MIDDLEWARE``, so that its timings cover the other middleware.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self._background = BackgroundPipeline(config_from_settings())
        self._server_checked = False
        if getattr(settings, "KAFKA_LOG_METRICS", False):  # Prometheus (extra "prometheus")
            from .metrics import register

            register(self)

    def __repr__(self) -> str:
        return f"KafkaLogMiddleware({self._background.pipeline.config!r})"

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        if _outer_door(request):
            response = self.get_response(request)
            _record_route_for_door(request)
            return response
        capture = self._capture(request)
        if capture is None:
            return self.get_response(request)
        response = self.get_response(request)
        _responded(capture, request, response)
        return response

    async def _acall(self, request: HttpRequest) -> Any:
        get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        if _outer_door(request):
            response = await get_response(request)
            _record_route_for_door(request)
            return response
        if not self._server_checked:
            self._server_checked = True
            _warn_if_uvicorn()
        capture = self._capture(request)
        if capture is None:
            return await get_response(request)
        response = await get_response(request)
        _responded(capture, request, response)
        return response

    def _capture(self, request: HttpRequest) -> DjangoRequest | None:
        """The request's capture; None when ``exclude_paths`` excludes it (counted)."""
        pipeline = self._background.started()
        paths = pipeline.config.exclude_paths
        if paths and excluded(paths, request.path):
            pipeline.buffer.skip_threadsafe()
            return None
        capture = DjangoRequest(request, pipeline.config, pipeline.buffer.put_threadsafe)
        reader = pipeline.span_reader
        if reader is not None:
            capture.trace_id = reader()
        if capture.request_body is not None:
            # HttpRequest reads its body (.body, .read(), .POST, …) from _stream; a view
            # may read a chunked WSGI body from wsgi.input itself.
            request._stream = _CountedInput(request._stream, capture)
            if "wsgi.input" in request.META:
                request.META["wsgi.input"] = _CountedInput(request.META["wsgi.input"], capture)
        return capture

    # -- runtime control ------------------------------------------------------

    def close(self) -> None:
        """Flush pending entries and close producers, within ``shutdown_timeout``."""
        self._background.close()

    def stats(self) -> dict[str, int]:
        """This process's counters (see ``kafka_log_middleware.KafkaLogMiddleware.stats``)."""
        return self._background.stats()


class DjangoRequest(EnvironRequest):
    """A request's facts as Django's middleware sees them: the request, the response
    object, and its ``close()`` (the end of the response, called by every handler).
    Under a WSGI server the scope is built from a snapshot of ``request.META`` (the
    environ), in the background; under an ASGI server it is a copy of the server's."""

    __slots__ = ("_hand_over",)

    def __init__(
        self, request: HttpRequest, config: KafkaLogConfig, hand_over: Callable[[Any], None]
    ) -> None:
        asgi_scope = getattr(request, "scope", None)
        super().__init__(request.META if asgi_scope is None else None, config)
        if asgi_scope is not None:
            self.scope = dict(asgi_scope)
        self._hand_over: Callable[[Any], None] | None = hand_over

    def end(self) -> None:
        """The response is closed: hand the facts to the buffer, once."""
        hand_over, self._hand_over = self._hand_over, None
        if hand_over is not None:
            self.finish()
            hand_over(self)


def _responded(capture: DjangoRequest, request: HttpRequest, response: HttpResponseBase) -> None:
    """Record the response (status, headers as the handler sends them, body) and end the
    request when the handler closes the response."""
    capture.t_response = _perf()
    capture.status = response.status_code
    headers = list(response.items())
    for cookie in response.cookies.values():  # the handler sends them after the others
        headers.append(("set-cookie", cookie.output(header="").strip()))
    capture.set_header_strs(headers)
    route = _route(request)
    if route is not None:
        capture.add_to_scope("route", route)
    # The captured scope is a copy: what views left on the request is carried over.
    carry_app_facts(getattr(request, "scope", None) or request.META, capture)
    user = _user(request)
    if user is not None:
        capture.add_to_scope(USER_KEY, user)
    if response.streaming:
        _count_stream(response, capture)
    else:
        content = response.content
        capture.body_sent = len(content)
        if capture.response_body is not None:
            capture.response_body.add(content)
    close = response.close

    def closed() -> None:
        try:
            close()
        finally:
            if response.streaming and not capture.body_sent:
                capture.body_sent = capture.content_length() or 0  # a file the server sent
            capture.end()

    response.close = closed


def _count_stream(response: Any, capture: CapturedRequest) -> None:
    stream = response.streaming_content
    if getattr(response, "is_async", False):
        response.streaming_content = _acounted(stream, capture)
    else:
        response.streaming_content = _counted(stream, capture)


def _counted(stream: Iterable[bytes], capture: CapturedRequest) -> Iterator[bytes]:
    copy = capture.response_body
    for chunk in stream:
        capture.body_sent += len(chunk)
        if copy is not None:
            copy.add(chunk)
        yield chunk


async def _acounted(stream: AsyncIterator[bytes], capture: CapturedRequest) -> AsyncIterator[bytes]:
    copy = capture.response_body
    async for chunk in stream:
        capture.body_sent += len(chunk)
        if copy is not None:
            copy.add(chunk)
        yield chunk


def _warn_if_uvicorn() -> None:
    """uvicorn ends its process with the signal that stopped it: exit hooks do not run,
    so only a lifespan shutdown can flush, and Django's handler has none."""
    if "uvicorn" in sys.modules:
        _log.logger.warning(
            "kafka_log_middleware: under uvicorn, log entries still pending when the "
            "server stops are lost (it ends the process with the signal it got, and exit "
            "hooks do not run). Wrap the application in the ASGI door, which flushes at "
            "lifespan shutdown: KafkaLogMiddleware(get_asgi_application()); keep this "
            "MIDDLEWARE entry for route names."
        )


def _outer_door(request: HttpRequest) -> bool:
    """True when this package's WSGI or ASGI door already logs the request."""
    scope = getattr(request, "scope", None)
    if scope is not None:
        return DOOR_KEY in scope
    return DOOR_KEY in request.META


def _record_route_for_door(request: HttpRequest) -> None:
    route = _route(request)
    if route is None:
        return
    scope = getattr(request, "scope", None)
    if scope is not None:
        scope["route"] = route  # the ASGI door's scope: the same dict
    else:
        request.META[ROUTE_KEY] = route  # the WSGI door's environ: the same dict


def _route(request: HttpRequest) -> MatchedRoute | None:
    """The URL pattern that matched, as Kong's route: name, ``/pattern``, methods."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return None
    pattern = getattr(match, "route", None)
    view_class = getattr(match.func, "view_class", None)
    methods = None
    if view_class is not None:  # a class-based view: the methods it implements
        methods = {m.upper() for m in view_class.http_method_names if hasattr(view_class, m)}
        if "GET" in methods:
            methods.add("HEAD")  # View.setup() answers HEAD with get()
    return MatchedRoute(match.view_name or None, "/" + pattern if pattern else None, methods)


def _user(request: HttpRequest) -> tuple[str, str] | None:
    """The authenticated user's id and username, if the app has loaded the user (never
    loaded here: that would cost a query on every request)."""
    user = request.__dict__.get("user")
    if user is None:
        return None
    wrapped = getattr(user, "_wrapped", user)  # a SimpleLazyObject until evaluated
    if wrapped is empty or not getattr(wrapped, "is_authenticated", False):
        return None
    return str(wrapped.pk), str(wrapped.get_username())


def authenticated_user(request: CapturedRequest) -> dict[str, str] | None:
    """A ``consumer`` hook: the authenticated Django user as Kong's consumer
    (``{"id", "username"}``); absent when nobody was authenticated."""
    user = request.scope.get(USER_KEY)
    if user is None:
        return None
    return {"id": user[0], "username": user[1]}


def config_from_settings() -> KafkaLogConfig:
    """``settings.KAFKA_LOG`` as a config; ``ImproperlyConfigured`` names a bad field."""
    value = getattr(settings, "KAFKA_LOG", None)
    try:
        if value is None:
            return KafkaLogConfig.from_env()
        if isinstance(value, Mapping):
            value = _import_hooks(value)
        return KafkaLogConfig.from_settings(value, "settings.KAFKA_LOG")
    except InvalidConfig as exc:
        raise ImproperlyConfigured(str(exc)) from exc


def _import_hooks(value: Mapping[str, Any]) -> dict[str, Any]:
    """Hooks given as dotted paths ("myapp.logging.consumer") are imported, and so is an
    OAUTHBEARER ``token_provider``."""
    fields = dict(value)
    for name in _HOOK_FIELDS:
        if isinstance(fields.get(name), str):
            fields[name] = _imported(name, fields[name])
    custom = fields.get("custom_fields")
    if isinstance(custom, Mapping):
        fields["custom_fields"] = {
            key: _imported(f"custom_fields.{key}", hook) if isinstance(hook, str) else hook
            for key, hook in custom.items()
        }
    authentication = fields.get("authentication")
    if isinstance(authentication, Mapping) and isinstance(
        authentication.get("token_provider"), str
    ):
        provider = _imported("authentication.token_provider", authentication["token_provider"])
        fields["authentication"] = {**authentication, "token_provider": provider}
    return fields


def _imported(field: str, path: str) -> Any:
    try:
        return import_string(path)
    except ImportError as exc:
        message = f"settings.KAFKA_LOG: {field}: cannot import {path!r} ({exc})"
        raise InvalidConfig(field, message) from None
