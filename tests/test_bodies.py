"""Request and response bodies (``bodies.py``): the capped copy, the background's fields
(text, base64, redaction, omitted types), the config fields, and every door end to end
against the real broker (ASGI/Starlette under uvicorn, WSGI/Flask)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from flask import Flask, Response, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response as StarletteResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from kafka_log_middleware import InvalidConfig, KafkaLogConfig, KafkaLogMiddleware
from kafka_log_middleware.asgi import ASGIRequest
from kafka_log_middleware.bodies import BodyCopy, body_fields
from kafka_log_middleware.buffer import LogBuffer
from kafka_log_middleware.flask import KafkaLog
from kafka_log_middleware.serializer import HASH_PREFIX, build_entry, encode_entry
from kafka_log_middleware.wsgi import WSGIRequest
from tests.kafka_helpers import consume, unique_topic
from tests.servers import serve

pytestmark = pytest.mark.timeout(120)

BASE = {"bootstrap_servers": ("127.0.0.1:9",), "topic": "t"}
ON: dict[str, Any] = {"include_request_body": True, "include_response_body": True}
JSON = b"application/json"
FIFTY_MB = 50 * 1024 * 1024
MIB = 1024 * 1024


def config(**changes: Any) -> KafkaLogConfig:
    return KafkaLogConfig(**{**BASE, **changes})


def copied(chunks: list[bytes], cap: int = 100) -> BodyCopy:
    copy = BodyCopy(cap)
    for chunk in chunks:
        copy.add(chunk)
    return copy


def fields(data: bytes, content_type: bytes | None, cap: int = 100, **changes: Any) -> Any:
    return body_fields(copied([data], cap), content_type, config(**changes), lambda v: "REDACTED")


# -- the copy on the request path ---------------------------------------------------------


def test_the_copy_keeps_chunks_up_to_the_cap_and_no_more() -> None:
    copy = copied([b"abc", b"", b"defg", b"hij"], cap=8)
    assert copy.data() == b"abcdefgh" and copy.truncated and copy.room == 0
    assert sum(len(c) for c in copy.chunks) == 8
    whole = copied([b"abc", b"def"], cap=6)
    assert whole.data() == b"abcdef" and not whole.truncated


def test_a_bytearray_the_app_reuses_is_copied() -> None:
    chunk = bytearray(b"abc")
    copy = copied([chunk])  # type: ignore[list-item]
    chunk[:] = b"xyz"
    assert copy.data() == b"abc"


# -- the fields, built in the background ---------------------------------------------------


def test_text_and_json_as_text() -> None:
    assert fields(b'{"a": 1}', JSON) == {"body": '{"a": 1}'}
    assert fields("héllo".encode(), b"Text/Plain; charset=UTF-8") == {"body": "héllo"}
    assert fields(b"<a/>", b"application/problem+json") == {"body": "<a/>"}
    assert fields("é".encode("latin-1"), b"text/plain; charset=latin-1") == {"body": "é"}


def test_invalid_utf8_is_replaced_and_a_character_cut_by_the_cap_dropped() -> None:
    assert fields(b"a\xffb", b"text/plain") == {"body": "a\ufffdb"}
    cut = fields("aé".encode(), b"text/plain", cap=2)  # the cap cuts é in two
    assert cut == {"body": "a", "body_truncated": True}


def test_a_binary_type_allowed_is_base64() -> None:
    data = bytes(range(256))
    out = fields(data, b"application/octet-stream", cap=1000, body_content_types=["*/*"])
    assert out == {"body": base64.b64encode(data).decode(), "body_encoding": "base64"}


def test_a_type_not_allowed_or_absent_is_left_out_and_said_so() -> None:
    assert fields(b"\x89PNG", b"image/png") == {"body_omitted": "content_type"}
    assert fields(b"x", None) == {"body_omitted": "content_type"}
    assert fields(b"", None) == {"body": ""}


def test_redacted_keys_at_any_depth_case_insensitively() -> None:
    body = orjson.dumps(
        {"user": "ann", "Password": "s3cret", "nested": [{"token": {"x": 1}, "ok": True}]}
    )
    out = fields(body, JSON, cap=1000, redact_body_keys=["password", "TOKEN"])
    assert orjson.loads(out["body"]) == {
        "user": "ann",
        "Password": "REDACTED",
        "nested": [{"token": "REDACTED", "ok": True}],
    }
    assert "s3cret" not in out["body"]


def test_a_json_body_that_cannot_be_redacted_is_left_out() -> None:
    keys: dict[str, Any] = {"redact_body_keys": ["password"]}
    assert fields(b'{"password": "s3', JSON, **keys) == {"body_omitted": "redaction"}
    cut = fields(b'{"password": "s3cret"}', JSON, cap=5, **keys)
    assert cut == {"body_omitted": "redaction", "body_truncated": True}


def test_with_a_redaction_key_a_redacted_value_is_its_keyed_hash() -> None:
    request = captured(
        config(**ON, redact_body_keys=["password"], redaction_key=b"k" * 16),
        request=(b'{"password": "s3cret"}', JSON),
    )
    body = orjson.loads(build_entry(request)["request"]["body"])
    assert body["password"].startswith(HASH_PREFIX) and "s3cret" not in body["password"]


# -- config ----------------------------------------------------------------------------------


def test_off_by_default_no_body_fields() -> None:
    default = config()
    assert not default.include_request_body and not default.include_response_body
    assert default.max_request_body_bytes == default.max_response_body_bytes == 524288
    entry = orjson.loads(encode_entry(captured(default, request=(b"{}", JSON))))
    assert not [k for side in ("request", "response") for k in entry[side] if "body" in k]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"include_request_body": "yes"}, "include_request_body"),
        ({"max_response_body_bytes": 0}, "max_response_body_bytes"),
        ({"body_content_types": "text/*"}, "body_content_types"),
        ({"body_content_types": ["text"]}, "body_content_types"),
        ({"redact_body_keys": [""]}, "redact_body_keys"),
    ],
)
def test_bad_values_name_their_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        config(**changes)
    assert caught.value.field == field


def test_from_env() -> None:
    env = {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": "k:9092",
        "KAFKA_LOG_TOPIC": "t",
        "KAFKA_LOG_INCLUDE_REQUEST_BODY": "true",
        "KAFKA_LOG_INCLUDE_RESPONSE_BODY": "on",
        "KAFKA_LOG_MAX_REQUEST_BODY_BYTES": "1024",
        "KAFKA_LOG_BODY_CONTENT_TYPES": "Text/*, application/xml",
        "KAFKA_LOG_REDACT_BODY_KEYS": "Password,token",
    }
    got = KafkaLogConfig.from_env(environ=env)
    assert got.include_request_body and got.include_response_body
    assert got.max_request_body_bytes == 1024
    assert got.body_content_types == ("text/*", "application/xml")
    assert got.redact_body_keys == ("password", "token")
    with pytest.raises(InvalidConfig, match="KAFKA_LOG_INCLUDE_REQUEST_BODY"):
        KafkaLogConfig.from_env(environ={**env, "KAFKA_LOG_INCLUDE_REQUEST_BODY": "maybe"})


# -- the ASGI door, in-process ---------------------------------------------------------------


def captured(
    cfg: KafkaLogConfig,
    request: tuple[bytes, bytes] | None = None,
    response: tuple[list[bytes], bytes] | None = ([b"ok"], b"text/plain"),
) -> ASGIRequest:
    """A request through ``ASGIRequest``'s receive/send, as a server would drive it
    (``response`` None: the app sends none)."""
    body, content_type = request or (b"", b"text/plain")
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"host", b"h"), (b"content-type", content_type)],
        "http_version": "1.1",
    }
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    async def run() -> ASGIRequest:
        captured = ASGIRequest(scope, cfg, receive, send)
        await captured.receive()
        if response is None:
            captured.detach()
            return captured
        chunks, response_type = response
        headers = [(b"content-type", response_type)]
        await captured.send({"type": "http.response.start", "status": 200, "headers": headers})
        for n, chunk in enumerate(chunks):
            more = n < len(chunks) - 1
            await captured.send({"type": "http.response.body", "body": chunk, "more_body": more})
        captured.detach()
        return captured

    return asyncio.run(run())


def test_a_50_mb_streamed_response_is_copied_up_to_the_cap_only() -> None:
    chunk = b"x" * 65536
    chunks = [chunk] * (FIFTY_MB // len(chunk))
    request = captured(config(**ON), response=(chunks, b"text/plain"))
    copy = request.response_body
    assert copy is not None and copy.truncated
    assert sum(len(c) for c in copy.chunks) == 524288  # all the memory it holds
    assert request.body_sent == FIFTY_MB
    response = build_entry(request)["response"]
    assert len(response["body"]) == 524288 and response["body_truncated"] is True


# -- the WSGI door's wrappers, in-process ------------------------------------------------------


def wsgi_request(cfg: KafkaLogConfig, body: bytes, written: list[bytes]) -> WSGIRequest:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    return WSGIRequest(environ, cfg, lambda *_: written.append, LogBuffer(10))


def test_every_wsgi_input_read_is_copied() -> None:
    body = b"line1\nline2\nline3\nline4\nrest"
    request = wsgi_request(config(**ON), body, [])
    stream = request._environ["wsgi.input"]  # type: ignore[index]
    buffer = bytearray(3)
    got = [stream.read(2), stream.readline(), stream.readlines(1)[0]]
    assert stream.readinto(buffer) == 3
    got += [bytes(buffer), *stream]
    assert b"".join(got) == body  # the app reads what was sent
    assert request.request_body is not None and request.request_body.data() == body
    assert request.body_read == len(body)


def test_the_wsgi_write_callable_is_copied() -> None:
    written: list[bytes] = []
    request = wsgi_request(config(**ON, max_response_body_bytes=4), b"", written)
    write = request.start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"abc")
    write(b"def")
    assert written == [b"abc", b"def"]
    assert request.response_body is not None
    assert request.response_body.data() == b"abcd" and request.response_body.truncated


# -- end to end, the real broker -------------------------------------------------------------


def body_keys(side: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in side.items() if key.startswith("body")}


async def echo(request: Request) -> StarletteResponse:
    body = await request.body()
    kind = request.headers.get("content-type", "text/plain")
    return StarletteResponse(body, media_type=kind)


async def streamed(request: Request) -> StreamingResponse:
    received = [chunk async for chunk in request.stream()]  # the request's more_body chunks

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in received:
            yield chunk
        for n in range(3):
            yield f"part{n};".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def big(request: Request) -> StreamingResponse:
    chunk = b"y" * MIB

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield chunk

    return StreamingResponse(chunks(), media_type="text/plain")


def consumed(bootstrap: str, topic: str, count: int) -> list[dict[str, Any]]:
    records = asyncio.run(consume(bootstrap, topic, count, timeout=30))
    assert len(records) == count
    return sorted((orjson.loads(r.value) for r in records), key=lambda e: e["request"]["uri"])


LOGIN = {"user": "ann", "profile": {"password": "s3cret", "age": 3}}
BINARY = bytes(range(256)) * 4


def send_all(client: httpx.Client) -> None:
    """The same requests on every door: JSON, text, binary, streamed/chunked, big."""

    def parts() -> Iterator[bytes]:
        yield b"chunk1;"
        yield b"chunk2;"

    json_response = client.post("/a-json", json=LOGIN)
    assert json_response.json() == LOGIN
    assert client.post("/b-text", content="héllo", headers={"content-type": "text/plain"}).text
    octet = {"content-type": "application/octet-stream"}
    assert client.post("/c-binary", content=BINARY, headers=octet).content == BINARY
    image = client.post("/d-image", content=b"\x89PNG", headers={"content-type": "image/png"})
    assert image.content == b"\x89PNG"
    chunked = client.post("/e-stream", content=parts(), headers={"content-type": "text/plain"})
    assert chunked.text == "chunk1;chunk2;part0;part1;part2;"
    got = client.get("/f-big")
    assert got.content == b"y" * FIFTY_MB  # the client gets all 50 MB, unchanged


def check_entries(entries: list[dict[str, Any]], cap: int) -> None:
    redacted = {"user": "ann", "profile": {"password": "REDACTED", "age": 3}}
    expected = [
        ({"body": orjson.dumps(redacted).decode()},) * 2,
        ({"body": "héllo"},) * 2,
        ({"body": base64.b64encode(BINARY).decode(), "body_encoding": "base64"},) * 2,
        ({"body_omitted": "content_type"},) * 2,
        ({"body": "chunk1;chunk2;"}, {"body": "chunk1;chunk2;part0;part1;part2;"}),
        ({"body": ""}, {"body": "y" * cap, "body_truncated": True}),
    ]
    got = [(body_keys(e["request"]), body_keys(e["response"])) for e in entries]
    assert got == expected
    assert int(entries[5]["response"]["size"]) > FIFTY_MB  # the size counts every byte


BODIES: dict[str, Any] = {
    **ON,
    "body_content_types": ("text/*", "application/json", "application/octet-stream"),
    "redact_body_keys": ("password",),
    "producer_async_flush_timeout": 20,
}


@pytest.mark.kafka
def test_asgi_starlette_bodies_end_to_end(kafka_bootstrap: str) -> None:
    topic = unique_topic("bodies-asgi")
    app = Starlette(
        routes=[
            Route("/a-json", echo, methods=["POST"]),
            Route("/b-text", echo, methods=["POST"]),
            Route("/c-binary", echo, methods=["POST"]),
            Route("/d-image", echo, methods=["POST"]),
            Route("/e-stream", streamed, methods=["POST"]),
            Route("/f-big", big),
        ]
    )
    middleware = KafkaLogMiddleware(
        app, KafkaLogConfig(bootstrap_servers=(kafka_bootstrap,), topic=topic, **BODIES)
    )
    with serve(middleware) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        send_all(client)
    check_entries(consumed(kafka_bootstrap, topic, 6), 524288)


def flask_app(bootstrap: str, topic: str) -> Flask:
    app = Flask("bodies")
    app.config["KAFKA_LOG"] = {"bootstrap_servers": bootstrap, "topic": topic, **BODIES}

    @app.post("/a-json")
    @app.post("/b-text")
    @app.post("/c-binary")
    @app.post("/d-image")
    def echo_view() -> Response:
        return Response(request.get_data(), content_type=request.content_type)

    @app.post("/e-stream")
    def stream_view() -> Response:
        # A chunked request (no Content-Length): werkzeug's request.stream reads it only
        # with wsgi.input_terminated (gunicorn's); read the input itself to its end.
        body = request.environ["wsgi.input"].read()

        def chunks() -> Iterator[bytes]:
            yield body
            for n in range(3):
                yield f"part{n};".encode()

        return Response(chunks(), content_type="text/plain")

    @app.get("/f-big")
    def big_view() -> Response:
        chunk = b"y" * MIB
        return Response((chunk for _ in range(50)), content_type="text/plain")

    KafkaLog(app)
    return app


@pytest.mark.kafka
def test_wsgi_flask_bodies_end_to_end(kafka_bootstrap: str) -> None:
    topic = unique_topic("bodies-flask")
    app = flask_app(kafka_bootstrap, topic)
    transport = httpx.WSGITransport(app=app)
    with httpx.Client(transport=transport, base_url="http://flask", timeout=60) as client:
        send_all(client)
    KafkaLog.middleware(app).close()
    check_entries(consumed(kafka_bootstrap, topic, 6), 524288)
