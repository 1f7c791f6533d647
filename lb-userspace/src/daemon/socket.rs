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
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::error;

use super::running::Running;
use crate::api::{Request, Response};

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
    if UnixStream::connect(socket).await.is_ok() {
        bail!("another xlb daemon is already serving {}", socket.display());
    }
    let _ = std::fs::remove_file(socket);
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

/// Serves one connection: one request line, one answer line.
pub(super) async fn serve_one(stream: UnixStream, running: Shared) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).await? == 0 {
        // A liveness probe (`api::daemon_running`): connected, asked nothing.
        return Ok(());
    }
    let mut down = false;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            down = matches!(req, Request::Down);
            let running = running.clone();
            tokio::task::spawn_blocking(move || {
                locked(&running, "the request", |r| r.handle(req, "cli"))
                    .unwrap_or_else(Response::err)
            })
            .await?
        }
        Err(e) => Response::err(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    let sent = write.write_all(&out).await;
    if down {
        let _ = locked(&running, "stopping", |r| r.stop.notify_one());
    }
    Ok(sent?)
}

/// Removes the socket file when the daemon stops.
pub(super) struct SocketGuard(pub PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
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
