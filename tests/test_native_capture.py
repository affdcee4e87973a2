"""``NativeASGIRequest`` (``native/src/capture.rs``) against its specification, ``ASGIRequest``.

Generated scripts of ASGI messages (receives, starts, bodies, pathsends, unknown types,
send errors, spec versions, body copies) drive one request of each class in lockstep:
every fact comes out equal, and each timestamp of both was taken during the same step
(both read ``perf_counter``'s clock). Skipped without the native module (a failure under
CI).
"""

from __future__ import annotations

import gc
import random
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import pytest

from kafka_log_middleware.asgi import ASGIRequest, NativeASGIRequest
from kafka_log_middleware.bodies import BodyCopy
from kafka_log_middleware.config import KafkaLogConfig
from kafka_log_middleware.types import Message

from .native_module import native_module

native_module()

CONFIG = KafkaLogConfig(bootstrap_servers=("127.0.0.1:9092",), topic="t")
BODIES = CONFIG.replace(
    include_request_body=True, include_response_body=True, max_response_body_bytes=7
)
FACTS = (
    "status",
    "response_headers",
    "body_sent",
    "body_read",
    "file_path",
    "raised",
    "client_gone",
    "trace_id",
)
TIMES = ("t_start", "t_response", "t_end")


@dataclass
class Server:
    """Scripted incoming messages; sends recorded, the ones at ``fail_at`` raising."""

    incoming: list[Message]
    fail_at: dict[int, type[Exception]] = field(default_factory=dict)
    sent: list[Message] = field(default_factory=list)
    attempts: int = 0

    async def receive(self) -> Message:
        return self.incoming.pop(0) if self.incoming else {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.attempts += 1
        error = self.fail_at.get(self.attempts - 1)
        if error is not None:
            raise error("scripted")
        self.sent.append(message)


def _message(rng: random.Random) -> tuple[str, Message]:
    """One step: ("receive", the message the server gives) or ("send", the app's)."""
    kind = rng.choice(["start", "start", "body", "body", "body", "receive", "pathsend", "other"])
    if kind == "receive":
        incoming: Message = rng.choice(
            [
                {"type": "http.request", "body": b"x" * rng.randrange(5), "more_body": True},
                {"type": "http.request", "more_body": False},
                {"type": "http.disconnect"},
                {"type": "http.other"},
            ]
        )
        return "receive", incoming
    if kind == "start":
        message: Message = {"type": "http.response.start", "status": rng.choice([200, 204, 500])}
        if rng.random() < 0.7:
            message["headers"] = [(b"content-length", str(rng.randrange(9)).encode())]
        return "send", message
    if kind == "body":
        message = {"type": "http.response.body"}
        if rng.random() < 0.9:
            message["body"] = rng.choice([b"", b"abc", b"0123456789", bytearray(b"xy")])
        if rng.random() < 0.8:
            message["more_body"] = rng.choice([True, True, False])
        return "send", message
    if kind == "pathsend":
        return "send", {"type": "http.response.pathsend", "path": "/srv/f.bin"}
    return "send", {"type": rng.choice(["http.response.trailers", "other"])}


def _scope(rng: random.Random) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/p", "headers": []}
    asgi = rng.choice(
        [None, {}, {"version": "3.0"}, {"spec_version": "2.3"}, {"spec_version": "2.4"}]
    )
    if asgi is not None:
        scope["asgi"] = asgi
    return scope


async def _step(request: Any, step: tuple[str, Message]) -> object:
    """Run one step; what it returned or raised (by type)."""
    try:
        if step[0] == "receive":
            return await request.receive()
        return await request.send(step[1])
    except Exception as exc:  # compared between the twins
        return type(exc)


def _facts(request: Any) -> dict[str, Any]:
    facts = {name: getattr(request, name) for name in FACTS}
    facts["response_headers"] = list(facts["response_headers"])
    for side in ("request_body", "response_body"):
        copy = getattr(request, side)
        facts[side] = None if copy is None else (copy.chunks, copy.room, copy.truncated)
    return facts


def _step_of(moment: float, bounds: list[tuple[float, float]]) -> int:
    """The step during which the clock read ``moment``."""
    [step] = [i for i, (low, high) in enumerate(bounds) if low <= moment <= high]
    return step


@pytest.mark.parametrize("seed", range(300))
async def test_the_native_capture_records_what_asgi_request_records(seed: int) -> None:
    rng = random.Random(seed)
    config = rng.choice([CONFIG, BODIES])
    scope = _scope(rng)
    steps = [_message(rng) for _ in range(rng.randrange(1, 7))]
    sends = sum(1 for kind, _ in steps if kind == "send")
    fail_at = {i: rng.choice([ConnectionResetError, RuntimeError]) for i in range(sends)}
    fail_at = {i: e for i, e in fail_at.items() if rng.random() < 0.15}
    incoming = [message for kind, message in steps if kind == "receive"]
    python_server = Server(list(incoming), dict(fail_at))
    native_server = Server(list(incoming), dict(fail_at))

    bounds = []  # the clock around each step (step 0: the constructors)
    before = time.perf_counter()
    python = ASGIRequest(scope, config, python_server.receive, python_server.send)
    native = NativeASGIRequest(scope, config, native_server.receive, native_server.send)
    bounds.append((before, time.perf_counter()))
    for step in steps:
        before = time.perf_counter()
        assert await _step(python, step) == await _step(native, step)
        bounds.append((before, time.perf_counter()))
        before = time.perf_counter()
    python.detach()
    native.detach()
    bounds.append((before, time.perf_counter()))

    assert _facts(native) == _facts(python)
    assert native_server.sent == python_server.sent
    assert native.started_at == pytest.approx(python.started_at, abs=5)
    for name in TIMES:
        python_time, native_time = getattr(python, name), getattr(native, name)
        assert (python_time == 0.0) == (native_time == 0.0), name
        if python_time:
            assert _step_of(native_time, bounds) == _step_of(python_time, bounds), name


def test_a_native_capture_starts_as_a_python_one() -> None:
    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/p", "headers": []}
    native = NativeASGIRequest(scope, BODIES, receive, send)
    python = ASGIRequest(scope, BODIES, receive, send)
    assert _facts(native) == _facts(python)
    assert native.scope is scope and native.config is BODIES
    assert isinstance(native.response_body, BodyCopy) and native.response_body.room == 7
    assert (native.t_response, native.t_end) == (0.0, 0.0)
    assert native.started_at == pytest.approx(time.time(), abs=5)
    assert repr(native) == repr(python) == "<CapturedRequest GET '/p' status=0>"
    assert native._receive is receive and native._send is send
    native.detach()
    with pytest.raises(AttributeError):
        native._send  # noqa: B018 - dropped, as ASGIRequest.detach drops it


def test_every_fact_can_be_set_as_on_a_python_capture() -> None:
    native = NativeASGIRequest({"type": "http"}, CONFIG, None, None)
    values: dict[str, Any] = {
        "scope": {"type": "http", "path": "/q"},
        "config": BODIES,
        "status": 418,
        "response_headers": [(b"a", b"b")],
        "body_sent": 5,
        "body_read": 6,
        "file_path": "/f",
        "raised": True,
        "client_gone": True,
        "trace_id": 1 << 100,
        "request_body": None,
        "response_body": BodyCopy(1),
        "started_at": 1.5,
        "t_start": 2.5,
        "t_response": 3.5,
        "t_end": 4.5,
    }
    for name, value in values.items():
        setattr(native, name, value)
    assert {name: getattr(native, name) for name in values} == values


def test_a_cycle_through_the_scope_is_collected() -> None:
    class Marker:
        pass

    scope: dict[str, Any] = {"type": "http", "marker": Marker()}
    native = NativeASGIRequest(scope, CONFIG, None, None)
    scope["request"] = native  # an app may keep the request in its scope's state
    gone = weakref.ref(scope["marker"])
    del scope, native
    gc.collect()
    assert gone() is None
