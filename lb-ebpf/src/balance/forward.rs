//! Client -> backend: a packet of a known flow goes to the flow's backend while it is
//! still valid; a new flow is scheduled by the service's Maglev table (a new fullnat
//! flow claims its source port first, in a BPF function of its own); then the packet
//! is rewritten for the backend's next hop and counted.

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use super::{
    NEEDS_PORT, NONE, NS_PER_SEC, flow_backend,
    frags::remember_fragment,
    hash_addr, idle_secs, pack,
    ports::{claim_port, reply_intact},
    reply_key,
};
use crate::{
    bounds::{frame_len, load, load_u16},
    count,
    maps::{XLB_BACKENDS, XLB_FLOWS, XLB_HOPS, XLB_MAGLEV, XLB_SNAT, scratch},
    parse::Packet,
    rewrite::{self, End},
    synflood,
};

/// The 5-tuple hash (or the source-only hash for `source` affinity).
#[inline(always)]
fn flow_hash(k: &FlowKey, source_only: bool) -> u32 {
    let h = hash_addr(0x5bd1_e995, &k.src);
    if source_only {
        return h;
    }
    let h = hash_addr(h, &k.dst);
    mix32(h ^ ((k.src_port as u32) << 16 | k.dst_port as u32) ^ ((k.proto as u32) << 8))
}

/// The backend a flow may keep: same generation, up, still in the service, not idle.
#[inline(always)]
fn still_valid(flow: &Flow, svc: &Service, proto: u8, now: u64) -> Option<Backend> {
    let b = flow_backend(flow)?;
    if b.flags & BACKEND_UP == 0 || b.service != svc.id {
        return None;
    }
    let limit = idle_secs(svc, proto) as u64 * NS_PER_SEC;
    if now.wrapping_sub(flow.seen_ns) > limit {
        return None;
    }
    Some(*b)
}

/// A packet to service `svc`, of flow `key` (scratch.key): sent to its flow's backend,
/// or scheduled as a new flow; NEEDS_PORT for a new fullnat flow (forward_fullnat
/// goes on).
#[inline(never)]
pub(super) fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &Service,
    key: &FlowKey,
    now: u64,
) -> u32 {
    match forward_inner(ctx, pkt, svc, key, now) {
        Some(out) => pack(Some(out)),
        None => NEEDS_PORT,
    }
}

#[inline(always)]
fn forward_inner(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &Service,
    key: &FlowKey,
    now: u64,
) -> Option<(Verdict, Reason)> {
    let known = XLB_FLOWS.get_ptr_mut(key).and_then(|f| {
        let f = unsafe { &mut *f };
        let b = still_valid(f, svc, key.proto, now)?;
        if f.direction != FLOW_FORWARD || f.mode != svc.mode {
            return None;
        }
        // Refresh at most once a second: fewer writes to a shared cache line. A fullnat
        // flow checks (and refreshes) its port's slot at the same pace.
        if now.wrapping_sub(f.seen_ns) > NS_PER_SEC {
            if f.mode == MODE_FULLNAT && !reply_intact(f, &b, key, now) {
                return None;
            }
            f.seen_ns = now;
        }
        Some((f as *const Flow, b))
    });
    // SYN-flood protection and the SYN proxy run in a program of their own
    // (synflood): a miss of a protected service, or a flow the SYN proxy made, goes
    // there first and comes back here (resumed) if it is to be sent on.
    let resumed = synflood::resumed();
    if resumed == 0 {
        let go = match known {
            Some((f, _)) if unsafe { (*f).syn.state } != SYN_FLOW_NONE => synflood::GO_KNOWN,
            None if synflood::protected(svc.id, pkt) => synflood::GO_MISS,
            _ => 0,
        };
        if go != 0 {
            return Some(synflood::go(go, svc.id));
        }
    }
    // Counted on the pass that sends it (a SYN-proxied flow's packet comes here twice).
    if let Some((f, _)) = known {
        count::flow(f as *mut Flow, count::ip_len(ctx, pkt), false);
    }
    let new_flow = known.is_none();
    let proxied = resumed == synflood::RESUME_PROXIED;
    let (flow, backend) = match known {
        Some(kb) => kb,
        None => match schedule(ctx, pkt, svc, key, now, proxied) {
            Err(r) => return Some((Verdict::Drop, r)),
            Ok(_) if svc.mode == MODE_FULLNAT => return None,
            Ok(id) => match (XLB_BACKENDS.get(id), scratch()) {
                (Some(b), Some(s)) => (&s.flow as *const Flow, *b),
                _ => return Some((Verdict::Drop, Reason::NoBackend)),
            },
        },
    };
    Some(deliver(
        ctx,
        pkt,
        unsafe { &*flow },
        &backend,
        new_flow,
        now,
    ))
}

