"""``python -m devtools.demo`` (or ``scripts/demo``): the middleware end to end, locally.

Starts a single-node Kafka broker and an example app, both on 127.0.0.1, sends a handful
of requests that show each feature, prints the Kong log entries they produced in the
``kong-log-demo`` topic and the middleware's counters, then stops the app and the broker.

``--app`` picks the example (the same routes in each): ``fastapi`` (the default,
``example_app.app:app`` under uvicorn; SIGTERM runs the lifespan shutdown, which
flushes), ``flask`` (``example_app.flask_app:app``) or ``django``
(``example_app.django_project.wsgi:application``), both under gunicorn with two workers
(SIGTERM: each worker flushes what is pending as it exits; the counters are per worker).

``--keep-running`` leaves both running, prints how to watch further entries, and stops them
on Ctrl-C. Whatever happens, nothing is left behind: no broker JVM, no app server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from devtools.kafka_broker import LOOPBACK, REPO_ROOT, KafkaBroker, ensure_jars, free_port

TOPIC = "kong-log-demo"
CONSUME_TIMEOUT = 30.0
APP_START_TIMEOUT = 60.0
APP_STOP_TIMEOUT = 20.0
STATS_PATH = "/_kafka_log/stats"


@dataclass(frozen=True)
class DemoRequest:
    method: str
    path: str
    what: str
    headers: dict[str, str] | None = None
    json: Any = None

    def line(self) -> str:
        auth = self.headers.get("Authorization") if self.headers else None
        shown = f"{self.method} {self.path}" + (f"  (Authorization: {auth})" if auth else "")
        return shown


REQUESTS = (
    DemoRequest("GET", "/orders/42?expand=true&tag=a&tag=b", "path parameter, query args"),
    DemoRequest(
        "POST",
        "/orders",
        "JSON request body (request.size)",
        json={"items": ["book", "pen"], "note": "gift wrap"},
    ),
    DemoRequest(
        "GET",
        "/me",
        "Authorization REDACTED, consumer set",
        headers={"Authorization": "Bearer demo-token"},
    ),
    DemoRequest("GET", "/me", "no token: 401, no consumer"),
    DemoRequest("GET", "/stream", "streamed response (response.size)"),
    DemoRequest("GET", "/boom", "handler raises: logged as 500"),
    DemoRequest("GET", "/no-such-page", "no route matched: 404"),
)


def say(text: str = "") -> None:
    print(text, flush=True)


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


# -- the example apps and their servers -------------------------------------------------------


@dataclass(frozen=True)
class DemoApp:
    """An example app and the server that runs it (``uvicorn`` or ``gunicorn``)."""

    target: str
    server: str
    env: dict[str, str] = field(default_factory=dict)

    def command(self, port: int) -> list[str]:
        """The server's command line, listening on 127.0.0.1:``port``."""
        if self.server == "uvicorn":
            return [
                sys.executable,
                "-m",
                "uvicorn",
                self.target,
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                "--lifespan",
                "on",
                "--no-access-log",
            ]
        # --preload: the master imports the app before it binds, so an open port means the
        # app loaded, and an app that fails to load ends gunicorn during start-up.
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            "2",
            "--preload",
            "--bind",
            f"{LOOPBACK}:{port}",
            self.target,
        ]

    def stopped(self, rc: int, log: str) -> str:
        """How the server's exit (code ``rc``, its ``log``) tells the flush went."""
        if self.server == "uvicorn":
            # uvicorn re-raises the SIGTERM after its graceful shutdown: rc is -15.
            if "Application shutdown complete" in log:
                return "SIGTERM: lifespan shutdown complete, log flushed"
            return f"exit {rc}, no clean lifespan shutdown"
        if rc == 0 and "Shutting down: Master" in log:
            return "SIGTERM: gunicorn's graceful shutdown; each worker flushes as it exits"
        return f"exit {rc}, no clean gunicorn shutdown"

    @property
    def stats_note(self) -> str:
        """What the stats endpoint's counters cover, when not the whole app."""
        if self.server == "gunicorn":
            return ": the worker that answered; each of the 2 counts its own requests"
        return ""


APPS = {
    "fastapi": DemoApp("example_app.app:app", "uvicorn"),
    "flask": DemoApp("example_app.flask_app:app", "gunicorn"),
    "django": DemoApp(
        "example_app.django_project.wsgi:application",
        "gunicorn",
        {"DJANGO_SETTINGS_MODULE": "example_app.django_project.settings"},
    ),
}


