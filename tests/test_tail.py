"""``python -m kafka_log_middleware tail`` against the real broker, a closed port and a
silent one: exactly ``--count`` entries, and every failure one line on stderr with a
non-zero exit status, never a traceback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from kafka_log_middleware.__main__ import main
from tests.kafka_helpers import create_topic, topic_partitions, unique_topic
from tests.servers import free_port

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


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
    return [orjson.dumps({"request": {"uri": f"/{n}"}, "n": n}) for n in range(count)]


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
def test_pretty_prints_each_entry_indented(
    capsysbinary: pytest.CaptureFixture[bytes], kafka_bootstrap: str, busy_topic: str
) -> None:
    status, out, _ = run_tail(
        capsysbinary,
        busy_topic,
        "--bootstrap-servers",
        kafka_bootstrap,
        "--from-beginning",
        "--count",
        "1",
        "--pretty",
    )
    assert status == 0
    assert out.startswith(b'{\n  "request": {\n    "uri": "/')
    assert set(orjson.loads(out)) == {"request", "n"}


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
