//! `xlb vip` and `xlb backend`: layer-4 services and their backends.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use clap::Subcommand;

use super::{
    Ctx,
    format::{duration_arg, print_json},
};
use crate::{
    api::{
        self, Request,
        reply::{BackendState, BackendView, ServiceList, ServicesChanged},
    },
    model::{
        services::{MAX_IDLE, MAX_WEIGHT, Mode, Vip},
        synflood::{SynMode, parse_threshold},
        weights::AllDown,
    },
};

/// A service address: `ADDR:PORT/PROTO`, or `ADDR:*/PROTO` for every port.
const VIP_HELP: &str = "The service address: ADDR:PORT/PROTO, or ADDR:*/PROTO for every port (e.g. 192.0.2.10:80/tcp, [2001:db8::10]:443/tcp)";

#[derive(Subcommand, Debug)]
pub enum VipCmd {
    /// Add a service: `xlb vip add 192.0.2.10:80/tcp --mode nat` (`ADDR:*/PROTO` for
    /// every port).
    Add {
        #[arg(help = VIP_HELP)]
        vip: String,
        /// How packets reach the backends: dsr, nat or fullnat (see docs/load-balancing.md).
        #[arg(long, value_enum)]
        mode: Mode,
        /// `source`: every flow of a client goes to the same backend; `none` (the
        /// default): each flow on its own.
        #[arg(long, value_enum)]
        affinity: Option<Affinity>,
        /// Do not answer echo requests to the service address.
        #[arg(long)]
        no_echo: bool,
        /// How long a TCP flow may idle before it is rescheduled (e.g. 2h, 300s;
        /// default 2h).
        #[arg(long, value_parser = idle_arg)]
        tcp_idle: Option<u32>,
        /// How long a UDP flow may idle before it is rescheduled (default 30s).
        #[arg(long, value_parser = idle_arg)]
        udp_idle: Option<u32>,
        /// fullnat: the source address the backends see (an address of this host).
        #[arg(long)]
        snat: Option<String>,
    },
    /// Change a service in place (what is not given stays): its flows keep their
    /// backends unless the change moves them (a new mode).
    Set {
        #[arg(help = VIP_HELP)]
        vip: String,
        /// dsr, nat or fullnat.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// source or none.
        #[arg(long, value_enum)]
        affinity: Option<Affinity>,
        /// Answer echo requests to the service address: on or off.
        #[arg(long, value_enum)]
        echo: Option<OnOff>,
        /// TCP idle timeout (e.g. 2h, 300s).
        #[arg(long, value_parser = idle_arg)]
        tcp_idle: Option<u32>,
        /// UDP idle timeout (e.g. 30s).
        #[arg(long, value_parser = idle_arg)]
        udp_idle: Option<u32>,
        /// fullnat: the source address the backends see.
        #[arg(long)]
        snat: Option<String>,
        /// SYN-flood protection (TCP): auto (on above --syn-threshold new flows per
        /// second, the default), always or off.
        #[arg(long, value_parser = syn_mode_arg)]
        syn_protection: Option<SynMode>,
        /// New flows per second above which `auto` protection turns on (default 5000).
        #[arg(long, value_parser = parse_threshold)]
        syn_threshold: Option<u32>,
        /// Every backend down at once (health checks): panic (the default: send to all
        /// of them, health not believed) or strict (send to none).
        #[arg(long, value_parser = all_down_arg)]
        all_down: Option<AllDown>,
    },
    /// Health-check the service's backends (HAProxy semantics: down after `fall`
    /// failures in a row, up after `rise` successes), or `off`: `xlb vip check
    /// 192.0.2.10:80/tcp http --path /healthz --interval 2s`. Kept across restarts;
    /// a configuration file's `[service.health]` for the service wins.
    Check {
        #[arg(help = VIP_HELP)]
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
    Del {
        #[arg(help = VIP_HELP)]
        vip: String,
    },
    /// List the services.
    List,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Affinity {
    /// Each flow on its own.
    None,
    /// Every flow of a client to the same backend.
    Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// A backend: `ADDR:PORT`, or `ADDR` for the service's port.
const BACKEND_HELP: &str =
    "The backend: ADDR:PORT, or ADDR to use the service's port (e.g. 203.0.113.11:8080)";

#[derive(Subcommand, Debug)]
pub enum BackendCmd {
    /// Add a backend: `xlb backend add 192.0.2.10:80/tcp 203.0.113.11:8080 --weight 2`.
    Add {
        #[arg(help = VIP_HELP)]
        vip: String,
        #[arg(help = BACKEND_HELP)]
        backend: String,
        /// Its share of new flows against the service's other backends (1 to 100).
        #[arg(long, default_value = "1", value_parser = weight_arg)]
        weight: u32,
        /// A backup: takes flows only while every primary of the service is down or
        /// drained.
        #[arg(long)]
        backup: bool,
    },
    /// Change a backend in place (what is not given stays): its weight, whether it is
    /// a backup. Its established flows stay.
    Set {
        #[arg(help = VIP_HELP)]
        vip: String,
        #[arg(help = BACKEND_HELP)]
        backend: String,
        /// Its share of new flows (1 to 100).
        #[arg(long, value_parser = weight_arg)]
        weight: Option<u32>,
        /// Whether it is a backup: on or off.
        #[arg(long, value_enum)]
        backup: Option<OnOff>,
    },
    /// Take a backend out of new flows (weight 0; its established flows stay) until
    /// `xlb backend enable`; kept across restarts and reloads.
    Drain {
        #[arg(help = VIP_HELP)]
        vip: String,
        #[arg(help = BACKEND_HELP)]
        backend: String,
    },
    /// Give a drained backend new flows again.
    Enable {
        #[arg(help = VIP_HELP)]
        vip: String,
        #[arg(help = BACKEND_HELP)]
        backend: String,
    },
    /// Remove a backend: it takes no new flows and drains (keeps its established flows
    /// for the drain timeout, `[balancer] drain_timeout`, default 30 s).
    Del {
        #[arg(help = VIP_HELP)]
        vip: String,
        #[arg(help = BACKEND_HELP)]
        backend: String,
    },
    /// List backends (of one service, or of all).
    List {
        /// Only this service's.
        vip: Option<String>,
    },
}

/// `--weight`: a whole number from 1 to MAX_WEIGHT.
fn weight_arg(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(w) if s.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_WEIGHT).contains(&w) => Ok(w),
        _ => Err(format!(
            "'{s}' is not a weight: expected a whole number from 1 to {MAX_WEIGHT}"
        )),
    }
}

/// panic or strict, with the model's message.
fn all_down_arg(s: &str) -> Result<AllDown, String> {
    s.parse()
}

/// A SYN protection mode (auto, always, off), with the model's message.
fn syn_mode_arg(s: &str) -> Result<SynMode, String> {
    s.parse()
}

/// An idle timeout: a duration in whole seconds (`2h`, `300s`).
fn idle_arg(s: &str) -> Result<u32, String> {
    let d = duration_arg(s)?;
    if d.subsec_millis() != 0 || d.as_secs() == 0 || d.as_secs() > MAX_IDLE as u64 {
        return Err(format!(
            "'{s}' is out of range: expected whole seconds from 1s to {MAX_IDLE}s (7d)"
        ));
    }
    Ok(d.as_secs() as u32)
}

/// Runs one `xlb vip` verb.
pub fn vip(ctx: &Ctx, cmd: VipCmd) -> Result<()> {
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
            affinity_source: affinity == Some(Affinity::Source),
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
            Request::VipCheck {
                vip,
                check: check_words(kind, settings)?,
            }
        }
        VipCmd::Set {
            vip,
            mode,
            affinity,
            echo,
            tcp_idle,
            udp_idle,
            snat,
            syn_protection,
            syn_threshold,
            all_down,
        } => Request::VipSet {
            vip,
            mode,
            affinity_source: affinity.map(|a| a == Affinity::Source),
            echo: echo.map(|e| e == OnOff::On),
            tcp_idle,
            udp_idle,
            snat,
            syn_protection,
            syn_threshold,
            all_down,
        },
        VipCmd::Del { vip } => Request::VipDel { vip },
        VipCmd::List => {
            let v: ServiceList = api::call(&ctx.socket, &Request::VipList)?;
            if ctx.json {
                return print_json(&v);
            }
            print_services(&v, false);
            return Ok(());
        }
    };
    changed(ctx, &req)
}

