//! `cargo xtask bench --peers`: xlb beside the tools an operator would pick instead, on
//! the same namespace topology, with the same traffic, in one run.
//!
//! - Firewall: a flood from the attacker while the client keeps fetching a page from the
//!   edge. Peers: xlb, xdp-filter (exact source address, the most it can do), nftables
//!   (netdev ingress hook), iptables (raw PREROUTING), and the floor: an XDP program
//!   that drops everything. The flood is XDP frames injected at the switch port facing
//!   the edge (see `flood`: no skb until the stack needs one, as from a NIC), and the
//!   measure is CPU per frame of the packets' path (one CPU: generator, client,
//!   ksoftirqd), over interleaved rounds (median, min..max; "above floor" paired by
//!   round), plus the kernel's own run time of the XDP programs (bpf_stats).
//! - Layer-4 balancing: the client (wrk) against a service on three nginx backends,
//!   a new connection per request and keep-alive. Peers: xlb dsr / nat / fullnat,
//!   nftables DNAT (numgen), HAProxy in TCP mode, and two floors: plain routing to the
//!   same three backends (ECMP on the edge), and the same with an XDP_PASS program on
//!   x0 (what any XDP program costs on a veth). Balancer CPU = the machine's busy time
//!   per connection above a floor, also per packet the edge forwarded (x0's counters);
//!   xlb's is given above both floors, the target checked on the XDP one.
//! - TLS termination: xlb's https proxy beside nginx (new handshakes per second,
//!   keep-alive requests per second over HTTP/1.1 and h2, p99), the comparison of
//!   `cargo xtask bench --only https` (https_bench.rs), without testssl.sh.
//!
//! The peers' configurations are in tests/peers/.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
use clap::Parser;
use serde_json::json;
use xlb_tests::{
    https_bench,
    machine::Machine,
    netns::{Daemon, Netns, NsServer, Spawned, cleanup_stale, fill, http_get, in_ns, wait_until},
    packet::Pkt,
    topology::{Backends, Topology, attach_bench_xdp, backend_v4},
};

const FW_NFT: &str = include_str!("../../peers/firewall.nft");
const LB_NFT: &str = include_str!("../../peers/balancer.nft");
const HAPROXY: &str = include_str!("../../peers/haproxy.cfg");

const ATTACKER: &str = "192.0.2.166";
const EDGE: &str = "192.0.2.1";
const VIP: &str = "198.51.100.10";

#[derive(Parser)]
struct Args {
    /// Shorter runs (for a quick look; the numbers get noisier).
    #[arg(long)]
    quick: bool,
    /// Where to write the results (JSON) and the plot (SVG, same name).
    #[arg(long, default_value = "target/peers.json")]
    out: std::path::PathBuf,
    /// Only this part (for a quick look at one; `cargo xtask bench --peers` runs all).
    #[arg(long, value_enum)]
    only: Option<Part>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Part {
    Firewall,
    Balancer,
    Tls,
}

/// Busy CPU time of the whole machine so far (all CPUs; /proc/stat, USER_HZ ticks).
fn busy_ns() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let f: Vec<u64> = stat
        .lines()
        .next()
        .context("/proc/stat")?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f.get(7).copied().unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(busy * 1_000_000_000 / hz)
}

/// Total run time and runs of the loaded XDP programs whose names pass `pick`
/// (kernel.bpf_stats_enabled must be on).
fn bpf_run(pick: &dyn Fn(&str) -> bool) -> Result<(u64, u64)> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool json")?;
    let (mut ns, mut cnt) = (0, 0);
    for p in progs.as_array().into_iter().flatten() {
        if p["type"] == "xdp" && p["name"].as_str().is_some_and(pick) {
            ns += p["run_time_ns"].as_u64().unwrap_or(0);
            cnt += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok((ns, cnt))
}

// ---------------------------------------------------------------------------------------
// Firewall.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fw {
    Floor,
    Xlb,
    XdpFilter,
    Nftables,
    Iptables,
}

impl Fw {
    fn name(self) -> &'static str {
        match self {
            Fw::Floor => "floor: XDP drop-all",
            Fw::Xlb => "xlb",
            Fw::XdpFilter => "xdp-filter",
            Fw::Nftables => "nftables (netdev ingress)",
            Fw::Iptables => "iptables (raw PREROUTING)",
        }
    }

    /// Names of its XDP programs (for bpf_stats).
    fn xdp_names(self) -> Option<fn(&str) -> bool> {
        match self {
            Fw::Floor => Some(|n| n == "bench_drop"),
            Fw::Xlb => Some(|n| n == "xlb" || n == "xlb_balance"),
            Fw::XdpFilter => Some(|n| n.starts_with("xdpfilt") || n == "xdp_dispatcher"),
            _ => None,
        }
    }
}

/// One flood against one peer.
#[derive(Clone)]
struct FwRun {
    /// CPU ns of the packets' path per frame that reached x0.
    cpu_ns: f64,
    /// XDP run time per packet (bpf_stats), for XDP peers.
    bpf_ns: Option<f64>,
    ok: u64,
    tried: u64,
    sent: u64,
    /// Frames that reached x0 (the rest were refused by its full ring).
    arrived: u64,
}

/// A peer's runs, by round (None: that round failed).
struct FwRow {
    peer: Fw,
    runs: Vec<Option<FwRun>>,
}

/// What keeps a firewall peer in place until the row is measured.
enum Guard<'a> {
    Xlb {
        _daemon: Box<Daemon>,
    },
    Ebpf {
        _obj: Box<aya::Ebpf>,
    },
    /// A command that undoes the peer (xdp-filter's pins outlive the namespace).
    Undo(&'a Netns, &'static [&'static str]),
    Nothing,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Guard::Undo(ns, args) = self {
            let _ = ns.run(args);
        }
    }
}

