//! The command line: clap definitions and dispatch. One module per verb group, each
//! with its printers (human text, or the typed reply as JSON with `--json`):
//! `run` (`run`, `proxy`, `check-config`, `down`), `fw`, `services` (`vip`, `backend`),
//! `status` (`status`, `reload`, `stats`), `top`; `format` holds the shared helpers.

pub mod exit;
pub mod format;
pub mod fw;
pub mod limits;
pub mod run;
pub mod services;
pub mod status;
pub mod top;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use fw::Fw;
pub use services::{BackendCmd, VipCmd};

use crate::{
    api::{DEFAULT_BPFFS, DEFAULT_SOCKET, DEFAULT_STATE},
    metrics::kernel_log::KernelLog,
    model::interface::AttachMode,
};

/// `xlb --version`: the version, the commit it was built from, and the build of the
/// XDP program inside it.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("XLB_COMMIT"),
    ", XDP object ",
    env!("XLB_OBJECT_ID"),
    ")"
);

#[derive(Parser, Debug)]
#[command(name = "xlb", version = VERSION, about = "XDP firewall and load balancer")]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "XLB_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The largest file xlb reads (configuration, state, rules, certificates), e.g.
    /// 64MiB or 1GiB; the daemon applies it to reloads and to `fw load` requests too.
    #[arg(long, global = true, env = "XLB_MAX_FILE_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub max_file_size: u64,
    /// Print the result as JSON (every verb), and errors as a JSON object on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// What every verb is given besides its own arguments.
pub struct Ctx {
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// `--json`.
    pub json: bool,
}

impl Command {
    /// Whether the command serves (a daemon or the proxy) rather than runs and exits.
    pub fn serves(&self) -> bool {
        matches!(self, Command::Run { .. } | Command::Proxy { .. })
    }
}

/// The shells `xlb completions` writes for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `xlb stats` actions.
#[derive(Subcommand, Debug)]
pub enum StatsCmd {
    /// Zero every counter: packets and bytes by reason, rule hits, services' and
    /// backends' traffic (the metrics' counters restart too).
    Reset,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and attach the XDP program, serve the control socket until SIGINT/SIGTERM
    /// (SIGHUP reloads the configuration file). A datapath left running by an earlier
    /// run (a restart, an upgrade, a crash) is taken over without a lost packet.
    Run {
        /// The interface to attach to (replaces the configuration's [[interface]] list).
        #[arg(long)]
        iface: Option<String>,
        /// The XDP mode for --iface.
        #[arg(long, value_enum, default_value = "native", requires = "iface")]
        mode: AttachMode,
        /// The configuration file: validated whole before anything changes, applied as
        /// a diff against the one the stored state was built from.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A group whose members may use the control socket (mode 0660 instead of 0600;
        /// overrides the configuration's `control.group`).
        #[arg(long)]
        socket_group: Option<String>,
        /// A directory on a bpffs holding the datapath (maps, links): it outlives the
        /// daemon, so the next `xlb run` adopts it.
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// The stored rules (restored at start, rewritten atomically on every change).
        #[arg(long, default_value = DEFAULT_STATE)]
        state: PathBuf,
        /// When stopped, detach from the interfaces and remove the pins (default: the
        /// datapath keeps forwarding until the next `xlb run` or `xlb down`).
        #[arg(long)]
        detach: bool,
        /// Another build of the XDP program (an ELF object built from lb-ebpf) instead
        /// of the one inside this binary: swapped in atomically for the running one,
        /// keeping its flows, rules and counters if its maps have the same layout.
        #[arg(long, value_name = "OBJECT")]
        program: Option<PathBuf>,
        /// Log format (`json`: one JSON object a line, for log shippers).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Where `/metrics` listens (Prometheus), or `off` (default: the configuration's
        /// `[metrics] listen`, else 127.0.0.1:9100).
        #[arg(long, value_parser = parse_metrics_addr)]
        metrics: Option<MetricsAddr>,
        /// Log one dropped packet in N (sampled per CPU in the kernel); 0: none.
        #[arg(long, default_value = "1000", value_parser = |s: &str| count(s, "sample rate", 0, u32::MAX as u64))]
        drop_sample: u32,
        /// Drop events logged per second at most (the others are counted).
        #[arg(long, default_value = "10", value_parser = |s: &str| count(s, "log rate", 1, u32::MAX as u64))]
        drop_log_rate: u32,
        /// Kernel debug log (aya-log) level; off by default, when the program skips the
        /// log calls.
        #[arg(long, value_enum, default_value = "off")]
        kernel_log: KernelLog,
    },
    /// Run only the https service of a configuration file (TLS termination and HTTP
    /// proxying; no XDP, no root needed unless a port below 1024 is bound). SIGHUP
    /// re-reads the file.
    Proxy {
        /// The https service's configuration (TOML, see docs/https.md).
        #[arg(long)]
        config: PathBuf,
        /// Check the file and everything it names (certificates, keys, CAs), then exit.
        #[arg(long)]
        check: bool,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Remove the datapath: stop the daemon if one runs, detach the program from every
    /// interface, remove the pins. The stored rules stay (unless --purge).
    Down {
        /// The pin directory of a datapath left without a daemon.
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Also delete the stored state (rules and services).
        #[arg(long)]
        purge: bool,
        /// The stored state `--purge` deletes.
        #[arg(long, default_value = DEFAULT_STATE)]
        state: PathBuf,
    },
    /// Firewall rules.
    #[command(subcommand)]
    Fw(Fw),
    /// Layer-4 services (service addresses); also `xlb service`.
    #[command(subcommand, visible_alias = "service")]
    Vip(VipCmd),
    /// The backends of a service.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Packet and byte counters by verdict and reason, per service and backend.
    Stats {
        #[command(subcommand)]
        action: Option<StatsCmd>,
    },
    /// Validate a configuration file and change nothing (no daemon, no root needed).
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
        /// Check only the file, not what it asks of this host (interfaces, forwarding,
        /// fullnat source addresses): for checking a file on another machine.
        #[arg(long)]
        no_host_checks: bool,
    },
    /// The daemon: interfaces, program, configuration and its last reload, rules,
    /// services and backends.
    Status,
    /// Re-read the daemon's configuration file and apply what changed in it (like
    /// SIGHUP); a file with errors is refused whole and nothing changes.
    Reload {
        /// Return to the file exactly: drop every rule, service and backend change made
        /// with the CLI (what the file does not define goes, what it defines comes back).
        #[arg(long)]
        reset: bool,
    },
    /// Shell completions for bash, zsh or fish, on stdout (e.g. `xlb completions bash
    /// > /etc/bash_completion.d/xlb`).
    Completions {
        /// bash, zsh or fish.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the man pages (xlb.1 and one per verb) into a directory.
    #[command(hide = true)]
    Manpages {
        /// The directory (created if missing).
        dir: PathBuf,
    },
    /// A live view of rates per service, backend and drop reason, refreshed every
    /// interval (Ctrl-C ends it).
    Top {
        /// Time between refreshes (50ms to 1h, e.g. 500ms, 2s).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: std::time::Duration,
        /// Print this many frames, then exit (no screen control codes).
        #[arg(long, value_parser = |s: &str| count(s, "number of frames", 1, u32::MAX as u64))]
        iterations: Option<u32>,
        /// Frame width in columns (default: the terminal's, else 100).
        #[arg(long, value_parser = |s: &str| count(s, "width", 1, u16::MAX as u64).map(|n| n as u16))]
        width: Option<u16>,
        /// Frame height in lines (default: the terminal's, else 30).
        #[arg(long, value_parser = |s: &str| count(s, "height", 1, u16::MAX as u64).map(|n| n as u16))]
        height: Option<u16>,
    },
}

/// `--metrics`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s == "off" {
        return Ok(MetricsAddr(None));
    }
    s.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|_| format!("'{s}' is not ADDR:PORT (e.g. 127.0.0.1:9100, [::1]:9100) or off"))
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = format::duration_arg(s)?;
    if !(std::time::Duration::from_millis(50)..=std::time::Duration::from_secs(3600)).contains(&d) {
        return Err(format!("'{s}' is out of range: use 50ms to 1h"));
    }
    Ok(d)
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A whole number argument in digits only (no sign), from `lo` to `hi`.
fn count(s: &str, what: &str, lo: u64, hi: u64) -> Result<u32, String> {
    crate::model::text::number_in(s, what, lo..=hi).map(|n| n as u32)
}

