"""Instructions per request, counted by callgrind: repeatable on a noisy host, where CPU
times are not.

Each variant is run in-process under ``valgrind --tool=callgrind`` twice (``--warm`` +
``--few`` and ``--warm`` + ``--many`` requests); the difference over ``--many - --few``
requests is one request's instructions, start-up and warm-up cancelled out. Counts are
user-space instructions of every thread (the publisher's and librdkafka's included),
not time: a system call or a cache miss counts as what the code around it executes.

- ``--door asgi``: the Starlette hello-world of ``bench/apps.py`` on a uvloop loop with
  the wrk request's scope, in the stages of ``bench/breakdown.py`` (``bare``,
  ``passthrough``, ``request_path``, ``publisher_native``, ``aiokafka``, ``confluent``,
  ``json_1k`` and ``bodies``; see there).
- ``--door wsgi``: the Flask hello-world of ``bench/flask_apps.py`` with a gunicorn-like
  environ: ``bare``; ``request_path`` (the ``KafkaLog`` extension, the hand-over to the
  buffer a no-op); ``full`` (published by the background thread too, broker up).

    python -m bench.instructions --door asgi     # needs valgrind; starts a broker
    python -m bench.instructions --door wsgi --variants bare,full
    python -m bench.instructions --variants request_path --python-capture   # A/B

``--python-capture`` records ASGI requests in the Python ``ASGIRequest`` even when the
native module is installed (the compiled capture's own effect, everything else equal).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import kafka_bootstrap

VARIANTS = {
    "asgi": (
        "bare",
        "passthrough",
        "request_path",
        "publisher_native",
        "aiokafka",
        "confluent",
        "json_1k",
        "bodies",
    ),
    "wsgi": ("bare", "request_path", "full"),
}


def environ() -> dict[str, object]:
    """``GET /hello/world?a=1&b=2`` as gunicorn's sync worker hands it over."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/hello/world",
        "QUERY_STRING": "a=1&b=2",
        "RAW_URI": "/hello/world?a=1&b=2",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "54321",
        "SERVER_SOFTWARE": "gunicorn",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "wrk/4.1.0 (kafka-log-middleware bench)",
        "HTTP_ACCEPT": "application/json",
        "HTTP_X_REQUEST_SOURCE": "bench",
        "HTTP_AUTHORIZATION": "Bearer bench-token-0123456789",
    }


def serve_wsgi(variant: str, warm: int, count: int) -> None:
    """Run in the child (under valgrind): ``warm`` + ``count`` requests of ``variant``."""
    from bench.flask_apps import build
    from kafka_log_middleware.buffer import LogBuffer

    if variant == "request_path":
        LogBuffer.put_threadsafe = lambda self, item: None  # type: ignore[method-assign]
    app = build("bare" if variant == "bare" else "middleware")

    def start_response(status: str, headers: object, exc_info: object = None) -> Any:
        return lambda data: None

    for n in range(warm + count):
        result = app(environ(), start_response)
        for _ in result:
            pass
        getattr(result, "close", lambda: None)()
        if n == warm:
            time.sleep(0.2)  # the publisher's first batches are out before counting
    time.sleep(1.5)  # the last entries are published


def serve_asgi(variant: str, warm: int, count: int) -> None:
    """Run in the child (under valgrind): ``warm`` + ``count`` requests of ``variant``,
    every entry settled (delivered, or dropped for ``request_path``) before the end."""
    import uvloop

    from bench import breakdown

    bootstrap = os.environ["KAFKA_LOG_BOOTSTRAP_SERVERS"]
    spool = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    make = breakdown.stages(bootstrap, True, spool)[variant]
    acking = breakdown.acking_producers() if variant.startswith("publisher_") else None
    with acking or contextlib.nullcontext():
        app, middleware = make()
        traffic = breakdown.STAGE_TRAFFIC.get(variant, breakdown.GET)
        left = 1 if variant == "request_path" else 0

        async def run() -> None:
            await breakdown._drive(app, warm, traffic)
            if middleware is not None:
                await breakdown._settled(middleware, left, 120)
            await breakdown._drive(app, count, traffic)
            if middleware is not None:
                await breakdown._settled(middleware, left, 120)
                await middleware.aclose()

        uvloop.run(run())


_PYTHON_CAPTURE = "BENCH_PYTHON_CAPTURE"
"""Set in the child's environment by ``--python-capture``."""


def instructions(door: str, variant: str, warm: int, count: int, env: dict[str, str]) -> int:
    """Total instructions of one run under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.instructions",
            "--child",
            door,
            variant,
            str(warm),
            str(count),
        ]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
        if match is None:
            raise RuntimeError("callgrind wrote no total")
        return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--door", choices=sorted(VARIANTS), default="asgi")
    parser.add_argument("--variants", help="comma-separated (default: all of the door's)")
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--few", type=int, default=200)
    parser.add_argument("--many", type=int, default=1200)
    parser.add_argument(
        "--python-capture",
        action="store_true",
        help="record ASGI requests in the Python ASGIRequest, not the compiled capture",
    )
    args = parser.parse_args(argv)
    if args.child:
        door, variant, warm, count = args.child
        if os.environ.get(_PYTHON_CAPTURE):
            from kafka_log_middleware import asgi

            asgi.NativeASGIRequest = None
        serve = serve_asgi if door == "asgi" else serve_wsgi
        serve(variant, int(warm), int(count))
        return 0
    variants = args.variants.split(",") if args.variants else list(VARIANTS[args.door])
    unknown = set(variants) - set(VARIANTS[args.door])
    if unknown:
        parser.error(f"unknown variants for --door {args.door}: {', '.join(sorted(unknown))}")
    if "bare" not in variants:
        variants.insert(0, "bare")
    with kafka_bootstrap() as (bootstrap, broker, _):
        env = os.environ | {
            "KAFKA_LOG_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_LOG_TOPIC": f"bench-instructions-{args.door}",
            _PYTHON_CAPTURE: "1" if args.python_capture else "",
        }
        print(f"broker: {broker}", flush=True)
        counts = {}
        for variant in variants:
            few = instructions(args.door, variant, args.warm, args.few, env)
            many = instructions(args.door, variant, args.warm, args.many, env)
            counts[variant] = (many - few) / (args.many - args.few)
            print(f"  {variant}: {counts[variant]:,.0f}", flush=True)
        print("| variant | instructions per request | over bare |")
        print("|---|---:|---:|")
        for variant, count in counts.items():
            print(f"| {variant} | {count:,.0f} | {count - counts['bare']:+,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
