//! `[export]`: where the daemon sends its logs over OTLP/HTTP (the OpenTelemetry
//! protocol, which hosted log services accept), which of them, and how it batches.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{
    report::Report,
    values::{DurationText, Whole, duration},
};
use crate::model::services::not_a_destination;

/// The log streams that can be exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stream {
    /// The https service's access log records.
    Access,
    /// Sampled dropped-packet events.
    Drops,
    /// The daemon's own log lines (info and above).
    Daemon,
    /// Flow records (`[flows]`), one log record each.
    Flows,
}

impl Stream {
    pub const ALL: [Stream; 4] = [Stream::Access, Stream::Drops, Stream::Daemon, Stream::Flows];

    pub fn name(self) -> &'static str {
        match self {
            Stream::Access => "access",
            Stream::Drops => "drops",
            Stream::Daemon => "daemon",
            Stream::Flows => "flows",
        }
    }
}

/// A validated `[export]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    /// The OTLP/HTTP logs endpoint (`http://` or `https://`, e.g.
    /// `https://otlp.example/v1/logs`).
    pub endpoint: http::Uri,
    /// What is sent.
    pub streams: Vec<Stream>,
    /// Extra request headers (e.g. an `Authorization` a hosted service asks for).
    pub headers: BTreeMap<String, String>,
    /// Records per request at most.
    pub batch: usize,
    /// Records waiting at most; more are dropped and counted.
    pub queue: usize,
    /// How long a record may wait for its batch to fill.
    pub interval: Duration,
    /// How long one request may take.
    pub timeout: Duration,
    /// Tries of a batch before it is dropped (and counted).
    pub tries: u32,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an [export] table: otlp, streams, headers, batch, queue, interval, timeout, tries"
)]
pub(crate) struct RawExport {
    otlp: Spanned<String>,
    streams: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    batch: Option<Spanned<Whole>>,
    queue: Option<Spanned<Whole>>,
    interval: Option<Spanned<DurationText>>,
    timeout: Option<Spanned<DurationText>>,
    tries: Option<Spanned<Whole>>,
}

