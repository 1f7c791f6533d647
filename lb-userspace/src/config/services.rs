//! `[[service]]`: layer-4 services with their backends and health checks, and the https
//! services' listen addresses (their backends are `[tls]`'s pools).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    ops::Range,
};

use toml::Spanned;

use super::{
    HTTPS_MODE,
    health::health_check,
    raw::{RawBackend, RawService},
    report::{Report, line_col},
    values::{idle, int_in},
};
use crate::kernel::maglev;
use crate::model::{
    desired::Projection,
    health_check::HealthCheck,
    rules::Proto,
    services::{BackendAddr, MAX_WEIGHT, MIN_WEIGHT, Mode, ServiceError, Vip, parse_addr},
    synflood::SynProtection,
};

/// What the services section gives besides the projection's services.
#[derive(Default)]
pub(crate) struct Section {
    /// The services' `[service.health]` checks.
    pub health: BTreeMap<Vip, HealthCheck>,
    /// The https services' addresses (with their `mode` spans): the [tls] listener's.
    pub https: Vec<(SocketAddr, Range<usize>)>,
    /// The https services' SYN-flood protection.
    pub https_syn: BTreeMap<SocketAddr, SynProtection>,
}

/// Validates every `[[service]]` into `projection.services` (and its backups).
pub(crate) fn section(
    r: &mut Report,
    services: &[Spanned<RawService>],
    projection: &mut Projection,
) -> Section {
    let mut out = Section::default();
    let mut seen: HashMap<Vip, usize> = HashMap::new();
    let mut backends_total = 0usize;
    for svc in services {
        let s = svc.get_ref();
        let vip: Vip = match s.address.get_ref().parse() {
            Ok(v) => v,
            Err(e) => {
                r.at(s.address.span(), "service.address", e.to_string());
                continue;
            }
        };
        if let Some(&prev) = seen.get(&vip) {
            r.at(
                s.address.span(),
                "service.address",
                format!(
                    "service {vip} is defined twice (also at line {}): define each once",
                    line_col(r.src, prev).0
                ),
            );
            continue;
        }
        seen.insert(vip, s.address.span().start);
        if s.mode.get_ref() == HTTPS_MODE {
            if let Some(addr) = https_service(r, s, &vip) {
                out.https.push((addr, s.mode.span()));
                if let Some(p) = super::synflood::protection(r, s, &vip) {
                    out.https_syn.insert(addr, p);
                }
            }
            continue;
        }
        if seen.len() >= lb_common::MAX_SERVICES as usize {
            r.at(
                s.address.span(),
                "service",
                format!("too many services: at most {}", lb_common::MAX_SERVICES - 1),
            );
            continue;
        }
        if !layer4_service(r, s, vip, projection) {
            continue;
        }
        for b in &s.backend {
            backend(r, b.get_ref(), &vip, projection, &mut backends_total);
        }
        if let Some(h) = &s.health {
            if h.get_ref().port.is_none() && vip.port.is_none() {
                r.at(
                    h.span(),
                    "service.health.port",
                    format!("service {vip} balances every port: give the check a port (port = 80)"),
                );
            }
            if let Some(check) = health_check(r, h.get_ref(), "service.health") {
                out.health.insert(vip, check);
            }
        }
    }
    pool_fits(r, services, projection);
    out
}

/// Whether the services' Maglev tables fit the kernel's pool (as `xlb run` would find
/// when it installs them).
fn pool_fits(r: &mut Report, services: &[Spanned<RawService>], projection: &Projection) {
    let counts = projection
        .services
        .by_vip
        .values()
        .map(|s| s.backends.len());
    let need = maglev::pool_need(counts);
    let pool = lb_common::MAGLEV_POOL as u64;
    if need.is_some_and(|n| n <= pool) {
        return;
    }
    let span = services.last().map_or(0..0, |s| s.span());
    let per = maglev::DEFAULT_TABLE_SIZE as u64;
    r.at(
        span,
        "service",
        match need {
            Some(n) => format!(
                "the services' Maglev tables need {n} slots and the kernel's pool holds {pool} (about {} services of up to 163 backends): remove services",
                pool / per - 1
            ),
            None => format!(
                "a service has more backends than the largest Maglev table takes ({} slots)",
                maglev::TABLE_SIZES[maglev::TABLE_SIZES.len() - 1]
            ),
        },
    );
}

