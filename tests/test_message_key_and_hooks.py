"""The message key and the hooks around the entry (serializer.py), on the Python path.

The ``key`` hook gets the captured request and what it returns becomes the key (str as
UTF-8, bytes as they are, anything else no key, with a warning); ``key_query_arg`` takes
the argument decoded as the entry's ``querystring`` is in that layout. A hook that raises
is named in one warning with the exception's type and what became of its field. The
request target is parsed once per entry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from kafka_log_middleware import _log, nginx_vars, serializer
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.config import LogFormat
from kafka_log_middleware.serializer import build_entry, message_key

from .test_serializer import _config, _get_scope, _request


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The package's warnings, with a fresh rate limit."""
    _log.reset()
    with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
        yield caplog
    _log.reset()


def test_the_key_hook_gets_the_captured_request() -> None:
    seen: list[CapturedRequest] = []

    def key(request: CapturedRequest) -> str:
        seen.append(request)
        return str(request.scope["path"])

    request = _request(config=_config(key=key))
    assert message_key(request) == b"/orders/42"
    assert seen == [request]


@pytest.mark.parametrize(
    ("returned", "key"), [("caf\u00e9", "caf\u00e9".encode()), (b"\xff", b"\xff"), (None, None)]
)
def test_the_key_hooks_str_is_utf8_and_bytes_stay_as_they_are(returned: Any, key: Any) -> None:
    assert message_key(_request(config=_config(key=lambda r: returned))) == key


def test_a_key_of_another_type_is_no_key_with_a_warning(
    warnings: pytest.LogCaptureFixture,
) -> None:
    assert message_key(_request(config=_config(key=lambda r: 42))) is None
    assert warnings.messages == ["key hook returned int, not str/bytes/None; no message key"]


def test_a_key_hook_that_raises_is_no_key_with_a_warning(
    warnings: pytest.LogCaptureFixture,
) -> None:
    def key(request: CapturedRequest) -> bytes:
        raise LookupError("no s3cret here")

    assert message_key(_request(config=_config(key=key))) is None
    assert warnings.messages == ["key hook raised LookupError; no message key"]


@pytest.mark.parametrize(
    ("log_format", "key"),
    [("kong2", b"zz y"), ("kong3", b"%zz y")],  # Kong 2.0's unescaping drops a bad escape
)
def test_key_query_arg_is_decoded_as_the_layouts_querystring(
    log_format: LogFormat, key: bytes
) -> None:
    scope = {**_get_scope(), "query_string": b"k=%zz+y&k=2"}
    request = _request(scope, _config(log_format, key_query_arg="k"))
    assert message_key(request) == key
    assert build_entry(request)["request"]["querystring"]["k"][0] == key.decode()


@pytest.mark.parametrize("field", ["route", "consumer", "authenticated_entity"])
def test_a_hook_that_raises_is_named_in_a_warning_and_its_field_left_out(
    warnings: pytest.LogCaptureFixture, field: str
) -> None:
    def hook(request: CapturedRequest) -> Any:
        raise KeyError("s3cret")

    entry = build_entry(_request(config=_config("kong2", **{field: hook})))
    assert field not in entry
    assert warnings.messages == [f"{field} hook raised KeyError; field left out"]


def test_a_custom_field_that_raises_is_named_in_a_warning(
    warnings: pytest.LogCaptureFixture,
) -> None:
    def hook(request: CapturedRequest) -> Any:
        raise ValueError("s3cret")

    entry = build_entry(_request(config=_config(custom_fields={"a.b": hook, "c": lambda r: 1})))
    assert "a" not in entry and entry["c"] == 1
    assert warnings.messages == ["custom_fields['a.b'] hook raised ValueError; field left out"]


@pytest.mark.parametrize("log_format", ["kong2", "kong3"])
def test_the_target_is_parsed_once_per_entry(
    monkeypatch: pytest.MonkeyPatch, log_format: LogFormat
) -> None:
    calls: list[object] = []
    parse = nginx_vars.target

    def counting(scope: Any) -> nginx_vars.Target:
        calls.append(scope)
        return parse(scope)

    monkeypatch.setattr(nginx_vars, "target", counting)
    monkeypatch.setattr(serializer, "_native", None)
    request = _request(config=_config(log_format))
    serializer.encode_entry(request)
    assert len(calls) == 1
