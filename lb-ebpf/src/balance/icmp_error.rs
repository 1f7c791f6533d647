//! ICMP errors about a flow (destination unreachable, fragmentation needed, packet too
//! big) go to the flow's backend, their quoted header rewritten as the flow's packets
//! are, so path-MTU discovery works through xlb.

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use super::{NONE, backend_port, flow_backend, forward::send, pack};
use crate::{
    icmp,
    maps::{XLB_FLOWS, XLB_SNAT, scratch},
    parse::Packet,
    rewrite::End,
};

/// An ICMP error about a packet xlb sent towards a client (its quoted header runs from
/// the service address to the client): it goes to the flow's backend, with the outer
/// and quoted headers rewritten as the mode rewrites that flow.
#[inline(never)]
pub(super) fn icmp_error(ctx: &XdpContext, pkt: &Packet, family: u8, now: u64) -> u32 {
    let Some(scratch) = scratch() else {
        return NONE;
    };
    let Some(inner) = icmp::quoted(ctx, pkt, family, &mut scratch.key) else {
        return NONE;
    };
    let Some(f) = (unsafe { XLB_FLOWS.get(&scratch.key) }) else {
        return NONE;
    };
    if f.direction != FLOW_FORWARD {
        return NONE;
    }
    scratch.flow = *f;
    let f = &scratch.flow;
    let Some(b) = flow_backend(f) else {
        return NONE;
    };
    if b.flags & BACKEND_UP == 0 {
        return NONE;
    }
    // The quoted packet ran service -> client; it becomes backend -> (xlb's source
    // address for fullnat | client).
    let port = backend_port(b, scratch.key.dst_port);
    if (f.mode == MODE_NAT || f.mode == MODE_FULLNAT)
        && icmp::set_quoted(ctx, pkt, &inner, End::Src, &b.addr, port).is_none()
    {
        return NONE;
    }
    if f.mode == MODE_FULLNAT {
        let Some(snat) = XLB_SNAT.get(f.service) else {
            return NONE;
        };
        if icmp::set_quoted(ctx, pkt, &inner, End::Dst, snat, f.nat_port).is_none() {
            return NONE;
        }
    }
    match send(ctx, pkt, f, b, now) {
        (v, Reason::Balanced) => pack(Some((v, Reason::IcmpToBackend))),
        other => pack(Some(other)),
    }
}
