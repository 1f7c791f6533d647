//! Prometheus metrics (prometheus-client), served on `/metrics` by [`http`]; and the
//! daemon's other monitoring readers: sampled drop events ([`events`]) and the kernel's
//! debug log ([`kernel_log`]).
//!
//! Two kinds of series share one exposition:
//! - read from the kernel at scrape time ([`snapshot::Snapshot`]): packets and bytes by verdict
//!   and reason, firewall rule hits (the top [`RULE_SERIES`] rules plus `other`),
//!   per-service and per-backend packets, bytes and new flows, flow-table entries. The
//!   per-CPU maps are summed here, so the packet path does nothing for a scrape;
//! - kept by the daemon ([`Metrics`]): backend health (an API for the health checker),
//!   the https service ([`HttpsMetrics`], a handle for its proxy), daemon state (build, config
//!   generation, last reload, map update errors) and drop events.
//!
//! Every name and label is listed in docs/monitoring.md. Label values have bounded
//! cardinality: verdicts and reasons are fixed sets, rules are capped, services and
//! backends are bounded by the configuration (MAX_SERVICES, MAX_BACKENDS).

pub mod events;
pub mod export;
pub mod flows;
pub mod http;
pub mod https;
pub mod ipfix;
pub mod kernel_log;
pub mod ratelimit;
pub mod snapshot;
pub mod traffic;

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock, PoisonError, atomic::AtomicU64},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::text::{encode_eof, encode_registry},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub use https::{HTTPS_SERVICE, HttpsMetrics, HttpsRequests};
pub use snapshot::Snapshot;

use crate::model::services::{BackendAddr, Vip};

pub(crate) type Labels = Vec<(&'static str, String)>;
pub(crate) type FGauge = Gauge<f64, AtomicU64>;

/// Maps whose updates can fail, for `xlb_map_update_errors_total{map}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// Firewall rules and policies.
    Rules,
    /// Services, backends, Maglev tables.
    Services,
}

impl MapKind {
    fn name(self) -> &'static str {
        match self {
            MapKind::Rules => "rules",
            MapKind::Services => "services",
        }
    }
}

/// A backend's health as the checker last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// No check has run (health checks not configured, or not yet).
    Unchecked,
    Up,
    Down,
}

