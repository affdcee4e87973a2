//! A body side of the entry (`include_request_body` / `include_response_body`), written
//! from the request's `BodyCopy` as `bodies.body_fields` builds it.
//!
//! Natively: empty bodies, omitted media types, base64 for binary ones, and UTF-8 text
//! (JSON included) that decodes without a replacement; a body cut at the cap may end in
//! part of a character, which is dropped, as the Python decoder does. Anything else (JSON
//! keys to redact, another charset, invalid UTF-8) is a [`Fallback`].

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::entry::{Fallback, Res};
use crate::{json, Plan};

/// `bodies.header(headers, b"content-type")`: the first `Content-Type` value.
pub fn content_type<'a>(headers: &[(&'a [u8], &'a [u8])]) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(b"content-type"))
        .map(|(_, value)| *value)
}

/// The fields of one side, each as `,"name":value`, from its `BodyCopy`.
pub fn write(
    out: &mut Vec<u8>,
    plan: &Plan,
    copy: &Bound<'_, PyAny>,
    content_type: Option<&[u8]>,
) -> Res<()> {
    let py = copy.py();
    let chunks = copy.getattr(intern!(py, "chunks"))?;
    let chunks = chunks.cast_exact::<PyList>()?;
    let truncated = copy.getattr(intern!(py, "truncated"))?.is_truthy()?;
    let mut joined = Vec::new();
    let first;
    let data: &[u8] = match chunks.len() {
        0 => b"",
        1 => {
            first = chunks.get_item(0)?.cast_into_exact::<PyBytes>()?;
            first.as_bytes()
        }
        _ => {
            for chunk in chunks.iter() {
                joined.extend_from_slice(chunk.cast_exact::<PyBytes>()?.as_bytes());
            }
            &joined
        }
    };
    write_data(out, plan, py, data, truncated, content_type)?;
    if truncated {
        out.extend_from_slice(b",\"body_truncated\":true");
    }
    Ok(())
}

fn write_data(
    out: &mut Vec<u8>,
    plan: &Plan,
    py: Python<'_>,
    data: &[u8],
    truncated: bool,
    content_type: Option<&[u8]>,
) -> Res<()> {
    if data.is_empty() {
        out.extend_from_slice(b",\"body\":\"\"");
        return Ok(());
    }
    let tables = plan.tables.get();
    let kind_of = tables.body_kind.bind(py);
    let content_type = match content_type {
        Some(value) => PyBytes::new(py, value).into_any(),
        None => py.None().into_bound(py),
    };
    let kind = kind_of.call1((content_type, plan.body_patterns.bind(py)))?;
    let kind = kind.cast_exact::<PyTuple>()?;
    let name = kind.get_item(0)?;
    let name = name.cast_exact::<PyString>()?.to_str()?;
    let encoding = kind.get_item(1)?;
    let encoding = encoding.cast_exact::<PyString>()?.to_str()?;
    match name {
        "omit" => {
            out.extend_from_slice(b",\"body_omitted\":");
            json::string(out, &tables.body_omitted_type);
        }
        "binary" => {
            out.extend_from_slice(b",\"body\":\"");
            base64(out, data);
            out.extend_from_slice(b"\",\"body_encoding\":\"base64\"");
        }
        "json" if plan.redact_body_keys => return Err(Fallback),
        "json" | "text" if encoding == "utf-8" => {
            out.extend_from_slice(b",\"body\":\"");
            json::escape_utf8(out, utf8(data, truncated)?);
            out.push(b'"');
        }
        _ => return Err(Fallback),
    }
    Ok(())
}

/// `data` as UTF-8 without a replacement character: whole, or, cut at the cap, without
/// the part of a character it ends in (the incremental decoder keeps that back).
fn utf8(data: &[u8], truncated: bool) -> Res<&[u8]> {
    match std::str::from_utf8(data) {
        Ok(_) => Ok(data),
        Err(error) if truncated && error.error_len().is_none() => Ok(&data[..error.valid_up_to()]),
        Err(_) => Err(Fallback),
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (`base64.b64encode`).
fn base64(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len().div_ceil(3) * 4);
    let mut groups = data.chunks_exact(3);
    for group in &mut groups {
        let n = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        out.extend_from_slice(&[
            ALPHABET[(n >> 18) as usize & 63],
            ALPHABET[(n >> 12) as usize & 63],
            ALPHABET[(n >> 6) as usize & 63],
            ALPHABET[n as usize & 63],
        ]);
    }
    match *groups.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                b'=',
                b'=',
            ]);
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            out.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                ALPHABET[(n >> 6) as usize & 63],
                b'=',
            ]);
        }
        _ => {}
    }
}
