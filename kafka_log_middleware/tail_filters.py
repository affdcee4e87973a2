"""``tail --filter``: comparisons on an entry's dotted fields, such as ``status>=500``.

An expression is ``FIELD OP VALUE``: FIELD a dotted path into the entry
(``request.method``, ``latencies.request``, ``request.headers.user-agent``, a list item
by its index: ``tries.0.ip``) or a shorthand (``SHORTHANDS``); OP one of ``= != > >= <
<= ~``. Both sides are compared as numbers when both read as numbers (a header's
``"1024"`` too), else as text (a JSON value other than a string as its compact JSON);
``~`` matches a glob (``fnmatch``, case-sensitive, on the whole text: ``*timeout*``
for a substring). A field the entry lacks matches only ``!=``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson

SHORTHANDS = {
    "status": "response.status",
    "method": "request.method",
    "uri": "request.uri",
    "latency": "latencies.request",
}
"""Bare names that stand for an entry's most used fields."""

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_EXPRESSION = re.compile(
    r"\s*(?P<field>[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\s*"
    r"(?P<op>==|!=|>=|<=|=|>|<|~)\s*(?P<value>.*?)\s*"
)
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_MISSING = object()


class FilterError(ValueError):
    """An expression that is not ``FIELD OP VALUE``; the message quotes it."""


@dataclasses.dataclass(frozen=True)
class Filter:
    """One parsed ``--filter`` expression."""

    expression: str
    path: tuple[str, ...]
    op: str
    value: str
    number: float | None

    def matches(self, entry: Any) -> bool:
        """Whether ``entry`` (a decoded message, whatever its shape) satisfies it."""
        found = _lookup(entry, self.path)
        if found is _MISSING:
            return self.op == "!="
        if self.op == "~":
            return fnmatch.fnmatchcase(_text(found), self.value)
        compare = _OPERATORS[self.op]
        number = _number(found)
        if self.number is not None and number is not None:
            return compare(number, self.number)
        return compare(_text(found), self.value)


def parse_filter(expression: str) -> Filter:
    """``expression`` parsed, or ``FilterError`` saying what is wrong with it."""
    parsed = _EXPRESSION.fullmatch(expression)
    if parsed is None or not parsed["value"]:
        raise FilterError(
            f"{expression!r} is not FIELD OP VALUE (OP one of = != > >= < <= ~), "
            "e.g. status>=500 or request.method=GET"
        )
    field, value = parsed["field"], parsed["value"]
    op = "=" if parsed["op"] == "==" else parsed["op"]
    path = tuple(SHORTHANDS.get(field, field).split("."))
    number = float(value) if _NUMBER.fullmatch(value) else None
    return Filter(expression, path, op, value, number)


def matches_all(filters: Iterable[Filter], entry: Any) -> bool:
    """Whether ``entry`` satisfies every filter (``--filter`` given several times: AND)."""
    return all(f.matches(entry) for f in filters)


def _lookup(entry: Any, path: tuple[str, ...]) -> Any:
    value = entry
    for key in path:
        if isinstance(value, dict):
            value = value.get(key, _MISSING)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
