//! The https service's own counters (`xlb status`), beside its Prometheus families.

use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;

use crate::api::reply::HttpsStats;

/// Counters of the https service.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub handshakes: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub requests: AtomicU64,
    pub status_2xx: AtomicU64,
    pub status_3xx: AtomicU64,
    pub status_4xx: AtomicU64,
    pub status_5xx: AtomicU64,
    pub status_502: AtomicU64,
    pub status_503: AtomicU64,
    pub status_504: AtomicU64,
    pub retries: AtomicU64,
    pub upstream_connects: AtomicU64,
    pub upstream_tls_failures: AtomicU64,
    pub cert_reloads: AtomicU64,
    pub cert_reload_failures: AtomicU64,
    pub config_reloads: AtomicU64,
    pub config_reload_failures: AtomicU64,
}

impl Stats {
    pub(super) fn count_status(&self, s: StatusCode) {
        let c = match s.as_u16() {
            200..=299 => &self.status_2xx,
            300..=399 => &self.status_3xx,
            400..=499 => &self.status_4xx,
            _ => &self.status_5xx,
        };
        c.fetch_add(1, Ordering::Relaxed);
        match s.as_u16() {
            502 => &self.status_502,
            503 => &self.status_503,
            504 => &self.status_504,
            _ => return,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as `xlb status` shows them.
    pub fn report(&self) -> HttpsStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HttpsStats {
            connections: g(&self.connections),
            handshakes: g(&self.handshakes),
            handshake_failures: g(&self.handshake_failures),
            handshake_timeouts: g(&self.handshake_timeouts),
            idle_timeouts: g(&self.idle_timeouts),
            requests: g(&self.requests),
            status_2xx: g(&self.status_2xx),
            status_3xx: g(&self.status_3xx),
            status_4xx: g(&self.status_4xx),
            status_5xx: g(&self.status_5xx),
            status_502: g(&self.status_502),
            status_503: g(&self.status_503),
            status_504: g(&self.status_504),
            retries: g(&self.retries),
            upstream_connects: g(&self.upstream_connects),
            upstream_tls_failures: g(&self.upstream_tls_failures),
            cert_reloads: g(&self.cert_reloads),
            cert_reload_failures: g(&self.cert_reload_failures),
            config_reloads: g(&self.config_reloads),
            config_reload_failures: g(&self.config_reload_failures),
        }
    }
}
