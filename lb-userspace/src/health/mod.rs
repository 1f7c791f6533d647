//! Health checks. Each checked backend has its own task that probes it every `interval`
//! (a TCP connect, an HTTP or HTTPS GET answered with the expected status, or a TLS
//! handshake), each probe bounded by `timeout`. Outcomes go to the daemon over a channel:
//! probes never hold the daemon's lock, so the control API never waits for one.
//!
//! Up and down follow HAProxy: a backend starts up, goes down after `fall` failed checks
//! in a row (or at its first check, if that fails), and comes back after `rise` good
//! checks in a row. A down backend gets weight 0 (see `weights`): no new flows.
//!
//! HTTPS and TLS checks do not verify the backend's certificate (backends commonly have
//! self-signed ones); they check that the backend completes a handshake and answers.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    hash::Hash,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

pub mod probe;

use tokio::{sync::mpsc, task::JoinHandle};

use probe::tls_config;
pub use probe::{AnyCertificate, probe};

use crate::{
    api::reply::HealthReport,
    model::{
        health_check::HealthCheck,
        services::{BackendAddr, Vip},
    },
};

/// What a checked backend belongs to (a layer-4 service's `Vip`, a TLS pool's name):
/// with the backend, the key of its check.
pub trait Owner: Clone + Debug + Eq + Hash + Send + Sync + 'static {}
impl<T: Clone + Debug + Eq + Hash + Send + Sync + 'static> Owner for T {}

/// One backend of a service (or pool) with its owner's check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target<K = Vip> {
    pub owner: K,
    pub backend: BackendAddr,
    pub check: HealthCheck,
}

impl<K> Target<K> {
    /// Where the probe goes: the backend's address, the check's port or the backend's.
    pub fn addr(&self) -> Option<SocketAddr> {
        let port = self.check.port.or(self.backend.port)?;
        Some(SocketAddr::new(self.backend.addr, port))
    }
}

/// One probe's result, from the target's task of generation `generation`.
#[derive(Debug)]
pub struct Outcome<K = Vip> {
    pub owner: K,
    pub backend: BackendAddr,
    pub generation: u64,
    pub at: SystemTime,
    /// How long the probe took.
    pub latency: Duration,
    /// What was seen ("HTTP 200"), or what went wrong.
    pub result: Result<String, String>,
}

/// A checked backend's health.
#[derive(Clone, Debug)]
pub struct State {
    /// The generation of the task whose outcomes count.
    pub generation: u64,
    pub up: bool,
    /// HAProxy's counter: up while >= rise, from 0 to rise + fall - 1.
    health: u32,
    rise: u32,
    fall: u32,
    pub checks: u64,
    pub last: Option<(SystemTime, Result<String, String>)>,
    /// When it last went up or down (or started being checked).
    pub since: SystemTime,
}

impl State {
    pub fn new(generation: u64, check: &HealthCheck) -> State {
        State {
            generation,
            up: true,
            health: check.rise,
            rise: check.rise,
            fall: check.fall,
            checks: 0,
            last: None,
            since: SystemTime::now(),
        }
    }

    /// Records a probe's result; true when the backend went up or down.
    pub fn record(&mut self, result: Result<String, String>, at: SystemTime) -> bool {
        let ok = result.is_ok();
        self.checks += 1;
        self.last = Some((at, result));
        let max = self.rise + self.fall - 1;
        let was = self.up;
        match (self.up, ok) {
            (true, true) => self.health = max,
            (true, false) => {
                self.health = self.health.saturating_sub(1);
                if self.health < self.rise {
                    self.up = false;
                    self.health = 0;
                }
            }
            (false, true) => {
                self.health += 1;
                if self.health >= self.rise {
                    self.up = true;
                    self.health = max;
                }
            }
            (false, false) => self.health = 0,
        }
        if was != self.up {
            self.since = at;
        }
        was != self.up
    }

    /// What the last check saw, or why it failed ("" before the first).
    pub fn last_text(&self) -> &str {
        match &self.last {
            Some((_, Ok(s) | Err(s))) => s,
            None => "",
        }
    }

