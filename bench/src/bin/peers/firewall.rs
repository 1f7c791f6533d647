//! The firewall peers: a flood from the attacker, dropped at the edge, while the client
//! fetches a page from the edge.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use xlb_tests::{
    netns::{Daemon, Netns, NsServer, fill, http_get},
    topology::{Backends, Topology, attach_bench_xdp},
};

use crate::{
    cpu::{bpf_ns_per_run, bpf_run, is_xlb_prog, pin},
    flood::{BATCH, flood, flood_frame, frames_to_x0},
    stats::{self, Peer, Row, stat_json, stat_text},
};

const FW_NFT: &str = include_str!("../../../peers/firewall.nft");

const ATTACKER: &str = "192.0.2.166";
const EDGE: &str = "192.0.2.1";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fw {
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
pub struct FwRun {
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

/// A firewall run's CPU per frame (for `Row::stat` and `Row::above`).
fn fw_cpu(r: &FwRun) -> Option<f64> {
    Some(r.cpu_ns)
}

pub type FwRow = Row<Fw, FwRun>;

/// Every firewall peer, once per round, `rounds` rounds of a flood of `packets` frames.
pub fn measure(rounds: usize, packets: u64) -> Vec<FwRow> {
    let peers = [
        Fw::Floor,
        Fw::Xlb,
        Fw::XdpFilter,
        Fw::Nftables,
        Fw::Iptables,
    ];
    stats::rounds("firewall", &peers, rounds, |p| firewall_run(p, packets))
}

fn floor(fw: &[FwRow]) -> Option<&FwRow> {
    fw.iter().find(|r| r.peer == Fw::Floor)
}

/// The firewall table (nothing if no peer was measured).
pub fn print(fw: &[FwRow], rounds: usize, packets: u64) {
    let fw_floor = floor(fw);
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
    for r in fw {
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
}

/// The report's "firewall" part.
pub fn json(fw: &[FwRow], rounds: usize, packets: u64) -> serde_json::Value {
    let fw_floor = floor(fw);
    json!({
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
    })
}

/// The plot's firewall panel: CPU per frame above the floor.
pub fn panel(fw: &[FwRow]) -> (&'static str, Vec<(String, f64)>) {
    let fw_floor = floor(fw);
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
    )
}
