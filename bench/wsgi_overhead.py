"""The WSGI door's overhead: the Flask hello-world under gunicorn sync workers + wrk,
bare and with the ``KafkaLog`` extension, side by side in one run.

Each run is a fresh ``gunicorn -w 1 -k sync`` (``bench/flask_apps.py``) on a free
loopback port: a warm-up, then ``wrk --latency``; variants interleaved ``--rounds``
times. The server's CPU is the arbiter's and its worker's (all threads: the WSGI door's
background publisher included), sampled around the measured run and again after the
last entries were published. Logging CPU = CPU per request minus the same round's bare
run, then the median over rounds.

    python -m bench.wsgi_overhead --rounds 5 --duration 10   # writes bench/results/wsgi.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS,
    closed_port,
    cpu_seconds,
    environment,
    kafka_bootstrap,
    machine_busy_seconds,
    median,
    write_json,
)
from bench.overhead import WRK_SCRIPT, drained, get_stats, run_wrk, serving

TOPIC = "bench-wsgi"
SETTLE = 1.5
"""Seconds after a run before the last CPU sample: the flush timer (1 s) drains."""


@dataclass(frozen=True)
class Variant:
    """One benchmarked configuration of ``bench.flask_apps``."""

    name: str
    label: str
    app: str
    env: dict[str, str] = field(default_factory=dict)
    broker_up: bool = True


def variants(bootstrap: str, down: str) -> list[Variant]:
    """The variants in run order (``bare`` first: each round's reference)."""
    return [
        Variant("bare", "bare Flask app", "bare"),
        Variant(
            "kafka_log",
            "KafkaLog (WSGI door, aiokafka)",
            "middleware",
            {"KAFKA_LOG_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_LOG_TOPIC": TOPIC},
        ),
        Variant(
            "door",
            "KafkaLogWSGIMiddleware alone (aiokafka, no route)",
            "door",
            {"KAFKA_LOG_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_LOG_TOPIC": TOPIC},
        ),
        Variant(
            "kafka_log_down",
            "KafkaLog (WSGI door, aiokafka), broker down",
            "middleware",
            {"KAFKA_LOG_BOOTSTRAP_SERVERS": down, "KAFKA_LOG_TOPIC": TOPIC},
            broker_up=False,
        ),
    ]


@dataclass
class Server:
    """A running gunicorn arbiter and its port."""

    proc: subprocess.Popen[bytes]
    port: int

    def cpu_seconds(self) -> float:
        """CPU of the arbiter and its workers (all threads), in seconds."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return cpu_seconds(pid) + sum(cpu_seconds(int(child)) for child in children)


@contextlib.contextmanager
def server(variant: Variant, log_path: Path) -> Iterator[Server]:
    """Run ``gunicorn -w 1 -k sync bench.flask_apps:app`` of ``variant`` until the block ends."""
    from devtools.kafka_broker import free_port

    port = free_port()
    env = os.environ | variant.env | {"BENCH_VARIANT": variant.app}
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "1",
        "-k",
        "sync",
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "bench.flask_apps:app",
    ]
    with serving(cmd, env, port, variant.name, log_path, signal.SIGTERM, 30) as proc:
        yield Server(proc, port)


def measure(
    variant: Variant, round_no: int, args: argparse.Namespace, script: Path, log: Path
) -> dict[str, Any]:
    """One warm-up + measured wrk run of ``variant`` in a fresh gunicorn."""
    with server(variant, log) as srv:
        run_wrk(srv.port, args.warmup, args, script)
        time.sleep(SETTLE)
        logged = variant.app != "bare"
        before = get_stats(srv.port) if logged else None
        cpu0, busy0, t0 = srv.cpu_seconds(), machine_busy_seconds(), time.monotonic()
        result = run_wrk(srv.port, args.duration, args, script)
        wall, busy = time.monotonic() - t0, machine_busy_seconds() - busy0
        cpu_during = srv.cpu_seconds() - cpu0
        time.sleep(SETTLE)
        cpu = srv.cpu_seconds() - cpu0
        requests = max(result["requests"], 1)
        other = busy - cpu_during - result["wrk_cpu_s"]
        result.update(
            variant=variant.name,
            round=round_no,
            cpu_s=cpu,
            cpu_us_per_req=cpu / requests * 1e6,
            other_cpu_pct=max(other, 0.0) / (wall * (os.cpu_count() or 1)) * 100,
        )
        if before is not None:
            after = drained(srv.port) if variant.broker_up else get_stats(srv.port)
            result["stats"] = after
            result["run_enqueued"] = after["enqueued"] - before["enqueued"]
            settled = after["delivered"] + after["dropped"] + after["uncertain"]
            settled += after["skipped_should_log"]
            result["accounting_ok"] = after["enqueued"] == settled + after["pending"]
            if variant.broker_up:
                result["all_delivered"] = after["pending"] == 0 and after["dropped"] == 0
    return result


def summary(runs: list[dict[str, Any]], order: list[Variant]) -> list[dict[str, Any]]:
    """Per variant: medians over rounds, logging CPU and ratio against the round's bare."""
    bare = {r["round"]: r for r in runs if r["variant"] == "bare"}
    rows = []
    for variant in order:
        mine = [r for r in runs if r["variant"] == variant.name and r["round"] in bare]
        if not mine:
            continue
        rows.append(
            {
                "variant": variant.name,
                "label": variant.label,
                "req_s": median([r["req_s"] for r in mine]),
                "ratio": median([r["req_s"] / bare[r["round"]]["req_s"] for r in mine]),
                "p99_ms": median([r["p99_ms"] for r in mine]),
                "cpu_us_per_req": median([r["cpu_us_per_req"] for r in mine]),
                "logging_cpu_us": median(
                    [r["cpu_us_per_req"] - bare[r["round"]]["cpu_us_per_req"] for r in mine]
                ),
                "errors": sum(r["socket_errors"] + r["non_2xx"] for r in mine),
                "accounting_ok": all(r.get("accounting_ok", True) for r in mine),
                "all_delivered": all(r.get("all_delivered", True) for r in mine),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    lines = [
        "| variant | req/s | ratio to bare | p99 ms | CPU µs/req | logging CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['req_s']:,.0f} | {row['ratio']:.3f} | {row['p99_ms']:.2f} "
            f"| {row['cpu_us_per_req']:.1f} | {row['logging_cpu_us']:+.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every variant ``--rounds`` times, interleaved; print the table, write wsgi.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant (default 5)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=4, help="wrk -c (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds and --duration must be positive")
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / "wsgi-servers.log"
    log.write_bytes(b"")
    with kafka_bootstrap() as (bootstrap, broker, _), tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "headers.lua"
        script.write_text(WRK_SCRIPT)
        order = variants(bootstrap, f"127.0.0.1:{closed_port()}")
        runs = []
        for round_no in range(1, args.rounds + 1):
            print(f"wsgi: round {round_no}/{args.rounds}", flush=True)
            for variant in order:
                run = measure(variant, round_no, args, script, log)
                runs.append(run)
                print(
                    f"  {variant.name:16} {run['req_s']:8.0f} req/s  p99 {run['p99_ms']:6.2f} ms"
                    f"  cpu {run['cpu_us_per_req']:6.1f} µs/req"
                    f"  (others {run['other_cpu_pct']:.0f}%)",
                    flush=True,
                )
    rows = summary(runs, order)
    write_json(
        "wsgi.json",
        {
            "environment": environment(),
            "broker": broker,
            "args": vars(args),
            "runs": runs,
            "summary": rows,
        },
    )
    print()
    print(table(rows))
    for row in rows:
        if not (row["accounting_ok"] and row["all_delivered"]) or row["errors"]:
            print(
                f"wsgi: {row['variant']}: accounting, delivery or errors not clean", file=sys.stderr
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
