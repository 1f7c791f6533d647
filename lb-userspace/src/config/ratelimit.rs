//! `[[firewall.limit]]`: rate limits, read after the services (a limit may name one),
//! each key checked where it is written with the CLI's and the state file's words
//! (model::ratelimit); and a reload's limits: diff(last file, new file) applied to the
//! running ones.

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;

use super::{
    report::{Report, line_col},
    values::Whole,
};
use crate::model::{
    desired::Projection,
    ratelimit::{Limit, LimitError, LimitMatch, Limits, Per, Rate, parse_burst},
    rules::Prefix,
    services::{Services, Vip},
};

/// One `[[firewall.limit]]` as written.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[firewall.limit]] table (rate, burst, per, prefix, new_flows, service)"
)]
pub(crate) struct RawLimit {
    pub(crate) rate: Spanned<String>,
    pub(crate) burst: Option<Spanned<Whole>>,
    pub(crate) per: Option<Spanned<String>>,
    pub(crate) prefix: Option<Spanned<String>>,
    pub(crate) new_flows: Option<bool>,
    pub(crate) service: Option<Spanned<String>>,
}

/// Validates every `[[firewall.limit]]` into `projection.limits` (the services are read
/// already: a limit's service must be one of them).
pub(crate) fn section(r: &mut Report, limits: &[Spanned<RawLimit>], projection: &mut Projection) {
    let mut seen: HashMap<LimitMatch, usize> = HashMap::new();
    for t in limits {
        let Some(l) = one(r, t.get_ref(), &projection.services) else {
            continue;
        };
        if let Some(&prev) = seen.get(&l.matches) {
            r.at(
                t.span(),
                "firewall.limit",
                format!(
                    "the limit {} is given twice (also at line {}): give each once",
                    l.matches,
                    line_col(r.src, prev).0
                ),
            );
            continue;
        }
        if projection.limits.len() >= lb_common::MAX_LIMITS as usize {
            r.at(t.span(), "firewall.limit", LimitError::Full.to_string());
            continue;
        }
        seen.insert(l.matches, t.span().start);
        projection.limits.by_match.insert(l.matches, l);
    }
}

/// One table, every key checked at its place; None when refused (reported).
fn one(r: &mut Report, t: &RawLimit, services: &Services) -> Option<Limit> {
    let field = |k: &str| format!("firewall.limit.{k}");
    let rate = match t.rate.get_ref().parse::<Rate>() {
        Ok(rate) => Some(rate),
        Err(e) => {
            r.at(t.rate.span(), &field("rate"), e.to_string());
            None
        }
    };
    let burst = match &t.burst {
        None => Some(None),
        Some(b) => match parse_burst(&b.get_ref().0.to_string()) {
            Ok(n) => Some(Some(n)),
            Err(e) => {
                r.at(b.span(), &field("burst"), e.to_string());
                None
            }
        },
    };
    let prefix = match &t.prefix {
        None => Some(None),
        Some(p) => match p.get_ref().parse::<Prefix>() {
            Ok(p) => Some(Some(p)),
            Err(e) => {
                r.at(p.span(), &field("prefix"), e.to_string());
                None
            }
        },
    };
    let per = match &t.per {
        None => Some(Per::Address),
        Some(p) => match p.get_ref().parse::<Per>() {
            Ok(p) => Some(p),
            Err(e) => {
                r.at(p.span(), &field("per"), e.to_string());
                None
            }
        },
    };
    let service = match &t.service {
        None => Some(None),
        Some(s) => match s.get_ref().parse::<Vip>() {
            Ok(v) if services.by_vip.contains_key(&v) => Some(Some(v)),
            Ok(v) => {
                r.at(
                    s.span(),
                    &field("service"),
                    format!("no service {v} in this file: a limit names a [[service]] of it"),
                );
                None
            }
            Err(e) => {
                r.at(s.span(), &field("service"), e.to_string());
                None
            }
        },
    };
    let (rate, burst, prefix, per, service) = (rate?, burst?, prefix?, per?, service?);
    let per_span = t.per.as_ref().map_or(t.rate.span(), |p| p.span());
    let m = match LimitMatch::new(service, prefix, per, t.new_flows.unwrap_or(false)) {
        Ok(m) => m,
        Err(e) => {
            r.at(per_span, &field("per"), e.to_string());
            return None;
        }
    };
    match Limit::new(m, rate, burst) {
        Ok(l) => Some(l),
        Err(e) => {
            let span = t.burst.as_ref().map_or(t.rate.span(), |b| b.span());
            r.at(span, &field("burst"), e.to_string());
            None
        }
    }
}

/// The running limits after a reload: what the new file added or changed is set, what
/// it removed goes, the CLI's own limits stay; every service named must be in
/// `services` (the services after the reload).
pub fn plan_limits(
    running: &Limits,
    base: &Limits,
    new: &Limits,
    services: &Services,
) -> Result<Limits, String> {
    let mut next = running.clone();
    for m in base.by_match.keys() {
        if !new.by_match.contains_key(m) {
            next.by_match.remove(m);
        }
    }
    for (m, l) in &new.by_match {
        if base.by_match.get(m) != Some(l) {
            next.by_match.insert(*m, *l);
        }
    }
    if next.len() > lb_common::MAX_LIMITS as usize {
        return Err(format!(
            "too many rate limits with the CLI's and the file's together: at most {}",
            lb_common::MAX_LIMITS
        ));
    }
    next.check_services(services).map_err(|e| e.to_string())?;
    Ok(next)
}
