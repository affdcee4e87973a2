"""Publisher: entries/s delivered to Kafka from one process, and end-to-end latency.

(a) Throughput: the middleware driven in-process (the ASGI app called directly, no
HTTP) ``--entries`` times, until ``stats()["delivered"]`` reaches that number; against
a raw aiokafka loop sending the same encoded bytes with the batch API, and, when
installed, a raw confluent-kafka loop and the middleware's confluent backend.

(b) Latency: at ``--rate`` requests/s for ``--seconds``, the time from the response's
end to the entry being read by a consumer (another process), matched by a request id
in the query string; with the default ``producer_async_flush_timeout`` (1000 ms) and a
short one (10 ms).

    python -m bench.publisher --entries 200000   # writes bench/results/publisher.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import (
    ROOT,
    discard,
    environment,
    git_commit,
    has_module,
    hello_app,
    http_scope,
    kafka_bootstrap,
    probe_confluent,
    receive_request,
    servers,
    write_json,
)
from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from kafka_log_middleware.asgi import ASGIRequest
from kafka_log_middleware.config import Backend
from kafka_log_middleware.serializer import encode_entry

T = TypeVar("T")
SLICE = 100
"""Requests driven between two yields to the event loop."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh uvloop event loop (as uvicorn would)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _topic(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:8]}"


async def _wait_delivered(middleware: KafkaLogMiddleware, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = middleware.stats()
        if stats["delivered"] + stats["dropped"] >= count:
            return stats["delivered"] >= count
        await asyncio.sleep(0.005)
    return False


# -- (a) throughput -------------------------------------------------------------------------


async def middleware_throughput(bootstrap: str, backend: Backend, entries: int) -> dict[str, Any]:
    """Drive ``entries`` requests through the middleware; time until all are delivered."""
    config = KafkaLogConfig(
        bootstrap_servers=servers(bootstrap), topic=_topic("throughput"), producer_backend=backend
    )
    middleware = KafkaLogMiddleware(hello_app, config)
    high_water = config.producer_async_buffering_limits_messages_in_memory // 2
    try:
        warm = 2000
        for _ in range(warm):
            await middleware(http_scope(), receive_request, discard)
        if not await _wait_delivered(middleware, warm, 60):
            raise RuntimeError(f"{backend}: warm-up entries not delivered: {middleware.stats()}")
        cpu0, t0 = time.process_time(), time.perf_counter()
        done = 0
        while done < entries:
            for _ in range(min(SLICE, entries - done)):
                await middleware(http_scope(), receive_request, discard)
            done += SLICE
            await asyncio.sleep(0)
            while middleware.stats()["pending"] > high_water:  # noqa: ASYNC110 (back-pressure)
                await asyncio.sleep(0.001)
        ok = await _wait_delivered(middleware, warm + entries, 120)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stats = middleware.stats()
    finally:
        await middleware.aclose()
    return {
        "entries": entries,
        "all_delivered": ok,
        "seconds": elapsed,
        "entries_per_s": entries / elapsed,
        "cpu_us_per_entry": cpu / entries * 1e6,
        "stats": stats,
    }


def sample_entry(bootstrap: str) -> bytes:
    """The encoded Kong entry of one benchmark request (the bytes the raw loops send)."""
    config = KafkaLogConfig(bootstrap_servers=servers(bootstrap), topic="bench")
    request = ASGIRequest(http_scope(), config, receive_request, discard)

    async def respond() -> None:
        await hello_app({}, request.receive, request.send)

    run(respond())
    request.detach()
    return encode_entry(request)


async def aiokafka_throughput(bootstrap: str, value: bytes, entries: int) -> dict[str, Any]:
    """A raw aiokafka loop: ``create_batch``/``append``/``send_batch`` of the same bytes."""
    topic = _topic("raw-aiokafka")
    config = KafkaLogConfig(bootstrap_servers=servers(bootstrap), topic=topic)
    producer = AIOKafkaProducer(**config.aiokafka_options())
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
        partitions = sorted(await producer.partitions_for(topic))
        batch_size = config.producer_request_limits_messages_per_request
        futures: list[asyncio.Future[Any]] = []
        cpu0, t0 = time.process_time(), time.perf_counter()
        sent = 0
        while sent < entries:
            batch = producer.create_batch()
            count = 0
            while count < batch_size and sent + count < entries:
                if batch.append(key=None, value=value, timestamp=None) is None:
                    break
                count += 1
            batch.close()
            partition = partitions[(sent // batch_size) % len(partitions)]
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            sent += count
        await asyncio.gather(*futures)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await producer.stop()
    return {
        "entries": entries,
        "all_delivered": True,
        "seconds": elapsed,
        "entries_per_s": entries / elapsed,
        "cpu_us_per_entry": cpu / entries * 1e6,
    }


def confluent_throughput(bootstrap: str, value: bytes, entries: int) -> dict[str, Any]:
    """A raw confluent-kafka loop: ``produce()`` + ``poll(0)``, then ``flush()``."""
    import confluent_kafka

    topic = _topic("raw-confluent")
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 2, "batch.num.messages": 200}
    )
    producer.produce(topic, value)
    producer.flush(30)
    delivered = 0

    def on_delivery(error: Any, _message: Any) -> None:
        nonlocal delivered
        if error is None:
            delivered += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    for index in range(entries):
        while True:
            try:
                producer.produce(topic, value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.005)
        if index % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "entries": entries,
        "all_delivered": delivered == entries,
        "seconds": elapsed,
        "entries_per_s": entries / elapsed,
        "cpu_us_per_entry": cpu / entries * 1e6,
    }


# -- (b) latency ----------------------------------------------------------------------------


