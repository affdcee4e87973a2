"""The overhead chart: req/s per variant (median, min-max bars), bare highlighted.

python -m bench.chart   # bench/results/overhead.json → docs/benchmarks-overhead.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, read_json

DEFAULT_OUT = ROOT / "docs" / "benchmarks-overhead.png"


def draw(overhead: dict[str, Any], out: Path) -> None:
    """Write the horizontal bar chart of ``overhead["summary"]`` to ``out``."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    rows = overhead["summary"]
    labels = [row["label"] for row in rows]
    medians = [row["req_s"] for row in rows]
    low = [row["req_s"] - row["req_s_min"] for row in rows]
    high = [row["req_s_max"] - row["req_s"] for row in rows]
    colors = ["#2f6db5" if row["variant"] == "bare" else "#9aa7b8" for row in rows]
    for index, row in enumerate(rows):
        if row["variant"].startswith("middleware"):
            colors[index] = "#e07b28"
    settings = overhead["settings"]
    env = overhead["environment"]

    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.8), dpi=120)
    positions = list(range(len(rows)))[::-1]
    ax.barh(positions, medians, xerr=[low, high], color=colors, capsize=4, height=0.6)
    ax.set_yticks(positions, labels)
    top = max(row["req_s_max"] for row in rows)
    for pos, row in zip(positions, rows, strict=True):
        ax.text(
            row["req_s_max"] + top * 0.01,
            pos,
            f"{row['req_s']:,.0f}  (x{row['ratio']:.2f})",
            va="center",
            fontsize=9,
        )
    ax.set_xlim(0, top * 1.22)
    ax.set_xlabel("requests/s (median of rounds; bars: min to max)")
    ax.set_title(
        f"Starlette hello-world under uvicorn, wrk -t{settings['threads']} "
        f"-c{settings['connections']} -d{settings['duration_s']:g}s, "
        f"{settings['rounds']} rounds, {env['nproc']} cores shared",
        fontsize=10,
    )
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Draw the chart from ``bench/results/overhead.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG file to write")
    args = parser.parse_args(argv)
    overhead = read_json("overhead.json")
    if overhead is None:
        parser.error("no bench/results/overhead.json: run python -m bench.overhead first")
    draw(overhead, args.out)
    print(f"chart: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
