//! The requests of the control protocol: one per CLI verb that talks to the daemon.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{rules::Action, services::Mode};

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
    /// Bulk prefixes, one a line (see rules::parse_bulk).
    Load {
        action: Action,
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
    /// The rules with their hits. Reply: `RuleList`.
    List,
    /// Reply: `Stats`.
    Stats,
    /// The daemon: interfaces, program, configuration, rules and services. Reply:
    /// `Status`.
    Status,
    /// Re-reads the configuration file and applies what changed in it. Reply:
    /// `Reloaded`.
    Reload,
    /// Stops the daemon and removes the datapath: detaches from every interface,
    /// removes the pins (`xlb down`). Reply: `Stopping`.
    Down,
}
