//! The byte-level rules of `kafka_log_middleware.nginx_vars`, on raw ASGI bytes.
//!
//! Each function mirrors the Python function of the same name; the Python module is
//! the specification (tests/test_native_serializer.py compares whole entries).

use std::borrow::Cow;
use std::collections::HashMap;

use smallvec::SmallVec;

/// `lua_max_uri_args` default: at most this many query arguments are logged.
pub const MAX_ARGS: usize = 100;
/// `lua_max_req_headers` default: at most this many headers are logged.
pub const MAX_HEADERS: usize = 100;

/// Characters `urllib.parse.quote(path, safe=_PATH_SAFE)` leaves as they are.
const PATH_SAFE: &[u8] = b"/:@!$&'()*+,;=-._~";
/// Fields kept before a hash index replaces the linear search.
const LINEAR_LOOKUP: usize = 12;

/// `text()` as UTF-8 bytes: the valid UTF-8 runs as they are, each invalid byte as its
/// latin-1 character.
pub fn text(raw: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    if std::str::from_utf8(&raw).is_ok() {
        return raw;
    }
    let mut out = Vec::with_capacity(raw.len() * 2);
    for chunk in raw.utf8_chunks() {
        out.extend_from_slice(chunk.valid().as_bytes());
        for &byte in chunk.invalid() {
            out.extend_from_slice(&[0xC0 | (byte >> 6), 0x80 | (byte & 0x3F)]);
        }
    }
    Cow::Owned(out)
}

/// `bytes.lower()`: ASCII letters only; borrowed when nothing changes.
pub fn lower(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.iter().any(u8::is_ascii_uppercase) {
        Cow::Owned(raw.to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    }
}

/// `_host_name()`: the value without its surrounding spaces; an IPv6 literal keeps its
/// brackets, else the part before `:`; one trailing dot goes; lower-cased (the caller
/// decodes it with `text()`).
pub fn host_name(value: &[u8]) -> Cow<'_, [u8]> {
    let value = trim_spaces(value);
    let name = if value.starts_with(b"[") {
        match value.iter().position(|&b| b == b']') {
            Some(end) => &value[..=end],
            None => value,
        }
    } else {
        value.split(|&b| b == b':').next().unwrap_or(value)
    };
    lower(name.strip_suffix(b".").unwrap_or(name))
}

/// `value.strip(b" ")`.
pub fn trim_spaces(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|&b| b != b' ').unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// `Target`: the request target as Kong's nginx reads it.
pub struct Target<'q> {
    /// `$request_uri`: the target as sent, path-only for an absolute-form target.
    pub uri: Vec<u8>,
    /// The host an absolute-form target names (it wins over the Host header).
    pub host: Option<Vec<u8>>,
    /// `$args`: the query before any `#`.
    pub args: &'q [u8],
    /// Bytes of the target as the client sent it.
    pub size: usize,
}

/// `target()` of the path `_raw_path()` gives; `root` is `root_path` when it is truthy.
pub fn target<'q>(path: Vec<u8>, root: Option<&str>, query: &'q [u8]) -> Target<'q> {
    let size = path.len() + if query.is_empty() { 0 } else { query.len() + 1 };
    let args = if path.contains(&b'#') {
        &query[..0]
    } else {
        query.split(|&b| b == b'#').next().unwrap_or(query)
    };
    let (mut uri, host) = if path.first() != Some(&b'/') || root.is_some() {
        origin_form(path, root.unwrap_or(""), !query.is_empty())
    } else {
        (path, None)
    };
    if !query.is_empty() {
        uri.push(b'?');
        uri.extend_from_slice(query);
    }
    Target {
        uri,
        host,
        args,
        size,
    }
}

