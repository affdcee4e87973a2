"""Cut an entry that is over the message size limit until it fits, instead of dropping it.

The longest string values are cut first, all to one common length, so that no value
loses more than it must; if every string cut to nothing is still not enough, the largest
objects and arrays are emptied (within the largest, the smallest one that suffices). A
``truncated`` field records the entry's original size, how many values were cut and
which (the largest first). Runs in the background, only for entries over the limit.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

MARKER = "truncated"
"""The top-level field that marks a truncated entry."""
LISTED = 8
"""At most this many cut values are named in the marker (the largest first)."""
PATH_CHARS = 128
"""A named path longer than this is cut too (a header name can be kilobytes long)."""
_ROUNDS = 4
"""Attempts at a cut level; each corrects the previous one for the marker's own size."""

Path = tuple[str | int, ...]


class _Value(NamedTuple):
    """A string or container in the entry: its encoded size, path, and place."""

    size: int
    path: Path
    parent: Any
    key: Any
    original: Any


def fit(value: bytes, budget: int) -> bytes | None:
    """``value`` (an entry's JSON) cut to at most ``budget`` bytes; None if even its keys
    and numbers alone take more."""
    size = len(value)
    if size <= budget:
        return value
    entry = orjson.loads(value)
    if not isinstance(entry, dict):
        return None
    entry.pop(MARKER, None)
    strings = sorted(_values(entry, str), key=_size, reverse=True)
    emptied: list[_Value] = []
    while True:
        out = _cut_strings(entry, strings, emptied, budget, size)
        if out is not None:
            return out
        over = len(_encode(entry, [*strings, *emptied], size)) - budget
        del entry[MARKER]
        target = _target(_values(entry, (dict, list)), over)
        if target is None:  # a skeleton: the marker names nothing, if that makes it fit
            out = _encode(entry, [*strings, *emptied], size, listed=0)
            return out if len(out) <= budget else None
        target.parent[target.key] = type(target.original)()
        emptied = [e for e in emptied if not _within(e.path, target.path)] + [target]
        strings = [s for s in strings if not _within(s.path, target.path)]


def _cut_strings(
    entry: dict[str, Any], strings: list[_Value], emptied: list[_Value], budget: int, size: int
) -> bytes | None:
    """The entry encoded within ``budget`` with its longest strings cut to one length, or
    None (with every string left empty) if cutting strings cannot make it fit."""
    for s in strings:
        s.parent[s.key] = s.original
    excess = len(orjson.dumps(entry)) - budget
    for _ in range(_ROUNDS):
        level = _level([s.size for s in strings], excess)
        cut = [s for s in strings if s.size > level]
        for s in cut:
            s.parent[s.key] = _shorten(s.original, level)
        out = _encode(entry, sorted([*cut, *emptied], key=_size, reverse=True), size)
        if len(out) <= budget:
            return out
        del entry[MARKER]
        if level <= 2:
            return None
        excess += len(out) - budget + len(cut)  # at least one byte more from each
    for s in strings:
        s.parent[s.key] = ""
    return None


def _values(node: Any, kind: type | tuple[type, ...], path: Path = ()) -> list[_Value]:
    """The non-empty values of ``kind`` (strings, or objects and arrays) under ``node``."""
    found: list[_Value] = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        if not child or not isinstance(child, (str, dict, list)):
            continue
        here = (*path, key)
        if isinstance(child, kind):
            found.append(_Value(len(orjson.dumps(child)), here, node, key, child))
        if not isinstance(child, str):
            found += _values(child, kind, here)
    return found


def _level(sizes: list[int], excess: int) -> int:
    """The highest encoded length L (at least 2, an empty string's) such that cutting
    every size above L down to L removes ``excess`` bytes (``sizes`` in descending order)."""
    total = 0  # of the k largest sizes
    for k, encoded in enumerate(sizes):
        # Cutting the k largest down to `encoded` removes total - k * encoded.
        if k and total - k * encoded >= excess:
            return max(2, (total - excess) // k)
        total += encoded
    return max(2, (total - excess) // len(sizes)) if sizes else 2


def _shorten(text: str, limit: int) -> str:
    """A prefix of ``text`` whose JSON encoding takes at most ``limit`` bytes (the longest
    when its characters encode alike)."""
    prefix = text[: max(0, limit - 2)]  # each character takes one byte at least
    while (encoded := len(orjson.dumps(prefix))) > limit:
        prefix = prefix[: min(len(prefix) - 1, len(prefix) * (limit - 2) // (encoded - 2))]
    return prefix


def _target(containers: list[_Value], excess: int) -> _Value | None:
    """The largest container, or within it the smallest that still removes ``excess``
    bytes, so that as little as possible goes."""
    if not containers:
        return None
    chosen = max(containers, key=_size)
    while True:
        depth = len(chosen.path) + 1
        inner = [
            c
            for c in containers
            if len(c.path) == depth and c.path[:-1] == chosen.path and _saved(c) >= excess
        ]
        if not inner:
            return chosen
        chosen = min(inner, key=_size)


def _saved(container: _Value) -> int:
    """Bytes emptying ``container`` saves, less its name in the marker."""
    return container.size - 2 - len(orjson.dumps(_dotted(container.path))) - 1


def _within(path: Path, ancestor: Path) -> bool:
    return path[: len(ancestor)] == ancestor


def _encode(entry: dict[str, Any], cut: list[_Value], size: int, listed: int = LISTED) -> bytes:
    """The entry with its ``truncated`` marker, encoded."""
    entry[MARKER] = {
        "bytes": size,
        "count": len(cut),
        "fields": [_dotted(c.path) for c in cut[:listed]],
    }
    return orjson.dumps(entry)


def _dotted(path: Path) -> str:
    text = ".".join(str(part) for part in path)
    return text if len(text) <= PATH_CHARS else text[: PATH_CHARS - 3] + "..."


def _size(value: _Value) -> int:
    return value.size
