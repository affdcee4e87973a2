"""The native ``scope_of`` gives exactly the dict of ``environ.scope_of`` (the Python
function is the specification), or None for an environ it leaves to it; generated
environs include what real servers give, non-ASCII keys and values, surrogates, ports
with signs and spaces, missing keys and values of other types. Skipped without the
native module, failed under CI.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kafka_log_middleware import environ as environ_module
from kafka_log_middleware.environ import scope_of

from .native_module import native_module

native = native_module()


def gunicorn_environ() -> dict[str, Any]:
    """A request as gunicorn's sync worker hands it over."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/app",
        "PATH_INFO": "/hello/world",
        "QUERY_STRING": "a=1&b=%20",
        "RAW_URI": "/app/hello/world?a=1&b=%20",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "54321",
        "SERVER_SOFTWARE": "gunicorn",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "17",
        "HTTP_HOST": "example.com",
        "HTTP_X_FORWARDED_FOR": "10.0.0.1, 10.0.0.2",
        "HTTP_COOKIE": "a=b",
    }


def test_a_servers_environ_takes_the_native_path_and_gives_the_python_dict() -> None:
    environ = gunicorn_environ()
    scope = native.scope_of(environ)
    assert scope is not None
    assert scope == scope_of(environ)
    assert list(scope) == list(scope_of(environ))  # the same keys in the same order


def test_the_door_uses_the_native_module_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    class Spy:
        def scope_of(self, environ: dict[str, Any]) -> Any:
            calls.append(environ)
            return native.scope_of(environ)

    monkeypatch.setattr(environ_module, "_native", Spy())
    environ = gunicorn_environ()
    assert scope_of(environ, native=False) == scope_of(environ, native=True)
    assert calls == [environ]


_TEXT = st.one_of(
    st.text(st.characters(max_codepoint=0x7F), max_size=12),
    st.text(st.characters(max_codepoint=0xFF), max_size=6),
    st.text(max_size=6),  # beyond latin-1, surrogates included
)
_KEYS = st.one_of(
    st.sampled_from(
        [
            "REQUEST_METHOD",
            "SCRIPT_NAME",
            "PATH_INFO",
            "QUERY_STRING",
            "RAW_URI",
            "REQUEST_URI",
            "SERVER_PROTOCOL",
            "SERVER_NAME",
            "SERVER_PORT",
            "REMOTE_ADDR",
            "REMOTE_PORT",
            "CONTENT_TYPE",
            "CONTENT_LENGTH",
            "wsgi.url_scheme",
            "HTTP_HOST",
            "HTTP_X_A_B",
            "HTTP_",
            "HTTP_Ü",
            "HTTPX",
        ]
    ),
    _TEXT.map(lambda s: "HTTP_" + s),
    _TEXT,
)
_PORTS = st.one_of(
    st.from_regex(r"\A[0-9]{1,6}\Z"),
    st.sampled_from([" 80", "+80", "-1", "8_0", "٣", "99999999999999999999", ""]),
)
_VALUES = st.one_of(
    _TEXT,
    _PORTS,
    st.sampled_from(["HTTP/1.1", "HTTP/2", "HTTP/", "SPDY/3", "/a?b?c", "?"]),
    st.none(),
    st.integers(-5, 70000),
    st.binary(max_size=4),
    st.tuples(st.integers(0, 1), st.integers(0, 1)),
)


def _outcome(function: Any, environ: dict[str, Any]) -> Any:
    try:
        return ("value", function(environ))
    except Exception as exc:
        return ("raises", type(exc))


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=14), st.randoms())
@example({"REMOTE_ADDR": "::1", "REMOTE_PORT": "0080"}, None)
@example({"PATH_INFO": "", "RAW_URI": "", "REQUEST_URI": "/x?y"}, None)
@example({"HTTP_ACCEPT": "", "CONTENT_TYPE": "", "CONTENT_LENGTH": "0"}, None)
@example({"SERVER_PROTOCOL": "HTTP/1.0", "QUERY_STRING": "é€"}, None)
def test_native_gives_the_python_dict_or_leaves_it(environ: dict[str, Any], rng: Any) -> None:
    if rng is not None and rng.random() < 0.5:
        environ = gunicorn_environ() | environ
    result = native.scope_of(environ)
    expected = _outcome(scope_of, environ)
    if result is None:
        return  # left to the Python function, which gives (or raises) ``expected``
    assert expected == ("value", result)
    assert list(result) == list(expected[1])
    assert [type(v) for v in result.values()] == [type(v) for v in expected[1].values()]


@given(st.dictionaries(st.sampled_from(list(gunicorn_environ())), _TEXT.filter(str.isascii)))
def test_plain_ascii_environs_always_take_the_native_path(changes: dict[str, str]) -> None:
    environ = gunicorn_environ() | {
        key: value for key, value in changes.items() if not key.endswith("_PORT")
    }
    environ.pop("wsgi.input")
    scope = native.scope_of(environ)
    assert scope is not None
    assert scope == scope_of(environ)
