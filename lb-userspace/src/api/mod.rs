//! The control protocol between the daemon and the CLI: one JSON request ([`Request`])
//! and one JSON response per connection over a Unix socket that only root can open
//! (mode 0600; 0660 with a group). Replies are typed ([`reply`]), shared by both ends.
//! Every CLI verb other than `run`, `proxy` and `check-config` is a client of it.

pub mod client;
pub mod reply;
pub mod request;

pub use client::{Response, call, call_raw, daemon_running};
pub use reply::Reply;
pub use request::Request;

/// Where the daemon's control socket is by default.
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";
/// Where the daemon pins its datapath (maps, links) by default.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/xlb";
/// Where the desired state is stored by default.
pub const DEFAULT_STATE: &str = "/var/lib/xlb/state";
