//! The datapath rows: the floor, xlb's pass, the prefix sets beside an LPM trie, the
//! balancer's modes and monitoring's cost, through the BPF_PROG_TEST_RUN rig; then the
//! Maglev table and the maps' memory.

use std::time::Instant;

use anyhow::Result;
use aya::programs::ProgramFd;
use serde_json::{Value, json};
use xlb::{
    api::Request,
    model::{rules::Action, services::Mode, synflood::SynMode},
};
use xlb_bench::prefixes;
use xlb_tests::{
    fixture::{CLIENT_MAC, Fixture, LbNet},
    packet::Pkt,
};

use crate::{
    maglev,
    monitoring::monitoring,
    ratelimit::rate_limits,
    rig::{Bench, map_memory},
};

/// What the datapath runs measured: the table's rows, the JSON's notes, and the figures
/// the targets are checked on.
struct Measured {
    rows: Vec<(String, f64)>,
    notes: serde_json::Map<String, Value>,
    floor: f64,
    pass: f64,
    /// (thousands of prefixes, xlb / lpm trie above the floor, random sources).
    ratios: Vec<(usize, f64)>,
    /// (mode, flow-table hit ns, new flow ns).
    lb_rows: Vec<(&'static str, f64, f64)>,
    /// Monitoring's summary lines.
    monitoring: Vec<String>,
    /// (mode, flow-table hit ns with flow records off, on), interleaved.
    records: Vec<(&'static str, f64, f64)>,
    /// The flow table's memory scaled to a million flows (bytes).
    flows_mem: f64,
}

/// The datapath rows, the balancer and Maglev.
pub fn xdp(quick: bool) -> Result<Value> {
    // Everything runs inside a private test network, whose FIB the balancer rows use.
    let net = LbNet::enter()?;
    let repeat = if quick { 100_000 } else { 1_000_000 };
    let mut m = measure(&net, quick, repeat)?;
    let pass_ratio = print(&m, repeat);
    m.notes.insert("maglev".into(), maglev::table());
    print_memory(&m.notes);
    let json = json!({
        "repeat": repeat,
        "rows": m.rows.iter().map(|(n, v)| json!({"case": n, "ns_per_packet": v})).collect::<Vec<_>>(),
        "pass_over_floor": pass_ratio,
        "xlb_over_lpm_random": m.ratios.iter().map(|(k, r)| json!({"prefixes_k": k, "ratio": r})).collect::<Vec<_>>(),
        "flow_records": m.records.iter().map(|(mode, off, on)| json!({"mode": mode, "hit_off_ns": off, "hit_on_ns": on, "cost_ns": on - off})).collect::<Vec<_>>(),
        "notes": m.notes,
    });
    Ok(json)
}

/// Every datapath row, in `net` (which the balancer rows arrive in), `repeat` packets a
/// run.
fn measure(net: &LbNet, quick: bool, repeat: u32) -> Result<Measured> {
    let sizes: &[usize] = if quick {
        &[100_000]
    } else {
        &[100_000, 1_000_000]
    };
    let mut bench = Bench::load(repeat)?;
    let fixed = u32::from(std::net::Ipv4Addr::new(192, 0, 2, 10));

    let floor_fd = bench.fd("bench_floor")?;
    let floor = bench.ns(&floor_fd, fixed, false)?;
    let mut rows = vec![("floor: empty XDP program".into(), floor)];
    let mut fx = Fixture::new();
    let xlb_fd = fx.edge.dp.program().fd()?.try_clone()?;
    let lpm_fd = bench.fd("bench_lpm")?;
    let pass = bench.ns(&xlb_fd, fixed, false)?;
    rows.push(("xlb, no rules, pass".into(), pass));
    let pass_random = bench.ns(&xlb_fd, fixed, true)?;
    rows.push(("xlb, no rules, random sources".into(), pass_random));
    let mut m = Measured {
        rows,
        notes: serde_json::Map::new(),
        floor,
        pass,
        ratios: Vec::new(),
        lb_rows: Vec::new(),
        monitoring: Vec::new(),
        records: Vec::new(),
        flows_mem: 0.0,
    };
    m.notes
        .insert("mem_xlb_no_rules_bytes".into(), json!(map_memory("XLB_")));
    // Rate limits: a bucket hit and a random-source flood, beside no limit.
    let rl = rate_limits(&mut fx, &mut bench, &xlb_fd, fixed)?;
    m.rows.extend(rl.rows.iter().cloned());
    m.notes.insert("rate_limits".into(), rl.json.clone());
    m.monitoring.extend(rl.summary.iter().cloned());
    m.prefix_sets(&mut fx, &mut bench, &xlb_fd, &lpm_fd, fixed, sizes)?;

    // The balancer: per packet, a flow-table hit (fixed source) and a new flow every
    // packet (random sources), per mode, arriving on v0 of the test network.
    bench.ifindex = net.ifindex;
    m.balancer(&mut fx, &mut bench, net, &xlb_fd)?;
    // Monitoring: the per-packet cost with a scrape loop running beside it, the kernel
    // log (a build without it, off, on), and a scrape at 1,000 services x 10 backends.
    let mon = monitoring(&mut fx, &mut bench, net, &xlb_fd, fixed)?;
    m.rows.extend(mon.rows.iter().cloned());
    m.notes.insert("monitoring".into(), mon.json.clone());
    m.monitoring.extend(mon.summary);
    let floor_again = {
        bench.ifindex = 0;
        bench.set_frame(Pkt::tcp("192.0.2.10", "198.51.100.1", 40000, 80).build())?;
        bench.ns(&floor_fd, fixed, false)?
    };
    m.notes.insert("floor_at_end_ns".into(), json!(floor_again));
    // The flow table is preallocated: its memory scaled to a million flows.
    m.flows_mem = map_memory("XLB_FLOWS") as f64 * (1_000_000.0 / lb_common::DEFAULT_FLOWS as f64);
    m.notes
        .insert("flows_per_million_bytes".into(), json!(m.flows_mem as u64));
    Ok(m)
}

impl Measured {
    /// xlb and the LPM trie with each prefix set of `sizes`: load time, random
    /// and fixed sources, memory.
    fn prefix_sets(
        &mut self,
        fx: &mut Fixture,
        bench: &mut Bench,
        xlb_fd: &ProgramFd,
        lpm_fd: &ProgramFd,
        fixed: u32,
        sizes: &[usize],
    ) -> Result<()> {
        for &n in sizes {
            let set = prefixes::v4(n, 0x5eed + n as u64);
            let hot = set[0].0 | 1;
            let text = prefixes::text(&set, &[]);
            let state =
                std::env::temp_dir().join(format!("xlb-bench-state-{}", std::process::id()));
            fx.edge.state_path = Some(state.clone());
            let t = Instant::now();
            fx.req(Request::Load {
                action: Action::Deny,
                text,
                replace: false,
            });
            let load = t.elapsed();
            let _ = std::fs::remove_file(&state);
            fx.edge.state_path = None;
            let lpm_load = bench.lpm_load(&set)?;
            let x_rand = bench.ns(xlb_fd, fixed, true)?;
            let x_hot = bench.ns(xlb_fd, hot, false)?;
            let l_rand = bench.ns(lpm_fd, fixed, true)?;
            let l_hot = bench.ns(lpm_fd, hot, false)?;
            let k = n / 1000;
            self.rows
                .push((format!("xlb, {k}k prefixes, random sources"), x_rand));
            self.rows
                .push((format!("xlb, {k}k prefixes, fixed source"), x_hot));
            self.rows
                .push((format!("lpm trie, {k}k prefixes, random sources"), l_rand));
            self.rows
                .push((format!("lpm trie, {k}k prefixes, fixed source"), l_hot));
            self.ratios
                .push((k, (x_rand - self.floor) / (l_rand - self.floor)));
            self.notes
                .insert(format!("load_{k}k_xlb_s"), json!(load.as_secs_f64()));
            self.notes
                .insert(format!("load_{k}k_lpm_s"), json!(lpm_load.as_secs_f64()));
            self.notes
                .insert(format!("mem_{k}k_xlb_bytes"), json!(map_memory("XLB_")));
            self.notes.insert(
                format!("mem_{k}k_lpm_bytes"),
                json!(map_memory("BENCH_LPM")),
            );
            fx.req(Request::Flush);
        }
        Ok(())
    }

    /// Each forwarding mode: a flow-table hit and a new flow every packet.
    fn balancer(
        &mut self,
        fx: &mut Fixture,
        bench: &mut Bench,
        net: &LbNet,
        xlb_fd: &ProgramFd,
    ) -> Result<()> {
        for (mode, m, port, last) in [
            ("dsr", Mode::Dsr, "80", 20),
            ("nat", Mode::Nat, "8080", 10),
            ("fullnat", Mode::Fullnat, "8080", 30),
        ] {
            let vip = format!("198.51.100.{last}:80/tcp");
            fx.req(Request::VipAdd {
                vip: vip.clone(),
                mode: m,
                affinity_source: false,
                echo: true,
                tcp_idle: None,
                udp_idle: None,
                snat: (m == Mode::Fullnat).then(|| "203.0.113.1".to_string()),
            });
            for i in 0..3 {
                fx.req(Request::BackendAdd {
                    vip: vip.clone(),
                    backend: format!("203.0.113.{}:{port}", 11 + i),
                    weight: 1,
                    backup: false,
                });
            }
            let dst = vip.split(':').next().unwrap().to_string();
            let mut frame = Pkt::tcp("192.0.2.2", &dst, 40000, 80).build();
            frame[0..6].copy_from_slice(&net.mac);
            frame[6..12].copy_from_slice(&CLIENT_MAC);
            bench.set_frame(frame)?;
            let client = u32::from(std::net::Ipv4Addr::new(192, 0, 2, 2));
            // A new SYN every packet is a SYN flood to the default protection (auto,
            // above 5000 new flows/s), which would answer it with a cookie: off, these
            // rows measure the flow path.
            fx.req(Request::VipSet {
                vip: vip.clone(),
                mode: None,
                affinity_source: None,
                echo: None,
                tcp_idle: None,
                udp_idle: None,
                snat: None,
                syn_protection: Some(SynMode::Off),
                syn_threshold: None,
                all_down: None,
            });
            let hit = bench.ns(xlb_fd, client, false)?;
            let miss = bench.ns(xlb_fd, client, true)?;
            self.rows.push((format!("xlb {mode}, flow-table hit"), hit));
            self.rows
                .push((format!("xlb {mode}, new flow every packet"), miss));
            self.lb_rows.push((mode, hit, miss));
            if m != Mode::Dsr {
                self.flow_records(fx, bench, xlb_fd, mode, client)?;
            }
            fx.req(Request::VipDel { vip });
        }
        Ok(())
    }
}

impl Measured {
    /// A flow-table hit with flow records off and on (`[flows]`: two atomic adds a
    /// packet), interleaved twice each, the lower of each kept.
    fn flow_records(
        &mut self,
        fx: &mut Fixture,
        bench: &mut Bench,
        xlb_fd: &ProgramFd,
        mode: &'static str,
        client: u32,
    ) -> Result<()> {
        let (mut off, mut on) = (f64::MAX, f64::MAX);
        for _ in 0..2 {
            off = off.min(bench.ns(xlb_fd, client, false)?);
            fx.edge.dp.flow_records = true;
            fx.edge.dp.set_config(&fx.edge.rules)?;
            on = on.min(bench.ns(xlb_fd, client, false)?);
            fx.edge.dp.flow_records = false;
            fx.edge.dp.set_config(&fx.edge.rules)?;
        }
        self.rows
            .push((format!("xlb {mode}, flow-table hit, flow records on"), on));
        self.records.push((mode, off, on));
        Ok(())
    }
}

/// The table of the rows and the targets; returns the no-rule pass over the floor.
fn print(m: &Measured, repeat: u32) -> f64 {
    println!("\nxlb bench: BPF_PROG_TEST_RUN, {repeat} repeats, median of 5 (ns per packet)\n");
    println!(
        "| {:<44} | {:>9} | {:>12} |",
        "case", "ns/pkt", "above floor"
    );
    println!("|{:-<46}|{:->11}|{:->14}|", "", "", "");
    for (name, ns) in &m.rows {
        println!("| {:<44} | {:>9.1} | {:>12.1} |", name, ns, ns - m.floor);
    }
    println!();
    println!("targets (same run):");
    let pass_ratio = m.pass / m.floor;
    println!(
        "  no-rule pass / floor           = {pass_ratio:.2}x  (target <= 3x)  {}",
        if pass_ratio <= 3.0 { "met" } else { "NOT met" }
    );
    for (k, r) in &m.ratios {
        println!(
            "  {k}k random: xlb / lpm above floor = {r:.3}  (target <= 0.2)  {}",
            if *r <= 0.2 { "met" } else { "NOT met" }
        );
    }
    for (k, v) in &m.notes {
        if k.starts_with("load_") {
            println!("  {k:<28} {:.3} s", v.as_f64().unwrap());
        }
    }
    for line in &m.monitoring {
        println!("  {line}");
    }
    for (mode, hit, miss) in &m.lb_rows {
        let above = hit - m.floor;
        println!(
            "  {mode} hit: {above:.1} ns above floor, {:.2}x the floor (target <= 40 ns and <= 6x)  {}; new flow {:.1} ns above floor",
            hit / m.floor,
            if above <= 40.0 && hit / m.floor <= 6.0 {
                "met"
            } else {
                "NOT met"
            },
            miss - m.floor
        );
    }
    for (mode, off, on) in &m.records {
        println!(
            "  {mode} hit with flow records on: {:+.1} ns ({off:.1} -> {on:.1}; two atomic adds, the same core)",
            on - off
        );
    }
    println!(
        "  flow table: {:.1} MiB per million flows",
        m.flows_mem / (1u64 << 20) as f64
    );
    if let Some(v) = m.notes.get("load_1000k_xlb_s") {
        let s = v.as_f64().unwrap();
        println!(
            "  1M-prefix bulk load = {s:.2} s (target < 2 s)  {}",
            if s < 2.0 { "met" } else { "NOT met" }
        );
    }
    pass_ratio
}

/// The maps' memory noted (`mem_*`), in MiB.
fn print_memory(notes: &serde_json::Map<String, Value>) {
    println!("\nmap memory (kernel memlock accounting):");
    for (k, v) in notes {
        if k.starts_with("mem_") && v.is_u64() {
            println!(
                "  {k:<28} {:>8.1} MiB",
                v.as_u64().unwrap() as f64 / (1 << 20) as f64
            );
        }
    }
}
