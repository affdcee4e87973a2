"""``KafkaLogConfig``: the plugin's configuration, immutable, hashable and validated.

Field names, defaults and units (milliseconds) are those of Kong's kafka-log plugin,
so a Kong plugin config carries over unchanged. Every value is checked when the
config is built: a bad value raises ``ValueError`` naming the field, never later
inside a request.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack

if TYPE_CHECKING:
    from .capture import CapturedRequest

LogFormat = Literal["kong2", "kong3"]
Backend = Literal["aiokafka", "confluent"]
Hook = Callable[["CapturedRequest"], Any]
"""A user function of the captured request; runs in the background, never in the request."""

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_ACKS = (-1, 0, 1)
_FORMATS = ("kong2", "kong3")


def starlette_route(request: CapturedRequest) -> dict[str, Any] | None:
    """Default ``route`` hook: the Starlette/FastAPI route that matched, as a Kong route.

    Starlette's router stores the matched route in ``scope["route"]``; Kong's route
    entity gives ``name``, ``paths`` and ``methods``. Absent when nothing matched.
    """
    route = request.scope.get("route")
    if route is None:
        return None
    entity: dict[str, Any] = {}
    name = getattr(route, "name", None)
    if name:
        entity["name"] = name
    path = getattr(route, "path", None)
    if path is not None:
        entity["paths"] = [path]
    methods = getattr(route, "methods", None)
    if methods:
        entity["methods"] = sorted(methods)
    return entity or None


def _freeze(value: Any) -> Any:
    """A hashable, order-insensitive stand-in for nested mappings and lists."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(_freeze(v) for v in value)
    return value


class KafkaLogFields(TypedDict, total=False):
    """The fields of ``KafkaLogConfig`` as keyword arguments (typed ``**fields``)."""

    bootstrap_servers: str | Iterable[str]
    topic: str
    timeout: int
    keepalive: int
    producer_request_acks: int
    producer_request_timeout: int
    producer_request_limits_messages_per_request: int
    producer_request_limits_bytes_per_request: int
    producer_request_retries_max_attempts: int
    producer_request_retries_backoff_timeout: int
    producer_async: bool
    producer_async_flush_timeout: int
    producer_async_buffering_limits_messages_in_memory: int
    log_format: LogFormat
    redact_headers: Iterable[str]
    service: Mapping[str, Any] | None
    route: Hook | None
    consumer: Hook | None
    authenticated_entity: Hook | None
    custom_fields: Mapping[str, Hook]
    key_query_arg: str | None
    key: Hook | None
    request_id_header: str | None
    workspace: str | None
    workspace_name: str
    shutdown_timeout: int
    client_id: str
    producer_backend: Backend
    native_serializer: bool


