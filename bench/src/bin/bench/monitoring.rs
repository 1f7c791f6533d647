//! Monitoring's cost: the per-packet cost with a scrape loop running beside it, the
//! kernel log (a build without it, off, on), and a scrape at 1,000 services x 10
//! backends.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Instant,
};

use anyhow::Result;
use aya::programs::ProgramFd;
use serde_json::json;
use xlb::{
    api::Request,
    kernel::Datapath,
    metrics::{Metrics, Snapshot, http::to_text_format},
    model::services::Mode,
};
use xlb_tests::{
    fixture::{CLIENT_MAC, Fixture, LbNet},
    packet::Pkt,
};

use crate::rig::Bench;

pub struct MonitoringRows {
    pub rows: Vec<(String, f64)>,
    pub summary: Vec<String>,
    pub json: serde_json::Value,
}

/// A scrape as `xlb run` serves it: the kernel read, the encoding, the text format.
fn scrape_once(edge: &xlb::daemon::Edge, m: &Metrics) -> Result<usize> {
    let snap = Snapshot::read(&edge.dp, &edge.rules)?;
    Ok(to_text_format(&m.render(&snap)).len())
}

pub fn monitoring(
    fx: &mut Fixture,
    bench: &mut Bench,
    net: &LbNet,
    xlb_fd: &ProgramFd,
    fixed: u32,
) -> Result<MonitoringRows> {
    let mut out = MonitoringRows {
        rows: Vec::new(),
        summary: Vec::new(),
        json: serde_json::Value::Null,
    };
    let metrics = Metrics::new();
    let (quiet, busy, n) = scrape_loop(fx, bench, net, xlb_fd, &metrics, &mut out)?;
    let (no_code, off, on) = kernel_log(fx, bench, xlb_fd, fixed, &mut out)?;
    let (ms, sizes) = big_scrape(fx, &metrics, &mut out)?;
    out.json = json!({
        "dsr_hit_ns": quiet,
        "dsr_hit_scraping_ns": busy,
        "scrapes_during": n,
        "pass_no_log_code_ns": no_code,
        "pass_log_off_ns": off,
        "pass_log_debug_ns": on,
        "scrape_1000x10_ms": ms,
        "exposition_bytes_text": sizes.1,
        "exposition_bytes_openmetrics": sizes.0,
    });
    Ok(out)
}

