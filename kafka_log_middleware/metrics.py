"""Prometheus metrics of the logging pipeline (extra ``prometheus``), labelled by topic.

Nothing runs on the request path: counters and gauges are read from ``stats()``, which
the pipeline keeps anyway, and the delivery latency (response end to acknowledged by
Kafka) is observed in the publisher's delivery reports, once per acknowledged batch. In
one process a ``Collector`` reads them at scrape time. Under prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set: gunicorn or uvicorn workers), which
aggregates only its own metric objects' files, a background thread per process moves the
counters' deltas into real ``Counter``/``Gauge`` objects every ``interval`` seconds and
the latency goes into a real ``Histogram``.

``register(middleware_or_app)`` once per middleware; ``metrics_response()`` (and the
``starlette_endpoint``, ``django_view`` and ``flask_view`` built on it) answers a scrape.
"""

from __future__ import annotations

import bisect
import glob
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .pipeline import Pipeline

PREFIX = "kafka_log_entries_"
COUNTERS = {
    "enqueued": "Requests captured to be logged.",
    "delivered": "Entries acknowledged by Kafka.",
    "uncertain": "Entries given up that may have reached Kafka (last attempt unacknowledged).",
    "retried": "Entries sent again after an attempt that may have reached Kafka.",
    "replayed": "Entries delivered from the disk spool.",
    "recovered": "Entries a dead process left in the spool, delivered by this one.",
    "truncated": "Entries cut to fit max_entry_bytes.",
    "skipped": "Requests not logged because a filter excluded them.",
}
"""``stats()`` counters exported as ``kafka_log_entries_<name>_total`` (when present)."""
GAUGES = {
    "pending": "Entries neither delivered, dropped nor uncertain yet.",
    "buffered": "Captured requests waiting to be encoded.",
    "spooled": "Entries of this process waiting in the disk spool.",
}
"""``stats()`` values exported as gauges ``kafka_log_entries_<name>``."""
DROPPED = "dropped_"
"""``stats()`` keys ``dropped_<reason>`` make ``kafka_log_entries_dropped_total{reason}``."""
LATENCY = "kafka_log_delivery_latency_seconds"
LATENCY_DOC = "Response end to acknowledged by Kafka, per entry delivered from memory."
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Latency bucket bounds, in seconds (the flush timer alone is 1 s by default)."""
INTERVAL = 1.0
"""Seconds between two updates of the metric objects in multiprocess mode."""

_perf = time.perf_counter


def pipeline_getter(source: Any) -> Callable[[], Pipeline | None]:
    """How to find the pipeline of ``source``: a ``Pipeline``, any door's middleware
    (ASGI, WSGI, Django) or a Flask app set up with ``KafkaLog``. Looked up at each
    use: the ASGI door makes its pipeline late when built with a bad configuration."""
    if isinstance(source, Pipeline):
        return lambda: source
    extensions = getattr(source, "extensions", None)  # a Flask app
    if isinstance(extensions, dict) and "kafka_log" in extensions:
        source = extensions["kafka_log"]
    background = getattr(source, "_background", None)  # WSGI, Django
    if background is not None:
        pipeline: Pipeline = background.pipeline
        return lambda: pipeline
    if hasattr(source, "_pipeline"):  # ASGI
        return lambda: source._pipeline
    raise TypeError(
        "kafka_log_middleware.metrics: give a middleware, a Flask app set up with KafkaLog "
        f"or a Pipeline, not {type(source).__name__}"
    )


def spread(count: int, oldest: float, newest: float, now: float) -> Iterator[float]:
    """The latencies of ``count`` entries acknowledged ``now`` whose response ends span
    ``oldest`` to ``newest``: spread evenly over that span (only its ends are kept)."""
    if count == 1 or newest <= oldest:
        latency = now - (oldest + newest) / 2
        return (latency for _ in range(count))
    step = (newest - oldest) / count
    first = now - oldest - step / 2
    return (first - step * i for i in range(count))


class _Buckets:
    """A histogram of one topic's latencies, kept by hand (non-cumulative counts)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, latencies: Iterable[float]) -> None:
        counts = self.counts
        where = bisect.bisect_left
        total = 0.0
        for latency in latencies:
            counts[where(BUCKETS, latency)] += 1
            total += latency
        self.total += total

    def family(self, topic: str, family: HistogramMetricFamily) -> None:
        cumulative, running = [], 0
        for bound, count in zip((*BUCKETS, float("inf")), list(self.counts), strict=True):
            running += count
            cumulative.append((_bound(bound), running))
        family.add_metric([topic], cumulative, self.total)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class KafkaLogCollector(Collector):
    """The metrics of some pipelines read at scrape time (one process)."""

    def __init__(self) -> None:
        self._sources: list[_Source] = []
        self._latency: dict[str, _Buckets] = {}
        """Per topic; written by publishers' delivery reports, read by scrapes."""

    def add(self, source: Any) -> None:
        """Export ``source``'s metrics too (see ``pipeline_getter``)."""
        self._sources.append(_Source(pipeline_getter(source), self._observe))

    def _observe(self, topic: str, count: int, oldest: float, newest: float) -> None:
        buckets = self._latency.get(topic)
        if buckets is None:
            buckets = self._latency[topic] = _Buckets()
        buckets.observe(spread(count, oldest, newest, _perf()))

    def describe(self) -> Iterable[Metric]:
        return ()  # no names to check for duplicates: they depend on what stats() has

    def collect(self) -> Iterable[Metric]:
        by_topic: dict[str, dict[str, int]] = {}  # middlewares logging to one topic add up
        for source in self._sources:
            read = source.read()
            if read is not None:
                totals = by_topic.setdefault(read[0], {})
                for key, value in read[1].items():
                    totals[key] = totals.get(key, 0) + value
        families: list[Metric] = []
        for table, kind in ((COUNTERS, CounterMetricFamily), (GAUGES, GaugeMetricFamily)):
            for name, doc in table.items():
                family = kind(PREFIX + name, doc, labels=["topic"])
                families.append(family)
                for topic, stats in by_topic.items():
                    if name in stats:
                        family.add_metric([topic], stats[name])
        dropped = CounterMetricFamily(
            PREFIX + "dropped", "Entries dropped, by reason.", labels=["topic", "reason"]
        )
        for topic, stats in by_topic.items():
            for key, count in stats.items():
                if key.startswith(DROPPED):
                    dropped.add_metric([topic, key[len(DROPPED) :]], count)
        latency = HistogramMetricFamily(LATENCY, LATENCY_DOC, labels=["topic"])
        for topic, buckets in list(self._latency.items()):
            buckets.family(topic, latency)
        return [*families, dropped, latency]


