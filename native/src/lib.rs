//! `kafka_log_middleware_native`: the Kong log entry of a `CapturedRequest`, encoded in
//! one pass to the exact bytes `orjson.dumps(build_entry(request))` gives.
//!
//! The Python serializer is the specification. [`encode`] returns `None` for any input
//! it does not reproduce exactly (unusual types in the scope, request edits, …), and
//! the caller then runs the Python path. It decides that before calling any hook, so a
//! hook runs once per entry either way. A hook value it cannot write natively makes it
//! return `(entry_bytes, [(field, value), …])`: the caller adds those fields with orjson.

use std::collections::HashMap;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use capture::AsgiCapture;

mod body;
mod capture;
mod entry;
mod environ;
mod json;
mod nginx;
mod records;
mod trace;
mod value;

/// Version of the calling convention between this module and `serializer.py`.
const PROTOCOL: u32 = 10;

/// Constants of `kafka_log_middleware` the entry depends on, given once at import so
/// that the Python modules stay their single source.
#[pyclass(frozen, module = "kafka_log_middleware_native")]
pub struct Tables {
    /// Status → characters of its reason phrase (`nginx_vars.reason_phrase`).
    reasons: HashMap<i64, usize>,
    tls_versions: HashMap<i64, String>,
    ciphers: HashMap<i64, String>,
    server_error_headers: Vec<(Vec<u8>, Vec<u8>)>,
    server_error_body: i64,
    redacted: String,
    /// `nginx_vars.SERVER_NAME`: `$host` of a request that names no host.
    server_name: String,
    edits_key: Py<PyString>,
    /// `serializer._warn_hook(field, exc)`: logs a hook that raised.
    warn: Py<PyAny>,
    /// `bodies._kind(content_type, patterns)`: how a body of that media type is logged.
    body_kind: Py<PyAny>,
    /// `bodies.OMITTED_TYPE`.
    body_omitted_type: String,
}

#[pymethods]
impl Tables {
    #[new]
    #[pyo3(signature = (
        *, reasons, tls_versions, ciphers, server_error_headers, server_error_body,
        redacted, server_name, edits_key, warn, body_kind, body_omitted_type
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        reasons: HashMap<i64, String>,
        tls_versions: HashMap<i64, String>,
        ciphers: HashMap<i64, String>,
        server_error_headers: Vec<(Vec<u8>, Vec<u8>)>,
        server_error_body: i64,
        redacted: String,
        server_name: String,
        edits_key: Py<PyString>,
        warn: Py<PyAny>,
        body_kind: Py<PyAny>,
        body_omitted_type: String,
    ) -> Self {
        let reasons = reasons
            .into_iter()
            .map(|(status, phrase)| (status, phrase.chars().count()))
            .collect();
        Self {
            reasons,
            tls_versions,
            ciphers,
            server_error_headers,
            server_error_body,
            redacted,
            server_name,
            edits_key,
            warn,
            body_kind,
            body_omitted_type,
        }
    }
}

/// What one `KafkaLogConfig` means for the encoder; built once per config.
#[pyclass(frozen, module = "kafka_log_middleware_native")]
pub struct Plan {
    tables: Py<Tables>,
    kong3: bool,
    /// `redact_headers` as latin-1 bytes (the form header names are compared in); a
    /// name that is not latin-1 can match no header and is left out.
    redact: Vec<Vec<u8>>,
    /// `redact_response_headers`, in the same form.
    redact_response: Vec<Vec<u8>>,
    /// kong3 only: `request_id_header` as latin-1 bytes.
    request_id_header: Option<Vec<u8>>,
    workspace: Option<String>,
    workspace_name: String,
    service: Option<Py<PyAny>>,
    route: Option<Py<PyAny>>,
    /// `route` is `routes.matched_route`, which is then computed natively.
    default_route: bool,
    consumer: Option<Py<PyAny>>,
    authenticated_entity: Option<Py<PyAny>>,
    /// `body_content_types`, for `Tables.body_kind`.
    body_patterns: Py<PyAny>,
    /// `redact_body_keys` is set: JSON bodies are left to the Python path.
    redact_body_keys: bool,
}

