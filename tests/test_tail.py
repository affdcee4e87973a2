"""``python -m kafka_log_middleware tail`` against the real broker, a closed port, a
silent one and a secured one: exactly ``--count`` entries, new ones only or
``--from-beginning``, following (a real process, stopped by Ctrl-C) or not, ``--filter``,
each ``--format`` of entries the middleware published, colour, the config's SASL and TLS
settings, and every failure one line on stderr with a non-zero exit status, never a
traceback."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware
from kafka_log_middleware.__main__ import main
from tests.asgi_driver import http_scope, lifespan, request
from tests.kafka_helpers import (
    PASSWORD,
    USER,
    SecuredKafka,
    consume,
    create_topic,
    topic_partitions,
    unique_topic,
)
from tests.oauth_server import token_endpoint
from tests.polling import eventually
from tests.servers import free_port

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(rb"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def _no_kafka_log_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads ``KAFKA_LOG_*``: none from the outside here."""
    for variable in list(os.environ):
        if variable.startswith("KAFKA_LOG_"):
            monkeypatch.delenv(variable)


def publish(bootstrap: str, topic: str, values: list[bytes | None], partitions: int = 1) -> None:
    """Create ``topic`` and publish ``values`` to it, round-robin over its partitions."""

    async def run() -> None:
        await create_topic(bootstrap, topic, partitions)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for n, value in enumerate(values):
                await producer.send(topic, value, key=b"k", partition=n % partitions)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(run())


def entries(count: int) -> list[bytes | None]:
    """Kong-shaped entries, told apart by ``n``."""
    return [
        orjson.dumps(
            {"request": {"method": "GET", "uri": f"/{n}"}, "response": {"status": 200}, "n": n}
        )
        for n in range(count)
    ]


def run_tail(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, bytes, str]:
    """``main()`` in-process: (exit status, stdout, stderr)."""
    try:
        status = main(["tail", *args])
    except SystemExit as exit_:  # argparse
        status = int(exit_.code or 0)
    out, err = capsysbinary.readouterr()
    return status, out, err.decode()


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def busy_topic(kafka_bootstrap: str) -> str:
    """A topic of two partitions holding 300 entries: far more than any --count here."""
    topic = unique_topic("tail-busy")
    publish(kafka_bootstrap, topic, entries(300), partitions=2)
    return topic


@pytest.mark.kafka
@pytest.mark.parametrize("count", [1, 2, 7, 299])
def test_count_prints_exactly_that_many_entries(
    capsysbinary: pytest.CaptureFixture[bytes], kafka_bootstrap: str, busy_topic: str, count: int
) -> None:
    status, out, err = run_tail(
        capsysbinary,
        busy_topic,
        "--bootstrap-servers",
        kafka_bootstrap,
        "--from-beginning",
        "--count",
        str(count),
        "--timeout",
        "30",
    )
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == count
    assert len({orjson.loads(line)["n"] for line in lines}) == count


@pytest.mark.kafka
def test_timeout_ends_an_open_ended_tail_after_the_last_entry(
    capsysbinary: pytest.CaptureFixture[bytes], kafka_bootstrap: str
) -> None:
    topic = unique_topic("tail-all")
    publish(kafka_bootstrap, topic, [*entries(3), b"not json", None])
    status, out, err = run_tail(
        capsysbinary, topic, "--bootstrap-servers", kafka_bootstrap, "--from-beginning",
        "--timeout", "2",
    )  # fmt: skip
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert [orjson.loads(line)["n"] for line in lines[:3]] == [0, 1, 2]
    assert lines[3:] == [b"b'not json'", b"null"]


@pytest.mark.kafka
def test_new_entries_only_by_default(
    capsysbinary: pytest.CaptureFixture[bytes], kafka_bootstrap: str, busy_topic: str
) -> None:
    status, out, err = run_tail(
        capsysbinary, busy_topic, "--bootstrap-servers", kafka_bootstrap, "--timeout", "1"
    )
    assert (status, out, err) == (0, b"", "")


