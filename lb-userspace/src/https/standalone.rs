//! `xlb proxy`: the https service alone, without the XDP datapath.

use std::{path::PathBuf, sync::atomic::Ordering};

use anyhow::{Context, Result};
use tracing::{error, info};

use super::HttpsProxy;
use crate::config::https::HttpsConfig;

/// `xlb proxy --config FILE`: runs the https service of FILE until SIGINT or SIGTERM;
/// SIGHUP re-reads FILE (applied whole, or refused with the running one kept).
pub async fn run_proxy(path: PathBuf) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let cfg = HttpsConfig::load(&path)?;
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
    info!(stats = ?stats.report(), "stopped");
    Ok(())
}