/// A new fullnat flow, scheduled by forward (scratch.flow, for scratch.key): its
/// source port is claimed, then its entry written and the packet sent.
#[inline(never)]
pub(super) fn forward_fullnat(ctx: &XdpContext, pkt: &Packet, svc: &Service, now: u64) -> u32 {
    let Some(scratch) = scratch() else {
        return NONE;
    };
    let Some(b) = XLB_BACKENDS.get(scratch.flow.backend) else {
        return pack(Some((Verdict::Drop, Reason::NoBackend)));
    };
    let port = claim_port(svc, scratch.flow.backend, now);
    if port == 0 {
        return pack(Some((Verdict::Drop, Reason::NoPort)));
    }
    scratch.flow.nat_port = port as u16;
    let _ = XLB_FLOWS.insert(&scratch.key, &scratch.flow, 0);
    pack(Some(deliver(ctx, pkt, &scratch.flow, b, true, now)))
}

/// Sends a forward packet of `flow` to `backend` and counts it.
#[inline(always)]
fn deliver(
    ctx: &XdpContext,
    pkt: &Packet,
    flow: &Flow,
    backend: &Backend,
    new_flow: bool,
    now: u64,
) -> (Verdict, Reason) {
    if pkt.fragment {
        remember_fragment(pkt, flow);
    }
    let len = frame_len(ctx);
    let out = send(ctx, pkt, flow, backend, now);
    if out.1 == Reason::Balanced {
        count::backend(flow.backend, len, new_flow);
    }
    out
}

/// Rewrites a forward packet of `f` for its backend `b` (nat: destination; fullnat:
/// both ends) and sends it to the backend's next hop.
#[inline(always)]
pub(super) fn send(
    ctx: &XdpContext,
    pkt: &Packet,
    f: &Flow,
    b: &Backend,
    now: u64,
) -> (Verdict, Reason) {
    let Some(hop) = XLB_HOPS.get_ptr_mut(f.backend) else {
        return (Verdict::Drop, Reason::NoRoute);
    };
    let hop = unsafe { &mut *hop };
    if hop.generation != b.generation || now > hop.expires_ns {
        let mut fresh = rewrite::Hop::default();
        if !rewrite::route(ctx, b.family == FAMILY_V6, &b.addr, &mut fresh) {
            return (Verdict::Drop, Reason::NoRoute);
        }
        hop.ifindex = fresh.ifindex;
        hop.smac = fresh.smac;
        hop.dmac = fresh.dmac;
        hop.generation = b.generation;
        hop.expires_ns = now + HOP_CACHE_NS;
    }
    if f.mode == MODE_NAT || f.mode == MODE_FULLNAT {
        let port = if b.port != 0 {
            Some(b.port.to_be())
        } else {
            None
        };
        if rewrite::set_addr_port(ctx, pkt, End::Dst, &b.addr, port).is_none() {
            return (Verdict::Drop, Reason::BadL4);
        }
    }
    if f.mode == MODE_FULLNAT {
        let Some(snat) = XLB_SNAT.get(f.service) else {
            return (Verdict::Drop, Reason::NoPort);
        };
        let port = Some(f.nat_port.to_be());
        if rewrite::set_addr_port(ctx, pkt, End::Src, snat, port).is_none() {
            return (Verdict::Drop, Reason::BadL4);
        }
    }
    if f.mode != MODE_DSR && rewrite::dec_ttl(ctx, pkt).is_none() {
        return (Verdict::Pass, Reason::NoRoute);
    }
    match rewrite::emit_to(ctx, hop.ifindex, &hop.smac, &hop.dmac) {
        Some(v) => (v, Reason::Balanced),
        None => (Verdict::Drop, Reason::BadL4),
    }
}

