//! Small text helpers the printers share.

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let rem = secs % 86_400;
    let (y, m, d) = crate::model::text::civil_date(secs);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m {s:02}s"),
        _ => format!("{d}d {h:02}h {m:02}m"),
    }
}

/// `(none)` for an empty list.
pub fn or_none(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

/// Prints a reply as JSON (`--json`).
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// A duration argument: the configuration's syntax (`500ms`, `2s`, `5m`, `2h`, `1d`).
/// A bare number is refused with the spelling to use, as the file refuses it.
pub fn duration_arg(s: &str) -> Result<std::time::Duration, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!(
            "'{s}' has no unit: durations are written with one, e.g. {s}s or 500ms (ms, s, m, h, d)"
        ));
    }
    crate::config::parse_duration(s)
}
