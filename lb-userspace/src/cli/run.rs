//! The verbs that work without a daemon: `run` (becomes one), `proxy` (the https
//! service alone), `check-config` and `down`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Ctx, LogFormat, MetricsAddr, exit, format::or_none};
use crate::{
    api::{self, Request, reply::Stopping},
    config::{
        Config,
        files::{self, Existing},
    },
    daemon::{self, RunOptions, monitor::MonitorOptions},
    https::{self, HttpsProxy},
    kernel::pins::PinDir,
    metrics::kernel_log::KernelLog,
    model::interface::{AttachMode, Interface},
    store,
};

/// The flags of `xlb run`.
pub struct RunArgs {
    pub iface: Option<String>,
    pub mode: AttachMode,
    pub config: Option<PathBuf>,
    pub socket_group: Option<String>,
    pub bpffs: PathBuf,
    pub state: PathBuf,
    pub detach: bool,
    pub program: Option<PathBuf>,
    pub log_format: LogFormat,
    pub metrics: Option<MetricsAddr>,
    pub drop_sample: u32,
    pub drop_log_rate: u32,
    pub kernel_log: KernelLog,
}

/// `xlb run`: the daemon, until SIGINT, SIGTERM or `xlb down`.
pub fn run(a: RunArgs, socket: PathBuf) -> Result<()> {
    exit::need_root("xlb run needs root (CAP_BPF, CAP_NET_ADMIN)")?;
    init_logging(a.log_format, a.kernel_log);
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(daemon::run(RunOptions {
        iface: a.iface,
        mode: a.mode,
        config: a.config,
        socket_group: a.socket_group,
        bpffs: a.bpffs,
        state: a.state,
        socket,
        detach: a.detach,
        program: a.program,
        metrics: a.metrics.map(|m| m.0),
        monitor: MonitorOptions {
            metrics: None,
            drop_sample: a.drop_sample,
            drop_log_rate: a.drop_log_rate,
            kernel_log: a.kernel_log,
            metrics_connections: crate::metrics::http::MAX_CONNECTIONS,
            // From the file, once it is read (daemon::run).
            flows: None,
        },
    }))
}

/// `xlb proxy`: the https service of a file, or with `check` only its validation.
pub fn proxy(config: PathBuf, check: bool, log_format: LogFormat) -> Result<()> {
    if check {
        let cfg = https::standalone::load(&config)?;
        HttpsProxy::new(cfg)?;
        println!("{}: ok", config.display());
        return Ok(());
    }
    init_logging(log_format, KernelLog::Off);
    // As the daemon does: a thousand clients must not meet the common 1,024 limit.
    daemon::fds::raise_limit(Some(https::standalone::load(&config)?.descriptors()));
    // One CPU (e.g. pinned with taskset): one thread, no work-stealing machinery.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    }
    .context("starting the runtime")?;
    rt.block_on(https::run_proxy(config))
}

/// `check-config --json`: what a valid file holds.
#[derive(Serialize)]
struct ConfigSummary<'a> {
    ok: bool,
    file: String,
    interfaces: &'a [Interface],
    rules: usize,
    services: usize,
    backends: usize,
    health_checks: usize,
    tls: bool,
    metrics: Option<String>,
}

/// `check-config --json`: why a file is refused.
#[derive(Serialize)]
struct ConfigRefused<'a> {
    ok: bool,
    errors: &'a [crate::config::ConfigError],
}

/// `xlb check-config FILE`: validates it as `xlb run` would, changes nothing. With
/// `host`, also what `xlb run` would refuse on this host (interfaces, forwarding,
/// fullnat source addresses).
pub fn check_config(file: &Path, json: bool, host: bool) -> Result<()> {
    let loaded = Config::load(file).and_then(|c| {
        let problems = if host {
            daemon::host::problems(&c)
        } else {
            Vec::new()
        };
        if problems.is_empty() {
            return Ok(c);
        }
        Err(crate::config::ConfigErrors(
            problems
                .into_iter()
                .map(|message| crate::config::ConfigError {
                    file: file.to_path_buf(),
                    line: 0,
                    column: 0,
                    field: "host".into(),
                    message,
                })
                .collect(),
        ))
    });
    match loaded {
        Ok(c) => {
            if json {
                let services = &c.projection.services.by_vip;
                let v = ConfigSummary {
                    ok: true,
                    file: file.display().to_string(),
                    interfaces: &c.interfaces,
                    rules: c.projection.rules.len(),
                    services: services.len(),
                    backends: services.values().map(|s| s.backends.len()).sum(),
                    health_checks: c.health.len(),
                    tls: c.https.is_some(),
                    metrics: c.metrics_listen().map(|a| a.to_string()),
                };
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!("{}: ok: {}", file.display(), c.summary());
            }
            Ok(())
        }
        Err(e) => {
            if json {
                let v = ConfigRefused {
                    ok: false,
                    errors: &e.0,
                };
                println!("{}", serde_json::to_string(&v)?);
                let n = e.0.len();
                let s = if n == 1 { "" } else { "s" };
                return Err(refusal(
                    file,
                    anyhow::anyhow!("{}: refused ({n} error{s})", file.display()),
                ));
            }
            Err(refusal(file, anyhow::anyhow!("{e}")))
        }
    }
}

