//! Firewall rules: what an operator writes (prefixes, port specs, policies), how it is
//! parsed and validated, and the rule set with stable ids that the datapath projects.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
};

use lb_common::MAX_RULES;
use serde::{Deserialize, Serialize};

use super::{
    fxhash::FxHashMap,
    text::{self, NumberError, shown},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("'{}' is not a prefix: {}", shown(.input), text::message(.why))]
    BadPrefix { input: String, why: String },
    #[error("'{}' has host bits set: did you mean {suggest}?", shown(.input))]
    HostBits { input: String, suggest: String },
    #[error(
        "'{}' is not a port spec: {} (expected PORT/PROTO or LOW-HIGH/PROTO, e.g. 80/tcp, 1000-2000/udp)",
        shown(.input),
        text::message(.why)
    )]
    BadPort { input: String, why: String },
    /// A prefix where a port spec belongs.
    #[error(
        "'{}' is a prefix, not a port spec: prefixes go to `xlb fw deny|allow` (a port spec is PORT/PROTO, e.g. 80/tcp)",
        shown(.input)
    )]
    PrefixNotPort { input: String },
    /// A port spec where a prefix belongs.
    #[error(
        "'{}' is a port spec, not a prefix: port rules go to `xlb fw port deny|allow`",
        shown(.input)
    )]
    PortNotPrefix { input: String },
    #[error("'{}' is not a policy: expected allow or deny", shown(.input))]
    BadAction { input: String },
    #[error("{what} is not in the rule set")]
    NotFound { what: String },
    #[error("the rule set is full ({max} rules)")]
    Full { max: u32 },
    /// A port range that overlaps another of the same width (and protocol, and kind):
    /// the port table's narrowest range would have no winner.
    #[error("{new} overlaps rule {id} ({old}) and is as wide ({width} ports): {TIE_WHY}")]
    SameWidth {
        new: String,
        id: u32,
        old: String,
        width: u32,
    },
    /// A rule that cannot be restored with its id (the state file).
    #[error("rule {id}: {why}")]
    BadId { id: u32, why: String },
    /// A bulk file that allows and denies one prefix.
    #[error("{prefix} is {here} here but {there} at line {line}: keep one of them")]
    Contradicts {
        prefix: Prefix,
        here: &'static str,
        there: &'static str,
        line: usize,
    },
}

/// Why two overlapping port ranges of one width are refused, and what works instead.
pub const TIE_WHY: &str = "the narrowest range decides a port, so equal widths leave no winner; make one of them narrower, or move it off the other";

/// The ports a port spec can name.
pub const MIN_PORT: u16 = 1;
pub const MAX_PORT: u16 = u16::MAX;

/// A rule id as the state file writes it: digits, 1 to `MAX_RULES - 1`.
pub fn parse_id(s: &str) -> Result<u32, String> {
    text::number_in(s, "rule id", 1..=(MAX_RULES - 1) as u64).map(|n| n as u32)
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl FromStr for Action {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        match s {
            "allow" | "pass" | "accept" => Ok(Action::Allow),
            "deny" | "drop" | "block" => Ok(Action::Deny),
            _ => Err(RuleError::BadAction { input: s.into() }),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// An IPv4 or IPv6 prefix with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The prefix of length `len` (at most the family's width) that holds `a`.
    pub fn of(a: IpAddr, len: u8) -> Prefix {
        let addr = match a {
            IpAddr::V4(v) => IpAddr::V4(mask_v4(u32::from(v), len.min(32)).into()),
            IpAddr::V6(v) => IpAddr::V6(mask_v6(u128::from(v), len.min(128)).into()),
        };
        Prefix {
            addr,
            len: len.min(if a.is_ipv4() { 32 } else { 128 }),
        }
    }

    /// Whether `a` is inside the prefix (same family).
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self.addr, a) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                mask_v4(u32::from(a), self.len) == mask_v4(u32::from(p), self.len)
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                mask_v6(u128::from(a), self.len) == mask_v6(u128::from(p), self.len)
            }
            _ => false,
        }
    }
}

fn mask_v4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - len))
    }
}

