//! TLS termination for layer-7 (https) services: the listener.
//!
//! An https service is not a layer-4 service in the kernel maps: the XDP program
//! filters its packets and passes them to the local stack, where this listener ends
//! TLS (rustls: TLS 1.2 and 1.3, its safe defaults; ALPN h2 and http/1.1) and proxies
//! HTTP (hyper) to the healthy backends of the pool a route picks.
//!
//! - `config`: [`HttpsConfig`], the serde configuration, and its validation;
//! - `certs`: loading and checking certificates, the SNI resolver, reload detection;
//! - `proxy`: routing, forwarding, headers, limits, retries, error responses;
//! - `upstream`: pools, health, balancing, backend connections, re-encryption;
//! - `checks`: the pools' active health checks (the layer-4 services' checker).
//!
//! [`HttpsProxy`] holds one configuration's state; [`HttpsProxy::reload`] replaces it
//! whole or not at all, without touching open connections.

pub mod certs;
pub mod checks;
pub mod config;
pub mod proxy;
pub mod upstream;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{ServerConfig, crypto::CryptoProvider};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

pub use config::HttpsConfig;

use crate::{health::Outcome, metrics::L7Requests};

use certs::{CertStore, SniResolver, fingerprint};
use checks::PoolChecks;
use proxy::Site;
use upstream::Pool;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends or forwards.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

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

/// The `service` label of the https service's layer-7 metrics (one per daemon).
pub const METRICS_SERVICE: &str = "https";

impl Stats {
    fn count_status(&self, s: StatusCode) {
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

    pub fn to_json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "connections": g(&self.connections),
            "handshakes": g(&self.handshakes),
            "handshake_failures": g(&self.handshake_failures),
            "handshake_timeouts": g(&self.handshake_timeouts),
            "idle_timeouts": g(&self.idle_timeouts),
            "requests": g(&self.requests),
            "status_2xx": g(&self.status_2xx),
            "status_3xx": g(&self.status_3xx),
            "status_4xx": g(&self.status_4xx),
            "status_5xx": g(&self.status_5xx),
            "status_502": g(&self.status_502),
            "status_503": g(&self.status_503),
            "status_504": g(&self.status_504),
            "retries": g(&self.retries),
            "upstream_connects": g(&self.upstream_connects),
            "upstream_tls_failures": g(&self.upstream_tls_failures),
            "cert_reloads": g(&self.cert_reloads),
            "cert_reload_failures": g(&self.cert_reload_failures),
            "config_reloads": g(&self.config_reloads),
            "config_reload_failures": g(&self.config_reload_failures),
        })
    }
}

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
    requests: L7Requests,
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
            requests: crate::metrics::global().l7.requests_of(METRICS_SERVICE),
        }))
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
    pub fn pools_json(&self) -> Value {
        let (cfg, pools) = (self.config(), self.pools());
        checks::pools_json(self.checks().as_ref(), &cfg, &pools)
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

    pub fn stats_json(&self) -> Value {
        self.stats.to_json()
    }

    /// Binds the listeners, then serves until `shutdown` completes. Certificate files
    /// are checked for changes every `cert_check_interval` seconds.
    pub async fn serve(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> Result<()> {
        let cfg = self.config();
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
            tasks.spawn(
                self.clone()
                    .watch_certs(config::secs(cfg.cert_check_interval)),
            );
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

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, conns: Arc<Semaphore>) {
        let acceptor = TlsAcceptor::from(self.tls.clone());
        loop {
            let Ok(permit) = conns.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let me = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                me.connection(acceptor, tcp, peer).await;
                drop(permit);
            });
        }
    }

    async fn connection(self: Arc<Self>, acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let l7 = &crate::metrics::global().l7;
        let _active = l7.connection(METRICS_SERVICE);
        let limits = self.site().limits.clone();
        let header_timeout = config::secs(limits.header_read_timeout);
        let activity = Arc::new(AtomicU64::new(now_ms()));
        let io = Active {
            inner: tcp,
            last: activity.clone(),
        };
        let tls = match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.stats
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                l7.handshake(METRICS_SERVICE, Err("error"));
                debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.stats
                    .handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                l7.handshake(METRICS_SERVICE, Err("timeout"));
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        l7.handshake(METRICS_SERVICE, Ok(()));
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let me = self.clone();
        let client = Arc::new(proxy::Client::new(peer));
        let service = service_fn(move |req| {
            let (me, client) = (me.clone(), client.clone());
            async move {
                let started = std::time::Instant::now();
                let resp = proxy::handle(me.site(), &me.stats, req, &client).await;
                me.requests
                    .request(resp.status().as_u16(), started.elapsed());
                Ok::<_, Infallible>(resp)
            }
        });
        let io = TokioIo::new(tls);
        let serve: Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>> = if h2 {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32);
            Box::pin(b.serve_connection(io, service))
        } else {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_header_size(limits.max_header_bytes);
            Box::pin(b.serve_connection(io, service))
        };
        tokio::select! {
            r = serve => if let Err(e) = r {
                debug!(%peer, error = %e, "connection ended with an error");
            },
            _ = idle(activity, config::secs(limits.idle_timeout)) => {
                self.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "idle connection closed");
            }
        }
    }

    async fn redirect_loop(
        self: Arc<Self>,
        listener: TcpListener,
        https_port: u16,
        conns: Arc<Semaphore>,
    ) {
        loop {
            let Ok(permit) = conns.clone().acquire_owned().await else {
                return;
            };
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let limits = self.site().limits.clone();
            tokio::spawn(async move {
                let activity = Arc::new(AtomicU64::new(now_ms()));
                let io = TokioIo::new(Active {
                    inner: tcp,
                    last: activity.clone(),
                });
                let service = service_fn(move |req| async move {
                    Ok::<_, Infallible>(proxy::redirect(&req, https_port))
                });
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(config::secs(limits.header_read_timeout))
                    .max_header_size(limits.max_header_bytes);
                tokio::select! {
                    r = b.serve_connection(io, service) => if let Err(e) = r {
                        debug!(%peer, error = %e, "redirect connection ended with an error");
                    },
                    _ = idle(activity, config::secs(limits.idle_timeout)) => {}
                }
                drop(permit);
            });
        }
    }
}

