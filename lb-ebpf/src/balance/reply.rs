//! Backend -> client: a nat or fullnat reply finds its flow (through the forward entry
//! for an endpoint the backend owns, through its port slot for fullnat, else through the
//! reply entry) and is rewritten back to the service address and sent to the client.

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use super::{
    NONE, NS_PER_SEC, backend_port, flow_backend,
    frags::remember_fragment,
    is_forward_of, pack,
    ports::{load_claim, nat_slot, slot_flow, ticks},
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
/// else through the flow's reply entry. A reply none of them explains but that xlb can
/// tell is one (its flow's entry was evicted or idled out while the backend still
/// answered) gets its flow back, or is dropped: passed on, the kernel would forward it
/// untranslated, from the backend's own address, and the client would drop it.
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
    let out = reply_by_entry(ctx, pkt, key, now);
    if out != NONE {
        return out;
    }
    lost(ctx, pkt, key, now)
}

const LOST: Option<(Verdict, Reason)> = Some((Verdict::Drop, Reason::ReplyNoFlow));

/// BPF_NOEXIST: a restored entry never replaces one. A forward entry that is there but
/// did not explain the reply belongs to the client's next flow on that tuple (another
/// backend, another port): the reply is of a flow that is over.
const NO_EXIST: u64 = 1;

/// A reply that found no flow entry: a fullnat reply whose port's slot still names its
/// flow, or a nat reply from an owned endpoint (one service's), has its flow's forward
/// entry written again and is sent (FlowRestored); one that xlb can tell is a reply of
/// one of its flows but not which is dropped (ReplyNoFlow); anything else is not xlb's
/// (NONE). A function of its own whose arguments stay in registers (no stack of its
/// own): inlined, `reply`'s frame grows past what the 512-byte stack leaves it; the
/// paths send the reply themselves, for the same reason.
#[inline(never)]
fn lost(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, now: u64) -> u32 {
    let out = lost_fullnat(ctx, pkt, key, now);
    if out != NONE {
        return out;
    }
    lost_nat(ctx, pkt, key, now)
}

/// A fullnat reply goes to xlb's own (snat) address, which the host's own connections
/// (health checks among them) may use too: only a slot that still holds this reply's
/// tuple (backend end, snat address, port) makes it xlb's. The slot has the client's end
/// and the service port; the claim word the backend.
#[inline(never)]
fn lost_fullnat(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, now: u64) -> u32 {
    let Some(slot) = XLB_NAT_PORTS.get_ptr_mut(nat_slot(key)) else {
        return NONE;
    };
    let claim = load_claim(slot);
    if claim == 0 || claim & NAT_PORT_BUSY != 0 {
        return NONE;
    }
    let s = unsafe { &*slot };
    let id = claim as u32;
    let (Some(b), Some(scratch)) = (XLB_BACKENDS.get(id), scratch()) else {
        return NONE;
    };
    let Some(vip) = XLB_SERVICE_KEYS.get(b.service) else {
        return NONE;
    };
    let ours = s.nat_port == key.dst_port
        && b.addr == key.src
        && backend_port(b, s.vport) == key.src_port
        && vip.proto == key.proto
        && vip.family == key.family
        && XLB_SNAT.get(b.service).is_some_and(|a| *a == key.dst);
    if !ours {
        return NONE;
    }
    // A backend that left (its flows are over), or a client xlb cannot reach now (a
    // restored entry has no client MAC to fall back on).
    let mut hop = rewrite::Hop::default();
    if b.flags & BACKEND_UP == 0 || !rewrite::route(ctx, pkt.is_v6(), &s.client, &mut hop) {
        return pack(LOST);
    }
    scratch.reply = FlowKey {
        src: s.client,
        dst: vip.addr,
        src_port: s.client_port,
        dst_port: s.vport,
        proto: vip.proto,
        family: vip.family,
        _pad: [0; 2],
    };
    restore(&mut scratch.back, id, b, MODE_FULLNAT, now);
    scratch.back.nat_port = s.nat_port;
    if XLB_FLOWS
        .insert(&scratch.reply, &scratch.back, NO_EXIST)
        .is_err()
    {
        return pack(LOST);
    }
    // The slot's flow is live again: no claimer may take it as idle.
    unsafe { (*slot).seen = ticks(now) };
    // Sent as reply_by_port would: the reply's view of the flow.
    scratch.back.direction = FLOW_REPLY;
    scratch.back.vport = s.vport;
    scratch.back.nat_port = s.client_port;
    scratch.back.client = s.client;
    send_restored(ctx, pkt, &scratch.back)
}