fn mask_v6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - len))
    }
}

impl FromStr for Prefix {
    type Err = RuleError;
    /// `ADDR/LEN`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let bad = |why: &str| RuleError::BadPrefix {
            input: s.into(),
            why: why.into(),
        };
        if looks_like_port_spec(s) {
            return Err(RuleError::PortNotPrefix { input: s.into() });
        }
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        if addr.contains('%') {
            return Err(bad(
                "a zone (%IFACE) is not part of a prefix: the firewall matches the address alone, so write it without one",
            ));
        }
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match text::number(l, 0..=max as u64) {
                Ok(n) => n as u8,
                Err(NumberError::NotDigits) => {
                    return Err(bad(&format!(
                        "the length '{}' is not a number: write 0 to {max} in digits",
                        shown(l)
                    )));
                }
                Err(NumberError::OutOfRange) => {
                    return Err(bad(&format!("the length is over {max}: use 0 to {max}")));
                }
            },
        };
        let masked = match addr {
            IpAddr::V4(a) => IpAddr::from(mask_v4(u32::from(a), len).to_be_bytes()),
            IpAddr::V6(a) => IpAddr::from(mask_v6(u128::from(a), len).to_be_bytes()),
        };
        if let Some(v4) = ipv4_mapped(masked)
            && len >= 96
        {
            return Err(bad(&format!(
                "an IPv4-mapped IPv6 prefix never matches an IPv4 packet (the firewall sees those as IPv4): use {v4}/{}",
                len - 96
            )));
        }
        if masked != addr {
            return Err(RuleError::HostBits {
                input: s.into(),
                suggest: format!("{masked}/{len}"),
            });
        }
        Ok(Prefix { addr, len })
    }
}

/// The IPv4 address of an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`), which no
/// IPv4 packet carries: an IPv4 packet has IPv4 addresses.
pub fn ipv4_mapped(a: IpAddr) -> Option<Ipv4Addr> {
    match a {
        IpAddr::V6(a) => a.to_ipv4_mapped(),
        IpAddr::V4(_) => None,
    }
}

/// `80/tcp`, `1000-2000/udp`, `80/sctp`: ports (digits and '-') before a '/' and
/// letters after it. A prefix's length is digits.
fn looks_like_port_spec(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ports, proto)| {
        !ports.is_empty()
            && ports.bytes().all(|b| b.is_ascii_digit() || b == b'-')
            && !proto.is_empty()
            && proto.bytes().all(|b| b.is_ascii_alphabetic())
    })
}

/// `192.0.2.0/24`, `2001:db8::1`: an address (something with '.' or ':') before an
/// optional '/' and a length. A port spec's ports are digits.
fn looks_like_prefix(s: &str) -> bool {
    let (addr, len) = s.split_once('/').unwrap_or((s, ""));
    addr.contains(['.', ':']) && len.bytes().all(|b| b.is_ascii_digit())
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// Index of the protocol in the kernel's port table.
    pub fn table_index(self) -> u32 {
        match self {
            Proto::Tcp => lb_common::PORT_PROTO_TCP,
            Proto::Udp => lb_common::PORT_PROTO_UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A destination port or an inclusive range of them, for one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    pub proto: Proto,
    pub lo: u16,
    pub hi: u16,
}

impl PortSpec {
    pub fn width(&self) -> u32 {
        (self.hi - self.lo) as u32 + 1
    }

    /// Whether `self` and `other` would leave the port table without a winner: the same
    /// protocol and width, different ranges, and a port in common.
    pub fn ties_with(&self, other: &PortSpec) -> bool {
        self.proto == other.proto
            && self.width() == other.width()
            && self.lo != other.lo
            && self.lo <= other.hi
            && other.lo <= self.hi
    }
}

impl FromStr for PortSpec {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let bad = |why: &str| RuleError::BadPort {
            input: s.into(),
            why: why.into(),
        };
        if looks_like_prefix(s) {
            return Err(RuleError::PrefixNotPort { input: s.into() });
        }
        let (ports, proto) = s
            .split_once('/')
            .ok_or_else(|| bad("the protocol is missing"))?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad("the protocol is not tcp or udp")),
        };
        let port = |p: &str| -> Result<u16, RuleError> {
            match text::number(p, MIN_PORT as u64..=MAX_PORT as u64) {
                Ok(n) => Ok(n as u16),
                Err(NumberError::NotDigits) => Err(bad(&format!(
                    "'{}' is not a port: write {MIN_PORT}-{MAX_PORT} in digits",
                    shown(p)
                ))),
                Err(NumberError::OutOfRange) => {
                    Err(bad(&format!("port {p} is outside {MIN_PORT}-{MAX_PORT}")))
                }
            }
        };
        let (lo, hi) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(bad("the range is backwards"));
        }
        Ok(PortSpec { proto, lo, hi })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}/{}", self.lo, self.proto)
        } else {
            write!(f, "{}-{}/{}", self.lo, self.hi, self.proto)
        }
    }
}