/// `_origin_form()`: an absolute-form path (`http://user@host:port/p`) as `/p` and its
/// host; any other path that does not start with `/` without its userinfo.
fn origin_form(path: Vec<u8>, root: &str, has_query: bool) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut start = 0;
    if path.first() == Some(&b'/') {
        let prefix = quote_path(root);
        if !path.starts_with(&prefix) {
            return (path, None);
        }
        start = prefix.len();
    }
    let Some(scheme) = scheme_len(&path[start..]) else {
        if start > 0 {
            return (path, None); // the origin form, after root_path
        }
        let end = find(&path, 0, b'/').unwrap_or(path.len());
        return match path[..end].iter().rposition(|&b| b == b'@') {
            Some(at) => (path[at + 1..].to_vec(), None),
            None => (path, None),
        };
    };
    let authority = start + scheme;
    let end = find(&path, authority, b'/').unwrap_or(path.len());
    let host_start = path[authority..end]
        .iter()
        .rposition(|&b| b == b'@')
        .map_or(authority, |at| authority + at + 1);
    let host = (host_start < end).then(|| path[host_start..end].to_vec());
    let mut uri = path[..start].to_vec();
    if end < path.len() {
        uri.extend_from_slice(&path[end..]);
    } else if !has_query {
        uri.push(b'/');
    }
    (uri, host)
}

/// Length of a leading `scheme://` (`[A-Za-z][A-Za-z0-9+.-]*://`), if there is one.
fn scheme_len(s: &[u8]) -> Option<usize> {
    if !s.first()?.is_ascii_alphabetic() {
        return None;
    }
    let len = s
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b"+.-".contains(&b)))?;
    s[len..].starts_with(b"://").then_some(len + 3)
}

fn find(s: &[u8], from: usize, byte: u8) -> Option<usize> {
    s[from..].iter().position(|&b| b == byte).map(|i| from + i)
}

/// Bytes of `chunk_framing()`: `body` bytes sent as one chunk, then the last chunk.
pub fn chunk_framing(body: i64) -> i64 {
    let mut digits = i64::from(body < 0) + 1;
    let mut rest = body.unsigned_abs() >> 4;
    while rest != 0 {
        digits += 1;
        rest >>= 4;
    }
    (if body != 0 { digits + 4 } else { 0 }) + 5
}

/// Whether the last coding of a `transfer-encoding` value is `chunked`, as
/// `request_length()` tests it.
pub fn is_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or(value);
    let start = last
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(last.len());
    let end = last
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    last[start..end].eq_ignore_ascii_case(b"chunked")
}

/// `quote(path, safe=_PATH_SAFE)` of a Python str (given as UTF-8).
pub fn quote_path(path: &str) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(path.len());
    for &byte in path.as_bytes() {
        if byte.is_ascii_alphanumeric() || PATH_SAFE.contains(&byte) {
            out.push(byte);
        } else {
            out.extend_from_slice(&[
                b'%',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xF)],
            ]);
        }
    }
    out
}

/// The `content-length` value `request_length()` counts (`nginx_vars.declared_length`):
/// digits only, at most nginx's `off_t` maximum (`i64::MAX`), else none.
pub fn declared_length(value: &[u8]) -> Result<Option<i64>, ()> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    let mut total: i64 = 0;
    for &digit in value {
        match total
            .checked_mul(10)
            .and_then(|t| t.checked_add(i64::from(digit - b'0')))
        {
            Some(next) => total = next,
            None => return Ok(None),
        }
    }
    Ok(Some(total))
}

/// `_unescape()` (lua-nginx-module >= 0.10.20): `+` is a space, `%XX` a byte, and an
/// invalid escape stays literal.
pub fn unescape(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|&b| b == b'+' || b == b'%') {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let byte = raw[i];
        if byte == b'%' {
            if let (Some(high), Some(low)) = (hex_at(raw, i + 1), hex_at(raw, i + 2)) {
                out.push(high << 4 | low);
                i += 3;
                continue;
            }
        }
        out.push(if byte == b'+' { b' ' } else { byte });
        i += 1;
    }
    Cow::Owned(out)
}

