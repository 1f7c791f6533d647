//! File descriptors: the daemon raises its limit at start, and every listener caps its
//! connections, so that clients (a scraper left open a thousand times, say) can never
//! take the descriptors the health checks, the kernel's maps and the control socket
//! need. An accept that fails (EMFILE, ENFILE, ...) is retried after a pause, never a
//! reason to stop serving.

use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How long a listener waits after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Descriptors kept for everything that is not a client connection: health-check
/// probes, maps and links, the kernel log, files being read.
pub const RESERVE: u64 = 1024;

/// The limit the daemon asks for (the kernel's `nr_open` caps it).
const WANT: u64 = 1 << 20;

/// Connections each listener serves at once, from the descriptors there are.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub control: usize,
    pub metrics: usize,
}

/// The listeners' caps for a descriptor limit: what the reserve leaves, a quarter to
/// the control socket (at most 4096), an eighth to `/metrics` (at most 512).
pub fn caps_for(limit: u64) -> Caps {
    let reserve = RESERVE.min(limit / 2);
    let budget = limit.saturating_sub(reserve);
    Caps {
        control: (budget / 4).clamp(8, super::socket::MAX_CONNECTIONS as u64) as usize,
        metrics: (budget / 8).clamp(4, crate::metrics::http::MAX_CONNECTIONS as u64) as usize,
    }
}

/// Raises the descriptor limit as far as allowed (root may raise the hard limit), and
/// gives the listeners' caps for it; says if they and the descriptors the https service
/// can hold (`https`: clients, their upstreams, idle pools) could still run it out.
pub fn raise_limit(https: Option<usize>) -> Caps {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(WANT);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return caps_for(1024);
    }
    let target = WANT.min(nr_open).max(lim.rlim_cur);
    let wanted = libc::rlimit {
        rlim_cur: target,
        rlim_max: target.max(lim.rlim_max),
    };
    // SAFETY: setrlimit reads `wanted`; a refusal leaves the limit as it was.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 || {
        // Not allowed above the hard limit: up to it, then.
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 }
    };
    let now = limit().unwrap_or(lim.rlim_cur);
    let caps = caps_for(now);
    if raised {
        info!(descriptors = now, ?caps, "descriptor limit");
    }
    let clients = (caps.control + caps.metrics + https.unwrap_or(0)) as u64;
    if clients + RESERVE.min(now / 2) > now {
        warn!(
            descriptors = now,
            clients,
            "the https service's limits (max_connections, each with an upstream connection, and max_idle_per_backend) leave too few descriptors for health checks and the control socket: lower them or raise the limit"
        );
    }
    caps
}

/// The soft descriptor limit now.
fn limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// A warning said at most once a second (a failing accept loop would flood the log).
pub struct Throttled {
    what: &'static str,
    last: Option<Instant>,
    quiet: u64,
}

impl Throttled {
    pub fn new(what: &'static str) -> Self {
        Throttled {
            what,
            last: None,
            quiet: 0,
        }
    }

    pub fn warn(&mut self, e: &std::io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.quiet += 1;
            return;
        }
        warn!(
            listener = self.what,
            suppressed = self.quiet,
            "accept failed, retrying: {e}"
        );
        self.last = Some(now);
        self.quiet = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_the_reserve() {
        let small = caps_for(512);
        assert_eq!((small.control, small.metrics), (64, 32));
        let big = caps_for(1 << 20);
        assert_eq!((big.control, big.metrics), (4096, 512));
        assert!(caps_for(16).control >= 8);
    }
}
