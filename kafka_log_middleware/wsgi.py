"""``KafkaLogWSGIMiddleware``: WSGI (PEP 3333) middleware that logs every request to Kafka.

A worker thread only records facts: it snapshots the environ (``environ.py``), wraps
``start_response``, ``write()`` and the returned iterable, and when the server
``close()``s that iterable it hands the finished request to the pipeline's buffer
(``put_threadsafe``: a counter and an append under a small lock, never a lock held
across I/O). The pipeline's publisher and producers run in one background thread per
process (``background.py``), made on the first request of each process: nothing
created before a fork (``gunicorn --preload``) is used after it. Pending entries are
flushed at interpreter exit, within ``shutdown_timeout``, or by ``close()``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Unpack

from .background import BackgroundPipeline
from .buffer import LogBuffer
from .capture import DOOR_KEY, CapturedRequest
from .config import KafkaLogConfig, KafkaLogFields
from .custom_fields import EDITS_KEY
from .environ import EnvironRequest, request_path
from .filters import EXCLUDED, excluded
from .gateway import UPSTREAM_KEY
from .pipeline import config_of, update_config_of
from .producers import Producer
from .publisher import Resolver

_perf = time.perf_counter
ROUTE_KEY = "kafka_log_middleware.route"
"""Environ key where a framework integration records the matched route (a
``MatchedRoute``); it becomes the entry's ``scope["route"]``."""
_COPIED_KEYS = (EDITS_KEY, UPSTREAM_KEY, ROUTE_KEY)
"""What the app may add to the environ while it serves, copied at the response's end."""

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class KafkaLogWSGIMiddleware:
    """Publish a Kong-format log entry to Kafka for every request the WSGI ``app`` serves.

    Give either a ``KafkaLogConfig`` or its fields as keywords; a bad one raises here.
    ``config_resolver`` may choose another config per request; it runs in the
    background thread with the captured request.
    """

    def __init__(
        self,
        app: WSGIApp,
        config: KafkaLogConfig | None = None,
        *,
        config_resolver: Resolver | None = None,
        **fields: Unpack[KafkaLogFields],
    ) -> None:
        self.app = app
        config = config_of(config, fields)
        if config_resolver is not None and not callable(config_resolver):
            raise TypeError("config_resolver must be callable")
        self._background = BackgroundPipeline(config, config_resolver)

    def __repr__(self) -> str:
        return f"KafkaLogWSGIMiddleware({self.config!r})"

    @property
    def config(self) -> KafkaLogConfig:
        """The configuration in force for new requests."""
        return self._background.pipeline.config

    # -- the request path -------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        pipeline = self._background.started()
        config = pipeline.config
        if config.exclude_paths and excluded(config.exclude_paths, request_path(environ)):
            pipeline.buffer.skip_threadsafe()
            environ[DOOR_KEY] = EXCLUDED  # an inner Django entry does not log it either
            return self.app(environ, start_response)
        environ[DOOR_KEY] = "wsgi"
        request = WSGIRequest(environ, config, start_response, pipeline.buffer)
        reader = pipeline.span_reader
        if reader is not None:
            request.trace_id = reader()
        try:
            result = self.app(environ, request.start_response)
        except BaseException:
            request.failed()
            request.end()
            raise
        return request.response(result)

    # -- lifecycle and runtime control ------------------------------------------

    def close(self) -> None:
        """Flush pending entries and close producers, within ``shutdown_timeout``; stop
        the background thread. A later request starts them again. Runs at exit too."""
        self._background.close()

    def update_config(
        self, config: KafkaLogConfig | None = None, **changes: Unpack[KafkaLogFields]
    ) -> None:
        """Switch to a new config (or the current one with ``changes``) for new requests.

        Requests already captured keep the config they started with. A producer that no
        config in force uses any more is flushed and closed.
        """
        self._background.update_config(update_config_of(self.config, config, changes))

    def stats(self) -> dict[str, int]:
        """This process's counters (see ``KafkaLogMiddleware.stats``)."""
        return self._background.stats()

    def producers(self) -> list[Producer]:
        """The Kafka producers this middleware currently holds in this process."""
        return self._background.producers()


class WSGIRequest(EnvironRequest):
    """A request's facts, recorded by wrapping ``start_response``, ``write`` and the
    response iterable; handed to the buffer once, when the response is closed."""

    __slots__ = ("_buffer", "_environ", "_start_response", "_started_body", "_write")

    def __init__(
        self,
        environ: Environ,
        config: KafkaLogConfig,
        start_response: StartResponse,
        buffer: LogBuffer,
    ) -> None:
        super().__init__(environ, config)
        self._environ: Environ | None = environ
        self._start_response = start_response
        self._buffer: LogBuffer | None = buffer
        self._write: Callable[[bytes], object] = _no_response
        self._started_body = False
        """A body byte (or an empty chunk) went to the server: its headers are sent."""
        if self.request_body is not None or (
            "CONTENT_LENGTH" not in environ and "HTTP_TRANSFER_ENCODING" in environ
        ):
            # A chunked request body: nothing declares its size, so count what is read
            # (and copy the first bytes, when bodies are logged).
            stream = environ.get("wsgi.input")
            if stream is not None:
                environ["wsgi.input"] = _CountedInput(stream, self)

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], object]:
        """The server's ``start_response``; records what it accepted."""
        if exc_info is None:
            write = self._start_response(status, headers)
        else:  # the server re-raises it if its headers have gone already
            write = self._start_response(status, headers, exc_info)
        self.t_response = _perf()
        try:
            self.status = int(status[:3])
        except ValueError:
            self.status = 0
        self.set_header_strs(list(headers))  # the server may change its list as it sends it
        self._write = write
        return self.write

    def write(self, data: bytes) -> None:
        """The ``write()`` callable ``start_response`` returns (PEP 3333's legacy path)."""
        self._write(data)
        self._started_body = True
        self.body_sent += len(data)
        if self.response_body is not None:
            self.response_body.add(data)

    def response(self, result: Iterable[bytes]) -> Iterable[bytes]:
        """What to give the server for the app's ``result``."""
        file_wrapper = self._environ.get("wsgi.file_wrapper") if self._environ else None
        if (
            isinstance(file_wrapper, type)
            and isinstance(result, file_wrapper)
            and _watch_file(result, self)
        ):
            return result  # the server's own: it may sendfile() it
        return _Response(result, self)

    def failed(self) -> None:
        """The app raised: before any body went out, the server answers 500 itself."""
        self.raised = True
        if not self._started_body:
            self.status, self.t_response, self.response_headers = 0, 0.0, ()

    def end(self) -> None:
        """The response is over: complete the facts and hand them to the buffer, once."""
        buffer = self._buffer
        if buffer is None:
            return
        self._buffer = None
        self.finish()
        environ = self._environ
        if environ is not None:
            self._environ = None
            carry_app_facts(environ, self)
        self._start_response = self._write = _no_response  # let go of the server's
        buffer.put_threadsafe(self)


