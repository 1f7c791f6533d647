//! Rate limits as an operator writes them (`xlb fw limit`, `[[firewall.limit]]`, the
//! state file's `limit` lines), parsed and validated in one place, so the three refuse
//! the same input with the same words.
//!
//! A limit is a token bucket (rate and burst) on sources: every address its own bucket
//! (`per address`), every prefix of a length (`per /24`), or the prefix as a whole
//! (`per prefix`); for every packet or only for packets that open a flow; for all
//! traffic or one service. A limit is known by what it matches (service, prefix, per,
//! new flows): one limit per match. What the kernel does with it: lb_common::ratelimit.

use std::{collections::BTreeMap, fmt, str::FromStr};

use lb_common::MAX_LIMITS;
use serde::{Deserialize, Serialize};

use super::{
    rules::Prefix,
    services::{Services, Vip},
    text::{self, NumberError, shown},
};

/// The largest rate, per second (the kernel's clock keeps its interval within 3%).
pub const MAX_RATE_PER_SEC: u64 = 1_000_000_000;
/// The burst's range.
pub const MIN_BURST: u64 = 1;
pub const MAX_BURST: u64 = 1_000_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("{}", text::message(.0))]
    Invalid(String),
    #[error("a limit {0} is set already: remove it first (`xlb fw limit del`), or give it once")]
    Twice(String),
    #[error("no limit {0}: `xlb fw limit list` shows the limits")]
    NotFound(String),
    #[error("too many rate limits: at most {MAX_LIMITS}")]
    Full,
    #[error(
        "the limit {limit} names service {service}, which does not exist: add the service first"
    )]
    UnknownService { limit: String, service: String },
}

fn invalid(s: String) -> LimitError {
    LimitError::Invalid(s)
}

/// The period of a rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Second,
    Minute,
    Hour,
}

impl Period {
    pub fn secs(self) -> u64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3600,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Period::Second => "s",
            Period::Minute => "m",
            Period::Hour => "h",
        }
    }
}

/// A rate: `count` packets (or flows) a `period`, written `1000/s`, `600/m`, `10/h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rate {
    pub count: u64,
    pub period: Period,
}

const RATE_FORM: &str = "write COUNT/s, COUNT/m or COUNT/h, e.g. \"1000/s\"";

impl FromStr for Rate {
    type Err = LimitError;
    fn from_str(s: &str) -> Result<Self, LimitError> {
        let not = |why: &str| invalid(format!("'{}' is not a rate: {why}", shown(s)));
        let Some((n, unit)) = s.split_once('/') else {
            return Err(not(RATE_FORM));
        };
        let period = match unit {
            "s" => Period::Second,
            "m" => Period::Minute,
            "h" => Period::Hour,
            _ => return Err(not(&format!("'{}' is not s, m or h", shown(unit)))),
        };
        let max = MAX_RATE_PER_SEC * period.secs();
        let count = match text::number(n, 0..=max) {
            Ok(0) => {
                return Err(invalid(format!(
                    "rate {s} lets nothing through: give at least 1/{} (to drop every packet, use `xlb fw deny`)",
                    period.unit()
                )));
            }
            Ok(c) => c,
            Err(NumberError::NotDigits) => {
                return Err(not(&format!("the count must be digits; {RATE_FORM}")));
            }
            Err(NumberError::OutOfRange) => {
                return Err(invalid(format!(
                    "rate {} is out of range: at most {MAX_RATE_PER_SEC}/s",
                    shown(s)
                )));
            }
        };
        Ok(Rate { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.period.unit())
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a bucket is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Per {
    /// Every source address (a /32 or /128).
    Address,
    /// Every source prefix of this length (`/24`, `/64`).
    Length(u8),
    /// The prefix as a whole: one bucket.
    Prefix,
}

impl FromStr for Per {
    type Err = LimitError;
    fn from_str(s: &str) -> Result<Self, LimitError> {
        match s {
            "address" => Ok(Per::Address),
            "prefix" => Ok(Per::Prefix),
            _ => {
                let Some(n) = s.strip_prefix('/') else {
                    return Err(invalid(format!(
                        "'{}' is not what a limit is kept per: expected \"address\", \"prefix\" or a prefix length such as \"/24\"",
                        shown(s)
                    )));
                };
                match text::number(n, 0..=128) {
                    Ok(n) => Ok(Per::Length(n as u8)),
                    Err(NumberError::NotDigits) => Err(invalid(format!(
                        "'{}' is not a prefix length: write /0 to /128 in digits (e.g. /24)",
                        shown(s)
                    ))),
                    Err(NumberError::OutOfRange) => Err(invalid(format!(
                        "per {} is longer than any address (an IPv6 address has 128 bits)",
                        shown(s)
                    ))),
                }
            }
        }
    }
}

impl fmt::Display for Per {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Per::Address => f.write_str("address"),
            Per::Length(n) => write!(f, "/{n}"),
            Per::Prefix => f.write_str("prefix"),
        }
    }
}

/// What a limit matches: its identity (one limit per match).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitMatch {
    /// None: all traffic (to the host and to every service).
    pub service: Option<Vip>,
    /// None: every source of both families.
    pub prefix: Option<Prefix>,
    pub per: Per,
    /// Only packets that open a flow (a TCP SYN, the first UDP packet of a flow).
    pub new_flows: bool,
}

