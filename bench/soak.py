"""Soak and outage runs: steady load on a logged app under uvicorn while the broker is
restarted now and then (or is down for a while), sampling the app's memory, file
descriptors, threads and sockets and its ``stats()`` every second; at the end every
request is looked for in Kafka.

    python -m bench.soak --duration 600 --restart-every 120 --rate 500   # the soak
    python -m bench.soak --duration 300 --outage 180 --rate 500          # a 3-minute outage
    python -m bench.soak --outage 180 --no-spool                         # the same, no spool
    python -m bench.soak --duration 300 --steady --rate 500              # the baseline
    python -m bench.soak --duration 60 --restart-every 20 --rate 200     # CI's variant

``delivery="at_least_once"``, with the disk spool unless ``--no-spool``. Writes
``bench/results/soak.json`` (or ``--out``) and, with ``--plot PNG``, a chart of RSS,
pending and delivered entries per second over time; with ``--metrics-plot PNG``, the
app's Prometheus metrics scraped every second drawn Grafana-style (``metrics_plot.py``).
``--env NAME=VALUE`` sets more of the app's config (e.g. a small spool to see drops):

    python -m bench.soak --duration 60 --outage 20 --rate 300 --metrics-plot docs/metrics.png \
        --env KAFKA_LOG_SPOOL_MAX_BYTES=2000000
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import environment, median, read_json, write_json
from devtools.kafka_broker import KafkaBroker, ensure_jars, free_port

_CONCURRENCY = 64
"""Most load requests in flight at once (the load is paced; this only bounds a stall)."""


@dataclass
class Sample:
    """One second of the run, as seen from outside the app and by its ``stats()``."""

    t: float
    rss_kib: int
    fds: int
    threads: int
    sockets: int
    stats: dict[str, int]
    metrics: dict[str, float] = field(default_factory=dict)
    """The app's ``/metrics``, flattened (with ``--metrics-plot``)."""


@dataclass
class Report:
    """What a run shows (see ``leaks`` and ``lost``)."""

    settings: dict[str, Any]
    served: int = 0
    failed_requests: int = 0
    lost: int = 0
    """Load requests served whose entry never reached Kafka."""
    duplicates: int = 0
    out_of_order: int = 0
    """First copies out of their worker's build order: how many would have to move (the
    entries outside the longest in-order run)."""
    order_breaks: list[tuple[int, int]] = field(default_factory=list)
    """The first few places where an entry follows one its worker built later:
    (``soak_seq`` before, ``soak_seq`` after)."""
    final_stats: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p99_ms_broker_up: float = 0.0
    """p99 of the requests that started while the broker was up."""
    p99_ms_broker_down: float | None = None
    """p99 of the requests that started while the broker was down."""
    samples: list[Sample] = field(default_factory=list)
    broker_down: list[tuple[float, float]] = field(default_factory=list)
    """Seconds into the run when the broker was down: (from, to)."""

    def balanced(self) -> bool:
        """``enqueued == delivered + dropped + uncertain + skipped_should_log + pending``
        at the end."""
        s = self.final_stats
        settled = s["delivered"] + s["dropped"] + s["uncertain"] + s.get("skipped_should_log", 0)
        return bool(s) and s["enqueued"] == settled + s["pending"]

    def leaks(self) -> dict[str, tuple[float, float]]:
        """Each resource's (start, end) reading, medians of the second and last tenth of
        the run: flat when nothing leaks."""
        samples = self.samples
        tenth = max(len(samples) // 10, 1)
        early, late = samples[tenth : 2 * tenth] or samples[:1], samples[-tenth:]
        return {
            name: (
                median([float(getattr(s, name)) for s in early]),
                median([float(getattr(s, name)) for s in late]),
            )
            for name in ("rss_kib", "fds", "threads", "sockets")
        }


def _proc(pid: int, app_port: int) -> tuple[int, int, int, int]:
    """RSS (KiB), open descriptors, threads, and sockets of process ``pid``, leaving out
    the HTTP connections of the load (how many the client keeps open is its business)."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    http = _inodes_on_port(pid, app_port)
    fds = sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target in http:
                continue
            fds += 1
            sockets += target.startswith("socket:")
    return rss, fds, len(os.listdir(f"/proc/{pid}/task")), sockets


def _inodes_on_port(pid: int, port: int) -> set[str]:
    """``socket:[inode]`` of the process's TCP connections accepted on ``port``."""
    found = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.rsplit(":", 1)[1], 16) == port and int(remote.rsplit(":", 1)[1], 16):
                    found.add(f"socket:[{fields[9]}]")
    return found


