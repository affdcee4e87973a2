"""Kong's upstream facts for gateways: what a proxying handler sent upstream, and how it went.

Without them an entry describes the wrapped app as Kong's upstream: ``upstream_uri`` is
the request's URI and ``latencies.proxy`` the app's time to respond. A handler that
proxies the request itself (a Starlette gateway over ``httpx``) reports the upstream
call with :func:`upstream`, and its entry reads like Kong's:

- ``upstream_uri``: the URI sent upstream (kong3, as Kong does, re-appends the
  request's query when it has none);
- ``upstream_status`` (kong3): the status of each try, as nginx's ``$upstream_status``
  lists them (``"502, 200"``); ``source``: ``"upstream"`` when the last try answered;
- ``latencies.proxy``: the last try's own time, from sending it to its response
  headers (Kong's ``KONG_WAITING_TIME``); -1 if it never answered;
- ``latencies.kong``: the rest before it (kong3: entry → the last try sent; kong2:
  that plus ``receive``); ``latencies.receive`` (kong3): its headers → the last body byte;
- ``tries``: one ``{ip, port, balancer_start, balancer_latency}`` per try, a try
  followed by another with ``state`` (``"next"``: it answered, ``"failed"``: it did
  not) and ``code``, as Kong's balancer records them.

Entries with upstream facts are built by the Python serializer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .capture import request_state
from .nginx_vars import msec

_perf = time.perf_counter
_wall = time.time
UPSTREAM_KEY = "kafka_log_middleware.upstream"
"""Scope/environ key of the request's :class:`Upstream`."""
FAILED_CODE = 502
"""nginx's ``$upstream_status`` for a try that got no response."""


class Try:
    """One try of the upstream: where it went, when, and what came back."""

    __slots__ = ("code", "ip", "port", "started_at", "status", "t_received", "t_sent")

    def __init__(self, ip: str, port: int) -> None:
        self.ip = ip
        self.port = port
        self.started_at = _wall()
        self.t_sent = _perf()
        self.t_received = 0.0
        self.status = 0
        """The upstream's status; 0 until its response headers arrived."""
        self.code = 0
        """What a try that got no response counts as (``FAILED_CODE`` unless told)."""

    def received(self, status: int) -> None:
        """The upstream's response headers arrived now, with ``status``."""
        self.t_received = _perf()
        self.status = status

    def failed(self, code: int = FAILED_CODE) -> None:
        """No response from this try; ``code`` as nginx records it (504: timed out)."""
        self.code = code

    def outcome(self) -> int:
        """The status this try adds to ``upstream_status``."""
        return self.status or self.code or FAILED_CODE


class Upstream:
    """A request's upstream call, as the proxying handler reports it (see :func:`upstream`)."""

    __slots__ = ("tries", "uri")

    def __init__(self) -> None:
        self.uri: str | None = None
        """The path and query sent upstream; None: the request's own."""
        self.tries: list[Try] = []

    @contextmanager
    def attempt(self, ip: str, port: int) -> Iterator[Try]:
        """Time one try of the upstream at ``ip``:``port``, sent when the block starts;
        call ``received(status)`` on it when the response headers arrive. A block left by
        an exception before that is a failed try (the exception goes on)."""
        current = Try(ip, port)
        self.tries.append(current)
        try:
            yield current
        except BaseException:
            if not current.status and not current.code:
                current.failed()
            raise

    def __repr__(self) -> str:
        return f"<Upstream tries={[t.outcome() for t in self.tries]}>"


def upstream(request_or_scope: Any, uri: str | None = None) -> Upstream:
    """This request's :class:`Upstream` record (made on first use), for a handler that
    proxies it; ``uri``: the path and query it sends upstream. Takes what
    ``set_serialize_value`` takes: a request, an ASGI scope or a WSGI environ."""
    if uri is not None and not isinstance(uri, str):
        raise TypeError(f"uri must be a str, not {type(uri).__name__}")
    state = request_state(request_or_scope, "upstream")
    record = state.get(UPSTREAM_KEY)
    if not isinstance(record, Upstream):
        state[UPSTREAM_KEY] = record = Upstream()
    if uri is not None:
        record.uri = uri
    return record


def apply_upstream(
    entry: dict[str, Any], record: Upstream, t_start: float, t_end: float, kong3: bool
) -> None:
    """Rewrite ``entry``'s upstream fields from what the handler reported."""
    if record.uri is not None:
        uri = record.uri
        if kong3 and "?" not in uri:
            query = entry["request"]["uri"].partition("?")[2]
            if query:
                uri = f"{uri}?{query}"
        entry["upstream_uri"] = uri
    tries = record.tries
    if not tries:
        return
    last = tries[-1]
    received = last.t_received
    proxy = msec(received - last.t_sent) if received else -1
    receive = msec(t_end - received) if received else 0
    kong = msec(last.t_sent - t_start)
    latencies = entry["latencies"]
    latencies["proxy"] = proxy
    if kong3:
        latencies["kong"] = kong
        latencies["receive"] = receive
        entry["upstream_status"] = ", ".join(str(t.outcome()) for t in tries)
        entry["source"] = "upstream" if last.status else "kong"
    else:
        latencies["kong"] = kong + receive
    entry["tries"] = [_try(t, t is last) for t in tries]


def _try(current: Try, last: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ip": current.ip,
        "port": current.port,
        "balancer_start": msec(current.started_at),
        "balancer_latency": 0,  # the handler chose the target before the try began
    }
    if not last:  # Kong's balancer notes a try's failure when it makes the next one
        out["state"] = "next" if current.status else "failed"
        out["code"] = current.outcome()
    return out