async def consume(bootstrap: str, topic: str, count: int, timeout: float) -> None:
    """Consumer process: print "ready", then the read time of each request id, as JSON."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=100)
        for tp in consumer.assignment():
            await consumer.position(tp)  # pins "latest" before the requests start
        print("ready", flush=True)
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for messages in batches.values():
                for message in messages:
                    entry = orjson.loads(message.value)
                    rid = entry["request"]["querystring"].get("rid")
                    if isinstance(rid, str):
                        seen.setdefault(rid, now)
        print(json.dumps(seen), flush=True)
    finally:
        await consumer.stop()


async def latency(
    bootstrap: str, backend: Backend, flush_ms: int, rate: float, seconds: float
) -> dict[str, Any]:
    """Requests at ``rate``/s; ms from each response's end until a consumer read its entry."""
    topic = _topic("latency")
    config = KafkaLogConfig(
        bootstrap_servers=servers(bootstrap),
        topic=topic,
        producer_backend=backend,
        producer_async_flush_timeout=flush_ms,
    )
    middleware = KafkaLogMiddleware(hello_app, config)
    count = int(rate * seconds)
    ended: dict[str, float] = {}
    consumer: asyncio.subprocess.Process | None = None
    try:
        await middleware(http_scope(b"rid=warm"), receive_request, discard)  # creates the topic
        if not await _wait_delivered(middleware, 1, 60):
            raise RuntimeError(f"latency {backend}: warm-up entry not delivered")
        consumer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.publisher",
            "consume",
            bootstrap,
            topic,
            str(count),
            str(seconds + 60),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        assert consumer.stdout is not None
        line = await asyncio.wait_for(consumer.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"consumer did not start: {line!r}")
        t0 = time.perf_counter()
        for index in range(count):
            delay = t0 + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            rid = str(index)
            await middleware(http_scope(b"rid=" + rid.encode()), receive_request, discard)
            ended[rid] = time.time()
        output, _ = await asyncio.wait_for(consumer.communicate(), seconds + 90)
        seen: dict[str, float] = json.loads(output)
    finally:
        if consumer is not None and consumer.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                consumer.kill()
            await consumer.wait()
        await middleware.aclose()
    waits = sorted((seen[rid] - end) * 1000 for rid, end in ended.items() if rid in seen)
    return {
        "backend": backend,
        "flush_timeout_ms": flush_ms,
        "rate": rate,
        "requests": count,
        "read": len(waits),
        "p50_ms": _percentile(waits, 50),
        "p99_ms": _percentile(waits, 99),
        "max_ms": waits[-1] if waits else float("nan"),
    }


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))]


# -- main -----------------------------------------------------------------------------------


def _run_middleware_throughput(bootstrap: str, backend: Backend, entries: int) -> dict[str, Any]:
    return run(middleware_throughput(bootstrap, backend, entries))


def _run_latency(
    bootstrap: str, backend: Backend, flush: int, rate: float, seconds: float
) -> dict[str, Any]:
    return run(latency(bootstrap, backend, flush, rate, seconds))


def _step(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    result = fn()
    shown = ", ".join(
        f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in result.items()
        if k != "stats"
    )
    print(f"  {name}: {shown}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Measure publisher throughput and latency; write ``publisher.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=200_000, help="entries per throughput run")
    parser.add_argument("--rate", type=float, default=500, help="requests/s in the latency runs")
    parser.add_argument("--seconds", type=float, default=10, help="seconds per latency run")
    parser.add_argument("--short-flush", type=int, default=10, help="short flush timeout, ms")
    args = parser.parse_args(argv)

    started = time.monotonic()
    env = environment()
    with kafka_bootstrap() as (bootstrap, broker, _pid):
        note = run(probe_confluent(bootstrap, _topic("probe")))
        backends: list[Backend] = ["aiokafka"] if note else ["aiokafka", "confluent"]
        if note:
            print(f"publisher: skipping the confluent backend: {note}", flush=True)
        value = sample_entry(bootstrap)
        print(f"publisher: throughput, {args.entries} entries of {len(value)} bytes", flush=True)
        throughput: dict[str, dict[str, Any]] = {}
        for backend in backends:
            throughput[f"middleware_{backend}"] = _step(
                f"middleware ({backend})",
                functools.partial(_run_middleware_throughput, bootstrap, backend, args.entries),
            )
        throughput["raw_aiokafka"] = _step(
            "raw aiokafka batch loop",
            lambda: run(aiokafka_throughput(bootstrap, value, args.entries)),
        )
        if has_module("confluent_kafka"):
            throughput["raw_confluent"] = _step(
                "raw confluent-kafka loop",
                lambda: confluent_throughput(bootstrap, value, args.entries),
            )
        print(f"publisher: latency at {args.rate:g} req/s for {args.seconds:g} s", flush=True)
        latencies = [
            _step(
                f"{backend}, flush {flush} ms",
                functools.partial(_run_latency, bootstrap, backend, flush, args.rate, args.seconds),
            )
            for backend in backends
            for flush in (1000, args.short_flush)
        ]
    write_json(
        "publisher.json",
        {
            "environment": env | {"broker": broker, "commit_at_end": git_commit()},
            "settings": vars(args) | {"entry_bytes": len(value), "slice": SLICE},
            "skipped": {"confluent": note} if note else {},
            "throughput": throughput,
            "latency": latencies,
            "elapsed_s": round(time.monotonic() - started, 1),
        },
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["consume"]:
        bootstrap, topic, count, timeout = sys.argv[2:6]
        run(consume(bootstrap, topic, int(count), float(timeout)))
        sys.exit(0)
    sys.exit(main())
