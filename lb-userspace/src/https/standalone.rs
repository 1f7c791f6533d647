//! `xlb proxy`: the https service alone, without the XDP datapath.

use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
};

use anyhow::{Context, Result, ensure};
use tracing::{error, info};

use super::HttpsProxy;
use crate::config::https::{AccessLogTarget, HttpsConfig};

/// Reads and validates the https service's file for `xlb proxy`: what only `xlb run`
/// can do is refused rather than silently not done.
pub fn load(path: &Path) -> Result<HttpsConfig> {
    let cfg = HttpsConfig::load(path)?;
    ensure!(
        cfg.access_log
            .as_ref()
            .is_none_or(|a| a.to != AccessLogTarget::Otlp),
        "access_log: to = \"otlp\" needs xlb run with an [export] table; xlb proxy writes \
         its access log to a file, stdout or syslog ({})",
        path.display()
    );
    Ok(cfg)
}

/// `xlb proxy --config FILE`: runs the https service of FILE until SIGINT or SIGTERM;
/// SIGHUP re-reads FILE (applied whole, or refused with the running one kept).
pub async fn run_proxy(path: PathBuf) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let cfg = load(&path)?;
    let proxy = HttpsProxy::new(cfg)?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let reopener = proxy.clone();
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            reopener.reopen_logs();
        }
    });
    let reloader = proxy.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!(file = %path.display(), "SIGHUP: reloading the configuration");
            match load(&path) {
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
    info!(stats = ?stats.report(), "stopped");
    Ok(())
}
