//! The flow table as statistics and flow records see it: its entries counted by
//! direction, or read whole with what names them.

use std::{collections::HashMap, net::IpAddr};

use anyhow::{Context, Result};
use lb_common::{FLOW_REPLY, Flow, FlowKey};

use super::{datapath::Datapath, stats::walk};

/// A service as flow records need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// fullnat: the source address towards the backends.
    pub snat: Option<IpAddr>,
    pub tcp_idle_secs: u32,
    pub udp_idle_secs: u32,
}

/// A backend slot as flow records need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendName {
    pub addr: IpAddr,
    /// 0: the port the client used.
    pub port: u16,
    pub generation: u32,
}

/// By service id and by backend id.
#[derive(Clone, Debug, Default)]
pub struct FlowNames {
    pub services: HashMap<u32, ServiceName>,
    pub backends: HashMap<u32, BackendName>,
}

/// Every entry of the flow table (one batch walk).
pub fn read_flows(dp: &Datapath) -> Result<Vec<(FlowKey, Flow)>> {
    let fd = dp.flows_fd().context("the flow table map is missing")?;
    let mut out = Vec::new();
    walk(
        fd,
        std::mem::size_of::<FlowKey>(),
        std::mem::size_of::<Flow>(),
        usize::MAX,
        |k, v| {
            out.push((
                bytemuck::pod_read_unaligned(k),
                bytemuck::pod_read_unaligned(v),
            ))
        },
    )
    .context("reading the flow table")?;
    Ok(out)
}

/// The flow table's entries by direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCount {
    pub forward: u64,
    pub reply: u64,
}

/// Entries of the flow table, by direction (one batch walk over the table).
pub fn count_flows(dp: &Datapath) -> Result<FlowCount> {
    let fd = dp.flows_fd().context("the flow table map is missing")?;
    let mut c = FlowCount::default();
    walk(
        fd,
        std::mem::size_of::<FlowKey>(),
        std::mem::size_of::<Flow>(),
        usize::MAX,
        |_, v| {
            let f: Flow = bytemuck::pod_read_unaligned(v);
            if f.direction == FLOW_REPLY {
                c.reply += 1;
            } else {
                c.forward += 1;
            }
        },
    )
    .context("reading the flow table")?;
    Ok(c)
}
