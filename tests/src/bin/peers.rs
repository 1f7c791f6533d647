//! `cargo xtask bench --peers`: xlb beside the tools an operator would pick instead, on
//! the same namespace topology, with the same traffic, in one run.
//!
//! - Firewall: a flood from the attacker namespace while the client keeps fetching a
//!   page from the edge. Peers: xlb, xdp-filter (exact source address, the most it can
//!   do), nftables (netdev ingress hook), iptables (raw PREROUTING), and the floor: an
//!   XDP program that drops everything. Raw veth packet rate is bounded by the
//!   generator, so the measure is CPU per packet: the CPU time of the packets' path
//!   (the sending thread, in whose context a veth delivers, plus ksoftirqd) divided by
//!   the packets sent (the generator's share is the same in every row; "above floor"
//!   removes it), plus the kernel's own run time of the XDP programs (bpf_stats).
//! - Layer-4 balancing: the client (wrk) against a service on three nginx backends,
//!   a new connection per request and keep-alive. Peers: xlb dsr / nat / fullnat,
//!   nftables DNAT (numgen), HAProxy in TCP mode, and the floor: plain routing to one
//!   backend, no balancing. Balancer CPU per request = the machine's busy time per
//!   request minus the floor's.
//! - TLS termination: xlb's https proxy beside nginx (new handshakes per second,
//!   keep-alive requests per second over HTTP/1.1 and h2, p99), the comparison of
//!   `cargo xtask bench --only https` (https_bench.rs), without testssl.sh.
//!
//! The peers' configurations are in tests/peers/.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use xlb_tests::{
    https_bench,
    machine::Machine,
    netns::{Daemon, Netns, NsServer, Spawned, cleanup_stale, fill, http_get, in_ns, wait_until},
    topology::{Backends, Topology, backend_v4},
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

struct FwRow {
    peer: Fw,
    cpu_ns: f64,
    bpf_ns: Option<f64>,
    ok: u64,
    tried: u64,
    sent: u64,
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
        Fw::Floor => {
            let obj = in_ns(e, || -> Result<aya::Ebpf> {
                let mut obj = aya::Ebpf::load(xlb::object::BENCH)?;
                let prog: &mut aya::programs::Xdp = obj
                    .program_mut("bench_drop")
                    .context("bench_drop")?
                    .try_into()?;
                prog.load()?;
                prog.attach("x0", aya::programs::XdpMode::Driver)?;
                Ok(obj)
            })??;
            Guard::Ebpf {
                _obj: Box::new(obj),
            }
        }
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

/// CPU time (ns) of the calling thread so far.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (ns) of the ksoftirqd threads so far: the receive path runs there when it
/// is not run right away in the sender's context.
fn ksoftirqd_ns() -> u64 {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let mut ticks = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some((_, rest)) = stat.split_once(") ")
            && stat.contains("(ksoftirqd/")
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    ticks * 1_000_000_000 / hz
}

/// Sends `n` UDP datagrams from the attacker as fast as one thread can (unconnected:
/// ICMP errors must not turn into send errors). Returns (sent, CPU ns of the packets'
/// path): a veth delivers in the sender's context, so the sending thread's CPU time
/// plus ksoftirqd's covers the syscall, the veth and the receive path up to the drop,
/// and leaves out whatever else the machine is doing.
fn flood(attacker: &Netns, n: u64) -> Result<(u64, u64)> {
    in_ns(attacker, move || -> Result<(u64, u64)> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let to: std::net::SocketAddr = format!("{EDGE}:9").parse()?;
        let payload = [0u8; 18];
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        let (t0, k0) = (thread_cpu_ns(), ksoftirqd_ns());
        while sent < n && Instant::now() < deadline {
            if s.send_to(&payload, to).is_ok() {
                sent += 1;
            }
        }
        Ok((sent, thread_cpu_ns() - t0 + ksoftirqd_ns() - k0))
    })?
}

