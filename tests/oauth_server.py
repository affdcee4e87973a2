"""Unsecured OAUTHBEARER tokens (``alg: none``, what Kafka's test validator accepts) and a
local OAuth 2.0 token endpoint issuing them by the client-credentials grant."""

from __future__ import annotations

import base64
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson


def unsecured_token(subject: str, lifetime: float = 3600.0) -> str:
    """An unsecured JWS: Kafka's ``OAuthBearerUnsecuredValidatorCallbackHandler`` takes it."""
    now = time.time()
    claims = {"sub": subject, "iat": int(now), "exp": int(now + lifetime), "scope": "logs"}
    header = _b64(orjson.dumps({"alg": "none"}))
    return f"{header}.{_b64(orjson.dumps(claims))}."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@contextmanager
def token_endpoint(
    client_id: str, client_secret: str
) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """``(url, grants)``: a token endpoint on loopback; ``grants`` records each request's
    form. Wrong client credentials get HTTP 401."""
    grants: list[dict[str, str]] = []
    # RFC 6749 §2.3.1: each credential form-encoded, then HTTP basic authentication.
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(client_secret)}"
    expected = "Basic " + base64.b64encode(pair.encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            grants.append(form)
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            body = orjson.dumps(
                {
                    "access_token": unsecured_token(client_id),
                    "token_type": "bearer",
                    "expires_in": 3600,
                }
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/oauth2/token", grants
    finally:
        server.shutdown()
        server.server_close()


def logger_token() -> str:
    """A token provider: an unsecured token for the principal ``logger``."""
    return unsecured_token("logger")
