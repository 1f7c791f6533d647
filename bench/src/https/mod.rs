//! The https service's benchmark, beside nginx configured the same way: one ECDSA
//! P-256 certificate, the same two backends, the same CPU (both pinned with taskset to
//! one CPU, which the backends share; the load generators run on the other), in a
//! private network namespace over its loopback.
//!
//! - new TLS handshakes per second, no resumption: a Rust client (rustls, X25519, TLS
//!   1.3, certificate not verified so the client is cheap) opens, completes a handshake
//!   and closes, from many concurrent tasks;
//! - requests per second over keep-alive connections, HTTP/1.1 and h2 (h2load), and
//!   their p99 latency (from h2load's per-request log);
//! - testssl.sh against xlb's listener: findings of severity MEDIUM or higher.
//!
//! servers.rs starts both servers and the backends behind them, clients.rs drives the
//! load, testssl.rs runs testssl.sh.

mod clients;
mod servers;
mod testssl;

use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::{Value, json};
use xlb_tests::{
    netns::{Netns, TestDir},
    tls::Pki,
};

use clients::{h2load, handshakes};
use servers::{Backends, Server, nginx_version, start_servers, write_configs};

pub struct Options {
    pub quick: bool,
    pub testssl: bool,
}

const XLB_PORT: u16 = 8443;
const NGINX_PORT: u16 = 9443;
const BACKENDS: [u16; 2] = [18081, 18082];

/// Runs the whole comparison; prints the table and returns the results.
pub fn run(opts: &Options) -> Result<Value> {
    let secs: u64 = if opts.quick { 3 } else { 10 };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (server_cpu, client_cpu) = if cpus >= 2 { (1, 0) } else { (0, 0) };
    let dir = TestDir::new("hbench")?;
    let ns = namespace()?;
    let pki = Pki::new(&dir.path, "bench")?;
    let configs = write_configs(&dir.path, &pki)?;

    // The backends share the servers' CPU: the load generators get the other CPU to
    // themselves, so the servers (not the clients) are what runs out of CPU.
    let _backends = Backends::start(&ns, server_cpu)?;
    let (xlb, nginx) = start_servers(&ns, &dir.path, &configs, server_cpu)?;
    check_answers(&ns, &pki)?;

    println!(
        "\nhttps: xlb proxy vs nginx {} (server and backends on CPU {server_cpu}, load generators on CPU {client_cpu}; {secs} s per case)",
        nginx_version()
    );
    let mut results = serde_json::Map::new();
    let (x, g) = measure(&ns, &dir, &xlb, &nginx, client_cpu, secs)?;
    println!("  xlb: {x}\n  nginx: {g}");
    results.insert("xlb".into(), x.clone());
    results.insert("nginx".into(), g.clone());
    results.insert("table".into(), print_table(&x, &g));
    drop(nginx);

    if opts.testssl {
        testssl::report(&ns, &dir.path, &pki.ca, &mut results)?;
    }
    drop(xlb);
    let log = std::fs::read_to_string(dir.path.join("xlb.log")).unwrap_or_default();
    if let Some(l) = log.lines().find(|l| l.contains("stopped")) {
        println!(
            "xlb's counters: {}",
            l.split_once("stats=").map(|x| x.1).unwrap_or(l)
        );
    }
    Ok(Value::Object(results))
}

