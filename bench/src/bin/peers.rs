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
//! - Layer-4 balancing, CPU per forwarded packet: UDP to a service on three backends,
//!   flooded by the firewall's generator (same rounds and statistics), established flows
//!   (flow-table / conntrack hits) and new flows (a new source port per frame). Peers:
//!   xlb dsr / nat / fullnat, nftables DNAT (numgen, conntrack on) and DNAT+SNAT (the
//!   job of fullnat: both ends rewritten), kernel routing (ECMP, no netfilter: the part
//!   of nftables' cost that is the stack's); floors: an XDP drop-all on x0 (generator,
//!   entry and sink) and an XDP forwarder (MACs, XDP_TX: the rig's forwarding path).
//!   Every forwarded frame ends in `bench_sink` on the switch port facing the edge,
//!   which counts it per backend (see `pp_run`). The target (xlb at most a third of
//!   nftables' CPU per forwarded packet, nftables doing the mode's job: DNAT for dsr and
//!   nat, DNAT+SNAT for fullnat) is checked above the drop floor, paired by round.
//! - Layer-4 balancing, wrk: the client against a service on three nginx backends, a
//!   new connection per request and keep-alive. Peers: xlb dsr / nat / fullnat,
//!   nftables DNAT (numgen), HAProxy in TCP mode, plain routing to the same backends
//!   (ECMP), the same with an XDP_PASS program on x0. The machine's busy CPU per
//!   connection is printed as information only (too noisy on 2 shared vCPUs).
//! - TLS termination: xlb's https proxy beside nginx (new handshakes per second,
//!   keep-alive requests per second over HTTP/1.1 and h2, p99), the comparison of
//!   `cargo xtask bench --only https` (bench/src/https.rs), without testssl.sh.
//!
//! The peers' configurations are in bench/peers/.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
use clap::Parser;
use serde_json::json;
use xlb_bench::{
    https,
    machine::{Machine, process_cpu_ticks, ticks_per_sec},
    nginx::NginxBackends,
};
use xlb_tests::{
    netns::{Daemon, Netns, NsServer, Spawned, cleanup_stale, fill, http_get, in_ns, wait_until},
    packet::Pkt,
    topology::{Backends, Topology, attach_bench_xdp, backend_v4},
};

const FW_NFT: &str = include_str!("../../peers/firewall.nft");
const LB_NFT: &str = include_str!("../../peers/balancer.nft");
const LB_NFT_FULLNAT: &str = include_str!("../../peers/balancer-fullnat.nft");
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
    /// Both balancer measures: per packet, then wrk.
    Balancer,
    /// The balancer's per-packet rows only.
    BalancerPackets,
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
    Ok(ticks_to_ns(busy))
}

/// USER_HZ ticks (/proc's CPU times) in nanoseconds.
fn ticks_to_ns(ticks: u64) -> u64 {
    ticks * 1_000_000_000 / ticks_per_sec()
}

/// CPU time (user + system, all threads) process `pid` has used so far.
fn process_cpu_ns(pid: u32) -> Result<u64> {
    let ticks = process_cpu_ticks(pid).with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(ticks_to_ns(ticks))
}

