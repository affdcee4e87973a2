"""The TLS probe against a TLS server of Python's own (no broker): each refusal named as
the warning will name it, and nothing for a server that accepts or cannot be reached."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from devtools.kafka_tls import Certificates, make_certificates
from kafka_log_middleware.tls_probe import tls_refusal

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("probe-tls"))


@asynccontextmanager
async def tls_server(keystore: Path, client_ca: Path | None = None) -> AsyncIterator[str]:
    """A TLS server on loopback presenting ``keystore``; with ``client_ca``, it requires a
    client certificate signed by it. Yields its ``host:port``.

    Blocking sockets on a thread: a refused handshake then sends its alert, as a broker
    does (asyncio's TLS server closes without it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(keystore)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                try:
                    with context.wrap_socket(connection, server_side=True) as tls:
                        tls.recv(1)
                except (ssl.SSLError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


def client(
    ca: Path, cert: tuple[Path, Path] | None = None, check_hostname: bool = True
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = check_hostname
    if cert is not None:
        context.load_cert_chain(cert[0], cert[1])
    return context


Case = tuple[Callable[[Certificates], Path], Callable[[Certificates], ssl.SSLContext], str]
CASES: dict[str, Case] = {
    "untrusted": (
        lambda c: c.broker_keystore,
        lambda c: client(c.other_ca),
        "TLS: the broker's certificate is not accepted (self-signed certificate in "
        "certificate chain)",
    ),
    "expired": (
        lambda c: c.expired_keystore,
        lambda c: client(c.ca),
        "TLS: the broker's certificate is not accepted (certificate has expired)",
    ),
    "wrong-host": (
        lambda c: c.wrong_host_keystore,
        lambda c: client(c.ca),
        "TLS: the broker's certificate is not accepted (IP address mismatch, certificate "
        "is not valid for '127.0.0.1'.)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_certificate_the_client_does_not_accept_is_named(
    certs: Certificates, case: str
) -> None:
    keystore, context, expected = CASES[case]
    async with tls_server(keystore(certs)) as server:
        assert await tls_refusal(server, context(certs), 5, client_cert=False) == expected


async def test_a_missing_client_certificate_is_named_with_the_fix(certs: Certificates) -> None:
    async with tls_server(certs.broker_keystore, client_ca=certs.ca) as server:
        refusal = await tls_refusal(server, client(certs.ca), 5, client_cert=False)
    assert refusal is not None
    assert refusal.startswith("TLS: the broker requires a client certificate (")
    assert refusal.endswith("give security's certfile and keyfile")


async def test_a_client_certificate_the_server_does_not_trust_is_named(
    certs: Certificates, tmp_path: Path
) -> None:
    """The server trusts only the other CA: our (valid) client certificate is refused."""
    async with tls_server(certs.broker_keystore, client_ca=certs.other_ca) as server:
        context = client(certs.ca, (certs.client_cert, certs.client_key))
        refusal = await tls_refusal(server, context, 5, client_cert=True)
    assert refusal is not None
    assert refusal.startswith("TLS: the broker does not accept our client certificate ("), refusal


@pytest.mark.parametrize("client_ca", [False, True], ids=["server-auth", "mtls"])
async def test_a_server_that_accepts_gives_no_refusal(certs: Certificates, client_ca: bool) -> None:
    async with tls_server(certs.broker_keystore, certs.ca if client_ca else None) as server:
        context = client(certs.ca, (certs.client_cert, certs.client_key))
        assert await tls_refusal(server, context, 5, client_cert=True) is None


async def test_a_server_that_cannot_be_reached_is_no_tls_refusal(certs: Certificates) -> None:
    async with tls_server(certs.broker_keystore) as server:
        pass  # closed: nothing listens there any more
    assert await tls_refusal(server, client(certs.ca), 5, client_cert=False) is None


async def test_a_server_that_is_not_tls_is_named_as_a_failed_handshake(
    certs: Certificates,
) -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        refusal = await tls_refusal(f"127.0.0.1:{port}", client(certs.ca), 5, client_cert=False)
    finally:
        server.close()
    assert refusal is not None and refusal.startswith("TLS handshake failed ("), refusal
