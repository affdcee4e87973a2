"""The disk spool against a real broker: what waits for a broker that is down goes to disk
and arrives, in order, once it is up; what was spooled at shutdown is sent by the next
process (here, the next middleware on the same directory)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from tests.asgi_driver import http_scope, lifespan, request
from tests.kafka_helpers import BrokerFactory, consume, unique_topic
from tests.polling import eventually, wait_until
from tests.servers import free_port, gunicorn, server_process, wait_for_port

REPO = Path(__file__).resolve().parent.parent
APP = "tests.flask_app:app"

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


async def ok(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def middleware(bootstrap: str, topic: str, directory: Path, backend: str) -> KafkaLogMiddleware:
    settings = KafkaLogConfig(
        bootstrap_servers=(bootstrap,),
        topic=topic,
        producer_backend=backend,  # type: ignore[arg-type]
        delivery="at_least_once",
        overflow="spool",
        spool_dir=str(directory),
        spool_sync_interval=50,
        producer_async_flush_timeout=20,
        shutdown_timeout=1000,
    )
    return KafkaLogMiddleware(Starlette(routes=[Route("/orders", ok)]), settings)


async def serve(app: KafkaLogMiddleware, numbers: range) -> None:
    for n in numbers:
        response = await request(app, http_scope("/orders", query=f"n={n}".encode()))
        assert response.status == 200


def entries(records: list[Any]) -> list[dict[str, Any]]:
    """The entries read back, in their order in the partition."""
    return [orjson.loads(record.value) for record in records if record.value is not None]


def segments(directory: Path) -> list[str]:
    """The spool's segment files in ``directory``."""
    return sorted(path.name for path in directory.iterdir() if path.suffix == ".seg")


def numbers(found: list[dict[str, Any]]) -> list[int]:
    return [int(entry["request"]["querystring"]["n"]) for entry in found]


async def test_entries_spooled_while_the_broker_is_down_arrive_in_order_once_it_is_up(
    kafka_broker_factory: BrokerFactory, backend: str, tmp_path: Path
) -> None:
    broker = kafka_broker_factory()  # its port is known; nothing listens there yet
    topic = unique_topic(f"spool-{backend}")
    app = middleware(broker.bootstrap_servers, topic, tmp_path, backend)
    async with lifespan(app):
        await serve(app, range(100))
        await eventually(lambda: app.stats()["spooled"] == 100, timeout=30)
        assert segments(tmp_path)
        await asyncio.to_thread(broker.start)
        await serve(app, range(100, 120))  # behind the spooled ones
        await eventually(lambda: app.stats()["delivered"] == 120, timeout=90)
        stats = app.stats()
    assert stats["dropped"] == stats["uncertain"] == stats["spooled"] == 0
    assert stats["replayed"] >= 100
    found = entries(await consume(broker.bootstrap_servers, topic, 120, settle=0.5))
    assert numbers(found) == list(range(120))  # all of them, once each, in order
    assert {entry["request"]["uri"] for entry in found[:2]} == {"/orders?n=0", "/orders?n=1"}


