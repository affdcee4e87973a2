"""The publisher's disk spool (``overflow="spool"``): what goes to disk, its syncs, its replay.

With the spool on, an encoded entry goes to disk instead of memory while Kafka does not
take entries (its producer is not connected, or a batch failed and waits for a retry),
while anything is in the spool already (so that entries keep their order), past the byte
bound, and at shutdown for what is still pending. Entries wait in ``waiting`` for the
publisher's next turn; the writes, a ``sync`` every ``spool_sync_interval`` and the reads
run on a thread (``blocking.py``), one call at a time. Once Kafka takes entries again the
spool is replayed a batch at a time, oldest first (what a dead process left, then ours),
each batch committed once Kafka has acknowledged all of it; a batch that failed is read
again after a backoff (what of it was delivered may then be there twice: ``retried``).

Accounting (``buffer.py``): our entries on disk are pending and counted ``spooled``, but
are outside the bound on entries held in memory; a dead process's entries are counted
``recovered`` (and so enqueued) when they settle; an entry the spool could not take is
dropped (``spool_full``), one written but not readable back (a damaged file) is dropped
(``spool_corrupt``) once the spool is empty of ours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import _log
from .blocking import in_a_thread
from .buffer import LogBuffer
from .config import KafkaLogConfig
from .producers import Failure, Message, Verdict
from .spool import Batch, Record, Spool, SpoolWriteError

READ_MESSAGES = 500
"""Records read back (and handed to the producer) at once."""
TAKE_OVER_EVERY = 10.0
"""How often the spool looks for files a dead process left, in seconds."""
_REOPEN_AFTER = 5.0
"""After the spool directory could not be opened, seconds until the next try."""
_BACKOFF_MAX = 5.0


@dataclass(slots=True)
class _Work:
    """One thread call's worth of spool work, and what came of it."""

    writes: list[Record]
    commits: list[Batch]
    rewind: bool
    sync: bool
    take_over: bool
    accepted: int = 0
    uncertain: int = 0
    """Records synced by no sync before a write failed: they may be lost."""
    empty: bool = False
    """No record of ours or of a dead process's is left to replay."""
    error: str | None = None