#[pymethods]
impl Plan {
    /// Raises `ValueError` for a config whose entries only the Python path can build.
    #[new]
    #[pyo3(signature = (
        tables, *, kong3, redact_headers, redact_response_headers, request_id_header,
        workspace, workspace_name,
        service, route, route_is_default, consumer, authenticated_entity,
        body_content_types, redact_body_keys
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        tables: Py<Tables>,
        kong3: bool,
        redact_headers: Vec<Bound<'_, PyString>>,
        redact_response_headers: Vec<Bound<'_, PyString>>,
        request_id_header: Option<String>,
        workspace: Option<Bound<'_, PyAny>>,
        workspace_name: Bound<'_, PyAny>,
        service: Option<Py<PyAny>>,
        route: Option<Py<PyAny>>,
        route_is_default: bool,
        consumer: Option<Py<PyAny>>,
        authenticated_entity: Option<Py<PyAny>>,
        body_content_types: Py<PyAny>,
        redact_body_keys: bool,
    ) -> PyResult<Self> {
        let unsupported = || pyo3::exceptions::PyValueError::new_err("not for the native encoder");
        let names = |names: &[Bound<'_, PyString>]| -> Vec<Vec<u8>> {
            names
                .iter()
                .filter_map(|name| latin1(name.to_str().ok()?))
                .collect()
        };
        let redact = names(&redact_headers);
        let redact_response = names(&redact_response_headers);
        let (request_id_header, workspace, workspace_name) = if kong3 {
            let request_id_header = match request_id_header {
                Some(name) => Some(latin1(&name).ok_or_else(unsupported)?),
                None => None,
            };
            let workspace = match workspace {
                Some(w) => Some(exact_string(&w).ok_or_else(unsupported)?),
                None => None,
            };
            let name = exact_string(&workspace_name).ok_or_else(unsupported)?;
            (request_id_header, workspace, name)
        } else {
            (None, None, String::new())
        };
        Ok(Self {
            tables,
            kong3,
            redact,
            redact_response,
            request_id_header,
            workspace,
            workspace_name,
            service,
            route,
            default_route: route_is_default,
            consumer,
            authenticated_entity,
            body_patterns: body_content_types,
            redact_body_keys,
        })
    }
}

fn latin1(name: &str) -> Option<Vec<u8>> {
    name.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

fn exact_string(value: &Bound<'_, PyAny>) -> Option<String> {
    Some(
        value
            .cast_exact::<PyString>()
            .ok()?
            .to_str()
            .ok()?
            .to_owned(),
    )
}

/// The entry of `request` as JSON bytes; `None`: use the Python path; or
/// `(entry, [(field, value), …])`: add these fields last, with orjson.
///
/// The other arguments are the request's attributes of the same names (passed, not
/// looked up, because Python reads `__slots__` faster).
/// Raises only what the Python path raises too: an exception from a hook that is not
/// an `Exception`, or from the warning callback.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn encode<'py>(
    plan: &Bound<'py, Plan>,
    request: &Bound<'py, PyAny>,
    scope: &Bound<'py, PyAny>,
    status: &Bound<'py, PyAny>,
    response_headers: &Bound<'py, PyAny>,
    body_sent: &Bound<'py, PyAny>,
    body_read: &Bound<'py, PyAny>,
    file_path: &Bound<'py, PyAny>,
    client_gone: &Bound<'py, PyAny>,
    started_at: &Bound<'py, PyAny>,
    t_start: &Bound<'py, PyAny>,
    t_response: &Bound<'py, PyAny>,
    t_end: &Bound<'py, PyAny>,
    trace_id: Option<&str>,
    request_body: &Bound<'py, PyAny>,
    response_body: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Some(numbers) = entry::Numbers::of([
        body_sent,
        body_read,
        client_gone,
        started_at,
        t_start,
        t_response,
        t_end,
    ]) else {
        return Ok(None);
    };
    let facts = entry::Facts {
        request,
        scope,
        status,
        response_headers,
        file_path,
        numbers,
        trace_id,
        request_body,
        response_body,
        request_copy: None,
        response_copy: None,
    };
    // One buffer per thread, reused: taken, not borrowed, so that a hook that encodes
    // an entry of its own simply gets a new one.
    let mut out = BUFFER.take();
    out.clear();
    let result = encode_into(&mut out, plan.get(), &facts);
    if out.capacity() <= MAX_KEPT_BUFFER {
        BUFFER.set(out);
    }
    result
}

