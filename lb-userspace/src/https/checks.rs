//! Active health checks of the pools: the layer-4 services' checker (`crate::health`:
//! the same probes, the same rise and fall), keyed by (pool name, backend). A check's
//! verdict reaches the proxy through `Backend::set_up`; passive failures (`max_fails`)
//! still take a backend out for a while on top of it, but never bring back one the
//! check holds down.
//!
//! They run while the proxy serves (`HttpsProxy::serve`), so `xlb run` and `xlb proxy`
//! both run them; `HttpsProxy::reload` re-reconciles them with the new pools.

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::upstream::Pool;
use crate::{
    api::reply::{BackendState, PoolBackendView, PoolView},
    config::https::HttpsConfig,
    health::{self, Checker, Outcome, States, Target},
    metrics::Checked,
    model::services::BackendAddr,
};

pub struct PoolChecks {
    checker: Checker<String>,
    states: States<String>,
}

impl PoolChecks {
    /// No checks yet (see `reconcile`); their outcomes come out of the receiver.
    pub fn new(rt: tokio::runtime::Handle) -> (Self, mpsc::UnboundedReceiver<Outcome<String>>) {
        let (checker, rx) = Checker::new(rt);
        let checks = PoolChecks {
            checker,
            states: States::new(),
        };
        (checks, rx)
    }

    /// Checks exactly the backends of `cfg`'s pools that have a `health` table, and
    /// marks every backend of `pools` (built from `cfg`) as its check says: a new or
    /// restarted check starts up, an unchecked backend is up.
    pub fn reconcile(&mut self, cfg: &HttpsConfig, pools: &[Arc<Pool>]) {
        let mut targets = Vec::new();
        for p in &cfg.pools {
            // The configuration was validated: a table that did not give a check would
            // have been refused.
            let Ok(Some(check)) = p.health_check() else {
                continue;
            };
            targets.extend(p.backends.iter().map(|b| Target {
                owner: p.name.clone(),
                backend: (*b).into(),
                check: check.clone(),
            }));
        }
        let checked = self.checker.reconcile(targets);
        let metrics = crate::metrics::global();
        for (pool, b) in health::carry_over(&mut self.states, &checked) {
            metrics.forget_backend(&Checked::Pool(pool, b));
        }
        let all: Vec<Checked> = pools
            .iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(|b| Checked::Pool(p.name.clone(), b.addr.into()))
            })
            .collect();
        metrics.pool_backends(&all);
        for p in pools {
            for b in &p.backends {
                b.set_up(self.state(&p.name, b.addr).is_none_or(|s| s.up));
            }
        }
    }

    /// Records a check's outcome and marks the backend in `pools` (the ones in use).
    pub fn outcome(&mut self, o: Outcome<String>, pools: &[Arc<Pool>]) {
        let Some(state) = health::current(&mut self.states, &o) else {
            return;
        };
        let changed = state.record(o.result, o.at);
        let up = state.up;
        crate::metrics::global().backend_health(
            &Checked::Pool(o.owner.clone(), o.backend),
            up,
            o.latency,
        );
        let backend = pools.iter().find(|p| p.name == o.owner).and_then(|p| {
            p.backends
                .iter()
                .find(|b| BackendAddr::from(b.addr) == o.backend)
        });
        if let Some(b) = backend {
            b.set_up(up);
        }
        if changed && up {
            info!(pool = %o.owner, backend = %o.backend, "pool backend up: {}", state.last_text());
        } else if changed {
            warn!(pool = %o.owner, backend = %o.backend, "pool backend down: {}", state.last_text());
        }
    }

    fn state(&self, pool: &str, addr: SocketAddr) -> Option<&health::State> {
        self.states.get(&(pool.to_string(), addr.into()))
    }
}

