//! `xlb run`: owns the datapath and the desired state, serves the control socket.
//!
//! `Edge` is the desired state (rules, services, the configuration's projection they
//! were built from) and its projection on the maps, changed as one; `Running` adds what
//! only the daemon has: the configuration file, its generation and last reload, the
//! interfaces, the socket, the uptime.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::net::IpAddr;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info, warn};

use crate::{
    config::{self, Config, HealthCheck, Interface, MetricsListen, Plan, Projection, RuleOp},
    control::{Request, Response},
    datapath::{AttachMode, Datapath, check_bpffs},
    drain::{self, Draining},
    health::{self, unix},
    metrics::Checked,
    rules::{self, Action, Change, Match, PortSpec, Prefix, RuleSet, Target},
    services::{BackendAddr, ServiceError, Services, Vip},
    state,
    tls::{HttpsConfig, HttpsProxy},
    weights::{self, Flags},
};

/// Where `/metrics` listens unless told otherwise.
pub const DEFAULT_METRICS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9100);

pub struct RunOptions {
    /// An interface given on the command line (replaces the file's list).
    pub iface: Option<String>,
    pub mode: AttachMode,
    pub config: Option<PathBuf>,
    /// The control socket's group from the command line (overrides the file's).
    pub socket_group: Option<String>,
    pub bpffs: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    /// Detach and remove the pins when stopped (default: the datapath keeps running
    /// for the next `xlb run` to adopt).
    pub detach: bool,
    /// An XDP object to load instead of the built-in program (an upgrade of the
    /// kernel side alone).
    pub program: Option<PathBuf>,
    /// `--metrics`: an address or off (None: not given, the configuration's or the
    /// default address).
    pub metrics: Option<Option<std::net::SocketAddr>>,
    /// Monitoring: `/metrics` (set from `metrics` and the configuration), drop events,
    /// kernel log (see `monitor`).
    pub monitor: crate::monitor::MonitorOptions,
}

/// The edge's desired state (firewall rules and services) and its projection on the
/// kernel maps, changed as one.
pub struct Edge {
    pub dp: Datapath,
    pub rules: RuleSet,
    pub services: Services,
    /// The configuration file's projection the state was last built from.
    pub base: Projection,
    /// The interfaces xlb runs on (none in tests): services need forwarding on them.
    pub ifaces: Vec<String>,
    /// Backends that take flows only while every primary of their service is out.
    pub backups: Flags,
    /// Backends the operator drained (`xlb backend drain`): no new flows until enabled.
    pub drained: Flags,
    /// Checked backends' health (others are unchecked).
    pub health: health::States<Vip>,
    /// Backends removed from a service that keep their established flows a while.
    pub draining: Draining,
    /// How long a removed backend drains (zero: its flows move at their next packet).
    pub drain_timeout: Duration,
    /// Where the desired state is stored; `None` keeps it in memory (tests, bench).
    pub state_path: Option<PathBuf>,
}

fn parse_all<T>(
    targets: &[String],
    f: impl Fn(&str) -> Result<T, rules::RuleError>,
) -> Result<Vec<T>> {
    if targets.is_empty() {
        bail!("nothing given: name at least one prefix or port");
    }
    targets
        .iter()
        .map(|t| f(t).map_err(|e| anyhow!(e)))
        .collect()
}

fn prefix_only(s: &str) -> Result<Prefix, rules::RuleError> {
    if s.ends_with("/tcp") || s.ends_with("/udp") {
        return Err(rules::RuleError::BadPrefix {
            input: s.into(),
            why: "this is a port spec: use `xlb fw port allow|deny`".into(),
        });
    }
    s.parse()
}

impl Edge {
    /// The edge of `stored` projected on `dp`'s maps (empty, or a running datapath's:
    /// see `Datapath::load`). `drain_timeout`: how long a removed backend keeps its
    /// flows.
    pub fn new(
        dp: Datapath,
        stored: state::Stored,
        state_path: Option<PathBuf>,
        drain_timeout: Duration,
    ) -> Result<Self> {
        let mut edge = Edge {
            dp,
            rules: stored.rules,
            services: stored.services,
            base: stored.base,
            backups: stored.backups,
            drained: stored.drained,
            health: BTreeMap::new(),
            ifaces: Vec::new(),
            draining: Draining::default(),
            drain_timeout,
            state_path,
        };
        // Backends a running datapath still serves that the stored state no longer
        // lists (removed, draining, before a restart) drain again, so their established
        // flows finish rather than move.
        if !drain_timeout.is_zero() {
            let until = Instant::now() + drain_timeout;
            for (vip, b) in edge.dp.lb.adopted_backends() {
                if edge
                    .services
                    .by_vip
                    .get(&vip)
                    .is_some_and(|c| !c.backends.contains_key(&b))
                {
                    edge.draining
                        .by_vip
                        .entry(vip)
                        .or_default()
                        .insert(b, until);
                }
            }
        }
        edge.dp.load_rules(&edge.rules)?;
        edge.dp.lb.sync(&edge.view(&edge.pools()))?;
        edge.dp.set_config(&edge.rules)?;
        Ok(edge)
    }

