"""Request-path overhead: the hello-world app under uvicorn + wrk, logged several ways.

Each variant runs in its own uvicorn process (1 worker, uvloop, httptools) on a free
loopback port: a warm-up, then ``wrk -t1 -c32 -d<duration>s --latency``. Variants are
interleaved, ``--rounds`` times. Per run: req/s, p50/p99, server CPU (utime+stime of
all threads, sampled around the measured run), peak RSS (VmHWM) and, for the middleware,
its ``stats()``. A final soak keeps the broker down for ``--soak`` seconds and watches RSS.

    python -m bench.overhead --rounds 3 --duration 10   # writes bench/results/overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS,
    ROOT,
    closed_port,
    cpu_seconds,
    environment,
    git_commit,
    kafka_bootstrap,
    machine_busy_seconds,
    median,
    probe_confluent,
    proc_status_kib,
    servers,
    write_json,
)
from kafka_log_middleware import KafkaLogConfig

TOPIC = "bench-overhead"
SETTLE = 1.5
"""Seconds between warm-up/run and a CPU sample: lets the flush timer (1 s) drain."""
WRK_SCRIPT = """\
wrk.method = "GET"
wrk.headers["Accept"] = "application/json"
wrk.headers["User-Agent"] = "wrk/4.1.0 (kafka-log-middleware bench)"
wrk.headers["X-Request-Source"] = "bench"
wrk.headers["Authorization"] = "Bearer bench-token-0123456789"
"""
PATH = "/hello/world?a=1&b=2"
FILL_LIMIT = 60.0
"""Longest a broker-down warm-up runs to fill the buffer, in seconds."""
SOAK_SETTLE = 10.0
"""Seconds after the buffer filled from which the soak's RSS must stay flat."""


@dataclass(frozen=True)
class Variant:
    """One benchmarked configuration: an app of ``bench.apps`` plus its environment."""

    name: str
    label: str
    app: str
    env: dict[str, str] = field(default_factory=dict)
    broker_up: bool = True
    stats: bool = False


def variants(bootstrap: str, down: str, confluent: bool) -> list[Variant]:
    """The variants in run order (``bare`` first: each round's reference)."""
    up_env = {"KAFKA_LOG_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_LOG_TOPIC": TOPIC}
    down_env = {"KAFKA_LOG_BOOTSTRAP_SERVERS": down, "KAFKA_LOG_TOPIC": TOPIC}
    conf = {"KAFKA_LOG_PRODUCER_BACKEND": "confluent"}
    out = [
        Variant("bare", "bare app", "bare"),
        Variant("passthrough", "empty pure ASGI middleware", "passthrough"),
        Variant("middleware", "KafkaLogMiddleware (aiokafka)", "middleware", up_env, True, True),
        Variant(
            "middleware_down",
            "KafkaLogMiddleware (aiokafka), broker down",
            "middleware",
            down_env,
            False,
            True,
        ),
    ]
    if confluent:
        out += [
            Variant(
                "middleware_confluent",
                "KafkaLogMiddleware (confluent)",
                "middleware",
                up_env | conf,
                True,
                True,
            ),
            Variant(
                "middleware_confluent_down",
                "KafkaLogMiddleware (confluent), broker down",
                "middleware",
                down_env | conf,
                False,
                True,
            ),
        ]
    out += [
        Variant(
            "basehttp_send_and_wait",
            "BaseHTTPMiddleware + send_and_wait",
            "basehttp_send_and_wait",
            up_env,
        ),
        Variant("asgi_send", "pure ASGI + producer.send()", "asgi_send", up_env),
    ]
    return out


# -- the server -----------------------------------------------------------------------------


@dataclass
class Server:
    """A running uvicorn process."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """``GET path`` on the loopback port; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_stats(port: int) -> dict[str, int]:
    """The middleware's ``stats()`` from the app's ``GET /_stats``."""
    status, body = http_get(port, "/_stats")
    if status != 200:
        raise RuntimeError(f"/_stats answered {status}")
    stats: dict[str, int] = json.loads(body)
    return stats


@contextlib.contextmanager
def server(variant: Variant, log_path: Path) -> Iterator[Server]:
    """Run ``bench.apps:app`` of ``variant`` under uvicorn until the block ends."""
    from devtools.kafka_broker import free_port

    port = free_port()
    env = os.environ | variant.env | {"BENCH_VARIANT": variant.app}
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.apps:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with serving(cmd, env, port, variant.name, log_path, signal.SIGINT, 20) as proc:
        yield Server(proc, port)