    /// The state as `xlb status` and `xlb backend list` show it.
    pub fn report(&self) -> HealthReport {
        let (at, last) = match &self.last {
            Some((t, r)) => (Some(unix(*t)), Some(r.clone().unwrap_or_else(|e| e))),
            None => (None, None),
        };
        HealthReport {
            up: self.up,
            checks: self.checks,
            since_unix: unix(self.since),
            last_unix: at,
            last,
            last_ok: self.last.as_ref().map(|(_, r)| r.is_ok()),
        }
    }
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Task<K> {
    target: Target<K>,
    generation: u64,
    handle: JoinHandle<()>,
}

/// The health of checked backends, keyed like the checker's tasks.
pub type States<K> = BTreeMap<(K, BackendAddr), State>;

/// Sets which backends are checked (`checked`, from [`Checker::reconcile`]): states of
/// checks still running under the same generation stay, new or restarted checks start
/// up. Returns the backends no longer checked.
pub fn carry_over<K: Owner + Ord>(
    states: &mut States<K>,
    checked: &HashMap<(K, BackendAddr), (u64, HealthCheck)>,
) -> Vec<(K, BackendAddr)> {
    let old = std::mem::take(states);
    for (k, (generation, check)) in checked {
        let state = match old.get(k) {
            Some(s) if s.generation == *generation => s.clone(),
            _ => State::new(*generation, check),
        };
        states.insert(k.clone(), state);
    }
    old.into_keys()
        .filter(|k| !checked.contains_key(k))
        .collect()
}

/// The state `o` is about, if `o` comes from its current check (an outcome of a
/// stopped or restarted check is stale).
pub fn current<'a, K: Owner + Ord>(
    states: &'a mut States<K>,
    o: &Outcome<K>,
) -> Option<&'a mut State> {
    states
        .get_mut(&(o.owner.clone(), o.backend))
        .filter(|s| s.generation == o.generation)
}

/// The running checks: one task per target, keyed by (owner, backend).
pub struct Checker<K: Owner = Vip> {
    rt: tokio::runtime::Handle,
    tx: mpsc::UnboundedSender<Outcome<K>>,
    tasks: HashMap<(K, BackendAddr), Task<K>>,
    next_generation: u64,
    tls: Arc<rustls::ClientConfig>,
}

impl<K: Owner> Checker<K> {
    /// A checker whose tasks run on `rt`, and the receiving end of their outcomes.
    pub fn new(rt: tokio::runtime::Handle) -> (Checker<K>, mpsc::UnboundedReceiver<Outcome<K>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let checker = Checker {
            rt,
            tx,
            tasks: HashMap::new(),
            next_generation: 1,
            tls: tls_config(),
        };
        (checker, rx)
    }

    /// Runs exactly `targets`: starts the new ones, restarts the changed ones, stops the
    /// others. Returns the generation each target's outcomes carry, and its check.
    pub fn reconcile(
        &mut self,
        targets: Vec<Target<K>>,
    ) -> HashMap<(K, BackendAddr), (u64, HealthCheck)> {
        let want: HashMap<(K, BackendAddr), Target<K>> = targets
            .into_iter()
            .map(|t| ((t.owner.clone(), t.backend), t))
            .collect();
        self.tasks.retain(|k, task| {
            let keep = want.get(k) == Some(&task.target);
            if !keep {
                task.handle.abort();
            }
            keep
        });
        for (k, t) in want {
            if self.tasks.contains_key(&k) {
                continue;
            }
            let generation = self.next_generation;
            self.next_generation += 1;
            let handle = self.rt.spawn(run(
                t.clone(),
                generation,
                self.tls.clone(),
                self.tx.clone(),
            ));
            self.tasks.insert(
                k,
                Task {
                    target: t,
                    generation,
                    handle,
                },
            );
        }
        self.tasks
            .iter()
            .map(|(k, t)| (k.clone(), (t.generation, t.target.check.clone())))
            .collect()
    }
}

