//! The requests of the control protocol: one per CLI verb that talks to the daemon.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{rules::Action, services::Mode, synflood::SynMode, weights::AllDown};

/// One request; its reply type (in [`reply`](super::reply)) is named beside each
/// variant.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Source prefixes with an action. Reply: `RuleChanges` (so for every rule change).
    Prefix {
        action: Action,
        targets: Vec<String>,
    },
    /// Port specs with an action.
    Port {
        action: Action,
        targets: Vec<String>,
    },
    /// Always-allow prefixes or port specs.
    Except {
        targets: Vec<String>,
    },
    /// Removes rules: prefixes or port specs (`except` for the always-allow list).
    Del {
        except: bool,
        targets: Vec<String>,
    },
    /// The default policy. Reply: `PolicySet` (so for `Malformed`).
    Default {
        action: Action,
    },
    Malformed {
        action: Action,
    },
    /// Bulk prefixes, one a line (see rules::parse_bulk); with `replace`, they replace
    /// every prefix rule at once (a blocklist swapped without a moment of no rules).
    Load {
        action: Action,
        text: String,
        #[serde(default)]
        replace: bool,
    },
    /// The whole firewall as `fw save` writes it (policies and rule lines): it
    /// replaces the running one at once.
    Restore {
        text: String,
    },
    /// Removes every rule (the policies stay).
    Flush,
    /// Adds a service. Reply: `ServicesChanged` (so for every service and backend
    /// change).
    VipAdd {
        vip: String,
        mode: Mode,
        affinity_source: bool,
        echo: bool,
        /// Idle timeouts in seconds (None: the defaults).
        #[serde(default)]
        tcp_idle: Option<u32>,
        #[serde(default)]
        udp_idle: Option<u32>,
        /// fullnat: the source address towards the backends.
        #[serde(default)]
        snat: Option<String>,
    },
    /// Sets a service's health check from its `key=value` settings (the keys of a
    /// `[service.health]` table, `kind` among them), or removes it (None).
    VipCheck {
        vip: String,
        check: Option<BTreeMap<String, String>>,
    },
    VipDel {
        vip: String,
    },
    /// Changes a service's settings in place (None: kept); its flows stay where they
    /// are unless the change moves them (a new mode).
    VipSet {
        vip: String,
        #[serde(default)]
        mode: Option<Mode>,
        #[serde(default)]
        affinity_source: Option<bool>,
        #[serde(default)]
        echo: Option<bool>,
        #[serde(default)]
        tcp_idle: Option<u32>,
        #[serde(default)]
        udp_idle: Option<u32>,
        #[serde(default)]
        snat: Option<String>,
        /// SYN-flood protection: its mode and `auto`'s threshold (new flows per second).
        #[serde(default)]
        syn_protection: Option<SynMode>,
        #[serde(default)]
        syn_threshold: Option<u32>,
        /// Every backend down at once: panic (send to all, the default) or strict.
        #[serde(default)]
        all_down: Option<AllDown>,
    },
    /// Reply: `ServiceList`.
    VipList,
    BackendAdd {
        vip: String,
        backend: String,
        weight: u32,
        /// Takes flows only while every primary of the service is out.
        #[serde(default)]
        backup: bool,
    },
    /// Changes a backend in place (None: kept): its weight, whether it is a backup.
    BackendSet {
        vip: String,
        backend: String,
        #[serde(default)]
        weight: Option<u32>,
        #[serde(default)]
        backup: Option<bool>,
    },
    /// Takes a backend out of new flows (weight 0) until `BackendEnable`.
    BackendDrain {
        vip: String,
        backend: String,
    },
    BackendEnable {
        vip: String,
        backend: String,
    },
    BackendDel {
        vip: String,
        backend: String,
    },
    /// Adds a rate limit, from its words as written (see model::ratelimit::LimitWords).
    /// Reply: `LimitChanges` (so for `LimitDel`).
    LimitAdd {
        rate: String,
        #[serde(default)]
        burst: Option<String>,
        #[serde(default)]
        per: Option<String>,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        new_flows: bool,
        #[serde(default)]
        service: Option<String>,
    },
    /// Removes the rate limit of this match.
    LimitDel {
        #[serde(default)]
        per: Option<String>,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        new_flows: bool,
        #[serde(default)]
        service: Option<String>,
    },
    /// The rate limits with their counters. Reply: `LimitList`.
    LimitList,
    /// The rules with their hits. Reply: `RuleList`.
    List,
    /// Reply: `Stats`.
    Stats,
    /// The daemon: interfaces, program, configuration, rules and services. Reply:
    /// `Status`.
    Status,
    /// Re-reads the configuration file and applies what changed in it; with `reset`,
    /// returns to the file exactly (the CLI's changes go). Reply: `Reloaded`.
    Reload {
        #[serde(default)]
        reset: bool,
    },
    /// Zeroes the counters. Reply: `CountersReset`.
    ResetCounters,
    /// Stops the daemon and removes the datapath: detaches from every interface,
    /// removes the pins (`xlb down`). Reply: `Stopping`.
    Down,
}

