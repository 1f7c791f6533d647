//! `xlb run`: owns the datapath and the desired state, serves the control socket.
//!
//! [`Edge`] is the desired state and its projection on the maps, changed as one
//! (`edge`; its requests in `requests`, its read replies in `views`); [`Running`] adds
//! what only the daemon has (`running`; reloads in `reload`). `socket` serves the
//! control socket, `monitor` the metrics and the kernel's events, `host` checks what
//! services need of this host.

pub mod edge;
pub mod fds;
pub mod host;
pub mod limits;
pub mod monitor;
pub mod notify;
pub mod reload;
pub mod requests;
pub mod running;
pub mod socket;
pub mod views;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, anyhow, bail};
use tokio::{
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{info, warn};

pub use edge::Edge;
pub use running::Running;

use fds::ACCEPT_BACKOFF;
use host::check_new_services;
use reload::{Https, apply_to_stored, metrics_listen};
use socket::{Shared, SocketGuard, bind, locked, serve_one};

use crate::{
    config::{Config, HttpsConfig, files, group_id, plan::plan},
    health,
    https::HttpsProxy,
    kernel::{Adoption, Datapath, check_bpffs, object},
    metrics,
    model::{
        desired::Desired,
        drain::DEFAULT_DRAIN,
        interface::{AttachMode, Interface},
        services::Vip,
    },
    store,
};

pub struct RunOptions {
    /// An interface given on the command line (replaces the file's list).
    pub iface: Option<String>,
    pub mode: AttachMode,
    pub config: Option<PathBuf>,
    /// The control socket's group from the command line (overrides the file's).
    pub socket_group: Option<String>,
    pub bpffs: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    /// Detach and remove the pins when stopped (default: the datapath keeps running
    /// for the next `xlb run` to adopt).
    pub detach: bool,
    /// An XDP object to load instead of the built-in program (an upgrade of the
    /// kernel side alone).
    pub program: Option<PathBuf>,
    /// `--metrics`: an address or off (None: not given, the configuration's or the
    /// default address).
    pub metrics: Option<Option<std::net::SocketAddr>>,
    /// Monitoring: `/metrics` (set from `metrics` and the configuration), drop events,
    /// kernel log (see `monitor`).
    pub monitor: monitor::MonitorOptions,
}

/// Everything `xlb run` checked before it changes anything.
struct Checked {
    config: Option<Config>,
    ifaces: Vec<Interface>,
    gid: Option<u32>,
    stored: Desired,
    https: Option<(Arc<HttpsProxy>, HttpsConfig)>,
    program: Vec<u8>,
}

/// Validates everything `opts` names: a refusal here changes nothing.
fn check(opts: &RunOptions) -> Result<Checked> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xlb run needs root (CAP_BPF, CAP_NET_ADMIN): run it with sudo");
    }
    check_bpffs(&opts.bpffs)?;
    let config = match &opts.config {
        Some(p) => Some(Config::load(p).map_err(|e| anyhow!("{e}"))?),
        None => None,
    };
    let ifaces: Vec<Interface> = match (&opts.iface, &config) {
        (Some(name), _) => vec![Interface {
            name: name.clone(),
            mode: opts.mode,
        }],
        (None, Some(c)) if !c.interfaces.is_empty() => c.interfaces.clone(),
        (None, Some(c)) => bail!(
            "no interface to attach to: add one to {} ([[interface]] name = \"eth0\") or give --iface",
            c.path.display()
        ),
        (None, None) => bail!("no interface to attach to: give --iface IF, or --config FILE"),
    };
    let names: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();
    let group = opts
        .socket_group
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.group.clone()));
    let gid = group
        .as_deref()
        .map(group_id)
        .transpose()
        .map_err(|e| anyhow!("--socket-group: {e}"))?;
    store::check_path(&opts.state)?;
    let mut stored = store::load(&opts.state)?;
    if let Some(cfg) = &config {
        let plan = plan(
            &stored.rules,
            &stored.services,
            &stored.backups,
            &stored.limits,
            &stored.base,
            &cfg.projection,
        )
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("applying {} to the stored state", cfg.path.display()))?;
        check_new_services(&stored.services, &plan.services, &names)?;
        apply_to_stored(&mut stored, plan, cfg.projection.clone())?;
    }
    let https = match config.as_ref().and_then(|c| c.https.as_ref()) {
        Some(t) => Some((Https::prepare(t)?, t.clone())),
        None => None,
    };
    let program = match &opts.program {
        Some(p) => files::read_bytes(p).map_err(|e| match e {
            files::FileError::Io { err, .. } => {
                anyhow!("reading the XDP program {}: {err}", p.display())
            }
            other => anyhow!("the XDP program (--program): {other}"),
        })?,
        None => object::XLB.to_vec(),
    };
    Ok(Checked {
        config,
        ifaces,
        gid,
        stored,
        https,
        program,
    })
}