/// The pools, their checks and their backends' health (`checks`: None while the proxy
/// does not serve), for `xlb status`.
pub fn pools_report(
    checks: Option<&PoolChecks>,
    cfg: &HttpsConfig,
    pools: &[Arc<Pool>],
) -> Vec<PoolView> {
    pools
        .iter()
        .map(|p| {
            let check = cfg
                .pools
                .iter()
                .find(|c| c.name == p.name)
                .and_then(|c| c.health_check().ok().flatten());
            let backends = p
                .backends
                .iter()
                .map(|b| {
                    let h = checks.and_then(|c| c.state(&p.name, b.addr));
                    PoolBackendView {
                        backend: b.addr.to_string(),
                        state: match h {
                            Some(h) if h.up => BackendState::Up,
                            Some(_) => BackendState::Down,
                            None => BackendState::Unchecked,
                        },
                        takes_requests: b.is_healthy(),
                        health: h.map(health::State::report),
                    }
                })
                .collect();
            PoolView {
                pool: p.name.clone(),
                health_check: check,
                backends,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::config::https::Limits;

    const WITH_CHECK: &str = r#"
listen = ["192.0.2.1:443"]
default_cert = { chain = "a.pem", key = "a.key" }
[[routes]]
pool = "web"
[[pools]]
name = "web"
backends = ["203.0.113.11:8080", "203.0.113.12:8080"]
[pools.health]
kind = "http"
interval = "1h"
rise = 2
fall = 1
"#;

    fn setup(text: &str, old: Option<&Pool>) -> (HttpsConfig, Vec<Arc<Pool>>) {
        let cfg = HttpsConfig::from_toml(text).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let pool = Pool::new(&cfg.pools[0], &Limits::default(), provider, old).unwrap();
        (cfg, vec![Arc::new(pool)])
    }

    fn outcome(c: &PoolChecks, i: usize, ok: bool) -> Outcome<String> {
        let backend: BackendAddr = format!("203.0.113.{}:8080", 11 + i).parse().unwrap();
        Outcome {
            owner: "web".into(),
            backend,
            generation: c.states[&("web".to_string(), backend)].generation,
            at: SystemTime::now(),
            latency: std::time::Duration::from_millis(1),
            result: if ok {
                Ok("HTTP 200".into())
            } else {
                Err("HTTP 500".into())
            },
        }
    }

    #[tokio::test]
    async fn checks_mark_pool_backends_and_reloads_reconcile_them() {
        let (mut c, _outcomes) = PoolChecks::new(tokio::runtime::Handle::current());
        let (cfg, pools) = setup(WITH_CHECK, None);
        c.reconcile(&cfg, &pools);
        let b = &pools[0].backends;
        assert!(b[0].is_healthy() && b[1].is_healthy(), "checks start up");

        // fall = 1: one failure takes it out; rise = 2: two good checks bring it back.
        c.outcome(outcome(&c, 0, false), &pools);
        assert!(!b[0].is_healthy() && b[1].is_healthy());
        let report = pools_report(Some(&c), &cfg, &pools);
        assert_eq!(report[0].backends[0].state, BackendState::Down);
        let last = report[0].backends[0].health.as_ref().unwrap().last.clone();
        assert_eq!(last.as_deref(), Some("HTTP 500"));
        assert_eq!(report[0].health_check.as_ref().unwrap().kind.name(), "http");
        c.outcome(outcome(&c, 0, true), &pools);
        assert!(!b[0].is_healthy());
        c.outcome(outcome(&c, 0, true), &pools);
        assert!(b[0].is_healthy());

        // An outcome of a check that was restarted (new settings) is stale.
        c.outcome(outcome(&c, 1, false), &pools);
        assert!(!b[1].is_healthy());
        let stale = outcome(&c, 1, false);
        let (cfg, pools) = setup(&WITH_CHECK.replace("rise = 2", "rise = 3"), Some(&pools[0]));
        c.reconcile(&cfg, &pools);
        let b = &pools[0].backends;
        assert!(b[1].is_healthy(), "a restarted check starts up");
        c.outcome(stale, &pools);
        assert!(b[1].is_healthy());

        // The table removed: the backend held down comes back, unchecked.
        c.outcome(outcome(&c, 1, false), &pools);
        assert!(!b[1].is_healthy());
        let (cfg, pools) = setup(
            WITH_CHECK.split("[pools.health]").next().unwrap(),
            Some(&pools[0]),
        );
        c.reconcile(&cfg, &pools);
        assert!(pools[0].backends[1].is_healthy());
        assert!(c.states.is_empty());
        let report = pools_report(Some(&c), &cfg, &pools);
        assert_eq!(report[0].backends[1].state, BackendState::Unchecked);
        assert!(report[0].health_check.is_none());
    }
}
