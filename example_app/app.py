"""The demo app: path params, query args, an auth header, a stream, a failure.

Run it with ``KAFKA_LOG_BOOTSTRAP_SERVERS=127.0.0.1:9092 KAFKA_LOG_TOPIC=kong-log
uvicorn example_app.app:app``; ``scripts/demo`` does all of it, broker included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import StreamingResponse

from example_app.demo_config import USERS, demo_config
from kafka_log_middleware import (
    CapturedRequest,
    KafkaLogMiddleware,
    find_middleware,
    set_serialize_value,
)


def consumer(request: CapturedRequest) -> dict[str, Any] | None:
    """Kong's ``consumer``: the user the handler authenticated, if any."""
    user = request.scope.get("state", {}).get("user")
    return dict(user) if user else None


api = FastAPI(title="orders (kafka-log-middleware demo)")


@api.get("/orders/{order_id}")
async def get_order(order_id: int, request: Request, expand: bool = False) -> dict[str, Any]:
    """A path parameter and query arguments."""
    set_serialize_value(request, "order_id", order_id)
    return {"id": order_id, "expand": expand, "items": ["book", "pen"] if expand else []}


@api.post("/orders", status_code=201)
async def create_order(request: Request) -> dict[str, Any]:
    """A request body: counted in ``request.size``."""
    body = await request.json()
    return {"id": 1001, "received": body}


@api.get("/me")
async def me(request: Request, authorization: str | None = Header(default=None)) -> Any:
    """An Authorization header: logged as ``REDACTED``; the user becomes Kong's consumer."""
    user = USERS.get(authorization or "")
    if user is None:
        raise HTTPException(status_code=401, detail="missing or bad token")
    request.state.user = user
    return user


@api.get("/stream")
async def stream(chunks: int = 5) -> StreamingResponse:
    """A streaming response: ``response.size`` counts every chunk."""

    async def body() -> AsyncIterator[bytes]:
        for index in range(chunks):
            yield f"chunk {index}\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(body(), media_type="text/plain")


@api.get("/boom")
async def boom() -> None:
    """An unhandled exception: logged with status 500, then re-raised unchanged."""
    raise RuntimeError("the demo handler failed on purpose")


@api.get("/_kafka_log/stats")
async def stats(request: Request) -> dict[str, int]:
    """The middleware's counters: enqueued == delivered + dropped + uncertain +
    skipped_should_log + pending."""
    middleware = find_middleware(request.app)
    return middleware.stats() if middleware is not None else {}


config = demo_config(consumer)
api.add_middleware(KafkaLogMiddleware, config=config)
app = api
