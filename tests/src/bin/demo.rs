//! `cargo xtask demo`: the reference edge in network namespaces. A client and an
//! attacker share a switch with the xlb edge and three web servers; xlb loads its
//! embedded default rules, balances a service over web1..web3 (nat), drops the attacker
//! in XDP, answers pings to the service address, and counts everything. All of it is
//! removed when the demo stops (Ctrl-C or --duration).
//!
//! ```text
//!   client   192.0.2.2   ─┐                      ┌─ web1 203.0.113.11:8080
//!   attacker 192.0.2.166 ─┼─ switch ─ edge (xlb) ─┼─ web2 203.0.113.12:8080
//!                         │   service 198.51.100.10:80/tcp └─ web3 203.0.113.13:8080
//! ```

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use xlb_tests::{
    netns::{Daemon, Netns},
    topology::{Backends, Topology, backend_v4},
};

/// The rules the demo edge starts with (embedded in the binary).
const EDGE_RULES: &str = include_str!("../../demo/edge.rules");
const SERVICE: &str = "198.51.100.10:80/tcp";
const URL: &str = "http://198.51.100.10/";

#[derive(Parser)]
struct Args {
    /// Seconds to keep traffic running before cleaning up (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
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
        anyhow::bail!("xlb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn probe(who: &str, ns: &Netns, url: &str) -> Option<String> {
    match ns.curl(url) {
        Ok(body) => {
            println!("  {who:<9} curl {url:<24} -> 200 \"{body}\"");
            Some(body)
        }
        Err(_) => {
            println!("  {who:<9} curl {url:<24} -> no answer (dropped by xlb)");
            None
        }
    }
}

/// `n` requests from the client: who answered how often.
fn spread(client: &Netns, n: usize) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for _ in 0..n {
        let who = client.curl(URL).unwrap_or_else(|_| "(no answer)".into());
        *count.entry(who).or_insert(0) += 1;
    }
    count
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }

    step("building the reference topology in network namespaces");
    let t = Topology::build("demo", 3, 8080, Backends::ViaEdge)?;
    println!("  client   192.0.2.2     ({})", t.client.name);
    println!("  attacker 192.0.2.166   ({})", t.attacker.name);
    println!(
        "  edge     xlb on x0: 192.0.2.1 (clients), 203.0.113.1 (servers)   ({})",
        t.edge.name
    );
    for (i, b) in t.backends.iter().enumerate() {
        println!(
            "  web{}     {}:8080, answers \"web{}\"   ({})",
            i + 1,
            backend_v4(i),
            i + 1,
            b.name
        );
    }

    step("starting xlb on the edge (native XDP on x0)");
    let xlb = Daemon::start(&t.edge, "x0", &t.dir, &[])?;
    println!("  xlb run --iface x0   (log: {})", xlb.log.display());

    step("the firewall: embedded default rules");
    let rules = t.dir.path.join("edge.rules");
    std::fs::write(&rules, EDGE_RULES).context("writing the rules file")?;
    show(&xlb, &["fw", "load", rules.to_str().unwrap()])?;
    show(&xlb, &["fw", "except", "22/tcp"])?;
    show(&xlb, &["fw", "port", "deny", "23/tcp"])?;
    show(&xlb, &["fw", "list"])?;

    step("the load balancer: one service over web1..web3 (nat: replies come back through xlb)");
    show(&xlb, &["vip", "add", SERVICE, "--mode", "nat"])?;
    let mut addrs = Vec::new();
    for i in 0..3 {
        show(
            &xlb,
            &[
                "backend",
                "add",
                SERVICE,
                &format!("{}:8080", backend_v4(i)),
            ],
        )?;
        addrs.push(backend_v4(i));
    }
    t.wait_neighbours(&addrs)?;
    show(&xlb, &["vip", "list"])?;

    step("traffic: requests spread over the web servers, the attacker is dropped in XDP");
    for (who, n) in spread(&t.client, 30) {
        println!("  client: {n:>2} of 30 requests answered by {who}");
    }
    probe("attacker", &t.attacker, URL);
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
        "  client ping 198.51.100.10 -> {}",
        if ping {
            "answered by xlb itself"
        } else {
            "no answer"
        }
    );
    show(&xlb, &["stats"])?;

    step("live changes: deny the client, remove it again, take web2 out of the pool");
    show(&xlb, &["fw", "deny", "192.0.2.2/32"])?;
    probe("client", &t.client, URL);
    show(&xlb, &["fw", "del", "192.0.2.2/32"])?;
    probe("client", &t.client, URL);
    show(
        &xlb,
        &[
            "backend",
            "del",
            SERVICE,
            &format!("{}:8080", backend_v4(1)),
        ],
    )?;
    for (who, n) in spread(&t.client, 20) {
        println!("  client: {n:>2} of 20 requests answered by {who}");
    }

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
        ok += t.client.curl(URL).is_ok() as u64;
        blocked += t.attacker.curl(URL).is_err() as u64;
        let v = xlb.json(&["stats", "--json"]);
        println!(
            "  t={:>3}s client served {ok}, attacker blocked {blocked}; xlb passed {}, forwarded {}, dropped {} packets",
            started.elapsed().as_secs(),
            v["verdicts"]["pass"]["packets"],
            v["verdicts"]["tx"]["packets"],
            v["verdicts"]["drop"]["packets"]
        );
    }

    step("cleaning up: stopping xlb (it detaches), removing namespaces and pins");
    drop(xlb);
    drop(t);
    println!("  done; nothing is left behind");
    Ok(())
}