/// The entries of `requests[start..]` that take the fast path, as the messages
/// `(None, entry)` of one outbox, with their total bytes, and what stopped the run.
///
/// A request takes it while its `config` is `config`, its scope has no `upstream_key`,
/// and its entry (bodies written from their `BodyCopy`) comes out as plain bytes of at
/// most `limit`.
/// The run stops at the first that does not; `rest` says how that one goes on: `None`
/// (no hook ran for it: `encode_entry` from the start), the entry's bytes (over
/// `limit`), `(entry, fields)` (as from [`encode`]), or the exception it raised (the
/// `encode_entry` call would have raised it). `trace_id`: `tracing.trace_id`, when
/// the config logs trace ids.
#[pyfunction]
#[pyo3(signature = (plan, config, requests, start, limit, upstream_key, trace_id=None))]
fn encode_run<'py>(
    plan: &Bound<'py, Plan>,
    config: &Bound<'py, PyAny>,
    requests: &Bound<'py, PyList>,
    start: usize,
    limit: usize,
    upstream_key: &Bound<'py, PyString>,
    trace_id: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyList>, usize, Option<Bound<'py, PyAny>>)> {
    let py = requests.py();
    let messages = PyList::empty(py);
    let mut size = 0;
    let mut out = BUFFER.take();
    let mut rest = None;
    for index in start..requests.len() {
        out.clear();
        let request = requests.get_item(index)?;
        match encode_one(
            &mut out,
            plan.get(),
            config,
            &request,
            upstream_key,
            trace_id,
        ) {
            Ok(Some(value)) => match value.cast_exact::<PyBytes>() {
                Ok(bytes) if bytes.as_bytes().len() <= limit => {
                    size += bytes.as_bytes().len();
                    messages.append((py.None(), bytes))?;
                }
                _ => {
                    rest = Some(value);
                    break;
                }
            },
            Ok(None) => break,
            Err(error) => {
                rest = Some(error.into_value(py).into_bound(py).into_any());
                break;
            }
        }
    }
    if out.capacity() <= MAX_KEPT_BUFFER {
        BUFFER.set(out);
    }
    Ok((messages, size, rest))
}

/// One request of [`encode_run`]: its entry, or `None` before any hook ran for it.
fn encode_one<'py>(
    out: &mut Vec<u8>,
    plan: &Plan,
    config: &Bound<'py, PyAny>,
    request: &Bound<'py, PyAny>,
    upstream_key: &Bound<'py, PyString>,
    trace_fn: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let read = match request.cast::<AsgiCapture>() {
        Ok(capture) => Read::of_capture(capture, config)?,
        Err(_) => Read::of_attributes(request, config)?,
    };
    let Some(read) = read else {
        return Ok(None);
    };
    if read.scope.contains(upstream_key)? {
        return Ok(None);
    }
    let trace = match trace_fn {
        Some(f) => match trace::trace_id(&read.span, &read.scope)? {
            Some(known) => known,
            None => f.call1((request,))?.extract::<Option<String>>()?,
        },
        None => None,
    };
    let none = request.py().None().into_bound(request.py());
    let facts = entry::Facts {
        request,
        scope: &read.scope,
        status: &read.status,
        response_headers: &read.response_headers,
        file_path: &read.file_path,
        numbers: read.numbers,
        trace_id: trace.as_deref(),
        request_body: &none,
        response_body: &none,
        request_copy: (!read.request_copy.is_none()).then_some(&read.request_copy),
        response_copy: (!read.response_copy.is_none()).then_some(&read.response_copy),
    };
    encode_into(out, plan, &facts)
}

