"""Instructions per request of the WSGI door, counted by callgrind: repeatable on a
noisy host, where CPU times are not.

The Flask hello-world of ``bench/flask_apps.py`` is called in-process with a
gunicorn-like environ, under ``valgrind --tool=callgrind``, twice per variant (``--warm``
+ ``--few`` and ``--warm`` + ``--many`` requests); the difference over ``--many -
--few`` requests is one request's instructions, start-up and warm-up cancelled out.
Variants: ``bare``; ``request_path`` (the ``KafkaLog`` extension, the hand-over to the
buffer a no-op: what the request itself costs); ``full`` (the entry published by the
background thread too, broker up). Counts are user-space instructions, not time: a
system call or a cache miss counts as what the code around it executes.

    python -m bench.wsgi_instructions            # needs valgrind; starts a broker for "full"
"""

from __future__ import annotations

import argparse
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

VARIANTS = ("bare", "request_path", "full")


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


def serve(variant: str, warm: int, count: int) -> None:
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


def instructions(variant: str, warm: int, count: int, env: dict[str, str]) -> int:
    """Total instructions of one run under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.wsgi_instructions",
            "--child",
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
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--few", type=int, default=200)
    parser.add_argument("--many", type=int, default=1200)
    args = parser.parse_args(argv)
    if args.child:
        serve(args.child[0], int(args.child[1]), int(args.child[2]))
        return 0
    with kafka_bootstrap() as (bootstrap, broker, _):
        env = os.environ | {
            "KAFKA_LOG_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_LOG_TOPIC": "bench-wsgi-instructions",
        }
        print(f"broker: {broker}")
        counts = {}
        for variant in VARIANTS:
            few = instructions(variant, args.warm, args.few, env)
            many = instructions(variant, args.warm, args.many, env)
            counts[variant] = (many - few) / (args.many - args.few)
        print("| variant | instructions per request | over bare |")
        print("|---|---:|---:|")
        for variant, count in counts.items():
            print(f"| {variant} | {count:,.0f} | {count - counts['bare']:+,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
