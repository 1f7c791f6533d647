//! The interfaces xlb attaches to, and how.

use serde::{Deserialize, Serialize};

use super::text::shown;

/// How to attach the XDP program to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// The driver's own XDP hook (veth, most 10G+ NICs).
    Native,
    /// The generic (skb) hook: works everywhere, slower.
    Generic,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }

    pub fn from_str_opt(s: &str) -> Option<Self> {
        [AttachMode::Native, AttachMode::Generic]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// An interface xlb attaches to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mode: AttachMode,
}

/// Checks an interface name as the kernel takes it (IFNAMSIZ, no '/', ':' or spaces).
pub fn valid_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "'{}' is not an interface name: expected 1 to 15 characters",
            shown(name)
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "'{}' is not an interface name: no '/', ':', spaces, '.' or '..'",
            shown(name)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_name_is_shown_with_its_hidden_characters() {
        assert!(valid_ifname("eth0").is_ok());
        assert_eq!(
            valid_ifname("eth\n0").unwrap_err(),
            "'eth\\n0' is not an interface name: no '/', ':', spaces, '.' or '..'"
        );
        assert_eq!(
            valid_ifname("\u{feff}eth0-and-more-x").unwrap_err(),
            "'\\u{feff}eth0-and-more-x' is not an interface name: expected 1 to 15 characters"
        );
    }
}
