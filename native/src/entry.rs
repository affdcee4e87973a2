//! The entry itself, in `build_entry`'s key order, from the request's raw facts.
//!
//! [`write_head`] writes everything up to the optional entity fields and gives up
//! ([`Fallback`]) on any fact it does not reproduce exactly; [`write_tail`] then adds
//! `service`, `route`, `consumer` and `authenticated_entity`, running the hooks.

use pyo3::exceptions::{PyAttributeError, PyException};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString, PyTuple};
use pyo3::{intern, CastError, CastIntoError};

use smallvec::SmallVec;

use crate::nginx::{self, Arg, Fields};
use crate::{body, json, value, Plan, Tables};

/// The Python path must build this entry (never an error of its own: the Python path
/// meets the same fact and raises, or handles it).
pub struct Fallback;

impl From<PyErr> for Fallback {
    fn from(_: PyErr) -> Self {
        Fallback
    }
}

impl From<CastError<'_, '_>> for Fallback {
    fn from(_: CastError<'_, '_>) -> Self {
        Fallback
    }
}

impl From<CastIntoError<'_>> for Fallback {
    fn from(_: CastIntoError<'_>) -> Self {
        Fallback
    }
}

pub type Res<T> = Result<T, Fallback>;
type Pair<'py> = (Bound<'py, PyBytes>, Bound<'py, PyBytes>);
pub type Pairs<'py> = SmallVec<[Pair<'py>; 12]>;
type Header<'a> = (&'a [u8], &'a [u8]);
type Headers<'a> = SmallVec<[Header<'a>; 12]>;

/// The request's facts, as `CapturedRequest` holds them.
pub struct Facts<'a, 'py> {
    /// The `CapturedRequest` itself, for the hooks.
    pub request: &'a Bound<'py, PyAny>,
    pub scope: &'a Bound<'py, PyAny>,
    pub status: &'a Bound<'py, PyAny>,
    pub response_headers: &'a Bound<'py, PyAny>,
    pub file_path: &'a Bound<'py, PyAny>,
    pub numbers: Numbers,
    /// The trace id to log as `{"w3c": ...}` (32 lowercase hex digits), if any.
    pub trace_id: Option<&'a str>,
    /// The request's body fields (`bodies.body_fields`), or None.
    pub request_body: &'a Bound<'py, PyAny>,
    /// The response's body fields, or None.
    pub response_body: &'a Bound<'py, PyAny>,
    /// The request's `BodyCopy`, to write natively in place of `request_body`'s fields.
    pub request_copy: Option<&'a Bound<'py, PyAny>>,
    /// The response's `BodyCopy`, likewise.
    pub response_copy: Option<&'a Bound<'py, PyAny>>,
}

/// The request's counts, flag and times, as `CapturedRequest` holds them.
pub struct Numbers {
    pub body_sent: i64,
    pub body_read: i64,
    pub client_gone: bool,
    pub started_at: f64,
    pub t_start: f64,
    pub t_response: f64,
    pub t_end: f64,
}

