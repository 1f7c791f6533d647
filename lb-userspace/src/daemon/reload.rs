//! Reloads: the configuration file re-read and applied as diff(last file, new file),
//! interfaces, the https service and the desired state all changed or none; and what a
//! configuration asks of the start.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use anyhow::{Context, Result, anyhow, bail};
use tracing::{error, info, warn};

use super::{
    host::check_new_services,
    running::{ReloadRecord, Running},
    socket::{Shared, locked, set_socket_access},
};
use crate::{
    api::{
        Response,
        reply::{HttpsChanged, Reloaded, Reply},
    },
    config::{
        Config, DEFAULT_METRICS, group_id,
        https::HttpsConfig,
        plan::{Plan, RuleOp, plan},
    },
    https::HttpsProxy,
    metrics,
    model::{
        desired::{Desired, Projection},
        interface::{AttachMode, Interface},
        weights,
    },
};

/// The https service run by the daemon.
pub(super) struct Https {
    pub proxy: Arc<HttpsProxy>,
    pub config: HttpsConfig,
    stop: Arc<tokio::sync::Notify>,
}

impl Https {
    /// Loads everything `cfg` names and checks that its addresses can be bound; starts
    /// nothing.
    pub(super) fn prepare(cfg: &HttpsConfig) -> Result<Arc<HttpsProxy>> {
        for a in cfg.listen.iter().chain(&cfg.redirect_listen) {
            std::net::TcpListener::bind(a)
                .with_context(|| format!("the https service cannot listen on {a}"))?;
        }
        HttpsProxy::new(cfg.clone()).context("the https service ([tls])")
    }

    /// Serves until `stop`.
    pub(super) fn start(
        proxy: Arc<HttpsProxy>,
        config: HttpsConfig,
        rt: &tokio::runtime::Handle,
    ) -> Https {
        let stop = Arc::new(tokio::sync::Notify::new());
        let (p, s) = (proxy.clone(), stop.clone());
        rt.spawn(async move {
            if let Err(e) = p.serve(async move { s.notified().await }).await {
                error!("the https service stopped: {e:#}");
            }
        });
        Https {
            proxy,
            config,
            stop,
        }
    }

    pub(super) fn stop(&self) {
        self.stop.notify_one();
    }
}

/// What a reload does to the https service.
enum HttpsChange {
    Keep,
    Start(Arc<HttpsProxy>, HttpsConfig),
    /// Applied (before the datapath), with the configuration to go back to.
    Reloaded(HttpsConfig),
    Stop,
}

/// Says `READY=1` to systemd when dropped: after a reload, whatever its outcome.
struct Ready;

impl Drop for Ready {
    fn drop(&mut self) {
        super::notify::notify("READY=1");
    }
}

/// A configuration file as read and validated for a reload: its path, and the
/// configuration or why it was refused.
pub(super) type Loaded = (PathBuf, Result<Config, String>);

/// Reads and validates the configuration file (`path`, the daemon's), outside the
/// daemon's lock: a slow, huge or hostile file never holds up the control socket, the
/// health checks or a stop.
pub(super) fn load(path: Option<PathBuf>) -> Option<Loaded> {
    path.map(|p| {
        let cfg = Config::load(&p).map_err(|e| e.to_string());
        (p, cfg)
    })
}

/// A whole reload (`xlb reload`, SIGHUP): the file read without the lock, applied
/// under it.
pub(super) fn reload(running: &Shared, trigger: &'static str, reset: bool) -> Response {
    let path = match locked(running, "a reload", |r| r.config_path.clone()) {
        Ok(p) => p,
        Err(e) => return Response::err(e),
    };
    super::notify::notify("RELOADING=1");
    let loaded = load(path);
    let _ready = Ready;
    locked(running, "a reload", |r| {
        let res = r.reload(loaded, trigger, reset);
        r.reconcile_checks();
        match res {
            Ok(v) => Response::ok(Reply::Reloaded(Box::new(v))),
            Err(e) => Response::err(format!("{e:#}")),
        }
    })
    .unwrap_or_else(Response::err)
}