fn install_fw(peer: Fw, t: &Topology) -> Result<Guard<'_>> {
    let e = &t.edge;
    Ok(match peer {
        Fw::Floor => Guard::Ebpf {
            _obj: Box::new(attach_bench_xdp(e, "x0", "bench_drop")?),
        },
        Fw::Xlb => {
            let d = Daemon::start(e, "x0", &t.dir, &[])?;
            let out = d.cli(&["fw", "deny", &format!("{ATTACKER}/32")]);
            if !out.status.success() {
                bail!("xlb fw deny: {}", String::from_utf8_lossy(&out.stderr));
            }
            Guard::Xlb {
                _daemon: Box::new(d),
            }
        }
        Fw::XdpFilter => {
            e.run(&["xdp-filter", "load", "x0", "--mode", "native"])?;
            let undo = Guard::Undo(e, &["xdp-filter", "unload", "--all", "x0"]);
            e.run(&["xdp-filter", "ip", ATTACKER, "--mode", "src"])?;
            undo
        }
        Fw::Nftables => {
            let file = t.dir.path.join("firewall.nft");
            std::fs::write(
                &file,
                fill(FW_NFT, &[("iface", "x0"), ("attacker", ATTACKER)]),
            )?;
            e.run(&["nft", "-f", file.to_str().unwrap()])?;
            Guard::Nothing
        }
        Fw::Iptables => {
            e.run(&[
                "iptables",
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-s",
                ATTACKER,
                "-j",
                "DROP",
            ])?;
            Guard::Nothing
        }
    })
}

/// CPU time (ns) of a task so far, from its schedstat (nanoseconds; stat counts 10 ms
/// ticks, too coarse for a flood of a fraction of a second).
fn schedstat_ns(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (ns) of the ksoftirqd threads so far: the receive path runs there when it
/// is not run right away in the sender's context.
fn ksoftirqd_ns() -> u64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .map(|e| schedstat_ns(&e.path()))
        .sum()
}

/// CPU time (ns) of a thread of this process so far.
fn thread_ns(tid: i32) -> u64 {
    schedstat_ns(std::path::Path::new(&format!("/proc/self/task/{tid}")))
}

/// The CPU that the flood and the client run on (see `pin`).
const FLOOD_CPU: usize = 0;

/// Pins the calling thread to FLOOD_CPU. x0's NAPI runs on the CPU that scheduled it:
/// the flood's and the client's both, once they share a CPU, so every frame is taken
/// off x0's ring where it was put (no ring overflow while the other CPU polls) and the
/// softirqs run in one of the two threads or in that CPU's ksoftirqd, all counted.
fn pin() -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(FLOOD_CPU, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .context(format!("pinning a thread to CPU {FLOOD_CPU}"));
        }
    }
    Ok(())
}

/// A MAC address from its text form (`aa:bb:cc:dd:ee:ff`).
fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC address {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC address {text:?}"))
}

/// Frames the generator hands to the transmit path at a time (the kernel's live-frames
/// batch: one flush, then the softirqs run, per batch).
const BATCH: u32 = 64;
/// Frames per BPF_PROG_TEST_RUN call: between calls the flood checks its deadline.
const CHUNK: u64 = 100_000;

/// What one flood did.
struct Flood {
    /// Frames generated.
    sent: u64,
    /// CPU ns of the packets' path (the sending thread + ksoftirqd).
    cpu_ns: u64,
}

/// Sends `n` copies of a 60-byte Ethernet+IPv4+UDP frame from the attacker to the edge,
/// injected at the switch port facing the edge (`sw-x`) as XDP frames: `bench_tx`
/// (XDP_TX) run by BPF_PROG_TEST_RUN in live-frames mode, as if it arrived on sw-x,
/// transmits each frame out of sw-x, so x0 receives it as a NIC driver would, in a page
/// and without an skb: an XDP peer runs on it as is, the others get an skb built by
/// the veth (x0 has GRO on, so its NAPI takes XDP frames with no program attached) and
/// then run in the stack. A frame injected as an skb instead (an AF_PACKET socket, or
/// a UDP socket) reaches x0 as an skb, which veth copies into a fresh page before any
/// XDP program sees it: a cost a NIC does not have, larger than the whole drop, which
/// put nftables below the XDP floor. The generator costs a few tens of ns a frame
/// (no syscall, socket or bridge per frame). The softirqs run when each batch
/// re-enables them, in the sender's context, so the thread's CPU time plus ksoftirqd's
/// covers the generator, the veth and the edge's receive path up to the drop, and
/// leaves out whatever else the machine is doing.
fn flood(t: &Topology, n: u64, client_tid: i32) -> Result<Flood> {
    let mut frame = Pkt::udp(ATTACKER, EDGE, 40000, 9).payload(&[0; 18]).build();
    frame[0..6].copy_from_slice(&parse_mac(
        &t.edge.run(&["cat", "/sys/class/net/x0/address"])?,
    )?);
    frame[6..12].copy_from_slice(&parse_mac(
        &t.attacker.run(&["cat", "/sys/class/net/a0/address"])?,
    )?);
    in_ns(&t.switch, move || -> Result<Flood> {
        pin()?;
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        let mut obj = aya::Ebpf::load(xlb::object::BENCH).context("loading the bench object")?;
        let prog: &mut aya::programs::Xdp = obj
            .program_mut("bench_tx")
            .context("no bench_tx in the bench object")?
            .try_into()?;
        prog.load().context("loading bench_tx")?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"sw-x".as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error()).context("sw-x's ifindex");
        }
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue, egress.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        let cpu = || thread_ns(me) + thread_ns(client_tid) + ksoftirqd_ns();
        let cpu0 = cpu();
        while sent < n && Instant::now() < deadline {
            let repeat = (n - sent).min(CHUNK);
            prog.test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat: repeat as u32,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .with_context(|| format!("live-frames test run after {sent} frames"))?;
            sent += repeat;
        }
        Ok(Flood {
            sent,
            cpu_ns: cpu() - cpu0,
        })
    })?
}

