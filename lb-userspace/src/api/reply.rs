//! The daemon's replies, one type per kind of request: the daemon builds them and the
//! CLI prints them, so a field renamed on one side is a compile error on the other. On
//! the wire each is the `data` of a [`Response`](super::client::Response), as JSON
//! (`--json` prints it as it came).

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::{
    config::plan::ServicesDiff,
    kernel::Adoption,
    model::{
        health_check::HealthCheck, interface::AttachMode, rules::Action, services::Mode,
        synflood::SynMode,
    },
};

/// What a rule change did (`fw allow|deny|port|except|del|load|flush`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleChanges {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// Rules in the set afterwards.
    pub rules: usize,
}

/// A policy set (`fw default`, `fw malformed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySet {
    pub policy: Action,
}

/// A change of the services or their backends (`vip ...`, `backend ...`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesChanged {
    /// Services afterwards.
    pub services: usize,
}

/// `fw list`: the policies and every rule with its hits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleList {
    pub default: Action,
    pub malformed: Action,
    pub rules: Vec<RuleView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    pub id: u32,
    /// `prefix`, `port`, `except-prefix` or `except-port`.
    pub kind: String,
    #[serde(rename = "match")]
    pub matches: String,
    pub action: Action,
    pub hits: u64,
    /// Where the rule comes from: the configuration file, or a CLI change (which a
    /// `reload --reset` drops).
    pub source: Source,
}

/// Where a rule comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Cli,
}

/// `stats reset`: the counters are zero again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersReset {
    /// Rule hit counters zeroed.
    pub rules: usize,
    /// Backends whose counters were zeroed.
    pub backends: usize,
}

/// `vip list`, `backend list` and the services of `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<ServiceView>,
}

/// How a service picks backends for a client's flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// Each flow on its own (the 5-tuple hash).
    None,
    /// Every flow of a client to the same backend.
    Source,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub service: String,
    pub mode: Mode,
    pub affinity: Affinity,
    pub echo: bool,
    /// Idle timeouts in seconds (the JSON names say so).
    #[serde(rename = "tcp_idle_secs")]
    pub tcp_idle: u32,
    #[serde(rename = "udp_idle_secs")]
    pub udp_idle: u32,
    pub snat: Option<String>,
    /// The check in use: the configuration file's, else the one set with the CLI.
    pub health_check: Option<HealthCheck>,
    /// Every backend down at once: panic (send to all) or strict.
    #[serde(default)]
    pub all_down: crate::model::weights::AllDown,
    /// In panic mode now: every backend looks down and new flows go to all of them.
    #[serde(default)]
    pub panic: bool,
    /// Times it went into panic mode since the daemon started.
    #[serde(default)]
    pub panic_entered: u64,
    pub backends: Vec<BackendView>,
}

/// A backend as the operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Not health-checked: it takes flows by its weight.
    Unchecked,
    Up,
    Down,
    /// Drained by the operator (`xlb backend drain`): no new flows.
    Drained,
    /// Removed from its service, keeping its established flows a while.
    Draining,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub backend: String,
    pub weight: u32,
    /// The weight the kernel has (0: no new flows).
    pub effective_weight: u32,
    pub backup: bool,
    pub state: BackendState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthReport>,
    /// Draining backends: seconds until it leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_left_secs: Option<u64>,
}

/// A checked backend's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub up: bool,
    pub checks: u64,
    pub since_unix: u64,
    pub last_unix: Option<u64>,
    /// What the last check saw, or why it failed.
    pub last: Option<String>,
    pub last_ok: Option<bool>,
}

