//! Prometheus metrics (prometheus-client), served on `/metrics` by `metrics_http`.
//!
//! Two kinds of series share one exposition:
//! - read from the kernel at scrape time ([`Snapshot`]): packets and bytes by verdict
//!   and reason, firewall rule hits (the top [`RULE_SERIES`] rules plus `other`),
//!   per-service and per-backend packets, bytes and new flows, flow-table entries. The
//!   per-CPU maps are summed here, so the packet path does nothing for a scrape;
//! - kept by the daemon ([`Metrics`]): backend health (an API for the health checker),
//!   layer 7 ([`L7Metrics`], a handle for the TLS proxy), daemon state (build, config
//!   generation, last reload, map update errors) and drop events.
//!
//! Every name and label is listed in the README (Monitoring). Label values have bounded
//! cardinality: verdicts and reasons are fixed sets, rules are capped, services and
//! backends are bounded by the configuration (MAX_SERVICES, MAX_BACKENDS).

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock, atomic::AtomicU64},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use lb_common::{Counter as KCounter, DEFAULT_FLOWS, FLOW_REPLY, Flow, FlowKey, Reason, Verdict};
use prometheus_client::{
    encoding::text::{encode_eof, encode_registry},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    balancer::stats::ServiceTraffic,
    daemon::Edge,
    kstats,
    services::{BackendAddr, Vip},
};

/// Rules exported by id; the hits of every other rule are summed under `rule="other"`.
pub const RULE_SERIES: usize = 1000;

/// OpenMetrics, what prometheus-client writes (and Prometheus asks for).
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format (0.0.4), for curl, promtool and older scrapers.
pub const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type FGauge = Gauge<f64, AtomicU64>;

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
struct Health {
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
    fn labels(&self) -> Labels {
        match self {
            Checked::Service(vip, b) => {
                vec![("service", vip.to_string()), ("backend", b.to_string())]
            }
            Checked::Pool(pool, b) => vec![
                ("service", crate::tls::METRICS_SERVICE.to_string()),
                ("pool", pool.clone()),
                ("backend", b.to_string()),
            ],
        }
    }
}