/// Sends a change and says it was made (`--json`: the reply).
fn changed(ctx: &Ctx, req: &Request) -> Result<()> {
    let v: ServicesChanged = api::call(&ctx.socket, req)?;
    if ctx.json {
        return print_json(&v);
    }
    println!("ok");
    Ok(())
}

/// `vip check KIND --flags` as the check's `key=value` words, or None for `off`.
fn check_words(
    kind: String,
    settings: [(&str, Option<String>); 7],
) -> Result<Option<BTreeMap<String, String>>> {
    if kind == "off" {
        if let Some((k, _)) = settings.iter().find(|(_, v)| v.is_some()) {
            bail!("--{} has no meaning with `off`", k.replace('_', "-"));
        }
        return Ok(None);
    }
    let mut words = BTreeMap::from([("kind".to_string(), kind)]);
    for (k, v) in settings {
        if let Some(v) = v {
            words.insert(k.to_string(), v);
        }
    }
    Ok(Some(words))
}

/// Runs one `xlb backend` verb.
pub fn backend(ctx: &Ctx, cmd: BackendCmd) -> Result<()> {
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
        BackendCmd::Set {
            vip,
            backend,
            weight,
            backup,
        } => Request::BackendSet {
            vip,
            backend,
            weight,
            backup: backup.map(|b| b == OnOff::On),
        },
        BackendCmd::Drain { vip, backend } => Request::BackendDrain { vip, backend },
        BackendCmd::Enable { vip, backend } => Request::BackendEnable { vip, backend },
        BackendCmd::Del { vip, backend } => Request::BackendDel { vip, backend },
        BackendCmd::List { vip } => return list_backends(ctx, vip),
    };
    changed(ctx, &req)
}