@contextlib.contextmanager
def _app(env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``bench/soak_app.py`` under uvicorn on a free port, answering; SIGTERM at the end."""
    from tests.servers import server_process  # the test suite's, as the consumer below

    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "bench.soak_app:make_app", "--factory",
        "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with server_process(command, port, env) as (base, process):
        deadline = time.monotonic() + 30
        while True:  # the port is open; the app may still be starting up
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/stats").status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the soak app did not start")
            time.sleep(0.1)
        yield base, process


class _Connection:
    """One keep-alive HTTP/1.1 connection to the app: a paced load of 500 requests a
    second must cost the benchmark little (httpx took a core and set the latencies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, target: str) -> int:
        """The status of ``GET target`` (the body is read and discarded)."""
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(head.split(b" ", 2)[1])


async def _load(
    base: str, rate: float, duration: float, report: Report, t0: float
) -> list[tuple[float, float]]:
    """Paced requests ``/n?n=<i>`` for ``duration`` s; (when it started, seconds after
    ``t0``; its latency) of each one served."""
    latencies: list[tuple[float, float]] = []
    host, port = base.removeprefix("http://").rsplit(":", 1)
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    opened: list[_Connection] = []
    for _ in range(_CONCURRENCY):
        connection = _Connection(*await asyncio.open_connection(host, int(port)))
        opened.append(connection)
        idle.put_nowait(connection)

    async def one(n: int) -> None:
        connection = await idle.get()
        start = time.monotonic()
        try:
            status = await asyncio.wait_for(connection.get(f"/n?n={n}"), 30)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            report.failed_requests += 1
            connection.writer.close()
            connection = _Connection(*await asyncio.open_connection(host, int(port)))
            opened.append(connection)
        else:
            if status == 200:
                latencies.append((start - t0, time.monotonic() - start))
                report.served += 1
            else:
                report.failed_requests += 1
        idle.put_nowait(connection)

    tasks = []
    n = 0
    while (now := time.monotonic()) - t0 < duration:
        due = t0 + n / rate
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.create_task(one(n)))
        n += 1
    await asyncio.gather(*tasks)
    for connection in opened:
        connection.writer.close()
    return latencies


def run(
    duration: float,
    rate: float,
    restart_every: float | None = None,
    outage: float | None = None,
    spool: bool = True,
    workdir: Path | None = None,
    extra_env: dict[str, str] | None = None,
    metrics: bool = False,
) -> Report:
    """One run (see the module docstring); the broker is started and stopped here."""
    ensure_jars()
    workdir = Path(tempfile.mkdtemp(prefix="soak-")) if workdir is None else workdir
    report = Report(
        {
            "duration": duration,
            "rate": rate,
            "restart_every": restart_every,
            "outage": outage,
            "spool": spool,
        }
    )
    broker = KafkaBroker(workdir=workdir / "broker")
    broker.start()
    topic = f"soak-{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_LOG_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "KAFKA_LOG_TOPIC": topic,
        "KAFKA_LOG_DELIVERY": "at_least_once",
        "KAFKA_LOG_SHUTDOWN_TIMEOUT": "10000",
    }
    if spool:
        env |= {"KAFKA_LOG_OVERFLOW": "spool", "KAFKA_LOG_SPOOL_DIR": str(workdir / "spool")}
    env |= extra_env or {}
    try:
        with _app(env) as (base, process):
            latencies = _drive(
                base, process.pid, broker, duration, rate, restart_every, outage, report, metrics
            )
            _settle(base, report)
            report.final_stats = _stats(base)
        _read_back(broker.bootstrap_servers, topic, report)
    finally:
        broker.close()
    report.p50_ms = _percentile([lat for _, lat in latencies], 0.5)
    report.p99_ms = _percentile([lat for _, lat in latencies], 0.99)
    down = [lat for at, lat in latencies if any(a <= at < b for a, b in report.broker_down)]
    up = [lat for at, lat in latencies if not any(a <= at < b for a, b in report.broker_down)]
    report.p99_ms_broker_up = _percentile(up, 0.99)
    if down:
        report.p99_ms_broker_down = _percentile(down, 0.99)
    return report


