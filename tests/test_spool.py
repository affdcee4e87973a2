"""The disk spool: records come back in write order across segments and restarts, a dead
owner (closed, or killed: a real second process) is taken over by exactly one live spool,
damaged records are skipped and counted, commits survive a reopen, and the bound holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_log_middleware.producers import Message
from kafka_log_middleware.spool import (
    HEADER_SIZE,
    MIN_SEGMENT_BYTES,
    Batch,
    Spool,
    SpoolWriteError,
)

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
SMALL = MIN_SEGMENT_BYTES
Record = tuple[str, Message]


def record_size(topic: str, key: bytes | None, value: bytes) -> int:
    """Bytes one record takes on disk."""
    return HEADER_SIZE + 2 + len(topic.encode()) + 4 + len(key or b"") + len(value)


def messages(count: int, start: int = 0, size: int = 100) -> list[Message]:
    """``count`` distinct messages of ``size``-byte values, every third without a key."""
    return [
        (None if number % 3 == 0 else b"k%d" % number, b"%08d" % number + b"v" * (size - 8))
        for number in range(start, start + count)
    ]


def drain(spool: Spool, max_messages: int = 7) -> tuple[list[Record], int]:
    """Read and commit everything left: the records and the corrupt regions reported."""
    records: list[Record] = []
    corrupt = 0
    while True:
        batch = spool.read(max_messages, 1 << 20)
        corrupt += batch.corrupt
        if not batch.records:
            return records, corrupt
        records += batch.records
        spool.commit(batch)


def names(directory: Path, suffix: str = "") -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(suffix))


def segments(directory: Path) -> list[Path]:
    return [directory / name for name in names(directory, ".seg")]


def run_child(script: str, *args: str) -> subprocess.Popen[str]:
    """A second Python process running ``script`` (with the repository importable)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


# -- writing and reading -----------------------------------------------------------------


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    """Several appends over several segments read back in order, batch by batch."""
    spool = Spool(tmp_path, 1 << 20, segment_bytes=SMALL)
    written: list[Record] = []
    for number, topic in enumerate(["a", "logs", "a", "b"] * 5):
        batch = messages(9, start=number * 9, size=150)
        assert spool.append(topic, batch) == len(batch)
        written += [(topic, message) for message in batch]
    spool.sync()
    assert len(segments(tmp_path)) > 3
    assert spool.records_pending == len(written)
    assert spool.bytes == sum(record_size(t, k, v) for t, (k, v) in written)
    records, corrupt = drain(spool)
    assert records == written
    assert corrupt == 0
    assert spool.empty
    assert spool.records_pending == 0
    assert spool.bytes == 0
    assert segments(tmp_path) == []
    spool.close()
    assert names(tmp_path) == []