class _Source:
    """One pipeline being exported, its latency observer attached to it."""

    __slots__ = ("_get", "_observer", "last")

    def __init__(
        self, get: Callable[[], Pipeline | None], observer: Callable[[str, int, float, float], None]
    ) -> None:
        self._get = get
        self._observer = observer
        self.last: dict[str, int] = {}
        """The counters last moved into metric objects (multiprocess mode)."""
        self.read()

    def read(self) -> tuple[str, dict[str, int]] | None:
        """The pipeline's topic and stats (None while it has no valid configuration)."""
        pipeline = self._get()
        if pipeline is None:
            return None
        if self._observer not in pipeline.delivery_observers:
            pipeline.delivery_observers.append(self._observer)
        return pipeline.config.topic, pipeline.stats()


class KafkaLogMultiprocessMetrics:
    """The metrics of some pipelines in prometheus_client's own metric objects, which its
    multiprocess mode aggregates across workers: a thread per process moves the stats'
    deltas, and the latencies observed meanwhile, into them every ``interval`` seconds
    (``Histogram.observe`` writes its file per entry: ten times the cost)."""

    def __init__(self, registry: CollectorRegistry | None, interval: float = INTERVAL) -> None:
        self._sources: list[_Source] = []
        self._interval = interval
        self._counters = {
            name: Counter(PREFIX + name, doc, ["topic"], registry=registry)
            for name, doc in COUNTERS.items()
        }
        self._gauges = {
            name: Gauge(
                PREFIX + name, doc, ["topic"], registry=registry, multiprocess_mode="livesum"
            )
            for name, doc in GAUGES.items()
        }
        self._dropped = Counter(
            PREFIX + "dropped",
            "Entries dropped, by reason.",
            ["topic", "reason"],
            registry=registry,
        )
        self._latency = Histogram(
            LATENCY, LATENCY_DOC, ["topic"], registry=registry, buckets=BUCKETS
        )
        self._lock = threading.Lock()
        self._observed: dict[str, _Buckets] = {}
        """Latencies per topic not moved into ``_latency`` yet."""
        self._observed_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        os.register_at_fork(after_in_child=_restart(self))

    def add(self, source: Any) -> None:
        """Export ``source``'s metrics too (see ``pipeline_getter``)."""
        with self._lock:
            self._sources.append(_Source(pipeline_getter(source), self._observe))
        self._ensure_thread()

    def _observe(self, topic: str, count: int, oldest: float, newest: float) -> None:
        with self._observed_lock:
            buckets = self._observed.get(topic)
            if buckets is None:
                buckets = self._observed[topic] = _Buckets()
            buckets.observe(spread(count, oldest, newest, _perf()))

    def _ensure_thread(self) -> None:
        """The updating thread of this process (a forked child starts its own)."""
        if self._pid == os.getpid() and self._thread is not None:
            return
        self._pid = os.getpid()
        for source in self._sources:
            source.last = {}  # a forked child's pipelines count afresh
        ref = weakref.ref(self)
        self._thread = threading.Thread(
            target=_update_every, args=(ref, self._interval), name="kafka-log-metrics", daemon=True
        )
        self._thread.start()

    def update(self) -> None:
        """Move every source's counters' deltas (and gauges) into the metric objects."""
        with self._lock:
            for source in self._sources:
                read = source.read()
                if read is not None:
                    self._move(source, *read)
            with self._observed_lock:
                observed, self._observed = self._observed, {}
            for topic, buckets in observed.items():
                # Histogram.observe() n times in one go: its values, as observe() moves them.
                child = self._latency.labels(topic)
                for value, count in zip(child._buckets, buckets.counts, strict=True):
                    if count:
                        value.inc(count)
                child._sum.inc(buckets.total)

    def _move(self, source: _Source, topic: str, stats: dict[str, int]) -> None:
        last = source.last
        for key, value in stats.items():
            if key in self._gauges:
                self._gauges[key].labels(topic).set(value)
                continue
            counter = self._counters.get(key)
            labels = [topic]
            if counter is None and key.startswith(DROPPED):
                counter, labels = self._dropped, [topic, key[len(DROPPED) :]]
            if counter is None:
                continue
            before = last.get(key, 0)
            delta = value - before if value >= before else value  # a new buffer counts from 0
            if delta:
                counter.labels(*labels).inc(delta)
        source.last = stats