/// A refusal of `file` as an error with its exit code: permission (4) when the file
/// could not be opened for that reason, else refused (1).
fn refusal(file: &Path, e: anyhow::Error) -> anyhow::Error {
    if files::permission_denied(file) {
        return exit::fail(exit::Exit::Permission, format!("{e:#}"));
    }
    e
}

/// What `xlb down` did.
#[derive(Serialize)]
struct DownReport {
    daemon_stopped: Option<u32>,
    detached: Vec<String>,
    /// Whether there was a pin directory to remove.
    pins_removed: bool,
    /// Whether the stored state was deleted (`--purge`).
    state_deleted: bool,
}

/// `xlb down`: through the daemon if one runs (it detaches, removes its pins and
/// exits), else directly on the pin directory a stopped or crashed run left.
pub fn down(ctx: &Ctx, bpffs: &Path, purge: Option<&Path>) -> Result<()> {
    let socket = &ctx.socket;
    let report = take_down(socket, bpffs, purge)?;
    if ctx.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    match report.daemon_stopped {
        Some(pid) => println!("stopped the daemon (pid {pid})"),
        None => println!("no daemon was running on {}", socket.display()),
    }
    println!("detached from: {}", or_none(&report.detached.join(", ")));
    if report.pins_removed {
        println!("removed the pins under {}", bpffs.display());
    } else {
        println!("no datapath was pinned at {}", bpffs.display());
    }
    if let Some(state) = purge {
        if report.state_deleted {
            println!("deleted the stored state {}", state.display());
        } else {
            println!("there was no stored state at {}", state.display());
        }
    }
    Ok(())
}

fn take_down(socket: &Path, bpffs: &Path, purge: Option<&Path>) -> Result<DownReport> {
    exit::need_root("xlb down needs root (it detaches XDP programs)")?;
    if let Some(state) = purge {
        // Checked first: a refusal here leaves everything running.
        store::check_path(state)?;
    }
    let mut out = DownReport {
        daemon_stopped: None,
        detached: Vec::new(),
        pins_removed: false,
        state_deleted: false,
    };
    if api::daemon_running(socket) {
        let v: Stopping = api::call(socket, &Request::Down)?;
        out.daemon_stopped = Some(v.stopping);
        out.detached = v.interfaces;
        // It removes its pins and socket on its way out.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while api::daemon_running(socket) || socket.exists() {
            if std::time::Instant::now() > deadline {
                return Err(exit::fail(
                    exit::Exit::Partial,
                    "the daemon was told to stop but did not within 20 s of `xlb down`: nothing else was removed",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    if bpffs.exists() {
        let dir = PinDir::open(bpffs)?;
        let detached = dir.remove_all()?;
        out.pins_removed = true;
        if !detached.is_empty() {
            out.detached = detached;
        }
    }
    // A socket left by a crashed daemon; nothing else at that path is ours.
    if files::existing(socket).ok() == Some(Existing::Socket) && !api::daemon_running(socket) {
        let _ = std::fs::remove_file(socket);
    }
    if let Some(state) = purge {
        match std::fs::remove_file(state) {
            Ok(()) => out.state_deleted = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {}", state.display())),
        }
    }
    Ok(out)
}

pub(super) fn init_logging(format: LogFormat, kernel: KernelLog) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("XLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The kernel's records are as verbose as asked for with --kernel-log.
    if kernel != KernelLog::Off
        && let Ok(d) = format!("xlb::kernel={}", format!("{kernel:?}").to_lowercase()).parse()
    {
        filter = filter.add_directive(d);
    }
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
    let print = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let print = match format {
        LogFormat::Text => print.boxed(),
        LogFormat::Json => print.json().boxed(),
    };
    // The filter applies to both: what is not printed is not exported either.
    tracing_subscriber::registry()
        .with(
            print
                .and_then(crate::metrics::export::Layer)
                .with_filter(filter),
        )
        .init();
}
