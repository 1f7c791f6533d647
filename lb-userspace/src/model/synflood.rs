//! SYN-flood protection as an operator sets it per service: a mode (`auto`: on above
//! a new-flow rate, `always`, `off`) and the rate (the values in `syn_mode`), validated
//! the same way for the CLI, the configuration file and the state file. What the
//! kernel does with it: docs/synflood.md.

use super::{
    rules::Proto,
    services::{ServiceError, Services, Vip},
};

pub use super::syn_mode::*;

/// Checks `p` for service `vip`.
pub fn check(vip: &Vip, p: &SynProtection) -> Result<(), ServiceError> {
    if vip.proto == Proto::Udp && p.mode != SynMode::Off {
        return Err(ServiceError::Invalid(format!(
            "SYN protection is for TCP services; {vip} is a udp service: leave it off"
        )));
    }
    if !(MIN_SYN_THRESHOLD..=MAX_SYN_THRESHOLD).contains(&p.threshold) {
        return Err(ServiceError::Invalid(if p.threshold == 0 {
            zero_threshold()
        } else {
            format!(
                "SYN threshold {} is out of range: expected {MIN_SYN_THRESHOLD} to {MAX_SYN_THRESHOLD}",
                p.threshold
            )
        }));
    }
    Ok(())
}

impl Services {
    /// Sets a service's SYN-flood protection (None keeps a part): nothing changes if
    /// the result cannot work (protection on a UDP service, a threshold of 0).
    pub fn set_syn(
        &mut self,
        vip: &Vip,
        mode: Option<SynMode>,
        threshold: Option<u32>,
    ) -> Result<(), ServiceError> {
        let svc = self
            .by_vip
            .get_mut(vip)
            .ok_or_else(|| ServiceError::UnknownService(vip.to_string()))?;
        if vip.proto == Proto::Udp && threshold.is_some() {
            return Err(ServiceError::Invalid(format!(
                "--syn-threshold is for TCP services; {vip} is a udp service"
            )));
        }
        let next = SynProtection {
            mode: mode.unwrap_or(svc.syn.mode),
            threshold: threshold.unwrap_or(svc.syn.threshold),
        };
        check(vip, &next)?;
        svc.syn = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::services::Mode;

    #[test]
    fn modes_and_thresholds_parse_or_say_why_not() {
        assert_eq!("always".parse::<SynMode>(), Ok(SynMode::Always));
        let e = "sometimes".parse::<SynMode>().unwrap_err();
        assert!(
            e.contains("'sometimes' is not a SYN protection mode"),
            "{e}"
        );
        assert_eq!(parse_threshold("2000"), Ok(2000));
        assert!(parse_threshold("0").unwrap_err().contains("threshold of 0"));
        assert!(
            parse_threshold("+5")
                .unwrap_err()
                .contains("not a SYN threshold")
        );
        assert!(
            parse_threshold("100000001")
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn udp_services_have_none_and_bad_settings_change_nothing() {
        let mut s = Services::default();
        let tcp: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        let udp: Vip = "192.0.2.10:53/udp".parse().unwrap();
        s.add_service(tcp, Mode::Nat, false, true).unwrap();
        s.add_service(udp, Mode::Nat, false, true).unwrap();
        assert_eq!(s.by_vip[&tcp].syn, SynProtection::default_for(Proto::Tcp));
        assert_eq!(s.by_vip[&udp].syn.mode, SynMode::Off);
        let e = s.set_syn(&udp, Some(SynMode::Always), None).unwrap_err();
        assert!(e.to_string().contains("for TCP services"), "{e}");
        assert_eq!(s.by_vip[&udp].syn.mode, SynMode::Off);
        s.set_syn(&tcp, Some(SynMode::Always), Some(300)).unwrap();
        assert!(s.set_syn(&tcp, None, Some(0)).is_err());
        assert_eq!(
            s.by_vip[&tcp].syn,
            SynProtection {
                mode: SynMode::Always,
                threshold: 300
            }
        );
    }
}