/// A layer-4 service's settings into `projection.services`; false when refused.
fn layer4_service(r: &mut Report, s: &RawService, vip: Vip, projection: &mut Projection) -> bool {
    let mode: Mode = match s.mode.get_ref().parse() {
        Ok(m) => m,
        Err(e) => {
            r.at(s.mode.span(), "service.mode", format!("{e}"));
            return false;
        }
    };
    let affinity = match &s.affinity {
        None => false,
        Some(a) => match a.get_ref().as_str() {
            "none" => false,
            "source" => true,
            other => {
                r.at(
                    a.span(),
                    "service.affinity",
                    format!("'{other}' is not an affinity: expected \"none\" or \"source\""),
                );
                false
            }
        },
    };
    let tcp = idle(r, &s.tcp_idle, "service.tcp_idle");
    let udp = idle(r, &s.udp_idle, "service.udp_idle");
    let snat = match &s.snat {
        None => None,
        Some(a) => match parse_addr(a.get_ref()) {
            Ok(ip) => Some(ip),
            Err(e) => {
                r.at(a.span(), "service.snat", e.to_string());
                return false;
            }
        },
    };
    let services = &mut projection.services;
    if let Err(e) = services.add_service(vip, mode, affinity, s.echo.unwrap_or(true)) {
        r.at(s.address.span(), "service.address", e.to_string());
        return false;
    }
    if let Err(e) = services.set_idle(&vip, tcp, udp) {
        let (span, field) = match (&e, &s.tcp_idle, &s.udp_idle) {
            (
                ServiceError::IdleProto {
                    given: Proto::Tcp, ..
                },
                Some(v),
                _,
            ) => (v.span(), "service.tcp_idle"),
            (
                ServiceError::IdleProto {
                    given: Proto::Udp, ..
                },
                _,
                Some(v),
            ) => (v.span(), "service.udp_idle"),
            _ => (s.address.span(), "service"),
        };
        r.at(span, field, file_words(&e.to_string()));
        services.by_vip.remove(&vip);
        return false;
    }
    if let Some(a) = &s.all_down {
        match a.get_ref().parse::<crate::model::weights::AllDown>() {
            Ok(v) => services.by_vip.get_mut(&vip).expect("added above").all_down = v,
            Err(_) => {
                r.at(
                    a.span(),
                    "service.all_down",
                    format!(
                        "'{}' is not what to do with every backend down: expected \"panic\" or \"strict\"",
                        crate::model::text::shown(a.get_ref())
                    ),
                );
                services.by_vip.remove(&vip);
                return false;
            }
        }
    }
    match super::synflood::protection(r, s, &vip) {
        Some(p) => services.by_vip.get_mut(&vip).expect("added above").syn = p,
        None => {
            services.by_vip.remove(&vip);
            return false;
        }
    }
    if let Err(e) = services.set_snat(&vip, snat) {
        let span = s.snat.as_ref().map_or(s.mode.span(), |a| a.span());
        let field = if s.snat.is_some() {
            "service.snat"
        } else {
            "service.mode"
        };
        r.at(span, field, file_words(&e.to_string()));
        services.by_vip.remove(&vip);
        return false;
    }
    true
}

/// A model message in the file's words: the CLI's flags are the file's keys.
fn file_words(msg: &str) -> String {
    msg.replace("--snat", "snat")
        .replace("--tcp-idle", "tcp_idle")
        .replace("--udp-idle", "udp_idle")
}

/// One `[[service.backend]]` of service `vip`.
fn backend(
    r: &mut Report,
    b: &RawBackend,
    vip: &Vip,
    projection: &mut Projection,
    total: &mut usize,
) {
    let addr: BackendAddr = match b.address.get_ref().parse() {
        Ok(a) => a,
        Err(e) => {
            r.at(b.address.span(), "service.backend.address", e.to_string());
            return;
        }
    };
    let weight = match &b.weight {
        None => 1,
        Some(_) => match int_in(
            r,
            &b.weight,
            "service.backend.weight",
            MIN_WEIGHT as i64..=MAX_WEIGHT as i64,
            "weight",
        ) {
            Some(w) => w as u32,
            None => return,
        },
    };
    let addr = match projection.services.add_backend(vip, addr, weight) {
        Ok(a) => a,
        Err(e) => {
            r.at(b.address.span(), "service.backend.address", e.to_string());
            return;
        }
    };
    if b.backup == Some(true) {
        projection.backups.insert((*vip, addr));
    }
    *total += 1;
    if *total >= lb_common::MAX_BACKENDS as usize {
        r.at(
            b.address.span(),
            "service.backend",
            format!("too many backends: at most {}", lb_common::MAX_BACKENDS - 1),
        );
    }
}

/// An https service's listen address; its packets are only filtered by the program
/// (the local stack and the daemon's listener take them), so the keys of a layer-4
/// service are refused, and its backends are [tls]'s pools.
fn https_service(r: &mut Report, s: &RawService, vip: &Vip) -> Option<SocketAddr> {
    let mut ok = true;
    let mut refuse = |span: Range<usize>, field: &str, what: &str| {
        r.at(
            span,
            field,
            format!("an https service has no {what}: its backends, balancing and checks are in [tls] (pools, routes, pools.health)"),
        );
        ok = false;
    };
    if let Some(b) = s.backend.first() {
        refuse(b.span(), "service.backend", "[[service.backend]]");
    }
    if let Some(h) = &s.health {
        refuse(h.span(), "service.health", "[service.health]");
    }
    for (key, span) in [
        ("affinity", s.affinity.as_ref().map(|v| v.span())),
        ("snat", s.snat.as_ref().map(|v| v.span())),
        ("tcp_idle", s.tcp_idle.as_ref().map(|v| v.span())),
        ("udp_idle", s.udp_idle.as_ref().map(|v| v.span())),
    ] {
        if let Some(span) = span {
            refuse(span, &format!("service.{key}"), key);
        }
    }
    match (vip.port, vip.proto) {
        (Some(port), Proto::Tcp) if ok => Some(SocketAddr::new(vip.addr, port)),
        (Some(_), Proto::Tcp) => None,
        _ => {
            r.at(
                s.address.span(),
                "service.address",
                format!(
                    "an https service is one TCP port: e.g. \"{}\"",
                    SocketAddr::new(vip.addr, 443).to_string() + "/tcp"
                ),
            );
            None
        }
    }
}
