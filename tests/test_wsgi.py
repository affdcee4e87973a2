"""The WSGI door without a broker (scripted producers), driven as a PEP 3333 server
drives it: ``start_response`` and ``exc_info``, streamed bodies, ``close()``,
``wsgi.file_wrapper``, ``write()``, exceptions before and after ``start_response``,
the background thread per process, ``stats``/``update_config``/``close``, uWSGI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import types
import wsgiref.util
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson
import pytest

from kafka_log_middleware import KafkaLogConfig, set_serialize_value
from kafka_log_middleware.background import uwsgi_problem
from kafka_log_middleware.routes import MatchedRoute
from kafka_log_middleware.wsgi import ROUTE_KEY, KafkaLogWSGIMiddleware
from tests.polling import wait_until
from tests.scripted import Scripted, config, invariant_problems
from tests.servers import free_port

pytestmark = pytest.mark.timeout(30)

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with Scripted().installed() as maker:
        yield maker


@pytest.fixture
def middlewares() -> Iterator[list[KafkaLogWSGIMiddleware]]:
    """Middlewares to close after the test (their background threads stop)."""
    made: list[KafkaLogWSGIMiddleware] = []
    yield made
    for middleware in made:
        middleware.close()


def environ(
    path: str = "/hello",
    *,
    method: str = "GET",
    query: str = "a=1",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    **extra: Any,
) -> Environ:
    """A PEP 3333 environ as gunicorn makes it (``RAW_URI`` included)."""
    env: Environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "RAW_URI": path + ("?" + query if query else ""),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "10.0.0.7",
        "REMOTE_PORT": "50123",
        "wsgi.input": io.BytesIO(body),
        "wsgi.file_wrapper": wsgiref.util.FileWrapper,
    }
    if body:
        env["CONTENT_LENGTH"] = str(len(body))
    for name, value in (headers or {"Host": "example.test", "User-Agent": "t/1"}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    env.update(extra)
    wsgiref.util.setup_testing_defaults(env)
    return env


class Served:
    """What a minimal PEP 3333 server did with one response."""

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.closed = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        if exc_info is not None and self.body:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status, self.headers = status, headers
        return self.write

    def write(self, data: bytes) -> None:
        self.body += data


def serve(
    app: Callable[[Environ, StartResponse], Iterable[bytes]],
    env: Environ | None = None,
    *,
    stop_after: int | None = None,
) -> Served:
    """Call ``app`` as a server does: iterate (up to ``stop_after`` chunks), then close."""
    served = Served()
    result = app(env or environ(), served.start_response)
    try:
        for number, chunk in enumerate(result, 1):
            served.body += chunk
            if stop_after is not None and number >= stop_after:
                break
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
            served.closed = True
    return served


def logged(
    app: Callable[[Environ, StartResponse], Iterable[bytes]],
    made: list[KafkaLogWSGIMiddleware],
    **changes: Any,
) -> KafkaLogWSGIMiddleware:
    middleware = KafkaLogWSGIMiddleware(app, config(**changes))
    made.append(middleware)
    return middleware


def entries(scripted: Scripted, middleware: KafkaLogWSGIMiddleware, count: int) -> list[Any]:
    """The ``count`` entries published so far, after every one was delivered."""
    wait_until(lambda: middleware.stats()["delivered"] >= count, timeout=20)
    stats = middleware.stats()
    assert not invariant_problems(stats), stats
    values = [orjson.loads(m[1]) for h in scripted.handovers() for m in h.messages]
    assert len(values) == count, values
    return values


def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


# -- the entry ---------------------------------------------------------------------------


def test_a_plain_response_gives_one_whole_kong_entry(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """Request facts from the environ, the response from start_response and the body."""
    middleware = logged(hello, middlewares)
    served = serve(middleware)
    assert served.status == "200 OK" and served.body == b"hello" and served.closed
    (entry,) = entries(scripted, middleware, 1)
    request = entry["request"]
    assert request["method"] == "GET"
    assert request["uri"] == "/hello?a=1"
    assert request["url"] == "http://example.test:8000/hello?a=1"
    assert request["querystring"] == {"a": "1"}
    assert request["headers"] == {"host": "example.test", "user-agent": "t/1"}
    # "GET /hello?a=1 HTTP/1.1\r\n" + "host: example.test\r\n" + "user-agent: t/1\r\n" + "\r\n"
    assert request["size"] == str(25 + 20 + 17 + 2)
    assert entry["client_ip"] == "10.0.0.7"
    response = entry["response"]
    assert response["status"] == 200
    assert response["headers"] == {"content-type": "text/plain", "content-length": "5"}
    # "HTTP/1.1 200 OK\r\n" + headers + "\r\n" + body
    assert response["size"] == str(17 + 26 + 19 + 2 + 5)
    assert entry["latencies"]["proxy"] >= 0


def test_a_streamed_body_is_counted_and_the_entry_waits_for_close(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """Each chunk counts; the entry is handed over only when the server closes."""
    closed: list[bool] = []

    class Stream:
        def __iter__(self) -> Iterator[bytes]:
            yield from (b"ab", b"", b"cde")

        def close(self) -> None:
            closed.append(True)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return Stream()

    middleware = logged(app, middlewares)
    served = Served()
    result = middleware(environ(), served.start_response)
    assert b"".join(result) == b"abcde"
    assert middleware.stats()["enqueued"] == 0  # exhausted, not closed yet
    result.close()  # type: ignore[attr-defined]
    assert closed == [True]  # close() forwarded
    (entry,) = entries(scripted, middleware, 1)
    assert entry["response"]["size"] == str(17 + 2 + 5)


def test_a_generator_app_may_call_start_response_while_iterated(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("201 Created", [("X-A", "1")])
        yield b"made"

    middleware = logged(app, middlewares)
    assert serve(middleware).body == b"made"
    (entry,) = entries(scripted, middleware, 1)
    assert entry["response"]["status"] == 201
    assert entry["response"]["headers"] == {"x-a": "1"}


def test_a_response_closed_before_it_is_exhausted_is_a_client_gone(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """A server stops iterating when the client has gone: what was yielded is counted."""

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        for _ in range(100):
            yield b"x" * 10

    middleware = logged(app, middlewares)
    serve(middleware, stop_after=3)
    (entry,) = entries(scripted, middleware, 1)
    assert entry["response"]["status"] == 200
    assert entry["response"]["size"] == str(17 + 2 + 30)


def test_write_callable_bytes_are_counted(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """PEP 3333's write(): bytes written before the iterable are the body too."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [])
        write(b"legacy ")
        return [b"tail"]

    middleware = logged(app, middlewares)
    assert serve(middleware).body == b"legacy tail"
    (entry,) = entries(scripted, middleware, 1)
    assert entry["response"]["size"] == str(17 + 2 + 11)


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "read"])
def test_the_servers_file_wrapper_is_kept_and_its_file_is_the_body(
    scripted: Scripted,
    middlewares: list[KafkaLogWSGIMiddleware],
    tmp_path: Any,
    sendfile: bool,
) -> None:
    """The app's wsgi.file_wrapper object reaches the server as is (it may sendfile it);
    the body is the file from its position; closing it ends the request."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789" * 100)
    returned: list[object] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        file = path.open("rb") if sendfile else io.BytesIO(path.read_bytes())
        file.seek(10)
        wrapper = environ["wsgi.file_wrapper"](file, 64)
        returned.append(wrapper)
        return wrapper  # type: ignore[no-any-return]

    middleware = logged(app, middlewares)
    served = Served()
    result = middleware(environ(), served.start_response)
    assert result is returned[0]  # untouched: the server recognizes its own wrapper
    assert isinstance(result, wsgiref.util.FileWrapper)
    if sendfile:  # as gunicorn's sendfile() does: the descriptor, never read()
        fileno = result.filelike.fileno()
        assert os.fstat(fileno).st_size == 1000
    else:
        served.body = b"".join(result)
        assert len(served.body) == 990
    assert middleware.stats()["enqueued"] == 0
    result.close()
    (entry,) = entries(scripted, middleware, 1)
    assert entry["response"]["size"] == str(17 + 40 + 2 + 990)


def test_an_exception_before_start_response_is_a_500_without_proxy_latency(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """Re-raised unchanged; the server answers 500 itself."""
    error = LookupError("boom")

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raise error

    middleware = logged(app, middlewares)
    with pytest.raises(LookupError) as raised:
        middleware(environ(), Served().start_response)
    assert raised.value is error
    (entry,) = entries(scripted, middleware, 1)
    assert entry["response"]["status"] == 500
    assert entry["latencies"]["proxy"] == -1


def test_an_exception_after_start_response_before_the_body_is_a_500(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """Headers not sent yet: the server still answers 500; the app's 200 never left."""

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("X-A", "1")])
        raise KeyError("late")
        yield b"never"

    middleware = logged(app, middlewares)
    with pytest.raises(KeyError):
        serve(middleware)
    (entry,) = entries(scripted, middleware, 1)
    assert entry["response"]["status"] == 500
    assert entry["latencies"]["proxy"] == -1