/// `_unescape_legacy()` (lua-nginx-module < 0.10.20, Kong 2.0): `%` + a non-hex char
/// drops the `%`; `%` + hex + non-hex drops all three; a truncated escape is dropped.
pub fn unescape_legacy(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'%') {
        return if raw.contains(&b'+') {
            Cow::Owned(
                raw.iter()
                    .map(|&b| if b == b'+' { b' ' } else { b })
                    .collect(),
            )
        } else {
            Cow::Borrowed(raw)
        };
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut pending: Option<Option<u8>> = None; // after `%`: None, or the high digit
    for &byte in raw {
        match pending {
            None if byte == b'%' => pending = Some(None),
            None => out.push(if byte == b'+' { b' ' } else { byte }),
            Some(None) => match hex(byte) {
                Some(high) => pending = Some(Some(high)),
                None => {
                    pending = None;
                    out.push(byte);
                }
            },
            Some(Some(high)) => {
                pending = None;
                if let Some(low) = hex(byte) {
                    out.push(high << 4 | low);
                }
            }
        }
    }
    Cow::Owned(out)
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

fn hex_at(raw: &[u8], i: usize) -> Option<u8> {
    raw.get(i).copied().and_then(hex)
}

/// One key of a Lua table built by `get_headers()`/`get_uri_args()`: its value, or the
/// array of its values when the key repeats.
pub struct Field<'a, V> {
    pub key: Cow<'a, [u8]>,
    pub first: V,
    /// The values of the repeats, in order (empty, so unallocated, for most keys).
    pub more: Vec<V>,
    pub redacted: bool,
}

/// Keys in first-seen order, like the Python dict the serializer builds.
pub struct Fields<'a, V> {
    pub items: SmallVec<[Field<'a, V>; LINEAR_LOOKUP]>,
    index: HashMap<Box<[u8]>, usize>,
}

impl<'a, V> Fields<'a, V> {
    pub fn new() -> Self {
        Self {
            items: SmallVec::new(),
            index: HashMap::new(),
        }
    }

    /// Add a value: a new key goes last, a repeated one gets one more value.
    pub fn insert(&mut self, key: Cow<'a, [u8]>, value: V) {
        match self.find(&key) {
            Some(i) => self.items[i].more.push(value),
            None => {
                if self.items.len() >= LINEAR_LOOKUP {
                    if self.index.is_empty() {
                        for (i, field) in self.items.iter().enumerate() {
                            self.index.insert(field.key.as_ref().into(), i);
                        }
                    }
                    self.index.insert(key.as_ref().into(), self.items.len());
                }
                self.items.push(Field {
                    key,
                    first: value,
                    more: Vec::new(),
                    redacted: false,
                });
            }
        }
    }

    /// Replace the value of `key`, when present, by `"REDACTED"`.
    pub fn redact(&mut self, key: &[u8]) {
        if let Some(i) = self.find(key) {
            self.items[i].redacted = true;
        }
    }

    fn find(&self, key: &[u8]) -> Option<usize> {
        if self.index.is_empty() {
            self.items.iter().position(|f| f.key.as_ref() == key)
        } else {
            self.index.get(key).copied()
        }
    }
}

/// A query argument's value: `?a` is `true`, `?a=x` the decoded bytes (text() applies).
pub enum Arg<'a> {
    Flag,
    Value(Cow<'a, [u8]>),
}

/// `uri_args(query, 100)`: keys and values decoded, empty keys dropped (and not counted),
/// repeats collected in order, at most 100 arguments kept. Filled in place: `Fields` is
/// large, moving it costs more than building it.
pub fn uri_args<'a>(args: &mut Fields<'a, Arg<'a>>, query: &'a [u8], legacy: bool) {
    let decode = if legacy { unescape_legacy } else { unescape };
    let mut count = 0;
    for part in query.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = match part.iter().position(|&b| b == b'=') {
            Some(eq) => (&part[..eq], Some(&part[eq + 1..])),
            None => (part, None),
        };
        let key = decode(raw_key);
        if key.is_empty() {
            continue;
        }
        let value = raw_value.map_or(Arg::Flag, |v| Arg::Value(decode(v)));
        args.insert(text(key), value);
        count += 1;
        if count == MAX_ARGS {
            break;
        }
    }
}