/// x0's counter `which` (rx_packets, tx_packets) in the edge (read there: each
/// `ip netns exec` has its own /sys).
fn x0_counter(edge: &Netns, which: &str) -> Result<u64> {
    let path = format!("/sys/class/net/x0/statistics/{which}");
    edge.run(&["cat", &path])?
        .trim()
        .parse()
        .with_context(|| format!("reading {path} in the edge"))
}

/// XDP frames sw-x has handed to x0's ring so far (the flood's frames that arrived; a
/// full ring refuses the rest, counted as errors instead).
fn frames_to_x0(switch: &Netns) -> Result<u64> {
    let stats = switch.run(&["ethtool", "-S", "sw-x"])?;
    let mut n = 0;
    for line in stats.lines() {
        if let Some((key, v)) = line.trim().split_once(':')
            && key.ends_with("_xdp_xmit")
        {
            n += v.trim().parse::<u64>().context("ethtool -S sw-x")?;
        }
    }
    Ok(n)
}

/// One measurement of one peer: a fresh topology, the peer installed, one flood.
fn firewall_run(peer: Fw, packets: u64) -> Result<FwRun> {
    let t = Topology::build("peer-fw", 0, 8080, Backends::ViaEdge)?;
    let _page = NsServer::http(&t.edge, &format!("{EDGE}:80"), "edge")?;
    // NAPI on x0 in every row: the XDP frames of the flood need it when no XDP program
    // runs there (see flood).
    t.edge.run(&["ethtool", "-K", "x0", "gro", "on"])?;
    let guard = install_fw(peer, &t)?;
    // The client keeps fetching the edge's page while the flood runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let client_path = t.client.path();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || -> Result<(u64, u64)> {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        xlb_tests::netns::enter(&client_path)?;
        pin()?;
        let (mut ok, mut tried) = (0, 0);
        let addr = format!("{EDGE}:80").parse().unwrap();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && tried < 100_000 {
            tried += 1;
            let got = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).and_then(
                |mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(1)))?;
                    http_get(&mut s).map_err(std::io::Error::other)
                },
            );
            if got.is_ok_and(|b| b == "edge") {
                ok += 1;
            }
        }
        Ok((ok, tried))
    });
    let client_tid = tid_rx.recv().context("the client thread's id")?;
    let pick = peer.xdp_names();
    let bpf0 = match pick {
        Some(p) => Some(bpf_run(&p)?),
        None => None,
    };
    let to_x0 = frames_to_x0(&t.switch)?;
    let fl = flood(&t, packets, client_tid);
    let arrived = frames_to_x0(&t.switch)? - to_x0;
    let bpf_ns = match (pick, bpf0) {
        (Some(p), Some((ns0, c0))) => {
            let (ns1, c1) = bpf_run(&p)?;
            Some((ns1 - ns0) as f64 / (c1 - c0).max(1) as f64)
        }
        _ => None,
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, tried) = client.join().map_err(|_| anyhow::anyhow!("client"))??;
    let fl = fl?;
    drop(guard);
    Ok(FwRun {
        // Per frame that reached x0: when x0's ring is full (its NAPI deferred to
        // ksoftirqd while the generator runs on), the refused frames cost the generator
        // a few ns each, which this spreads over the arrived ones (a few ns at most).
        cpu_ns: fl.cpu_ns as f64 / arrived.max(1) as f64,
        bpf_ns,
        ok,
        tried,
        sent: fl.sent,
        arrived,
    })
}

/// Median, min and max (None for no values).
fn median_range(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((med, v[0], v[n - 1]))
}

/// Every peer once per round, the order rotated each round, so slow drifts of the
/// machine (other load, thermal, page cache) hit every peer alike.
fn firewall_rounds(rounds: usize, packets: u64) -> Vec<FwRow> {
    let peers = [
        Fw::Floor,
        Fw::Xlb,
        Fw::XdpFilter,
        Fw::Nftables,
        Fw::Iptables,
    ];
    let mut rows: Vec<FwRow> = peers
        .iter()
        .map(|&peer| FwRow {
            peer,
            runs: vec![None; rounds],
        })
        .collect();
    for round in 0..rounds {
        for k in 0..peers.len() {
            let i = (k + round) % peers.len();
            let peer = peers[i];
            eprintln!(
                "firewall: round {}/{rounds}: {} ...",
                round + 1,
                peer.name()
            );
            match firewall_run(peer, packets) {
                Ok(r) => rows[i].runs[round] = Some(r),
                Err(e) => eprintln!("firewall: {} failed: {e:#}", peer.name()),
            }
        }
    }
    rows.retain(|r| r.runs.iter().any(Option::is_some));
    rows
}

impl FwRow {
    fn done(&self) -> impl Iterator<Item = &FwRun> {
        self.runs.iter().flatten()
    }

    fn cpu(&self) -> Option<(f64, f64, f64)> {
        median_range(&self.done().map(|r| r.cpu_ns).collect::<Vec<_>>())
    }

