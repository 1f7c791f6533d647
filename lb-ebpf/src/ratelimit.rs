//! Rate limits (`xlb fw limit`): token buckets on sources, checked after the firewall
//! passed a packet (limits of all traffic) and in the balancer (a service's limits, and
//! UDP's new flows, which only the balancer can tell: its flow table, scratch.key). The structures and why they
//! are what they are: lb_common::ratelimit. A packet over a limit is dropped under
//! Reason::RateLimited, unless it is always allowed (`fw except`) or comes from an
//! exempt endpoint (a backend's answer): those pass, counted as exempted.
//!
//! The maps live here, not in maps.rs: no other stage reads them.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::*;

use crate::{
    bounds::load_u16,
    filter::{self, Decision},
    maps::{XLB_CONFIG, XLB_FLOWS, XLB_SERVICES, scratch},
    parse::{Addr, Packet},
};

#[map]
static XLB_RL_SETS: Array<LimitSet> = Array::with_max_entries(2, 0);

#[map]
static XLB_RL_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Shared by every CPU: a source's packets may come in on any queue. Races between
/// CPUs lose an update at worst (a token more or less), never a bucket's key.
#[map]
static XLB_RL_BUCKETS: Array<RlBucketSet> = Array::with_max_entries(RL_SETS, 0);

#[map]
static XLB_RL_SKETCH: Array<u64> = Array::with_max_entries(RL_SKETCH_CELLS, BPF_F_MMAPABLE);

#[map]
static XLB_RL_STATE: Array<u64> = Array::with_max_entries(RL_STATE_ENTRIES, 0);

#[map]
static XLB_RL_STATS: PerCpuArray<RlStats> = PerCpuArray::with_max_entries(MAX_LIMITS, 0);

/// The firewall's decision while its packet's limits are checked (per CPU; see
/// `after_firewall`). Not state: no pin.
#[map]
static XLB_RL_STASH: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);

#[map]
static XLB_RL_EXEMPT: HashMap<EndpointKey, u8> =
    HashMap::with_max_entries(MAX_RL_EXEMPT, BPF_F_NO_PREALLOC);

/// What one limit's check found.
const PASS: u32 = 0;
const OVER: u32 = 1;
/// Over, by the sketch's estimate (the source had no exact bucket).
const OVER_SKETCH: u32 = 2;

const TCP_SYN: u16 = 0x02;
const TCP_ACK: u16 = 0x10;

/// Whether any limit is set (two array reads).
#[inline(always)]
pub fn active() -> bool {
    XLB_RL_ACTIVE
        .get(0)
        .and_then(|a| XLB_RL_SETS.get(*a & 1))
        .is_some_and(|s| s.count != 0)
}

/// The firewall's decision `d` (a pass) after the limits of all traffic: a drop under
/// Reason::RateLimited, or `d`. The decision waits in per-CPU memory over the check,
/// so the verifier walks the check once, not once per reason and rule it could hold.
#[inline(always)]
pub fn after_firewall(ctx: &XdpContext, d: Decision) -> Decision {
    let Some(stash) = XLB_RL_STASH.get_ptr_mut(0) else {
        return d;
    };
    unsafe { core::ptr::write_volatile(stash, [d.reason as u32, d.rule]) };
    let limited = limited(ctx, PHASE_FIREWALL, 0);
    let [reason, rule] = unsafe { core::ptr::read_volatile(stash) };
    if limited {
        return Decision {
            verdict: Verdict::Drop,
            reason: Reason::RateLimited,
            rule,
        };
    }
    Decision {
        verdict: Verdict::Pass,
        reason: Reason::ALL
            .get(reason as usize)
            .copied()
            .unwrap_or(Reason::Default),
        rule,
    }
}

