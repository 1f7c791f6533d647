//! Sampled dropped-packet events from the kernel (MAP_EVENTS, a ring buffer): the
//! program sends one drop in `--drop-sample` per CPU; the daemon logs them with a rate
//! limit (a token bucket), counts what it logged and suppressed, and says now and then
//! how many it suppressed.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use lb_common::{DropEvent, FAMILY_V4, FAMILY_V6, Reason};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::Metrics;

/// How often suppressed events are summed up in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// A token bucket: `rate` events a second, bursts of `rate`.
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: u32) -> Self {
        RateLimit {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    pub fn allow_at(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An event's addresses (None when the parser did not get to them).
pub fn addresses(e: &DropEvent) -> Option<(IpAddr, IpAddr)> {
    match e.family {
        FAMILY_V4 => Some((
            IpAddr::from(<[u8; 4]>::try_from(&e.src.bytes()[..4]).ok()?),
            IpAddr::from(<[u8; 4]>::try_from(&e.dst.bytes()[..4]).ok()?),
        )),
        FAMILY_V6 => Some((IpAddr::from(e.src.bytes()), IpAddr::from(e.dst.bytes()))),
        _ => None,
    }
}

fn log_event(e: &DropEvent, sample: u32) {
    let reason = Reason::ALL
        .get(e.reason as usize)
        .map_or("unknown", |r| r.name());
    match addresses(e) {
        Some((src, dst)) => info!(
            target: "xlb::drop",
            reason,
            src = %src,
            dst = %dst,
            src_port = e.src_port,
            dst_port = e.dst_port,
            proto = e.proto,
            bytes = e.len,
            sample,
            "dropped packet"
        ),
        None => info!(
            target: "xlb::drop",
            reason,
            bytes = e.len,
            sample,
            "dropped packet (malformed before the addresses)"
        ),
    }
}

/// Reads events until the task is dropped; each also goes to the flow records'
/// recorder, if there is one (IPFIX drop records).
pub async fn run(
    ring: RingBuf<MapData>,
    metrics: &'static Metrics,
    sample: u32,
    rate: u32,
    recorder: Option<std::sync::Arc<std::sync::Mutex<super::flows::Recorder>>>,
) {
    // SAFETY: the ring buffer owns its map fd, open and unchanged while it lives, and
    // the AsyncFd owns the ring buffer.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("drop events: cannot poll the ring buffer: {e}");
            return;
        }
    };
    let mut limit = RateLimit::new(rate);
    let (mut suppressed, mut summary) = (0u64, Instant::now());
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!("drop events: {e}");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<DropEvent>() {
                continue;
            }
            let e: DropEvent =
                bytemuck::pod_read_unaligned(&item[..std::mem::size_of::<DropEvent>()]);
            drop(item);
            if let (Some(r), Some(addrs)) = (&recorder, addresses(&e)) {
                r.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .drop_event(&e, addrs);
            }
            let now = Instant::now();
            if limit.allow_at(now) {
                log_event(&e, sample);
                metrics.drop_event(true);
            } else {
                suppressed += 1;
                metrics.drop_event(false);
            }
            if suppressed > 0 && now.duration_since(summary) >= SUMMARY_EVERY {
                warn!(
                    target: "xlb::drop",
                    suppressed,
                    "drop events suppressed by the log rate limit ({rate} a second)"
                );
                suppressed = 0;
                summary = now;
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(5);
        let burst = (0..20).filter(|_| l.allow_at(t0)).count();
        assert_eq!(burst, 5);
        assert!(l.allow_at(t0 + Duration::from_millis(200)));
        assert!(!l.allow_at(t0 + Duration::from_millis(200)));
    }

    #[test]
    fn addresses_of_an_event() {
        let e = DropEvent {
            src: lb_common::addr16_v4([192, 0, 2, 166]),
            dst: lb_common::addr16_v4([198, 51, 100, 1]),
            family: FAMILY_V4,
            ..Default::default()
        };
        let (s, d) = addresses(&e).unwrap();
        assert_eq!(s.to_string(), "192.0.2.166");
        assert_eq!(d.to_string(), "198.51.100.1");
        assert!(addresses(&DropEvent::default()).is_none());
    }
}