def _update_every(ref: weakref.ref[KafkaLogMultiprocessMetrics], interval: float) -> None:
    """The updating thread: ends with its metrics object, or in a forked child."""
    pid = os.getpid()
    while True:
        metrics = ref()
        if metrics is None or metrics._pid != pid:
            return
        metrics.update()
        del metrics
        time.sleep(interval)


Metrics = KafkaLogCollector | KafkaLogMultiprocessMetrics
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()
"""One metrics object per registry, so that each metric name is registered once there
(the registry is prometheus_client's object: we cannot keep ours on it)."""


def multiprocess_mode() -> bool:
    """Whether prometheus_client runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def register(source: Any, registry: CollectorRegistry | None = None) -> Metrics:
    """Export the metrics of ``source`` (a middleware of any door, a Flask app set up with
    ``KafkaLog``, or a ``Pipeline``) on ``registry`` (default: the global one).

    In multiprocess mode the metric objects are made (and the thread started) in each
    process that registers: register in each worker (gunicorn's ``post_fork``), or before
    the fork (``--preload``): a forked child starts its own thread.
    """
    registry = REGISTRY if registry is None else registry
    metrics = _by_registry.get(registry)
    if metrics is None:
        if multiprocess_mode():
            metrics = KafkaLogMultiprocessMetrics(registry)
        else:
            metrics = KafkaLogCollector()
            registry.register(metrics)
        _by_registry[registry] = metrics
    metrics.add(source)
    return metrics


def _restart(metrics: KafkaLogMultiprocessMetrics) -> Callable[[], None]:
    ref = weakref.ref(metrics)

    def restart() -> None:
        alive = ref()
        if alive is not None:
            alive._lock, alive._observed_lock = threading.Lock(), threading.Lock()
            alive._observed = {}  # the parent's to move
            alive._ensure_thread()

    return restart


# -- exposition -------------------------------------------------------------------


def metrics_response(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The body and content type of a scrape: ``registry``'s metrics, or in
    multiprocess mode every worker's, aggregated (``WorkersCollector``)."""
    if registry is None:
        if multiprocess_mode():
            registry = CollectorRegistry()
            WorkersCollector(registry)
        else:
            registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


class WorkersCollector(MultiProcessCollector):
    """prometheus_client's ``MultiProcessCollector``, leaving out the files a worker has
    created and not sized yet. prometheus_client reads such an empty file as corrupt and
    fails the whole scrape, and for good when the worker died in that instant
    (client_python issue 1199)."""

    def __init__(self, registry: CollectorRegistry, path: str | None = None) -> None:
        super().__init__(registry, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        files = glob.glob(os.path.join(self._path, "*.db"))
        sized = [name for name in files if _has_data(name)]
        return self.merge(sized, accumulate=True)  # type: ignore[no-untyped-call, no-any-return]


def _has_data(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:  # gone meanwhile (a dead worker's gauges are removed)
        return False


async def starlette_endpoint(request: Any) -> Any:
    """A Starlette/FastAPI endpoint: ``Route("/metrics", starlette_endpoint)``."""
    from starlette.responses import Response

    body, content_type = metrics_response()
    return Response(body, headers={"Content-Type": content_type})


def django_view(request: Any) -> Any:
    """A Django view: ``path("metrics", django_view)``."""
    from django.http import HttpResponse

    body, content_type = metrics_response()
    return HttpResponse(body, content_type=content_type)


def flask_view() -> Any:
    """A Flask view: ``app.add_url_rule("/metrics", view_func=flask_view)``."""
    from flask import Response

    body, content_type = metrics_response()
    return Response(body, content_type=content_type)