/// Whether a limit drops the packet the firewall parsed into scratch space, checked at
/// `phase` (lb_common's PHASE_*) for the service with id `service` (0: none). Costs a
/// call and two array reads while no limit is set.
#[inline(never)]
pub fn limited(ctx: &XdpContext, phase: u32, service: u32) -> bool {
    let Some(active) = XLB_RL_ACTIVE.get(0) else {
        return false;
    };
    let Some(set) = XLB_RL_SETS.get(*active & 1) else {
        return false;
    };
    if set.count == 0 {
        return false;
    }
    let Some(scratch) = scratch() else {
        return false;
    };
    let pkt = &scratch.pkt;
    let udp = pkt.proto == IPPROTO_UDP;
    // Whether the packet opens a flow. UDP's answer takes a lookup (is it to a service,
    // does the flow table hold it), made only once a new-flow limit asks (NEW_UNKNOWN).
    let mut new_flow = match pkt.proto {
        IPPROTO_TCP => {
            (pkt.has_ports
                && load_u16(ctx, pkt.l4_off + 12)
                    .is_some_and(|w| u16::from_be(w) & (TCP_SYN | TCP_ACK) == TCP_SYN))
                as u8
        }
        IPPROTO_UDP if !pkt.has_ports => 0,
        IPPROTO_UDP => NEW_UNKNOWN,
        _ => !pkt.fragment as u8,
    };
    let (family, src) = match pkt.src {
        Addr::V4(a) => (FAMILY_V4, Addr16([a.to_be(), 0, 0, 0])),
        Addr::V6(a) => (FAMILY_V6, a),
    };
    let count = set.count;
    let mut now = 0;
    let mut i = 0;
    while i < MAX_LIMITS {
        if i >= count {
            break;
        }
        let Some(l) = set.limits.get(i as usize) else {
            break;
        };
        i += 1;
        let nf = l.flags & LIMIT_NEW_FLOWS != 0;
        // The firewall checks the limits of all traffic; the balancer a service's own,
        // and UDP's new-flow limits of all traffic for packets to the service (which
        // the firewall left to it).
        let scope = if phase == PHASE_FIREWALL {
            l.service == 0
        } else {
            l.service == service || (udp && nf && l.service == 0)
        };
        if !scope || !covers(l, family, &src) {
            continue;
        }
        if nf {
            if new_flow == NEW_UNKNOWN {
                new_flow = udp_new_flow(pkt, phase, &scratch.key, family);
            }
            if new_flow == 0 {
                continue;
            }
        }
        if now == 0 {
            now = unsafe { bpf_ktime_get_coarse_ns() }.wrapping_add(set.clock_offset_ns)
                << RL_CLOCK_SHIFT;
        }
        let out = check(l, family, &src, now);
        let Some(stats) = XLB_RL_STATS.get_ptr_mut(l.slot as u32 & (MAX_LIMITS - 1)) else {
            continue;
        };
        let stats = unsafe { &mut *stats };
        if out == PASS {
            stats.passed += 1;
            continue;
        }
        if exempt(pkt, family, &src, set) {
            stats.exempted += 1;
            return false;
        }
        stats.dropped += 1;
        if out == OVER_SKETCH {
            stats.sketch_dropped += 1;
        }
        return true;
    }
    false
}

/// Whether a UDP packet (with ports) opens a flow at `phase`: to a service, when the
/// flow table has no entry for it (`key`, the balancer's flow key), which only the
/// balancer's phase asks (the firewall's leaves it: 0); not to a service, always (xlb
/// keeps no flow for it).
#[inline(never)]
fn udp_new_flow(pkt: &Packet, phase: u32, key: &FlowKey, family: u8) -> u8 {
    if phase == PHASE_SERVICE {
        return unsafe { XLB_FLOWS.get(key) }.is_none() as u8;
    }
    if XLB_CONFIG.get(0).is_some_and(|c| c.services == 0) {
        return 1;
    }
    let mut k = ServiceKey {
        addr: match pkt.dst {
            Addr::V4(a) => Addr16([a.to_be(), 0, 0, 0]),
            Addr::V6(a) => a,
        },
        port: pkt.dst_port,
        proto: IPPROTO_UDP,
        family,
    };
    if unsafe { XLB_SERVICES.get(k) }.is_some() {
        return 0;
    }
    k.port = 0;
    unsafe { XLB_SERVICES.get(k) }.is_none() as u8
}

/// `new_flow` before the flow table was asked.
const NEW_UNKNOWN: u8 = 2;

/// Whether `src` (of `family`) is in the limit's prefix.
#[inline(always)]
fn covers(l: &RateLimit, family: u8, src: &Addr16) -> bool {
    (l.family == 0 || l.family == family)
        && src.0[0] & l.mask.0[0] == l.net.0[0]
        && src.0[1] & l.mask.0[1] == l.net.0[1]
        && src.0[2] & l.mask.0[2] == l.net.0[2]
        && src.0[3] & l.mask.0[3] == l.net.0[3]
}

/// One limit's bucket for `src` at `now`: PASS (a token taken), OVER or OVER_SKETCH.
#[inline(never)]
fn check(l: &RateLimit, family: u8, src: &Addr16, now: u64) -> u32 {
    let slot = l.slot as u32 & (MAX_LIMITS - 1);
    if l.flags & LIMIT_WHOLE != 0 {
        return match XLB_RL_STATE.get_ptr_mut(slot) {
            Some(tat) => gcra(unsafe { &mut *tat }, now, l.interval, l.tolerance),
            None => PASS,
        };
    }
    let key = Addr16([
        src.0[0] & l.key_mask.0[0],
        src.0[1] & l.key_mask.0[1],
        src.0[2] & l.key_mask.0[2],
        src.0[3] & l.key_mask.0[3],
    ]);
    let h = rl_hash(slot, l.generation, family, &key);
    let fp = h | 1;
    let Some(set) = XLB_RL_BUCKETS.get_ptr_mut(h as u32 & (RL_SETS - 1)) else {
        return PASS;
    };
    let set = unsafe { &mut *set };
    let e = &mut set.entries;
    // Unrolled: each way's test ends in a return, so the verifier walks four short
    // paths, not a loop's.
    if e[0].fp == fp {
        return gcra(&mut e[0].tat, now, l.interval, l.tolerance);
    }
    if e[1].fp == fp {
        return gcra(&mut e[1].tat, now, l.interval, l.tolerance);
    }
    if e[2].fp == fp {
        return gcra(&mut e[2].tat, now, l.interval, l.tolerance);
    }
    if e[3].fp == fp {
        return gcra(&mut e[3].tat, now, l.interval, l.tolerance);
    }
    sketch(l, slot, set, h, now)
}

