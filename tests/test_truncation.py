"""Entries over the size limit are cut to fit: the longest strings first, to one common
length, then the largest containers; the marker says what was cut. Without a broker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kafka_log_middleware.truncation import LISTED, MARKER, PATH_CHARS, fit

ENTRY = {
    "request": {
        "headers": {"host": "x", "x-pad": "p" * 5000, "cookie": ["a" * 300, "b" * 3000]},
        "querystring": {"q": "é" * 2000},
        "uri": "/" + "u" * 100,
        "size": 11000,
    },
    "started_at": 1,
    "client_ip": "1.2.3.4",
}
RAW = orjson.dumps(ENTRY)


def cut(budget: int, entry: dict[str, Any] = ENTRY) -> dict[str, Any]:
    out = fit(orjson.dumps(entry), budget)
    assert out is not None and len(out) <= budget
    result: dict[str, Any] = orjson.loads(out)
    return result


def test_an_entry_within_the_budget_is_left_as_it_is() -> None:
    assert fit(RAW, len(RAW)) is RAW


def test_the_longest_values_are_cut_first_to_one_length() -> None:
    """Cut to 8000 bytes: the two longest values lose, the rest is untouched."""
    entry = cut(8000)
    headers = entry["request"]["headers"]
    assert headers["x-pad"] == "p" * len(headers["x-pad"])
    assert headers["cookie"][0] == "a" * 300 and entry["request"]["uri"] == ENTRY["request"]["uri"]  # type: ignore[index]
    assert entry[MARKER] == {
        "bytes": len(RAW),
        "count": 3,
        "fields": ["request.headers.x-pad", "request.querystring.q", "request.headers.cookie.1"],
    }
    # One common length (in encoded bytes) for every value that was cut.
    lengths = {
        len(orjson.dumps(v))
        for v in (headers["x-pad"], headers["cookie"][1], entry["request"]["querystring"]["q"])
    }
    assert max(lengths) - min(lengths) <= 1, lengths


def test_a_multibyte_value_is_cut_on_a_character_boundary() -> None:
    q = cut(3000)["request"]["querystring"]["q"]
    assert q and q == "é" * len(q)


def test_the_marker_names_the_largest_cuts_and_counts_them_all() -> None:
    entry = {"request": {"headers": {f"h{i:02}": "v" * (100 + i) for i in range(40)}}}
    marker = cut(1500, entry)[MARKER]
    assert marker["count"] == 40 and len(marker["fields"]) == LISTED
    assert marker["fields"] == [f"request.headers.h{i:02}" for i in range(39, 39 - LISTED, -1)]


def test_a_long_path_is_cut_in_the_marker() -> None:
    name = "n" * 4000
    entry = {"request": {"headers": {name: "v" * 100_000}}}
    [path] = cut(20_000, entry)[MARKER]["fields"]
    assert len(path) == PATH_CHARS and path.startswith("request.headers.nnn") and path[-3:] == "..."


def test_when_values_are_not_enough_the_largest_container_goes() -> None:
    """Emptying every value leaves too much (the header names): the headers object is
    emptied, and the other values are cut as little as the rest allows."""
    entry = {
        "request": {
            "headers": {f"x-{i:03}-" + "n" * 60: "v" for i in range(100)},
            "uri": "/" + "u" * 3000,
            "querystring": {"a": "1"},
        },
        "response": {"status": 200},
    }
    result = cut(2000, entry)
    assert result["request"]["headers"] == {}
    assert result["request"]["querystring"] == {"a": "1"} and result["response"] == {"status": 200}
    assert result["request"]["uri"].startswith("/uuu") and len(result["request"]["uri"]) > 1500
    assert result[MARKER]["fields"] == ["request.headers", "request.uri"]


def test_within_the_largest_container_the_smallest_that_suffices_goes() -> None:
    entry = {
        "request": {
            "headers": {f"h-{i:03}-" + "n" * 40: ["", ""] for i in range(50)},
            "querystring": {f"q-{i:03}-" + "n" * 40: "" for i in range(5)},
        }
    }
    result = cut(len(orjson.dumps(entry)) - 200, entry)
    assert result["request"]["headers"] == {}
    assert len(result["request"]["querystring"]) == 5


def test_an_entry_whose_skeleton_is_over_the_budget_cannot_fit() -> None:
    assert fit(RAW, 60) is None
    assert fit(b"[" + b'"x",' * 100 + b'"x"]', 50) is None  # not an entry at all


def test_an_earlier_marker_is_replaced() -> None:
    entry = {**ENTRY, MARKER: {"bytes": 1, "count": 0, "fields": ["made.up"]}}
    assert cut(8000, entry)[MARKER]["fields"][0] == "request.headers.x-pad"


# -- properties over generated entries ------------------------------------------------

# Long strings are built, not drawn character by character (that is slow): a short drawn
# head, then one character repeated, an ASCII one or one that takes more bytes in JSON.
_long = st.builds(
    lambda head, char, count: head + char * count,
    st.text(max_size=8),
    st.sampled_from('aé\x00"\\\u2028😀'),
    st.integers(50, 5000),
)
_text = st.text(max_size=20) | _long
_leaf = _text | st.integers(-(2**40), 2**40) | st.booleans() | st.none()
_key = st.text(max_size=12).filter(lambda key: key != MARKER) | _long
_node = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_key, inner, max_size=6),
    max_leaves=16,
)
_entries = st.dictionaries(_key, _node, min_size=1, max_size=6)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every value in ``node`` by path."""
    found: dict[tuple[Any, ...], Any] = {}
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        found[(*path, key)] = child
        if isinstance(child, (dict, list)):
            found.update(_paths(child, (*path, key)))
    return found


