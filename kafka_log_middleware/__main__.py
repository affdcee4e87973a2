"""``python -m kafka_log_middleware tail``: watch the log entries arriving in a topic.

Prints each message (``--format json``: as it is in Kafka, one per line; ``pretty``;
``table``), only new ones or ``--from-beginning``, those ``--filter`` keeps, until
interrupted (``--no-follow``: until the end the topic had when it started), ``--count``
entries are printed or ``--timeout`` passes without one. It reaches a secured cluster
with the config's own settings (``KAFKA_LOG_*``, or the ``--sasl-*``/``--tls*`` flags).
Failures (bad arguments or settings, a broker that cannot be reached, a missing topic)
are one line on stderr and a non-zero exit status; Ctrl-C is a clean exit, status 0.
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
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO, NoReturn

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from . import _log
from .aiokafka_backend import refusal_of, with_token_provider
from .config import InvalidConfig, KafkaLogConfig, _parse_env, _servers, _topic
from .security import MECHANISMS
from .tail_filters import Filter, FilterError, matches_all, parse_filter
from .tail_output import COLORS, FORMATS, Printer, decode, use_color
from .tls_probe import settings_refusal

PROG = "python -m kafka_log_middleware"
CONNECT_TIMEOUT = 10.0
"""Default seconds to wait for the cluster before giving up."""
EXIT_FAILED = 1
"""Exit status when the command cannot do its job (arguments or settings wrong: 2)."""
EXIT_USAGE = 2
"""Exit status for bad arguments or settings (argparse's)."""
DEFAULT_SERVERS = "127.0.0.1:9092"
TAIL_FIELDS = (
    "bootstrap_servers",
    "topic",
    "client_id",
    "timeout",
    "keepalive",
    "producer_request_retries_backoff_timeout",
    "authentication",
    "security",
)
"""The config fields the consumer uses (``aiokafka_client_options``), read from their
``KAFKA_LOG_*`` variables; the others are the middleware's alone and not read."""


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


def _filter(text: str) -> Filter:
    try:
        return parse_filter(text)
    except FilterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG)
    commands = parser.add_subparsers(dest="command", required=True)
    tail = commands.add_parser("tail", help="print the entries published to a topic")
    tail.add_argument(
        "topic",
        nargs="?",
        type=_checked(_topic, "topic"),
        help="the topic (default: $KAFKA_LOG_TOPIC)",
    )
    tail.add_argument(
        "--bootstrap-servers",
        type=_checked(_servers, "bootstrap_servers"),
        help=f"host:port[,host:port] (default: $KAFKA_LOG_BOOTSTRAP_SERVERS, "
        f"$KAFKA_BOOTSTRAP_SERVERS or {DEFAULT_SERVERS})",
    )
    tail.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest message instead of new ones only",
    )
    tail.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep waiting for new messages until interrupted (the default); "
        "--no-follow stops at the end the topic had at the start (needs --from-beginning)",
    )
    tail.add_argument(
        "--count",
        type=_count,
        default=0,
        help="stop after printing this many messages (0: no limit); "
        "exit status 1 if --timeout or the end (--no-follow) comes first",
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
    tail.add_argument(
        "--filter",
        dest="filters",
        action="append",
        type=_filter,
        default=[],
        metavar="EXPR",
        help="print only the entries where FIELD OP VALUE holds, e.g. status>=500, "
        "request.method=GET, latencies.request>100, request.uri~/api/* (OP: = != > >= < "
        "<= ~ (glob); numbers compare as numbers; shorthands: status, method, uri, "
        "latency); repeated: all must hold",
    )
    tail.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="json: each message as it is in Kafka, one per line (the default); "
        "pretty: indented; table: one aligned line per entry",
    )
    tail.add_argument(
        "--pretty", dest="format", action="store_const", const="pretty", help="--format pretty"
    )
    tail.add_argument(
        "--color",
        choices=COLORS,
        default="auto",
        help="colour the status by its class (pretty, table): auto (the default) on a "
        "terminal unless $NO_COLOR is set",
    )
    security = tail.add_argument_group(
        "security",
        "the config's authentication and security, as the middleware's "
        "(default: $KAFKA_LOG_AUTHENTICATION and $KAFKA_LOG_SECURITY, JSON; "
        "these flags override their keys)",
    )
    security.add_argument("--sasl-mechanism", choices=MECHANISMS, help="authentication.mechanism")
    security.add_argument("--sasl-user", help="authentication.user")
    security.add_argument(
        "--sasl-password-file",
        metavar="PATH",
        help="authentication.password: the file's first line (never a flag's value)",
    )
    security.add_argument("--tls", action="store_true", help="security.ssl: TLS on")
    security.add_argument("--tls-cafile", metavar="PATH", help="security.cafile (implies --tls)")
    security.add_argument(
        "--tls-certfile", metavar="PATH", help="security.certfile, for mTLS (implies --tls)"
    )
    security.add_argument(
        "--tls-keyfile", metavar="PATH", help="security.keyfile, for mTLS (implies --tls)"
    )
    security.add_argument(
        "--tls-no-verify",
        action="store_true",
        help="security.ssl_verify=false: do not verify the brokers' certificates (implies --tls)",
    )
    return parser


