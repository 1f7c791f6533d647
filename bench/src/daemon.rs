//! The daemon's own figures, with a real `xlb run` (configuration file, HTTP health
//! checks) at the edge of the reference topology, three nginx backends behind it:
//!
//! - health-check detection: a backend's server process is killed (SIGKILL) and the
//!   control socket is polled every 10 ms until the daemon reports the backend down;
//! - a change's round trip (`fw deny` and `fw del` of a /32, alternately), as one raw
//!   control-socket request (the library's client, `xlb::api::call_raw`) and as a whole
//!   `xlb` CLI process;
//! - a bulk load of 100,000 distinct prefixes through `xlb fw load FILE`, end to end.
//!
//! Figures only: the targets are printed beside them, never asserted.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use xlb::{api::Request, model::rules::Action};

use xlb_tests::{
    netns::{Daemon, Spawned, xlb_bin},
    topology::{Backends, Topology, backend_v4},
};

use crate::{nginx::NginxBackends, prefixes};

pub struct Options {
    pub quick: bool,
}

const SVC: &str = "198.51.100.10:80/tcp";
/// The checks: every 0.5 s, down after 3 failures in a row.
const INTERVAL_S: f64 = 0.5;
const FALL: u32 = 3;
const DETECT_TARGET_S: f64 = 1.5;
const SOCKET_P99_TARGET_MS: f64 = 5.0;
const BULK_TARGET_S: f64 = 1.0;
const BULK_V4: usize = 90_000;
const BULK_V6: usize = 10_000;

/// The edge's interface and one nat service over the three nginx backends (port 80).
fn config() -> String {
    let mut s = format!(
        "[[interface]]\nname = \"x0\"\n\n[[service]]\naddress = \"{SVC}\"\nmode = \"nat\"\n\
         [service.health]\nkind = \"http\"\ninterval = \"{}ms\"\ntimeout = \"400ms\"\n\
         rise = 2\nfall = {FALL}\n",
        (INTERVAL_S * 1000.0) as u64
    );
    for i in 0..3 {
        s += &format!("[[service.backend]]\naddress = \"{}:80\"\n", backend_v4(i));
    }
    s
}

/// The `p`-th percentile (0..=100) of sorted values, nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// Backend `i` as the daemon reports it (state, health with its check count).
fn backend(socket: &Path, i: usize) -> Result<Value> {
    let mut v = xlb::api::call_raw(socket, &Request::VipList)?;
    let want = format!("{}:80", backend_v4(i));
    let list = v["services"][0]["backends"].take();
    list.as_array()
        .into_iter()
        .flatten()
        .find(|b| b["backend"] == want.as_str())
        .cloned()
        .with_context(|| format!("backend {want} is not in the service: {list}"))
}

/// Polls backend `i` every `every` until `done` holds for it (at most 15 s).
fn wait_backend(
    socket: &Path,
    i: usize,
    what: &str,
    every: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> Result<()> {
    let t = Instant::now();
    let limit = Duration::from_secs(15);
    while !done(&backend(socket, i)?) {
        if t.elapsed() > limit {
            bail!("backend {}: {what}: not within {limit:?}", backend_v4(i));
        }
        std::thread::sleep(every);
    }
    Ok(())
}

fn is(state: &'static str) -> impl Fn(&Value) -> bool {
    move |b| b["state"] == state
}

/// Kills a backend `reps` times (a different one each time), each time from "up": the
/// seconds from the kill to the daemon reporting it down. A failure strikes at any
/// moment of a check interval, so the kills are spread evenly over one: run k kills
/// (k + 1/2) / reps of an interval after a check.
fn detection(
    t: &Topology,
    xlb: &Daemon,
    web: &mut [Spawned],
    reps: usize,
) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for rep in 0..reps {
        let i = rep % web.len();
        // Checked up again after the last kill (rise 2), so each run starts alike.
        wait_backend(&xlb.socket, i, "up", Duration::from_millis(50), is("up"))?;
        let checks = |b: &Value| b["health"]["checks"].as_u64().unwrap_or(0);
        let before = checks(&backend(&xlb.socket, i)?);
        wait_backend(&xlb.socket, i, "checked", Duration::from_millis(5), |b| {
            checks(b) > before
        })?;
        let phase = INTERVAL_S * (rep as f64 + 0.5) / reps as f64;
        std::thread::sleep(Duration::from_secs_f64(phase));
        let t0 = Instant::now();
        web[i].child.kill().context("killing the backend")?;
        wait_backend(
            &xlb.socket,
            i,
            "down",
            Duration::from_millis(10),
            is("down"),
        )?;
        out.push((phase, t0.elapsed().as_secs_f64()));
        web[i] = t.nginx_backend(i)?;
    }
    Ok(out)
}

