"""``tail --format json|pretty|table`` and ``--color``: each format of an entry, of a
message that is not JSON and of JSON that is no Kong entry, and when colour is used."""

from __future__ import annotations

import io
import os
import re
from typing import Any

import orjson
import pytest

from kafka_log_middleware.tail_output import NOT_JSON, Printer, decode, is_entry, use_color

ANSI = re.compile(rb"\x1b\[[0-9;]*m")
RAW = (
    b'{"request":{"method":"GET","uri":"/items/7?x=1","headers":{}},'
    b'"response":{"status":503,"headers":{"status":"x"}},"latencies":{"request":12,'
    b'"kong":0,"proxy":11},"started_at":1764780000123,"route":{"name":"item"},'
    b'"consumer":{"username":"bob"},"n":1.50}'
)


def render(value: bytes | None, format: Any, color: bool = False) -> bytes:
    return Printer(format, color).render(value, decode(value))


def test_json_is_the_message_as_it_is_in_kafka() -> None:
    assert render(RAW, "json") == RAW + b"\n"  # 1.50 kept: not re-encoded
    spread = b'{\n  "a": 1,\r\n  "b": [1, 2]\n}'
    assert render(spread, "json") == b'{"a":1,"b":[1,2]}\n'  # one line each, always
    assert render(b"not json\n\x1b[2J", "json") == b"b'not json\\n\\x1b[2J'\n"
    assert render(None, "json") == b"null\n"
    assert render(b"[1, 2]", "json") == b"[1, 2]\n"


def test_json_is_never_coloured() -> None:
    assert render(RAW, "json", color=True) == RAW + b"\n"


def test_pretty_is_indented_and_parses_back_to_the_same_entry() -> None:
    shown = render(RAW, "pretty")
    assert shown.startswith(b'{\n  "request": {\n    "method": "GET",')
    assert orjson.loads(shown) == orjson.loads(RAW)


def test_pretty_colours_the_response_status_line_only() -> None:
    shown = render(RAW, "pretty", color=True)
    coloured = [line for line in shown.split(b"\n") if ANSI.search(line)]
    assert coloured == [b'\x1b[31m    "status": 503,\x1b[0m']
    assert orjson.loads(ANSI.sub(b"", shown)) == orjson.loads(RAW)


def test_table_is_one_aligned_line_per_entry_under_a_header() -> None:
    printer = Printer("table")
    header = printer.header().decode()
    row = printer.render(RAW, decode(RAW)).decode()
    assert header.endswith("\n") and row.endswith("\n") and "\n" not in row[:-1]
    assert re.split(r"\s{2,}", header.strip()) == [
        "TIME", "METHOD", "STATUS", "LATENCY", "PATH", "CONSUMER/ROUTE",
    ]  # fmt: skip
    assert re.split(r"\s{2,}", row.strip()) == [
        "2025-12-03T16:40:00.123Z", "GET", "503", "12 ms", "/items/7?x=1", "bob/item",
    ]  # fmt: skip
    # Aligned: each column starts where its header does.
    for name, value in (("METHOD", "GET"), ("PATH", "/items"), ("CONSUMER", "bob")):
        assert row.index(value) == header.index(name)
    assert row.index("503") + 3 == header.index("STATUS") + 6  # numbers to the right


def test_table_shows_what_an_entry_lacks_as_a_dash() -> None:
    bare = orjson.dumps({"request": {}, "response": {}})
    assert re.split(r"\s{2,}", render(bare, "table").decode().strip()) == [
        "-", "-", "-", "-", "-", "-/-",
    ]  # fmt: skip
    odd = orjson.dumps(
        {
            "request": {"method": ["GET"], "uri": "/a\x1b[2Jb"},
            "response": {"status": "oops"},
            "latencies": 5,
            "started_at": 1e30,
            "consumer": {"id": "c-1"},
            "route": {"id": 7},
        }
    )
    cells = re.split(r"\s{2,}", render(odd, "table", color=True).decode().strip())
    assert cells == ["-", '["GET"]', "oops", "-", "/a\\x1b[2Jb", "c-1/7"]


@pytest.mark.parametrize(
    ("status", "code"), [(200, b"32"), (204, b"32"), (301, b"36"), (404, b"33"), (503, b"31")]
)
def test_table_colours_the_status_by_its_class(status: int, code: bytes) -> None:
    entry = orjson.dumps({"request": {"method": "GET"}, "response": {"status": status}})
    shown = render(entry, "table", color=True)
    assert ANSI.findall(shown) == [b"\x1b[" + code + b"m", b"\x1b[0m"]
    assert b"\x1b[" + code + b"m   " + str(status).encode() + b"\x1b[0m" in shown
    uncoloured = render(entry, "table")
    assert not ANSI.search(uncoloured)
    assert ANSI.sub(b"", shown) == uncoloured  # the same columns either way


def test_no_colour_for_other_statuses() -> None:
    entry = orjson.dumps({"request": {}, "response": {"status": 101}})
    assert not ANSI.search(render(entry, "table", color=True))


@pytest.mark.parametrize("format", ["pretty", "table"])
def test_what_is_no_entry_is_flagged(format: Any) -> None:
    assert render(b"not json \x1b[31m", format) == b"!! not JSON: 14 bytes: b'not json \\x1b[31m'\n"
    assert render(None, format) == b"!! not JSON: no value (null)\n"
    listed = render(b"[1, 2]", format)
    assert listed.startswith(b"!! not a Kong entry:")
    flagged = render(b'{"request": {"uri": "/"}}', format, color=True)
    assert flagged.startswith(b"\x1b[35m!! not a Kong entry:")


def test_what_is_a_kong_entry() -> None:
    assert is_entry(orjson.loads(RAW))
    for other in ({"request": {}}, {"request": {}, "response": 200}, [1], NOT_JSON, "x"):
        assert not is_entry(other)


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("choice", "tty", "environ", "colour"),
    [
        ("auto", True, {}, True),
        ("auto", False, {}, False),
        ("auto", True, {"NO_COLOR": "1"}, False),
        ("auto", True, {"NO_COLOR": ""}, True),  # no-color.org: set and not empty
        ("always", False, {"NO_COLOR": "1"}, True),  # the flag is the user's last word
        ("never", True, {}, False),
    ],
)
def test_when_colour_is_used(choice: Any, tty: bool, environ: dict[str, str], colour: bool) -> None:
    assert use_color(choice, Stream(tty), environ) is colour


def test_use_color_reads_the_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "yes")
    assert not use_color("auto", Stream(True))
    monkeypatch.delenv("NO_COLOR")
    assert use_color("auto", Stream(True)) is ("NO_COLOR" not in os.environ)
