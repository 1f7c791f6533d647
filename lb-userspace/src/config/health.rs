//! The `health` table: a service's `[service.health]`, a TLS pool's `health`, the
//! words of `xlb vip check` and of the state file's `check` lines are all read as one
//! table and validated here (same defaults, limits and messages everywhere).

use std::{ops::RangeInclusive, path::Path};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{
    report::Report,
    values::{DurationText, Whole, duration, int_in},
};
use crate::model::{
    health_check::{
        CheckKind, DEFAULT_FALL, DEFAULT_INTERVAL, DEFAULT_RISE, DEFAULT_TIMEOUT, HealthCheck,
        MAX_INTERVAL, MAX_RISE_FALL, MIN_INTERVAL,
    },
    rules::{MAX_PORT, MIN_PORT},
    text::{self, NumberError, shown},
};

/// A `health` table as written: a service's `[service.health]` and a TLS pool's
/// `health` share it (and its validation, [`HealthTable::check`]). The spans locate
/// errors in the file it was read from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a health table: kind, and optionally interval, timeout, rise, fall, port, path, expect_status"
)]
pub struct HealthTable {
    pub(crate) kind: Spanned<String>,
    pub(crate) interval: Option<Spanned<DurationText>>,
    pub(crate) timeout: Option<Spanned<DurationText>>,
    pub(crate) rise: Option<Spanned<Whole>>,
    pub(crate) fall: Option<Spanned<Whole>>,
    pub(crate) port: Option<Spanned<Whole>>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) expect_status: Option<Spanned<Whole>>,
}

impl HealthTable {
    /// The check the table describes, or its first problem as `FIELD: MESSAGE` (fields
    /// under `section`, e.g. "tls.pools.health"), for callers without the file's text.
    pub fn check(&self, section: &str) -> Result<HealthCheck, String> {
        let mut r = Report::new("", Path::new(""));
        health_check(&mut r, self, section).ok_or_else(|| {
            r.errors.sort_by_key(|e| e.0);
            r.errors
                .first()
                .map_or_else(String::new, |(_, field, msg)| format!("{field}: {msg}"))
        })
    }
}

/// Validates a health table whose fields are named under `section` ("service.health",
/// "tls.pools.health"); None when it has errors (reported into `r`).
pub(crate) fn health_check(r: &mut Report, h: &HealthTable, section: &str) -> Option<HealthCheck> {
    let field = |k: &str| format!("{section}.{k}");
    let written = h.kind.get_ref().as_str();
    let kind = match CheckKind::ALL.into_iter().find(|k| k.name() == written) {
        Some(k) => k,
        None => {
            r.at(
                h.kind.span(),
                &field("kind"),
                format!("'{written}' is not a check kind: expected \"tcp\", \"http\", \"https\" or \"tls\""),
            );
            return None;
        }
    };
    let before = r.errors.len();
    let interval = match &h.interval {
        None => DEFAULT_INTERVAL,
        Some(v) => {
            let d = duration(r, v, &field("interval")).unwrap_or(DEFAULT_INTERVAL);
            if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
                r.at(
                    v.span(),
                    &field("interval"),
                    format!(
                        "interval '{}' is out of range: expected 100ms to 1h",
                        v.get_ref().0
                    ),
                );
            }
            d
        }
    };
    let timeout = match &h.timeout {
        None => DEFAULT_TIMEOUT.min(interval),
        Some(v) => {
            let d = duration(r, v, &field("timeout")).unwrap_or(DEFAULT_TIMEOUT);
            if d.is_zero() || d > interval {
                r.at(
                    v.span(),
                    &field("timeout"),
                    format!(
                        "timeout '{}' is out of range: expected more than 0 and at most the interval ({} ms)",
                        v.get_ref().0,
                        interval.as_millis()
                    ),
                );
            }
            d
        }
    };
    let int = |r: &mut Report, v: &Option<Spanned<Whole>>, key: &str| {
        let (_, what, range) = int_key(key).expect("an integer key");
        int_in(r, v, &field(key), range, what)
    };
    let rise = int(r, &h.rise, "rise").unwrap_or(DEFAULT_RISE as i64) as u32;
    let fall = int(r, &h.fall, "fall").unwrap_or(DEFAULT_FALL as i64) as u32;
    let port = int(r, &h.port, "port").map(|p| p as u16);
    for (set, key) in [
        (h.path.as_ref().map(|p| p.span()), "path"),
        (h.expect_status.as_ref().map(|p| p.span()), "expect_status"),
    ] {
        if let Some(s) = set
            && !kind.is_http()
        {
            r.at(
                s,
                &field(key),
                format!("only http and https checks have {key}: remove it or use kind = \"http\""),
            );
        }
    }
    let path = match &h.path {
        None => "/".to_string(),
        Some(p) => {
            let s = p.get_ref();
            if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                r.at(
                    p.span(),
                    &field("path"),
                    format!("'{s}' is not a request path: expected one starting with '/' and without spaces"),
                );
            }
            s.clone()
        }
    };
    let expect_status = int(r, &h.expect_status, "expect_status").unwrap_or(200) as u16;
    (r.errors.len() == before).then_some(HealthCheck {
        kind,
        interval,
        timeout,
        rise,
        fall,
        port,
        path,
        expect_status,
    })
}

