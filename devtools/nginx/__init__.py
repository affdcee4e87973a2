"""A real nginx, set up like Kong's proxy, that logs Kong's basic serializer request fields.

Stdlib only. It needs nginx with OpenResty's lua module and lua-cjson (Debian/Ubuntu:
``apt-get install nginx-light libnginx-mod-http-lua lua-cjson``; an OpenResty ``nginx``
works too). Each :class:`KongNginx` runs its own single-process nginx on a free loopback
port, with its config, logs and temp files in a fresh prefix directory. In the log
phase, ``basic_log.lua`` computes the request fields of Kong's basic log serializer from
nginx's own variables and APIs and appends them to ``entries.jsonl``.

Library use::

    from devtools.nginx import KongNginx

    with KongNginx() as nginx:
        ...  # send a request to 127.0.0.1:nginx.port from a socket bound to client_port
        line = nginx.entry(client_port)  # {"request": {...}, "status": 200, ...}

Command line (runs until SIGINT/SIGTERM, printing each line)::

    python -m devtools.nginx [--port N]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["KongNginx", "NginxUnavailable", "find_nginx", "raw_strings"]

HERE = Path(__file__).resolve().parent
CONFIG_TEMPLATE = HERE / "nginx.conf"
LOOPBACK = "127.0.0.1"
# Debian's dynamic modules: the lua module needs the NDK loaded first.
DEBIAN_MODULES = Path("/usr/lib/nginx/modules")
MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")


class NginxUnavailable(RuntimeError):
    """No usable nginx with the lua module on this machine; the message says what is missing."""


def find_nginx() -> tuple[str, list[Path]]:
    """The nginx binary (``$NGINX_BIN``, else ``nginx`` on PATH or in /usr/sbin) and the
    dynamic modules it must load for lua (none when it has lua built in, as OpenResty)."""
    binary = os.environ.get("NGINX_BIN") or shutil.which("nginx")
    if binary is None and os.access("/usr/sbin/nginx", os.X_OK):
        binary = "/usr/sbin/nginx"
    if binary is None or not os.access(binary, os.X_OK):
        raise NginxUnavailable(
            f"nginx not found{f' at {binary}' if binary else ''} (Debian: apt-get install "
            "nginx-light libnginx-mod-http-lua lua-cjson; or set NGINX_BIN)"
        )
    built = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False).stderr
    if "lua-nginx-module" in built or "ngx_lua" in built:
        return binary, []
    modules = [DEBIAN_MODULES / name for name in MODULES]
    if not modules[-1].exists():
        raise NginxUnavailable(
            f"{binary} has no lua module and {modules[-1]} is missing "
            "(Debian: apt-get install libnginx-mod-http-lua lua-cjson)"
        )
    return binary, [module for module in modules if module.exists()]


def raw_strings(value: Any) -> Any:
    """A JSON value read as latin-1 text with every string turned back into its raw bytes.

    lua-cjson writes the bytes of Lua strings as they are (UTF-8 or not), so reading the
    file as latin-1 keeps one character per byte.
    """
    if isinstance(value, str):
        return value.encode("latin-1")
    if isinstance(value, list):
        return [raw_strings(item) for item in value]
    if isinstance(value, dict):
        return {key.encode("latin-1"): raw_strings(item) for key, item in value.items()}
    return value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class KongNginx:
    """One nginx process with its own prefix directory, serving 200 "ok" on ``port``."""

    def __init__(self, workdir: Path | None = None, *, port: int | None = None) -> None:
        self._binary, self._modules = find_nginx()
        self._fixed_port = port
        self._owns_workdir = workdir is None
        self.prefix = Path(tempfile.mkdtemp(prefix="kong-nginx-")) if workdir is None else workdir
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.entries_path = self.prefix / "entries.jsonl"
        self.error_log = self.prefix / "error.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        """The nginx.conf of this instance."""
        load = "".join(f"load_module {module};\n" for module in self._modules)
        values = {
            "@LOAD_MODULES@": load,
            "@PREFIX@": str(self.prefix),
            "@LUA_DIR@": str(HERE),
            "@PORT@": str(self.port),
            "@ENTRIES@": str(self.entries_path),
        }
        text = CONFIG_TEMPLATE.read_text()
        for name, value in values.items():
            text = text.replace(name, value)
        return text

    def start(self, timeout: float = 30.0) -> None:
        """Start nginx (on a free port unless given one; 3 tries if it is taken meanwhile)."""
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            self.port = self._fixed_port or _free_port()
            conf = self.prefix / "nginx.conf"
            conf.write_text(self.config())
            self.entries_path.touch()
            cmd = [self._binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.error_log)]
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            if self._wait_ready(time.monotonic() + timeout):
                return
            assert self._proc.stderr is not None
            error = self._proc.stderr.read().decode(errors="replace") + self._log_tail()
            self._proc = None
            if "module 'cjson' not found" in error:
                raise NginxUnavailable("lua-cjson is missing (Debian: apt-get install lua-cjson)")
            if "Address already in use" not in error or attempt == attempts - 1:
                raise RuntimeError(f"nginx did not start: {error.strip()}")

    def _wait_ready(self, deadline: float) -> bool:
        assert self._proc is not None
        while self._proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), 1):
                return True
            if time.monotonic() > deadline:
                self._proc.kill()
                self._proc.wait()
                return False
            time.sleep(0.02)
        return False

    def _log_tail(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def lines(self) -> list[dict[bytes, Any]]:
        """Every line logged so far, its strings as raw bytes (see :func:`raw_strings`)."""
        text = self.entries_path.read_bytes().decode("latin-1")
        # Complete lines only: a long line reaches the file in several writes, and nginx
        # may be amid them (a loaded machine showed it).
        text = text[: text.rfind("\n") + 1]
        return [raw_strings(json.loads(line)) for line in text.splitlines() if line]

    def entry(self, client_port: int, timeout: float = 10.0) -> dict[bytes, Any]:
        """The line of the request sent from ``client_port``, waiting for nginx to write it."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines() if line[b"remote_port"] == b"%d" % client_port]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx logged no request from port {client_port}")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop nginx (SIGQUIT: graceful), SIGKILL after ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def close(self) -> None:
        """``stop()``, then delete the prefix directory if this object created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> KongNginx:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