/// What a rule matches and does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Match {
    /// Source prefix, allow or deny (longest prefix wins).
    Prefix(Prefix),
    /// Protocol + destination port(s), allow or deny (narrowest range wins).
    Port(PortSpec),
    /// Always allowed source prefix.
    ExceptPrefix(Prefix),
    /// Always allowed destination port(s).
    ExceptPort(PortSpec),
}

impl Match {
    /// The key a rule is known by: one rule per key.
    pub fn kind(&self) -> &'static str {
        match self {
            Match::Prefix(_) => "prefix",
            Match::Port(_) => "port",
            Match::ExceptPrefix(_) => "except-prefix",
            Match::ExceptPort(_) => "except-port",
        }
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Prefix(p) | Match::ExceptPrefix(p) => p.fmt(f),
            Match::Port(p) | Match::ExceptPort(p) => p.fmt(f),
        }
    }
}

/// A port rule's place in the rule set's index of ranges.
fn port_key(m: &Match) -> Option<(bool, Proto, u32, u16)> {
    match *m {
        Match::Port(s) => Some((false, s.proto, s.width(), s.lo)),
        Match::ExceptPort(s) => Some((true, s.proto, s.width(), s.lo)),
        _ => None,
    }
}

/// A port spec (`80/tcp`; anything ending in `/` and letters) or else a prefix.
pub fn parse_target(s: &str) -> Result<Target, RuleError> {
    let proto = s.rsplit_once('/').map_or("", |(_, p)| p);
    if !proto.is_empty() && proto.chars().all(|c| c.is_ascii_alphabetic()) {
        Ok(Target::Port(s.parse()?))
    } else {
        Ok(Target::Prefix(s.parse()?))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Prefix(Prefix),
    Port(PortSpec),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: u32,
    pub matches: Match,
    /// Allow for the except kinds.
    pub action: Action,
}

/// A change to the rule set, as the datapath must apply it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added(Rule),
    /// The same match with a new action (same id); the old action.
    Updated(Rule, Action),
    Removed(Rule),
}

/// The firewall's desired state: policies and rules with stable ids.
#[derive(Clone, Debug)]
pub struct RuleSet {
    pub default_policy: Action,
    pub malformed_policy: Action,
    /// Rules by id (ids are dense: a slab, not a tree, keeps bulk loads fast).
    rules: Vec<Option<Rule>>,
    count: usize,
    by_match: FxHashMap<Match, u32>,
    /// The port rules as (except, protocol, width, low port): those of one width that
    /// could overlap a range are one range query away.
    port_ranges: BTreeSet<(bool, Proto, u32, u16)>,
    next_id: u32,
    free: Vec<u32>,
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet {
            default_policy: Action::Allow,
            malformed_policy: Action::Deny,
            rules: Vec::new(),
            count: 0,
            by_match: FxHashMap::default(),
            port_ranges: BTreeSet::new(),
            next_id: 1,
            free: Vec::new(),
        }
    }
}

impl RuleSet {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Makes room for `n` more rules (bulk loads).
    pub fn reserve(&mut self, n: usize) {
        self.by_match.reserve(n);
        self.rules.reserve(n);
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().flatten()
    }

