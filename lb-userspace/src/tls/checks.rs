//! Active health checks of the pools: the layer-4 services' checker (`crate::health`:
//! the same probes, the same rise and fall), keyed by (pool name, backend). A check's
//! verdict reaches the proxy through `Backend::set_up`; passive failures (`max_fails`)
//! still take a backend out for a while on top of it, but never bring back one the
//! check holds down.
//!
//! They run while the proxy serves (`HttpsProxy::serve`), so `xlb run` and `xlb proxy`
//! both run them; `HttpsProxy::reload` re-reconciles them with the new pools.

use std::{net::SocketAddr, sync::Arc};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{config::HttpsConfig, upstream::Pool};
use crate::{
    health::{self, Checker, Outcome, States, Target},
    metrics::Checked,
    services::BackendAddr,
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
pub fn pools_json(checks: Option<&PoolChecks>, cfg: &HttpsConfig, pools: &[Arc<Pool>]) -> Value {
    let pools: Vec<Value> = pools
        .iter()
        .map(|p| {
            let check = cfg
                .pools
                .iter()
                .find(|c| c.name == p.name)
                .and_then(|c| c.health_check().ok().flatten());
            let backends: Vec<Value> = p
                .backends
                .iter()
                .map(|b| {
                    let h = checks.and_then(|c| c.state(&p.name, b.addr));
                    let state = match h {
                        Some(h) if h.up => "up",
                        Some(_) => "down",
                        None => "unchecked",
                    };
                    let mut v = json!({
                        "backend": b.addr.to_string(),
                        "state": state,
                        // What the balancing sees: the check's verdict and the passive
                        // failures together.
                        "takes_requests": b.is_healthy(),
                    });
                    if let Some(h) = h {
                        v["health"] = h.json();
                    }
                    v
                })
                .collect();
            json!({
                "pool": p.name,
                "health_check": check,
                "backends": backends,
            })
        })
        .collect();
    json!(pools)
}