/// The health series of one backend: a 1 for its state, its last check's latency.
fn health_series(
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

/// Layer-7 metric families (the TLS proxy's), registered in the daemon's registry.
/// Cloning shares the families. `service` is the proxy's service name; `reason` and
/// `kind` must come from small fixed sets (they are label values).
#[derive(Clone)]
pub struct L7Metrics {
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    active: Family<Labels, Gauge>,
    handshakes: Family<Labels, Counter>,
    handshake_failures: Family<Labels, Counter>,
    upstream_errors: Family<Labels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The status class labels of HTTP statuses, indexed by [`class_slot`].
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn class_slot(status: u16) -> usize {
    match status {
        100..=599 => (status / 100 - 1) as usize,
        _ => 5,
    }
}

/// One service's request counters and latency histogram. Every proxied request counts
/// here: a family lookup allocates its labels and takes the family's lock, so each
/// series is resolved once (on its first request, so that a scrape shows the same
/// series as before: none for a class never answered).
pub struct L7Requests {
    metrics: L7Metrics,
    service: String,
    classes: [OnceLock<Counter>; STATUS_CLASSES.len()],
    duration: OnceLock<Histogram>,
}

impl L7Requests {
    /// One answered request.
    pub fn request(&self, status: u16, latency: Duration) {
        let slot = class_slot(status);
        self.classes[slot]
            .get_or_init(|| {
                self.metrics.requests.get_or_create_owned(&vec![
                    ("service", self.service.clone()),
                    ("class", STATUS_CLASSES[slot].to_string()),
                ])
            })
            .inc();
        self.duration
            .get_or_init(|| {
                self.metrics
                    .duration
                    .get_or_create_owned(&vec![("service", self.service.clone())])
            })
            .observe(latency.as_secs_f64());
    }
}

/// Keeps `xlb_l7_active_connections` up while it lives.
pub struct ActiveConnection {
    gauge: Gauge,
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl L7Metrics {
    fn new(reg: &mut Registry) -> Self {
        let l7 = L7Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            active: Family::default(),
            handshakes: Family::default(),
            handshake_failures: Family::default(),
            upstream_errors: Family::default(),
        };
        reg.register(
            "l7_requests",
            "Layer-7 requests answered, by service and status class",
            l7.requests.clone(),
        );
        reg.register(
            "l7_request_duration_seconds",
            "Layer-7 request latency (request received to response sent), by service",
            l7.duration.clone(),
        );
        reg.register(
            "l7_active_connections",
            "Open client connections of the layer-7 proxy, by service",
            l7.active.clone(),
        );
        reg.register(
            "tls_handshakes",
            "TLS handshakes completed, by service",
            l7.handshakes.clone(),
        );
        reg.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by service and reason",
            l7.handshake_failures.clone(),
        );
        reg.register(
            "l7_upstream_errors",
            "Errors talking to backends (connect, timeout, reset, ...), by service and kind",
            l7.upstream_errors.clone(),
        );
        l7
    }

    /// One answered request (looks its series up; a hot path keeps an
    /// [`L7Requests`] instead).
    pub fn request(&self, service: &str, status: u16, latency: Duration) {
        self.requests_of(service).request(status, latency);
    }

    /// The request series of `service`, each looked up once on first use.
    pub fn requests_of(&self, service: &str) -> L7Requests {
        L7Requests {
            metrics: self.clone(),
            service: service.to_string(),
            classes: Default::default(),
            duration: OnceLock::new(),
        }
    }

    /// A client connection opened; it counts as active until the guard drops.
    pub fn connection(&self, service: &str) -> ActiveConnection {
        let gauge = self
            .active
            .get_or_create_owned(&vec![("service", service.to_string())]);
        gauge.inc();
        ActiveConnection { gauge }
    }

    /// A TLS handshake's outcome: `Err(reason)` (e.g. "no_sni", "bad_certificate",
    /// "protocol_version", "timeout").
    pub fn handshake(&self, service: &str, outcome: Result<(), &str>) {
        match outcome {
            Ok(()) => {
                self.handshakes
                    .get_or_create(&vec![("service", service.to_string())])
                    .inc();
            }
            Err(reason) => {
                self.handshake_failures
                    .get_or_create(&vec![
                        ("service", service.to_string()),
                        ("reason", reason.to_string()),
                    ])
                    .inc();
            }
        }
    }

    /// An error towards a backend (`kind`: e.g. "connect", "timeout", "reset").
    pub fn upstream_error(&self, service: &str, kind: &str) {
        self.upstream_errors
            .get_or_create(&vec![
                ("service", service.to_string()),
                ("kind", kind.to_string()),
            ])
            .inc();
    }
}

/// The daemon's metrics: a registry of the families it keeps itself, plus the health
/// states merged into each scrape.
pub struct Metrics {
    registry: Registry,
    health: Mutex<HashMap<Checked, Health>>,
    transitions: Family<Labels, Counter>,
    generation: Gauge,
    reload_ok: Gauge,
    reload_time: FGauge,
    map_errors: Family<Labels, Counter>,
    drop_events: Family<Labels, Counter>,
    kernel_log: Counter,
    scrapes: Counter,
    scrape_seconds: FGauge,
    /// The layer-7 families.
    pub l7: L7Metrics,
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
            scrapes: Counter::default(),
            scrape_seconds: FGauge::default(),
            health: Mutex::new(HashMap::new()),
            l7: L7Metrics::new(&mut registry),
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
        reg.register("scrapes", "Scrapes of /metrics served", m.scrapes.clone());
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

    /// Records a health check of a backend: its result and latency. A change of state
    /// (including the first check) counts one transition.
    pub fn backend_health(&self, who: &Checked, up: bool, latency: Duration) {
        let state = if up {
            HealthState::Up
        } else {
            HealthState::Down
        };
        let mut h = self.health.lock().expect("not poisoned");
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
            .expect("not poisoned")
            .get(who)
            .map_or(HealthState::Unchecked, |h| h.state)
    }

    /// Forgets a removed (or no longer checked) backend's health; its transition
    /// counter is removed too.
    pub fn forget_backend(&self, who: &Checked) {
        self.health.lock().expect("not poisoned").remove(who);
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
            let mut h = self.health.lock().expect("not poisoned");
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

/// The flow table's entries by direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCount {
    pub forward: u64,
    pub reply: u64,
}

/// The kernel's numbers at one moment, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub counters: Vec<(Reason, Verdict, KCounter)>,
    /// (rule id, hits) of every rule.
    pub rules: Vec<(u32, u64)>,
    pub services: Vec<ServiceTraffic>,
    pub flows: FlowCount,
    pub flow_capacity: u64,
    /// How long reading took.
    pub read_seconds: f64,
}

/// Entries of the flow table, by direction (one batch walk over the table).
pub fn count_flows(edge: &Edge) -> Result<FlowCount> {
    let fd = edge
        .dp
        .flows_fd()
        .context("the flow table map is missing")?;
    let mut c = FlowCount::default();
    kstats::walk(
        fd,
        std::mem::size_of::<FlowKey>(),
        std::mem::size_of::<Flow>(),
        usize::MAX,
        |_, v| {
            let f: Flow = bytemuck::pod_read_unaligned(v);
            if f.direction == FLOW_REPLY {
                c.reply += 1;
            } else {
                c.forward += 1;
            }
        },
    )
    .context("reading the flow table")?;
    Ok(c)
}

impl Snapshot {
    /// Reads everything (the caller holds the edge: a few batch syscalls).
    pub fn read(edge: &Edge) -> Result<Self> {
        let t = Instant::now();
        let counters = edge.dp.counters().context("reading the packet counters")?;
        let end = edge.rules.rules().map(|r| r.id + 1).max().unwrap_or(0);
        let hits = edge.dp.all_rule_hits(end)?;
        let rules = edge
            .rules
            .rules()
            .map(|r| (r.id, hits[r.id as usize]))
            .collect();
        let services = edge.dp.lb.traffic(edge.dp.ncpus())?;
        let flows = count_flows(edge)?;
        Ok(Snapshot {
            counters,
            rules,
            services,
            flows,
            flow_capacity: DEFAULT_FLOWS as u64,
            read_seconds: t.elapsed().as_secs_f64(),
        })
    }

    fn register(&self, reg: &mut Registry, m: &Metrics) {
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

        let svc_packets: Family<Labels, Counter> = Family::default();
        let svc_bytes: Family<Labels, Counter> = Family::default();
        let svc_flows: Family<Labels, Counter> = Family::default();
        let be_packets: Family<Labels, Counter> = Family::default();
        let be_bytes: Family<Labels, Counter> = Family::default();
        let be_flows: Family<Labels, Counter> = Family::default();
        let health: Family<Labels, Gauge> = Family::default();
        let latency: Family<Labels, FGauge> = Family::default();
        let mut backends = 0;
        let states = m.health.lock().expect("not poisoned").clone();
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

/// OpenMetrics text to the Prometheus text format 0.0.4: counter families take their
/// samples' `_total` name, and the OpenMetrics-only lines (`# UNIT`, `# EOF`) go.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((tag, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(tag);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Counts a failed kernel map update in the process's metrics.
pub fn map_update_failed(kind: MapKind) {
    global().map_update_error(kind);
}

/// Per-service and per-backend numbers and the flow table, for `xlb stats --json` and
/// `xlb top` (the same numbers as the metrics).
pub fn traffic_json(edge: &Edge) -> Result<serde_json::Value> {
    use serde_json::json;
    let services = edge.dp.lb.traffic(edge.dp.ncpus())?;
    let flows = count_flows(edge)?;
    let m = global();
    let list: Vec<serde_json::Value> = services
        .iter()
        .map(|s| {
            let backends: Vec<serde_json::Value> = s
                .backends
                .iter()
                .map(|b| {
                    json!({
                        "backend": b.backend.to_string(),
                        "packets": b.stats.packets,
                        "bytes": b.stats.bytes,
                        "new_flows": b.stats.new_flows,
                        "health": m.health_of(&Checked::Service(s.vip, b.backend)).name(),
                    })
                })
                .collect();
            json!({
                "service": s.vip.to_string(),
                "mode": s.mode,
                "packets": s.total.packets,
                "bytes": s.total.bytes,
                "new_flows": s.total.new_flows,
                "backends": backends,
            })
        })
        .collect();
    Ok(json!({
        "services": list,
        "flows": {
            "forward": flows.forward,
            "reply": flows.reply,
            "capacity": DEFAULT_FLOWS,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip() -> Vip {
        "198.51.100.10:80/tcp".parse().unwrap()
    }

    fn snap() -> Snapshot {
        use crate::balancer::stats::BackendTraffic;
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
                mode: crate::services::Mode::Nat,
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
            read_seconds: 0.001,
        }
    }

    #[test]
    fn exposition_has_every_family_and_caps_rules() {
        let m = Metrics::new();
        let text = m.render(&snap());
        for want in [
            "xlb_packets_total{verdict=\"drop\",reason=\"prefix_deny\"} 3",
            "xlb_bytes_total{verdict=\"drop\",reason=\"prefix_deny\"} 180",
            "xlb_backend_packets_total{service=\"198.51.100.10:80/tcp\",backend=\"203.0.113.11:8080\"} 7",
            "xlb_service_new_flows_total{service=\"198.51.100.10:80/tcp\"} 2",
            "xlb_backend_health_state{service=\"198.51.100.10:80/tcp\",backend=\"203.0.113.11:8080\",state=\"unchecked\"} 1",
            "xlb_flow_entries{direction=\"reply\"} 2",
            "xlb_flow_capacity 10",
            "xlb_build_info{version=",
            "xlb_map_update_errors_total{map=\"rules\"} 0",
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
        m.l7.request("web", 204, Duration::from_millis(2));
        m.l7.request("web", 503, Duration::from_millis(20));
        let conn = m.l7.connection("web");
        m.l7.handshake("web", Ok(()));
        m.l7.handshake("web", Err("no_sni"));
        m.l7.upstream_error("web", "connect");
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
