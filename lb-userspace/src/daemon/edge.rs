//! The edge: the desired state (firewall rules, services and their backends' flags) and
//! its projection on the kernel maps, changed as one. Every change goes to the desired
//! state, the maps and the state file, or to none of them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use tracing::{info, warn};

use crate::{
    api::reply::{PlanApplied, PolicySet, RuleChanges, ServicesChanged},
    config::plan::{Plan, RuleOp, services_diff},
    health,
    kernel::Datapath,
    metrics::{self, Checked, MapKind},
    model::{
        desired::{self, Desired, DesiredRef, Pools, Projection},
        drain::Draining,
        health_check::HealthCheck,
        ratelimit::Limits,
        rules::{Action, Change, Rule, RuleError, RuleSet},
        services::{BackendAddr, ServiceError, Services, Vip},
        weights::{self, Flags},
    },
    store,
};

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
    /// The services in panic mode (every backend down, flows sent to all of them), as
    /// the last view found them, and how often each went into it.
    pub panic: std::sync::Mutex<PanicBook>,
    /// Rate limits (`xlb fw limit`, `[[firewall.limit]]`).
    pub limits: Limits,
    /// Health checks' (address, port) and the https service's upstreams: with the
    /// backends, the endpoints no limit drops (see `limits`).
    pub probes: BTreeSet<(IpAddr, u16)>,
    pub upstreams: BTreeSet<SocketAddr>,
}

/// Panic mode's record (see `model::weights::AllDown`).
#[derive(Debug, Default)]
pub struct PanicBook {
    pub now: std::collections::BTreeSet<Vip>,
    pub entered: BTreeMap<Vip, u64>,
}

impl Edge {
    /// The edge of `stored` projected on `dp`'s maps (empty, or a running datapath's:
    /// see `Datapath::load`). `drain_timeout`: how long a removed backend keeps its
    /// flows.
    pub fn new(
        dp: Datapath,
        stored: Desired,
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
            panic: Default::default(),
            limits: stored.limits,
            probes: BTreeSet::new(),
            upstreams: BTreeSet::new(),
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
        edge.sync_limits(&edge.limits.clone())?;
        edge.sync_exempt();
        Ok(edge)
    }

    /// Applies a reload's plan: rules, policies, services and the new base go to the
    /// desired state, the maps and the state file, or to none of them. `reset`: the
    /// operator's drains go too (a `reload --reset`).
    pub fn apply_plan(&mut self, plan: Plan, base: Projection, reset: bool) -> Result<PlanApplied> {
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
        let diff = services_diff(&self.services, &plan.services);
        let limits = plan.limits;
        let next = self.next_pools(Pools {
            services: plan.services,
            backups: plan.backups,
            drained: if reset {
                Flags::new()
            } else {
                self.drained.clone()
            },
            draining: self.draining.clone(),
        });
        let view = self.view(&next);
        let old_pools = self.set_pools(next);
        let old_base = std::mem::replace(&mut self.base, base);
        let old_policies = (self.rules.default_policy, self.rules.malformed_policy);
        self.rules.default_policy = plan.default_policy;
        self.rules.malformed_policy = plan.malformed_policy;
        let old_limits = std::mem::replace(&mut self.limits, limits);
        let res = self
            .dp
            .lb
            .sync(&view)
            .and_then(|_| self.dp.set_config(&self.rules))
            .and_then(|_| self.sync_limits(&self.limits.clone()))
            .and_then(|_| self.save());
        if let Err(e) = res {
            self.set_pools(old_pools);
            self.base = old_base;
            self.limits = old_limits;
            (self.rules.default_policy, self.rules.malformed_policy) = old_policies;
            if let Err(e) = self.dp.lb.sync(&self.view(&self.pools())) {
                warn!("rolling back the services' maps failed: {e:#}");
            }
            if let Err(e) = self.sync_limits(&self.limits.clone()) {
                warn!("rolling back the rate limits' maps failed: {e:#}");
            }
            self.rollback(&changes);
            let _ = self.dp.set_config(&self.rules);
            return Err(e.context("nothing was changed"));
        }
        self.sync_exempt();
        let counts = rule_changes(&changes, self.rules.len());
        Ok(PlanApplied {
            rules_added: counts.added,
            rules_updated: counts.updated,
            rules_removed: counts.removed,
            policies_changed: usize::from(old_policies.0 != self.rules.default_policy)
                + usize::from(old_policies.1 != self.rules.malformed_policy),
            services: diff,
        })
    }

