"""``KafkaLog``: the Flask extension, a thin shell over the WSGI door.

``KafkaLog(app)`` or, with an application factory, ``kafka_log.init_app(app)``: wraps
``app.wsgi_app`` in a ``KafkaLogWSGIMiddleware`` configured from
``app.config["KAFKA_LOG"]`` (a dict of Kong's field names, or a ``KafkaLogConfig``),
keeps it in ``app.extensions["kafka_log"]``, and records the matched ``url_rule`` as the
entry's route (``name``: the endpoint, ``paths``: the rule, ``methods``). The route is
recorded by a subclass of ``app.request_class`` that ``init_app`` puts in its place: set
your own ``request_class`` before ``init_app``, not after.
"""

from __future__ import annotations

from typing import Any, Unpack

from flask import Flask, Request
from werkzeug.routing import Rule

from .config import KafkaLogConfig, KafkaLogFields
from .publisher import Resolver
from .routes import MatchedRoute
from .wsgi import ROUTE_KEY, KafkaLogWSGIMiddleware

EXTENSION = "kafka_log"
"""The key of the app's middleware in ``app.extensions``."""
_ROUTE_ATTR = "_kafka_log_route"
"""Where a ``Rule`` keeps its ``MatchedRoute``."""


class KafkaLog:
    """Log every request of a Flask app to Kafka, in Kong's format.

    Configuration: ``config`` or ``**fields`` given here win over
    ``app.config["KAFKA_LOG"]``; a bad one raises at ``init_app``, naming the field.
    """

    def __init__(
        self,
        app: Flask | None = None,
        config: KafkaLogConfig | None = None,
        *,
        config_resolver: Resolver | None = None,
        **fields: Unpack[KafkaLogFields],
    ) -> None:
        self._config = config
        self._fields = fields
        self._resolver = config_resolver
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` and record routes; the middleware goes to ``app.extensions``."""
        if EXTENSION in app.extensions:
            raise RuntimeError("KafkaLog is already set up on this app")
        config = self._config
        if config is None and not self._fields:
            config = _settings(app.config.get("KAFKA_LOG"))
        middleware = KafkaLogWSGIMiddleware(
            app.wsgi_app,
            config,
            config_resolver=self._resolver,
            **self._fields,
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION] = middleware
        app.request_class = _recording(app.request_class)

    @staticmethod
    def middleware(app: Flask) -> KafkaLogWSGIMiddleware:
        """The app's middleware (for ``stats()``, ``update_config()``, ``close()``)."""
        middleware: KafkaLogWSGIMiddleware = app.extensions[EXTENSION]
        return middleware


def _settings(settings: Any) -> KafkaLogConfig:
    """``app.config["KAFKA_LOG"]`` as a config (absent: the environment's, see ``from_env``)."""
    if settings is None:
        return KafkaLogConfig.from_env()
    return KafkaLogConfig.from_settings(settings, 'app.config["KAFKA_LOG"]')


def _recording(request_class: type[Request]) -> type[Request]:
    """``request_class`` whose ``url_rule``, set by Flask when it matched the request,
    also records the rule's route in the environ: the cheapest place to learn it (a
    ``before_request`` function costs Flask's hook dispatch on every request)."""
    if isinstance(request_class.__dict__.get("url_rule"), _RouteRecorder):
        return request_class

    def __init__(self: Request, *args: Any, **kwargs: Any) -> None:
        request_class.__init__(self, *args, **kwargs)
        self.__dict__["url_rule"] = None  # until Flask matches the request (see _RouteRecorder)

    namespace = {
        "url_rule": _RouteRecorder(),
        "__init__": __init__,
        "__module__": request_class.__module__,
    }
    return type(request_class.__name__, (request_class,), namespace)


class _RouteRecorder:
    """The ``url_rule`` attribute of ``_recording``'s request classes: a data descriptor
    without ``__get__``, so that reading it (Flask does, several times per request)
    finds the request's own value, without a Python call; setting it records the route."""

    def __set__(self, request: Request, rule: Rule | None) -> None:
        request.__dict__["url_rule"] = rule
        if rule is not None:
            request.environ[ROUTE_KEY] = _route_of(rule)


def _route_of(rule: Rule) -> MatchedRoute:
    """The route of ``rule``, made once per rule (an app has a fixed set of them)."""
    route: MatchedRoute | None = getattr(rule, _ROUTE_ATTR, None)
    if route is None:
        route = MatchedRoute(rule.endpoint, rule.rule, rule.methods)
        setattr(rule, _ROUTE_ATTR, route)
    return route