    pub fn get(&self, m: &Match) -> Option<&Rule> {
        self.by_match
            .get(m)
            .and_then(|id| self.rules[*id as usize].as_ref())
    }

    fn alloc_id(&mut self) -> Result<u32, RuleError> {
        if let Some(id) = self.free.pop() {
            return Ok(id);
        }
        if self.next_id >= MAX_RULES {
            return Err(RuleError::Full { max: MAX_RULES - 1 });
        }
        self.next_id += 1;
        Ok(self.next_id - 1)
    }

    /// Adds a rule, or changes the action of the rule with the same match. `None` when
    /// nothing changes. A port range that overlaps another of the same width (and
    /// protocol and kind) is refused: the port table would have no winner between them.
    pub fn upsert(&mut self, matches: Match, action: Action) -> Result<Option<Change>, RuleError> {
        if let Some(&id) = self.by_match.get(&matches) {
            let rule = self.rules[id as usize]
                .as_mut()
                .expect("index and rules agree");
            if rule.action == action {
                return Ok(None);
            }
            let old = rule.action;
            rule.action = action;
            return Ok(Some(Change::Updated(*rule, old)));
        }
        self.check_ties(&matches)?;
        let id = self.alloc_id()?;
        let rule = Rule {
            id,
            matches,
            action,
        };
        self.put(rule);
        Ok(Some(Change::Added(rule)))
    }

    /// Restores a stored rule with its id (the state file): refused if the id is out of
    /// range or taken, the match is already a rule, or it ties with a port range
    /// (as [`RuleSet::upsert`] refuses).
    pub fn insert_with_id(&mut self, rule: Rule) -> Result<(), RuleError> {
        let bad = |why: String| RuleError::BadId { id: rule.id, why };
        if rule.id == 0 || rule.id >= MAX_RULES {
            return Err(bad(format!(
                "the id is out of range: expected 1 to {}",
                MAX_RULES - 1
            )));
        }
        if let Some(Some(other)) = self.rules.get(rule.id as usize) {
            return Err(bad(format!(
                "the id is already {} {}: each rule has its own",
                other.matches.kind(),
                other.matches
            )));
        }
        if let Some(&id) = self.by_match.get(&rule.matches) {
            return Err(bad(format!(
                "{} {} is already rule {id}",
                rule.matches.kind(),
                rule.matches
            )));
        }
        self.check_ties(&rule.matches)?;
        self.put(rule);
        Ok(())
    }

    /// A new port range must not tie with one of the same width that it overlaps.
    fn check_ties(&self, m: &Match) -> Result<(), RuleError> {
        let (except, spec) = match *m {
            Match::Port(s) => (false, s),
            Match::ExceptPort(s) => (true, s),
            _ => return Ok(()),
        };
        let w = spec.width();
        let from = (spec.lo as u32).saturating_sub(w - 1) as u16;
        let to = (spec.lo as u32 + (w - 1)).min(u16::MAX as u32) as u16;
        let found = self
            .port_ranges
            .range((except, spec.proto, w, from)..=(except, spec.proto, w, to))
            .map(|&(_, proto, _, lo)| PortSpec {
                proto,
                lo,
                hi: (lo as u32 + w - 1) as u16,
            })
            .find(|other| spec.ties_with(other));
        let Some(other) = found else {
            return Ok(());
        };
        let old = if except {
            Match::ExceptPort(other)
        } else {
            Match::Port(other)
        };
        let rule = self.get(&old).expect("index and rules agree");
        let (new, old) = if except {
            (format!("except {spec}"), format!("except {other}"))
        } else {
            (
                format!("port {spec}"),
                format!("port {} {other}", rule.action),
            )
        };
        Err(RuleError::SameWidth {
            new,
            id: rule.id,
            old,
            width: w,
        })
    }

    /// Puts a rule in its slot and the indexes (its match and id checked).
    fn put(&mut self, rule: Rule) {
        self.next_id = self.next_id.max(rule.id + 1);
        self.by_match.insert(rule.matches, rule.id);
        if let Some(k) = port_key(&rule.matches) {
            self.port_ranges.insert(k);
        }
        let i = rule.id as usize;
        if self.rules.len() <= i {
            self.rules.resize(i + 1, None);
        }
        if self.rules[i].replace(rule).is_none() {
            self.count += 1;
        }
    }

