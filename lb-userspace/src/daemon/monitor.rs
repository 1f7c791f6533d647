//! The daemon's monitoring tasks, started by `xlb run`: the `/metrics` server, the
//! drop-event reader and the kernel log reader. Stopped when the `Tasks` guard drops.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::info;

use super::socket::{Shared, locked};
use crate::{
    kernel::Datapath,
    metrics::{
        self, Snapshot, events,
        http::{self as metrics_http, Source},
        kernel_log::{self, KernelLog},
    },
};

/// What `xlb run` was asked for.
#[derive(Clone, Debug)]
pub struct MonitorOptions {
    /// Where `/metrics` listens (None: off).
    pub metrics: Option<SocketAddr>,
    /// One dropped packet in this many (per CPU) becomes an event; 0: none.
    pub drop_sample: u32,
    /// Drop events logged per second at most (the rest are counted).
    pub drop_log_rate: u32,
    pub kernel_log: KernelLog,
    /// Scrape connections served at once (from the daemon's descriptors).
    pub metrics_connections: usize,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            metrics: None,
            drop_sample: 0,
            drop_log_rate: 10,
            kernel_log: KernelLog::Off,
            metrics_connections: metrics_http::MAX_CONNECTIONS,
        }
    }
}

impl MonitorOptions {
    /// The program's side: sampling and log level (written with the config).
    pub fn configure(&self, dp: &mut Datapath) {
        dp.drop_sample = self.drop_sample;
        dp.log_level = self.kernel_log.level();
    }
}

/// Bound and taken, not yet running.
pub struct Monitor {
    listener: Option<TcpListener>,
    events: Option<RingBuf<MapData>>,
    kernel_log: Option<JoinHandle<()>>,
    opts: MonitorOptions,
}

/// The running tasks; aborted on drop.
pub struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Monitor {
    /// Binds `/metrics` and takes the kernel's event and log buffers: errors here stop
    /// `xlb run` at start.
    pub async fn prepare(opts: &MonitorOptions, dp: &mut Datapath) -> Result<Self> {
        let m = metrics::global();
        // The stored state loaded at start is configuration generation 1.
        m.config_loaded(1, true);
        let listener = match opts.metrics {
            Some(addr) => Some(metrics_http::bind(addr).await?),
            None => None,
        };
        let kernel_log = if opts.kernel_log != KernelLog::Off {
            Some(kernel_log::start(dp, m)?)
        } else {
            None
        };
        Ok(Monitor {
            listener,
            events: dp.take_events(),
            kernel_log,
            opts: opts.clone(),
        })
    }

    /// Starts the tasks; scrapes read `running`'s datapath.
    pub fn start(self, running: Shared) -> Tasks {
        let m = metrics::global();
        let mut tasks: Vec<JoinHandle<()>> = self.kernel_log.into_iter().collect();
        if let Some(l) = self.listener {
            if let Ok(addr) = l.local_addr() {
                info!(%addr, "serving metrics on http://{addr}/metrics");
            }
            let source: Source = Arc::new(move || {
                locked(&running, "a scrape", |r| {
                    let mut snap = Snapshot::read(&r.edge.dp, &r.edge.rules)?;
                    snap.limits = r.edge.limit_views()?;
                    Ok::<_, anyhow::Error>(snap)
                })
                .map_err(anyhow::Error::msg)?
            });
            let cap = self.opts.metrics_connections;
            tasks.push(tokio::spawn(metrics_http::serve(l, source, m, cap)));
        }
        if let (Some(ring), true) = (self.events, self.opts.drop_sample > 0) {
            let (sample, rate) = (self.opts.drop_sample, self.opts.drop_log_rate);
            tasks.push(tokio::spawn(events::run(ring, m, sample, rate)));
        }
        Tasks(tasks)
    }
}
