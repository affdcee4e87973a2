//! JSON output with orjson's exact formatting.
//!
//! orjson escapes only what JSON requires (`"`, `\`, and the control characters below
//! U+0020, with the short forms `\b \t \n \f \r` and `\u00xx` in lower-case hex
//! otherwise) and writes every other character, non-ASCII included, as raw UTF-8.
//! Integers are plain decimal. Nothing else occurs in an entry.

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Append the escaped form of `s`, which is valid UTF-8, without quotes.
pub fn escape_utf8(out: &mut Vec<u8>, s: &[u8]) {
    if s.len() >= DENSE {
        return escape_dense(out, s);
    }
    let mut start = 0;
    while let Some(offset) = find_special(&s[start..], false) {
        let i = start + offset;
        out.extend_from_slice(&s[start..i]);
        push_escape(out, s[i]);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// From this length on, a string is escaped a byte at a time through a table: a body
/// (JSON in a string) has an escape every few bytes, where restarting the word-wise
/// search after each one costs more than it saves.
const DENSE: usize = 256;

const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = needs_escape(byte as u8);
        byte += 1;
    }
    table
};

fn escape_dense(out: &mut Vec<u8>, s: &[u8]) {
    // Written into the spare capacity, room for the worst case (every byte a `\u00xx`),
    // by index: neither zeroed first nor grown per byte. (Word-wise skipping, as in
    // `find_special`, costs more here: a JSON body has a quote every few bytes.)
    out.reserve(s.len() * 6);
    let start = out.len();
    let buf = &mut out.spare_capacity_mut()[..s.len() * 6];
    let mut at = 0;
    for &byte in s {
        if !ESCAPED[usize::from(byte)] {
            buf[at].write(byte);
            at += 1;
            continue;
        }
        buf[at].write(b'\\');
        let short = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0A => b'n',
            0x0C => b'f',
            0x0D => b'r',
            _ => 0,
        };
        if short != 0 {
            buf[at + 1].write(short);
            at += 2;
        } else {
            let hex = [
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xF)],
            ];
            for (slot, digit) in buf[at + 1..at + 6].iter_mut().zip(hex) {
                slot.write(digit);
            }
            at += 6;
        }
    }
    // SAFETY: `at` bytes of the spare capacity, from its start, were written above.
    unsafe { out.set_len(start + at) };
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that may need an escape (a byte below 0x20, a
/// quote or a backslash); exact up to the lowest one set.
fn special_bytes(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    (word.wrapping_sub(ONES * 0x20) & !word
        | quote.wrapping_sub(ONES) & !quote
        | backslash.wrapping_sub(ONES) & !backslash)
        & HIGHS
}

/// Index of the first byte that needs an escape (or, with `high`, is not ASCII), eight
/// bytes at a time.
fn find_special(s: &[u8], high: bool) -> Option<usize> {
    let special = |b: u8| needs_escape(b) || (high && b >= 0x80);
    let mut chunks = s.chunks_exact(8);
    for (n, chunk) in chunks.by_ref().enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let hits = special_bytes(word);
        if hits != 0 || (high && word & HIGHS != 0) {
            if let Some(i) = chunk.iter().position(|&b| special(b)) {
                return Some(n * 8 + i);
            }
        }
    }
    let at = s.len() - chunks.remainder().len();
    chunks
        .remainder()
        .iter()
        .position(|&b| special(b))
        .map(|i| at + i)
}

/// Append the escaped form of `raw` read as latin-1 (one character per byte), without quotes.
pub fn escape_latin1(out: &mut Vec<u8>, raw: &[u8]) {
    if find_special(raw, true).is_none() {
        out.extend_from_slice(raw);
        return;
    }
    for &byte in raw {
        if byte >= 0x80 {
            out.extend_from_slice(&[0xC0 | (byte >> 6), 0x80 | (byte & 0x3F)]);
        } else if needs_escape(byte) {
            push_escape(out, byte);
        } else {
            out.push(byte);
        }
    }
}

/// Append `raw` as nginx_vars.text() decodes it (UTF-8 when valid, else latin-1), without quotes.
pub fn escape_text(out: &mut Vec<u8>, raw: &[u8]) {
    if find_special(raw, true).is_none() {
        out.extend_from_slice(raw); // ASCII with nothing to escape: the common case
    } else if std::str::from_utf8(raw).is_ok() {
        escape_utf8(out, raw);
    } else {
        // Each invalid byte as its latin-1 character, the valid runs as UTF-8.
        for chunk in raw.utf8_chunks() {
            escape_utf8(out, chunk.valid().as_bytes());
            escape_latin1(out, chunk.invalid());
        }
    }
}

/// `"s"` for a Rust string.
pub fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_utf8(out, s.as_bytes());
    out.push(b'"');
}

/// `"…"` for bytes decoded as nginx_vars.text() does.
pub fn text(out: &mut Vec<u8>, raw: &[u8]) {
    out.push(b'"');
    escape_text(out, raw);
    out.push(b'"');
}

