//! The client side of the control socket, and the envelope of every reply.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{reply::Reply, request::Request};

#[derive(Debug, Serialize, Deserialize)]
/// The envelope of every reply: `ok` with the reply as `data`, or an `error`.
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(reply: Reply) -> Self {
        Response {
            ok: true,
            error: None,
            data: serde_json::to_value(reply).unwrap_or_default(),
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

/// Sends one request and returns the daemon's reply as `R` (the reply type of that
/// request), or its error.
pub fn call<R: DeserializeOwned>(socket: &Path, req: &Request) -> Result<R> {
    let data = call_raw(socket, req)?;
    serde_json::from_value(data).context(
        "the daemon's reply does not have the expected fields (a daemon of another xlb version?)",
    )
}

/// Sends one request and returns the daemon's `data`, or its error.
pub fn call_raw(socket: &Path, req: &Request) -> Result<serde_json::Value> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NoDaemon(socket.display().to_string()).into());
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ClientError::Permission(socket.display().to_string()).into());
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
        Err(ClientError::Refused(resp.error.unwrap_or_else(|| "unknown error".into())).into())
    }
}

/// Why a request got no reply data: the kinds the CLI's exit codes tell apart.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no xlb daemon is running (nothing listens on {0}): start one with `xlb run --config FILE` or `xlb run --iface IF`"
    )]
    NoDaemon(String),
    #[error("permission denied on {0}: the control socket is root-only, use sudo")]
    Permission(String),
    /// The daemon answered with an error (nothing was changed).
    #[error("{0}")]
    Refused(String),
}
