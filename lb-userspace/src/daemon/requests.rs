//! The edge's side of the control protocol: the requests that change or read the
//! desired state, each answered with its typed reply.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Result, anyhow, bail};

use super::{
    Edge,
    host::{check_forwarding, ensure_backend_remote, ensure_local},
};
use crate::{
    api::{
        Request, Response,
        reply::{CountersReset, Reply, RuleChanges, ServicesChanged},
    },
    config::health::check_from_words,
    model::{
        rules::{self, Action, Match, PortSpec, Prefix, RuleError, Target},
        services::{BackendAddr, MAX_WEIGHT, Mode, ServiceConf, ServiceError, Services, Vip},
    },
    store::lines::parse_rule,
};

impl Edge {
    /// Answers one request (a failure is an error reply; nothing was changed then).
    pub fn handle(&mut self, req: Request) -> Response {
        match self.try_handle(req) {
            Ok(r) => Response::ok(r),
            Err(e) => Response::err(format!("{e:#}")),
        }
    }

    fn try_handle(&mut self, req: Request) -> Result<Reply> {
        Ok(match req {
            Request::Prefix { .. }
            | Request::Port { .. }
            | Request::Except { .. }
            | Request::Del { .. }
            | Request::Load { .. }
            | Request::Restore { .. }
            | Request::Flush => Reply::RuleChanges(self.rule_request(req)?),
            Request::Default { action } => {
                Reply::PolicySet(self.policy(|r| &mut r.default_policy, action)?)
            }
            Request::Malformed { action } => {
                Reply::PolicySet(self.policy(|r| &mut r.malformed_policy, action)?)
            }
            Request::VipAdd { .. }
            | Request::VipCheck { .. }
            | Request::VipDel { .. }
            | Request::VipSet { .. }
            | Request::BackendSet { .. }
            | Request::BackendAdd { .. }
            | Request::BackendDel { .. }
            | Request::BackendDrain { .. }
            | Request::BackendEnable { .. } => Reply::ServicesChanged(self.service_request(req)?),
            Request::LimitAdd { .. } | Request::LimitDel { .. } | Request::LimitList => {
                self.limit_request(req)?
            }
            Request::VipList => Reply::ServiceList(self.service_list()),
            Request::List => Reply::RuleList(self.rule_list()?),
            Request::Stats => Reply::Stats(Box::new(self.stats()?)),
            Request::ResetCounters => {
                let (rules, backends) = self.dp.reset_counters(&self.rules)?;
                Reply::CountersReset(CountersReset { rules, backends })
            }
            Request::Status | Request::Reload { .. } | Request::Down => {
                bail!("only a running daemon (`xlb run`) answers status and reload")
            }
        })
    }

