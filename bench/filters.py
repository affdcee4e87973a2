"""What ``exclude_paths`` costs on the request path, in-process, side by side.

1. The check alone (``timeit``), as the doors make it: a config without filters (a length
   test), exact paths (a set lookup), a ``/**`` prefix, a ``*`` glob; hit and miss.
2. A request through the ASGI door (a raw hello app, called directly on a uvloop loop):
   ``bare`` (the app alone), ``passthrough`` (under an empty pure ASGI middleware: what
   any middleware layer costs), ``excluded`` (its path in ``exclude_paths``), and
   ``request_path`` (logged; the buffer bound is reached so only the request path runs,
   as in ``bench.breakdown``). CPU µs per request, the fastest of interleaved rounds.

    python -m bench.filters --requests 50000   # writes bench/results/filters.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import timeit
from typing import Any

import uvloop

from bench.apps import Passthrough
from bench.common import (
    closed_port,
    discard,
    environment,
    hello_app,
    http_scope,
    receive_request,
    write_json,
)
from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from kafka_log_middleware.filters import excluded
from kafka_log_middleware.types import ASGIApp

PATH = "/hello/world"
"""The bench request's path."""
CHECKS = {  # name → (exclude_paths, path)
    "no filters": ((), PATH),
    "exact, hit": (("/health", "/metrics", PATH), PATH),
    "exact, miss": (("/health", "/metrics"), PATH),
    "prefix /**, hit": (("/health", "/hello/**"), PATH),
    "prefix /**, miss": (("/health", "/static/**"), PATH),
    "glob *, hit": (("/health", "/h*/world"), PATH),
    "glob *, miss": (("/health", "/v*/status"), PATH),
}


def config(**fields: Any) -> KafkaLogConfig:
    return KafkaLogConfig(bootstrap_servers=(f"127.0.0.1:{closed_port()}",), topic="t", **fields)


def check_ns(number: int) -> dict[str, float]:
    """ns per check, as the doors make it: ``paths and excluded(paths, path)``."""
    out = {}
    for name, (patterns, path) in CHECKS.items():
        paths = config(exclude_paths=patterns).exclude_paths
        scope = {"path": path}
        stmt = "paths and excluded(paths, scope.get('path', ''))"
        names = {"paths": paths, "excluded": excluded, "scope": scope}
        best = min(timeit.repeat(stmt, globals=names, number=number, repeat=5))
        out[name] = best / number * 1e9
    return out


async def _drive(app: ASGIApp, count: int) -> float:
    """CPU seconds for ``count`` requests through ``app``."""
    cpu = time.process_time()
    for start in range(0, count, 256):
        for _ in range(min(256, count - start)):
            await app(http_scope(), receive_request, discard)
        await asyncio.sleep(0)
    return time.process_time() - cpu


async def doors(count: int, rounds: int) -> dict[str, float]:
    """CPU µs per request: the bare app, an excluded request, a logged one's request path."""
    apps: dict[str, tuple[ASGIApp, KafkaLogMiddleware | None]] = {
        "bare": (hello_app, None),
        "passthrough": (Passthrough(hello_app), None),
    }
    for name, fields in (
        ("excluded", {"exclude_paths": ("/health", PATH)}),
        ("request_path", {"producer_async_buffering_limits_messages_in_memory": 1}),
    ):
        door = KafkaLogMiddleware(hello_app, config(**fields))
        apps[name] = (door, door)
    best = dict.fromkeys(apps, float("inf"))
    for app, _ in apps.values():
        await _drive(app, count // 10)  # warm up (and start the publishers)
    for _ in range(rounds):
        for name, (app, _) in apps.items():
            best[name] = min(best[name], await _drive(app, count) / count * 1e6)
    for name, (_, middleware) in apps.items():
        if middleware is not None:
            stats = middleware.stats()
            if name == "excluded" and (stats["enqueued"] or not stats["skipped"]):
                raise RuntimeError(f"excluded requests were enqueued: {stats}")
            await middleware.aclose()
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    checks = check_ns(1_000_000)
    per_request = uvloop.run(doors(args.requests, args.rounds))
    print("exclude_paths check alone (ns, the doors' expression):")
    for name, ns in checks.items():
        print(f"  {name:18} {ns:6.0f}")
    bare = per_request["bare"]
    print("through the ASGI door (CPU µs per request, raw hello app):")
    for name, us in per_request.items():
        print(f"  {name:18} {us:6.2f}  (+{us - bare:.2f} over bare)")
    data = {"check_ns": checks, "request_us": per_request, "environment": environment()}
    print(f"  {write_json('filters.json', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
