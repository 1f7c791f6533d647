//! The SYN-flood rows: one spoofed-source SYN flood, at the generator's highest rate,
//! against xlb with protection off and on, the kernel's own SYN cookies and nftables'
//! SYN proxy, while legitimate clients open real TCP connections; and an ACK flood
//! against xlb with protection on.
//!
//! Where the listener sits: for the xlb rows it is nginx on three backends behind a nat
//! service (198.51.100.10:80); for the kernel and nftables rows there is no balancer,
//! so the listener is nginx on the edge itself, on the same address and port (held on
//! the edge's loopback), the kernel's SYN cookies or nftables' SYN proxy in front of it.
//! The flood's frames arrive at the edge's x0 the same way in every row (`flood`).
//!
//! The spoofed sources are 198.51.100.128/25 with random ports: 203.0.113.0/24 and
//! 192.0.2.0/24 are on-link subnets of this topology (backends, clients), whose hosts
//! would answer or be asked for (ARP) instead of the flood's replies leaving like
//! replies to the Internet. The edge routes the spoofed range to an "uplink",
//! 192.0.2.254, a static neighbour with the attacker's MAC: every SYN-ACK to a spoofed
//! source leaves through x0 and is dropped and counted at the switch port
//! (`bench_uplink`), as a NIC would put it on the wire: the rig's bridge and the
//! attacker's stack would otherwise cost more than a defence per reply.
//!
//! Every row runs once with the flood as fast as the generator goes (it shares the
//! CPU with the edge's receive path, so its rate is what the peer absorbs, and a peer
//! that cannot keep up fills x0's ring, which the clients' packets share). Then (b),
//! (c) and (d) run again at one rate, 80% of the lowest rate any of the three absorbed
//! at full speed: the same flood for all three.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use xlb_bench::nginx::{NginxBackends, nginx_in};
use xlb_tests::{
    netns::{Daemon, Spawned, fill, wait_until},
    tcp::{ACK, Opts, SYN, Seg},
    topology::{Backends, Topology},
};

use crate::{
    balancer::{VIP, xlb_service},
    cpu::{bpf_ns_per_run, bpf_run, is_xlb_prog},
    flood::{Gen, flood_with, frames_to_x0, parse_mac},
    legit::{self, Legit},
};

const SYNPROXY_NFT: &str = include_str!("../../../peers/synproxy.nft");

const SVC: &str = "198.51.100.10:80/tcp";
/// The spoofed sources: 198.51.100.128/25 (see the module's doc).
const SPOOF_BASE: [u8; 4] = [198, 51, 100, 128];
const SPOOF_MASK: [u8; 4] = [0, 0, 0, 127];
const UPLINK: &str = "192.0.2.254";
/// The legitimate clients (see `legit`): the brief's 200.
pub const CLIENTS: usize = 200;
/// A bound on the flood's frames (the time limit ends it first).
const MAX_FRAMES: u64 = 200_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SynPeer {
    XlbOff,
    XlbOn,
    Kernel,
    Synproxy,
    XlbAck,
}

impl SynPeer {
    pub const ALL: [SynPeer; 5] = [
        SynPeer::XlbOff,
        SynPeer::XlbOn,
        SynPeer::Kernel,
        SynPeer::Synproxy,
        SynPeer::XlbAck,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SynPeer::XlbOff => "(a) xlb nat, protection off",
            SynPeer::XlbOn => "(b) xlb nat, syn = always",
            SynPeer::Kernel => "(c) kernel SYN cookies",
            SynPeer::Synproxy => "(d) nftables synproxy",
            SynPeer::XlbAck => "(e) ACK flood, xlb always",
        }
    }

    fn is_xlb(self) -> bool {
        matches!(self, SynPeer::XlbOff | SynPeer::XlbOn | SynPeer::XlbAck)
    }

    fn flags(self) -> u8 {
        if self == SynPeer::XlbAck { ACK } else { SYN }
    }
}

