//! The command line: clap definitions, dispatch and output (human or `--json`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::{
    control::{self, DEFAULT_BPFFS, DEFAULT_SOCKET, DEFAULT_STATE, Request},
    daemon::{self, RunOptions},
    datapath::AttachMode,
    kernel_log::KernelLog,
    monitor::MonitorOptions,
    rules::Action,
    services::Mode,
};

#[derive(Parser, Debug)]
#[command(name = "xlb", version, about = "XDP firewall and load balancer")]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "XLB_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
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
        #[arg(long, default_value_t = 1000)]
        drop_sample: u32,
        /// Drop events logged per second at most (the others are counted).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
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
        /// The https service's configuration (TOML, see the README).
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
        #[arg(long, default_value = DEFAULT_STATE)]
        state: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Firewall rules.
    #[command(subcommand)]
    Fw(Fw),
    /// Layer-4 services (service addresses).
    #[command(subcommand)]
    Vip(VipCmd),
    /// The backends of a service.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Packet and byte counters by verdict and reason, per service and backend.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration file and change nothing (no daemon, no root needed).
    CheckConfig {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The daemon: interfaces, program, configuration and its last reload, rules,
    /// services and backends.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Re-read the daemon's configuration file and apply what changed in it (like
    /// SIGHUP); a file with errors is refused whole and nothing changes.
    Reload {
        #[arg(long)]
        json: bool,
    },
    /// A live view of rates per service, backend and drop reason, refreshed every
    /// interval (Ctrl-C ends it).
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
        /// Print this many frames, then exit (no screen control codes).
        #[arg(long)]
        iterations: Option<u64>,
        /// Frame width in columns (default: the terminal's, else 100).
        #[arg(long)]
        width: Option<usize>,
        /// Frame height in lines (default: the terminal's, else 30).
        #[arg(long)]
        height: Option<usize>,
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

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.05..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not an interval: use 0.05 to 3600 seconds"
        )),
    }
}

#[derive(Subcommand, Debug)]
pub enum VipCmd {
    /// Add a service: `xlb vip add 192.0.2.10:80/tcp --mode nat` (`ADDR:*/PROTO` for
    /// every port).
    Add {
        vip: String,
        #[arg(long, value_enum)]
        mode: Mode,
        /// `source`: every flow of a client goes to the same backend.
        #[arg(long, value_enum)]
        affinity: Option<Affinity>,
        /// Do not answer echo requests to the service address.
        #[arg(long)]
        no_echo: bool,
        /// Seconds a TCP flow may idle before it is rescheduled (default 7200).
        #[arg(long)]
        tcp_idle: Option<u32>,
        /// Seconds a UDP flow may idle before it is rescheduled (default 30).
        #[arg(long)]
        udp_idle: Option<u32>,
        /// fullnat: the source address the backends see (an address of this host).
        #[arg(long)]
        snat: Option<String>,
    },
    /// Health-check the service's backends (HAProxy semantics: down after `fall`
    /// failures in a row, up after `rise` successes), or `off`: `xlb vip check
    /// 192.0.2.10:80/tcp http --path /healthz --interval 2s`. Kept across restarts;
    /// a configuration file's `[service.health]` for the service wins.
    Check {
        vip: String,
        /// tcp, http, https, tls, or off (no check: every backend counts as up).
        kind: String,
        /// Time between two checks of a backend (100ms to 1h; default 2s).
        #[arg(long)]
        interval: Option<String>,
        /// Time a check may take (at most the interval; default 1s).
        #[arg(long)]
        timeout: Option<String>,
        /// Successes in a row that bring a backend up (default 2).
        #[arg(long)]
        rise: Option<String>,
        /// Failures in a row that take a backend down (default 3).
        #[arg(long)]
        fall: Option<String>,
        /// The port checked (default: the backend's own).
        #[arg(long)]
        port: Option<String>,
        /// http and https: the path requested (default /).
        #[arg(long)]
        path: Option<String>,
        /// http and https: the status that counts as a success (default 200).
        #[arg(long)]
        expect_status: Option<String>,
    },
    /// Remove a service and its backends.
    Del { vip: String },
    /// List the services.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Affinity {
    Source,
}