    pub fn handle(&mut self, req: Request) -> Response {
        match self.try_handle(req) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        }
    }

    fn try_handle(&mut self, req: Request) -> Result<Value> {
        match req {
            Request::Prefix { action, targets } => {
                let ps = parse_all(&targets, prefix_only)?;
                self.change(|r| {
                    ps.iter()
                        .map(|p| r.upsert(Match::Prefix(*p), action))
                        .collect()
                })
            }
            Request::Port { action, targets } => {
                let ps = parse_all(&targets, |s| s.parse::<PortSpec>())?;
                self.change(|r| {
                    ps.iter()
                        .map(|p| r.upsert(Match::Port(*p), action))
                        .collect()
                })
            }
            Request::Except { targets } => {
                let ts = parse_all(&targets, rules::parse_target)?;
                self.change(|r| {
                    ts.iter()
                        .map(|t| match t {
                            Target::Prefix(p) => r.upsert(Match::ExceptPrefix(*p), Action::Allow),
                            Target::Port(p) => r.upsert(Match::ExceptPort(*p), Action::Allow),
                        })
                        .collect()
                })
            }
            Request::Del { except, targets } => {
                let ms: Vec<Match> = parse_all(&targets, rules::parse_target)?
                    .into_iter()
                    .map(|t| match (t, except) {
                        (Target::Prefix(p), false) => Match::Prefix(p),
                        (Target::Port(p), false) => Match::Port(p),
                        (Target::Prefix(p), true) => Match::ExceptPrefix(p),
                        (Target::Port(p), true) => Match::ExceptPort(p),
                    })
                    .collect();
                // All or nothing: check every target before removing any.
                for m in &ms {
                    if self.rules.get(m).is_none() {
                        bail!("{} {m} is not in the rule set", m.kind());
                    }
                }
                self.change(|r| ms.iter().map(|m| r.remove(m).map(Some)).collect())
            }
            Request::Default { action } => self.policy(|r| &mut r.default_policy, action),
            Request::Malformed { action } => self.policy(|r| &mut r.malformed_policy, action),
            Request::Load { action, text } => {
                let entries = rules::parse_bulk(&text, action)
                    .map_err(|(line, e)| anyhow!("line {line}: {e}; nothing was loaded"))?;
                self.rules.reserve(entries.len());
                self.change(|r| {
                    entries
                        .iter()
                        .map(|(p, a)| r.upsert(Match::Prefix(*p), *a))
                        .collect()
                })
            }
            Request::Flush => {
                let all: Vec<Match> = self.rules.rules().map(|r| r.matches).collect();
                self.change(|r| all.iter().map(|m| r.remove(m).map(Some)).collect())
            }
            Request::VipAdd {
                vip,
                mode,
                affinity_source,
                echo,
                tcp_idle,
                udp_idle,
                snat,
            } => {
                let vip: Vip = vip.parse()?;
                let snat: Option<IpAddr> = match snat {
                    Some(a) => Some(a.parse().map_err(|_| {
                        anyhow!(
                            "'{a}' is not an address (expected e.g. 203.0.113.1 or 2001:db8::1)"
                        )
                    })?),
                    None => None,
                };
                self.check_forwarding(&vip)?;
                // In tests (no interface) the program runs on crafted frames only.
                let must_be_local = !self.ifaces.is_empty();
                self.services_change(|s| {
                    s.add_service(vip, mode, affinity_source, echo)?;
                    s.set_snat(&vip, snat)?;
                    if let (Some(a), true) = (snat, must_be_local) {
                        ensure_local(a)?;
                    }
                    s.set_idle(&vip, tcp_idle, udp_idle)
                })
            }
            Request::VipCheck { vip, check } => {
                let vip: Vip = vip.parse()?;
                let check = match check {
                    None => None,
                    Some(words) => Some(
                        HealthCheck::from_words(
                            words.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                            "check",
                        )
                        .map_err(|e| anyhow!(e))?,
                    ),
                };
                self.services_change(|s| s.set_check(&vip, check))
            }
            Request::VipDel { vip } => {
                let vip: Vip = vip.parse()?;
                self.services_change(|s| s.del_service(&vip).map(|_| ()))
            }
            Request::BackendAdd {
                vip,
                backend,
                weight,
                backup,
            } => {
                let (vip, b): (Vip, BackendAddr) = (vip.parse()?, backend.parse()?);
                self.pools_change(|p| {
                    let b = p.services.add_backend(&vip, b, weight)?;
                    if backup {
                        p.backups.insert((vip, b));
                    }
                    Ok(())
                })
            }
            Request::BackendDel { vip, backend } => {
                let (vip, b): (Vip, BackendAddr) = (vip.parse()?, backend.parse()?);
                self.services_change(|s| s.del_backend(&vip, b))
            }
            Request::BackendDrain { vip, backend } => self.set_drained(&vip, &backend, true),
            Request::BackendEnable { vip, backend } => self.set_drained(&vip, &backend, false),
            Request::VipList => Ok(self.vip_list()),
            Request::List => self.list(),
            Request::Stats => self.stats(),
            Request::Status | Request::Reload | Request::Down => {
                bail!("only a running daemon (`xlb run`) answers status and reload")
            }
        }
    }

    /// Applies a reload's plan: rules, policies, services and the new base go to the
    /// desired state, the maps and the state file, or to none of them.
    pub fn apply_plan(&mut self, plan: Plan, base: Projection) -> Result<Value> {
        let mut changes = Vec::new();
        for op in &plan.rule_ops {
            let r = match *op {
                RuleOp::Upsert(m, a) => self.rules.upsert(m, a),
                RuleOp::Remove(m) => self.rules.remove(&m).map(Some),
            };
            match r {
                Ok(c) => changes.extend(c),
                Err(e) => {
                    self.rules.undo(&changes);
                    return Err(anyhow!(e).context("nothing was changed"));
                }
            }
        }
        if let Err(e) = self.dp.apply(&self.rules, &changes) {
            self.rollback(&changes);
            return Err(e.context("updating the kernel maps; nothing was changed"));
        }
        let diff = config::services_diff(&self.services, &plan.services);
        let next = self.next_pools(Pools {
            services: plan.services,
            backups: plan.backups,
            drained: self.drained.clone(),
            draining: self.draining.clone(),
        });
        let view = self.view(&next);
        let old_pools = self.set_pools(next);
        let old_base = std::mem::replace(&mut self.base, base);
        let old_policies = (self.rules.default_policy, self.rules.malformed_policy);
        self.rules.default_policy = plan.default_policy;
        self.rules.malformed_policy = plan.malformed_policy;
        let res = self
            .dp
            .lb
            .sync(&view)
            .and_then(|_| self.dp.set_config(&self.rules))
            .and_then(|_| self.save());
        if let Err(e) = res {
            self.set_pools(old_pools);
            self.base = old_base;
            (self.rules.default_policy, self.rules.malformed_policy) = old_policies;
            if let Err(e) = self.dp.lb.sync(&self.view(&self.pools())) {
                warn!("rolling back the services' maps failed: {e:#}");
            }
            self.rollback(&changes);
            let _ = self.dp.set_config(&self.rules);
            return Err(e.context("nothing was changed"));
        }
        let count = |f: fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
        Ok(json!({
            "rules_added": count(|c| matches!(c, Change::Added(_))),
            "rules_updated": count(|c| matches!(c, Change::Updated(..))),
            "rules_removed": count(|c| matches!(c, Change::Removed(_))),
            "policies_changed": usize::from(old_policies.0 != self.rules.default_policy)
                + usize::from(old_policies.1 != self.rules.malformed_policy),
            "services": diff,
        }))
    }

    /// Applies a rule-set edit to the set, the maps and the state file, or to none of them.
    fn change(
        &mut self,
        edit: impl FnOnce(&mut RuleSet) -> Vec<Result<Option<Change>, rules::RuleError>>,
    ) -> Result<Value> {
        let mut changes = Vec::new();
        let mut failed = None;
        let t = std::time::Instant::now();
        for r in edit(&mut self.rules) {
            match r {
                Ok(c) => changes.extend(c),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            self.rules.undo(&changes);
            return Err(anyhow!(e).context("nothing was changed"));
        }
        let t_edit = t.elapsed();
        if let Err(e) = self.dp.apply(&self.rules, &changes) {
            crate::metrics::map_update_failed(crate::metrics::MapKind::Rules);
            self.rollback(&changes);
            return Err(e.context("updating the kernel maps; nothing was changed"));
        }
        let t_maps = t.elapsed();
        if let Err(e) = self.save() {
            self.rollback(&changes);
            return Err(e.context("nothing was changed"));
        }
        tracing::debug!(?t_edit, ?t_maps, total = ?t.elapsed(), changes = changes.len(), "rule change applied");
        let count = |f: fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
        Ok(json!({
            "added": count(|c| matches!(c, Change::Added(_))),
            "updated": count(|c| matches!(c, Change::Updated(..))),
            "removed": count(|c| matches!(c, Change::Removed(_))),
            "rules": self.rules.len(),
        }))
    }

    fn rollback(&mut self, changes: &[Change]) {
        self.rules.undo(changes);
        let inverse: Vec<Change> = changes
            .iter()
            .rev()
            .map(|c| match *c {
                Change::Added(r) => Change::Removed(r),
                Change::Updated(r, old) => {
                    Change::Updated(rules::Rule { action: old, ..r }, r.action)
                }
                Change::Removed(r) => Change::Added(r),
            })
            .collect();
        if let Err(e) = self.dp.apply(&self.rules, &inverse) {
            warn!("rolling back the kernel maps failed: {e:#}");
        }
    }

    /// Applies a services edit to the desired state, the maps and the state file, or to
    /// none of them.
    fn services_change(
        &mut self,
        edit: impl FnOnce(&mut Services) -> Result<(), ServiceError>,
    ) -> Result<Value> {
        self.pools_change(|p| edit(&mut p.services))
    }

    /// Applies an edit of the services and their backends' flags to the desired state,
    /// the maps and the state file, or to none of them.
    fn pools_change(
        &mut self,
        edit: impl FnOnce(&mut Pools) -> Result<(), ServiceError>,
    ) -> Result<Value> {
        let mut next = self.pools();
        edit(&mut next)?;
        let next = self.next_pools(next);
        if let Err(e) = self.dp.lb.sync(&self.view(&next)) {
            crate::metrics::map_update_failed(crate::metrics::MapKind::Services);
            let _ = self.dp.lb.sync(&self.view(&self.pools()));
            return Err(e.context("updating the kernel maps; nothing was changed"));
        }
        let old = self.set_pools(next);
        if let Err(e) = self.dp.set_config(&self.rules).and_then(|_| self.save()) {
            self.set_pools(old);
            let _ = self.dp.lb.sync(&self.view(&self.pools()));
            let _ = self.dp.set_config(&self.rules);
            return Err(e.context("nothing was changed"));
        }
        Ok(json!({ "services": self.services.by_vip.len() }))
    }

    /// The services with their flags and drains, as they are now.
    fn pools(&self) -> Pools {
        Pools {
            services: self.services.clone(),
            backups: self.backups.clone(),
            drained: self.drained.clone(),
            draining: self.draining.clone(),
        }
    }

    /// `next` made consistent: flags only for backends that exist, removed backends
    /// draining.
    fn next_pools(&self, mut next: Pools) -> Pools {
        weights::retain(&mut next.backups, &next.services);
        weights::retain(&mut next.drained, &next.services);
        next.draining = self.draining.after_change(
            &self.services,
            &next.services,
            Instant::now(),
            self.drain_timeout,
        );
        next
    }

    fn set_pools(&mut self, p: Pools) -> Pools {
        Pools {
            services: std::mem::replace(&mut self.services, p.services),
            backups: std::mem::replace(&mut self.backups, p.backups),
            drained: std::mem::replace(&mut self.drained, p.drained),
            draining: std::mem::replace(&mut self.draining, p.draining),
        }
    }

    /// What the kernel gets for `p`: health, drains and backups applied.
    pub fn view(&self, p: &Pools) -> Services {
        let down = |vip: &Vip, b: &BackendAddr| self.health.get(&(*vip, *b)).is_some_and(|h| !h.up);
        weights::effective(&p.services, &p.backups, &p.drained, &down, &p.draining)
    }

    /// Drains a backend (no new flows) or enables it again; idempotent.
    fn set_drained(&mut self, vip: &str, backend: &str, drained: bool) -> Result<Value> {
        let (vip, b): (Vip, BackendAddr) = (vip.parse()?, backend.parse()?);
        let b = self.existing_backend(&vip, b)?;
        self.pools_change(|p| {
            if drained {
                p.drained.insert((vip, b));
            } else {
                p.drained.remove(&(vip, b));
            }
            Ok(())
        })
    }

    /// The backend as stored (the service's port when given without one), if it exists.
    fn existing_backend(&self, vip: &Vip, b: BackendAddr) -> Result<BackendAddr> {
        let svc = self
            .services
            .by_vip
            .get(vip)
            .ok_or_else(|| ServiceError::UnknownService(vip.to_string()))?;
        let key = match (b.port, vip.port) {
            (None, Some(p)) => BackendAddr {
                addr: b.addr,
                port: Some(p),
            },
            _ => b,
        };
        if !svc.backends.contains_key(&key) {
            return Err(ServiceError::UnknownBackend {
                service: vip.to_string(),
                backend: b.to_string(),
            }
            .into());
        }
        Ok(key)
    }

    /// Removes the draining backends whose time is up from the maps.
    pub fn expire_drains(&mut self, now: Instant) -> Result<()> {
        let Some(draining) = self.draining.expired(now) else {
            return Ok(());
        };
        let next = Pools {
            draining,
            ..self.pools()
        };
        self.dp
            .lb
            .sync(&self.view(&next))
            .context("removing drained backends")?;
        self.draining = next.draining;
        Ok(())
    }

    /// Sets which backends are checked (and the generation of their checks' outcomes):
    /// states of unchanged checks stay, new checks start up, the rest are unchecked.
    pub fn set_checked(&mut self, checked: &HashMap<(Vip, BackendAddr), (u64, HealthCheck)>) {
        let before = self.view(&self.pools());
        for (vip, b) in health::carry_over(&mut self.health, checked) {
            crate::metrics::global().forget_backend(&Checked::Service(vip, b));
        }
        let after = self.view(&self.pools());
        if after != before
            && let Err(e) = self.dp.lb.sync(&after)
        {
            warn!("updating the maps after a health-check change: {e:#}");
        }
    }

    /// Records a health check's outcome; a backend that goes up or down changes the maps.
    pub fn health_outcome(&mut self, o: health::Outcome) {
        let Some(state) = health::current(&mut self.health, &o) else {
            return;
        };
        let changed = state.record(o.result, o.at);
        crate::metrics::global().backend_health(
            &Checked::Service(o.owner, o.backend),
            state.up,
            o.latency,
        );
        if !changed {
            return;
        }
        if state.up {
            info!(service = %o.owner, backend = %o.backend, "backend up: {}", state.last_text());
        } else {
            warn!(service = %o.owner, backend = %o.backend, "backend down: {}", state.last_text());
        }
        if let Err(e) = self.dp.lb.sync(&self.view(&self.pools())) {
            warn!("updating the maps after a health change: {e:#}");
        }
    }

    /// One backend as `vip list`, `backend list` and `status` show it.
    fn backend_json(&self, vip: &Vip, b: &BackendAddr, weight: u32, view: &Services) -> Value {
        let k = (*vip, *b);
        let h = self.health.get(&k);
        let state = if self.drained.contains(&k) {
            "drained"
        } else {
            match h {
                Some(h) if h.up => "up",
                Some(_) => "down",
                None => "unchecked",
            }
        };
        let effective = view
            .by_vip
            .get(vip)
            .and_then(|s| s.backends.get(b))
            .copied()
            .unwrap_or(0);
        let mut v = json!({
            "backend": b.to_string(),
            "weight": weight,
            "effective_weight": effective,
            "backup": self.backups.contains(&k),
            "state": state,
        });
        if let Some(h) = h {
            v["health"] = h.json();
        }
        v
    }

    fn check_forwarding(&self, vip: &Vip) -> Result<()> {
        check_forwarding(&self.ifaces, vip)
    }

    fn vip_list(&self) -> Value {
        let view = self.view(&self.pools());
        let services: Vec<Value> = self
            .services
            .by_vip
            .values()
            .map(|s| {
                let backends: Vec<Value> = s
                    .backends
                    .iter()
                    .map(|(b, w)| self.backend_json(&s.vip, b, *w, &view))
                    .collect();
                json!({
                    "service": s.vip.to_string(),
                    "mode": s.mode,
                    "affinity": if s.affinity_source { "source" } else { "none" },
                    "echo": s.echo,
                    "tcp_idle": s.tcp_idle,
                    "udp_idle": s.udp_idle,
                    "snat": s.snat.map(|a| a.to_string()),
                    "health_check": s.check,
                    "backends": backends,
                })
            })
            .collect();
        json!({ "services": services })
    }

    fn policy(&mut self, field: fn(&mut RuleSet) -> &mut Action, action: Action) -> Result<Value> {
        let old = std::mem::replace(field(&mut self.rules), action);
        let res = self.dp.set_config(&self.rules).and_then(|_| self.save());
        if let Err(e) = res {
            *field(&mut self.rules) = old;
            let _ = self.dp.set_config(&self.rules);
            return Err(e.context("nothing was changed"));
        }
        Ok(json!({ "policy": action }))
    }

    fn save(&self) -> Result<()> {
        match &self.state_path {
            Some(p) => state::save(
                p,
                &state::State {
                    rules: &self.rules,
                    services: &self.services,
                    backups: &self.backups,
                    drained: &self.drained,
                    base: &self.base,
                },
            ),
            None => Ok(()),
        }
    }

    fn list(&self) -> Result<Value> {
        let end = self.rules.rules().map(|r| r.id + 1).max().unwrap_or(0);
        let hits = self.dp.all_rule_hits(end)?;
        let mut rules = Vec::with_capacity(self.rules.len());
        for r in self.rules.rules() {
            rules.push(json!({
                "id": r.id,
                "kind": r.matches.kind(),
                "match": r.matches.to_string(),
                "action": r.action,
                "hits": hits[r.id as usize],
            }));
        }
        Ok(json!({
            "default": self.rules.default_policy,
            "malformed": self.rules.malformed_policy,
            "rules": rules,
        }))
    }

    fn stats(&self) -> Result<Value> {
        let mut rows = Vec::new();
        let mut totals = serde_json::Map::new();
        for (reason, verdict, c) in self.dp.counters()? {
            let t = totals
                .entry(verdict.name())
                .or_insert_with(|| json!({"packets": 0u64, "bytes": 0u64}));
            t["packets"] = json!(t["packets"].as_u64().unwrap_or(0) + c.packets);
            t["bytes"] = json!(t["bytes"].as_u64().unwrap_or(0) + c.bytes);
            rows.push(json!({
                "reason": reason.name(),
                "verdict": verdict.name(),
                "malformed": reason.is_malformed(),
                "packets": c.packets,
                "bytes": c.bytes,
            }));
        }
        let traffic = crate::metrics::traffic_json(self)?;
        Ok(json!({
            "verdicts": totals,
            "reasons": rows,
            "rules": self.rules.len(),
            "services": traffic["services"],
            "flows": traffic["flows"],
        }))
    }
}