def test_no_key_and_empty_key_and_empty_value_stay_distinct(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        batch: list[Message] = [(None, b"x"), (b"", b"x"), (b"", b""), (None, b""), (b"\xff", b"")]
        spool.append("t\N{SNOWMAN}", batch)
        records, _ = drain(spool)
    assert records == [("t\N{SNOWMAN}", message) for message in batch]


def test_unsynced_appends_are_readable(tmp_path: Path) -> None:
    """read() writes the append buffer first: what was appended is read without sync()."""
    with Spool(tmp_path, 1 << 20) as spool:
        spool.append("t", messages(3))
        assert len(spool.read(10, 1 << 20)) == 3
        spool.append("t", messages(2, start=3))
        assert [key for _, (key, _) in spool.read(10, 1 << 20).records] == [None, b"k4"]
        assert spool.read(10, 1 << 20).records == []


def test_read_limits_messages_and_bytes(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        spool.append("t", messages(10, size=100))
        assert len(spool.read(4, 1 << 20)) == 4
        one = record_size("t", b"k4", b"x" * 100)
        assert len(spool.read(100, one * 2)) == 2  # stops once the byte budget is used
        assert len(spool.read(100, 1)) == 1  # at least one, whatever its size
        assert len(spool.read(100, 1 << 20)) == 3


def test_max_bytes_refuses_the_newest(tmp_path: Path) -> None:
    """Appends stop at max_bytes on disk: the first messages are taken, the rest refused;
    once committed, the room is back."""
    spool = Spool(tmp_path, SMALL, segment_bytes=SMALL)
    size = record_size("t", b"k1", b"v" * 100)
    fits = SMALL // size
    same: list[Message] = [(b"k1", b"v" * 100)] * (fits + 5)
    assert spool.append("t", same) == fits
    assert spool.bytes == fits * size
    assert spool.append("t", same[:1]) == 0
    records, _ = drain(spool, 100)
    assert len(records) == fits
    assert spool.bytes == 0
    assert spool.append("t", messages(3, start=1)) == 3
    spool.close()


def test_rewind_reads_the_uncommitted_batches_again(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        spool.append("t", messages(6))
        first = spool.read(2, 1 << 20)
        spool.commit(first)
        second = spool.read(2, 1 << 20)
        spool.read(2, 1 << 20)
        spool.rewind()
        assert spool.read(2, 1 << 20).records == second.records
        assert spool.records_pending == 4


def test_committed_segments_are_deleted(tmp_path: Path) -> None:
    """A segment goes once committed to its end; the last one once everything is."""
    spool = Spool(tmp_path, 1 << 20, segment_bytes=SMALL)
    spool.append("t", messages(120, size=150))
    spool.sync()
    counts = [len(segments(tmp_path))]
    assert counts[0] >= 4
    while batch := spool.read(10, 1 << 20):
        spool.commit(batch)
        counts.append(len(segments(tmp_path)))
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] == 0
    assert spool.bytes == 0
    spool.append("t", messages(1))  # a new segment
    assert spool.bytes == record_size("t", None, b"x" * 100)
    spool.close()
    assert len(segments(tmp_path)) == 1


# -- owners: restarts, crashes, two live spools --------------------------------------------


def test_a_closed_spool_is_replayed_by_the_next_one(tmp_path: Path) -> None:
    first = Spool(tmp_path, 1 << 20, segment_bytes=SMALL)
    first.append("t", messages(60, size=150))
    first.close()
    assert len(segments(tmp_path)) > 1
    second = Spool(tmp_path, 1 << 20, segment_bytes=SMALL)
    assert second.empty  # before take_over it knows of nothing
    assert second.take_over() == 1
    assert not second.empty
    assert second.records_pending == 0  # a dead owner's records count as they are read
    batch = second.read(5, 1 << 20)
    assert second.records_pending == 5
    second.commit(batch)
    records, _ = drain(second)
    assert [message for _, message in batch.records + records] == messages(60, size=150)
    assert second.empty
    assert second.bytes == 0
    assert names(tmp_path) == [f"{second.owner}.lock"]
    assert second.take_over() == 0
    second.close()
    assert names(tmp_path) == []


def test_a_partly_committed_spool_replays_only_the_rest(tmp_path: Path) -> None:
    first = Spool(tmp_path, 1 << 20)
    first.append("t", messages(10))
    first.commit(first.read(4, 1 << 20))
    first.read(3, 1 << 20)  # read, never committed: replayed
    assert first.records_pending == 6
    first.close()
    assert names(tmp_path, ".cursor") == [f"{first.owner}.cursor"]
    with Spool(tmp_path, 1 << 20) as second:
        assert second.take_over() == 1
        records, _ = drain(second)
    assert [message for _, message in records] == messages(10)[4:]


def test_a_damaged_cursor_replays_from_the_start(tmp_path: Path) -> None:
    """No lost records when the cursor is unreadable: duplicates instead."""
    first = Spool(tmp_path, 1 << 20)
    first.append("t", messages(10))
    first.commit(first.read(4, 1 << 20))
    first.close()
    cursor = tmp_path / f"{first.owner}.cursor"
    cursor.write_bytes(b"\0" + cursor.read_bytes()[1:])
    with Spool(tmp_path, 1 << 20) as second:
        second.take_over()
        assert len(drain(second)[0]) == 10


CRASH = """
import os, signal, sys
from kafka_log_middleware.spool import Spool
spool = Spool(sys.argv[1], 1 << 20, segment_bytes=4096)
def batch(start, count):
    return [(b"k%d" % n, b"v%d" % n) for n in range(start, start + count)]
spool.append("t", batch(0, 50))
spool.sync()                  # durable
spool.append("t", batch(50, 10))
spool.read(1, 100)            # writes the buffer to the file: survives a SIGKILL
spool.append("t", batch(60, 5))  # only in memory: lost
print(spool.owner, flush=True)
sys.stdin.readline()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    """A real process appends, then dies by SIGKILL without closing: once dead (and only
    then) its lock can be taken, and everything it wrote to its files is replayed."""
    with run_child(CRASH, str(tmp_path)) as child, Spool(tmp_path, 1 << 20) as spool:
        assert child.stdout is not None and child.stdin is not None
        owner = child.stdout.readline().strip()
        assert spool.take_over() == 0  # alive: its lock is held
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(10) == -9
        assert spool.take_over() == 1
        records, corrupt = drain(spool)
    assert [key for _, (key, _) in records] == [b"k%d" % n for n in range(60)]
    assert corrupt == 0
    assert not any(name.startswith(owner) for name in names(tmp_path))


def test_live_spools_in_one_process_never_take_each_other_over(tmp_path: Path) -> None:
    """flock is per open file description: two spools of one process exclude each other,
    and a dead owner goes to exactly one of them."""
    first = Spool(tmp_path, 1 << 20)
    second = Spool(tmp_path, 1 << 20)
    first.append("t", messages(3))
    second.append("t", messages(3, start=3))
    first.sync()
    second.sync()
    assert first.take_over() == 0
    assert second.take_over() == 0
    dead = Spool(tmp_path, 1 << 20)
    dead.append("t", messages(2, start=10))
    dead.close()
    assert first.take_over() == 1
    assert second.take_over() == 0
    first.close()  # releases its own lock and the dead owner's, files kept
    assert second.take_over() == 2
    records, _ = drain(second, 100)
    everything = messages(3) + messages(3, start=3) + messages(2, start=10)
    assert sorted(value for _, (_, value) in records) == sorted(value for _, value in everything)
    second.close()
    assert names(tmp_path) == []


RACER = """
import json, os, sys, time
from kafka_log_middleware.spool import Spool
spool = Spool(sys.argv[1], 1 << 24, segment_bytes=4096)
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
adopted = spool.take_over()
values = []
while batch := spool.read(3, 1 << 20):
    values += [value.decode() for _, (_, value) in batch.records]
    spool.commit(batch)
spool.close()
print(json.dumps({"adopted": adopted, "values": values}), flush=True)
"""


def test_processes_racing_for_dead_owners_each_take_distinct_ones(tmp_path: Path) -> None:
    """Three processes take over six dead owners at once: every record is replayed by
    exactly one of them, and every file is gone afterwards."""
    spool_dir, go = tmp_path / "spool", tmp_path / "go"
    expected = []
    for owner in range(6):
        dead = Spool(spool_dir, 1 << 20, segment_bytes=SMALL)
        batch: list[Message] = [(None, b"%d-%03d" % (owner, n) + b"." * 100) for n in range(40)]
        dead.append("t", batch)
        dead.close()
        expected += [value.decode() for _, value in batch]
    children = [run_child(RACER, str(spool_dir), str(go)) for _ in range(3)]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for child in children:
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0
        results.append(json.loads(out))
    assert sum(result["adopted"] for result in results) == 6
    replayed = [value for result in results for value in result["values"]]
    assert sorted(replayed) == sorted(expected)  # no duplicates, no loss
    for result in results:  # each owner's records in order
        values = result["values"]
        for owner in {value[0] for value in values}:
            mine = [value for value in values if value[0] == owner]
            assert mine == sorted(mine)
    assert names(spool_dir) == []


def test_segments_without_a_lock_file_are_taken_over(tmp_path: Path) -> None:
    dead = Spool(tmp_path, 1 << 20)
    dead.append("t", messages(4))
    dead.close()
    (tmp_path / f"{dead.owner}.lock").unlink()
    with Spool(tmp_path, 1 << 20) as spool:
        assert spool.take_over() == 1
        assert len(drain(spool)[0]) == 4
    assert names(tmp_path) == []


# -- damage --------------------------------------------------------------------------------


def dead_spool(directory: Path, count: int = 10) -> tuple[Path, int]:
    """A closed spool of ``count`` equal-sized records in one segment: (segment, size)."""
    spool = Spool(directory, 1 << 20)
    spool.append("t", [(b"key", b"%03d" % n + b"v" * 97) for n in range(count)])
    spool.close()
    (segment,) = segments(directory)
    return segment, record_size("t", b"key", b"v" * 100)


def replay(directory: Path) -> tuple[list[int], Spool, int]:
    """What a new spool replays from ``directory``: record numbers, the spool, corrupt
    regions its batches reported."""
    spool = Spool(directory, 1 << 20)
    spool.take_over()
    records, corrupt = drain(spool, 3)
    return [int(value[:3]) for _, (_, value) in records], spool, corrupt


def test_a_torn_tail_is_skipped_and_counted(tmp_path: Path) -> None:
    segment, size = dead_spool(tmp_path)
    os.truncate(segment, 10 * size - 7)
    numbers, spool, corrupt = replay(tmp_path)
    assert numbers == list(range(9))
    assert (spool.corrupt_records, spool.corrupt_bytes, corrupt) == (1, size - 7, 1)
    assert segments(tmp_path) == []  # fully committed, damaged tail and all
    spool.close()


@pytest.mark.parametrize(
    ("where", "what"),
    [
        (HEADER_SIZE + 20, "value"),
        (8, "length, low byte"),
        (11, "length, high byte"),
        (0, "magic"),
        (5, "crc"),
        (HEADER_SIZE, "topic length"),
    ],
)
def test_a_flipped_bit_skips_only_its_record(tmp_path: Path, where: int, what: str) -> None:
    segment, size = dead_spool(tmp_path)
    data = bytearray(segment.read_bytes())
    data[4 * size + where] ^= 0x10
    segment.write_bytes(bytes(data))
    numbers, spool, corrupt = replay(tmp_path)
    assert numbers == [0, 1, 2, 3, 5, 6, 7, 8, 9], what
    assert (spool.corrupt_records, spool.corrupt_bytes, corrupt) == (1, size, 1)
    spool.close()


def test_garbage_between_records_and_several_regions(tmp_path: Path) -> None:
    segment, size = dead_spool(tmp_path)
    data = bytearray(segment.read_bytes())
    for number in (1, 2, 7):  # 1 and 2 are one region
        data[number * size + HEADER_SIZE + 30] ^= 0xFF
    segment.write_bytes(b"junk" + bytes(data) + b"\xffKLs trailing")
    numbers, spool, corrupt = replay(tmp_path)
    assert numbers == [0, 3, 4, 5, 6, 8, 9]
    assert spool.corrupt_records == corrupt == 4
    assert spool.corrupt_bytes == 4 + 3 * size + len(b"\xffKLs trailing")
    spool.close()


def test_an_unreadable_segment_is_set_aside(tmp_path: Path) -> None:
    """A segment that cannot be read is counted, renamed *.unreadable, and the owner's
    other segments are replayed."""
    dead = Spool(tmp_path, 1 << 20, segment_bytes=SMALL)
    dead.append("t", messages(80, size=150))
    dead.close()
    first = segments(tmp_path)[0]
    first.unlink()
    first.mkdir()  # opens, but cannot be read (EISDIR), even as root
    with Spool(tmp_path, 1 << 20) as spool:
        spool.take_over()
        records, _ = drain(spool)
        assert spool.unreadable_segments == 1
    assert 0 < len(records) < 80
    assert [message for _, message in records] == messages(80, size=150)[-len(records) :]
    assert names(tmp_path) == [first.name + ".unreadable"]


def test_a_failed_write_raises_and_the_next_append_starts_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append("t", messages(5))
    spool.sync()
    spool.append("t", messages(3, start=5))

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(SpoolWriteError, match="cannot write spool segment") as caught:
        spool.sync()
    assert caught.value.uncertain == 3
    monkeypatch.undo()
    assert spool.write_errors == 1
    assert spool.append("t", messages(2, start=8)) == 2
    spool.sync()
    assert len(segments(tmp_path)) == 2
    records, _ = drain(spool)
    assert [message for _, message in records] == messages(5) + messages(2, start=8)
    assert spool.empty and spool.records_pending == 0
    spool.close()


# -- configuration -------------------------------------------------------------------------


def test_bad_configuration_is_refused_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{tmp_path}.*segment_bytes must be at least"):
        Spool(tmp_path, 1 << 20, segment_bytes=100)
    with pytest.raises(ValueError, match=f"{tmp_path}.*max_bytes must be at least"):
        Spool(tmp_path, 1000)
    assert Spool(tmp_path / "capped", SMALL).segment_bytes == SMALL
    afile = tmp_path / "file"
    afile.write_bytes(b"")
    with pytest.raises(OSError, match=f"cannot create spool directory {afile}"):
        Spool(afile, 1 << 20)
    with pytest.raises(OSError, match=f"cannot create spool directory {afile}/sub"):
        Spool(afile / "sub", 1 << 20)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OSError, match=str(locked)):
            Spool(locked, 1 << 20)
    assert names(tmp_path) == ["capped", "file"]


def test_a_closed_spool_refuses_use(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "new" / "dir", 1 << 20)
    spool.close()
    spool.close()
    with pytest.raises(ValueError, match="closed"):
        spool.append("t", messages(1))
    with pytest.raises(ValueError, match="closed"):
        spool.read(1, 1)


# -- property: random appends, reads, commits and reopens lose nothing, keep order ---------

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 30), st.integers(0, 300)),
        st.tuples(st.just("commit"), st.integers(1, 20), st.just(0)),
        st.tuples(st.just("read"), st.integers(1, 20), st.just(0)),
        st.tuples(st.just("rewind"), st.just(0), st.just(0)),
        st.tuples(st.just("sync"), st.just(0), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(OPERATIONS)
def test_random_use_delivers_every_record_once_in_order(
    operations: list[tuple[str, int, int]],
) -> None:
    """Whatever the sequence, committing everything at the end has delivered each
    accepted record exactly once, each generation's (owner's) in write order."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        limit = 4 * SMALL
        spool = Spool(directory, limit, segment_bytes=SMALL)
        generation = 0
        accepted: list[bytes] = []
        delivered: list[bytes] = []
        unacknowledged: list[Batch] = []

        def commit(batch: Batch) -> None:
            """Commit ``batch``: and the batches of its owner read before it."""
            owner = batch.records[0][1][1][:4]
            earlier = [b for b in unacknowledged if b.records[0][1][1][:4] == owner]
            for done in earlier:
                delivered.extend(value for _, (_, value) in done.records)
                unacknowledged.remove(done)
            delivered.extend(value for _, (_, value) in batch.records)
            spool.commit(batch)

        for operation, count, size in operations:
            if operation == "append":
                values = [b"%04d%06d" % (generation, len(accepted) + n) for n in range(count)]
                appended: list[Message] = [(None, value + b"x" * size) for value in values]
                taken = spool.append("t", appended)
                accepted += [value for _, value in appended[:taken]]
            elif operation in ("read", "commit"):
                read = spool.read(count, 1 << 20)
                if read.records and operation == "commit":
                    commit(read)
                elif read.records:
                    unacknowledged.append(read)
            elif operation == "rewind":
                spool.rewind()
                unacknowledged.clear()
            elif operation == "sync":
                spool.sync()
            else:
                spool.close()
                generation += 1
                unacknowledged.clear()
                spool = Spool(directory, limit, segment_bytes=SMALL)
                spool.take_over()
            assert spool.bytes <= limit
        spool.close()
        final = Spool(directory, limit, segment_bytes=SMALL)
        final.take_over()
        unacknowledged.clear()
        while rest := final.read(50, 1 << 20):
            delivered.extend(value for _, (_, value) in rest.records)
            final.commit(rest)
        assert final.empty and final.bytes == 0
        final.close()
        assert sorted(delivered) == sorted(accepted)  # each exactly once
        for owner in {value[:4] for value in accepted}:
            mine = [value for value in delivered if value[:4] == owner]
            assert mine == sorted(mine)
        assert os.listdir(directory) == []


def test_counts_track_appends_reads_and_commits(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        assert spool.empty and spool.records_pending == 0 and spool.bytes == 0
        spool.append("t", messages(4))
        assert not spool.empty and spool.records_pending == 4
        batch = spool.read(3, 1 << 20)
        assert spool.records_pending == 4
        spool.commit(batch)
        spool.commit(batch)  # twice: nothing more
        assert spool.records_pending == 1
        spool.commit(spool.read(3, 1 << 20))
        assert spool.empty and spool.records_pending == 0
