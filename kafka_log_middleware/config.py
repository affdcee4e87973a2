"""``KafkaLogConfig``: the plugin's configuration, immutable, hashable and validated.

Field names, defaults and units (milliseconds) are those of Kong's kafka-log plugin,
so a Kong plugin config carries over unchanged. Every value is checked when the
config is built, against what the entry encoder, the Kafka protocol and the chosen
client accept: what a config accepts works, anything else raises ``ValueError``
naming the field at construction, never later in the background.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import ipaddress
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack, cast

import orjson

from . import _log
from .filters import NO_PATHS, PathPatterns, check_path_pattern
from .routes import matched_route
from .security import (
    Authentication,
    SecurityError,
    TlsSettings,
    aiokafka_security,
    check_authentication,
    check_security,
)

if TYPE_CHECKING:
    from .capture import CapturedRequest

LogFormat = Literal["kong2", "kong3"]
Backend = Literal["aiokafka", "confluent"]
Delivery = Literal["at_most_once", "at_least_once"]
Overflow = Literal["drop_newest", "drop_oldest", "spool"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
Hook = Callable[["CapturedRequest"], Any]
"""A user function of the captured request; runs in the background, never in the request."""

INT32_MAX = 2**31 - 1
"""The most any time or size field may be: Kafka and librdkafka carry them as int32."""
RECORD_FRAMING = 128
"""Bytes a message takes in a request beyond its key and value, rounded up: a record
batch's header (61) and one record's largest framing (26 by aiokafka's estimate, 36 by
librdkafka's)."""

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
# An RFC 9110 token: what an HTTP header name is made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+*-]+/[a-z0-9!#$&^_.+*-]+")
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOST = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ACKS = (-1, 0, 1)
_FORMATS = ("kong2", "kong3")
_BACKENDS = ("aiokafka", "confluent")
_DELIVERIES = ("at_most_once", "at_least_once")
_OVERFLOWS = ("drop_newest", "drop_oldest", "spool")
_MIN_SPOOL_BYTES = 4096
_COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
_CLIENT_ID_MAX = 32767
"""Bytes of UTF-8 in a Kafka request header's client id (an int16-length string)."""


class InvalidConfig(ValueError):
    """A value ``KafkaLogConfig`` refuses; ``field`` names the field.

    Messages name the field and never quote a value that could be a secret.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidConfigType(InvalidConfig, TypeError):
    """A value of the wrong type: a ``TypeError``, and a ``ValueError`` like every refusal."""


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
    producer_request_acks: int | None
    producer_request_timeout: int
    producer_request_limits_messages_per_request: int
    producer_request_limits_bytes_per_request: int
    max_entry_bytes: int | None
    producer_request_retries_max_attempts: int
    producer_request_retries_backoff_timeout: int
    producer_async: bool
    producer_async_flush_timeout: int
    producer_async_buffering_limits_messages_in_memory: int
    buffer_max_bytes: int
    overflow: Overflow
    spool_dir: str | os.PathLike[str] | None
    spool_max_bytes: int
    spool_sync_interval: int
    delivery: Delivery
    enable_idempotence: bool | None
    compression_type: Compression
    log_format: LogFormat
    redact_headers: Iterable[str]
    redact_response_headers: Iterable[str]
    redact_query_args: Iterable[str]
    redaction_key: str | bytes | None
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
    authentication: Mapping[str, Any] | Authentication | None
    security: Mapping[str, Any] | TlsSettings | ssl.SSLContext | None
    producer_backend: Backend
    native_serializer: bool
    exclude_paths: Iterable[str]
    should_log: Hook | None
    include_trace_id: bool | None
    include_request_body: bool
    include_response_body: bool
    max_request_body_bytes: int
    max_response_body_bytes: int
    body_content_types: Iterable[str]
    redact_body_keys: Iterable[str]


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
    producer_request_acks: int | None = None
    """Acknowledgements required: -1 (all in-sync replicas), 0 (none) or 1 (leader).
    None: Kong's 1, or -1 with ``delivery="at_least_once"`` (see ``acks``)."""
    producer_request_timeout: int = 2000
    """How long the broker waits for replicas' acknowledgements (the produce request timeout)."""
    producer_request_limits_messages_per_request: int = 200
    """Entries that make a batch: this many waiting are sent without waiting for the timer."""
    producer_request_limits_bytes_per_request: int = 1048576
    """Most bytes in one batch (aiokafka ``max_batch_size``/``max_request_size``)."""
    max_entry_bytes: int | None = None
    """Largest Kafka message (key and value) an entry becomes; a longer entry is truncated,
    not dropped (see ``truncation.py``). None: the batch limit less a record's framing
    (or ``buffer_max_bytes``, if less)."""
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
    buffer_max_bytes: int = 64 * 1024 * 1024
    """Bound on the bytes of encoded entries held in memory (waiting for their batch, for a
    retry, or for Kafka's acknowledgement); beyond it, ``overflow`` says which go."""
    overflow: Overflow = "drop_newest"
    """Past a bound: ``"drop_newest"`` refuses the new entry (Kong's behaviour),
    ``"drop_oldest"`` makes room by dropping the oldest not handed to Kafka yet,
    ``"spool"`` writes entries to the disk spool in ``spool_dir`` (``at_least_once``)."""
    spool_dir: str | None = None
    """The disk spool's directory (``overflow="spool"``), shared by a host's workers:
    each writes files of its own, and replays those a dead process left."""
    spool_max_bytes: int = 1024 * 1024 * 1024
    """Most bytes of entries one process keeps in the spool; past it the newest are
    dropped (``spool_full``)."""
    spool_sync_interval: int = 1000
    """How often entries written to the spool are synced to disk, ms: what a crash of
    the machine may lose (a crash of the process loses what waits to be written)."""
    delivery: Delivery = "at_most_once"
    """``"at_most_once"`` (Kong's) or ``"at_least_once"``: acks from all in-sync
    replicas, the idempotent producer, and retries until delivered (see the README)."""
    enable_idempotence: bool | None = None
    """The idempotent producer (no duplicates from the client's own retries); None: on
    with ``delivery="at_least_once"``, else off. Needs ``producer_request_acks=-1``."""
    compression_type: Compression = "none"
    """Batch compression: ``"none"``, ``"gzip"``, ``"snappy"``, ``"lz4"`` or ``"zstd"``
    (with aiokafka, the last three need the ``compression`` extra)."""

    log_format: LogFormat = "kong2"
    """``"kong2"`` (Kong 2.0 basic serializer) or ``"kong3"`` (Kong 3.x ``kong.log.serialize``)."""
    redact_headers: tuple[str, ...] = ("authorization", "proxy-authorization", "cookie")
    """Request headers whose values are replaced by ``"REDACTED"``; ``()`` logs them raw
    (Kong's output)."""
    redact_response_headers: tuple[str, ...] = ("set-cookie",)
    """Response headers whose values are replaced by ``"REDACTED"``; ``()`` logs them raw
    (Kong's output)."""
    redact_query_args: tuple[str, ...] = ()
    """Query arguments whose values are redacted wherever the query appears
    (``querystring``, ``uri``, ``url``, ``upstream_uri``), e.g. ``("apikey", "token")``."""
    redaction_key: bytes | None = None
    """Set: redacted values become ``"hmac-sha256:<hex>"`` of the value under this key
    (at least 16 bytes), so one credential can be followed across entries; never shown."""
    service: Mapping[str, Any] | None = None
    """Kong's ``service`` entity for this app (for example ``{"name": "orders"}``)."""
    route: Hook | None = matched_route
    """Returns the ``route`` object; default: the route the framework matched (see
    ``routes.py``)."""
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
    authentication: Authentication | Mapping[str, Any] | None = None
    """SASL towards the brokers, as Kong's: ``{"strategy": "sasl", "mechanism": "PLAIN" |
    "SCRAM-SHA-256" | "SCRAM-SHA-512", "user": ..., "password": ...}``, or OAUTHBEARER with
    a ``token_provider`` or the client-credentials grant (see ``security.py``)."""
    security: TlsSettings | ssl.SSLContext | Mapping[str, Any] | None = None
    """TLS towards the brokers, as Kong's: ``{"ssl": True, "ssl_verify": True, "cafile": ...,
    "certfile": ..., "keyfile": ...}``, or an ``ssl.SSLContext`` (see ``security.py``)."""
    producer_backend: Backend = "aiokafka"
    """Kafka client: ``"aiokafka"`` (pure Python) or ``"confluent"`` (librdkafka, an extra)."""
    native_serializer: bool = True
    """Encode entries with the compiled serializer when it is installed (same output)."""
    exclude_paths: tuple[str, ...] = NO_PATHS
    """Paths never logged, checked on the request path: exact (``/health``), ``*`` within
    a segment, a trailing ``/**`` for everything below (see ``filters.py``); counted
    ``skipped``. Once checked, a ``PathPatterns``: a tuple with its compiled test."""
    should_log: Hook | None = None
    """Returns truthy to log the request (e.g. only 5xx, or a sample); runs in the
    background before the entry is built; refused ones are counted ``skipped``."""
    include_trace_id: bool | None = None
    """Log ``trace_id`` (``{"w3c": ...}``, Kong 3.5+'s) from the active OpenTelemetry span
    or the ``traceparent`` header. None: on with ``log_format="kong3"``, off with kong2."""
    include_request_body: bool = False
    """Log the request body (``request.body``, up to ``max_request_body_bytes``)."""
    include_response_body: bool = False
    """Log the response body (``response.body``, up to ``max_response_body_bytes``)."""
    max_request_body_bytes: int = 524288
    """The most request body bytes copied and logged (APISIX's default, 512 KiB)."""
    max_response_body_bytes: int = 524288
    """The most response body bytes copied and logged (APISIX's default, 512 KiB)."""
    body_content_types: tuple[str, ...] = ("text/*", "application/json", "application/*+json")
    """Media types whose bodies are logged (``*`` globs, case-insensitive); others are
    left out (``body_omitted``)."""
    redact_body_keys: tuple[str, ...] = ()
    """JSON object keys (any depth, case-insensitive) whose values a logged JSON body shows
    as ``"REDACTED"`` (or the keyed hash), e.g. ``("password",)``."""

    def __post_init__(self) -> None:
        # Each field is checked and normalised in declaration order (the first bad one is
        # reported), then the rules that tie fields together.
        for name, check in _CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))
        if self.key is not None and self.key_query_arg is not None:
            raise InvalidConfig("key", "key and key_query_arg are exclusive: give one of them")
        room = self.producer_request_limits_bytes_per_request - RECORD_FRAMING
        if self.max_entry_bytes is not None and self.max_entry_bytes > room:
            raise InvalidConfig(
                "max_entry_bytes",
                f"max_entry_bytes={self.max_entry_bytes} does not fit in "
                f"producer_request_limits_bytes_per_request="
                f"{self.producer_request_limits_bytes_per_request} with a record's framing "
                f"({RECORD_FRAMING} bytes): lower it to {room} at most, or raise the limit",
            )
        if self.max_entry_bytes is not None and self.max_entry_bytes > self.buffer_max_bytes:
            raise InvalidConfig(
                "buffer_max_bytes",
                f"buffer_max_bytes={self.buffer_max_bytes} cannot hold one entry of "
                f"max_entry_bytes={self.max_entry_bytes}: raise it, or lower max_entry_bytes",
            )
        self._check_delivery()
        if self.producer_backend == "confluent":
            if self.tls is not None and self.tls.user_context:
                raise InvalidConfig(
                    "security",
                    "producer_backend='confluent' cannot use an ssl.SSLContext (librdkafka "
                    "makes its own): give security={'ssl': True, 'cafile': ..., ...} instead",
                )
            _check_librdkafka(self)

    def _check_delivery(self) -> None:
        """The acks, idempotence and codec that ``delivery`` and the client allow."""
        if self.delivery == "at_least_once" and self.producer_request_acks not in (None, -1):
            raise InvalidConfig(
                "producer_request_acks",
                f"delivery='at_least_once' needs producer_request_acks=-1 (or unset), not "
                f"{self.producer_request_acks}: with fewer acknowledgements a broker that "
                f"fails loses what it had acknowledged",
            )
        if self.enable_idempotence and self.acks != -1:
            raise InvalidConfig(
                "enable_idempotence",
                "enable_idempotence=True needs producer_request_acks=-1 (Kafka's idempotent "
                "producer requires acknowledgements from all in-sync replicas)",
            )
        self._check_spool()
        codec = self.compression_type
        if (
            codec in ("snappy", "lz4", "zstd")
            and self.producer_backend == "aiokafka"
            and importlib.util.find_spec("cramjam") is None
        ):
            raise InvalidConfig(
                "compression_type",
                f"compression_type={codec!r} needs cramjam with the aiokafka backend: "
                "pip install 'kafka-log-middleware[compression]'",
            )

    def _check_spool(self) -> None:
        """The spool goes with ``overflow="spool"`` and ``delivery="at_least_once"``."""
        if self.overflow == "spool" and self.spool_dir is None:
            raise InvalidConfig(
                "spool_dir", "overflow='spool' needs spool_dir (a directory for the spool)"
            )
        if self.spool_dir is not None and self.overflow != "spool":
            raise InvalidConfig(
                "overflow",
                f"spool_dir is set but overflow={self.overflow!r}: give overflow='spool' to "
                "use the spool",
            )
        if self.spool_dir is not None and self.delivery != "at_least_once":
            raise InvalidConfig(
                "delivery",
                "overflow='spool' needs delivery='at_least_once' (the spool keeps entries "
                "until Kafka acknowledges them)",
            )

    @property
    def acks(self) -> int:
        """The acknowledgements asked for: ``producer_request_acks``, or when unset 1
        (Kong's default) or -1 with ``delivery="at_least_once"``."""
        if self.producer_request_acks is not None:
            return self.producer_request_acks
        return -1 if self.delivery == "at_least_once" else 1

    @property
    def trace_ids(self) -> bool:
        """Whether entries carry ``trace_id`` (``include_trace_id``, or its default)."""
        if self.include_trace_id is not None:
            return self.include_trace_id
        return self.log_format == "kong3"

    @property
    def idempotent(self) -> bool:
        """Whether the producer is idempotent (``enable_idempotence``, or its default)."""
        if self.enable_idempotence is not None:
            return self.enable_idempotence
        return self.delivery == "at_least_once"

    @property
    def entry_limit(self) -> int:
        """The most bytes an entry's message (key and value) may take."""
        if self.max_entry_bytes is not None:
            return self.max_entry_bytes
        room = self.producer_request_limits_bytes_per_request - RECORD_FRAMING
        return max(0, min(room, self.buffer_max_bytes))

    @property
    def sasl(self) -> Authentication | None:
        """``authentication`` as checked: always one of these once the config is built."""
        return cast("Authentication | None", self.authentication)

    @property
    def tls(self) -> TlsSettings | None:
        """``security`` as checked: always one of these once the config is built."""
        return cast("TlsSettings | None", self.security)

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
            if getattr(self, f.name) != f.default
            and f.name not in ("custom_fields", "redaction_key")
        )
        if self.redaction_key is not None:
            shown += ", redaction_key=<hidden>"
        return f"KafkaLogConfig({shown})"

    @classmethod
    def from_settings(cls, settings: Any, name: str = "KAFKA_LOG") -> KafkaLogConfig:
        """The config a framework's settings give: a ``KafkaLogConfig`` as is, or a dict
        of its fields (Kong's names). ``name`` (the setting) prefixes every error, and an
        unknown field is named with the field it most likely misspells."""
        if isinstance(settings, KafkaLogConfig):
            return settings
        if not isinstance(settings, Mapping):
            raise InvalidConfigType(
                name,
                f"{name} must be a dict of KafkaLogConfig fields or a KafkaLogConfig, "
                f"not {type(settings).__name__}",
            )
        known = [f.name for f in dataclasses.fields(cls)]
        for key in settings:
            if key not in known:
                guess = _closest(str(key), known)
                hint = f" (did you mean {guess!r}?)" if guess else ""
                raise InvalidConfig(key, f"{name}: {key!r} is no KafkaLogConfig field{hint}")
        try:
            return cls(**settings)
        except InvalidConfig as exc:
            raise type(exc)(exc.field, f"{name}: {exc}") from None

    def replace(self, **changes: Unpack[KafkaLogFields]) -> KafkaLogConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # -- what the producer needs ---------------------------------------------

    def producer_key(self) -> tuple[Any, ...]:
        """The settings that shape a Kafka producer; configs that agree here share one."""
        # Derived values are not cached on the instance: ``vars(config)`` must stay
        # exactly the fields, so that ``KafkaLogConfig(**vars(config))`` round-trips.
        return (
            self.bootstrap_servers,
            self.timeout,
            self.keepalive,
            self.acks,
            self.idempotent,
            self.compression_type,
            self.producer_request_timeout,
            self.producer_request_limits_bytes_per_request,
            self.producer_request_retries_backoff_timeout,
            self.client_id,
            self.authentication,
            self.security,
            self.producer_backend,
        )

    def aiokafka_client_options(self) -> dict[str, Any]:
        """The keyword arguments every aiokafka client takes (producer and consumer alike):
        where the brokers are, the timeouts and the security settings."""
        return {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "request_timeout_ms": self.timeout,
            "connections_max_idle_ms": self.keepalive,
            "retry_backoff_ms": self.producer_request_retries_backoff_timeout,
            **aiokafka_security(self.sasl, self.tls),
        }

    def aiokafka_options(self) -> dict[str, Any]:
        """Keyword arguments for ``aiokafka.AIOKafkaProducer``, mapped from Kong's names."""
        size = self.producer_request_limits_bytes_per_request
        return {
            **self.aiokafka_client_options(),
            "acks": "all" if self.acks == -1 else self.acks,
            "max_batch_size": size,
            "max_request_size": size,
            "linger_ms": 0,
            "enable_idempotence": self.idempotent,
            "compression_type": None if self.compression_type == "none" else self.compression_type,
        }

    # -- environment ----------------------------------------------------------

    @classmethod
    def from_env(
        cls, prefix: str = "KAFKA_LOG_", environ: Mapping[str, str] | None = None, **defaults: Any
    ) -> KafkaLogConfig:
        """Build a config from ``KAFKA_LOG_<FIELD>`` variables (e.g. ``KAFKA_LOG_TOPIC``).

        Keyword ``defaults`` apply where no variable is set; hooks cannot come from the
        environment, so pass them this way. ``KAFKA_LOG_SERVICE`` is a JSON object. A
        ``KAFKA_LOG_*`` variable that is no field is ignored with a warning (once per name)
        when it resembles one. Errors name the variable; one that does not parse is never
        quoted (it may be a secret in the wrong place).
        """
        env = os.environ if environ is None else environ
        _warn_unused_env(prefix, env)
        values: dict[str, Any] = dict(defaults)
        from_env: dict[str, str] = {}
        for field in dataclasses.fields(cls):
            variable = prefix + field.name.upper()
            raw = env.get(variable)
            if raw is None or field.name in _HOOKS:
                continue
            try:
                values[field.name] = _parse_env(field.name, raw)
            except ValueError as exc:
                raise InvalidConfig(field.name, f"{variable}: {exc}") from None
            from_env[field.name] = variable
        for required in ("bootstrap_servers", "topic"):
            if required not in values:
                raise InvalidConfig(
                    required, f"{required} is required: set {prefix}{required.upper()}"
                )
        try:
            return cls(**values)
        except InvalidConfig as exc:
            source = from_env.get(exc.field)
            if source is None:
                raise
            raise type(exc)(exc.field, f"{source}: {exc}") from None