/// The services with their backends' flags and drains: what the kernel's view is made of.
#[derive(Clone, Debug)]
pub struct Pools {
    pub services: Services,
    pub backups: Flags,
    pub drained: Flags,
    pub draining: Draining,
}

/// Services forward packets: the kernel's FIB lookup from XDP needs forwarding on, on
/// every interface xlb runs on.
fn check_forwarding(ifaces: &[String], vip: &Vip) -> Result<()> {
    for iface in ifaces {
        let path = if vip.addr.is_ipv4() {
            format!("/proc/sys/net/ipv4/conf/{iface}/forwarding")
        } else {
            "/proc/sys/net/ipv6/conf/all/forwarding".to_string()
        };
        let on = std::fs::read_to_string(&path)
            .map(|v| v.trim() == "1")
            .unwrap_or(false);
        if !on {
            let key = path.trim_start_matches("/proc/sys/").replace('/', ".");
            bail!(
                "forwarding is off ({path}): xlb forwards service traffic, enable it with `sysctl -w {key}=1`"
            );
        }
    }
    Ok(())
}

/// What a plan's services need of this host: forwarding for new services, and each
/// fullnat source address that is new or changed must be this host's.
fn check_new_services(current: &Services, next: &Services, ifaces: &[String]) -> Result<()> {
    for (vip, conf) in &next.by_vip {
        let cur = current.by_vip.get(vip);
        if cur.is_none() {
            check_forwarding(ifaces, vip)?;
        }
        if let Some(a) = conf.snat
            && cur.and_then(|c| c.snat) != Some(a)
        {
            ensure_local(a).with_context(|| format!("service {vip}"))?;
        }
    }
    Ok(())
}