def tail_config(args: argparse.Namespace, environ: Mapping[str, str]) -> KafkaLogConfig:
    """The consumer's config: the ``TAIL_FIELDS`` of ``KAFKA_LOG_*``, and the flags over
    them (``InvalidConfig`` naming the variable or the flags when a value is refused)."""
    env = {
        variable: environ[variable]
        for variable in (f"KAFKA_LOG_{name.upper()}" for name in TAIL_FIELDS)
        if variable in environ
    }
    given: dict[str, Any] = {}
    if args.topic is not None:
        given["topic"] = args.topic
    if args.bootstrap_servers is not None:
        given["bootstrap_servers"] = args.bootstrap_servers
    flagged = {
        "authentication": (_sasl_flags(args), "--sasl-*"),
        "security": (_tls_flags(args), "--tls*"),
    }
    for name, (flags, _) in flagged.items():
        if flags:
            given[name] = {**(_env_object(env, name) or {}), **flags}
    for name in given:
        env.pop(f"KAFKA_LOG_{name.upper()}", None)
    if "topic" not in given and "KAFKA_LOG_TOPIC" not in env:
        raise InvalidConfig("topic", "a topic is required: give it, or set KAFKA_LOG_TOPIC")
    fallback = environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or DEFAULT_SERVERS
    try:
        return KafkaLogConfig.from_env(environ=env, **{"bootstrap_servers": fallback, **given})
    except InvalidConfig as exc:
        if exc.field not in flagged or not flagged[exc.field][0]:
            raise
        variable = f"KAFKA_LOG_{exc.field.upper()}"
        sources = flagged[exc.field][1] + (f" and {variable}" if variable in environ else "")
        raise InvalidConfig(exc.field, f"{exc} (from {sources})") from None


def _env_object(env: Mapping[str, str], name: str) -> dict[str, Any] | None:
    """The JSON object of ``KAFKA_LOG_<NAME>``, parsed as ``from_env`` does."""
    variable = f"KAFKA_LOG_{name.upper()}"
    if variable not in env:
        return None
    try:
        parsed: dict[str, Any] | None = _parse_env(name, env[variable])
    except ValueError as exc:
        raise InvalidConfig(name, f"{variable}: {exc}") from None
    return parsed


def _sasl_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if args.sasl_mechanism is not None:
        flags["mechanism"] = args.sasl_mechanism
    if args.sasl_user is not None:
        flags["user"] = args.sasl_user
    if args.sasl_password_file is not None:
        flags["password"] = _first_line(args.sasl_password_file)
    return flags


