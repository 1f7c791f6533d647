//! Kernel debug logging through aya-log, for `xlb run --kernel-log debug`. Callers
//! check `Config::log_level` first, so with logging off (the default) these functions
//! are never entered, and each is a BPF function of its own.
//!
//! The verifier checks a BPF function once per distinct caller state: `packet` runs at
//! the program's entry (one state) and parses the headers again for the addresses;
//! `decision` runs after the verdict (a state per path) and so stays small, numbers only
//! (the daemon names the reason and verdict when it logs the record).

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::debug;

use crate::{
    maps::scratch,
    parse::{self, Addr},
};

#[inline(never)]
pub fn packet(ctx: &XdpContext) {
    let Some(scratch) = scratch() else {
        return;
    };
    let pkt = &mut scratch.pkt;
    *pkt = parse::Packet::EMPTY;
    if parse::packet(ctx, pkt) != Ok(true) {
        debug!(ctx, "packet: not IP or malformed");
        return;
    }
    match (pkt.src, pkt.dst) {
        (Addr::V4(s), Addr::V4(d)) => debug!(
            ctx,
            "packet: {:i}:{} -> {:i}:{} proto {}", s, pkt.src_port, d, pkt.dst_port, pkt.proto
        ),
        (Addr::V6(s), Addr::V6(d)) => debug!(
            ctx,
            "packet: [{:i}]:{} -> [{:i}]:{} proto {}",
            s.bytes(),
            pkt.src_port,
            d.bytes(),
            pkt.dst_port,
            pkt.proto
        ),
        _ => {}
    }
}

/// `stage` 0: the firewall, 1: the balancer.
#[inline(never)]
pub fn decision(ctx: &XdpContext, stage: u32, reason: u32, verdict: u32) {
    debug!(
        ctx,
        "decision: stage={} reason={} verdict={}", stage, reason, verdict
    );
}
