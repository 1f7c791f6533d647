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
//!   `cargo xtask bench --only https` (`xlb_bench::https`), without testssl.sh.
//!
//! - SYN flood: one spoofed-source SYN flood (XDP frames at the switch port again, a
//!   random source and port per frame) against xlb nat with protection off and on, the
//!   kernel's SYN cookies and nftables' synproxy, while 200 clients open real TCP
//!   connections; and an ACK flood against xlb with protection on (synflood.rs, the
//!   clients in legit.rs). Targets: legitimate success, p99 against the row's unloaded
//!   p99, no flow for a spoofed source, ACKs dropped in XDP.
//!
//! The peers' configurations are in bench/peers/.
//!
//! The parts: firewall.rs, packets.rs (balancing per packet) and balancer.rs (wrk), on
//! the flood generator of flood.rs and the CPU figures of cpu.rs, in the rounds of
//! stats.rs; report.rs draws the plot.

mod balancer;
mod cpu;
mod firewall;
mod flood;
mod legit;
mod packets;
mod report;
mod stats;
mod synflood;

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use serde_json::json;
use xlb_bench::{https, machine::Machine};
use xlb_tests::netns::cleanup_stale;

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
    /// The SYN- and ACK-flood rows.
    Synflood,
}

/// Whether the run takes in a part measured when `--only` is one of `parts`.
fn runs(only: Option<Part>, parts: &[Part]) -> bool {
    only.is_none_or(|p| parts.contains(&p))
}

/// How long each part took: what a run costs, and what a full run would.
struct Phases {
    done: Vec<(&'static str, f64)>,
    start: Instant,
}

impl Phases {
    fn start() -> Self {
        Phases {
            done: Vec::new(),
            start: Instant::now(),
        }
    }

    /// The phase `name` ends now; the next starts.
    fn end(&mut self, name: &'static str) {
        self.done.push((name, self.start.elapsed().as_secs_f64()));
        self.start = Instant::now();
    }

    fn print(&self) {
        let total: f64 = self.done.iter().map(|p| p.1).sum();
        println!(
            "\nphases: {}, {total:.0} s in all",
            self.done
                .iter()
                .map(|(n, s)| format!("{n} {s:.0} s"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    fn json(&self) -> Vec<serde_json::Value> {
        self.done
            .iter()
            .map(|(n, s)| json!({"phase": n, "secs": s}))
            .collect()
    }
}

/// TLS termination: the https bench's comparison, printed as it runs (None if it
/// failed).
fn tls(quick: bool) -> Option<serde_json::Value> {
    eprintln!("tls: xlb https proxy vs nginx ...");
    https::run(&https::Options {
        quick,
        testssl: false,
    })
    .map_err(|e| eprintln!("tls: failed: {e:#}"))
    .ok()
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
    let mut phases = Phases::start();

    let fw = if runs(args.only, &[Part::Firewall]) {
        firewall::measure(rounds, packets)
    } else {
        Vec::new()
    };
    phases.end("firewall");
    firewall::print(&fw, rounds, packets);

    let pp = if runs(args.only, &[Part::Balancer, Part::BalancerPackets]) {
        packets::measure(rounds, packets)
    } else {
        Vec::new()
    };
    phases.end("balancer per packet");
    let pp_cases = packets::print(&pp, rounds, packets);

    let lb = if runs(args.only, &[Part::Balancer]) {
        balancer::measure(secs)
    } else {
        Vec::new()
    };
    phases.end("balancer");
    let targets = if lb.is_empty() {
        Vec::new()
    } else {
        balancer::print(&lb, secs)
    };

    let tls = if runs(args.only, &[Part::Tls]) {
        tls(args.quick)
    } else {
        None
    };
    phases.end("tls");

    let syn = if runs(args.only, &[Part::Synflood]) {
        synflood::measure(args.quick)
    } else {
        Vec::new()
    };
    phases.end("synflood");
    synflood::print(&syn, args.quick);
    phases.print();

    let report = json!({
        "machine": machine.json(),
        "quick": args.quick,
        "phase_secs": phases.json(),
        "firewall": firewall::json(&fw, rounds, packets),
        "balancer": balancer::json(&lb),
        "balancer_targets": targets,
        "balancer_per_packet": packets::json(rounds, packets, pp_cases),
        "tls": tls,
        "synflood": synflood::json(&syn, args.quick),
    });
    let mut panels = vec![firewall::panel(&fw)];
    panels.extend(balancer::panels(&lb));
    panels.extend(packets::panels(&pp));
    if let Some(tls) = &tls {
        panels.extend(report::tls_panels(tls));
    }
    if !syn.is_empty() {
        panels.push(synflood::panel(&syn));
    }
    report::write(&args.out, &report, &panels)
}