impl LimitMatch {
    /// Checks `per` against the prefix: a length needs one family, and fits between
    /// the prefix's length and the family's.
    pub fn new(
        service: Option<Vip>,
        prefix: Option<Prefix>,
        per: Per,
        new_flows: bool,
    ) -> Result<Self, LimitError> {
        if let Per::Length(n) = per {
            let Some(p) = prefix else {
                return Err(invalid(format!(
                    "per /{n} needs a prefix of one family (e.g. prefix 0.0.0.0/0 or ::/0): a length means another thing for IPv4 and IPv6"
                )));
            };
            let (max, family) = if p.is_v4() {
                (32, "IPv4")
            } else {
                (128, "IPv6")
            };
            if n > max {
                return Err(invalid(format!(
                    "per /{n} is longer than an {family} address ({max} bits): use /{} to /{max}",
                    p.len
                )));
            }
            if n < p.len {
                return Err(invalid(format!(
                    "per /{n} is shorter than the prefix {p}: every source in it shares one /{n}; use per prefix, or /{} to /{max}",
                    p.len
                )));
            }
        }
        Ok(LimitMatch {
            service,
            prefix,
            per,
            new_flows,
        })
    }
}

impl fmt::Display for LimitMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "per {}", self.per)?;
        match &self.prefix {
            Some(p) => write!(f, " from {p}")?,
            None => f.write_str(" from any source")?,
        }
        if self.new_flows {
            f.write_str(" on new flows")?;
        }
        if let Some(s) = &self.service {
            write!(f, " to {s}")?;
        }
        Ok(())
    }
}

/// A limit: its match, rate and burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Limit {
    pub matches: LimitMatch,
    pub rate: Rate,
    /// Packets (or flows) that may come at once, at least 1.
    pub burst: u64,
}

/// A burst as written (the CLI's `--burst`, the state file): digits, MIN_BURST to
/// MAX_BURST.
pub fn parse_burst(s: &str) -> Result<u64, LimitError> {
    match text::number(s, 0..=u64::MAX) {
        Ok(0) => Err(invalid(
            "burst 0 lets nothing through: give at least 1 (a packet at a time)".into(),
        )),
        _ => text::number_in(s, "burst", MIN_BURST..=MAX_BURST).map_err(invalid),
    }
}

impl Limit {
    /// A limit of `rate` with `burst` (None: the rate's count, one period's worth).
    pub fn new(matches: LimitMatch, rate: Rate, burst: Option<u64>) -> Result<Self, LimitError> {
        let burst = burst.unwrap_or(rate.count.min(MAX_BURST));
        if !(MIN_BURST..=MAX_BURST).contains(&burst) {
            return Err(invalid(format!(
                "burst {burst} is out of range: expected {MIN_BURST} to {MAX_BURST}"
            )));
        }
        let l = Limit {
            matches,
            rate,
            burst,
        };
        if l.tolerance_units().is_none() {
            return Err(invalid(format!(
                "burst {burst} at {rate} takes more than ten years to refill: give a smaller burst or a higher rate"
            )));
        }
        Ok(l)
    }

    /// The kernel's interval (1/rate) in clock units (lb_common::RL_CLOCK_SHIFT),
    /// rounded, at least 1.
    pub fn interval_units(&self) -> u64 {
        let units = lb_common::RL_UNITS_PER_SEC as u128 * self.rate.period.secs() as u128;
        let n = self.rate.count as u128;
        ((units + n / 2) / n).max(1) as u64
    }

    /// (burst - 1) intervals, if that stays within about ten years of clock.
    pub fn tolerance_units(&self) -> Option<u64> {
        let t = (self.burst as u128 - 1) * self.interval_units() as u128;
        (t <= 1 << 62).then_some(t as u64)
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} burst {} {}", self.rate, self.burst, self.matches)
    }
}

