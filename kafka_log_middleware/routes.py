"""The route the framework matched, as Kong's route entity: the default ``route`` hook.

A door records the matched route in the request's ``scope["route"]``, as an object
with ``name``, ``path`` and ``methods`` attributes: Starlette's (and FastAPI's) router
puts its route there itself; the Django and Flask integrations put a ``MatchedRoute``
made from ``request.resolver_match`` or ``request.url_rule``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .capture import CapturedRequest


class MatchedRoute(NamedTuple):
    """A route as a framework integration records it in ``scope["route"]``."""

    name: str | None
    """The route's name (Kong's ``route.name``)."""
    path: str | None
    """The route's pattern (Kong's ``route.paths``, one path)."""
    methods: Collection[str] | None
    """The methods the route accepts (Kong's ``route.methods``)."""


def matched_route(request: CapturedRequest) -> dict[str, Any] | None:
    """Default ``route`` hook: the route that matched the request, as a Kong route.

    Kong's route entity gives ``name``, ``paths`` and ``methods``, read from
    ``scope["route"]``. Absent when nothing matched.
    """
    route = request.scope.get("route")
    if route is None:
        return None
    entity: dict[str, Any] = {}
    name = getattr(route, "name", None)
    if name:
        entity["name"] = name
    path = getattr(route, "path", None)
    if path is not None:
        entity["paths"] = [path]
    methods = getattr(route, "methods", None)
    if methods:
        entity["methods"] = sorted(methods)
    return entity or None


starlette_route = matched_route
"""The former name of ``matched_route`` (Starlette's router was the first to record it)."""