impl Running {
    /// Applies a configuration file read by [`load`] as diff(last file, this file), or
    /// with `reset` as the whole desired state (every CLI change goes); a bad file
    /// changes nothing. Recorded for `xlb status`.
    pub(super) fn reload(
        &mut self,
        loaded: Option<Loaded>,
        trigger: &'static str,
        reset: bool,
    ) -> Result<Reloaded> {
        let Some((path, cfg)) = loaded else {
            bail!(
                "this daemon runs without a configuration file: start it with `xlb run --config FILE` to reload one"
            );
        };
        let res = cfg
            .map_err(|e| anyhow!(e))
            .and_then(|cfg| self.try_reload(&path, cfg, reset));
        match &res {
            Ok(v) => {
                let changes = serde_json::to_string(v).unwrap_or_default();
                info!(file = %path.display(), generation = self.generation, %changes, trigger, "configuration reloaded")
            }
            Err(e) => {
                warn!(file = %path.display(), trigger, "reload refused, the running state is unchanged: {e:#}")
            }
        }
        metrics::global().config_loaded(self.generation, res.is_ok());
        self.last_reload = Some(ReloadRecord {
            at: SystemTime::now(),
            trigger,
            result: res.as_ref().map(Clone::clone).map_err(|e| format!("{e:#}")),
        });
        res.context("reload refused, the running state is unchanged")
    }

    fn try_reload(&mut self, path: &Path, cfg: Config, reset: bool) -> Result<Reloaded> {
        // A reset diffs the file against everything running, so that what the file does
        // not define goes (the CLI's rules, services, backends and checks).
        let running = reset.then(|| self.edge.as_projection());
        let base = running.as_ref().unwrap_or(&self.edge.base);
        let mut plan = plan(
            &self.edge.rules,
            &self.edge.services,
            &self.edge.backups,
            &self.edge.limits,
            base,
            &cfg.projection,
        )
        .map_err(|e| anyhow!("{e}"))?;
        if reset {
            for s in plan.services.by_vip.values_mut() {
                s.check = None;
            }
        }
        let ifaces: Vec<Interface> = if self.cli_iface {
            self.current_interfaces()
        } else if cfg.interfaces.is_empty() {
            bail!(
                "{} lists no [[interface]]: xlb would detach from every interface (stop it instead)",
                path.display()
            );
        } else {
            cfg.interfaces.clone()
        };
        let names: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();
        check_new_services(&self.edge.services, &plan.services, &names)?;
        let new_group = self.cli_group.clone().or_else(|| cfg.group.clone());
        let gid = new_group
            .as_deref()
            .map(group_id)
            .transpose()
            .map_err(|e| anyhow!(e))?;
        if !self.metrics_from_cli && metrics_listen(Some(&cfg)) != self.metrics {
            bail!(
                "metrics.listen changes only at a restart of xlb (/metrics listens on {})",
                self.metrics
                    .map_or("nothing (off)".to_string(), |a| a.to_string())
            );
        }
        let running_export = self.config.as_ref().and_then(|c| c.export.as_ref());
        if running_export != cfg.export.as_ref() {
            bail!("[export] changes only at a restart of xlb");
        }
        if self.config.as_ref().and_then(|c| c.flows.as_ref()) != cfg.flows.as_ref() {
            bail!("[flows] changes only at a restart of xlb");
        }
        let https = self.prepare_https(cfg.https.as_ref())?;
        // Interfaces first (new ones attached, changed modes re-attached), so a refusal
        // there leaves the state untouched; the ones the file dropped go last.
        let undo = self.attach_interfaces(&ifaces)?;
        // A changed https service is reloaded whole or not at all, before the datapath.
        let https = match https {
            HttpsChange::Reloaded(new) => {
                let h = self.https.as_mut().expect("running");
                if let Err(e) = h.proxy.reload(new.clone()) {
                    self.undo_interfaces(undo);
                    return Err(e.context("the https service ([tls])"));
                }
                HttpsChange::Reloaded(std::mem::replace(&mut h.config, new))
            }
            other => other,
        };
        let old_drain = std::mem::replace(&mut self.edge.drain_timeout, cfg.drain_timeout);
        let applied = match self.edge.apply_plan(plan, cfg.projection.clone(), reset) {
            Ok(v) => v,
            Err(e) => {
                self.edge.drain_timeout = old_drain;
                if let HttpsChange::Reloaded(old) = https {
                    let h = self.https.as_mut().expect("running");
                    if let Err(e) = h.proxy.reload(old.clone()) {
                        warn!("restoring the https service's configuration: {e:#}");
                    }
                    h.config = old;
                }
                self.undo_interfaces(undo);
                return Err(e);
            }
        };
        // The https services' SYN-flood protection, as the file has it now.
        let syn = self.edge.dp.lb.syn.set_local(&cfg.https_syn);
        if let Err(e) = syn.and_then(|_| self.edge.dp.set_config(&self.edge.rules)) {
            warn!("SYN-flood protection of the https services: {e:#}");
        }
        let https = match https {
            HttpsChange::Keep => HttpsChanged::Unchanged,
            HttpsChange::Reloaded(_) => HttpsChanged::Reloaded,
            HttpsChange::Start(proxy, config) => {
                self.https = Some(Https::start(proxy, config, &self.rt));
                HttpsChanged::Started
            }
            HttpsChange::Stop => {
                if let Some(h) = self.https.take() {
                    h.stop();
                }
                HttpsChanged::Stopped
            }
        };
        let mut detached = Vec::new();
        for (name, _) in self.edge.dp.attached() {
            if !names.contains(&name) {
                if let Err(e) = self.edge.dp.detach_from(&name) {
                    warn!("{e:#}");
                }
                detached.push(name);
            }
        }
        self.edge.ifaces = names;
        if let Err(e) = set_socket_access(&self.socket, gid) {
            warn!("control socket permissions: {e:#}");
        }
        self.generation += 1;
        self.config = Some(cfg);
        Ok(Reloaded {
            applied,
            https,
            generation: self.generation,
            interfaces_attached: undo.into_iter().map(|u| u.0).collect(),
            interfaces_detached: detached,
        })
    }

