//! `cargo xtask demo`: the reference deployment in network namespaces, xlb at its edge
//! with its embedded default configuration (tests/demo/edge.toml), narrated:
//!
//! ```text
//!   client   192.0.2.2   ─┐                       ┌─ web1..web3 203.0.113.11-13
//!   attacker 192.0.2.166 ─┼─ switch ─ edge (xlb) ─┤    (HTTP :8080, HTTPS :8443)
//!                         │                       ├─ db1 203.0.113.21:5432 (primary)
//!                         │                       └─ db2 203.0.113.22:5432 (replica)
//!   services: 198.51.100.10:80 web (nat), 198.51.100.20:5432 database (nat, backup),
//!             https://198.51.100.30 (TLS ended by xlb, encrypted again to web1..web3)
//!   Prometheus on the edge scrapes xlb's /metrics.
//! ```
//!
//! It shows requests spread over web1..web3, the attacker dropped, HTTPS verified with
//! the demo CA, the database primary killed and the replica taking over (and back), the
//! metrics that moved, and xlb restarted while its datapath keeps serving. Everything it
//! made is removed when it stops (Ctrl-C, `--duration`); `--keep` leaves it running and
//! prints how to poke at it.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use xlb_tests::{
    netns::{Daemon, Netns, NsServer, Spawned, wait_until, xlb_bin},
    tcp::{ACK, SYN, Spoofed, send_spoofed},
    tls::{Pki, https_backend},
    topology::{Backends, Topology, backend_v4},
};

/// The edge's configuration (embedded in the binary).
const EDGE_CONFIG: &str = include_str!("../../demo/edge.toml");
const WEB: &str = "http://198.51.100.10/";
const DB: &str = "http://198.51.100.20:5432/";
const HTTPS_HOST: &str = "www.demo.example";
const HTTPS_ADDR: &str = "198.51.100.30";
const WEB_SVC: &str = "198.51.100.10:80/tcp";
/// The attack scene's flood: BURSTS bursts of BURST spoofed SYNs (bounded; each burst is
/// fewer than a veth ring holds, so none is lost on the way).
const BURSTS: u32 = 10;
const BURST: u32 = 100;

