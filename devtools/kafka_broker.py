"""Real Apache Kafka brokers for tests: one combined KRaft node, or a cluster of them.

Stdlib only. The broker runs from the jars that Maven resolves from ``devtools/kafka/pom.xml``
(see :func:`ensure_jars`); it needs ``java`` (17+) and, for the first download, ``mvn``.

Library use::

    from devtools.kafka_broker import KafkaBroker, ensure_jars

    ensure_jars()
    with KafkaBroker() as broker:
        print(broker.bootstrap_servers)  # "127.0.0.1:PORT"
    with KafkaCluster(size=3) as cluster:  # three JVMs, one controller quorum
        print(cluster.bootstrap_servers)  # "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"

Command line (runs until SIGINT/SIGTERM)::

    python devtools/kafka_broker.py [--port N] [--workdir DIR] [--nodes N]
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, NamedTuple

__all__ = [
    "DEFAULT_LIBS_DIR",
    "SECURED_LISTENERS",
    "BrokerInfo",
    "ClusterMetadata",
    "KafkaBroker",
    "KafkaCluster",
    "PartitionInfo",
    "SecuredListeners",
    "ensure_jars",
    "free_port",
    "metadata",
    "metadata_brokers",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_DEVTOOLS_DIR = Path(__file__).resolve().parent / "kafka"
POM_PATH = KAFKA_DEVTOOLS_DIR / "pom.xml"
LOG4J_CONFIG = KAFKA_DEVTOOLS_DIR / "log4j2.properties"
DEFAULT_LIBS_DIR = REPO_ROOT / ".kafka" / "libs"
STAMP_NAME = ".pom-sha256"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

LOOPBACK = "127.0.0.1"

# Measured on 2 vCPUs / OpenJDK 17 (Kafka 4.3.1): SerialGC + C1-only JIT start the node in
# about 2 s instead of about 3 s with Kafka's default G1 flags; throughput is irrelevant here.
JVM_FAST_START_FLAGS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)


# --------------------------------------------------------------------------------------------
# jars
# --------------------------------------------------------------------------------------------


def _pom_digest(pom: Path) -> str:
    h = hashlib.sha256()
    h.update(pom.read_bytes())
    return h.hexdigest()


def _has_jars(libs: Path) -> bool:
    return any(libs.glob("kafka_2.13-*.jar"))


def _find_executable(name: str, env_home: str | None = None) -> str:
    if env_home:
        home = os.environ.get(env_home)
        if home:
            candidate = Path(home) / "bin" / name
            if candidate.is_file():
                return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name!r} not found on PATH (needed for the Kafka test broker)")
    return found


def ensure_jars(dest: Path | None = None) -> Path:
    """Download the broker's runtime jars into ``dest`` (default ``<repo>/.kafka/libs``).

    Idempotent: a stamp file in ``dest`` holds the sha256 of ``devtools/kafka/pom.xml``; when it
    matches, nothing runs. Otherwise Maven copies the jars into a fresh sibling directory which
    then replaces ``dest`` (so a version bump never leaves old jars on the ``libs/*`` classpath).
    Maven caches artifacts in ``~/.m2/repository``, so a re-download needs no network; set
    ``KAFKA_JARS_OFFLINE=1`` to pass ``-o`` (offline) to Maven.
    """
    libs = (dest if dest is not None else DEFAULT_LIBS_DIR).resolve()
    digest = _pom_digest(POM_PATH)
    stamp = libs / STAMP_NAME
    libs.parent.mkdir(parents=True, exist_ok=True)
    lock_path = libs.parent / f".{libs.name}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # serialise concurrent test processes
        try:
            if stamp.is_file() and stamp.read_text().strip() == digest and _has_jars(libs):
                return libs
            tmp = Path(tempfile.mkdtemp(prefix=f".{libs.name}-", dir=libs.parent))
            try:
                cmd = [
                    _find_executable("mvn", "MAVEN_HOME"),
                    "-B",
                    "-q",
                    *(["-o"] if os.environ.get("KAFKA_JARS_OFFLINE") == "1" else []),
                    "-f",
                    str(POM_PATH),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={tmp}",
                ]
                try:
                    proc = subprocess.run(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                        timeout=1200,
                        check=False,
                    )
                except subprocess.TimeoutExpired as exc:
                    raise RuntimeError(f"fetching Kafka jars timed out: {' '.join(cmd)}") from exc
                if proc.returncode != 0 or not _has_jars(tmp):
                    output = _ANSI_ESCAPE.sub("", proc.stdout)[-8000:]
                    raise RuntimeError(
                        f"fetching Kafka jars failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                        f"{output}"
                    )
                (tmp / STAMP_NAME).write_text(digest + "\n")
                if libs.exists():
                    shutil.rmtree(libs)
                tmp.rename(libs)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            return libs
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# ports and the raw Metadata probe
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (not reserved: bind it soon).

    Chosen outside the kernel's ephemeral range, so that neither outgoing connections nor a
    client that keeps reconnecting to a not-yet-started broker (TCP self-connect) can take it.
    """
    return _free_ports(1)[0]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux default


def _candidate_ports() -> range | None:
    low, high = _ephemeral_range()
    if low - 1 >= 20000 + 1000:
        return range(20000, low)
    if high + 1 <= 65535 - 1000:
        return range(high + 1, 65536)
    return None


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _free_ports(n: int) -> list[int]:
    candidates = _candidate_ports()
    chosen: list[int] = []
    if candidates is not None:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.choice(candidates)
            if port not in chosen and _bindable(port):
                chosen.append(port)
                if len(chosen) == n:
                    return chosen
    # Fallback: let the kernel pick (ephemeral range); bind all at once so they differ.
    socks: list[socket.socket] = []
    try:
        while len(chosen) < n:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
            if port not in chosen:
                chosen.append(port)
        return chosen
    finally:
        for sock in socks:
            sock.close()


class BrokerInfo(NamedTuple):
    node_id: int
    host: str
    port: int


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


class PartitionInfo(NamedTuple):
    topic: str
    partition: int
    leader: int  # -1 while the partition has no leader
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class ClusterMetadata(NamedTuple):
    brokers: list[BrokerInfo]
    controller_id: int
    partitions: list[PartitionInfo]


def metadata(
    host: str, port: int, timeout: float = 2.0, *, all_topics: bool = False
) -> ClusterMetadata:
    """Send a raw MetadataRequest v1 and return the brokers (and partitions) it lists.

    Request: int32 size | int16 api_key=3 | int16 api_version=1 | int32 correlation_id |
    int16-length client_id | int32 topic_count (0: no topics; -1: all, never auto-creating one).
    Response v1: int32 correlation_id | [int32 node_id, str host, int32 port, nullable str rack]
    | int32 controller_id | [int16 error, str name, bool internal, [int16 error, int32 partition,
    int32 leader, [int32 replica], [int32 isr]]].
    """
    correlation_id = 0x4B42
    client_id = b"kafka-broker-probe"
    body = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", -1 if all_topics else 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        data = _recv_exact(sock, size)
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return int(value)

    def take_str() -> str | None:
        nonlocal pos
        length = take(">h")
        if length < 0:
            return None
        raw = data[pos : pos + length]
        pos += length
        return raw.decode("utf-8")

    def take_ids() -> tuple[int, ...]:
        return tuple(take(">i") for _ in range(take(">i")))

    if take(">i") != correlation_id:
        raise ConnectionError("unexpected correlation id in Metadata response")
    brokers: list[BrokerInfo] = []
    for _ in range(take(">i")):
        node_id = take(">i")
        bhost = take_str() or ""
        bport = take(">i")
        take_str()  # rack
        brokers.append(BrokerInfo(node_id, bhost, bport))
    controller_id = take(">i")
    partitions: list[PartitionInfo] = []
    for _ in range(take(">i")):
        topic_error = take(">h")
        topic = take_str() or ""
        take(">b")  # is_internal
        for _ in range(take(">i")):
            take(">h")  # partition error: the leader (-1) and replica lists tell all we need
            index = take(">i")
            leader = take(">i")
            info = PartitionInfo(topic, index, leader, take_ids(), take_ids())
            if topic_error == 0:
                partitions.append(info)
    return ClusterMetadata(brokers, controller_id, partitions)


def metadata_brokers(host: str, port: int, timeout: float = 2.0) -> list[BrokerInfo]:
    """The brokers a raw MetadataRequest v1 (no topics) lists: see :func:`metadata`."""
    return metadata(host, port, timeout).brokers


# --------------------------------------------------------------------------------------------
# secured listeners
# --------------------------------------------------------------------------------------------

SECURED_LISTENERS = {
    "SASL_PLAINTEXT": "SASL_PLAINTEXT",
    "SSL": "SSL",
    "MTLS": "SSL",
    "SASL_SSL": "SASL_SSL",
    "SSL_WRONG_HOST": "SSL",
    "SSL_EXPIRED": "SSL",
}
"""Listener name → its security protocol. ``MTLS`` is SSL that requires a client
certificate; ``SSL_WRONG_HOST`` presents a certificate for another host name,
``SSL_EXPIRED`` one that has expired."""
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "OAUTHBEARER": "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule",
}


@dataclass(frozen=True)
class SecuredListeners:
    """The client listeners a broker adds beside PLAINTEXT (``SECURED_LISTENERS``).

    ``keystore``: the broker's PEM (PKCS#8 key, then its chain); ``truststore``: the CA
    the MTLS listener checks client certificates against; ``wrong_host_keystore`` and
    ``expired_keystore``: the same for a certificate naming another host
    (``SSL_WRONG_HOST``) and for one that has expired (``SSL_EXPIRED``); ``users``: name → password,
    for PLAIN and for SCRAM-SHA-256/512 (created when the storage is formatted).
    OAUTHBEARER uses Kafka's unsecured-JWS validator (tokens with ``alg: none``): for
    tests only.
    """

    keystore: Path
    truststore: Path
    wrong_host_keystore: Path
    expired_keystore: Path
    users: Mapping[str, str] = field(default_factory=dict)

    def properties(self) -> dict[str, str]:
        """Broker properties configuring these listeners (their ports are the broker's)."""
        props: dict[str, str] = {}
        for name, protocol in SECURED_LISTENERS.items():
            prefix = f"listener.name.{name.lower()}."
            if protocol.startswith("SASL"):
                props[prefix + "sasl.enabled.mechanisms"] = ",".join(_SASL_MECHANISMS)
                for mechanism in _SASL_MECHANISMS:
                    props[f"{prefix}{mechanism.lower()}.sasl.jaas.config"] = self._jaas(mechanism)
            if protocol.endswith("SSL"):
                props[prefix + "ssl.keystore.type"] = "PEM"
                props[prefix + "ssl.keystore.location"] = str(self._keystore(name))
            if name == "MTLS":
                props[prefix + "ssl.client.auth"] = "required"
                props[prefix + "ssl.truststore.type"] = "PEM"
                props[prefix + "ssl.truststore.location"] = str(self.truststore)
        return props

    def _keystore(self, listener: str) -> Path:
        if listener == "SSL_WRONG_HOST":
            return self.wrong_host_keystore
        if listener == "SSL_EXPIRED":
            return self.expired_keystore
        return self.keystore

    def _jaas(self, mechanism: str) -> str:
        options = ""
        if mechanism == "PLAIN":
            options = "".join(f' user_{user}="{password}"' for user, password in self.users.items())
        elif mechanism == "OAUTHBEARER":
            options = ' unsecuredLoginStringClaim_sub="broker"'
        return f"{_LOGIN_MODULES[mechanism]} required{options};"

    def scram_arguments(self) -> list[str]:
        """``StorageTool format`` arguments creating the SCRAM users."""
        arguments = []
        for user, password in self.users.items():
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                arguments += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
        return arguments


# --------------------------------------------------------------------------------------------
# the broker
# --------------------------------------------------------------------------------------------


def _random_cluster_id() -> str:
    # Same shape as `kafka-storage.sh random-uuid`: 22 chars URL-safe base64, no leading "-".
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


_LIVE_BROKERS: weakref.WeakSet[KafkaBroker] = weakref.WeakSet()


@atexit.register
def _kill_leftover_brokers() -> None:
    # Safety net: a crashed/aborted test run must not leave broker JVMs behind.
    for broker in list(_LIVE_BROKERS):
        with contextlib.suppress(Exception):
            broker.kill()


def _workdir(workdir: Path | None, prefix: str) -> tuple[Path, bool]:
    """``workdir`` made if missing, or a fresh temporary one; and whether it is ours to
    delete at ``close()``."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix=prefix)), True
    path = Path(workdir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path, False


class KafkaBroker:
    """One combined KRaft node (``process.roles=broker,controller``) on 127.0.0.1.

    The ports are known right after construction and stay fixed, so ``start()`` after
    ``stop()``/``kill()`` comes back on the same port with the same data (the storage is
    formatted only once). The one exception: if an auto-picked port is taken by someone else
    before the very first start, ``start()`` retries with new ports.

    Alone, the node is its own quorum (formatted ``--standalone``). As a member of a
    :class:`KafkaCluster` it gets ``voters`` (node id → controller port of every node, a static
    ``controller.quorum.voters``) and the cluster's shared ``cluster_id``.

    ``client_host`` adds a ``CLIENT`` listener (plaintext, a port of its own) bound to that
    address and advertised as ``client_advertised_host`` (default: the address), e.g. a host
    name that only the clients under test resolve: :attr:`client_bootstrap_servers`. Both may
    be changed while the node is stopped; the next ``start()`` uses them. The PLAINTEXT
    listener (inter-broker, the start-up probe, tests' consumers) stays on 127.0.0.1.
    """

    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        heap: str = "512m",
        *,
        controller_port: int | None = None,
        libs: Path | None = None,
        extra_properties: dict[str, str] | None = None,
        secured: SecuredListeners | None = None,
        node_id: int = 1,
        voters: Mapping[int, int] | None = None,
        cluster_id: str | None = None,
        client_host: str | None = None,
        client_advertised_host: str | None = None,
    ) -> None:
        if client_advertised_host is not None and client_host is None:
            raise ValueError("client_advertised_host needs a client_host to bind")
        if voters is not None:
            if node_id not in voters:
                raise ValueError(f"node {node_id} is not one of the voters {dict(voters)}")
            if controller_port is not None and controller_port != voters[node_id]:
                raise ValueError("controller_port differs from this node's entry in voters")
            controller_port = voters[node_id]
        extra = 1 if client_host is not None else 0
        ports = [p for p in _free_ports(3 + len(SECURED_LISTENERS) + extra) if p != port]
        self._port = port if port is not None else ports[0]
        self._controller_port = controller_port if controller_port is not None else ports[1]
        if self._port == self._controller_port:
            raise ValueError("broker and controller ports must differ")
        # Auto-picked ports may be re-picked by a failed first start() only while nobody has
        # read them (a test may point an app at `bootstrap_servers` before start()).
        self._ports_picked = port is None and controller_port is None
        self._ports_observed = False
        self._workdir, self._owns_workdir = _workdir(workdir, "kafka-broker-")
        self._heap = heap
        self._libs = libs
        self._extra_properties = dict(extra_properties or {})
        self._secured = secured
        self._node_id = node_id
        self._voters = dict(voters) if voters is not None else None
        self._cluster_id = cluster_id
        self._secured_ports = (
            dict(zip(SECURED_LISTENERS, ports[2:], strict=False)) if secured is not None else {}
        )
        self._client_host = client_host
        self._client_advertised_host = client_advertised_host
        self._client_port = ports[2 + len(SECURED_LISTENERS)] if extra else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0

    # -- properties ---------------------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self._node_id

    @property
    def port(self) -> int:
        self._ports_observed = True
        return self._port

    @property
    def controller_port(self) -> int:
        self._ports_observed = True
        return self._controller_port

    @property
    def bootstrap_servers(self) -> str:
        self._ports_observed = True
        return f"{LOOPBACK}:{self._port}"

    def listener(self, name: str) -> str:
        """``host:port`` of the secured listener ``name`` (one of ``SECURED_LISTENERS``)."""
        if name not in self._secured_ports:
            raise KeyError(f"this broker has no {name} listener (give it secured=...)")
        return f"{LOOPBACK}:{self._secured_ports[name]}"

    @property
    def client_bootstrap_servers(self) -> str:
        """``advertised-host:port`` of the ``CLIENT`` listener (given ``client_host``)."""
        if self._client_port is None:
            raise KeyError("this broker has no CLIENT listener (give it client_host=...)")
        self._ports_observed = True
        return f"{self.client_advertised_host}:{self._client_port}"

    @property
    def client_host(self) -> str | None:
        """The address the ``CLIENT`` listener binds (``None``: there is none)."""
        return self._client_host

    @client_host.setter
    def client_host(self, host: str) -> None:
        self._require_client_listener_change()
        self._client_host = host

    @property
    def client_advertised_host(self) -> str | None:
        """The host the ``CLIENT`` listener advertises (default: ``client_host``)."""
        return self._client_advertised_host or self._client_host

    @client_advertised_host.setter
    def client_advertised_host(self, host: str) -> None:
        self._require_client_listener_change()
        self._client_advertised_host = host

    def _require_client_listener_change(self) -> None:
        if self._client_port is None:
            raise KeyError("this broker has no CLIENT listener (give it client_host=...)")
        if self.is_running:
            raise RuntimeError("the CLIENT listener changes while the broker is stopped only")

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def data_dir(self) -> Path:
        return self._workdir / "data"

    @property
    def log_path(self) -> Path:
        return self._workdir / "broker.log"

    @property
    def properties_path(self) -> Path:
        return self._workdir / "server.properties"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return (
            f"<KafkaBroker node {self._node_id} {LOOPBACK}:{self._port} {state} "
            f"workdir={self._workdir}>"
        )

    # -- configuration ------------------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        client_listeners = [f"PLAINTEXT://{LOOPBACK}:{self._port}"] + [
            f"{name}://{LOOPBACK}:{port}" for name, port in self._secured_ports.items()
        ]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"] + [
            f"{name}:{SECURED_LISTENERS[name]}" for name in self._secured_ports
        ]
        advertised = list(client_listeners)
        if self._client_port is not None:
            # Only what connects to this listener is told the name: the broker itself
            # (inter-broker: PLAINTEXT) and the tests' own clients keep 127.0.0.1.
            client_listeners.append(f"CLIENT://{self._client_host}:{self._client_port}")
            advertised.append(f"CLIENT://{self.client_advertised_host}:{self._client_port}")
            protocols.append("CLIENT:PLAINTEXT")
        if self._voters is None:
            quorum = {"controller.quorum.bootstrap.servers": f"{LOOPBACK}:{self._controller_port}"}
        else:
            voters = [f"{node}@{LOOPBACK}:{port}" for node, port in sorted(self._voters.items())]
            quorum = {"controller.quorum.voters": ",".join(voters)}
        # Internal and auto-created topics get every node as a replica; acks=all then needs
        # two of them (one on a single node).
        replicas = str(len(self._voters) if self._voters is not None else 1)
        min_isr = str(min(2, int(replicas)))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self._node_id),
            **quorum,
            "listeners": ",".join(
                [*client_listeners, f"CONTROLLER://{LOOPBACK}:{self._controller_port}"]
            ),
            "advertised.listeners": ",".join(advertised),
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            # A clean stop() deregisters the broker (controlled shutdown), so a restart is
            # ready in ~2 s. With controlled.shutdown.enable=false every restart waited a full
            # broker.session.timeout.ms (default 9 s) for the old registration to expire. The
            # controller runs in the same JVM, so controlled shutdown cannot hang on a missing
            # quorum here unless most of a cluster is down (and stop() falls back to SIGKILL).
            "controlled.shutdown.enable": "true",
            # Shortens the wait after kill() (crash) + start(), and in a cluster the time until
            # a killed node is fenced and its partitions get new leaders: ~4 s instead of ~9 s.
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "4000",
            # Exit instead of hanging forever if the node cannot come up.
            "server.max.startup.time.ms": "60000",
        }
        if self._secured is not None:
            props.update(self._secured.properties())
        props.update(self._extra_properties)
        return props

    def _write_properties(self) -> None:
        lines = [f"{k}={v}" for k, v in self.server_properties().items()]
        self.properties_path.write_text("\n".join(lines) + "\n")

    def _java_base(self, heap: str) -> list[str]:
        libs = self._libs if self._libs is not None else DEFAULT_LIBS_DIR
        return [
            _find_executable("java", "JAVA_HOME"),
            f"-Xmx{heap}",
            *JVM_FAST_START_FLAGS,
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self._workdir}",
            "-cp",
            f"{libs.resolve()}/*",  # expanded by the JVM, not the shell
        ]

    def _is_formatted(self) -> bool:
        return (self.data_dir / "meta.properties").is_file()

    def _format(self) -> None:
        cmd = [
            *self._java_base("256m"),
            "kafka.tools.StorageTool",
            "format",
            # A static quorum (controller.quorum.voters) must be formatted without quorum flags.
            *(["--standalone"] if self._voters is None else []),
            f"--cluster-id={self._cluster_id or _random_cluster_id()}",
            "--config",
            str(self.properties_path),
            *(self._secured.scram_arguments() if self._secured is not None else []),
        ]
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
        with self.log_path.open("ab") as log:
            log.write(b"=== kafka.tools.StorageTool format ===\n" + proc.stdout)
        if proc.returncode != 0:
            out = proc.stdout.decode(errors="replace")[-4000:]
            raise RuntimeError(f"formatting Kafka storage failed (exit {proc.returncode}):\n{out}")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Format (first time only), launch the JVM and wait until it serves Metadata."""
        if self.is_running:
            return
        self._reap()
        ensure_jars(self._libs)
        may_repick = self._ports_picked and not self._ports_observed and not self._is_formatted()
        attempts = 3 if may_repick else 1
        for attempt in range(attempts):
            try:
                self._start_once(timeout)
                return
            except _PortInUseError:
                if attempt + 1 >= attempts:
                    raise
                # Someone grabbed a pre-picked port before the JVM bound it: new ports, and
                # a fresh format (the voter endpoint is recorded in the metadata log).
                shutil.rmtree(self.data_dir, ignore_errors=True)
                extra = 1 if self._client_port is not None else 0
                fresh = _free_ports(2 + len(self._secured_ports) + extra)
                self._port, self._controller_port = fresh[:2]
                self._secured_ports = dict(
                    zip(self._secured_ports, fresh[2 : len(fresh) - extra], strict=True)
                )
                if extra:
                    self._client_port = fresh[-1]

    def _start_once(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._write_properties()
        if not self._is_formatted():
            self._format()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = self.log_path.open("ab")
        self._log_file.write(f"=== kafka.Kafka start on port {self._port} ===\n".encode())
        self._log_file.flush()
        cmd = [
            *self._java_base(self._heap),
            "kafka.Kafka",
            str(self.properties_path),
        ]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self._workdir,
            start_new_session=True,
        )
        _LIVE_BROKERS.add(self)
        try:
            self._wait_ready(deadline, brokers=1)
        except BaseException:
            self.kill()
            raise

    def wait_ready(self, brokers: int = 1, timeout: float = 90.0) -> None:
        """Wait until this running node serves Metadata listing itself and ``brokers`` in all."""
        self._wait_ready(time.monotonic() + timeout, brokers)

    def _wait_ready(self, deadline: float, brokers: int) -> None:
        if self._proc is None:
            raise RuntimeError(f"{self!r} is not started")
        timeout = max(0.0, deadline - time.monotonic())
        last_error = "broker port not open yet"
        while True:
            rc = self._proc.poll()
            if rc is not None:
                tail = self.log_tail()
                reason = _first_error_line(tail)
                msg = (
                    f"Kafka broker exited with code {rc} during start-up "
                    f"({LOOPBACK}:{self._port}, controller port {self._controller_port}): "
                    f"{reason}\n--- tail of {self.log_path} ---\n{tail}"
                )
                if "Address already in use" in tail:
                    raise _PortInUseError(msg)
                raise RuntimeError(msg)
            try:
                listed = metadata_brokers(LOOPBACK, self._port, timeout=2.0)
                if any(b.port == self._port for b in listed) and len(listed) >= brokers:
                    return
                last_error = f"Metadata lists brokers {listed}, waiting for {brokers}"
            except OSError as exc:
                last_error = repr(exc)
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"Kafka broker not ready within {timeout:.1f}s on {LOOPBACK}:{self._port} "
                    f"(last probe: {last_error})\n--- tail of {self.log_path} ---\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, max_bytes: int = 6000) -> str:
        """The end of the broker log written since the last ``start()``."""
        try:
            with self.log_path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, size - max_bytes))
                return f.read().decode(errors="replace")
        except OSError:
            return "<no broker log>"

    def stop(self, timeout: float = 30.0) -> None:
        """Clean shutdown (SIGTERM), SIGKILL after ``timeout`` seconds. Keeps the data."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the broker right now (crash simulation). Keeps the data."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
        if self._proc is None:
            _LIVE_BROKERS.discard(self)
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def close(self) -> None:
        """``stop()``, then delete the workdir if this object created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _PortInUseError(RuntimeError):
    pass


def _first_error_line(log: str) -> str:
    lines = log.splitlines()
    for needle in ("failed to bind", "Address already in use", " ERROR ", "Exception"):
        for line in lines:
            if needle in line:
                return line.strip()
    return "no error line in the log"


# --------------------------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------------------------


class KafkaCluster:
    """``size`` combined KRaft nodes on 127.0.0.1, one JVM each, forming one quorum of ``size``
    voters; internal and auto-created topics get ``size`` replicas and a min ISR of 2 (or 1).

    Each node is a :class:`KafkaBroker` (``nodes``, ``node(id)``): a test may ``kill()``,
    ``stop()`` and ``start()`` one, and it comes back on the same port with the same data.
    """

    def __init__(
        self,
        size: int = 3,
        workdir: Path | None = None,
        heap: str = "384m",
        *,
        libs: Path | None = None,
        extra_properties: dict[str, str] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self._workdir, self._owns_workdir = _workdir(workdir, "kafka-cluster-")
        self._size = size
        self._heap = heap
        self._libs = libs
        self._extra_properties = dict(extra_properties or {})
        self._cluster_id = _random_cluster_id()
        self._ports_observed = False
        self._nodes = self._make_nodes()

    def _make_nodes(self) -> tuple[KafkaBroker, ...]:
        ports = _free_ports(2 * self._size)
        voters = {i + 1: ports[self._size + i] for i in range(self._size)}
        return tuple(
            KafkaBroker(
                port=ports[i],
                workdir=self._workdir / f"node{node_id}",
                heap=self._heap,
                libs=self._libs,
                extra_properties=self._extra_properties,
                node_id=node_id,
                voters=voters,
                cluster_id=self._cluster_id,
            )
            for i, node_id in enumerate(sorted(voters))
        )

    @property
    def nodes(self) -> tuple[KafkaBroker, ...]:
        self._ports_observed = True
        return self._nodes

    def node(self, node_id: int) -> KafkaBroker:
        """The node whose ``node.id`` is ``node_id`` (ids are 1 to ``size``)."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no node {node_id} in this cluster")

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    @property
    def workdir(self) -> Path:
        return self._workdir

    def __repr__(self) -> str:
        return f"<KafkaCluster {list(self._nodes)!r}>"

    def start(self, timeout: float = 120.0) -> None:
        """Start every stopped node at once (no node is ready before a quorum is up), then wait
        until each serves Metadata listing all brokers."""
        deadline = time.monotonic() + timeout
        may_repick = not self._ports_observed and not any(
            node.is_running or node._is_formatted() for node in self._nodes
        )
        for attempt in range(3 if may_repick else 1):
            try:
                self._each(lambda node: node.start(timeout), self._nodes)  # running: no-op
                break
            except _PortInUseError:
                if not may_repick or attempt == 2:
                    raise
                # A pre-picked port was taken before the first start: every node's voter list
                # names every controller port, so all nodes get new ports and a fresh format.
                self._each(KafkaBroker.kill, self._nodes)
                for node in self._nodes:
                    shutil.rmtree(node.workdir, ignore_errors=True)
                self._nodes = self._make_nodes()
        for node in self._nodes:
            node.wait_ready(brokers=self._size, timeout=max(1.0, deadline - time.monotonic()))

    def partition(self, topic: str, partition: int = 0) -> PartitionInfo | None:
        """The partition's state if every running node that answers reports the same, else
        ``None`` (leader ``-1`` while it has none, or the topic does not exist)."""
        seen: set[PartitionInfo] = set()
        for node in self._nodes:
            if not node.is_running:
                continue
            try:
                found = metadata(LOOPBACK, node.port, all_topics=True).partitions
            except OSError:
                continue  # e.g. restarting: not serving yet
            matches = [p for p in found if p.topic == topic and p.partition == partition]
            seen.add(matches[0] if matches else PartitionInfo(topic, partition, -1, (), ()))
        return seen.pop() if len(seen) == 1 else None

    def leader_of(self, topic: str, partition: int = 0, timeout: float = 30.0) -> int:
        """Node id of the partition's leader, once it has one that all running nodes agree on.

        Right after a leader is killed, the answer is still the dead node until the controller
        fences it (``broker.session.timeout.ms``): poll for a change.
        """
        deadline = time.monotonic() + timeout
        while True:
            info = self.partition(topic, partition)
            if info is not None and info.leader >= 0:
                return info.leader
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{topic}-{partition} has no agreed leader after {timeout}s")
            time.sleep(0.1)

    def close(self) -> None:
        """SIGKILL every node, then delete the workdir if this object created it.

        Not a clean stop: the data is thrown away, and stopping a whole quorum cleanly only
        makes the last nodes wait (about 5 s) for the peers that already left.
        """
        self._each(KafkaBroker.kill, self._nodes)
        if self._owns_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    @staticmethod
    def _each(action: Callable[[KafkaBroker], None], nodes: Sequence[KafkaBroker]) -> None:
        """Run ``action`` on all nodes in parallel threads; re-raise the first error (a port
        clash first, so that ``start()`` can retry it)."""
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            futures = [pool.submit(action, node) for node in nodes]
        errors = [exc for exc in (f.exception() for f in futures) if exc is not None]
        port_errors = [exc for exc in errors if isinstance(exc, _PortInUseError)]
        if errors:
            raise (port_errors or errors)[0]

    def __enter__(self) -> KafkaCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    event = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda _signum, _frame: event.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield event
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a Kafka broker (or cluster) for tests.")
    parser.add_argument("--port", type=int, default=None, help="broker port (default: free)")
    parser.add_argument("--workdir", type=Path, default=None, help="data/log dir (default: tmp)")
    parser.add_argument("--heap", default=None, help="JVM -Xmx per node (default: 512m/384m)")
    parser.add_argument("--nodes", type=int, default=1, help="cluster size (default: 1)")
    args = parser.parse_args(argv)
    if args.nodes > 1 and args.port is not None:
        parser.error("--port applies to a single node only")

    ensure_jars()
    server: KafkaBroker | KafkaCluster
    if args.nodes > 1:
        server = KafkaCluster(args.nodes, workdir=args.workdir, heap=args.heap or "384m")
    else:
        server = KafkaBroker(port=args.port, workdir=args.workdir, heap=args.heap or "512m")
    with _stop_signals() as stop_requested:
        try:
            started = time.monotonic()
            server.start()
            nodes = server.nodes if isinstance(server, KafkaCluster) else (server,)
            print(f"KAFKA_BOOTSTRAP_SERVERS={server.bootstrap_servers}", flush=True)
            logs = ", ".join(str(node.log_path) for node in nodes)
            print(
                f"# started in {time.monotonic() - started:.1f}s, log: {logs}",
                file=sys.stderr,
                flush=True,
            )
            while not stop_requested.wait(0.5):
                for node in nodes:
                    if not node.is_running:
                        print(f"broker exited:\n{node.log_tail()}", file=sys.stderr, flush=True)
                        return 1
            return 0
        finally:
            server.close()


if __name__ == "__main__":
    sys.exit(main())