# -- environment ------------------------------------------------------------------------

_HOOKS = frozenset(
    {"route", "consumer", "authenticated_entity", "custom_fields", "key", "should_log"}
)
"""Fields that hold functions: they cannot come from the environment."""
_INT_FIELDS = frozenset(
    {
        "timeout",
        "keepalive",
        "producer_request_acks",
        "producer_request_timeout",
        "producer_request_limits_messages_per_request",
        "producer_request_limits_bytes_per_request",
        "max_entry_bytes",
        "producer_request_retries_max_attempts",
        "producer_request_retries_backoff_timeout",
        "producer_async_flush_timeout",
        "producer_async_buffering_limits_messages_in_memory",
        "buffer_max_bytes",
        "spool_max_bytes",
        "spool_sync_interval",
        "shutdown_timeout",
        "max_request_body_bytes",
        "max_response_body_bytes",
    }
)
_warned_env: set[str] = set()
"""Variables already warned about in this process."""


def _parse_env(name: str, raw: str) -> Any:
    """The value of field ``name`` from its variable's text; messages never quote it."""
    if name == "producer_request_acks" and not raw.strip():
        return None
    if name in _INT_FIELDS:
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
    if name in ("enable_idempotence", "include_trace_id") and not raw.strip():
        return None
    if name in (
        "producer_async",
        "native_serializer",
        "enable_idempotence",
        "include_request_body",
        "include_response_body",
        "include_trace_id",
    ):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if name in (
        "redact_headers",
        "redact_response_headers",
        "redact_query_args",
        "body_content_types",
        "redact_body_keys",
    ):
        return tuple(h.strip() for h in raw.split(",") if h.strip())
    if name == "exclude_paths":
        return _parse_paths(raw)
    if name in _JSON_EXAMPLES:
        return _parse_object(raw, name)
    if name in ("key_query_arg", "request_id_header", "workspace", "spool_dir"):
        return raw.strip() or None
    return raw.strip()