/// `stats`: counters by verdict and reason, per service and backend, the flow table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// By verdict name (`pass`, `drop`, `tx`, `redirect`).
    pub verdicts: BTreeMap<String, Count>,
    pub reasons: Vec<ReasonCount>,
    pub rules: usize,
    #[serde(flatten)]
    pub traffic: Traffic,
    /// The rate limits in force with their counters.
    #[serde(default)]
    pub limits: Vec<LimitView>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub verdict: String,
    pub malformed: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// Per-service and per-backend traffic and the flow table (the metrics' numbers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub services: Vec<ServiceTraffic>,
    pub flows: Flows,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTraffic {
    pub service: String,
    pub mode: Mode,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendTraffic>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTraffic {
    pub backend: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// `up`, `down` or `unchecked`.
    pub health: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flows {
    pub forward: u64,
    pub reply: u64,
    pub capacity: u64,
}

/// `status`: the daemon and everything it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub started_unix: u64,
    pub uptime_secs: u64,
    pub drain_timeout_secs: u64,
    pub program_id: u32,
    pub interfaces: Vec<InterfaceView>,
    pub datapath: DatapathView,
    pub socket: String,
    pub socket_group: Option<String>,
    pub config: Option<ConfigView>,
    pub https: Option<HttpsView>,
    pub rules: RuleCounts,
    pub services: Vec<ServiceView>,
    /// SYN-flood protection of every service that has it (layer-4 and https).
    #[serde(default)]
    pub syn_protection: Vec<SynProtectionView>,
    /// The rate limits in force.
    #[serde(default)]
    pub limits: Vec<LimitView>,
}

/// One service's SYN-flood protection: whether it is on now and why, and its counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynProtectionView {
    pub service: String,
    pub mode: SynMode,
    /// `auto`: new flows per second above which it turns on.
    pub threshold: u32,
    /// What a proven handshake leads to: "syn proxy" (nat, fullnat), "allow-list"
    /// (dsr), "local listener" (https).
    pub method: String,
    pub active: bool,
    /// Why it is on or off, in words.
    pub why: String,
    /// New flows (flow-table misses) in the CPUs' last full second.
    pub new_flows_last_second: u64,
    pub cookies_sent: u64,
    pub cookies_validated: u64,
    pub cookies_refused: u64,
    /// Other packets without a flow dropped while it was on.
    pub no_flow_dropped: u64,
    /// nat/fullnat: connections the SYN proxy opened to a backend.
    pub proxied: u64,
    /// dsr: SYNs of allow-listed sources sent on.
    pub allowed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceView {
    pub name: String,
    pub mode: AttachMode,
}

/// What the datapath does when the daemon stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    /// Keeps forwarding for the next `xlb run` (the default).
    Keep,
    /// Detaches and removes the pins (`--detach`, `xlb down`).
    Detach,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathView {
    pub pins: Option<String>,
    pub at_start: Adoption,
    pub on_stop: OnStop,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigView {
    pub file: String,
    pub generation: u64,
    pub last_reload: Option<ReloadView>,
}

/// The last reload: when, why, and what it changed or why it was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadView {
    pub ok: bool,
    pub at_unix: u64,
    /// `cli` or `sighup`.
    pub trigger: String,
    pub error: Option<String>,
    pub changes: Option<Reloaded>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpsView {
    pub listen: Vec<String>,
    pub redirect_listen: Vec<String>,
    pub stats: HttpsStats,
    pub pools: Vec<PoolView>,
}

/// The https service's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpsStats {
    pub connections: u64,
    pub handshakes: u64,
    pub handshake_failures: u64,
    pub handshake_timeouts: u64,
    pub idle_timeouts: u64,
    pub requests: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub status_502: u64,
    pub status_503: u64,
    pub status_504: u64,
    pub retries: u64,
    pub upstream_connects: u64,
    pub upstream_tls_failures: u64,
    pub cert_reloads: u64,
    pub cert_reload_failures: u64,
    pub config_reloads: u64,
    pub config_reload_failures: u64,
}

/// A pool of the https service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub pool: String,
    pub health_check: Option<HealthCheck>,
    pub backends: Vec<PoolBackendView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolBackendView {
    pub backend: String,
    /// `up`, `down` or `unchecked` (the active check's verdict).
    pub state: BackendState,
    /// What the balancing sees: the check's verdict and the passive failures together.
    pub takes_requests: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthReport>,
}

/// The rules of `status`, by kind, and the policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounts {
    pub total: usize,
    pub prefix: usize,
    pub port: usize,
    pub except_prefix: usize,
    pub except_port: usize,
    pub default: Action,
    pub malformed: Action,
}

