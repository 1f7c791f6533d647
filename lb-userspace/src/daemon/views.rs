//! The edge's read replies: services with their backends' state, rules with their
//! hits, counters and traffic.

use anyhow::Result;

use super::Edge;
use crate::{
    api::reply::{
        Affinity, BackendState, BackendView, Count, ReasonCount, RuleList, RuleView, ServiceList,
        ServiceView, Source, Stats, SynProtectionView,
    },
    health,
    kernel::synflood,
    metrics,
    model::services::{BackendAddr, ServiceConf, Services, Vip},
};

impl Edge {
    /// Every protected service's SYN-flood protection: on or off and why, counters.
    pub fn syn_views(&self) -> Result<Vec<SynProtectionView>> {
        let now = synflood::coarse_now_ns();
        self.dp
            .lb
            .syn_slots()
            .into_iter()
            .map(|(service, slot, p)| {
                let v = self.dp.lb.syn.view(slot)?;
                let (active, why) = synflood::explain(&v, &p, now);
                let method = match v.conf.kind {
                    lb_common::SYN_KIND_PROXY => "syn proxy",
                    lb_common::SYN_KIND_DSR => "allow-list",
                    _ => "local listener",
                };
                Ok(SynProtectionView {
                    service,
                    mode: p.mode,
                    threshold: p.threshold,
                    method: method.into(),
                    active,
                    why,
                    new_flows_last_second: v.rate,
                    cookies_sent: v.stats.cookies_sent,
                    cookies_validated: v.stats.cookies_valid,
                    cookies_refused: v.stats.cookies_refused,
                    no_flow_dropped: v.stats.no_flow,
                    proxied: v.stats.proxied,
                    allowed: v.stats.allowed,
                })
            })
            .collect()
    }

    /// One backend as `vip list`, `backend list` and `status` show it (`view`: what
    /// the kernel has).
    fn backend_view(
        &self,
        vip: &Vip,
        b: &BackendAddr,
        weight: u32,
        view: &Services,
    ) -> BackendView {
        let k = (*vip, *b);
        let h = self.health.get(&k);
        let state = if self.drained.contains(&k) {
            BackendState::Drained
        } else {
            match h {
                Some(h) if h.up => BackendState::Up,
                Some(_) => BackendState::Down,
                None => BackendState::Unchecked,
            }
        };
        let effective = view
            .by_vip
            .get(vip)
            .and_then(|s| s.backends.get(b))
            .copied()
            .unwrap_or(0);
        BackendView {
            backend: b.to_string(),
            weight,
            effective_weight: effective,
            backup: self.backups.contains(&k),
            state,
            health: h.map(health::State::report),
            drain_left_secs: None,
        }
    }

    /// One service with its backends, and the check set with the CLI (the daemon puts
    /// a configuration file's check in its place: `Running::service_list`).
    fn service_view(&self, s: &ServiceConf, view: &Services) -> ServiceView {
        // One lock of the panic record, released before the view is built.
        let (panic, panic_entered) = {
            let book = self
                .panic
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (
                book.now.contains(&s.vip),
                book.entered.get(&s.vip).copied().unwrap_or(0),
            )
        };
        ServiceView {
            service: s.vip.to_string(),
            mode: s.mode,
            affinity: if s.affinity_source {
                Affinity::Source
            } else {
                Affinity::None
            },
            echo: s.echo,
            tcp_idle: s.tcp_idle,
            udp_idle: s.udp_idle,
            snat: s.snat.map(|a| a.to_string()),
            health_check: s.check.clone(),
            all_down: s.all_down,
            panic,
            panic_entered,
            backends: s
                .backends
                .iter()
                .map(|(b, w)| self.backend_view(&s.vip, b, *w, view))
                .collect(),
        }
    }

    /// Every service, in service-address order.
    pub fn service_list(&self) -> ServiceList {
        let view = self.view(&self.pools());
        ServiceList {
            services: self
                .services
                .by_vip
                .values()
                .map(|s| self.service_view(s, &view))
                .collect(),
        }
    }

    /// The policies and every rule with its hits.
    pub(super) fn rule_list(&self) -> Result<RuleList> {
        let end = self.rules.rules().map(|r| r.id + 1).max().unwrap_or(0);
        let hits = self.dp.fw.all_rule_hits(end)?;
        let rules = self
            .rules
            .rules()
            .map(|r| RuleView {
                id: r.id,
                kind: r.matches.kind().to_string(),
                matches: r.matches.to_string(),
                action: r.action,
                hits: hits[r.id as usize],
                source: if self.base.rules.get(&r.matches) == Some(&r.action) {
                    Source::File
                } else {
                    Source::Cli
                },
            })
            .collect();
        Ok(RuleList {
            default: self.rules.default_policy,
            malformed: self.rules.malformed_policy,
            rules,
        })
    }

    /// Counters by verdict and reason, traffic per service and backend.
    pub(super) fn stats(&self) -> Result<Stats> {
        let mut stats = Stats {
            rules: self.rules.len(),
            traffic: metrics::traffic::traffic(&self.dp)?,
            limits: self.limit_views()?,
            ..Stats::default()
        };
        for (reason, verdict, c) in self.dp.counters()? {
            let t: &mut Count = stats
                .verdicts
                .entry(verdict.name().to_string())
                .or_default();
            t.packets += c.packets;
            t.bytes += c.bytes;
            stats.reasons.push(ReasonCount {
                reason: reason.name().to_string(),
                verdict: verdict.name().to_string(),
                malformed: reason.is_malformed(),
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        Ok(stats)
    }
}