def test_an_exception_after_body_bytes_keeps_the_status_that_went_out(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        raise RuntimeError("mid-stream")

    middleware = logged(app, middlewares)
    with pytest.raises(RuntimeError, match="mid-stream"):
        serve(middleware)
    (entry,) = entries(scripted, middleware, 1)
    assert entry["response"]["status"] == 200
    assert entry["response"]["size"] == str(17 + 2 + 7)


def test_start_response_with_exc_info_replaces_the_response_before_the_body(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """An app that catches its error and answers 503 with exc_info: the 503 is logged."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("X-A", "1")])
        try:
            raise ValueError("caught")
        except ValueError:
            start_response("503 Service Unavailable", [("Retry-After", "1")], sys.exc_info())
        return [b"later"]

    middleware = logged(app, middlewares)
    assert serve(middleware).status == "503 Service Unavailable"
    (entry,) = entries(scripted, middleware, 1)
    assert entry["response"]["status"] == 503
    assert entry["response"]["headers"] == {"retry-after": "1"}


def test_an_exception_from_close_is_raised_and_the_entry_still_counted(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    class Broken:
        def __iter__(self) -> Iterator[bytes]:
            yield b"ok"

        def close(self) -> None:
            raise OSError("close failed")

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return Broken()

    middleware = logged(app, middlewares)
    with pytest.raises(OSError, match="close failed"):
        serve(middleware)
    (entry,) = entries(scripted, middleware, 1)
    assert entry["response"]["status"] == 200


def test_a_chunked_request_body_is_counted_as_read(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """No Content-Length: request.size counts the body bytes the app read (+ framing)."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        data = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [data]

    middleware = logged(app, middlewares)
    headers = {"Host": "h", "Transfer-Encoding": "chunked"}
    env = environ("/up", method="POST", query="", headers=headers)
    env["wsgi.input"] = io.BytesIO(b"x" * 300)
    assert serve(middleware, env).body == b"x" * 300
    (entry,) = entries(scripted, middleware, 1)
    line = len("POST /up HTTP/1.1\r\n") + len("host: h\r\n") + len("transfer-encoding: chunked\r\n")
    assert entry["request"]["size"] == str(line + 2 + 300 + len("12c\r\n\r\n") + 5)


def test_edits_and_the_route_recorded_in_the_environ_reach_the_entry(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """set_serialize_value(environ, …) and an integration's route, read at the end."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        set_serialize_value(environ, "tenant", "acme")
        environ[ROUTE_KEY] = MatchedRoute("hello", "/hello/<name>", frozenset({"GET"}))
        start_response("200 OK", [])
        return [b""]

    middleware = logged(app, middlewares)
    env = environ()
    serve(middleware, env)
    (entry,) = entries(scripted, middleware, 1)
    assert entry["tenant"] == "acme"
    assert entry["route"] == {"name": "hello", "paths": ["/hello/<name>"], "methods": ["GET"]}


def test_the_environ_is_not_kept_once_the_response_ended(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """uWSGI reuses its environ: the entry is built from a snapshot."""
    middleware = logged(hello, middlewares)
    env = environ()
    serve(middleware, env)
    entries(scripted, middleware, 1)
    env["PATH_INFO"] = "/changed"  # the server reuses it for the next request
    env.clear()
    held = [r for r in scripted.made[0].handovers]
    assert held and all(b"/hello" in m[1] for h in held for m in h.messages)


# -- threads, processes, lifecycle ---------------------------------------------------------


def test_worker_threads_feed_one_background_publisher(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """Eight threads at once (a threaded server): every entry once, one publisher thread."""
    middleware = logged(hello, middlewares)
    start = threading.Barrier(8)

    def worker(number: int) -> None:
        start.wait()
        for n in range(50):
            serve(middleware, environ(query=f"n={number * 100 + n}"))

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    values = entries(scripted, middleware, 400)
    numbers = sorted(int(v["request"]["querystring"]["n"]) for v in values)
    assert numbers == sorted(i * 100 + n for i in range(8) for n in range(50))
    publishers = [t for t in threading.enumerate() if t.name == "kafka-log-publisher"]
    assert len(publishers) == 1
    assert {h.loop for h in scripted.handovers()} == {middleware._background.runner.loop}  # type: ignore[union-attr]


def test_close_flushes_stops_the_thread_and_a_later_request_starts_again(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    scripted.ready = False  # nothing is delivered before close()
    middleware = logged(hello, middlewares)
    serve(middleware)
    runner = middleware._background.runner
    assert runner is not None and runner.alive
    wait_until(lambda: len(scripted.made) == 1)
    assert middleware.stats()["delivered"] == 0
    runner.loop.call_soon_threadsafe(scripted.made[0].gate.set)
    middleware.close()
    assert not runner.alive and runner.loop.is_closed()
    stats = middleware.stats()
    assert stats["pending"] == 0 and stats["delivered"] == 1, stats
    assert scripted.made[0].shut_down
    scripted.ready = True
    serve(middleware)
    assert middleware._background.runner is not None and middleware._background.runner is not runner
    wait_until(lambda: middleware.stats()["delivered"] == 2)


def test_close_within_shutdown_timeout_counts_what_could_not_go(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """The broker never answers: close() returns within the timeout, all counted."""
    scripted.ready = False
    middleware = logged(hello, middlewares, shutdown_timeout=200)
    for _ in range(3):
        serve(middleware)
    middleware.close()
    stats = middleware.stats()
    assert stats["pending"] == 0 and stats["dropped_shutdown"] == 3, stats


def test_update_config_from_a_worker_thread_applies_to_new_requests(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    middleware = logged(hello, middlewares)
    serve(middleware)
    middleware.update_config(topic="other")
    assert middleware.config.topic == "other"
    serve(middleware)
    wait_until(lambda: middleware.stats()["delivered"] == 2)
    assert sorted(h.topic for h in scripted.handovers()) == ["logs", "other"]


def test_a_bad_configuration_raises_at_construction() -> None:
    with pytest.raises(ValueError, match="topic"):
        KafkaLogWSGIMiddleware(hello, topic="a b", bootstrap_servers="k:9092")
    with pytest.raises(TypeError, match="config_resolver must be callable"):
        KafkaLogWSGIMiddleware(hello, config(), config_resolver="nope")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        KafkaLogWSGIMiddleware(hello, config(), topic="t")


def test_nothing_crosses_a_fork(
    scripted: Scripted, middlewares: list[KafkaLogWSGIMiddleware]
) -> None:
    """After a fork the child starts its own thread, loop, producer and buffer; the
    parent's go on in the parent."""
    middleware = logged(hello, middlewares)
    serve(middleware)
    wait_until(lambda: middleware.stats()["delivered"] == 1)
    before = _parts(middleware)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's atexit
        code = 1
        try:
            serve(middleware)
            wait_until(lambda: middleware.stats()["delivered"] == 1, timeout=10)
            after = _parts(middleware)
            crossed = [name for name in before if before[name] == after[name]]
            alive = [t.name for t in threading.enumerate()]
            os.write(write, orjson.dumps({"crossed": crossed, "threads": alive}))
            middleware.close()
            code = 0
        except BaseException as exc:
            os.write(write, orjson.dumps({"error": repr(exc)}))
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    report = orjson.loads(os.read(read, 65536))
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert report["crossed"] == []
    assert report["threads"].count("kafka-log-publisher") == 1
    assert _parts(middleware) == before  # the parent's are untouched
    serve(middleware)
    wait_until(lambda: middleware.stats()["delivered"] == 2)


def _parts(middleware: KafkaLogWSGIMiddleware) -> dict[str, int]:
    runner = middleware._background.runner
    pipeline = middleware._background.pipeline
    assert runner is not None and pipeline.publisher is not None
    return {
        "thread": id(runner._thread),
        "loop": id(runner.loop),
        "buffer": id(pipeline.buffer),
        "publisher": id(pipeline.publisher),
        "producers": id(pipeline.producers()[0]),
    }


# -- uWSGI --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({}, True),
        ({"enable-threads": True}, False),
        ({"threads": b"4"}, False),
        ({"enable-threads": b"false"}, True),
    ],
)
def test_uwsgi_without_threads_is_told_what_to_enable(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], problem: bool
) -> None:
    module = types.ModuleType("uwsgi")
    module.opt = options  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", module)
    found = uwsgi_problem()
    if problem:
        assert found is not None and "--enable-threads" in found and "--lazy-apps" in found
    else:
        assert found is None