/// The namespace both servers run in, set for many short connections.
fn namespace() -> Result<Netns> {
    let ns = Netns::new("hbench")?;
    // Many short connections: let TIME_WAIT ports be reused, widen the port range.
    ns.run(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    ns.run(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"])?;
    ns.run(&["sysctl", "-qw", "net.core.somaxconn=4096"])?;
    Ok(ns)
}

/// Both servers answer through the backends before anything is measured.
fn check_answers(ns: &Netns, pki: &Pki) -> Result<()> {
    for port in [XLB_PORT, NGINX_PORT] {
        let out = ns.run(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            pki.ca.to_str().unwrap(),
            "--resolve",
            &format!("bench.example:{port}:127.0.0.1"),
            &format!("https://bench.example:{port}/"),
        ])?;
        if !out.starts_with("web") {
            bail!("port {port} answered {out:?}");
        }
    }
    Ok(())
}

/// Every case on both servers: xlb's results and nginx's.
fn measure(
    ns: &Netns,
    dir: &TestDir,
    xlb: &Server,
    nginx: &Server,
    client_cpu: usize,
    secs: u64,
) -> Result<(Value, Value)> {
    // One case on one server: (rate per second, server CPU share, p99 ms, failures).
    let case = |s: &Server, which: &str| -> Result<(f64, f64, f64, u64)> {
        let c0 = s.cpu();
        let t = Instant::now();
        let r = match which {
            "handshakes" => {
                let (n, failed, took) = handshakes(ns, client_cpu, s.port, secs as f64, 64)?;
                (n as f64 / took, f64::NAN, failed)
            }
            h => {
                let (rps, p99, failed) =
                    h2load(ns, client_cpu, s.port, h == "h2", secs, &dir.path)?;
                (rps, p99, failed)
            }
        };
        // CPU share over the measured part (both clients warm up for one second).
        let wall = t.elapsed().as_secs_f64();
        let cpu = (s.cpu() - c0) / wall;
        Ok((r.0, cpu, r.1, r.2))
    };
    // Each case runs xlb, nginx, nginx, xlb and averages each server's two runs, so a
    // change in the shared machine's load during the case weighs on both alike.
    let mut x = serde_json::Map::new();
    let mut g = serde_json::Map::new();
    for which in ["handshakes", "h1", "h2"] {
        let mut runs: [Vec<(f64, f64, f64, u64)>; 2] = [Vec::new(), Vec::new()];
        for (i, s) in [(0, xlb), (1, nginx), (1, nginx), (0, xlb)] {
            runs[i].push(case(s, which)?);
        }
        for (i, v) in [(0, &mut x), (1, &mut g)] {
            let r = &runs[i];
            let mean =
                |f: fn(&(f64, f64, f64, u64)) -> f64| r.iter().map(f).sum::<f64>() / r.len() as f64;
            let (rate, cpu, p99) = (mean(|r| r.0), mean(|r| r.1), mean(|r| r.2));
            let failed: u64 = r.iter().map(|r| r.3).sum();
            let runs_json = json!(r.iter().map(|r| r.0).collect::<Vec<_>>());
            if which == "handshakes" {
                v.insert("handshakes_per_s".into(), json!(rate));
                v.insert("handshakes_runs".into(), runs_json);
                v.insert("handshake_failures".into(), json!(failed));
                v.insert("handshake_server_cpu".into(), json!(cpu));
            } else {
                v.insert(format!("{which}_requests_per_s"), json!(rate));
                v.insert(format!("{which}_runs"), runs_json);
                v.insert(format!("{which}_p99_ms"), json!(p99));
                v.insert(format!("{which}_failed"), json!(failed));
                v.insert(format!("{which}_server_cpu"), json!(cpu));
            }
        }
    }
    Ok((Value::Object(x), Value::Object(g)))
}

/// One compared case: (xlb, nginx) for the rate and for the server's CPU-seconds.
struct Row {
    what: &'static str,
    unit: &'static str,
    rate: (f64, f64),
    /// The same per CPU-second of the server process (its rate if it had the CPU to
    /// itself); None for latencies.
    per_cpu: Option<(f64, f64)>,
    /// The ratio xlb / nginx the target asks for, if any.
    target: Option<f64>,
}

fn verdict(ratio: f64, target: Option<f64>) -> &'static str {
    match target {
        Some(t) if ratio >= t => "met",
        Some(_) => "NOT met",
        None => "",
    }
}

