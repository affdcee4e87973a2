"""The disk spool: encoded Kafka messages kept on disk while Kafka is down, replayed in
order once it is back, and after a restart (at-least-once delivery).

Synchronous plain file I/O: a publisher calls it from a worker thread
(``asyncio.to_thread``). A ``Spool`` is used from one thread at a time, and in the process
that created it (a forked child shares its locks: create it after the fork). Nothing is
global: each instance has its own files and state.

On-disk layout, in one directory that several processes may share (gunicorn or uvicorn
workers, and their successors after restarts). Each ``Spool`` is an *owner* with a fresh
id ``<pid>-<16 hex digits of random nonce>``, and writes only its own files:

``<owner>.lock``
    Empty; held with ``flock(LOCK_EX)`` for the owner's lifetime. Liveness is only this
    lock, never the pid (pids are reused): an owner whose lock can be taken
    (``LOCK_EX|LOCK_NB``) is dead, and its files can be taken over by another
    ``Spool`` (``take_over``), which then holds that lock while it replays them. The lock
    is created as ``<owner>.lock.new``, locked, then renamed, so it never appears
    unlocked while its owner lives.
``<owner>.<seq>.seg``
    Segments, ``seq`` zero-padded to 10 digits from 0, so that names sort in write order.
    Appended to, one at a time, rolled past ``segment_bytes``; a record never spans two.
``<owner>.cursor``
    How far the owner's segments are committed (delivered): ``seq`` and byte offset;
    segments before ``seq`` are gone or to be deleted. 24 bytes: magic ``b"KLSc"``,
    ``seq`` and ``offset`` (little-endian u64), CRC32 of the first 20. Replaced
    atomically (``<owner>.cursor.tmp`` + ``os.replace``) on every commit; a missing or
    damaged cursor means "from the first segment" (duplicates, never loss).

A record, little-endian::

    magic b"\\xffKLs" | crc32 u32 | body length u32 | body
    body: topic length u16 | topic (UTF-8) | key length u32 (0xFFFFFFFF: no key)
          | key | value (the rest of the body)

The CRC32 (``zlib.crc32``) covers the body, so a damaged length fails it too (it makes
the CRC cover other bytes), and the lengths inside must add up to the body's. A reader
that meets a record that does not validate (a torn tail, a flipped bit, a damaged length)
skips to the next magic whose record validates, and counts the region it skipped.

Reading: ``read`` returns dead owners' records first (owners taken over, in that order),
then ours, each owner's in write order; ``commit`` marks a batch delivered. A segment
committed to its end is deleted (our current one too, once everything is committed, so
the next append starts a new one). A segment is read whole into memory, once. ``read``
first writes the append buffer to the file: every appended record is readable, synced
or not.

A dead owner's files are deleted once all its records are committed: segments, then
cursor, then the lock file last (still locked). Another process that opened the lock file
meanwhile finds, once it gets the lock, that the name no longer names its inode, and
leaves it. A segment file without a lock file (which only outside hands make) is taken
over too, under a lock file created for it.

What is lost when: appended records sit in a user-space buffer until a flush (``flush``,
``sync``, ``read``, a segment roll, or 256 KiB of buffer), so a SIGKILL loses the records
appended since the last flush; a power loss loses those appended since the last ``sync`` (or
segment roll, which syncs the segment it closes), and may leave a torn tail, which is
skipped. Commits are not synced: after a power loss some committed records may be
replayed again (duplicates, at-least-once). ``take_over`` orders dead owners by their
lock file's age, so replay order across owners is only roughly chronological; within an
owner it is exactly the write order.

Errors: bad data never raises (skipped, counted: ``corrupt_records``,
``corrupt_bytes``). A segment that cannot be opened or read (permissions, I/O error) is
renamed ``*.unreadable`` for an operator, counted (``unreadable_segments``), and skipped.
A failed write or fsync raises ``SpoolWriteError`` (an ``OSError``) saying how many
records may be lost. Warnings name files, never record contents.
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import errno
import fcntl
import os
import re
import secrets
import struct
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import _log

if TYPE_CHECKING:
    from types import TracebackType

    from .producers import Message

SEGMENT_BYTES = 8 << 20
"""Default size past which a new segment is started."""
MIN_SEGMENT_BYTES = 4096
MAGIC = b"\xffKLs"
"""Starts every record (``\\xff`` never occurs in UTF-8, so never in a JSON value)."""
_HEADER = struct.Struct("<4sII")
HEADER_SIZE = _HEADER.size
_TOPIC_LEN = struct.Struct("<H")
_KEY_LEN = struct.Struct("<I")
_NO_KEY = 0xFFFFFFFF
_NO_KEY_BYTES = _KEY_LEN.pack(_NO_KEY)
_CURSOR = struct.Struct("<4sQQ")
_CURSOR_MAGIC = b"KLSc"
_FLUSH_BYTES = 256 << 10
"""Buffered appends past this are written to the file at the next ``append``."""
_NAME = re.compile(r"(\d+-[0-9a-f]{16})(?:\.(\d{10})\.seg|\.lock|\.cursor)")
"""Names of spool files (``fullmatch``): the owner id, and a segment's sequence number."""
_FILE_MODE = 0o600