/// xlb's counters of the service's protection (`xlb status --json`).
#[derive(Clone, Copy, Default, Debug)]
pub struct SynCounters {
    pub sent: u64,
    pub validated: u64,
    pub refused: u64,
    pub no_flow: u64,
}

impl SynCounters {
    fn since(self, before: SynCounters) -> SynCounters {
        SynCounters {
            sent: self.sent - before.sent,
            validated: self.validated - before.validated,
            refused: self.refused - before.refused,
            no_flow: self.no_flow - before.no_flow,
        }
    }
}

/// One row's measure.
pub struct SynRun {
    pub peer: SynPeer,
    pub unloaded: Legit,
    pub loaded: Legit,
    pub sent: u64,
    pub arrived: u64,
    pub secs: f64,
    /// CPU ns per frame that reached x0 (generator thread + ksoftirqd).
    pub cpu_ns: f64,
    /// xlb's XDP run time per packet (bpf_stats).
    pub xdp_ns: Option<f64>,
    /// xlb: forward flows before and after the flood.
    pub flows: Option<(u64, u64)>,
    /// xlb: flow-table entries (either direction) with a spoofed address, after.
    pub spoofed_flows: Option<u64>,
    pub syn: Option<SynCounters>,
    /// The edge's conntrack entries after the flood (nftables row).
    pub conntrack: Option<u64>,
    /// Frames to the spoofed sources (SYN-ACKs) the edge sent during the flood.
    pub replies: u64,
    /// The flood's rate, if paced.
    pub pps: Option<f64>,
}

impl SynRun {
    /// The row's name, with its rate if paced.
    pub fn label(&self) -> String {
        match self.pps {
            Some(r) => format!("{} @{:.0}k", self.peer.name(), r / 1000.0),
            None => self.peer.name().to_string(),
        }
    }

    fn arrived_pps(&self) -> f64 {
        self.arrived as f64 / self.secs.max(1e-9)
    }
}

/// What keeps a row's peer in place.
enum Guard {
    Xlb(Box<Daemon>),
    Listener { _nginx: Box<Spawned> },
}

/// The flood's template: TCP `flags` from 0.0.0.0 port 0 (the generator writes the
/// spoofed source and fixes the sums) to the service, padded to the 64 bytes the
/// generator restores. A SYN carries an MSS option, as a stack's would.
fn spoofed_frame(t: &Topology, flags: u8) -> Result<Vec<u8>> {
    let dst = parse_mac(&t.edge.run(&["cat", "/sys/class/net/x0/address"])?)?;
    let src = parse_mac(&t.attacker.run(&["cat", "/sys/class/net/a0/address"])?)?;
    let mut s = Seg::new("0.0.0.0", VIP, 0, 80, flags)
        .seq(0x5eed_1234)
        .macs(dst, src);
    if flags == SYN {
        s = s.opts(Opts {
            mss: Some(1460),
            ..Default::default()
        });
    } else {
        s = s.ack(0x0bad_c0de);
    }
    let mut f = s.build();
    f.resize(64, 0);
    Ok(f)
}