/// The GCRA step on `tat`.
#[inline(always)]
fn gcra(tat: &mut u64, now: u64, interval: u64, tolerance: u64) -> u32 {
    let base = if *tat > now { *tat } else { now };
    if base - now > tolerance {
        return OVER;
    }
    *tat = base + interval;
    PASS
}

/// A source without an exact bucket: the sketch's estimate decides; a refused or
/// sampled source is promoted into `set`.
#[inline(always)]
fn sketch(l: &RateLimit, slot: u32, set: &mut RlBucketSet, h: u64, now: u64) -> u32 {
    let (Some(c0), Some(c1)) = (
        XLB_RL_SKETCH.get_ptr_mut(rl_cell(slot, 0, h)),
        XLB_RL_SKETCH.get_ptr_mut(rl_cell(slot, 1, h)),
    ) else {
        return PASS;
    };
    let (c0, c1) = unsafe { (&mut *c0, &mut *c1) };
    let b0 = c0.saturating_sub(now);
    let b1 = c1.saturating_sub(now);
    let est = if b0 < b1 { b0 } else { b1 };
    if est > l.tolerance {
        // Over its limit, or sharing its cells with heavy sources: a bucket of its own
        // tells which. It starts empty (the next packet waits an interval), not with
        // the cells' backlog, which other sources may have made.
        let empty = l.tolerance + l.interval;
        promote(
            set,
            h | 1,
            now + if est < empty { est } else { empty },
            now,
            slot,
        );
        return OVER_SKETCH;
    }
    let next = now + est + l.interval;
    if *c0 < next {
        *c0 = next;
    }
    if *c1 < next {
        *c1 = next;
    }
    if unsafe { bpf_get_prandom_u32() } % RL_PROMOTE_ONE_IN == 0 {
        promote(set, h | 1, next, now, slot);
    }
    PASS
}

/// Gives key `fp` an exact bucket at `tat` in its set's first empty entry, else the
/// staler (smaller tat: least recently allowed) of two entries its hash picks; within
/// the promotion budget.
#[inline(never)]
fn promote(set: &mut RlBucketSet, fp: u64, tat: u64, now: u64, slot: u32) {
    const INTERVAL: u64 = RL_UNITS_PER_SEC / RL_PROMOTIONS_PER_SEC;
    let Some(budget) = XLB_RL_STATE.get_ptr_mut(RL_STATE_PROMOTE) else {
        return;
    };
    if gcra(
        unsafe { &mut *budget },
        now,
        INTERVAL,
        (RL_PROMOTION_BURST - 1) * INTERVAL,
    ) != PASS
    {
        return;
    }
    let e = &mut set.entries;
    let way = if e[0].fp == 0 {
        0
    } else if e[1].fp == 0 {
        1
    } else if e[2].fp == 0 {
        2
    } else if e[3].fp == 0 {
        3
    } else {
        let a = (fp >> 61) as usize & (RL_WAYS - 1);
        let b = (a + 1) & (RL_WAYS - 1);
        if e[a].tat <= e[b].tat { a } else { b }
    };
    let way = way & (RL_WAYS - 1);
    e[way].fp = fp;
    e[way].tat = tat;
    if let Some(stats) = XLB_RL_STATS.get_ptr_mut(slot) {
        unsafe { (*stats).promoted += 1 };
    }
}

/// An over-limit packet that passes anyway: always allowed (`fw except`), or from an
/// exempt endpoint (looked up only while the set says there are some).
#[inline(always)]
fn exempt(pkt: &Packet, family: u8, src: &Addr16, set: &LimitSet) -> bool {
    if let Some(cfg) = XLB_CONFIG.get(0)
        && filter::always_allowed(pkt, cfg)
    {
        return true;
    }
    if set.exempt == 0 || !pkt.has_ports {
        return false;
    }
    let mut key = EndpointKey {
        addr: *src,
        port: pkt.src_port,
        proto: pkt.proto,
        family,
    };
    if unsafe { XLB_RL_EXEMPT.get(key) }.is_some() {
        return true;
    }
    if set.exempt_any_port == 0 {
        return false;
    }
    key.port = 0;
    unsafe { XLB_RL_EXEMPT.get(key) }.is_some()
}