/// Where `/metrics` listens for a configuration (without `--metrics`).
fn metrics_listen(config: Option<&Config>) -> Option<std::net::SocketAddr> {
    match config.and_then(|c| c.metrics) {
        Some(MetricsListen::At(a)) => Some(a),
        Some(MetricsListen::Off) => None,
        None => Some(DEFAULT_METRICS),
    }
}

/// Applies a plan to a stored state (before anything is loaded).
fn apply_to_stored(stored: &mut state::Stored, plan: Plan, base: Projection) -> Result<()> {
    for op in plan.rule_ops {
        match op {
            RuleOp::Upsert(m, a) => {
                stored.rules.upsert(m, a)?;
            }
            RuleOp::Remove(m) => {
                stored.rules.remove(&m)?;
            }
        }
    }
    stored.rules.default_policy = plan.default_policy;
    stored.rules.malformed_policy = plan.malformed_policy;
    stored.services = plan.services;
    stored.backups = plan.backups;
    weights::retain(&mut stored.drained, &stored.services);
    stored.base = base;
    Ok(())
}

/// The outcome of the last reload.
struct ReloadRecord {
    at: SystemTime,
    trigger: &'static str,
    result: std::result::Result<Value, String>,
}

/// The daemon: the edge and what only a running daemon has.
pub struct Running {
    pub edge: Edge,
    /// The configuration file (None: started without one).
    config_path: Option<PathBuf>,
    /// The last configuration applied.
    config: Option<Config>,
    /// The interfaces came from `--iface`: reloads leave them.
    cli_iface: bool,
    /// The group given with `--socket-group` (overrides the file's).
    cli_group: Option<String>,
    socket: PathBuf,
    started: SystemTime,
    /// 1 for the file applied at start, +1 for each successful reload.
    generation: u64,
    last_reload: Option<ReloadRecord>,
    /// The running health checks (None in tests without a runtime).
    checker: Option<health::Checker>,
    /// The https service of the configuration's `[tls]`, while it runs.
    https: Option<Https>,
    rt: tokio::runtime::Handle,
    /// `/metrics`: where it listens, and whether `--metrics` chose that (a reload of
    /// the file then leaves it alone).
    metrics: Option<std::net::SocketAddr>,
    metrics_from_cli: bool,
    /// Detach and remove the pins when stopping (`--detach`, or set by `xlb down`).
    detach_on_stop: bool,
    /// Wakes the main loop to stop (`xlb down`).
    stop: Arc<tokio::sync::Notify>,
}

