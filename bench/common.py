"""Helpers shared by the benchmarks: the broker, /proc readings, versions, result files."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[tuple[str, str, int | None]]:
    """Yield ``(bootstrap_servers, broker description, broker pid or None)``.

    Uses ``KAFKA_BOOTSTRAP_SERVERS`` when set, else starts (and finally stops) one
    local broker from ``devtools/kafka_broker.py``.
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external, f"external cluster at {external}", None
        return
    from devtools.kafka_broker import KafkaBroker, ensure_jars

    ensure_jars()
    broker = KafkaBroker()
    broker.start()
    try:
        description = f"Apache Kafka {kafka_version()} (single KRaft node, same machine)"
        yield broker.bootstrap_servers, description, broker.pid
    finally:
        broker.close()


def servers(bootstrap: str) -> tuple[str, ...]:
    """``"h1:p1,h2:p2"`` as the tuple ``KafkaLogConfig.bootstrap_servers`` holds."""
    return tuple(bootstrap.split(","))


def kafka_version() -> str:
    """The broker version from the jar name in ``.kafka/libs`` (``?`` if absent)."""
    for jar in sorted((ROOT / ".kafka" / "libs").glob("kafka_2.13-*.jar")):
        return jar.name.removeprefix("kafka_2.13-").removesuffix(".jar")
    return "?"


def closed_port() -> int:
    """A loopback port nobody listens on (the "broker down" address)."""
    from devtools.kafka_broker import free_port

    return free_port()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid``, all its threads, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After "pid (comm) ", field 3 is state; utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all processes used since boot: user + nice + system of ``/proc/stat``.

    Interrupt time (the loopback traffic's softirq) is left out: the kernel charges it
    to no process, and a benchmark causes most of it itself.
    """
    user, nice, system = (int(v) for v in Path("/proc/stat").read_text().split(None, 4)[1:4])
    return (user + nice + system) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` value from ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def has_module(name: str) -> bool:
    """True when ``name`` is importable (without importing it)."""
    return importlib.util.find_spec(name) is not None


def dist_version(name: str) -> str:
    """Installed version of distribution ``name``, or ``"not installed"``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def tool_version(cmd: Sequence[str]) -> str:
    """First output line of ``cmd`` (for ``wrk -v``, ``java -version``)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def git_commit() -> str:
    """The checked-out commit (``-dirty`` when tracked files are modified)."""
    return tool_version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every result file."""
    native = has_module("kafka_log_middleware_native")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "packages": {
            name: dist_version(name)
            for name in (
                "kafka-log-middleware",
                "uvicorn",
                "uvloop",
                "httptools",
                "starlette",
                "aiokafka",
                "orjson",
                "confluent-kafka",
            )
        },
        "native_serializer_built": native,
        "kafka": kafka_version(),
        "wrk": tool_version(["wrk", "-v"]).split(" [")[0],
        "java": tool_version(["java", "-version"]),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
    }


def median(values: Sequence[float]) -> float:
    """Median of ``values`` (NaN for none)."""
    return statistics.median(values) if values else float("nan")


def write_json(name: str, data: Any) -> Path:
    """Write ``bench/results/<name>`` and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def read_json(name: str) -> Any:
    """Read ``bench/results/<name>`` (None when it does not exist)."""
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


# -- driving the middleware in-process (no HTTP) -------------------------------------------

HEADERS: list[tuple[bytes, bytes]] = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"wrk/4.1.0 (kafka-log-middleware bench)"),
    (b"accept", b"application/json"),
    (b"x-request-source", b"bench"),
    (b"authorization", b"Bearer bench-token-0123456789"),
]
"""The request headers the wrk script sends, for the in-process benchmarks too."""
BODY = b'{"hello":"world","a":"1","b":"2"}'
_RESPONSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))],
}
_RESPONSE_BODY = {"type": "http.response.body", "body": BODY}
_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


def http_scope(query: bytes = b"a=1&b=2") -> dict[str, Any]:
    """A fresh ASGI HTTP scope for ``GET /hello/world?<query>`` with the bench headers, as
    uvicorn's httptools protocol (the one ``bench.overhead`` serves with) gives it: spec
    2.3, whose ``send`` the door does not watch for disconnect errors."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/hello/world",
        "raw_path": b"/hello/world",
        "query_string": query,
        "root_path": "",
        "headers": HEADERS,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def receive_request() -> dict[str, Any]:
    """ASGI ``receive``: an empty GET body."""
    return _REQUEST


async def discard(_message: Any) -> None:
    """ASGI ``send`` that drops every message."""


async def hello_app(scope: Any, receive: Any, send: Any) -> None:
    """A minimal raw ASGI app answering the hello JSON body (no framework cost)."""
    await send(_RESPONSE_START)
    await send(_RESPONSE_BODY)


async def probe_confluent(bootstrap: str, topic: str, timeout: float = 15.0) -> str | None:
    """Deliver one entry with ``producer_backend="confluent"``; None when that works.

    Otherwise a note saying why the confluent variants are skipped: ``confluent_kafka``
    missing, or nothing delivered.
    """
    import asyncio

    if not has_module("confluent_kafka"):
        return "confluent_kafka is not installed"
    from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware

    config = KafkaLogConfig(
        bootstrap_servers=servers(bootstrap),
        topic=topic,
        producer_backend="confluent",
        producer_async_flush_timeout=10,
    )
    middleware = KafkaLogMiddleware(hello_app, config)
    try:
        await middleware(http_scope(), receive_request, discard)
        deadline = time.monotonic() + timeout
        # stats() is the middleware's only progress signal: poll it, bounded.
        while middleware.stats()["delivered"] < 1 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        delivered = middleware.stats()["delivered"]
    finally:
        await middleware.aclose()
    if delivered < 1:
        return f"producer_backend='confluent' delivered nothing within {timeout:.0f} s"
    return None