@pytest.mark.kafka
def test_a_count_not_reached_before_the_timeout_fails(
    capsysbinary: pytest.CaptureFixture[bytes], kafka_bootstrap: str
) -> None:
    topic = unique_topic("tail-short")
    publish(kafka_bootstrap, topic, entries(3))
    status, out, err = run_tail(
        capsysbinary, topic, "--bootstrap-servers", kafka_bootstrap, "--from-beginning",
        "--count", "5", "--timeout", "2",
    )  # fmt: skip
    assert status == 1
    assert len(out.splitlines()) == 3
    assert "3 of 5 entries" in one_line(err)


@pytest.mark.kafka
def test_a_missing_topic_is_one_line_and_is_not_created(
    capsysbinary: pytest.CaptureFixture[bytes], kafka_bootstrap: str
) -> None:
    topic = unique_topic("tail-missing")
    status, out, err = run_tail(capsysbinary, topic, "--bootstrap-servers", kafka_bootstrap)
    assert (status, out) == (1, b"")
    assert (
        one_line(err)
        == f"python -m kafka_log_middleware tail: error: topic {topic!r} does not exist"
    )

    async def exists() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            return await topic_partitions(admin, topic) is not None
        finally:
            await admin.close()

    assert not asyncio.run(exists())


def test_a_closed_port_is_one_line_on_stderr_and_exit_status_1() -> None:
    # A real process: what a user sees, interpreter exit included.
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "kafka_log_middleware", "tail", "logs",
         "--bootstrap-servers", f"127.0.0.1:{port}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (1, "")
    line = one_line(done.stderr)
    assert line.startswith(
        f"python -m kafka_log_middleware tail: error: cannot reach Kafka at 127.0.0.1:{port}"
    )


