//! The edge's rate limits: the limits (`xlb fw limit`) changed as one with the maps and
//! the state file, and the endpoints whose answers no limit drops (the backends, their
//! health-check ports, the https service's pool backends), so a limit never cuts the
//! edge off from its own backends.

use std::{
    collections::{BTreeSet, HashSet},
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context, Result, anyhow, bail};
use lb_common::{EndpointKey, FAMILY_V4, FAMILY_V6, IPPROTO_TCP, IPPROTO_UDP, addr16_v4};
use tracing::warn;

use super::Edge;
use crate::{
    api::{
        Request,
        reply::{LimitChanges, LimitList, LimitView, Reply, Source},
    },
    model::{
        ratelimit::{Limit, LimitWords, Limits},
        rules::Proto,
        services::Services,
    },
};

impl Edge {
    /// `fw limit add|del|list`.
    pub(super) fn limit_request(&mut self, req: Request) -> Result<Reply> {
        match req {
            Request::LimitAdd {
                rate,
                burst,
                per,
                prefix,
                new_flows,
                service,
            } => {
                let l = LimitWords {
                    rate: &rate,
                    burst: burst.as_deref(),
                    per: per.as_deref(),
                    prefix: prefix.as_deref(),
                    new_flows,
                    service: service.as_deref(),
                }
                .limit()?;
                Ok(Reply::LimitChanges(self.limit_change(
                    |ls| ls.add(l),
                    1,
                    0,
                )?))
            }
            Request::LimitDel {
                per,
                prefix,
                new_flows,
                service,
            } => {
                let m = LimitWords {
                    rate: "",
                    burst: None,
                    per: per.as_deref(),
                    prefix: prefix.as_deref(),
                    new_flows,
                    service: service.as_deref(),
                }
                .matches()?;
                Ok(Reply::LimitChanges(self.limit_change(
                    |ls| ls.del(&m).map(|_| ()),
                    0,
                    1,
                )?))
            }
            Request::LimitList => Ok(Reply::LimitList(LimitList {
                limits: self.limit_views()?,
            })),
            other => bail!("not a rate-limit request: {other:?}"),
        }
    }

    /// Applies an edit of the limits to the desired state, the maps and the state file,
    /// or to none of them.
    fn limit_change(
        &mut self,
        edit: impl FnOnce(&mut Limits) -> Result<(), crate::model::ratelimit::LimitError>,
        added: usize,
        removed: usize,
    ) -> Result<LimitChanges> {
        let mut next = self.limits.clone();
        edit(&mut next).context("nothing was changed")?;
        next.check_services(&self.services)
            .context("nothing was changed")?;
        if let Err(e) = self.sync_limits(&next) {
            let _ = self.sync_limits(&self.limits.clone());
            return Err(e.context("updating the kernel maps; nothing was changed"));
        }
        let old = std::mem::replace(&mut self.limits, next);
        if let Err(e) = self.save() {
            self.limits = old;
            let _ = self.sync_limits(&self.limits.clone());
            return Err(e.context("nothing was changed"));
        }
        Ok(LimitChanges {
            added,
            removed,
            limits: self.limits.len(),
        })
    }

    /// Each limit with its service's id (0: all traffic), as the kernel takes them.
    fn resolved(&self, limits: &Limits) -> Result<Vec<(Limit, u32)>> {
        limits
            .by_match
            .values()
            .map(|l| {
                let id =
                    match &l.matches.service {
                        None => 0,
                        Some(vip) => self.dp.lb.service_id(vip).ok_or_else(|| {
                            anyhow!("service {vip} of limit {l} is not installed")
                        })?,
                    };
                Ok((*l, id))
            })
            .collect()
    }

    /// Brings the limits' maps to `limits` (the services they name are installed).
    pub fn sync_limits(&mut self, limits: &Limits) -> Result<()> {
        let r = self.resolved(limits)?;
        self.dp.rl.sync(&r)
    }

