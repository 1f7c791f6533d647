//! What the kernel gets for the desired services: each backend's weight, or 0 when it is
//! down (health checks), drained by the operator (`xlb backend drain`), or a backup while
//! one of its service's primaries is live; backends removed from a service and still
//! draining come along at 0. Weight 0 keeps a backend's established flows and gives it no
//! slot in the Maglev table.

use std::collections::BTreeSet;

use super::{
    drain::Draining,
    services::{BackendAddr, ServiceConf, Services, Vip},
};

pub use super::services::AllDown;

/// Whether service `s` is in panic: `AllDown::Panic`, and every backend not drained
/// (at least one) is down.
pub fn in_panic(
    vip: &Vip,
    s: &ServiceConf,
    drained: &Flags,
    down: &dyn Fn(&Vip, &BackendAddr) -> bool,
) -> bool {
    let mut candidates = s
        .backends
        .keys()
        .filter(|b| !drained.contains(&(*vip, **b)))
        .peekable();
    s.all_down == AllDown::Panic && candidates.peek().is_some() && candidates.all(|b| down(vip, b))
}

/// The services in panic now.
pub fn panicking(
    services: &Services,
    drained: &Flags,
    down: &dyn Fn(&Vip, &BackendAddr) -> bool,
) -> BTreeSet<Vip> {
    services
        .by_vip
        .iter()
        .filter(|(vip, s)| in_panic(vip, s, drained, down))
        .map(|(vip, _)| *vip)
        .collect()
}

/// A set of (service, backend): the backups, the drained.
pub type Flags = BTreeSet<(Vip, BackendAddr)>;

/// Keeps only the flags of backends that exist in `services`.
pub fn retain(flags: &mut Flags, services: &Services) {
    flags.retain(|(vip, b)| {
        services
            .by_vip
            .get(vip)
            .is_some_and(|s| s.backends.contains_key(b))
    });
}

/// The services as the kernel sees them.
pub fn effective(
    services: &Services,
    backups: &Flags,
    drained: &Flags,
    down: &dyn Fn(&Vip, &BackendAddr) -> bool,
    draining: &Draining,
) -> Services {
    let mut v = services.clone();
    for (vip, s) in v.by_vip.iter_mut() {
        // Panic: every backend looks down, so health is not believed.
        let panic = in_panic(vip, s, drained, down);
        let live = |b: &BackendAddr| !drained.contains(&(*vip, *b)) && (panic || !down(vip, b));
        let primary_live = s
            .backends
            .keys()
            .any(|b| !backups.contains(&(*vip, *b)) && live(b));
        for (b, w) in s.backends.iter_mut() {
            if !live(b) || (backups.contains(&(*vip, *b)) && primary_live) {
                *w = 0;
            }
        }
    }
    draining.view(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::services::Mode;

    #[test]
    fn backups_serve_only_while_every_primary_is_out() {
        let vip: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        let b = |i: u8| -> BackendAddr { format!("203.0.113.{i}:80").parse().unwrap() };
        let mut s = Services::default();
        s.add_service(vip, Mode::Nat, false, true).unwrap();
        for (i, w) in [(11, 2), (12, 1), (13, 3)] {
            s.add_backend(&vip, b(i), w).unwrap();
        }
        let backups: Flags = [(vip, b(13))].into();
        let none = Flags::new();
        let weights = |drained: &Flags, down: &dyn Fn(&Vip, &BackendAddr) -> bool| {
            let v = effective(&s, &backups, drained, down, &Draining::default());
            v.by_vip[&vip]
                .backends
                .values()
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(weights(&none, &|_, _| false), vec![2, 1, 0]);
        // One primary down, one drained: the backup takes over at its weight.
        let drained: Flags = [(vip, b(12))].into();
        assert_eq!(weights(&drained, &|_, x| *x == b(11)), vec![0, 0, 3]);
        // The backup down too: every backend not drained is down, so health is not
        // believed (panic): the primary takes new flows again.
        assert_eq!(weights(&drained, &|_, x| *x != b(12)), vec![2, 0, 0]);
        assert_eq!(panicking(&s, &drained, &|_, x| *x != b(12)), [vip].into());
        // Every backend down, none drained: panic, every primary by its weight.
        assert_eq!(weights(&none, &|_, _| true), vec![2, 1, 0]);
        assert!(panicking(&s, &none, &|_, x| *x != b(13)).is_empty());
        // A primary back: the backup stands by again.
        assert_eq!(weights(&drained, &|_, _| false), vec![2, 0, 0]);
        // Strict: nothing when every backend is down.
        let mut s = s.clone();
        s.by_vip.get_mut(&vip).unwrap().all_down = AllDown::Strict;
        let v = effective(&s, &backups, &none, &|_, _| true, &Draining::default());
        assert_eq!(
            v.by_vip[&vip]
                .backends
                .values()
                .copied()
                .collect::<Vec<_>>(),
            vec![0, 0, 0]
        );
        assert!(panicking(&s, &none, &|_, _| true).is_empty());
        assert!(
            "sometimes"
                .parse::<AllDown>()
                .unwrap_err()
                .contains("'sometimes' is not")
        );
    }
}
