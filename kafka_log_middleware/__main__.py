"""``python -m kafka_log_middleware tail``: watch the log entries arriving in a topic.

Prints each message as one JSON line (or pretty-printed with ``--pretty``), from the
beginning of the topic or only new ones, until interrupted or ``--count`` is reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kafka_log_middleware")
    commands = parser.add_subparsers(dest="command", required=True)
    tail = commands.add_parser("tail", help="print the entries published to a topic")
    tail.add_argument("topic")
    tail.add_argument(
        "--bootstrap-servers",
        default=os.environ.get(
            "KAFKA_LOG_BOOTSTRAP_SERVERS",
            os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        ),
        help="host:port[,host:port] (default: $KAFKA_LOG_BOOTSTRAP_SERVERS)",
    )
    tail.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest message instead of new ones only",
    )
    tail.add_argument("--count", type=int, default=0, help="stop after this many messages")
    tail.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="stop after this many seconds without a message (0: never)",
    )
    tail.add_argument("--pretty", action="store_true", help="indent the JSON")
    return parser


async def tail(
    topic: str,
    bootstrap_servers: str,
    *,
    from_beginning: bool = False,
    count: int = 0,
    timeout: float = 0.0,
    pretty: bool = False,
) -> int:
    """Print messages of ``topic``; returns how many were printed."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers.split(","), enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        printed = 0
        option = orjson.OPT_INDENT_2 if pretty else 0
        while not count or printed < count:
            batches = await consumer.getmany(timeout_ms=int(timeout * 1000) or 1000)
            if not batches and timeout:
                break
            for records in batches.values():
                for record in records:
                    try:
                        text = orjson.dumps(orjson.loads(record.value), option=option)
                    except orjson.JSONDecodeError:
                        text = repr(record.value).encode()
                    sys.stdout.buffer.write(text + b"\n")
                    printed += 1
            sys.stdout.flush()
        return printed
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    for _ in range(50):
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return [TopicPartition(topic, p) for p in sorted(ids)]
        await consumer._client.force_metadata_update()  # topic may be created meanwhile
        consumer._client.add_topic(topic)
        await asyncio.sleep(0.2)
    raise SystemExit(f"topic {topic!r} does not exist")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    args = _parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            tail(
                args.topic,
                args.bootstrap_servers,
                from_beginning=args.from_beginning,
                count=args.count,
                timeout=args.timeout,
                pretty=args.pretty,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