/// Loads the datapath (adopting a running one), projects the desired state on it and
/// attaches it; on a failure, a datapath this run created goes again.
async fn start_datapath(
    opts: &RunOptions,
    c: &mut Checked,
    monitor_opts: &monitor::MonitorOptions,
) -> Result<(Edge, monitor::Monitor)> {
    let mut dp =
        Datapath::load_object(&c.program, Some(&opts.bpffs)).with_context(|| {
            match &opts.program {
                Some(p) => format!("--program {}", p.display()),
                None => "the built-in XDP program".to_string(),
            }
        })?;
    monitor_opts.configure(&mut dp);
    // Rules go in before the program is attached: the first packet already sees them.
    let drain_timeout = c.config.as_ref().map_or(DEFAULT_DRAIN, |c| c.drain_timeout);
    let stored = std::mem::take(&mut c.stored);
    let mut edge = Edge::new(dp, stored, Some(opts.state.clone()), drain_timeout)?;
    edge.ifaces = c.ifaces.iter().map(|i| i.name.clone()).collect();
    // The https services' SYN-flood protection (the listener is this daemon's).
    if let Some(cfg) = &c.config
        && !cfg.https_syn.is_empty()
    {
        let set = edge.dp.lb.syn.set_local(&cfg.https_syn);
        if let Err(e) = set.and_then(|_| edge.dp.set_config(&edge.rules)) {
            edge.dp.lb.syn.restore_host();
            abandon(&mut edge.dp);
            return Err(e.context("SYN-flood protection of the https services"));
        }
    }
    for i in &c.ifaces {
        if let Err(e) = edge.dp.attach(&i.name, i.mode) {
            abandon(&mut edge.dp);
            return Err(e);
        }
    }
    let detached = edge.dp.prune();
    if !detached.is_empty() {
        info!(interfaces = ?detached, "detached from the interfaces the last run used and this one does not");
    }
    let monitor = match monitor::Monitor::prepare(monitor_opts, &mut edge.dp).await {
        Ok(m) => m,
        Err(e) => {
            abandon(&mut edge.dp);
            return Err(e);
        }
    };
    if c.config.is_some() {
        // The state as the file made it, and the file's projection as its new base.
        if let Err(e) = edge.save() {
            abandon(&mut edge.dp);
            return Err(e);
        }
    }
    Ok((edge, monitor))
}

pub async fn run(opts: RunOptions) -> Result<()> {
    // Everything is validated before anything changes.
    let mut checked = check(&opts)?;
    // The exporter first, so that it carries the start's own lines.
    if let Some(e) = checked.config.as_ref().and_then(|c| c.export.as_ref()) {
        let rt = tokio::runtime::Handle::current();
        metrics::export::start(e, &rt).context("[export]")?;
        let streams: Vec<_> = e.streams.iter().map(|s| s.name()).collect();
        info!(endpoint = %e.endpoint, ?streams, "exporting logs over OTLP/HTTP");
    }
    let caps = fds::raise_limit(checked.https.as_ref().map(|(_, c)| c.descriptors()));
    let listener = bind(&opts.socket, checked.gid).await?;
    let guard = SocketGuard::new(&opts.socket);
    let mut monitor_opts = opts.monitor.clone();
    monitor_opts.metrics_connections = caps.metrics;
    monitor_opts.flows = checked.config.as_ref().and_then(|c| c.flows.clone());
    monitor_opts.metrics = match opts.metrics {
        Some(flag) => flag,
        None => metrics_listen(checked.config.as_ref()),
    };
    let (edge, monitor) = start_datapath(&opts, &mut checked, &monitor_opts).await?;
    info!(
        interfaces = ?edge.dp.attached(), rules = edge.rules.len(),
        services = edge.services.by_vip.len(), config = ?opts.config,
        socket = %opts.socket.display(), pins = %opts.bpffs.display(),
        at_start = ?edge.dp.adoption,
        "xlb attached and ready"
    );
    let rt = tokio::runtime::Handle::current();
    let https = checked
        .https
        .take()
        .map(|(proxy, cfg)| Https::start(proxy, cfg, &rt));
    let (checker, outcomes) = health::Checker::new(rt.clone());
    let stop = Arc::new(tokio::sync::Notify::new());
    let running: Shared = Arc::new(Mutex::new(Running {
        edge,
        generation: u64::from(checked.config.is_some()),
        config_path: opts.config.clone(),
        config: checked.config.take(),
        cli_iface: opts.iface.is_some(),
        cli_group: opts.socket_group.clone(),
        socket: opts.socket.clone(),
        started: SystemTime::now(),
        last_reload: None,
        checker: Some(checker),
        https,
        rt,
        metrics: monitor_opts.metrics,
        metrics_from_cli: opts.metrics.is_some(),
        detach_on_stop: opts.detach,
        stop: stop.clone(),
    }));
    let monitor = monitor.start(running.clone());
    let _ = locked(&running, "the first health checks", |r| {
        r.reconcile_checks()
    });
    tokio::spawn(apply_outcomes(running.clone(), outcomes));
    // Attached, rules and services in the maps, the control socket bound (connections
    // wait in its backlog for the loop below): ready.
    notify::notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS=serving {}",
        std::process::id(),
        opts.socket.display()
    ));
    serve(&running, listener, &stop, caps.control).await?;
    notify::notify("STOPPING=1");
    monitor.finish();
    shut_down(&running, &opts)?;
    drop(guard);
    Ok(())
}

