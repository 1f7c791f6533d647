//! The layer-4 balancer peers under wrk: a new connection per request and keep-alive,
//! to a service on three nginx backends; and the set-up of xlb's and nftables'
//! balancers that the per-packet rows share.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use xlb_bench::nginx::NginxBackends;
use xlb_tests::{
    netns::{Daemon, Netns, Spawned, fill, wait_until},
    topology::{Backends, Topology, attach_bench_xdp, backend_v4},
};

use crate::{
    cpu::{bpf_run, busy_ns, is_xlb_prog, process_cpu_ns},
    flood::x0_counter,
};

pub const LB_NFT: &str = include_str!("../../../peers/balancer.nft");
pub const LB_NFT_FULLNAT: &str = include_str!("../../../peers/balancer-fullnat.nft");
const HAPROXY: &str = include_str!("../../../peers/haproxy.cfg");

pub const VIP: &str = "198.51.100.10";

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

pub struct LbRow {
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

pub enum LbGuard {
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
pub fn xlb_service(t: &Topology, mode: &str, proto: &str, port: u16) -> Result<Daemon> {
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
pub fn nft_balancer(t: &Topology, rules: &str, proto: &str, port: u16) -> Result<()> {
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
pub fn print(lb: &[LbRow], secs: u64) -> Vec<serde_json::Value> {
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

/// Every balancer peer under wrk, `secs` seconds per column (a failed peer is left out).
pub fn measure(secs: u64) -> Vec<LbRow> {
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
        eprintln!("balancer: {} ...", peer.name());
        match balancer_row(peer, secs) {
            Ok(r) => lb.push(r),
            Err(e) => eprintln!("balancer: {} failed: {e:#}", peer.name()),
        }
    }
    lb
}

/// The report's "balancer" part.
pub fn json(lb: &[LbRow]) -> Vec<serde_json::Value> {
    lb.iter()
        .map(|r| {
            json!({
                "peer": r.peer.name(), "conn_per_s": r.conn.rps, "conn_p99_ms": r.conn.p99_ms,
                "keepalive_req_per_s": r.keepalive.rps, "keepalive_p99_ms": r.keepalive.p99_ms,
                "busy_ns_per_conn": r.cpu_ns_per_conn,
                "fwd_packets_per_conn": r.tx_per_conn,
                "rx_packets_per_conn": r.rx_per_conn,
                "own_ns_per_conn": r.own_ns_per_conn,
                "conn_per_cpu_s": r.conn_per_cpu_s(),
                "errors": r.conn.errors + r.keepalive.errors,
            })
        })
        .collect()
}

/// The plot's wrk panels: connections per second, the same per CPU of the balancer's own
/// work, keep-alive requests per second.
pub fn panels(lb: &[LbRow]) -> Vec<(&'static str, Vec<(String, f64)>)> {
    let peers = |f: &dyn Fn(&LbRow) -> f64| -> Vec<(String, f64)> {
        lb.iter()
            .filter(|r| !r.is_floor())
            .map(|r| (r.peer.name().to_string(), f(r)))
            .collect()
    };
    vec![
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
    ]
}
