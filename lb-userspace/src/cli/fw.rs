//! `xlb fw`: firewall rules and policies.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;

use super::{Ctx, format::print_json, limits::LimitCmd};
use crate::{
    api::{
        self, Request,
        reply::{PolicySet, RuleChanges, RuleList},
    },
    config::files,
    model::rules::{Action, Match},
    store::lines::rule_line,
};

#[derive(Subcommand, Debug)]
pub enum Fw {
    /// Drop packets from these source prefixes (longest prefix wins).
    Deny {
        /// Prefixes (`192.0.2.0/24`, `2001:db8::/32`; a bare address is a /32 or /128).
        #[arg(required = true)]
        prefixes: Vec<String>,
    },
    /// Pass packets from these source prefixes (longest prefix wins).
    Allow {
        /// Prefixes (`192.0.2.0/24`, `2001:db8::/32`; a bare address is a /32 or /128).
        #[arg(required = true)]
        prefixes: Vec<String>,
    },
    /// Port rules: `xlb fw port deny 80/tcp 1000-2000/udp`.
    Port {
        /// allow or deny.
        action: ActionArg,
        /// Port specs: PORT/PROTO or LOW-HIGH/PROTO (tcp, udp).
        #[arg(required = true)]
        ports: Vec<String>,
    },
    /// Always allow these source prefixes or destination ports, whatever else matches.
    Except {
        /// Prefixes or port specs.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove rules by prefix or port spec (`--except` for the always-allow list).
    Del {
        /// Remove from the always-allow list.
        #[arg(long)]
        except: bool,
        /// Prefixes or port specs, as they were added.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove every rule (the policies stay; rate limits too).
    Flush,
    /// Rate limits: token buckets per source address, per prefix of a length, or for a
    /// prefix as a whole (`xlb fw limit add 100/s --per /24 --prefix 0.0.0.0/0`).
    #[command(subcommand)]
    Limit(LimitCmd),
    /// The policy for packets no rule matches.
    Default {
        /// allow or deny.
        action: ActionArg,
    },
    /// The policy for truncated or malformed packets (default deny).
    Malformed {
        /// allow or deny.
        action: ActionArg,
    },
    /// List the policies and rules with their hit counts and where each comes from
    /// (the configuration file, or the CLI).
    List,
    /// Print the policies and rules in the form `fw restore` reads back.
    Save,
    /// Replace the whole firewall (policies and rules) with a file `fw save` wrote,
    /// at once: one bad line refuses the whole file.
    Restore {
        /// The file (`-`: standard input, e.g. `xlb fw save | ssh edge2 xlb fw restore -`).
        file: PathBuf,
    },
    /// Load prefixes from a file, one a line (optionally `allow`/`deny` before it, `#`
    /// comments). One bad line refuses the whole file.
    Load {
        /// The file of prefixes (`-`: standard input).
        file: PathBuf,
        /// The action of lines that name none.
        #[arg(long, value_enum, default_value = "deny")]
        action: ActionArg,
        /// Replace every prefix rule with the file's, at once (a blocklist swapped
        /// without a moment of no rules); port and except rules stay.
        #[arg(long)]
        replace: bool,
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

/// Runs one `xlb fw` verb.
pub fn fw(ctx: &Ctx, cmd: Fw) -> Result<()> {
    let req = match cmd {
        Fw::Deny { prefixes } => Request::Prefix {
            action: Action::Deny,
            targets: prefixes,
        },
        Fw::Allow { prefixes } => Request::Prefix {
            action: Action::Allow,
            targets: prefixes,
        },
        Fw::Port { action, ports } => Request::Port {
            action: action.into(),
            targets: ports,
        },
        Fw::Except { targets } => Request::Except { targets },
        Fw::Del { except, targets } => Request::Del { except, targets },
        Fw::Flush => Request::Flush,
        Fw::Limit(cmd) => return super::limits::limit(ctx, cmd),
        Fw::Default { action } => {
            return policy(
                ctx,
                Request::Default {
                    action: action.into(),
                },
            );
        }
        Fw::Malformed { action } => {
            return policy(
                ctx,
                Request::Malformed {
                    action: action.into(),
                },
            );
        }
        Fw::List => {
            let v: RuleList = api::call(&ctx.socket, &Request::List)?;
            return if ctx.json {
                print_json(&v)
            } else {
                print_list(&v);
                Ok(())
            };
        }
        Fw::Save => return save(ctx),
        Fw::Restore { file } => Request::Restore { text: read(&file)? },
        Fw::Load {
            file,
            action,
            replace,
        } => Request::Load {
            action: action.into(),
            text: read(&file)?,
            replace,
        },
    };
    let v: RuleChanges = api::call(&ctx.socket, &req)?;
    if ctx.json {
        return print_json(&v);
    }
    print_change(&v);
    Ok(())
}

/// A file the request carries, read here (regular, bounded: see `config::files`), or
/// standard input for `-`.
fn read(file: &Path) -> Result<String> {
    if file == Path::new("-") {
        return Ok(files::read_stdin()?);
    }
    Ok(files::read_text(file)?)
}

fn policy(ctx: &Ctx, req: Request) -> Result<()> {
    let v: PolicySet = api::call(&ctx.socket, &req)?;
    if ctx.json {
        return print_json(&v);
    }
    println!("policy set to {}", v.policy);
    Ok(())
}

/// `fw save --json`: the same lines, as a list.
#[derive(Serialize)]
struct Saved {
    lines: Vec<String>,
}

/// `fw save`: the policies, then every rule, as `fw restore` reads them.
fn save(ctx: &Ctx) -> Result<()> {
    let v: RuleList = api::call(&ctx.socket, &Request::List)?;
    let mut lines = vec![
        format!("default {}", v.default),
        format!("malformed {}", v.malformed),
    ];
    for r in &v.rules {
        let m: Match = saved_match(&r.kind, &r.matches)?;
        lines.push(rule_line(&m, r.action));
    }
    if ctx.json {
        return print_json(&Saved { lines });
    }
    println!("# xlb fw save: restore with `xlb fw restore FILE`");
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// A listed rule's match from its kind and text.
fn saved_match(kind: &str, text: &str) -> Result<Match> {
    Ok(match kind {
        "prefix" => Match::Prefix(text.parse()?),
        "port" => Match::Port(text.parse()?),
        "except-prefix" => Match::ExceptPrefix(text.parse()?),
        "except-port" => Match::ExceptPort(text.parse()?),
        other => anyhow::bail!("the daemon listed a rule of an unknown kind '{other}'"),
    })
}

fn print_change(v: &RuleChanges) {
    println!(
        "added {}, updated {}, removed {} ({} rules in all)",
        v.added, v.updated, v.removed, v.rules
    );
}

fn print_list(v: &RuleList) {
    println!("default policy:   {}", v.default);
    println!("malformed policy: {}", v.malformed);
    if v.rules.is_empty() {
        println!("no rules");
        return;
    }
    println!(
        "{:>8}  {:<14} {:<44} {:<6} {:>12}  source",
        "id", "kind", "match", "action", "hits"
    );
    for r in &v.rules {
        println!(
            "{:>8}  {:<14} {:<44} {:<6} {:>12}  {}",
            r.id,
            r.kind,
            r.matches,
            r.action.to_string(),
            r.hits,
            r.source
        );
    }
}
