"""``BackgroundPipeline``: the pipeline of doors whose requests are served by threads.

The WSGI door and the Django door capture requests in worker threads (or, under
Django's ASGI handler, wherever Django runs the middleware); their pipeline's publisher
and producers run in one background loop per process (``loop_thread.py``), started by
the first request of each process: nothing made before a fork (``gunicorn --preload``)
is used after it. Pending entries are flushed by ``close()``, which runs at interpreter
exit too, within ``shutdown_timeout``.
"""

from __future__ import annotations

import atexit
import importlib
import os
import threading
import weakref
from typing import Any

from . import _log
from .config import KafkaLogConfig
from .loop_thread import LoopThread
from .pipeline import Pipeline
from .producers import Producer
from .publisher import Resolver


class BackgroundPipeline:
    """A ``Pipeline`` whose publisher runs in this process's background loop thread."""

    def __init__(self, config: KafkaLogConfig, resolver: Resolver | None = None) -> None:
        self.pipeline = Pipeline(config, resolver, threaded=True)
        """Look ``pipeline.buffer`` up per request: a forked child gets a new one."""
        self.runner: LoopThread | None = None
        """This process's background loop (None until the first request, and after close)."""
        self._parents: LoopThread | None = None
        """In a forked child: the parent's background loop (see ``start``)."""
        self._starting = threading.Lock()
        _close_at_exit(self)
        _forget_at_fork(self)
        problem = uwsgi_problem()
        if problem is not None:
            _log.logger.error("kafka_log_middleware: %s", problem)

    def __repr__(self) -> str:
        return f"BackgroundPipeline({self.pipeline.config!r})"

    def started(self) -> Pipeline:
        """The pipeline, its publisher started in this process (the request path's call:
        no ``getpid()``, a system call, per request; ``_forked`` runs in a child)."""
        if self.runner is None:
            self.start()
        return self.pipeline

    def start(self) -> None:
        """Start this process's background loop and the publisher in it (at once if started)."""
        with self._starting:
            runner = self.runner
            if runner is not None and runner.alive:
                return
            runner = LoopThread("kafka-log-publisher")
            runner.call(self.pipeline.start)
            self.runner = runner

    def _forked(self) -> None:
        """In a forked child: the parent's thread is not here, and its loop, "running" in
        the parent, cannot be closed; kept unused rather than collected. The next request
        starts this process's own."""
        if self.runner is not None:
            self._parents, self.runner = self.runner, None
        self._starting = threading.Lock()  # another thread may have held it at the fork

    def close(self) -> None:
        """Flush pending entries and close producers, within ``shutdown_timeout``; stop
        the background thread. A later request starts them again."""
        with self._starting:
            runner, self.runner = self.runner, None
        if runner is None or not runner.alive:
            return
        timeout = self.pipeline.config.shutdown_timeout / 1000
        try:
            runner.run(self.pipeline.aclose(), timeout + 1)
        except Exception as exc:  # TimeoutError included: what was left is counted
            _log.warn("exit", "kafka_log_middleware: flush at close failed (%r)", exc)
        finally:
            runner.stop(1.0)

    def update_config(self, config: KafkaLogConfig) -> None:
        """See ``Pipeline.update_config`` (safe from any thread)."""
        self.pipeline.update_config(config)

    def stats(self) -> dict[str, int]:
        """This process's counters (see ``LogBuffer.stats``)."""
        return self.pipeline.stats()

    def producers(self) -> list[Producer]:
        """The Kafka producers held in this process."""
        return self.pipeline.producers()


def uwsgi_problem() -> str | None:
    """Under uWSGI without Python threads, what to enable; else None."""
    try:
        uwsgi = importlib.import_module("uwsgi")  # exists only inside uWSGI
    except ImportError:
        return None
    options = getattr(uwsgi, "opt", {})
    if _on(options.get("enable-threads")) or _on(options.get("threads")):
        return None
    return (
        "uWSGI runs this app without Python threads, and the publisher of log entries "
        "is a thread: entries will pile up and be dropped (buffer_full) instead of "
        "reaching Kafka. Start uWSGI with --enable-threads (or --threads N); with "
        "--master, also --lazy-apps, so that each worker loads the app (and its "
        "middleware) itself."
    )


def _on(value: Any) -> bool:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def _forget_at_fork(background: BackgroundPipeline) -> None:
    """Have ``background._forked()`` run in every forked child, without keeping it alive."""
    ref = weakref.ref(background)

    def forked() -> None:
        alive = ref()
        if alive is not None:
            alive._forked()

    os.register_at_fork(after_in_child=forked)


def _close_at_exit(background: BackgroundPipeline) -> None:
    """Register ``background.close()`` at interpreter exit, without keeping it alive."""
    ref = weakref.ref(background)

    def close() -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    atexit.register(close)
