//! Python values from hooks and `service`, written as orjson would write them.
//!
//! Only the plain types are written here: exact `dict` (with exact `str` keys), `list`,
//! `tuple`, `str`, `int` (64-bit), `bool` and `None`. For anything else (floats,
//! subclasses, dataclasses, enums, surrogates, big ints, deep nesting) [`write`]
//! returns false and the caller lets orjson finish the entry in Python.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyList, PyString, PyTuple};

use crate::json;

/// Nesting written natively; deeper values go to orjson (whose limit is 254 in an entry).
const MAX_DEPTH: usize = 32;

/// Append `value` as JSON; false (with `out` possibly partly written) when it cannot.
pub fn write(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) -> bool {
    write_nested(out, value, 0)
}

fn write_nested(out: &mut Vec<u8>, value: &Bound<'_, PyAny>, depth: usize) -> bool {
    if let Ok(s) = value.cast_exact::<PyString>() {
        return write_str(out, s);
    }
    if value.is_none() {
        out.extend_from_slice(b"null");
        return true;
    }
    if let Ok(b) = value.cast_exact::<PyBool>() {
        out.extend_from_slice(if b.is_true() { b"true" } else { b"false" });
        return true;
    }
    if value.is_exact_instance_of::<PyInt>() {
        return write_int(out, value);
    }
    if depth >= MAX_DEPTH {
        return false;
    }
    if let Ok(dict) = value.cast_exact::<PyDict>() {
        return write_dict(out, dict, depth + 1);
    }
    if let Ok(list) = value.cast_exact::<PyList>() {
        return write_items(out, list.iter(), depth + 1);
    }
    if let Ok(tuple) = value.cast_exact::<PyTuple>() {
        return write_items(out, tuple.iter(), depth + 1);
    }
    false
}

fn write_str(out: &mut Vec<u8>, s: &Bound<'_, PyString>) -> bool {
    match s.to_str() {
        Ok(text) => {
            json::string(out, text);
            true
        }
        Err(_) => false, // lone surrogates: orjson raises, in Python
    }
}

fn write_int(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) -> bool {
    if let Ok(n) = value.extract::<i64>() {
        json::int(out, n);
        true
    } else if let Ok(n) = value.extract::<u64>() {
        out.extend_from_slice(n.to_string().as_bytes());
        true
    } else {
        false
    }
}

fn write_dict(out: &mut Vec<u8>, dict: &Bound<'_, PyDict>, depth: usize) -> bool {
    out.push(b'{');
    for (i, (key, item)) in dict.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let Ok(key) = key.cast_exact::<PyString>() else {
            return false;
        };
        if !write_str(out, key) {
            return false;
        }
        out.push(b':');
        if !write_nested(out, &item, depth) {
            return false;
        }
    }
    out.push(b'}');
    true
}

fn write_items<'py>(
    out: &mut Vec<u8>,
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    depth: usize,
) -> bool {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if !write_nested(out, &item, depth) {
            return false;
        }
    }
    out.push(b']');
    true
}
