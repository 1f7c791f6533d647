//! Sampled dropped-packet events for the daemon's log: one drop in `drop_sample` per
//! CPU reserves a ring-buffer record. The other drops cost one per-CPU counter update,
//! so a flood costs almost nothing.
//!
//! A sampled drop parses its headers again (into scratch space) in a BPF function of
//! its own: keeping the first parse alive until the verdict would multiply the states
//! the verifier explores in the callers.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr16, Config, DropEvent, FAMILY_V4, FAMILY_V6, Reason};

use crate::{
    maps::{XLB_EVENTS, XLB_SAMPLE, scratch},
    parse::{self, Addr},
};

#[inline(always)]
pub fn dropped(ctx: &XdpContext, reason: Reason, len: usize, cfg: &Config) {
    if cfg.drop_sample == 0 {
        return;
    }
    let Some(seen) = XLB_SAMPLE.get_ptr_mut(0) else {
        return;
    };
    let seen = unsafe { &mut *seen };
    *seen += 1;
    if *seen < cfg.drop_sample {
        return;
    }
    *seen = 0;
    emit(ctx, reason as u32, len as u32);
}

#[inline(never)]
fn emit(ctx: &XdpContext, reason: u32, len: u32) {
    let Some(scratch) = scratch() else {
        return;
    };
    let pkt = &mut scratch.pkt;
    *pkt = parse::Packet::EMPTY;
    // A malformed frame keeps what was parsed before the error.
    let _ = parse::packet(ctx, pkt);
    let Some(mut e) = XLB_EVENTS.reserve::<DropEvent>(0) else {
        return;
    };
    // Not Packet::addrs: a blank (unparsed) pair has no family here, and the one match
    // keeps the event's fields in registers (with it, 27 more instructions and 64 more
    // bytes of stack).
    let (family, src, dst) = match (pkt.src, pkt.dst) {
        (Addr::V4(s), Addr::V4(d)) => (
            if s == 0 && d == 0 { 0 } else { FAMILY_V4 },
            Addr16([s.to_be(), 0, 0, 0]),
            Addr16([d.to_be(), 0, 0, 0]),
        ),
        (Addr::V6(s), Addr::V6(d)) => (FAMILY_V6, s, d),
        _ => (0, Addr16([0; 4]), Addr16([0; 4])),
    };
    e.write(DropEvent {
        src,
        dst,
        reason,
        len,
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
        proto: pkt.proto,
        family,
        _pad: [0; 2],
    });
    e.submit(0);
}

/// Keeps the type in use (the reason travels as u32).
const _: () = assert!(Reason::IcmpToBackend as u32 == 19);