/// xlb's XDP programs (the entry and the balancer it tail-calls), by name.
fn is_xlb_prog(name: &str) -> bool {
    name == "xlb" || name == "xlb_balance"
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

/// Run time per run of the programs `pick` names since `since` (a `bpf_run` reading).
/// Saturating: a program unloaded in between takes its counts with it.
fn bpf_ns_per_run(pick: &dyn Fn(&str) -> bool, since: (u64, u64)) -> Result<f64> {
    let (ns, runs) = bpf_run(pick)?;
    Ok(ns.saturating_sub(since.0) as f64 / runs.saturating_sub(since.1).max(1) as f64)
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

impl Peer for Fw {
    fn name(self) -> &'static str {
        match self {
            Fw::Floor => "floor: XDP drop-all",
            Fw::Xlb => "xlb",
            Fw::XdpFilter => "xdp-filter",
            Fw::Nftables => "nftables (netdev ingress)",
            Fw::Iptables => "iptables (raw PREROUTING)",
        }
    }
}

impl Fw {
    /// Names of its XDP programs (for bpf_stats).
    fn xdp_names(self) -> Option<fn(&str) -> bool> {
        match self {
            Fw::Floor => Some(|n| n == "bench_drop"),
            Fw::Xlb => Some(is_xlb_prog),
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

/// The ksoftirqd threads' /proc directories: the receive path runs there when it is
/// not run right away in the sender's context. Found before a measure, which then
/// reads only their schedstat (walking /proc costs about a millisecond of CPU, tens of
/// ns a frame in a flood of new flows).
fn ksoftirqd_dirs() -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .map(|e| e.path())
        .collect()
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

/// A 60-byte Ethernet+IPv4+UDP frame from `src` (host `from`, interface `from_if`) to
/// `dst` through the edge, UDP checksum 0 (none: `bench_tx_flows` rewrites the source
/// port without fixing it).
fn flood_frame(
    t: &Topology,
    from: &Netns,
    from_if: &str,
    (src, sport): (&str, u16),
    (dst, dport): (&str, u16),
) -> Result<Vec<u8>> {
    let mut frame = Pkt::udp(src, dst, sport, dport).payload(&[0; 18]).build();
    frame[0..6].copy_from_slice(&parse_mac(
        &t.edge.run(&["cat", "/sys/class/net/x0/address"])?,
    )?);
    frame[6..12].copy_from_slice(&parse_mac(
        &from.run(&["cat", &format!("/sys/class/net/{from_if}/address")])?,
    )?);
    // Ethernet 14 + IPv4 20, checksum at 6 in the UDP header.
    frame[40..42].copy_from_slice(&[0, 0]);
    Ok(frame)
}

/// Sends `n` copies of `frame` (see `flood_frame`; with `ports`, (first, count), the
/// n-th copy's source port is first + n % count: a set of flows), injected at the switch port facing the edge (`sw-x`) as XDP frames: `bench_tx`
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
/// leaves out whatever else the machine is doing. `tids`: threads of this process whose
/// CPU time belongs to the measure too (pinned to the same CPU).
fn flood(
    t: &Topology,
    frame: Vec<u8>,
    ports: Option<(u16, u32)>,
    n: u64,
    tids: Vec<i32>,
) -> Result<Flood> {
    in_ns(&t.switch, move || -> Result<Flood> {
        pin()?;
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        let mut obj = aya::Ebpf::load(xlb::object::BENCH).context("loading the bench object")?;
        let name = match ports {
            Some((first, count)) => {
                let mut flows: aya::maps::Array<_, u32> = obj
                    .map_mut("BENCH_FLOWS")
                    .context("no BENCH_FLOWS in the bench object")?
                    .try_into()?;
                flows.set(0, u32::from(first), 0).context("BENCH_FLOWS")?;
                flows.set(1, count, 0).context("BENCH_FLOWS")?;
                // The headers it restores before every frame (see bench_tx_flows).
                let mut words = [0u64; 8];
                for (w, b) in words.iter_mut().zip(frame.chunks(8)) {
                    let mut a = [0; 8];
                    a[..b.len()].copy_from_slice(b);
                    *w = u64::from_ne_bytes(a);
                }
                let mut template: aya::maps::Array<_, [u64; 8]> = obj
                    .map_mut("BENCH_TEMPLATE")
                    .context("no BENCH_TEMPLATE in the bench object")?
                    .try_into()?;
                template.set(0, words, 0).context("BENCH_TEMPLATE")?;
                "bench_tx_flows"
            }
            None => "bench_tx",
        };
        let prog: &mut aya::programs::Xdp = obj
            .program_mut(name)
            .with_context(|| format!("no {name} in the bench object"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
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
        let softirqd = ksoftirqd_dirs();
        let cpu = || {
            thread_ns(me)
                + tids.iter().map(|&t| thread_ns(t)).sum::<u64>()
                + softirqd.iter().map(|d| schedstat_ns(d)).sum::<u64>()
        };
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
        // Timeouts long enough for one retransmission (TCP's first is after 1 s): the
        // flood can fill x0's ring, which the client's packets share with it, and a
        // client that waits for a retransmitted SYN is served, not failed.
        let wait = Duration::from_secs(3);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && tried < 100_000 {
            tried += 1;
            let got = std::net::TcpStream::connect_timeout(&addr, wait).and_then(|mut s| {
                s.set_read_timeout(Some(wait))?;
                http_get(&mut s).map_err(std::io::Error::other)
            });
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
    let frame = flood_frame(&t, &t.attacker, "a0", (ATTACKER, 40000), (EDGE, 9))?;
    let fl = flood(&t, frame, None, packets, vec![client_tid]);
    let arrived = frames_to_x0(&t.switch)? - to_x0;
    let bpf_ns = match (pick, bpf0) {
        (Some(p), Some(since)) => Some(bpf_ns_per_run(&p, since)?),
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
fn median_range(v: &[f64]) -> Option<Stat> {
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

/// A peer of a measurement in rounds.
trait Peer: Copy {
    fn name(self) -> &'static str;
}

/// A peer's runs, by round (None: that round failed).
struct Row<P, R> {
    peer: P,
    runs: Vec<Option<R>>,
}

/// Median, min and max.
type Stat = (f64, f64, f64);

/// Every peer once per round, the order rotated each round, so slow drifts of the
/// machine (other load, thermal, page cache) hit every peer alike. `part` names the
/// measurement in the progress lines. Peers that failed every round are left out.
fn rounds<P: Peer, R>(
    part: &str,
    peers: &[P],
    rounds: usize,
    mut run: impl FnMut(P) -> Result<R>,
) -> Vec<Row<P, R>> {
    let mut rows: Vec<Row<P, R>> = peers
        .iter()
        .map(|&peer| Row {
            peer,
            runs: (0..rounds).map(|_| None).collect(),
        })
        .collect();
    for round in 0..rounds {
        for k in 0..peers.len() {
            let i = (k + round) % peers.len();
            let peer = peers[i];
            eprintln!("{part}: round {}/{rounds}: {} ...", round + 1, peer.name());
            match run(peer) {
                Ok(r) => rows[i].runs[round] = Some(r),
                Err(e) => eprintln!("{part}: {} failed: {e:#}", peer.name()),
            }
        }
    }
    rows.retain(|r| r.runs.iter().any(Option::is_some));
    rows
}

impl<P, R> Row<P, R> {
    fn done(&self) -> impl Iterator<Item = &R> {
        self.runs.iter().flatten()
    }

    /// Median and range over the rounds of what `f` takes from a run.
    fn stat(&self, f: impl Fn(&R) -> Option<f64>) -> Option<Stat> {
        median_range(&self.done().filter_map(f).collect::<Vec<_>>())
    }

    /// What `f` takes from a run above the floor's of the same round, round by round
    /// (paired: a noisy round moves both).
    fn above(&self, floor: Option<&Self>, f: impl Fn(&R) -> Option<f64>) -> Option<Stat> {
        let floor = floor?;
        let d: Vec<f64> = self
            .runs
            .iter()
            .zip(&floor.runs)
            .filter_map(|(p, fl)| Some(f(p.as_ref()?)? - f(fl.as_ref()?)?))
            .collect();
        median_range(&d)
    }

    fn sum(&self, f: impl Fn(&R) -> u64) -> u64 {
        self.done().map(f).sum()
    }
}

/// A statistic as text: the median, and min..max.
fn stat_text(s: Option<Stat>) -> (String, String) {
    s.map_or(("-".to_string(), "-".to_string()), |(m, lo, hi)| {
        (format!("{m:.0}"), format!("{lo:.0}..{hi:.0}"))
    })
}

fn stat_json(s: Option<Stat>) -> serde_json::Value {
    s.map_or(
        serde_json::Value::Null,
        |(m, lo, hi)| json!({"median": m, "min": lo, "max": hi}),
    )
}

/// A firewall run's CPU per frame (for `Row::stat` and `Row::above`).
fn fw_cpu(r: &FwRun) -> Option<f64> {
    Some(r.cpu_ns)
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
    /// The balancer's own CPU per connection: xlb's XDP programs' run time (BPF
    /// statistics), HAProxy's process CPU (user + system; tick accounting also charges
    /// it softirq work that ran while it was on the CPU). None where it cannot be told
    /// apart from the rest (routing, nftables).
    own_ns_per_conn: Option<f64>,
}

impl LbRow {
    fn is_floor(&self) -> bool {
        matches!(self.peer, Lb::Floor | Lb::XdpFloor)
    }

    /// New connections per second one CPU of balancer work carries, at the balancer's
    /// own CPU per connection: the rate at the same CPU budget.
    fn conn_per_cpu_s(&self) -> Option<f64> {
        self.own_ns_per_conn.map(|ns| 1e9 / ns.max(1.0))
    }
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
            let mode = match peer {
                Lb::XlbDsr => "dsr",
                Lb::XlbNat => "nat",
                _ => "fullnat",
            };
            let d = xlb_service(t, mode, "tcp", 80)?;
            (
                LbGuard::Xlb {
                    _daemon: Box::new(d),
                },
                url,
            )
        }
        Lb::Nftables => {
            nft_balancer(t, LB_NFT, "tcp", 80)?;
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

/// xlb on the edge's x0 balancing `proto` `port` of the VIP over the three backends (same
/// port) in `mode`, once the edge has resolved them.
fn xlb_service(t: &Topology, mode: &str, proto: &str, port: u16) -> Result<Daemon> {
    let d = Daemon::start(&t.edge, "x0", &t.dir, &[])?;
    let svc = format!("{VIP}:{port}/{proto}");
    let mut add = vec!["vip", "add", svc.as_str(), "--mode", mode];
    if mode == "fullnat" {
        add.extend(["--snat", "203.0.113.1"]);
    }
    let b: Vec<String> = (0..3).map(backend_v4).collect();
    let mut cmds: Vec<Vec<String>> = vec![add.iter().map(|s| s.to_string()).collect()];
    for a in &b {
        cmds.push(
            ["backend", "add", &svc, &format!("{a}:{port}")]
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
    Ok(d)
}

/// nftables on the edge: DNAT of `proto` `port` of the VIP to the three backends
/// (`rules`: bench/peers/balancer.nft, or balancer-fullnat.nft with SNAT too).
fn nft_balancer(t: &Topology, rules: &str, proto: &str, port: u16) -> Result<()> {
    let b: Vec<String> = (0..3).map(backend_v4).collect();
    let file = t.dir.path.join("balancer.nft");
    let port = port.to_string();
    std::fs::write(
        &file,
        fill(
            rules,
            &[
                ("vip", VIP),
                ("snat", "203.0.113.1"),
                ("proto", proto),
                ("port", &port),
                ("b0", &b[0]),
                ("b1", &b[1]),
                ("b2", &b[2]),
            ],
        ),
    )?;
    t.edge
        .run(&["nft", "-f", file.to_str().context("a UTF-8 path")?])
        .context("loading the nftables balancer")?;
    Ok(())
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
    let (rx0, tx0) = (
        x0_counter(&t.edge, "rx_packets")?,
        x0_counter(&t.edge, "tx_packets")?,
    );
    // The balancer's own CPU so far, where it has one: xlb's XDP programs' run time,
    // HAProxy's process time (the floors and nftables work in the kernel's own paths).
    let own = || -> Result<Option<u64>> {
        Ok(match &guard {
            LbGuard::Proc { _proc: p } => Some(process_cpu_ns(p.child.id())?),
            LbGuard::Xlb { .. } => Some(bpf_run(&is_xlb_prog)?.0),
            LbGuard::Ebpf { .. } | LbGuard::Nothing => None,
        })
    };
    let own0 = own()?;
    let cpu0 = busy_ns()?;
    let conn = wrk(&t.client, &url, secs, true)?;
    let cpu1 = busy_ns()?;
    let own1 = own()?;
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
        own_ns_per_conn: own0
            .zip(own1)
            .map(|(a, b)| b.saturating_sub(a) as f64 / per),
        conn,
        keepalive,
    })
}

/// Prints the wrk table and the connection-rate target; returns the target (for the
/// JSON).
///
/// The target is checked at the same CPU budget: connections per second per CPU of
/// the balancer's own work. The measured rate says little here: client, backends and
/// balancer share the machine's 2 vCPUs, so every peer that costs less than the client
/// and the backends ends near the routed floor (xlb dsr matches it), and HAProxy's rate
/// moved 2807..9264 conn/s between runs with the load of the rest. The machine's busy
/// CPU per connection is information only (it moved by more than a balancer's whole
/// cost between runs).
fn print_balancer(lb: &[LbRow], secs: u64) -> Vec<serde_json::Value> {
    println!("\nLayer-4 balancing to three nginx backends, wrk -t1 -c16, {secs} s per column.");
    println!(
        "\"busy µs/c\" is the machine's busy CPU per connection (client, edge, backends; \
         /proc/stat), \"pkt/c\" the packets the edge sent on x0 per connection, \"own µs/c\" \
         the balancer's own CPU per connection (xlb: its XDP programs' run time; HAProxy: its \
         process's user + system time; the kernel's packet handling around either is not \
         counted) and \"conn/s/CPU\" the connections one CPU of that work carries.\n"
    );
    println!(
        "| {:<32} | {:>7} | {:>6} | {:>8} | {:>6} | {:>5} | {:>9} | {:>8} | {:>10} | {:>6} |",
        "peer",
        "conn/s",
        "p99 ms",
        "req/s ka",
        "p99 ms",
        "pkt/c",
        "busy µs/c",
        "own µs/c",
        "conn/s/CPU",
        "errors"
    );
    println!(
        "|{:-<34}|{:->9}|{:->8}|{:->10}|{:->8}|{:->7}|{:->11}|{:->10}|{:->12}|{:->8}|",
        "", "", "", "", "", "", "", "", "", ""
    );
    for r in lb {
        println!(
            "| {:<32} | {:>7.0} | {:>6.2} | {:>8.0} | {:>6.2} | {:>5.1} | {:>9.1} | {:>8} | {:>10} | {:>6} |",
            r.peer.name(),
            r.conn.rps,
            r.conn.p99_ms,
            r.keepalive.rps,
            r.keepalive.p99_ms,
            r.tx_per_conn,
            r.cpu_ns_per_conn / 1000.0,
            r.own_ns_per_conn
                .map_or("-".into(), |v| format!("{:.2}", v / 1000.0)),
            r.conn_per_cpu_s().map_or("-".into(), |v| format!("{v:.0}")),
            r.conn.errors + r.keepalive.errors,
        );
    }
    let get = |p: Lb| lb.iter().find(|r| r.peer == p);
    let haproxy = get(Lb::Haproxy);
    let h_rate = haproxy.map_or(f64::NAN, |r| r.conn.rps);
    // HAProxy's figure for the target is the lower of two: its process CPU (which, with
    // tick-based accounting, also holds softirq work that ran while it was on the CPU,
    // other parties' packets among it) and the machine's busy CPU per connection above
    // the routed floor's (everything it added, noisy). The lower one favours HAProxy.
    let floor_busy = get(Lb::Floor).map(|r| r.cpu_ns_per_conn);
    let h_own = haproxy.and_then(|r| {
        let own = r.own_ns_per_conn?;
        let added = floor_busy.map_or(own, |f| r.cpu_ns_per_conn - f);
        Some(if added > 0.0 { own.min(added) } else { own })
    });
    let h_cap = h_own.map_or(f64::NAN, |ns| 1e9 / ns.max(1.0));
    println!(
        "\ntarget (same run, same CPU budget): new connections per second per CPU of balancer \
         work >= 2x HAProxy's (HAProxy at {:.1} µs/c: the lower of its process CPU and the \
         machine's busy CPU above the routed floor, {h_cap:.0} conn/s/CPU). The measured \
         conn/s ratio is shown beside it: it is bounded by the client and the backends, which \
         share the same 2 vCPUs.",
        h_own.unwrap_or(f64::NAN) / 1000.0
    );
    let mut out = Vec::new();
    for p in [Lb::XlbDsr, Lb::XlbNat, Lb::XlbFullnat] {
        let Some(r) = get(p) else { continue };
        let cap = r.conn_per_cpu_s().unwrap_or(f64::NAN) / h_cap;
        let rate = r.conn.rps / h_rate;
        let met = cap >= 2.0;
        println!(
            "  {:<12} conn/s per CPU = {cap:.1}x HAProxy (>= 2x): {}; measured conn/s {rate:.2}x",
            p.name(),
            if met { "met" } else { "NOT met" },
        );
        out.push(json!({
            "peer": p.name(), "conn_per_cpu_vs_haproxy": cap, "conn_vs_haproxy": rate,
            "haproxy_ns_per_conn_for_target": h_own, "conn_met": met,
        }));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Layer-4 balancing, per packet.
// ---------------------------------------------------------------------------------------

/// The per-packet balancer rows: UDP to the VIP forwarded to the three backends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pp {
    Drop,
    Fwd,
    Routed,
    XlbDsr,
    XlbNat,
    XlbFullnat,
    Nftables,
    NftablesSnat,
}

impl Peer for Pp {
    fn name(self) -> &'static str {
        match self {
            Pp::Drop => "floor: XDP drop-all on x0",
            Pp::Fwd => "floor: XDP forwarder (MACs, XDP_TX)",
            Pp::Routed => "kernel routing (ECMP), no netfilter",
            Pp::XlbDsr => "xlb dsr",
            Pp::XlbNat => "xlb nat",
            Pp::XlbFullnat => "xlb fullnat",
            Pp::Nftables => "nftables DNAT (conntrack)",
            Pp::NftablesSnat => "nftables DNAT+SNAT (conntrack)",
        }
    }
}

impl Pp {
    fn is_xlb(self) -> bool {
        matches!(self, Pp::XlbDsr | Pp::XlbNat | Pp::XlbFullnat)
    }
}

/// The client's address: the flood's source.
const CLIENT: &str = "192.0.2.2";
/// The service's (and the backends') UDP port: `bench_sink` drops what goes to it.
const PP_PORT: u16 = 9;
/// Established flows: this many source ports from EST_PORT, each sent a first packet
/// before the measure (flow-table hits for xlb, conntrack hits for nftables).
const EST_PORT: u16 = 100;
const EST_FLOWS: u32 = 16;
/// New flows: a source port per frame from NEW_PORT, at most NEW_FLOWS per run (every
/// port from NEW_PORT up: the longest flood of new flows from one client address, so a
/// flood's fixed costs weigh least per frame). That bounds the conntrack entries a run
/// leaves (the namespaces, and their conntrack tables, are removed after every run)
/// and xlb fullnat's claimed ports: a third of each backend's at the end.
const NEW_PORT: u16 = 1024;
const NEW_FLOWS: u32 = 65536 - NEW_PORT as u32;

/// Backend i's MAC (set on its w0, so `bench_sink` counts frames to it at index 11 + i).
fn backend_mac(i: usize) -> String {
    format!("02:00:00:00:00:{:02x}", 11 + i)
}

/// One flood of one case against one peer.
struct PpRun {
    /// CPU ns of the packets' path per frame that reached x0.
    cpu_ns: f64,
    sent: u64,
    arrived: u64,
    /// Frames that reached a backend's MAC at the sink, by backend.
    backends: [u64; 3],
    /// xlb's peers: the kernel's run time of its XDP programs per run (bpf_stats).
    xdp_ns: Option<f64>,
}

impl PpRun {
    fn forwarded(&self) -> u64 {
        self.backends.iter().sum()
    }
}

/// Both cases of one peer in one round (same topology: established first).
struct PpPair {
    est: PpRun,
    new: PpRun,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Established,
    New,
}

impl Case {
    fn of(self, p: &PpPair) -> &PpRun {
        match self {
            Case::Established => &p.est,
            Case::New => &p.new,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Case::Established => "established flows",
            Case::New => "new flows",
        }
    }
}

/// Frames the sink counted so far for each backend.
fn sink_counts(sink: &aya::maps::PerCpuArray<aya::maps::MapData, u64>) -> Result<[u64; 3]> {
    let mut n = [0; 3];
    for (i, c) in n.iter_mut().enumerate() {
        *c = sink
            .get(&(11 + i as u32), 0)
            .context("reading BENCH_SINK")?
            .iter()
            .sum();
    }
    Ok(n)
}

fn install_pp(peer: Pp, t: &Topology) -> Result<LbGuard> {
    let e = &t.edge;
    let b: Vec<String> = (0..3).map(backend_v4).collect();
    Ok(match peer {
        Pp::Drop => LbGuard::Ebpf {
            _obj: Box::new(attach_bench_xdp(e, "x0", "bench_drop")?),
        },
        Pp::Fwd => {
            // Every frame to backend 0, with x0's MAC as the source: the rig's XDP_TX
            // path, with no parsing, lookup or rewrite beyond the MACs.
            let mut obj = attach_bench_xdp(e, "x0", "bench_fwd")?;
            let mut macs = [0; 12];
            macs[..6].copy_from_slice(&parse_mac(&backend_mac(0))?);
            macs[6..].copy_from_slice(&parse_mac(&e.run(&["cat", "/sys/class/net/x0/address"])?)?);
            let mut fwd: aya::maps::Array<_, [u8; 12]> = obj
                .map_mut("BENCH_FWD")
                .context("no BENCH_FWD in the bench object")?
                .try_into()?;
            fwd.set(0, macs, 0).context("BENCH_FWD")?;
            LbGuard::Ebpf {
                _obj: Box::new(obj),
            }
        }
        Pp::Routed => {
            // The kernel forwarding alone (no netfilter table in the edge), spread over
            // the three backends by the 5-tuple: what nftables pays before its own work.
            e.run(&["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"])?;
            let mut route = vec!["ip", "route", "add", VIP, "proto", "static"];
            for a in &b {
                route.extend(["nexthop", "via", a.as_str(), "dev", "x0"]);
            }
            e.run(&route)?;
            LbGuard::Nothing
        }
        Pp::XlbDsr | Pp::XlbNat | Pp::XlbFullnat => {
            let mode = match peer {
                Pp::XlbDsr => "dsr",
                Pp::XlbNat => "nat",
                _ => "fullnat",
            };
            LbGuard::Xlb {
                _daemon: Box::new(xlb_service(t, mode, "udp", PP_PORT)?),
            }
        }
        Pp::Nftables => {
            nft_balancer(t, LB_NFT, "udp", PP_PORT)?;
            LbGuard::Nothing
        }
        Pp::NftablesSnat => {
            nft_balancer(t, LB_NFT_FULLNAT, "udp", PP_PORT)?;
            LbGuard::Nothing
        }
    })
}

/// One flood of `n` frames over `ports` against `peer` and what became of them.
fn pp_flood(
    t: &Topology,
    sink: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    frame: &[u8],
    peer: Pp,
    ports: (u16, u32),
    n: u64,
) -> Result<PpRun> {
    let (to_x0, sunk) = (frames_to_x0(&t.switch)?, sink_counts(sink)?);
    let xdp0 = if peer.is_xlb() {
        Some(bpf_run(&is_xlb_prog)?)
    } else {
        None
    };
    let fl = flood(t, frame.to_vec(), Some(ports), n, Vec::new())?;
    let xdp_ns = match xdp0 {
        Some(since) => Some(bpf_ns_per_run(&is_xlb_prog, since)?),
        None => None,
    };
    let arrived = frames_to_x0(&t.switch)? - to_x0;
    let after = sink_counts(sink)?;
    Ok(PpRun {
        cpu_ns: fl.cpu_ns as f64 / arrived.max(1) as f64,
        sent: fl.sent,
        arrived,
        backends: [0, 1, 2].map(|i| after[i] - sunk[i]),
        xdp_ns,
    })
}

/// One round of one peer: a fresh topology (so an empty conntrack table and flow
/// table), the peer, the first packets of the established flows, then a flood of them,
/// then a flood of new flows.
///
/// Where the forwarded frames go must cost the same whatever forwarded them: the
/// switch port facing the edge (`sw-x`) runs `bench_sink`, which drops every forwarded
/// frame as it arrives there (XDP, before any skb, bridge or backend) and counts it by
/// destination MAC (so a peer that dropped or misdirected a frame is not credited). An
/// XDP_TX'ed frame and a frame the stack sent both reach sw-x's NAPI and end in the
/// same program; what is left in the figures of the path beyond x0 is the hand-over to
/// the veth (a NIC's transmit, on a real machine).
fn pp_run(peer: Pp, packets: u64) -> Result<PpPair> {
    let mut t = Topology::build("peer-pp", 3, 8080, Backends::ViaEdge)?;
    for (i, b) in t.backends.iter().enumerate() {
        b.run(&["ip", "link", "set", "w0", "address", &backend_mac(i)])?;
    }
    // No ICMP redirects for the peers that route (see balancer_row); NAPI on x0 for
    // the XDP frames when no XDP program runs there (see flood).
    for k in [
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.x0.send_redirects=0",
    ] {
        t.edge.run(&["sysctl", "-qw", k])?;
    }
    t.edge.run(&["ethtool", "-K", "x0", "gro", "on"])?;
    let sink = t
        .switch_xdp("bench_sink")?
        .take_map("BENCH_SINK")
        .context("no BENCH_SINK in the bench object")?;
    let sink: aya::maps::PerCpuArray<_, u64> = sink.try_into()?;
    // Resolved before any peer forwards (a frame waiting for ARP is queued or dropped).
    let b: Vec<String> = (0..3).map(backend_v4).collect();
    for a in &b {
        t.edge.run(&["ping", "-c1", "-W2", a])?;
    }
    t.wait_neighbours(&b)?;
    let guard = install_pp(peer, &t)?;
    let frame = flood_frame(&t, &t.client, "c0", (CLIENT, EST_PORT), (VIP, PP_PORT))?;
    let first = pp_flood(
        &t,
        &sink,
        &frame,
        peer,
        (EST_PORT, EST_FLOWS),
        4 * u64::from(EST_FLOWS),
    )?;
    if peer != Pp::Drop && first.forwarded() == 0 {
        bail!(
            "{}: none of the first packets reached a backend",
            peer.name()
        );
    }
    let est = pp_flood(&t, &sink, &frame, peer, (EST_PORT, EST_FLOWS), packets)?;
    let new = pp_flood(
        &t,
        &sink,
        &frame,
        peer,
        (NEW_PORT, NEW_FLOWS),
        packets.min(u64::from(NEW_FLOWS)),
    )?;
    drop(guard);
    Ok(PpPair { est, new })
}

type PpRow = Row<Pp, PpPair>;

/// The per-packet rows of one case: CPU per frame, above the drop floor, above the
/// forwarder floor, forwarded share, spread; then the target.
fn print_pp(rows: &[PpRow], case: Case) -> serde_json::Value {
    let cpu = |r: &PpPair| Some(case.of(r).cpu_ns);
    let get = |p: Pp| rows.iter().find(|r| r.peer == p);
    let (drop_floor, fwd_floor) = (get(Pp::Drop), get(Pp::Fwd));
    println!(
        "\n{}:\n| {:<36} | {:>10} | {:>11} | {:>10} | {:>11} | {:>10} | {:>11} | {:>10} | {:>9} | {:>11} |",
        case.name(),
        "peer",
        "CPU ns/pkt",
        "min..max",
        "above drop",
        "min..max",
        "above fwd",
        "min..max",
        "XDP ns/pkt",
        "forwarded",
        "b1/b2/b3 %"
    );
    println!(
        "|{:-<38}|{:->12}|{:->13}|{:->12}|{:->13}|{:->12}|{:->13}|{:->12}|{:->11}|{:->13}|",
        "", "", "", "", "", "", "", "", "", ""
    );
    let mut out = Vec::new();
    for r in rows {
        let (c, c_r) = stat_text(r.stat(cpu));
        let (d, d_r) = stat_text(r.above(drop_floor, cpu));
        let (f, f_r) = if r.peer.is_xlb() {
            stat_text(r.above(fwd_floor, cpu))
        } else {
            ("-".into(), "-".into())
        };
        let xdp = r.stat(|x| case.of(x).xdp_ns).map(|s| s.0);
        let xdp_text = xdp.map_or("-".into(), |v| format!("{v:.0}"));
        let arrived = r.sum(|x| case.of(x).arrived);
        let fwd = r.sum(|x| case.of(x).forwarded());
        let share = fwd as f64 / arrived.max(1) as f64;
        let spread: Vec<u64> = (0..3).map(|i| r.sum(|x| case.of(x).backends[i])).collect();
        let spread_text = spread
            .iter()
            .map(|&n| format!("{:.0}", 100.0 * n as f64 / fwd.max(1) as f64))
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "| {:<36} | {c:>10} | {c_r:>11} | {d:>10} | {d_r:>11} | {f:>10} | {f_r:>11} | {xdp_text:>10} | {:>8.1}% | {spread_text:>11} |",
            r.peer.name(),
            100.0 * share,
        );
        out.push(json!({
            "peer": r.peer.name(),
            "cpu_ns_per_packet": stat_json(r.stat(cpu)),
            "above_drop_floor_ns": stat_json(r.above(drop_floor, cpu)),
            "above_forwarder_floor_ns": r.peer.is_xlb().then(|| stat_json(r.above(fwd_floor, cpu))),
            "xdp_run_ns_per_packet": xdp,
            "forwarded_share": share,
            "per_backend": spread,
            "runs": r.runs.iter().map(|x| x.as_ref().map(|x| {
                let x = case.of(x);
                json!({
                    "cpu_ns_per_packet": x.cpu_ns, "sent": x.sent,
                    "arrived_at_x0": x.arrived, "per_backend": x.backends,
                    "xdp_run_ns_per_packet": x.xdp_ns,
                })
            })).collect::<Vec<_>>(),
        }));
    }
    // The target: xlb's CPU per forwarded packet at most a third of nftables', both
    // above the drop floor (the entry, the generator and the sink are in every row;
    // above it is each peer's whole forwarding work at the edge, its own transmit
    // included), paired by round.
    let above = |p: Pp| get(p).and_then(|r| r.above(drop_floor, cpu)).map(|s| s.0);
    let forwards = |p: Pp| {
        get(p).is_some_and(|r| {
            let (a, f) = (
                r.sum(|x| case.of(x).arrived),
                r.sum(|x| case.of(x).forwarded()),
            );
            f as f64 >= 0.95 * a as f64
        })
    };
    // Each mode beside nftables doing the same job: dsr and nat rewrite the
    // destination (DNAT; dsr's MAC rewrite is less), fullnat both ends (DNAT+SNAT).
    let mut targets = Vec::new();
    for (p, peer) in [
        (Pp::XlbDsr, Pp::Nftables),
        (Pp::XlbNat, Pp::Nftables),
        (Pp::XlbFullnat, Pp::NftablesSnat),
    ] {
        let Some(x) = above(p) else { continue };
        let nft = above(peer);
        let (text, met) = match nft {
            _ if !forwards(p) || !forwards(peer) => (
                "forwarded under 95% of the frames: no verdict".to_string(),
                None,
            ),
            Some(n) if x > 0.0 && n > 0.0 => {
                let met = 3.0 * x <= n;
                (
                    format!(
                        "{x:.0} ns = 1/{:.1} of {}'s {n:.0} ns (<= 1/3): {}",
                        n / x,
                        peer.name(),
                        if met { "met" } else { "NOT met" }
                    ),
                    Some(met),
                )
            }
            _ => (
                "a figure at or below the floor: noise, no verdict".to_string(),
                None,
            ),
        };
        println!("  target, {}, {}: {text}", case.name(), p.name());
        targets.push(json!({
            "peer": p.name(), "ns_per_packet_above_drop_floor": x,
            "nftables_peer": peer.name(),
            "nftables_ns_per_packet_above_drop_floor": nft, "met": met,
        }));
    }
    json!({"case": case.name(), "peers": out, "targets": targets})
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
        let peers = [
            Fw::Floor,
            Fw::Xlb,
            Fw::XdpFilter,
            Fw::Nftables,
            Fw::Iptables,
        ];
        self::rounds("firewall", &peers, rounds, |p| firewall_run(p, packets))
    } else {
        Vec::new()
    };
    phase_end("firewall", &mut phases);
    let fw_floor = fw.iter().find(|r| r.peer == Fw::Floor);
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
        let (cpu, cpu_range) = stat_text(r.stat(fw_cpu));
        let (above, above_range) = stat_text(r.above(fw_floor, fw_cpu));
        let sent = r.sum(|x| x.sent);
        let arrived = 100.0 * r.sum(|x| x.arrived) as f64 / sent.max(1) as f64;
        println!(
            "| {:<28} | {cpu:>10} | {cpu_range:>11} | {above:>11} | {above_range:>11} | {:>10} | {:>13} | {:>7.1}% |",
            r.peer.name(),
            r.stat(|x| x.bpf_ns)
                .map_or("-".into(), |v| format!("{:.0}", v.0)),
            format!("{}/{}", r.sum(|x| x.ok), r.sum(|x| x.tried)),
            arrived,
        );
    }

    let pp = if args
        .only
        .is_none_or(|p| p == Part::Balancer || p == Part::BalancerPackets)
    {
        let peers = [
            Pp::Drop,
            Pp::Fwd,
            Pp::Routed,
            Pp::XlbDsr,
            Pp::XlbNat,
            Pp::XlbFullnat,
            Pp::Nftables,
            Pp::NftablesSnat,
        ];
        self::rounds("balancer per packet", &peers, rounds, |p| {
            pp_run(p, packets)
        })
    } else {
        Vec::new()
    };
    phase_end("balancer per packet", &mut phases);
    let pp_cases: Vec<serde_json::Value> = if pp.is_empty() {
        Vec::new()
    } else {
        println!(
            "\nLayer-4 balancing, CPU per forwarded packet: UDP to {VIP}:{PP_PORT} from the \
             client, balanced over the three backends, {rounds} rounds (every peer once per \
             round, rotated order). The generator is the firewall's (XDP frames injected at \
             sw-x, batches of {BATCH}; CPU of generator thread + ksoftirqd, one CPU), per frame \
             that reached x0. Established flows: {EST_FLOWS} source ports, each sent a first \
             packet before the measure, then {packets} frames (flow-table hits for xlb, \
             conntrack hits for nftables). New flows: a new source port per frame, \
             {} frames (xlb flow inserts, conntrack inserts; fresh namespaces every run). \
             Every forwarded frame is dropped and counted as it reaches sw-x (bench_sink: \
             same end whatever forwarded it); \"forwarded\" is the share of the frames at x0 \
             that reached a backend's MAC. \"above drop\" (paired by round) removes the \
             generator, the entry to x0 and the sink; \"above fwd\" (xlb) removes the rig's \
             XDP_TX path too: xlb's own work; \"XDP ns/pkt\" (xlb) is the kernel's run time \
             of its XDP programs per run (bpf_stats). Target: xlb above the drop floor <= 1/3 of \
             nftables above the drop floor (each one's whole forwarding work at the edge), \
             nftables doing the mode's job: DNAT for dsr and nat, DNAT+SNAT for fullnat.",
            packets.min(u64::from(NEW_FLOWS))
        );
        [Case::Established, Case::New]
            .into_iter()
            .map(|c| print_pp(&pp, c))
            .collect()
    };

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
    let targets = if lb.is_empty() {
        Vec::new()
    } else {
        print_balancer(&lb, secs)
    };

    // TLS termination: the https bench's comparison, printed as it runs.
    let tls = if args.only.is_none_or(|p| p == Part::Tls) {
        eprintln!("tls: xlb https proxy vs nginx ...");
        https::run(&https::Options {
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
                json!({
                    "peer": r.peer.name(),
                    "cpu_ns_per_packet": stat_json(r.stat(fw_cpu)),
                    "above_floor_ns": stat_json(r.above(fw_floor, fw_cpu)),
                    "xdp_run_ns_per_packet": r.stat(|x| x.bpf_ns).map(|s| s.0),
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
            "fwd_packets_per_conn": r.tx_per_conn,
            "rx_packets_per_conn": r.rx_per_conn,
            "own_ns_per_conn": r.own_ns_per_conn,
            "conn_per_cpu_s": r.conn_per_cpu_s(),
            "errors": r.conn.errors + r.keepalive.errors,
        })).collect::<Vec<_>>(),
        "balancer_targets": targets,
        "balancer_per_packet": {
            "rounds": rounds, "packets_per_round": packets, "batch": BATCH,
            "established_flows": EST_FLOWS, "new_flows_per_round": packets.min(u64::from(NEW_FLOWS)),
            "cases": pp_cases,
        },
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
    // Per forwarded packet, above the drop floor (xlb also above the forwarder floor).
    let per_packet = |case: Case| -> Vec<(String, f64)> {
        let cpu = |r: &PpPair| Some(case.of(r).cpu_ns);
        let floor = |p| pp.iter().find(|r| r.peer == p);
        let mut bars = Vec::new();
        for r in pp.iter().filter(|r| r.peer != Pp::Drop) {
            let above = |f| r.above(floor(f), cpu).map_or(0.0, |s| s.0.max(0.0));
            bars.push((r.peer.name().to_string(), above(Pp::Drop)));
            if r.peer.is_xlb() {
                bars.push((
                    format!("{} (above forwarder)", r.peer.name()),
                    above(Pp::Fwd),
                ));
            }
        }
        bars
    };
    let mut panels = vec![
        (
            "Firewall: CPU ns per flood packet above the floor, median of the rounds (lower is better)",
            fw.iter()
                .filter(|r| r.peer != Fw::Floor)
                .map(|r| {
                    (
                        r.peer.name().to_string(),
                        r.above(fw_floor, fw_cpu).map_or(0.0, |s| s.0.max(0.0)),
                    )
                })
                .collect(),
        ),
        (
            "Balancing: new connections per second (higher is better)",
            peers(&|r| r.conn.rps),
        ),
        (
            "Balancing: new connections per second per CPU of the balancer's own work (higher is better)",
            lb.iter()
                .filter_map(|r| Some((r.peer.name().to_string(), r.conn_per_cpu_s()?)))
                .collect(),
        ),
        (
            "Balancing: keep-alive requests per second (higher is better)",
            peers(&|r| r.keepalive.rps),
        ),
        (
            "Balancing: CPU ns per forwarded packet above the drop floor, established flows (lower is better)",
            per_packet(Case::Established),
        ),
        (
            "Balancing: CPU ns per forwarded packet above the drop floor, new flows (lower is better)",
            per_packet(Case::New),
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