/// What applying a configuration's plan changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanApplied {
    pub rules_added: usize,
    pub rules_updated: usize,
    pub rules_removed: usize,
    pub policies_changed: usize,
    pub services: ServicesDiff,
}

/// What happened to the https service in a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpsChanged {
    Unchanged,
    Reloaded,
    Started,
    Stopped,
}

/// `reload`: what the new file changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    #[serde(flatten)]
    pub applied: PlanApplied,
    pub https: HttpsChanged,
    /// The configuration's generation after the reload.
    pub generation: u64,
    pub interfaces_attached: Vec<String>,
    pub interfaces_detached: Vec<String>,
}

/// `down` (to the daemon): it stops, detaching from these interfaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    pub stopping: u32,
    pub interfaces: Vec<String>,
}

/// What a rate-limit change did (`fw limit add|del`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitChanges {
    pub added: usize,
    pub removed: usize,
    /// Limits in force afterwards.
    pub limits: usize,
}

/// `fw limit list`: the limits in force with their counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitList {
    pub limits: Vec<LimitView>,
}

/// A rate limit as the operator sees it, with what its checks counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitView {
    /// Its slot in the kernel (the `limit` label of its metrics).
    pub id: u32,
    /// `1000/s`, `600/m`, `10/h`.
    pub rate: String,
    pub burst: u64,
    /// `address`, `prefix` or a length (`/24`).
    pub per: String,
    /// None: every source.
    pub prefix: Option<String>,
    pub new_flows: bool,
    /// None: all traffic.
    pub service: Option<String>,
    pub source: Source,
    /// Packets it covered and passed, dropped (of those, by the sketch: the source had
    /// no exact bucket), over it but passed (a backend's answer, always allowed), and
    /// sources given an exact bucket.
    pub passed: u64,
    pub dropped: u64,
    pub sketch_dropped: u64,
    pub exempted: u64,
    pub promoted: u64,
}

/// Every reply, for the daemon's side (serialized as the variant's own JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    RuleChanges(RuleChanges),
    PolicySet(PolicySet),
    ServicesChanged(ServicesChanged),
    RuleList(RuleList),
    ServiceList(ServiceList),
    Stats(Box<Stats>),
    Status(Box<Status>),
    Reloaded(Box<Reloaded>),
    Stopping(Stopping),
    CountersReset(CountersReset),
    LimitChanges(LimitChanges),
    LimitList(LimitList),
}

/// The names the JSON gives them (padded like strings, so widths apply).
macro_rules! display_as_serde_name {
    ($t:ty { $($v:ident => $name:literal),+ $(,)? }) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(match self {
                    $(Self::$v => $name),+
                })
            }
        }
    };
}

display_as_serde_name!(Affinity { None => "none", Source => "source" });
display_as_serde_name!(BackendState {
    Unchecked => "unchecked",
    Up => "up",
    Down => "down",
    Drained => "drained",
    Draining => "draining",
});
display_as_serde_name!(OnStop { Keep => "keep", Detach => "detach" });
display_as_serde_name!(Source { File => "file", Cli => "cli" });
display_as_serde_name!(HttpsChanged {
    Unchanged => "unchanged",
    Reloaded => "reloaded",
    Started => "started",
    Stopped => "stopped",
});

#[cfg(test)]
mod tests {
    use super::*;

    /// The Display names are the JSON names (the printers and `--json` agree).
    #[test]
    fn display_names_are_the_json_names() {
        for s in [
            BackendState::Unchecked,
            BackendState::Up,
            BackendState::Down,
            BackendState::Drained,
            BackendState::Draining,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.to_string());
        }
        for a in [Affinity::None, Affinity::Source] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.to_string());
        }
        assert_eq!(format!("{:<6}|", Affinity::None), "none  |");
    }
}
