"""Blocking calls (a client's metadata request, the spool's file I/O) run off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any


def in_a_thread(call: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """``call(*args)`` on a thread of its own (``asyncio.to_thread`` refuses to run at
    interpreter exit, where the exit flush may need it); where no thread may start any
    more (Python >= 3.12 at exit), in the loop's own thread: nothing else runs then."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def run() -> None:
        try:
            result, error = call(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    try:
        threading.Thread(target=run, name="kafka-log-blocking", daemon=True).start()
    except RuntimeError:  # "can't create new thread at interpreter shutdown"
        run()
    return future