def _skeleton(node: Any) -> Any:
    """``node`` with every string and container in it emptied (the least fit can leave)."""
    empty: dict[type, Any] = {str: "", dict: {}, list: []}
    return {k: empty.get(type(v), v) for k, v in node.items()}


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(entry=_entries, fraction=st.floats(0.0, 1.0))
def test_any_entry_fits_or_is_only_its_skeleton(entry: dict[str, Any], fraction: float) -> None:
    """Whatever the entry and the budget: the result fits, is JSON, keeps every key and
    number, shortens strings only to prefixes, empties containers only when needed, and
    marks exactly what changed. None only when even the skeleton is over the budget."""
    raw = orjson.dumps(entry)
    budget = int(len(raw) * fraction)
    out = fit(raw, budget)
    if len(raw) <= budget:
        assert out == raw
        return
    if out is None:
        bare = {**_skeleton(entry), MARKER: {"bytes": len(raw), "count": 1, "fields": []}}
        assert len(orjson.dumps(bare)) > budget
        return
    assert len(out) <= budget
    result = orjson.loads(out)
    marker = result.pop(MARKER)
    assert result.keys() == entry.keys()
    assert marker["bytes"] == len(raw) and marker["count"] >= 1
    before, after = _paths(entry), _paths(result)
    changed = []
    for path, value in after.items():
        original = before[path]
        if isinstance(value, str):
            assert original.startswith(value)
        elif isinstance(value, dict):
            assert not value or value.keys() == original.keys()
        elif isinstance(value, list):
            assert not value or len(value) == len(original)
        else:
            assert value == original
        if value != original and (isinstance(value, str) or not value):
            changed.append(path)
    assert marker["count"] == len(changed)
    if not any(isinstance(after[p], (dict, list)) for p in changed):
        # Only strings were cut: the longest ones, each longer than every one kept.
        sizes = {p: len(orjson.dumps(v)) for p, v in before.items() if isinstance(v, str)}
        kept = [size for p, size in sizes.items() if p not in changed]
        assert not kept or min(sizes[p] for p in changed) > max(kept)


@pytest.mark.parametrize("budget", [300, 1000, 10_000])
def test_hostile_strings_fit(budget: int) -> None:
    """Escapes and 4-byte characters take more bytes than characters: still within."""
    entry = {"request": {"headers": {"a": "\x00" * 5000, "b": "😀" * 5000, "c": '"\\' * 5000}}}
    result = cut(budget, entry)
    assert result[MARKER]["count"] == 3