@pytest.fixture
def silent_broker() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung broker, a black hole)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_a_silent_broker_is_given_up_after_the_connect_timeout(
    capsysbinary: pytest.CaptureFixture[bytes], silent_broker: int
) -> None:
    status, out, err = run_tail(
        capsysbinary, "logs", "--bootstrap-servers", f"127.0.0.1:{silent_broker}",
        "--connect-timeout", "1",
    )  # fmt: skip
    assert (status, out) == (1, b"")
    assert one_line(err) == (
        f"python -m kafka_log_middleware tail: error: cannot reach Kafka at "
        f"127.0.0.1:{silent_broker}: no answer within 1 s"
    )


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ([], "topic"),
        (["a/b"], "topic"),
        (["logs", "--count", "-1"], "--count"),
        (["logs", "--count", "two"], "--count"),
        (["logs", "--timeout", "-1"], "--timeout"),
        (["logs", "--timeout", "inf"], "--timeout"),
        (["logs", "--connect-timeout", "soon"], "--connect-timeout"),
        (["logs", "--bootstrap-servers", "nohost"], "--bootstrap-servers"),
        (["logs", "--bootstrap-servers", "h:99999"], "--bootstrap-servers"),
        (["logs", "--bogus"], "--bogus"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_status_2(
    capsysbinary: pytest.CaptureFixture[bytes], args: list[str], complaint: str
) -> None:
    status, out, err = run_tail(capsysbinary, *args)
    assert (status, out) == (2, b"")
    line = one_line(err)
    assert line.startswith("python -m kafka_log_middleware") and "error: " in line
    assert complaint in line


def test_no_command_is_one_line_and_exit_status_2(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "error:" in one_line(capsysbinary.readouterr().err.decode())


@pytest.mark.kafka
def test_the_kafka_log_tail_command_is_tail(
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    kafka_bootstrap: str,
    busy_topic: str,
) -> None:
    from kafka_log_middleware.__main__ import tail_main

    argv = ["kafka-log-tail", busy_topic, "--bootstrap-servers", kafka_bootstrap]
    monkeypatch.setattr(sys, "argv", [*argv, "--from-beginning", "--count", "3"])
    assert tail_main() == 0
    assert len(capsysbinary.readouterr().out.splitlines()) == 3


# -- entries the middleware published ------------------------------------------------------

STATUSES = [("GET", 200), ("POST", 201), ("GET", 302), ("GET", 404), ("GET", 500), ("DELETE", 503)]


async def item(request: Request) -> JSONResponse:
    code = int(request.path_params["code"])
    return JSONResponse({"code": code}, status_code=code)


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str) -> tuple[str, list[bytes]]:
    """A topic of one partition holding the entries of ``STATUSES`` as the middleware
    published them, and those messages (in order)."""
    topic = unique_topic("tail-served")

    async def run() -> list[bytes]:
        await create_topic(kafka_bootstrap, topic)
        app = Starlette(
            routes=[Route("/items/{code}", item, methods=["GET", "POST", "DELETE"], name="item")]
        )
        config = KafkaLogConfig(
            bootstrap_servers=(kafka_bootstrap,), topic=topic, producer_async_flush_timeout=20
        )
        middleware = KafkaLogMiddleware(app, config)
        async with lifespan(middleware):
            for method, code in STATUSES:
                scope = http_scope(f"/items/{code}", method=method, query=b"x=1")
                assert (await request(middleware, scope)).status == code
            await eventually(lambda: middleware.stats()["delivered"] == len(STATUSES))
        records = await consume(kafka_bootstrap, topic, len(STATUSES), settle=0.5)
        return [record.value for record in records if record.value is not None]

    raw = asyncio.run(run())
    assert len(raw) == len(STATUSES)
    return topic, raw


def read_all(
    capsysbinary: pytest.CaptureFixture[bytes], bootstrap: str, topic: str, *args: str
) -> bytes:
    """The whole topic in one run that ends by itself (``--no-follow``)."""
    status, out, err = run_tail(
        capsysbinary,
        topic,
        "--bootstrap-servers",
        bootstrap,
        "--from-beginning",
        "--no-follow",
        *args,
    )
    assert (status, err) == (0, "")
    return out


def documents(text: bytes) -> list[Any]:
    """The JSON documents printed one after the other (``--format pretty``)."""
    decoder, found, at, whole = json.JSONDecoder(), [], 0, text.decode()
    while at < len(whole.rstrip()):
        value, at = decoder.raw_decode(whole, at)
        found.append(value)
        at += len(whole[at:]) - len(whole[at:].lstrip())
    return found


@pytest.mark.kafka
def test_json_prints_each_message_exactly_as_it_is_in_kafka(
    capsysbinary: pytest.CaptureFixture[bytes],
    kafka_bootstrap: str,
    served: tuple[str, list[bytes]],
) -> None:
    topic, raw = served
    assert read_all(capsysbinary, kafka_bootstrap, topic).splitlines() == raw
    assert read_all(capsysbinary, kafka_bootstrap, topic, "--format", "json").splitlines() == raw


@pytest.mark.kafka
@pytest.mark.parametrize("flag", [["--format", "pretty"], ["--pretty"]])
def test_pretty_is_indented_and_parses_back_to_the_same_entries(
    capsysbinary: pytest.CaptureFixture[bytes],
    kafka_bootstrap: str,
    served: tuple[str, list[bytes]],
    flag: list[str],
) -> None:
    topic, raw = served
    out = read_all(capsysbinary, kafka_bootstrap, topic, *flag)
    assert out.startswith(b'{\n  "request": {\n    "')
    assert documents(out) == [orjson.loads(value) for value in raw]


@pytest.mark.kafka
def test_table_is_a_header_and_one_aligned_line_per_entry(
    capsysbinary: pytest.CaptureFixture[bytes],
    kafka_bootstrap: str,
    served: tuple[str, list[bytes]],
) -> None:
    topic, raw = served
    header, *rows = (
        read_all(capsysbinary, kafka_bootstrap, topic, "--format", "table").decode().splitlines()
    )
    assert re.split(r"\s{2,}", header) == [
        "TIME",
        "METHOD",
        "STATUS",
        "LATENCY",
        "PATH",
        "CONSUMER/ROUTE",
    ]
    assert len(rows) == len(raw)
    for row, value in zip(rows, raw, strict=True):
        entry = orjson.loads(value)
        started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(entry["started_at"] // 1000))
        assert re.split(r"\s{2,}", row) == [
            f"{started}.{entry['started_at'] % 1000:03d}Z",
            entry["request"]["method"],
            str(entry["response"]["status"]),
            f"{entry['latencies']['request']} ms",
            entry["request"]["uri"],
            "-/item",
        ]
        for column in ("METHOD", "PATH", "CONSUMER/ROUTE"):  # left-aligned under the header
            assert row[header.index(column)] != " " and row[header.index(column) - 1] == " "
        status_end = header.index("STATUS") + len("STATUS")  # numbers right-aligned
        assert row[status_end - 3 : status_end] == str(entry["response"]["status"])
    assert not ANSI.search("\n".join(rows).encode())  # not a terminal: no colour


@pytest.mark.kafka
def test_filter_keeps_only_the_entries_it_matches(
    capsysbinary: pytest.CaptureFixture[bytes],
    kafka_bootstrap: str,
    served: tuple[str, list[bytes]],
) -> None:
    topic, raw = served

    def kept(*filters: str) -> list[bytes]:
        args = [arg for f in filters for arg in ("--filter", f)]
        return read_all(capsysbinary, kafka_bootstrap, topic, *args).splitlines()

    def status(value: bytes) -> int:
        return int(orjson.loads(value)["response"]["status"])

    assert kept("status>=500") == [v for v in raw if status(v) >= 500]
    assert len(kept("status>=500")) == 2
    assert kept("request.method=GET", "status<400") == [raw[0], raw[2]]
    assert kept("request.uri~/items/4*") == [raw[3]]
    assert kept("response.status!=200", "latencies.request>=0", "method!=GET") == [raw[1], raw[5]]
    assert kept("route.name=item") == raw
    assert kept("consumer.username=bob") == []


@pytest.mark.kafka
def test_count_counts_the_entries_the_filter_keeps(
    capsysbinary: pytest.CaptureFixture[bytes],
    kafka_bootstrap: str,
    served: tuple[str, list[bytes]],
) -> None:
    topic, raw = served
    out = read_all(capsysbinary, kafka_bootstrap, topic, "--filter", "status>=300", "--count", "2")
    assert out.splitlines() == raw[2:4]


@pytest.mark.parametrize(
    "expression", ["status", "status>=", ">=500", "request..method=GET", "st@tus=5"]
)
def test_a_malformed_filter_is_refused_naming_it_with_exit_status_2(
    capsysbinary: pytest.CaptureFixture[bytes], expression: str
) -> None:
    status, out, err = run_tail(
        capsysbinary, "logs", "--filter", "status>=500", "--filter", expression
    )
    assert (status, out) == (2, b"")
    line = one_line(err)
    assert line.startswith("python -m kafka_log_middleware tail: error: argument --filter: ")
    assert repr(expression) in line


@pytest.mark.kafka
def test_what_is_no_kong_entry_is_shown_raw_or_flagged_never_fatal(
    capsysbinary: pytest.CaptureFixture[bytes], kafka_bootstrap: str
) -> None:
    topic = unique_topic("tail-odd")
    good = entries(1)[0]
    assert good is not None
    publish(kafka_bootstrap, topic, [b"\x00not json\x1b[2J", None, b"[1,2]", b'{"a": 1}', good])
    json_lines = read_all(capsysbinary, kafka_bootstrap, topic).splitlines()
    assert json_lines == [b"b'\\x00not json\\x1b[2J'", b"null", b"[1,2]", b'{"a": 1}', good]
    table = read_all(capsysbinary, kafka_bootstrap, topic, "--format", "table").splitlines()
    assert table[1:5] == [
        b"!! not JSON: 13 bytes: b'\\x00not json\\x1b[2J'",
        b"!! not JSON: no value (null)",
        b"!! not a Kong entry: [1,2]",
        b'!! not a Kong entry: {"a":1}',
    ]
    assert table[5].split()[1:4] == [b"GET", b"200", b"-"]
    pretty = read_all(capsysbinary, kafka_bootstrap, topic, "--format", "pretty")
    assert pretty.count(b"!! not JSON") == 2 and pretty.count(b"!! not a Kong entry:") == 2
    assert documents(pretty.split(b"!! not a Kong entry:\n")[-1]) == [{"a": 1}, orjson.loads(good)]


# -- colour -----------------------------------------------------------------------------------


@pytest.mark.kafka
def test_color_always_colours_the_status_and_auto_does_not_off_a_terminal(
    capsysbinary: pytest.CaptureFixture[bytes],
    kafka_bootstrap: str,
    served: tuple[str, list[bytes]],
) -> None:
    topic, _ = served
    coloured = read_all(
        capsysbinary, kafka_bootstrap, topic, "--format", "table", "--color", "always"
    )
    codes = [ANSI.findall(line) for line in coloured.splitlines()[1:]]
    assert codes == [
        [b"\x1b[32m", b"\x1b[0m"], [b"\x1b[32m", b"\x1b[0m"], [b"\x1b[36m", b"\x1b[0m"],
        [b"\x1b[33m", b"\x1b[0m"], [b"\x1b[31m", b"\x1b[0m"], [b"\x1b[31m", b"\x1b[0m"],
    ]  # fmt: skip
    for args in (
        ["--format", "table"],
        ["--format", "table", "--color", "auto"],
        ["--format", "pretty"],
    ):
        assert not ANSI.search(read_all(capsysbinary, kafka_bootstrap, topic, *args))
    plain = read_all(capsysbinary, kafka_bootstrap, topic, "--format", "table", "--color", "never")
    assert ANSI.sub(b"", coloured) == plain


def on_a_terminal(args: list[str], environ: Mapping[str, str]) -> bytes:
    """What the command prints with its stdout on a pseudo-terminal (it must end by itself)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "kafka_log_middleware", "tail", *args],
        cwd=ROOT, env=environ, stdout=follower, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(follower)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
        if process.stderr:
            process.stderr.close()
    return shown.replace(b"\r\n", b"\n")


@pytest.mark.kafka
def test_on_a_terminal_colour_is_on_unless_no_color_is_set(
    kafka_bootstrap: str, served: tuple[str, list[bytes]]
) -> None:
    topic, raw = served
    args = [topic, "--bootstrap-servers", kafka_bootstrap, "--from-beginning", "--no-follow"]
    environ = {
        k: v for k, v in os.environ.items() if k != "NO_COLOR" and not k.startswith("KAFKA_LOG_")
    }
    table = on_a_terminal([*args, "--format", "table"], environ)
    assert len(ANSI.findall(table)) == 2 * len(raw)
    pretty = on_a_terminal([*args, "--format", "pretty"], environ)
    assert documents(ANSI.sub(b"", pretty)) == [orjson.loads(value) for value in raw]
    assert ANSI.findall(pretty).count(b"\x1b[0m") == len(raw)
    assert on_a_terminal([*args], environ).splitlines() == raw  # json: never coloured
    assert not ANSI.search(
        on_a_terminal([*args, "--format", "table"], {**environ, "NO_COLOR": "1"})
    )
    assert not ANSI.search(on_a_terminal([*args, "--format", "table", "--color", "never"], environ))
    forced = on_a_terminal(
        [*args, "--format", "table", "--color", "always"], {**environ, "NO_COLOR": "1"}
    )
    assert ANSI.sub(b"", forced) == ANSI.sub(b"", table) != forced


# -- following, and where it starts -----------------------------------------------------------


class Tail:
    """The command in a real process: its output lines as they come, and Ctrl-C."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kafka_log_middleware", "tail", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # A shell's background job ignores SIGINT, and a child inherits that.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        self.lines: queue.Queue[bytes] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.put(line.rstrip(b"\n"))

    def take(self, count: int, timeout: float = 30.0) -> list[bytes]:
        return [self.lines.get(timeout=timeout) for _ in range(count)]

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; the exit status and stderr."""
        self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=30)
        return self.process.returncode, err.decode()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=30)


@pytest.fixture
def tails() -> Iterator[list[Tail]]:
    started: list[Tail] = []
    yield started
    for tail in started:
        tail.kill()


def n_of(line: bytes) -> int:
    return int(orjson.loads(line)["n"])


@pytest.mark.kafka
def test_follow_prints_what_is_produced_while_it_runs_until_ctrl_c(
    kafka_bootstrap: str, tails: list[Tail]
) -> None:
    topic = unique_topic("tail-follow")
    produced = entries(6)
    publish(kafka_bootstrap, topic, produced[:3])
    tail = Tail(topic, "--bootstrap-servers", kafka_bootstrap, "--from-beginning", "--follow")
    tails.append(tail)
    assert [n_of(line) for line in tail.take(3)] == [0, 1, 2]
    publish(kafka_bootstrap, topic, produced[3:5])
    assert [n_of(line) for line in tail.take(2)] == [3, 4]
    publish(kafka_bootstrap, topic, produced[5:])
    assert [n_of(line) for line in tail.take(1)] == [5]
    status, err = tail.interrupt()
    assert (status, err) == (0, "")
    assert tail.lines.empty()


@pytest.mark.kafka
def test_new_messages_only_by_default_while_it_follows(
    kafka_bootstrap: str, tails: list[Tail]
) -> None:
    topic = unique_topic("tail-new")
    publish(kafka_bootstrap, topic, entries(3))  # already there: never shown
    tail = Tail(topic, "--bootstrap-servers", kafka_bootstrap, "--format", "table")
    tails.append(tail)
    assert tail.take(1)[0].startswith(b"TIME ")
    # Published until one shows: the command starts reading at the end it found.
    shown: list[bytes] = []
    for n in range(100, 160):
        publish(
            kafka_bootstrap,
            topic,
            [orjson.dumps({"request": {"uri": f"/{n}"}, "response": {"status": 201}})],
        )
        try:
            shown.append(tail.lines.get(timeout=0.5))
            break
        except queue.Empty:
            continue
    assert shown, "no new message was shown"
    assert tail.interrupt() == (0, "")
    rows = shown + [tail.lines.get_nowait() for _ in range(tail.lines.qsize())]
    paths = [row.split()[4] for row in rows]  # "-" for the time: the probes have none
    assert all(int(path.lstrip(b"/")) >= 100 for path in paths), rows


@pytest.mark.kafka
def test_no_follow_stops_at_the_end_by_itself(
    capsysbinary: pytest.CaptureFixture[bytes], kafka_bootstrap: str, busy_topic: str
) -> None:
    out = read_all(capsysbinary, kafka_bootstrap, busy_topic)
    assert sorted(n_of(line) for line in out.splitlines()) == list(range(300))


@pytest.mark.kafka
def test_no_follow_of_an_empty_topic_prints_nothing(
    capsysbinary: pytest.CaptureFixture[bytes], kafka_bootstrap: str
) -> None:
    topic = unique_topic("tail-empty")
    publish(kafka_bootstrap, topic, [], partitions=3)
    assert read_all(capsysbinary, kafka_bootstrap, topic) == b""
    assert read_all(capsysbinary, kafka_bootstrap, topic, "--format", "table").startswith(b"TIME ")


@pytest.mark.kafka
def test_no_follow_with_a_count_beyond_the_end_fails(
    capsysbinary: pytest.CaptureFixture[bytes], kafka_bootstrap: str
) -> None:
    topic = unique_topic("tail-end")
    publish(kafka_bootstrap, topic, entries(3))
    status, out, err = run_tail(
        capsysbinary, topic, "--bootstrap-servers", kafka_bootstrap, "--from-beginning",
        "--no-follow", "--count", "5",
    )  # fmt: skip
    assert status == 1
    assert len(out.splitlines()) == 3
    assert "3 of 5 entries, then the end of the topic" in one_line(err)


def test_no_follow_without_from_beginning_is_refused(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    status, out, err = run_tail(capsysbinary, "logs", "--no-follow")
    assert (status, out) == (2, b"")
    assert "--no-follow without --from-beginning" in one_line(err)


# -- the config's settings: KAFKA_LOG_*, and a secured cluster ---------------------------------


@pytest.mark.kafka
def test_topic_and_servers_come_from_the_kafka_log_environment(
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    kafka_bootstrap: str,
    served: tuple[str, list[bytes]],
) -> None:
    topic, raw = served
    monkeypatch.setenv("KAFKA_LOG_TOPIC", topic)
    monkeypatch.setenv("KAFKA_LOG_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("KAFKA_LOG_SPOOL_DIR", "/proc/no-spool-here")  # the middleware's alone
    status, out, err = run_tail(capsysbinary, "--from-beginning", "--no-follow")
    assert (status, err) == (0, "")
    assert out.splitlines() == raw
    monkeypatch.setenv("KAFKA_LOG_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    # A flag wins over its variable.
    status, out, _ = run_tail(
        capsysbinary, "--bootstrap-servers", kafka_bootstrap, "--from-beginning", "--no-follow"
    )
    assert (status, out.splitlines()) == (0, raw)


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        (
            "KAFKA_LOG_BOOTSTRAP_SERVERS",
            "nohost",
            "KAFKA_LOG_BOOTSTRAP_SERVERS: bootstrap_servers: 'nohost'",
        ),
        ("KAFKA_LOG_TIMEOUT", "soon", "KAFKA_LOG_TIMEOUT: expected an integer"),
        ("KAFKA_LOG_SECURITY", '{"ssl": tru', "KAFKA_LOG_SECURITY: expected a JSON object"),
        (
            "KAFKA_LOG_SECURITY",
            '{"ssl": true, "cafile": "/no/ca.pem"}',
            "security.cafile: no such file",
        ),
        (
            "KAFKA_LOG_AUTHENTICATION",
            f'{{"mechanism": "PLAIN", "user": "{USER}", "password": "{PASSWORD}", "x": 1}}',
            "KAFKA_LOG_AUTHENTICATION: authentication: 'x' is not one of its keys",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_with_exit_status_2(
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    complaint: str,
) -> None:
    monkeypatch.setenv(variable, value)
    status, out, err = run_tail(capsysbinary, "logs")
    assert (status, out) == (2, b"")
    line = one_line(err)
    assert complaint in line
    assert PASSWORD not in line


def test_no_topic_anywhere_is_refused(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, _, err = run_tail(capsysbinary, "--bootstrap-servers", "127.0.0.1:9092")
    assert status == 2
    assert "a topic is required: give it, or set KAFKA_LOG_TOPIC" in one_line(err)


def secured_environment(
    secured_kafka: SecuredKafka, topic: str, password: str = PASSWORD
) -> dict[str, str]:
    """The middleware's own settings for the SASL_SSL listener, as its environment holds them."""
    return {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": secured_kafka.broker.listener("SASL_SSL"),
        "KAFKA_LOG_TOPIC": topic,
        "KAFKA_LOG_AUTHENTICATION": orjson.dumps(
            {"strategy": "sasl", "mechanism": "SCRAM-SHA-512", "user": USER, "password": password}
        ).decode(),
        "KAFKA_LOG_SECURITY": orjson.dumps(
            {"ssl": True, "cafile": str(secured_kafka.certs.ca)}
        ).decode(),
    }


@pytest.fixture(scope="module")
def secured_topic(secured_kafka: SecuredKafka) -> tuple[str, list[bytes]]:
    """A topic of the secured broker holding three entries (published in plain text)."""
    topic = unique_topic("tail-secured")
    produced = [value for value in entries(3) if value is not None]
    publish(secured_kafka.broker.bootstrap_servers, topic, list(produced))
    return topic, produced


@pytest.mark.kafka
def test_tail_from_a_sasl_ssl_listener_with_the_configs_environment(
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    secured_kafka: SecuredKafka,
    secured_topic: tuple[str, list[bytes]],
) -> None:
    topic, produced = secured_topic
    for variable, value in secured_environment(secured_kafka, topic).items():
        monkeypatch.setenv(variable, value)
    status, out, err = run_tail(capsysbinary, "--from-beginning", "--no-follow")
    assert (status, err) == (0, "")
    assert out.splitlines() == produced


@pytest.mark.kafka
def test_tail_from_a_sasl_ssl_listener_with_flags(
    capsysbinary: pytest.CaptureFixture[bytes],
    tmp_path: Path,
    secured_kafka: SecuredKafka,
    secured_topic: tuple[str, list[bytes]],
) -> None:
    topic, produced = secured_topic
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    status, out, err = run_tail(
        capsysbinary, topic, "--bootstrap-servers", secured_kafka.broker.listener("SASL_SSL"),
        "--sasl-mechanism", "PLAIN", "--sasl-user", USER,
        "--sasl-password-file", str(password_file),
        "--tls-cafile", str(secured_kafka.certs.ca), "--from-beginning", "--no-follow",
    )  # fmt: skip
    assert (status, err) == (0, "")
    assert out.splitlines() == produced


@pytest.mark.kafka
def test_tail_with_oauthbearer_tokens_from_the_client_credentials_grant(
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    secured_kafka: SecuredKafka,
    secured_topic: tuple[str, list[bytes]],
) -> None:
    topic, produced = secured_topic
    with token_endpoint("kafka-log", PASSWORD) as (url, grants):
        grant = {
            "mechanism": "OAUTHBEARER",
            "token_endpoint_url": url,
            "client_id": "kafka-log",
            "client_secret": PASSWORD,
        }
        monkeypatch.setenv("KAFKA_LOG_AUTHENTICATION", orjson.dumps(grant).decode())
        status, out, err = run_tail(
            capsysbinary, topic, "--from-beginning", "--no-follow",
            "--bootstrap-servers", secured_kafka.broker.listener("SASL_PLAINTEXT"),
        )  # fmt: skip
    assert (status, err) == (0, "")
    assert out.splitlines() == produced
    assert grants and all(form["grant_type"] == "client_credentials" for form in grants)


@pytest.mark.kafka
def test_flags_override_the_keys_of_the_configs_environment(
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    secured_kafka: SecuredKafka,
    secured_topic: tuple[str, list[bytes]],
) -> None:
    topic, produced = secured_topic
    for variable, value in secured_environment(secured_kafka, topic).items():
        monkeypatch.setenv(variable, value)
    # The environment's password and CA, another mechanism; then an mTLS listener.
    status, out, err = run_tail(
        capsysbinary, "--sasl-mechanism", "SCRAM-SHA-256", "--from-beginning", "--no-follow"
    )
    assert (status, err, out.splitlines()) == (0, "", produced)
    monkeypatch.delenv("KAFKA_LOG_AUTHENTICATION")
    certs = secured_kafka.certs
    status, out, err = run_tail(
        capsysbinary, "--bootstrap-servers", secured_kafka.broker.listener("MTLS"),
        "--tls-certfile", str(certs.client_cert), "--tls-keyfile", str(certs.client_key),
        "--from-beginning", "--no-follow",
    )  # fmt: skip
    assert (status, err, out.splitlines()) == (0, "", produced)


@pytest.mark.kafka
def test_a_refused_connection_says_why_and_never_shows_the_password(
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    secured_kafka: SecuredKafka,
    secured_topic: tuple[str, list[bytes]],
) -> None:
    topic, _ = secured_topic
    wrong = "wrong-" + PASSWORD
    for variable, value in secured_environment(secured_kafka, topic, wrong).items():
        monkeypatch.setenv(variable, value)
    status, out, err = run_tail(capsysbinary, "--connect-timeout", "20")
    assert (status, out) == (1, b"")
    line = one_line(err)
    assert line.startswith(
        f"python -m kafka_log_middleware tail: error: cannot reach Kafka at "
        f"{secured_kafka.broker.listener('SASL_SSL')}: SASL authentication failed"
    )
    assert wrong not in line and PASSWORD not in line
    # A listener that wants a client certificate we do not have: named by our TLS probe.
    monkeypatch.delenv("KAFKA_LOG_AUTHENTICATION")
    monkeypatch.setenv("KAFKA_LOG_BOOTSTRAP_SERVERS", secured_kafka.broker.listener("MTLS"))
    status, _, err = run_tail(capsysbinary, "--connect-timeout", "20")
    assert status == 1
    assert "TLS: the broker requires a client certificate" in one_line(err)
    # A password only in a file given with the flags: never quoted either.
    status, _, err = run_tail(capsysbinary, "--sasl-user", USER, "--sasl-mechanism", "PLAIN")
    assert status == 2
    assert "authentication.password is required for PLAIN (from --sasl-*)" in one_line(err)


def test_help_shows_no_secret_of_the_environment(
    capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "KAFKA_LOG_AUTHENTICATION",
        orjson.dumps({"mechanism": "PLAIN", "user": USER, "password": PASSWORD}).decode(),
    )
    monkeypatch.setenv("KAFKA_LOG_SECURITY", '{"ssl": true, "keyfile_password": "k3y-secret"}')
    with pytest.raises(SystemExit) as exit_:
        main(["tail", "--help"])
    assert exit_.value.code == 0
    shown = capsysbinary.readouterr().out.decode()
    assert "--sasl-password-file" in shown and "--filter" in shown
    assert PASSWORD not in shown and "k3y-secret" not in shown and USER not in shown
