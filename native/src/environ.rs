//! The ASGI-shaped scope of a WSGI environ, exactly as `environ.scope_of` builds it, in
//! one call: in Python that look at every environ key was the WSGI door's largest cost
//! per entry.
//!
//! [`scope_of`] returns `None` for an environ it does not reproduce exactly (a key or a
//! path beyond ASCII, a value that is not a plain `str` where a string is expected, a
//! port that is not plain digits, …); the caller then runs the Python function, which
//! also raises whatever such an environ makes it raise.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};

/// `None` from a helper: let the Python function decide.
type Maybe<T> = Option<T>;

/// `environ.scope_of(environ)`, or `None`: run the Python function instead.
#[pyfunction]
pub fn scope_of<'py>(environ: &Bound<'py, PyDict>) -> PyResult<Option<Bound<'py, PyDict>>> {
    let py = environ.py();
    let Some(headers) = headers(environ)? else {
        return Ok(None);
    };
    let Some(http_version) = http_version(environ)? else {
        return Ok(None);
    };
    let (Some(path), Some(query), Some(root), Some(client), Some(server), Some(raw)) = (
        ascii_text(environ, intern!(py, "PATH_INFO"))?,
        latin1_of(environ, intern!(py, "QUERY_STRING"))?,
        ascii_text(environ, intern!(py, "SCRIPT_NAME"))?,
        address(
            environ,
            intern!(py, "REMOTE_ADDR"),
            intern!(py, "REMOTE_PORT"),
        )?,
        address(
            environ,
            intern!(py, "SERVER_NAME"),
            intern!(py, "SERVER_PORT"),
        )?,
        raw_path(environ)?,
    ) else {
        return Ok(None);
    };
    let scope = PyDict::new(py);
    scope.set_item(intern!(py, "type"), intern!(py, "http"))?;
    scope.set_item(intern!(py, "http_version"), http_version)?;
    let method = environ.get_item(intern!(py, "REQUEST_METHOD"))?;
    scope.set_item(
        intern!(py, "method"),
        method.unwrap_or_else(|| intern!(py, "GET").clone().into_any()),
    )?;
    let scheme = environ.get_item(intern!(py, "wsgi.url_scheme"))?;
    scope.set_item(
        intern!(py, "scheme"),
        scheme.unwrap_or_else(|| intern!(py, "http").clone().into_any()),
    )?;
    let path = match path {
        Some(path) if path.len()? > 0 => path,
        _ => intern!(py, "/").clone(),
    };
    scope.set_item(intern!(py, "path"), path)?;
    scope.set_item(intern!(py, "query_string"), PyBytes::new(py, &query))?;
    let root = root.unwrap_or_else(|| intern!(py, "").clone());
    scope.set_item(intern!(py, "root_path"), root)?;
    scope.set_item(intern!(py, "headers"), headers)?;
    scope.set_item(intern!(py, "client"), client)?;
    scope.set_item(intern!(py, "server"), server)?;
    if let Some(raw) = raw {
        let path = raw.split(|&b| b == b'?').next().unwrap_or(&[]);
        scope.set_item(intern!(py, "raw_path"), PyBytes::new(py, path))?;
    }
    Ok(Some(scope))
}

/// The request headers: `HTTP_*` keys and `CONTENT_TYPE`/`CONTENT_LENGTH`, in the
/// environ's order, each non-empty `str` value encoded as latin-1.
fn headers<'py>(environ: &Bound<'py, PyDict>) -> PyResult<Maybe<Bound<'py, PyList>>> {
    let py = environ.py();
    let list = PyList::empty(py);
    let mut name = Vec::with_capacity(32);
    for (key, value) in environ.iter() {
        let Ok(key) = key.cast_exact::<PyString>() else {
            return Ok(None);
        };
        let Ok(key) = key.to_str() else {
            return Ok(None);
        };
        name.clear();
        if let Some(rest) = key.strip_prefix("HTTP_") {
            if !rest.is_ascii() {
                return Ok(None);
            }
            name.extend(rest.bytes().map(|b| match b {
                b'_' => b'-',
                _ => b.to_ascii_lowercase(),
            }));
        } else if key == "CONTENT_TYPE" {
            name.extend_from_slice(b"content-type");
        } else if key == "CONTENT_LENGTH" {
            name.extend_from_slice(b"content-length");
        } else {
            continue;
        }
        let Ok(text) = value.cast_exact::<PyString>() else {
            continue; // not a str: no header (as in Python)
        };
        let Ok(text) = text.to_str() else {
            return Ok(None);
        };
        if text.is_empty() {
            continue;
        }
        let pair = (PyBytes::new(py, &name), PyBytes::new(py, &latin1(text)));
        list.append(PyTuple::new(py, [pair.0, pair.1])?)?;
    }
    Ok(Some(list))
}

