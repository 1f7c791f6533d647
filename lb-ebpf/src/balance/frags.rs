//! Fragments: a first fragment (it has the ports) leaves its datagram's flow in the
//! fragment table; later fragments (no layer-4 header) find it there and follow it.

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use super::{NONE, flow_backend, forward::send, pack, reply::send_reply};
use crate::{
    maps::{XLB_FRAGS, scratch},
    parse::Packet,
};

#[inline(always)]
pub(super) fn frag_key(pkt: &Packet, family: u8, src: &Addr16, dst: &Addr16) -> FragKey {
    FragKey {
        src: *src,
        dst: *dst,
        id: pkt.frag_id,
        proto: pkt.proto,
        family,
        _pad: [0; 2],
    }
}

/// A first fragment: later fragments of its datagram will follow `flow`.
#[inline(always)]
pub(super) fn remember_fragment(pkt: &Packet, flow: &Flow) {
    let Some(scratch) = scratch() else {
        return;
    };
    let Some((family, src, dst)) = pkt.addrs() else {
        return;
    };
    scratch.frag = frag_key(pkt, family, &src, &dst);
    let _ = XLB_FRAGS.insert(&scratch.frag, flow, 0);
}

/// A later fragment, with its datagram's flow in scratch: rewritten as the flow's
/// packets are (addresses only: it has no layer-4 header).
#[inline(never)]
pub(super) fn follow(ctx: &XdpContext, pkt: &Packet, now: u64) -> u32 {
    let Some(scratch) = scratch() else {
        return NONE;
    };
    let f = &scratch.flow;
    if f.direction == FLOW_REPLY {
        return pack(send_reply(ctx, pkt, f));
    }
    let Some(b) = flow_backend(f) else {
        return NONE;
    };
    pack(Some(send(ctx, pkt, f, b, now)))
}