class Spooling:
    """One publisher's spool: its entries waiting to be written, syncs, replay and counts."""

    def __init__(self, buffer: LogBuffer, config: KafkaLogConfig) -> None:
        assert config.spool_dir is not None
        self.buffer = buffer
        self.directory = config.spool_dir
        self._max_bytes = config.spool_max_bytes
        self._sync_every = config.spool_sync_interval / 1000
        self._read_bytes = config.producer_request_limits_bytes_per_request
        self._backoff_base = max(config.producer_request_retries_backoff_timeout, 50) / 1000
        self._spool: Spool | None = None
        self._open_after = 0.0
        self.waiting: list[Record] = []
        """Encoded entries to be written in the next ``step``."""
        self._commits: list[Batch] = []
        self._rewind = False
        self._unsynced = False
        self._synced_at = time.monotonic()
        self._take_over_at = 0.0
        self._has_records = False
        """Some record is on disk to be replayed (as of the last spool call)."""
        self.replaying: Batch | None = None
        """The batch with the producer, reported on by ``_Replay``."""
        self._replay_after = 0.0
        self._backoff = self._backoff_base

    def __repr__(self) -> str:
        return f"<Spooling {self.directory} waiting={len(self.waiting)} spool={self._spool!r}>"

    # -- what goes to disk ------------------------------------------------------------

    @property
    def active(self) -> bool:
        """New entries go to disk: some are there or on their way (they keep their order)."""
        return bool(self.waiting) or self._has_records or self.replaying is not None

    def add(self, topic: str, messages: list[Message]) -> None:
        """Spool ``messages`` for ``topic`` (in the next ``step``)."""
        self.waiting += [(topic, message) for message in messages]

    # -- the publisher's turn -----------------------------------------------------------

    def due_in(self, now: float, can_replay: bool) -> float | None:
        """Seconds until ``step`` or ``replay`` has something to do (<= 0: now)."""
        if self.waiting or self._commits or self._rewind:
            return 0.0
        if self._spool is None:  # open it, and take over what dead processes left
            return self._open_after - now
        waits = []
        if self._unsynced:
            waits.append(self._synced_at + self._sync_every - now)
        if self._has_records and self.replaying is None:
            waits.append(self._replay_after - now if can_replay else 0.25)
        waits.append(self._take_over_at - now)
        return min(waits)

    async def step(self, stopping: bool = False) -> None:
        """Write what waits, commit what was delivered, sync when due, take over what dead
        processes left (every ``TAKE_OVER_EVERY`` s); all in one call on a thread."""
        now = time.monotonic()
        sync = self._unsynced and (stopping or now - self._synced_at >= self._sync_every)
        take_over = not stopping and now >= self._take_over_at
        if not (self.waiting or self._commits or self._rewind or sync or take_over):
            return
        spool = await self._opened(now)
        writes, self.waiting = self.waiting, []
        if spool is None:
            if writes:
                self.buffer.drop("spool_full", len(writes))
            return
        work = _Work(writes, self._commits, self._rewind, sync or stopping, take_over)
        self._commits, self._rewind = [], False
        await in_a_thread(_do, spool, work)
        self._settle(work, now)

    def _settle(self, work: _Work, now: float) -> None:
        buffer = self.buffer
        buffer.spooled += work.accepted
        refused = len(work.writes) - work.accepted
        if refused:
            buffer.drop("spool_full", refused)
        if work.error is not None:
            _log.warn("spool", "kafka_log_middleware: %s", work.error)
        if work.writes and not work.sync:
            self._unsynced = True
        if work.sync:
            self._unsynced, self._synced_at = False, now
        if work.take_over:
            self._take_over_at = now + TAKE_OVER_EVERY
        self._has_records = not work.empty
        if work.empty and self.replaying is None and buffer.spooled:
            # Written, committed up to the end, and yet not all read back: damaged files.
            lost, buffer.spooled = buffer.spooled, 0
            buffer.drop("spool_corrupt", lost)

    async def _opened(self, now: float) -> Spool | None:
        """The spool, opened (in a thread) on first use; None while it cannot be."""
        if self._spool is None and now >= self._open_after:
            try:
                self._spool = await in_a_thread(Spool, self.directory, self._max_bytes)
            except OSError as exc:
                self._open_after = now + _REOPEN_AFTER
                _log.warn(
                    "spool",
                    "kafka_log_middleware: cannot open the spool in %s (%s); entries that "
                    "should go there are dropped (spool_full)",
                    self.directory,
                    exc.strerror or type(exc).__name__,
                )
        return self._spool

    # -- replay -------------------------------------------------------------------------

    def can_replay(self, now: float) -> bool:
        """A batch may be read back now: something is on disk, nothing is being replayed,
        the backoff after a failed batch has passed."""
        return (
            self._spool is not None
            and self._has_records
            and self.replaying is None
            and not self._rewind
            and now >= self._replay_after
        )

    async def read(self) -> Batch | None:
        """The next batch to replay (taken as ``replaying``), or None."""
        spool = self._spool
        if spool is None:
            return None
        batch: Batch = await in_a_thread(spool.read, READ_MESSAGES, self._read_bytes)
        self.buffer.spool_corrupt += batch.corrupt
        if not batch.records:
            self._has_records = False
            return None
        self.replaying = batch
        return batch

    def replayed(self, batch: Batch, delivered: int, dropped: list[tuple[str, int]]) -> None:
        """``batch`` is over: ``delivered`` acknowledged, the rest refused for good
        (``dropped``: reason, count); committed in the next ``step``."""
        self.replaying = None
        self._commits.append(batch)
        buffer = self.buffer
        if batch.adopted:
            buffer.recovered += len(batch)
        else:
            buffer.spooled -= len(batch)
        buffer.deliver(delivered)
        buffer.replayed += delivered
        for reason, count in dropped:
            buffer.drop(reason, count)
        self._backoff = self._backoff_base

    def failed(self, delivered: int, failure: Failure) -> None:
        """The batch being replayed is to go again, after a backoff (what of it was
        delivered will be there twice: counted ``retried``)."""
        self.replaying = None
        self._rewind = True
        if delivered:
            self.buffer.count_retried(delivered)
        self._replay_after = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
        _log.warn(
            "replay",
            "kafka_log_middleware: replaying the spool failed (%s); trying again",
            failure.cause,
        )

    # -- the end ------------------------------------------------------------------------

    def close(self) -> None:
        """Write what waits and sync, and let go of the spool (its files stay for the next
        process); here, in the loop's thread: the publisher is closing."""
        spool, self._spool = self._spool, None
        writes, self.waiting = self.waiting, []
        if spool is None and writes:
            spool = self._open_now()
        if spool is None:
            if writes:
                self.buffer.drop("spool_full", len(writes))
            return
        work = _Work(writes, self._commits, False, True, False)
        self._commits = []
        _do(spool, work)
        self._settle(work, time.monotonic())
        spool.close()

    def _open_now(self) -> Spool | None:
        try:
            return Spool(self.directory, self._max_bytes)
        except OSError:
            return None


