//! The desired state as a whole: what the daemon keeps, stores and projects onto the
//! kernel's maps.

use std::{collections::BTreeMap, net::IpAddr};

use super::{
    drain::Draining,
    ratelimit::Limits,
    rules::{Action, Match, Prefix, RuleSet},
    services::{BackendAddr, Services},
    weights::Flags,
};

/// The part of the desired state a configuration file manages: what the file asked
/// for, kept so that a reload applies diff(last file, new file) and leaves the CLI's
/// own changes alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Projection {
    pub default_policy: Action,
    pub malformed_policy: Action,
    pub rules: BTreeMap<Match, Action>,
    pub services: Services,
    /// Backends that take flows only while every primary of their service is out.
    pub backups: Flags,
    /// Rate limits (`[[firewall.limit]]`).
    pub limits: Limits,
}

impl Projection {
    /// Backends whose packets this firewall would drop, with why (see
    /// [`denied_backends`]).
    pub fn denied_backends(&self) -> Vec<(BackendAddr, String)> {
        denied_backends(&self.services, self.default_policy, |m| {
            self.rules.get(m).copied()
        })
    }
}

/// Backends of `services` whose packets a firewall would drop, with why: the firewall
/// sees every packet first, so a denied backend's replies (nat, fullnat) and its
/// health-check answers never reach the balancer or the daemon. By source prefix:
/// `except` allows, else the longest matching prefix, else the default policy (port
/// rules match a reply's destination, the client's or the checker's port, which no
/// rule names). `rule` looks one match up: every prefix that holds a backend is
/// looked up, 33 or 129 lookups a backend, so a million rules cost no more.
pub fn denied_backends(
    services: &Services,
    default_policy: Action,
    rule: impl Fn(&Match) -> Option<Action>,
) -> Vec<(BackendAddr, String)> {
    let mut out = Vec::new();
    for (vip, conf) in &services.by_vip {
        for b in conf.backends.keys() {
            if let Some(why) = denies_source(b.addr, default_policy, &rule) {
                out.push((
                    *b,
                    format!(
                        "backend {b} of service {vip} is denied by the firewall ({why}): its replies and health-check answers would be dropped; allow it (a longer prefix or an except)"
                    ),
                ));
            }
        }
    }
    out
}

fn denies_source(
    a: IpAddr,
    default_policy: Action,
    rule: impl Fn(&Match) -> Option<Action>,
) -> Option<String> {
    let width = if a.is_ipv4() { 32 } else { 128 };
    let holders = || (0..=width).rev().map(|len| Prefix::of(a, len));
    if holders().any(|p| rule(&Match::ExceptPrefix(p)).is_some()) {
        return None;
    }
    match holders().find_map(|p| rule(&Match::Prefix(p)).map(|act| (p, act))) {
        Some((p, Action::Deny)) => Some(format!("deny {p}")),
        Some(_) => None,
        None if default_policy == Action::Deny => Some("the default policy".into()),
        None => None,
    }
}

impl Default for Projection {
    fn default() -> Self {
        let r = RuleSet::default();
        Projection {
            default_policy: r.default_policy,
            malformed_policy: r.malformed_policy,
            rules: BTreeMap::new(),
            services: Services::default(),
            backups: Flags::new(),
            limits: Limits::default(),
        }
    }
}

/// Everything the daemon stores: firewall rules and services, the backends' flags, and
/// the configuration file's projection they were last built from.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub rules: RuleSet,
    pub services: Services,
    /// Backends that serve only while their service's primaries are out.
    pub backups: Flags,
    /// Backends the operator drained (`xlb backend drain`).
    pub drained: Flags,
    /// Rate limits (`xlb fw limit`).
    pub limits: Limits,
    pub base: Projection,
}

/// The desired state, borrowed (what the daemon writes to the state file).
pub struct DesiredRef<'a> {
    pub rules: &'a RuleSet,
    pub services: &'a Services,
    pub backups: &'a Flags,
    pub drained: &'a Flags,
    pub limits: &'a Limits,
    pub base: &'a Projection,
}

impl Desired {
    pub fn borrowed(&self) -> DesiredRef<'_> {
        DesiredRef {
            rules: &self.rules,
            services: &self.services,
            backups: &self.backups,
            drained: &self.drained,
            limits: &self.limits,
            base: &self.base,
        }
    }
}

/// The services with their backends' flags and drains: what the kernel's view of the
/// services is made of (see `weights::effective`).
#[derive(Clone, Debug)]
pub struct Pools {
    pub services: Services,
    pub backups: Flags,
    pub drained: Flags,
    pub draining: Draining,
}
