"""Where the logging CPU goes: the middleware's cost per request, part by part, in-process.

The benchmark's Starlette app is called directly (no HTTP, no server) on a uvloop
event loop with the wrk request's scope, ``--requests`` times per stage; each stage adds
one part of the work and is timed with ``time.process_time()`` (all threads, so
librdkafka's own threads count), until every entry is delivered:

1. ``bare``: the app alone; 2. ``passthrough``: under an empty pure ASGI middleware;
3. ``request_path``: under ``KafkaLogMiddleware`` with its buffer bound reached, so the
   request path runs and nothing else (each entry is counted as dropped);
4. ``publisher_native`` / ``publisher_python``: the whole background too (building and
   encoding the entry, the publisher), handed to a producer that acknowledges at once;
5. ``aiokafka`` / ``confluent``: the same, delivered to the broker; ``metrics``: aiokafka
   with Prometheus metrics as in multiprocess mode (the worst case: files written by the
   updating thread every second, the latency of every entry observed);
6. ``json_1k``: aiokafka, with a 1 KiB JSON request body echoed back as the response (a
   Starlette route); ``bodies``: the same with ``include_request_body`` and
   ``include_response_body`` on (the bodies' cost is ``bodies`` - ``json_1k``);
7. ``at_least_once``: aiokafka with ``delivery="at_least_once"`` and the disk spool on
   but idle (the broker is up); ``spooling``: the same with the broker unreachable, so
   that every entry goes to the spool (timed until all are on disk).

The serializer alone (``encode_entry`` per captured request) is timed as well. Rounds
are interleaved; each stage's fastest round is reported (the usual estimate for CPU
micro-benchmarks: a busy host only ever adds time).

    python -m bench.breakdown --requests 30000   # writes bench/results/breakdown.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.apps import Passthrough, build
from bench.common import (
    HEADERS,
    closed_port,
    discard,
    environment,
    git_commit,
    has_module,
    http_scope,
    kafka_bootstrap,
    probe_confluent,
    receive_request,
    servers,
    write_json,
)
from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware, producers, serializer
from kafka_log_middleware.asgi import ASGIRequest, NativeASGIRequest
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.producers import Message, OnDone, Producer
from kafka_log_middleware.types import ASGIApp

SLICE = 16
"""Requests driven between two yields to the event loop (the publisher's turn)."""
WARM = 2000
"""Requests per stage before the timed ones (caches, the producer's connection)."""


class AckingProducer(Producer):
    """A producer that acknowledges every message at once: the publisher's cost alone."""

    async def _open(self) -> None:
        pass

    async def send(self, topic: str, messages: Sequence[Message], on_done: OnDone) -> None:
        on_done(len(messages), [], None, False)

    async def _shutdown(self, timeout: float) -> None:
        pass


@contextlib.contextmanager
def acking_producers() -> Iterator[None]:
    """Make the middleware's producer cache hand out ``AckingProducer``s."""
    make = producers._make
    producers._make = AckingProducer
    try:
        yield
    finally:
        producers._make = make


_ITEMS = [{"id": n, "name": f"item-{n:04d}"} for n in range(30)]
_SHORT = len(orjson.dumps({"items": _ITEMS, "pad": ""}))
JSON_1K = orjson.dumps({"items": _ITEMS, "pad": "x" * (1024 - _SHORT)})
"""A 1 KiB JSON body, both ways in the ``json_1k`` and ``bodies`` stages."""
_JSON_REQUEST = {"type": "http.request", "body": JSON_1K, "more_body": False}
_JSON_HEADERS = [
    *HEADERS,
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(JSON_1K)),
]


def json_scope() -> dict[str, Any]:
    """``POST /echo`` with the 1 KiB JSON body's headers."""
    return http_scope() | {
        "method": "POST",
        "path": "/echo",
        "raw_path": b"/echo",
        "headers": _JSON_HEADERS,
    }


async def receive_json() -> dict[str, Any]:
    """ASGI ``receive``: the 1 KiB JSON body."""
    return _JSON_REQUEST


async def _echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


def json_app() -> ASGIApp:
    """The app of the JSON stages: the request body echoed back."""
    return Starlette(routes=[Route("/echo", _echo, methods=["POST"])])