def _do(spool: Spool, work: _Work) -> None:
    """``work``, on the spool (in a thread of its own)."""
    try:
        for batch in work.commits:
            spool.commit(batch)
        if work.rewind:
            spool.rewind()
        if work.take_over:
            spool.take_over()
        _write(spool, work)
        if work.sync:
            spool.sync()
        elif work.writes:
            spool.flush()  # in the file: a SIGKILL of ours no longer loses them
    except SpoolWriteError as exc:
        work.accepted += exc.accepted
        work.uncertain = exc.uncertain
        work.error = str(exc)
    except OSError as exc:
        work.error = f"spool in {spool.directory}: {exc.strerror or type(exc).__name__}"
    work.empty = spool.empty


def _write(spool: Spool, work: _Work) -> None:
    """Append ``work.writes``, a run of one topic at a time, counting in ``work.accepted``
    those the spool took (the first ones: past ``spool_max_bytes`` it takes no more)."""
    records = work.writes
    start = 0
    while start < len(records):
        topic = records[start][0]
        end = start
        while end < len(records) and records[end][0] == topic:
            end += 1
        messages = [message for _, message in records[start:end]]
        taken = spool.append(topic, messages)
        work.accepted += taken
        if taken < len(messages):
            break
        start = end


class Replay:
    """The delivery report of one replayed batch (its messages may go to several topics,
    each its own hand-over): tells ``Spooling`` once every message is reported."""

    __slots__ = ("_batch", "_delivered", "_dropped", "_failure", "_left", "_spooling")

    def __init__(self, spooling: Spooling, batch: Batch) -> None:
        self._spooling = spooling
        self._batch = batch
        self._left = len(batch)
        self._delivered = 0
        self._failure: Failure | None = None
        self._dropped: dict[str, int] = {}

    def __call__(
        self, delivered: int, failed: list[Message], failure: Failure | None, resent: bool
    ) -> None:
        self._left -= delivered + len(failed)
        self._delivered += delivered
        if failed and failure is not None:
            if failure.verdict is Verdict.RETRY:
                self._failure = failure
            else:  # refused for good: it would be refused again and again
                reason = "kafka_error" if failure.verdict is Verdict.FATAL else "too_large"
                self._dropped[reason] = self._dropped.get(reason, 0) + len(failed)
        if self._left > 0:
            return
        if self._failure is not None:
            self._spooling.failed(self._delivered, self._failure)
        else:
            self._spooling.replayed(self._batch, self._delivered, list(self._dropped.items()))