    pub fn remove(&mut self, matches: &Match) -> Result<Change, RuleError> {
        let id = self
            .by_match
            .remove(matches)
            .ok_or_else(|| RuleError::NotFound {
                what: format!("{} {matches}", matches.kind()),
            })?;
        if let Some(k) = port_key(matches) {
            self.port_ranges.remove(&k);
        }
        let rule = self.rules[id as usize]
            .take()
            .expect("index and rules agree");
        self.count -= 1;
        self.free.push(id);
        Ok(Change::Removed(rule))
    }

    /// Recomputes the free list after a restore (ids below next_id not in use).
    pub fn compact_free(&mut self) {
        self.free = (1..self.next_id)
            .rev()
            .filter(|id| self.rules.get(*id as usize).is_none_or(Option::is_none))
            .collect();
    }

    /// The port table as the kernel sees it: for each (protocol, port) the narrowest port
    /// rule (ties: the lower id) and the narrowest except rule.
    pub fn port_table(&self) -> Vec<lb_common::PortEntry> {
        let mut table = vec![lb_common::PortEntry::default(); lb_common::PORT_TABLE_SIZE as usize];
        let mut width = vec![[u32::MAX; 2]; table.len()];
        for rule in self.rules() {
            let (spec, slot) = match rule.matches {
                Match::Port(s) => (s, 0),
                Match::ExceptPort(s) => (s, 1),
                _ => continue,
            };
            for port in spec.lo..=spec.hi {
                let i = lb_common::port_index(spec.proto.table_index(), port) as usize;
                if spec.width() < width[i][slot] {
                    width[i][slot] = spec.width();
                    if slot == 0 {
                        table[i].rule = lb_common::rule_ref(rule.id, rule.action == Action::Deny);
                    } else {
                        table[i].except = rule.id;
                    }
                }
            }
        }
        table
    }

    /// Reverts changes made to this set, newest first.
    pub fn undo(&mut self, changes: &[Change]) {
        for c in changes.iter().rev() {
            match *c {
                Change::Added(r) => {
                    let _ = self.remove(&r.matches);
                }
                Change::Updated(r, old) => {
                    let _ = self.upsert(r.matches, old);
                }
                Change::Removed(r) => {
                    self.free.retain(|id| *id != r.id);
                    self.put(r);
                }
            }
        }
    }

    pub fn count(&self, pred: impl Fn(&Match) -> bool) -> usize {
        self.rules().filter(|r| pred(&r.matches)).count()
    }
}

/// Parses a bulk file: one prefix a line, optionally preceded by allow or deny (else
/// `action`); `#` starts a comment. The first bad line fails the whole file, and so
/// does a prefix the file both allows and denies (a prefix listed twice with one
/// action is fine).
pub fn parse_bulk(text: &str, action: Action) -> Result<Vec<(Prefix, Action)>, (usize, RuleError)> {
    let mut out = Vec::new();
    let mut seen: FxHashMap<Prefix, (usize, Action)> = FxHashMap::default();
    let done = |a: Action| match a {
        Action::Allow => "allowed",
        Action::Deny => "denied",
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some(p), None, _) => p.parse().map(|p| (p, action)),
            (Some(a), Some(p), None) if a.parse::<Action>().is_ok() => {
                p.parse().map(|p| (p, a.parse().expect("checked")))
            }
            _ => Err(RuleError::BadPrefix {
                input: line.into(),
                why: "expected one prefix, optionally after allow or deny (a prefix has no spaces)"
                    .into(),
            }),
        };
        let (p, a) = parsed.map_err(|e| (n + 1, e))?;
        match seen.get(&p) {
            Some(&(line, was)) if was != a => {
                return Err((
                    n + 1,
                    RuleError::Contradicts {
                        prefix: p,
                        here: done(a),
                        there: done(was),
                        line,
                    },
                ));
            }
            Some(_) => {}
            None => {
                seen.insert(p, (n + 1, a));
            }
        }
        out.push((p, a));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
