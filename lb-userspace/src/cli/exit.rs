//! How the CLI ends: its exit codes, and its error as text or (with `--json`) as a JSON
//! object on stderr.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | done |
//! | 1 | refused: the input, or the daemon refused the change (nothing was changed) |
//! | 2 | usage: an unknown verb or flag, a missing or malformed argument (clap) |
//! | 3 | no daemon answers on the control socket |
//! | 4 | permission: root is needed (the control socket, XDP, bpffs) |
//! | 5 | partial: some of what was asked was done (e.g. `down` stopped the daemon but could not remove everything) |

use serde::Serialize;

use crate::{api::client::ClientError, model::text};

/// The exit codes (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Refused = 1,
    Usage = 2,
    NoDaemon = 3,
    Permission = 4,
    Partial = 5,
}

/// An error with the exit code it ends the CLI with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

/// An error that ends with `exit`.
pub fn fail(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    Failure {
        exit,
        message: message.into(),
    }
    .into()
}

/// Refuses to go on without root (`what` needs it).
pub fn need_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(fail(Exit::Permission, format!("{what}: run it with sudo")));
    }
    Ok(())
}

/// The exit code of an error: the first kind found in its chain, else refused.
pub fn exit_of(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.exit;
        }
        if let Some(crate::config::files::FileError::Io { err, .. }) = cause.downcast_ref()
            && err.kind() == std::io::ErrorKind::PermissionDenied
        {
            return Exit::Permission;
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::NoDaemon(_) => Exit::NoDaemon,
                ClientError::Permission(_) => Exit::Permission,
                ClientError::Refused(_) => Exit::Refused,
            };
        }
    }
    Exit::Refused
}

/// An error as `--json` prints it on stderr.
#[derive(Serialize)]
struct JsonError<'a> {
    error: &'a str,
    exit: Exit,
    code: u8,
}

/// Prints the error (control and invisible characters of quoted input shown
/// escaped) and gives the exit code.
pub fn report(e: &anyhow::Error, json: bool) -> u8 {
    let exit = exit_of(e);
    // Line by line: a file's errors are one a line.
    let message: Vec<String> = format!("{e:#}").lines().map(text::message).collect();
    let message = message.join("\n");
    if json {
        let v = JsonError {
            error: &message,
            exit,
            code: exit as u8,
        };
        eprintln!("{}", serde_json::to_string(&v).unwrap_or_default());
    } else {
        eprintln!("xlb: {message}");
    }
    exit as u8
}