Traffic = tuple[Callable[[], dict[str, Any]], Callable[[], Any]]
"""A stage's requests: a scope factory and the ASGI ``receive``."""
GET: Traffic = (http_scope, receive_request)
JSON_TRAFFIC: Traffic = (json_scope, receive_json)
STAGE_TRAFFIC = {"json_1k": JSON_TRAFFIC, "bodies": JSON_TRAFFIC}


async def _drive(app: ASGIApp, count: int, traffic: Traffic = GET) -> None:
    scope, receive = traffic
    for start in range(0, count, SLICE):
        for _ in range(min(SLICE, count - start)):
            await app(scope(), receive, discard)
        await asyncio.sleep(0)


def _in_memory(stats: dict[str, int]) -> int:
    """Entries pending and not in the spool."""
    return stats["pending"] - stats["spooled"]


async def _settled(middleware: KafkaLogMiddleware, left: int, timeout: float) -> None:
    """Wait until at most ``left`` entries are pending in memory (the flush timer lets them
    go, to Kafka or to the spool)."""
    deadline = time.monotonic() + timeout
    # stats() is the middleware's only progress signal: poll it, bounded.
    while _in_memory(middleware.stats()) > left:
        if time.monotonic() > deadline:
            raise RuntimeError(f"entries still pending after {timeout:g} s: {middleware.stats()}")
        await asyncio.sleep(0.05)


async def _stage(
    app: ASGIApp,
    middleware: KafkaLogMiddleware | None,
    count: int,
    expected: str,
    traffic: Traffic = GET,
) -> float:
    """CPU µs per request for ``count`` requests through ``app``, entries ``expected``:
    ``"delivered"``; ``"dropped"``: the buffer bound is reached, every entry is dropped
    and the single buffered one stays pending for good; ``"spooled"``: on disk."""
    left = 1 if expected == "dropped" else 0
    await _drive(app, WARM, traffic)
    if middleware is not None:
        await _settled(middleware, left, 60)
    cpu = time.process_time()
    await _drive(app, count, traffic)
    if middleware is not None:
        await _settled(middleware, left, 60)
    used = time.process_time() - cpu
    if middleware is not None:
        stats = middleware.stats()
        if stats[expected] < count or (not left and stats["dropped"]):
            raise RuntimeError(f"unexpected accounting: {stats}")
        await middleware.aclose()
    return used / count * 1e6


def stages(
    bootstrap: str, confluent: bool, spool: Path
) -> dict[str, Callable[[], tuple[ASGIApp, Any]]]:
    """The stages in order: name → factory of (app, middleware or None)."""
    up = KafkaLogConfig(
        bootstrap_servers=servers(bootstrap), topic=f"bench-breakdown-{uuid.uuid4().hex[:8]}"
    )

    def logged(config: KafkaLogConfig, app: ASGIApp | None = None) -> tuple[ASGIApp, Any]:
        middleware = KafkaLogMiddleware(app or build("bare"), config)
        return middleware, middleware

    out: dict[str, Callable[[], tuple[ASGIApp, Any]]] = {
        "bare": lambda: (build("bare"), None),
        "passthrough": lambda: (Passthrough(build("bare")), None),
        "request_path": lambda: logged(
            KafkaLogConfig(
                bootstrap_servers=(f"127.0.0.1:{closed_port()}",),
                topic="dropped",
                producer_async_buffering_limits_messages_in_memory=1,
                shutdown_timeout=100,
            )
        ),
        "publisher_native": lambda: logged(up.replace(topic="acked")),
        "publisher_python": lambda: logged(up.replace(topic="acked", native_serializer=False)),
        "aiokafka": lambda: logged(up),
        "json_1k": lambda: logged(up, json_app()),
        "bodies": lambda: logged(
            up.replace(include_request_body=True, include_response_body=True), json_app()
        ),
    }
    if has_module("prometheus_client"):
        out["metrics"] = lambda: with_metrics(logged(up))
    if confluent:
        out["confluent"] = lambda: logged(up.replace(producer_backend="confluent"))
    spooled = {"delivery": "at_least_once", "overflow": "spool"}
    out["at_least_once"] = lambda: logged(
        up.replace(**spooled, spool_dir=str(spool / uuid.uuid4().hex))  # type: ignore[arg-type]
    )
    out["spooling"] = lambda: logged(
        KafkaLogConfig(
            bootstrap_servers=(f"127.0.0.1:{closed_port()}",),
            topic="spooled",
            spool_dir=str(spool / uuid.uuid4().hex),
            spool_sync_interval=100,
            shutdown_timeout=100,
            **spooled,  # type: ignore[arg-type]
        )
    )
    return out


