"""How ``tail`` prints a message: ``json``, ``pretty`` or ``table``, in colour or not.

``json`` is the message as it is in Kafka, one per line (never coloured); ``pretty``
indents it; ``table`` is one aligned line per entry. A message that is not JSON, or not
a Kong entry (an object with ``request`` and ``response`` objects), is shown raw in
``json`` and flagged with ``!!`` in the others, so the tail never stops on it.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from typing import IO, Any, Literal

import orjson

Format = Literal["json", "pretty", "table"]
FORMATS: tuple[Format, ...] = ("json", "pretty", "table")
Color = Literal["auto", "always", "never"]
COLORS: tuple[Color, ...] = ("auto", "always", "never")

NOT_JSON = object()
"""What ``decode`` gives for a message that is no JSON (or has no value)."""
PATH_WIDTH = 40
"""The path column's width: a longer path pushes the last column to the right."""

_RESET = "\x1b[0m"
_STATUS_COLORS = {2: "\x1b[32m", 3: "\x1b[36m", 4: "\x1b[33m", 5: "\x1b[31m"}
"""2xx green, 3xx cyan, 4xx yellow, 5xx red."""
_FLAG_COLOR = "\x1b[35m"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_RESPONSE_STATUS = re.compile(r'    "status": ')
"""``response.status``'s line in orjson's two-space indentation (inside ``response``)."""


def use_color(choice: Color, stream: IO[Any], environ: Mapping[str, str] | None = None) -> bool:
    """``--color``: ``auto`` colours a terminal unless ``NO_COLOR`` is set (no-color.org);
    ``always`` and ``never`` are what the user says, ``NO_COLOR`` or not."""
    if choice != "auto":
        return choice == "always"
    env = os.environ if environ is None else environ
    return not env.get("NO_COLOR") and stream.isatty()


def decode(value: bytes | None) -> Any:
    """The message's JSON value, or ``NOT_JSON``."""
    if value is None:
        return NOT_JSON
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return NOT_JSON


def is_entry(decoded: Any) -> bool:
    """Whether a decoded message looks like a Kong entry (what the table can show)."""
    return (
        isinstance(decoded, dict)
        and isinstance(decoded.get("request"), dict)
        and isinstance(decoded.get("response"), dict)
    )


class Printer:
    """Renders messages in one format, as bytes ready to write (newline included)."""

    def __init__(self, format: Format = "json", color: bool = False) -> None:
        self.format = format
        self.color = color and format != "json"

    def header(self) -> bytes:
        """The table's column names; nothing for the other formats."""
        if self.format != "table":
            return b""
        names = _row("TIME", "METHOD", "STATUS", "LATENCY", "PATH", "CONSUMER/ROUTE")
        return names.encode() + b"\n"

    def render(self, value: bytes | None, decoded: Any) -> bytes:
        """``value`` (the message) with ``decoded`` (``decode(value)``) as lines."""
        if self.format == "json":
            return _json_line(value, decoded)
        if decoded is NOT_JSON:
            shown = "no value (null)" if value is None else f"{len(value)} bytes: {value!r}"
            return self._flag(f"!! not JSON: {shown}") + b"\n"
        if self.format == "pretty":
            text = orjson.dumps(decoded, option=orjson.OPT_INDENT_2).decode()
            if not is_entry(decoded):
                return self._flag("!! not a Kong entry:") + b"\n" + text.encode() + b"\n"
            return self._pretty(text, decoded["response"].get("status")).encode() + b"\n"
        if not is_entry(decoded):
            compact = _printable(orjson.dumps(decoded).decode())
            return self._flag(f"!! not a Kong entry: {compact}") + b"\n"
        return self._table(decoded).encode() + b"\n"

    def _flag(self, text: str) -> bytes:
        return (f"{_FLAG_COLOR}{text}{_RESET}" if self.color else text).encode()

    def _paint(self, text: str, status: Any) -> str:
        """``text`` in the colour of ``status``'s class, when colouring."""
        if not self.color or isinstance(status, bool) or not isinstance(status, int):
            return text
        code = _STATUS_COLORS.get(status // 100)
        return f"{code}{text}{_RESET}" if code else text

    def _pretty(self, text: str, status: Any) -> str:
        """Indented JSON with the line of ``response.status`` coloured."""
        if not self.color:
            return text
        lines = text.split("\n")
        inside = False
        for n, line in enumerate(lines):
            if line == '  "response": {':
                inside = True
            elif inside and line.startswith("  }"):
                break
            elif inside and _RESPONSE_STATUS.match(line):
                lines[n] = self._paint(line, status)
        return "\n".join(lines)

    def _table(self, entry: dict[str, Any]) -> str:
        request, response = entry["request"], entry["response"]
        status = response.get("status")
        latencies = entry.get("latencies")
        latency = _cell(latencies.get("request") if isinstance(latencies, dict) else None)
        return _row(
            _time(entry.get("started_at")),
            _cell(request.get("method")),
            # Padded before it is painted: the escape codes must not count in the width.
            self._paint(f"{_cell(status):>6}", status),
            latency if latency == "-" else f"{latency} ms",
            _cell(request.get("uri")),
            _who(entry),
        )


def _row(time: str, method: str, status: str, latency: str, path: str, who: str) -> str:
    return f"{time:<24}  {method:<7}  {status:>6}  {latency:>9}  {path:<{PATH_WIDTH}}  {who}"


def _json_line(value: bytes | None, decoded: Any) -> bytes:
    """The message as it is in Kafka when it is one line of JSON; JSON spread over
    several lines made compact; anything else as its bytes literal (``b'...'``)."""
    if value is None:
        return b"null\n"
    if decoded is NOT_JSON:
        return repr(value).encode() + b"\n"
    if b"\n" in value or b"\r" in value:
        return orjson.dumps(decoded) + b"\n"
    return value + b"\n"


def _time(started_at: Any) -> str:
    """``started_at`` (ms since the epoch) as UTC ISO 8601 to the millisecond."""
    if isinstance(started_at, bool) or not isinstance(started_at, int | float):
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(started_at / 1000, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return "-"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _who(entry: dict[str, Any]) -> str:
    """``consumer/route``: the consumer's username (or custom_id, id) and the route's name
    (or id), ``-`` for either that is absent."""
    consumer = _named(entry.get("consumer"), ("username", "custom_id", "id"))
    route = _named(entry.get("route"), ("name", "id"))
    return f"{consumer}/{route}"


def _named(entity: Any, keys: tuple[str, ...]) -> str:
    if isinstance(entity, dict):
        for key in keys:
            if entity.get(key) not in (None, ""):
                return _cell(entity[key])
    return "-"


def _cell(value: Any) -> str:
    """A value as a table cell: text as is, other JSON compact, absent ``-``; control
    characters escaped (a logged path must not drive the terminal)."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return _printable(text)


def _printable(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