async def test_what_one_process_spooled_at_shutdown_the_next_one_sends(
    kafka_broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = kafka_broker_factory()
    topic = unique_topic("spool-restart")
    first = middleware(broker.bootstrap_servers, topic, tmp_path, "aiokafka")
    async with lifespan(first):
        await serve(first, range(50))
    stopped = first.stats()
    assert (stopped["spooled"], stopped["pending"], stopped["dropped"]) == (50, 50, 0)
    await asyncio.to_thread(broker.start)
    second = middleware(broker.bootstrap_servers, topic, tmp_path, "aiokafka")
    async with lifespan(second):
        await eventually(lambda: second.stats()["recovered"] == 50, timeout=60)
        await serve(second, range(50, 60))
        await eventually(lambda: second.stats()["delivered"] == 60, timeout=60)
        stats = second.stats()
    assert (stats["enqueued"], stats["recovered"], stats["dropped"]) == (60, 50, 0)
    found = entries(await consume(broker.bootstrap_servers, topic, 60, settle=0.5))
    assert numbers(found) == list(range(60))
    assert segments(tmp_path) == []  # all sent: gone


def spool_env(bootstrap: str, topic: str, spool: Path, sync_ms: int = 100) -> dict[str, str]:
    """``KAFKA_LOG_*`` of an app in a subprocess: at least once, with the spool in ``spool``."""
    return {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_LOG_TOPIC": topic,
        "KAFKA_LOG_DELIVERY": "at_least_once",
        "KAFKA_LOG_OVERFLOW": "spool",
        "KAFKA_LOG_SPOOL_DIR": str(spool),
        "KAFKA_LOG_SPOOL_SYNC_INTERVAL": str(sync_ms),
        "KAFKA_LOG_SHUTDOWN_TIMEOUT": "1000",
    }


def uvicorn_app(port: int) -> tuple[str, list[str]]:
    """The base URL and command of ``tests/exit_app.py`` under uvicorn on ``port``."""
    command = [
        sys.executable, "-m", "uvicorn", "tests.exit_app:make_app", "--factory",
        "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    return f"http://127.0.0.1:{port}", command


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_an_app_stopped_mid_outage_under_load_has_its_spool_replayed_by_the_next_one(
    kafka_broker_factory: BrokerFactory, tmp_path: Path, stop: signal.Signals
) -> None:
    """Mid-outage and under load, the app is stopped; started again (a new pid) with the
    broker back, it replays what the stopped one spooled. SIGTERM (a graceful stop)
    loses nothing: what was pending is spooled at shutdown. SIGKILL loses at most the
    entries of its last moments: not yet moved to disk (an outbox's spill after a sync
    interval, the write in the next turn, the sync)."""
    broker = kafka_broker_factory()
    topic = unique_topic("spool-stop")
    sync_interval = 0.1
    env = spool_env(broker.bootstrap_servers, topic, tmp_path, int(sync_interval * 1000))
    env["KAFKA_LOG_PRODUCER_ASYNC_FLUSH_TIMEOUT"] = "20"
    served: dict[int, float] = {}  # request number -> when its response came
    port = free_port()
    base, command = uvicorn_app(port)
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=REPO)

    def load() -> None:
        with httpx.Client(base_url=base) as client:
            for n in range(100_000):
                try:
                    if client.get("/", params={"n": n}).status_code != 200:
                        return
                except httpx.HTTPError:
                    return  # the server has stopped
                served[n] = time.monotonic()

    try:
        wait_for_port(port, process)
        loader = threading.Thread(target=load)
        loader.start()
        wait_until(lambda: len(served) >= 200, timeout=60)
        process.send_signal(stop)  # the load goes on meanwhile
        stopped_at = time.monotonic()
        loader.join(30)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    window = stopped_at - (3 * sync_interval + 0.1)
    last_moments = {n for n, at in served.items() if at >= window}
    broker.start()
    port = free_port()
    base, command = uvicorn_app(port)
    with server_process(command, port, env):  # a new process: takes the dead one's files over
        least = len(served) - (len(last_moments) if stop == signal.SIGKILL else 0)
        found = asyncio.run(consume(broker.bootstrap_servers, topic, least, timeout=60, settle=2))
    got = numbers(entries(found))
    assert len(got) == len(set(got))  # none twice
    lost = set(served) - set(got)
    print(f"{stop.name} mid-outage: {len(served)} served, {len(lost)} lost")
    if stop == signal.SIGTERM:
        assert lost == set()
    else:
        assert lost <= last_moments
    assert got == sorted(got)  # in order


def test_gunicorn_workers_each_spool_under_sigterm_and_the_next_workers_send_it_all(
    kafka_broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    """Two gunicorn workers (the Flask app, the WSGI door) while the broker is down, then
    SIGTERM under load: each worker spools what it holds in its own files (its stats say
    so). Started again with the broker up, the new workers take the old ones' files over
    between them: every entry served arrives, once, each old worker's in its order."""
    pytest.importorskip("gunicorn")
    broker = kafka_broker_factory()
    topic = unique_topic("spool-gunicorn")
    spool, reports = tmp_path / "spool", tmp_path / "stats"
    reports.mkdir()
    env = spool_env(broker.bootstrap_servers, topic, spool)
    env["KAFKA_LOG_TEST_STATS"] = str(reports)
    options = ("--preload", "-w", "2", "-c", "tests/gunicorn_conf.py", "--graceful-timeout", "20")
    served: dict[int, int] = {}  # request number -> the pid of the worker that served it
    stop = threading.Event()

    def load(base_url: str) -> None:
        # One client: each worker's requests come in the order of their numbers.
        with httpx.Client(base_url=base_url, timeout=10) as client:
            for n in range(100_000):
                if stop.is_set():
                    return
                try:
                    response = client.get(f"/hello/load?n={n}")
                except httpx.TransportError:
                    return  # the server is gone
                if response.status_code == 200:
                    served[n] = int(response.headers["x-pid"])

    with gunicorn(APP, *options, env=env) as (base_url, process):
        loader = threading.Thread(target=load, args=(base_url,))
        loader.start()
        wait_until(lambda: len(served) >= 300 and len(set(served.values())) == 2, timeout=60)
        process.send_signal(signal.SIGTERM)  # under load
        assert process.wait(60) == 0
        stop.set()
        loader.join()
    stats = [orjson.loads(path.read_bytes()) for path in reports.glob("*.json")]
    assert len(stats) == 2  # each worker flushed and reported
    assert sum(s["enqueued"] for s in stats) == len(served)
    assert all(s["spooled"] == s["pending"] == s["enqueued"] > 0 for s in stats), stats
    owners = {path.name.split("-")[0] for path in spool.glob("*.lock")}
    assert owners == {str(pid) for pid in set(served.values())}  # a spool of each its own
    broker.start()
    with gunicorn(APP, "-w", "2", env=env) as (base_url, _):
        # A WSGI worker starts its publisher with its first request, and then takes the
        # files over (the threads of a pre-forked app cannot start before).
        with httpx.Client(base_url=base_url, timeout=10) as client:
            for n in range(1_000_000, 1_000_020):
                assert client.get(f"/hello/new?n={n}").status_code == 200
        expected = len(served) + 20
        found = asyncio.run(consume(broker.bootstrap_servers, topic, expected, settle=2))
    got = [n for n in numbers(entries(found)) if n < 1_000_000]
    assert sorted(got) == sorted(served)  # every one, once
    for pid in set(served.values()):
        of_worker = [n for n in got if served[n] == pid]
        assert of_worker == sorted(of_worker)  # each worker's entries in its order


async def test_a_failed_spool_write_counts_what_the_spool_took_and_drops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error in the middle of a turn's writes: what was taken before it stays
    counted as spooled, the rest is dropped (``spool_full``), and the error is told."""
    from kafka_log_middleware.buffer import LogBuffer
    from kafka_log_middleware.spool import Spool, SpoolWriteError
    from kafka_log_middleware.spooling import Spooling
    from tests.scripted import captured
    from tests.scripted import config as scripted_config

    settings = scripted_config(
        delivery="at_least_once", overflow="spool", spool_dir=str(tmp_path / "spool")
    )
    buffer = LogBuffer(100)
    for n in range(3):
        buffer.put(captured(n, settings))
    buffer.take(3)  # encoded, as the publisher would: pending, in the spool's hands
    real = Spool.append

    def append(spool: Spool, topic: str, messages: list[Any]) -> int:
        if topic == "second":
            raise SpoolWriteError(28, "no space left on device", 0)
        return real(spool, topic, messages)

    monkeypatch.setattr(Spool, "append", append)
    spooling = Spooling(buffer, settings)
    spooling.add("first", [(None, b"zero"), (None, b"one")])
    spooling.add("second", [(None, b"two")])
    await spooling.step()
    stats = buffer.stats()
    assert (stats["spooled"], stats["dropped_spool_full"], stats["pending"]) == (2, 1, 2)


def test_uvicorn_workers_each_spool_their_own_and_the_next_workers_send_it_all(
    kafka_broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    """``uvicorn --workers 2`` while the broker is down: each worker has a spool of its
    own (a lock file per pid) for what it serves; SIGTERM; started again with the broker
    up, the new workers take the files over at startup and every entry arrives, once."""
    broker = kafka_broker_factory()
    topic = unique_topic("spool-uvicorn-workers")
    spool = tmp_path / "spool"
    env = spool_env(broker.bootstrap_servers, topic, spool)
    port = free_port()
    base, command = uvicorn_app(port)
    served = 0
    with server_process([*command, "--workers", "2"], port, env):
        for n in range(300):
            # A new connection each time, so that both workers get requests.
            assert httpx.get(f"{base}/", params={"n": n}).status_code == 200
            served += 1
    owners = {path.name.split("-")[0] for path in spool.glob("*.lock")}
    assert len(owners) == 2  # one spool per worker
    broker.start()
    port = free_port()
    base, command = uvicorn_app(port)
    with server_process([*command, "--workers", "2"], port, env):
        found = asyncio.run(consume(broker.bootstrap_servers, topic, served, settle=2))
    got = numbers(entries(found))
    assert sorted(got) == list(range(served))  # every one, once
