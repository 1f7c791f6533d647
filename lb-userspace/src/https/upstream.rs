//! Pools of backends: health (set from outside, and passive after connect failures),
//! balancing (least outstanding requests, or rendezvous hashing of the client address),
//! kept-alive HTTP/1.1 connections, and re-encryption (TLS to the backends, verified
//! against a configured CA and name, optionally with a client certificate).

use std::{
    hash::{Hash, Hasher},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::{ProxyBody, Stats};
use crate::{
    config::{
        https::{Balance, Limits, PoolConfig, secs},
        tls_files,
    },
    metrics::{HTTPS_SERVICE, global},
};

/// Milliseconds since the process's first call: the clock of passive health.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One backend of a pool.
pub struct Backend {
    pub addr: SocketAddr,
    /// Set by active health checks (true until told otherwise).
    up: Arc<AtomicBool>,
    /// Passive health: out until this time (ms, see `now_ms`) after connect failures.
    down_until: AtomicU64,
    fails: AtomicU32,
    /// Requests in flight (from the pick until the response body ends).
    outstanding: AtomicUsize,
    idle: Mutex<Vec<SendRequest<ProxyBody>>>,
}

impl Backend {
    fn new(addr: SocketAddr) -> Self {
        Backend {
            addr,
            up: Arc::new(AtomicBool::new(true)),
            down_until: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            outstanding: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The flag an active health checker sets: `false` takes the backend out.
    pub fn health(&self) -> Arc<AtomicBool> {
        self.up.clone()
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// Up by the health checks and not taken out passively.
    pub fn is_healthy(&self) -> bool {
        self.up.load(Ordering::Relaxed) && now_ms() >= self.down_until.load(Ordering::Relaxed)
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    fn succeeded(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
    }

    /// A connect failure: after `max_fails` in a row the backend is out for
    /// `fail_timeout`.
    fn failed(&self, max_fails: u32, fail_timeout: Duration) {
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= max_fails {
            self.fails.store(0, Ordering::Relaxed);
            self.down_until.store(
                now_ms() + fail_timeout.as_millis() as u64,
                Ordering::Relaxed,
            );
            warn!(backend = %self.addr, failures = n, seconds = fail_timeout.as_secs_f64(),
                "backend taken out after connect failures");
        }
    }

    fn checkin(&self, conn: SendRequest<ProxyBody>, max_idle: usize) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < max_idle {
            idle.push(conn);
        }
    }

    fn checkout(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if !c.is_closed() {
                return Some(c);
            }
        }
        None
    }
}

/// A request in flight on a backend: counts in its outstanding requests until dropped,
/// and gives the connection back to the pool when the response has ended.
pub struct InFlight {
    pub backend: Arc<Backend>,
    conn: Option<SendRequest<ProxyBody>>,
    max_idle: usize,
}

impl InFlight {
    fn new(backend: Arc<Backend>, max_idle: usize) -> Self {
        backend.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend,
            conn: None,
            max_idle,
        }
    }

    /// The response has been read to its end: the connection can serve another.
    pub fn done(&mut self) {
        if let Some(c) = self.conn.take() {
            self.backend.checkin(c, self.max_idle);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a backend could not be used. Every variant means nothing was sent to it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    #[error("connecting to {0}: {1}")]
    Tcp(SocketAddr, std::io::Error),
    #[error("TLS to {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("HTTP/1.1 handshake with {0}: {1}")]
    Http(SocketAddr, hyper::Error),
}

impl ConnectError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::Timeout(_))
    }
}

/// TLS towards the backends of a pool.
struct UpstreamTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl UpstreamTls {
    fn new(cfg: &PoolConfig, provider: Arc<rustls::crypto::CryptoProvider>) -> Result<Self> {
        let (config, server_name) = tls_files::upstream_client(cfg, provider)?;
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// A named set of backends and how to reach them.
pub struct Pool {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
    balance: Balance,
    tls: Option<UpstreamTls>,
    max_fails: u32,
    fail_timeout: Duration,
    connect_timeout: Duration,
    max_idle: usize,
    next: AtomicUsize,
}

impl Pool {
    /// Builds a pool (reading its CA and client certificate). Backends found in `old`
    /// (same address) are kept with their health, counters and idle connections.
    pub fn new(
        cfg: &PoolConfig,
        limits: &Limits,
        provider: Arc<rustls::crypto::CryptoProvider>,
        old: Option<&Pool>,
    ) -> Result<Self> {
        let tls = if cfg.upstream_tls {
            Some(UpstreamTls::new(cfg, provider)?)
        } else {
            None
        };
        let backends = cfg
            .backends
            .iter()
            .map(|a| match old.and_then(|o| o.backend(*a)) {
                Some(b) => {
                    // Idle TLS connections were verified under the old settings.
                    if cfg.upstream_tls || old.is_some_and(|o| o.tls.is_some()) {
                        b.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    }
                    b.clone()
                }
                None => Arc::new(Backend::new(*a)),
            })
            .collect();
        Ok(Pool {
            name: cfg.name.clone(),
            backends,
            balance: cfg.balance,
            tls,
            max_fails: cfg.max_fails,
            fail_timeout: secs(cfg.fail_timeout),
            connect_timeout: secs(limits.connect_timeout),
            max_idle: limits.max_idle_per_backend,
            next: AtomicUsize::new(0),
        })
    }

    pub fn backend(&self, addr: SocketAddr) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.addr == addr)
    }

    /// A healthy backend not in `tried`, by the pool's balancing.
    pub fn pick(&self, client: IpAddr, tried: &[usize]) -> Option<usize> {
        let candidates = self
            .backends
            .iter()
            .enumerate()
            .filter(|(i, b)| !tried.contains(i) && b.is_healthy());
        match self.balance {
            Balance::LeastOutstanding => {
                // Ties go round-robin: start the scan at a rotating index.
                let n = self.backends.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                candidates
                    .min_by_key(|(i, b)| (b.outstanding(), (i + n - start) % n))
                    .map(|(i, _)| i)
            }
            Balance::ClientAddress => candidates
                .max_by_key(|(_, b)| {
                    let mut h = std::hash::DefaultHasher::new();
                    (client, b.addr).hash(&mut h);
                    h.finish()
                })
                .map(|(i, _)| i),
        }
    }

    /// Starts a request on backend `i`: a kept-alive connection or a new one.
    pub async fn start(
        &self,
        i: usize,
        stats: &Stats,
    ) -> Result<(InFlight, SendRequest<ProxyBody>), ConnectError> {
        let b = &self.backends[i];
        let flight = InFlight::new(b.clone(), self.max_idle);
        while let Some(mut c) = b.checkout() {
            // A connection whose last response just ended becomes ready shortly.
            if c.ready().await.is_ok() {
                return Ok((flight, c));
            }
        }
        // Boxed: the connect (and TLS) state is large and rarely needed; inline it
        // would be moved with every request's future.
        let connect = Box::pin(self.connect(b.addr, stats));
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(c)) => {
                b.succeeded();
                Ok((flight, c))
            }
            Ok(Err(e)) => {
                b.failed(self.max_fails, self.fail_timeout);
                Err(e)
            }
            Err(_) => {
                b.failed(self.max_fails, self.fail_timeout);
                Err(ConnectError::Timeout(b.addr))
            }
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        stats: &Stats,
    ) -> Result<SendRequest<ProxyBody>, ConnectError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::Tcp(addr, e))?;
        let _ = tcp.set_nodelay(true);
        stats.upstream_connects.fetch_add(1, Ordering::Relaxed);
        match &self.tls {
            None => handshake(TokioIo::new(tcp), addr).await,
            Some(t) => {
                let tls = t
                    .connector
                    .connect(t.server_name.clone(), tcp)
                    .await
                    .map_err(|e| {
                        stats.upstream_tls_failures.fetch_add(1, Ordering::Relaxed);
                        global()
                            .https
                            .upstream_error(HTTPS_SERVICE, "tls_verification");
                        warn!(pool = %self.name, backend = %addr, error = %e,
                            total = stats.upstream_tls_failures.load(Ordering::Relaxed),
                            "upstream TLS handshake failed (not falling back to plaintext)");
                        ConnectError::Tls(addr, e)
                    })?;
                handshake(TokioIo::new(tls), addr).await
            }
        }
    }

    pub fn give_back(&self, flight: &mut InFlight, conn: SendRequest<ProxyBody>) {
        flight.conn = Some(conn);
    }
}

