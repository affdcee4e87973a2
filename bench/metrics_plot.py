"""Grafana-style panels from the Prometheus metrics a running app exported (``/metrics``
scraped every second by ``bench/soak.py --metrics-plot PNG``): delivered and dropped
per second by reason, pending and spooled entries, and the delivery latency's quantiles
computed from the histogram's buckets as Grafana's ``histogram_quantile(rate(...))`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from kafka_log_middleware.metrics import LATENCY, PREFIX

Scrape = dict[str, float]
"""One scrape, flattened: ``name{label=value,...}`` → value (our metrics only)."""
RATE_WINDOW = 5
"""Seconds over which rates and latency quantiles are taken (``rate(...[5s])``)."""


def scrape(base: str) -> Scrape:
    """The app's ``/metrics``, flattened (labels other than ``topic``, sorted)."""
    text = httpx.get(base + "/metrics", timeout=10).text
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(("kafka_log_", LATENCY)):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "topic")
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            out[key] = out.get(key, 0.0) + sample.value
    return out


def _rate(t: Sequence[float], scrapes: Sequence[Scrape], key: str) -> list[float]:
    """Per-second increase of counter ``key`` over the last ``RATE_WINDOW`` scrapes."""
    out = []
    for i in range(len(scrapes)):
        j = max(i - RATE_WINDOW, 0)
        span = t[i] - t[j]
        out.append((scrapes[i].get(key, 0.0) - scrapes[j].get(key, 0.0)) / span if span else 0.0)
    return out


def _quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """``histogram_quantile``: linear within the bucket holding the ``q`` rank."""
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def latency_quantiles(
    t: Sequence[float], scrapes: Sequence[Scrape], q: float
) -> list[float | None]:
    """The latency's ``q`` quantile over each ``RATE_WINDOW``, in seconds."""
    prefix = LATENCY + "_bucket{le="
    keys = sorted(
        (key for key in scrapes[-1] if key.startswith(prefix)) if scrapes else (),
        key=lambda key: float(key[len(prefix) : -1]),
    )
    bounds = [float(key[len(prefix) : -1]) for key in keys]
    out: list[float | None] = []
    for i in range(len(scrapes)):
        j = max(i - RATE_WINDOW, 0)
        counts = [scrapes[i].get(k, 0.0) - scrapes[j].get(k, 0.0) for k in keys]
        out.append(_quantile(q, bounds, counts))
    return out


def plot(
    t: Sequence[float],
    scrapes: Sequence[Scrape],
    broker_down: Sequence[tuple[float, float]],
    title: str,
    out: Path,
) -> None:
    """Four dark panels over time, the broker's downtimes shaded."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    plt.style.use("dark_background")
    fig, axes = plt.subplots(2, 2, sharex=True, figsize=(12, 6.5))
    fig.patch.set_facecolor("#111217")
    rates, gauges, latency, dropped = axes[0][0], axes[0][1], axes[1][0], axes[1][1]
    rates.plot(t, _rate(t, scrapes, PREFIX + "delivered_total"), label="delivered/s")
    rates.plot(t, _rate(t, scrapes, PREFIX + "enqueued_total"), label="enqueued/s", alpha=0.7)
    rates.set_title("rate(kafka_log_entries_*_total[5s])")
    reasons = sorted(
        {key for s in scrapes for key in s if key.startswith(PREFIX + "dropped_total{")}
    )
    for key in reasons:
        values = _rate(t, scrapes, key)
        if any(values):
            dropped.plot(t, values, label=key.split("reason=", 1)[1].rstrip("}") + "/s")
    dropped.set_title("rate(kafka_log_entries_dropped_total[5s]) by reason")
    for name in ("pending", "spooled", "buffered"):
        gauges.plot(t, [s.get(PREFIX + name, 0.0) for s in scrapes], label=name)
    gauges.set_title("kafka_log_entries_pending / _spooled / _buffered")
    for q in (0.5, 0.9, 0.99):
        quantiles = latency_quantiles(t, scrapes, q)
        latency.plot(
            t, [float("nan") if v is None else v for v in quantiles], label=f"p{q * 100:g}"
        )
    latency.set_title("histogram_quantile(kafka_log_delivery_latency_seconds[5s])")
    latency.set_ylabel("seconds")
    for axis in (rates, gauges, latency, dropped):
        axis.set_facecolor("#181b1f")
        axis.grid(color="#2c3235")
        axis.legend(loc="upper left", fontsize=8, frameon=False)
        for down, up in broker_down:
            axis.axvspan(down, up, color="#f2495c", alpha=0.15)
    latency.set_xlabel("seconds (red: broker down)")
    dropped.set_xlabel("seconds (red: broker down)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=90, facecolor=fig.get_facecolor())