def _percentile(latencies: list[float], q: float) -> float:
    """The ``q`` quantile of ``latencies`` (s), in ms."""
    ordered = sorted(latencies)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000 if ordered else 0.0


def _drive(
    base: str,
    pid: int,
    broker: KafkaBroker,
    duration: float,
    rate: float,
    restart_every: float | None,
    outage: float | None,
    report: Report,
    metrics: bool = False,
) -> list[tuple[float, float]]:
    """The load, the sampler and the broker's restarts (or outage), together."""
    t0 = time.monotonic()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            with contextlib.suppress(OSError, httpx.HTTPError, ValueError):
                readings = _proc(pid, int(base.rsplit(":", 1)[1]))
                sample = Sample(time.monotonic() - t0, *readings, _stats(base))
                if metrics:
                    from bench.metrics_plot import scrape

                    sample.metrics = scrape(base)
                report.samples.append(sample)

    def broker_trouble() -> None:
        if outage is not None:
            if done.wait(min(duration / 5, 20.0)):
                return
            down = time.monotonic() - t0
            broker.stop()
            done.wait(outage)
            broker.start()
            report.broker_down.append((down, time.monotonic() - t0))
            return
        while restart_every is not None and not done.wait(restart_every):
            down = time.monotonic() - t0
            broker.kill()
            broker.start()
            report.broker_down.append((down, time.monotonic() - t0))

    threads = [threading.Thread(target=sample), threading.Thread(target=broker_trouble)]
    for thread in threads:
        thread.start()
    try:
        latencies = asyncio.run(_load(base, rate, duration, report, t0))
    finally:
        done.set()
        for thread in threads:
            thread.join()
    if not broker.is_running:
        broker.start()
    return latencies


def _stats(base: str) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(base + "/stats", timeout=10).json()
    return stats


def _settle(base: str, report: Report, timeout: float = 300.0) -> None:
    """Wait until the app has nothing pending (delivered, or counted)."""
    deadline = time.monotonic() + timeout
    while _stats(base)["pending"] > 1 and time.monotonic() < deadline:  # 1: this /stats
        time.sleep(0.5)
    time.sleep(1.5)  # the flush timer (1 s) lets the last /stats requests' entries go too


def _read_back(bootstrap: str, topic: str, report: Report) -> None:
    """Look for every served load request's entry in Kafka."""
    from tests.kafka_helpers import consume  # the test suite's consumer, no group

    expected = report.served - report.final_stats.get("dropped", 0)  # those counted lost
    records = asyncio.run(consume(bootstrap, topic, expected, timeout=120, settle=2))
    numbers = []
    sequences: dict[int, list[int]] = {}  # worker pid -> its soak_seq in Kafka's order
    seen: set[tuple[int, int]] = set()
    for record in records:
        entry = orjson.loads(record.value) if record.value else {}
        query = entry.get("request", {}).get("querystring", {})
        if "n" in query:
            numbers.append(int(query["n"]))
        worker, seq = entry.get("soak_seq", (0, -1))
        if (worker, seq) not in seen:  # a duplicate's first copy was in order or not
            seen.add((worker, seq))
            sequences.setdefault(worker, []).append(seq)
    unique = set(numbers)
    report.duplicates = len(numbers) - len(unique)
    report.lost = max(expected - len(unique), 0)
    for sequence in sequences.values():
        report.out_of_order += len(sequence) - _longest_increasing(sequence)
        breaks = [(a, b) for a, b in itertools.pairwise(sequence) if b < a]
        report.order_breaks += breaks[: 10 - len(report.order_breaks)]


def _longest_increasing(values: list[int]) -> int:
    """The length of the longest strictly increasing subsequence of ``values``."""
    tails: list[int] = []
    for value in values:
        at = bisect.bisect_left(tails, value)
        tails[at : at + 1] = [value]
    return len(tails)


