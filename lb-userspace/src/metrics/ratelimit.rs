//! The rate limits' families: what each limit in force passed and dropped (labelled by
//! its slot, at most MAX_LIMITS, and its service). Read with the rest of a scrape
//! (`Snapshot`).

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::Labels;
use crate::api::reply::LimitView;

/// The `service` label of a limit of all traffic.
pub const ALL_TRAFFIC: &str = "all";

pub(super) fn register(limits: &[LimitView], reg: &mut Registry) {
    let packets: Family<Labels, Counter> = Family::default();
    let sketch: Family<Labels, Counter> = Family::default();
    let promoted: Family<Labels, Counter> = Family::default();
    let info: Family<Labels, Gauge> = Family::default();
    for l in limits {
        let id = vec![
            ("limit", l.id.to_string()),
            (
                "service",
                l.service.clone().unwrap_or_else(|| ALL_TRAFFIC.into()),
            ),
        ];
        for (outcome, n) in [
            ("passed", l.passed),
            ("dropped", l.dropped),
            ("exempted", l.exempted),
        ] {
            let mut lb = id.clone();
            lb.push(("outcome", outcome.to_string()));
            packets.get_or_create(&lb).inc_by(n);
        }
        sketch.get_or_create(&id).inc_by(l.sketch_dropped);
        promoted.get_or_create(&id).inc_by(l.promoted);
        let mut lb = id.clone();
        lb.extend([
            ("rate", l.rate.clone()),
            ("burst", l.burst.to_string()),
            ("per", l.per.clone()),
            ("prefix", l.prefix.clone().unwrap_or_else(|| "any".into())),
            ("new_flows", l.new_flows.to_string()),
        ]);
        info.get_or_create(&lb).set(1);
    }
    reg.register(
        "rate_limit_packets",
        "Packets a rate limit covered, by limit (its id in `xlb fw limit list`), service (\"all\": all traffic) and outcome: passed, dropped (over the limit; reason rate_limited), exempted (over it but a backend's or health check's answer, or always allowed)",
        packets,
    );
    reg.register(
        "rate_limit_sketch_drops",
        "Of a limit's drops, those decided by its count-min sketch (the source had no exact bucket yet)",
        sketch,
    );
    reg.register(
        "rate_limit_promotions",
        "Sources a limit gave an exact bucket (refused by the sketch, or sampled)",
        promoted,
    );
    reg.register(
        "rate_limit_info",
        "1 for each rate limit in force, with its settings",
        info,
    );
}
