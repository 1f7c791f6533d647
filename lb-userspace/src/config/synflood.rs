//! A `[[service]]`'s SYN-flood protection: `syn_protection = "auto" | "always" |
//! "off"` and `syn_threshold` (new flows per second), for layer-4 and https services
//! alike; refused on a UDP service.

use super::{raw::RawService, report::Report};
use crate::model::{
    rules::Proto,
    services::Vip,
    synflood::{MAX_SYN_THRESHOLD, MIN_SYN_THRESHOLD, SynMode, SynProtection, zero_threshold},
};

/// The service's protection (the protocol's default for what is not given); None
/// after reporting an error.
pub(crate) fn protection(r: &mut Report, s: &RawService, vip: &Vip) -> Option<SynProtection> {
    let mut p = SynProtection::default_for(vip.proto);
    let mut ok = true;
    if let Some(m) = &s.syn_protection {
        match m.get_ref().parse::<SynMode>() {
            Ok(mode) => p.mode = mode,
            Err(_) => {
                r.at(
                    m.span(),
                    "service.syn_protection",
                    format!(
                        "'{}' is not a SYN protection mode: expected \"auto\", \"always\" or \"off\"",
                        crate::model::text::shown(m.get_ref())
                    ),
                );
                ok = false;
            }
        }
    }
    if let Some(t) = &s.syn_threshold {
        let n = t.get_ref().0;
        if n == 0 {
            r.at(t.span(), "service.syn_threshold", zero_threshold());
            ok = false;
        } else if !(MIN_SYN_THRESHOLD as i64..=MAX_SYN_THRESHOLD as i64).contains(&n) {
            r.at(
                t.span(),
                "service.syn_threshold",
                format!(
                    "SYN threshold {n} is out of range: expected {MIN_SYN_THRESHOLD} to {MAX_SYN_THRESHOLD} new flows per second"
                ),
            );
            ok = false;
        } else {
            p.threshold = n as u32;
        }
    }
    if vip.proto == Proto::Udp {
        let given = s
            .syn_threshold
            .as_ref()
            .map(|t| (t.span(), "service.syn_threshold"))
            .or_else(|| {
                s.syn_protection
                    .as_ref()
                    .filter(|_| p.mode != SynMode::Off)
                    .map(|m| (m.span(), "service.syn_protection"))
            });
        if let Some((span, field)) = given {
            r.at(
                span,
                field,
                format!("SYN protection is for TCP services; {vip} is a udp service: leave it out"),
            );
            ok = false;
        }
    }
    ok.then_some(p)
}