fn firewall_row(peer: Fw, packets: u64) -> Result<FwRow> {
    let t = Topology::build("peer-fw", 0, 8080, Backends::ViaEdge)?;
    let _page = NsServer::http(&t.edge, &format!("{EDGE}:80"), "edge")?;
    // The attacker knows the edge's MAC (the floor drops ARP too).
    let mac = t.edge.run(&["cat", "/sys/class/net/x0/address"])?;
    t.attacker.run(&[
        "ip",
        "neigh",
        "replace",
        EDGE,
        "lladdr",
        mac.trim(),
        "dev",
        "a0",
        "nud",
        "permanent",
    ])?;
    let guard = install_fw(peer, &t)?;
    // The client keeps fetching the edge's page while the flood runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let client_path = t.client.path();
    let client = std::thread::spawn(move || -> Result<(u64, u64)> {
        xlb_tests::netns::enter(&client_path)?;
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
    let pick = peer.xdp_names();
    let bpf0 = match pick {
        Some(p) => Some(bpf_run(&p)?),
        None => None,
    };
    let (sent, cpu) = flood(&t.attacker, packets)?;
    let bpf_ns = match (pick, bpf0) {
        (Some(p), Some((ns0, c0))) => {
            let (ns1, c1) = bpf_run(&p)?;
            Some((ns1 - ns0) as f64 / (c1 - c0).max(1) as f64)
        }
        _ => None,
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, tried) = client.join().map_err(|_| anyhow::anyhow!("client"))??;
    drop(guard);
    Ok(FwRow {
        peer,
        cpu_ns: cpu as f64 / sent.max(1) as f64,
        bpf_ns,
        ok,
        tried,
        sent,
    })
}

// ---------------------------------------------------------------------------------------
// Layer-4 balancing.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lb {
    Floor,
    XlbDsr,
    XlbNat,
    XlbFullnat,
    Nftables,
    Haproxy,
}

impl Lb {
    fn name(self) -> &'static str {
        match self {
            Lb::Floor => "floor: routed to one backend",
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
    /// The balancer's XDP programs' run time per request (xlb rows).
    bpf_ns_per_conn: Option<f64>,
}

enum LbGuard {
    Xlb { _daemon: Box<Daemon> },
    Proc { _proc: Box<Spawned> },
    Nothing,
}

fn install_lb(peer: Lb, t: &Topology) -> Result<(LbGuard, String)> {
    let e = &t.edge;
    let b: Vec<String> = (0..3).map(backend_v4).collect();
    let url = format!("http://{VIP}/");
    Ok(match peer {
        Lb::Floor => {
            // Plain routing: the client reaches web1 through the edge's forwarding.
            t.client
                .run(&["ip", "route", "add", "203.0.113.0/24", "via", EDGE])?;
            (LbGuard::Nothing, format!("http://{}/", b[0]))
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
    let _nginx = t.nginx_backends()?;
    let (guard, url) = install_lb(peer, &t)?;
    // Every backend answers through the balancer before anything is measured.
    let c = &t.client;
    wait_until(peer.name(), Duration::from_secs(10), || {
        c.ok(&["curl", "-sf", "-o", "/dev/null", &url])
    })?;
    let pick = |n: &str| n == "xlb" || n == "xlb_balance";
    let xlb = matches!(peer, Lb::XlbDsr | Lb::XlbNat | Lb::XlbFullnat);
    let bpf0 = bpf_run(&pick)?;
    let cpu0 = busy_ns()?;
    let conn = wrk(&t.client, &url, secs, true)?;
    let cpu1 = busy_ns()?;
    let bpf1 = bpf_run(&pick)?;
    let keepalive = wrk(&t.client, &url, secs, false)?;
    drop(guard);
    let per = conn.requests.max(1) as f64;
    Ok(LbRow {
        peer,
        cpu_ns_per_conn: (cpu1 - cpu0) as f64 / per,
        bpf_ns_per_conn: xlb.then(|| (bpf1.0 - bpf0.0) as f64 / per),
        conn,
        keepalive,
    })
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
    let (packets, secs) = if args.quick {
        (100_000, 3)
    } else {
        (400_000, 8)
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

    let mut fw = Vec::new();
    for peer in [
        Fw::Floor,
        Fw::Xlb,
        Fw::XdpFilter,
        Fw::Nftables,
        Fw::Iptables,
    ] {
        eprintln!("firewall: {} ...", peer.name());
        match firewall_row(peer, packets) {
            Ok(r) => fw.push(r),
            Err(e) => eprintln!("firewall: {} failed: {e:#}", peer.name()),
        }
    }
    phase_end("firewall", &mut phases);
    let floor = fw
        .iter()
        .find(|r| r.peer == Fw::Floor)
        .map_or(0.0, |r| r.cpu_ns);
    println!("Firewall: a flood of {packets} UDP packets from the attacker, dropped at the edge,");
    println!("while the client fetches a page from the edge (CPU of the packets' path per packet;");
    println!("the floor drops everything, the client's page too):\n");
    println!(
        "| {:<28} | {:>12} | {:>12} | {:>14} | {:>12} |",
        "peer", "CPU ns/pkt", "above floor", "XDP run ns/pkt", "client ok"
    );
    println!(
        "|{:-<30}|{:->14}|{:->14}|{:->16}|{:->14}|",
        "", "", "", "", ""
    );
    for r in &fw {
        println!(
            "| {:<28} | {:>12.0} | {:>12.0} | {:>14} | {:>12} |",
            r.peer.name(),
            r.cpu_ns,
            r.cpu_ns - floor,
            r.bpf_ns.map_or("-".into(), |v| format!("{v:.0}")),
            format!("{}/{}", r.ok, r.tried)
        );
    }

    let mut lb = Vec::new();
    for peer in [
        Lb::Floor,
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
    phase_end("balancer", &mut phases);
    let lb_floor = lb
        .iter()
        .find(|r| r.peer == Lb::Floor)
        .map_or(0.0, |r| r.cpu_ns_per_conn);
    println!("\nLayer-4 balancing to three nginx backends, wrk -t1 -c16, {secs} s per column:\n");
    println!(
        "| {:<28} | {:>9} | {:>8} | {:>9} | {:>8} | {:>13} | {:>11} | {:>6} |",
        "peer", "conn/s", "p99 ms", "req/s ka", "p99 ms", "balancer µs/c", "XDP µs/c", "errors"
    );
    println!(
        "|{:-<30}|{:->11}|{:->10}|{:->11}|{:->10}|{:->15}|{:->13}|{:->8}|",
        "", "", "", "", "", "", "", ""
    );
    for r in &lb {
        println!(
            "| {:<28} | {:>9.0} | {:>8.2} | {:>9.0} | {:>8.2} | {:>13.1} | {:>11} | {:>6} |",
            r.peer.name(),
            r.conn.rps,
            r.conn.p99_ms,
            r.keepalive.rps,
            r.keepalive.p99_ms,
            (r.cpu_ns_per_conn - lb_floor) / 1000.0,
            r.bpf_ns_per_conn
                .map_or("-".into(), |v| format!("{:.2}", v / 1000.0)),
            r.conn.errors + r.keepalive.errors,
        );
    }
    let get = |p: Lb| lb.iter().find(|r| r.peer == p);
    let haproxy = get(Lb::Haproxy).map_or(f64::NAN, |r| r.conn.rps);
    let nft_cpu = get(Lb::Nftables).map_or(f64::NAN, |r| r.cpu_ns_per_conn - lb_floor);
    println!("\ntargets (same run):");
    for p in [Lb::XlbDsr, Lb::XlbNat, Lb::XlbFullnat] {
        let Some(r) = get(p) else { continue };
        let ratio = r.conn.rps / haproxy;
        let cpu = r.cpu_ns_per_conn - lb_floor;
        println!(
            "  {:<12} conn/s = {ratio:.2}x HAProxy (target >= 2x) {}; balancer CPU per connection = {} nftables' (target <= 1/3) {}",
            p.name(),
            if ratio >= 2.0 { "met" } else { "NOT met" },
            if cpu > 0.0 {
                format!("1/{:.1} of", nft_cpu / cpu)
            } else {
                "below the floor's, vs".into()
            },
            if cpu * 3.0 <= nft_cpu {
                "met"
            } else {
                "NOT met"
            },
        );
    }

    // TLS termination: the https bench's comparison, printed as it runs.
    eprintln!("tls: xlb https proxy vs nginx ...");
    let tls = https_bench::run(&https_bench::Options {
        quick: args.quick,
        testssl: false,
    })
    .map_err(|e| eprintln!("tls: failed: {e:#}"))
    .ok();
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
        "firewall": fw.iter().map(|r| json!({
            "peer": r.peer.name(), "cpu_ns_per_packet": r.cpu_ns,
            "above_floor_ns": r.cpu_ns - floor, "xdp_run_ns_per_packet": r.bpf_ns,
            "client_ok": r.ok, "client_tried": r.tried, "sent": r.sent,
        })).collect::<Vec<_>>(),
        "balancer": lb.iter().map(|r| json!({
            "peer": r.peer.name(), "conn_per_s": r.conn.rps, "conn_p99_ms": r.conn.p99_ms,
            "keepalive_req_per_s": r.keepalive.rps, "keepalive_p99_ms": r.keepalive.p99_ms,
            "balancer_cpu_ns_per_conn": r.cpu_ns_per_conn - lb_floor,
            "xdp_ns_per_conn": r.bpf_ns_per_conn,
            "errors": r.conn.errors + r.keepalive.errors,
        })).collect::<Vec<_>>(),
        "tls": tls,
    });
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    let mut panels = vec![
        (
            "Firewall: CPU ns per flood packet above the floor (lower is better)",
            fw.iter()
                .filter(|r| r.peer != Fw::Floor)
                .map(|r| (r.peer.name().to_string(), (r.cpu_ns - floor).max(0.0)))
                .collect(),
        ),
        (
            "Balancing: new connections per second (higher is better)",
            lb.iter()
                .filter(|r| r.peer != Lb::Floor)
                .map(|r| (r.peer.name().to_string(), r.conn.rps))
                .collect(),
        ),
        (
            "Balancing: keep-alive requests per second (higher is better)",
            lb.iter()
                .filter(|r| r.peer != Lb::Floor)
                .map(|r| (r.peer.name().to_string(), r.keepalive.rps))
                .collect(),
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
