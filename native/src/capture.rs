//! `AsgiCapture`: the ASGI door's record of one request, filled on the request path.
//!
//! The compiled twin of `asgi.ASGIRequest` (that class is the specification): the same
//! attributes, the same `send` wrapper, so that a request costs one constructor call and
//! one native call per `send` instead of their Python frames, and the encoder reads the
//! facts from the struct instead of by attribute. `kafka_log_middleware.asgi` subclasses
//! it to add the coroutines (`receive`) and the methods it shares with `CapturedRequest`.

use pyo3::exceptions::PyAttributeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};
use pyo3::{PyTraverseError, PyVisit};

#[pyclass(subclass, module = "kafka_log_middleware_native")]
pub struct AsgiCapture {
    #[pyo3(get, set)]
    pub scope: Option<Py<PyAny>>,
    #[pyo3(get, set)]
    pub config: Option<Py<PyAny>>,
    #[pyo3(get, set)]
    pub started_at: f64,
    #[pyo3(get, set)]
    pub t_start: f64,
    #[pyo3(get, set)]
    pub t_response: f64,
    #[pyo3(get, set)]
    pub t_end: f64,
    #[pyo3(get, set)]
    pub status: Option<Py<PyAny>>,
    #[pyo3(get, set)]
    pub response_headers: Option<Py<PyAny>>,
    #[pyo3(get, set)]
    pub body_sent: i64,
    #[pyo3(get, set)]
    pub body_read: i64,
    #[pyo3(get, set)]
    pub file_path: Option<Py<PyAny>>,
    #[pyo3(get, set)]
    pub raised: bool,
    #[pyo3(get, set)]
    pub client_gone: bool,
    #[pyo3(get, set)]
    pub trace_id: Option<Py<PyAny>>,
    #[pyo3(get, set)]
    pub request_body: Option<Py<PyAny>>,
    #[pyo3(get, set)]
    pub response_body: Option<Py<PyAny>>,
    receive: Option<Py<PyAny>>,
    send: Option<Py<PyAny>>,
    #[pyo3(get)]
    _watch_sends: bool,
}

/// `bodies.BodyCopy`, looked up once.
static BODY_COPY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

#[pymethods]
impl AsgiCapture {
    #[new]
    fn new(
        py: Python<'_>,
        scope: &Bound<'_, PyAny>,
        config: &Bound<'_, PyAny>,
        receive: &Bound<'_, PyAny>,
        send: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let t_start = perf_counter(py)?;
        let request_body = body_copy(
            config,
            intern!(py, "include_request_body"),
            intern!(py, "max_request_body_bytes"),
        )?;
        let response_body = body_copy(
            config,
            intern!(py, "include_response_body"),
            intern!(py, "max_response_body_bytes"),
        )?;
        Ok(Self {
            scope: Some(scope.clone().unbind()),
            config: Some(config.clone().unbind()),
            started_at: wall_clock(),
            t_start,
            t_response: 0.0,
            t_end: 0.0,
            status: Some(0i64.into_pyobject(py)?.into_any().unbind()),
            response_headers: Some(pyo3::types::PyTuple::empty(py).into_any().unbind()),
            body_sent: 0,
            body_read: 0,
            file_path: None,
            raised: false,
            client_gone: false,
            trace_id: Some(0i64.into_pyobject(py)?.into_any().unbind()),
            request_body,
            response_body,
            receive: Some(receive.clone().unbind()),
            send: Some(send.clone().unbind()),
            _watch_sends: watches_sends(scope)?,
        })
    }

    /// The server's `receive` (until `detach`).
    #[getter]
    fn _receive(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.receive
            .as_ref()
            .map(|f| f.clone_ref(py))
            .ok_or_else(|| PyAttributeError::new_err("_receive"))
    }

    /// The server's `send` (until `detach`).
    #[getter]
    fn _send(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.send
            .as_ref()
            .map(|f| f.clone_ref(py))
            .ok_or_else(|| PyAttributeError::new_err("_send"))
    }