    /// Above the floor of the same round, round by round (paired: a noisy round moves
    /// both).
    fn above(&self, floor: Option<&FwRow>) -> Option<(f64, f64, f64)> {
        let floor = floor?;
        let d: Vec<f64> = self
            .runs
            .iter()
            .zip(&floor.runs)
            .filter_map(|(p, f)| Some(p.as_ref()?.cpu_ns - f.as_ref()?.cpu_ns))
            .collect();
        median_range(&d)
    }

    fn bpf(&self) -> Option<f64> {
        median_range(&self.done().filter_map(|r| r.bpf_ns).collect::<Vec<_>>()).map(|s| s.0)
    }

    fn sum(&self, f: impl Fn(&FwRun) -> u64) -> u64 {
        self.done().map(f).sum()
    }
}

// ---------------------------------------------------------------------------------------
// Layer-4 balancing.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lb {
    Floor,
    XdpFloor,
    XlbDsr,
    XlbNat,
    XlbFullnat,
    Nftables,
    Haproxy,
}

impl Lb {
    fn name(self) -> &'static str {
        match self {
            Lb::Floor => "floor: routed (ECMP, 3 backends)",
            Lb::XdpFloor => "floor: routed + XDP_PASS on x0",
            Lb::XlbDsr => "xlb dsr",
            Lb::XlbNat => "xlb nat",
            Lb::XlbFullnat => "xlb fullnat",
            Lb::Nftables => "nftables DNAT",
            Lb::Haproxy => "HAProxy (TCP mode)",
        }
    }
}

