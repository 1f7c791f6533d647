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

/// Raises the descriptor limit as far as allowed (root may raise the hard limit), and
/// says if the listeners' caps (`https`: the https service's `max_connections`) could
/// still run it out.
pub fn raise_limit(https: Option<usize>) {
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
        return;
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
    if raised {
        info!(descriptors = now, "descriptor limit");
    }
    let clients = super::socket::MAX_CONNECTIONS as u64
        + crate::metrics::http::MAX_CONNECTIONS as u64
        + https.unwrap_or(0) as u64;
    if clients + RESERVE > now {
        warn!(
            descriptors = now,
            clients,
            "the listeners' connection caps (control, metrics, https max_connections) leave fewer than {RESERVE} descriptors for health checks: lower [tls] limits.max_connections or raise the limit"
        );
    }
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
