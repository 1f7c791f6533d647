//! `xlb vip` and `xlb backend`: layer-4 services and their backends.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Result, bail};
use clap::Subcommand;

use super::format::print_json;
use crate::{
    api::{
        self, Request,
        reply::{BackendState, BackendView, ServiceList, ServicesChanged},
    },
    model::services::{Mode, Vip},
};

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

/// Runs one `xlb vip` verb.
pub fn vip(socket: &Path, cmd: VipCmd) -> Result<()> {
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
            Request::VipCheck {
                vip,
                check: check_words(kind, settings)?,
            }
        }
        VipCmd::Del { vip } => Request::VipDel { vip },
        VipCmd::List { json } => {
            let v: ServiceList = api::call(socket, &Request::VipList)?;
            if json {
                return print_json(&v);
            }
            print_services(&v, false);
            return Ok(());
        }
    };
    let _: ServicesChanged = api::call(socket, &req)?;
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
pub fn backend(socket: &Path, cmd: BackendCmd) -> Result<()> {
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
        BackendCmd::List { vip, json } => return list_backends(socket, vip, json),
    };
    let _: ServicesChanged = api::call(socket, &req)?;
    println!("ok");
    Ok(())
}

/// `backend list [VIP]`: the backends of one service, or of all.
fn list_backends(socket: &Path, vip: Option<String>, json: bool) -> Result<()> {
    let mut v: ServiceList = api::call(socket, &Request::VipList)?;
    if let Some(want) = &vip {
        let want: Vip = want.parse()?;
        v.services.retain(|s| s.service == want.to_string());
        if v.services.is_empty() {
            bail!("no service {want}: add it with `xlb vip add`");
        }
    }
    if json {
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