def _report_of(data: dict[str, Any]) -> Report:
    """A report read back from its JSON (for ``--replot``)."""
    fields = {name: data[name] for name in Report.__dataclass_fields__ if name in data}
    fields["samples"] = [Sample(**sample) for sample in data["samples"]]
    fields["broker_down"] = [tuple(span) for span in data["broker_down"]]
    return Report(**fields)


def plot(report: Report, out: Path) -> None:
    """RSS, pending and delivered per second over the run, the broker's downtimes shaded."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    samples = report.samples
    t = [s.t for s in samples]
    delivered = [s.stats["delivered"] for s in samples]
    rate = [0.0] + [
        (b - a) / max(tb - ta, 1e-9)
        for a, b, ta, tb in zip(delivered, delivered[1:], t, t[1:], strict=False)
    ]
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(9, 7))
    series = [
        ([s.rss_kib / 1024 for s in samples], "RSS (MiB)"),
        ([s.stats["pending"] for s in samples], "pending entries"),
        (rate, "delivered per second"),
    ]
    for axis, (values, label) in zip(axes, series, strict=True):
        axis.plot(t, values)
        axis.set_ylabel(label)
        for down, up in report.broker_down:
            axis.axvspan(down, up, color="red", alpha=0.15)
    axes[-1].set_xlabel("seconds (red: broker down)")
    fig.suptitle("bench/soak.py: " + ", ".join(f"{k}={v}" for k, v in report.settings.items()))
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def plot_metrics(report: Report, out: Path) -> None:
    """The run's scraped metrics, Grafana-style (see ``metrics_plot.py``)."""
    from bench.metrics_plot import plot as plot_scrapes

    samples = [s for s in report.samples if s.metrics]
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items() if v is not None)
    plot_scrapes(
        [s.t for s in samples],
        [s.metrics for s in samples],
        report.broker_down,
        "bench/soak.py --metrics-plot: " + settings,
        out,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--restart-every", type=float, default=None, help="broker restarts, s")
    parser.add_argument("--outage", type=float, default=None, help="one broker outage, s")
    parser.add_argument("--steady", action="store_true", help="the broker up throughout")
    parser.add_argument("--no-spool", action="store_true", help="at_least_once without spool")
    parser.add_argument("--out", default="soak.json", help="result file in bench/results/")
    parser.add_argument("--plot", type=Path, default=None, help="write a chart here (PNG)")
    parser.add_argument("--replot", action="store_true", help="only chart --out's results")
    parser.add_argument(
        "--metrics-plot", type=Path, default=None, help="chart the app's metrics here (PNG)"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the app (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.replot:
        report = _report_of(read_json(args.out))
        if args.metrics_plot is not None:
            plot_metrics(report, args.metrics_plot)
        plot(report, args.plot or Path("soak.png"))
        return 0
    if args.steady:
        args.restart_every = args.outage = None
    elif args.restart_every is None and args.outage is None:
        args.restart_every = 120.0
    extra_env = dict(item.split("=", 1) for item in args.env)
    report = run(
        args.duration,
        args.rate,
        args.restart_every,
        args.outage,
        not args.no_spool,
        extra_env=extra_env,
        metrics=args.metrics_plot is not None,
    )
    data = asdict(report) | {"leaks": report.leaks(), "balanced": report.balanced()}
    data["environment"] = environment()
    path = write_json(args.out, data)
    if args.plot is not None:
        plot(report, args.plot)
    if args.metrics_plot is not None:
        plot_metrics(report, args.metrics_plot)
    print(
        f"soak: {report.served} served ({report.failed_requests} failed), {report.lost} lost, "
        f"{report.duplicates} duplicates, {report.out_of_order} out of order; "
        f"p50 {report.p50_ms:.2f} ms, p99 {report.p99_ms:.2f} ms (broker up "
        f"{report.p99_ms_broker_up:.2f}, down {report.p99_ms_broker_down}); "
        f"balanced {report.balanced()}"
    )
    for name, (start, end) in report.leaks().items():
        print(f"  {name:8} {start:10.0f} -> {end:10.0f}")
    if report.order_breaks:
        print(f"  order breaks (seq before, after): {report.order_breaks}")
    print(f"  final stats {report.final_stats}\n  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
