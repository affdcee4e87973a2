//! `tracing.trace_id(request)` for a config that logs trace ids: the active span's id
//! recorded on the request path, else the one `traceparent` header's (W3C Trace Context
//! level 1), as 32 lowercase hex digits.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt};

use crate::entry::{pairs, Pairs};

/// `Some(the id or None)`, or `None` when only the Python function can tell (a span id
/// or headers of unusual types).
pub fn trace_id(
    span: &Bound<'_, PyAny>,
    scope: &Bound<'_, PyAny>,
) -> PyResult<Option<Option<String>>> {
    let py = span.py();
    let Ok(span) = span.cast_exact::<PyInt>() else {
        return Ok(None);
    };
    let Ok(span) = span.extract::<u128>() else {
        return Ok(None);
    };
    if span != 0 {
        return Ok(Some(Some(format!("{span:032x}"))));
    }
    let Ok(scope) = scope.cast_exact::<PyDict>() else {
        return Ok(None);
    };
    let Some(headers) = scope.get_item(intern!(py, "headers"))? else {
        return Ok(Some(None));
    };
    let mut items = Pairs::new();
    if pairs(&headers, &mut items).is_err() {
        return Ok(None);
    }
    let mut found = None;
    for (name, value) in &items {
        if name.as_bytes().eq_ignore_ascii_case(b"traceparent") {
            if found.is_some() {
                return Ok(Some(None)); // several: which one was meant is unknown
            }
            found = Some(value);
        }
    }
    Ok(Some(found.and_then(|value| parse(strip(value.as_bytes())))))
}

/// `value.strip(b" \t")`.
fn strip(value: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !blank(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// `tracing._parse`: version "-" trace-id "-" parent-id "-" trace-flags; a future
/// version may append "-" and more, version 00 must end there.
fn parse(value: &[u8]) -> Option<String> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let version = &value[..2];
    if !hex(version) || version == b"ff" {
        return None;
    }
    if value.len() > 55 && (version == b"00" || value[55] != b'-') {
        return None;
    }
    let (trace, parent, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !hex(trace) || !hex(parent) || !hex(flags) {
        return None;
    }
    if trace.iter().all(|&b| b == b'0') || parent.iter().all(|&b| b == b'0') {
        return None;
    }
    String::from_utf8(trace.to_vec()).ok()
}