Position = tuple[int, int]
"""A place in an owner's segments: ``(seq, byte offset)``; ordered like the records."""
Record = tuple[str, "Message"]
"""A spooled message with its topic."""


class SpoolWriteError(OSError):
    """Appended records could not be written or synced (disk full, I/O error).

    The segment is closed (later appends go to a new one); the buffered records are
    dropped. ``uncertain`` records, appended since the last successful sync, may or may not
    be replayed; ``accepted`` of them came from the failing ``append`` call itself.
    """

    def __init__(self, code: int | None, message: str, uncertain: int) -> None:
        super().__init__(code, message)
        self.uncertain = uncertain
        self.accepted = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """Records read in order, with the place to commit once they are delivered."""

    records: list[Record]
    corrupt: int = 0
    """Corrupt regions skipped while reading this batch (also in ``Spool.corrupt_records``)."""
    adopted: bool = False
    """The records are a dead owner's (taken over), not this spool's own."""
    _source: _Source | None = field(default=None, repr=False, compare=False)
    _end: Position = field(default=(0, 0), repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.records)


class _Source:
    """One owner's segments being replayed: the spool's own, or a dead owner's."""

    __slots__ = (
        "cache",
        "cache_base",
        "cache_seq",
        "commit",
        "inflight",
        "last_end",
        "lock_fd",
        "outstanding",
        "owner",
        "read",
        "rfd",
        "rfd_seq",
        "segs",
        "sizes",
    )

    def __init__(self, owner: str, lock_fd: int, sizes: dict[int, int], start: Position) -> None:
        self.owner = owner
        self.lock_fd = lock_fd
        self.sizes = sizes
        """Bytes of each segment on disk (for our current segment: as written so far)."""
        self.segs = sorted(sizes)
        self.read = start
        """Where the next read starts."""
        self.commit = start
        """Everything before this is delivered (what the cursor file says)."""
        self.last_end = start
        """Where the last record read ends: between it and ``read`` there are no records."""
        self.inflight: deque[tuple[Position, int]] = deque()
        """Batches read and not committed: (end, record count)."""
        self.outstanding = 0
        self.rfd: int | None = None
        self.rfd_seq = -1
        self.cache = b""
        self.cache_base = 0
        self.cache_seq = -1

    def drop(self, seq: int) -> int:
        """Forget segment ``seq`` (deleted or skipped); its size."""
        if seq in self.sizes:
            self.segs.remove(seq)
        if self.rfd_seq == seq:
            self.close_reader()
        return self.sizes.pop(seq, 0)

    def close_reader(self) -> None:
        """Close the segment being read and forget its bytes."""
        if self.rfd is not None:
            os.close(self.rfd)
        self.rfd, self.rfd_seq = None, -1
        self.cache, self.cache_seq = b"", -1


