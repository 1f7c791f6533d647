//! `cargo xtask demo`: a small edge in network namespaces, with xlb in front of a web
//! server. A client and an attacker share a switch with the edge; xlb loads its embedded
//! default rules, then the demo shows allowed and denied traffic, a live rule change and
//! the counters. Everything it creates is removed when it stops (Ctrl-C or --duration).
//!
//! ```text
//!   client 192.0.2.2 ──┐
//!                      ├── switch (bridge) ── edge: xlb on x0, web server :80
//!   attacker 203.0.113.66 ┘                   192.0.2.1, 203.0.113.1
//! ```

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Parser;
use xlb_tests::netns::{Daemon, HttpServer, Netns, TestDir, veth};

/// The rules the demo edge starts with (embedded in the binary).
const EDGE_RULES: &str = include_str!("../../demo/edge.rules");

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

fn probe(who: &str, ns: &Netns, url: &str) -> bool {
    match ns.curl(url) {
        Ok(body) => {
            println!("  {who:<9} curl {url:<22} -> 200 \"{body}\"");
            true
        }
        Err(_) => {
            println!("  {who:<9} curl {url:<22} -> no answer (dropped by xlb)");
            false
        }
    }
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

    step("building the topology in network namespaces");
    let dir = TestDir::new("demo")?;
    let switch = Netns::new("switch")?;
    let client = Netns::new("client")?;
    let attacker = Netns::new("attacker")?;
    let edge = Netns::new("edge")?;
    switch.run(&["ip", "link", "add", "br0", "type", "bridge"])?;
    switch.run(&["ip", "link", "set", "br0", "up"])?;
    veth(&client, "c0", &["192.0.2.2/24"], &switch, "sw-c", &[])?;
    veth(&attacker, "a0", &["203.0.113.66/24"], &switch, "sw-a", &[])?;
    veth(
        &edge,
        "x0",
        &["192.0.2.1/24", "203.0.113.1/24"],
        &switch,
        "sw-x",
        &[],
    )?;
    for port in ["sw-c", "sw-a", "sw-x"] {
        switch.run(&["ip", "link", "set", port, "master", "br0"])?;
    }
    let _web = HttpServer::start(&edge, "0.0.0.0:80", "hello from the edge's web server")?;
    println!("  client   192.0.2.2     ({})", client.name);
    println!("  attacker 203.0.113.66  ({})", attacker.name);
    println!(
        "  edge     192.0.2.1, 203.0.113.1, web server on :80, xlb on x0 ({})",
        edge.name
    );

    step("starting xlb on the edge's x0 (native XDP)");
    let xlb = Daemon::start(&edge, "x0", &dir, &[])?;
    println!("  xlb run --iface x0   (log: {})", xlb.log.display());
    probe("client", &client, "http://192.0.2.1/");
    probe("attacker", &attacker, "http://203.0.113.1/");

    step("loading the embedded default rules");
    let rules = dir.path.join("edge.rules");
    std::fs::write(&rules, EDGE_RULES).context("writing the rules file")?;
    show(&xlb, &["fw", "load", rules.to_str().unwrap()])?;
    show(&xlb, &["fw", "except", "22/tcp"])?;
    show(&xlb, &["fw", "port", "deny", "23/tcp", "6000-6063/tcp"])?;
    show(&xlb, &["fw", "list"])?;

    step("traffic: the client is served, the attacker is dropped in XDP");
    probe("client", &client, "http://192.0.2.1/");
    probe("attacker", &attacker, "http://203.0.113.1/");
    println!("  attacker ping flood: 2000 echo requests, 1 ms apart (bounded to 5 s)");
    let _ = attacker.run(&[
        "ping",
        "-q",
        "-i",
        "0.001",
        "-c",
        "2000",
        "-w",
        "5",
        "203.0.113.1",
    ]);
    show(&xlb, &["stats"])?;

    step("a live change: deny the client, then remove the rule (no restart)");
    show(&xlb, &["fw", "deny", "192.0.2.2/32"])?;
    probe("client", &client, "http://192.0.2.1/");
    show(&xlb, &["fw", "del", "192.0.2.2/32"])?;
    probe("client", &client, "http://192.0.2.1/");

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
        ok += client.curl("http://192.0.2.1/").is_ok() as u64;
        blocked += attacker.curl("http://203.0.113.1/").is_err() as u64;
        let v = xlb.json(&["stats", "--json"]);
        println!(
            "  t={:>3}s client served {ok}, attacker blocked {blocked}; xlb passed {} and dropped {} packets",
            started.elapsed().as_secs(),
            v["verdicts"]["pass"]["packets"],
            v["verdicts"]["drop"]["packets"]
        );
    }

    step("cleaning up: stopping xlb (it detaches), removing namespaces and pins");
    drop(xlb);
    println!("  done; nothing is left behind");
    Ok(())
}