    /// Checks what a reload asks of the https service; changes nothing.
    fn prepare_https(&self, new: Option<&HttpsConfig>) -> Result<HttpsChange> {
        Ok(match (&self.https, new) {
            (None, None) => HttpsChange::Keep,
            (Some(h), Some(n)) if h.config == *n => HttpsChange::Keep,
            (Some(h), Some(n)) => {
                if n.listen != h.config.listen || n.redirect_listen != h.config.redirect_listen {
                    bail!("tls.listen and tls.redirect_listen change only at a restart of xlb");
                }
                if n.limits.max_connections != h.config.limits.max_connections {
                    bail!("tls.limits.max_connections changes only at a restart of xlb");
                }
                HttpsChange::Reloaded(n.clone())
            }
            (None, Some(n)) => HttpsChange::Start(Https::prepare(n)?, n.clone()),
            (Some(_), None) => HttpsChange::Stop,
        })
    }

    fn current_interfaces(&self) -> Vec<Interface> {
        self.edge
            .dp
            .attached()
            .into_iter()
            .map(|(name, mode)| Interface { name, mode })
            .collect()
    }

    /// Attaches to the interfaces of `want` not attached in that mode. Returns what was
    /// done (interface, the mode it had before), for `undo_interfaces`.
    fn attach_interfaces(
        &mut self,
        want: &[Interface],
    ) -> Result<Vec<(String, Option<AttachMode>)>> {
        let current = self.edge.dp.attached();
        let mut done = Vec::new();
        for i in want {
            let before = current.iter().find(|(n, _)| *n == i.name).map(|(_, m)| *m);
            if before == Some(i.mode) {
                continue;
            }
            if before.is_some() {
                self.edge.dp.detach_from(&i.name)?;
            }
            if let Err(e) = self.edge.dp.attach(&i.name, i.mode) {
                done.push((i.name.clone(), before));
                self.undo_interfaces(done);
                return Err(e);
            }
            done.push((i.name.clone(), before));
        }
        Ok(done)
    }

    fn undo_interfaces(&mut self, done: Vec<(String, Option<AttachMode>)>) {
        for (name, before) in done.into_iter().rev() {
            let _ = self.edge.dp.detach_from(&name);
            if let Some(mode) = before
                && let Err(e) = self.edge.dp.attach(&name, mode)
            {
                warn!("re-attaching {name}: {e:#}");
            }
        }
    }
}

/// Where `/metrics` listens for a configuration (without `--metrics`).
pub(super) fn metrics_listen(config: Option<&Config>) -> Option<std::net::SocketAddr> {
    match config {
        Some(c) => c.metrics_listen(),
        None => Some(DEFAULT_METRICS),
    }
}

/// Applies a plan to a stored state (before anything is loaded).
pub(super) fn apply_to_stored(stored: &mut Desired, plan: Plan, base: Projection) -> Result<()> {
    for op in plan.rule_ops {
        match op {
            RuleOp::Upsert(m, a) => {
                stored.rules.upsert(m, a)?;
            }
            RuleOp::Remove(m) => {
                stored.rules.remove(&m)?;
            }
        }
    }
    stored.rules.default_policy = plan.default_policy;
    stored.rules.malformed_policy = plan.malformed_policy;
    stored.services = plan.services;
    stored.backups = plan.backups;
    stored.limits = plan.limits;
    weights::retain(&mut stored.drained, &stored.services);
    stored.base = base;
    Ok(())
}
