//! The running daemon: the edge plus what only `xlb run` has (the configuration file
//! and its reloads, the interfaces, the socket, the health checker, the https service),
//! and its answers to `status`, `reload` and `down`.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime},
};

use anyhow::{Result, anyhow};
use tracing::info;

use super::{Edge, reload::Https};
use crate::{
    api::{
        Request, Response,
        reply::{
            BackendState, BackendView, ConfigView, DatapathView, HttpsView, InterfaceView, OnStop,
            ReloadView, Reloaded, Reply, RuleCounts, ServiceList, Status, Stopping,
        },
    },
    config::Config,
    health::{self, unix},
    model::{health_check::HealthCheck, rules::Match, services::Vip},
};

/// The outcome of the last reload.
pub(super) struct ReloadRecord {
    pub at: SystemTime,
    pub trigger: &'static str,
    pub result: std::result::Result<Reloaded, String>,
}

/// The daemon: the edge and what only a running daemon has.
pub struct Running {
    pub edge: Edge,
    /// The configuration file (None: started without one).
    pub(super) config_path: Option<PathBuf>,
    /// The last configuration applied.
    pub(super) config: Option<Config>,
    /// The interfaces came from `--iface`: reloads leave them.
    pub(super) cli_iface: bool,
    /// The group given with `--socket-group` (overrides the file's).
    pub(super) cli_group: Option<String>,
    pub(super) socket: PathBuf,
    pub(super) started: SystemTime,
    /// 1 for the file applied at start, +1 for each successful reload.
    pub(super) generation: u64,
    pub(super) last_reload: Option<ReloadRecord>,
    /// The running health checks (None in tests without a runtime).
    pub(super) checker: Option<health::Checker>,
    /// The https service of the configuration's `[tls]`, while it runs.
    pub(super) https: Option<Https>,
    pub(super) rt: tokio::runtime::Handle,
    /// `/metrics`: where it listens, and whether `--metrics` chose that (a reload of
    /// the file then leaves it alone).
    pub(super) metrics: Option<std::net::SocketAddr>,
    pub(super) metrics_from_cli: bool,
    /// Detach and remove the pins when stopping (`--detach`, or set by `xlb down`).
    pub(super) detach_on_stop: bool,
    /// Wakes the main loop to stop (`xlb down`).
    pub(super) stop: Arc<tokio::sync::Notify>,
}

impl Running {
    /// Answers one request; `trigger` says where it came from (`cli`, `sighup`).
    pub fn handle(&mut self, req: Request, trigger: &'static str) -> Response {
        let reads = matches!(
            req,
            Request::Status | Request::VipList | Request::List | Request::Stats
        );
        let res = match req {
            Request::Status => self
                .status()
                .map(|s| Response::ok(Reply::Status(Box::new(s)))),
            // Normally `reload::reload`, which reads the file without the lock.
            Request::Reload { reset } => {
                let loaded = super::reload::load(self.config_path.clone());
                self.reload(loaded, trigger, reset)
                    .map(|r| Response::ok(Reply::Reloaded(Box::new(r))))
            }
            Request::Down => {
                info!("xlb down: stopping, detaching and removing the pins");
                // The main loop stops once the answer is sent (serve_one).
                self.detach_on_stop = true;
                Ok(Response::ok(Reply::Stopping(Stopping {
                    stopping: std::process::id(),
                    interfaces: self
                        .edge
                        .dp
                        .attached()
                        .into_iter()
                        .map(|(i, _)| i)
                        .collect(),
                })))
            }
            Request::VipList => Ok(Response::ok(Reply::ServiceList(self.service_list()))),
            Request::VipCheck { vip, .. } if self.config_check(&vip).is_some() => Err(anyhow!(
                "service {vip} is checked by the configuration file's [service.health]: change the check there"
            )),
            other => Ok(self.edge.handle(other)),
        };
        if !reads {
            self.reconcile_checks();
        }
        match res {
            Ok(r) => r,
            Err(e) => Response::err(format!("{e:#}")),
        }
    }

    /// The services as `xlb vip list` shows them, each with its check from wherever it
    /// was set.
    fn service_list(&self) -> ServiceList {
        let mut list = self.edge.service_list();
        for (svc, vip) in list
            .services
            .iter_mut()
            .zip(self.edge.services.by_vip.keys())
        {
            svc.health_check = self.check_of(vip).cloned();
        }
        list
    }

    /// The configuration file's check of service `vip` (written as the CLI takes it).
    fn config_check(&self, vip: &str) -> Option<&HealthCheck> {
        let vip: Vip = vip.parse().ok()?;
        self.config.as_ref()?.health.get(&vip)
    }

    /// A service's check: the configuration file's, else the one set with the CLI.
    fn check_of(&self, vip: &Vip) -> Option<&HealthCheck> {
        self.config
            .as_ref()
            .and_then(|c| c.health.get(vip))
            .or_else(|| self.edge.services.by_vip.get(vip)?.check.as_ref())
    }

