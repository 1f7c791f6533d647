//! The https service: TLS termination and an HTTP reverse proxy (configured by
//! `[tls]`, see `config::https`).
//!
//! An https service is not a layer-4 service in the kernel maps: the XDP program
//! filters its packets and passes them to the local stack, where this listener ends
//! TLS (rustls: TLS 1.2 and 1.3, its safe defaults; ALPN h2 and http/1.1) and proxies
//! HTTP (hyper) to the healthy backends of the pool a route picks.
//!
//! - `listener`: accepting, handshakes, connections, idle limits, redirects;
//! - `certs`: the SNI resolver over the loaded certificates, reload detection;
//! - `proxy`: routing, forwarding, headers, limits, retries, error responses;
//! - `upstream`: pools, health, balancing, backend connections, re-encryption;
//! - `checks`: the pools' active health checks (the layer-4 services' checker);
//! - `stats`: the counters `xlb status` shows; `standalone`: `xlb proxy`.
//!
//! [`HttpsProxy`] holds one configuration's state; [`HttpsProxy::reload`] replaces it
//! whole or not at all, without touching open connections.

pub mod access;
pub mod certs;
pub mod checks;
pub mod listener;
pub mod proxy;
pub mod standalone;
pub mod stats;
pub mod upstream;

use std::{
    future::Future,
    sync::{Arc, Mutex, RwLock, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use rustls::{ServerConfig, crypto::CryptoProvider};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tracing::{error, info};

pub use standalone::run_proxy;
pub use stats::Stats;

use crate::{
    api::reply::{HttpsStats, PoolView},
    config::{
        https::{HttpsConfig, secs},
        tls_files::CertStore,
    },
    health::Outcome,
    metrics::{HTTPS_SERVICE, HttpsRequests, global},
};

use access::AccessLog;
use certs::{SniResolver, fingerprint};
use checks::PoolChecks;
use proxy::Site;
use upstream::Pool;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends or forwards.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// One https service: its configuration, certificates, routes and pools.
pub struct HttpsProxy {
    config: Mutex<HttpsConfig>,
    provider: Arc<CryptoProvider>,
    resolver: Arc<SniResolver>,
    tls: Arc<ServerConfig>,
    site: RwLock<Arc<Site>>,
    /// The pools' active health checks, while the proxy serves.
    checks: Mutex<Option<PoolChecks>>,
    pub stats: Arc<Stats>,
    /// The requests' series in the daemon's metrics.
    requests: HttpsRequests,
    /// The access log, while the proxy serves with one configured.
    access: RwLock<Option<Arc<AccessLog>>>,
    /// Whether `serve` runs (the access log is opened by it, not by a check).
    serving: std::sync::atomic::AtomicBool,
}

fn server_config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<SniResolver>,
) -> Result<ServerConfig> {
    let mut c = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's cipher suite order (rustls' own, strongest first), not the client's.
    c.ignore_client_order = true;
    Ok(c)
}