#[derive(Subcommand, Debug)]
pub enum BackendCmd {
    /// Add a backend: `xlb backend add 192.0.2.10:80/tcp 203.0.113.11:8080 --weight 2`.
    Add {
        vip: String,
        backend: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// A backup: takes flows only while every primary of the service is down or
        /// drained.
        #[arg(long)]
        backup: bool,
    },
    /// Take a backend out of new flows (weight 0; its established flows stay) until
    /// `xlb backend enable`; kept across restarts and reloads.
    Drain { vip: String, backend: String },
    /// Give a drained backend new flows again.
    Enable { vip: String, backend: String },
    /// Remove a backend: it takes no new flows and drains (keeps its established flows
    /// for the drain timeout, `[balancer] drain_timeout`, default 30 s).
    Del { vip: String, backend: String },
    /// List backends (of one service, or of all).
    List {
        vip: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Fw {
    /// Drop packets from these source prefixes (longest prefix wins).
    Deny {
        #[arg(required = true)]
        prefixes: Vec<String>,
    },
    /// Pass packets from these source prefixes (longest prefix wins).
    Allow {
        #[arg(required = true)]
        prefixes: Vec<String>,
    },
    /// Port rules: `xlb fw port deny 80/tcp 1000-2000/udp`.
    Port {
        action: ActionArg,
        #[arg(required = true)]
        ports: Vec<String>,
    },
    /// Always allow these source prefixes or destination ports, whatever else matches.
    Except {
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove rules by prefix or port spec (`--except` for the always-allow list).
    Del {
        #[arg(long)]
        except: bool,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove every rule (the policies stay).
    Flush,
    /// The policy for packets no rule matches.
    Default { action: ActionArg },
    /// The policy for truncated or malformed packets (default deny).
    Malformed { action: ActionArg },
    /// List the policies and rules with their hit counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Load prefixes from a file, one a line (optionally `allow`/`deny` before it, `#`
    /// comments). One bad line refuses the whole file.
    Load {
        file: PathBuf,
        /// The action of lines that name none.
        #[arg(long, value_enum, default_value = "deny")]
        action: ActionArg,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ActionArg {
    Allow,
    Deny,
}

impl From<ActionArg> for Action {
    fn from(a: ActionArg) -> Action {
        match a {
            ActionArg::Allow => Action::Allow,
            ActionArg::Deny => Action::Deny,
        }
    }
}

fn init_logging(format: LogFormat, kernel: KernelLog) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("XLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The kernel's records are as verbose as asked for with --kernel-log.
    if kernel != KernelLog::Off
        && let Ok(d) = format!("xlb::kernel={}", format!("{kernel:?}").to_lowercase()).parse()
    {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn main(cli: Cli) -> Result<()> {
    let socket = cli.socket;
    let call = |req: Request| control::call(&socket, &req);
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
        } => {
            init_logging(log_format, kernel_log);
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(daemon::run(RunOptions {
                iface,
                mode,
                config,
                socket_group,
                bpffs,
                state,
                socket: socket.clone(),
                detach,
                program,
                metrics: metrics.map(|m| m.0),
                monitor: MonitorOptions {
                    metrics: None,
                    drop_sample,
                    drop_log_rate,
                    kernel_log,
                },
            }))
        }
        Command::CheckConfig { file, json } => check_config(&file, json),
        Command::Down {
            bpffs,
            purge,
            state,
            json,
        } => {
            let v = down(&socket, &bpffs, purge.then_some(state.as_path()))?;
            if json {
                println!("{v}");
            } else {
                let list = |k: &str| {
                    v[k].as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                };
                match v["daemon_stopped"].as_u64() {
                    Some(pid) => println!("stopped the daemon (pid {pid})"),
                    None => println!("no daemon was running"),
                }
                println!("detached from: {}", or_none(&list("detached")));
                println!("removed the pins under {}", bpffs.display());
                if purge {
                    println!("deleted the stored state {}", state.display());
                }
            }
            Ok(())
        }
        Command::Status { json } => {
            let v = call(Request::Status)?;
            if json {
                println!("{v}");
            } else {
                print_status(&v);
            }
            Ok(())
        }
        Command::Reload { json } => {
            let v = call(Request::Reload)?;
            if json {
                println!("{v}");
            } else {
                print_reload(&v);
            }
            Ok(())
        }
        Command::Proxy {
            config,
            check,
            log_format,
        } => {
            if check {
                let cfg = crate::tls::HttpsConfig::load(&config)?;
                crate::tls::HttpsProxy::new(cfg)?;
                println!("{}: ok", config.display());
                return Ok(());
            }
            init_logging(log_format, KernelLog::Off);
            // One CPU (e.g. pinned with taskset): one thread, no work-stealing machinery.
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let rt = if cpus == 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Runtime::new()
            }
            .context("starting the runtime")?;
            rt.block_on(crate::tls::run_proxy(config))
        }
        Command::Top {
            interval,
            iterations,
            width,
            height,
        } => crate::top::run(
            &socket,
            crate::top::TopOptions {
                interval: std::time::Duration::from_secs_f64(interval),
                iterations,
                width,
                height,
            },
        ),
        Command::Vip(cmd) => {
            let req = match cmd {
                VipCmd::Add {
                    vip,
                    mode,
                    affinity,
                    no_echo,
                    tcp_idle,
                    udp_idle,
                    snat,
                } => Request::VipAdd {
                    vip,
                    mode,
                    affinity_source: affinity.is_some(),
                    echo: !no_echo,
                    tcp_idle,
                    udp_idle,
                    snat,
                },
                VipCmd::Check {
                    vip,
                    kind,
                    interval,
                    timeout,
                    rise,
                    fall,
                    port,
                    path,
                    expect_status,
                } => {
                    let settings = [
                        ("interval", interval),
                        ("timeout", timeout),
                        ("rise", rise),
                        ("fall", fall),
                        ("port", port),
                        ("path", path),
                        ("expect_status", expect_status),
                    ];
                    let check = if kind == "off" {
                        if let Some((k, _)) = settings.iter().find(|(_, v)| v.is_some()) {
                            bail!("--{} has no meaning with `off`", k.replace('_', "-"));
                        }
                        None
                    } else {
                        let mut words = BTreeMap::from([("kind".to_string(), kind)]);
                        for (k, v) in settings {
                            if let Some(v) = v {
                                words.insert(k.to_string(), v);
                            }
                        }
                        Some(words)
                    };
                    Request::VipCheck { vip, check }
                }
                VipCmd::Del { vip } => Request::VipDel { vip },
                VipCmd::List { json } => {
                    let v = call(Request::VipList)?;
                    if json {
                        println!("{v}");
                    } else {
                        print_services(&v, None);
                    }
                    return Ok(());
                }
            };
            call(req)?;
            println!("ok");
            Ok(())
        }
        Command::Backend(cmd) => {
            let req = match cmd {
                BackendCmd::Add {
                    vip,
                    backend,
                    weight,
                    backup,
                } => Request::BackendAdd {
                    vip,
                    backend,
                    weight,
                    backup,
                },
                BackendCmd::Drain { vip, backend } => Request::BackendDrain { vip, backend },
                BackendCmd::Enable { vip, backend } => Request::BackendEnable { vip, backend },
                BackendCmd::Del { vip, backend } => Request::BackendDel { vip, backend },
                BackendCmd::List { vip, json } => {
                    let mut v = call(Request::VipList)?;
                    if let Some(want) = &vip {
                        let want: crate::services::Vip = want.parse()?;
                        let list = v["services"].as_array().cloned().unwrap_or_default();
                        let found: Vec<Value> = list
                            .into_iter()
                            .filter(|s| s["service"] == want.to_string())
                            .collect();
                        if found.is_empty() {
                            anyhow::bail!("no service {want}: add it with `xlb vip add`");
                        }
                        v = serde_json::json!({ "services": found });
                    }
                    if json {
                        println!("{v}");
                    } else {
                        print_services(&v, Some(()));
                    }
                    return Ok(());
                }
            };
            call(req)?;
            println!("ok");
            Ok(())
        }
        Command::Stats { json } => {
            let v = call(Request::Stats)?;
            if json {
                println!("{v}");
            } else {
                print_stats(&v);
            }
            Ok(())
        }
        Command::Fw(fw) => {
            let (req, listing) = match fw {
                Fw::Deny { prefixes } => (
                    Request::Prefix {
                        action: Action::Deny,
                        targets: prefixes,
                    },
                    None,
                ),
                Fw::Allow { prefixes } => (
                    Request::Prefix {
                        action: Action::Allow,
                        targets: prefixes,
                    },
                    None,
                ),
                Fw::Port { action, ports } => (
                    Request::Port {
                        action: action.into(),
                        targets: ports,
                    },
                    None,
                ),
                Fw::Except { targets } => (Request::Except { targets }, None),
                Fw::Del { except, targets } => (Request::Del { except, targets }, None),
                Fw::Flush => (Request::Flush, None),
                Fw::Default { action } => (
                    Request::Default {
                        action: action.into(),
                    },
                    None,
                ),
                Fw::Malformed { action } => (
                    Request::Malformed {
                        action: action.into(),
                    },
                    None,
                ),
                Fw::List { json } => (Request::List, Some(json)),
                Fw::Load { file, action } => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let req = Request::Load {
                        action: action.into(),
                        text,
                    };
                    let v = call(req).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    print_change(&v);
                    return Ok(());
                }
            };
            let v = call(req)?;
            match listing {
                Some(true) => println!("{v}"),
                Some(false) => print_list(&v),
                None => print_change(&v),
            }
            Ok(())
        }
    }
}

/// A JSON value as plain text (strings unquoted), so width specifiers apply.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_change(v: &Value) {
    if v.get("policy").is_some() {
        println!("policy set to {}", v["policy"].as_str().unwrap_or("?"));
        return;
    }
    println!(
        "added {}, updated {}, removed {} ({} rules in all)",
        v["added"], v["updated"], v["removed"], v["rules"]
    );
}

fn print_list(v: &Value) {
    println!("default policy:   {}", v["default"].as_str().unwrap_or("?"));
    println!(
        "malformed policy: {}",
        v["malformed"].as_str().unwrap_or("?")
    );
    let rules = v["rules"].as_array().cloned().unwrap_or_default();
    if rules.is_empty() {
        println!("no rules");
        return;
    }
    println!(
        "{:>8}  {:<14} {:<44} {:<6} {:>12}",
        "id", "kind", "match", "action", "hits"
    );
    for r in rules {
        println!(
            "{:>8}  {:<14} {:<44} {:<6} {:>12}",
            text(&r["id"]),
            text(&r["kind"]),
            text(&r["match"]),
            text(&r["action"]),
            text(&r["hits"])
        );
    }
}

fn print_services(v: &Value, backends_only: Option<()>) {
    let list = v["services"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no services");
        return;
    }
    for s in list {
        if backends_only.is_none() {
            let check = match s["health_check"].get("kind") {
                Some(k) => format!("  check {}", text(k)),
                None => String::new(),
            };
            println!(
                "{:<32} mode {:<4} affinity {:<6} echo {}{check}",
                text(&s["service"]),
                text(&s["mode"]),
                text(&s["affinity"]),
                text(&s["echo"])
            );
        } else {
            println!("{}", text(&s["service"]));
        }
        for b in s["backends"].as_array().into_iter().flatten() {
            println!("    {}", backend_line(b));
        }
    }
}

fn check_config(file: &std::path::Path, json: bool) -> Result<()> {
    match crate::config::Config::load(file) {
        Ok(c) => {
            if json {
                let v = serde_json::json!({
                    "ok": true,
                    "file": file.display().to_string(),
                    "interfaces": c.interfaces,
                    "rules": c.projection.rules.len(),
                    "services": c.projection.services.by_vip.len(),
                    "backends": c.projection.services.by_vip.values().map(|s| s.backends.len()).sum::<usize>(),
                    "health_checks": c.health.len(),
                    "tls": c.tls.is_some(),
                    "metrics": c.metrics.map(|m| m.to_string()),
                });
                println!("{v}");
            } else {
                println!("{}: ok: {}", file.display(), c.summary());
            }
            Ok(())
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "ok": false, "errors": e.0 }));
                anyhow::bail!("{}: refused ({} errors)", file.display(), e.0.len());
            }
            Err(anyhow::anyhow!("{e}"))
        }
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m {s:02}s"),
        _ => format!("{d}d {h:02}h {m:02}m"),
    }
}