async fn handshake<T>(io: T, addr: SocketAddr) -> Result<SendRequest<ProxyBody>, ConnectError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ConnectError::Http(addr, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(backend = %addr, error = %e, "upstream connection ended");
        }
    });
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance, n: usize) -> Pool {
        let cfg = PoolConfig {
            name: "p".into(),
            backends: (0..n)
                .map(|i| format!("203.0.113.{}:80", 11 + i).parse().unwrap())
                .collect(),
            balance,
            upstream_tls: false,
            ca: None,
            server_name: None,
            client_cert: None,
            max_fails: 2,
            fail_timeout: 60.0,
            health: None,
        };
        Pool::new(
            &cfg,
            &Limits::default(),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            None,
        )
        .unwrap()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn least_outstanding_spreads_and_prefers_idle_backends() {
        let p = pool(Balance::LeastOutstanding, 3);
        let mut held = Vec::new();
        for _ in 0..3 {
            let i = p.pick(CLIENT, &[]).unwrap();
            held.push(InFlight::new(p.backends[i].clone(), 1));
        }
        let mut seen: Vec<_> = held.iter().map(|f| f.backend.addr).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "three requests went to three backends");
        let busy = held.remove(0).backend.addr;
        // Now the backend whose request ended has the fewest.
        assert_eq!(p.backends[p.pick(CLIENT, &[]).unwrap()].addr, busy);
    }

    #[test]
    fn health_from_outside_and_passive_failures_take_backends_out() {
        let p = pool(Balance::LeastOutstanding, 3);
        p.backends[0].set_up(false);
        for _ in 0..20 {
            assert_ne!(p.pick(CLIENT, &[]), Some(0));
        }
        p.backends[1].failed(2, Duration::from_secs(60));
        assert!(p.backends[1].is_healthy(), "one failure of two allowed");
        p.backends[1].failed(2, Duration::from_secs(60));
        assert!(!p.backends[1].is_healthy());
        assert_eq!(p.pick(CLIENT, &[]), Some(2));
        assert_eq!(p.pick(CLIENT, &[2]), None, "nothing else is healthy");
        p.backends[0].health().store(true, Ordering::Relaxed);
        assert_eq!(p.pick(CLIENT, &[2]), Some(0));
    }

    #[test]
    fn client_address_is_sticky_and_moves_only_when_its_backend_goes() {
        let p = pool(Balance::ClientAddress, 4);
        let clients: Vec<IpAddr> = (1..=200)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, i)))
            .collect();
        let before: Vec<usize> = clients.iter().map(|c| p.pick(*c, &[]).unwrap()).collect();
        for (c, b) in clients.iter().zip(&before) {
            assert_eq!(p.pick(*c, &[]).unwrap(), *b, "sticky");
        }
        let mut per = [0usize; 4];
        before.iter().for_each(|b| per[*b] += 1);
        assert!(per.iter().all(|n| *n > 20), "spread: {per:?}");
        p.backends[1].set_up(false);
        for (c, b) in clients.iter().zip(&before) {
            let now = p.pick(*c, &[]).unwrap();
            if *b != 1 {
                assert_eq!(now, *b, "clients of healthy backends stay");
            } else {
                assert_ne!(now, 1);
            }
        }
    }
}
