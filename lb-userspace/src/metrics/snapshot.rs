//! The kernel's numbers at one scrape: read from the maps in a few batch syscalls and
//! registered as the exposition's kernel families.

use std::{sync::PoisonError, time::Instant};

use anyhow::{Context, Result};
use lb_common::{Counter as KCounter, DEFAULT_FLOWS, Reason, Verdict};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{Checked, FGauge, Labels, Metrics, health_series};
use crate::{
    kernel::{
        Datapath,
        balancer::stats::ServiceTraffic,
        flows::{FlowCount, count_flows},
        synflood,
    },
    model::rules::RuleSet,
};

/// A SYN-flood protection family: name, help, its counter of a service's stats.
type SynCounter = (&'static str, &'static str, fn(&lb_common::SynStats) -> u64);

/// Rules exported by id; the hits of every other rule are summed under `rule="other"`.
pub const RULE_SERIES: usize = 1000;

/// The kernel's numbers at one moment, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub counters: Vec<(Reason, Verdict, KCounter)>,
    /// (rule id, hits) of every rule.
    pub rules: Vec<(u32, u64)>,
    pub services: Vec<ServiceTraffic>,
    pub flows: FlowCount,
    pub flow_capacity: u64,
    /// Each protected service's SYN-flood protection: (service, on now, counters).
    pub syn: Vec<(String, bool, lb_common::SynStats)>,
    /// How long reading took.
    pub read_seconds: f64,
    /// The rate limits with their counters (the daemon adds them: they are its
    /// state's as much as the kernel's).
    pub limits: Vec<crate::api::reply::LimitView>,
}

impl Snapshot {
    /// Reads everything of `dp` for the rules of `rules` (the caller holds the
    /// datapath: a few batch syscalls).
    pub fn read(dp: &Datapath, rules: &RuleSet) -> Result<Self> {
        let t = Instant::now();
        let counters = dp.counters().context("reading the packet counters")?;
        let end = rules.rules().map(|r| r.id + 1).max().unwrap_or(0);
        let hits = dp.fw.all_rule_hits(end)?;
        let rules = rules.rules().map(|r| (r.id, hits[r.id as usize])).collect();
        let services = dp.lb.traffic(dp.ncpus())?;
        let flows = count_flows(dp)?;
        let now = synflood::coarse_now_ns();
        let mut syn = Vec::new();
        for (service, slot, p) in dp.lb.syn_slots() {
            let v = dp.lb.syn.view(slot)?;
            syn.push((service, synflood::explain(&v, &p, now).0, v.stats));
        }
        Ok(Snapshot {
            syn,
            counters,
            rules,
            services,
            flows,
            flow_capacity: DEFAULT_FLOWS as u64,
            read_seconds: t.elapsed().as_secs_f64(),
            limits: Vec::new(),
        })
    }

    /// Registers every kernel family of the snapshot (`m`: the health states).
    pub(super) fn register(&self, reg: &mut Registry, m: &Metrics) {
        self.register_packets(reg);
        self.register_rules(reg);
        self.register_services(reg, m);
        self.register_flows(reg);
        self.register_syn(reg);
        super::ratelimit::register(&self.limits, reg);
    }

    /// SYN-flood protection, per protected service.
    fn register_syn(&self, reg: &mut Registry) {
        let active: Family<Labels, Gauge> = Family::default();
        let counters: [SynCounter; 6] = [
            (
                "syn_cookies_sent",
                "SYNs of a protected service answered with a SYN cookie in XDP",
                |s| s.cookies_sent,
            ),
            (
                "syn_cookies_validated",
                "ACKs (dsr: resets) whose SYN cookie was good",
                |s| s.cookies_valid,
            ),
            (
                "syn_cookies_refused",
                "ACKs (dsr: resets) without a flow whose SYN cookie was not good (forged, expired, an ACK flood): dropped",
                |s| s.cookies_refused,
            ),
            (
                "syn_no_flow_dropped",
                "Other packets without a flow dropped while SYN-flood protection was on",
                |s| s.no_flow,
            ),
            (
                "syn_proxied",
                "Connections the SYN proxy opened to a backend (nat, fullnat)",
                |s| s.proxied,
            ),
            (
                "syn_allowed",
                "SYNs of allow-listed sources sent to a dsr service's backend",
                |s| s.allowed,
            ),
        ];
        for (name, help, get) in counters {
            let f: Family<Labels, Counter> = Family::default();
            for (service, _, st) in &self.syn {
                f.get_or_create(&vec![("service", service.clone())])
                    .inc_by(get(st));
            }
            reg.register(name, help, f);
        }
        for (service, on, _) in &self.syn {
            active
                .get_or_create(&vec![("service", service.clone())])
                .set(i64::from(*on));
        }
        reg.register(
            "syn_protection_active",
            "1 while a service's SYN-flood protection is on (always, or auto above its threshold)",
            active,
        );
    }

