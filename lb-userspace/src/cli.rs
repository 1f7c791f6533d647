//! The command line: clap definitions, dispatch and output (human or `--json`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::{
    control::{self, DEFAULT_SOCKET, Request},
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
    /// Load and attach the XDP program, serve the control socket until SIGINT/SIGTERM.
    Run {
        /// The interface to attach to.
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value = "native")]
        mode: AttachMode,
        /// A directory on a bpffs where the maps are pinned while xlb runs.
        #[arg(long, default_value = "/sys/fs/bpf/xlb")]
        bpffs: PathBuf,
        /// The stored rules (restored at start, rewritten atomically on every change).
        #[arg(long, default_value = "/var/lib/xlb/state")]
        state: PathBuf,
        /// Log format (`json`: one JSON object a line, for log shippers).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Where `/metrics` listens (Prometheus), or `off`.
        #[arg(long, default_value = "127.0.0.1:9100", value_parser = parse_metrics_addr)]
        metrics: MetricsAddr,
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
    },
    /// Remove a backend (its established flows move at their next packet).
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
            bpffs,
            state,
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
                bpffs,
                state,
                socket: socket.clone(),
                monitor: MonitorOptions {
                    metrics: metrics.0,
                    drop_sample,
                    drop_log_rate,
                    kernel_log,
                },
            }))
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
                } => Request::BackendAdd {
                    vip,
                    backend,
                    weight,
                },
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
            println!(
                "{:<32} mode {:<4} affinity {:<6} echo {}",
                text(&s["service"]),
                text(&s["mode"]),
                text(&s["affinity"]),
                text(&s["echo"])
            );
        } else {
            println!("{}", text(&s["service"]));
        }
        for b in s["backends"].as_array().into_iter().flatten() {
            println!(
                "    {:<40} weight {}",
                text(&b["backend"]),
                text(&b["weight"])
            );
        }
    }
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
