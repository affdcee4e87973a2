"""KafkaLogMiddleware's request path and lifecycle, without a broker (nothing listens)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from kafka_log_middleware import KafkaLogConfig, KafkaLogMiddleware, _log, publisher
from kafka_log_middleware.asgi import ASGIRequest, NativeASGIRequest
from kafka_log_middleware.capture import CapturedRequest
from kafka_log_middleware.serializer import build_entry
from kafka_log_middleware.types import Message, Receive, Scope, Send
from tests.asgi_driver import http_scope, lifespan, request
from tests.scripted import invariant_problems
from tests.servers import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def keep_captures_buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read the captured requests themselves: keep the publisher off them."""
    monkeypatch.setattr(publisher, "ENCODE_AT", 10**9)
    monkeypatch.setattr(publisher, "ENCODE_DELAY", 3600.0)


def offline_config(**changes: Any) -> KafkaLogConfig:
    """A config whose broker never answers; entries stay buffered (long flush timer)."""
    fields: dict[str, Any] = {
        "bootstrap_servers": f"127.0.0.1:{free_port()}",
        "topic": "t",
        "producer_async_flush_timeout": 600000,
        "shutdown_timeout": 200,
    }
    return KafkaLogConfig(**{**fields, **changes})


def buffered(middleware: KafkaLogMiddleware) -> list[CapturedRequest]:
    assert middleware._pipeline is not None
    return list(middleware._pipeline.buffer._items)


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": request.path_params.get("name", "world")})


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/hello/{name}", hello, name="hello")])


async def test_http_request_passes_through_and_is_captured() -> None:
    middleware = KafkaLogMiddleware(starlette_app(), offline_config())
    response = await request(middleware, http_scope("/hello/ann", query=b"a=1"))
    assert response.status == 200
    assert response.body == b'{"hello":"ann"}'
    [captured] = buffered(middleware)
    assert captured.status == 200
    assert captured.body_sent == len(b'{"hello":"ann"}')
    assert captured.t_start <= captured.t_response <= captured.t_end
    entry = build_entry(captured)
    assert entry["route"] == {
        "name": "hello",
        "paths": ["/hello/{name}"],
        "methods": ["GET", "HEAD"],
    }
    assert entry["request"]["querystring"] == {"a": "1"}
    assert middleware.stats()["enqueued"] == 1
    await middleware.aclose()


@pytest.mark.parametrize("native_serializer", [True, False])
async def test_the_capture_is_compiled_with_the_native_serializer(native_serializer: bool) -> None:
    middleware = KafkaLogMiddleware(
        starlette_app(), offline_config(native_serializer=native_serializer)
    )
    await request(middleware, http_scope("/hello/you"))
    [captured] = buffered(middleware)
    native = native_serializer and NativeASGIRequest is not None
    assert type(captured) is (NativeASGIRequest if native else ASGIRequest)
    assert (captured.status, captured.body_sent) == (200, 15)
    await middleware.aclose()


async def test_websocket_scope_passes_through_untouched() -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    middleware = KafkaLogMiddleware(app, offline_config())
    scope = {"type": "websocket", "path": "/ws", "headers": []}
    await middleware(scope, receive, send)
    assert seen == [(scope, receive, send)]
    assert middleware.stats()["enqueued"] == 0
    assert middleware.producers() == []


async def test_exception_before_response_propagates_and_logs_500() -> None:
    error = RuntimeError("handler failed")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise error

    middleware = KafkaLogMiddleware(app, offline_config(log_format="kong3"))
    with pytest.raises(RuntimeError) as raised:
        await request(middleware)
    assert raised.value is error
    [captured] = buffered(middleware)
    entry = build_entry(captured)
    assert entry["response"]["status"] == 500
    assert entry["latencies"]["proxy"] == -1
    assert entry["upstream_status"] == ""
    assert entry["source"] == "kong"
    await middleware.aclose()


async def test_exception_after_response_started_keeps_the_status() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError("mid-stream")

    middleware = KafkaLogMiddleware(app, offline_config())
    with pytest.raises(ValueError, match="mid-stream"):
        await request(middleware)
    [captured] = buffered(middleware)
    assert captured.raised and captured.status == 200
    assert build_entry(captured)["response"]["status"] == 200
    await middleware.aclose()


