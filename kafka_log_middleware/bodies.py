"""Request and response bodies in the entry (``include_request_body`` /
``include_response_body``): a capped copy on the hot path, the rest in the background.

On the request path a :class:`BodyCopy` only keeps references to (or slices of) the
chunks the app reads or sends, up to the cap; it never holds more, never buffers a
stream and never changes what passes. When the entry is built, :func:`body_fields`
decides from the media type whether the body is logged, decodes text, redacts JSON keys
and base64-encodes the rest.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import fnmatch
import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .config import KafkaLogConfig

OMITTED_TYPE = "content_type"
"""``body_omitted`` when the body's media type is not in ``body_content_types``."""
OMITTED_REDACTION = "redaction"
"""``body_omitted`` when ``redact_body_keys`` is set and the JSON body cannot be parsed
(cut at the cap, or malformed): logging it could show what was to be redacted."""
_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/x-www-form-urlencoded",
        "application/graphql",
        "application/x-ndjson",
    }
)
"""Media types (besides ``text/*``, ``*+json`` and ``*+xml``) logged as text."""


class BodyCopy:
    """The first ``cap`` bytes of a body, as the chunks that carried them."""

    __slots__ = ("chunks", "room", "truncated")

    def __init__(self, cap: int) -> None:
        self.chunks: list[bytes] = []
        self.room = cap
        """Bytes still to copy before the cap."""
        self.truncated = False
        """True when the body went on past the cap."""

    def add(self, chunk: bytes) -> None:
        """Keep ``chunk`` (or its part below the cap); called on the request path."""
        room = self.room
        size = len(chunk)
        if size <= room:
            if size:
                # bytes() of a bytes object is that object: no copy; of a bytearray or
                # memoryview the app may reuse, a copy.
                self.chunks.append(bytes(chunk))
                self.room = room - size
        else:
            if room:
                self.chunks.append(bytes(chunk[:room]))
                self.room = 0
            self.truncated = True

    def data(self) -> bytes:
        """The copied bytes (in the background)."""
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def body_fields(
    copy: BodyCopy,
    content_type: bytes | None,
    config: KafkaLogConfig,
    mark: Callable[[Any], str],
) -> dict[str, Any]:
    """The ``body`` fields of one side of the entry: ``body`` (with ``body_encoding``
    ``"base64"`` for a non-text type), ``body_truncated`` when cut at the cap, or
    ``body_omitted`` with its reason. ``mark`` gives a redacted JSON value's mark."""
    out = _body(copy.data(), copy.truncated, content_type, config, mark)
    if copy.truncated:
        out["body_truncated"] = True
    return out


def _body(
    data: bytes,
    truncated: bool,
    content_type: bytes | None,
    config: KafkaLogConfig,
    mark: Callable[[Any], str],
) -> dict[str, Any]:
    if not data:
        return {"body": ""}
    kind, encoding = _kind(content_type, config.body_content_types)
    if kind == "omit":
        return {"body_omitted": OMITTED_TYPE}
    if kind == "json" and config.redact_body_keys:
        redacted = _redacted_json(data, truncated, config.redact_body_keys, mark)
        if redacted is None:
            return {"body_omitted": OMITTED_REDACTION}
        return {"body": redacted}
    if kind == "binary":
        return {"body": base64.b64encode(data).decode("ascii"), "body_encoding": "base64"}
    return {"body": _decoded(data, encoding, truncated)}


def header(headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    """The first value of the (lowercase) header ``wanted`` among raw header pairs."""
    size = len(wanted)
    for name, value in headers:
        if len(name) == size and isinstance(name, bytes) and name.lower() == wanted:
            return value if isinstance(value, bytes) else None
    return None


@functools.lru_cache(maxsize=256)
def _kind(content_type: bytes | None, patterns: tuple[str, ...]) -> tuple[str, str]:
    """How a body of this ``Content-Type`` is logged (``"omit"``, ``"json"``, ``"text"``,
    ``"binary"``) and the codec of its text. Cached: an app sends few distinct ones."""
    media_type, charset = _media_type(content_type)
    if not media_type or not any(fnmatch.fnmatchcase(media_type, p) for p in patterns):
        return "omit", ""
    if media_type == "application/json" or media_type.endswith("+json"):
        return "json", "utf-8"
    if (
        media_type.startswith("text/")
        or media_type in _TEXT_TYPES
        or media_type.endswith(("+json", "+xml"))
    ):
        return "text", _codec(charset)
    return "binary", ""


def _media_type(content_type: bytes | None) -> tuple[str, str | None]:
    """The lowercased media type without parameters, and the ``charset`` parameter."""
    if content_type is None:
        return "", None
    text = content_type.decode("latin-1")
    media_type, _, params = text.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    return media_type.strip().lower(), charset


def _codec(charset: str | None) -> str:
    """The text codec of ``charset``: UTF-8 unless a known other text one is declared."""
    if charset is not None:
        with contextlib.suppress(LookupError):
            info = codecs.lookup(charset)
            if getattr(info, "_is_text_encoding", False):  # not base64, zlib, …
                return info.name
    return "utf-8"


def _decoded(data: bytes, encoding: str, truncated: bool) -> str:
    """``data`` as text; invalid bytes become U+FFFD, and a character cut by the cap is
    dropped."""
    if not truncated:
        with contextlib.suppress(UnicodeDecodeError):
            return data.decode(encoding)
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    return decoder.decode(data, final=not truncated)


def _redacted_json(
    data: bytes, truncated: bool, keys: tuple[str, ...], mark: Callable[[Any], str]
) -> str | None:
    """The JSON body with the values of ``keys`` (any depth) marked, re-encoded
    compactly; None when it cannot be parsed."""
    if truncated:
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    names = frozenset(keys)
    return orjson.dumps(_redact(value, names, mark)).decode()


def _redact(value: Any, names: frozenset[str], mark: Callable[[Any], str]) -> Any:
    if isinstance(value, dict):
        return {
            key: mark(item) if key.lower() in names else _redact(item, names, mark)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact(item, names, mark) for item in value]
    return value