/// The https service (`crate::tls`) run by the daemon.
struct Https {
    proxy: Arc<HttpsProxy>,
    config: HttpsConfig,
    stop: Arc<tokio::sync::Notify>,
}

impl Https {
    /// Loads everything `cfg` names and checks that its addresses can be bound; starts
    /// nothing.
    fn prepare(cfg: &HttpsConfig) -> Result<Arc<HttpsProxy>> {
        for a in cfg.listen.iter().chain(&cfg.redirect_listen) {
            std::net::TcpListener::bind(a)
                .with_context(|| format!("the https service cannot listen on {a}"))?;
        }
        HttpsProxy::new(cfg.clone()).context("the https service ([tls])")
    }

    /// Serves until `stop`.
    fn start(proxy: Arc<HttpsProxy>, config: HttpsConfig, rt: &tokio::runtime::Handle) -> Https {
        let stop = Arc::new(tokio::sync::Notify::new());
        let (p, s) = (proxy.clone(), stop.clone());
        rt.spawn(async move {
            if let Err(e) = p.serve(async move { s.notified().await }).await {
                error!("the https service stopped: {e:#}");
            }
        });
        Https {
            proxy,
            config,
            stop,
        }
    }

    fn stop(&self) {
        self.stop.notify_one();
    }
}

/// What a reload does to the https service.
enum HttpsChange {
    Keep,
    Start(Arc<HttpsProxy>, HttpsConfig),
    /// Applied (before the datapath), with the configuration to go back to.
    Reloaded(HttpsConfig),
    Stop,
}

impl Running {
    pub fn handle(&mut self, req: Request, trigger: &'static str) -> Response {
        let reads = matches!(
            req,
            Request::Status | Request::VipList | Request::List | Request::Stats
        );
        let res = match req {
            Request::Status => self.status().map(Response::ok),
            Request::Reload => self.reload(trigger).map(Response::ok),
            Request::Down => {
                info!("xlb down: stopping, detaching and removing the pins");
                // The main loop stops once the answer is sent (serve_one).
                self.detach_on_stop = true;
                Ok(Response::ok(json!({
                    "stopping": std::process::id(),
                    "interfaces": self.edge.dp.attached().into_iter().map(|(i, _)| i).collect::<Vec<_>>(),
                })))
            }
            Request::VipList => Ok(Response::ok(self.vip_list())),
            Request::VipCheck { vip, .. } if self.config_check(&vip).is_some() => Err(anyhow!(
                "service {vip} is checked by the configuration file's [service.health]: change the check there"
            )),
            other => Ok(self.edge.handle(other)),
        };
        if !reads {
            self.reconcile_checks();
        }
        match res {
            Ok(r) => r,
            Err(e) => Response::err(format!("{e:#}")),
        }
    }