impl HealthState {
    pub const ALL: [HealthState; 3] = [HealthState::Unchecked, HealthState::Up, HealthState::Down];
    pub fn name(self) -> &'static str {
        match self {
            HealthState::Unchecked => "unchecked",
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Health {
    state: HealthState,
    /// Of the last check (None: none has run).
    latency: Option<Duration>,
}

/// A backend whose health is recorded: a layer-4 service's, or one of a pool of the
/// https service (labelled `service="https"` like its layer-7 families, plus `pool`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Checked {
    Service(Vip, BackendAddr),
    Pool(String, BackendAddr),
}

impl Checked {
    pub(crate) fn labels(&self) -> Labels {
        match self {
            Checked::Service(vip, b) => {
                vec![("service", vip.to_string()), ("backend", b.to_string())]
            }
            Checked::Pool(pool, b) => vec![
                ("service", https::HTTPS_SERVICE.to_string()),
                ("pool", pool.clone()),
                ("backend", b.to_string()),
            ],
        }
    }
}

/// The health series of one backend: a 1 for its state, its last check's latency.
pub(crate) fn health_series(
    labels: &Labels,
    h: Option<&Health>,
    state: &Family<Labels, Gauge>,
    latency: &Family<Labels, FGauge>,
) {
    let now = h.map_or(HealthState::Unchecked, |h| h.state);
    for st in HealthState::ALL {
        let mut l = labels.clone();
        l.push(("state", st.name().to_string()));
        state.get_or_create(&l).set((st == now) as i64);
    }
    if let Some(d) = h.and_then(|h| h.latency) {
        latency.get_or_create(labels).set(d.as_secs_f64());
    }
}

/// The daemon's metrics: a registry of the families it keeps itself, plus the health
/// states merged into each scrape.
pub struct Metrics {
    registry: Registry,
    pub(crate) health: Mutex<HashMap<Checked, Health>>,
    transitions: Family<Labels, Counter>,
    generation: Gauge,
    reload_ok: Gauge,
    reload_time: FGauge,
    map_errors: Family<Labels, Counter>,
    drop_events: Family<Labels, Counter>,
    kernel_log: Counter,
    access_log_dropped: Counter,
    exported: Family<Labels, Counter>,
    export_dropped: Family<Labels, Counter>,
    flow_records: Family<Labels, Counter>,
    ipfix_messages: Counter,
    ipfix_failed: Counter,
    flows_tracked: Gauge,
    scrapes: Counter,
    scrape_seconds: FGauge,
    panic: Family<Labels, Gauge>,
    panic_entered: Family<Labels, Counter>,
    /// The https service's families.
    pub https: HttpsMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics, the ones `xlb run` serves: health checks, the TLS proxy and
/// the daemon record into it from anywhere.
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::new)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("xlb");
        let build: Family<Labels, Gauge> = Family::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say which xlb this is",
            build,
        );
        let m = Metrics {
            transitions: Family::default(),
            generation: Gauge::default(),
            reload_ok: Gauge::default(),
            reload_time: FGauge::default(),
            map_errors: Family::default(),
            drop_events: Family::default(),
            kernel_log: Counter::default(),
            access_log_dropped: Counter::default(),
            exported: Family::default(),
            export_dropped: Family::default(),
            flow_records: Family::default(),
            ipfix_messages: Counter::default(),
            ipfix_failed: Counter::default(),
            flows_tracked: Gauge::default(),
            scrapes: Counter::default(),
            scrape_seconds: FGauge::default(),
            panic: Family::default(),
            panic_entered: Family::default(),
            health: Mutex::new(HashMap::new()),
            https: HttpsMetrics::new(&mut registry),
            registry,
        };
        let mut m = m;
        let reg = &mut m.registry;
        reg.register(
            "backend_health_transitions",
            "Backend health state changes, by the state entered",
            m.transitions.clone(),
        );
        reg.register(
            "config_generation",
            "Generation of the configuration in force (1 at start, +1 per reload)",
            m.generation.clone(),
        );
        reg.register(
            "config_last_reload_success",
            "1 if the last configuration load or reload succeeded, else 0",
            m.reload_ok.clone(),
        );
        reg.register(
            "config_last_reload_timestamp_seconds",
            "Unix time of the last configuration load or reload",
            m.reload_time.clone(),
        );
        reg.register(
            "map_update_errors",
            "Kernel map updates that failed (the change was rolled back), by map group",
            m.map_errors.clone(),
        );
        reg.register(
            "drop_events",
            "Sampled dropped-packet events from the kernel, by what the daemon did with them (logged, suppressed by the log rate limit)",
            m.drop_events.clone(),
        );
        reg.register(
            "kernel_log_records",
            "Kernel debug log records (aya-log) received",
            m.kernel_log.clone(),
        );
        reg.register(
            "access_log_dropped",
            "https access log records dropped: the writer was behind, or its file or syslog could not be written",
            m.access_log_dropped.clone(),
        );
        reg.register(
            "export_records",
            "Log records sent over OTLP ([export]), by stream (access, drops, daemon, flows)",
            m.exported.clone(),
        );
        reg.register(
            "export_dropped",
            "Log records not sent over OTLP, by stream and reason (queue_full: the queue was full; collector: it failed every try)",
            m.export_dropped.clone(),
        );
        reg.register(
            "flow_records",
            "Flow records made ([flows]), by kind (start, interim, end, drop)",
            m.flow_records.clone(),
        );
        reg.register(
            "ipfix_messages",
            "IPFIX messages sent to the collector",
            m.ipfix_messages.clone(),
        );
        reg.register(
            "ipfix_send_failures",
            "IPFIX messages the socket refused (their records are lost)",
            m.ipfix_failed.clone(),
        );
        reg.register(
            "flows_tracked",
            "Flows the flow-record scanner follows (the sampled ones)",
            m.flows_tracked.clone(),
        );
        reg.register("scrapes", "Scrapes of /metrics served", m.scrapes.clone());
        reg.register(
            "service_panic",
            "1 while every backend of the service looks down and it sends new flows to all of them anyway (panic mode; all_down = \"strict\" turns it off)",
            m.panic.clone(),
        );
        reg.register(
            "service_panic_entered",
            "Times a service went into panic mode",
            m.panic_entered.clone(),
        );
        reg.register(
            "scrape_read_seconds",
            "Time the last scrape spent reading the kernel maps",
            m.scrape_seconds.clone(),
        );
        for kind in [MapKind::Rules, MapKind::Services] {
            let _ = m
                .map_errors
                .get_or_create(&vec![("map", kind.name().to_string())]);
        }
        for outcome in ["logged", "suppressed"] {
            let _ = m
                .drop_events
                .get_or_create(&vec![("outcome", outcome.to_string())]);
        }
        m
    }

    /// A service went into panic mode (`on`) or out of it.
    pub fn service_panic(&self, service: &str, on: bool) {
        let l = vec![("service", service.to_string())];
        self.panic.get_or_create(&l).set(i64::from(on));
        let entered = self.panic_entered.get_or_create(&l);
        if on {
            entered.inc();
        }
    }

    /// Records a health check of a backend: its result and latency. A change of state
    /// (including the first check) counts one transition.
    pub fn backend_health(&self, who: &Checked, up: bool, latency: Duration) {
        let state = if up {
            HealthState::Up
        } else {
            HealthState::Down
        };
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let health = Health {
            state,
            latency: Some(latency),
        };
        let old = h.insert(who.clone(), health);
        if old.map(|o| o.state) != Some(state) {
            let mut l = who.labels();
            l.push(("to", state.name().to_string()));
            self.transitions.get_or_create(&l).inc();
        }
    }

    /// A backend's health as last recorded.
    pub fn health_of(&self, who: &Checked) -> HealthState {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(who)
            .map_or(HealthState::Unchecked, |h| h.state)
    }

    /// Forgets a removed (or no longer checked) backend's health; its transition
    /// counter is removed too.
    pub fn forget_backend(&self, who: &Checked) {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(who);
        for s in HealthState::ALL {
            let mut l = who.labels();
            l.push(("to", s.name().to_string()));
            self.transitions.remove(&l);
        }
    }

    /// The https service's pool backends are exactly `backends`: the others are
    /// forgotten, new ones are unchecked until a check of theirs runs. (Layer-4
    /// backends come from the kernel's maps at each scrape instead.)
    pub fn pool_backends(&self, backends: &[Checked]) {
        let gone: Vec<Checked> = {
            let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            for b in backends {
                h.entry(b.clone()).or_insert(Health {
                    state: HealthState::Unchecked,
                    latency: None,
                });
            }
            h.keys()
                .filter(|k| matches!(k, Checked::Pool(..)) && !backends.contains(k))
                .cloned()
                .collect()
        };
        for k in gone {
            self.forget_backend(&k);
        }
    }

    /// The configuration in force is `generation`; its load succeeded or not (a failed
    /// reload keeps the previous generation in force).
    pub fn config_loaded(&self, generation: u64, ok: bool) {
        self.generation.set(generation as i64);
        self.reload_ok.set(ok as i64);
        self.reload_time.set(now_secs());
    }

    pub fn map_update_error(&self, kind: MapKind) {
        self.map_errors
            .get_or_create(&vec![("map", kind.name().to_string())])
            .inc();
    }

    /// A drop event from the kernel: logged, or suppressed by the rate limit.
    pub fn drop_event(&self, logged: bool) {
        let outcome = if logged { "logged" } else { "suppressed" };
        self.drop_events
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    pub fn kernel_log_record(&self) {
        self.kernel_log.inc();
    }

    /// A log record sent over OTLP.
    pub fn exported(&self, stream: &str) {
        self.exported
            .get_or_create(&vec![("stream", stream.to_string())])
            .inc();
    }

    /// `n` flow records of `kind` made.
    pub fn flow_records(&self, kind: &str, n: u64) {
        self.flow_records
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc_by(n);
    }

    /// What an IPFIX send did, and how many flows are followed.
    pub fn ipfix_sent(&self, messages: u64, failed: u64, tracked: usize) {
        self.ipfix_messages.inc_by(messages);
        self.ipfix_failed.inc_by(failed);
        self.flows_tracked.set(tracked as i64);
    }

    /// `n` log records of `stream` not sent over OTLP, and why.
    pub fn export_dropped(&self, stream: &str, reason: &str, n: u64) {
        self.export_dropped
            .get_or_create(&vec![
                ("stream", stream.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc_by(n);
    }

    /// An access log record that was not written.
    pub fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    /// The whole exposition in OpenMetrics text: the daemon's families and the kernel's
    /// numbers of `snap`.
    pub fn render(&self, snap: &Snapshot) -> String {
        self.scrapes.inc();
        self.scrape_seconds.set(snap.read_seconds);
        let mut kernel = Registry::with_prefix("xlb");
        snap.register(&mut kernel, self);
        let mut out = String::with_capacity(64 * 1024);
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &kernel);
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_eof(&mut out);
        out
    }
}

/// Counts a failed kernel map update in the process's metrics.
pub fn map_update_failed(kind: MapKind) {
    global().map_update_error(kind);
}

#[cfg(test)]
mod tests {
    use self::http::to_text_format;
    use super::*;
    use crate::kernel::{balancer::stats::ServiceTraffic, flows::FlowCount};
    use lb_common::{Counter as KCounter, Reason, Verdict};
    use snapshot::RULE_SERIES;

    fn vip() -> Vip {
        "198.51.100.10:80/tcp".parse().unwrap()
    }

    fn snap() -> Snapshot {
        use crate::kernel::balancer::stats::BackendTraffic;
        use lb_common::BackendStats;
        let b: BackendAddr = "203.0.113.11:8080".parse().unwrap();
        let stats = BackendStats {
            packets: 7,
            bytes: 700,
            new_flows: 2,
        };
        Snapshot {
            counters: vec![(
                Reason::PrefixDeny,
                Verdict::Drop,
                KCounter {
                    packets: 3,
                    bytes: 180,
                },
            )],
            rules: (1..=1005).map(|id| (id, id as u64)).collect(),
            services: vec![ServiceTraffic {
                vip: vip(),
                mode: crate::model::services::Mode::Nat,
                backends: vec![BackendTraffic {
                    backend: b,
                    id: 1,
                    stats,
                }],
                total: stats,
            }],
            flows: FlowCount {
                forward: 2,
                reply: 2,
            },
            flow_capacity: 10,
            syn: vec![(
                "192.0.2.10:80/tcp".into(),
                true,
                lb_common::SynStats {
                    cookies_sent: 7,
                    cookies_valid: 5,
                    cookies_refused: 2,
                    ..Default::default()
                },
            )],
            read_seconds: 0.001,
            limits: vec![crate::api::reply::LimitView {
                id: 3,
                rate: "100/s".into(),
                burst: 20,
                per: "/24".into(),
                prefix: Some("192.0.2.0/23".into()),
                new_flows: true,
                service: None,
                source: crate::api::reply::Source::Cli,
                passed: 40,
                dropped: 9,
                sketch_dropped: 2,
                exempted: 1,
                promoted: 5,
            }],
        }
    }

    #[test]
    fn exposition_has_every_family_and_caps_rules() {
        let m = Metrics::new();
        let text = m.render(&snap());
        for want in [
            "xlb_packets_total{verdict=\"drop\",reason=\"prefix_deny\"} 3",
            "xlb_bytes_total{verdict=\"drop\",reason=\"prefix_deny\"} 180",
            "xlb_syn_cookies_sent_total{service=\"192.0.2.10:80/tcp\"} 7",
            "xlb_syn_cookies_validated_total{service=\"192.0.2.10:80/tcp\"} 5",
            "xlb_syn_cookies_refused_total{service=\"192.0.2.10:80/tcp\"} 2",
            "xlb_syn_protection_active{service=\"192.0.2.10:80/tcp\"} 1",
            "xlb_backend_packets_total{service=\"198.51.100.10:80/tcp\",backend=\"203.0.113.11:8080\"} 7",
            "xlb_service_new_flows_total{service=\"198.51.100.10:80/tcp\"} 2",
            "xlb_backend_health_state{service=\"198.51.100.10:80/tcp\",backend=\"203.0.113.11:8080\",state=\"unchecked\"} 1",
            "xlb_flow_entries{direction=\"reply\"} 2",
            "xlb_flow_capacity 10",
            "xlb_build_info{version=",
            "xlb_map_update_errors_total{map=\"rules\"} 0",
            "xlb_rate_limit_packets_total{limit=\"3\",service=\"all\",outcome=\"dropped\"} 9",
            "xlb_rate_limit_packets_total{limit=\"3\",service=\"all\",outcome=\"passed\"} 40",
            "xlb_rate_limit_sketch_drops_total{limit=\"3\",service=\"all\"} 2",
            "xlb_rate_limit_promotions_total{limit=\"3\",service=\"all\"} 5",
            "xlb_rate_limit_info{limit=\"3\",service=\"all\",rate=\"100/s\",burst=\"20\",per=\"/24\",prefix=\"192.0.2.0/23\",new_flows=\"true\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // 1005 rules: the top 1000 by hits (ids 6..=1005) and the rest (1..=5) as other.
        let rule_lines = text
            .lines()
            .filter(|l| l.starts_with("xlb_rule_hits_total{"))
            .count();
        assert_eq!(rule_lines, RULE_SERIES + 1);
        assert!(text.contains("xlb_rule_hits_total{rule=\"other\"} 15"));
        assert!(text.contains("xlb_rule_hits_total{rule=\"1005\"} 1005"));
        assert!(!text.contains("xlb_rule_hits_total{rule=\"5\"}"));
    }

    #[test]
    fn health_and_transitions() {
        let m = Metrics::new();
        let b: BackendAddr = "203.0.113.11:8080".parse().unwrap();
        let svc = Checked::Service(vip(), b);
        m.backend_health(&svc, true, Duration::from_millis(3));
        m.backend_health(&svc, true, Duration::from_millis(4));
        m.backend_health(&svc, false, Duration::from_millis(5));
        assert_eq!(m.health_of(&svc), HealthState::Down);
        let text = m.render(&snap());
        assert!(text.contains("state=\"down\"} 1"), "{text}");
        assert!(text.contains(
            "xlb_backend_health_transitions_total{service=\"198.51.100.10:80/tcp\",backend=\"203.0.113.11:8080\",to=\"up\"} 1"
        ));
        assert!(text.contains("to=\"down\"} 1"));
        assert!(text.contains("xlb_backend_health_check_latency_seconds{service=\"198.51.100.10:80/tcp\",backend=\"203.0.113.11:8080\"} 0.005"));
        m.forget_backend(&svc);
        assert_eq!(m.health_of(&svc), HealthState::Unchecked);

        // Pool backends: unchecked until their first check, in the same families.
        let web = |a: &str| Checked::Pool("web".into(), a.parse().unwrap());
        m.pool_backends(&[web("203.0.113.11:8080"), web("203.0.113.12:8080")]);
        m.backend_health(&web("203.0.113.12:8080"), false, Duration::from_millis(7));
        let text = m.render(&snap());
        for want in [
            "xlb_backend_health_state{service=\"https\",pool=\"web\",backend=\"203.0.113.11:8080\",state=\"unchecked\"} 1",
            "xlb_backend_health_state{service=\"https\",pool=\"web\",backend=\"203.0.113.12:8080\",state=\"down\"} 1",
            "xlb_backend_health_transitions_total{service=\"https\",pool=\"web\",backend=\"203.0.113.12:8080\",to=\"down\"} 1",
            "xlb_backend_health_check_latency_seconds{service=\"https\",pool=\"web\",backend=\"203.0.113.12:8080\"} 0.007",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        m.pool_backends(&[web("203.0.113.11:8080")]);
        let text = m.render(&snap());
        assert!(!text.contains("203.0.113.12:8080\",state="), "{text}");
        assert!(!text.contains("pool=\"web\",backend=\"203.0.113.12:8080\",to="));
    }

    #[test]
    fn l7_and_daemon_families() {
        let m = Metrics::new();
        m.https.request("web", 204, Duration::from_millis(2));
        m.https.request("web", 503, Duration::from_millis(20));
        let conn = m.https.connection("web");
        m.https.handshake("web", Ok(()));
        m.https.handshake("web", Err("no_sni"));
        m.https.upstream_error("web", "connect");
        m.config_loaded(3, false);
        m.map_update_error(MapKind::Services);
        m.drop_event(true);
        let text = m.render(&Snapshot::default());
        for want in [
            "xlb_l7_requests_total{service=\"web\",class=\"2xx\"} 1",
            "xlb_l7_requests_total{service=\"web\",class=\"5xx\"} 1",
            "xlb_l7_request_duration_seconds_count{service=\"web\"} 2",
            "xlb_l7_active_connections{service=\"web\"} 1",
            "xlb_tls_handshakes_total{service=\"web\"} 1",
            "xlb_tls_handshake_failures_total{service=\"web\",reason=\"no_sni\"} 1",
            "xlb_l7_upstream_errors_total{service=\"web\",kind=\"connect\"} 1",
            "xlb_config_generation 3",
            "xlb_config_last_reload_success 0",
            "xlb_map_update_errors_total{map=\"services\"} 1",
            "xlb_drop_events_total{outcome=\"logged\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        drop(conn);
        let text = m.render(&Snapshot::default());
        assert!(text.contains("xlb_l7_active_connections{service=\"web\"} 0"));
    }

    #[test]
    fn text_format_names_counters_with_total() {
        let om = "# HELP xlb_packets Packets.\n# TYPE xlb_packets counter\nxlb_packets_total{a=\"b\"} 1\n# HELP xlb_rules Rules.\n# TYPE xlb_rules gauge\nxlb_rules 2\n# EOF\n";
        let t = to_text_format(om);
        assert_eq!(
            t,
            "# HELP xlb_packets_total Packets.\n# TYPE xlb_packets_total counter\nxlb_packets_total{a=\"b\"} 1\n# HELP xlb_rules Rules.\n# TYPE xlb_rules gauge\nxlb_rules 2\n"
        );
    }
}