def carry_app_facts(state: Mapping[str, Any], request: EnvironRequest) -> None:
    """Add what the app left for its entry in ``state`` (the environ, or the scope a
    door passed on) to the ``request``'s scope: edits, upstream facts, the route."""
    for key in _COPIED_KEYS:
        value = state.get(key)
        if value is not None:
            request.add_to_scope("route" if key is ROUTE_KEY else key, value)


def _no_response(*args: Any) -> Any:
    raise RuntimeError("write() before start_response() or after the response ended")


class _Response:
    """The app's iterable as the server sees it: counts the body, forwards ``close()``."""

    __slots__ = ("_iterable", "_request")

    def __init__(self, iterable: Iterable[bytes], request: WSGIRequest) -> None:
        self._iterable = iterable
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        request = self._request
        copy = request.response_body
        try:
            for chunk in self._iterable:
                request._started_body = True
                request.body_sent += len(chunk)
                if copy is not None:
                    copy.add(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except BaseException:
            request.failed()
            raise
        request.finish()  # exhausted: the last byte is out

    def close(self) -> None:
        request = self._request
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        except BaseException:
            request.raised = True
            raise
        finally:
            if not request.t_end and not request.raised:
                request.client_gone = True  # closed before exhausted: the server gave up
            request.end()

    def __del__(self) -> None:
        # A server that never calls close() (PEP 3333 says it must) still gets its entry.
        request = self._request
        if request._buffer is not None:
            request.end()


class _CountedInput:
    """``wsgi.input`` counting the bytes the app reads (for a chunked request body), and
    copying the first ones (``include_request_body``)."""

    __slots__ = ("_request", "_stream")

    def __init__(self, stream: Any, request: CapturedRequest) -> None:
        self._stream = stream
        self._request = request

    def _got(self, data: bytes) -> None:
        request = self._request
        request.body_read += len(data)
        if request.request_body is not None:
            request.request_body.add(data)

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._stream.read(size) if size is not None else self._stream.read()
        self._got(data)
        return data

    def readinto(self, buffer: Any) -> int | None:
        """werkzeug's ``LimitedStream`` reads this way."""
        size: int | None = self._stream.readinto(buffer)
        if size:
            with memoryview(buffer) as view:
                self._got(view[:size])  # type: ignore[arg-type]
        return size

    def readline(self, size: int = -1) -> bytes:
        data: bytes = self._stream.readline(size)
        self._got(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(hint)
        for line in lines:
            self._got(line)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self._got(line)
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _watch_file(wrapper: Any, request: WSGIRequest) -> bool:
    """Watch the file of the server's ``wsgi.file_wrapper`` object, keeping the object
    itself (so the server may ``sendfile()`` it): its ``close()`` closes the file, which
    ends the request. False when the wrapper's file is not where PEP 3333's reference
    (and gunicorn's, uWSGI's) keeps it."""
    filelike = getattr(wrapper, "filelike", None)
    if filelike is None:
        return False
    watched = _WatchedFile(filelike, request)
    try:
        wrapper.filelike = watched
        if "close" in vars(wrapper):  # wsgiref's and gunicorn's bind the file's close
            wrapper.close = watched.close
    except (AttributeError, TypeError):
        return False
    return True


class _WatchedFile:
    """A ``wsgi.file_wrapper``'s file: its size is the body's, its ``close()`` the end."""

    __slots__ = ("_file", "_read", "_request", "_size")

    def __init__(self, file: Any, request: WSGIRequest) -> None:
        self._file = file
        self._request = request
        self._size = _remaining(file)
        """Bytes the server will send (a ``sendfile()`` reads nothing through us)."""
        self._read = 0
        request._started_body = True  # the server sends its headers with the file

    def read(self, *size: int) -> bytes:
        data: bytes = self._file.read(*size)
        self._read += len(data)
        return data

    def close(self) -> None:
        request = self._request
        try:
            close = getattr(self._file, "close", None)
            if close is not None:
                close()
        finally:
            sent = self._read if self._size is None else self._size
            declared = request.content_length()
            # A server sends no more than the response declared.
            request.body_sent = sent if declared is None else min(sent, declared)
            request.end()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def _remaining(file: Any) -> int | None:
    """Bytes from ``file``'s position to its end; None when it has no descriptor."""
    try:
        fileno = file.fileno()
        return max(os.fstat(fileno).st_size - os.lseek(fileno, 0, os.SEEK_CUR), 0)
    except (AttributeError, OSError, ValueError):
        return None
