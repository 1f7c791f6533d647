//! `xlb status`, `xlb reload` and `xlb stats`.

use anyhow::Result;

use super::{
    Ctx, StatsCmd,
    format::{duration_text, print_json, utc},
    limits::print_limits,
    services::backend_line,
};
use crate::{
    api::{
        self, Request,
        reply::{ConfigView, CountersReset, HttpsView, Reloaded, Stats, Status},
    },
    config::plan::ServicesDiff,
    kernel::Adoption,
};

/// `xlb status`.
pub fn status(ctx: &Ctx) -> Result<()> {
    let v: Status = api::call(&ctx.socket, &Request::Status)?;
    if ctx.json {
        return print_json(&v);
    }
    print_status(&v);
    Ok(())
}

/// `xlb reload [--reset]`.
pub fn reload(ctx: &Ctx, reset: bool) -> Result<()> {
    let v: Reloaded = api::call(&ctx.socket, &Request::Reload { reset })?;
    if ctx.json {
        return print_json(&v);
    }
    println!("reloaded: generation {}: {}", v.generation, reload_text(&v));
    Ok(())
}

/// `xlb stats`, and `xlb stats reset`.
pub fn stats(ctx: &Ctx, action: Option<StatsCmd>) -> Result<()> {
    if let Some(StatsCmd::Reset) = action {
        let v: CountersReset = api::call(&ctx.socket, &Request::ResetCounters)?;
        if ctx.json {
            return print_json(&v);
        }
        println!(
            "counters reset ({} rules, {} backends)",
            v.rules, v.backends
        );
        return Ok(());
    }
    let v: Stats = api::call(&ctx.socket, &Request::Stats)?;
    if ctx.json {
        return print_json(&v);
    }
    print_stats(&v);
    Ok(())
}

/// "+1 ~0 -2".
fn counts(added: usize, updated: usize, removed: usize) -> String {
    format!("+{added} ~{updated} -{removed}")
}

fn reload_text(v: &Reloaded) -> String {
    let names = |list: &[String]| {
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    };
    let (a, s): (_, &ServicesDiff) = (&v.applied, &v.applied.services);
    format!(
        "rules {}, policies changed {}, services {}, backends {}; attached {}, detached {}",
        counts(a.rules_added, a.rules_updated, a.rules_removed),
        a.policies_changed,
        counts(s.services_added, s.services_updated, s.services_removed),
        counts(s.backends_added, s.backends_updated, s.backends_removed),
        names(&v.interfaces_attached),
        names(&v.interfaces_detached),
    )
}

fn print_status(v: &Status) {
    println!(
        "xlb {}, pid {}, up {} (since {})",
        v.version,
        v.pid,
        duration_text(v.uptime_secs),
        utc(v.started_unix)
    );
    let ifaces: Vec<String> = v
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.mode.as_str()))
        .collect();
    println!(
        "program:     id {} attached to {}",
        v.program_id,
        ifaces.join(", ")
    );
    let d = &v.datapath;
    let at_start = match &d.at_start {
        Adoption::Adopted { maps } => format!("took over a running datapath ({maps} maps kept)"),
        Adoption::Replaced { why } => format!("replaced an incompatible one ({why})"),
        Adoption::Fresh => "started fresh".to_string(),
    };
    let on_stop = match d.on_stop {
        api::reply::OnStop::Detach => "detaches and removes the pins",
        api::reply::OnStop::Keep => "keeps forwarding (`xlb down` removes it)",
    };
    println!(
        "datapath:    pinned at {}; {at_start}; when stopped {on_stop}",
        d.pins.as_deref().unwrap_or("null")
    );
    match &v.socket_group {
        Some(g) => println!("socket:      {} (mode 0660, group {g})", v.socket),
        None => println!("socket:      {} (mode 0600, root only)", v.socket),
    }
    print_config(v.config.as_ref());
    let r = &v.rules;
    println!(
        "rules:       {} ({} prefix, {} port, {} except-prefix, {} except-port); default {}, malformed {}",
        r.total, r.prefix, r.port, r.except_prefix, r.except_port, r.default, r.malformed
    );
    println!("services:    {}", v.services.len());
    for s in &v.services {
        let check = match &s.health_check {
            Some(c) => format!("check {}", c.kind.name()),
            None => "no check".into(),
        };
        let panic = if s.panic {
            format!(
                "; PANIC: every backend down, new flows to all of them (entered {} times)",
                s.panic_entered
            )
        } else if s.panic_entered > 0 {
            format!("; panic mode entered {} times", s.panic_entered)
        } else {
            String::new()
        };
        println!(
            "  {:<32} {:<4} affinity {:<6} {}; all down: {}{panic}",
            s.service,
            s.mode.to_string(),
            s.affinity,
            check,
            s.all_down
        );
        for b in &s.backends {
            println!("      {}", backend_line(b));
        }
    }
    print_syn(&v.syn_protection);
    if v.limits.is_empty() {
        println!("limits:      none");
    } else {
        let dropped: u64 = v.limits.iter().map(|l| l.dropped).sum();
        println!(
            "limits:      {} ({dropped} packets dropped as rate_limited)",
            v.limits.len()
        );
        print_limits(&v.limits);
    }
    if let Some(h) = &v.https {
        print_https(h);
    }
}

