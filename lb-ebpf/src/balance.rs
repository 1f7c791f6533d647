//! Stage 3: load balancing. A packet for a service goes to the backend its flow already
//! has (flow table) or, for a new flow, to the one the service's Maglev table picks;
//! a nat reply from a backend is rewritten back to the service address.

// Map keys and values go by reference: passing them by value (as clippy suggests for
// `impl Borrow` arguments) copies them onto the 512-byte stack, which is full.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::*;

use crate::{
    bounds::load,
    maps::{
        XLB_BACKENDS, XLB_FLOWS, XLB_HOPS, XLB_MAGLEV, XLB_SCRATCH, XLB_SERVICE_KEYS, XLB_SERVICES,
    },
    parse::{Addr, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, Packet},
    rewrite::{self, End},
};

const NS_PER_SEC: u64 = 1_000_000_000;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// The addresses in 16 bytes and the family.
#[inline(always)]
fn addrs(pkt: &Packet) -> Option<(u8, Addr16, Addr16)> {
    match (pkt.src, pkt.dst) {
        (Addr::V4(s), Addr::V4(d)) => Some((
            FAMILY_V4,
            addr16_v4(s.to_be_bytes()),
            addr16_v4(d.to_be_bytes()),
        )),
        (Addr::V6(s), Addr::V6(d)) => Some((FAMILY_V6, s, d)),
        _ => None,
    }
}

#[inline(always)]
fn hash_addr(h: u32, a: &Addr16) -> u32 {
    let mut h = h;
    let mut i = 0;
    while i < 4 {
        h = mix32(h ^ u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]));
        i += 1;
    }
    h
}

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

/// BPF functions return one scalar (a struct would come back through a pointer to the
/// caller's stack, which the verifier refuses): outcomes travel packed in a u32.
const NONE: u32 = u32::MAX;

#[inline(always)]
fn pack(o: Option<(Verdict, Reason)>) -> u32 {
    match o {
        Some((v, r)) => (v as u32) << 16 | r as u32,
        None => NONE,
    }
}

#[inline(always)]
fn unpack(x: u32) -> Option<(Verdict, Reason)> {
    if x == NONE {
        return None;
    }
    let v = *Verdict::ALL.get((x >> 16) as usize)?;
    let r = *Reason::ALL.get((x & 0xffff) as usize)?;
    Some((v, r))
}

/// None: not for a service (or a flow) of xlb; the packet goes on to the kernel.
#[inline(always)]
pub fn balance(ctx: &XdpContext, pkt: &Packet, cfg: &Config) -> Option<(Verdict, Reason)> {
    unpack(balance_packed(ctx, pkt, cfg))
}

/// Not inlined: a BPF function of its own keeps each stack frame under 512 bytes.
#[inline(always)]
fn balance_packed(ctx: &XdpContext, pkt: &Packet, cfg: &Config) -> u32 {
    pack(balance_inner(ctx, pkt, cfg))
}

#[inline(always)]
fn balance_inner(ctx: &XdpContext, pkt: &Packet, cfg: &Config) -> Option<(Verdict, Reason)> {
    if cfg.services == 0 {
        return None;
    }
    let (family, src, dst) = addrs(pkt)?;
    if pkt.proto == IPPROTO_ICMP || pkt.proto == IPPROTO_ICMPV6 {
        return echo(ctx, pkt, family, &dst);
    }
    if !pkt.has_ports {
        return None;
    }
    let scratch = unsafe { &mut *XLB_SCRATCH.get_ptr_mut(0)? };
    scratch.key = FlowKey {
        src,
        dst,
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
        proto: pkt.proto,
        family,
        _pad: [0; 2],
    };
    let key = &scratch.key;
    let now = unsafe { bpf_ktime_get_ns() };
    match service(&dst, pkt.dst_port, pkt.proto, family) {
        Some(svc) => Some(forward(ctx, pkt, &svc, key, now)),
        None if cfg.nat_services != 0 => unpack(nat_reply(ctx, pkt, key, now)),
        None => None,
    }
}