def test_no_uwsgi_no_problem() -> None:
    assert "uwsgi" not in sys.modules
    assert uwsgi_problem() is None


def test_a_middleware_built_under_uwsgi_without_threads_says_so_once(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    middlewares: list[KafkaLogWSGIMiddleware],
) -> None:
    module = types.ModuleType("uwsgi")
    module.opt = {}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", module)
    logged(hello, middlewares)
    said = [r for r in caplog.records if "enable-threads" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR"


def test_config_object_repr_and_stats_keys(middlewares: list[KafkaLogWSGIMiddleware]) -> None:
    settings = KafkaLogConfig(bootstrap_servers=("k:9092",), topic="t")
    middleware = KafkaLogWSGIMiddleware(hello, settings)
    middlewares.append(middleware)
    assert middleware.config is settings
    assert repr(middleware).startswith("KafkaLogWSGIMiddleware(KafkaLogConfig(")
    assert middleware.stats()["enqueued"] == 0 and middleware.producers() == []


EXIT_SCRIPT = """
import time
from kafka_log_middleware import KafkaLogConfig, KafkaLogWSGIMiddleware
config = KafkaLogConfig(bootstrap_servers=("127.0.0.1:{port}",), topic="t", shutdown_timeout=500)
app = KafkaLogWSGIMiddleware(lambda environ, start_response: [], config)
app._background.started()  # as the first request does
time.sleep(0.3)  # the producer is trying to connect
print("serving")
"""


def test_interpreter_exit_with_nothing_pending_closes_the_background_cleanly() -> None:
    """atexit with an empty buffer (everything delivered, or nothing logged yet): the
    publisher and the connecting producer are closed, not left for asyncio to complain."""
    script = EXIT_SCRIPT.format(port=free_port())
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "serving"
    assert "Task was destroyed" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