#[derive(Parser)]
struct Args {
    /// Seconds of steady traffic after the tour, then clean up (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// After the tour, leave everything running and print how to poke at it.
    #[arg(long)]
    keep: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn step(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn show(xlb: &Daemon, args: &[&str]) -> Result<()> {
    println!("$ xlb {}", args.join(" "));
    let out = xlb.cli(args);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("xlb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn probe(who: &str, ns: &Netns, url: &str) -> Option<String> {
    match ns.curl(url) {
        Ok(body) => {
            println!("  {who:<9} curl {url:<30} -> 200 \"{body}\"");
            Some(body)
        }
        Err(_) => {
            println!("  {who:<9} curl {url:<30} -> no answer (dropped by xlb)");
            None
        }
    }
}

/// `n` requests from the client: who answered how often.
fn spread(client: &Netns, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for _ in 0..n {
        let who = client.curl(url).unwrap_or_else(|_| "(no answer)".into());
        *count.entry(who).or_insert(0) += 1;
    }
    count
}

/// The client's HTTPS request, verified against the demo CA.
fn https(client: &Netns, ca: &str) -> Result<String> {
    client.run(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "--cacert",
        ca,
        "--resolve",
        &format!("{HTTPS_HOST}:443:{HTTPS_ADDR}"),
        &format!("https://{HTTPS_HOST}/"),
    ])
}

/// A Prometheus instant query run on the edge: (labels, value) per series.
fn query(edge: &Netns, q: &str) -> Result<Vec<(String, f64)>> {
    let out = edge.run(&[
        "curl",
        "-sf",
        "--max-time",
        "5",
        "-G",
        "http://127.0.0.1:9090/api/v1/query",
        "--data-urlencode",
        &format!("query={q}"),
    ])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let value = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect())
}

fn db_server(db: &Netns, name: &str) -> Result<NsServer> {
    NsServer::http(db, "[::]:5432", name)
}

/// The web service's SYN-protection counters and the edge's forward flows.
fn syn_state(xlb: &Daemon) -> Result<([u64; 4], u64)> {
    let json = |args: &[&str]| -> Result<serde_json::Value> {
        let out = xlb.cli(args);
        if !out.status.success() {
            bail!("xlb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let status = json(&["status", "--json"])?;
    let p = status["syn_protection"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["service"] == WEB_SVC))
        .context("the web service's protection in xlb status")?;
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    let flows = json(&["stats", "--json"])?["flows"]["forward"]
        .as_u64()
        .context("flows in xlb stats")?;
    Ok((
        [
            n("cookies_sent"),
            n("cookies_validated"),
            n("cookies_refused"),
            n("no_flow_dropped"),
        ],
        flows,
    ))
}

/// The attack scene: the attacker sends a bounded spoofed SYN flood (then spoofed ACKs)
/// at the web service in bursts, each waited for on xlb's counters, while the client
/// keeps fetching; xlb answers every SYN with a cookie and makes no flow for it.
fn attack(xlb: &Daemon, t: &Topology) -> Result<()> {
    step("a SYN flood: spoofed sources, answered with SYN cookies in XDP, no flow for them");
    show(xlb, &["vip", "set", WEB_SVC, "--syn-protection", "always"])?;
    let spoofed = Spoofed {
        prefix: "198.51.100.",
        base: 64,
        count: 64,
    };
    let (c0, f0) = syn_state(xlb)?;
    println!(
        "  attacker: {} spoofed SYNs from 198.51.100.64-127 in bursts of {BURST}, the client fetching between them",
        BURSTS * BURST
    );
    let (mut fetched, mut ok) = (0, 0);
    for b in 0..BURSTS {
        send_spoofed(
            &t.attacker,
            ("198.51.100.10", 80),
            SYN,
            &spoofed,
            b * BURST,
            BURST,
        )?;
        let want = c0[0] + u64::from((b + 1) * BURST);
        wait_until("cookies sent", Duration::from_secs(10), || {
            syn_state(xlb).is_ok_and(|(c, _)| c[0] >= want)
        })?;
        fetched += 1;
        ok += t.client.curl(WEB).is_ok_and(|b| b.starts_with("web")) as u32;
    }
    println!("  client: {ok} of {fetched} fetches answered during the flood");
    send_spoofed(&t.attacker, ("198.51.100.10", 80), ACK, &spoofed, 0, BURST)?;
    wait_until("cookies refused", Duration::from_secs(10), || {
        syn_state(xlb).is_ok_and(|(c, _)| c[2] >= c0[2] + u64::from(BURST))
    })?;
    println!("  attacker: {BURST} spoofed ACKs of no flow");
    let (c1, f1) = syn_state(xlb)?;
    let d = |i: usize| c1[i] - c0[i];
    println!(
        "  syn counters: cookies sent +{}, validated +{} (the client's), refused +{} (the ACKs), other no-flow drops +{}",
        d(0),
        d(1),
        d(2),
        d(3)
    );
    println!(
        "  flow table: {f0} -> {f1} forward flows: {} for the spoofed sources",
        if f1.saturating_sub(f0) <= d(1) {
            "none"
        } else {
            "some (unexpected)"
        }
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }

    step("building the reference deployment in network namespaces");
    let t = Topology::build("demo", 3, 8080, Backends::ViaEdge)?;
    let db1 = t.add_host("db1", "203.0.113.21", "2001:db8:b::21")?;
    let db2 = t.add_host("db2", "203.0.113.22", "2001:db8:b::22")?;
    t.edge.run(&[
        "ip",
        "addr",
        "add",
        &format!("{HTTPS_ADDR}/32"),
        "dev",
        "lo",
    ])?;
    println!("  client   192.0.2.2     ({})", t.client.name);
    println!("  attacker 192.0.2.166   ({})", t.attacker.name);
    println!(
        "  edge     xlb on x0: 192.0.2.1 (clients), 203.0.113.1 (servers)   ({})",
        t.edge.name
    );

    // A private CA: the edge's certificate for users, the web servers' for xlb.
    let dir = t.dir.path.clone();
    let pki = Pki::new(&dir, "demo")?;
    pki.issue("www", &[HTTPS_HOST])?;
    let web_cert = pki.issue("web", &["web.internal"])?;
    let mut servers = Vec::new();
    for (i, b) in t.backends.iter().enumerate() {
        let name = format!("web{}", i + 1);
        let tls = web_cert.server_config(None)?;
        servers.push(https_backend(
            b,
            "[::]:8443",
            &name,
            tls,
            Arc::new(AtomicUsize::new(0)),
        )?);
        println!(
            "  {name}     {}: HTTP :8080, HTTPS :8443 (certificate web.internal), answers \"{name}\"   ({})",
            backend_v4(i),
            b.name
        );
    }
    let mut primary = Some(db_server(&db1, "db1 (primary)")?);
    let _replica = db_server(&db2, "db2 (replica)")?;
    println!("  db1      203.0.113.21:5432 primary   ({})", db1.name);
    println!("  db2      203.0.113.22:5432 replica   ({})", db2.name);

    step("starting xlb on the edge with its embedded configuration");
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        EDGE_CONFIG.replace("{dir}", dir.to_str().context("directory")?),
    )?;
    let mut xlb = Daemon::start(
        &t.edge,
        "x0",
        &t.dir,
        &["--config", config.to_str().unwrap()],
    )?;
    println!(
        "  xlb run --iface x0 --config {}   (log: {})",
        config.display(),
        xlb.log.display()
    );
    let addrs: Vec<String> = (0..3)
        .map(backend_v4)
        .chain(["203.0.113.21".into(), "203.0.113.22".into()])
        .collect();
    t.wait_neighbours(&addrs)?;
    // Health checks bring the backends up (rise 2).
    wait_until("backends up", Duration::from_secs(15), || {
        t.client.curl(WEB).is_ok() && t.client.curl(DB).is_ok()
    })?;
    show(&xlb, &["status"])?;

    step("Prometheus on the edge, scraping xlb's /metrics every second");
    let prom_conf = dir.join("prometheus.yml");
    std::fs::write(
        &prom_conf,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: xlb\n    static_configs:\n      - targets: ['127.0.0.1:9100']\n",
    )?;
    let prom_data = dir.join("prometheus-data");
    let prom = Spawned::start(
        &t.edge,
        &[
            "prometheus",
            &format!("--config.file={}", prom_conf.display()),
            &format!("--storage.tsdb.path={}", prom_data.display()),
            "--web.listen-address=127.0.0.1:9090",
        ],
        &dir.join("prometheus.log"),
    )?;
    wait_until("prometheus", Duration::from_secs(30), || {
        query(&t.edge, "up{job=\"xlb\"}").is_ok_and(|r| r.iter().any(|(_, v)| *v == 1.0))
    })?;
    println!("  prometheus scrapes 127.0.0.1:9100 (query API on 127.0.0.1:9090 in the edge)");

    step("the web service: requests spread over web1..web3 (layer 4, nat)");
    for (who, n) in spread(&t.client, WEB, 30) {
        println!("  client: {n:>2} of 30 requests answered by {who}");
    }

    step("the firewall: the attacker is dropped in XDP, before the kernel's stack");
    probe("attacker", &t.attacker, WEB);
    println!("  attacker ping flood: 1000 echo requests, 1 ms apart (bounded to 5 s)");
    let _ = t.attacker.run(&[
        "ping",
        "-q",
        "-i",
        "0.001",
        "-c",
        "1000",
        "-w",
        "5",
        "198.51.100.10",
    ]);
    let ping = t
        .client
        .ok(&["ping", "-c", "1", "-W", "2", "198.51.100.10"]);
    println!(
        "  client   ping 198.51.100.10 -> {}",
        if ping {
            "answered by xlb itself"
        } else {
            "no answer"
        }
    );

    attack(&xlb, &t)?;

    step("HTTPS: ended by xlb with the demo CA's certificate, encrypted again to the web servers");
    let ca = pki.ca.to_str().unwrap().to_string();
    for _ in 0..3 {
        let body = https(&t.client, &ca)?;
        println!("  client   curl --cacert demo-ca.pem https://{HTTPS_HOST}/ -> \"{body}\"");
    }
    let plain = t.client.ok(&[
        "curl",
        "-sf",
        "--max-time",
        "3",
        "--resolve",
        &format!("{HTTPS_HOST}:443:{HTTPS_ADDR}"),
        &format!("https://{HTTPS_HOST}/"),
    ]);
    println!(
        "  client   the same without the demo CA -> {}",
        if plain {
            "accepted (unexpected)"
        } else {
            "refused: the certificate is not trusted"
        }
    );

    step("the database: the primary takes the connections, the replica stands by");
    probe("client", &t.client, DB);
    println!("  killing db1 (the primary) ...");
    primary.take();
    let killed = Instant::now();
    wait_until("failover", Duration::from_secs(15), || {
        t.client.curl(DB).is_ok_and(|b| b.starts_with("db2"))
    })?;
    println!(
        "  health checks saw it down; the replica answers {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    probe("client", &t.client, DB);
    show(&xlb, &["backend", "list", "198.51.100.20:5432/tcp"])?;
    println!("  restarting db1 ...");
    primary = Some(db_server(&db1, "db1 (primary)")?);
    wait_until("failback", Duration::from_secs(15), || {
        t.client.curl(DB).is_ok_and(|b| b.starts_with("db1"))
    })?;
    probe("client", &t.client, DB);

    step("the metrics that moved (Prometheus queries)");
    // Shown before xlb restarts: the kernel's counters outlive the daemon, the
    // proxy's and the health checks' start again with it. A scrape after the failback
    // first.
    let failback = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    wait_until(
        "a scrape after the failback",
        Duration::from_secs(10),
        || {
            query(&t.edge, "timestamp(up{job=\"xlb\"})")
                .is_ok_and(|r| r.iter().any(|(_, at)| *at > failback))
        },
    )?;
    for (title, q) in [
        (
            "packets dropped, by reason",
            "sum by (reason) (xlb_packets_total{verdict=\"drop\"}) > 0",
        ),
        (
            "new flows per backend",
            "sum by (backend) (xlb_backend_new_flows_total)",
        ),
        (
            "https requests by status class, and TLS handshakes",
            "sum by (__name__, class) ({__name__=~\"xlb_l7_requests_total|xlb_tls_handshakes_total\"})",
        ),
        (
            "health transitions of the database backends",
            "sum by (backend, to) (xlb_backend_health_transitions_total{service=\"198.51.100.20:5432/tcp\"})",
        ),
    ] {
        println!("  {title}:   {q}");
        for (labels, v) in query(&t.edge, q)? {
            println!("    {labels:<40} {v}");
        }
    }

    step("restarting xlb: the datapath keeps serving while no daemon runs");
    xlb.stop()?;
    println!(
        "  xlb stopped; its XDP program stays attached (pinned), the client still gets: {}",
        t.client.curl(WEB).unwrap_or_else(|e| format!("{e:#}"))
    );
    // The next daemon takes the datapath over (flows, rules and counters kept) and,
    // with --detach, removes it when the demo stops it.
    xlb = Daemon::start(
        &t.edge,
        "x0",
        &t.dir,
        &["--config", config.to_str().unwrap(), "--detach"],
    )?;
    let status = xlb.json(&["status", "--json"]);
    println!(
        "  xlb started again: {} ({} maps kept), program {} swapped in atomically",
        status["datapath"]["at_start"]["kind"],
        status["datapath"]["at_start"]["maps"],
        status["program_id"]
    );

    if args.keep {
        step("left running: poke at it (Ctrl-C cleans up)");
        let bin = xlb_bin();
        let x = format!(
            "ip netns exec {} {} --socket {}",
            t.edge.name,
            bin.display(),
            xlb.socket.display()
        );
        println!("  {x} status");
        println!("  {x} top");
        println!("  {x} stats");
        println!("  ip netns exec {} curl {WEB}", t.client.name);
        println!("  ip netns exec {} curl {DB}", t.client.name);
        println!(
            "  ip netns exec {} curl --cacert {ca} --resolve {HTTPS_HOST}:443:{HTTPS_ADDR} https://{HTTPS_HOST}/",
            t.client.name
        );
        println!(
            "  ip netns exec {} curl -s 'http://127.0.0.1:9090/api/v1/query?query=xlb_packets_total'",
            t.edge.name
        );
        println!(
            "  ip netns exec {} curl -s http://127.0.0.1:9100/metrics",
            t.edge.name
        );
        while !STOP.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    } else {
        let until = args
            .duration
            .map(|d| Instant::now() + Duration::from_secs(d));
        step(match until {
            Some(_) => "steady traffic for the requested duration",
            None => "steady traffic until Ctrl-C",
        });
        let started = Instant::now();
        let (mut ok, mut blocked) = (0u64, 0u64);
        while !STOP.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u) {
            ok += t.client.curl(WEB).is_ok() as u64;
            blocked += t.attacker.curl(WEB).is_err() as u64;
            let v = xlb.json(&["stats", "--json"]);
            println!(
                "  t={:>3}s client served {ok}, attacker blocked {blocked}; xlb passed {}, forwarded {}, dropped {} packets",
                started.elapsed().as_secs(),
                v["verdicts"]["pass"]["packets"],
                v["verdicts"]["tx"]["packets"],
                v["verdicts"]["drop"]["packets"]
            );
        }
    }

    step("cleaning up: stopping Prometheus and xlb (it detaches), removing namespaces and pins");
    drop(prom);
    drop(xlb);
    drop(primary);
    drop(servers);
    drop(db1);
    drop(db2);
    drop(t);
    println!("  done; nothing is left behind");
    Ok(())
}
