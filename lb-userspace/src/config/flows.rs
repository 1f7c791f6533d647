//! `[flows]`: layer-4 flow records, read from the flow table and sent as IPFIX to a
//! collector (and, with `[export]`'s `flows` stream, as OTLP log records).

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{
    report::Report,
    values::{DurationText, Whole, duration},
};
use crate::model::{services::not_a_destination, text::shown};

/// A validated `[flows]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowsConfig {
    /// The IPFIX collector (UDP); None: records only for `[export]`.
    pub ipfix: Option<SocketAddr>,
    /// IPFIX observation domain id.
    pub domain: u32,
    /// One flow in `sample` gets records (chosen by its tuple's hash); 1: every flow.
    pub sample: u32,
    /// How often the flow table is read: the records' time resolution.
    pub scan: Duration,
    /// A long flow gets an interim record this often.
    pub active_timeout: Duration,
    /// Sampled dropped packets (`--drop-sample`) become IPFIX records too.
    pub drops: bool,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [flows] table: ipfix, domain, sample, scan, active_timeout, drops"
)]
pub(crate) struct RawFlows {
    ipfix: Option<Spanned<String>>,
    domain: Option<Spanned<Whole>>,
    sample: Option<Spanned<Whole>>,
    scan: Option<Spanned<DurationText>>,
    active_timeout: Option<Spanned<DurationText>>,
    drops: Option<bool>,
}

/// A duration in `lo..=hi`, else an error where it is written.
fn between(
    r: &mut Report,
    v: &Option<Spanned<DurationText>>,
    field: &str,
    (lo, hi): (Duration, Duration),
    dflt: Duration,
) -> Duration {
    let Some(v) = v else {
        return dflt;
    };
    match duration(r, v, field) {
        Some(d) if (lo..=hi).contains(&d) => d,
        Some(_) => {
            r.at(
                v.span(),
                field,
                format!("out of range: expected {lo:?} to {hi:?}"),
            );
            dflt
        }
        None => dflt,
    }
}

/// Validates `[flows]`; None (errors reported) if refused.
pub(crate) fn section(r: &mut Report, raw: &RawFlows) -> Option<FlowsConfig> {
    let before = r.errors.len();
    let ipfix = raw.ipfix.as_ref().and_then(|s| {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                r.at(s.span(), "flows.ipfix", format!("collector {a} has port 0"));
                None
            }
            Ok(a) => match not_a_destination(a.ip()) {
                None => Some(a),
                Some(what) => {
                    r.at(
                        s.span(),
                        "flows.ipfix",
                        format!("collector {a} cannot work: {} is {what}", a.ip()),
                    );
                    None
                }
            },
            Err(_) => {
                r.at(
                    s.span(),
                    "flows.ipfix",
                    format!(
                        "'{}' is not a collector address: expected IP:PORT (UDP), e.g. \"192.0.2.5:4739\"",
                        shown(s.get_ref())
                    ),
                );
                None
            }
        }
    });
    let num = |r: &mut Report, v: &Option<Spanned<Whole>>, field: &str, hi: i64, dflt: i64| {
        super::values::int_in(
            r,
            v,
            field,
            1..=hi,
            field.rsplit('.').next().unwrap_or(field),
        )
        .unwrap_or(dflt)
    };
    let domain = num(r, &raw.domain, "flows.domain", u32::MAX as i64, 1) as u32;
    let sample = num(r, &raw.sample, "flows.sample", 1_000_000, 1) as u32;
    let scan = between(
        r,
        &raw.scan,
        "flows.scan",
        (Duration::from_millis(100), Duration::from_secs(60)),
        Duration::from_secs(2),
    );
    let active_timeout = between(
        r,
        &raw.active_timeout,
        "flows.active_timeout",
        (Duration::from_secs(1), Duration::from_secs(3600)),
        Duration::from_secs(60),
    );
    if r.errors.len() != before {
        return None;
    }
    Some(FlowsConfig {
        ipfix,
        domain,
        sample,
        scan,
        active_timeout,
        drops: raw.drops.unwrap_or(true),
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
    fn a_flows_table_parses_with_defaults() {
        let c = parse("[flows]\nipfix = \"192.0.2.5:4739\"\n").unwrap();
        let f = c.flows.unwrap();
        assert_eq!(f.ipfix, Some("192.0.2.5:4739".parse().unwrap()));
        assert_eq!((f.domain, f.sample, f.drops), (1, 1, true));
        assert_eq!(f.scan, Duration::from_secs(2));
        assert_eq!(f.active_timeout, Duration::from_secs(60));
        let c = parse(
            "[flows]\nipfix = \"[2001:db8::5]:2055\"\nsample = 10\nscan = \"500ms\"\n\
             active_timeout = \"5m\"\ndrops = false\ndomain = 7\n",
        )
        .unwrap();
        let f = c.flows.unwrap();
        assert_eq!((f.domain, f.sample, f.drops), (7, 10, false));
        assert_eq!(f.scan, Duration::from_millis(500));
        assert_eq!(f.active_timeout, Duration::from_secs(300));
    }

    #[test]
    fn values_that_cannot_work_are_refused_where_written() {
        for (src, want) in [
            ("ipfix = \"192.0.2.5\"", "is not a collector address"),
            ("ipfix = \"192.0.2.5:0\"", "has port 0"),
            ("ipfix = \"0.0.0.0:4739\"", "the unspecified address"),
            ("ipfix = \"255.255.255.255:4739\"", "the broadcast address"),
            ("ipfix = \"[::ffff:192.0.2.5]:4739\"", "IPv4-mapped"),
            ("ipfix = \"224.0.0.9:4739\"", "a multicast address"),
            ("ipfix = \"collector:4739\"", "is not a collector address"),
            ("sample = 0", "flows.sample"),
            ("scan = \"1ms\"", "out of range"),
            ("active_timeout = \"2h\"", "out of range"),
            ("samples = 2", "unknown field"),
        ] {
            let err = parse(&format!("[flows]\n{src}\n")).expect_err(src);
            assert!(err.contains(want), "{src}: {err}");
        }
    }
}
