//! The legitimate clients of the SYN-flood rows: real TCP connections (the kernel's
//! stack in the client namespace), one GET each, timed from connect() to its return.

use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use xlb_tests::netns::{enter, http_get};

/// How long a connect (and its GET) may take: one SYN retransmission (Linux's first is
/// after 1 s, its second 2 s later) is a slow success, not a failure.
const WAIT: Duration = Duration::from_secs(3);
/// Each client's pause between two connections: 200 clients at one connection every
/// 200 ms are 1000 new connections a second, what the 2 vCPUs carry beside the flood.
const PACE: Duration = Duration::from_millis(200);
/// Connections per client at most (a bound on top of the deadline).
const MAX_PER_CLIENT: usize = 1000;

/// What a set of clients saw.
#[derive(Clone, Default)]
pub struct Legit {
    pub tried: u64,
    pub ok: u64,
    /// Connect times of the successful connections, µs, sorted.
    pub connect_us: Vec<u64>,
}

impl Legit {
    pub fn success_pct(&self) -> f64 {
        100.0 * self.ok as f64 / self.tried.max(1) as f64
    }

    /// The `p`-th percentile of the successful connections' connect times, ms.
    pub fn pct_ms(&self, p: f64) -> Option<f64> {
        let n = self.connect_us.len();
        if n == 0 {
            return None;
        }
        let i = ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1;
        Some(self.connect_us[i] as f64 / 1000.0)
    }
}

/// One connection and one GET: the connect time, if the whole exchange worked.
fn one(addr: SocketAddr) -> Option<Duration> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, WAIT).ok()?;
    let took = t0.elapsed();
    s.set_read_timeout(Some(WAIT)).ok()?;
    s.set_write_timeout(Some(WAIT)).ok()?;
    let body = http_get(&mut s).ok()?;
    (!body.is_empty()).then_some(took)
}

/// `n` clients in the namespace at `ns`, each connecting to `addr` every PACE until `secs` seconds have
/// passed (a connection started then is finished, at most WAIT later).
pub fn run(ns: PathBuf, addr: SocketAddr, n: usize, secs: f64) -> anyhow::Result<Legit> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let path = ns.clone();
            std::thread::spawn(move || -> anyhow::Result<Legit> {
                enter(&path)?;
                // Spread the clients' first connections over one pace.
                std::thread::sleep(PACE.mul_f64(i as f64 / n as f64));
                let mut l = Legit::default();
                while Instant::now() < deadline && (l.tried as usize) < MAX_PER_CLIENT {
                    l.tried += 1;
                    if let Some(t) = one(addr) {
                        l.ok += 1;
                        l.connect_us.push(t.as_micros() as u64);
                    }
                    std::thread::sleep(PACE);
                }
                Ok(l)
            })
        })
        .collect();
    let mut all = Legit::default();
    for t in threads {
        let l = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.tried += l.tried;
        all.ok += l.ok;
        all.connect_us.extend(l.connect_us);
    }
    all.connect_us.sort_unstable();
    Ok(all)
}