@contextlib.contextmanager
def serving(
    cmd: list[str],
    env: dict[str, str],
    port: int,
    name: str,
    log_path: Path,
    stop: signal.Signals,
    stop_timeout: float,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the server ``cmd``, ``python -m <server> …`` (its output appended to
    ``log_path``), until it answers ``GET PATH`` on ``port``; at the block's end stop it
    with ``stop`` (killed after ``stop_timeout`` s)."""
    server_name = cmd[2]
    with log_path.open("ab") as log:
        log.write(f"=== {name} on port {port}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name}: {server_name} exited ({proc.returncode}), see {log_path}"
                )
            with contextlib.suppress(OSError):
                if http_get(port, PATH, timeout=1.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: {server_name} not serving within 30 s")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(stop)
            try:
                proc.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- wrk ------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(output: str) -> dict[str, Any]:
    """req/s, p50/p99 (ms), requests, errors and non-2xx from ``wrk --latency`` output."""
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M))
    requests = re.search(r"^\s*(\d+) requests in", output, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if requests is None or rate is None or "50" not in latency or "99" not in latency:
        raise ValueError(f"cannot parse wrk output:\n{output}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "req_s": float(rate[1]),
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
        "requests": int(requests[1]),
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
        "non_2xx": int(non2xx[1]) if non2xx else 0,
    }


def wrk_command(port: int, duration: float, args: argparse.Namespace, script: Path) -> list[str]:
    """The wrk command line for one run."""
    return [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration:g}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{PATH}",
    ]


def run_wrk(port: int, duration: float, args: argparse.Namespace, script: Path) -> dict[str, Any]:
    """Run wrk once and parse its report (plus ``wrk_cpu_s``, wrk's own CPU time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        wrk_command(port, duration, args, script),
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = parse_wrk(out.stdout)
    result["wrk_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- one run --------------------------------------------------------------------------------


def drained(port: int, timeout: float = 15.0) -> dict[str, int]:
    """Poll ``/_stats`` until nothing is pending (or ``timeout``); the last stats."""
    deadline = time.monotonic() + timeout
    stats = get_stats(port)
    while stats["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = get_stats(port)
    return stats


def measure(
    variant: Variant,
    round_no: int,
    args: argparse.Namespace,
    script: Path,
    log: Path,
    broker_pid: int | None,
) -> dict[str, Any]:
    """One warm-up + measured wrk run of ``variant`` in a fresh server.

    Besides the server's CPU, the CPU of the whole machine during the wrk run is
    recorded: what neither the server, wrk nor our broker used is other processes'
    (``other_cpu_pct`` of all cores), a sign of a disturbed run.
    """
    with server(variant, log) as srv:
        run_wrk(srv.port, args.warmup, args, script)
        if variant.stats and not variant.broker_up:
            _fill_buffer(srv.port, args, script)
        time.sleep(SETTLE)
        before = get_stats(srv.port) if variant.stats else None
        broker0 = cpu_seconds(broker_pid) if broker_pid else 0.0
        self0 = _self_cpu()
        cpu0, busy0, t0 = cpu_seconds(srv.pid), machine_busy_seconds(), time.monotonic()
        result = run_wrk(srv.port, args.duration, args, script)
        wall, busy = time.monotonic() - t0, machine_busy_seconds() - busy0
        own = _self_cpu() - self0
        cpu_during = cpu_seconds(srv.pid) - cpu0
        broker = (cpu_seconds(broker_pid) - broker0) if broker_pid else 0.0
        time.sleep(SETTLE)
        cpu = cpu_seconds(srv.pid) - cpu0
        requests = max(result["requests"], 1)
        other = busy - cpu_during - result["wrk_cpu_s"] - broker - own
        result.update(
            variant=variant.name,
            round=round_no,
            cpu_s=cpu,
            cpu_us_per_req=cpu / requests * 1e6,
            wrk_cpu_us_per_req=result["wrk_cpu_s"] / requests * 1e6,
            broker_cpu_us_per_req=broker / requests * 1e6,
            other_cpu_pct=max(other, 0.0) / (wall * (os.cpu_count() or 1)) * 100,
            bench_cpu_pct=own / (wall * (os.cpu_count() or 1)) * 100,
            rss_peak_mib=proc_status_kib(srv.pid, "VmHWM") / 1024,
        )
        if before is not None:
            after = drained(srv.port) if variant.broker_up else get_stats(srv.port)
            delta = {k: after[k] - before[k] for k in ("enqueued", "delivered", "dropped")}
            result["stats"] = after
            result["run_delta"] = delta
            settled = after["delivered"] + after["dropped"] + after["uncertain"]
            settled += after["skipped_should_log"]
            result["accounting_ok"] = (
                after["enqueued"] == settled + after["pending"]
                and delta["enqueued"] >= result["requests"]
            )
            if variant.broker_up:
                result["all_delivered"] = after["pending"] == 0 and after["dropped"] == 0
    return result


def _fill_buffer(port: int, args: argparse.Namespace, script: Path) -> None:
    """Load a broker-down server until its buffer is full (at most FILL_LIMIT seconds).

    A broker down for minutes means a full buffer: the measured run then sees that
    steady state, not the first seconds in which entries are still encoded and kept.
    """
    deadline = time.monotonic() + FILL_LIMIT
    while not get_stats(port)["dropped_buffer_full"] and time.monotonic() < deadline:
        run_wrk(port, 1.0, args, script)


def soak(seconds: float, down: str, args: argparse.Namespace, script: Path, log: Path) -> Any:
    """Broker down for ``seconds`` under load: RSS and buffer stats sampled every second."""
    variant = Variant(
        "soak",
        "soak",
        "middleware",
        {"KAFKA_LOG_BOOTSTRAP_SERVERS": down, "KAFKA_LOG_TOPIC": TOPIC},
        False,
        True,
    )
    samples: list[dict[str, Any]] = []
    with server(variant, log) as srv:
        limit = KafkaLogConfig(
            bootstrap_servers=servers(down), topic=TOPIC
        ).producer_async_buffering_limits_messages_in_memory
        rss0 = proc_status_kib(srv.pid, "VmRSS") / 1024
        result: dict[str, Any] = {}

        def load() -> None:
            result.update(run_wrk(srv.port, seconds, args, script))

        thread = threading.Thread(target=load, daemon=True)
        start = time.monotonic()
        thread.start()
        while thread.is_alive() and time.monotonic() - start < seconds + 90:
            time.sleep(1.0)
            stats = get_stats(srv.port)
            samples.append(
                {
                    "t": round(time.monotonic() - start, 2),
                    "rss_mib": proc_status_kib(srv.pid, "VmRSS") / 1024,
                    "pending": stats["pending"],
                    "dropped_buffer_full": stats["dropped_buffer_full"],
                }
            )
        thread.join(timeout=90)
    full = [s for s in samples if s["dropped_buffer_full"] > 0]
    at_fill = full[0]["rss_mib"] if full else None
    # Growth is judged from SOAK_SETTLE s after the buffer filled (the last entries' and
    # the allocator's transients are over by then) to the end of the soak.
    settled = [s for s in full if s["t"] >= full[0]["t"] + SOAK_SETTLE] if full else []
    base = settled[0]["rss_mib"] if settled else None
    after = max(s["rss_mib"] for s in settled) if settled else None
    return {
        "seconds": seconds,
        "buffer_limit": limit,
        "rss_start_mib": rss0,
        "filled_at_s": full[0]["t"] if full else None,
        "rss_at_fill_mib": at_fill,
        "settle_s": SOAK_SETTLE,
        "rss_settled_mib": base,
        "rss_max_after_fill_mib": after,
        "rss_end_mib": samples[-1]["rss_mib"] if samples else None,
        "growth_after_fill_mib": None if after is None or base is None else after - base,
        "max_pending": max((s["pending"] for s in samples), default=0),
        "wrk": result,
        "samples": samples,
    }


# -- summary --------------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]], order: list[Variant]) -> list[dict[str, Any]]:
    """Median over rounds per variant; ratios and deltas are taken per round against bare."""
    bare = {r["round"]: r for r in runs if r["variant"] == "bare"}
    rows = []
    for variant in order:
        mine = [r for r in runs if r["variant"] == variant.name]
        if not mine:
            continue
        paired = [(r, bare[r["round"]]) for r in mine if r["round"] in bare]
        row: dict[str, Any] = {
            "variant": variant.name,
            "label": variant.label,
            "rounds": len(mine),
            "req_s": median([r["req_s"] for r in mine]),
            "req_s_min": min(r["req_s"] for r in mine),
            "req_s_max": max(r["req_s"] for r in mine),
            "ratio": median([r["req_s"] / b["req_s"] for r, b in paired]),
            "p50_ms": median([r["p50_ms"] for r in mine]),
            "p99_ms": median([r["p99_ms"] for r in mine]),
            "p99_delta_ms": median([r["p99_ms"] - b["p99_ms"] for r, b in paired]),
            "cpu_us_per_req": median([r["cpu_us_per_req"] for r in mine]),
            "logging_cpu_us": median(
                [r["cpu_us_per_req"] - b["cpu_us_per_req"] for r, b in paired]
            ),
            "rss_peak_mib": median([r["rss_peak_mib"] for r in mine]),
            "errors": sum(r["socket_errors"] + r["non_2xx"] for r in mine),
            "broker_cpu_us_per_req": median([r["broker_cpu_us_per_req"] for r in mine]),
            "other_cpu_pct_max": max(r["other_cpu_pct"] for r in mine),
        }
        if variant.stats:
            row["delivered"] = sum(r["run_delta"]["delivered"] for r in mine)
            row["dropped"] = sum(r["run_delta"]["dropped"] for r in mine)
            row["pending_end"] = sum(r["stats"]["pending"] for r in mine)
            row["accounting_ok"] = all(r["accounting_ok"] for r in mine)
            reasons: dict[str, int] = {}
            for r in mine:
                for key, count in r["stats"].items():
                    if key.startswith("dropped_") and count:
                        reason = key.removeprefix("dropped_")
                        reasons[reason] = reasons.get(reason, 0) + count
            row["drop_reasons"] = reasons
            if variant.broker_up:
                row["all_delivered"] = all(r["all_delivered"] for r in mine)
        rows.append(row)
    return rows


def _print_row(row: dict[str, Any]) -> None:
    print(
        f"  {row['variant']:28} {row['req_s']:9.0f} req/s  x{row['ratio']:.3f}  "
        f"p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:6.2f} ({row['p99_delta_ms']:+.2f}) ms  "
        f"cpu {row['cpu_us_per_req']:6.1f} µs (+{row['logging_cpu_us']:.1f})  "
        f"rss {row['rss_peak_mib']:.0f} MiB",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Run every variant ``--rounds`` times, interleaved; write ``overhead.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant (default 3)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--soak", type=float, default=120, help="broker-down soak seconds (0: none)"
    )
    parser.add_argument("--only", default="", help="comma-separated variant names to run")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds and --duration must be positive")

    RESULTS.mkdir(parents=True, exist_ok=True)
    env = environment()
    log = RESULTS / "overhead-servers.log"
    log.write_bytes(b"")
    started = time.monotonic()
    with (
        kafka_bootstrap() as (bootstrap, broker, broker_pid),
        tempfile.TemporaryDirectory() as tmp,
    ):
        script = Path(tmp) / "headers.lua"
        script.write_text(WRK_SCRIPT)
        down = f"127.0.0.1:{closed_port()}"
        skipped: dict[str, str] = {}
        note = asyncio.run(probe_confluent(bootstrap, TOPIC))
        if note is not None:
            skipped["middleware_confluent"] = skipped["middleware_confluent_down"] = note
            print(f"overhead: skipping the confluent variants: {note}", flush=True)
        order = variants(bootstrap, down, note is None)
        if args.only:
            wanted = {"bare", *args.only.split(",")}
            order = [v for v in order if v.name in wanted]
        runs: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for round_no in range(1, args.rounds + 1):
            print(f"overhead: round {round_no}/{args.rounds}", flush=True)
            for variant in order:
                try:
                    run = measure(variant, round_no, args, script, log, broker_pid)
                except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                    # One broken run (a server that fails to start, say) must not cost the rest.
                    failed.append({"variant": variant.name, "round": round_no, "error": str(exc)})
                    print(f"  {variant.name:28} FAILED: {exc}", flush=True)
                    continue
                runs.append(run)
                print(
                    f"  {variant.name:28} {run['req_s']:9.0f} req/s  p99 {run['p99_ms']:6.2f} ms"
                    f"  cpu {run['cpu_us_per_req']:6.1f} µs/req"
                    f"  (others {run['other_cpu_pct']:.0f}%, bench {run['bench_cpu_pct']:.0f}%)",
                    flush=True,
                )
        soaked = None
        if args.soak > 0:
            try:
                soaked = soak(args.soak, down, args, script, log)
            except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
                failed.append({"variant": "soak", "round": 1, "error": str(exc)})
                print(f"overhead: soak FAILED: {exc}", flush=True)
    summary = summarize(runs, order)
    print("overhead: medians over rounds", flush=True)
    for row in summary:
        _print_row(row)
    if soaked is not None:
        print(
            f"overhead: soak {args.soak:g} s, broker down: "
            f"buffer full at {soaked['filled_at_s']} s, "
            f"RSS {soaked['rss_at_fill_mib']} → max {soaked['rss_max_after_fill_mib']} MiB",
            flush=True,
        )
    write_json(
        "overhead.json",
        {
            "environment": env | {"broker": broker, "commit_at_end": git_commit()},
            "settings": {
                "rounds": args.rounds,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": args.connections,
                "threads": args.threads,
                "settle_s": SETTLE,
                "wrk_command": shlex.join(
                    wrk_command(0, args.duration, args, Path("headers.lua"))
                ).replace(":0/", ":PORT/"),
                "wrk_script": WRK_SCRIPT,
                "uvicorn_command": "BENCH_VARIANT=<app> uvicorn bench.apps:app --host 127.0.0.1 "
                "--port PORT --workers 1 --loop uvloop --http httptools --no-access-log "
                "--log-level warning",
            },
            "skipped": skipped,
            "summary": summary,
            "runs": runs,
            "failed": failed,
            "soak": soaked,
            "elapsed_s": round(time.monotonic() - started, 1),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