async def test_streaming_response_counts_every_chunk() -> None:
    async def chunks() -> Any:
        for index in range(5):
            yield f"chunk {index}\n".encode()

    async def endpoint(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    middleware = KafkaLogMiddleware(Starlette(routes=[Route("/s", endpoint)]), offline_config())
    response = await request(middleware, http_scope("/s"))
    assert response.body == b"".join(f"chunk {i}\n".encode() for i in range(5))
    [captured] = buffered(middleware)
    assert captured.body_sent == len(response.body)
    await middleware.aclose()


async def test_only_the_first_response_start_counts() -> None:
    """The server refuses a second start: the status the client got is the first one."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.start", "status": 500, "headers": [(b"x", b"y")]})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = KafkaLogMiddleware(app, offline_config())
    await request(middleware)
    [captured] = buffered(middleware)
    assert (captured.status, list(captured.response_headers)) == (201, [])
    await middleware.aclose()


async def test_an_answer_after_the_disconnect_is_a_499() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"nobody reads this"})

    middleware = KafkaLogMiddleware(app, offline_config(log_format="kong3"))
    await request(middleware, disconnect=True)
    [captured] = buffered(middleware)
    entry = build_entry(captured)
    assert entry["response"] == {"status": 499, "headers": {}, "size": 0}
    assert entry["upstream_status"] == "" and entry["latencies"]["proxy"] == -1
    await middleware.aclose()


async def test_body_after_the_disconnect_or_the_last_body_is_not_counted() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        if scope["path"] == "/gone":
            assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.body", "body": b"678", "more_body": False})
        with contextlib.suppress(Exception):  # after the last body: refused
            await send({"type": "http.response.body", "body": b"9"})

    middleware = KafkaLogMiddleware(app, offline_config())
    await request(middleware, http_scope("/gone"), disconnect=True)
    await request(middleware, http_scope("/complete"))
    gone, complete = buffered(middleware)
    assert gone.client_gone and gone.status == 200 and gone.body_sent == 5
    assert not complete.client_gone and complete.body_sent == 8
    assert build_entry(gone)["response"]["status"] == 200  # the status stays what was sent
    await middleware.aclose()


async def test_a_send_error_from_a_spec_2_4_server_means_the_client_has_gone() -> None:
    sent: list[Message] = []

    async def server_send(message: Message) -> None:
        if len(sent) == 2:
            raise ConnectionResetError("client gone")
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await send({"type": "http.response.body", "body": b"abcd", "more_body": True})

    middleware = KafkaLogMiddleware(app, offline_config())
    scope = http_scope("/", asgi={"version": "3.0", "spec_version": "2.4"})
    with pytest.raises(ConnectionResetError):
        await middleware(scope, receive, server_send)
    [captured] = buffered(middleware)
    assert captured.client_gone and captured.status == 200
    assert captured.body_sent == 4  # the body message that raised never left
    await middleware.aclose()


async def test_request_body_bytes_are_counted() -> None:
    async def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    middleware = KafkaLogMiddleware(app, offline_config())
    await request(middleware, http_scope("/echo", method="POST"), body=b"x" * 321)
    [captured] = buffered(middleware)
    assert captured.body_read == 321
    await middleware.aclose()


async def test_pathsend_records_the_file(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"0123456789")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]}
        )
        await send({"type": "http.response.pathsend", "path": str(target)})

    middleware = KafkaLogMiddleware(app, offline_config(log_format="kong3"))
    await request(middleware)
    [captured] = buffered(middleware)
    assert captured.file_path == str(target)
    status_line_and_headers = len(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
    assert build_entry(captured)["response"]["size"] == status_line_and_headers + 10
    await middleware.aclose()


async def test_client_disconnect_before_response_is_499() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "http.disconnect"

    middleware = KafkaLogMiddleware(app, offline_config())
    await request(middleware, disconnect=True)
    [captured] = buffered(middleware)
    assert captured.client_gone
    assert build_entry(captured)["response"]["status"] == 499
    await middleware.aclose()


async def test_cancelled_request_is_logged_and_cancellation_propagates() -> None:
    started = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await asyncio.sleep(3600)

    middleware = KafkaLogMiddleware(app, offline_config())
    task = asyncio.create_task(request(middleware))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [captured] = buffered(middleware)
    assert captured.client_gone
    await middleware.aclose()


async def test_lifespan_is_passed_to_an_app_that_speaks_it() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/hello/{name}", hello)], lifespan=app_lifespan)
    middleware = KafkaLogMiddleware(app, offline_config())
    async with lifespan(middleware) as sent:
        assert events == ["startup"]
        assert [m["type"] for m in sent] == ["lifespan.startup.complete"]
        assert len(middleware.producers()) == 1  # connecting already, before any request
    assert events == ["startup", "shutdown"]
    assert [m["type"] for m in sent][-1] == "lifespan.shutdown.complete"
    assert middleware.producers() == []


async def test_lifespan_is_spoken_for_an_app_without_it() -> None:
    async def django_like(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = KafkaLogMiddleware(django_like, offline_config())
    async with lifespan(middleware) as sent:
        assert [m["type"] for m in sent] == ["lifespan.startup.complete"]
        response = await request(middleware)
        assert response.status == 204
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    stats = middleware.stats()
    assert stats["enqueued"] == 1 and stats["dropped_shutdown"] == 1 and stats["pending"] == 0


async def test_startup_failure_of_the_app_propagates() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("database unreachable")

    middleware = KafkaLogMiddleware(failing, offline_config())
    with pytest.raises(RuntimeError, match="database unreachable"):
        await failing_lifespan(middleware)
    assert middleware.producers() == []


async def failing_lifespan(app: Any) -> None:
    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)


async def test_without_lifespan_the_first_request_starts_the_publisher() -> None:
    middleware = KafkaLogMiddleware(starlette_app(), offline_config())
    assert middleware.producers() == []
    await request(middleware, http_scope("/hello/x"))
    assert len(middleware.producers()) == 1
    await middleware.aclose()
    assert middleware.producers() == []


async def test_buffer_bound_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="kafka_log_middleware")
    middleware = KafkaLogMiddleware(
        starlette_app(), offline_config(producer_async_buffering_limits_messages_in_memory=5)
    )
    for _ in range(12):
        assert (await request(middleware, http_scope("/hello/x"))).status == 200
    assert len(buffered(middleware)) == 5
    # One warning per interval, not one per dropped request.
    assert [r.getMessage() for r in caplog.records if "buffer full" in r.getMessage()] == [
        "kafka_log_middleware: buffer full (5 entries pending), dropping log entries (1 so far)"
    ]
    stats = middleware.stats()
    assert stats["enqueued"] == 12
    assert stats["dropped"] == stats["dropped_buffer_full"] == 7
    assert stats["pending"] == 5
    assert not invariant_problems(stats), stats
    await middleware.aclose()
    stats = middleware.stats()
    assert stats["pending"] == 0 and stats["dropped_shutdown"] == 5


SPEC_2_3 = {"version": "3.0", "spec_version": "2.3"}
"""uvicorn's ASGI spec version: a send after a disconnect is discarded silently."""


async def test_send_hands_the_app_the_servers_own_awaitable() -> None:
    """No extra coroutine frame per ASGI message: the app awaits the server's send."""
    sent: list[Message] = []

    async def server_send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope = http_scope("/", asgi=SPEC_2_3)
    captured = ASGIRequest(scope, offline_config(), receive, server_send)
    awaitable = captured.send({"type": "http.response.start", "status": 204, "headers": []})
    assert awaitable.cr_code is server_send.__code__  # type: ignore[attr-defined]
    await awaitable
    await captured.send({"type": "http.response.body", "body": b"ab"})
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert (captured.status, captured.body_sent) == (204, 2)
    assert captured.t_start <= captured.t_response <= captured.t_end


async def test_failing_hook_never_reaches_the_request() -> None:
    def broken(request: CapturedRequest) -> Any:
        raise KeyError("boom")

    middleware = KafkaLogMiddleware(starlette_app(), offline_config(route=broken, consumer=broken))
    response = await request(middleware, http_scope("/hello/x"))
    assert response.status == 200
    await middleware.aclose()


def test_config_or_fields() -> None:
    app = starlette_app()
    config = offline_config()
    assert KafkaLogMiddleware(app, config).config is config
    assert KafkaLogMiddleware(app, bootstrap_servers="h:1", topic="t").config.topic == "t"
    with pytest.raises(TypeError):
        KafkaLogMiddleware(app, config, topic="t")
    with pytest.raises(ValueError, match="producer_request_acks"):
        KafkaLogMiddleware(app, bootstrap_servers="h:1", topic="t", producer_request_acks=2)
    with pytest.raises(ValueError, match="bootstrap_servers"):
        KafkaLogMiddleware(app, bootstrap_servers="h", topic="t")


async def test_update_config_applies_to_new_requests() -> None:
    middleware = KafkaLogMiddleware(starlette_app(), offline_config())
    await request(middleware, http_scope("/hello/a"))
    middleware.update_config(topic="other", log_format="kong3")
    await request(middleware, http_scope("/hello/b"))
    first, second = buffered(middleware)
    assert first.config.topic == "t" and second.config.topic == "other"
    with pytest.raises(ValueError, match="topic"):
        middleware.update_config(topic="bad topic")
    assert middleware.config.topic == "other"
    await middleware.aclose()


async def test_reported_startup_failure_closes_the_publisher() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    middleware = KafkaLogMiddleware(failing, offline_config())
    await failing_lifespan(middleware)
    assert middleware.producers() == []


async def test_a_bad_config_built_inside_a_server_fails_startup_not_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Built lazily inside the server (as Starlette's add_middleware does), a bad config
    must not raise into the server: startup fails naming the field, requests are served."""
    caplog.set_level("ERROR", logger="kafka_log_middleware")
    _log.reset()
    middleware = KafkaLogMiddleware(starlette_app(), bootstrap_servers="h:1", topic="a b")
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    [failed] = sent
    assert failed["type"] == "lifespan.startup.failed" and "topic" in failed["message"]
    # No lifespan (or a server that ignores the failure): served, not logged, said loudly.
    for _ in range(3):
        response = await request(middleware, http_scope("/hello/x"))
        assert response.status == 200 and response.body == b'{"hello":"x"}'
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all("topic" in r.getMessage() for r in errors)  # built, served
    assert middleware.stats()["enqueued"] == 0
    # A whole valid config repairs it.
    middleware.update_config(offline_config())
    await request(middleware, http_scope("/hello/y"))
    assert middleware.stats()["enqueued"] == 1
    await middleware.aclose()


def test_a_bad_config_outside_a_server_raises_at_once() -> None:
    with pytest.raises(ValueError, match="topic"):
        KafkaLogMiddleware(starlette_app(), bootstrap_servers="h:1", topic="a b")
    with pytest.raises(TypeError, match="config"):
        KafkaLogMiddleware(starlette_app(), "not a config")  # type: ignore[arg-type]


def fastapi_with_a_bad_config() -> Any:
    """The README's first example, with a topic Kafka would refuse."""
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/ping")
    async def ping() -> dict[str, str]:
        return {"ping": "pong"}

    api.add_middleware(KafkaLogMiddleware, bootstrap_servers="h:1", topic="a b")
    return api


def test_add_middleware_with_a_bad_config_stops_uvicorn_at_startup(
    capfd: pytest.CaptureFixture[str],
) -> None:
    import threading

    import uvicorn

    config = uvicorn.Config(fastapi_with_a_bad_config(), port=free_port(), log_level="error")
    server = uvicorn.Server(config)
    exits: list[object] = []

    def run() -> None:
        try:
            server.run()
        except SystemExit as exc:  # uvicorn exits the process at a failed startup
            exits.append(exc.code)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and not server.started and exits == [3]
    errors = capfd.readouterr().err  # uvicorn's own log handler
    assert "bad configuration: topic 'a b'" in errors and "Application startup failed" in errors


def test_add_middleware_with_a_bad_config_without_lifespan_serves_the_app(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import httpx

    from tests.servers import serve

    caplog.set_level("ERROR", logger="kafka_log_middleware")
    _log.reset()
    with serve(fastapi_with_a_bad_config(), lifespan="off") as base_url:
        for _ in range(3):
            response = httpx.get(base_url + "/ping")
            assert response.status_code == 200 and response.json() == {"ping": "pong"}
    assert any("not logged" in r.getMessage() for r in caplog.records)


def test_the_repr_of_a_capture_shows_no_credentials() -> None:
    scope = http_scope("http://user:secret@example.com/x", headers=[(b"authorization", b"t0k")])
    captured = ASGIRequest(scope, offline_config(), request_never, send_never)
    shown = repr(captured)
    assert "/x" in shown and "secret" not in shown and "t0k" not in shown


async def request_never() -> Message:
    raise AssertionError("not called")


async def send_never(message: Message) -> None:
    raise AssertionError("not called")


async def test_a_wait_cancelled_as_it_is_woken_is_cancelled() -> None:
    """Python 3.11's asyncio.wait_for swallows such a cancellation: the publisher would
    then wait on, and the event loop's teardown (asyncio.run's end) hang for ever."""
    from kafka_log_middleware.buffer import LogBuffer

    buffer = LogBuffer(10)
    waiting = asyncio.ensure_future(buffer.wait(5, 100.0))
    await asyncio.sleep(0)
    buffer.wake()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 5)


def test_a_loop_ended_without_aclose_after_a_config_change_does_not_hang() -> None:
    """The case that hung: update_config wakes the publisher as the loop cancels it."""
    middleware = KafkaLogMiddleware(starlette_app(), offline_config())

    async def serve() -> None:
        await request(middleware, http_scope("/hello/a"))
        middleware.update_config(topic="other")

    runner = asyncio.Runner()
    try:
        runner.run(serve())
    finally:
        runner.close()  # cancels the publisher: it must end
    assert middleware._pipeline is not None
    middleware._pipeline.publisher = None  # nothing for the exit flush here
