"""``LoopThread``: a process's background event loop, for doors whose workers are threads.

The WSGI door's workers only record facts; the publisher and its producers run here,
in one daemon thread per process (made afresh in a forked child: a thread does not
survive a fork, and its parent's loop is the parent's). Daemon, because the
interpreter joins other threads *before* it runs ``atexit``, where the door flushes.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running forever in its own daemon thread, started at construction."""

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()
        """The process this thread runs in (a forked child has none)."""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<LoopThread {self._thread.name!r} pid={self.pid}>"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    @property
    def alive(self) -> bool:
        """True while the loop runs, in this very process."""
        return self.pid == os.getpid() and self._thread.is_alive() and not self.loop.is_closed()

    def call(self, function: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``function()`` in the loop's thread and return its result."""
        return self.run(_as_coroutine(function), timeout)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` in the loop and wait up to ``timeout`` seconds for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, timeout: float) -> None:
        """Stop the loop, join the thread and close the loop (its tasks must be done)."""
        if self.pid != os.getpid() or self.loop.is_closed():
            return
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


async def _as_coroutine(function: Callable[[], T]) -> T:
    return function()