_JSON_EXAMPLES = {
    "service": '{"name": "orders"}',
    "authentication": '{"mechanism": "PLAIN", ...}',
    "security": '{"ssl": true}',
}
"""The fields given as JSON objects in the environment, and the example their errors show."""


def _parse_paths(raw: str) -> tuple[str, ...]:
    """Comma-separated paths, or a JSON list (for a path with a comma in it)."""
    if not raw.strip().startswith("["):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValueError('expected paths separated by commas, or a JSON list: ["/health"]')
    return tuple(value)


def _parse_object(raw: str, name: str) -> dict[str, Any] | None:
    """A JSON object (``service``, ``authentication``, ``security``); blank: None. Never
    quoted: it may hold a password."""
    if not raw.strip():
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, e.g. {_JSON_EXAMPLES[name]}")
    return value


def _warn_unused_env(prefix: str, env: Mapping[str, str]) -> None:
    """Warn once per name about ``prefix`` variables that set no field.

    Other software shares the prefix (Kafka's own images read ``KAFKA_LOG_DIRS``,
    ``KAFKA_LOG_RETENTION_HOURS``, …), so only a name that resembles one of ours is
    worth a warning; the others get a debug message.
    """
    if not prefix:
        return
    names = {f.name for f in dataclasses.fields(KafkaLogConfig)}
    settable = sorted(names - _HOOKS)
    for variable in env:
        if not variable.startswith(prefix) or variable in _warned_env:
            continue
        field = variable[len(prefix) :].lower()
        exact = variable == prefix + field.upper() and field in names
        if exact and field not in _HOOKS:
            continue  # a field's own variable
        _warned_env.add(variable)
        if exact:
            _log.logger.warning(
                "%s is ignored: %s is a function, pass it to from_env(%s=...)",
                variable,
                field,
                field,
            )
        elif (match := _closest(field, settable)) is not None:
            _log.logger.warning(
                "%s is no kafka_log_middleware setting and is ignored; did you mean %s?",
                variable,
                prefix + match.upper(),
            )
        else:
            _log.logger.debug("%s is no kafka_log_middleware setting; ignored", variable)


