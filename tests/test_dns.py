"""Host names are resolved again on reconnect, on both backends: the app knows the broker
by a name only, the broker moves to another address under that name while the app runs,
and every entry (those sent while it was gone too) arrives.

The app runs under uvicorn in a subprocess that resolves names from a hosts file of the
test's through nss_wrapper (``LD_PRELOAD=libnss_wrapper.so``, ``NSS_WRAPPER_HOSTS``), for
Python's resolver (aiokafka) and librdkafka's alike. Skipped with a reason where
libnss_wrapper.so is missing (Debian's ``libnss-wrapper``), except under ``CI=true``,
where it fails.
"""

from __future__ import annotations

import asyncio
import glob
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import orjson
import pytest

from tests.kafka_helpers import BrokerFactory, consume, create_topic, unique_topic
from tests.servers import free_port, server_process
from tests.test_spooling import uvicorn_app

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

NAME = "broker.kafka.test"
"""The broker's name: only the hosts file below knows it (``.test`` is never in DNS)."""
FIRST, SECOND = "127.0.0.2", "127.0.0.3"
"""The broker's address before and after the move (Linux routes 127.0.0.0/8 to lo)."""
LIBRARIES = ("/usr/lib/*/libnss_wrapper.so", "/usr/lib64/libnss_wrapper.so")
"""Where Debian's ``libnss-wrapper`` (and other distributions') put the library."""
PROBE = """
import socket, sys
resolve = lambda: socket.getaddrinfo(sys.argv[1], 9, type=socket.SOCK_STREAM)[0][4][0]
print(resolve(), flush=True)
sys.stdin.readline()  # the test replaces the hosts file meanwhile
print(resolve())
"""
"""Resolves the name twice in one process, the hosts file replaced in between."""


@dataclass(frozen=True)
class Hosts:
    """A hosts file that the processes started with :meth:`env` resolve names from."""

    path: Path
    library: Path

    def point(self, address: str) -> None:
        """Make ``NAME`` resolve to ``address``: a new file (a new inode), which
        nss_wrapper reads again at its next lookup (in place, a change within the same
        second of mtime may go unseen)."""
        staged = self.path.with_name(self.path.name + ".new")
        staged.write_text(f"{address} {NAME}\n")
        os.replace(staged, self.path)

    def env(self) -> dict[str, str]:
        """The variables that make a process resolve names from this file."""
        preload = " ".join(filter(None, [str(self.library), os.environ.get("LD_PRELOAD")]))
        return {"LD_PRELOAD": preload, "NSS_WRAPPER_HOSTS": str(self.path)}


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the DNS test: {reason}")
    pytest.skip(reason)


@pytest.fixture
def hosts(tmp_path: Path) -> Hosts:
    """nss_wrapper's hosts file with ``NAME`` at ``FIRST``, once a process under it has
    resolved the name from it, and again, to the new address, after :meth:`Hosts.point`."""
    found = sorted(path for pattern in LIBRARIES for path in glob.glob(pattern))
    if not found:
        unavailable(f"no {' or '.join(LIBRARIES)} (Debian: apt-get install libnss-wrapper)")
    hosts = Hosts(tmp_path / "hosts", Path(found[0]))
    hosts.point(FIRST)
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE, NAME],
        env={**os.environ, **hosts.env()},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert probe.stdout is not None
    before = probe.stdout.readline().strip()
    hosts.point(SECOND)
    after, errors = probe.communicate("\n", timeout=30)
    assert [before, after.strip()] == [FIRST, SECOND], f"nss_wrapper does not work: {errors}"
    hosts.point(FIRST)
    return hosts


def send(base: str, numbers: range) -> None:
    """One request ``/?n=<number>`` per number."""
    with httpx.Client(base_url=base) as client:
        for n in numbers:
            assert client.get("/", params={"n": n}).status_code == 200


def test_the_broker_moved_to_another_address_under_its_name_gets_every_entry(
    hosts: Hosts, kafka_broker_factory: BrokerFactory, backend: str
) -> None:
    """The broker stops, ``NAME`` moves to ``SECOND`` and the broker starts there: the app
    finds it only by resolving the name again, and sends what it got meanwhile too."""
    broker = kafka_broker_factory(client_host=FIRST, client_advertised_host=NAME)
    broker.start()
    topic = unique_topic(f"dns-{backend}")
    asyncio.run(create_topic(broker.bootstrap_servers, topic))  # on 127.0.0.1: not the name
    env = {
        **hosts.env(),
        "KAFKA_LOG_BOOTSTRAP_SERVERS": broker.client_bootstrap_servers,  # the name only
        "KAFKA_LOG_TOPIC": topic,
        "KAFKA_LOG_PRODUCER_BACKEND": backend,
        "KAFKA_LOG_DELIVERY": "at_least_once",
    }
    client_port = int(broker.client_bootstrap_servers.rpartition(":")[2])
    port = free_port()
    base, command = uvicorn_app(port)
    with server_process(command, port, env):
        send(base, range(0, 50))
        assert len(asyncio.run(consume(broker.bootstrap_servers, topic, 50))) >= 50
        broker.stop()
        send(base, range(50, 100))  # the name still gives the old address
        hosts.point(SECOND)
        broker.client_host = SECOND
        send(base, range(100, 150))  # no broker at either address
        broker.start()
        with pytest.raises(ConnectionRefusedError):  # only the name leads to it now
            socket.create_connection((FIRST, client_port), timeout=5).close()
        send(base, range(150, 200))
        records = asyncio.run(consume(broker.bootstrap_servers, topic, 200, timeout=60, settle=1))
    got = [int(orjson.loads(r.value)["request"]["querystring"]["n"]) for r in records if r.value]
    print(f"dns ({backend}): {len(got)} records for 200 entries")
    assert sorted(set(got)) == list(range(200))  # none lost, before, during and after the move
