//! A health check as the daemon runs it: what is probed, how often, and when a backend
//! counts as up or down. The `[service.health]` table, `xlb vip check` and the state
//! file all end up here (see `config::health` for how it is read and validated).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connection opens.
    Tcp,
    /// An HTTP GET answers with the expected status.
    Http,
    /// The same over TLS.
    Https,
    /// A TLS handshake completes.
    Tls,
}

impl CheckKind {
    pub const ALL: [CheckKind; 4] = [
        CheckKind::Tcp,
        CheckKind::Http,
        CheckKind::Https,
        CheckKind::Tls,
    ];

    /// The name a `[service.health]` table, the CLI and the state file give it (and
    /// its JSON, through serde's lowercase names).
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Https => "https",
            CheckKind::Tls => "tls",
        }
    }

    /// Whether the check sends an HTTP request (and so has a path and a status).
    pub fn is_http(self) -> bool {
        matches!(self, CheckKind::Http | CheckKind::Https)
    }
}

/// A service's health check (HAProxy semantics: a backend is up after `rise`
/// consecutive successes, down after `fall` consecutive failures).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// In milliseconds on the wire (the JSON names say so).
    #[serde(rename = "interval_ms", with = "millis")]
    pub interval: Duration,
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// The port checked (None: the backend's own).
    pub port: Option<u16>,
    /// HTTP(S) only.
    pub path: String,
    pub expect_status: u16,
}

/// Durations as whole milliseconds in JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const MAX_RISE_FALL: i64 = 100;
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