/// Health-check outcomes, applied in order, a batch per lock.
async fn apply_outcomes(
    running: Shared,
    mut outcomes: mpsc::UnboundedReceiver<health::Outcome<Vip>>,
) {
    while let Some(first) = outcomes.recv().await {
        let mut batch = vec![first];
        while let Ok(o) = outcomes.try_recv() {
            batch.push(o);
        }
        let running = running.clone();
        let _ = tokio::task::spawn_blocking(move || {
            locked(&running, "a health-check outcome", |r| {
                for o in batch {
                    r.edge.health_outcome(o);
                }
            })
        })
        .await;
    }
}

/// The main loop: control connections, SIGHUP reloads, drain expiry, until SIGINT,
/// SIGTERM or `xlb down`.
async fn serve(
    running: &Shared,
    listener: UnixListener,
    stop: &tokio::sync::Notify,
    cap: usize,
) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let connections = Arc::new(tokio::sync::Semaphore::new(cap));
    let mut accept_failed = fds::Throttled::new("the control socket");
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let running = running.clone();
                tokio::task::spawn_blocking(move || {
                    let r = locked(&running, "drain expiry", |r| r.edge.expire_drains(Instant::now()));
                    if let Ok(Err(e)) = r {
                        warn!("{e:#}");
                    }
                });
            }
            conn = listener.accept() => {
                let stream = match conn {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors and the like: never a reason to stop.
                        accept_failed.warn(&e);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                // Beyond the cap the connection is closed at once: a runaway client
                // cannot use up the daemon's descriptors.
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    continue;
                };
                let running = running.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, running).await {
                        warn!("control connection: {e:#}");
                    }
                    drop(permit);
                });
            }
            _ = sighup.recv() => {
                let running = running.clone();
                // The reload logs its own outcome and records it for `xlb status`.
                tokio::task::spawn_blocking(move || reload::reload(&running, "sighup", false));
            }
            _ = sigusr1.recv() => {
                // After an external rotation of the access log: reopen it.
                let _ = locked(running, "reopening the logs", |r| {
                    if let Some(h) = &r.https {
                        h.proxy.reopen_logs();
                    }
                });
            }
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = stop.notified() => return Ok(()),
        }
    }
}

/// Stops the https service; detaches and unpins only when asked to (`--detach`,
/// `xlb down`), else the datapath keeps forwarding for the next run.
fn shut_down(running: &Shared, opts: &RunOptions) -> Result<()> {
    let mut running = running
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(h) = running.https.take() {
        h.stop();
    }
    // The https services' SYN cookies stop with their listener.
    let edge = &mut running.edge;
    let https_off = edge.dp.lb.syn.set_local(&Default::default());
    if let Err(e) = https_off.and_then(|_| edge.dp.set_config(&edge.rules)) {
        warn!("turning off the https services' SYN-flood protection: {e:#}");
    }
    edge.dp.lb.syn.restore_host();
    if running.detach_on_stop {
        info!(
            "stopping: detaching from {:?} and removing the pins",
            running.edge.dp.attached()
        );
        running.edge.dp.detach()?;
        running.edge.dp.unpin();
    } else {
        info!(
            interfaces = ?running.edge.dp.attached(),
            pins = %opts.bpffs.display(),
            "stopping: the datapath keeps forwarding; the next `xlb run` takes it over, `xlb down` removes it"
        );
    }
    Ok(())
}

/// After a failed start: a datapath that ran before this run keeps running (its links
/// hold the old or the new program, both complete); one this run created goes.
fn abandon(dp: &mut Datapath) {
    if matches!(dp.adoption, Adoption::Adopted { .. }) {
        warn!("start failed: the running datapath is left as it is");
        return;
    }
    let _ = dp.detach();
    dp.unpin();
}