    /// Runs the services' checks over their current backends.
    pub fn reconcile_checks(&mut self) {
        let mut targets = Vec::new();
        for (vip, s) in &self.edge.services.by_vip {
            let Some(check) = self.check_of(vip) else {
                continue;
            };
            for b in s.backends.keys() {
                targets.push(health::Target {
                    owner: *vip,
                    backend: *b,
                    check: check.clone(),
                });
            }
        }
        let Some(checker) = self.checker.as_mut() else {
            return;
        };
        let checked = checker.reconcile(targets);
        self.edge.set_checked(&checked);
        self.edge.set_upstreams(self.upstreams());
    }

    /// The https service's pool backends and their check ports: their answers to the
    /// proxy and to its checks are never rate limited.
    fn upstreams(&self) -> std::collections::BTreeSet<std::net::SocketAddr> {
        let mut out = std::collections::BTreeSet::new();
        for p in self.https.iter().flat_map(|h| &h.config.pools) {
            let port = p
                .health
                .as_ref()
                .and_then(|h| h.get_ref().port.as_ref())
                .and_then(|w| u16::try_from(w.get_ref().0).ok());
            for b in &p.backends {
                out.insert(*b);
                if let Some(port) = port {
                    out.insert(std::net::SocketAddr::new(b.ip(), port));
                }
            }
        }
        out
    }

    /// The control socket's group: `--socket-group`, else the file's.
    pub(super) fn group(&self) -> Option<&str> {
        self.cli_group
            .as_deref()
            .or(self.config.as_ref().and_then(|c| c.group.as_deref()))
    }

    fn status(&self) -> Result<Status> {
        let rules = &self.edge.rules;
        let count = |f: fn(&Match) -> bool| rules.count(f);
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_unix: unix(self.started),
            uptime_secs: SystemTime::now()
                .duration_since(self.started)
                .map_or(0, |d| d.as_secs()),
            drain_timeout_secs: self.edge.drain_timeout.as_secs(),
            program_id: self.edge.dp.program().info()?.id(),
            interfaces: self
                .edge
                .dp
                .attached()
                .into_iter()
                .map(|(name, mode)| InterfaceView { name, mode })
                .collect(),
            datapath: DatapathView {
                pins: self.edge.dp.pin_dir().map(|p| p.display().to_string()),
                at_start: self.edge.dp.adoption.clone(),
                on_stop: if self.detach_on_stop {
                    OnStop::Detach
                } else {
                    OnStop::Keep
                },
            },
            socket: self.socket.display().to_string(),
            socket_group: self.group().map(str::to_string),
            config: self.config_view(),
            https: self.https.as_ref().map(|h| HttpsView {
                listen: h.config.listen.iter().map(|a| a.to_string()).collect(),
                redirect_listen: h
                    .config
                    .redirect_listen
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
                stats: h.proxy.stats_report(),
                pools: h.proxy.pools_report(),
            }),
            rules: RuleCounts {
                total: rules.len(),
                prefix: count(|m| matches!(m, Match::Prefix(_))),
                port: count(|m| matches!(m, Match::Port(_))),
                except_prefix: count(|m| matches!(m, Match::ExceptPrefix(_))),
                except_port: count(|m| matches!(m, Match::ExceptPort(_))),
                default: rules.default_policy,
                malformed: rules.malformed_policy,
            },
            services: self.services_with_drains(),
            syn_protection: self.edge.syn_views()?,
            limits: self.edge.limit_views()?,
        })
    }

    /// The configuration file, its generation and its last reload.
    fn config_view(&self) -> Option<ConfigView> {
        let last_reload = self.last_reload.as_ref().map(|r| ReloadView {
            ok: r.result.is_ok(),
            at_unix: unix(r.at),
            trigger: r.trigger.to_string(),
            error: r.result.as_ref().err().cloned(),
            changes: r.result.as_ref().ok().cloned(),
        });
        self.config_path.as_ref().map(|p| ConfigView {
            file: p.display().to_string(),
            generation: self.generation,
            last_reload,
        })
    }

    /// The services of `status`: `vip list`'s, with their draining backends.
    fn services_with_drains(&self) -> Vec<crate::api::reply::ServiceView> {
        let now = Instant::now();
        let mut services = self.service_list().services;
        for (svc, vip) in services.iter_mut().zip(self.edge.services.by_vip.keys()) {
            let draining = self.edge.draining.by_vip.get(vip);
            for b in draining.into_iter().flat_map(|d| d.keys()) {
                let left = self.edge.draining.left(vip, b, now).unwrap_or_default();
                svc.backends.push(BackendView {
                    backend: b.to_string(),
                    weight: 0,
                    effective_weight: 0,
                    backup: false,
                    state: BackendState::Draining,
                    health: None,
                    drain_left_secs: Some(left.as_secs()),
                });
            }
        }
        services
    }
}