/// `"…"` for bytes decoded as latin-1.
pub fn latin1(out: &mut Vec<u8>, raw: &[u8]) {
    out.push(b'"');
    escape_latin1(out, raw);
    out.push(b'"');
}

/// A decimal integer.
pub fn int(out: &mut Vec<u8>, value: i64) {
    let mut digits = [0u8; 20];
    let mut pos = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        pos -= 1;
        digits[pos] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[pos..]);
}

/// A decimal integer as a JSON string (kong2's sizes: every nginx variable is a string).
pub fn int_string(out: &mut Vec<u8>, value: i64) {
    out.push(b'"');
    int(out, value);
    out.push(b'"');
}

/// Characters in the decimal form of `value`, sign included.
pub fn decimal_len(value: i64) -> usize {
    let mut len = usize::from(value < 0) + 1;
    let mut rest = value.unsigned_abs() / 10;
    while rest > 0 {
        len += 1;
        rest /= 10;
    }
    len
}

const fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

fn push_escape(out: &mut Vec<u8>, byte: u8) {
    match byte {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x09 => out.extend_from_slice(b"\\t"),
        0x0A => out.extend_from_slice(b"\\n"),
        0x0C => out.extend_from_slice(b"\\f"),
        0x0D => out.extend_from_slice(b"\\r"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(byte >> 4)],
            HEX[usize::from(byte & 0xF)],
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_like_orjson() {
        assert_eq!(
            written(|o| string(o, "a\"b\\c/\u{7f}é")),
            "\"a\\\"b\\\\c/\u{7f}é\""
        );
        assert_eq!(
            written(|o| string(o, "\u{0}\u{8}\t\n\u{b}\u{c}\r\u{1f}")),
            { "\"\\u0000\\b\\t\\n\\u000b\\f\\r\\u001f\"" }
        );
    }

    #[test]
    fn dense_escapes_match_byte_by_byte_ones() {
        let pieces: [&[u8]; 8] = [
            b"\"",
            b"\\",
            b"\x00",
            b"\x1f",
            b"\n",
            b"abc",
            "é✓".as_bytes(),
            b"x",
        ];
        let mut seed = 7u64;
        for len in 0..300 {
            let mut s = Vec::new();
            while s.len() < len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.extend_from_slice(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let mut dense = b"head".to_vec();
            escape_dense(&mut dense, &s);
            let mut single = b"head".to_vec();
            for &byte in &s {
                if needs_escape(byte) {
                    push_escape(&mut single, byte);
                } else {
                    single.push(byte);
                }
            }
            assert_eq!(dense, single, "{s:?}");
        }
    }

    #[test]
    fn finds_what_a_byte_by_byte_look_finds() {
        // Every length around the 8-byte words, every byte value at one place,
        // with a second special byte after it or not.
        let reference = |s: &[u8], high: bool| {
            s.iter()
                .position(|&b| needs_escape(b) || (high && b >= 0x80))
        };
        for len in 1..70 {
            for at in [0, len / 3, len / 2, len - 1] {
                for byte in 0..=255u8 {
                    for second in [None, Some(b'"'), Some(0x80)] {
                        let mut s = vec![b'a'; len];
                        s[at] = byte;
                        if let Some(second) = second {
                            s[len - 1 - (len - 1 - at) / 2] = second;
                        }
                        for high in [false, true] {
                            assert_eq!(find_special(&s, high), reference(&s, high), "{s:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn finds_escapes_in_every_position() {
        for len in 0..70 {
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x1f] {
                    let mut s = vec![b'a'; len];
                    s[at] = special;
                    assert_eq!(find_special(&s, false), Some(at));
                    assert_eq!(find_special(&s, true), Some(at));
                }
            }
            let clean: Vec<u8> = (0..len)
                .map(|i| [b' ', 0x7f, 0xff, b'!', b'#', b'['][i % 6])
                .collect();
            assert_eq!(find_special(&clean, false), None);
            let ascii: Vec<u8> = (0..len)
                .map(|i| [b' ', 0x7f, b'!', b'#', b'['][i % 5])
                .collect();
            assert_eq!(find_special(&ascii, true), None);
            if len > 0 {
                let mut high = ascii.clone();
                high[len - 1] = 0xC3;
                assert_eq!(find_special(&high, true), Some(len - 1));
            }
        }
    }

    #[test]
    fn latin1_and_text() {
        assert_eq!(written(|o| latin1(o, b"caf\xe9\x85")), "\"café\u{85}\"");
        assert_eq!(written(|o| text(o, "café".as_bytes())), "\"café\"");
        assert_eq!(written(|o| text(o, b"caf\xe9")), "\"café\"");
    }

    #[test]
    fn integers() {
        for value in [0, 7, -7, 10, 99, 100, i64::MAX, i64::MIN] {
            assert_eq!(written(|o| int(o, value)), value.to_string());
            assert_eq!(decimal_len(value), value.to_string().len());
        }
        assert_eq!(written(|o| int_string(o, 195)), "\"195\"");
    }
}