/// The compared cases, from xlb's results `x` and nginx's `g`.
fn rows(x: &Value, g: &Value) -> [Row; 5] {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let both = |k: &str| (f(x, k), f(g, k));
    let per_cpu = |rate: &str, cpu: &str| (f(x, rate) / f(x, cpu), f(g, rate) / f(g, cpu));
    [
        Row {
            what: "new TLS handshakes (no resumption)",
            unit: "/s",
            rate: both("handshakes_per_s"),
            per_cpu: Some(per_cpu("handshakes_per_s", "handshake_server_cpu")),
            target: Some(1.5),
        },
        Row {
            what: "keep-alive HTTP/1.1 requests",
            unit: "/s",
            rate: both("h1_requests_per_s"),
            per_cpu: Some(per_cpu("h1_requests_per_s", "h1_server_cpu")),
            target: Some(1.0),
        },
        Row {
            what: "keep-alive h2 requests",
            unit: "/s",
            rate: both("h2_requests_per_s"),
            per_cpu: Some(per_cpu("h2_requests_per_s", "h2_server_cpu")),
            target: Some(1.0),
        },
        Row {
            what: "p99 latency HTTP/1.1, 32 conns",
            unit: "ms",
            rate: both("h1_p99_ms"),
            per_cpu: None,
            target: None,
        },
        Row {
            what: "p99 latency h2, 32 conns x 8",
            unit: "ms",
            rate: both("h2_p99_ms"),
            per_cpu: None,
            target: None,
        },
    ]
}

/// The table of the compared cases and the servers' CPU; returns its rows for the JSON.
fn print_table(x: &Value, g: &Value) -> Value {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let rows = rows(x, g);
    println!();
    println!(
        "| {:<34} | {:>10} | {:>10} | {:>6} | {:>7} | {:>10} | {:>10} | {:>6} | {:>7} |",
        "case", "xlb", "nginx", "ratio", "target", "xlb/CPU-s", "nginx/CPU-s", "ratio", "target"
    );
    println!(
        "|{:-<36}|{:->12}|{:->12}|{:->8}|{:->9}|{:->12}|{:->12}|{:->8}|{:->9}|",
        "", "", "", "", "", "", "", "", ""
    );
    let mut table = Vec::new();
    for r in &rows {
        let ratio = r.rate.0 / r.rate.1;
        let (cpu_cols, cpu_ratio) = match r.per_cpu {
            Some((a, b)) => (
                format!(
                    "{:>10.0} | {:>10.0} | {:>5.2}x | {:>7}",
                    a,
                    b,
                    a / b,
                    verdict(a / b, r.target)
                ),
                Some(a / b),
            ),
            None => (
                format!("{:>10} | {:>10} | {:>6} | {:>7}", "", "", "", ""),
                None,
            ),
        };
        let target = match r.target {
            Some(_) => verdict(ratio, r.target).to_string(),
            None => "-".to_string(),
        };
        println!(
            "| {:<34} | {:>7.1} {:<2} | {:>7.1} {:<2} | {:>5.2}x | {:>7} | {} |",
            r.what, r.rate.0, r.unit, r.rate.1, r.unit, ratio, target, cpu_cols
        );
        table.push(json!({
            "case": r.what, "xlb": r.rate.0, "nginx": r.rate.1, "ratio": ratio,
            "target": r.target, "per_cpu_s": r.per_cpu.map(|(a, b)| [a, b]),
            "per_cpu_ratio": cpu_ratio,
        }));
    }
    println!(
        "(target: xlb/nginx >= 1.5 for handshakes, >= 1.0 for requests. Server CPU used: \
         handshakes xlb {:.2} nginx {:.2}, HTTP/1.1 {:.2} / {:.2}, h2 {:.2} / {:.2} of one CPU; \
         below 1 the load generators' CPU, not the server, limited the rate)",
        f(x, "handshake_server_cpu"),
        f(g, "handshake_server_cpu"),
        f(x, "h1_server_cpu"),
        f(g, "h1_server_cpu"),
        f(x, "h2_server_cpu"),
        f(g, "h2_server_cpu"),
    );
    json!(table)
}