/// `n` changes alternating `fw deny P` and `fw del P`, through `change`, at most for
/// `limit`: each change's milliseconds.
fn changes(
    n: usize,
    limit: Duration,
    mut change: impl FnMut(&[String], bool) -> Result<()>,
) -> Result<Vec<f64>> {
    let start = Instant::now();
    let mut ms = Vec::with_capacity(n);
    for k in 0..n {
        if start.elapsed() > limit && k % 2 == 0 {
            break;
        }
        let target = vec![format!("203.0.113.{}/32", 100 + (k / 2) % 100)];
        let t = Instant::now();
        change(&target, k % 2 == 0)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(ms)
}

/// Milliseconds per change: through the control socket, through the CLI, and the state
/// file's write alone (the daemon's own, in the same directory).
struct RoundTrips {
    socket: Vec<f64>,
    cli: Vec<f64>,
    state_write: Vec<f64>,
}

/// The same changes through the control socket and through the CLI; and the part of a
/// change the disk decides: a change returns once the state file is written (two
/// fsyncs), measured alone with the daemon's own writer.
fn round_trips(xlb: &Daemon, dir: &Path, n: usize) -> Result<RoundTrips> {
    let limit = Duration::from_secs(60);
    let socket = changes(n, limit, |targets, deny| {
        let req = if deny {
            Request::Prefix {
                action: Action::Deny,
                targets: targets.to_vec(),
            }
        } else {
            Request::Del {
                except: false,
                targets: targets.to_vec(),
            }
        };
        xlb::api::call_raw(&xlb.socket, &req).map(drop)
    })?;
    let cli = changes(n, limit, |targets, deny| {
        let mut args = vec!["fw", if deny { "deny" } else { "del" }];
        args.extend(targets.iter().map(String::as_str));
        let out = xlb.cli(&args);
        if !out.status.success() {
            bail!("xlb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    })?;
    let path = dir.join("state-write-alone");
    let empty = xlb::model::desired::Desired::default();
    let state_write = changes(n, limit, |_, _| xlb::store::save(&path, &empty.borrowed()))?;
    Ok(RoundTrips {
        socket: sorted(socket),
        cli: sorted(cli),
        state_write: sorted(state_write),
    })
}

/// Loads the bulk file `runs` times, each into an empty rule set: (seconds each, the
/// CLI's last answer).
fn bulk(xlb: &Daemon, file: &Path, runs: usize) -> Result<(Vec<f64>, String)> {
    let mut secs = Vec::new();
    let mut said = String::new();
    for _ in 0..runs {
        xlb::api::call_raw(&xlb.socket, &Request::Flush)?;
        let t = Instant::now();
        let out = xlb.cli(&["fw", "load", file.to_str().context("a UTF-8 path")?]);
        secs.push(t.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!("xlb fw load: {}", String::from_utf8_lossy(&out.stderr));
        }
        said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stats = xlb::api::call_raw(&xlb.socket, &Request::Stats)?;
        let rules = stats["rules"].as_u64().unwrap_or(0);
        if rules != (BULK_V4 + BULK_V6) as u64 {
            bail!(
                "after xlb fw load the daemon has {rules} rules, not {}",
                BULK_V4 + BULK_V6
            );
        }
    }
    Ok((secs, said))
}

/// 90,000 IPv4 prefixes (none touching the test network's ranges, so the health checks'
/// answers still pass) and 10,000 IPv6 ones in 2001:db8::/32.
fn bulk_file(path: &Path) -> Result<()> {
    let used = [(0xc000_0200, 24), (0xc633_6400, 24), (0xcb00_7100, 24)];
    let mut v4 = prefixes::v4(BULK_V4 + 1000, 0xb01c);
    v4.retain(|p| used.iter().all(|u| !prefixes::v4_overlap(*p, *u)));
    if v4.len() < BULK_V4 {
        bail!("only {} usable IPv4 prefixes", v4.len());
    }
    v4.truncate(BULK_V4);
    let v6 = prefixes::v6(BULK_V6, 0xb06c);
    std::fs::write(path, prefixes::text(&v4, &v6))
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs the three measures; prints the table and returns the results.
pub fn run(opts: &Options) -> Result<Value> {
    let (reps, changes_n, bulk_runs) = if opts.quick {
        (2, 200, 1)
    } else {
        (5, 1000, 3)
    };
    let t = Topology::build("dbench", 3, 8080, Backends::ViaEdge)?;
    // Dropped before the topology (declared after it): nginx, then the daemon.
    let mut web = t.nginx_backends()?;
    let file = t.dir.path.join("xlb.toml");
    std::fs::write(&file, config())?;
    let xlb = Daemon::start_with(
        &t.edge,
        &t.dir,
        &["--config", file.to_str().context("a UTF-8 path")?],
    )?;
    let addrs: Vec<String> = (0..3).map(backend_v4).collect();
    t.wait_neighbours(&addrs)?;

    eprintln!("daemon: health-check detection, {reps} kills ...");
    let runs = detection(&t, &xlb, &mut web, reps)?;
    let detect = sorted(runs.iter().map(|r| r.1).collect());
    eprintln!("daemon: {changes_n} changes through the socket, then the CLI ...");
    let RoundTrips {
        socket,
        cli,
        state_write,
    } = round_trips(&xlb, &t.dir.path, changes_n)?;
    eprintln!("daemon: bulk load of {} prefixes ...", BULK_V4 + BULK_V6);
    let bulk_path = t.dir.path.join("bulk.txt");
    bulk_file(&bulk_path)?;
    let (loads, said) = bulk(&xlb, &bulk_path, bulk_runs)?;
    let loads = sorted(loads);
    let figures = Figures {
        runs,
        detect,
        socket,
        cli,
        state_write,
        loads,
        said,
    };
    print(&figures);
    Ok(json(&figures))
}

/// What the three measures found (each list sorted, but `runs`: in run order).
struct Figures {
    /// (kill after a check, detected), seconds.
    runs: Vec<(f64, f64)>,
    detect: Vec<f64>,
    socket: Vec<f64>,
    cli: Vec<f64>,
    state_write: Vec<f64>,
    loads: Vec<f64>,
    /// The CLI's last answer to the bulk load.
    said: String,
}

impl Figures {
    fn detect_max(&self) -> f64 {
        self.detect.last().copied().unwrap_or(f64::NAN)
    }

    fn socket_p99(&self) -> f64 {
        percentile(&self.socket, 99.0)
    }

    fn bulk_max(&self) -> f64 {
        self.loads.last().copied().unwrap_or(f64::NAN)
    }
}

/// The table of the measures, with their targets.
fn print(f: &Figures) {
    let Figures {
        runs,
        detect,
        socket,
        cli,
        state_write,
        loads,
        said,
    } = f;
    let (detect_max, socket_p99, bulk_max) = (f.detect_max(), f.socket_p99(), f.bulk_max());
    println!(
        "\nxlb daemon: `xlb run --config` on the edge of the test topology, 3 nginx backends, \
         http checks every {INTERVAL_S} s, fall {FALL} ({})",
        xlb_bin().display()
    );
    println!();
    println!(
        "| {:<46} | {:>5} | {:>13} | {:>13} | {:<22} | {:<7} |",
        "measure", "n", "median / p50", "max / p99", "target", ""
    );
    println!(
        "|{:-<48}|{:->7}|{:->15}|{:->15}|{:-<24}|{:-<9}|",
        "", "", "", "", "", ""
    );
    let rows = [
        (
            "health check: backend killed -> reported down",
            detect.len(),
            format!("{:.3} s", percentile(detect, 50.0)),
            format!("{detect_max:.3} s"),
            format!("max <= {DETECT_TARGET_S} s"),
            Some(detect_max <= DETECT_TARGET_S),
        ),
        (
            "change round trip: control socket request",
            socket.len(),
            format!("{:.2} ms", percentile(socket, 50.0)),
            format!("{socket_p99:.2} ms"),
            format!("p99 <= {SOCKET_P99_TARGET_MS} ms"),
            Some(socket_p99 <= SOCKET_P99_TARGET_MS),
        ),
        (
            "change round trip: xlb CLI process",
            cli.len(),
            format!("{:.2} ms", percentile(cli, 50.0)),
            format!("{:.2} ms", percentile(cli, 99.0)),
            "(the socket's applies)".to_string(),
            None,
        ),
        (
            "state file write alone (its part of a change)",
            state_write.len(),
            format!("{:.2} ms", percentile(state_write, 50.0)),
            format!("{:.2} ms", percentile(state_write, 99.0)),
            "-".to_string(),
            None,
        ),
        (
            "100k-prefix bulk load: xlb fw load, end to end",
            loads.len(),
            format!("{:.3} s", percentile(loads, 50.0)),
            format!("{bulk_max:.3} s"),
            format!("max < {BULK_TARGET_S} s"),
            Some(bulk_max < BULK_TARGET_S),
        ),
    ];
    for (what, n, mid, worst, target, met) in &rows {
        let v = met.map_or("", verdict);
        println!("| {what:<46} | {n:>5} | {mid:>13} | {worst:>13} | {target:<22} | {v:<7} |");
    }
    println!(
        "(detection: the kill lands anywhere in a check interval, then {FALL} checks fail \
         in a row, so {:.1} to {:.1} s plus the probes; runs, kill after a check -> \
         detected: {}; the bulk file: {BULK_V4} \
         IPv4 prefixes /16 to /32 and {BULK_V6} IPv6 /48 to /128, `{said}`; every change \
         is in the maps and in the state file, written with two fsyncs, before the answer)",
        (FALL - 1) as f64 * INTERVAL_S,
        FALL as f64 * INTERVAL_S,
        runs.iter()
            .map(|(p, s)| format!("{p:.2} s -> {s:.3} s"))
            .collect::<Vec<_>>()
            .join(", "),
    );
}

fn json(f: &Figures) -> Value {
    let Figures {
        runs,
        detect,
        socket,
        cli,
        state_write,
        loads,
        said,
    } = f;
    let (detect_max, socket_p99, bulk_max) = (f.detect_max(), f.socket_p99(), f.bulk_max());
    json!({
        "health_detection": {
            "interval_s": INTERVAL_S, "fall": FALL,
            "runs": runs.iter().map(|(p, s)| json!({"kill_after_check_s": p, "detected_s": s})).collect::<Vec<_>>(),
            "median_s": percentile(detect, 50.0), "max_s": detect_max,
            "target_max_s": DETECT_TARGET_S, "met": detect_max <= DETECT_TARGET_S,
        },
        "change_round_trip": {
            "socket": {"n": socket.len(), "p50_ms": percentile(socket, 50.0), "p99_ms": socket_p99},
            "cli": {"n": cli.len(), "p50_ms": percentile(cli, 50.0), "p99_ms": percentile(cli, 99.0)},
            "state_write_alone": {"n": state_write.len(), "p50_ms": percentile(state_write, 50.0), "p99_ms": percentile(state_write, 99.0)},
            "target_socket_p99_ms": SOCKET_P99_TARGET_MS, "met": socket_p99 <= SOCKET_P99_TARGET_MS,
        },
        "bulk_load": {
            "v4": BULK_V4, "v6": BULK_V6, "runs_s": loads,
            "median_s": percentile(loads, 50.0), "max_s": bulk_max,
            "target_s": BULK_TARGET_S, "met": bulk_max < BULK_TARGET_S, "cli_said": said,
        },
    })
}
