"""The native serializer's tables are made from their Python definitions, once.

``serializer._new_plan`` hands the compiled serializer, with its first plan, the
constants the entry depends on (reason phrases, TLS names, the server's own 500, the
redaction mark, Kong's server name, the scope key of request edits) and the hook warning.
Here the tables are made afresh, and each request, chosen to read one of them, must take
the native path and give the Python path's bytes. Skipped without the native module,
failed under CI.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from kafka_log_middleware import _log, serializer
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.custom_fields import set_serialize_value
from kafka_log_middleware.serializer import build_entry, encode_entry

from .native_module import native_module
from .test_serializer import _config, _get_scope, _request

native_module()


class Recorder:
    """Stands in for ``serializer._native``, keeping what each ``encode`` returned."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.results: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def encode(self, *args: Any) -> Any:
        result = self.module.encode(*args)
        self.results.append(result)
        return result


def _raising_route(request: CapturedRequest) -> Any:
    raise KeyError("s3cret")


def test_fresh_tables_give_the_python_bytes_on_the_native_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(serializer._native)
    monkeypatch.setattr(serializer, "_native", recorder)
    monkeypatch.setattr(serializer, "_native_tables", None)
    monkeypatch.setattr(serializer, "_plans", {})
    monkeypatch.setattr(serializer, "_last_plan", (None, None))
    config = _config(route=_raising_route)
    tls = {"tls": {"tls_version": 0x0303, "cipher_suite": 0xC02F, "client_cert_chain": []}}
    no_host = [(k, v) for k, v in _get_scope()["headers"] if k != b"host"]
    requests = {
        "reason phrase": _request(config=config, status=418),
        "tls names": _request({**_get_scope(), "scheme": "https", "extensions": tls}, config),
        "server's 500": _request(config=config, status=0, response_headers=(), body_sent=0),
        "redacted + server name": _request({**_get_scope(), "headers": no_host}, config),
    }
    _log.reset()
    with caplog.at_level(logging.WARNING, logger="kafka_log_middleware"):
        for what, request in requests.items():
            recorder.results.clear()
            assert encode_entry(request) == orjson.dumps(build_entry(request)), what
            assert [type(r) for r in recorder.results] == [bytes], what
    assert serializer._native_tables is not None
    assert "route hook raised KeyError; field left out" in caplog.messages

    edited = _request(config=config)
    set_serialize_value(edited.scope, "extra", 1)
    recorder.results.clear()
    assert orjson.loads(encode_entry(edited))["extra"] == 1
    assert recorder.results == [None]  # edits: handed back to the Python path
