//! Stage 3: count. Per-CPU, so the fast path never shares a cache line.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::programs::XdpContext;
use lb_common::{BackendStats, Counter, Flow, Reason, Verdict, counter_index};

use crate::{
    bounds::frame_len,
    maps::{XLB_BACKEND_STATS, XLB_CONFIG, XLB_COUNTERS, XLB_RULE_HITS},
    parse::Packet,
};

#[inline(always)]
pub fn packet(reason: Reason, verdict: Verdict, bytes: usize, rule: u32) {
    if let Some(c) = XLB_COUNTERS.get_ptr_mut(counter_index(reason, verdict)) {
        let c: &mut Counter = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes as u64;
    }
    rule_hit(rule);
}

/// One more packet for a rule (0: none).
#[inline(always)]
pub fn rule_hit(rule: u32) {
    if rule != 0
        && let Some(hits) = XLB_RULE_HITS.get_ptr_mut(rule)
    {
        unsafe { *hits += 1 };
    }
}

/// One more packet (and maybe a new flow) sent to a backend by the forward path.
#[inline(always)]
pub fn backend(id: u32, bytes: usize, new_flow: bool) {
    if let Some(s) = XLB_BACKEND_STATS.get_ptr_mut(id) {
        let s: &mut BackendStats = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes as u64;
        if new_flow {
            s.new_flows += 1;
        }
    }
}

/// A packet's IP bytes (what flow records count: the frame less its link header).
#[inline(always)]
pub fn ip_len(ctx: &XdpContext, pkt: &Packet) -> u64 {
    frame_len(ctx).saturating_sub(pkt.l3_off) as u64
}

/// Flow records, when they are on (`Config::flow_records`): one more packet of `len`
/// bytes on a flow-table entry's forward or reply counters. Atomic adds, not per-CPU
/// counters: an entry is shared, and the daemon reads one number per entry.
#[inline(always)]
pub fn flow(f: *mut Flow, len: u64, reply: bool) {
    if XLB_CONFIG.get(0).is_none_or(|c| c.flow_records == 0) {
        return;
    }
    unsafe {
        let (p, b) = if reply {
            (&raw mut (*f).rev_packets, &raw mut (*f).rev_bytes)
        } else {
            (&raw mut (*f).packets, &raw mut (*f).bytes)
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(b, len);
    }
}
