//! `xlb fw limit`: rate limits (token buckets on sources).

use anyhow::Result;
use clap::Subcommand;

use super::{Ctx, format::print_json};
use crate::api::{
    self, Request,
    reply::{LimitChanges, LimitList, LimitView},
};

/// What a limit matches, as `add` and `del` take it.
#[derive(clap::Args, Debug)]
pub struct MatchArgs {
    /// What a bucket is kept for: `address` (every source address its own, the
    /// default), a prefix length (`/24`: every /24 of the sources its own; needs
    /// --prefix), or `prefix` (the prefix as a whole, one bucket).
    #[arg(long)]
    per: Option<String>,
    /// Only sources in this prefix (default: every source, IPv4 and IPv6).
    #[arg(long)]
    prefix: Option<String>,
    /// Count only packets that open a flow (a TCP SYN, the first UDP packet of a
    /// flow), not every packet.
    #[arg(long)]
    new_flows: bool,
    /// Only traffic to this service (ADDR:PORT/PROTO; default: all traffic, to the
    /// host and to every service).
    #[arg(long)]
    service: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum LimitCmd {
    /// Add a limit: `xlb fw limit add 100/s --burst 200 --prefix 198.51.100.0/24`.
    /// Packets over it are dropped (reason rate_limited); answers of the backends and
    /// of the health checks never are, nor always-allowed ones (`fw except`).
    Add {
        /// The rate: COUNT/s, COUNT/m or COUNT/h (e.g. 1000/s).
        rate: String,
        /// Packets (or flows) that may come at once (1 or more; default: the rate's
        /// count).
        #[arg(long)]
        burst: Option<String>,
        #[command(flatten)]
        matches: MatchArgs,
    },
    /// Remove the limit of this match (the options it was added with, less rate and
    /// burst).
    Del {
        #[command(flatten)]
        matches: MatchArgs,
    },
    /// List the limits with their counters (passed, dropped, of those by the sketch,
    /// exempted, sources given an exact bucket).
    List,
}

/// Runs one `xlb fw limit` verb.
pub fn limit(ctx: &Ctx, cmd: LimitCmd) -> Result<()> {
    let req = match cmd {
        LimitCmd::Add {
            rate,
            burst,
            matches: m,
        } => Request::LimitAdd {
            rate,
            burst,
            per: m.per,
            prefix: m.prefix,
            new_flows: m.new_flows,
            service: m.service,
        },
        LimitCmd::Del { matches: m } => Request::LimitDel {
            per: m.per,
            prefix: m.prefix,
            new_flows: m.new_flows,
            service: m.service,
        },
        LimitCmd::List => {
            let v: LimitList = api::call(&ctx.socket, &Request::LimitList)?;
            if ctx.json {
                return print_json(&v);
            }
            print_limits(&v.limits);
            return Ok(());
        }
    };
    let v: LimitChanges = api::call(&ctx.socket, &req)?;
    if ctx.json {
        return print_json(&v);
    }
    println!(
        "added {}, removed {} ({} limits in all)",
        v.added, v.removed, v.limits
    );
    Ok(())
}

/// One limit's words: `100/s burst 200 per address from 198.51.100.0/24 new flows to
/// SERVICE`.
pub fn limit_text(l: &LimitView) -> String {
    let mut s = format!("{} burst {} per {}", l.rate, l.burst, l.per);
    match &l.prefix {
        Some(p) => s.push_str(&format!(" from {p}")),
        None => s.push_str(" from any source"),
    }
    if l.new_flows {
        s.push_str(" new flows");
    }
    if let Some(v) = &l.service {
        s.push_str(&format!(" to {v}"));
    }
    s
}

pub fn print_limits(limits: &[LimitView]) {
    if limits.is_empty() {
        println!("no rate limits");
        return;
    }
    println!(
        "{:>4}  {:<64} {:>12} {:>12} {:>10} {:>10} {:>9}  source",
        "id", "limit", "passed", "dropped", "sketch", "exempted", "buckets"
    );
    for l in limits {
        println!(
            "{:>4}  {:<64} {:>12} {:>12} {:>10} {:>10} {:>9}  {}",
            l.id,
            limit_text(l),
            l.passed,
            l.dropped,
            l.sketch_dropped,
            l.exempted,
            l.promoted,
            l.source
        );
    }
}
