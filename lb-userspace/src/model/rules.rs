//! Firewall rules: what an operator writes (prefixes, port specs, policies), how it is
//! parsed and validated, and the rule set with stable ids that the datapath projects.

use std::{fmt, net::IpAddr, str::FromStr};

use lb_common::MAX_RULES;
use serde::{Deserialize, Serialize};

use super::fxhash::FxHashMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("'{input}' is not a prefix: {why}")]
    BadPrefix { input: String, why: String },
    #[error("'{input}' has host bits set: did you mean {suggest}?")]
    HostBits { input: String, suggest: String },
    #[error(
        "'{input}' is not a port spec: {why} (expected PORT/PROTO or LOW-HIGH/PROTO, e.g. 80/tcp, 1000-2000/udp)"
    )]
    BadPort { input: String, why: String },
    #[error("'{input}' is not a policy: expected allow or deny")]
    BadAction { input: String },
    #[error("{what} is not in the rule set")]
    NotFound { what: String },
    #[error("the rule set is full ({max} rules)")]
    Full { max: u32 },
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
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => {
                let n: u8 = l.parse().map_err(|_| bad("the length is not a number"))?;
                if n > max {
                    return Err(bad(&format!("the length is over {max}")));
                }
                n
            }
        };
        let masked = match addr {
            IpAddr::V4(a) => IpAddr::from(mask_v4(u32::from(a), len).to_be_bytes()),
            IpAddr::V6(a) => IpAddr::from(mask_v6(u128::from(a), len).to_be_bytes()),
        };
        if masked != addr {
            return Err(RuleError::HostBits {
                input: s.into(),
                suggest: format!("{masked}/{len}"),
            });
        }
        Ok(Prefix { addr, len })
    }
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
}

impl FromStr for PortSpec {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let bad = |why: &str| RuleError::BadPort {
            input: s.into(),
            why: why.into(),
        };
        let (ports, proto) = s
            .split_once('/')
            .ok_or_else(|| bad("the protocol is missing"))?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad("the protocol is not tcp or udp")),
        };
        let port = |p: &str| -> Result<u16, RuleError> {
            let n: u32 = p
                .parse()
                .map_err(|_| bad(&format!("'{p}' is not a number")))?;
            if n == 0 || n > 65535 {
                return Err(bad(&format!("port {n} is outside 1-65535")));
            }
            Ok(n as u16)
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
    /// nothing changes.
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
        let id = self.alloc_id()?;
        self.insert_with_id(Rule {
            id,
            matches,
            action,
        });
        Ok(Some(Change::Added(Rule {
            id,
            matches,
            action,
        })))
    }

    /// Restores a stored rule with its id.
    pub fn insert_with_id(&mut self, rule: Rule) {
        self.next_id = self.next_id.max(rule.id + 1);
        self.by_match.insert(rule.matches, rule.id);
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
                    self.insert_with_id(r);
                }
            }
        }
    }

    pub fn count(&self, pred: impl Fn(&Match) -> bool) -> usize {
        self.rules().filter(|r| pred(&r.matches)).count()
    }
}

