//! The edge's side of the control protocol: the requests that change or read the
//! desired state, each answered with its typed reply.

use std::net::IpAddr;

use anyhow::{Result, anyhow, bail};

use super::{
    Edge,
    host::{check_forwarding, ensure_local},
};
use crate::{
    api::{
        Request, Response,
        reply::{Reply, RuleChanges, ServicesChanged},
    },
    config::health::check_from_words,
    model::{
        rules::{self, Action, Match, PortSpec, Prefix, RuleError, Target},
        services::{BackendAddr, Vip},
    },
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
            | Request::BackendAdd { .. }
            | Request::BackendDel { .. }
            | Request::BackendDrain { .. }
            | Request::BackendEnable { .. } => Reply::ServicesChanged(self.service_request(req)?),
            Request::VipList => Reply::ServiceList(self.service_list()),
            Request::List => Reply::RuleList(self.rule_list()?),
            Request::Stats => Reply::Stats(Box::new(self.stats()?)),
            Request::Status | Request::Reload | Request::Down => {
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
                let snat: Option<IpAddr> = match snat {
                    Some(a) => Some(a.parse().map_err(|_| {
                        anyhow!(
                            "'{a}' is not an address (expected e.g. 203.0.113.1 or 2001:db8::1)"
                        )
                    })?),
                    None => None,
                };
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
            other => bail!("not a services request: {other:?}"),
        }
    }
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