class Spool:
    """This process's disk spool in a (possibly shared) ``directory``, bounded by
    ``max_bytes`` on disk, including the dead owners' segments it took over; segments of
    ``segment_bytes`` (at most ``max_bytes``)."""

    __slots__ = (
        "_adopted",
        "_buf",
        "_closed",
        "_dir_fd",
        "_dirty_data",
        "_dirty_dir",
        "_own",
        "_own_pending",
        "_size",
        "_unsynced",
        "_write_fd",
        "_write_seq",
        "_written",
        "corrupt_bytes",
        "corrupt_records",
        "directory",
        "max_bytes",
        "owner",
        "segment_bytes",
        "unreadable_segments",
        "write_errors",
    )

    def __init__(
        self, directory: Path | str, max_bytes: int, *, segment_bytes: int = SEGMENT_BYTES
    ) -> None:
        directory = Path(directory)
        if segment_bytes < MIN_SEGMENT_BYTES:
            raise ValueError(
                f"spool {directory}: segment_bytes must be at least {MIN_SEGMENT_BYTES}, "
                f"not {segment_bytes}"
            )
        if max_bytes < MIN_SEGMENT_BYTES:
            raise ValueError(
                f"spool {directory}: max_bytes must be at least {MIN_SEGMENT_BYTES}, "
                f"not {max_bytes}"
            )
        _prepare(directory)
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max_bytes)
        self.owner = f"{os.getpid()}-{secrets.token_hex(8)}"
        lock_fd = _create_lock(directory, self.owner)
        try:
            self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            _unlink(directory / f"{self.owner}.lock")
            os.close(lock_fd)
            raise
        self._own = _Source(self.owner, lock_fd, {}, (0, 0))
        self._adopted: list[_Source] = []
        self._buf = bytearray()
        self._write_fd: int | None = None
        self._write_seq = 0
        """Our segment being written (created at its first flush); earlier ones are final."""
        self._written = 0
        """Bytes written to it (not counting the buffer)."""
        self._size = 0
        self._own_pending = 0
        self._unsynced = 0
        """Records appended since the last successful sync (what a power loss may lose)."""
        self._dirty_data = False
        self._dirty_dir = True
        self._closed = False
        self.corrupt_records = 0
        """Corrupt regions skipped when reading (torn tails, damaged records)."""
        self.corrupt_bytes = 0
        self.unreadable_segments = 0
        """Segments that could not be opened or read (renamed ``*.unreadable``, skipped)."""
        self.write_errors = 0

    def __repr__(self) -> str:
        return (
            f"<Spool {self.directory} owner={self.owner} bytes={self._size} "
            f"pending={self.records_pending} adopted={len(self._adopted)}>"
        )

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- accounting ----------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        """Bytes held on disk (or buffered for it): ours and the owners' taken over."""
        return self._size

    @property
    def records_pending(self) -> int:
        """Records appended and not committed, plus those of dead owners read and not
        committed (the others are counted only as they are read)."""
        return self._own_pending + sum(source.outstanding for source in self._adopted)

    @property
    def empty(self) -> bool:
        """Nothing to replay or commit (dead owners not yet taken over aside)."""
        return not self._adopted and self._drained()

    @property
    def adopted(self) -> int:
        """Dead owners taken over and not finished."""
        return len(self._adopted)

    # -- writing -------------------------------------------------------------------------

    def append(self, topic: str, messages: list[Message]) -> int:
        """Spool ``messages`` for ``topic``; how many were accepted: the first ones, up to
        ``max_bytes`` (the caller drops the rest as ``spool_full``). Buffered until a flush;
        raises ``SpoolWriteError`` when an earlier buffered write fails."""
        self._check_open()
        if len(self._buf) >= _FLUSH_BYTES:
            self._flush()
        name = topic.encode()
        if len(name) > 0xFFFF:
            raise ValueError(f"spool {self.directory}: topic name over 65535 bytes")
        tpart = _TOPIC_LEN.pack(len(name)) + name
        tcrc = zlib.crc32(tpart)
        fixed = HEADER_SIZE + len(tpart) + 4
        room = self.max_bytes - self._size
        limit = self.segment_bytes
        seg_room = limit - self._written - len(self._buf)
        crc32, head, key_len = zlib.crc32, _HEADER.pack, _KEY_LEN.pack
        parts: list[bytes] = []
        accepted = added = recent = 0
        try:
            for key, value in messages:
                if key is None:
                    kpart, key = _NO_KEY_BYTES, b""
                else:
                    kpart = key_len(len(key))
                size = fixed + len(key) + len(value)
                if size > room:
                    break
                if size > seg_room and seg_room < limit:
                    self._buf += b"".join(parts)
                    parts.clear()
                    self._size += added
                    self._unsynced += recent
                    added = recent = 0
                    self._roll()
                    room, seg_room = self.max_bytes - self._size, limit
                crc = crc32(value, crc32(key, crc32(kpart, tcrc)))
                parts += (head(MAGIC, crc, size - HEADER_SIZE), tpart, kpart, key, value)
                room -= size
                seg_room -= size
                added += size
                accepted += 1
                recent += 1
        except SpoolWriteError as error:
            error.accepted = accepted
            raise
        finally:
            self._buf += b"".join(parts)
            self._size += added
            self._unsynced += recent
            self._own_pending += accepted
        return accepted

    def sync(self) -> None:
        """Write what was appended and fsync it: durable against a power loss from here.
        Raises ``SpoolWriteError`` when the disk refuses."""
        self._check_open()
        self._flush()
        if self._dirty_data and self._write_fd is not None:
            try:
                os.fdatasync(self._write_fd)
            except OSError as exc:
                self._fail(exc, 0)
        self._dirty_data = False
        self._unsynced = 0
        if self._dirty_dir:
            os.fsync(self._dir_fd)  # new segments' names
            self._dirty_dir = False

    def flush(self) -> None:
        """Write what was appended to the file, without syncing it: a SIGKILL of this
        process no longer loses it (a crash of the machine may, until ``sync``)."""
        self._check_open()
        self._flush()

    def _flush(self) -> None:
        """Write the buffer to our current segment (created on first use); no fsync."""
        buf = self._buf
        if not buf:
            return
        done = 0
        try:
            fd = self._write_fd if self._write_fd is not None else self._open_segment()
            with memoryview(buf) as view:
                while done < len(view):
                    done += os.write(fd, view[done:])
        except OSError as exc:
            self._fail(exc, done)
        buf.clear()
        self._written += done
        self._own.sizes[self._write_seq] = self._written
        self._dirty_data = True

    def _open_segment(self) -> int:
        seq = self._write_seq
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(self._segment_path(self.owner, seq), flags, _FILE_MODE)
        self._write_fd, self._written = fd, 0
        self._own.sizes[seq] = 0
        self._own.segs.append(seq)
        self._dirty_dir = True
        return fd

    def _roll(self) -> None:
        """Finish our current segment (written and synced) so the next append starts one."""
        self._flush()
        fd = self._write_fd
        if fd is None:
            return
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self._fail(exc, 0)
        self._unsynced = 0
        self._dirty_data = False
        self._close_segment()

    def _close_segment(self) -> None:
        if self._write_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._write_fd)
        self._write_fd = None
        self._write_seq += 1
        self._written = 0
        self._collect(self._own)

    def _fail(self, exc: OSError, done: int) -> NoReturn:
        """A write (``done`` bytes of the buffer written) or sync failed: close the segment,
        drop the buffer, raise ``SpoolWriteError``."""
        path = self._segment_path(self.owner, self._write_seq)
        self._size -= len(self._buf) - done
        self._buf = bytearray()  # not clear(): the traceback may still hold a view of it
        if self._write_fd is not None:
            self._written += done
            self._own.sizes[self._write_seq] = self._written
            self._close_segment()
        uncertain, self._unsynced = self._unsynced, 0
        self._dirty_data = False
        self.write_errors += 1
        raise SpoolWriteError(
            exc.errno, f"kafka_log_middleware: cannot write spool segment {path}: {exc}", uncertain
        ) from exc

    # -- reading -------------------------------------------------------------------------

    def read(self, max_messages: int = 500, max_bytes: int = 1 << 20) -> Batch:
        """The next records (at least one when any is left, then up to ``max_messages``
        and about ``max_bytes``): dead owners' first, then ours, each in write order.

        Reads past every batch read before and not committed (``rewind`` goes back).
        Writes the append buffer first, so every appended record is readable. Never raises
        for bad data: it is skipped and counted. Empty when nothing is left.
        """
        self._check_open()
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("read needs max_messages >= 1 and max_bytes >= 1")
        self._flush()
        corrupt = self.corrupt_records
        for source in (*self._adopted, self._own):
            records = self._read_source(source, max_messages, max_bytes)
            if records:
                source.inflight.append((source.last_end, len(records)))
                if source is not self._own:
                    source.outstanding += len(records)
                corrupted = self.corrupt_records - corrupt
                adopted = source is not self._own
                return Batch(records, corrupted, adopted, source, source.last_end)
            if not source.inflight:
                self._advance(source, source.read)  # past nothing but corrupt bytes
        return Batch([], self.corrupt_records - corrupt)

    def commit(self, batch: Batch) -> None:
        """Mark ``batch`` delivered, with every batch read before it from its owner: a
        restart does not replay them. Deletes the segments (and dead owners) finished."""
        self._check_open()
        source = batch._source
        if source is None or (source is not self._own and source not in self._adopted):
            return
        end = batch._end
        if end == source.last_end:
            end = source.read  # nothing but corrupt bytes or finished segments in between
        self._advance(source, end)

    def rewind(self) -> None:
        """Forget the batches read and not committed: the next read starts at them again."""
        for source in (*self._adopted, self._own):
            source.read = source.last_end = source.commit
            source.inflight.clear()
            source.outstanding = 0

    def _read_source(self, source: _Source, max_messages: int, max_bytes: int) -> list[Record]:
        """The next records of one owner, moving across its segments as they run out."""
        while True:
            seq, offset = source.read
            size = source.sizes.get(seq)
            if size is None:  # finished, or our next segment, not created yet
                at = bisect.bisect_right(source.segs, seq)
                if at == len(source.segs):
                    return []
                source.read = (source.segs[at], 0)
                continue
            final = source is not self._own or seq < self._write_seq
            if offset >= size:
                if not final:
                    return []
                source.read = (seq + 1, 0)
                continue
            data = self._load(source, seq, offset, size)
            if data is None:
                continue
            base = source.cache_base
            records, pos, last, regions, skipped = _scan(
                data, offset - base, max_messages, max_bytes
            )
            if regions:
                self._count_corrupt(source.owner, seq, regions, skipped)
            source.read = (seq, base + pos)
            if records:
                source.last_end = (seq, base + last)
                if final and base + pos >= size:
                    source.read = (seq + 1, 0)
                return records

    def _load(self, source: _Source, seq: int, offset: int, size: int) -> builtins.bytes | None:
        """Segment ``seq``'s bytes from at most ``offset`` to at most ``size``, read once
        and cached (our current segment: the cache ends where it was written up to, at a
        record's end); None when it cannot be read (then skipped)."""
        base = source.cache_base
        if source.cache_seq == seq and base <= offset < base + len(source.cache):
            return source.cache
        path = self._segment_path(source.owner, seq)
        try:
            if source.rfd_seq != seq:
                source.close_reader()
                source.rfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                source.rfd_seq = seq
            assert source.rfd is not None
            data = os.pread(source.rfd, size - offset, offset)
        except FileNotFoundError:
            self._skip(source, seq)
            return None
        except OSError as exc:
            self._unreadable(source, seq, path, exc)
            return None
        if len(data) < size - offset:  # shorter than we knew: cut by outside hands
            self._size -= size - offset - len(data)
            source.sizes[seq] = offset + len(data)
        source.cache, source.cache_base, source.cache_seq = data, offset, seq
        return data

    def _unreadable(self, source: _Source, seq: int, path: Path, exc: OSError) -> None:
        """Skip a segment that cannot be read, renamed aside for an operator to look at."""
        self.unreadable_segments += 1
        self._skip(source, seq)
        aside = path.with_name(path.name + ".unreadable")
        try:
            os.rename(path, aside)
        except OSError:
            aside = path  # stays; a later take_over of this owner retries it
        _log.warn(
            "spool:unreadable",
            "kafka_log_middleware: cannot read spool segment %s (%s); skipped, left as %s",
            path,
            exc.strerror,
            aside.name,
        )

    def _skip(self, source: _Source, seq: int) -> None:
        """Stop reading segment ``seq`` (gone or unreadable) without deleting it."""
        if source is self._own and seq == self._write_seq:
            self._close_segment()  # and write our next appends to a new one
        self._size -= source.drop(seq)

    def _count_corrupt(self, owner: str, seq: int, regions: int, skipped: int) -> None:
        self.corrupt_records += regions
        self.corrupt_bytes += skipped
        _log.warn(
            "spool:corrupt",
            "kafka_log_middleware: skipped %d corrupt region(s), %d bytes, in spool segment %s",
            regions,
            skipped,
            self._segment_path(owner, seq),
        )

    def _advance(self, source: _Source, end: Position) -> None:
        """Commit ``source`` up to ``end``: cursor, deletions, pending counts."""
        if end <= source.commit:
            return
        source.commit = end
        source.read = max(source.read, end)
        source.last_end = max(source.last_end, end)
        inflight = source.inflight
        while inflight and inflight[0][0] <= end:
            count = inflight.popleft()[1]
            if source is self._own:
                self._own_pending -= count
            else:
                source.outstanding -= count
        self._collect(source)
        if source is not self._own and not source.segs:
            self._finish(source)
            return
        if source is self._own and self._drained():
            self._own_pending = 0  # records lost to write errors or corruption included
            if self._written:
                self._close_segment()  # all delivered: delete it, the next append starts anew
        if source.segs:
            self._write_cursor(source)

    def _drained(self) -> bool:
        """Every record we appended is committed."""
        own = self._own
        if self._buf:
            return False
        if not own.segs:
            return True
        return own.segs == [self._write_seq] and own.commit >= (self._write_seq, self._written)

    def _collect(self, source: _Source) -> None:
        """Delete the source's final segments that are committed to their end."""
        seq, offset = source.commit
        for done in list(source.segs):
            if done > seq or (source is self._own and done >= self._write_seq):
                break
            if done < seq or offset >= source.sizes[done]:
                self._delete(source, done)

    def _delete(self, source: _Source, seq: int) -> None:
        self._size -= source.drop(seq)
        _unlink(self._segment_path(source.owner, seq))

    # -- owners --------------------------------------------------------------------------

    def take_over(self) -> int:
        """Take over the dead owners' files found in the directory (to replay after ours
        and theirs in hand); how many owners with something left to replay."""
        self._check_open()
        held = {self.owner} | {source.owner for source in self._adopted}
        candidates = {}
        for name in os.listdir(self.directory):
            match = _NAME.fullmatch(name)
            if match is not None and match[1] not in held and match[1] not in candidates:
                candidates[match[1]] = self._age(match[1])
        locked = []
        for owner in sorted(candidates, key=lambda owner: (candidates[owner], owner)):
            fd = self._try_lock(owner)
            if fd is not None:
                locked.append((owner, fd))
        if not locked:
            return 0
        segments: dict[str, dict[int, int]] = {owner: {} for owner, _ in locked}
        for name in os.listdir(self.directory):  # again: as it is now that we hold them
            match = _NAME.fullmatch(name)
            if match is not None and match[2] is not None and match[1] in segments:
                with contextlib.suppress(FileNotFoundError):
                    size = os.stat(self.directory / name).st_size
                    segments[match[1]][int(match[2])] = size
        adopted = 0
        for owner, fd in locked:
            adopted += self._adopt(owner, fd, segments[owner])
        return adopted

    def _age(self, owner: str) -> int:
        try:
            return os.stat(self.directory / f"{owner}.lock").st_mtime_ns
        except OSError:
            return 0

    def _try_lock(self, owner: str) -> int | None:
        """The locked fd of ``owner``'s lock file if the owner is dead and nobody replays
        its files; None otherwise."""
        path = self.directory / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine, now = os.fstat(fd), os.stat(path)
        except OSError:  # alive or taken (BlockingIOError), or deleted meanwhile
            os.close(fd)
            return None
        if (mine.st_dev, mine.st_ino) != (now.st_dev, now.st_ino):
            os.close(fd)  # finished and deleted by whoever held it before us
            return None
        return fd

    def _adopt(self, owner: str, fd: int, sizes: dict[int, int]) -> int:
        """Start replaying a dead owner's segments from its cursor; 1 if any are left."""
        start = _read_cursor(self.directory / f"{owner}.cursor")
        if start is None:
            start = (min(sizes, default=0), 0)
        for seq in [seq for seq in sizes if seq < start[0]]:
            del sizes[seq]
            _unlink(self._segment_path(owner, seq))  # committed before a crash
        source = _Source(owner, fd, sizes, start)
        if not sizes:
            self._remove_owner(source)
            return 0
        self._size += sum(sizes.values())
        self._adopted.append(source)
        return 1

    def _finish(self, source: _Source) -> None:
        """A dead owner's records are all committed: delete its files, lock file last."""
        for seq in list(source.segs):
            self._delete(source, seq)
        self._adopted.remove(source)
        self._remove_owner(source)

    def _remove_owner(self, source: _Source) -> None:
        source.close_reader()
        for suffix in (".cursor", ".cursor.tmp", ".lock"):
            _unlink(self.directory / (source.owner + suffix))
        os.close(source.lock_fd)  # unlocks, after the unlink: see take_over

    def _write_cursor(self, source: _Source) -> None:
        """Record ``source.commit`` atomically (not synced: losing it means duplicates)."""
        seq, offset = source.commit
        head = _CURSOR.pack(_CURSOR_MAGIC, seq, offset)
        data = head + _KEY_LEN.pack(zlib.crc32(head))
        path = self.directory / f"{source.owner}.cursor"
        temporary = path.with_name(path.name + ".tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except OSError as exc:
            _log.warn(
                "spool:cursor",
                "kafka_log_middleware: cannot write spool cursor %s (%s); a restart may "
                "replay committed entries again",
                path,
                exc.strerror,
            )

    def _segment_path(self, owner: str, seq: int) -> Path:
        return self.directory / f"{owner}.{seq:010d}.seg"

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Sync, release every lock, keep the files for a later process (``take_over``);
        ours are deleted when all were committed. Idempotent."""
        if self._closed:
            return
        try:
            self.sync()
        finally:
            self._closed = True
            for source in self._adopted:
                source.close_reader()
                os.close(source.lock_fd)
            self._adopted.clear()
            own = self._own
            if self._write_fd is not None:
                os.close(self._write_fd)
                self._write_fd = None
            if self._drained():
                for seq in list(own.segs):
                    self._delete(own, seq)
                self._remove_owner(own)
            else:
                own.close_reader()
                os.close(own.lock_fd)
            os.close(self._dir_fd)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"spool {self.directory} is closed")


def _scan(
    data: bytes, pos: int, max_messages: int, max_bytes: int
) -> tuple[list[Record], int, int, int, int]:
    """Records of ``data`` (a segment's rest) from ``pos``: (records, where the scan
    stopped, where the last record ends, corrupt regions skipped, their bytes)."""
    records: list[Record] = []
    size = len(data)
    topics: dict[bytes, str] = {}
    regions = skipped = 0
    bad = -1  # start of the corrupt region being skipped
    last = pos
    budget = max_bytes
    head = _HEADER.unpack_from
    crc32 = zlib.crc32
    with memoryview(data) as view:
        while pos < size and len(records) < max_messages and budget > 0:
            if data.startswith(MAGIC, pos) and pos + HEADER_SIZE <= size:
                _, crc, length = head(data, pos)
                end = pos + HEADER_SIZE + length
                if end <= size and crc32(view[pos + HEADER_SIZE : end]) == crc:
                    record = _decode(data, pos + HEADER_SIZE, end, topics)
                    if record is not None:
                        if bad >= 0:
                            regions += 1
                            skipped += pos - bad
                            bad = -1
                        records.append(record)
                        budget -= end - pos
                        pos = last = end
                        continue
            if bad < 0:
                bad = pos
            found = data.find(MAGIC, pos + 1)
            pos = size if found < 0 else found
    if bad >= 0:
        regions += 1
        skipped += size - bad
    return records, pos, last, regions, skipped


def _decode(data: bytes, start: int, end: int, topics: dict[bytes, str]) -> Record | None:
    """The record whose body (its CRC checked) is ``data[start:end]``; None if malformed."""
    if end - start < 6:
        return None
    kpos = start + 2 + _TOPIC_LEN.unpack_from(data, start)[0]
    if kpos + 4 > end:
        return None
    (key_len,) = _KEY_LEN.unpack_from(data, kpos)
    vpos = kpos + 4
    key = None
    if key_len != _NO_KEY:
        if vpos + key_len > end:
            return None
        key = data[vpos : vpos + key_len]
        vpos += key_len
    name = data[start + 2 : kpos]
    topic = topics.get(name)
    if topic is None:
        try:
            topic = topics[name] = name.decode()
        except UnicodeDecodeError:
            return None
    return topic, (key, data[vpos:end])


def _prepare(directory: Path) -> None:
    """Create ``directory`` if needed; raise a clear OSError if it cannot hold a spool."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            exc.errno, f"kafka_log_middleware: cannot create spool directory {directory}: {exc}"
        ) from exc
    if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
        raise PermissionError(
            errno.EACCES,
            f"kafka_log_middleware: spool directory {directory} is not readable and writable",
        )


def _create_lock(directory: Path, owner: str) -> int:
    """Our lock file, locked before it appears under its name (see the module docstring)."""
    temporary = directory / f"{owner}.lock.new"
    try:
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    except OSError as exc:
        raise OSError(
            exc.errno, f"kafka_log_middleware: cannot create spool lock file {temporary}: {exc}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(temporary, directory / f"{owner}.lock")
    except BaseException:
        os.close(fd)
        _unlink(temporary)
        raise
    return fd


def _read_cursor(path: Path) -> Position | None:
    """A cursor file's position; None when missing or damaged (replay from the start)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) != _CURSOR.size + 4 or data[:4] != _CURSOR_MAGIC:
        return None
    if _KEY_LEN.unpack_from(data, _CURSOR.size)[0] != zlib.crc32(data[: _CURSOR.size]):
        return None
    _, seq, offset = _CURSOR.unpack_from(data)
    return seq, offset


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _log.warn("spool:unlink", "kafka_log_middleware: cannot delete %s (%s)", path, exc.strerror)
