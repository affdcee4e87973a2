"""``EnvironRequest``: the WSGI doors' capture copies on the request path and builds the
ASGI-shaped scope and the bytes headers on first use; facts added meanwhile reach the
scope; the environ changed after the snapshot (a server reusing it, an app mounting
sub-apps) does not."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest

from kafka_log_middleware import KafkaLogConfig
from kafka_log_middleware import environ as environ_module
from kafka_log_middleware.environ import EnvironRequest, scope_of

CONFIG = KafkaLogConfig(bootstrap_servers=("127.0.0.1:9092",), topic="t")


def an_environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/app/hello",
        "QUERY_STRING": "a=1",
        "RAW_URI": "/app/hello?a=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "10.0.0.7",
        "REMOTE_PORT": "50123",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "gunicorn.socket": object(),
        "HTTP_HOST": "example.test",
    }


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The environs ``scope_of`` was called with."""
    calls: list[dict[str, Any]] = []

    def counting(environ: dict[str, Any], native: bool = False) -> Any:
        calls.append(environ)
        return scope_of(environ, native)

    monkeypatch.setattr(environ_module, "scope_of", counting)
    return calls


def test_the_scope_is_built_once_on_first_read_from_a_snapshot_without_streams(
    built: list[dict[str, Any]],
) -> None:
    environ = an_environ()
    request = EnvironRequest(environ, CONFIG)
    request.add_to_scope("route", "r")
    request.set_header_strs([("Content-Type", "text/plain")])
    assert built == []  # nothing built on the request path
    scope = request.scope
    assert request.scope is scope
    (snapshot,) = built
    assert not {"wsgi.input", "wsgi.errors", "gunicorn.socket"} & set(snapshot)
    assert scope == {**scope_of(environ), "route": "r"}


def test_the_environ_changed_after_the_snapshot_does_not_change_the_scope() -> None:
    environ = an_environ()
    request = EnvironRequest(environ, CONFIG)
    # A mounting app moves the prefix into SCRIPT_NAME; the server then reuses the dict.
    environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/app", "/hello"
    expected = scope_of(an_environ())
    environ.clear()
    assert request.scope == expected
    assert request.scope["path"] == "/app/hello" and request.scope["root_path"] == ""


def test_facts_added_after_the_scope_was_built_go_into_it() -> None:
    request = EnvironRequest(an_environ(), CONFIG)
    request.add_to_scope("a", 1)
    scope = request.scope
    request.add_to_scope("b", 2)
    assert (scope["a"], scope["b"]) == (1, 2)


def test_a_door_with_an_asgi_scope_sets_it_and_adds_to_it() -> None:
    request = EnvironRequest(None, CONFIG)
    asgi_scope = {"type": "http", "path": "/x", "headers": []}
    request.scope = asgi_scope
    request.add_to_scope("route", "r")
    assert request.scope is asgi_scope and asgi_scope["route"] == "r"


def test_response_headers_are_encoded_when_first_read_as_latin_1() -> None:
    request = EnvironRequest(an_environ(), CONFIG)
    assert list(request.response_headers) == []
    headers = [("Content-Type", "text/plain; charset=ä"), ("X-Sign", "€")]
    request.set_header_strs(headers)
    assert list(request.response_headers) == [
        (b"Content-Type", b"text/plain; charset=\xe4"),
        (b"X-Sign", b"?"),
    ]
    request.response_headers = ()
    assert list(request.response_headers) == []
