"""Drive an ASGI app in-process: lifespan startup/shutdown and single HTTP requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from kafka_log_middleware.types import ASGIApp, Message


@dataclass
class Response:
    """What the app sent for one request."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    messages: list[Message] = field(default_factory=list)


def http_scope(
    path: str = "/",
    *,
    method: str = "GET",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An HTTP/1.1 scope as uvicorn builds it."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": headers if headers is not None else [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    scope.update(extra)
    return scope


async def request(
    app: ASGIApp,
    scope: dict[str, Any] | None = None,
    *,
    body: bytes = b"",
    disconnect: bool = False,
) -> Response:
    """Send one request; returns what the app sent (exceptions propagate)."""
    response = Response()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            if disconnect:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        response.messages.append(message)
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            response.body += message.get("body", b"")

    await app(scope or http_scope(), receive, send)
    return response


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[list[Message]]:
    """Run the app's lifespan: startup on entry, shutdown on exit; yields what it sent."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[Message] = []
    started = asyncio.Event()
    finished = asyncio.Event()

    async def receive() -> Message:
        return await inbox.get()

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"].startswith("lifespan.startup."):
            started.set()
        if message["type"].startswith("lifespan.shutdown."):
            finished.set()

    task: asyncio.Future[None] = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    )
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.wait_for(started.wait(), 30)
    try:
        yield sent
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(finished.wait(), 60)
        await asyncio.wait_for(task, 30)
