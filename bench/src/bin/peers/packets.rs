//! The layer-4 balancer peers per packet: UDP to the service, flooded by the firewall's
//! generator, established flows and new flows; every forwarded frame ends in
//! `bench_sink` on the switch port facing the edge.

use anyhow::{Context, Result, bail};
use serde_json::json;
use xlb_tests::topology::{Backends, Topology, attach_bench_xdp, backend_v4};

use crate::{
    balancer::{LB_NFT, LB_NFT_FULLNAT, LbGuard, VIP, nft_balancer, xlb_service},
    cpu::{bpf_ns_per_run, bpf_run, is_xlb_prog},
    flood::{BATCH, flood, flood_frame, frames_to_x0, parse_mac},
    stats::{self, Peer, Row, stat_json, stat_text},
};

/// The per-packet balancer rows: UDP to the VIP forwarded to the three backends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pp {
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
pub struct PpPair {
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

pub type PpRow = Row<Pp, PpPair>;

/// The per-packet rows of one case: CPU per frame, above the drop floor, above the
/// forwarder floor, forwarded share, spread; then the target (see `print_targets`).
fn print_case(rows: &[PpRow], case: Case) -> serde_json::Value {
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
    let targets = print_targets(rows, case);
    json!({"case": case.name(), "peers": out, "targets": targets})
}

/// The target of one case, printed, for every xlb mode: xlb's CPU per forwarded packet
/// at most a third of nftables', both above the drop floor (the entry, the generator and
/// the sink are in every row; above it is each peer's whole forwarding work at the edge,
/// its own transmit included), paired by round.
fn print_targets(rows: &[PpRow], case: Case) -> Vec<serde_json::Value> {
    let cpu = |r: &PpPair| Some(case.of(r).cpu_ns);
    let get = |p: Pp| rows.iter().find(|r| r.peer == p);
    let drop_floor = get(Pp::Drop);
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
    targets
}

/// Every per-packet peer, once per round, `rounds` rounds of `packets` frames per case.
pub fn measure(rounds: usize, packets: u64) -> Vec<PpRow> {
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
    stats::rounds("balancer per packet", &peers, rounds, |p| {
        pp_run(p, packets)
    })
}

/// The per-packet tables, one per case (nothing if no peer was measured); returns the
/// cases for the report.
pub fn print(pp: &[PpRow], rounds: usize, packets: u64) -> Vec<serde_json::Value> {
    if pp.is_empty() {
        return Vec::new();
    }
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
        .map(|c| print_case(pp, c))
        .collect()
}

/// The report's "balancer_per_packet" part (`cases` from `print`).
pub fn json(rounds: usize, packets: u64, cases: Vec<serde_json::Value>) -> serde_json::Value {
    json!({
        "rounds": rounds, "packets_per_round": packets, "batch": BATCH,
        "established_flows": EST_FLOWS, "new_flows_per_round": packets.min(u64::from(NEW_FLOWS)),
        "cases": cases,
    })
}

/// The plot's per-packet panels, one per case: per forwarded packet, above the drop
/// floor (xlb also above the forwarder floor).
pub fn panels(pp: &[PpRow]) -> Vec<(&'static str, Vec<(String, f64)>)> {
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
    vec![
        (
            "Balancing: CPU ns per forwarded packet above the drop floor, established flows (lower is better)",
            per_packet(Case::Established),
        ),
        (
            "Balancing: CPU ns per forwarded packet above the drop floor, new flows (lower is better)",
            per_packet(Case::New),
        ),
    ]
}