impl Numbers {
    /// From the attributes' values; `None` for any of a type only Python reads exactly.
    pub fn of(values: [&Bound<'_, PyAny>; 7]) -> Option<Self> {
        let [body_sent, body_read, client_gone, started_at, t_start, t_response, t_end] = values;
        Some(Self {
            body_sent: int_of(body_sent).ok()?,
            body_read: int_of(body_read).ok()?,
            client_gone: client_gone.is_truthy().ok()?,
            started_at: float_of(started_at).ok()?,
            t_start: float_of(t_start).ok()?,
            t_response: float_of(t_response).ok()?,
            t_end: float_of(t_end).ok()?,
        })
    }
}

/// Everything before `service`; the scope on success, for the hooks.
pub fn write_head<'a, 'py>(
    out: &mut Vec<u8>,
    plan: &Plan,
    facts: &Facts<'a, 'py>,
) -> Option<&'a Bound<'py, PyDict>> {
    head(out, plan, facts).ok()
}

fn head<'a, 'py>(
    out: &mut Vec<u8>,
    plan: &Plan,
    facts: &Facts<'a, 'py>,
) -> Res<&'a Bound<'py, PyDict>> {
    let py = facts.scope.py();
    let tables = plan.tables.get();
    let scope = facts.scope.cast_exact::<PyDict>()?;
    if let Some(edits) = scope.get_item(tables.edits_key.bind(py))? {
        if edits.is_truthy()? {
            return Err(Fallback); // set_serialize_value() edits: the Python path applies them
        }
    }

    let method_obj = present(scope, intern!(py, "method"))?;
    let method = method_obj.as_ref().map_or(Ok("GET"), str_of)?;
    let query_obj = value_of(scope, intern!(py, "query_string"))?;
    let query = query_obj.as_ref().map_or(Ok(&b""[..]), bytes_of)?;
    let target = request_target(scope, query)?;
    let header_obj = present(scope, intern!(py, "headers"))?;
    let mut header_pairs = Pairs::new();
    if let Some(header_obj) = &header_obj {
        pairs(header_obj, &mut header_pairs)?;
    }
    let headers = as_headers(&header_pairs);

    out.extend_from_slice(b"{\"request\":{\"uri\":");
    json::text(out, &target.uri);
    out.extend_from_slice(b",\"url\":");
    write_url(out, plan, scope, &headers, &target)?;
    out.extend_from_slice(b",\"querystring\":");
    let mut args = Fields::new();
    nginx::uri_args(&mut args, target.args, !plan.kong3);
    write_args(out, &args);
    out.extend_from_slice(b",\"method\":");
    json::string(out, method);
    out.extend_from_slice(b",\"headers\":");
    let mut logged = Fields::new();
    nginx::request_headers(&mut logged, &headers);
    for name in &plan.redact {
        logged.redact(name);
    }
    write_headers(out, &logged, &tables.redacted);
    out.extend_from_slice(b",\"size\":");
    let size = request_length(facts, scope, method, target.size, &headers)?;
    write_size(out, plan, size);
    write_tls(out, tables, scope)?;
    if plan.kong3 {
        out.extend_from_slice(b",\"id\":");
        write_request_id(out, plan, &headers)?;
    }
    match facts.request_copy {
        Some(copy) => body::write(out, plan, copy, body::content_type(&headers))?,
        None => write_fields(out, facts.request_body)?,
    }
    out.extend_from_slice(b"},\"upstream_uri\":");
    json::text(out, &target.uri);

    let status = int_of(facts.status)?;
    write_response(out, plan, facts, status, method == "HEAD")?;
    write_latencies(out, plan, facts)?;
    out.extend_from_slice(b",\"client_ip\":");
    write_client_ip(out, scope)?;
    out.extend_from_slice(b",\"started_at\":");
    json::int(out, ms(facts.numbers.started_at)?);
    if plan.kong3 {
        write_kong3_fields(out, plan, status);
    }
    Ok(scope)
}

/// `service`, then each entity hook in `build_entry`'s order, then `trace_id`; the
/// fields left to orjson.
pub fn write_tail<'py>(
    out: &mut Vec<u8>,
    plan: &Plan,
    request: &Bound<'py, PyAny>,
    scope: &Bound<'py, PyDict>,
    trace_id: Option<&str>,
) -> PyResult<Vec<(&'static str, Bound<'py, PyAny>)>> {
    let py = request.py();
    let mut pending = Vec::new();
    if let Some(service) = &plan.service {
        let service = service.bind(py);
        // The Python path logs `dict(config.service)`.
        if let Ok(dict) = service.cast_exact::<PyDict>() {
            if !add_field(out, &pending, "service", service) {
                pending.push(("service", dict.copy()?.into_any()));
            }
        } else {
            pending.push(("service", py.get_type::<PyDict>().call1((service,))?));
        }
    }
    let hooks = [
        ("route", &plan.route),
        ("consumer", &plan.consumer),
        ("authenticated_entity", &plan.authenticated_entity),
    ];
    for (name, hook) in hooks {
        let Some(hook) = hook else { continue };
        if name == "route" && plan.default_route && pending.is_empty() && matched_route(out, scope)
        {
            continue;
        }
        let value = match hook.bind(py).call1((request,)) {
            Ok(value) => value,
            Err(err) if err.is_instance_of::<PyException>(py) => {
                plan.tables
                    .get()
                    .warn
                    .bind(py)
                    .call1((name, err.value(py)))?;
                continue;
            }
            Err(err) => return Err(err),
        };
        if !value.is_none() && !add_field(out, &pending, name, &value) {
            pending.push((name, value));
        }
    }
    if let Some(trace_id) = trace_id {
        if pending.is_empty() {
            out.extend_from_slice(b",\"trace_id\":{\"w3c\":");
            json::string(out, trace_id);
            out.push(b'}');
        } else {
            // After fields left to orjson: it writes this one too, keeping the order.
            let formats = PyDict::new(py);
            formats.set_item("w3c", trace_id)?;
            pending.push(("trace_id", formats.into_any()));
        }
    }
    Ok(pending)
}