/// The limits in force, by match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub by_match: BTreeMap<LimitMatch, Limit>,
}

impl Limits {
    pub fn len(&self) -> usize {
        self.by_match.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_match.is_empty()
    }

    /// Adds a limit whose match is not set yet.
    pub fn add(&mut self, l: Limit) -> Result<(), LimitError> {
        if self.by_match.contains_key(&l.matches) {
            return Err(LimitError::Twice(l.matches.to_string()));
        }
        if self.by_match.len() >= MAX_LIMITS as usize {
            return Err(LimitError::Full);
        }
        self.by_match.insert(l.matches, l);
        Ok(())
    }

    /// Sets a limit, adding or replacing the one of its match.
    pub fn upsert(&mut self, l: Limit) -> Result<(), LimitError> {
        if !self.by_match.contains_key(&l.matches) && self.by_match.len() >= MAX_LIMITS as usize {
            return Err(LimitError::Full);
        }
        self.by_match.insert(l.matches, l);
        Ok(())
    }

    pub fn del(&mut self, m: &LimitMatch) -> Result<Limit, LimitError> {
        self.by_match
            .remove(m)
            .ok_or_else(|| LimitError::NotFound(m.to_string()))
    }

    /// Every limit's service exists in `services`.
    pub fn check_services(&self, services: &Services) -> Result<(), LimitError> {
        for m in self.by_match.keys() {
            if let Some(s) = &m.service
                && !services.by_vip.contains_key(s)
            {
                return Err(LimitError::UnknownService {
                    limit: m.to_string(),
                    service: s.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// A limit from its words as the CLI, the file and the state file give them (each
/// optional but the rate): one function, one set of messages.
pub struct LimitWords<'a> {
    pub rate: &'a str,
    pub burst: Option<&'a str>,
    pub per: Option<&'a str>,
    pub prefix: Option<&'a str>,
    pub new_flows: bool,
    pub service: Option<&'a str>,
}

impl LimitWords<'_> {
    /// The match alone (`xlb fw limit del`): the rate and burst are not read.
    pub fn matches(&self) -> Result<LimitMatch, LimitError> {
        let service = self
            .service
            .map(|s| s.parse::<Vip>().map_err(|e| invalid(e.to_string())))
            .transpose()?;
        let prefix = self
            .prefix
            .map(|p| {
                p.parse::<Prefix>()
                    .map_err(|e| invalid(format!("limit prefix: {e}")))
            })
            .transpose()?;
        let per = self
            .per
            .map(str::parse)
            .transpose()?
            .unwrap_or(Per::Address);
        LimitMatch::new(service, prefix, per, self.new_flows)
    }

    pub fn limit(&self) -> Result<Limit, LimitError> {
        let rate: Rate = self.rate.parse()?;
        let burst = self.burst.map(parse_burst).transpose()?;
        Limit::new(self.matches()?, rate, burst)
    }
}

/// A limit as `key=value` words (the state file's `limit` line; every key but the rate
/// only when it is not the default): what `LimitWords` reads back.
pub fn limit_words(l: &Limit) -> Vec<String> {
    let m = &l.matches;
    let mut w = vec![format!("rate={}", l.rate), format!("burst={}", l.burst)];
    if m.per != Per::Address {
        w.push(format!("per={}", m.per));
    }
    if let Some(p) = &m.prefix {
        w.push(format!("prefix={p}"));
    }
    if m.new_flows {
        w.push("new_flows=on".into());
    }
    if let Some(s) = &m.service {
        w.push(format!("service={s}"));
    }
    w
}

/// `limit_words` read back, one key at most once.
pub fn parse_limit_words(words: &[&str]) -> Result<Limit, LimitError> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(invalid(format!("'{}' is not KEY=VALUE", shown(w))));
        };
        if !matches!(
            k,
            "rate" | "burst" | "per" | "prefix" | "new_flows" | "service"
        ) {
            return Err(invalid(format!(
                "'{}' is not a setting of a limit (rate, burst, per, prefix, new_flows, service)",
                shown(k)
            )));
        }
        if seen.insert(k, v).is_some() {
            return Err(invalid(format!("{k} is given twice")));
        }
    }
    let new_flows = match seen.get("new_flows") {
        None => false,
        Some(&"on") => true,
        Some(v) => {
            return Err(invalid(format!(
                "new_flows={} is not on (leave it out for every packet)",
                shown(v)
            )));
        }
    };
    let Some(rate) = seen.get("rate") else {
        return Err(invalid("a limit needs its rate (rate=1000/s)".into()));
    };
    LimitWords {
        rate,
        burst: seen.get("burst").copied(),
        per: seen.get("per").copied(),
        prefix: seen.get("prefix").copied(),
        new_flows,
        service: seen.get("service").copied(),
    }
    .limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words<'a>(rate: &'a str) -> LimitWords<'a> {
        LimitWords {
            rate,
            burst: None,
            per: None,
            prefix: None,
            new_flows: false,
            service: None,
        }
    }

    #[test]
    fn rates_bursts_and_pers_parse_and_refuse_in_operator_words() {
        let l = words("1000/s").limit().unwrap();
        assert_eq!(
            (l.rate.count, l.burst, l.matches.per),
            (1000, 1000, Per::Address)
        );
        assert_eq!(l.interval_units(), 16_000_000);
        assert_eq!(l.tolerance_units(), Some(999 * 16_000_000));
        assert_eq!("600/m".parse::<Rate>().unwrap().to_string(), "600/m");
        let e = |w: LimitWords| w.limit().unwrap_err().to_string();
        assert!(
            e(words("0/s")).starts_with("rate 0/s lets nothing through"),
            "{}",
            e(words("0/s"))
        );
        assert!(e(words("1000")).contains("is not a rate: write COUNT/s"));
        assert!(e(words("10/d")).contains("'d' is not s, m or h"));
        assert!(e(words("+5/s")).contains("the count must be digits"));
        assert!(e(words("2000000000/s")).contains("out of range: at most 1000000000/s"));
        let b = |burst| {
            e(LimitWords {
                burst: Some(burst),
                ..words("10/s")
            })
        };
        assert!(
            b("0").starts_with("burst 0 lets nothing through"),
            "{}",
            b("0")
        );
        assert!(b("-1").contains("'-1' is not a burst"), "{}", b("-1"));
        assert!(b("2000000000").contains("burst 2000000000 is out of range"));
        assert!(
            e(LimitWords {
                burst: Some("1000000000"),
                ..words("1/h")
            })
            .contains("more than ten years")
        );
        let p = |per, prefix| {
            e(LimitWords {
                per: Some(per),
                prefix,
                ..words("10/s")
            })
        };
        assert!(p("/24", None).contains("needs a prefix of one family"));
        assert!(
            p("/33", Some("192.0.2.0/24"))
                .contains("per /33 is longer than an IPv4 address (32 bits)"),
            "{}",
            p("/33", Some("192.0.2.0/24"))
        );
        assert!(p("/16", Some("192.0.2.0/24")).contains("shorter than the prefix"));
        assert!(p("/129", Some("2001:db8::/32")).contains("longer than any address"));
        assert!(p("host", None).contains("'host' is not what a limit is kept per"));
        assert!(
            e(LimitWords {
                prefix: Some("192.0.2.0/33"),
                ..words("10/s")
            })
            .contains("the length is over 32")
        );
        assert!(
            e(LimitWords {
                service: Some("192.0.2.10:80"),
                ..words("10/s")
            })
            .contains("is not a service")
        );
    }

    #[test]
    fn a_match_is_set_once_and_words_round_trip() {
        let mut ls = Limits::default();
        let l = LimitWords {
            rate: "100/s",
            burst: Some("20"),
            per: Some("/64"),
            prefix: Some("2001:db8::/32"),
            new_flows: true,
            service: Some("[2001:db8::10]:80/tcp"),
        }
        .limit()
        .unwrap();
        ls.add(l).unwrap();
        assert!(matches!(ls.add(l), Err(LimitError::Twice(_))));
        let w = limit_words(&l);
        assert_eq!(
            w.join(" "),
            "rate=100/s burst=20 per=/64 prefix=2001:db8::/32 new_flows=on service=[2001:db8::10]:80/tcp"
        );
        let refs: Vec<&str> = w.iter().map(String::as_str).collect();
        assert_eq!(parse_limit_words(&refs).unwrap(), l);
        let e = parse_limit_words(&["rate=1/s", "rate=2/s"]).unwrap_err();
        assert_eq!(e.to_string(), "rate is given twice");
        assert!(parse_limit_words(&["burst=3"]).is_err());
        assert!(ls.del(&l.matches).is_ok());
        assert!(matches!(ls.del(&l.matches), Err(LimitError::NotFound(_))));
        let svc: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        ls.add(
            LimitWords {
                service: Some("192.0.2.10:80/tcp"),
                ..words("1/s")
            }
            .limit()
            .unwrap(),
        )
        .unwrap();
        let e = ls.check_services(&Services::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("names service {svc}, which does not exist"))
        );
    }
}