    /// Packets and bytes by verdict and reason.
    fn register_packets(&self, reg: &mut Registry) {
        let packets: Family<Labels, Counter> = Family::default();
        let bytes: Family<Labels, Counter> = Family::default();
        for (r, v, c) in &self.counters {
            let l = vec![
                ("verdict", v.name().to_string()),
                ("reason", r.name().to_string()),
            ];
            packets.get_or_create(&l).inc_by(c.packets);
            bytes.get_or_create(&l).inc_by(c.bytes);
        }
        reg.register(
            "packets",
            "Packets seen by the XDP program, by verdict and reason",
            packets,
        );
        reg.register(
            "bytes",
            "Bytes (whole frames) seen by the XDP program, by verdict and reason",
            bytes,
        );
    }

    /// The rules' hits (the busiest by id, the rest as `other`) and their number.
    fn register_rules(&self, reg: &mut Registry) {
        let hits: Family<Labels, Counter> = Family::default();
        let mut by_hits: Vec<(u32, u64)> = self.rules.clone();
        by_hits.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let other: u64 = by_hits.iter().skip(RULE_SERIES).map(|r| r.1).sum();
        for (id, n) in by_hits.iter().take(RULE_SERIES) {
            hits.get_or_create(&vec![("rule", id.to_string())])
                .inc_by(*n);
        }
        hits.get_or_create(&vec![("rule", "other".to_string())])
            .inc_by(other);
        reg.register(
            "rule_hits",
            "Packets each firewall rule decided, by rule id (see `xlb fw list`): the rules with the most hits, the rest summed as rule=\"other\"",
            hits,
        );
        let rules = Gauge::<i64>::default();
        rules.set(self.rules.len() as i64);
        reg.register("rules", "Firewall rules loaded", rules);
    }

    /// Per-service and per-backend traffic, and every backend's health.
    fn register_services(&self, reg: &mut Registry, m: &Metrics) {
        let svc_packets: Family<Labels, Counter> = Family::default();
        let svc_bytes: Family<Labels, Counter> = Family::default();
        let svc_flows: Family<Labels, Counter> = Family::default();
        let be_packets: Family<Labels, Counter> = Family::default();
        let be_bytes: Family<Labels, Counter> = Family::default();
        let be_flows: Family<Labels, Counter> = Family::default();
        let health: Family<Labels, Gauge> = Family::default();
        let latency: Family<Labels, FGauge> = Family::default();
        let mut backends = 0;
        let states = m
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for s in &self.services {
            let sl = vec![("service", s.vip.to_string())];
            svc_packets.get_or_create(&sl).inc_by(s.total.packets);
            svc_bytes.get_or_create(&sl).inc_by(s.total.bytes);
            svc_flows.get_or_create(&sl).inc_by(s.total.new_flows);
            for b in &s.backends {
                backends += 1;
                let bl = vec![
                    ("service", s.vip.to_string()),
                    ("backend", b.backend.to_string()),
                ];
                be_packets.get_or_create(&bl).inc_by(b.stats.packets);
                be_bytes.get_or_create(&bl).inc_by(b.stats.bytes);
                be_flows.get_or_create(&bl).inc_by(b.stats.new_flows);
                let h = states.get(&Checked::Service(s.vip, b.backend));
                health_series(&bl, h, &health, &latency);
            }
        }
        for (k, h) in &states {
            if matches!(k, Checked::Pool(..)) {
                health_series(&k.labels(), Some(h), &health, &latency);
            }
        }
        reg.register(
            "service_packets",
            "Packets the balancer forwarded to a service's backends (current and removed)",
            svc_packets,
        );
        reg.register(
            "service_bytes",
            "Bytes the balancer forwarded to a service's backends (current and removed)",
            svc_bytes,
        );
        reg.register(
            "service_new_flows",
            "Flows the balancer scheduled for a service",
            svc_flows,
        );
        reg.register(
            "backend_packets",
            "Packets the balancer forwarded to a backend",
            be_packets,
        );
        reg.register(
            "backend_bytes",
            "Bytes the balancer forwarded to a backend",
            be_bytes,
        );
        reg.register(
            "backend_new_flows",
            "Flows the balancer scheduled to a backend",
            be_flows,
        );
        reg.register(
            "backend_health_state",
            "1 for the backend's current health state (up, down, or unchecked: no health check has run), 0 for the others",
            health,
        );
        reg.register(
            "backend_health_check_latency_seconds",
            "Latency of the backend's last health check",
            latency,
        );
        let services = Gauge::<i64>::default();
        services.set(self.services.len() as i64);
        reg.register("services", "Services configured", services);
        let nb = Gauge::<i64>::default();
        nb.set(backends);
        reg.register("backends", "Backends configured, over all services", nb);
    }

    /// The flow table's entries and capacity.
    fn register_flows(&self, reg: &mut Registry) {
        let flows: Family<Labels, Gauge> = Family::default();
        flows
            .get_or_create(&vec![("direction", "forward".to_string())])
            .set(self.flows.forward as i64);
        flows
            .get_or_create(&vec![("direction", "reply".to_string())])
            .set(self.flows.reply as i64);
        reg.register(
            "flow_entries",
            "Entries in the flow table (LRU), by direction (nat flows have both when their backend's endpoint is shared with another service)",
            flows,
        );
        let cap = Gauge::<i64>::default();
        cap.set(self.flow_capacity as i64);
        reg.register(
            "flow_capacity",
            "Entries the flow table holds before it evicts the least recently used",
            cap,
        );
    }
}