    /// The services as `xlb vip list` shows them, each with its check from wherever it
    /// was set.
    fn vip_list(&self) -> Value {
        let mut v = self.edge.vip_list();
        for (svc, vip) in v["services"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .zip(self.edge.services.by_vip.keys())
        {
            svc["health_check"] = json!(self.check_of(vip));
        }
        v
    }

    /// The configuration file's check of service `vip` (written as the CLI takes it).
    fn config_check(&self, vip: &str) -> Option<&HealthCheck> {
        let vip: Vip = vip.parse().ok()?;
        self.config.as_ref()?.health.get(&vip)
    }

    /// A service's check: the configuration file's, else the one set with the CLI.
    fn check_of(&self, vip: &Vip) -> Option<&HealthCheck> {
        self.config
            .as_ref()
            .and_then(|c| c.health.get(vip))
            .or_else(|| self.edge.services.by_vip.get(vip)?.check.as_ref())
    }

    /// Runs the services' checks over their current backends.
    pub fn reconcile_checks(&mut self) {
        let mut targets = Vec::new();
        for (vip, s) in &self.edge.services.by_vip {
            let Some(check) = self.check_of(vip) else {
                continue;
            };
            for b in s.backends.keys() {
                targets.push(health::Target {
                    owner: *vip,
                    backend: *b,
                    check: check.clone(),
                });
            }
        }
        let Some(checker) = self.checker.as_mut() else {
            return;
        };
        let checked = checker.reconcile(targets);
        self.edge.set_checked(&checked);
    }

    fn group(&self) -> Option<&str> {
        self.cli_group
            .as_deref()
            .or(self.config.as_ref().and_then(|c| c.group.as_deref()))
    }

    fn status(&self) -> Result<Value> {
        let now = Instant::now();
        let program_id = self.edge.dp.program().info()?.id();
        let interfaces: Vec<Value> = self
            .edge
            .dp
            .attached()
            .into_iter()
            .map(|(name, mode)| json!({ "name": name, "mode": mode }))
            .collect();
        let rules = &self.edge.rules;
        let mut services = self.vip_list()["services"].take();
        for (svc, vip) in services
            .as_array_mut()
            .into_iter()
            .flatten()
            .zip(self.edge.services.by_vip.keys())
        {
            let draining = self.edge.draining.by_vip.get(vip);
            for b in draining.into_iter().flat_map(|d| d.keys()) {
                let left = self.edge.draining.left(vip, b, now).unwrap_or_default();
                if let Some(list) = svc["backends"].as_array_mut() {
                    list.push(json!({
                        "backend": b.to_string(),
                        "weight": 0,
                        "effective_weight": 0,
                        "backup": false,
                        "state": "draining",
                        "drain_left_secs": left.as_secs(),
                    }));
                }
            }
        }
        let last_reload = self.last_reload.as_ref().map(|r| {
            json!({
                "ok": r.result.is_ok(),
                "at_unix": unix(r.at),
                "trigger": r.trigger,
                "error": r.result.as_ref().err(),
                "changes": r.result.as_ref().ok(),
            })
        });
        let config = self.config_path.as_ref().map(|p| {
            json!({
                "file": p.display().to_string(),
                "generation": self.generation,
                "last_reload": last_reload,
            })
        });
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "started_unix": unix(self.started),
            "uptime_secs": SystemTime::now().duration_since(self.started).map_or(0, |d| d.as_secs()),
            "drain_timeout_secs": self.edge.drain_timeout.as_secs(),
            "program_id": program_id,
            "interfaces": interfaces,
            "datapath": {
                "pins": self.edge.dp.pin_dir().map(|p| p.display().to_string()),
                "at_start": self.edge.dp.adoption,
                "on_stop": if self.detach_on_stop { "detach" } else { "keep" },
            },
            "socket": self.socket.display().to_string(),
            "socket_group": self.group(),
            "config": config,
            "https": self.https.as_ref().map(|h| json!({
                "listen": h.config.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "redirect_listen": h.config.redirect_listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "stats": h.proxy.stats_json(),
                "pools": h.proxy.pools_json(),
            })),
            "rules": {
                "total": rules.len(),
                "prefix": rules.count(|m| matches!(m, Match::Prefix(_))),
                "port": rules.count(|m| matches!(m, Match::Port(_))),
                "except_prefix": rules.count(|m| matches!(m, Match::ExceptPrefix(_))),
                "except_port": rules.count(|m| matches!(m, Match::ExceptPort(_))),
                "default": rules.default_policy,
                "malformed": rules.malformed_policy,
            },
            "services": services,
        }))
    }

    /// Re-reads the configuration file and applies diff(last file, this file); a bad
    /// file changes nothing. Recorded for `xlb status`.
    fn reload(&mut self, trigger: &'static str) -> Result<Value> {
        let Some(path) = self.config_path.clone() else {
            bail!(
                "this daemon runs without a configuration file: start it with `xlb run --config FILE` to reload one"
            );
        };
        let res = self.try_reload(&path);
        match &res {
            Ok(v) => {
                info!(file = %path.display(), generation = self.generation, changes = %v, trigger, "configuration reloaded")
            }
            Err(e) => {
                warn!(file = %path.display(), trigger, "reload refused, the running state is unchanged: {e:#}")
            }
        }
        crate::metrics::global().config_loaded(self.generation, res.is_ok());
        self.last_reload = Some(ReloadRecord {
            at: SystemTime::now(),
            trigger,
            result: res.as_ref().map(Clone::clone).map_err(|e| format!("{e:#}")),
        });
        res.context("reload refused, the running state is unchanged")
    }

    fn try_reload(&mut self, path: &Path) -> Result<Value> {
        let cfg = Config::load(path).map_err(|e| anyhow!("{e}"))?;
        let plan = config::plan(
            &self.edge.rules,
            &self.edge.services,
            &self.edge.backups,
            &self.edge.base,
            &cfg.projection,
        )
        .map_err(|e| anyhow!("{e}"))?;
        let ifaces: Vec<Interface> = if self.cli_iface {
            self.current_interfaces()
        } else if cfg.interfaces.is_empty() {
            bail!(
                "{} lists no [[interface]]: xlb would detach from every interface (stop it instead)",
                path.display()
            );
        } else {
            cfg.interfaces.clone()
        };
        let names: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();
        check_new_services(&self.edge.services, &plan.services, &names)?;
        let new_group = self.cli_group.clone().or_else(|| cfg.group.clone());
        let gid = new_group
            .as_deref()
            .map(config::group_id)
            .transpose()
            .map_err(|e| anyhow!(e))?;
        if !self.metrics_from_cli && metrics_listen(Some(&cfg)) != self.metrics {
            bail!(
                "metrics.listen changes only at a restart of xlb (/metrics listens on {})",
                self.metrics
                    .map_or("nothing (off)".to_string(), |a| a.to_string())
            );
        }
        let https = self.prepare_https(cfg.tls.as_ref())?;
        // Interfaces first (new ones attached, changed modes re-attached), so a refusal
        // there leaves the state untouched; the ones the file dropped go last.
        let undo = self.attach_interfaces(&ifaces)?;
        // A changed https service is reloaded whole or not at all, before the datapath.
        let https = match https {
            HttpsChange::Reloaded(new) => {
                let h = self.https.as_mut().expect("running");
                if let Err(e) = h.proxy.reload(new.clone()) {
                    self.undo_interfaces(undo);
                    return Err(e.context("the https service ([tls])"));
                }
                HttpsChange::Reloaded(std::mem::replace(&mut h.config, new))
            }
            other => other,
        };
        let old_drain = std::mem::replace(&mut self.edge.drain_timeout, cfg.drain_timeout);
        let mut changes = match self.edge.apply_plan(plan, cfg.projection.clone()) {
            Ok(v) => v,
            Err(e) => {
                self.edge.drain_timeout = old_drain;
                if let HttpsChange::Reloaded(old) = https {
                    let h = self.https.as_mut().expect("running");
                    if let Err(e) = h.proxy.reload(old.clone()) {
                        warn!("restoring the https service's configuration: {e:#}");
                    }
                    h.config = old;
                }
                self.undo_interfaces(undo);
                return Err(e);
            }
        };
        changes["https"] = json!(match https {
            HttpsChange::Keep => "unchanged",
            HttpsChange::Reloaded(_) => "reloaded",
            HttpsChange::Start(proxy, config) => {
                self.https = Some(Https::start(proxy, config, &self.rt));
                "started"
            }
            HttpsChange::Stop => {
                if let Some(h) = self.https.take() {
                    h.stop();
                }
                "stopped"
            }
        });
        let mut detached = Vec::new();
        for (name, _) in self.edge.dp.attached() {
            if !names.contains(&name) {
                if let Err(e) = self.edge.dp.detach_from(&name) {
                    warn!("{e:#}");
                }
                detached.push(name);
            }
        }
        self.edge.ifaces = names;
        if let Err(e) = set_socket_access(&self.socket, gid) {
            warn!("control socket permissions: {e:#}");
        }
        self.generation += 1;
        changes["generation"] = json!(self.generation);
        changes["interfaces_attached"] =
            json!(undo.iter().map(|u| u.0.clone()).collect::<Vec<_>>());
        changes["interfaces_detached"] = json!(detached);
        self.config = Some(cfg);
        Ok(changes)
    }

    /// Checks what a reload asks of the https service; changes nothing.
    fn prepare_https(&self, new: Option<&HttpsConfig>) -> Result<HttpsChange> {
        Ok(match (&self.https, new) {
            (None, None) => HttpsChange::Keep,
            (Some(h), Some(n)) if h.config == *n => HttpsChange::Keep,
            (Some(h), Some(n)) => {
                if n.listen != h.config.listen || n.redirect_listen != h.config.redirect_listen {
                    bail!("tls.listen and tls.redirect_listen change only at a restart of xlb");
                }
                if n.limits.max_connections != h.config.limits.max_connections {
                    bail!("tls.limits.max_connections changes only at a restart of xlb");
                }
                HttpsChange::Reloaded(n.clone())
            }
            (None, Some(n)) => HttpsChange::Start(Https::prepare(n)?, n.clone()),
            (Some(_), None) => HttpsChange::Stop,
        })
    }

    fn current_interfaces(&self) -> Vec<Interface> {
        self.edge
            .dp
            .attached()
            .into_iter()
            .map(|(name, mode)| Interface { name, mode })
            .collect()
    }

    /// Attaches to the interfaces of `want` not attached in that mode. Returns what was
    /// done (interface, the mode it had before), for `undo_interfaces`.
    fn attach_interfaces(
        &mut self,
        want: &[Interface],
    ) -> Result<Vec<(String, Option<AttachMode>)>> {
        let current = self.edge.dp.attached();
        let mut done = Vec::new();
        for i in want {
            let before = current.iter().find(|(n, _)| *n == i.name).map(|(_, m)| *m);
            if before == Some(i.mode) {
                continue;
            }
            if before.is_some() {
                self.edge.dp.detach_from(&i.name)?;
            }
            if let Err(e) = self.edge.dp.attach(&i.name, i.mode) {
                done.push((i.name.clone(), before));
                self.undo_interfaces(done);
                return Err(e);
            }
            done.push((i.name.clone(), before));
        }
        Ok(done)
    }

    fn undo_interfaces(&mut self, done: Vec<(String, Option<AttachMode>)>) {
        for (name, before) in done.into_iter().rev() {
            let _ = self.edge.dp.detach_from(&name);
            if let Some(mode) = before
                && let Err(e) = self.edge.dp.attach(&name, mode)
            {
                warn!("re-attaching {name}: {e:#}");
            }
        }
    }
}

