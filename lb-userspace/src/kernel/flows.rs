//! The flow table as statistics see it: its entries counted by direction.

use anyhow::{Context, Result};
use lb_common::{FLOW_REPLY, Flow, FlowKey};

use super::{datapath::Datapath, stats::walk};

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
