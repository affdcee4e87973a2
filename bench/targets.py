"""The current benchmark targets (issue 12; the WSGI door's older issue-8 target beside
it), in one table that ``bench/report.py`` checks against the results. Benchmark
numbers, never asserted in tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Results = dict[str, dict[str, Any] | None]
"""``bench/results/*.json`` by name: ``overhead``, ``publisher``, ``breakdown``, ``wsgi``."""


@dataclass(frozen=True)
class Target:
    """One target: what it says, how to read its figure from the results, the bound."""

    name: str
    measure: Callable[[Results], float | None]
    """The measured figure, or None when that result is not in this run."""
    limit: float
    at_least: bool = False
    """True: met when the figure is ≥ ``limit``; else when it is ≤ ``limit``."""
    unit: str = "µs"

    def shown(self, value: float) -> str:
        """The figure as the report prints it."""
        if self.unit == "/s":
            return f"{value:,.0f}/s"
        if self.unit == "of raw":
            return f"{value:.2f} of raw"
        return f"{value:+.1f} {self.unit}" if self.unit == "µs" else f"{value:+.2f} {self.unit}"

    def met(self, value: float) -> bool:
        """Whether ``value`` meets the target."""
        return value >= self.limit if self.at_least else value <= self.limit


def _overhead(variant: str, key: str) -> Callable[[Results], float | None]:
    def read(results: Results) -> float | None:
        rows = (results.get("overhead") or {}).get("summary", [])
        row = next((r for r in rows if r["variant"] == variant), None)
        return None if row is None else float(row[key])

    return read


def _over_default(stage: str, base: str = "aiokafka") -> Callable[[Results], float | None]:
    def read(results: Results) -> float | None:
        fastest = (results.get("breakdown") or {}).get("fastest_us", {})
        if stage not in fastest or base not in fastest:
            return None
        return float(fastest[stage] - fastest[base])

    return read


def _publisher(backend: str, ratio: bool) -> Callable[[Results], float | None]:
    def read(results: Results) -> float | None:
        runs = (results.get("publisher") or {}).get("throughput", {})
        ours, raw = runs.get(f"middleware_{backend}"), runs.get(f"raw_{backend}")
        if ours is None or not ours.get("all_delivered"):
            return None if ours is None else 0.0
        if not ratio:
            return float(ours["entries_per_s"])
        return None if raw is None else ours["entries_per_s"] / raw["entries_per_s"]

    return read


def _wsgi(results: Results) -> float | None:
    rows = (results.get("wsgi") or {}).get("summary", [])
    row = next((r for r in rows if r.get("variant") == "kafka_log"), None)
    return None if row is None else float(row["logging_cpu_us"])


def _soak_growth(results: Results) -> float | None:
    soak = (results.get("overhead") or {}).get("soak") or {}
    growth = soak.get("growth_after_fill_mib")
    return None if growth is None else float(growth)


TARGETS: tuple[Target, ...] = (
    *(
        Target(
            f"Logging CPU under uvicorn, broker {state} ({backend})",
            _overhead(v, "logging_cpu_us"),
            limit,
        )
        for state, limit in (("up", 6.0), ("down", 4.0))
        for backend, v in (
            ("aiokafka", "middleware" if state == "up" else "middleware_down"),
            ("confluent", "middleware_confluent" if state == "up" else "middleware_confluent_down"),
        )
    ),
    *(
        Target(
            f"p99 within +0.5 ms of bare, broker {state} ({backend})",
            _overhead(v, "p99_delta_ms"),
            0.5,
            unit="ms",
        )
        for state, backend, v in (
            ("up", "aiokafka", "middleware"),
            ("down", "aiokafka", "middleware_down"),
            ("up", "confluent", "middleware_confluent"),
            ("down", "confluent", "middleware_confluent_down"),
        )
    ),
    Target("WSGI door under gunicorn, logging CPU broker up (issue 8: ≤ 10)", _wsgi, 6.0),
    Target(
        "Bodies on (1 KiB JSON both ways), over the same traffic, in-process",
        _over_default("bodies", "json_1k"),
        1.5,
    ),
    Target(
        "Metrics on (multiprocess mode), over the default, in-process",
        _over_default("metrics"),
        1.5,
    ),
    Target(
        "at_least_once, spool idle, over the default, in-process",
        _over_default("at_least_once"),
        1.5,
    ),
    *(
        Target(
            f"Publisher ≥ 200,000 entries/s acknowledged ({backend})",
            _publisher(backend, False),
            200_000,
            True,
            "/s",
        )
        for backend in ("aiokafka", "confluent")
    ),
    *(
        Target(
            f"Publisher ≥ 0.75 of the raw client loop, same run ({backend})",
            _publisher(backend, True),
            0.75,
            True,
            "of raw",
        )
        for backend in ("aiokafka", "confluent")
    ),
    Target("Broker down: RSS growth once the buffer is full", _soak_growth, 5.0, unit="MiB"),
)
