//! Draining: a backend removed from a service (by a reload or with the CLI) takes no new
//! flows at once but keeps its established ones for the drain timeout, then leaves.
//!
//! The kernel sees a draining backend as up with weight 0: it keeps its flow-table
//! entries and has no slot in the service's Maglev table. The desired state does not
//! hold it (`xlb vip list` no longer shows it; `xlb status` shows it as draining).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::services::{BackendAddr, ServiceConf, Services, Vip};

/// The default drain timeout.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// The longest drain timeout accepted (a day).
pub const MAX_DRAIN: Duration = Duration::from_secs(86_400);

/// Draining backends by service, with the time each leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Draining {
    pub by_vip: BTreeMap<Vip, BTreeMap<BackendAddr, Instant>>,
}

fn settings(c: &ServiceConf) -> ServiceConf {
    // A health check changes no flow's path: it is not a setting here.
    ServiceConf {
        backends: BTreeMap::new(),
        check: None,
        // Nor is SYN-flood protection (established flows keep their path).
        syn: super::syn_mode::SynProtection::default_for(c.vip.proto),
        ..c.clone()
    }
}

impl Draining {
    /// The draining set after the desired services change from `old` to `next` at
    /// `now`: backends that left a service that stays (with the same settings) drain
    /// until `now + timeout`; backends that are back, or whose service left or changed,
    /// stop draining. A zero timeout drains nothing new.
    pub fn after_change(
        &self,
        old: &Services,
        next: &Services,
        now: Instant,
        timeout: Duration,
    ) -> Draining {
        let same = |vip: &Vip| match (old.by_vip.get(vip), next.by_vip.get(vip)) {
            (Some(o), Some(n)) => settings(o) == settings(n),
            _ => false,
        };
        let mut d = self.clone();
        d.by_vip.retain(|vip, bs| {
            let Some(n) = next.by_vip.get(vip) else {
                return false;
            };
            bs.retain(|b, _| !n.backends.contains_key(b));
            same(vip) && !bs.is_empty()
        });
        if timeout.is_zero() {
            return d;
        }
        for (vip, o) in &old.by_vip {
            if !same(vip) {
                continue;
            }
            let n = &next.by_vip[vip];
            for b in o.backends.keys() {
                if !n.backends.contains_key(b) {
                    d.by_vip.entry(*vip).or_default().insert(*b, now + timeout);
                }
            }
        }
        d
    }

    /// What the kernel gets: `desired` with the draining backends at weight 0.
    pub fn view(&self, desired: &Services) -> Services {
        let mut v = desired.clone();
        for (vip, bs) in &self.by_vip {
            if let Some(s) = v.by_vip.get_mut(vip) {
                for b in bs.keys() {
                    s.backends.entry(*b).or_insert(0);
                }
            }
        }
        v
    }

    /// Without the backends whose time is up at `now`; None if none is.
    pub fn expired(&self, now: Instant) -> Option<Draining> {
        let any = self.by_vip.values().flatten().any(|(_, t)| *t <= now);
        any.then(|| {
            let mut d = self.clone();
            d.by_vip.retain(|_, bs| {
                bs.retain(|_, t| *t > now);
                !bs.is_empty()
            });
            d
        })
    }

    /// Whether `b` of `vip` is draining, and for how long still.
    pub fn left(&self, vip: &Vip, b: &BackendAddr, now: Instant) -> Option<Duration> {
        self.by_vip
            .get(vip)?
            .get(b)
            .map(|t| t.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::services::Mode;

    fn services(backends: &[&str]) -> Services {
        let mut s = Services::default();
        let vip: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        s.add_service(vip, Mode::Nat, false, true).unwrap();
        for b in backends {
            s.add_backend(&vip, b.parse().unwrap(), 1).unwrap();
        }
        s
    }

    #[test]
    fn removed_backends_drain_at_weight_zero_then_leave() {
        let t0 = Instant::now();
        let old = services(&["203.0.113.11:80", "203.0.113.12:80"]);
        let next = services(&["203.0.113.11:80"]);
        let d = Draining::default().after_change(&old, &next, t0, DEFAULT_DRAIN);
        let vip: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        let gone: BackendAddr = "203.0.113.12:80".parse().unwrap();
        assert_eq!(d.left(&vip, &gone, t0), Some(DEFAULT_DRAIN));
        let view = d.view(&next);
        assert_eq!(view.by_vip[&vip].backends[&gone], 0);
        assert_eq!(view.by_vip[&vip].backends.len(), 2);
        assert_eq!(d.expired(t0), None);
        let later = d.expired(t0 + DEFAULT_DRAIN).unwrap();
        assert_eq!(later.view(&next), next);
        // Back in the pool: no longer draining.
        assert_eq!(
            d.after_change(&next, &old, t0, DEFAULT_DRAIN),
            Draining::default()
        );
        // The service gone: nothing drains.
        assert_eq!(
            d.after_change(&next, &Services::default(), t0, DEFAULT_DRAIN),
            Draining::default()
        );
        // A zero timeout drains nothing.
        assert_eq!(
            Draining::default().after_change(&old, &next, t0, Duration::ZERO),
            Draining::default()
        );
    }
}