/// Owner root; mode 0600, or 0660 with the group `gid`.
fn set_socket_access(socket: &Path, gid: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(socket, Some(0), Some(gid.unwrap_or(0)))
        .with_context(|| format!("setting the owner of {}", socket.display()))?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", socket.display()))
}

/// Refuses to start a second daemon on the same socket; removes a stale socket file.
async fn bind(socket: &Path, gid: Option<u32>) -> Result<UnixListener> {
    if UnixStream::connect(socket).await.is_ok() {
        bail!("another xlb daemon is already serving {}", socket.display());
    }
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The socket is created with no access for others: nobody connects before its mode
    // is set.
    // SAFETY: umask has no preconditions; nothing else creates files at this point.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(socket);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", socket.display()))?;
    set_socket_access(socket, gid)?;
    Ok(listener)
}

async fn serve_one(stream: UnixStream, running: Arc<Mutex<Running>>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).await? == 0 {
        // A liveness probe (`control::daemon_running`): connected, asked nothing.
        return Ok(());
    }
    let mut down = false;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            down = matches!(req, Request::Down);
            let running = running.clone();
            tokio::task::spawn_blocking(move || {
                running.lock().expect("not poisoned").handle(req, "cli")
            })
            .await?
        }
        Err(e) => Response::err(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    let sent = write.write_all(&out).await;
    if down {
        running.lock().expect("not poisoned").stop.notify_one();
    }
    Ok(sent?)
}

