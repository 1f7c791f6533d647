//! Backend -> client: a nat or fullnat reply finds its flow (through the forward entry
//! for an endpoint the backend owns, through its port slot for fullnat, else through the
//! reply entry) and is rewritten back to the service address and sent to the client.

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use super::{
    NONE, NS_PER_SEC, backend_port, flow_backend,
    frags::remember_fragment,
    is_forward_of, pack,
    ports::{load_claim, nat_slot, slot_flow},
};
use crate::{
    bounds::load,
    count,
    maps::{
        XLB_BACKENDS, XLB_ENDPOINTS, XLB_FLOWS, XLB_NAT_PORTS, XLB_SERVICE_KEYS, XLB_SNAT, scratch,
    },
    parse::Packet,
    rewrite::{self, End},
};

/// A backend's reply in nat or fullnat mode: through the flow's forward entry if the
/// backend owns its endpoint (nat) or the reply's port slot holds the flow (fullnat),
/// else through the flow's reply entry.
#[inline(never)]
pub(super) fn reply(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, now: u64) -> u32 {
    let out = reply_by_forward(ctx, pkt, key);
    if out != NONE {
        return out;
    }
    let out = reply_by_port(ctx, pkt, key);
    if out != NONE {
        return out;
    }
    pack(reply_inner(ctx, pkt, key, now))
}

/// A fullnat reply: its tuple's slot (nat_slot) names the flow (slot_flow), whose
/// backend and source address must be the reply's source and destination (backends
/// may share a block of slots). NONE when any of it does not hold.
#[inline(never)]
fn reply_by_port(ctx: &XdpContext, pkt: &Packet, key: &FlowKey) -> u32 {
    let Some(slot) = XLB_NAT_PORTS.get_ptr_mut(nat_slot(key)) else {
        return NONE;
    };
    let claim = load_claim(slot);
    let slot = unsafe { &*slot };
    if claim == 0 || claim & NAT_PORT_BUSY != 0 || slot.nat_port != key.dst_port {
        return NONE;
    }
    let Some((f, b)) = slot_flow(slot, claim as u32) else {
        return NONE;
    };
    let Some(scratch) = scratch() else {
        return NONE;
    };
    let bport = backend_port(b, slot.vport);
    // scratch.reply holds the forward key slot_flow looked up: its protocol and family
    // are the service's.
    let (proto, family) = (scratch.reply.proto, scratch.reply.family);
    if b.addr != key.src || bport != key.src_port || proto != key.proto || family != key.family {
        return NONE;
    }
    match XLB_SNAT.get(b.service) {
        Some(snat) if *snat == key.dst => {}
        _ => return NONE,
    }
    count::flow(f, count::ip_len(ctx, pkt), true);
    // `key` is scratch.key: only other fields are written.
    scratch.back = Flow {
        direction: FLOW_REPLY,
        vport: slot.vport,
        nat_port: slot.client_port,
        client: slot.client,
        ..*f
    };
    pack(reply_to_client(ctx, pkt, &scratch.back))
}

/// A nat reply from a backend that owns its endpoint (BACKEND_OWNS_ENDPOINT): the
/// reply (backend -> client) gives the client's end of the forward key, the backend's
/// service its address and port; the forward entry found must be a nat flow of this
/// backend, of this generation. NONE when any of it does not hold (the reply entry is
/// tried next).
#[inline(never)]
fn reply_by_forward(ctx: &XdpContext, pkt: &Packet, key: &FlowKey) -> u32 {
    let ep = EndpointKey {
        addr: key.src,
        port: key.src_port,
        proto: key.proto,
        family: key.family,
    };
    let Some(&id) = (unsafe { XLB_ENDPOINTS.get(&ep) }) else {
        return NONE;
    };
    let Some(b) = XLB_BACKENDS.get(id) else {
        return NONE;
    };
    // The entry may be older than the backend now in its slot: it must be this one.
    if b.flags & BACKEND_OWNS_ENDPOINT == 0 || b.addr != key.src || b.port != key.src_port {
        return NONE;
    }
    let Some(vip) = XLB_SERVICE_KEYS.get(b.service) else {
        return NONE;
    };
    let Some(scratch) = scratch() else {
        return NONE;
    };
    // `key` is scratch.key: only other fields are written.
    scratch.reply = FlowKey {
        src: key.dst,
        dst: vip.addr,
        src_port: key.dst_port,
        dst_port: vip.port,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    let Some(f) = XLB_FLOWS.get_ptr_mut(&scratch.reply) else {
        return NONE;
    };
    let f = unsafe { &mut *f };
    if !is_forward_of(f, MODE_NAT, id, b) {
        return NONE;
    }
    count::flow(f, count::ip_len(ctx, pkt), true);
    scratch.back = Flow {
        direction: FLOW_REPLY,
        vport: vip.port,
        ..*f
    };
    pack(reply_to_client(ctx, pkt, &scratch.back))
}

#[inline(always)]
fn reply_inner(
    ctx: &XdpContext,
    pkt: &Packet,
    key: &FlowKey,
    now: u64,
) -> Option<(Verdict, Reason)> {
    let f = unsafe { &mut *XLB_FLOWS.get_ptr_mut(key)? };
    if f.direction != FLOW_REPLY {
        return None;
    }
    // Replies use the flow's service timeouts only through its forward entry; here the
    // backend must still be the flow's.
    flow_backend(f)?;
    if now.wrapping_sub(f.seen_ns) > NS_PER_SEC {
        f.seen_ns = now;
    }
    // A reply entry's own counters: the daemon adds them to its forward entry's.
    count::flow(f, count::ip_len(ctx, pkt), false);
    reply_to_client(ctx, pkt, f)
}

/// `send_reply` for a reply found by its flow: a first fragment leaves the flow in the
/// fragment table for the fragments after it (which `follow` sends).
#[inline(always)]
fn reply_to_client(ctx: &XdpContext, pkt: &Packet, f: &Flow) -> Option<(Verdict, Reason)> {
    if pkt.fragment {
        remember_fragment(pkt, f);
    }
    send_reply(ctx, pkt, f)
}

/// Rewrites a reply of flow `f` back to the service address (and, for fullnat, to
/// the client) and sends it towards the client.
#[inline(always)]
pub(super) fn send_reply(ctx: &XdpContext, pkt: &Packet, f: &Flow) -> Option<(Verdict, Reason)> {
    // A connection the SYN proxy made: its program translates first (synflood).
    if f.syn.state != SYN_FLOW_NONE && crate::synflood::resumed() == 0 {
        return Some(crate::synflood::go_reply(f));
    }
    let vip = XLB_SERVICE_KEYS.get(f.service)?;
    let (_, _, dst) = pkt.addrs()?;
    let client = if f.mode == MODE_FULLNAT {
        f.client
    } else {
        dst
    };
    let mut hop = rewrite::Hop::default();
    if !rewrite::route(ctx, pkt.is_v6(), &client, &mut hop) {
        // No neighbour entry for the client: answer the MAC its packets came from.
        hop.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        hop.smac = load::<[u8; 6]>(ctx, 0)?;
        hop.dmac = f.mac;
    }
    rewrite::set_addr_port(ctx, pkt, End::Src, &vip.addr, Some(f.vport.to_be()))?;
    if f.mode == MODE_FULLNAT {
        rewrite::set_addr_port(ctx, pkt, End::Dst, &client, Some(f.nat_port.to_be()))?;
    }
    if rewrite::dec_ttl(ctx, pkt).is_none() {
        return Some((Verdict::Pass, Reason::NoRoute));
    }
    Some((rewrite::emit(ctx, &hop)?, Reason::NatReply))
}