def _closest(name: str, fields: list[str]) -> str | None:
    """The field ``name`` most likely misspells: whole words it shares, else difflib's."""
    # "format" for log_format, "acks" for producer_request_acks: a field's first or last words.
    # Not for names under four letters: KAFKA_LOG_DIR is Kafka's own log.dir, no spool_dir.
    words = [
        f for f in fields if len(name) > 3 and (f.endswith("_" + name) or f.startswith(name + "_"))
    ]
    matches = difflib.get_close_matches(name, words or fields, n=1, cutoff=0 if words else 0.75)
    return matches[0] if matches else None


# -- checks, one per field: each returns the value normalised, or raises naming the field --

Check = Callable[[str, Any], Any]


def _int_in(low: int, high: int = INT32_MAX) -> Check:
    """An integer (not a bool) from ``low`` to ``high``, as a plain ``int``."""

    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidConfigType(name, f"{name} must be an integer, not {_kind(value)}")
        if not low <= value <= high:
            raise InvalidConfig(name, f"{name} must be from {low} to {high}, not {value}")
        return int(value)

    return check


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidConfigType(name, f"{name} must be True or False, not {_kind(value)}")
    return value


def _choice(*choices: str) -> Check:
    """One of ``choices``, as a plain ``str``."""
    shown = " or ".join(repr(c) for c in choices)

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidConfigType(name, f"{name} must be {shown}, not {_kind(value)}")
        if value not in choices:
            raise InvalidConfig(name, f"{name} must be {shown}, not {value!r}")
        return str.__str__(value)

    return check