@dataclasses.dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class KafkaLogConfig:
    """Where and how request logs are published. Times are in milliseconds, as in Kong."""

    bootstrap_servers: tuple[str, ...]
    """``host:port`` of one or more brokers (a list, tuple or comma-separated string)."""
    topic: str
    """Kafka topic the entries are published to."""
    timeout: int = 10000
    """Socket/request timeout towards the brokers (aiokafka ``request_timeout_ms``)."""
    keepalive: int = 60000
    """Idle connections are closed after this long (aiokafka ``connections_max_idle_ms``)."""
    producer_request_acks: int = 1
    """Acknowledgements required: -1 (all in-sync replicas), 0 (none) or 1 (leader)."""
    producer_request_timeout: int = 2000
    """How long the broker waits for replicas' acknowledgements (the produce request timeout)."""
    producer_request_limits_messages_per_request: int = 200
    """Entries that make a batch: this many waiting are sent without waiting for the timer."""
    producer_request_limits_bytes_per_request: int = 1048576
    """Most bytes in one batch (aiokafka ``max_batch_size``/``max_request_size``)."""
    producer_request_retries_max_attempts: int = 10
    """Attempts to deliver a batch before its entries are counted as dropped."""
    producer_request_retries_backoff_timeout: int = 100
    """Wait between attempts (aiokafka ``retry_backoff_ms``)."""
    producer_async: bool = True
    """True: entries are batched; False: each entry is sent on its own, at once."""
    producer_async_flush_timeout: int = 1000
    """Longest time an entry waits in memory before it is sent (Kong's flush timer)."""
    producer_async_buffering_limits_messages_in_memory: int = 50000
    """Bound on entries held (buffered or awaiting acknowledgement); beyond it, dropped."""

    log_format: LogFormat = "kong2"
    """``"kong2"`` (Kong 2.0 basic serializer) or ``"kong3"`` (Kong 3.x ``kong.log.serialize``)."""
    redact_headers: tuple[str, ...] = ("authorization", "proxy-authorization")
    """Request headers whose values are replaced by ``"REDACTED"``; ``()`` logs them raw."""
    service: Mapping[str, Any] | None = None
    """Kong's ``service`` entity for this app (for example ``{"name": "orders"}``)."""
    route: Hook | None = starlette_route
    """Returns the ``route`` object; default: the Starlette/FastAPI matched route."""
    consumer: Hook | None = None
    """Returns the ``consumer`` object, or None to leave it absent."""
    authenticated_entity: Hook | None = None
    """Returns the ``authenticated_entity`` object, or None to leave it absent."""
    custom_fields: Mapping[str, Hook] = dataclasses.field(default_factory=dict)
    """Dotted field name → function of the request; its value is set last (None removes)."""
    key_query_arg: str | None = None
    """Use this query argument's value as the Kafka message key (Kong Enterprise)."""
    key: Hook | None = None
    """A function returning the message key (str, bytes or None); excludes ``key_query_arg``."""
    request_id_header: str | None = None
    """kong3 ``request.id``: take it from this request header when present, else a uuid4."""
    workspace: str | None = None
    """kong3 ``workspace`` id; absent when None."""
    workspace_name: str = "default"
    """kong3 ``workspace_name``."""
    shutdown_timeout: int = 5000
    """At shutdown, how long to wait for pending entries to be delivered."""
    client_id: str = "kafka-log-middleware"
    """Kafka client id of the producer."""
    producer_backend: Backend = "aiokafka"
    """Kafka client: ``"aiokafka"`` (pure Python) or ``"confluent"`` (librdkafka, an extra)."""
    native_serializer: bool = True
    """Encode entries with the compiled serializer when it is installed (same output)."""

    def __post_init__(self) -> None:
        _set = object.__setattr__
        _set(self, "bootstrap_servers", _servers(self.bootstrap_servers))
        _set(self, "redact_headers", _names("redact_headers", self.redact_headers))
        _set(self, "custom_fields", dict(self.custom_fields))
        if self.service is not None:
            _set(self, "service", _mapping("service", self.service))
        if self.request_id_header is not None:
            _set(self, "request_id_header", self.request_id_header.lower())
        self._validate()

    def _validate(self) -> None:
        _check_topic(self.topic)
        for name in (
            "timeout",
            "keepalive",
            "producer_request_timeout",
            "producer_request_limits_messages_per_request",
            "producer_request_limits_bytes_per_request",
            "producer_request_retries_max_attempts",
            "producer_async_flush_timeout",
            "producer_async_buffering_limits_messages_in_memory",
            "shutdown_timeout",
        ):
            _positive_int(name, getattr(self, name))
        _non_negative_int(
            "producer_request_retries_backoff_timeout",
            self.producer_request_retries_backoff_timeout,
        )
        if self.producer_request_acks not in _ACKS or isinstance(self.producer_request_acks, bool):
            raise ValueError(
                f"producer_request_acks must be one of -1, 0, 1, not {self.producer_request_acks!r}"
            )
        if not isinstance(self.producer_async, bool):
            raise ValueError(f"producer_async must be a bool, not {self.producer_async!r}")
        if self.producer_backend not in ("aiokafka", "confluent"):
            raise ValueError(
                f"producer_backend must be 'aiokafka' or 'confluent', not {self.producer_backend!r}"
            )
        if (
            self.producer_backend == "confluent"
            and importlib.util.find_spec("confluent_kafka") is None
        ):
            raise ValueError(
                "producer_backend='confluent' needs confluent-kafka: "
                "pip install 'kafka-log-middleware[confluent]'"
            )
        if not isinstance(self.native_serializer, bool):
            raise ValueError(f"native_serializer must be a bool, not {self.native_serializer!r}")
        if self.log_format not in _FORMATS:
            raise ValueError(f"log_format must be 'kong2' or 'kong3', not {self.log_format!r}")
        for name in ("route", "consumer", "authenticated_entity", "key"):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise ValueError(f"{name} must be a callable or None, not {type(hook).__name__}")
        for field, hook in self.custom_fields.items():
            if (
                not isinstance(field, str)
                or not field
                or field.startswith(".")
                or field.endswith(".")
                or ".." in field
            ):
                raise ValueError(f"custom_fields: {field!r} is not a dotted field name")
            if not callable(hook):
                raise ValueError(f"custom_fields[{field!r}] must be a callable")
        if self.key is not None and self.key_query_arg is not None:
            raise ValueError("key and key_query_arg are exclusive: give one of them")
        if self.key_query_arg is not None and not (
            isinstance(self.key_query_arg, str) and self.key_query_arg
        ):
            raise ValueError("key_query_arg must be a non-empty string")
        for name in ("client_id", "workspace_name"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string")

    # -- identity -------------------------------------------------------------

    def _identity(self) -> tuple[Any, ...]:
        return tuple(_freeze(getattr(self, f.name)) for f in dataclasses.fields(self))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KafkaLogConfig):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default and f.name not in ("custom_fields",)
        )
        return f"KafkaLogConfig({shown})"

    def replace(self, **changes: Unpack[KafkaLogFields]) -> KafkaLogConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # -- what the producer needs ---------------------------------------------

    def producer_key(self) -> tuple[Any, ...]:
        """The settings that shape a Kafka producer; configs that agree here share one."""
        return (
            self.bootstrap_servers,
            self.timeout,
            self.keepalive,
            self.producer_request_acks,
            self.producer_request_timeout,
            self.producer_request_limits_bytes_per_request,
            self.producer_request_retries_backoff_timeout,
            self.client_id,
            self.producer_backend,
        )

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments for ``aiokafka.AIOKafkaProducer``, mapped from Kong's names."""
        size = self.producer_request_limits_bytes_per_request
        return {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "acks": "all" if self.producer_request_acks == -1 else self.producer_request_acks,
            "request_timeout_ms": self.timeout,
            "connections_max_idle_ms": self.keepalive,
            "retry_backoff_ms": self.producer_request_retries_backoff_timeout,
            "max_batch_size": size,
            "max_request_size": size,
            "linger_ms": 0,
            "enable_idempotence": False,
        }

    # -- environment ----------------------------------------------------------

    @classmethod
    def from_env(
        cls, prefix: str = "KAFKA_LOG_", environ: Mapping[str, str] | None = None, **defaults: Any
    ) -> KafkaLogConfig:
        """Build a config from ``KAFKA_LOG_<FIELD>`` variables (e.g. ``KAFKA_LOG_TOPIC``).

        Keyword ``defaults`` apply where no variable is set; hooks and ``service`` cannot
        come from the environment, so pass them this way.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = dict(defaults)
        for field in dataclasses.fields(cls):
            raw = env.get(prefix + field.name.upper())
            if raw is None or field.name in _NOT_FROM_ENV:
                continue
            try:
                values[field.name] = _parse_env(field.name, raw)
            except ValueError as exc:
                raise ValueError(f"{prefix}{field.name.upper()}: {exc}") from None
        for required in ("bootstrap_servers", "topic"):
            if required not in values:
                raise ValueError(f"{required} is required: set {prefix}{required.upper()}")
        return cls(**values)


_NOT_FROM_ENV = frozenset(
    {"route", "consumer", "authenticated_entity", "custom_fields", "key", "service"}
)
_INT_FIELDS = frozenset(
    {
        "timeout",
        "keepalive",
        "producer_request_acks",
        "producer_request_timeout",
        "producer_request_limits_messages_per_request",
        "producer_request_limits_bytes_per_request",
        "producer_request_retries_max_attempts",
        "producer_request_retries_backoff_timeout",
        "producer_async_flush_timeout",
        "producer_async_buffering_limits_messages_in_memory",
        "shutdown_timeout",
    }
)


def _parse_env(name: str, raw: str) -> Any:
    if name in _INT_FIELDS:
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if name in ("producer_async", "native_serializer"):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if name == "redact_headers":
        return tuple(h.strip() for h in raw.split(",") if h.strip())
    if name in ("key_query_arg", "request_id_header", "workspace"):
        return raw.strip() or None
    return raw.strip()


def _servers(value: Any) -> tuple[str, ...]:
    items: Iterable[Any]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, Iterable):
        items = value
    else:
        raise ValueError("bootstrap_servers must be a list of 'host:port' strings")
    servers = tuple(str(item).strip() for item in items if str(item).strip())
    if not servers:
        raise ValueError("bootstrap_servers must name at least one 'host:port'")
    for server in servers:
        _check_server(server)
    return servers


def _check_server(server: str) -> None:
    host, sep, port = server.rpartition(":")
    if not sep or not host:
        raise ValueError(f"bootstrap_servers: {server!r} is not 'host:port'")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"bootstrap_servers: {server!r} has a malformed IPv6 address")
    elif ":" in host or any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(f"bootstrap_servers: {server!r} has an invalid host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bootstrap_servers: {server!r} has an invalid port (expected 1-65535)")


def _check_topic(topic: Any) -> None:
    if not isinstance(topic, str) or not topic:
        raise ValueError("topic must be a non-empty string")
    if topic in (".", "..") or not _TOPIC.fullmatch(topic):
        raise ValueError(
            f"topic {topic!r} is not a legal Kafka topic name "
            "(1-249 of A-Z a-z 0-9 . _ -, not '.' or '..')"
        )


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")


def _names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a list of header names")
    names = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{name}: {item!r} is not a header name")
        names.append(item.strip().lower())
    return tuple(names)


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping (e.g. {{'name': 'orders'}})")
    return dict(value)