def with_metrics(stage: tuple[ASGIApp, Any]) -> tuple[ASGIApp, Any]:
    """``stage`` with its middleware's metrics in prometheus_client's multiprocess mode."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # read when prometheus_client loads
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-prometheus-")
    from prometheus_client import CollectorRegistry

    from kafka_log_middleware.metrics import KafkaLogMultiprocessMetrics

    KafkaLogMultiprocessMetrics(CollectorRegistry()).add(stage[1])
    return stage


STAGE_EXPECTS = {"request_path": "dropped", "spooling": "spooled"}
"""What becomes of a stage's entries, where they are not delivered."""


def serializer_alone(count: int, native: bool) -> float:
    """µs per ``encode_entry`` of a captured benchmark request (recorded as the door
    records it: in the compiled capture for the native serializer)."""
    config = KafkaLogConfig(
        bootstrap_servers=("127.0.0.1:9092",), topic="t", native_serializer=native
    )
    app = build("bare")

    async def capture() -> list[CapturedRequest]:
        out: list[CapturedRequest] = []
        for _ in range(count):
            kind = NativeASGIRequest if native and NativeASGIRequest is not None else ASGIRequest
            request = kind(http_scope(), config, receive_request, discard)
            await app(request.scope, request.receive, request.send)
            request.detach()
            out.append(request)
        return out

    requests = uvloop.run(capture())
    cpu = time.process_time()
    for request in requests:
        serializer.encode_entry(request)
    return (time.process_time() - cpu) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    """Time every stage ``--rounds`` times, interleaved; write ``breakdown.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30_000, help="timed requests per stage")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per stage (default 5)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    env = environment()
    runs: dict[str, list[float]] = {}
    with kafka_bootstrap() as (bootstrap, broker, _pid):
        note = None
        if has_module("confluent_kafka"):
            note = uvloop.run(probe_confluent(bootstrap, f"bench-probe-{uuid.uuid4().hex[:8]}"))
        spool = Path(tempfile.mkdtemp(prefix="bench-spool-"))
        order = stages(bootstrap, note is None and has_module("confluent_kafka"), spool)
        for round_no in range(1, args.rounds + 1):
            print(f"breakdown: round {round_no}/{args.rounds}", flush=True)
            for name, make in order.items():
                with (
                    acking_producers()
                    if name.startswith("publisher_")
                    else contextlib.nullcontext()
                ):
                    app, middleware = make()
                    expected = STAGE_EXPECTS.get(name, "delivered")
                    traffic = STAGE_TRAFFIC.get(name, GET)
                    us = uvloop.run(_stage(app, middleware, args.requests, expected, traffic))
                runs.setdefault(name, []).append(us)
                print(f"  {name:18} {us:6.2f} µs/request", flush=True)
        shutil.rmtree(spool, ignore_errors=True)
    native_built = serializer._native is not None
    alone = {"python": min(serializer_alone(5000, False) for _ in range(args.rounds))}
    if native_built:
        alone["native"] = min(serializer_alone(20000, True) for _ in range(args.rounds))
    fastest = {name: min(values) for name, values in runs.items()}
    print("breakdown: fastest rounds (µs per request; + over bare)", flush=True)
    for name, us in fastest.items():
        print(f"  {name:18} {us:6.2f}  (+{us - fastest['bare']:.2f})", flush=True)
    if "bodies" in fastest:
        extra = fastest["bodies"] - fastest["json_1k"]
        print(f"  bodies on, over json_1k (1 KiB JSON both ways): {extra:+.2f} µs", flush=True)
    for kind, us in alone.items():
        print(f"  encode_entry alone, {kind}: {us:.2f} µs", flush=True)
    write_json(
        "breakdown.json",
        {
            "environment": env | {"broker": broker, "commit_at_end": git_commit()},
            "settings": vars(args) | {"slice": SLICE, "warm": WARM},
            "native_built": native_built,
            "fastest_us": fastest,
            "runs_us": runs,
            "serializer_alone_us": alone,
            "elapsed_s": round(time.monotonic() - started, 1),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
