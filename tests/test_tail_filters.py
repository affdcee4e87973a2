"""``tail --filter`` expressions: parsing (a malformed one is refused, quoted) and what
each operator keeps, on a Kong-shaped entry."""

from __future__ import annotations

from typing import Any

import pytest

from kafka_log_middleware.tail_filters import (
    Filter,
    FilterError,
    matches_all,
    parse_filter,
)
from kafka_log_middleware.tail_output import NOT_JSON

ENTRY: dict[str, Any] = {
    "request": {
        "method": "GET",
        "uri": "/api/items/7?expand=true",
        "headers": {"content-length": "1024", "user-agent": "curl/8.5.0"},
    },
    "response": {"status": 503, "size": 230},
    "latencies": {"request": 120, "kong": 0.5, "proxy": -1},
    "upstream_status": "503",
    "tries": [{"ip": "10.0.0.1", "port": 8000}],
    "route": {"name": "items", "paths": ["/api/items"]},
    "tls": None,
    "cached": False,
}


def keeps(expression: str, entry: Any = ENTRY) -> bool:
    return parse_filter(expression).matches(entry)


def test_an_expression_is_parsed_into_path_operator_and_value() -> None:
    assert parse_filter("status>=500") == Filter(
        "status>=500", ("response", "status"), ">=", "500", 500.0
    )
    assert parse_filter(" request.method = GET ") == Filter(
        " request.method = GET ", ("request", "method"), "=", "GET", None
    )
    assert parse_filter("request.uri~/api/*").op == "~"
    assert parse_filter("status==200").op == "="


@pytest.mark.parametrize(
    "expression",
    ["status", "status>=", ">=500", "=GET", "request..method=GET", ".status=1", "status.=1",
     "a b=1", "st@tus=1", ""],
)  # fmt: skip
def test_a_malformed_expression_is_refused_and_quoted(expression: str) -> None:
    with pytest.raises(FilterError) as refused:
        parse_filter(expression)
    assert repr(expression) in str(refused.value)
    assert "FIELD OP VALUE" in str(refused.value)


@pytest.mark.parametrize(
    ("expression", "kept"),
    [
        ("status>=500", True),
        ("status>=504", False),
        ("status=503", True),
        ("status=503.0", True),  # numbers compare as numbers
        ("status!=503", False),
        ("status<600", True),
        ("status<=503", True),
        ("status>503", False),
        ("method=GET", True),
        ("method=get", False),  # text is case-sensitive
        ("method!=POST", True),
        ("uri~/api/*", True),
        ("uri~/admin/*", False),
        ("uri~*expand*", True),  # a substring is a glob with stars
        ("uri~items", False),  # the glob matches the whole text
        ("latency>100", True),
        ("latencies.request>100", True),
        ("latencies.kong<1", True),
        ("latencies.proxy<0", True),
        ("request.headers.content-length>1000", True),  # a string that reads as a number
        ("request.headers.content-length>999999", False),
        ("request.headers.user-agent~curl/*", True),
        ("upstream_status=503", True),
        ("upstream_status>=500", True),
        ("tries.0.ip=10.0.0.1", True),
        ("tries.1.ip=10.0.0.1", False),
        ("route.paths~*items*", True),  # a list as its compact JSON
        ("tls=null", True),
        ("cached=false", True),
        ("response.size>1e2", True),
    ],
)
def test_each_operator_on_numbers_text_and_nested_fields(expression: str, kept: bool) -> None:
    assert keeps(expression) is kept


def test_text_that_is_not_a_number_compares_as_text() -> None:
    assert keeps("method>FOO")  # "GET" > "FOO"
    assert not keeps("method<FOO")
    assert not keeps("status>abc")  # "503" < "abc" as text


def test_a_missing_field_matches_only_not_equal() -> None:
    for op in ("=", ">", ">=", "<", "<=", "~"):
        assert not keeps(f"consumer.username{op}bob")
    assert keeps("consumer.username!=bob")
    assert not keeps("request.method.x=1")  # through a string
    assert not keeps("status=1", {"response": "oops"})


def test_a_message_that_is_not_an_entry_has_no_fields() -> None:
    for message in (NOT_JSON, [1, 2], "text", 42, None):
        assert not keeps("status>=500", message)
        assert keeps("status!=200", message)


def test_several_filters_must_all_hold() -> None:
    both = [parse_filter("status>=500"), parse_filter("method=GET")]
    assert matches_all(both, ENTRY)
    assert not matches_all([*both, parse_filter("latency<100")], ENTRY)
    assert matches_all([], ENTRY)
