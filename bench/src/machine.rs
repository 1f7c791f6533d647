//! The machine a bench runs on, for its report (figures are only comparable on the same
//! kind of machine): CPU model and count, kernel, memory, and the load at the start;
//! and the CPU time a process has used, which the benches measure peers with.

use serde_json::{Value, json};

pub struct Machine {
    pub cpu_model: String,
    /// Logical CPUs listed in /proc/cpuinfo.
    pub cpus: usize,
    /// `uname -srm`.
    pub kernel: String,
    pub memory_bytes: u64,
    /// /proc/loadavg's 1, 5 and 15 minute averages.
    pub load: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |l: &str| l.split_once(':').map(|(_, v)| v.trim().to_string());
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(field)
            .unwrap_or_else(|| "unknown CPU".into());
        let cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        let load = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        Machine {
            cpu_model,
            cpus,
            kernel: uname(),
            memory_bytes: memory_kib * 1024,
            load,
        }
    }

    /// One line for a report's head.
    pub fn line(&self) -> String {
        format!(
            "{} x {}, {}, {:.1} GiB memory, load average {}",
            self.cpus,
            self.cpu_model,
            self.kernel,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.load
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "cpu_model": self.cpu_model, "cpus": self.cpus, "kernel": self.kernel,
            "memory_bytes": self.memory_bytes, "load_average": self.load,
        })
    }
}

/// The kernel's name, release and architecture, as `uname -srm` prints them.
fn uname() -> String {
    // SAFETY: uname fills the zeroed struct; its fields are NUL-terminated strings.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "unknown kernel".into();
        }
        let s = |f: &[libc::c_char]| {
            std::ffi::CStr::from_ptr(f.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        format!("{} {} {}", s(&u.sysname), s(&u.release), s(&u.machine))
    }
}

/// CPU time (user + system, all threads) process `pid` has used so far, in clock ticks
/// (/proc/<pid>/stat); None if it is gone or the file does not parse.
pub fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start at field 3, after
    // the last ')'; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (USER_HZ), the unit of /proc/stat and /proc/<pid>/stat.
pub fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}