#[inline(always)]
fn service(dst: &Addr16, port: u16, proto: u8, family: u8) -> Option<Service> {
    let mut key = ServiceKey {
        addr: *dst,
        port,
        proto,
        family,
    };
    if let Some(s) = unsafe { XLB_SERVICES.get(&key) } {
        return Some(*s);
    }
    key.port = 0;
    unsafe { XLB_SERVICES.get(&key) }.copied()
}

/// Echo requests to a service address are answered here.
#[inline(always)]
fn echo(ctx: &XdpContext, pkt: &Packet, family: u8, dst: &Addr16) -> Option<(Verdict, Reason)> {
    let request = if family == FAMILY_V4 {
        ICMP_ECHO_REQUEST
    } else {
        ICMPV6_ECHO_REQUEST
    };
    if pkt.icmp_type != request || pkt.fragment {
        return None;
    }
    let key = ServiceKey {
        addr: *dst,
        port: 0,
        proto: pkt.proto,
        family,
    };
    let svc = unsafe { XLB_SERVICES.get(&key) }?;
    if svc.mode != MODE_ECHO {
        return None;
    }
    rewrite::echo_reply(ctx, pkt)?;
    rewrite::swap_macs(ctx)?;
    Some((Verdict::Tx, Reason::EchoReply))
}

/// The backend a flow may keep: same generation, up, still in the service, not idle.
#[inline(always)]
fn still_valid(
    flow: &Flow,
    service: u32,
    proto: u8,
    idle: (u32, u32),
    now: u64,
) -> Option<Backend> {
    let b = XLB_BACKENDS.get(flow.backend)?;
    if b.generation != flow.generation || b.flags & BACKEND_UP == 0 || b.service != service {
        return None;
    }
    let limit = if proto == IPPROTO_TCP { idle.0 } else { idle.1 } as u64 * NS_PER_SEC;
    if now.wrapping_sub(flow.seen_ns) > limit {
        return None;
    }
    Some(*b)
}

#[inline(always)]
fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &Service,
    key: &FlowKey,
    now: u64,
) -> (Verdict, Reason) {
    let idle = (svc.tcp_idle_secs, svc.udp_idle_secs);
    let known = XLB_FLOWS.get_ptr_mut(key).and_then(|f| {
        let f = unsafe { &mut *f };
        let b = (f.backend, still_valid(f, svc.id, key.proto, idle, now)?);
        if f.direction != FLOW_FORWARD {
            return None;
        }
        // Refresh at most once a second: fewer writes to a shared cache line.
        if now.wrapping_sub(f.seen_ns) > NS_PER_SEC {
            f.seen_ns = now;
        }
        Some(b)
    });
    let (id, backend) = match known {
        Some(kb) => kb,
        None => {
            let id = schedule(ctx, svc, key);
            match XLB_BACKENDS.get(id) {
                Some(b) if b.flags & BACKEND_UP != 0 => (id, *b),
                _ => return (Verdict::Drop, Reason::NoBackend),
            }
        }
    };
    let Some(hop) = XLB_HOPS.get_ptr_mut(id) else {
        return (Verdict::Drop, Reason::NoRoute);
    };
    let hop = unsafe { &mut *hop };
    if hop.generation != backend.generation || now > hop.expires_ns {
        let mut fresh = rewrite::Hop::default();
        if !rewrite::route(ctx, key.family == FAMILY_V6, &backend.addr, &mut fresh) {
            return (Verdict::Drop, Reason::NoRoute);
        }
        hop.ifindex = fresh.ifindex;
        hop.smac = fresh.smac;
        hop.dmac = fresh.dmac;
        hop.generation = backend.generation;
        hop.expires_ns = now + HOP_CACHE_NS;
    }
    if svc.mode == MODE_NAT {
        let port = if backend.port != 0 {
            Some(backend.port.to_be())
        } else {
            None
        };
        if rewrite::set_addr_port(ctx, pkt, End::Dst, &backend.addr, port).is_none() {
            return (Verdict::Drop, Reason::BadL4);
        }
        if rewrite::dec_ttl(ctx, pkt).is_none() {
            return (Verdict::Pass, Reason::NoRoute);
        }
    }
    match rewrite::emit_to(ctx, hop.ifindex, &hop.smac, &hop.dmac) {
        Some(v) => (v, Reason::Balanced),
        None => (Verdict::Drop, Reason::BadL4),
    }
}

