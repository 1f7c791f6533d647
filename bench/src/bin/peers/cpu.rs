//! CPU measurement: the machine's busy time, a process's or a thread's CPU time, the
//! kernel's run time of XDP programs (bpf_stats), and the CPU the flood runs on.

use anyhow::{Context, Result};
use xlb_bench::machine::{process_cpu_ticks, ticks_per_sec};

/// Busy CPU time of the whole machine so far (all CPUs; /proc/stat, USER_HZ ticks).
pub fn busy_ns() -> Result<u64> {
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
    Ok(ticks_to_ns(busy))
}

/// USER_HZ ticks (/proc's CPU times) in nanoseconds.
fn ticks_to_ns(ticks: u64) -> u64 {
    ticks * 1_000_000_000 / ticks_per_sec()
}

/// CPU time (user + system, all threads) process `pid` has used so far.
pub fn process_cpu_ns(pid: u32) -> Result<u64> {
    let ticks = process_cpu_ticks(pid).with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(ticks_to_ns(ticks))
}

/// xlb's XDP programs (the entry and the balancer it tail-calls), by name.
pub fn is_xlb_prog(name: &str) -> bool {
    name == "xlb" || name == "xlb_balance"
}

/// Total run time and runs of the loaded XDP programs whose names pass `pick`
/// (kernel.bpf_stats_enabled must be on).
pub fn bpf_run(pick: &dyn Fn(&str) -> bool) -> Result<(u64, u64)> {
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

/// Run time per run of the programs `pick` names since `since` (a `bpf_run` reading).
/// Saturating: a program unloaded in between takes its counts with it.
pub fn bpf_ns_per_run(pick: &dyn Fn(&str) -> bool, since: (u64, u64)) -> Result<f64> {
    let (ns, runs) = bpf_run(pick)?;
    Ok(ns.saturating_sub(since.0) as f64 / runs.saturating_sub(since.1).max(1) as f64)
}

/// CPU time (ns) of a task so far, from its schedstat (nanoseconds; stat counts 10 ms
/// ticks, too coarse for a flood of a fraction of a second).
pub fn schedstat_ns(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The ksoftirqd threads' /proc directories: the receive path runs there when it is
/// not run right away in the sender's context. Found before a measure, which then
/// reads only their schedstat (walking /proc costs about a millisecond of CPU, tens of
/// ns a frame in a flood of new flows).
pub fn ksoftirqd_dirs() -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .map(|e| e.path())
        .collect()
}

/// CPU time (ns) of a thread of this process so far.
pub fn thread_ns(tid: i32) -> u64 {
    schedstat_ns(std::path::Path::new(&format!("/proc/self/task/{tid}")))
}

/// The CPU that the flood and the client run on (see `pin`).
const FLOOD_CPU: usize = 0;

/// Pins the calling thread to FLOOD_CPU. x0's NAPI runs on the CPU that scheduled it:
/// the flood's and the client's both, once they share a CPU, so every frame is taken
/// off x0's ring where it was put (no ring overflow while the other CPU polls) and the
/// softirqs run in one of the two threads or in that CPU's ksoftirqd, all counted.
pub fn pin() -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(FLOOD_CPU, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .context(format!("pinning a thread to CPU {FLOOD_CPU}"));
        }
    }
    Ok(())
}
