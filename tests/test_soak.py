"""The soak script's short variant (``bench/soak.py``): steady load on a logged uvicorn
app while the broker is SIGKILLed and restarted twice: nothing lost with
``at_least_once`` and the spool, the accounting exact, no descriptor, thread or socket
left behind. The long run (10 minutes, a restart every 2) is the script's, in docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import run

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(400)]


def test_a_short_soak_with_broker_restarts_loses_nothing_and_leaks_nothing(
    tmp_path: Path,
) -> None:
    report = run(duration=45, rate=200, restart_every=15, spool=True, workdir=tmp_path)
    print(f"soak: {report.served} served, {report.lost} lost, {report.duplicates} duplicates")
    assert len(report.broker_down) == 2 and report.served > 0
    assert report.failed_requests == 0  # the app never failed a request for Kafka's sake
    assert report.lost == 0
    assert report.out_of_order == 0  # Kafka got each worker's entries in their order
    assert report.balanced(), report.final_stats
    assert report.final_stats["pending"] <= 1  # at most the /stats request that read it
    assert report.final_stats["dropped"] == 0
    assert report.duplicates <= report.final_stats["retried"]  # every duplicate counted
    leaks = report.leaks()
    for name, slack in (("fds", 4), ("threads", 2), ("sockets", 4)):
        start, end = leaks[name]
        assert end <= start + slack, (name, leaks)
