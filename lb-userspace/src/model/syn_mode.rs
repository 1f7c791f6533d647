//! SYN-flood protection's settings of one service: a mode (`auto`: on above a new-flow
//! rate, `always`, `off`) and the rate, as values (checked against a service in
//! `synflood`, which `services` cannot import: it imports this).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use super::{
    rules::Proto,
    text::{self, NumberError, shown},
};

pub use lb_common::DEFAULT_SYN_THRESHOLD;

/// The thresholds accepted, in new flows per second.
pub const MIN_SYN_THRESHOLD: u32 = 1;
pub const MAX_SYN_THRESHOLD: u32 = 100_000_000;

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SynMode {
    /// On while the service's new flows per second are above its threshold (and ten
    /// seconds after).
    #[default]
    Auto,
    /// On for every new connection.
    Always,
    /// Off: SYNs go to the backends as they come.
    Off,
}

impl fmt::Display for SynMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SynMode::Auto => "auto",
            SynMode::Always => "always",
            SynMode::Off => "off",
        })
    }
}

impl FromStr for SynMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SynMode::Auto),
            "always" => Ok(SynMode::Always),
            "off" => Ok(SynMode::Off),
            _ => Err(format!(
                "'{}' is not a SYN protection mode: use auto, always or off",
                shown(s)
            )),
        }
    }
}

/// A service's protection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SynProtection {
    pub mode: SynMode,
    /// `auto`: new flows per second (over all CPUs) above which protection turns on.
    pub threshold: u32,
}

impl SynProtection {
    /// What a new service gets: `auto` at the default threshold for TCP, off for UDP
    /// (it has no handshake to protect).
    pub fn default_for(proto: Proto) -> Self {
        SynProtection {
            mode: match proto {
                Proto::Tcp => SynMode::Auto,
                Proto::Udp => SynMode::Off,
            },
            threshold: DEFAULT_SYN_THRESHOLD,
        }
    }

    pub fn is_default_for(&self, proto: Proto) -> bool {
        *self == Self::default_for(proto)
    }
}

/// A threshold as written (the CLI's `--syn-threshold`, the state file): digits,
/// MIN_SYN_THRESHOLD to MAX_SYN_THRESHOLD.
pub fn parse_threshold(s: &str) -> Result<u32, String> {
    match text::number(s, MIN_SYN_THRESHOLD as u64..=MAX_SYN_THRESHOLD as u64) {
        Ok(n) => Ok(n as u32),
        Err(NumberError::OutOfRange) if s.bytes().all(|b| b == b'0') => Err(zero_threshold()),
        Err(_) => text::number_in(
            s,
            "SYN threshold",
            MIN_SYN_THRESHOLD as u64..=MAX_SYN_THRESHOLD as u64,
        )
        .map(|n| n as u32),
    }
}

/// Why a threshold of 0 is refused.
pub fn zero_threshold() -> String {
    format!(
        "a SYN threshold of 0 new flows per second cannot work: auto would never be off; use {MIN_SYN_THRESHOLD} to {MAX_SYN_THRESHOLD}, or syn protection always"
    )
}