    /// Applies a rule-set edit to the set, the maps and the state file, or to none of them.
    pub(super) fn change(
        &mut self,
        edit: impl FnOnce(&mut RuleSet) -> Vec<Result<Option<Change>, RuleError>>,
    ) -> Result<RuleChanges> {
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
        if let Some(why) = newly_denied(&self.rules, &self.services, |r| r.undo(&changes)) {
            self.rules.undo(&changes);
            return Err(anyhow!(why).context("nothing was changed"));
        }
        let t_edit = t.elapsed();
        if let Err(e) = self.dp.apply(&self.rules, &changes) {
            metrics::global().map_update_error(MapKind::Rules);
            self.rollback(&changes);
            return Err(e.context("updating the kernel maps; nothing was changed"));
        }
        let t_maps = t.elapsed();
        if let Err(e) = self.save() {
            self.rollback(&changes);
            return Err(e.context("nothing was changed"));
        }
        tracing::debug!(?t_edit, ?t_maps, total = ?t.elapsed(), changes = changes.len(), "rule change applied");
        Ok(rule_changes(&changes, self.rules.len()))
    }

    fn rollback(&mut self, changes: &[Change]) {
        self.rules.undo(changes);
        let inverse: Vec<Change> = changes
            .iter()
            .rev()
            .map(|c| match *c {
                Change::Added(r) => Change::Removed(r),
                Change::Updated(r, old) => Change::Updated(Rule { action: old, ..r }, r.action),
                Change::Removed(r) => Change::Added(r),
            })
            .collect();
        if let Err(e) = self.dp.apply(&self.rules, &inverse) {
            warn!("rolling back the kernel maps failed: {e:#}");
        }
    }

    /// Applies a services edit to the desired state, the maps and the state file, or to
    /// none of them.
    pub(super) fn services_change(
        &mut self,
        edit: impl FnOnce(&mut Services) -> Result<(), ServiceError>,
    ) -> Result<ServicesChanged> {
        self.pools_change(|p| edit(&mut p.services))
    }