/// A new flow: the Maglev table picks the backend, and the flow goes into the flow table
/// (with a reply entry for nat to a shared endpoint; a fullnat flow's entry is written
/// once it has a port, by forward_fullnat); its forward entry is left in scratch.
/// Returns the backend id.
#[inline(always)]
fn schedule(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &Service,
    key: &FlowKey,
    now: u64,
    proxied: bool,
) -> Result<u32, Reason> {
    if svc.table_size == 0 {
        return Err(Reason::NoBackend);
    }
    let h = flow_hash(key, svc.flags & SVC_AFFINITY_SOURCE != 0);
    // A TCP packet that opens no connection has lost its flow's entry: while the
    // backend the connection went to is held (a drain keeps its connections), the hold
    // table finds it. Not the ACK of a connection the SYN proxy proved: that opens one.
    let held = if svc.hold_size != 0 && !proxied && !opens_connection(ctx, pkt) {
        held_pick(svc, h)
    } else {
        0
    };
    let id = if held != 0 {
        held
    } else {
        maglev_pick(svc.table_offset, svc.table_size, h)
    };
    if id == 0 {
        return Err(Reason::NoBackend);
    }
    let b = XLB_BACKENDS.get(id).ok_or(Reason::NoBackend)?;
    if b.flags & BACKEND_UP == 0 {
        return Err(Reason::NoBackend);
    }
    let scratch = scratch().ok_or(Reason::NoBackend)?;
    scratch.flow = Flow {
        backend: id,
        generation: b.generation,
        service: svc.id,
        direction: FLOW_FORWARD,
        mode: svc.mode,
        vport: 0,
        seen_ns: now,
        mac: [0; 6],
        nat_port: 0,
        client: Addr16([0; 4]),
        first_ns: now,
        // The flow's first packet, counted here for flow records (whether or not they
        // are on: a store either way).
        packets: 1,
        bytes: count::ip_len(ctx, pkt),
        rev_packets: 0,
        rev_bytes: 0,
        // A connection the SYN proxy proved (its ACK is now the SYN to the backend).
        syn: if proxied {
            synflood::proven()
        } else {
            SynFlow::NONE
        },
    };
    let owned = svc.mode == MODE_NAT && b.flags & BACKEND_OWNS_ENDPOINT != 0;
    if svc.mode == MODE_FULLNAT || owned {
        // Its replies find the flow through the forward entry (reply_by_port,
        // reply_by_forward): the client's MAC goes there, and no reply entry is written.
        scratch.flow.mac = load::<[u8; 6]>(ctx, 6).unwrap_or([0; 6]);
    } else if svc.mode == MODE_NAT {
        scratch.back = Flow {
            direction: FLOW_REPLY,
            mac: load::<[u8; 6]>(ctx, 6).unwrap_or([0; 6]),
            vport: key.dst_port,
            packets: 0,
            bytes: 0,
            ..scratch.flow
        };
        scratch.reply = reply_key(b, key, &key.src, key.src_port);
        let _ = XLB_FLOWS.insert(&scratch.reply, &scratch.back, 0);
    }
    if svc.mode != MODE_FULLNAT {
        let _ = XLB_FLOWS.insert(key, &scratch.flow, 0);
    }
    Ok(id)
}

/// The backend id in slot `h % size` of the Maglev table at `offset` (0: none).
#[inline(always)]
fn maglev_pick(offset: u32, size: u32, h: u32) -> u32 {
    let slot = offset + h % size;
    XLB_MAGLEV
        .get(slot / 2)
        .map_or(0, |pair| pair[(slot % 2) as usize])
}

/// The hold table's pick for hash `h`, if it is a held backend of `svc` (0: none).
#[inline(always)]
fn held_pick(svc: &Service, h: u32) -> u32 {
    let id = maglev_pick(svc.hold_offset, svc.hold_size, h);
    let held = BACKEND_UP | BACKEND_HELD;
    match XLB_BACKENDS.get(id) {
        Some(b) if b.flags & held == held && b.service == svc.id => id,
        _ => 0,
    }
}

/// TCP flags of the header's 13th byte.
const TCP_SYN: u16 = 0x02;
const TCP_ACK: u16 = 0x10;

/// Whether the packet may open a flow: anything but TCP, or a TCP SYN (without ACK).
#[inline(always)]
fn opens_connection(ctx: &XdpContext, pkt: &Packet) -> bool {
    if pkt.proto != IPPROTO_TCP {
        return true;
    }
    // Flags are the low byte of the word at offset 12 (data offset, flags).
    load_u16(ctx, pkt.l4_off + 12).is_none_or(|w| u16::from_be(w) & (TCP_SYN | TCP_ACK) == TCP_SYN)
}
