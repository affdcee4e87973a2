"""``python -m kafka_log_middleware tail``: watch the log entries arriving in a topic.

Prints each message as one JSON line (or pretty-printed with ``--pretty``), from the
beginning of the topic or only new ones, until interrupted, ``--count`` entries are
printed or ``--timeout`` passes without one. Failures (bad arguments, a broker that
cannot be reached, a missing topic) are one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, NoReturn

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from .config import InvalidConfig, _servers, _topic

PROG = "python -m kafka_log_middleware"
CONNECT_TIMEOUT = 10.0
"""Default seconds to wait for the cluster before giving up."""
EXIT_FAILED = 1
"""Exit status when the command cannot do its job (arguments wrong: 2, argparse's)."""


class TailError(Exception):
    """Why ``tail`` could not finish its job, in one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _checked(check: Callable[[str, Any], Any], field: str) -> Callable[[str], Any]:
    """An argparse type from one of the config's checks, so both accept the same values."""

    def convert(text: str) -> Any:
        try:
            return check(field, text)
        except InvalidConfig as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{field}: ")) from None

    return convert


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, not {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG)
    commands = parser.add_subparsers(dest="command", required=True)
    tail = commands.add_parser("tail", help="print the entries published to a topic")
    tail.add_argument("topic", type=_checked(_topic, "topic"))
    tail.add_argument(
        "--bootstrap-servers",
        type=_checked(_servers, "bootstrap_servers"),
        default=os.environ.get(
            "KAFKA_LOG_BOOTSTRAP_SERVERS",
            os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        ),
        help="host:port[,host:port] (default: $KAFKA_LOG_BOOTSTRAP_SERVERS, "
        "$KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    tail.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest message instead of new ones only",
    )
    tail.add_argument(
        "--count",
        type=_count,
        default=0,
        help="stop after printing this many messages (0: no limit); "
        "exit status 1 if --timeout ends the wait first",
    )
    tail.add_argument(
        "--timeout",
        type=_seconds,
        default=0.0,
        help="stop after this many seconds without a message (0: never)",
    )
    tail.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=CONNECT_TIMEOUT,
        help=f"give up when the cluster does not answer within this many seconds "
        f"(0: never; default: {CONNECT_TIMEOUT:g})",
    )
    tail.add_argument("--pretty", action="store_true", help="indent the JSON")
    return parser


async def tail(
    topic: str,
    bootstrap_servers: str | Sequence[str],
    *,
    from_beginning: bool = False,
    count: int = 0,
    timeout: float = 0.0,
    pretty: bool = False,
    connect_timeout: float = CONNECT_TIMEOUT,
    out: BinaryIO | None = None,
) -> int:
    """Print messages of ``topic`` to ``out`` (stdout); returns how many were printed.

    Raises ``TailError`` when the cluster does not answer within ``connect_timeout``
    seconds or the topic does not exist (it is never created).
    """
    if isinstance(bootstrap_servers, str):
        bootstrap_servers = bootstrap_servers.split(",")
    servers = ",".join(bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=list(bootstrap_servers), enable_auto_commit=False)
    try:
        partitions = await _connect(consumer, topic, servers, connect_timeout)
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        return await _print(consumer, count, timeout, pretty, out or sys.stdout.buffer)
    finally:
        await consumer.stop()


async def _connect(
    consumer: AIOKafkaConsumer, topic: str, servers: str, connect_timeout: float
) -> list[TopicPartition]:
    """Connect and find the topic's partitions, within ``connect_timeout`` seconds.

    Without the bound, aiokafka waits up to its request timeout (40 s) per attempt.
    """
    try:
        return await asyncio.wait_for(_partitions(consumer, topic), connect_timeout or None)
    except TimeoutError:
        raise TailError(
            f"cannot reach Kafka at {servers}: no answer within {connect_timeout:g} s"
        ) from None
    except (KafkaError, OSError) as exc:
        raise TailError(f"cannot reach Kafka at {servers} ({type(exc).__name__})") from None


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    await consumer.start()
    # Metadata of all topics, never a request naming this one: that could auto-create it.
    cluster = await consumer._client.fetch_all_metadata()
    ids = cluster.partitions_for_topic(topic)
    if not ids:
        raise TailError(f"topic {topic!r} does not exist")
    return [TopicPartition(topic, p) for p in sorted(ids)]


async def _print(
    consumer: AIOKafkaConsumer, count: int, timeout: float, pretty: bool, out: BinaryIO
) -> int:
    """Print until ``count`` messages (exactly) or ``timeout`` seconds without one."""
    option = orjson.OPT_INDENT_2 if pretty else 0
    printed = 0
    last = time.monotonic()
    while not count or printed < count:
        wait = 1.0 if not timeout else max(min(timeout - (time.monotonic() - last), 1.0), 0.0)
        batches = await consumer.getmany(
            timeout_ms=int(wait * 1000), max_records=count - printed if count else None
        )
        records = [record for part in batches.values() for record in part]
        if records:
            last = time.monotonic()
        elif timeout and time.monotonic() - last >= timeout:
            if count:
                raise TailError(f"{printed} of {count} entries, then none for {timeout:g} s")
            break
        for record in records[: count - printed if count else None]:
            out.write(_line(record.value, option))
            printed += 1
        out.flush()
    return printed


def _line(value: bytes | None, option: int) -> bytes:
    """One message as a line: its JSON re-encoded, else its Python repr."""
    if value is None:
        return b"null\n"
    try:
        return orjson.dumps(orjson.loads(value), option=option) + b"\n"
    except orjson.JSONDecodeError:
        return repr(value).encode() + b"\n"


def _quiet_aiokafka() -> None:
    """aiokafka logs each failed connection; the command reports failures itself."""
    logger = logging.getLogger("aiokafka")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when done, 1 when the command failed, 2 for bad arguments."""
    args = _parser().parse_args(argv)
    _quiet_aiokafka()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                tail(
                    args.topic,
                    args.bootstrap_servers,
                    from_beginning=args.from_beginning,
                    count=args.count,
                    timeout=args.timeout,
                    pretty=args.pretty,
                    connect_timeout=args.connect_timeout,
                )
            )
    except (TailError, KafkaError) as exc:
        reason = str(exc) if isinstance(exc, TailError) else f"Kafka error ({type(exc).__name__})"
        print(f"{PROG} {args.command}: error: {reason}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return 0


def tail_main() -> int:
    """The ``kafka-log-tail`` command: ``python -m kafka_log_middleware tail``."""
    return main(["tail", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
