//! `[tls.access_log]`: where the https service's access log goes (a file, stdout,
//! syslog or only the exporter), its rotation and syslog facility, checked before the
//! proxy starts.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::values::count;
use crate::model::text::shown;

/// Where the access log goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "lowercase",
    expecting = "\"file\", \"stdout\", \"syslog\" or \"otlp\""
)]
pub enum AccessLogTarget {
    #[default]
    File,
    Stdout,
    Syslog,
    /// Only to the log exporter (`[export]`, which must list the access stream).
    Otlp,
}

/// `[tls.access_log]`: JSON lines, one per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a [tls.access_log] table: to, path, max_size, keep, syslog, facility"
)]
pub struct AccessLogConfig {
    /// file (`path`), stdout, syslog (`syslog`, RFC 5424) or otlp (only `[export]`;
    /// an exported access stream gets every record whatever this says).
    pub to: AccessLogTarget,
    /// The file (relative: to the configuration's directory).
    pub path: Option<PathBuf>,
    /// Rotate the file when it reaches this size (e.g. "100MiB"); none: never (reopen
    /// it on SIGUSR1 after an external rotation instead).
    #[serde(deserialize_with = "size")]
    pub max_size: Option<u64>,
    /// Rotated files kept (`path.1` ... `path.N`).
    #[serde(deserialize_with = "count")]
    pub keep: u32,
    /// syslog: a unix datagram socket (`/dev/log`) or `udp://HOST:PORT`.
    pub syslog: String,
    /// syslog: the facility (user, daemon, local0 ... local7).
    pub facility: String,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            to: AccessLogTarget::File,
            path: None,
            max_size: None,
            keep: 5,
            syslog: "/dev/log".into(),
            facility: "local0".into(),
        }
    }
}

/// The syslog facilities by name (RFC 5424's numbers).
const FACILITIES: [(&str, u32); 10] = [
    ("user", 1),
    ("daemon", 3),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

impl AccessLogConfig {
    /// The facility's number (validated: `local0`'s if unknown).
    pub fn facility_code(&self) -> u32 {
        FACILITIES
            .iter()
            .find(|(n, _)| *n == self.facility)
            .map_or(16, |(_, c)| *c)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self.to {
            AccessLogTarget::File => ensure!(
                self.path.is_some(),
                "to = \"file\" needs a path, e.g. path = \"/var/log/xlb/access.log\""
            ),
            AccessLogTarget::Syslog => {
                ensure!(
                    FACILITIES.iter().any(|(n, _)| *n == self.facility),
                    "'{}' is not a syslog facility: expected user, daemon or local0 to local7",
                    shown(&self.facility)
                );
                if let Some(a) = self.syslog.strip_prefix("udp://") {
                    ensure!(
                        a.parse::<SocketAddr>().is_ok(),
                        "syslog = '{}': expected udp://ADDR:PORT, e.g. udp://192.0.2.5:514, or a socket path",
                        shown(&self.syslog)
                    );
                }
            }
            AccessLogTarget::Stdout | AccessLogTarget::Otlp => {}
        }
        ensure!(self.keep >= 1, "keep must be at least 1");
        ensure!(
            self.max_size.is_none_or(|m| m >= 4096),
            "max_size must be at least 4KiB"
        );
        Ok(())
    }
}

/// Whether the access log file can be written there: its directory exists and is
/// writable, and the file, if it exists, is a regular file xlb may write. Nothing is
/// created.
pub(crate) fn writable(path: &Path) -> Result<()> {
    let ok = |p: &Path, mode| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok();
        // SAFETY: access reads a valid C string.
        c.is_some_and(|c| unsafe { libc::access(c.as_ptr(), mode) } == 0)
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => {
            bail!("{} is not a regular file", path.display())
        }
        Ok(_) if !ok(path, libc::W_OK) => bail!("{} is not writable", path.display()),
        Ok(_) => Ok(()),
        Err(_) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            ensure!(
                dir.is_dir() && ok(dir, libc::W_OK | libc::X_OK),
                "{}: its directory {} does not exist or is not writable",
                path.display(),
                dir.display()
            );
            Ok(())
        }
    }
}

/// A size in bytes: `"100MiB"`, `"64KiB"`, `"1GiB"` or a number of bytes.
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    let text = match Option::<Size>::deserialize(d)? {
        None => return Ok(None),
        Some(Size::Bytes(n)) => return Ok(Some(n)),
        Some(Size::Text(t)) => t,
    };
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(digits);
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => 0,
    };
    match n.parse::<u64>().ok().and_then(|n| n.checked_mul(scale)) {
        Some(b) if scale > 0 => Ok(Some(b)),
        _ => Err(D::Error::custom(format!(
            "'{}' is not a size: expected a whole number with B, KiB, MiB or GiB, e.g. \"100MiB\"",
            shown(&text)
        ))),
    }
}