/// Each protected service: whether protection is on and why, and its counters.
fn print_syn(views: &[api::reply::SynProtectionView]) {
    if views.is_empty() {
        println!("syn protection: none");
        return;
    }
    println!("syn protection:");
    for p in views {
        let mode = match p.mode {
            crate::model::synflood::SynMode::Auto => format!("auto above {}/s", p.threshold),
            m => m.to_string(),
        };
        println!(
            "  {:<32} {} ({mode}, {}): {}",
            p.service,
            if p.active { "ACTIVE" } else { "inactive" },
            p.method,
            p.why
        );
        println!(
            "      cookies sent {}, validated {}, refused {}; no-flow dropped {}; proxied {}; allowed {}",
            p.cookies_sent,
            p.cookies_validated,
            p.cookies_refused,
            p.no_flow_dropped,
            p.proxied,
            p.allowed
        );
    }
}

fn print_config(c: Option<&ConfigView>) {
    let Some(c) = c else {
        println!("config:      none (started without --config)");
        return;
    };
    println!("config:      {}, generation {}", c.file, c.generation);
    match &c.last_reload {
        None => println!("last reload: none since start"),
        Some(r) => match (&r.changes, &r.error) {
            (Some(changes), _) if r.ok => println!(
                "last reload: ok at {} ({}): {}",
                utc(r.at_unix),
                r.trigger,
                reload_text(changes)
            ),
            (_, error) => {
                println!(
                    "last reload: refused at {} ({}), the running state was kept:",
                    utc(r.at_unix),
                    r.trigger
                );
                for line in error.as_deref().unwrap_or("?").lines() {
                    println!("             {line}");
                }
            }
        },
    }
}

fn print_https(h: &HttpsView) {
    println!("https:       listening on {}", h.listen.join(", "));
    for p in &h.pools {
        let check = match &p.health_check {
            Some(c) => format!("check {}", c.kind.name()),
            None => "no check".into(),
        };
        println!("  pool {:<27} {check}", p.pool);
        for b in &p.backends {
            let mut line = format!("{:<52} {:<9}", b.backend, b.state);
            if !b.takes_requests {
                line.push_str(" (no requests)");
            }
            if let Some(last) = b.health.as_ref().and_then(|h| h.last.as_deref()) {
                line.push_str(&format!(" last check: {last}"));
            }
            println!("      {line}");
        }
    }
}

fn print_stats(v: &Stats) {
    for verdict in ["pass", "drop"] {
        let t = v.verdicts.get(verdict).copied().unwrap_or_default();
        println!(
            "{verdict:<5} {:>14} packets {:>16} bytes",
            t.packets, t.bytes
        );
    }
    println!();
    println!(
        "{:<16} {:<7} {:>14} {:>16}",
        "reason", "verdict", "packets", "bytes"
    );
    for r in v.reasons.iter().filter(|r| r.packets > 0) {
        println!(
            "{:<16} {:<7} {:>14} {:>16}",
            r.reason, r.verdict, r.packets, r.bytes
        );
    }
    println!("\n{} rules loaded", v.rules);
    let services = &v.traffic.services;
    if !services.is_empty() {
        println!();
        println!(
            "{:<44} {:>14} {:>16} {:>10}",
            "service / backend", "packets", "bytes", "new flows"
        );
        for s in services {
            println!(
                "{:<44} {:>14} {:>16} {:>10}",
                format!("{} ({})", s.service, s.mode),
                s.packets,
                s.bytes,
                s.new_flows
            );
            for b in &s.backends {
                println!(
                    "  {:<42} {:>14} {:>16} {:>10}  {}",
                    b.backend, b.packets, b.bytes, b.new_flows, b.health
                );
            }
        }
    }
    if !v.limits.is_empty() {
        println!();
        print_limits(&v.limits);
    }
    let f = &v.traffic.flows;
    println!(
        "\nflow table: {} forward + {} reply entries of {}",
        f.forward, f.reply, f.capacity
    );
}