impl Request {
    /// The request's `op` (its JSON tag), for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Prefix { .. } => "prefix",
            Request::Port { .. } => "port",
            Request::Except { .. } => "except",
            Request::Del { .. } => "del",
            Request::Default { .. } => "default",
            Request::Malformed { .. } => "malformed",
            Request::Load { .. } => "load",
            Request::Restore { .. } => "restore",
            Request::VipSet { .. } => "vip_set",
            Request::BackendSet { .. } => "backend_set",
            Request::ResetCounters => "reset_counters",
            Request::Flush => "flush",
            Request::VipAdd { .. } => "vip_add",
            Request::VipCheck { .. } => "vip_check",
            Request::VipDel { .. } => "vip_del",
            Request::VipList => "vip_list",
            Request::BackendAdd { .. } => "backend_add",
            Request::BackendDrain { .. } => "backend_drain",
            Request::BackendEnable { .. } => "backend_enable",
            Request::BackendDel { .. } => "backend_del",
            Request::LimitAdd { .. } => "limit_add",
            Request::LimitDel { .. } => "limit_del",
            Request::LimitList => "limit_list",
            Request::List => "list",
            Request::Stats => "stats",
            Request::Status => "status",
            Request::Reload { .. } => "reload",
            Request::Down => "down",
        }
    }

    /// The request's arguments as the daemon's change log writes them: a file's text
    /// (`fw load`, `fw restore`) by its size, everything else as sent, cut at
    /// [`crate::model::text::MAX_SHOWN`] characters.
    pub fn args(&self) -> String {
        let lines = |t: &str| format!("{} lines, {} bytes", t.lines().count(), t.len());
        let args = match self {
            Request::Load {
                action,
                text,
                replace,
            } => format!(
                "{{\"action\":\"{action}\",\"replace\":{replace},\"text\":\"{}\"}}",
                lines(text)
            ),
            Request::Restore { text } => format!("{{\"text\":\"{}\"}}", lines(text)),
            other => serde_json::to_string(other).unwrap_or_default(),
        };
        crate::model::text::shown(&args)
    }

    /// Whether the request changes something (and is logged with its caller).
    pub fn changes(&self) -> bool {
        !matches!(
            self,
            Request::VipList
                | Request::List
                | Request::LimitList
                | Request::Stats
                | Request::Status
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name` is the JSON tag.
    #[test]
    fn names_are_the_wire_names() {
        for r in [
            Request::Flush,
            Request::VipList,
            Request::Reload { reset: true },
            Request::Default {
                action: Action::Deny,
            },
            Request::BackendDrain {
                vip: String::new(),
                backend: String::new(),
            },
        ] {
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(v["op"], r.name());
        }
    }
}