/// "+1 ~0 -2" from a reload's counts.
fn counts(v: &Value, what: &str) -> String {
    format!(
        "+{} ~{} -{}",
        text(&v[format!("{what}_added")]),
        text(&v[format!("{what}_updated")]),
        text(&v[format!("{what}_removed")])
    )
}

fn reload_text(v: &Value) -> String {
    let names = |k: &str| -> String {
        let list: Vec<String> = v[k].as_array().into_iter().flatten().map(text).collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    };
    format!(
        "rules {}, policies changed {}, services {}, backends {}; attached {}, detached {}",
        counts(v, "rules"),
        text(&v["policies_changed"]),
        counts(&v["services"], "services"),
        counts(&v["services"], "backends"),
        names("interfaces_attached"),
        names("interfaces_detached"),
    )
}

fn print_reload(v: &Value) {
    println!(
        "reloaded: generation {}: {}",
        text(&v["generation"]),
        reload_text(v)
    );
}

fn print_status(v: &Value) {
    println!(
        "xlb {}, pid {}, up {} (since {})",
        text(&v["version"]),
        text(&v["pid"]),
        duration_text(v["uptime_secs"].as_u64().unwrap_or(0)),
        utc(v["started_unix"].as_u64().unwrap_or(0))
    );
    let ifaces: Vec<String> = v["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| format!("{} ({})", text(&i["name"]), text(&i["mode"])))
        .collect();
    println!(
        "program:     id {} attached to {}",
        text(&v["program_id"]),
        ifaces.join(", ")
    );
    let d = &v["datapath"];
    let at_start = match text(&d["at_start"]["kind"]).as_str() {
        "adopted" => format!(
            "took over a running datapath ({} maps kept)",
            text(&d["at_start"]["maps"])
        ),
        "replaced" => format!(
            "replaced an incompatible one ({})",
            text(&d["at_start"]["why"])
        ),
        _ => "started fresh".to_string(),
    };
    let on_stop = match d["on_stop"].as_str() {
        Some("detach") => "detaches and removes the pins",
        _ => "keeps forwarding (`xlb down` removes it)",
    };
    println!(
        "datapath:    pinned at {}; {at_start}; when stopped {on_stop}",
        text(&d["pins"])
    );
    match v["socket_group"].as_str() {
        Some(g) => println!("socket:      {} (mode 0660, group {g})", text(&v["socket"])),
        None => println!("socket:      {} (mode 0600, root only)", text(&v["socket"])),
    }
    let c = &v["config"];
    if c.is_null() {
        println!("config:      none (started without --config)");
    } else {
        println!(
            "config:      {}, generation {}",
            text(&c["file"]),
            text(&c["generation"])
        );
        let r = &c["last_reload"];
        if r.is_null() {
            println!("last reload: none since start");
        } else if r["ok"] == true {
            println!(
                "last reload: ok at {} ({}): {}",
                utc(r["at_unix"].as_u64().unwrap_or(0)),
                text(&r["trigger"]),
                reload_text(&r["changes"])
            );
        } else {
            println!(
                "last reload: refused at {} ({}), the running state was kept:",
                utc(r["at_unix"].as_u64().unwrap_or(0)),
                text(&r["trigger"])
            );
            for line in r["error"].as_str().unwrap_or("?").lines() {
                println!("             {line}");
            }
        }
    }
    let r = &v["rules"];
    println!(
        "rules:       {} ({} prefix, {} port, {} except-prefix, {} except-port); default {}, malformed {}",
        text(&r["total"]),
        text(&r["prefix"]),
        text(&r["port"]),
        text(&r["except_prefix"]),
        text(&r["except_port"]),
        text(&r["default"]),
        text(&r["malformed"])
    );
    let services = v["services"].as_array().cloned().unwrap_or_default();
    println!("services:    {}", services.len());
    for s in services {
        let check = match s["health_check"].get("kind") {
            Some(k) => format!("check {}", text(k)),
            None => "no check".into(),
        };
        println!(
            "  {:<32} {:<4} affinity {:<6} {}",
            text(&s["service"]),
            text(&s["mode"]),
            text(&s["affinity"]),
            check
        );
        for b in s["backends"].as_array().into_iter().flatten() {
            println!("      {}", backend_line(b));
        }
    }
    let https = &v["https"];
    if https.is_object() {
        let listen: Vec<String> = https["listen"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        println!("https:       listening on {}", listen.join(", "));
        for p in https["pools"].as_array().into_iter().flatten() {
            let check = match p["health_check"].get("kind") {
                Some(k) => format!("check {}", text(k)),
                None => "no check".into(),
            };
            println!("  pool {:<27} {check}", text(&p["pool"]));
            for b in p["backends"].as_array().into_iter().flatten() {
                let mut line = format!("{:<52} {:<9}", text(&b["backend"]), text(&b["state"]));
                if b["takes_requests"] == false {
                    line.push_str(" (no requests)");
                }
                if let Some(last) = b["health"]["last"].as_str() {
                    line.push_str(&format!(" last check: {last}"));
                }
                println!("      {line}");
            }
        }
    }
}

/// `ADDR  weight W  STATE [backup] [takes no new flows] [last check]`.
fn backend_line(b: &Value) -> String {
    let mut line = format!(
        "{:<40} weight {:<4} {:<9}",
        text(&b["backend"]),
        text(&b["weight"]),
        text(&b["state"])
    );
    if b["backup"] == true {
        line.push_str(" backup");
    }
    if b["effective_weight"] == 0 && b["state"] != "draining" {
        line.push_str(" (no new flows)");
    }
    if let Some(last) = b["health"]["last"].as_str() {
        line.push_str(&format!(" last check: {last}"));
    }
    line
}

fn print_stats(v: &Value) {
    for verdict in ["pass", "drop"] {
        let t = &v["verdicts"][verdict];
        println!(
            "{verdict:<5} {:>14} packets {:>16} bytes",
            text(&t["packets"]),
            text(&t["bytes"])
        );
    }
    println!();
    println!(
        "{:<16} {:<7} {:>14} {:>16}",
        "reason", "verdict", "packets", "bytes"
    );
    for r in v["reasons"].as_array().into_iter().flatten() {
        if r["packets"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        println!(
            "{:<16} {:<7} {:>14} {:>16}",
            text(&r["reason"]),
            text(&r["verdict"]),
            text(&r["packets"]),
            text(&r["bytes"])
        );
    }
    println!("\n{} rules loaded", text(&v["rules"]));
    let services = v["services"].as_array().cloned().unwrap_or_default();
    if !services.is_empty() {
        println!();
        println!(
            "{:<44} {:>14} {:>16} {:>10}",
            "service / backend", "packets", "bytes", "new flows"
        );
        for s in services {
            println!(
                "{:<44} {:>14} {:>16} {:>10}",
                format!("{} ({})", text(&s["service"]), text(&s["mode"])),
                text(&s["packets"]),
                text(&s["bytes"]),
                text(&s["new_flows"])
            );
            for b in s["backends"].as_array().into_iter().flatten() {
                println!(
                    "  {:<42} {:>14} {:>16} {:>10}  {}",
                    text(&b["backend"]),
                    text(&b["packets"]),
                    text(&b["bytes"]),
                    text(&b["new_flows"]),
                    text(&b["health"])
                );
            }
        }
    }
    let f = &v["flows"];
    if f.is_object() {
        println!(
            "\nflow table: {} forward + {} reply entries of {}",
            text(&f["forward"]),
            text(&f["reply"]),
            text(&f["capacity"])
        );
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

/// `xlb down`: through the daemon if one runs (it detaches, removes its pins and
/// exits), else directly on the pin directory a stopped or crashed run left.
fn down(socket: &Path, bpffs: &Path, purge: Option<&Path>) -> Result<serde_json::Value> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xlb down needs root (it detaches XDP programs): run it with sudo");
    }
    let mut out = serde_json::json!({ "daemon_stopped": null, "detached": [] });
    if control::daemon_running(socket) {
        let v = control::call(socket, &Request::Down)?;
        out["daemon_stopped"] = v["stopping"].clone();
        out["detached"] = v["interfaces"].clone();
        // It removes its pins and socket on its way out.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while control::daemon_running(socket) || socket.exists() {
            if std::time::Instant::now() > deadline {
                bail!("the daemon did not stop within 20 s of `xlb down`");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    if bpffs.exists() {
        let dir = crate::pins::PinDir::open(bpffs)?;
        let detached = dir.remove_all()?;
        if !detached.is_empty() {
            out["detached"] = serde_json::json!(detached);
        }
    }
    let _ = std::fs::remove_file(socket);
    if let Some(state) = purge {
        match std::fs::remove_file(state) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {}", state.display())),
        }
    }
    Ok(out)
}