/// Write `,"name":value` natively unless fields are already left to orjson (their
/// order must be kept) or the value is not plain; true when written.
fn add_field(
    out: &mut Vec<u8>,
    pending: &[(&str, Bound<'_, PyAny>)],
    name: &str,
    v: &Bound<'_, PyAny>,
) -> bool {
    if !pending.is_empty() {
        return false;
    }
    let mark = out.len();
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    if value::write(out, v) {
        return true;
    }
    out.truncate(mark);
    false
}

// -- scope access ----------------------------------------------------------------------

/// `scope[key]` when present (a None value included).
fn present<'py>(
    scope: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
) -> Res<Option<Bound<'py, PyAny>>> {
    Ok(scope.get_item(key)?)
}

/// `scope.get(key)`, None when absent or None.
fn value_of<'py>(
    scope: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
) -> Res<Option<Bound<'py, PyAny>>> {
    Ok(scope.get_item(key)?.filter(|v| !v.is_none()))
}

fn str_of<'a>(value: &'a Bound<'_, PyAny>) -> Res<&'a str> {
    Ok(value.cast_exact::<PyString>()?.to_str()?)
}

fn bytes_of<'a>(value: &'a Bound<'_, PyAny>) -> Res<&'a [u8]> {
    Ok(value.cast_exact::<PyBytes>()?.as_bytes())
}

fn int_of(value: &Bound<'_, PyAny>) -> Res<i64> {
    if !value.is_exact_instance_of::<PyInt>() {
        return Err(Fallback);
    }
    Ok(value.extract::<i64>()?)
}

fn float_of(value: &Bound<'_, PyAny>) -> Res<f64> {
    Ok(value.cast_exact::<PyFloat>()?.value())
}

/// Header pairs: a list or tuple of `(name, value)` tuples/lists of exact bytes.
pub fn pairs<'py>(value: &Bound<'py, PyAny>, out: &mut Pairs<'py>) -> Res<()> {
    if let Ok(list) = value.cast_exact::<PyList>() {
        for item in list.iter() {
            out.push(pair(&item)?);
        }
    } else {
        for item in value.cast_exact::<PyTuple>()?.iter() {
            out.push(pair(&item)?);
        }
    }
    Ok(())
}

fn as_headers<'a>(pairs: &'a [Pair<'_>]) -> Headers<'a> {
    pairs
        .iter()
        .map(|(name, value)| (name.as_bytes(), value.as_bytes()))
        .collect()
}

fn pair<'py>(item: &Bound<'py, PyAny>) -> Res<Pair<'py>> {
    let (name, value) = if let Ok(tuple) = item.cast_exact::<PyTuple>() {
        if tuple.len() != 2 {
            return Err(Fallback);
        }
        (tuple.get_item(0)?, tuple.get_item(1)?)
    } else {
        let list = item.cast_exact::<PyList>()?;
        if list.len() != 2 {
            return Err(Fallback);
        }
        (list.get_item(0)?, list.get_item(1)?)
    };
    Ok((name.cast_into_exact()?, value.cast_into_exact()?))
}