/// `headers(raw, 100)`: names lower-cased (written as latin-1), repeats in order, the
/// first 100 header lines. Filled in place, as [`uri_args`].
pub fn headers<'a>(out: &mut Fields<'a, &'a [u8]>, raw: &[(&'a [u8], &'a [u8])]) {
    for &(name, value) in raw.iter().take(MAX_HEADERS) {
        out.insert(lower(name), value);
    }
}

/// `request_headers(raw, 100)`: as [`headers`], leaving out (and not counting) the names
/// nginx ignores, values without their surrounding spaces.
pub fn request_headers<'a>(out: &mut Fields<'a, &'a [u8]>, raw: &[(&'a [u8], &'a [u8])]) {
    let valid = raw.iter().filter(|(name, _)| valid_name(name));
    for &(name, value) in valid.take(MAX_HEADERS) {
        out.insert(lower(name), trim_spaces(value));
    }
}

/// `_NAME_CHARS`: letters, digits, `-` and `_` only.
fn valid_name(name: &[u8]) -> bool {
    name.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whole milliseconds as `_ms()` computes them: `int(round(seconds * 1000, 3))` for a
/// positive value, else 0. `None` beyond 2**43 ms (year 2248), where this shortcut
/// would no longer be exact (the Python path handles it).
pub fn ms(seconds: f64) -> Option<i64> {
    // Python's `seconds > 0` (False for NaN)
    if seconds.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return Some(0);
    }
    let millis = seconds * 1000.0;
    if millis >= 8_796_093_022_208.0 || millis.is_nan() {
        return None;
    }
    // round(x, 3) is correctly rounded; below 2**43 int() of it is floor(x), plus one
    // when the exact fraction is >= 0.9995 (never a tie: 0.9995 is not a binary
    // fraction). `frac` is exact and the fused multiply-add keeps the sign exact.
    let whole = millis.floor();
    let frac = millis - whole;
    let up = frac.mul_add(2000.0, -1999.0) >= 0.0;
    Some(whole as i64 + i64::from(up))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(query: &[u8], legacy: bool) -> Vec<(String, Vec<Option<String>>)> {
        let mut parsed = Fields::new();
        uri_args(&mut parsed, query, legacy);
        parsed
            .items
            .iter()
            .map(|f| {
                let values = std::iter::once(&f.first).chain(&f.more).map(|v| match v {
                    Arg::Flag => None,
                    Arg::Value(raw) => {
                        Some(String::from_utf8(text(raw.clone()).into_owned()).unwrap())
                    }
                });
                (String::from_utf8(f.key.to_vec()).unwrap(), values.collect())
            })
            .collect()
    }

    fn one(query: &[u8], legacy: bool) -> String {
        args(query, legacy).remove(0).1.remove(0).unwrap()
    }

    #[test]
    fn uri_args_rules() {
        assert_eq!(args(b"=1&&b&=", false), vec![("b".into(), vec![None])]);
        assert_eq!(
            args(b"a=1&a=2&a", false),
            vec![("a".into(), vec![Some("1".into()), Some("2".into()), None])]
        );
        assert_eq!(one(b"a=%20x+y%2B", false), " x y+");
        assert_eq!(one(b"a=%zz&b=%2&c=%", false), "%zz");
        assert_eq!(one(b"a=%%41", false), "%A");
        assert_eq!(one(b"q=%E9", false), "é");
        assert_eq!(one(b"a=%zz", true), "zz");
        assert_eq!(one(b"a=%2zx", true), "x");
        assert_eq!(one(b"a=x%2", true), "x");
        assert_eq!(one(b"a=%%41", true), "%41");
        assert_eq!(one(b"a=%41+%2b", true), "A +");
        let many: Vec<u8> = (0..150)
            .map(|i| format!("k{i}=v&"))
            .collect::<String>()
            .into();
        assert_eq!(args(&many, false).len(), MAX_ARGS);
    }

    #[test]
    fn same_key_from_utf8_and_latin1() {
        assert_eq!(args(b"%C3%A9=1&%E9=2", false)[0].1.len(), 2);
        let many: Vec<u8> = (0..40)
            .map(|i| format!("k{}=v&", i % 20))
            .collect::<String>()
            .into();
        let parsed = args(&many, false);
        assert_eq!(parsed.len(), 20);
        assert!(parsed.iter().all(|(_, values)| values.len() == 2));
    }

    fn parts(
        path: &[u8],
        root: Option<&str>,
        query: &[u8],
    ) -> (Vec<u8>, Option<Vec<u8>>, Vec<u8>, usize) {
        let t = target(path.to_vec(), root, query);
        (t.uri, t.host, t.args.to_vec(), t.size)
    }

    #[test]
    fn targets() {
        let host = |h: &[u8]| Some(h.to_vec());
        assert_eq!(
            parts(b"http://user:pass@Example.COM:8080/x", None, b"y=1"),
            (
                b"/x?y=1".to_vec(),
                host(b"Example.COM:8080"),
                b"y=1".to_vec(),
                39
            )
        );
        assert_eq!(parts(b"http://h", None, b"a=1").0, b"?a=1");
        assert_eq!(parts(b"http://h", None, b"").0, b"/");
        assert_eq!(parts(b"http://u@", None, b"").1, None);
        assert_eq!(
            parts(b"/apihttp://u:p@h/x", Some("/api"), b""),
            (b"/api/x".to_vec(), host(b"h"), vec![], 18)
        );
        assert_eq!(parts(b"/api/x", Some("/api"), b"").0, b"/api/x");
        assert_eq!(parts(b"/api@x/y", Some("/api"), b"").0, b"/api@x/y");
        assert_eq!(parts(b"/other", Some("/api"), b"").0, b"/other");
        assert_eq!(parts(b"user:s3cret@h:443", None, b"").0, b"h:443");
        assert_eq!(parts(b"*", None, b"").0, b"*");
        assert_eq!(parts(b"/a#f", None, b"x=1").2, b"");
        assert_eq!(parts(b"/a", None, b"b#f").2, b"b");
        assert_eq!(parts(b"/a", None, b"b#f").0, b"/a?b#f");
    }

    #[test]
    fn chunks_and_names() {
        assert_eq!(chunk_framing(0), 5);
        assert_eq!(chunk_framing(5), 10);
        assert_eq!(chunk_framing(16), 11);
        assert_eq!(chunk_framing(-5), 11);
        assert!(is_chunked(b"Chunked"));
        assert!(is_chunked(b"gzip, chunked \t"));
        assert!(!is_chunked(b"chunked, gzip"));
        assert!(valid_name(b"X_Under-1"));
        assert!(!valid_name(b"x.dot"));
        assert!(!valid_name(b"x\xe9"));
        assert_eq!(trim_spaces(b"  a b  "), b"a b");
        assert_eq!(trim_spaces(b"   "), b"");
        assert_eq!(trim_spaces(b"\ta "), b"\ta");
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name(b" h  ").as_ref(), b"h");
        assert_eq!(host_name(b"Example.COM:8443").as_ref(), b"example.com");
        assert_eq!(host_name(b"example.com.").as_ref(), b"example.com");
        assert_eq!(host_name(b"[::1]:8000").as_ref(), b"[::1]");
        assert_eq!(host_name(b"[::1").as_ref(), b"[::1");
    }

    #[test]
    fn quoting_and_lengths() {
        assert_eq!(quote_path("/api/caf\u{e9} x?"), b"/api/caf%C3%A9%20x%3F");
        assert_eq!(declared_length(b"0027"), Ok(Some(27)));
        assert_eq!(declared_length(b"2x"), Ok(None));
        assert_eq!(declared_length(b""), Ok(None));
        assert_eq!(declared_length(b"99999999999999999999"), Ok(None));
    }

    #[test]
    fn milliseconds() {
        assert_eq!(ms(0.029), Some(29));
        assert_eq!(ms(0.0), Some(0));
        assert_eq!(ms(-1.0), Some(0));
        assert_eq!(ms(f64::NAN), Some(0));
        assert_eq!(ms(1700000000.5), Some(1700000000500));
        assert_eq!(ms(0.0129994), Some(12));
        assert_eq!(ms(0.0129996), Some(13));
        assert_eq!(ms(f64::INFINITY), None);
    }
}
