//! `cargo xtask`: set-up, build, test, demo, bench and run for xlb.
//!
//! xtask depends on nothing of xlb's own, so it builds on a machine where the BPF
//! toolchain is not installed yet; `setup` then installs it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod package;

/// Debian packages the build needs (see docs/install.md).
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
];
/// Commands the tests and the demo run, and the Debian package that brings each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("ping", "iputils-ping"),
    ("setpriv", "util-linux"),
    ("mount", "mount"),
    ("sysctl", "procps"),
    ("ethtool", "ethtool"),
    // The https bench: nginx beside xlb's proxy, h2load as the client, testssl.sh.
    ("taskset", "util-linux"),
    ("nginx", "nginx"),
    ("h2load", "nghttp2-client"),
    ("testssl", "testssl.sh"),
    // The monitoring test scrapes xlb with a real Prometheus and checks the exposition.
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    // The package test: lintian checks the .deb.
    ("lintian", "lintian"),
    // The flow-record test: nfcapd receives xlb's IPFIX, nfdump reads it back.
    ("nfcapd", "nfdump"),
    ("nfdump", "nfdump"),
];
/// What `bench --peers` compares xlb with, and drives the traffic with.
const PEER_TOOLS: &[(&str, &str)] = &[
    ("xdp-filter", "xdp-tools"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("haproxy", "haproxy"),
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("bpftool", "bpftool"),
];
const CLIPPY_DRIVER: &str = "/usr/bin/clippy-driver";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Parser)]
#[command(about = "xlb's build, test, demo and bench tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install whatever is missing (Debian packages, bpf-linker, bpffs); idempotent.
    Setup,
    /// Set up, then build everything (the XDP object is built by lb-userspace's build.rs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, and run every test (unit, kernel packet tests, namespace tests).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// fmt --check and clippy -D warnings on the workspace and on the kernel crate.
    Lint,
    /// The reference deployment in namespaces with xlb at its edge, narrated.
    Demo {
        /// Run this many seconds, then clean up (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// After the tour, leave everything running and print how to poke at it
        /// (Ctrl-C cleans up).
        #[arg(long, conflicts_with = "duration")]
        keep: bool,
    },
    /// Measure the datapath (BPF_PROG_TEST_RUN) and the https service (beside nginx,
    /// plus testssl.sh) against their baselines, and the daemon's health checks, control
    /// round trip and bulk load; writes target/bench.json.
    Bench {
        /// Fewer repeats and smaller prefix sets, short https runs, no testssl.sh.
        #[arg(long)]
        quick: bool,
        /// Only one part: `xdp`, `https` or `daemon`; with `--peers`: `firewall`,
        /// `balancer`, `balancer-packets`, `tls` or `synflood`.
        #[arg(long)]
        only: Option<String>,
        /// Compare with xdp-filter, nftables, iptables and HAProxy on the namespace
        /// topology instead (installs them); writes target/peers.json and .svg.
        #[arg(long)]
        peers: bool,
    },
    /// Build the Debian package (target/debian/xlb_VERSION_ARCH.deb): the binary, a
    /// systemd unit, the example configuration, man pages, completions, the docs.
    Package {
        /// Package the existing debug build instead of building a release (tests).
        #[arg(long)]
        debug: bool,
        /// Where the package goes (default: target/debian).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Set up, build and run `xlb run` with these arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and ends with one summary line over every
/// test binary: "N passed, N failed".
fn run_tests(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    println!("\n{passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}

fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(cmd).is_file()
        || Path::new("/sbin").join(cmd).is_file()
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

fn bpf_linker_ok() -> bool {
    Command::new(cargo_home().join("bin/bpf-linker"))
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

fn is_bpffs(path: &str) -> bool {
    let Ok(out) = Command::new("stat").args(["-f", "-c", "%t", path]).output() else {
        return false;
    };
    i64::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 16) == Ok(BPF_FS_MAGIC)
}

fn setup() -> Result<()> {
    setup_with(&[])
}

/// `setup`, plus the Debian packages that bring `extra` commands.
fn setup_with(extra: &[(&str, &str)]) -> Result<()> {
    let t = Instant::now();
    let mut missing: Vec<&str> = Vec::new();
    if !Path::new("/usr/bin/rustc").exists()
        || !Path::new("/usr/lib/rustlib/bpfel-unknown-none").exists()
    {
        missing.extend(BUILD_PACKAGES);
    } else if !Path::new(LLVM_PREFIX).join("lib").exists() {
        missing.push("llvm-22-dev");
    }
    for (cmd, pkg) in TOOLS.iter().chain(extra) {
        if !have(cmd) {
            missing.push(pkg);
        }
    }
    let linker = bpf_linker_ok();
    let bpffs = is_bpffs(BPFFS);
    if (!missing.is_empty() || !bpffs) && !is_root() {
        bail!(
            "setup needs root to install {:?}{}: run `sudo -E cargo xtask setup`",
            missing,
            if bpffs { "" } else { " and mount bpffs" }
        );
    }
    if !missing.is_empty() {
        eprintln!("xtask setup: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !linker {
        eprintln!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22");
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--force",
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX))?;
    }
    if !bpffs {
        eprintln!("xtask setup: mounting bpffs at {BPFFS}");
        std::fs::create_dir_all(BPFFS).ok();
        run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    }
    if !missing.is_empty() || !linker || !bpffs {
        eprintln!("xtask setup: done in {:.1} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    // bpf-linker lives in cargo's bin directory; build.rs finds it through PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![cargo_home().join("bin")];
    dirs.extend(std::env::split_paths(&path));
    c.env("PATH", std::env::join_paths(dirs).unwrap());
    c
}

fn need_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{what} needs root (BPF, network namespaces): run it with `sudo -E cargo xtask {what}`"
        );
    }
    Ok(())
}

/// Removes what an interrupted harness run may have left (namespaces, mounts).
fn cleanup_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let pid = name.strip_prefix("xlbt-").and_then(|r| r.split('-').next());
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.task {
        Task::Setup => setup(),
        Task::Build { release } => {
            setup()?;
            let mut c = cargo();
            c.args(["build", "--workspace", "--bins"]);
            if release {
                c.arg("--release");
            }
            run(&mut c)
        }
        Task::Test { args } => {
            setup()?;
            need_root("test")?;
            run(cargo().args(["build", "--workspace", "--bins"]))?;
            let bin = root().join("target/debug/xlb");
            let res = run_tests(
                cargo()
                    .args(["test", "--workspace"])
                    .args(&args)
                    .env("XLB_BIN", &bin),
            );
            cleanup_leftovers();
            res
        }
        Task::Lint => {
            setup()?;
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            // The kernel crate: Debian's clippy matches Debian's rustc (rustup's clippy
            // has no `core` for the BPF target).
            if !Path::new(CLIPPY_DRIVER).exists() {
                need_root("lint")?;
                run(Command::new("apt-get")
                    .args(["install", "-y", "-q", "rust-web-clippy"])
                    .env("DEBIAN_FRONTEND", "noninteractive"))?;
            }
            let ebpf = root().join("lb-ebpf");
            run(cargo().current_dir(&ebpf).args(["fmt", "--", "--check"]))?;
            run(cargo()
                .current_dir(&ebpf)
                .args(["check", "--release", "--target", "bpfel-unknown-none"])
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTC_WORKSPACE_WRAPPER", CLIPPY_DRIVER)
                .env(
                    "CLIPPY_ARGS",
                    "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
                )
                .env("CARGO_TARGET_DIR", root().join("target/bpf-clippy")))
        }
        Task::Demo { duration, keep } => {
            setup()?;
            need_root("demo")?;
            run(cargo().args(["build", "--release", "--bins"]))?;
            let mut c = Command::new(root().join("target/release/xlb-demo"));
            c.env("XLB_BIN", root().join("target/release/xlb"));
            if let Some(d) = duration {
                c.args(["--duration", &d.to_string()]);
            }
            if keep {
                c.arg("--keep");
            }
            let res = run(&mut c);
            cleanup_leftovers();
            res
        }
        Task::Bench { quick, only, peers } => {
            setup_with(if peers { PEER_TOOLS } else { &[] })?;
            need_root("bench")?;
            // xlb itself, and the benchmarks' crate (xlb-bench and xlb-peers).
            run(cargo().args([
                "build",
                "--release",
                "-p",
                "lb-userspace",
                "-p",
                "xlb-bench",
                "--bins",
            ]))?;
            let (bin, out) = if peers {
                ("xlb-peers", "target/peers.json")
            } else {
                ("xlb-bench", "target/bench.json")
            };
            let mut c = Command::new(root().join("target/release").join(bin));
            c.env("XLB_BIN", root().join("target/release/xlb"));
            c.arg("--out").arg(root().join(out));
            if quick {
                c.arg("--quick");
            }
            if let Some(part) = only {
                c.args(["--only", &part]);
            }
            run(&mut c)
        }
        Task::Package { debug, out } => {
            setup()?;
            package::package(debug, out).map(|_| ())
        }
        Task::Run { args } => {
            setup()?;
            need_root("run")?;
            run(cargo().args(["build", "--release", "--bin", "xlb"]))?;
            run(Command::new(root().join("target/release/xlb"))
                .arg("run")
                .args(&args))
        }
    }
}
