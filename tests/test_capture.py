"""The ASGI door's capture rules, on an ``ASGIRequest`` driven message by message.

What the client got, as far as a middleware can know it: only the first response start
counts; nothing sent after the client has gone or after the last body is counted; a
spec-2.4 server's send error means the client has gone and that message never left;
``t_start <= t_response <= t_end``; ``body_read`` sums every chunk the app read; the
entry's ``latencies`` come from those timestamps.

A fake ``perf_counter`` ticks one second per call, so each timestamp says exactly which
event set it (no real timing is asserted).
"""

from __future__ import annotations

from typing import Any

import pytest

from kafka_log_middleware import asgi as asgi_door
from kafka_log_middleware import capture
from kafka_log_middleware.asgi import ASGIRequest
from kafka_log_middleware.config import KafkaLogConfig, LogFormat
from kafka_log_middleware.serializer import build_entry
from kafka_log_middleware.types import Message

CONFIG = KafkaLogConfig(bootstrap_servers=("127.0.0.1:9092",), topic="t")
SPEC_2_4 = {"version": "3.0", "spec_version": "2.4"}
SPEC_2_3 = {"version": "3.0", "spec_version": "2.3"}


class Clock:
    """A ``perf_counter`` stand-in: 1.0, 2.0, 3.0, … one second per call."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(capture, "_perf", fake)
    monkeypatch.setattr(asgi_door, "_perf", fake)
    monkeypatch.setattr(capture, "_wall", lambda: 1700000000.5)
    return fake


class Server:
    """The server's ``receive`` and ``send``: scripted incoming messages, recorded outgoing
    ones; ``fail_at`` holds the indexes of sends that raise ``ConnectionResetError``."""

    def __init__(
        self, incoming: list[Message] | None = None, fail_at: tuple[int, ...] = ()
    ) -> None:
        self.incoming = list(incoming or [])
        self.sent: list[Message] = []
        self.fail_at = fail_at
        self.attempts = 0

    async def receive(self) -> Message:
        return self.incoming.pop(0)

    async def send(self, message: Message) -> None:
        self.attempts += 1
        if self.attempts - 1 in self.fail_at:
            raise ConnectionResetError("client gone")
        self.sent.append(message)


def captured(server: Server, asgi: dict[str, str] | None = SPEC_2_3, **scope: Any) -> ASGIRequest:
    full: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/p",
        "raw_path": b"/p",
        "query_string": b"",
        "headers": [(b"host", b"example.com")],
    }
    if asgi is not None:
        full["asgi"] = asgi
    full.update(scope)
    return ASGIRequest(full, CONFIG, server.receive, server.send)


def start(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Message:
    return {"type": "http.response.start", "status": status, "headers": headers or []}


def body(data: bytes, *, more: bool | None = None) -> Message:
    message: Message = {"type": "http.response.body", "body": data}
    if more is not None:
        message["more_body"] = more
    return message


def test_a_new_capture_has_no_facts_yet() -> None:
    request = captured(Server())
    assert request.raised is False and request.client_gone is False
    assert (request.status, request.body_sent, request.body_read, request.file_path) == (
        0,
        0,
        0,
        None,
    )
    assert (request.t_response, request.t_end) == (0.0, 0.0)


# -- the response start ------------------------------------------------------------------


async def test_only_the_first_response_start_counts_and_a_second_still_reaches_the_server() -> None:
    server = Server()
    request = captured(server)
    await request.send(start(201, [(b"a", b"1")]))
    await request.send(start(500, [(b"b", b"2")]))
    assert request.status == 201
    assert list(request.response_headers) == [(b"a", b"1")]
    assert request.t_response == 2.0  # the first start's tick, not the second's
    assert [m["status"] for m in server.sent] == [201, 500]


async def test_a_response_start_without_headers_records_no_headers() -> None:
    request = captured(Server())
    await request.send({"type": "http.response.start", "status": 204})
    assert request.response_headers == ()
    assert build_entry(request)["response"]["headers"] == {}


# -- the request body and disconnects ------------------------------------------------------


async def test_body_read_sums_every_chunk_the_app_read() -> None:
    server = Server(
        [
            {"type": "http.request", "body": b"abc", "more_body": True},
            {"type": "http.request", "body": b"defg", "more_body": True},
            {"type": "http.request", "more_body": False},  # no body key: 0 bytes
        ]
    )
    request = captured(server)
    for _ in range(3):
        await request.receive()
    assert request.body_read == 7
    assert not request.client_gone and request.t_end == 0.0


async def test_a_disconnect_from_receive_means_the_client_has_gone_and_ends_the_request() -> None:
    request = captured(Server([{"type": "http.disconnect"}]))
    assert (await request.receive())["type"] == "http.disconnect"
    assert request.client_gone
    assert request.t_end == 2.0


async def test_a_disconnect_after_the_last_body_changes_nothing() -> None:
    request = captured(Server([{"type": "http.disconnect"}]))
    await request.send(start())
    await request.send(body(b"done"))
    await request.receive()
    assert not request.client_gone
    assert request.t_end == 3.0


async def test_another_incoming_message_is_passed_through_uncounted() -> None:
    request = captured(Server([{"type": "http.other"}]))
    assert (await request.receive()) == {"type": "http.other"}
    assert not request.client_gone and request.t_end == 0.0 and request.body_read == 0


# -- nothing counted after the client has gone or after the last body ----------------------


async def test_nothing_sent_after_the_client_has_gone_is_counted() -> None:
    server = Server([{"type": "http.disconnect"}])
    request = captured(server)
    await request.receive()
    await request.send(start(200, [(b"a", b"1")]))
    await request.send(body(b"late"))
    assert (request.status, request.t_response, request.body_sent) == (0, 0.0, 0)
    assert request.response_headers == ()
    assert request.t_end == 2.0
    assert len(server.sent) == 2  # passed through all the same: the server decides


async def test_nothing_sent_after_the_last_body_is_counted() -> None:
    server = Server()
    request = captured(server)
    await request.send(start(200))
    await request.send(body(b"12345", more=True))
    await request.send(body(b"678", more=False))
    await request.send(body(b"9"))
    await request.send(start(500))
    assert (request.status, request.body_sent, request.t_end) == (200, 8, 3.0)
    assert len(server.sent) == 5


async def test_the_response_stays_open_while_more_body_is_announced() -> None:
    request = captured(Server())
    await request.send(start())
    await request.send(body(b"ab", more=True))
    assert request.t_end == 0.0
    await request.send(body(b"cd"))  # no more_body key: the last body
    assert (request.body_sent, request.t_end) == (4, 3.0)


async def test_pathsend_records_the_file_and_ends_the_response() -> None:
    request = captured(Server())
    await request.send(start())
    await request.send({"type": "http.response.pathsend", "path": "/srv/f.bin"})
    await request.send(body(b"not counted"))
    assert request.file_path == "/srv/f.bin"
    assert (request.t_end, request.body_sent) == (3.0, 0)


# -- spec-2.4 send errors --------------------------------------------------------------------


async def test_a_failed_body_send_on_spec_2_4_is_not_counted_and_the_client_has_gone() -> None:
    server = Server(fail_at=(2,))
    request = captured(server, SPEC_2_4)
    await request.send(start())
    await request.send(body(b"abcd", more=True))
    with pytest.raises(ConnectionResetError):
        await request.send(body(b"efg", more=True))
    assert request.client_gone
    assert (request.status, request.body_sent, request.t_end) == (200, 4, 3.0)
    await request.send(body(b"later"))  # after the client has gone: not counted
    assert request.body_sent == 4


async def test_a_failed_response_start_on_spec_2_4_leaves_no_response() -> None:
    request = captured(Server(fail_at=(0,)), SPEC_2_4)
    with pytest.raises(ConnectionResetError):
        await request.send(start(200, [(b"a", b"1")]))
    assert request.client_gone
    assert request.status == 0 and request.t_response == 0.0 and request.response_headers == ()
    assert request.t_end == 3.0
    assert build_entry(request)["response"]["status"] == 499


async def test_a_failed_pathsend_on_spec_2_4_records_no_file_and_keeps_the_status() -> None:
    request = captured(Server(fail_at=(1,)), SPEC_2_4)
    await request.send(start(200))
    with pytest.raises(ConnectionResetError):
        await request.send({"type": "http.response.pathsend", "path": "/srv/f.bin"})
    assert request.file_path is None
    assert request.client_gone and request.status == 200 and request.t_response == 2.0


async def test_a_send_error_other_than_oserror_is_not_a_disconnect() -> None:
    async def broken(message: Message) -> None:
        raise RuntimeError("server bug")

    server = Server()
    request = captured(server, SPEC_2_4)
    request._send = broken
    with pytest.raises(RuntimeError):
        await request.send(body(b"abc", more=True))
    assert not request.client_gone and request.body_sent == 3 and request.t_end == 0.0


@pytest.mark.parametrize(
    "asgi",
    [None, {}, {"version": "3.0"}, {"version": "3.0", "spec_version": "2.0"}, SPEC_2_3],
    ids=["no-asgi", "empty", "no-spec-version", "2.0", "2.3"],
)
async def test_before_spec_2_4_send_is_the_servers_own_and_an_error_is_no_disconnect(
    asgi: dict[str, str] | None,
) -> None:
    server = Server(fail_at=(1,))
    request = captured(server, asgi)
    awaitable = request.send(start())
    assert awaitable.cr_code is Server.send.__code__  # type: ignore[attr-defined]
    await awaitable
    with pytest.raises(ConnectionResetError):
        await request.send(body(b"abc", more=True))
    assert not request.client_gone and request.body_sent == 3


@pytest.mark.parametrize("spec", ["2.4", "2.5", "3.0"])
async def test_from_spec_2_4_on_sends_are_watched(spec: str) -> None:
    request = captured(Server(fail_at=(0,)), {"version": "3.0", "spec_version": spec})
    with pytest.raises(ConnectionResetError):
        await request.send(body(b"abc"))
    assert request.client_gone and request.body_sent == 0


# -- timings, detach and the entry's latencies ------------------------------------------------


async def test_timestamps_are_taken_in_order_at_entry_response_start_and_last_body() -> None:
    request = captured(Server())
    await request.send(start())
    await request.send(body(b"x", more=True))
    await request.send(body(b"y", more=False))
    request.detach()
    assert (request.t_start, request.t_response, request.t_end) == (1.0, 2.0, 3.0)
    assert request.t_start <= request.t_response <= request.t_end
    assert request.started_at == 1700000000.5


async def test_detach_ends_an_unfinished_request_and_drops_the_servers_callables() -> None:
    request = captured(Server())
    await request.send(start())
    request.detach()
    assert request.t_end == 3.0
    assert not hasattr(request, "_receive") and not hasattr(request, "_send")


def test_detach_keeps_the_end_of_a_finished_request() -> None:
    request = captured(Server())
    request.t_end = 42.0
    request.detach()
    assert request.t_end == 42.0


@pytest.mark.parametrize(
    ("log_format", "latencies"),
    [
        ("kong2", {"request": 3000, "proxy": 2000, "kong": 1000}),
        ("kong3", {"request": 3000, "proxy": 2000, "kong": 0, "receive": 1000}),
    ],
)
async def test_latencies_are_built_from_the_timestamps(
    clock: Clock, log_format: LogFormat, latencies: dict[str, int]
) -> None:
    """request = t_end - t_start; proxy = t_response - t_start; the rest is receive."""
    request = captured(Server())
    request.config = CONFIG.replace(log_format=log_format)
    clock.now = 2.0  # t_start was 1.0
    await request.send(start())  # t_response 3.0
    await request.send(body(b"x"))  # t_end 4.0
    assert (request.t_start, request.t_response, request.t_end) == (1.0, 3.0, 4.0)
    entry = build_entry(request)
    assert entry["latencies"] == latencies
    assert entry["started_at"] == 1700000000500


async def test_latencies_without_a_response_have_no_proxy_time() -> None:
    request = captured(Server([{"type": "http.disconnect"}]))
    request.config = CONFIG.replace(log_format="kong3")
    await request.receive()  # gone at 2.0
    assert build_entry(request)["latencies"] == {
        "request": 1000,
        "proxy": -1,
        "kong": 0,
        "receive": 0,
    }


# -- repr -----------------------------------------------------------------------------------


def test_the_repr_shows_method_path_and_status_but_not_the_query() -> None:
    request = captured(Server(), method="POST", raw_path=b"/a%20b", query_string=b"token=s3cr3t")
    request.status = 201
    assert repr(request) == "<CapturedRequest POST '/a%20b' status=201>"