/// `SERVER_PROTOCOL` without its `HTTP/` (default `1.1`).
fn http_version<'py>(environ: &Bound<'py, PyDict>) -> PyResult<Maybe<Bound<'py, PyString>>> {
    let py = environ.py();
    let Some(value) = environ.get_item(intern!(py, "SERVER_PROTOCOL"))? else {
        return Ok(Some(intern!(py, "1.1").clone()));
    };
    let Ok(protocol) = value.cast_exact::<PyString>() else {
        return Ok(None);
    };
    let Ok(text) = protocol.to_str() else {
        return Ok(None);
    };
    Ok(Some(match text.strip_prefix("HTTP/") {
        Some(version) => PyString::new(py, version),
        None => protocol.clone(),
    }))
}

/// An ASCII `str` value of `key` as it is (`Some(None)` when absent: the default "").
fn ascii_text<'py>(
    environ: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
) -> PyResult<Maybe<Option<Bound<'py, PyString>>>> {
    let Some(value) = environ.get_item(key)? else {
        return Ok(Some(None));
    };
    let Ok(text) = value.cast_exact::<PyString>() else {
        return Ok(None);
    };
    match text.to_str() {
        Ok(s) if s.is_ascii() => Ok(Some(Some(text.clone()))),
        _ => Ok(None),
    }
}

/// A `str` value of `key` (default "") encoded as latin-1, `?` for what is beyond it.
fn latin1_of(environ: &Bound<'_, PyDict>, key: &Bound<'_, PyString>) -> PyResult<Maybe<Vec<u8>>> {
    let Some(value) = environ.get_item(key)? else {
        return Ok(Some(Vec::new()));
    };
    let Ok(text) = value.cast_exact::<PyString>() else {
        return Ok(None);
    };
    Ok(text.to_str().ok().map(latin1))
}

/// Python's `text.encode("latin-1", "replace")`.
fn latin1(text: &str) -> Vec<u8> {
    if text.is_ascii() {
        return text.as_bytes().to_vec();
    }
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// `environ._address(environ.get(host), environ.get(port))`: `(host, port)`, or None
/// without a host; the port None when absent, empty or no number.
fn address<'py>(
    environ: &Bound<'py, PyDict>,
    host_key: &Bound<'py, PyString>,
    port_key: &Bound<'py, PyString>,
) -> PyResult<Maybe<Bound<'py, PyAny>>> {
    let py = environ.py();
    let host = match environ.get_item(host_key)? {
        None => return Ok(Some(py.None().into_bound(py))),
        Some(host) if host.is_none() => return Ok(Some(host)),
        Some(host) => host,
    };
    let Ok(text) = host.cast_exact::<PyString>() else {
        return Ok(None);
    };
    if text.len()? == 0 {
        return Ok(Some(py.None().into_bound(py)));
    }
    let port: Bound<'py, PyAny> = match environ.get_item(port_key)? {
        None => py.None().into_bound(py),
        Some(port) if port.is_none() => port,
        Some(port) => {
            let Ok(digits) = port.cast_exact::<PyString>() else {
                return Ok(None);
            };
            let Ok(digits) = digits.to_str() else {
                return Ok(None);
            };
            if digits.is_empty() {
                py.None().into_bound(py)
            } else if digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit()) {
                let number: i64 = digits.parse().unwrap_or(0);
                PyInt::new(py, number).into_any()
            } else {
                return Ok(None); // signs, spaces, other digits: Python's int() decides
            }
        }
    };
    Ok(Some(PyTuple::new(py, [host, port])?.into_any()))
}

/// `RAW_URI` or else `REQUEST_URI` as latin-1 bytes (`Some(None)`: neither is set).
fn raw_path(environ: &Bound<'_, PyDict>) -> PyResult<Maybe<Option<Vec<u8>>>> {
    let py = environ.py();
    for key in [intern!(py, "RAW_URI"), intern!(py, "REQUEST_URI")] {
        let Some(value) = environ.get_item(key)? else {
            continue;
        };
        if value.is_none() {
            continue;
        }
        let Ok(text) = value.cast_exact::<PyString>() else {
            return Ok(None);
        };
        let Ok(text) = text.to_str() else {
            return Ok(None);
        };
        if !text.is_empty() {
            return Ok(Some(Some(latin1(text))));
        }
    }
    Ok(Some(None))
}
