//! `xlb fw`: firewall rules and policies.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use super::format::print_json;
use crate::{
    api::{
        self, Request,
        reply::{PolicySet, RuleChanges, RuleList},
    },
    model::rules::Action,
};

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

/// Runs one `xlb fw` verb.
pub fn fw(socket: &Path, cmd: Fw) -> Result<()> {
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
        Fw::Default { action } => {
            return policy(
                socket,
                Request::Default {
                    action: action.into(),
                },
            );
        }
        Fw::Malformed { action } => {
            return policy(
                socket,
                Request::Malformed {
                    action: action.into(),
                },
            );
        }
        Fw::List { json } => {
            let v: RuleList = api::call(socket, &Request::List)?;
            return if json { print_json(&v) } else { print_list(&v) };
        }
        Fw::Load { file, action } => return load(socket, &file, action.into()),
    };
    let v: RuleChanges = api::call(socket, &req)?;
    print_change(&v);
    Ok(())
}

/// `fw load FILE`: one request with the whole file.
fn load(socket: &Path, file: &PathBuf, action: Action) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let req = Request::Load { action, text };
    let v: RuleChanges =
        api::call(socket, &req).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    print_change(&v);
    Ok(())
}

fn policy(socket: &Path, req: Request) -> Result<()> {
    let v: PolicySet = api::call(socket, &req)?;
    println!("policy set to {}", v.policy);
    Ok(())
}

fn print_change(v: &RuleChanges) {
    println!(
        "added {}, updated {}, removed {} ({} rules in all)",
        v.added, v.updated, v.removed, v.rules
    );
}

fn print_list(v: &RuleList) -> Result<()> {
    println!("default policy:   {}", v.default);
    println!("malformed policy: {}", v.malformed);
    if v.rules.is_empty() {
        println!("no rules");
        return Ok(());
    }
    println!(
        "{:>8}  {:<14} {:<44} {:<6} {:>12}",
        "id", "kind", "match", "action", "hits"
    );
    for r in &v.rules {
        println!(
            "{:>8}  {:<14} {:<44} {:<6} {:>12}",
            r.id,
            r.kind,
            r.matches,
            r.action.to_string(),
            r.hits
        );
    }
    Ok(())
}