/// `value[index]` of an exact tuple or list; None past its end.
fn nth<'py>(value: &Bound<'py, PyAny>, index: usize) -> Res<Option<Bound<'py, PyAny>>> {
    if let Ok(tuple) = value.cast_exact::<PyTuple>() {
        return Ok(if index < tuple.len() {
            Some(tuple.get_item(index)?)
        } else {
            None
        });
    }
    let list = value.cast_exact::<PyList>()?;
    Ok(if index < list.len() {
        Some(list.get_item(index)?)
    } else {
        None
    })
}

// -- request ---------------------------------------------------------------------------

/// `target()`: `raw_path` (else the quoted `root_path + path`) and `?query`, as nginx
/// reads them.
fn request_target<'q>(scope: &Bound<'_, PyDict>, query: &'q [u8]) -> Res<nginx::Target<'q>> {
    let py = scope.py();
    let path = match value_of(scope, intern!(py, "raw_path"))? {
        Some(path) => bytes_of(&path)?.to_vec(),
        None => quoted_path(scope)?,
    };
    let root_obj = value_of(scope, intern!(py, "root_path"))?;
    let root = match &root_obj {
        Some(root) if root.is_truthy()? => Some(str_of(root)?),
        _ => None,
    };
    Ok(nginx::target(path, root, query))
}

fn quoted_path(scope: &Bound<'_, PyDict>) -> Res<Vec<u8>> {
    let py = scope.py();
    let root_obj = value_of(scope, intern!(py, "root_path"))?;
    let root = root_obj.as_ref().map_or(Ok(""), str_of)?;
    let path_obj = present(scope, intern!(py, "path"))?;
    let path = path_obj.as_ref().map_or(Ok("/"), str_of)?;
    if !root.is_empty() && !path.starts_with(root) {
        return Ok(nginx::quote_path(&format!("{root}{path}")));
    }
    Ok(nginx::quote_path(path))
}

/// `scheme://host[:port]uri`; kong2 always has a port (the scheme's when unknown). The
/// host: an absolute-form target's, else the Host header's, else the server name.
fn write_url(
    out: &mut Vec<u8>,
    plan: &Plan,
    scope: &Bound<'_, PyDict>,
    headers: &[Header<'_>],
    target: &nginx::Target<'_>,
) -> Res<()> {
    let py = scope.py();
    let scheme_obj = present(scope, intern!(py, "scheme"))?;
    let scheme = scheme_obj.as_ref().map_or(Ok("http"), str_of)?;
    let server = server(scope)?;
    let port = server.as_ref().and_then(|(_, port)| *port);
    out.push(b'"');
    json::escape_utf8(out, scheme.as_bytes());
    out.extend_from_slice(b"://");
    let named = target.host.as_deref().or_else(|| {
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(b"host"))
            .map(|(_, value)| *value)
    });
    match named {
        Some(value) => json::escape_text(out, &nginx::host_name(value)),
        None => json::escape_utf8(out, plan.tables.get().server_name.as_bytes()),
    }
    let port = match port {
        Some(port) => Some(port),
        None if plan.kong3 => None,
        None => Some(if scheme == "https" { 443 } else { 80 }),
    };
    if let Some(port) = port {
        out.push(b':');
        json::int(out, port);
    }
    json::escape_text(out, &target.uri);
    out.push(b'"');
    Ok(())
}

/// `scope["server"]` as (address, port); None when absent or empty.
fn server<'py>(scope: &Bound<'py, PyDict>) -> Res<Option<(Bound<'py, PyAny>, Option<i64>)>> {
    let Some(server) = value_of(scope, intern!(scope.py(), "server"))? else {
        return Ok(None);
    };
    let Some(address) = nth(&server, 0)? else {
        return Ok(None);
    };
    let port = nth(&server, 1)?.ok_or(Fallback)?;
    if port.is_none() {
        return Ok(Some((address, None)));
    }
    if !port.is_exact_instance_of::<PyInt>() {
        return Err(Fallback);
    }
    Ok(Some((address, Some(port.extract::<i64>()?))))
}

fn write_args(out: &mut Vec<u8>, args: &Fields<'_, Arg<'_>>) {
    out.push(b'{');
    for (i, field) in args.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        json::escape_utf8(out, &field.key); // keys are already text()-decoded
        out.extend_from_slice(b"\":");
        write_list(out, &field.first, &field.more, |out, arg| match arg {
            Arg::Flag => out.extend_from_slice(b"true"),
            Arg::Value(raw) => json::text(out, raw),
        });
    }
    out.push(b'}');
}

