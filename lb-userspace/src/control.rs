//! The control API: one JSON request and one JSON response per connection, over a Unix
//! socket that only root can open (mode 0600; 0660 with a group). Every CLI verb other
//! than `run` and `check-config` is a client of it.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{rules::Action, services::Mode};

pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";
/// Where the daemon pins its datapath (maps, links) by default.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/xlb";
/// Where the desired state is stored by default.
pub const DEFAULT_STATE: &str = "/var/lib/xlb/state";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Source prefixes with an action.
    Prefix {
        action: Action,
        targets: Vec<String>,
    },
    /// Port specs with an action.
    Port {
        action: Action,
        targets: Vec<String>,
    },
    /// Always-allow prefixes or port specs.
    Except {
        targets: Vec<String>,
    },
    /// Removes rules: prefixes or port specs (`except` for the always-allow list).
    Del {
        except: bool,
        targets: Vec<String>,
    },
    Default {
        action: Action,
    },
    Malformed {
        action: Action,
    },
    /// Bulk prefixes, one a line (see rules::parse_bulk).
    Load {
        action: Action,
        text: String,
    },
    /// Removes every rule (the policies stay).
    Flush,
    VipAdd {
        vip: String,
        mode: Mode,
        affinity_source: bool,
        echo: bool,
        /// Idle timeouts in seconds (None: the defaults).
        #[serde(default)]
        tcp_idle: Option<u32>,
        #[serde(default)]
        udp_idle: Option<u32>,
        /// fullnat: the source address towards the backends.
        #[serde(default)]
        snat: Option<String>,
    },
    /// Sets a service's health check from its `key=value` settings (the keys of a
    /// `[service.health]` table, `kind` among them), or removes it (None).
    VipCheck {
        vip: String,
        check: Option<BTreeMap<String, String>>,
    },
    VipDel {
        vip: String,
    },
    VipList,
    BackendAdd {
        vip: String,
        backend: String,
        weight: u32,
        /// Takes flows only while every primary of the service is out.
        #[serde(default)]
        backup: bool,
    },
    /// Takes a backend out of new flows (weight 0) until `BackendEnable`.
    BackendDrain {
        vip: String,
        backend: String,
    },
    BackendEnable {
        vip: String,
        backend: String,
    },
    BackendDel {
        vip: String,
        backend: String,
    },
    List,
    Stats,
    /// The daemon: interfaces, program, configuration, rules and services.
    Status,
    /// Re-reads the configuration file and applies what changed in it.
    Reload,
    /// Stops the daemon and removes the datapath: detaches from every interface,
    /// removes the pins (`xlb down`).
    Down,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Self {
        Response {
            ok: true,
            error: None,
            data,
        }
    }
    pub fn err(e: impl std::fmt::Display) -> Self {
        Response {
            ok: false,
            error: Some(e.to_string()),
            data: serde_json::Value::Null,
        }
    }
}

/// Whether a daemon answers on `socket`.
pub fn daemon_running(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// Sends one request and returns the daemon's data, or its error.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            bail!(
                "no xlb daemon is running (nothing listens on {}): start one with `xlb run --config FILE` or `xlb run --iface IF`",
                socket.display()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            bail!(
                "permission denied on {}: the control socket is root-only, use sudo",
                socket.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", socket.display())),
    };
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).context("sending the request")?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("reading the reply")?;
    if reply.is_empty() {
        bail!("the daemon closed the connection without a reply");
    }
    let resp: Response = serde_json::from_str(&reply).context("parsing the reply")?;
    if resp.ok {
        Ok(resp.data)
    } else {
        Err(anyhow!(
            resp.error.unwrap_or_else(|| "unknown error".into())
        ))
    }
}