    /// A change of the firewall's rules.
    fn rule_request(&mut self, req: Request) -> Result<RuleChanges> {
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
            Request::Del { except, targets } => self.delete_rules(except, &targets),
            Request::Load {
                action,
                text,
                replace,
            } => {
                let entries = rules::parse_bulk(&text, action)
                    .map_err(|(line, e)| anyhow!("line {line}: {e}; nothing was loaded"))?;
                if replace {
                    let target = entries
                        .iter()
                        .map(|(p, a)| (Match::Prefix(*p), *a))
                        .collect();
                    return self.replace_rules(&target, |m| matches!(m, Match::Prefix(_)));
                }
                self.rules.reserve(entries.len());
                self.change(|r| {
                    entries
                        .iter()
                        .map(|(p, a)| r.upsert(Match::Prefix(*p), *a))
                        .collect()
                })
            }
            Request::Restore { text } => self.restore(&text),
            Request::Flush => {
                let all: Vec<Match> = self.rules.rules().map(|r| r.matches).collect();
                self.change(|r| all.iter().map(|m| r.remove(m).map(Some)).collect())
            }
            other => bail!("not a firewall request: {other:?}"),
        }
    }

    /// Removes rules by prefix or port spec, all or nothing.
    fn delete_rules(&mut self, except: bool, targets: &[String]) -> Result<RuleChanges> {
        let ms: Vec<Match> = parse_all(targets, rules::parse_target)?
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

    /// A change of the services or their backends.
    fn service_request(&mut self, req: Request) -> Result<ServicesChanged> {
        match req {
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
                let snat: Option<IpAddr> = snat.map(|a| parse_snat(&a)).transpose()?;
                check_forwarding(&self.ifaces, &vip)?;
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
                        check_from_words(
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
                // In tests (no interface) the program runs on crafted frames only.
                let host_checks = !self.ifaces.is_empty();
                self.pools_change(|p| {
                    let b = p.services.add_backend(&vip, b, weight)?;
                    if host_checks {
                        ensure_backend_remote(&vip, b.addr)?;
                    }
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
            Request::VipSet {
                vip,
                mode,
                affinity_source,
                echo,
                tcp_idle,
                udp_idle,
                snat,
                syn_protection,
                syn_threshold,
                all_down,
            } => {
                let vip: Vip = vip.parse()?;
                let snat = snat.map(|a| parse_snat(&a)).transpose()?;
                if let (Some(a), false) = (snat, self.ifaces.is_empty()) {
                    ensure_local(a)?;
                }
                self.services_change(|s| {
                    let conf = s
                        .by_vip
                        .get(&vip)
                        .cloned()
                        .ok_or_else(|| ServiceError::UnknownService(vip.to_string()))?;
                    let mut next = ServiceConf {
                        mode: mode.unwrap_or(conf.mode),
                        affinity_source: affinity_source.unwrap_or(conf.affinity_source),
                        echo: echo.unwrap_or(conf.echo),
                        all_down: all_down.unwrap_or(conf.all_down),
                        backends: Default::default(),
                        ..conf.clone()
                    };
                    // A mode without a source address forgets it; fullnat needs one.
                    next.snat = match (next.mode, snat) {
                        (_, Some(a)) => Some(a),
                        (Mode::Fullnat, None) => conf.snat,
                        _ => None,
                    };
                    replace_service(s, next, &conf, tcp_idle, udp_idle)?;
                    if syn_protection.is_some() || syn_threshold.is_some() {
                        s.set_syn(&vip, syn_protection, syn_threshold)?;
                    }
                    Ok(())
                })
            }
            Request::BackendSet {
                vip,
                backend,
                weight,
                backup,
            } => {
                let (vip, b): (Vip, BackendAddr) = (vip.parse()?, backend.parse()?);
                let b = self.existing_backend(&vip, b)?;
                self.pools_change(|p| {
                    if let Some(w) = weight {
                        if w == 0 || w > MAX_WEIGHT {
                            return Err(ServiceError::BadWeight(w));
                        }
                        if let Some(conf) = p.services.by_vip.get_mut(&vip) {
                            conf.backends.insert(b, w);
                        }
                    }
                    match backup {
                        Some(true) => {
                            p.backups.insert((vip, b));
                        }
                        Some(false) => {
                            p.backups.remove(&(vip, b));
                        }
                        None => {}
                    }
                    Ok(())
                })
            }
            Request::BackendDrain { vip, backend } => self.set_drained(&vip, &backend, true),
            Request::BackendEnable { vip, backend } => self.set_drained(&vip, &backend, false),
            other => bail!("not a services request: {other:?}"),
        }
    }
}

impl Edge {
    /// Makes the rules that `replaced` selects exactly `target` (others stay), in one
    /// change: rules in both stay as they are, and the new rules reach the maps before
    /// the old ones leave, so no moment is without either (for a moment both apply:
    /// stricter, never looser). When that cannot be (the rule table would overflow, or
    /// a new port range ties with one that leaves), the old ones leave first.
    fn replace_rules(
        &mut self,
        target: &BTreeMap<Match, Action>,
        replaced: impl Fn(&Match) -> bool,
    ) -> Result<RuleChanges> {
        let gone: Vec<Match> = self
            .rules
            .rules()
            .filter(|r| replaced(&r.matches) && !target.contains_key(&r.matches))
            .map(|r| r.matches)
            .collect();
        self.rules.reserve(target.len());
        self.change(|r| {
            let remove = |r: &mut rules::RuleSet| -> Vec<_> {
                gone.iter().map(|m| r.remove(m).map(Some)).collect()
            };
            let add = |r: &mut rules::RuleSet| -> Vec<_> {
                target.iter().map(|(m, a)| r.upsert(*m, *a)).collect()
            };
            let mut out = add(r);
            if out.iter().all(|c| c.is_ok()) {
                out.extend(remove(r));
                return out;
            }
            let done: Vec<_> = out.into_iter().filter_map(|c| c.ok().flatten()).collect();
            r.undo(&done);
            let mut out = remove(r);
            out.extend(add(r));
            out
        })
    }

    /// `fw restore`: the whole firewall (policies and rules) as `fw save` wrote it.
    fn restore(&mut self, text: &str) -> Result<RuleChanges> {
        let (policies, target) = parse_saved(text)?;
        let old = (self.rules.default_policy, self.rules.malformed_policy);
        if let Some(d) = policies.0 {
            self.rules.default_policy = d;
        }
        if let Some(m) = policies.1 {
            self.rules.malformed_policy = m;
        }
        // The policies go to the maps and the state file with the rules (`change`
        // writes the config map and saves); a refusal puts them back.
        let res = self.replace_rules(&target, |_| true);
        if res.is_err() {
            (self.rules.default_policy, self.rules.malformed_policy) = old;
            let _ = self.dp.set_config(&self.rules);
        }
        res
    }
}

/// The default and malformed policies a saved firewall sets (None: not in it).
type Policies = (Option<Action>, Option<Action>);

/// `fw save`'s lines: `default ACTION`, `malformed ACTION`, and rule lines; each rule
/// once. Errors name their line; nothing is changed.
fn parse_saved(text: &str) -> Result<(Policies, BTreeMap<Match, Action>)> {
    let mut policies = (None, None);
    let mut rules = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |e: &dyn std::fmt::Display| anyhow!("line {}: {e}; nothing was restored", n + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["default", a] => policies.0 = Some(a.parse().map_err(|e| fail(&e))?),
            ["malformed", a] => policies.1 = Some(a.parse().map_err(|e| fail(&e))?),
            _ => {
                let (m, a) = parse_rule(line).map_err(|e| fail(&e))?;
                if rules.insert(m, a).is_some() {
                    return Err(fail(&format!("{} {m} is given twice", m.kind())));
                }
            }
        }
    }
    Ok((policies, rules))
}

/// A fullnat source address as the CLI gives it.
fn parse_snat(a: &str) -> Result<IpAddr> {
    a.parse().map_err(|_| {
        anyhow!(
            "'{}' is not an address (expected e.g. 203.0.113.1 or 2001:db8::1)",
            crate::model::text::shown(a)
        )
    })
}

/// `services` with the service `conf` replaced by `next` (its settings; its backends
/// are `conf`'s, checked again against the new settings), through the same checks as
/// a new service.
fn replace_service(
    services: &mut Services,
    next: ServiceConf,
    conf: &ServiceConf,
    tcp_idle: Option<u32>,
    udp_idle: Option<u32>,
) -> Result<(), ServiceError> {
    let vip = conf.vip;
    let mut fresh = Services::default();
    fresh.add_service(vip, next.mode, next.affinity_source, next.echo)?;
    fresh.set_snat(&vip, next.snat)?;
    // The timeouts it has (valid already), then the new ones (checked for its protocol).
    if let Some(s) = fresh.by_vip.get_mut(&vip) {
        (s.tcp_idle, s.udp_idle) = (next.tcp_idle, next.udp_idle);
        s.syn = next.syn;
        s.all_down = next.all_down;
    }
    fresh.set_idle(&vip, tcp_idle, udp_idle)?;
    fresh.set_check(&vip, next.check.clone())?;
    for (b, w) in &conf.backends {
        fresh.add_backend(&vip, *b, *w)?;
    }
    let done = fresh.by_vip.remove(&vip).expect("added above");
    services.by_vip.insert(vip, done);
    Ok(())
}

/// Every target parsed, or the first one's error; at least one.
fn parse_all<T>(targets: &[String], f: impl Fn(&str) -> Result<T, RuleError>) -> Result<Vec<T>> {
    if targets.is_empty() {
        bail!("nothing given: name at least one prefix or port");
    }
    targets
        .iter()
        .map(|t| f(t).map_err(|e| anyhow!(e)))
        .collect()
}

/// A prefix, with a pointer to `fw port` for a port spec.
fn prefix_only(s: &str) -> Result<Prefix, RuleError> {
    if s.ends_with("/tcp") || s.ends_with("/udp") {
        return Err(RuleError::BadPrefix {
            input: s.into(),
            why: "this is a port spec: use `xlb fw port allow|deny`".into(),
        });
    }
    s.parse()
}