/// Logged headers; `redacted` replaces each value of the redacted names (a repeated
/// header stays an array).
fn write_headers(out: &mut Vec<u8>, headers: &Fields<'_, &[u8]>, redacted: &str) {
    out.push(b'{');
    for (i, field) in headers.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::latin1(out, &field.key);
        out.push(b':');
        if field.redacted {
            write_list(out, &field.first, &field.more, |out, _| {
                json::string(out, redacted)
            });
        } else {
            write_list(out, &field.first, &field.more, |out, value| {
                json::text(out, value)
            });
        }
    }
    out.push(b'}');
}

/// One value as itself, several as an array (a repeated key in a Lua table).
fn write_list<V>(out: &mut Vec<u8>, first: &V, more: &[V], write: impl Fn(&mut Vec<u8>, &V)) {
    if more.is_empty() {
        return write(out, first);
    }
    out.push(b'[');
    write(out, first);
    for value in more {
        out.push(b',');
        write(out, value);
    }
    out.push(b']');
}

/// `$request_length`: request line, every header line, blank line and body (a chunked
/// one as one chunk).
fn request_length(
    facts: &Facts<'_, '_>,
    scope: &Bound<'_, PyDict>,
    method: &str,
    target_len: usize,
    headers: &[Header<'_>],
) -> Res<i64> {
    let py = scope.py();
    let version_obj = present(scope, intern!(py, "http_version"))?;
    let version = version_obj.as_ref().map_or(Ok("1.1"), str_of)?;
    let mut size = (method.chars().count() + target_len + version.chars().count() + 9) as i128;
    let mut declared = 0;
    let mut chunked = false;
    for &(name, value) in headers {
        size += (name.len() + value.len() + 4) as i128;
        if name.len() == 14 && name.eq_ignore_ascii_case(b"content-length") {
            if let Some(length) = nginx::declared_length(value).map_err(|()| Fallback)? {
                declared = length;
            }
        } else if name.len() == 17 && name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = nginx::is_chunked(value);
        }
    }
    let body_read = facts.numbers.body_read;
    size += 2 + if chunked {
        i128::from(body_read) + i128::from(nginx::chunk_framing(body_read))
    } else {
        i128::from(body_read.max(declared))
    };
    i64::try_from(size).map_err(|_| Fallback)
}

/// A size: a string in kong2 (every nginx variable is), a number in kong3.
fn write_size(out: &mut Vec<u8>, plan: &Plan, size: i64) {
    if plan.kong3 {
        json::int(out, size);
    } else {
        json::int_string(out, size);
    }
}

/// `request.tls` from the ASGI `tls` extension; nothing when absent or unknown.
fn write_tls(out: &mut Vec<u8>, tables: &Tables, scope: &Bound<'_, PyDict>) -> Res<()> {
    let py = scope.py();
    let Some(extensions) = value_of(scope, intern!(py, "extensions"))? else {
        return Ok(());
    };
    let Some(info) = extensions
        .cast_exact::<PyDict>()?
        .get_item(intern!(py, "tls"))?
    else {
        return Ok(());
    };
    if info.is_none() {
        return Ok(());
    }
    let info = info.cast_exact::<PyDict>()?;
    let Some(version) = info
        .get_item(intern!(py, "tls_version"))?
        .filter(|v| !v.is_none())
    else {
        return Ok(());
    };
    if !version.is_exact_instance_of::<PyInt>() {
        return Err(Fallback);
    }
    let Some(version) = tables.tls_versions.get(&version.extract::<i64>()?) else {
        return Ok(());
    };
    out.extend_from_slice(b",\"tls\":{\"version\":");
    json::string(out, version);
    if let Some(cipher) = info
        .get_item(intern!(py, "cipher_suite"))?
        .filter(|c| !c.is_none())
    {
        out.extend_from_slice(b",\"cipher\":");
        write_cipher(out, tables, &cipher)?;
    }
    let verified = match info.get_item(intern!(py, "client_cert_chain"))? {
        Some(chain) => chain.is_truthy()?,
        None => false,
    };
    out.extend_from_slice(if verified {
        b",\"client_verify\":\"SUCCESS\"}"
    } else {
        b",\"client_verify\":\"NONE\"}"
    });
    Ok(())
}