/// `--max-file-size`: bytes, or a whole number with a unit (KiB, MiB, GiB).
fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => 0,
    };
    match n.parse::<u64>().ok().and_then(|n| n.checked_mul(scale)) {
        Some(b) if b > 0 => Ok(b),
        _ => Err(format!(
            "'{s}' is not a size: expected a whole number of bytes, or with KiB, MiB or GiB (e.g. 256MiB)"
        )),
    }
}

/// Runs one command line.
pub fn main(cli: Cli) -> Result<()> {
    crate::config::files::set_limit(cli.max_file_size);
    let ctx = Ctx {
        socket: cli.socket,
        json: cli.json,
    };
    match cli.command {
        Command::Run {
            iface,
            mode,
            config,
            socket_group,
            bpffs,
            state,
            detach,
            program,
            log_format,
            metrics,
            drop_sample,
            drop_log_rate,
            kernel_log,
        } => run::run(
            run::RunArgs {
                iface,
                mode,
                config,
                socket_group,
                bpffs,
                state,
                detach,
                program,
                log_format,
                metrics,
                drop_sample,
                drop_log_rate,
                kernel_log,
            },
            ctx.socket,
        ),
        Command::CheckConfig {
            file,
            no_host_checks,
        } => run::check_config(&file, ctx.json, !no_host_checks),
        Command::Down {
            bpffs,
            purge,
            state,
        } => run::down(&ctx, &bpffs, purge.then_some(state.as_path())),
        Command::Status => status::status(&ctx),
        Command::Reload { reset } => status::reload(&ctx, reset),
        Command::Stats { action } => status::stats(&ctx, action),
        Command::Proxy {
            config,
            check,
            log_format,
        } => run::proxy(config, check, log_format),
        Command::Top {
            interval,
            iterations,
            width,
            height,
        } => top::run(
            &ctx.socket,
            top::TopOptions {
                json: ctx.json,
                interval,
                iterations: iterations.map(u64::from),
                width: width.map(usize::from),
                height: height.map(usize::from),
            },
        ),
        Command::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "xlb", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => manpages(&dir),
        Command::Vip(cmd) => services::vip(&ctx, cmd),
        Command::Backend(cmd) => services::backend(&ctx, cmd),
        Command::Fw(cmd) => fw::fw(&ctx, cmd),
    }
}

/// `xlb manpages DIR`: xlb.1, and xlb-VERB.1 (and xlb-VERB-SUB.1) for every verb.
fn manpages(dir: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    fn write(cmd: clap::Command, name: &str, dir: &std::path::Path) -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone().name(name.to_string())).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            write(sub.clone(), &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    write(cmd, "xlb", dir)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every verb and every argument says what it is (`xlb help VERB`).
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {}", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "xlb", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