/// The facts of a request of [`encode_run`]: by attribute, or from the ASGI door's struct.
struct Read<'py> {
    scope: Bound<'py, PyAny>,
    status: Bound<'py, PyAny>,
    response_headers: Bound<'py, PyAny>,
    file_path: Bound<'py, PyAny>,
    /// `trace_id`: the span id recorded on the request path.
    span: Bound<'py, PyAny>,
    request_copy: Bound<'py, PyAny>,
    response_copy: Bound<'py, PyAny>,
    numbers: entry::Numbers,
}

impl<'py> Read<'py> {
    /// `None` for a request of another config, or with counts or times of a type only
    /// the Python path reads exactly.
    fn of_attributes(
        request: &Bound<'py, PyAny>,
        config: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Self>> {
        let py = request.py();
        if !request.getattr(intern!(py, "config"))?.is(config) {
            return Ok(None);
        }
        let get = |name: &Bound<'py, PyString>| request.getattr(name);
        let Some(numbers) = entry::Numbers::of([
            &get(intern!(py, "body_sent"))?,
            &get(intern!(py, "body_read"))?,
            &get(intern!(py, "client_gone"))?,
            &get(intern!(py, "started_at"))?,
            &get(intern!(py, "t_start"))?,
            &get(intern!(py, "t_response"))?,
            &get(intern!(py, "t_end"))?,
        ]) else {
            return Ok(None);
        };
        Ok(Some(Self {
            scope: get(intern!(py, "scope"))?,
            status: get(intern!(py, "status"))?,
            response_headers: get(intern!(py, "response_headers"))?,
            file_path: get(intern!(py, "file_path"))?,
            span: get(intern!(py, "trace_id"))?,
            request_copy: get(intern!(py, "request_body"))?,
            response_copy: get(intern!(py, "response_body"))?,
            numbers,
        }))
    }

    /// `None` for a request of another config.
    fn of_capture(
        capture: &Bound<'py, AsgiCapture>,
        config: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Self>> {
        let py = capture.py();
        let this = capture.try_borrow()?;
        if !this.config.as_ref().is_some_and(|c| c.bind(py).is(config)) {
            return Ok(None);
        }
        let bound = |field: &Option<Py<PyAny>>| {
            field
                .as_ref()
                .map_or_else(|| py.None().into_bound(py), |f| f.bind(py).clone())
        };
        Ok(Some(Self {
            scope: bound(&this.scope),
            status: bound(&this.status),
            response_headers: bound(&this.response_headers),
            file_path: bound(&this.file_path),
            span: bound(&this.trace_id),
            request_copy: bound(&this.request_body),
            response_copy: bound(&this.response_body),
            numbers: entry::Numbers {
                body_sent: this.body_sent,
                body_read: this.body_read,
                client_gone: this.client_gone,
                started_at: this.started_at,
                t_start: this.t_start,
                t_response: this.t_response,
                t_end: this.t_end,
            },
        }))
    }
}

thread_local! {
    static BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}
/// Larger buffers (an entry with huge headers) are freed rather than kept.
const MAX_KEPT_BUFFER: usize = 64 * 1024;

fn encode_into<'py>(
    out: &mut Vec<u8>,
    plan: &Plan,
    facts: &entry::Facts<'_, 'py>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = facts.request.py();
    let Some(scope) = entry::write_head(out, plan, facts) else {
        return Ok(None);
    };
    let pending = entry::write_tail(out, plan, facts.request, scope, facts.trace_id)?;
    out.push(b'}');
    let data = PyBytes::new(py, out).into_any();
    if pending.is_empty() {
        return Ok(Some(data));
    }
    let fields = PyList::empty(py);
    for (name, value) in pending {
        fields.append((name, value))?;
    }
    Ok(Some(
        PyTuple::new(py, [data, fields.into_any()])?.into_any(),
    ))
}

#[pymodule]
mod kafka_log_middleware_native {
    #[pymodule_export]
    use super::capture::AsgiCapture;
    #[pymodule_export]
    use super::environ::scope_of;
    #[pymodule_export]
    use super::records::{batch, records};
    #[pymodule_export]
    use super::{encode, encode_run, Plan, Tables};

    #[pymodule_export]
    const PROTOCOL: u32 = super::PROTOCOL;
}