/// The edge's route for the spoofed sources (see the module's doc), no ICMP redirects
/// (one arm), NAPI on x0 (XDP frames need it when no XDP program runs there), and the
/// client's whole port range (200 clients, a fresh port per connection).
fn prepare(t: &Topology) -> Result<()> {
    let mac = t.attacker.run(&["cat", "/sys/class/net/a0/address"])?;
    let e = &t.edge;
    e.run(&[
        "ip",
        "neigh",
        "replace",
        UPLINK,
        "lladdr",
        mac.trim(),
        "dev",
        "x0",
        "nud",
        "permanent",
    ])?;
    e.run(&["ip", "route", "add", "198.51.100.128/25", "via", UPLINK])?;
    for k in [
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.x0.send_redirects=0",
    ] {
        e.run(&["sysctl", "-qw", k])?;
    }
    e.run(&["ethtool", "-K", "x0", "gro", "on"])?;
    t.client
        .run(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
    Ok(())
}

/// The listener on the edge for the rows without xlb (see the module's doc).
fn edge_listener(t: &Topology) -> Result<Guard> {
    t.edge
        .run(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
    let url = format!("http://{VIP}/");
    let n = nginx_in(&t.edge, &t.dir.path, "edge", &url)?;
    Ok(Guard::Listener {
        _nginx: Box::new(n),
    })
}

fn install(peer: SynPeer, t: &Topology) -> Result<Guard> {
    match peer {
        SynPeer::XlbOff | SynPeer::XlbOn | SynPeer::XlbAck => {
            let d = xlb_service(t, "nat", "tcp", 80)?;
            let mode = if peer == SynPeer::XlbOff {
                "off"
            } else {
                "always"
            };
            let out = d.cli(&["vip", "set", SVC, "--syn-protection", mode]);
            if !out.status.success() {
                bail!("xlb vip set: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(Guard::Xlb(Box::new(d)))
        }
        SynPeer::Kernel => {
            // 1, the default: cookies once the listener's SYN queue is full, which a
            // flood makes it at once.
            t.edge
                .run(&["sysctl", "-qw", "net.ipv4.tcp_syncookies=1"])?;
            edge_listener(t)
        }
        SynPeer::Synproxy => {
            let file = t.dir.path.join("synproxy.nft");
            std::fs::write(&file, fill(SYNPROXY_NFT, &[("vip", VIP), ("port", "80")]))?;
            t.edge
                .run(&["nft", "-f", file.to_str().context("a UTF-8 path")?])?;
            // What the wiki's page sets (the table above loaded conntrack here).
            for k in [
                "net.netfilter.nf_conntrack_tcp_loose=0",
                "net.ipv4.tcp_syncookies=1",
                "net.ipv4.tcp_timestamps=1",
            ] {
                t.edge.run(&["sysctl", "-qw", k])?;
            }
            edge_listener(t)
        }
    }
}

/// `xlb status --json`'s counters for the service (zero while its protection is off:
/// it is not listed then).
fn syn_counters(d: &Daemon) -> Result<SynCounters> {
    let v = cli_json(d, &["status", "--json"])?;
    let Some(p) = v["syn_protection"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["service"] == SVC))
    else {
        return Ok(SynCounters::default());
    };
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    Ok(SynCounters {
        sent: n("cookies_sent"),
        validated: n("cookies_validated"),
        refused: n("cookies_refused"),
        no_flow: n("no_flow_dropped"),
    })
}

fn cli_json(d: &Daemon, args: &[&str]) -> Result<Value> {
    let out = d.cli(args);
    if !out.status.success() {
        bail!("xlb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("xlb's JSON")
}

fn forward_flows(d: &Daemon) -> Result<u64> {
    cli_json(d, &["stats", "--json"])?["flows"]["forward"]
        .as_u64()
        .context("flows.forward in xlb stats")
}

/// Entries of xlb's flow table (its pinned map) with an address in the spoofed range,
/// as source (forward) or destination (reply).
fn spoofed_flows(t: &Topology) -> Result<u64> {
    use lb_common::{Flow, FlowKey};
    let pin = t.dir.path.join("bpffs/xlb").join(lb_common::MAP_FLOWS);
    let data = aya::maps::MapData::from_pin(&pin).with_context(|| format!("{pin:?}"))?;
    let map: aya::maps::HashMap<_, FlowKey, Flow> =
        aya::maps::Map::from_map_data(data)?.try_into()?;
    let spoofed = |a: &lb_common::Addr16| {
        let b = a.bytes();
        b[..3] == SPOOF_BASE[..3] && b[3] & 0x80 == SPOOF_BASE[3] && b[4..] == [0; 12]
    };
    let mut n = 0;
    // Bounded by the map's size; a key removed during the walk ends it early.
    for k in map.keys() {
        let Ok(k) = k else { break };
        if spoofed(&k.src) || spoofed(&k.dst) {
            n += 1;
        }
    }
    Ok(n)
}

/// The edge's conntrack entries (nf_conntrack_count of its namespace).
fn conntrack_count(t: &Topology) -> Option<u64> {
    let v = t
        .edge
        .run(&["sysctl", "-n", "net.netfilter.nf_conntrack_count"])
        .ok()?;
    v.trim().parse().ok()
}

/// Frames `bench_uplink` on sw-x dropped so far (summed over the CPUs).
fn uplink_count(obj: &aya::Ebpf) -> Result<u64> {
    let map: aya::maps::PerCpuArray<_, u64> = obj
        .map("BENCH_UPLINK")
        .context("no BENCH_UPLINK in the bench object")?
        .try_into()?;
    Ok(map.get(&0, 0)?.iter().sum())
}

/// One row: a fresh topology, the peer, the clients unloaded, then the clients during
/// `secs` seconds of flood (at `pps` frames a second, or as fast as it goes).
fn row(peer: SynPeer, clients: usize, secs: (f64, f64), pps: Option<f64>) -> Result<SynRun> {
    let mut t = Topology::build("peer-syn", 3, 8080, Backends::ViaEdge)?;
    let replies0 = uplink_count(t.switch_xdp("bench_uplink")?)?;
    prepare(&t)?;
    let _nginx = if peer.is_xlb() {
        t.nginx_backends()?
    } else {
        Vec::new()
    };
    let guard = install(peer, &t)?;
    let url = format!("http://{VIP}/");
    wait_until(peer.name(), Duration::from_secs(10), || {
        t.client.ok(&["curl", "-sf", "-o", "/dev/null", &url])
    })?;
    let addr = format!("{VIP}:80").parse()?;
    let unloaded = legit::run(t.client.path(), addr, clients, secs.0)?;
    let xlb = match &guard {
        Guard::Xlb(d) => Some(d.as_ref()),
        Guard::Listener { .. } => None,
    };
    let flows0 = xlb.map(forward_flows).transpose()?;
    let syn0 = xlb.map(syn_counters).transpose()?;
    let bpf0 = if peer.is_xlb() {
        Some(bpf_run(&is_xlb_prog)?)
    } else {
        None
    };
    let to_x0 = frames_to_x0(&t.switch)?;
    let frame = spoofed_frame(&t, peer.flags())?;
    let client_ns = t.client.path();
    let loaded = std::thread::spawn(move || legit::run(client_ns, addr, clients, secs.1));
    let started = std::time::Instant::now();
    let generator = Gen::Spoofed {
        base: SPOOF_BASE,
        mask: SPOOF_MASK,
        pps,
    };
    let limit = Duration::from_secs_f64(secs.1);
    let fl = flood_with(&t, frame, generator, MAX_FRAMES, limit, Vec::new());
    let flood_secs = started.elapsed().as_secs_f64();
    let arrived = frames_to_x0(&t.switch)? - to_x0;
    let xdp_ns = bpf0.map(|b| bpf_ns_per_run(&is_xlb_prog, b)).transpose()?;
    let loaded = loaded
        .join()
        .map_err(|_| anyhow::anyhow!("the clients' thread panicked"))??;
    let fl = fl?;
    let replies = uplink_count(t.switch_xdp_obj().context("bench_uplink")?)? - replies0;
    let flows1 = xlb.map(forward_flows).transpose()?;
    let syn = match (xlb, syn0) {
        (Some(d), Some(s0)) => Some(syn_counters(d)?.since(s0)),
        _ => None,
    };
    Ok(SynRun {
        peer,
        unloaded,
        loaded,
        sent: fl.sent,
        arrived,
        secs: flood_secs,
        cpu_ns: fl.cpu_ns as f64 / arrived.max(1) as f64,
        xdp_ns,
        flows: flows0.zip(flows1),
        spoofed_flows: if peer.is_xlb() {
            Some(spoofed_flows(&t)?)
        } else {
            None
        },
        syn,
        conntrack: if peer == SynPeer::Synproxy {
            conntrack_count(&t)
        } else {
            None
        },
        replies,
        pps,
    })
}

/// The peers that run again at one rate (see the module's doc).
const SAME_RATE: [SynPeer; 3] = [SynPeer::XlbOn, SynPeer::Kernel, SynPeer::Synproxy];

/// Every row at full speed, then (b), (c) and (d) at one rate (a failed row is left
/// out, and said so).
pub fn measure(quick: bool) -> Vec<SynRun> {
    let secs = if quick { (2.0, 3.0) } else { (5.0, 10.0) };
    let mut out = Vec::new();
    let run = |peer: SynPeer, pps: Option<f64>, out: &mut Vec<SynRun>| {
        eprintln!("synflood: {} {pps:?} ...", peer.name());
        match row(peer, CLIENTS, secs, pps) {
            Ok(r) => out.push(r),
            Err(e) => eprintln!("synflood: {} failed: {e:#}", peer.name()),
        }
    };
    for peer in SynPeer::ALL {
        run(peer, None, &mut out);
    }
    let lowest = out
        .iter()
        .filter(|r| SAME_RATE.contains(&r.peer))
        .map(SynRun::arrived_pps)
        .fold(f64::INFINITY, f64::min);
    if lowest.is_finite() {
        for peer in SAME_RATE {
            run(peer, Some(0.8 * lowest), &mut out);
        }
    }
    out
}

/// A row's p99 under the flood over its own unloaded p99.
fn p99_ratio(r: &SynRun) -> Option<f64> {
    Some(r.loaded.pct_ms(99.0)? / r.unloaded.pct_ms(99.0)?.max(0.001))
}

/// Flood frames xlb dropped in XDP as "no flow": a bad cookie or no SYN.
fn ack_dropped_pct(r: &SynRun) -> Option<f64> {
    let s = r.syn?;
    Some(100.0 * (s.refused + s.no_flow) as f64 / r.arrived.max(1) as f64)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// (b)'s legit success against (c)'s and (d)'s, among `rows` (one rate each).
fn better(rows: &[&SynRun], how: &str) -> Vec<(String, String, bool)> {
    let get = |p: SynPeer| rows.iter().find(|r| r.peer == p);
    let Some(b) = get(SynPeer::XlbOn) else {
        return Vec::new();
    };
    [(SynPeer::Kernel, "(c)"), (SynPeer::Synproxy, "(d)")]
        .into_iter()
        .filter_map(|(p, what)| {
            let o = get(p)?;
            let (bs, os) = (b.loaded.success_pct(), o.loaded.success_pct());
            Some((
                format!("(b) legit success better than {what}, {how}"),
                format!("{bs:.2}% vs {os:.2}%"),
                bs > os,
            ))
        })
        .collect()
}

/// The targets, each with its measured value: (what, measured, met). Checked on the
/// full-speed rows; "better than" also at the one rate.
fn targets(rows: &[SynRun]) -> Vec<(String, String, bool)> {
    let full: Vec<&SynRun> = rows.iter().filter(|r| r.pps.is_none()).collect();
    let same: Vec<&SynRun> = rows.iter().filter(|r| r.pps.is_some()).collect();
    let get = |p: SynPeer| full.iter().find(|r| r.peer == p);
    let mut out = Vec::new();
    if let Some(b) = get(SynPeer::XlbOn) {
        let s = b.loaded.success_pct();
        out.push((
            "(b) legit connect success >= 99.9% under the SYN flood".into(),
            format!("{s:.2}%"),
            s >= 99.9,
        ));
        let ratio = p99_ratio(b);
        out.push((
            "(b) legit p99 connect <= 3x the row's unloaded p99".into(),
            ratio.map_or("-".into(), |v| format!("{v:.2}x")),
            ratio.is_some_and(|v| v <= 3.0),
        ));
        out.push((
            "(b) zero flow entries from spoofed SYNs".into(),
            b.spoofed_flows.map_or("-".into(), |n| n.to_string()),
            b.spoofed_flows == Some(0),
        ));
    }
    out.extend(better(&full, "each at full speed"));
    out.extend(better(&same, "at one rate"));
    if let Some(e) = get(SynPeer::XlbAck) {
        let d = ack_dropped_pct(e);
        out.push((
            "(e) ACK flood >= 99.9% dropped in XDP (cookies_refused + no_flow_dropped)".into(),
            d.map_or("-".into(), |v| format!("{v:.2}%")),
            d.is_some_and(|v| v >= 99.9),
        ));
    }
    out
}

/// The two tables and the targets.
pub fn print(rows: &[SynRun], quick: bool) {
    if rows.is_empty() {
        return;
    }
    let secs = if quick { (2, 3) } else { (5, 10) };
    println!(
        "\nSYN flood: a spoofed SYN flood (sources 198.51.100.128/25, random ports, SYN with \
         MSS) injected at the edge's switch port as fast as the generator goes (one CPU), for \
         {} s per row, while {CLIENTS} clients each open a connection (one GET) every 200 ms \
         to 198.51.100.10:80: nginx on three backends behind xlb nat (a, b, e), nginx on the \
         edge itself behind the kernel's SYN cookies (c) or nftables' synproxy (d). Unloaded: \
         the same clients for {} s before the flood. Connect times of the successful \
         connections (3 s timeout: one SYN retransmission is a slow success). (e) is an ACK \
         flood (spoofed ACKs of no flow) instead. Rows marked @N k ran again with the flood \
         paced to N thousand frames a second on average (50 ms bursts at full speed), 80% \
         of the lowest rate (b), (c) and (d) absorbed at full speed, for the three \
         alike.\n",
        secs.1, secs.0
    );
    println!(
        "| {:<34} | {:>11} | {:>8} | {:>7} | {:>7} | {:>8} | {:>7} | {:>11} | {:>8} |",
        "row",
        "legit ok",
        "success",
        "p50 ms",
        "p99 ms",
        "unl. p99",
        "ratio",
        "unloaded ok",
        "unl. %"
    );
    println!(
        "|{:-<36}|{:->13}|{:->10}|{:->9}|{:->9}|{:->10}|{:->9}|{:->13}|{:->10}|",
        "", "", "", "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<34} | {:>11} | {:>7.2}% | {:>7} | {:>7} | {:>8} | {:>7} | {:>11} | {:>7.2}% |",
            r.label(),
            format!("{}/{}", r.loaded.ok, r.loaded.tried),
            r.loaded.success_pct(),
            ms(r.loaded.pct_ms(50.0)),
            ms(r.loaded.pct_ms(99.0)),
            ms(r.unloaded.pct_ms(99.0)),
            p99_ratio(r).map_or("-".into(), |v| format!("{v:.1}x")),
            format!("{}/{}", r.unloaded.ok, r.unloaded.tried),
            r.unloaded.success_pct(),
        );
    }
    println!(
        "\nThe flood: frames sent, arrived at x0 (the rest found its ring full) and their rate; \
         CPU ns per arrived frame of the generator thread and ksoftirqd (the generator's share \
         included, the clients' and servers' CPU not); xlb's XDP run time per packet \
         (bpf_stats); frames the edge sent to spoofed sources (SYN-ACKs, counted and \
         dropped at the switch port); xlb's forward flows before -> after and the flow-table entries with a \
         spoofed address after; cookies sent / validated, dropped (bad cookie + no flow); \
         conntrack entries after (d).\n"
    );
    println!(
        "| {:<34} | {:>9} | {:>9} | {:>6} | {:>6} | {:>6} | {:>9} | {:>15} | {:>7} | {:>15} | {:>9} | {:>5} |",
        "row",
        "sent",
        "at x0",
        "Mpps",
        "CPU ns",
        "XDP ns",
        "replies",
        "flows",
        "spoofed",
        "cookies sent/ok",
        "dropped",
        "ct"
    );
    println!(
        "|{:-<36}|{:->11}|{:->11}|{:->8}|{:->8}|{:->8}|{:->11}|{:->17}|{:->9}|{:->17}|{:->11}|{:->7}|",
        "", "", "", "", "", "", "", "", "", "", "", ""
    );
    let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    for r in rows {
        println!(
            "| {:<34} | {:>9} | {:>9} | {:>6.2} | {:>6.0} | {:>6} | {:>9} | {:>15} | {:>7} | {:>15} | {:>9} | {:>5} |",
            r.label(),
            r.sent,
            r.arrived,
            r.arrived_pps() / 1e6,
            r.cpu_ns,
            r.xdp_ns.map_or("-".into(), |v| format!("{v:.0}")),
            r.replies,
            r.flows.map_or("-".into(), |(a, b)| format!("{a} -> {b}")),
            opt(r.spoofed_flows),
            r.syn
                .map_or("-".into(), |s| format!("{}/{}", s.sent, s.validated)),
            r.syn
                .map_or("-".into(), |s| (s.refused + s.no_flow).to_string()),
            opt(r.conntrack),
        );
    }
    println!("\ntargets:");
    for (what, value, met) in targets(rows) {
        println!("  {what}: {value}: {}", if met { "met" } else { "NOT met" });
    }
}

fn legit_json(l: &Legit) -> Value {
    json!({
        "tried": l.tried, "ok": l.ok, "success_pct": l.success_pct(),
        "connect_p50_ms": l.pct_ms(50.0), "connect_p99_ms": l.pct_ms(99.0),
    })
}

/// The report's "synflood" part.
pub fn json(rows: &[SynRun], quick: bool) -> Value {
    json!({
        "clients": CLIENTS, "quick": quick,
        "spoofed_sources": "198.51.100.128/25",
        "rows": rows.iter().map(|r| json!({
            "row": r.label(), "paced_pps": r.pps, "replies_to_spoofed": r.replies,
            "unloaded": legit_json(&r.unloaded),
            "loaded": legit_json(&r.loaded),
            "p99_vs_unloaded": p99_ratio(r),
            "flood_sent": r.sent, "flood_arrived_at_x0": r.arrived, "flood_secs": r.secs,
            "flood_arrived_pps": r.arrived_pps(),
            "cpu_ns_per_flood_packet": r.cpu_ns,
            "xdp_run_ns_per_packet": r.xdp_ns,
            "forward_flows_before": r.flows.map(|f| f.0),
            "forward_flows_after": r.flows.map(|f| f.1),
            "spoofed_flow_entries": r.spoofed_flows,
            "cookies_sent": r.syn.map(|s| s.sent),
            "cookies_validated": r.syn.map(|s| s.validated),
            "cookies_refused": r.syn.map(|s| s.refused),
            "no_flow_dropped": r.syn.map(|s| s.no_flow),
            "ack_dropped_pct": if r.peer == SynPeer::XlbAck { ack_dropped_pct(r) } else { None },
            "conntrack_entries": r.conntrack,
        })).collect::<Vec<_>>(),
        "targets": targets(rows).into_iter().map(|(what, value, met)| json!({
            "target": what, "measured": value, "met": met,
        })).collect::<Vec<_>>(),
    })
}

/// The plot's panel: legitimate connect success under the flood.
pub fn panel(rows: &[SynRun]) -> (&'static str, Vec<(String, f64)>) {
    (
        "SYN flood: legitimate connect success under the flood, % (higher is better)",
        rows.iter()
            .map(|r| (r.label(), r.loaded.success_pct()))
            .collect(),
    )
}