def _first_line(path: str) -> str:
    """A secret file's first line (without its line end); errors never quote it."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidConfig(
            "authentication", f"--sasl-password-file: cannot read {path!r} ({reason})"
        ) from None


def _tls_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for key in ("cafile", "certfile", "keyfile"):
        value = getattr(args, f"tls_{key}")
        if value is not None:
            flags[key] = value
    if args.tls_no_verify:
        flags["ssl_verify"] = False
    if flags or args.tls:
        flags["ssl"] = True
    return flags


async def tail(
    config: KafkaLogConfig,
    *,
    follow: bool = True,
    from_beginning: bool = False,
    count: int = 0,
    timeout: float = 0.0,
    filters: Sequence[Filter] = (),
    printer: Printer | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    out: BinaryIO | None = None,
) -> int:
    """Print messages of ``config.topic`` to ``out`` (stdout); returns how many were printed.

    Without ``follow``, stops at the end offsets the partitions had once connected.
    Raises ``TailError`` when the cluster does not answer within ``connect_timeout``
    seconds or the topic does not exist (it is never created).
    """
    printer = printer or Printer()
    out = out or sys.stdout.buffer
    asyncio.get_running_loop().set_exception_handler(_quiet_client_errors)
    options = with_token_provider(config, config.aiokafka_client_options())
    errors: deque[BaseException] = deque(maxlen=8)
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
    try:
        partitions = await _connect(consumer, config, connect_timeout, errors)
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        ends = None if follow else await consumer.end_offsets(partitions)
        out.write(printer.header())
        reader = _Reader(consumer, filters, printer, out)
        return await reader.run(count, timeout, ends)
    finally:
        await consumer.stop()


async def _connect(
    consumer: AIOKafkaConsumer,
    config: KafkaLogConfig,
    connect_timeout: float,
    errors: deque[BaseException],
) -> list[TopicPartition]:
    """Connect and find the topic's partitions, within ``connect_timeout`` seconds.

    Without the bound, aiokafka waits up to its request timeout per attempt. A refusal
    (SASL, TLS) is named as the middleware names it, from what aiokafka logged.
    """
    servers = ",".join(config.bootstrap_servers)
    try:
        with _log.our_client(errors):
            async with asyncio.timeout(connect_timeout or None):
                return await _partitions(consumer, config.topic)
    except TimeoutError:
        failure = f": no answer within {connect_timeout:g} s"
    except (KafkaError, OSError) as exc:
        failure = f" ({type(exc).__name__})"
        errors.appendleft(exc)
    refusal = next(filter(None, map(refusal_of, errors)), None) or await settings_refusal(
        config.bootstrap_servers[0], config.tls, config.timeout / 1000
    )
    raise TailError(f"cannot reach Kafka at {servers}" + (f": {refusal}" if refusal else failure))


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    await consumer.start()
    # Metadata of all topics, never a request naming this one: that could auto-create it.
    cluster = await consumer._client.fetch_all_metadata()
    ids = cluster.partitions_for_topic(topic)
    if not ids:
        raise TailError(f"topic {topic!r} does not exist")
    return [TopicPartition(topic, p) for p in sorted(ids)]


class _Reader:
    """Fetches, filters and prints the messages of the assigned partitions."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        filters: Sequence[Filter],
        printer: Printer,
        out: BinaryIO,
    ) -> None:
        self._consumer = consumer
        self._filters = filters
        self._printer = printer
        self._out = out
        self.printed = 0

    async def run(self, count: int, timeout: float, ends: dict[TopicPartition, int] | None) -> int:
        """Print until ``count`` messages (exactly), ``timeout`` seconds without one, or
        (``ends`` given) every partition read up to its end offset."""
        last = time.monotonic()
        while not count or self.printed < count:
            if ends is not None and await self._at_end(ends):
                if count:
                    raise TailError(f"{self.printed} of {count} entries, then the end of the topic")
                break
            wait = 1.0 if not timeout else max(min(timeout - (time.monotonic() - last), 1.0), 0.0)
            batches = await self._consumer.getmany(
                timeout_ms=int(wait * 1000), max_records=count - self.printed if count else None
            )
            records = [record for part in batches.values() for record in part]
            if records:
                last = time.monotonic()
            elif timeout and time.monotonic() - last >= timeout:
                if count:
                    raise TailError(
                        f"{self.printed} of {count} entries, then none for {timeout:g} s"
                    )
                break
            self._show(records, count)
            self._out.flush()
        return self.printed

    def _show(self, records: list[Any], count: int) -> None:
        for record in records:
            decoded = decode(record.value)
            if self._filters and not matches_all(self._filters, decoded):
                continue
            self._out.write(self._printer.render(record.value, decoded))
            self.printed += 1
            if self.printed == count:
                return

    async def _at_end(self, ends: dict[TopicPartition, int]) -> bool:
        """Whether every partition has been read up to its end offset in ``ends``."""
        for partition, end in list(ends.items()):
            if await self._consumer.position(partition) < end:
                return False
            del ends[partition]
        return True


def _quiet_client_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """aiokafka leaves the futures of failed connections unretrieved (asyncio would print
    their tracebacks when they are collected): the command reports the failure itself."""
    if isinstance(context.get("exception"), KafkaError | OSError):
        return
    loop.default_exception_handler(context)


def _quiet_aiokafka() -> None:
    """aiokafka logs each failed connection (and ours folds those into its warnings): the
    command reports failures itself."""
    for name in ("aiokafka", _log.logger.name):
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
    _log.tame_client_loggers("aiokafka")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: 0 when done or interrupted, 1 when the command failed,
    2 for bad arguments or settings."""
    args = _parser().parse_args(argv)
    error = f"{PROG} {args.command}: error:"
    if not args.follow and not args.from_beginning:
        print(
            f"{error} --no-follow without --from-beginning has nothing to print "
            "(it stops at the end the topic has now)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        config = tail_config(args, os.environ)
    except InvalidConfig as exc:
        print(f"{error} {exc}", file=sys.stderr)
        return EXIT_USAGE
    _quiet_aiokafka()
    printer = Printer(args.format, use_color(args.color, sys.stdout))
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                tail(
                    config,
                    follow=args.follow,
                    from_beginning=args.from_beginning,
                    count=args.count,
                    timeout=args.timeout,
                    filters=args.filters,
                    printer=printer,
                    connect_timeout=args.connect_timeout,
                )
            )
    except (TailError, KafkaError) as exc:
        reason = str(exc) if isinstance(exc, TailError) else f"Kafka error ({type(exc).__name__})"
        print(f"{error} {reason}", file=sys.stderr)
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
