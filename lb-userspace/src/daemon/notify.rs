//! systemd's readiness protocol (sd_notify): the daemon says `READY=1` once its
//! datapath is attached and its control socket serves, `RELOADING=1` and `READY=1`
//! around a reload, `STOPPING=1` on its way out. Without `$NOTIFY_SOCKET` (not started
//! by systemd with `Type=notify`) nothing is sent.

use std::os::{linux::net::SocketAddrExt, unix::net::UnixDatagram};

use tracing::debug;

/// Sends `state` (newline-separated `KEY=value` lines) to `$NOTIFY_SOCKET`, if set.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        match path.strip_prefix('@') {
            // An abstract socket: its name follows the '@'.
            Some(name) => {
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
            }
            None => {
                sock.send_to(state.as_bytes(), &path)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = sent {
        debug!("notifying systemd ({path}): {e}");
    }
}