/// Milliseconds since the first call (a connection's activity clock).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Completes once `last` is `limit` in the past.
async fn idle(last: Arc<AtomicU64>, limit: Duration) {
    let limit_ms = limit.as_millis() as u64;
    loop {
        let due = last.load(Ordering::Relaxed) + limit_ms;
        let now = now_ms();
        if now >= due {
            return;
        }
        tokio::time::sleep(Duration::from_millis(due - now)).await;
    }
}

/// A TCP stream that notes the time of its last read or write.
struct Active {
    inner: TcpStream,
    last: Arc<AtomicU64>,
}

impl Active {
    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }
}

impl AsyncRead for Active {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Active {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `xlb proxy --config FILE`: runs the https service of FILE until SIGINT or SIGTERM;
/// SIGHUP re-reads FILE (applied whole, or refused with the running one kept).
pub async fn run_proxy(path: PathBuf) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let cfg = HttpsConfig::load(&path)?;
    let proxy = HttpsProxy::new(cfg)?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let reloader = proxy.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!(file = %path.display(), "SIGHUP: reloading the configuration");
            match HttpsConfig::load(&path) {
                Ok(cfg) => {
                    let _ = reloader.reload(cfg);
                }
                Err(e) => {
                    reloader
                        .stats
                        .config_reload_failures
                        .fetch_add(1, Ordering::Relaxed);
                    error!("https configuration refused, the running one stays: {e:#}");
                }
            }
        }
    });
    let stats = proxy.stats.clone();
    proxy
        .serve(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
        .await?;
    info!(stats = %stats.to_json(), "stopped");
    Ok(())
}