/// Parses a bulk file: one prefix a line, optionally preceded by allow or deny (else
/// `action`); `#` starts a comment. The first bad line fails the whole file.
pub fn parse_bulk(text: &str, action: Action) -> Result<Vec<(Prefix, Action)>, (usize, RuleError)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some(p), None, _) => p.parse().map(|p| (p, action)),
            (Some(a), Some(p), None) => a.parse().and_then(|a| p.parse().map(|p| (p, a))),
            _ => Err(RuleError::BadPrefix {
                input: line.into(),
                why: "expected one prefix, optionally after allow or deny".into(),
            }),
        };
        out.push(parsed.map_err(|e| (n + 1, e))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_reject_host_bits() {
        let p: Prefix = "192.0.2.0/24".parse().unwrap();
        assert_eq!(p.len, 24);
        assert_eq!("192.0.2.7".parse::<Prefix>().unwrap().len, 32);
        assert_eq!("2001:db8::/32".parse::<Prefix>().unwrap().len, 32);
        assert_eq!("2001:db8::1".parse::<Prefix>().unwrap().len, 128);
        assert_eq!("0.0.0.0/0".parse::<Prefix>().unwrap().len, 0);
        let e = "192.0.2.1/24".parse::<Prefix>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "'192.0.2.1/24' has host bits set: did you mean 192.0.2.0/24?"
        );
        assert!(matches!(
            "192.0.2.0/33".parse::<Prefix>(),
            Err(RuleError::BadPrefix { .. })
        ));
        assert!(matches!(
            "2001:db8::1/64".parse::<Prefix>(),
            Err(RuleError::HostBits { .. })
        ));
        assert!(matches!(
            "300.1.1.1".parse::<Prefix>(),
            Err(RuleError::BadPrefix { .. })
        ));
        assert!(matches!(
            "192.0.2.0/x".parse::<Prefix>(),
            Err(RuleError::BadPrefix { .. })
        ));
    }

    #[test]
    fn port_specs_parse_and_reject_nonsense() {
        assert_eq!(
            "80/tcp".parse::<PortSpec>().unwrap(),
            PortSpec {
                proto: Proto::Tcp,
                lo: 80,
                hi: 80
            }
        );
        assert_eq!(
            "1000-2000/udp".parse::<PortSpec>().unwrap(),
            PortSpec {
                proto: Proto::Udp,
                lo: 1000,
                hi: 2000
            }
        );
        for bad in [
            "80",
            "80/icmp",
            "0/tcp",
            "65536/tcp",
            "2000-1000/udp",
            "a/tcp",
            "-5/tcp",
        ] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn upsert_updates_in_place_and_ids_are_reused() {
        let mut set = RuleSet::default();
        let p = Match::Prefix("192.0.2.0/24".parse().unwrap());
        let Some(Change::Added(r)) = set.upsert(p, Action::Deny).unwrap() else {
            panic!()
        };
        assert_eq!(set.upsert(p, Action::Deny).unwrap(), None);
        let Some(Change::Updated(u, _)) = set.upsert(p, Action::Allow).unwrap() else {
            panic!()
        };
        assert_eq!(r.id, u.id);
        set.remove(&p).unwrap();
        assert!(set.remove(&p).is_err());
        let q = Match::Prefix("198.51.100.0/24".parse().unwrap());
        let Some(Change::Added(r2)) = set.upsert(q, Action::Deny).unwrap() else {
            panic!()
        };
        assert_eq!(r2.id, r.id);
    }

    #[test]
    fn port_table_narrowest_range_wins() {
        let mut set = RuleSet::default();
        set.upsert(Match::Port("1-1000/tcp".parse().unwrap()), Action::Deny)
            .unwrap();
        set.upsert(Match::Port("80/tcp".parse().unwrap()), Action::Allow)
            .unwrap();
        set.upsert(Match::ExceptPort("22/tcp".parse().unwrap()), Action::Allow)
            .unwrap();
        let t = set.port_table();
        let at = |p| t[lb_common::port_index(0, p) as usize];
        assert_eq!(at(79).rule, lb_common::rule_ref(1, true));
        assert_eq!(at(80).rule, lb_common::rule_ref(2, false));
        assert_eq!(at(22).except, 3);
        assert_eq!(at(1001).rule, 0);
        assert_eq!(t[lb_common::port_index(1, 80) as usize].rule, 0);
    }

    #[test]
    fn bulk_files_name_the_bad_line() {
        let ok = parse_bulk(
            "# blocklist\n192.0.2.0/24\n\nallow 198.51.100.7 # friend\n",
            Action::Deny,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].1, Action::Allow);
        let (line, e) = parse_bulk("192.0.2.0/24\n192.0.2.1/24\n", Action::Deny).unwrap_err();
        assert_eq!(line, 2);
        assert!(matches!(e, RuleError::HostBits { .. }));
    }
}
