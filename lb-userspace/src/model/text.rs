//! Operator input as errors quote it, and whole numbers as an operator writes them.
//!
//! [`shown`] is how every error quotes what it was given: control characters and
//! invisible ones (a byte-order mark, NUL, zero-width and other format characters)
//! escaped as `\u{feff}`, so an error stays one line and says what was really typed.
//! [`number`] reads a whole number in digits only: Rust's `from_str` takes a leading
//! `+`, which no port, length, weight, timeout, id or count is written with.

use std::{fmt::Write as _, ops::RangeInclusive};

/// The most characters of one input an error quotes: a 30 MB bad value is shown by
/// its start and its size, not echoed whole.
pub const MAX_SHOWN: usize = 200;

/// The most characters of a whole message (which may quote input) [`message`] keeps:
/// far beyond any message xlb writes.
pub const MAX_MESSAGE: usize = 4096;

/// `s` as an error quotes it: control and invisible characters escaped (`\u{feff}`,
/// `\u{0}`; a tab, newline and carriage return as `\t`, `\n`, `\r`), everything else
/// as written; beyond [`MAX_SHOWN`] characters, its start and its length in bytes.
/// Escaping what is already escaped changes nothing.
pub fn shown(s: &str) -> String {
    shown_within(s, MAX_SHOWN)
}

/// A message (a reason, an error line) escaped as [`shown`] escapes input, cut only
/// beyond [`MAX_MESSAGE`].
pub fn message(s: &str) -> String {
    shown_within(s, MAX_MESSAGE)
}

/// [`shown`] with another length limit: a whole message line is longer than one
/// quoted input, and is cut only far beyond any message xlb writes.
pub fn shown_within(s: &str, max: usize) -> String {
    let cut = s.char_indices().nth(max).map(|(i, _)| i);
    if cut.is_none() && !s.chars().any(hidden) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len().min(4 * max) + 8);
    for c in s[..cut.unwrap_or(s.len())].chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    if cut.is_some() {
        let _ = write!(out, "... ({} bytes in all)", s.len());
    }
    out
}

/// Whether `c` would not show as itself in an error: a control character, or one that
/// prints as nothing or as a plain space (Unicode format characters, zero-width
/// characters, fillers, variation selectors, tags, spaces other than U+0020).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c as u32,
            0x00a0
                | 0x00ad
                | 0x034f
                | 0x061c
                | 0x115f..=0x1160
                | 0x1680
                | 0x17b4..=0x17b5
                | 0x180b..=0x180f
                | 0x2000..=0x200f
                | 0x2028..=0x202f
                | 0x205f..=0x206f
                | 0x2800
                | 0x3000
                | 0x3164
                | 0xfe00..=0xfe0f
                | 0xfeff
                | 0xffa0
                | 0xfff0..=0xfffb
                | 0x1bca0..=0x1bca3
                | 0x1d173..=0x1d17a
                | 0xe0000..=0xe0fff
        )
}

/// Why a text is not a whole number of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberError {
    /// Empty, or something other than ASCII digits (a sign, a space, `_`, `0x`...).
    NotDigits,
    /// Digits, but outside the range (or too large for any).
    OutOfRange,
}

/// A whole number in ASCII digits only (no sign, spaces, `_` or base prefix), within
/// `range`. Leading zeros are digits too (`080` is 80).
pub fn number(s: &str, range: RangeInclusive<u64>) -> Result<u64, NumberError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberError::NotDigits);
    }
    match s.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(NumberError::OutOfRange),
    }
}

/// [`number`] with the usual wording, for a value named `what` ("weight", "port"):
/// `'+5' is not a weight: write 1 to 100 in digits` or `weight 0 is out of range:
/// expected 1 to 100`. A command-line parser can take it as it is.
pub fn number_in(s: &str, what: &str, range: RangeInclusive<u64>) -> Result<u64, String> {
    let (lo, hi) = (*range.start(), *range.end());
    number(s, range).map_err(|e| match e {
        NumberError::NotDigits => {
            let a = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            format!(
                "'{}' is not {a} {what}: write {lo} to {hi} in digits",
                shown(s)
            )
        }
        NumberError::OutOfRange => format!("{what} {s} is out of range: expected {lo} to {hi}"),
    })
}

/// The UTC calendar date (year, month, day) of `secs` since the Unix epoch (Howard
/// Hinnant's days-to-civil algorithm), for the printers and the access log.
pub fn civil_date(secs: u64) -> (i64, i64, i64) {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_escapes_control_and_invisible_characters_only() {
        assert_eq!(shown("192.0.2.0/24"), "192.0.2.0/24");
        assert_eq!(shown("\u{feff}192.0.2.0/24"), "\\u{feff}192.0.2.0/24");
        assert_eq!(shown("a\0b\x1b[31m"), "a\\u{0}b\\u{1b}[31m");
        assert_eq!(shown("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(shown("80\u{200b}/tcp"), "80\\u{200b}/tcp");
        assert_eq!(shown("1\u{a0}2\u{7f}"), "1\\u{a0}2\\u{7f}");
        assert_eq!(shown("web-é…"), "web-é…", "printable text stays as written");
        let big = "a".repeat(30 << 20);
        let cut = shown(&big);
        assert!(cut.len() < 300, "a huge value is cut: {} bytes", cut.len());
        assert!(cut.ends_with(&format!("... ({} bytes in all)", 30 << 20)));
        let once = shown("\u{feff}x\n");
        assert_eq!(shown(&once), once, "escaping twice changes nothing");
    }

    #[test]
    fn numbers_are_digits_only() {
        assert_eq!(number("80", 1..=65535), Ok(80));
        assert_eq!(number("080", 1..=65535), Ok(80));
        for bad in ["+80", "-1", " 80", "80 ", "8_0", "0x50", "", "٣"] {
            assert_eq!(
                number(bad, 0..=u64::MAX),
                Err(NumberError::NotDigits),
                "{bad:?}"
            );
        }
        assert_eq!(number("0", 1..=65535), Err(NumberError::OutOfRange));
        assert_eq!(number("70000", 1..=65535), Err(NumberError::OutOfRange));
        assert_eq!(
            number("99999999999999999999999", 0..=u64::MAX),
            Err(NumberError::OutOfRange),
            "too large for any range is out of range, not 'not a number'"
        );
        assert_eq!(
            number_in("+5", "weight", 1..=100).unwrap_err(),
            "'+5' is not a weight: write 1 to 100 in digits"
        );
        assert_eq!(
            number_in("+5", "idle timeout", 1..=9).unwrap_err(),
            "'+5' is not an idle timeout: write 1 to 9 in digits"
        );
        assert_eq!(
            number_in("0", "weight", 1..=100).unwrap_err(),
            "weight 0 is out of range: expected 1 to 100"
        );
    }
}
