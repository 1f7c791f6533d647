//! Per-service and per-backend traffic and the flow table, for `xlb stats` and `xlb
//! top`: the same numbers as the metrics, with each backend's health as last checked.

use anyhow::Result;
use lb_common::DEFAULT_FLOWS;

use super::{Checked, global};
use crate::{
    api::reply::{BackendTraffic, Flows, ServiceTraffic, Traffic},
    kernel::{Datapath, flows::count_flows},
};

/// The traffic of every service of `dp`.
pub fn traffic(dp: &Datapath) -> Result<Traffic> {
    let services = dp.lb.traffic(dp.ncpus())?;
    let flows = count_flows(dp)?;
    let m = global();
    let services = services
        .iter()
        .map(|s| ServiceTraffic {
            service: s.vip.to_string(),
            mode: s.mode,
            packets: s.total.packets,
            bytes: s.total.bytes,
            new_flows: s.total.new_flows,
            backends: s
                .backends
                .iter()
                .map(|b| BackendTraffic {
                    backend: b.backend.to_string(),
                    packets: b.stats.packets,
                    bytes: b.stats.bytes,
                    new_flows: b.stats.new_flows,
                    health: m
                        .health_of(&Checked::Service(s.vip, b.backend))
                        .name()
                        .to_string(),
                })
                .collect(),
        })
        .collect();
    Ok(Traffic {
        services,
        flows: Flows {
            forward: flows.forward,
            reply: flows.reply,
            capacity: DEFAULT_FLOWS as u64,
        },
    })
}
