//! The control socket: binding it (root only, or a group), serving one request per
//! connection, and the lock every task takes on the daemon's state.
//!
//! A handler that panics must not take the daemon with it: [`locked`] recovers a
//! poisoned lock and turns a panic into an error answer, so the next request is served
//! as if nothing happened (the change that panicked answered an error; its all-or-
//! nothing rollback may not have run, which the error says).

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{error, info};

use super::running::Running;
use crate::{
    api::{Request, Response},
    config::files::{self, Existing},
};

/// The daemon's state, shared by the control connections, the health checks, the
/// metrics scrapes and the main loop.
pub type Shared = Arc<Mutex<Running>>;

/// Runs `f` with the lock held. A lock poisoned by an earlier panic is taken over, and
/// a panic inside `f` is caught and returned as an error: no handler's failure stops
/// the daemon or poisons the requests after it.
pub fn locked<T, R>(m: &Mutex<T>, what: &str, f: impl FnOnce(&mut T) -> R) -> Result<R, String> {
    let mut guard = m.lock().unwrap_or_else(PoisonError::into_inner);
    catch_unwind(AssertUnwindSafe(|| f(&mut guard))).map_err(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        error!("{what} failed with an internal error: {why}");
        format!("internal error in {what}: {why} (the daemon goes on; check `xlb status`)")
    })
}

/// Owner root; mode 0600, or 0660 with the group `gid`.
pub(super) fn set_socket_access(socket: &Path, gid: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(socket, Some(0), Some(gid.unwrap_or(0)))
        .with_context(|| format!("setting the owner of {}", socket.display()))?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", socket.display()))
}

/// Refuses to start a second daemon on the same socket; removes a stale socket file.
pub(super) async fn bind(socket: &Path, gid: Option<u32>) -> Result<UnixListener> {
    match files::existing(socket).with_context(|| format!("looking at {}", socket.display()))? {
        Existing::Nothing => {}
        Existing::Socket => {
            if UnixStream::connect(socket).await.is_ok() {
                bail!("another xlb daemon is already serving {}", socket.display());
            }
            // A stale socket: nobody listens on it any more.
            std::fs::remove_file(socket)
                .with_context(|| format!("removing the stale socket {}", socket.display()))?;
        }
        Existing::Regular => bail!(
            "{} exists and is a regular file, not a socket: xlb replaces only a stale socket; remove it or choose another --socket",
            socket.display()
        ),
        Existing::Other(kind) => bail!(
            "{} exists and is {kind}, not a socket: xlb replaces only a stale socket; remove it or choose another --socket",
            socket.display()
        ),
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The socket is created with no access for others: nobody connects before its mode
    // is set.
    // SAFETY: umask has no preconditions; nothing else creates files at this point.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(socket);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", socket.display()))?;
    set_socket_access(socket, gid)?;
    Ok(listener)
}

/// Control connections served at once; more are closed at once (the socket is
/// root's: this bounds what a runaway script can hold; far more than an operator's
/// tools open, so that they are never turned away by it).
pub const MAX_CONNECTIONS: usize = 4096;
/// How long a connection may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest request line: a bulk file of the file-size limit, JSON-escaped (a
/// newline becomes `\n`), and the rest of the request.
fn max_request() -> u64 {
    files::limit() / 4 * 5 + (1 << 20)
}

/// Reads one request line of at most `max` bytes; None for a liveness probe (a
/// connection closed without a byte).
async fn read_request(read: impl AsyncRead + Unpin, max: u64) -> Result<Option<String>> {
    let mut line = Vec::new();
    let n = BufReader::new(read.take(max + 1))
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() as u64 > max {
        bail!("the request is larger than {max} bytes (raise --max-file-size for bigger files)");
    }
    if line.last() != Some(&b'\n') {
        bail!("the request ended before its end of line");
    }
    Ok(Some(
        String::from_utf8(line).context("the request is not UTF-8")?,
    ))
}

/// Serves one connection: one request line, one answer line.
pub(super) async fn serve_one(stream: UnixStream, running: Shared) -> Result<()> {
    let caller = stream.peer_cred().ok();
    let (read, mut write) = stream.into_split();
    let line = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(read, max_request())).await
    {
        Ok(Ok(Some(line))) => line,
        // A liveness probe (`api::daemon_running`): connected, asked nothing.
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            return answer(&mut write, Response::err(format!("bad request: {e:#}"))).await;
        }
        Err(_) => {
            let why = format!("bad request: none within {} s", REQUEST_TIMEOUT.as_secs());
            return answer(&mut write, Response::err(why)).await;
        }
    };
    let mut down = false;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            down = matches!(req, Request::Down);
            // A change is logged with its caller, its arguments and its outcome.
            let logged = req.changes().then(|| (req.name(), req.args()));
            let running = running.clone();
            let resp = tokio::task::spawn_blocking(move || match req {
                Request::Reload { reset } => super::reload::reload(&running, "cli", reset),
                req => locked(&running, "the request", |r| r.handle(req, "cli"))
                    .unwrap_or_else(Response::err),
            })
            .await?;
            if let Some((op, args)) = logged {
                let (uid, pid) = caller.map_or((None, None), |c| (Some(c.uid()), c.pid()));
                match &resp.error {
                    None => info!(?uid, ?pid, op, args, "control change applied"),
                    Some(e) => info!(
                        ?uid,
                        ?pid,
                        op,
                        args,
                        error = %crate::model::text::message(e),
                        "control change refused"
                    ),
                }
            }
            resp
        }
        Err(e) => Response::err(format!("bad request: {e}")),
    };
    drop(line);
    let sent = answer(&mut write, resp).await;
    if down {
        let _ = locked(&running, "stopping", |r| r.stop.notify_one());
    }
    sent
}

/// Writes one answer line.
async fn answer(write: &mut (impl AsyncWrite + Unpin), resp: Response) -> Result<()> {
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    Ok(write.write_all(&out).await?)
}

/// Removes the socket file when the daemon stops, if it is still the one it bound.
pub(super) struct SocketGuard {
    path: PathBuf,
    /// The (device, inode) of the socket bound.
    id: Option<(u64, u64)>,
}

impl SocketGuard {
    /// Guards the socket just bound at `path`.
    pub fn new(path: &Path) -> Self {
        SocketGuard {
            path: path.to_path_buf(),
            id: inode(path),
        }
    }
}

fn inode(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if self.id.is_some() && inode(&self.path) == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_handler_answers_an_error_and_the_next_one_runs() {
        let state = Mutex::new(0u32);
        let e = locked(&state, "the request", |n: &mut u32| -> u32 {
            *n += 1;
            panic!("boom");
        })
        .unwrap_err();
        assert!(e.contains("internal error in the request: boom"), "{e}");
        // The panic was caught under the lock: nothing is poisoned, the next request runs.
        assert!(!state.is_poisoned());
        assert_eq!(locked(&state, "the request", |n| *n + 1), Ok(2));
    }

    #[test]
    fn a_lock_poisoned_elsewhere_is_taken_over() {
        let state = Arc::new(Mutex::new(1u32));
        let s = state.clone();
        let _ = std::thread::spawn(move || {
            let _g = s.lock().unwrap();
            panic!("a task died holding the lock");
        })
        .join();
        assert!(state.is_poisoned());
        assert_eq!(locked(&state, "the request", |n| *n + 1), Ok(2));
    }
}