def _text(name: str, value: Any, *, empty: bool = True) -> str:
    """A plain ``str`` that encodes as UTF-8 (orjson and Kafka refuse lone surrogates)."""
    if not isinstance(value, str):
        raise InvalidConfigType(name, f"{name} must be a string, not {_kind(value)}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidConfig(name, f"{name} is not valid Unicode (a lone surrogate)") from None
    if not value and not empty:
        raise InvalidConfig(name, f"{name} must not be empty")
    return str.__str__(value)


def _optional(check: Check) -> Check:
    def optional(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return optional


def _non_empty_text(name: str, value: Any) -> str:
    return _text(name, value, empty=False)


def _any_text(name: str, value: Any) -> str:
    return _text(name, value)


def _client_id(name: str, value: Any) -> str:
    text = _text(name, value, empty=False)
    if _CONTROL.search(text):
        raise InvalidConfig(name, f"{name} must not contain control characters")
    if len(text.encode()) > _CLIENT_ID_MAX:
        raise InvalidConfig(name, f"{name} must be at most {_CLIENT_ID_MAX} bytes of UTF-8")
    return text


def _header_name(name: str, value: Any) -> str:
    """A lower-cased HTTP header name: anything else could never match a header."""
    text = _text(name, value).strip()
    if not _HEADER_NAME.fullmatch(text):
        raise InvalidConfig(name, f"{name}: {text!r} is not an HTTP header name")
    return text.lower()


def _header_names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidConfigType(name, f"{name} must be a list of header names, not {_kind(value)}")
    return tuple(dict.fromkeys(_header_name(name, item) for item in value))


def _arg_names(name: str, value: Any) -> tuple[str, ...]:
    """Query argument names, as ``get_uri_args`` decodes them (case-sensitive)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidConfigType(
            name, f"{name} must be a list of argument names, not {_kind(value)}"
        )
    return tuple(dict.fromkeys(_text(name, item, empty=False) for item in value))


def _media_types(name: str, value: Any) -> tuple[str, ...]:
    """Media types without parameters (``type/subtype``, ``*`` globs), lowercased."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidConfigType(name, f"{name} must be a list of media types, not {_kind(value)}")
    types = tuple(dict.fromkeys(_text(name, item).strip().lower() for item in value))
    for media_type in types:
        if not _MEDIA_TYPE.fullmatch(media_type):
            raise InvalidConfig(
                name,
                f"{name}: {media_type!r} is not a media type like 'text/*' or 'application/json'",
            )
    return types


def _body_keys(name: str, value: Any) -> tuple[str, ...]:
    """JSON object keys, matched case-insensitively (so kept lowercased)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidConfigType(name, f"{name} must be a list of JSON keys, not {_kind(value)}")
    return tuple(dict.fromkeys(_text(name, item, empty=False).lower() for item in value))


def _redaction_key(name: str, value: Any) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise InvalidConfigType(name, f"{name} must be bytes or a string, not {_kind(value)}")
    if len(value) < 16:
        raise InvalidConfig(name, f"{name} must be at least 16 bytes (a secret key)")
    return bytes(value)


def _servers(name: str, value: Any) -> tuple[str, ...]:
    items: Iterable[Any]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
        items = value
    else:
        raise InvalidConfigType(
            name, f"{name} must be a list of 'host:port' strings, not {_kind(value)}"
        )
    servers = tuple(_server(name, item) for item in items if not _blank(item))
    if not servers:
        raise InvalidConfig(name, f"{name} must name at least one 'host:port'")
    return servers


def _blank(item: Any) -> bool:
    return isinstance(item, str) and not item.strip()


def _server(name: str, item: Any) -> str:
    """``host:port`` checked as both clients parse it, with the port in canonical form."""
    server = _text(name, item).strip()
    host, sep, port = server.rpartition(":")
    if not sep or not host:
        raise InvalidConfig(name, f"{name}: {server!r} is not 'host:port'")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1] if host.endswith("]") else "")
        except ValueError:
            raise InvalidConfig(name, f"{name}: {server!r} has a malformed IPv6 address") from None
    elif not _HOST.fullmatch(host) or len(host) > 253:
        raise InvalidConfig(name, f"{name}: {server!r} has an invalid host")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidConfig(name, f"{name}: {server!r} has an invalid port (expected 1-65535)")
    return f"{host}:{int(port)}"


def _topic(name: str, value: Any) -> str:
    topic = _non_empty_text(name, value)
    if topic in (".", "..") or not _TOPIC.fullmatch(topic):
        raise InvalidConfig(
            name,
            f"{name} {topic!r} is not a legal Kafka topic name "
            "(1-249 of A-Z a-z 0-9 . _ -, not '.' or '..')",
        )
    return topic


def _service(name: str, value: Any) -> dict[str, Any] | None:
    """A deep, JSON-plain copy, encoded once as the serializer will encode it.

    So an unencodable value fails here rather than every entry, and later changes to
    the caller's mapping change nothing.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidConfigType(
            name, f"{name} must be a mapping (e.g. {{'name': 'orders'}}), not {_kind(value)}"
        )
    try:
        plain: dict[str, Any] = orjson.loads(orjson.dumps(dict(value)))
    except TypeError as exc:  # orjson.JSONEncodeError: its message names the type, no value
        raise InvalidConfig(name, f"{name} cannot be encoded as JSON: {exc}") from None
    return plain


def _hook(name: str, value: Any) -> Hook:
    """A synchronous, hashable function of one argument (the ``CapturedRequest``)."""
    if not callable(value):
        raise InvalidConfigType(name, f"{name} must be a function or None, not {_kind(value)}")
    if _is_async(value):
        raise InvalidConfig(
            name, f"{name} must be a plain function: hooks run in the background unawaited"
        )
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # some builtins have none: trust them
        signature = None
    if signature is not None:
        try:
            signature.bind(None)
        except TypeError:
            raise InvalidConfig(
                name, f"{name} must take one argument (the CapturedRequest)"
            ) from None
    try:
        hash(value)
    except TypeError:
        raise InvalidConfigType(name, f"{name} must be hashable (the config is)") from None
    hook: Hook = value
    return hook


def _is_async(value: Any) -> bool:
    call = getattr(value, "__call__", None)  # noqa: B004 - an object with async __call__
    return any(
        inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in (value, call)
    )


def _custom_fields(name: str, value: Any) -> dict[str, Hook]:
    if not isinstance(value, Mapping):
        raise InvalidConfigType(
            name, f"{name} must be a mapping of field names to functions, not {_kind(value)}"
        )
    fields: dict[str, Hook] = {}
    for field, hook in value.items():
        if not isinstance(field, str):
            raise InvalidConfigType(name, f"{name}: keys must be strings, not {_kind(field)}")
        key = _text(name, field, empty=False)
        if key.startswith(".") or key.endswith(".") or ".." in key:
            raise InvalidConfig(name, f"{name}: {key!r} is not a dotted field name")
        try:
            fields[key] = _hook(f"{name}[{key!r}]", hook)
        except InvalidConfig as exc:
            raise type(exc)(name, str(exc)) from None
    return fields


def _path_patterns(name: str, value: Any) -> PathPatterns:
    """``exclude_paths``: patterns of ``filters.py``'s grammar, each checked."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidConfigType(name, f"{name} must be a list of paths, not {_kind(value)}")
    patterns = []
    for item in value:
        pattern = _text(name, item, empty=False)
        try:
            patterns.append(check_path_pattern(pattern))
        except ValueError as exc:
            raise InvalidConfig(name, f"{name}: {exc}") from None
    return PathPatterns(dict.fromkeys(patterns))


def _security_check(check: Callable[[str, Any], Any]) -> Check:
    """A check of ``security.py`` whose refusals are ``InvalidConfig``s."""

    def checked(name: str, value: Any) -> Any:
        try:
            return check(name, value)
        except SecurityError as exc:
            raise InvalidConfig(exc.field, str(exc)) from None

    return checked


def _spool_dir(name: str, value: Any) -> str:
    """An absolute path of a directory this process can write: created here (mode 0700)
    if missing and probed with a file, so that a spool that could never work is refused
    now rather than at the first outage (``os.access`` alone says yes to root anywhere)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    path = os.path.abspath(_text(name, value, empty=False))
    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidConfig(name, f"{name} {path!r} exists and is not a directory")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise InvalidConfig(
            name, f"{name} {path!r} is not writable by this process: {exc.strerror}"
        ) from None
    return path


def _kind(value: Any) -> str:
    """How a refused value is shown: by its type, which never leaks a secret."""
    return type(value).__name__


_CHECKS: dict[str, Check] = {
    "bootstrap_servers": _servers,
    "topic": _topic,
    # librdkafka's floor for socket.timeout.ms, for both clients.
    "timeout": _int_in(10),
    "keepalive": _int_in(1),
    "producer_request_acks": _optional(_int_in(-1, 1)),
    "producer_request_timeout": _int_in(1),
    "producer_request_limits_messages_per_request": _int_in(1),
    "producer_request_limits_bytes_per_request": _int_in(1),
    "max_entry_bytes": _optional(_int_in(1)),
    "producer_request_retries_max_attempts": _int_in(1),
    "producer_request_retries_backoff_timeout": _int_in(0),
    "producer_async": _bool,
    "producer_async_flush_timeout": _int_in(1),
    "producer_async_buffering_limits_messages_in_memory": _int_in(1),
    "buffer_max_bytes": _int_in(1024),
    "overflow": _choice(*_OVERFLOWS),
    "spool_dir": _optional(_spool_dir),
    "spool_max_bytes": _int_in(_MIN_SPOOL_BYTES, 2**62),
    "spool_sync_interval": _int_in(1),
    "delivery": _choice(*_DELIVERIES),
    "enable_idempotence": _optional(_bool),
    "compression_type": _choice(*_COMPRESSIONS),
    "log_format": _choice(*_FORMATS),
    "redact_headers": _header_names,
    "redact_response_headers": _header_names,
    "redact_query_args": _arg_names,
    "redaction_key": _optional(_redaction_key),
    "service": _service,
    "route": _optional(_hook),
    "consumer": _optional(_hook),
    "authenticated_entity": _optional(_hook),
    "custom_fields": _custom_fields,
    "key_query_arg": _optional(_non_empty_text),
    "key": _optional(_hook),
    "request_id_header": _optional(_header_name),
    "workspace": _optional(_any_text),
    "workspace_name": _any_text,
    "shutdown_timeout": _int_in(1),
    "client_id": _client_id,
    "authentication": _security_check(check_authentication),
    "security": _security_check(check_security),
    "producer_backend": _choice(*_BACKENDS),
    "native_serializer": _bool,
    "exclude_paths": _path_patterns,
    "should_log": _optional(_hook),
    "include_trace_id": _optional(_bool),
    "include_request_body": _bool,
    "include_response_body": _bool,
    "max_request_body_bytes": _int_in(1),
    "max_response_body_bytes": _int_in(1),
    "body_content_types": _media_types,
    "redact_body_keys": _body_keys,
}
"""Every field's check, in declaration order (a test holds it to the fields)."""


# librdkafka's ranges (CONFIGURATION.md, verified against the client by the tests) for the
# properties our fields become, and the field each comes from.
_LIBRDKAFKA_RANGES: dict[str, tuple[int, int, str]] = {
    "socket.timeout.ms": (10, 300_000, "timeout"),
    "message.timeout.ms": (0, INT32_MAX, "timeout"),
    "request.timeout.ms": (1, 900_000, "producer_request_timeout"),
    "connections.max.idle.ms": (0, INT32_MAX, "keepalive"),
    "retry.backoff.ms": (1, 300_000, "producer_request_retries_backoff_timeout"),
    "batch.size": (1, INT32_MAX, "producer_request_limits_bytes_per_request"),
    "message.max.bytes": (1000, 1_000_000_000, "producer_request_limits_bytes_per_request"),
    "queue.buffering.max.messages": (
        0,
        INT32_MAX,
        "producer_async_buffering_limits_messages_in_memory",
    ),
}


def _check_librdkafka(config: KafkaLogConfig) -> None:
    """The librdkafka settings ``config`` maps to are within librdkafka's ranges.

    librdkafka refuses an out-of-range setting when the producer is created, which
    happens in the background: it would fail there on every attempt.
    """
    if importlib.util.find_spec("confluent_kafka") is None:
        raise InvalidConfig(
            "producer_backend",
            "producer_backend='confluent' needs confluent-kafka: "
            "pip install 'kafka-log-middleware[confluent]'",
        )
    from .confluent import librdkafka_options

    options = librdkafka_options(config)
    for option, (low, high, field) in _LIBRDKAFKA_RANGES.items():
        value = options.get(option)
        if isinstance(value, int) and not low <= value <= high:
            raise InvalidConfig(
                field,
                f"{field}={getattr(config, field)} is out of range with "
                f"producer_backend='confluent': it gives librdkafka's {option}={value}, "
                f"which must be from {low} to {high}",
            )
