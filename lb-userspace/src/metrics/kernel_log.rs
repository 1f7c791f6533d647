//! Kernel debug logging (`xlb run --kernel-log LEVEL`): the program writes aya-log
//! records only when `Config::log_level` allows (off by default: the calls are
//! skipped); the daemon reads them and logs them through `tracing` under the target
//! `xlb::kernel`.

use std::str::FromStr;

use anyhow::{Result, anyhow};
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;
use tracing::warn;

use super::Metrics;
use crate::kernel::Datapath;

/// `--kernel-log` levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelLog {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl KernelLog {
    /// The `Config::log_level` value.
    pub fn level(self) -> u32 {
        match self {
            KernelLog::Off => lb_common::LOG_OFF,
            KernelLog::Error => lb_common::LOG_ERROR,
            KernelLog::Warn => lb_common::LOG_WARN,
            KernelLog::Info => lb_common::LOG_INFO,
            KernelLog::Debug => lb_common::LOG_DEBUG,
            KernelLog::Trace => lb_common::LOG_TRACE,
        }
    }
}

impl FromStr for KernelLog {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        <Self as clap::ValueEnum>::from_str(s, true).map_err(|_| {
            anyhow!("'{s}' is not a kernel log level: use off, error, warn, info, debug or trace")
        })
    }
}

/// Forwards aya-log records to tracing.
struct ToTracing(&'static Metrics);

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        self.0.kernel_log_record();
        let msg = name_codes(&record.args().to_string());
        match record.level() {
            log::Level::Error => tracing::error!(target: "xlb::kernel", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "xlb::kernel", "{msg}"),
            log::Level::Info => tracing::info!(target: "xlb::kernel", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "xlb::kernel", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "xlb::kernel", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// The program logs decisions as numbers (see lb-ebpf/src/klog.rs): name them.
pub fn name_codes(msg: &str) -> String {
    let Some(rest) = msg.strip_prefix("decision: ") else {
        return msg.to_string();
    };
    let mut out = String::from("decision:");
    for kv in rest.split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let n: usize = v.parse().unwrap_or(usize::MAX);
        let named = match k {
            "stage" => ["firewall", "balancer"].get(n).copied(),
            "reason" => lb_common::Reason::ALL.get(n).map(|r| r.name()),
            "verdict" => lb_common::Verdict::ALL.get(n).map(|v| v.name()),
            _ => None,
        };
        out.push_str(&format!(" {k}={}", named.unwrap_or(v)));
    }
    out
}

/// Takes the program's log buffer and forwards its records until the task is dropped.
pub fn start(dp: &mut Datapath, metrics: &'static Metrics) -> Result<tokio::task::JoinHandle<()>> {
    let logger = EbpfLogger::init_with_logger(dp.ebpf_mut(), ToTracing(metrics))
        .map_err(|e| anyhow!("starting the kernel logger: {e}"))?;
    // SAFETY: the logger owns its ring buffer's fd, open and unchanged while it lives,
    // and the AsyncFd owns the logger.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("polling the kernel log buffer: {}", e.into_parts().1))?;
    Ok(tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    warn!("kernel log: {e}");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn decisions_are_named() {
        assert_eq!(
            super::name_codes("decision: stage=0 reason=3 verdict=1"),
            "decision: stage=firewall reason=prefix_deny verdict=drop"
        );
        assert_eq!(super::name_codes("packet: x"), "packet: x");
    }
}
