//! The daemon's monitoring tasks, started by `xlb run`: the `/metrics` server, the
//! drop-event reader, the kernel log reader and the flow-record scanner. Stopped when
//! the `Tasks` guard drops.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::info;

use super::socket::{Shared, locked};
use crate::{
    config::flows::FlowsConfig,
    kernel::{Datapath, flows::read_flows},
    metrics::{
        self, Snapshot, events,
        flows::Recorder,
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
    /// `[flows]`: flow records (None: off).
    pub flows: Option<FlowsConfig>,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            metrics: None,
            drop_sample: 0,
            drop_log_rate: 10,
            kernel_log: KernelLog::Off,
            metrics_connections: metrics_http::MAX_CONNECTIONS,
            flows: None,
        }
    }
}

impl MonitorOptions {
    /// The program's side: sampling and log level (written with the config).
    pub fn configure(&self, dp: &mut Datapath) {
        dp.drop_sample = self.drop_sample;
        dp.log_level = self.kernel_log.level();
        dp.flow_records = self.flows.is_some();
    }
}

/// Bound and taken, not yet running.
pub struct Monitor {
    listener: Option<TcpListener>,
    events: Option<RingBuf<MapData>>,
    kernel_log: Option<JoinHandle<()>>,
    recorder: Option<Arc<Mutex<Recorder>>>,
    opts: MonitorOptions,
}

/// The running tasks; aborted on drop.
pub struct Tasks {
    tasks: Vec<JoinHandle<()>>,
    recorder: Option<Arc<Mutex<Recorder>>>,
}

impl Tasks {
    /// xlb stops: the flows followed get their last records.
    pub fn finish(&self) {
        if let Some(r) = &self.recorder {
            r.lock().unwrap_or_else(|e| e.into_inner()).finish();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Reads the flow table every `scan` and makes the records of what changed; the table
/// is read under the lock, the records made after it.
async fn scan_flows(running: Shared, recorder: Arc<Mutex<Recorder>>, scan: std::time::Duration) {
    let mut tick = tokio::time::interval(scan);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (running, recorder) = (running.clone(), recorder.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let read = locked(&running, "reading the flow table", |r| {
                read_flows(&r.edge.dp).map(|e| (e, r.edge.dp.lb.flow_names()))
            });
            match read {
                Ok(Ok((entries, names))) => recorder
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .scan(&entries, &names),
                Ok(Err(e)) => tracing::warn!("flow records: {e:#}"),
                Err(e) => tracing::warn!("flow records: {e}"),
            }
        })
        .await;
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
        let recorder = match &opts.flows {
            Some(f) => Some(Arc::new(Mutex::new(
                Recorder::new(f, m).context("[flows]")?,
            ))),
            None => None,
        };
        Ok(Monitor {
            listener,
            events: dp.take_events(),
            kernel_log,
            recorder,
            opts: opts.clone(),
        })
    }

    /// Starts the tasks; scrapes read `running`'s datapath.
    pub fn start(self, running: Shared) -> Tasks {
        let m = metrics::global();
        let mut tasks: Vec<JoinHandle<()>> = self.kernel_log.into_iter().collect();
        if let (Some(rec), Some(f)) = (&self.recorder, &self.opts.flows) {
            let (running, rec) = (running.clone(), rec.clone());
            tasks.push(tokio::spawn(scan_flows(running, rec, f.scan)));
        }
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
            let rec = self.recorder.clone();
            tasks.push(tokio::spawn(events::run(ring, m, sample, rate, rec)));
        }
        Tasks {
            tasks,
            recorder: self.recorder,
        }
    }
}
