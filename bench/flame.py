"""A CPU flame graph (py-spy) of the logged hello-world under uvicorn + wrk, broker up.

Same server, app and load as ``bench.overhead``'s ``middleware`` variant; py-spy samples
every thread of the server (``--threads`` keeps the publisher's work apart in a
librdkafka run) while wrk runs, and writes an SVG; ``--backend confluent`` for librdkafka.

    python -m bench.flame --duration 20 --out docs/flame-broker-up.svg
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, closed_port, kafka_bootstrap
from bench.overhead import WRK_SCRIPT, run_wrk, server, variants


def main(argv: list[str] | None = None) -> int:
    """Record one flame graph; print where it went."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds recorded")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--backend", choices=("aiokafka", "confluent"), default="aiokafka")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "flame-broker-up.svg",
        help="an .svg flame graph, or .txt for py-spy's collapsed stacks",
    )
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        parser.error("py-spy not found: pip install -e '.[bench]'")
    name = "middleware" if args.backend == "aiokafka" else "middleware_confluent"
    RESULTS.mkdir(parents=True, exist_ok=True)
    with kafka_bootstrap() as (bootstrap, _, _), tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench.lua"
        script.write_text(WRK_SCRIPT)
        variant = next(
            v for v in variants(bootstrap, f"127.0.0.1:{closed_port()}", True) if v.name == name
        )
        with server(variant, RESULTS / "flame-server.log") as srv:
            run_wrk(srv.port, args.warmup, args, script)
            record = subprocess.Popen(
                [
                    py_spy, "record", "--pid", str(srv.pid), "--rate", str(args.rate),
                    "--duration", f"{args.duration + 1:.0f}", "--nonblocking",
                    "--format", "raw" if args.out.suffix == ".txt" else "flamegraph",
                    "--output", str(args.out), "--threads",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            time.sleep(0.5)
            result = run_wrk(srv.port, args.duration, args, script)
            _, err = record.communicate(timeout=args.duration + 60)
            if record.returncode != 0:
                print(err, file=sys.stderr)
                return 1
    print(f"flame: {result['requests']:,} requests at {result['req_s']:,.0f}/s, {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