/// A nat reply comes from a backend's endpoint (MAP_ENDPOINTS) to the client. One to an
/// address of this host is the host's own (health checks, the daemon's connections).
/// An endpoint of one service's backend (its owner, whose flows have no reply entry)
/// gives the forward entry back: client end from the reply, service address and port
/// from the backend's service. An endpoint several services share cannot tell which
/// the client used.
#[inline(never)]
fn lost_nat(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, now: u64) -> u32 {
    let ep = EndpointKey {
        addr: key.src,
        port: key.src_port,
        proto: key.proto,
        family: key.family,
    };
    let Some(&owner) = (unsafe { XLB_ENDPOINTS.get(&ep) }) else {
        return NONE;
    };
    let mut hop = rewrite::Hop::default();
    match rewrite::fib(ctx, pkt.is_v6(), &key.dst, &mut hop) {
        rewrite::Fib::Local => return NONE,
        rewrite::Fib::Routed => {}
        // No MAC to fall back on (see lost_fullnat).
        rewrite::Fib::Unroutable => return pack(LOST),
    }
    if owner & ENDPOINT_SHARED != 0 {
        return pack(LOST);
    }
    let (Some(b), Some(scratch)) = (XLB_BACKENDS.get(owner), scratch()) else {
        return pack(LOST);
    };
    let owns = BACKEND_UP | BACKEND_OWNS_ENDPOINT;
    if b.flags & owns != owns || b.addr != key.src || b.port != key.src_port {
        return pack(LOST);
    }
    let Some(vip) = XLB_SERVICE_KEYS.get(b.service) else {
        return pack(LOST);
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
    restore(&mut scratch.back, owner, b, MODE_NAT, now);
    if XLB_FLOWS
        .insert(&scratch.reply, &scratch.back, NO_EXIST)
        .is_err()
    {
        return pack(LOST);
    }
    // Sent as reply_by_forward would: the reply's view of the flow.
    scratch.back.direction = FLOW_REPLY;
    scratch.back.vport = vip.port;
    send_restored(ctx, pkt, &scratch.back)
}

/// Sends a reply whose flow was just restored, counted as such.
#[inline(always)]
fn send_restored(ctx: &XdpContext, pkt: &Packet, f: &Flow) -> u32 {
    match reply_to_client(ctx, pkt, f) {
        Some((v, Reason::NatReply)) => pack(Some((v, Reason::FlowRestored))),
        Some(o) => pack(Some(o)),
        None => pack(LOST),
    }
}

/// Writes into `f` (scratch) the forward entry of a flow to backend `id` (`b`) given
/// back by its reply: a new entry in every other field (its counters start again, its
/// first packet now). Field by field: a Flow built on the stack would not fit.
#[inline(always)]
fn restore(f: &mut Flow, id: u32, b: &Backend, mode: u8, now: u64) {
    f.backend = id;
    f.generation = b.generation;
    f.service = b.service;
    f.direction = FLOW_FORWARD;
    f.mode = mode;
    f.vport = 0;
    f.seen_ns = now;
    f.mac = [0; 6];
    f.nat_port = 0;
    f.client = Addr16([0; 4]);
    f.first_ns = now;
    f.packets = 0;
    f.bytes = 0;
    f.rev_packets = 0;
    f.rev_bytes = 0;
    f.syn = SynFlow::NONE;
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
    let Some(&owner) = (unsafe { XLB_ENDPOINTS.get(&ep) }) else {
        return NONE;
    };
    let id = owner & !ENDPOINT_SHARED;
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

/// A reply through its flow's reply entry. A function of its own, like every path
/// here: `reply` only dispatches, its arguments in registers, so that its frame adds
/// nothing to the longest call chain's stack (the 512 bytes are nearly full).
#[inline(never)]
fn reply_by_entry(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, now: u64) -> u32 {
    pack(reply_inner(ctx, pkt, key, now))
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