impl<K: Owner> Drop for Checker<K> {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.handle.abort();
        }
    }
}

async fn run<K: Owner>(
    t: Target<K>,
    generation: u64,
    tls: Arc<rustls::ClientConfig>,
    tx: mpsc::UnboundedSender<Outcome<K>>,
) {
    let mut tick = tokio::time::interval(t.check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let start = std::time::Instant::now();
        let result = probe(&t, &tls).await;
        let out = Outcome {
            owner: t.owner.clone(),
            backend: t.backend,
            generation,
            at: SystemTime::now(),
            latency: start.elapsed(),
            result,
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::health_check::CheckKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn check(kind: CheckKind, rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            kind,
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
            rise,
            fall,
            port: None,
            path: "/health".into(),
            expect_status: 200,
        }
    }

    #[test]
    fn rise_and_fall_follow_haproxy() {
        let now = SystemTime::now();
        let mut s = State::new(1, &check(CheckKind::Tcp, 2, 3));
        let ok = || Ok("ok".to_string());
        let bad = || Err("bad".to_string());
        assert!(s.up);
        assert!(!s.record(ok(), now));
        // fall = 3 failures in a row; a success in between starts over.
        assert!(!s.record(bad(), now));
        assert!(!s.record(bad(), now));
        assert!(!s.record(ok(), now));
        assert!(!s.record(bad(), now));
        assert!(!s.record(bad(), now));
        assert!(s.record(bad(), now));
        assert!(!s.up);
        // rise = 2 successes in a row.
        assert!(!s.record(ok(), now));
        assert!(!s.record(bad(), now));
        assert!(!s.record(ok(), now));
        assert!(s.record(ok(), now));
        assert!(s.up);
        // A failed first check takes a new backend down at once.
        let mut s = State::new(2, &check(CheckKind::Tcp, 2, 3));
        assert!(s.record(bad(), now));
        assert_eq!(s.checks, 1);
    }

    fn target(kind: CheckKind, addr: SocketAddr) -> Target {
        Target {
            owner: "192.0.2.10:80/tcp".parse().unwrap(),
            backend: BackendAddr {
                addr: addr.ip(),
                port: Some(addr.port()),
            },
            check: check(kind, 1, 1),
        }
    }

    /// A server on 127.0.0.1 answering each connection with `status` (over TLS when
    /// `tls`), and what it received.
    async fn server(status: u16, tls: bool) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acceptor = tls.then(|| {
            let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let key =
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                    let mut buf = [0u8; 1024];
                    match acceptor {
                        Some(a) => {
                            let Ok(mut s) = a.accept(s).await else { return };
                            let _ = s.read(&mut buf).await;
                            let _ = s.write_all(answer.as_bytes()).await;
                            let _ = s.shutdown().await;
                        }
                        None => {
                            let mut s = s;
                            let _ = s.read(&mut buf).await;
                            let _ = s.write_all(answer.as_bytes()).await;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn probes_of_every_kind() {
        let tls = tls_config();
        let plain = server(200, false).await;
        let secure = server(200, true).await;
        let wrong = server(503, false).await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let p = |kind, addr| {
            let t = target(kind, addr);
            let tls = tls.clone();
            async move { probe(&t, &tls).await }
        };
        assert_eq!(p(CheckKind::Tcp, plain).await, Ok("connected".into()));
        assert!(
            p(CheckKind::Tcp, closed)
                .await
                .unwrap_err()
                .contains("refused")
        );
        assert_eq!(p(CheckKind::Http, plain).await, Ok("HTTP 200".into()));
        assert_eq!(
            p(CheckKind::Http, wrong).await,
            Err("HTTP 503, expected 200".into())
        );
        assert_eq!(p(CheckKind::Https, secure).await, Ok("HTTP 200".into()));
        assert_eq!(
            p(CheckKind::Tls, secure).await,
            Ok("TLS handshake done".into())
        );
        assert!(
            p(CheckKind::Tls, plain)
                .await
                .unwrap_err()
                .contains("TLS handshake")
        );
    }
}