class AppProcess:
    """An example app's server as a child process on 127.0.0.1 (own session)."""

    def __init__(
        self, app: DemoApp, bootstrap_servers: str, port: int | None, logdir: Path
    ) -> None:
        self.example = app
        self.bootstrap_servers = bootstrap_servers
        self.fixed_port = port
        self.port = port or 0
        self.log_path = logdir / f"{app.server}.log"
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        attempts = 1 if self.fixed_port else 3
        for attempt in range(attempts):
            self.port = self.fixed_port or free_port()
            try:
                self._start_once()
                return
            except DemoError as exc:
                if "address already in use" not in str(exc).lower() or attempt + 1 == attempts:
                    raise

    def _start_once(self) -> None:
        env = dict(os.environ)
        env.update(
            KAFKA_LOG_BOOTSTRAP_SERVERS=self.bootstrap_servers,
            KAFKA_LOG_TOPIC=TOPIC,
            KAFKA_LOG_PRODUCER_ASYNC_FLUSH_TIMEOUT="100",
            PYTHONUNBUFFERED="1",
            **self.example.env,
        )
        cmd = self.example.command(self.port)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the app itself
        )
        # uvicorn binds its socket only after the lifespan startup completed, gunicorn
        # (--preload) only after it imported the app.
        deadline = time.monotonic() + APP_START_TIMEOUT
        while not _port_open(self.port):
            rc = self._proc.poll()
            if rc is not None:
                self.stop()
                raise DemoError(
                    f"the example app exited with code {rc} during start-up:\n"
                    f"{self.log_tail(offset)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise DemoError(
                    f"the example app did not listen on {self.url} within "
                    f"{APP_START_TIMEOUT:.0f} s:\n{self.log_tail(offset)}"
                )
            time.sleep(0.05)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (uvicorn runs the lifespan shutdown, gunicorn's workers exit: the
        middleware flushes), else SIGKILL after APP_STOP_TIMEOUT."""
        proc, self._proc = self._proc, None
        rc: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=APP_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                rc = proc.wait()
            _kill_group(proc.pid)  # a worker the server left behind (none, normally)
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def log_tail(self, offset: int = 0, max_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()[offset:]
        except OSError:
            return "<no app log>"
        return data[-max_bytes:].decode(errors="replace")


def _kill_group(pid: int) -> None:
    """SIGKILL what is left of the server's session (its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


# -- Kafka ------------------------------------------------------------------------------------


async def create_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> int:
    """Create ``topic`` (1 partition) unless it exists; wait for its leader; its partition id."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(topic, 1, 1)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaError):
                for entry in await admin.describe_topics([topic]):
                    parts = entry["partitions"]
                    if entry["error_code"] == 0 and parts and parts[0]["leader"] >= 0:
                        return int(parts[0]["partition"])
            await asyncio.sleep(0.2)
        raise DemoError(f"topic {topic!r} has no leader {timeout:.0f} s after its creation")
    finally:
        await admin.close()


async def consume_entries(
    bootstrap: str, topic: str, partition: int, count: int, timeout: float
) -> list[dict[str, Any]]:
    """Read ``topic`` from its beginning until ``count`` entries of demo requests arrived."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    entries: list[dict[str, Any]] = []
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout
        while len(entries) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batches = await consumer.getmany(timeout_ms=max(1, int(min(remaining, 1.0) * 1000)))
            for records in batches.values():
                for record in records:
                    entry = orjson.loads(record.value)
                    uri = str(entry.get("request", {}).get("uri", ""))
                    if not uri.startswith(STATS_PATH):  # the stats endpoint is not a demo request
                        entries.append(entry)
    finally:
        await consumer.stop()
    return entries


# -- the demo ---------------------------------------------------------------------------------


