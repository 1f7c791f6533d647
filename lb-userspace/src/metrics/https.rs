//! The https service's metrics: requests by status class, latency, open connections,
//! TLS handshakes and upstream errors. The proxy keeps an [`HttpsRequests`] per service
//! so that its request path looks no series up.

use std::{sync::OnceLock, time::Duration};

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::Labels;

/// The `service` label of the https service's metrics (one per daemon).
pub const HTTPS_SERVICE: &str = "https";

/// The https service's metric families (named `xlb_l7_*` and `xlb_tls_*`), registered
/// in the daemon's registry.
/// Cloning shares the families. `service` is the proxy's service name; `reason` and
/// `kind` must come from small fixed sets (they are label values).
#[derive(Clone)]
pub struct HttpsMetrics {
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
pub struct HttpsRequests {
    metrics: HttpsMetrics,
    service: String,
    classes: [OnceLock<Counter>; STATUS_CLASSES.len()],
    duration: OnceLock<Histogram>,
}

impl HttpsRequests {
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

impl HttpsMetrics {
    pub(super) fn new(reg: &mut Registry) -> Self {
        let m = HttpsMetrics {
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
            m.requests.clone(),
        );
        reg.register(
            "l7_request_duration_seconds",
            "Layer-7 request latency (request received to response sent), by service",
            m.duration.clone(),
        );
        reg.register(
            "l7_active_connections",
            "Open client connections of the layer-7 proxy, by service",
            m.active.clone(),
        );
        reg.register(
            "tls_handshakes",
            "TLS handshakes completed, by service",
            m.handshakes.clone(),
        );
        reg.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by service and reason",
            m.handshake_failures.clone(),
        );
        reg.register(
            "l7_upstream_errors",
            "Errors talking to backends (connect, timeout, reset, ...), by service and kind",
            m.upstream_errors.clone(),
        );
        m
    }

    /// One answered request (looks its series up; a hot path keeps an
    /// [`HttpsRequests`] instead).
    pub fn request(&self, service: &str, status: u16, latency: Duration) {
        self.requests_of(service).request(status, latency);
    }

    /// The request series of `service`, each looked up once on first use.
    pub fn requests_of(&self, service: &str) -> HttpsRequests {
        HttpsRequests {
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