    /// `ASGIRequest.send`: record the message's facts, then hand it to the server.
    fn send<'py>(
        slf: &Bound<'py, Self>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let mut this = slf.try_borrow_mut()?;
        let server = this._send(py)?.into_bound(py);
        if this.t_end != 0.0 {
            drop(this);
            return server.call1((message,));
        }
        let kind = message.get_item(intern!(py, "type"))?;
        let kind = kind.cast::<PyString>().ok();
        let kind = match &kind {
            Some(kind) => kind.to_str()?,
            None => "",
        };
        match kind {
            "http.response.body" => {
                let body = get(message, intern!(py, "body"))?;
                let size = match &body {
                    Some(body) => body.len()?,
                    None => 0,
                };
                this.body_sent += size as i64;
                let copy = this.response_body.as_ref().map(|c| c.clone_ref(py));
                let more = match get(message, intern!(py, "more_body"))? {
                    Some(more) => more.is_truthy()?,
                    None => false,
                };
                if !more {
                    this.t_end = perf_counter(py)?;
                }
                if let Some(copy) = copy {
                    drop(this);
                    let body = match body {
                        Some(body) => body,
                        None => pyo3::types::PyBytes::new(py, b"").into_any(),
                    };
                    copy.bind(py).call_method1(intern!(py, "add"), (body,))?;
                    this = slf.try_borrow_mut()?;
                }
            }
            "http.response.start" => {
                let answered = match &this.status {
                    Some(status) => status.bind(py).is_truthy()?,
                    None => false,
                };
                if answered {
                    drop(this);
                    return server.call1((message,)); // the server refuses a second one
                }
                this.t_response = perf_counter(py)?;
                this.status = Some(message.get_item(intern!(py, "status"))?.unbind());
                this.response_headers = Some(match get(message, intern!(py, "headers"))? {
                    Some(headers) => headers.unbind(),
                    None => pyo3::types::PyTuple::empty(py).into_any().unbind(),
                });
            }
            "http.response.pathsend" => {
                this.file_path = Some(message.get_item(intern!(py, "path"))?.unbind());
                this.t_end = perf_counter(py)?;
            }
            _ => {}
        }
        let watch = this._watch_sends;
        drop(this);
        if watch {
            return slf.call_method1(intern!(py, "_watched_send"), (message,));
        }
        server.call1((message,))
    }

    /// `CapturedRequest.finish`: mark the request over now, unless its end was recorded.
    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.t_end == 0.0 {
            self.t_end = perf_counter(py)?;
        }
        Ok(())
    }

    /// `ASGIRequest.detach`: finish, and drop the server's callables.
    fn detach(&mut self, py: Python<'_>) -> PyResult<()> {
        self.finish(py)?;
        self.receive = None;
        self.send = None;
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for field in [
            &self.scope,
            &self.config,
            &self.status,
            &self.response_headers,
            &self.file_path,
            &self.trace_id,
            &self.request_body,
            &self.response_body,
            &self.receive,
            &self.send,
        ] {
            visit.call(field)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.scope = None;
        self.config = None;
        self.status = None;
        self.response_headers = None;
        self.file_path = None;
        self.trace_id = None;
        self.request_body = None;
        self.response_body = None;
        self.receive = None;
        self.send = None;
    }
}

/// `message.get(key)`, for a dict or any mapping; None when absent.
fn get<'py>(
    message: &Bound<'py, PyAny>,
    key: &Bound<'py, PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if let Ok(dict) = message.cast_exact::<PyDict>() {
        return dict.get_item(key);
    }
    let value = message.call_method1(intern!(message.py(), "get"), (key,))?;
    Ok((!value.is_none()).then_some(value))
}

/// `BodyCopy(config.<cap>)` when `config.<on>`, else None.
fn body_copy<'py>(
    config: &Bound<'py, PyAny>,
    on: &Bound<'py, PyString>,
    cap: &Bound<'py, PyString>,
) -> PyResult<Option<Py<PyAny>>> {
    let py = config.py();
    if !config.getattr(on)?.is_truthy()? {
        return Ok(None);
    }
    let class = BODY_COPY.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py
            .import("kafka_log_middleware.bodies")?
            .getattr("BodyCopy")?
            .unbind())
    })?;
    Ok(Some(
        class.bind(py).call1((config.getattr(cap)?,))?.unbind(),
    ))
}

/// `scope["asgi"]["spec_version"]` is one whose servers raise `OSError` from a `send`
/// after the client has gone (2.4 on; the versions before it discard the message).
fn watches_sends(scope: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = scope.py();
    let Some(asgi) = get(scope, intern!(py, "asgi"))? else {
        return Ok(false);
    };
    if !asgi.is_truthy()? {
        return Ok(false);
    }
    let Some(version) = get(&asgi, intern!(py, "spec_version"))? else {
        return Ok(false);
    };
    let silent = match version.cast_exact::<PyString>() {
        Ok(version) => matches!(version.to_str()?, "2.0" | "2.1" | "2.2" | "2.3"),
        Err(_) => false,
    };
    Ok(!silent)
}

/// `time.perf_counter()`: CLOCK_MONOTONIC on Linux, as CPython reads it.
fn perf_counter(py: Python<'_>) -> PyResult<f64> {
    #[cfg(target_os = "linux")]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec to write to.
        #[allow(clippy::useless_conversion)] // time_t and c_long are i32 on 32-bit targets
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } == 0 {
            return Ok(seconds(
                i64::from(now.tv_sec) * 1_000_000_000 + i64::from(now.tv_nsec),
            ));
        }
    }
    static PERF: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let perf = PERF.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("time")?.getattr("perf_counter")?.unbind())
    })?;
    perf.bind(py).call0()?.extract()
}

/// `time.time()`.
fn wall_clock() -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    seconds(now.as_secs() as i64 * 1_000_000_000 + i64::from(now.subsec_nanos()))
}

/// Nanoseconds as seconds, rounded as CPython's `PyTime_AsSecondsDouble` rounds them.
fn seconds(ns: i64) -> f64 {
    if ns % 1_000_000_000 == 0 {
        (ns / 1_000_000_000) as f64
    } else {
        ns as f64 / 1e9
    }
}