async def run_requests(app: AppProcess, broker: KafkaBroker) -> None:
    bootstrap = broker.bootstrap_servers
    partition = await create_topic(bootstrap, TOPIC)
    # A new connection per request: after /boom's 500 uvicorn closes the connection (the
    # exception is re-raised past the response), which a pooled connection would trip over.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=app.url, timeout=10.0, limits=limits) as client:
        say(f"\n== {len(REQUESTS)} requests to {app.url}")
        for number, req in enumerate(REQUESTS, 1):
            try:
                response = await client.request(
                    req.method, req.path, headers=req.headers, json=req.json
                )
            except httpx.HTTPError as exc:
                raise DemoError(
                    f"{req.line()} failed: {exc!r}; app log: {app.log_path}\n{app.log_tail()}"
                ) from exc
            say(
                f"{number:>2}. {req.line():<58} -> {response.status_code} "
                f"{response.reason_phrase:<21} {req.what}"
            )

        say(f"\n== log entries in topic {TOPIC!r} (one per request; waiting up to 30 s)")
        started = time.monotonic()
        entries = await consume_entries(bootstrap, TOPIC, partition, len(REQUESTS), CONSUME_TIMEOUT)
        # In request order: several workers publish side by side, each with its producer.
        entries.sort(key=lambda entry: int(entry.get("started_at") or 0))
        for number, entry in enumerate(entries, 1):
            request = entry.get("request", {})
            status = entry.get("response", {}).get("status")
            say(f"\n--- entry {number}: {request.get('method')} {request.get('uri')} -> {status}")
            say(orjson.dumps(entry, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        say(f"\n{len(entries)} of {len(REQUESTS)} entries in {time.monotonic() - started:.1f} s")

        response = await client.get(STATS_PATH)
        say(f"\n== middleware stats (GET {STATS_PATH}{app.example.stats_note})")
        say(orjson.dumps(response.json(), option=orjson.OPT_INDENT_2).decode())
        if len(entries) < len(REQUESTS):
            raise DemoError(
                f"only {len(entries)} of {len(REQUESTS)} log entries arrived within "
                f"{CONSUME_TIMEOUT:.0f} s; app log: {app.log_path}\n{app.log_tail()}"
            )


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Let cleanup finish: a second Ctrl-C must not leave a JVM or an app server behind."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _python_command() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(exe.relative_to(Path.cwd()))
    return "python" if shutil.which("python") == str(exe) else str(exe)


def keep_running(app: AppProcess, broker: KafkaBroker) -> None:
    say("\n== still running (--keep-running); Ctrl-C stops both")
    say(f"app:    {app.url}   e.g. curl '{app.url}/orders/7?expand=true'")
    say(f"kafka:  {broker.bootstrap_servers}")
    say("watch further requests' entries with:")
    say(
        f"  {_python_command()} -m kafka_log_middleware tail {TOPIC} "
        f"--bootstrap-servers {broker.bootstrap_servers} --pretty"
    )
    while True:
        time.sleep(0.5)
        if not app.is_running():
            raise DemoError(f"the example app exited:\n{app.log_tail()}")
        if not broker.is_running:
            raise DemoError(f"the Kafka broker exited:\n{broker.log_tail()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__)
    parser.add_argument(
        "--app",
        choices=list(APPS),
        default="fastapi",
        help="the example app: fastapi (uvicorn; the default), flask or django (gunicorn, "
        "2 workers)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the broker and the app running after the demo, until Ctrl-C",
    )
    parser.add_argument("--port", type=int, default=None, help="app port (default: a free one)")
    args = parser.parse_args(argv)
    demo_app = APPS[args.app]

    # Both stop the demo through the cleanup below (SIGINT too: a shell that started us in
    # the background may have set it to "ignore").
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="kafka-log-demo-"))
    broker: KafkaBroker | None = None
    app: AppProcess | None = None
    failed = False
    started = time.monotonic()
    try:
        ensure_jars()
        broker = KafkaBroker(workdir=workdir / "kafka")  # not deleted by the broker: ours
        say("== starting a Kafka broker (KRaft, single node) ...")
        broker.start()  # (reading bootstrap_servers first would forbid a retry on new ports)
        say(
            f"   {broker.bootstrap_servers} ready in {time.monotonic() - started:.1f} s "
            f"(pid {broker.pid})"
        )

        app = AppProcess(demo_app, broker.bootstrap_servers, args.port, workdir)
        say(f"== starting {demo_app.target} under {demo_app.server} (KAFKA_LOG_TOPIC={TOPIC}) ...")
        app_started = time.monotonic()
        app.start()
        say(f"   {app.url} ready in {time.monotonic() - app_started:.1f} s (pid {app.pid})")

        asyncio.run(run_requests(app, broker))
        if args.keep_running:
            keep_running(app, broker)
        return 0
    except KeyboardInterrupt:
        say("\n== interrupted")
        return 0 if args.keep_running and app is not None else 130
    except BaseException as exc:
        failed = True
        if isinstance(exc, DemoError):
            print(f"\ndemo: ERROR: {exc}", file=sys.stderr, flush=True)
            return 1
        raise
    finally:
        with _no_interrupts():
            if app is not None:
                rc = app.stop()
                if rc is not None:
                    how = app.example.stopped(rc, app.log_tail(max_bytes=20000))
                    say(f"== app stopped ({how})")
            if broker is not None:
                broker.stop()
                say("== broker stopped")
            if failed:
                say(f"== logs kept in {workdir} (broker.log, {demo_app.server}.log)")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            say(f"== done in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    raise SystemExit(main())