    /// Refuses a services change that would leave a limit without its service.
    pub(super) fn limits_fit(&self, services: &Services) -> Result<()> {
        for m in self.limits.by_match.keys() {
            if let Some(vip) = &m.service
                && !services.by_vip.contains_key(vip)
            {
                bail!(
                    "service {vip} has a rate limit ({m}): remove the limit first (`xlb fw limit del --service {vip} ...`)"
                );
            }
        }
        Ok(())
    }

    /// Every limit in force with its counters.
    pub fn limit_views(&self) -> Result<Vec<LimitView>> {
        let stats = self.dp.rl.stats()?;
        let mut out = Vec::new();
        for (l, id) in self.resolved(&self.limits)? {
            let slot = self.dp.rl.slot_of(&l, id);
            let s = slot
                .and_then(|s| stats.get(&s))
                .copied()
                .unwrap_or_default();
            let m = &l.matches;
            out.push(LimitView {
                id: slot.unwrap_or(u32::MAX),
                rate: l.rate.to_string(),
                burst: l.burst,
                per: m.per.to_string(),
                prefix: m.prefix.map(|p| p.to_string()),
                new_flows: m.new_flows,
                service: m.service.map(|v| v.to_string()),
                source: if self.base.limits.by_match.get(m) == Some(&l) {
                    Source::File
                } else {
                    Source::Cli
                },
                passed: s.passed,
                dropped: s.dropped,
                sketch_dropped: s.sketch_dropped,
                exempted: s.exempted,
                promoted: s.promoted,
            });
        }
        out.sort_by_key(|v| v.id);
        Ok(out)
    }

    /// Health checks' ports (from `set_checked`) and the https service's upstreams: the
    /// endpoints besides the backends themselves whose answers are never limited.
    pub fn set_probe_endpoints(&mut self, probes: BTreeSet<(IpAddr, u16)>) {
        if probes != self.probes {
            self.probes = probes;
            self.sync_exempt();
        }
    }

    /// The https service's pool backends (and their check ports).
    pub fn set_upstreams(&mut self, upstreams: BTreeSet<SocketAddr>) {
        if upstreams != self.upstreams {
            self.upstreams = upstreams;
            self.sync_exempt();
        }
    }

    /// MAP_RL_EXEMPT brought to the endpoints of now.
    pub fn sync_exempt(&mut self) {
        let keys = exempt_keys(&self.services, &self.probes, &self.upstreams);
        if let Err(e) = self.dp.rl.set_exempt(&keys) {
            warn!("updating the endpoints exempt from rate limits: {e:#}");
        }
    }
}

fn endpoint(addr: IpAddr, port: u16, proto: u8) -> EndpointKey {
    let (a, family) = match addr {
        IpAddr::V4(v) => (addr16_v4(v.octets()), FAMILY_V4),
        IpAddr::V6(v) => (lb_common::Addr16::from_bytes(v.octets()), FAMILY_V6),
    };
    EndpointKey {
        addr: a,
        port,
        proto,
        family,
    }
}

/// The endpoints whose packets a limit never drops: every backend at its port (its
/// replies; port 0, any port, for a service of every port), every health check's port
/// (TCP: the probes' answers), every upstream of the https service (TCP).
pub fn exempt_keys(
    services: &Services,
    probes: &BTreeSet<(IpAddr, u16)>,
    upstreams: &BTreeSet<SocketAddr>,
) -> HashSet<EndpointKey> {
    let mut out = HashSet::new();
    for s in services.by_vip.values() {
        let proto = match s.vip.proto {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        };
        for b in s.backends.keys() {
            out.insert(endpoint(b.addr, b.port.unwrap_or(0), proto));
        }
    }
    for (a, p) in probes {
        out.insert(endpoint(*a, *p, IPPROTO_TCP));
    }
    for u in upstreams {
        out.insert(endpoint(u.ip(), u.port(), IPPROTO_TCP));
    }
    out
}
