"""Why a broker refuses our TLS, found by one TLS connection of our own.

The Kafka clients lose the cause: aiokafka reports a closed connection when the broker
requires a client certificate it did not get, and librdkafka says "certificate verify
failed" whether the broker's certificate is untrusted, expired or for another host. A
failed connection attempt with TLS configured is followed by this probe (in the
background, at the connection backoff's pace), which names the cause as Python's ``ssl``
reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .security import TlsSettings

ALERT_WAIT = 0.5
"""How long to wait after the handshake for a refusal: a TLS 1.3 broker checks the
client's certificate (or its absence) after the handshake has completed, on our side."""
TIMEOUT = 2.0
"""Longest a probe may take, in seconds (less when the config's ``timeout`` is shorter)."""
_CLIENT_CERT_REFUSED = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    }
)
"""The alerts of a broker that wants a client certificate we did not give, or refuses ours."""


async def tls_refusal(
    server: str, context: ssl.SSLContext, timeout: float, client_cert: bool | None
) -> str | None:
    """Why ``server`` (``host:port``) refuses a TLS connection made with ``context``; None
    when it accepts one, or cannot be reached at all (that is no TLS refusal).
    ``client_cert``: whether ``context`` holds one (None: a user's context, unknown)."""
    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, int(port), ssl=context, server_hostname=host
            )
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ALERT_WAIT):
                    await reader.read(1)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    except ssl.SSLCertVerificationError as exc:
        return f"TLS: the broker's certificate is not accepted ({exc.verify_message})"
    except ssl.SSLError as exc:
        return _refusal(exc, client_cert)
    except (OSError, TimeoutError, EOFError):
        return None
    return None


async def settings_refusal(server: str, tls: TlsSettings | None, timeout: float) -> str | None:
    """Why ``server`` refuses a client with these TLS settings (a probe of at most
    ``TIMEOUT``, or ``timeout`` when shorter); None without TLS, or when it accepts."""
    if tls is None:
        return None
    client_cert = None if tls.user_context else tls.certfile is not None
    return await tls_refusal(server, tls.ssl_context, min(TIMEOUT, timeout), client_cert)


def _refusal(exc: ssl.SSLError, client_cert: bool | None) -> str:
    reason = exc.reason or type(exc).__name__
    if reason in _CLIENT_CERT_REFUSED:
        if client_cert is False:
            return (
                f"TLS: the broker requires a client certificate ({reason}): give "
                f"security's certfile and keyfile"
            )
        if client_cert:
            return f"TLS: the broker does not accept our client certificate ({reason})"
        return f"TLS: the broker refuses our client certificate, or its absence ({reason})"
    return f"TLS handshake failed ({reason})"