impl HttpsProxy {
    /// Validates the configuration and loads everything it names (certificates, CA
    /// files); binds nothing (see [`HttpsProxy::serve`]).
    pub fn new(cfg: HttpsConfig) -> Result<Arc<Self>> {
        cfg.validate()?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let store = CertStore::load(&cfg, &provider)?;
        let site = Site::new(&cfg, provider.clone(), None)?;
        let resolver = Arc::new(SniResolver::new(store));
        let tls = Arc::new(server_config(provider.clone(), resolver.clone())?);
        Ok(Arc::new(HttpsProxy {
            config: Mutex::new(cfg),
            provider,
            resolver,
            tls,
            site: RwLock::new(Arc::new(site)),
            checks: Mutex::new(None),
            stats: Arc::new(Stats::default()),
            requests: global().https.requests_of(HTTPS_SERVICE),
            access: RwLock::new(None),
            serving: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The access log in use, if any.
    fn access_log(&self) -> Option<Arc<AccessLog>> {
        self.access
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Opens the access log `cfg` asks for (none: closes it), while serving.
    fn open_access_log(&self, cfg: &HttpsConfig) -> Result<()> {
        let log = match &cfg.access_log {
            Some(a) if self.serving.load(Ordering::Relaxed) => Some(AccessLog::start(a)?),
            _ => None,
        };
        *self.access.write().unwrap_or_else(|e| e.into_inner()) = log;
        Ok(())
    }

    /// Reopens the access log file (SIGUSR1, after an external rotation moved it).
    pub fn reopen_logs(&self) {
        if let Some(log) = self.access_log() {
            log.reopen();
        }
    }

    fn site(&self) -> Arc<Site> {
        self.site.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn config(&self) -> HttpsConfig {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The pools in use (for health checks: `pool.backends[i].set_up(false)`).
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = self.site().router.pools.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Replaces the whole configuration, or nothing: the new one is validated and
    /// everything it names is loaded before anything changes. Open connections keep
    /// going; new requests use the new routes and pools, new handshakes the new
    /// certificates. Listeners and `max_connections` change only at a restart.
    pub fn reload(&self, cfg: HttpsConfig) -> Result<()> {
        let r = self.try_reload(cfg);
        match &r {
            Ok(()) => {
                self.stats.config_reloads.fetch_add(1, Ordering::Relaxed);
                info!("https configuration reloaded");
            }
            Err(e) => {
                self.stats
                    .config_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                error!("https configuration refused, the running one stays: {e:#}");
            }
        }
        r
    }

    fn try_reload(&self, cfg: HttpsConfig) -> Result<()> {
        cfg.validate()?;
        let old = self.config();
        if cfg.listen != old.listen || cfg.redirect_listen != old.redirect_listen {
            bail!("listen and redirect_listen change only at a restart");
        }
        if cfg.limits.max_connections != old.limits.max_connections {
            bail!("limits.max_connections changes only at a restart");
        }
        let store = CertStore::load(&cfg, &self.provider)?;
        let site = Site::new(&cfg, self.provider.clone(), Some(&self.site()))?;
        if cfg.access_log != old.access_log {
            self.open_access_log(&cfg)?;
        }
        self.resolver.replace(store);
        *self.site.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(site);
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = cfg;
        self.reconcile_checks();
        Ok(())
    }

    fn checks(&self) -> std::sync::MutexGuard<'_, Option<PoolChecks>> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the health checks the pools in use ask for (when the proxy serves).
    fn reconcile_checks(&self) {
        let (cfg, pools) = (self.config(), self.pools());
        if let Some(c) = self.checks().as_mut() {
            c.reconcile(&cfg, &pools);
        }
    }

    /// Applies the checks' outcomes to the pools in use, until the checks stop.
    async fn apply_outcomes(
        self: Arc<Self>,
        mut outcomes: mpsc::UnboundedReceiver<Outcome<String>>,
    ) {
        while let Some(o) = outcomes.recv().await {
            let pools = self.pools();
            if let Some(c) = self.checks().as_mut() {
                c.outcome(o, &pools);
            }
        }
    }

    /// The pools and their backends' health, for `xlb status`.
    pub fn pools_report(&self) -> Vec<PoolView> {
        let (cfg, pools) = (self.config(), self.pools());
        checks::pools_report(self.checks().as_ref(), &cfg, &pools)
    }

    /// Reloads the certificate files of the current configuration (all or none).
    pub fn reload_certs(&self) -> Result<()> {
        match CertStore::load(&self.config(), &self.provider) {
            Ok(store) => {
                self.resolver.replace(store);
                self.stats.cert_reloads.fetch_add(1, Ordering::Relaxed);
                info!("certificates reloaded");
                Ok(())
            }
            Err(e) => {
                self.stats
                    .cert_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                error!("certificates not reloaded, the ones in use stay: {e:#}");
                Err(e)
            }
        }
    }

    pub fn stats_report(&self) -> HttpsStats {
        self.stats.report()
    }

    /// Binds the listeners, then serves until `shutdown` completes. Certificate files
    /// are checked for changes every `cert_check_interval` seconds.
    pub async fn serve(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> Result<()> {
        let cfg = self.config();
        self.serving.store(true, Ordering::Relaxed);
        self.open_access_log(&cfg)
            .context("the https service's access log")?;
        let mut tasks = JoinSet::new();
        let conns = Arc::new(Semaphore::new(cfg.limits.max_connections));
        for addr in &cfg.listen {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the https listener {addr}"))?;
            info!(%addr, "https listener up");
            tasks.spawn(self.clone().accept_loop(l, conns.clone()));
        }
        let https_port = cfg.listen[0].port();
        for addr in &cfg.redirect_listen {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the redirect listener {addr}"))?;
            info!(%addr, "http redirect listener up");
            tasks.spawn(self.clone().redirect_loop(l, https_port, conns.clone()));
        }
        if cfg.cert_check_interval > 0.0 {
            tasks.spawn(self.clone().watch_certs(secs(cfg.cert_check_interval)));
        }
        let (checks, outcomes) = PoolChecks::new(tokio::runtime::Handle::current());
        *self.checks() = Some(checks);
        self.reconcile_checks();
        tasks.spawn(self.clone().apply_outcomes(outcomes));
        shutdown.await;
        info!("https listeners stopping");
        tasks.shutdown().await;
        // Dropping the checker stops its probes.
        *self.checks() = None;
        Ok(())
    }

    async fn watch_certs(self: Arc<Self>, every: Duration) {
        let mut last = fingerprint(&self.config().cert_files());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let files = self.config().cert_files();
            let now = tokio::task::spawn_blocking(move || fingerprint(&files))
                .await
                .unwrap_or_default();
            if now != last {
                last = now;
                let _ = self.reload_certs();
            }
        }
    }
}
