"""Nothing lost silently at exit: entries still pending when the process stops without a
lifespan shutdown (``--lifespan off``, or an app whose lifespan raised after startup)
are flushed at interpreter exit, or counted in one warning when Kafka cannot take them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from tests.asgi_driver import http_scope, request
from tests.exit_app import hello
from tests.kafka_helpers import consume, unique_topic
from tests.servers import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]
REPO = Path(__file__).resolve().parent.parent


def numbers(records: list[object]) -> list[int]:
    return sorted(
        int(orjson.loads(r.value)["request"]["querystring"]["n"])  # type: ignore[attr-defined]
        for r in records
    )


async def serve(middleware: KafkaLogMiddleware, numbers: range) -> None:
    """Requests ``?n=<number>``; returns once they are encoded, waiting for the flush timer."""
    for n in numbers:
        await request(middleware, http_scope("/", query=f"n={n}".encode()))
    [producer] = middleware.producers()
    assert await producer.wait_ready(30)
    await asyncio.sleep(0.05)


def test_entries_left_when_the_loop_ended_are_flushed_at_exit(
    kafka_bootstrap: str, backend: str
) -> None:
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,),
        topic=unique_topic("exit"),
        producer_backend=backend,  # type: ignore[arg-type]
        producer_async_flush_timeout=600000,  # nothing would go before the exit
    )
    middleware = KafkaLogMiddleware(hello, config)
    asyncio.run(serve(middleware, range(20)))  # ends the loop, as a server without lifespan
    assert middleware.stats()["pending"] == 20
    assert middleware._pipeline is not None
    middleware._pipeline._exit()  # what atexit calls
    stats = middleware.stats()
    assert stats["delivered"] == 20 and stats["pending"] == 0, stats
    records = asyncio.run(consume(kafka_bootstrap, config.topic, 20, timeout=10))
    assert numbers(records) == list(range(20))


def test_a_new_loop_takes_over_what_the_ended_one_had_not_sent(
    kafka_bootstrap: str, backend: str
) -> None:
    """Served from one event loop, then another (a server restarted in the process)."""
    config = KafkaLogConfig(
        bootstrap_servers=(kafka_bootstrap,),
        topic=unique_topic("new-loop"),
        producer_backend=backend,  # type: ignore[arg-type]
        producer_async_flush_timeout=600000,
    )
    middleware = KafkaLogMiddleware(hello, config)
    asyncio.run(serve(middleware, range(5)))

    async def serve_and_close() -> None:
        await serve(middleware, range(5, 10))
        await middleware.aclose()

    asyncio.run(serve_and_close())
    stats = middleware.stats()
    assert stats["delivered"] == 10 and stats["pending"] == 0, stats
    records = asyncio.run(consume(kafka_bootstrap, config.topic, 10, timeout=10))
    assert numbers(records) == list(range(10))


def run_uvicorn(env: dict[str, str], requests: int) -> subprocess.CompletedProcess[str]:
    """Serve tests/exit_app.py without lifespan shutdown, send requests, stop it (SIGINT)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "tests.exit_app:make_app",
        "--factory",
        "--port",
        str(port),
    ]
    command += ["--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", params={"n": 0}, timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        for n in range(1, requests):
            assert httpx.get(f"http://127.0.0.1:{port}/", params={"n": n}).text == "hello"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.parametrize("how", ["lifespan-off", "lifespan-raises"])
def test_uvicorn_without_a_lifespan_shutdown_delivers_at_exit(
    kafka_bootstrap: str, backend: str, how: str
) -> None:
    topic = unique_topic("exit-uvicorn")
    env = {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_LOG_TOPIC": topic,
        "KAFKA_LOG_PRODUCER_BACKEND": backend,
        "KAFKA_LOG_PRODUCER_ASYNC_FLUSH_TIMEOUT": "600000",
        "UVICORN_LIFESPAN": "off" if how == "lifespan-off" else "auto",
        "EXIT_APP_LIFESPAN": "raise" if how == "lifespan-raises" else "",
    }
    done = run_uvicorn(env, 30)
    assert done.returncode == 0, done.stderr
    assert "Unclosed" not in done.stderr, done.stderr  # every client we made is closed
    records = asyncio.run(consume(kafka_bootstrap, topic, 30, timeout=10))
    assert numbers(records) == list(range(30))


def test_entries_kafka_cannot_take_at_exit_are_counted_in_one_warning() -> None:
    env = {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",  # nothing listens
        "KAFKA_LOG_TOPIC": "t",
        "KAFKA_LOG_SHUTDOWN_TIMEOUT": "500",
        "UVICORN_LIFESPAN": "off",
    }
    done = run_uvicorn(env, 7)
    assert done.returncode == 0, done.stderr
    assert "dropped 7 log entries (shutdown)" in done.stderr, done.stderr
