//! SYN-flood protection in the state file: the `syn=` and `syn_threshold=` options of
//! a `service` line, written only when they are not the protocol's default.

use std::fmt::Write as _;

use crate::model::{
    services::{ServiceConf, ServiceError, Services, Vip},
    synflood::{SynMode, SynProtection, parse_threshold},
};

/// Appends a service's protection to its line (nothing for the default).
pub fn write_options(head: &mut String, svc: &ServiceConf) {
    let default = SynProtection::default_for(svc.vip.proto);
    if svc.syn.mode != default.mode {
        let _ = write!(head, " syn={}", svc.syn.mode);
    }
    if svc.syn.threshold != default.threshold {
        let _ = write!(head, " syn_threshold={}", svc.syn.threshold);
    }
}

/// A `service` line's protection options, read one at a time.
#[derive(Default)]
pub struct Options {
    mode: Option<SynMode>,
    threshold: Option<u32>,
}

impl Options {
    /// Takes `key=value` if it is one of these options (Ok(false): it is not).
    pub fn read(&mut self, key: &str, value: &str) -> Result<bool, ServiceError> {
        match key {
            "syn" => self.mode = Some(value.parse().map_err(ServiceError::Invalid)?),
            "syn_threshold" => {
                self.threshold = Some(parse_threshold(value).map_err(ServiceError::Invalid)?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Sets them on the service just read (checked as the CLI's are).
    pub fn apply(self, services: &mut Services, vip: &Vip) -> Result<(), ServiceError> {
        if self.mode.is_none() && self.threshold.is_none() {
            return Ok(());
        }
        services.set_syn(vip, self.mode, self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::services::Mode;

    /// The options as written, read back onto a fresh service.
    fn round_trip(vip: &str, mode: Mode, set: (Option<SynMode>, Option<u32>)) -> String {
        let vip: Vip = vip.parse().unwrap();
        let mut s = Services::default();
        s.add_service(vip, mode, false, true).unwrap();
        s.set_syn(&vip, set.0, set.1).unwrap();
        let mut head = String::new();
        write_options(&mut head, &s.by_vip[&vip]);
        let mut back = Services::default();
        back.add_service(vip, mode, false, true).unwrap();
        let mut o = Options::default();
        for w in head.split_whitespace() {
            let (k, v) = w.split_once('=').unwrap();
            assert!(o.read(k, v).unwrap());
        }
        o.apply(&mut back, &vip).unwrap();
        assert_eq!(back.by_vip[&vip].syn, s.by_vip[&vip].syn);
        head
    }

    #[test]
    fn options_round_trip_and_bad_ones_are_refused() {
        assert_eq!(
            round_trip(
                "192.0.2.10:80/tcp",
                Mode::Nat,
                (Some(SynMode::Always), Some(300))
            ),
            " syn=always syn_threshold=300"
        );
        assert_eq!(
            round_trip("192.0.2.11:80/tcp", Mode::Dsr, (Some(SynMode::Auto), None)),
            ""
        );
        let mut o = Options::default();
        assert!(!o.read("snat", "192.0.2.1").unwrap());
        assert!(o.read("syn", "sometimes").is_err());
        assert!(o.read("syn_threshold", "0").is_err());
        let mut s = Services::default();
        let udp: Vip = "192.0.2.20:53/udp".parse().unwrap();
        s.add_service(udp, Mode::Nat, false, true).unwrap();
        let mut o = Options::default();
        o.read("syn", "auto").unwrap();
        assert!(o.apply(&mut s, &udp).is_err());
    }
}
