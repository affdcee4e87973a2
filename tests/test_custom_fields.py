"""Kong's ``kong.log.set_serialize_value`` semantics: recording and applying edits."""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any

import pytest
from starlette.requests import Request

from kafka_log_middleware import _log
from kafka_log_middleware.custom_fields import (
    EDITS_KEY,
    apply_edit,
    apply_edits,
    request_edits,
    set_serialize_value,
)


def _entry() -> dict[str, Any]:
    return {
        "request": {"headers": {"accept": "*/*"}, "size": "10"},
        "response": {"status": 200},
        "client_ip": "10.0.0.1",
    }


# -- recording -----------------------------------------------------------------------


def test_set_serialize_value_records_edits_in_order_in_the_scope() -> None:
    scope: dict[str, Any] = {"type": "http"}
    set_serialize_value(scope, "a", 1)
    set_serialize_value(scope, "b.c", "x", mode="add")
    set_serialize_value(scope, "a", None, mode="replace")
    assert list(request_edits(scope)) == [
        ("a", 1, "set"),
        ("b.c", "x", "add"),
        ("a", None, "replace"),
    ]


def test_set_serialize_value_accepts_a_starlette_request() -> None:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": []}
    set_serialize_value(Request(scope), "user.id", 7)
    assert scope[EDITS_KEY] == [("user.id", 7, "set")]


def test_set_serialize_value_appends_to_a_pre_created_list() -> None:
    edits: list[Any] = []
    scope: dict[str, Any] = {EDITS_KEY: edits}
    set_serialize_value(dict(scope), "a", 1)  # a copied scope still shares the list
    assert edits == [("a", 1, "set")]


def test_no_edits_recorded() -> None:
    assert list(request_edits({})) == []


@pytest.mark.parametrize("mode", ["SET", "merge", ""])
def test_set_serialize_value_rejects_an_unknown_mode(mode: Any) -> None:
    with pytest.raises(ValueError, match="mode"):
        set_serialize_value({}, "a", 1, mode=mode)


@pytest.mark.parametrize("key", ["", ".a", "a.", "a..b", 3, None])
def test_set_serialize_value_rejects_a_bad_key(key: Any) -> None:
    scope: dict[str, Any] = {}
    with pytest.raises(ValueError, match="key"):
        set_serialize_value(scope, key, 1)
    assert EDITS_KEY not in scope


def test_set_serialize_value_needs_a_request_or_scope() -> None:
    with pytest.raises(TypeError):
        set_serialize_value(object(), "a", 1)


# -- applying ------------------------------------------------------------------------


def test_set_creates_or_overwrites() -> None:
    entry = _entry()
    apply_edits(entry, [("new", 1, "set"), ("client_ip", "10.9.9.9", "set")])
    assert entry["new"] == 1
    assert entry["client_ip"] == "10.9.9.9"


def test_dotted_key_creates_nested_objects_for_set_and_add() -> None:
    entry = _entry()
    apply_edits(entry, [("my.new.value", 4, "set"), ("other.x", "y", "add")])
    assert entry["my"] == {"new": {"value": 4}}
    assert entry["other"] == {"x": "y"}


def test_dotted_key_reaches_an_existing_field() -> None:
    entry = _entry()
    apply_edit(entry, "request.headers.x-foo", "bar")
    assert entry["request"]["headers"] == {"accept": "*/*", "x-foo": "bar"}


def test_add_only_when_absent() -> None:
    entry = _entry()
    apply_edits(entry, [("client_ip", "x", "add"), ("request.id", "abc", "add")])
    assert entry["client_ip"] == "10.0.0.1"
    assert entry["request"]["id"] == "abc"


def test_replace_only_when_present() -> None:
    entry = _entry()
    apply_edits(
        entry,
        [("client_ip", "x", "replace"), ("absent", 1, "replace"), ("no.such.path", 1, "replace")],
    )
    assert entry["client_ip"] == "x"
    assert "absent" not in entry
    assert "no" not in entry


def test_none_removes_the_field() -> None:
    entry = _entry()
    apply_edits(entry, [("client_ip", None, "set"), ("request.headers.accept", None, "replace")])
    assert "client_ip" not in entry
    assert entry["request"]["headers"] == {}


def test_none_on_a_missing_nested_field_leaves_empty_parents_as_kong_does() -> None:
    entry = _entry()
    apply_edit(entry, "x.y", None)
    assert entry["x"] == {}


def test_edits_apply_in_order() -> None:
    entry = _entry()
    apply_edits(entry, [("a", 1, "set"), ("a", 2, "add"), ("a", 3, "replace"), ("a", None, "set")])
    assert "a" not in entry


def test_a_parent_that_is_not_an_object_skips_the_edit_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _log.reset()
    entry = _entry()
    with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
        apply_edits(entry, [("client_ip.v4", "x", "set"), ("after", 1, "set")])
    assert entry["client_ip"] == "10.0.0.1"
    assert entry["after"] == 1
    assert "client_ip.v4" in caplog.text


def test_shared_mappings_on_the_path_are_not_modified() -> None:
    service = {"name": "orders", "tags": {"team": "a"}}
    frozen = MappingProxyType({"id": "r1"})
    entry: dict[str, Any] = {"service": service, "route": frozen}
    apply_edits(entry, [("service.tags.team", "b", "set"), ("route.name", "r", "set")])
    assert entry["service"] == {"name": "orders", "tags": {"team": "b"}}
    assert entry["route"] == {"id": "r1", "name": "r"}
    assert service == {"name": "orders", "tags": {"team": "a"}}
    assert dict(frozen) == {"id": "r1"}


def test_set_serialize_value_without_a_scope_says_what_it_needs() -> None:
    with pytest.raises(
        TypeError,
        match=(
            r"^set_serialize_value needs a request \(with \.scope or \.environ\), "
            r"an ASGI scope or a WSGI environ$"
        ),
    ):
        set_serialize_value(42, "a", 1)


def test_the_warning_of_a_skipped_edit_names_the_key_the_part_and_its_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _log.reset()
    with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
        apply_edit(_entry(), "request.size.x", 1)
    assert caplog.messages == [
        "set_serialize_value: 'request.size.x' skipped: 'size' is a str, not an object"
    ]
