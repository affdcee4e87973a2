"""Natively built record batches are byte for byte those of aiokafka's ``BatchBuilder``
(same messages, timestamp and producer state), and take the same messages under the
size limit. That the broker takes them is shown by every aiokafka test against it.

Skipped when the native module is not built, failed under CI (tests/native_module.py).
"""

from __future__ import annotations

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_log_middleware import record_batch
from kafka_log_middleware.producers import Message
from kafka_log_middleware.record_batch import NativeBatch

from .native_module import native_module

native_module()

TIMESTAMP = 1_764_000_000_123


def aiokafka_batch(
    messages: list[Message], start: int, max_bytes: int, state: tuple[int, int, int] | None
) -> tuple[int, bytes]:
    """What aiokafka builds of ``messages[start:]``: (messages taken, bytes)."""
    batch = BatchBuilder(max_bytes, 0)
    for key, value in messages[start:]:
        if batch.append(key=key, value=value, timestamp=TIMESTAMP) is None:
            break
    if state is not None:
        batch._set_producer_state(*state)
    return batch.record_count(), bytes(batch._build())


def native_batch(
    messages: list[Message], start: int, max_bytes: int, state: tuple[int, int, int] | None
) -> tuple[int, bytes]:
    batch = NativeBatch(messages, start, max_bytes)
    batch._timestamp = TIMESTAMP
    if state is not None:
        batch._set_producer_state(*state)
    built = batch._build()
    assert batch.size() == len(built)
    assert batch._build() is built  # built once
    return batch.record_count(), built


# Sizes around the varint boundaries (63/64, 8191/8192 after zig-zag) and beyond.
_sizes = st.sampled_from([0, 1, 62, 63, 64, 65, 300, 8191, 8192, 8193, 70_000])
_bytes = st.one_of(st.binary(max_size=200), _sizes.map(lambda n: b"v" * n))
_messages = st.lists(st.tuples(st.one_of(st.none(), _bytes), _bytes), min_size=1, max_size=60)
_states = st.one_of(
    st.none(),
    st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**15 - 1), st.integers(0, 2**31 - 1)),
)


@settings(max_examples=300, deadline=None)
@given(
    messages=_messages,
    start=st.integers(0, 59),
    max_bytes=st.sampled_from([1, 100, 1000, 20_000, 1_048_576]),
    state=_states,
)
def test_a_native_batch_is_aiokafkas(
    messages: list[Message], start: int, max_bytes: int, state: tuple[int, int, int] | None
) -> None:
    start = min(start, len(messages) - 1)
    assert native_batch(messages, start, max_bytes, state) == aiokafka_batch(
        messages, start, max_bytes, state
    )


def test_the_first_message_is_taken_even_when_over_the_limit() -> None:
    messages: list[Message] = [(None, b"x" * 5000), (None, b"y")]
    assert native_batch(messages, 0, 1000, None)[0] == 1
    assert native_batch(messages, 0, 1000, None) == aiokafka_batch(messages, 0, 1000, None)


def test_a_batch_is_closed_to_single_messages() -> None:
    batch = NativeBatch([(None, b"x")], 0, 1000)
    assert batch.closed()
    assert batch.append(timestamp=None, key=None, value=b"y") is None  # type: ignore[func-returns-value]
    assert batch.record_count() == 1


def test_messages_must_be_pairs_of_bytes() -> None:
    with pytest.raises(TypeError):
        NativeBatch([(None, "text")], 0, 1000)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        NativeBatch([(b"k",)], 0, 1000)  # type: ignore[list-item]


def test_only_uncompressed_batches_are_built_natively() -> None:
    assert record_batch.available({"compression_type": None})
    assert not record_batch.available({"compression_type": "gzip"})