/// `cipher_name()`: a name as given, an id by its OpenSSL name, else as `0xC0FF`.
fn write_cipher(out: &mut Vec<u8>, tables: &Tables, cipher: &Bound<'_, PyAny>) -> Res<()> {
    if let Ok(name) = cipher.cast_exact::<PyString>() {
        json::string(out, name.to_str()?);
        return Ok(());
    }
    if !cipher.is_exact_instance_of::<PyInt>() {
        return Err(Fallback);
    }
    let suite = cipher.extract::<i64>()?;
    match tables.ciphers.get(&suite) {
        Some(name) if !name.is_empty() => json::string(out, name),
        _ if suite >= 0 => json::string(out, &format!("0x{suite:04X}")),
        _ => return Err(Fallback),
    }
    Ok(())
}

/// kong3 `request.id`: the configured request header (first one, any position), else a
/// fresh uuid4 hex.
fn write_request_id(out: &mut Vec<u8>, plan: &Plan, headers: &[Header<'_>]) -> Res<()> {
    if let Some(wanted) = &plan.request_id_header {
        let found = headers.iter().find(|(name, _)| {
            name.len() == wanted.len()
                && name
                    .iter()
                    .zip(wanted)
                    .all(|(a, b)| a.to_ascii_lowercase() == *b)
        });
        if let Some((_, value)) = found {
            json::text(out, value);
            return Ok(());
        }
    }
    out.push(b'"');
    out.extend_from_slice(&uuid4_hex().ok_or(Fallback)?);
    out.push(b'"');
    Ok(())
}

/// `uuid.uuid4().hex`, from the same source (the OS's CSPRNG).
fn uuid4_hex() -> Option<[u8; 32]> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    bytes[6] = bytes[6] & 0x0F | 0x40;
    bytes[8] = bytes[8] & 0x3F | 0x80;
    let mut hex = [0u8; 32];
    for (i, byte) in bytes.iter().enumerate() {
        hex[2 * i] = HEX[usize::from(byte >> 4)];
        hex[2 * i + 1] = HEX[usize::from(byte & 0xF)];
    }
    Some(hex)
}

// -- response, timings, the rest ---------------------------------------------------------

/// `response`: the app's status and headers; with no response, nginx's 499 when the
/// client left first, else the server's own 500.
fn write_response(
    out: &mut Vec<u8>,
    plan: &Plan,
    facts: &Facts<'_, '_>,
    status: i64,
    head: bool,
) -> Res<()> {
    let tables = plan.tables.get();
    if status != 0 {
        let mut pairs_obj = Pairs::new();
        pairs(facts.response_headers, &mut pairs_obj)?;
        let headers = as_headers(&pairs_obj);
        let body = if head { 0 } else { body_size(facts)? };
        let size = bytes_sent(tables, status, &headers, body)?;
        write_response_fields(out, plan, status, &headers, size);
        match facts.response_copy {
            Some(copy) => body::write(out, plan, copy, body::content_type(&headers))?,
            None => write_fields(out, facts.response_body)?,
        }
        out.push(b'}');
    } else if facts.numbers.client_gone {
        write_response_fields(out, plan, 499, &[], 0);
        out.push(b'}');
    } else {
        let headers: Headers<'_> = tables
            .server_error_headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        let size = bytes_sent(tables, 500, &headers, tables.server_error_body)?;
        write_response_fields(out, plan, 500, &headers, size);
        out.push(b'}');
    }
    Ok(())
}

/// Extra fields of an object not closed yet (the body fields, built in Python): each
/// `,"name":value` of a `dict`; nothing for None.
fn write_fields(out: &mut Vec<u8>, fields: &Bound<'_, PyAny>) -> Res<()> {
    if fields.is_none() {
        return Ok(());
    }
    for (name, value) in fields.cast_exact::<PyDict>()?.iter() {
        out.push(b',');
        json::string(out, name.cast_exact::<PyString>()?.to_str()?);
        out.push(b':');
        if !value::write(out, &value) {
            return Err(Fallback);
        }
    }
    Ok(())
}