/// `backend list [VIP]`: the backends of one service, or of all.
fn list_backends(ctx: &Ctx, vip: Option<String>) -> Result<()> {
    let mut v: ServiceList = api::call(&ctx.socket, &Request::VipList)?;
    if let Some(want) = &vip {
        let want: Vip = want.parse()?;
        v.services.retain(|s| s.service == want.to_string());
        if v.services.is_empty() {
            bail!("no service {want}: add it with `xlb vip add`");
        }
    }
    if ctx.json {
        return print_json(&v);
    }
    print_services(&v, true);
    Ok(())
}

fn print_services(v: &ServiceList, backends_only: bool) {
    if v.services.is_empty() {
        println!("no services");
        return;
    }
    for s in &v.services {
        if backends_only {
            println!("{}", s.service);
        } else {
            let check = match &s.health_check {
                Some(c) => format!("  check {}", c.kind.name()),
                None => String::new(),
            };
            println!(
                "{:<32} mode {:<4} affinity {:<6} echo {}{check}",
                s.service,
                s.mode.to_string(),
                s.affinity,
                s.echo
            );
        }
        for b in &s.backends {
            println!("    {}", backend_line(b));
        }
    }
}

/// `ADDR  weight W  STATE [backup] [takes no new flows] [last check]`.
pub(super) fn backend_line(b: &BackendView) -> String {
    let mut line = format!("{:<40} weight {:<4} {:<9}", b.backend, b.weight, b.state);
    if b.backup {
        line.push_str(" backup");
    }
    if b.effective_weight == 0 && b.state != BackendState::Draining {
        line.push_str(" (no new flows)");
    }
    if let Some(last) = b.health.as_ref().and_then(|h| h.last.as_deref()) {
        line.push_str(&format!(" last check: {last}"));
    }
    line
}