    /// Applies an edit of the services and their backends' flags to the desired state,
    /// the maps and the state file, or to none of them.
    pub(super) fn pools_change(
        &mut self,
        edit: impl FnOnce(&mut Pools) -> Result<(), ServiceError>,
    ) -> Result<ServicesChanged> {
        let mut next = self.pools();
        edit(&mut next)?;
        self.limits_fit(&next.services)?;
        if let Some(why) = denied_in(&self.rules, &next.services, &self.services) {
            return Err(anyhow!(why).context("nothing was changed"));
        }
        let next = self.next_pools(next);
        if let Err(e) = self.dp.lb.sync(&self.view(&next)) {
            metrics::global().map_update_error(MapKind::Services);
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
        // Service ids are kept while services stay, so the limits' projection only
        // follows a service's new id (never while a limit names it: limits_fit).
        if let Err(e) = self.sync_limits(&self.limits.clone()) {
            warn!("updating the rate limits after a services change: {e:#}");
        }
        self.sync_exempt();
        Ok(ServicesChanged {
            services: self.services.by_vip.len(),
        })
    }

    /// The services with their flags and drains, as they are now.
    pub(super) fn pools(&self) -> Pools {
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
        self.note_panic(weights::panicking(&p.services, &p.drained, &down));
        weights::effective(&p.services, &p.backups, &p.drained, &down, &p.draining)
    }

    /// Records which services are in panic mode: entering and leaving it are logged
    /// and counted.
    fn note_panic(&self, now: std::collections::BTreeSet<Vip>) {
        let mut book = self
            .panic
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if book.now == now {
            return;
        }
        for vip in now.difference(&book.now.clone()) {
            *book.entered.entry(*vip).or_default() += 1;
            tracing::warn!(service = %vip, "every backend is down: panic mode, new flows go to all of them (all_down = \"strict\" would drop them)");
            metrics::global().service_panic(&vip.to_string(), true);
        }
        for vip in book.now.difference(&now) {
            tracing::info!(service = %vip, "a backend is up again: panic mode over");
            metrics::global().service_panic(&vip.to_string(), false);
        }
        book.now = now;
    }

    /// Drains a backend (no new flows) or enables it again; idempotent.
    pub(super) fn set_drained(
        &mut self,
        vip: &str,
        backend: &str,
        drained: bool,
    ) -> Result<ServicesChanged> {
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
    pub(super) fn existing_backend(&self, vip: &Vip, b: BackendAddr) -> Result<BackendAddr> {
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
            metrics::global().forget_backend(&Checked::Service(vip, b));
        }
        let after = self.view(&self.pools());
        if after != before
            && let Err(e) = self.dp.lb.sync(&after)
        {
            warn!("updating the maps after a health-check change: {e:#}");
        }
        // The probes' answers come from each check's port: never rate limited.
        let probes = checked
            .iter()
            .filter_map(|((_, b), (_, c))| Some((b.addr, c.port.or(b.port)?)))
            .collect();
        self.set_probe_endpoints(probes);
    }

    /// Records a health check's outcome; a backend that goes up or down changes the maps.
    pub fn health_outcome(&mut self, o: health::Outcome) {
        let Some(state) = health::current(&mut self.health, &o) else {
            return;
        };
        let changed = state.record(o.result, o.at);
        metrics::global().backend_health(
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

    pub(super) fn policy(
        &mut self,
        field: fn(&mut RuleSet) -> &mut Action,
        action: Action,
    ) -> Result<PolicySet> {
        let old = std::mem::replace(field(&mut self.rules), action);
        if let Some(why) = newly_denied(&self.rules, &self.services, |r| *field(r) = old) {
            *field(&mut self.rules) = old;
            return Err(anyhow!(why).context("nothing was changed"));
        }
        let res = self.dp.set_config(&self.rules).and_then(|_| self.save());
        if let Err(e) = res {
            *field(&mut self.rules) = old;
            let _ = self.dp.set_config(&self.rules);
            return Err(e.context("nothing was changed"));
        }
        Ok(PolicySet { policy: action })
    }

    pub(super) fn save(&self) -> Result<()> {
        match &self.state_path {
            Some(p) => store::save(
                p,
                &DesiredRef {
                    rules: &self.rules,
                    services: &self.services,
                    backups: &self.backups,
                    drained: &self.drained,
                    limits: &self.limits,
                    base: &self.base,
                },
            ),
            None => Ok(()),
        }
    }
}

impl Edge {
    /// Everything running as a configuration's projection: what a `reload --reset`
    /// diffs the file against, so that all the file does not define goes.
    pub fn as_projection(&self) -> Projection {
        Projection {
            default_policy: self.rules.default_policy,
            malformed_policy: self.rules.malformed_policy,
            rules: self.rules.rules().map(|r| (r.matches, r.action)).collect(),
            services: self.services.clone(),
            backups: self.backups.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// Counts of a batch of rule changes, with the rules in the set after it.
fn rule_changes(changes: &[Change], rules: usize) -> RuleChanges {
    let count = |f: fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
    RuleChanges {
        added: count(|c| matches!(c, Change::Added(_))),
        updated: count(|c| matches!(c, Change::Updated(..))),
        removed: count(|c| matches!(c, Change::Removed(_))),
        rules,
    }
}

/// Why `rules` would drop the packets of one of `services`' backends that `before`
/// (the rules with `revert` applied) let through, if one: a firewall change that
/// denies a live backend is refused, as the configuration file refuses it. Backends
/// denied before the change (stored by an older xlb) do not block other changes.
fn newly_denied(
    rules: &RuleSet,
    services: &Services,
    revert: impl FnOnce(&mut RuleSet),
) -> Option<String> {
    let after = denied(rules, services);
    if after.is_empty() {
        return None;
    }
    let mut before_rules = rules.clone();
    revert(&mut before_rules);
    let before: BTreeSet<BackendAddr> = denied(&before_rules, services)
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    after
        .into_iter()
        .find(|(b, _)| !before.contains(b))
        .map(|(_, why)| why)
}

/// Why `rules` would drop the packets of a backend in `next` that it lets through in
/// `now` (a backend added, or moved, into a denied prefix), if one.
fn denied_in(rules: &RuleSet, next: &Services, now: &Services) -> Option<String> {
    let before: BTreeSet<BackendAddr> = denied(rules, now).into_iter().map(|(b, _)| b).collect();
    denied(rules, next)
        .into_iter()
        .find(|(b, _)| !before.contains(b))
        .map(|(_, why)| why)
}

fn denied(rules: &RuleSet, services: &Services) -> Vec<(BackendAddr, String)> {
    desired::denied_backends(services, rules.default_policy, |m| {
        rules.get(m).map(|r| r.action)
    })
}
