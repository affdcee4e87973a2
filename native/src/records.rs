//! Kafka record batches (message format v2, uncompressed), built in one call per batch
//! instead of one Python call per message: the bytes aiokafka's
//! `DefaultRecordBatchBuilder` writes, for messages without headers that share one
//! timestamp.
//!
//! A batch is a 61-byte header followed by its records; `records` writes the records,
//! `batch` the header around them once the producer state (idempotence) is known. The
//! CRC-32C covers everything from the attributes on.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

/// Bytes before the first record.
pub const HEADER_SIZE: usize = 61;
/// Offset of the CRC, and of the attributes (the CRC covers the rest).
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const TRANSACTIONAL: i16 = 0x10;

/// Append `value` as a zig-zag varint (Kafka's varint and varlong).
fn varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_size(value: i64) -> usize {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    let mut size = 1;
    while v >= 0x80 {
        v >>= 7;
        size += 1;
    }
    size
}

/// Length as a varint, then the bytes; `None` as length -1.
fn field(out: &mut Vec<u8>, data: Option<&[u8]>) {
    match data {
        Some(data) => {
            varint(out, data.len() as i64);
            out.extend_from_slice(data);
        }
        None => varint(out, -1),
    }
}

/// The records of `messages[start:]` that fit a batch of `max_bytes` (the first always
/// does, as in aiokafka), and how many they are: `(records, count)`.
#[pyfunction]
pub fn records<'py>(
    messages: &Bound<'py, PyList>,
    start: usize,
    max_bytes: usize,
) -> PyResult<(Bound<'py, PyBytes>, usize)> {
    let py = messages.py();
    let mut out = Vec::with_capacity(max_bytes.min(1 << 20));
    let mut record = Vec::new();
    let mut count = 0usize;
    for index in start..messages.len() {
        let item = messages.get_item(index)?;
        let pair = item.cast::<PyTuple>()?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err("a message is a (key, value) pair"));
        }
        let (key, value) = (pair.get_item(0)?, pair.get_item(1)?);
        let key = if key.is_none() {
            None
        } else {
            Some(key.cast::<PyBytes>()?.as_bytes())
        };
        let value = value.cast::<PyBytes>()?.as_bytes();
        record.clear();
        record.push(0); // attributes
        varint(&mut record, 0); // timestamp delta: one timestamp per batch
        varint(&mut record, count as i64); // offset delta
        field(&mut record, key);
        field(&mut record, Some(value));
        varint(&mut record, 0); // no headers
        let size = varint_size(record.len() as i64) + record.len();
        // `>=`, as aiokafka's compiled builder (its pure-Python one says `>`).
        if count > 0 && HEADER_SIZE + out.len() + size >= max_bytes {
            break;
        }
        varint(&mut out, record.len() as i64);
        out.extend_from_slice(&record);
        count += 1;
    }
    Ok((PyBytes::new(py, &out), count))
}

/// The whole batch: the header (with its CRC) and `records`, `count` of them, all
/// stamped `timestamp` (ms); the producer fields as the idempotent producer sets them.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub fn batch<'py>(
    py: Python<'py>,
    records: &[u8],
    count: i32,
    timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
) -> Bound<'py, PyBytes> {
    let length = HEADER_SIZE + records.len();
    PyBytes::new_with(py, length, |out| {
        out[..8].copy_from_slice(&0i64.to_be_bytes()); // base offset: the broker's
        out[8..12].copy_from_slice(&((length - 12) as i32).to_be_bytes());
        out[12..16].copy_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
        out[16] = 2; // magic
        let attributes: i16 = if transactional { TRANSACTIONAL } else { 0 };
        out[21..23].copy_from_slice(&attributes.to_be_bytes());
        out[23..27].copy_from_slice(&(count - 1).to_be_bytes()); // last offset delta
        out[27..35].copy_from_slice(&timestamp.to_be_bytes()); // first timestamp
        out[35..43].copy_from_slice(&timestamp.to_be_bytes()); // max timestamp
        out[43..51].copy_from_slice(&producer_id.to_be_bytes());
        out[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
        out[53..57].copy_from_slice(&base_sequence.to_be_bytes());
        out[57..61].copy_from_slice(&count.to_be_bytes());
        out[HEADER_SIZE..].copy_from_slice(records);
        let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
        out[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    })
    .expect("writing into a new bytes object cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_zig_zag() {
        for (value, expected) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (63, vec![126]),
            (64, vec![128, 1]),
            (300, vec![216, 4]),
        ] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out, expected, "{value}");
            assert_eq!(varint_size(value), expected.len());
        }
    }
}