struct Wrk {
    rps: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

/// Parses wrk's `--latency` report.
fn parse_wrk(out: &str) -> Result<Wrk> {
    let num = |s: &str| -> f64 {
        let t = s.trim();
        let (v, scale) = if let Some(v) = t.strip_suffix("us") {
            (v, 0.001)
        } else if let Some(v) = t.strip_suffix("ms") {
            (v, 1.0)
        } else if let Some(v) = t.strip_suffix('s') {
            (v, 1000.0)
        } else {
            (t, 1.0)
        };
        v.parse::<f64>().unwrap_or(f64::NAN) * scale
    };
    let mut w = Wrk {
        rps: f64::NAN,
        p99_ms: f64::NAN,
        requests: 0,
        errors: 0,
    };
    for line in out.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(v) = l.strip_prefix("99%") {
            w.p99_ms = num(v);
        } else if l.contains("requests in") {
            w.requests = l.split_whitespace().next().unwrap_or("0").parse()?;
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            w.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    if w.rps.is_nan() {
        bail!("no result in wrk's output: {out}");
    }
    Ok(w)
}

struct LbRow {
    peer: Lb,
    conn: Wrk,
    keepalive: Wrk,
    /// Machine busy time per request (ns), new connection per request.
    cpu_ns_per_conn: f64,
    /// Packets the edge received and sent on x0 per connection (each forwarded packet
    /// is received once and sent once; HAProxy sends its own).
    rx_per_conn: f64,
    tx_per_conn: f64,
    /// The balancer's XDP programs' run time per request (xlb rows).
    bpf_ns_per_conn: Option<f64>,
}

enum LbGuard {
    Xlb { _daemon: Box<Daemon> },
    Ebpf { _obj: Box<aya::Ebpf> },
    Proc { _proc: Box<Spawned> },
    Nothing,
}

fn install_lb(peer: Lb, t: &Topology) -> Result<(LbGuard, String)> {
    let e = &t.edge;
    let b: Vec<String> = (0..3).map(backend_v4).collect();
    let url = format!("http://{VIP}/");
    Ok(match peer {
        Lb::Floor | Lb::XdpFloor => {
            // Plain routing, spread like the peers spread: the edge routes the service
            // address to the three backends (ECMP, hashed on the 5-tuple, so a
            // connection stays on one), which hold it on their loopback and answer
            // through the edge. Same client, same URL, same backends as every peer: only
            // the balancing work is missing.
            e.run(&["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"])?;
            let mut route = vec!["ip", "route", "add", VIP, "proto", "static"];
            for a in &b {
                route.extend(["nexthop", "via", a.as_str(), "dev", "x0"]);
            }
            e.run(&route)?;
            for ns in &t.backends {
                ns.run(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            }
            // Resolved before measuring, like xlb's backends (adding one resolves it).
            for a in &b {
                e.run(&["ping", "-c1", "-W2", a])?;
            }
            t.wait_neighbours(&b)?;
            if peer == Lb::XdpFloor {
                // What any XDP program costs on a veth (see balancer_row).
                let obj = attach_bench_xdp(e, "x0", "bench_floor")?;
                (
                    LbGuard::Ebpf {
                        _obj: Box::new(obj),
                    },
                    url,
                )
            } else {
                (LbGuard::Nothing, url)
            }
        }
        Lb::XlbDsr | Lb::XlbNat | Lb::XlbFullnat => {
            let d = Daemon::start(e, "x0", &t.dir, &[])?;
            let mode = match peer {
                Lb::XlbDsr => "dsr",
                Lb::XlbNat => "nat",
                _ => "fullnat",
            };
            let svc = format!("{VIP}:80/tcp");
            let mut add = vec!["vip", "add", svc.as_str(), "--mode", mode];
            if peer == Lb::XlbFullnat {
                add.extend(["--snat", "203.0.113.1"]);
            }
            let mut cmds: Vec<Vec<String>> = vec![add.iter().map(|s| s.to_string()).collect()];
            for a in &b {
                cmds.push(
                    ["backend", "add", &svc, &format!("{a}:80")]
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                );
            }
            for c in cmds {
                let args: Vec<&str> = c.iter().map(String::as_str).collect();
                let out = d.cli(&args);
                if !out.status.success() {
                    bail!("xlb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
            t.wait_neighbours(&b)?;
            (
                LbGuard::Xlb {
                    _daemon: Box::new(d),
                },
                url,
            )
        }
        Lb::Nftables => {
            let file = t.dir.path.join("balancer.nft");
            std::fs::write(
                &file,
                fill(
                    LB_NFT,
                    &[("vip", VIP), ("b0", &b[0]), ("b1", &b[1]), ("b2", &b[2])],
                ),
            )?;
            e.run(&["nft", "-f", file.to_str().unwrap()])?;
            (LbGuard::Nothing, url)
        }
        Lb::Haproxy => {
            e.run(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            let file = t.dir.path.join("haproxy.cfg");
            let dir = t.dir.path.to_str().unwrap();
            std::fs::write(
                &file,
                fill(
                    HAPROXY,
                    &[
                        ("vip", VIP),
                        ("b0", &b[0]),
                        ("b1", &b[1]),
                        ("b2", &b[2]),
                        ("dir", dir),
                    ],
                ),
            )?;
            let mut p = Spawned::start(
                e,
                &["haproxy", "-db", "-f", file.to_str().unwrap()],
                &t.dir.path.join("haproxy.log"),
            )?;
            let c = &t.client;
            wait_until("haproxy", Duration::from_secs(10), || {
                c.ok(&["curl", "-sf", "-o", "/dev/null", &url])
            })?;
            p.check_running("haproxy")?;
            (LbGuard::Proc { _proc: Box::new(p) }, url)
        }
    })
}

fn wrk(client: &Netns, url: &str, secs: u64, close: bool) -> Result<Wrk> {
    let d = format!("{secs}s");
    let mut args = vec!["wrk", "-t1", "-c16", "-d", &d, "--latency"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    parse_wrk(&client.run(&args)?)
}

fn balancer_row(peer: Lb, secs: u64) -> Result<LbRow> {
    let routing = match peer {
        Lb::XlbDsr => Backends::Direct(&[VIP]),
        Lb::XlbFullnat => Backends::LocalOnly,
        _ => Backends::ViaEdge,
    };
    // The harness's own HTTP servers listen on 8080; the measured backends are nginx on 80.
    let t = Topology::build("peer-lb", 3, 8080, routing)?;
    // The edge forwards out the interface it received on (one arm): no ICMP redirects,
    // which the kernel would send the client for every peer that routes (floors,
    // nftables), costing CPU and, once the client obeys one, taking the edge out of the
    // path.
    for k in [
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.x0.send_redirects=0",
    ] {
        t.edge.run(&["sysctl", "-qw", k])?;
    }
    let _nginx = t.nginx_backends()?;
    let (guard, url) = install_lb(peer, &t)?;
    // Every backend answers through the balancer before anything is measured.
    let c = &t.client;
    wait_until(peer.name(), Duration::from_secs(10), || {
        c.ok(&["curl", "-sf", "-o", "/dev/null", &url])
    })?;
    let pick = |n: &str| n == "xlb" || n == "xlb_balance";
    let xlb = matches!(peer, Lb::XlbDsr | Lb::XlbNat | Lb::XlbFullnat);
    let (rx0, tx0) = (
        x0_counter(&t.edge, "rx_packets")?,
        x0_counter(&t.edge, "tx_packets")?,
    );
    let bpf0 = bpf_run(&pick)?;
    let cpu0 = busy_ns()?;
    let conn = wrk(&t.client, &url, secs, true)?;
    let cpu1 = busy_ns()?;
    let bpf1 = bpf_run(&pick)?;
    let (rx1, tx1) = (
        x0_counter(&t.edge, "rx_packets")?,
        x0_counter(&t.edge, "tx_packets")?,
    );
    let keepalive = wrk(&t.client, &url, secs, false)?;
    drop(guard);
    let per = conn.requests.max(1) as f64;
    Ok(LbRow {
        peer,
        cpu_ns_per_conn: (cpu1 - cpu0) as f64 / per,
        rx_per_conn: (rx1 - rx0) as f64 / per,
        tx_per_conn: (tx1 - tx0) as f64 / per,
        bpf_ns_per_conn: xlb.then(|| (bpf1.0 - bpf0.0) as f64 / per),
        conn,
        keepalive,
    })
}

impl LbRow {
    fn is_xlb(&self) -> bool {
        matches!(self.peer, Lb::XlbDsr | Lb::XlbNat | Lb::XlbFullnat)
    }

    fn is_floor(&self) -> bool {
        matches!(self.peer, Lb::Floor | Lb::XdpFloor)
    }
}

/// The two floors' machine busy time per connection (NaN if a floor failed).
struct LbFloors {
    /// Plain routing: what every peer's numbers are taken above.
    routed: f64,
    /// Plain routing with an XDP_PASS program on x0: routing plus the veth's XDP tax.
    xdp: f64,
}

impl LbFloors {
    fn of(lb: &[LbRow]) -> Self {
        let busy = |p| {
            lb.iter()
                .find(|r| r.peer == p)
                .map_or(f64::NAN, |r| r.cpu_ns_per_conn)
        };
        LbFloors {
            routed: busy(Lb::Floor),
            xdp: busy(Lb::XdpFloor),
        }
    }

    /// A row's CPU above `floor` per connection, spread over the packets it forwarded
    /// per connection (what the edge sent on x0).
    fn per_packet(&self, r: &LbRow, floor: f64) -> f64 {
        (r.cpu_ns_per_conn - floor) / r.tx_per_conn.max(1e-9)
    }

    /// What an XDP program costs on a veth per forwarded packet, beyond its own run
    /// time: the XDP floor above the routed one.
    fn tax(&self, lb: &[LbRow]) -> Option<f64> {
        let r = lb.iter().find(|r| r.peer == Lb::XdpFloor)?;
        Some(self.per_packet(r, self.routed)).filter(|v| v.is_finite())
    }
}

/// Prints the balancer table and the targets; returns the targets (for the JSON).
fn print_balancer(lb: &[LbRow], floors: &LbFloors, secs: u64) -> Vec<serde_json::Value> {
    let tax = floors.tax(lb);
    println!("\nLayer-4 balancing to three nginx backends, wrk -t1 -c16, {secs} s per column.");
    println!(
        "\"busy\" is the machine's busy CPU per connection (client, edge, backends). The routed \
         floor forwards to the same three backends with no balancing (ECMP on the edge); the \
         balancer's CPU is the busy time above it, per connection (µs/c) and per packet the \
         edge forwarded (pkt/c: packets sent on x0 per connection). On veth any XDP program \
         pays a per-packet tax a NIC driver does not (veth copies cloned TCP skbs into XDP \
         buffers, XDP_TX goes through the peer's NAPI); the second floor, an XDP_PASS program \
         on x0, measures it ({} ns per forwarded packet here): \"ns/pkt xdp\" is xlb above \
         that floor, its own work; \"ns/pkt raw\" is above the routed floor.\n",
        tax.map_or("-".into(), |v| format!("{v:.0}"))
    );
    println!(
        "| {:<32} | {:>7} | {:>6} | {:>8} | {:>6} | {:>5} | {:>7} | {:>7} | {:>10} | {:>10} | {:>8} | {:>6} |",
        "peer",
        "conn/s",
        "p99 ms",
        "req/s ka",
        "p99 ms",
        "pkt/c",
        "busy µs/c",
        "µs/c",
        "ns/pkt raw",
        "ns/pkt xdp",
        "XDP µs/c",
        "errors"
    );
    println!(
        "|{:-<34}|{:->9}|{:->8}|{:->10}|{:->8}|{:->7}|{:->11}|{:->9}|{:->12}|{:->12}|{:->10}|{:->8}|",
        "", "", "", "", "", "", "", "", "", "", "", ""
    );
    for r in lb {
        println!(
            "| {:<32} | {:>7.0} | {:>6.2} | {:>8.0} | {:>6.2} | {:>5.1} | {:>9.1} | {:>7.1} | {:>10.0} | {:>10} | {:>8} | {:>6} |",
            r.peer.name(),
            r.conn.rps,
            r.conn.p99_ms,
            r.keepalive.rps,
            r.keepalive.p99_ms,
            r.tx_per_conn,
            r.cpu_ns_per_conn / 1000.0,
            (r.cpu_ns_per_conn - floors.routed) / 1000.0,
            floors.per_packet(r, floors.routed),
            if r.is_xlb() {
                format!("{:.0}", floors.per_packet(r, floors.xdp))
            } else {
                "-".into()
            },
            r.bpf_ns_per_conn
                .map_or("-".into(), |v| format!("{:.2}", v / 1000.0)),
            r.conn.errors + r.keepalive.errors,
        );
    }
    let get = |p: Lb| lb.iter().find(|r| r.peer == p);
    let haproxy = get(Lb::Haproxy).map_or(f64::NAN, |r| r.conn.rps);
    let nft = get(Lb::Nftables).map_or(f64::NAN, |r| floors.per_packet(r, floors.routed));
    println!(
        "\ntargets (same run): conn/s >= 2x HAProxy's; balancer CPU per forwarded packet <= 1/3 \
         of nftables'. The CPU target is checked on xlb's own work (\"ns/pkt xdp\": above the \
         XDP-on-veth floor) against nftables above the routed floor (nftables runs no XDP, so \
         it pays no veth XDP tax); the raw figure (xlb above the routed floor, veth tax \
         included) is printed beside it, with its own verdict."
    );
    // "1/N of" nftables'; a figure at or below its floor is noise, not a verdict.
    let share = |cpu: f64| -> (String, Option<bool>) {
        if cpu > 0.0 {
            let met = cpu * 3.0 <= nft;
            let text = format!(
                "{cpu:.0} ns = 1/{:.1} of nftables' {nft:.0} ns (<= 1/3): {}",
                nft / cpu,
                if met { "met" } else { "NOT met" }
            );
            (text, Some(met))
        } else {
            let text = format!("{cpu:.0} ns, not above its floor: noise, no verdict");
            (text, None)
        }
    };
    let mut out = Vec::new();
    for p in [Lb::XlbDsr, Lb::XlbNat, Lb::XlbFullnat] {
        let Some(r) = get(p) else { continue };
        let ratio = r.conn.rps / haproxy;
        let (own, raw) = (
            floors.per_packet(r, floors.xdp),
            floors.per_packet(r, floors.routed),
        );
        let ((own_text, own_ok), (raw_text, raw_ok)) = (share(own), share(raw));
        println!(
            "  {:<12} conn/s = {ratio:.2}x HAProxy (>= 2x): {}; CPU per forwarded packet above \
             the XDP floor {own_text}; raw {raw_text}",
            p.name(),
            if ratio >= 2.0 { "met" } else { "NOT met" },
        );
        out.push(json!({
            "peer": p.name(), "conn_vs_haproxy": ratio, "conn_met": ratio >= 2.0,
            "ns_per_packet_above_xdp_floor": own, "ns_per_packet_raw": raw,
            "nftables_ns_per_packet": nft,
            "cpu_met": own_ok, "cpu_met_raw": raw_ok,
        }));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Report.
// ---------------------------------------------------------------------------------------

/// The TLS comparison's panels: xlb's https proxy and nginx, one bar each per case.
fn tls_panels(tls: &serde_json::Value) -> Vec<(&'static str, Vec<(String, f64)>)> {
    let bars = |cases: &[(&str, &str)]| -> Vec<(String, f64)> {
        cases
            .iter()
            .flat_map(|(key, what)| {
                [("xlb https proxy", "xlb"), ("nginx", "nginx")].map(|(label, peer)| {
                    (
                        format!("{label}{what}"),
                        tls[peer][*key].as_f64().unwrap_or(0.0),
                    )
                })
            })
            .collect()
    };
    vec![
        (
            "TLS: new handshakes per second, no resumption (higher is better)",
            bars(&[("handshakes_per_s", "")]),
        ),
        (
            "TLS: keep-alive requests per second (higher is better)",
            bars(&[
                ("h1_requests_per_s", ", HTTP/1.1"),
                ("h2_requests_per_s", ", h2"),
            ]),
        ),
        (
            "TLS: keep-alive p99 latency, ms (lower is better)",
            bars(&[("h1_p99_ms", ", HTTP/1.1"), ("h2_p99_ms", ", h2")]),
        ),
    ]
}

/// A horizontal bar chart (SVG, no dependencies): one panel per series.
fn svg(panels: &[(&str, Vec<(String, f64)>)]) -> String {
    let (w, bar_h, left, gap) = (760.0, 18.0, 230.0, 36.0);
    let mut y = 20.0;
    let mut body = String::new();
    for (title, rows) in panels {
        body.push_str(&format!(
            "<text x=\"10\" y=\"{y}\" font-weight=\"bold\">{title}</text>\n"
        ));
        y += 10.0;
        let max = rows.iter().map(|r| r.1).fold(0.0_f64, f64::max).max(1e-9);
        for (label, v) in rows {
            let len = (w - left - 90.0) * v / max;
            body.push_str(&format!(
                "<text x=\"10\" y=\"{}\">{label}</text><rect x=\"{left}\" y=\"{}\" width=\"{len:.1}\" height=\"{}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{}\">{}</text>\n",
                y + 13.0,
                y,
                bar_h - 4.0,
                if label.starts_with("xlb") { "#2b7bb9" } else { "#999" },
                left + len + 6.0,
                y + 13.0,
                if *v < 100.0 { format!("{v:.1}") } else { format!("{v:.0}") },
            ));
            y += bar_h;
        }
        y += gap;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{y}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    cleanup_stale();
    let (rounds, packets, secs) = if args.quick {
        (3, 500_000, 3)
    } else {
        (5, 2_000_000, 8)
    };
    let _ = std::process::Command::new("sysctl")
        .args(["-qw", "kernel.bpf_stats_enabled=1"])
        .status();
    let machine = Machine::read();
    println!("peers, on {}\n", machine.line());
    // How long each part took: what a run costs, and what a full run would.
    let mut phases: Vec<(&str, f64)> = Vec::new();
    let mut phase_start = Instant::now();
    let mut phase_end = |name, phases: &mut Vec<(&str, f64)>| {
        phases.push((name, phase_start.elapsed().as_secs_f64()));
        phase_start = Instant::now();
    };

    let fw = if args.only.is_none_or(|p| p == Part::Firewall) {
        firewall_rounds(rounds, packets)
    } else {
        Vec::new()
    };
    phase_end("firewall", &mut phases);
    let fw_floor = fw.iter().find(|r| r.peer == Fw::Floor);
    let range = |s: Option<(f64, f64, f64)>| {
        s.map_or(("-".to_string(), "-".to_string()), |(m, lo, hi)| {
            (format!("{m:.0}"), format!("{lo:.0}..{hi:.0}"))
        })
    };
    if !fw.is_empty() {
        println!(
            "Firewall: {rounds} rounds (every peer once per round, rotated order) of a flood of \
             {packets} UDP frames from the attacker, dropped at the edge, while the client \
             fetches a page from the edge. The frames are XDP frames injected at the edge's \
             switch port (a live-frames test run, batches of {BATCH}), so x0 gets them as from \
             a NIC: no skb until the stack needs one. CPU ns per frame that reached x0 (\"at \
             x0\": the rest found x0's ring full) of the packets' path (generator thread, \
             client thread and ksoftirqd, one CPU): median and min..max over the rounds. The \
             generator's share is in every row; \"above floor\" (paired by round) removes it. \
             The floor is an XDP program that drops everything (the client's page too); \"XDP \
             ns/pkt\" is the kernel's run time of the peer's XDP programs (bpf_stats).\n"
        );
        println!(
            "| {:<28} | {:>10} | {:>11} | {:>11} | {:>11} | {:>10} | {:>13} | {:>8} |",
            "peer",
            "CPU ns/pkt",
            "min..max",
            "above floor",
            "min..max",
            "XDP ns/pkt",
            "client ok",
            "at x0"
        );
        println!(
            "|{:-<30}|{:->12}|{:->13}|{:->13}|{:->13}|{:->12}|{:->15}|{:->10}|",
            "", "", "", "", "", "", "", ""
        );
    }
    for r in &fw {
        let (cpu, cpu_range) = range(r.cpu());
        let (above, above_range) = range(r.above(fw_floor));
        let sent = r.sum(|x| x.sent);
        let arrived = 100.0 * r.sum(|x| x.arrived) as f64 / sent.max(1) as f64;
        println!(
            "| {:<28} | {cpu:>10} | {cpu_range:>11} | {above:>11} | {above_range:>11} | {:>10} | {:>13} | {:>7.1}% |",
            r.peer.name(),
            r.bpf().map_or("-".into(), |v| format!("{v:.0}")),
            format!("{}/{}", r.sum(|x| x.ok), r.sum(|x| x.tried)),
            arrived,
        );
    }

    let mut lb = Vec::new();
    for peer in [
        Lb::Floor,
        Lb::XdpFloor,
        Lb::XlbDsr,
        Lb::XlbNat,
        Lb::XlbFullnat,
        Lb::Nftables,
        Lb::Haproxy,
    ] {
        if args.only.is_some_and(|p| p != Part::Balancer) {
            break;
        }
        eprintln!("balancer: {} ...", peer.name());
        match balancer_row(peer, secs) {
            Ok(r) => lb.push(r),
            Err(e) => eprintln!("balancer: {} failed: {e:#}", peer.name()),
        }
    }
    phase_end("balancer", &mut phases);
    let floors = LbFloors::of(&lb);
    let targets = if lb.is_empty() {
        Vec::new()
    } else {
        print_balancer(&lb, &floors, secs)
    };

    // TLS termination: the https bench's comparison, printed as it runs.
    let tls = if args.only.is_none_or(|p| p == Part::Tls) {
        eprintln!("tls: xlb https proxy vs nginx ...");
        https_bench::run(&https_bench::Options {
            quick: args.quick,
            testssl: false,
        })
        .map_err(|e| eprintln!("tls: failed: {e:#}"))
        .ok()
    } else {
        None
    };
    phase_end("tls", &mut phases);
    let total: f64 = phases.iter().map(|p| p.1).sum();
    println!(
        "\nphases: {}, {total:.0} s in all",
        phases
            .iter()
            .map(|(n, s)| format!("{n} {s:.0} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let report = json!({
        "machine": machine.json(),
        "quick": args.quick,
        "phase_secs": phases.iter().map(|(n, s)| json!({"phase": n, "secs": s})).collect::<Vec<_>>(),
        "firewall": {
            "rounds": rounds, "packets_per_round": packets, "batch": BATCH,
            "peers": fw.iter().map(|r| {
                let stat = |s: Option<(f64, f64, f64)>| s.map(|(m, lo, hi)| json!({"median": m, "min": lo, "max": hi}));
                json!({
                    "peer": r.peer.name(),
                    "cpu_ns_per_packet": stat(r.cpu()),
                    "above_floor_ns": stat(r.above(fw_floor)),
                    "xdp_run_ns_per_packet": r.bpf(),
                    "client_ok": r.sum(|x| x.ok), "client_tried": r.sum(|x| x.tried),
                    "runs": r.runs.iter().map(|x| x.as_ref().map(|x| json!({
                        "cpu_ns_per_packet": x.cpu_ns, "xdp_run_ns_per_packet": x.bpf_ns,
                        "sent": x.sent, "arrived_at_x0": x.arrived,
                        "client_ok": x.ok, "client_tried": x.tried,
                    }))).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
        },
        "balancer": lb.iter().map(|r| json!({
            "peer": r.peer.name(), "conn_per_s": r.conn.rps, "conn_p99_ms": r.conn.p99_ms,
            "keepalive_req_per_s": r.keepalive.rps, "keepalive_p99_ms": r.keepalive.p99_ms,
            "busy_ns_per_conn": r.cpu_ns_per_conn,
            "balancer_cpu_ns_per_conn": r.cpu_ns_per_conn - floors.routed,
            "fwd_packets_per_conn": r.tx_per_conn,
            "rx_packets_per_conn": r.rx_per_conn,
            "balancer_ns_per_packet": floors.per_packet(r, floors.routed),
            "balancer_ns_per_packet_above_xdp_floor": r.is_xlb().then(|| floors.per_packet(r, floors.xdp)),
            "xdp_ns_per_conn": r.bpf_ns_per_conn,
            "errors": r.conn.errors + r.keepalive.errors,
        })).collect::<Vec<_>>(),
        "veth_xdp_tax_ns_per_packet": floors.tax(&lb),
        "balancer_targets": targets,
        "tls": tls,
    });
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    let peers = |f: &dyn Fn(&LbRow) -> f64| -> Vec<(String, f64)> {
        lb.iter()
            .filter(|r| !r.is_floor())
            .map(|r| (r.peer.name().to_string(), f(r)))
            .collect()
    };
    let mut per_packet = Vec::new();
    for r in lb.iter().filter(|r| !r.is_floor()) {
        if r.is_xlb() {
            per_packet.push((
                format!("{} (above XDP floor)", r.peer.name()),
                floors.per_packet(r, floors.xdp).max(0.0),
            ));
        }
        per_packet.push((
            format!(
                "{}{}",
                r.peer.name(),
                if r.is_xlb() { " (raw)" } else { "" }
            ),
            floors.per_packet(r, floors.routed).max(0.0),
        ));
    }
    let mut panels = vec![
        (
            "Firewall: CPU ns per flood packet above the floor, median of the rounds (lower is better)",
            fw.iter()
                .filter(|r| r.peer != Fw::Floor)
                .map(|r| {
                    (
                        r.peer.name().to_string(),
                        r.above(fw_floor).map_or(0.0, |s| s.0.max(0.0)),
                    )
                })
                .collect(),
        ),
        (
            "Balancing: new connections per second (higher is better)",
            peers(&|r| r.conn.rps),
        ),
        (
            "Balancing: keep-alive requests per second (higher is better)",
            peers(&|r| r.keepalive.rps),
        ),
        (
            "Balancing: CPU ns per forwarded packet above the floor (lower is better)",
            per_packet,
        ),
    ];
    if let Some(tls) = &tls {
        panels.extend(tls_panels(tls));
    }
    let plot = svg(&panels);
    let svg_path = args.out.with_extension("svg");
    std::fs::write(&svg_path, plot)?;
    println!(
        "\nwritten to {} and {}",
        args.out.display(),
        svg_path.display()
    );
    Ok(())
}