fn write_response_fields(
    out: &mut Vec<u8>,
    plan: &Plan,
    status: i64,
    headers: &[Header<'_>],
    size: i64,
) {
    out.extend_from_slice(b",\"response\":{\"status\":");
    json::int(out, status);
    out.extend_from_slice(b",\"headers\":");
    let mut logged = Fields::new();
    nginx::headers(&mut logged, headers);
    for name in &plan.redact_response {
        logged.redact(name);
    }
    write_headers(out, &logged, &plan.tables.get().redacted);
    out.extend_from_slice(b",\"size\":");
    write_size(out, plan, size);
}

/// The body size of an answered, non-HEAD request: the pathsend file's size, else the
/// bytes the app sent.
fn body_size(facts: &Facts<'_, '_>) -> Res<i64> {
    if facts.file_path.is_none() {
        return Ok(facts.numbers.body_sent);
    }
    let path = str_of(facts.file_path)?;
    if path.contains('\0') {
        return Err(Fallback); // os.stat raises ValueError
    }
    // os.stat(path).st_size, 0 on OSError
    std::fs::metadata(path)
        .map_or(0, |meta| meta.len())
        .try_into()
        .map_err(|_| Fallback)
}

/// `$bytes_sent`: `HTTP/1.1 <status> <reason>` line, every header line, blank line, body.
fn bytes_sent(tables: &Tables, status: i64, headers: &[Header<'_>], body: i64) -> Res<i64> {
    let reason = tables.reasons.get(&status).copied().unwrap_or(0);
    let mut size = (9 + json::decimal_len(status) + 1 + reason + 2 + 2) as i128 + i128::from(body);
    for &(name, value) in headers {
        size += (name.len() + value.len() + 4) as i128;
    }
    i64::try_from(size).map_err(|_| Fallback)
}

fn write_latencies(out: &mut Vec<u8>, plan: &Plan, facts: &Facts<'_, '_>) -> Res<()> {
    let start = facts.numbers.t_start;
    let responded = facts.numbers.t_response;
    let t_end = facts.numbers.t_end;
    // `t_end or responded or start`: Python truthiness of floats (NaN is true)
    let end = [t_end, responded]
        .into_iter()
        .find(|t| *t != 0.0)
        .unwrap_or(start);
    let answered = responded != 0.0;
    let proxy = if answered { ms(responded - start)? } else { -1 };
    let receive = if answered { ms(end - responded)? } else { 0 };
    out.extend_from_slice(b",\"latencies\":{\"request\":");
    json::int(out, ms(end - start)?);
    out.extend_from_slice(b",\"proxy\":");
    json::int(out, proxy);
    if plan.kong3 {
        out.extend_from_slice(b",\"kong\":0,\"receive\":");
    } else {
        out.extend_from_slice(b",\"kong\":");
    }
    json::int(out, receive);
    out.push(b'}');
    Ok(())
}

fn ms(seconds: f64) -> Res<i64> {
    nginx::ms(seconds).ok_or(Fallback)
}

/// `str(client[0])` for a non-empty `scope["client"]`, else "".
fn write_client_ip(out: &mut Vec<u8>, scope: &Bound<'_, PyDict>) -> Res<()> {
    let client = value_of(scope, intern!(scope.py(), "client"))?;
    let address = match &client {
        Some(client) => nth(client, 0)?,
        None => None,
    };
    match &address {
        Some(address) => json::string(out, str_of(address)?),
        None => out.extend_from_slice(b"\"\""),
    }
    Ok(())
}

fn write_kong3_fields(out: &mut Vec<u8>, plan: &Plan, status: i64) {
    out.extend_from_slice(b",\"upstream_status\":");
    if status != 0 {
        json::int_string(out, status);
        out.extend_from_slice(b",\"source\":\"upstream\"");
    } else {
        out.extend_from_slice(b"\"\",\"source\":\"kong\"");
    }
    if let Some(workspace) = &plan.workspace {
        out.extend_from_slice(b",\"workspace\":");
        json::string(out, workspace);
    }
    out.extend_from_slice(b",\"workspace_name\":");
    json::string(out, &plan.workspace_name);
}

// -- the default route hook --------------------------------------------------------------

/// `routes.matched_route` natively: writes `,"route":{…}` (or nothing when the hook
/// would return None) and returns true; false, with nothing written, when the route
/// object has attributes of other types: the Python hook then runs.
fn matched_route(out: &mut Vec<u8>, scope: &Bound<'_, PyDict>) -> bool {
    let mark = out.len();
    let done = write_route(out, scope);
    if done.is_err() {
        out.truncate(mark);
    }
    done.is_ok()
}

/// Ok(true): written; Ok(false): absent; Err: let the Python hook run.
fn write_route(out: &mut Vec<u8>, scope: &Bound<'_, PyDict>) -> Res<bool> {
    let py = scope.py();
    let Some(route) = value_of(scope, intern!(py, "route"))? else {
        return Ok(false);
    };
    let name_obj = attr_or_none(&route, intern!(py, "name"))?;
    let path_obj = attr_or_none(&route, intern!(py, "path"))?;
    let methods_obj = attr_or_none(&route, intern!(py, "methods"))?;
    let name = name_obj
        .as_ref()
        .map(str_of)
        .transpose()?
        .filter(|n| !n.is_empty());
    let path = path_obj.as_ref().map(str_of).transpose()?;
    let mut method_items = SmallVec::new();
    if let Some(methods) = &methods_obj {
        str_items(methods, &mut method_items)?;
    }
    let mut methods: SmallVec<[&str; 8]> = SmallVec::new();
    for method in &method_items {
        methods.push(method.to_str()?);
    }
    methods.sort_unstable(); // sorted(): code point order, which is UTF-8 byte order
    if name.is_none() && path.is_none() && methods.is_empty() {
        return Ok(false);
    }
    out.extend_from_slice(b",\"route\":{");
    let mark = out.len();
    let comma = |out: &mut Vec<u8>| {
        if out.len() > mark {
            out.push(b',');
        }
    };
    if let Some(name) = name {
        out.extend_from_slice(b"\"name\":");
        json::string(out, name);
    }
    if let Some(path) = path {
        comma(out);
        out.extend_from_slice(b"\"paths\":");
        write_strings(out, &[path]);
    }
    if !methods.is_empty() {
        comma(out);
        out.extend_from_slice(b"\"methods\":");
        write_strings(out, &methods);
    }
    out.push(b'}');
    Ok(true)
}

fn write_strings(out: &mut Vec<u8>, values: &[&str]) {
    out.push(b'[');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::string(out, value);
    }
    out.push(b']');
}

/// `getattr(obj, name, None)`, None also for a None value; Err for other exceptions.
fn attr_or_none<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
) -> Res<Option<Bound<'py, PyAny>>> {
    match obj.getattr(name) {
        Ok(value) => Ok(Some(value).filter(|v| !v.is_none())),
        Err(err) if err.is_instance_of::<PyAttributeError>(obj.py()) => Ok(None),
        Err(_) => Err(Fallback),
    }
}

/// The items of a set, frozenset, list or tuple of exact str.
fn str_items<'py>(
    values: &Bound<'py, PyAny>,
    out: &mut SmallVec<[Bound<'py, PyString>; 8]>,
) -> Res<()> {
    let mut push = |item: Bound<'py, PyAny>| -> Res<()> {
        out.push(item.cast_into_exact::<PyString>()?);
        Ok(())
    };
    if let Ok(set) = values.cast_exact::<PySet>() {
        set.iter().try_for_each(&mut push)
    } else if let Ok(set) = values.cast_exact::<PyFrozenSet>() {
        set.iter().try_for_each(&mut push)
    } else if let Ok(list) = values.cast_exact::<PyList>() {
        list.iter().try_for_each(&mut push)
    } else {
        values
            .cast_exact::<PyTuple>()?
            .iter()
            .try_for_each(&mut push)
    }
}