pub async fn run(opts: RunOptions) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xlb run needs root (CAP_BPF, CAP_NET_ADMIN): run it with sudo");
    }
    check_bpffs(&opts.bpffs)?;
    // Everything is validated before anything changes.
    let config = match &opts.config {
        Some(p) => Some(Config::load(p).map_err(|e| anyhow!("{e}"))?),
        None => None,
    };
    let ifaces: Vec<Interface> = match (&opts.iface, &config) {
        (Some(name), _) => vec![Interface {
            name: name.clone(),
            mode: opts.mode,
        }],
        (None, Some(c)) if !c.interfaces.is_empty() => c.interfaces.clone(),
        (None, Some(c)) => bail!(
            "no interface to attach to: add one to {} ([[interface]] name = \"eth0\") or give --iface",
            c.path.display()
        ),
        (None, None) => bail!("no interface to attach to: give --iface IF, or --config FILE"),
    };
    let names: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();
    let group = opts
        .socket_group
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.group.clone()));
    let gid = group
        .as_deref()
        .map(config::group_id)
        .transpose()
        .map_err(|e| anyhow!("--socket-group: {e}"))?;
    let mut stored = state::load(&opts.state)?;
    if let Some(cfg) = &config {
        let plan = config::plan(
            &stored.rules,
            &stored.services,
            &stored.backups,
            &stored.base,
            &cfg.projection,
        )
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("applying {} to the stored state", cfg.path.display()))?;
        check_new_services(&stored.services, &plan.services, &names)?;
        apply_to_stored(&mut stored, plan, cfg.projection.clone())?;
    }
    let https = match config.as_ref().and_then(|c| c.tls.as_ref()) {
        Some(t) => Some((Https::prepare(t)?, t.clone())),
        None => None,
    };
    let program = match &opts.program {
        Some(p) => {
            std::fs::read(p).with_context(|| format!("reading the XDP program {}", p.display()))?
        }
        None => crate::object::XLB.to_vec(),
    };
    let listener = bind(&opts.socket, gid).await?;
    let guard = SocketGuard(opts.socket.clone());
    let mut dp = Datapath::load_object(&program, Some(&opts.bpffs)).with_context(|| match &opts
        .program
    {
        Some(p) => format!("--program {}", p.display()),
        None => "the built-in XDP program".to_string(),
    })?;
    let mut monitor_opts = opts.monitor.clone();
    monitor_opts.metrics = match opts.metrics {
        Some(flag) => flag,
        None => metrics_listen(config.as_ref()),
    };
    monitor_opts.configure(&mut dp);
    // Rules go in before the program is attached: the first packet already sees them.
    let drain_timeout = config
        .as_ref()
        .map_or(drain::DEFAULT_DRAIN, |c| c.drain_timeout);
    let mut edge = Edge::new(dp, stored, Some(opts.state.clone()), drain_timeout)?;
    edge.ifaces = names;
    for i in &ifaces {
        if let Err(e) = edge.dp.attach(&i.name, i.mode) {
            abandon(&mut edge.dp);
            return Err(e);
        }
    }
    let detached = edge.dp.prune();
    if !detached.is_empty() {
        info!(interfaces = ?detached, "detached from the interfaces the last run used and this one does not");
    }
    let monitor = match crate::monitor::Monitor::prepare(&monitor_opts, &mut edge.dp).await {
        Ok(m) => m,
        Err(e) => {
            abandon(&mut edge.dp);
            return Err(e);
        }
    };
    if config.is_some() {
        // The state as the file made it, and the file's projection as its new base.
        if let Err(e) = edge.save() {
            abandon(&mut edge.dp);
            return Err(e);
        }
    }
    info!(
        interfaces = ?edge.dp.attached(), rules = edge.rules.len(),
        services = edge.services.by_vip.len(), config = ?opts.config,
        socket = %opts.socket.display(), pins = %opts.bpffs.display(),
        at_start = ?edge.dp.adoption,
        "xlb attached and ready"
    );
    let rt = tokio::runtime::Handle::current();
    let https = https.map(|(proxy, cfg)| Https::start(proxy, cfg, &rt));
    let (checker, mut outcomes) = health::Checker::new(rt.clone());
    let stop = Arc::new(tokio::sync::Notify::new());
    let running = Arc::new(Mutex::new(Running {
        edge,
        generation: u64::from(config.is_some()),
        config_path: opts.config.clone(),
        config,
        cli_iface: opts.iface.is_some(),
        cli_group: opts.socket_group.clone(),
        socket: opts.socket.clone(),
        started: SystemTime::now(),
        last_reload: None,
        checker: Some(checker),
        https,
        rt,
        metrics: monitor_opts.metrics,
        metrics_from_cli: opts.metrics.is_some(),
        detach_on_stop: opts.detach,
        stop: stop.clone(),
    }));
    let _monitor = monitor.start(running.clone());
    running.lock().expect("not poisoned").reconcile_checks();
    // Health-check outcomes, applied in order, a batch per lock.
    let consumer = running.clone();
    tokio::spawn(async move {
        while let Some(first) = outcomes.recv().await {
            let mut batch = vec![first];
            while let Ok(o) = outcomes.try_recv() {
                batch.push(o);
            }
            let running = consumer.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut r = running.lock().expect("not poisoned");
                for o in batch {
                    r.edge.health_outcome(o);
                }
            })
            .await;
        }
    });
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let running = running.clone();
                tokio::task::spawn_blocking(move || {
                    let mut r = running.lock().expect("not poisoned");
                    if let Err(e) = r.edge.expire_drains(Instant::now()) {
                        warn!("{e:#}");
                    }
                });
            }
            conn = listener.accept() => {
                let (stream, _) = conn?;
                let running = running.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, running).await {
                        warn!("control connection: {e:#}");
                    }
                });
            }
            _ = sighup.recv() => {
                let running = running.clone();
                // The reload logs its own outcome and records it for `xlb status`.
                tokio::task::spawn_blocking(move || {
                    running.lock().expect("not poisoned").handle(Request::Reload, "sighup")
                });
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = stop.notified() => break,
        }
    }
    let mut running = running.lock().expect("not poisoned");
    if let Some(h) = running.https.take() {
        h.stop();
    }
    if running.detach_on_stop {
        info!(
            "stopping: detaching from {:?} and removing the pins",
            running.edge.dp.attached()
        );
        running.edge.dp.detach()?;
        running.edge.dp.unpin();
    } else {
        info!(
            interfaces = ?running.edge.dp.attached(),
            pins = %opts.bpffs.display(),
            "stopping: the datapath keeps forwarding; the next `xlb run` takes it over, `xlb down` removes it"
        );
    }
    drop(guard);
    Ok(())
}

/// After a failed start: a datapath that ran before this run keeps running (its links
/// hold the old or the new program, both complete); one this run created goes.
fn abandon(dp: &mut Datapath) {
    if matches!(dp.adoption, crate::datapath::Adoption::Adopted { .. }) {
        warn!("start failed: the running datapath is left as it is");
        return;
    }
    let _ = dp.detach();
    dp.unpin();
}

struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fullnat source address must be this host's: the backends' replies are sent to it,
/// and the kernel answers ARP / neighbour solicitations for it.
fn ensure_local(a: IpAddr) -> Result<(), ServiceError> {
    let local = local_addresses().map_err(|e| ServiceError::Invalid(format!("{e:#}")))?;
    if !local.contains(&a) {
        return Err(ServiceError::Invalid(format!(
            "{a} is not an address of this host: add it to the interface towards the backends (ip addr add {a}/PREFIX dev IFACE) before using it as --snat"
        )));
    }
    Ok(())
}

/// Every address configured on this host's interfaces (getifaddrs).
fn local_addresses() -> Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listing this host's addresses");
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
