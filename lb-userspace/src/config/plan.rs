//! Reloads: diff(old file, new file) applied to the running desired state, so changes
//! made with the CLI that the diff does not touch stay; and what a reload changed.

use serde::{Deserialize, Serialize};

use crate::model::{
    desired::Projection,
    ratelimit::Limits,
    rules::{Action, Match, RuleSet},
    services::Services,
    weights::{self, Flags},
};

/// One rule edit of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleOp {
    Upsert(Match, Action),
    /// Removes the rule if it is there (the CLI may have removed it already).
    Remove(Match),
}

/// What applying a new file to the running desired state does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub rule_ops: Vec<RuleOp>,
    pub default_policy: Action,
    pub malformed_policy: Action,
    /// The services after the plan, and their backups.
    pub services: Services,
    pub backups: Flags,
    /// The rate limits after the plan.
    pub limits: Limits,
}

/// diff(`base`, `new`) applied to the running state (`rules`, `services`): what the new
/// file added or changed is set, what it removed is removed, everything else (CLI
/// changes included) stays. `plan(r, s, x, x)` changes nothing.
pub fn plan(
    rules: &RuleSet,
    services: &Services,
    backups: &Flags,
    limits: &Limits,
    base: &Projection,
    new: &Projection,
) -> Result<Plan, String> {
    let mut rule_ops = Vec::new();
    for m in base.rules.keys() {
        if !new.rules.contains_key(m) && rules.get(m).is_some() {
            rule_ops.push(RuleOp::Remove(*m));
        }
    }
    for (m, a) in &new.rules {
        if base.rules.get(m) != Some(a) && rules.get(m).map(|r| r.action) != Some(*a) {
            rule_ops.push(RuleOp::Upsert(*m, *a));
        }
    }
    let pick = |b: Action, n: Action, cur: Action| if b != n { n } else { cur };
    let default_policy = pick(
        base.default_policy,
        new.default_policy,
        rules.default_policy,
    );
    let malformed_policy = pick(
        base.malformed_policy,
        new.malformed_policy,
        rules.malformed_policy,
    );

    let mut next = services.clone();
    for vip in base.services.by_vip.keys() {
        if !new.services.by_vip.contains_key(vip) {
            next.by_vip.remove(vip);
        }
    }
    for (vip, n) in &new.services.by_vip {
        let b = base.services.by_vip.get(vip);
        if b == Some(n) {
            continue;
        }
        // Settings from the file; backends: the running ones with the file's changes.
        let mut backends = match (next.by_vip.get(vip), b) {
            (None, _) => n.backends.clone(),
            (Some(cur), None) => {
                let mut m = cur.backends.clone();
                m.extend(n.backends.iter().map(|(k, v)| (*k, *v)));
                m
            }
            (Some(cur), Some(b)) => {
                let mut m = cur.backends.clone();
                for k in b.backends.keys() {
                    if !n.backends.contains_key(k) {
                        m.remove(k);
                    }
                }
                for (k, w) in &n.backends {
                    if b.backends.get(k) != Some(w) {
                        m.insert(*k, *w);
                    }
                }
                m
            }
        };
        // Every backend must fit the (possibly new) settings: rebuild through the checks.
        let mut check = Services::default();
        let mut conf = n.clone();
        conf.backends.clear();
        // A check set with the CLI stays (the file's own [service.health] wins anyway).
        conf.check = next.by_vip.get(vip).and_then(|c| c.check.clone());
        check.by_vip.insert(*vip, conf);
        for (k, w) in std::mem::take(&mut backends) {
            check.add_backend(vip, k, w).map_err(|e| {
                format!(
                    "service {vip}: backend {k}, added with the CLI, does not fit the new file: {e}"
                )
            })?;
        }
        next.by_vip
            .insert(*vip, check.by_vip.remove(vip).expect("inserted"));
    }
    if next.by_vip.len() >= lb_common::MAX_SERVICES as usize {
        return Err(format!(
            "too many services with the CLI's and the file's together: at most {}",
            lb_common::MAX_SERVICES - 1
        ));
    }
    let mut backups = backups.clone();
    for k in base.backups.difference(&new.backups) {
        backups.remove(k);
    }
    backups.extend(new.backups.difference(&base.backups).copied());
    weights::retain(&mut backups, &next);
    let limits = super::ratelimit::plan_limits(limits, &base.limits, &new.limits, &next)?;
    Ok(Plan {
        rule_ops,
        default_policy,
        malformed_policy,
        services: next,
        backups,
        limits,
    })
}

/// Counts of what changed between two service sets (for reload summaries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesDiff {
    pub services_added: usize,
    pub services_removed: usize,
    pub services_updated: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub backends_updated: usize,
}

pub fn services_diff(old: &Services, new: &Services) -> ServicesDiff {
    let mut d = ServicesDiff::default();
    for (vip, o) in &old.by_vip {
        match new.by_vip.get(vip) {
            None => {
                d.services_removed += 1;
                d.backends_removed += o.backends.len();
            }
            Some(n) => {
                let mut os = o.clone();
                let mut ns = n.clone();
                os.backends.clear();
                ns.backends.clear();
                if os != ns {
                    d.services_updated += 1;
                }
                for (b, w) in &o.backends {
                    match n.backends.get(b) {
                        None => d.backends_removed += 1,
                        Some(nw) if nw != w => d.backends_updated += 1,
                        _ => {}
                    }
                }
                d.backends_added += n
                    .backends
                    .keys()
                    .filter(|b| !o.backends.contains_key(b))
                    .count();
            }
        }
    }
    for (vip, n) in &new.by_vip {
        if !old.by_vip.contains_key(vip) {
            d.services_added += 1;
            d.backends_added += n.backends.len();
        }
    }
    d
}