/// The keys of a health check's word form (`kind=http interval=2s ...`: the CLI's and
/// the state file's), those of a `[service.health]` table; the integer ones
/// ([`INT_KEYS`]) are written as numbers in the table, the others as strings.
const CHECK_KEYS: [&str; 8] = [
    "kind",
    "interval",
    "timeout",
    "rise",
    "fall",
    "port",
    "path",
    "expect_status",
];

/// The integer keys of a health table: key, what a message calls it, the range.
const INT_KEYS: [(&str, &str, RangeInclusive<i64>); 4] = [
    ("rise", "rise", 1..=MAX_RISE_FALL),
    ("fall", "fall", 1..=MAX_RISE_FALL),
    ("port", "port", MIN_PORT as i64..=MAX_PORT as i64),
    ("expect_status", "status", 100..=599),
];

fn int_key(key: &str) -> Option<(&'static str, &'static str, RangeInclusive<i64>)> {
    INT_KEYS.iter().find(|(k, _, _)| *k == key).cloned()
}

/// A check from `key=value` pairs, with the defaults, limits and messages of a
/// `[service.health]` table (it is read as one); errors name `section.key`. Numbers
/// are digits only (no sign).
pub fn check_from_words<'a>(
    words: impl IntoIterator<Item = (&'a str, &'a str)>,
    section: &str,
) -> Result<HealthCheck, String> {
    let mut table = toml::Table::new();
    for (k, v) in words {
        if !CHECK_KEYS.contains(&k) {
            return Err(format!(
                "{section}: '{}' is not a health-check setting (expected one of {})",
                shown(k),
                CHECK_KEYS.join(", ")
            ));
        }
        let value = match int_key(k) {
            Some((_, what, range)) => {
                let (lo, hi) = (*range.start(), *range.end());
                match text::number(v, 0..=i64::MAX as u64) {
                    Ok(n) => toml::Value::Integer(n as i64),
                    Err(NumberError::NotDigits) => {
                        return Err(format!(
                            "{section}.{k}: '{}' is not a whole number: write {lo} to {hi} in digits",
                            shown(v)
                        ));
                    }
                    Err(NumberError::OutOfRange) => {
                        return Err(format!(
                            "{section}.{k}: {what} {v} is out of range: expected {lo} to {hi}"
                        ));
                    }
                }
            }
            None => toml::Value::String(v.to_string()),
        };
        if table.insert(k.to_string(), value).is_some() {
            return Err(format!("{section}.{k}: given twice"));
        }
    }
    if !table.contains_key("kind") {
        return Err(format!(
            "{section}: no kind: expected tcp, http, https or tls"
        ));
    }
    let text = toml::to_string(&table).map_err(|e| format!("{section}: {e}"))?;
    let raw: HealthTable =
        toml::from_str(&text).map_err(|e| format!("{section}: {}", shown(e.message())))?;
    raw.check(section)
}