/// A dsr flow-table hit, quiet and with a scrape loop running on the other CPU: (ns
/// quiet, ns scraping, scrapes meanwhile).
fn scrape_loop(
    fx: &mut Fixture,
    bench: &mut Bench,
    net: &LbNet,
    xlb_fd: &ProgramFd,
    metrics: &Metrics,
    out: &mut MonitoringRows,
) -> Result<(f64, f64, u64)> {
    // The dsr hit path, without and with a scrape loop on the other CPU.
    let vip = "198.51.100.20:80/tcp".to_string();
    fx.req(Request::VipAdd {
        vip: vip.clone(),
        mode: Mode::Dsr,
        affinity_source: false,
        echo: true,
        tcp_idle: None,
        udp_idle: None,
        snat: None,
    });
    for i in 0..3 {
        fx.req(Request::BackendAdd {
            vip: vip.clone(),
            backend: format!("203.0.113.{}:80", 11 + i),
            weight: 1,
            backup: false,
        });
    }
    let mut frame = Pkt::tcp("192.0.2.2", "198.51.100.20", 40000, 80).build();
    frame[0..6].copy_from_slice(&net.mac);
    frame[6..12].copy_from_slice(&CLIENT_MAC);
    bench.set_frame(frame)?;
    bench.ifindex = net.ifindex;
    let client = u32::from(std::net::Ipv4Addr::new(192, 0, 2, 2));
    let quiet = bench.ns(xlb_fd, client, false)?;
    let stop = AtomicBool::new(false);
    let scrapes = AtomicU64::new(0);
    let edge = &fx.edge;
    let (busy, secs) = std::thread::scope(|s| -> Result<(f64, f64)> {
        let t = Instant::now();
        let worker = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if scrape_once(edge, metrics).is_ok() {
                    scrapes.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let r = bench.ns(xlb_fd, client, false);
        stop.store(true, Ordering::Relaxed);
        let _ = worker.join();
        Ok((r?, t.elapsed().as_secs_f64()))
    })?;
    let n = scrapes.load(Ordering::Relaxed);
    out.rows
        .push(("xlb dsr, flow-table hit, no scrape".to_string(), quiet));
    out.rows.push((
        "xlb dsr, flow-table hit, scrape loop running".to_string(),
        busy,
    ));
    out.summary.push(format!(
        "dsr hit with a scrape loop beside it: {busy:.1} ns vs {quiet:.1} ns without ({n} scrapes in {secs:.1} s)"
    ));
    fx.req(Request::VipDel { vip });
    Ok((quiet, busy, n))
}

/// The no-rule pass built without the kernel log calls, with logging off and with it on
/// (debug, no reader): ns each.
fn kernel_log(
    fx: &mut Fixture,
    bench: &mut Bench,
    xlb_fd: &ProgramFd,
    fixed: u32,
    out: &mut MonitoringRows,
) -> Result<(f64, f64, f64)> {
    // The kernel log: a build without the log calls, logging off, logging on.
    bench.ifindex = 0;
    bench.set_frame(Pkt::tcp("192.0.2.10", "198.51.100.1", 40000, 80).build())?;
    let nolog = xlb::daemon::Edge::new(
        Datapath::load_object(xlb::kernel::object::XLB_NOLOG, None)?,
        Default::default(),
        None,
        std::time::Duration::ZERO,
    )?;
    let nolog_fd = nolog.dp.program().fd()?.try_clone()?;
    let mut no_code = Vec::new();
    let mut off = Vec::new();
    // Interleaved, twice each: the machine is shared and noisy.
    for _ in 0..2 {
        no_code.push(bench.ns(&nolog_fd, fixed, false)?);
        off.push(bench.ns(xlb_fd, fixed, false)?);
    }
    let no_code = no_code.iter().copied().fold(f64::MAX, f64::min);
    let off = off.iter().copied().fold(f64::MAX, f64::min);
    fx.edge.dp.log_level = lb_common::LOG_DEBUG;
    fx.edge.dp.set_config(&fx.edge.rules)?;
    let on = bench.ns(xlb_fd, fixed, false)?;
    fx.edge.dp.log_level = lb_common::LOG_OFF;
    fx.edge.dp.set_config(&fx.edge.rules)?;
    drop(nolog);
    out.rows.push((
        "xlb, no rules, pass: built without kernel log".to_string(),
        no_code,
    ));
    out.rows
        .push(("xlb, no rules, pass: kernel log off".to_string(), off));
    out.rows.push((
        "xlb, no rules, pass: kernel log debug (no reader)".to_string(),
        on,
    ));
    out.summary.push(format!(
        "kernel log off: {:+.1} ns per packet against the build without it",
        off - no_code
    ));
    Ok((no_code, off, on))
}

/// A scrape at 1,000 services x 10 backends: (ms, (OpenMetrics bytes, text bytes)).
fn big_scrape(
    fx: &mut Fixture,
    metrics: &Metrics,
    out: &mut MonitoringRows,
) -> Result<(f64, (usize, usize))> {
    // A scrape at 1,000 services x 10 backends: the real reads (counters, rule hits,
    // flow table, and the per-CPU counters of 10,000 backend ids in one batch walk),
    // the encoding and the text format. (The Maglev pool holds about 127 services of
    // the default table size, so the services themselves are not installed.)
    use xlb::kernel::balancer::stats::{BackendTraffic, ServiceTraffic};
    let (services, per) = (1000u32, 10u32);
    let mut times = Vec::new();
    let mut sizes = (0, 0);
    for _ in 0..5 {
        let t = Instant::now();
        let mut snap = Snapshot::read(&fx.edge.dp, &fx.edge.rules)?;
        let counters = fx
            .edge
            .dp
            .lb
            .backend_counters(services * per + 1, fx.edge.dp.ncpus())?;
        snap.services = (0..services)
            .map(|s| {
                let backends: Vec<BackendTraffic> = (0..per)
                    .map(|b| {
                        let id = 1 + s * per + b;
                        BackendTraffic {
                            backend: format!("[2001:db8:b::{:x}:{:x}]:8080", s, b)
                                .parse()
                                .unwrap(),
                            id,
                            stats: counters[id as usize],
                        }
                    })
                    .collect();
                ServiceTraffic {
                    vip: format!("[2001:db8:f::{s:x}]:443/tcp").parse().unwrap(),
                    mode: Mode::Nat,
                    total: Default::default(),
                    backends,
                }
            })
            .collect();
        let om = metrics.render(&snap);
        let text = to_text_format(&om);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        sizes = (om.len(), text.len());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let ms = times[2];
    out.summary.push(format!(
        "scrape, 1,000 services x 10 backends: {ms:.1} ms, {:.2} MiB exposition ({:.2} MiB OpenMetrics)",
        sizes.1 as f64 / (1 << 20) as f64,
        sizes.0 as f64 / (1 << 20) as f64
    ));
    Ok((ms, sizes))
}