/// A new flow: the Maglev table picks the backend, and the flow (both directions for
/// nat) goes into the flow table. Returns the backend id, 0 if there is none.
#[inline(always)]
fn schedule(ctx: &XdpContext, svc: &Service, key: &FlowKey) -> u32 {
    schedule_inner(ctx, svc, key).unwrap_or(0)
}

#[inline(always)]
fn schedule_inner(ctx: &XdpContext, svc: &Service, key: &FlowKey) -> Option<u32> {
    if svc.table_size == 0 {
        return None;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let h = flow_hash(key, svc.flags & SVC_AFFINITY_SOURCE != 0);
    let slot = svc.table_offset + h % svc.table_size;
    let pair = XLB_MAGLEV.get(slot / 2)?;
    let id = pair[(slot % 2) as usize];
    if id == 0 {
        return None;
    }
    let b = *XLB_BACKENDS.get(id)?;
    if b.flags & BACKEND_UP == 0 {
        return None;
    }
    let scratch = unsafe { &mut *XLB_SCRATCH.get_ptr_mut(0)? };
    scratch.flow = Flow {
        backend: id,
        generation: b.generation,
        service: svc.id,
        direction: FLOW_FORWARD,
        _pad: [0; 3],
        seen_ns: now,
        mac: [0; 6],
        vport: 0,
    };
    let _ = XLB_FLOWS.insert(key, &scratch.flow, 0);
    if svc.mode == MODE_NAT {
        scratch.reply = FlowKey {
            src: b.addr,
            dst: key.src,
            src_port: if b.port != 0 { b.port } else { key.dst_port },
            dst_port: key.src_port,
            proto: key.proto,
            family: key.family,
            _pad: [0; 2],
        };
        scratch.back = Flow {
            direction: FLOW_REPLY,
            mac: load::<[u8; 6]>(ctx, 6).unwrap_or([0; 6]),
            vport: key.dst_port,
            ..scratch.flow
        };
        let _ = XLB_FLOWS.insert(&scratch.reply, &scratch.back, 0);
    }
    Some(id)
}

/// A backend's reply in nat mode: the source becomes the service address and port.
#[inline(always)]
fn nat_reply(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, now: u64) -> u32 {
    pack(nat_reply_inner(ctx, pkt, key, now))
}

#[inline(always)]
fn nat_reply_inner(
    ctx: &XdpContext,
    pkt: &Packet,
    key: &FlowKey,
    now: u64,
) -> Option<(Verdict, Reason)> {
    let f = unsafe { &mut *XLB_FLOWS.get_ptr_mut(key)? };
    if f.direction != FLOW_REPLY {
        return None;
    }
    let vip = *XLB_SERVICE_KEYS.get(f.service)?;
    // Replies use the flow's service timeouts only through its forward entry; here the
    // backend must still be the flow's.
    let b = XLB_BACKENDS.get(f.backend)?;
    if b.generation != f.generation {
        return None;
    }
    if now.wrapping_sub(f.seen_ns) > NS_PER_SEC {
        f.seen_ns = now;
    }
    let mut hop = rewrite::Hop::default();
    if !rewrite::route(ctx, key.family == FAMILY_V6, &key.dst, &mut hop) {
        // No neighbour entry for the client: answer the MAC its packets came from.
        hop.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        hop.smac = load::<[u8; 6]>(ctx, 0)?;
        hop.dmac = f.mac;
    }
    rewrite::set_addr_port(ctx, pkt, End::Src, &vip.addr, Some(f.vport.to_be()))?;
    if rewrite::dec_ttl(ctx, pkt).is_none() {
        return Some((Verdict::Pass, Reason::NoRoute));
    }
    Some((rewrite::emit(ctx, &hop)?, Reason::NatReply))
}