/// Validates `[export]`; None (errors reported) if refused.
pub(crate) fn section(r: &mut Report, raw: &RawExport) -> Option<ExportConfig> {
    let before = r.errors.len();
    let endpoint = match raw.otlp.get_ref().parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
            let host = u.host().unwrap_or_default();
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            match ip.parse().ok().and_then(not_a_destination) {
                None => Some(u),
                Some(what) => {
                    r.at(
                        raw.otlp.span(),
                        "export.otlp",
                        format!("endpoint {u} cannot work: {ip} is {what}"),
                    );
                    None
                }
            }
        }
        _ => {
            r.at(
                raw.otlp.span(),
                "export.otlp",
                format!(
                    "'{}' is not an OTLP/HTTP endpoint: expected http://HOST[:PORT]/PATH or https://..., e.g. \"http://192.0.2.5:4318/v1/logs\"",
                    crate::model::text::shown(raw.otlp.get_ref())
                ),
            );
            None
        }
    };
    let streams = match &raw.streams {
        None => Stream::ALL.to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            for s in list {
                match Stream::ALL.into_iter().find(|k| k.name() == s.get_ref()) {
                    Some(k) if !out.contains(&k) => out.push(k),
                    Some(_) => r.at(s.span(), "export.streams", "listed twice"),
                    None => r.at(
                        s.span(),
                        "export.streams",
                        format!(
                            "'{}' is not a stream: expected access, drops, daemon or flows",
                            crate::model::text::shown(s.get_ref())
                        ),
                    ),
                }
            }
            out
        }
    };
    for name in raw.headers.keys() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            r.at(
                raw.otlp.span(),
                "export.headers",
                format!("'{}' is not a header name", crate::model::text::shown(name)),
            );
        }
    }
    let num =
        |r: &mut Report, v: &Option<Spanned<Whole>>, field: &str, lo: i64, hi: i64, dflt: i64| {
            super::values::int_in(
                r,
                v,
                field,
                lo..=hi,
                field.rsplit('.').next().unwrap_or(field),
            )
            .unwrap_or(dflt)
        };
    let batch = num(r, &raw.batch, "export.batch", 1, 10_000, 512) as usize;
    let queue = num(r, &raw.queue, "export.queue", 1, 1_000_000, 16_384) as usize;
    let tries = num(r, &raw.tries, "export.tries", 1, 10, 3) as u32;
    let within = |r: &mut Report, v: &Option<Spanned<DurationText>>, field: &str, dflt: u64| {
        let Some(v) = v else {
            return Duration::from_millis(dflt);
        };
        match duration(r, v, field) {
            Some(d) if (Duration::from_millis(10)..=Duration::from_secs(60)).contains(&d) => d,
            Some(_) => {
                r.at(v.span(), field, "out of range: expected 10ms to 60s");
                Duration::from_millis(dflt)
            }
            None => Duration::from_millis(dflt),
        }
    };
    let interval = within(r, &raw.interval, "export.interval", 1000);
    let timeout = within(r, &raw.timeout, "export.timeout", 5000);
    if r.errors.len() != before {
        return None;
    }
    Some(ExportConfig {
        endpoint: endpoint?,
        streams,
        headers: raw.headers.clone(),
        batch,
        queue,
        interval,
        timeout,
        tries,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(src: &str) -> Result<Config, String> {
        Config::parse(src, Path::new("/etc/xlb/test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn an_export_table_parses_with_defaults() {
        let c = parse("[export]\notlp = \"http://192.0.2.5:4318/v1/logs\"\n").unwrap();
        let e = c.export.unwrap();
        assert_eq!(e.streams, Stream::ALL.to_vec());
        assert_eq!((e.batch, e.queue, e.tries), (512, 16_384, 3));
        assert_eq!(e.interval, Duration::from_secs(1));
        let c = parse(
            "[export]\notlp = \"https://otlp.example/v1/logs\"\nstreams = [\"access\", \"drops\"]\n\
             interval = \"250ms\"\nheaders = { authorization = \"Bearer x\" }\n",
        )
        .unwrap();
        let e = c.export.unwrap();
        assert_eq!(e.streams, vec![Stream::Access, Stream::Drops]);
        assert_eq!(e.interval, Duration::from_millis(250));
        assert_eq!(e.headers["authorization"], "Bearer x");
    }

    #[test]
    fn values_that_cannot_work_are_refused_where_written() {
        for (src, want) in [
            ("otlp = \"192.0.2.5:4318\"", "is not an OTLP/HTTP endpoint"),
            ("otlp = \"http://0.0.0.0:4318/\"", "the unspecified address"),
            ("otlp = \"http://[::ffff:192.0.2.5]/\"", "IPv4-mapped"),
            (
                "otlp = \"http://255.255.255.255/\"",
                "the broadcast address",
            ),
            (
                "otlp = \"ftp://192.0.2.5/\"",
                "is not an OTLP/HTTP endpoint",
            ),
            (
                "otlp = \"http://192.0.2.5/\"\nstreams = [\"acess\"]",
                "'acess' is not a stream",
            ),
            (
                "otlp = \"http://192.0.2.5/\"\nstreams = [\"drops\", \"drops\"]",
                "listed twice",
            ),
            ("otlp = \"http://192.0.2.5/\"\nbatch = 0", "export.batch"),
            (
                "otlp = \"http://192.0.2.5/\"\ninterval = \"2h\"",
                "out of range",
            ),
            (
                "otlp = \"http://192.0.2.5/\"\nheaders = { \"a b\" = \"x\" }",
                "not a header name",
            ),
            (
                "otlp = \"http://192.0.2.5/\"\nendpoint = \"x\"",
                "unknown field",
            ),
        ] {
            let e = parse(&format!("[export]\n{src}\n")).unwrap_err();
            assert!(e.contains(want), "{src}: {e}");
        }
    }

    #[test]
    fn an_access_log_to_the_exporter_needs_the_access_stream() {
        let dir = std::env::temp_dir().join(format!("xlb-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("a.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("a.key"), key.serialize_pem()).unwrap();
        let d = dir.display();
        let tls = format!(
            "[tls]\nlisten = [\"192.0.2.1:443\"]\ndefault_cert = {{ chain = \"{d}/a.pem\", key = \"{d}/a.key\" }}\n\
             [[tls.routes]]\nhost = \"a.example\"\npool = \"p\"\n\
             [[tls.pools]]\nname = \"p\"\nbackends = [\"203.0.113.11:80\"]\n\
             [tls.access_log]\nto = \"otlp\"\n"
        );
        let e = parse(&tls).unwrap_err();
        assert!(
            e.contains("needs an [export] whose streams include \"access\""),
            "{e}"
        );
        let e = parse(&format!(
            "{tls}[export]\notlp = \"http://192.0.2.5/\"\nstreams = [\"drops\"]\n"
        ))
        .unwrap_err();
        assert!(e.contains("needs an [export]"), "{e}");
        parse(&format!("{tls}[export]\notlp = \"http://192.0.2.5/\"\n")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
