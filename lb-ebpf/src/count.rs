//! Stage 3: count. Per-CPU, so the fast path never shares a cache line.

use lb_common::{BackendStats, Counter, Reason, Verdict, counter_index};

use crate::maps::{XLB_BACKEND_STATS, XLB_COUNTERS, XLB_RULE_HITS};

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
