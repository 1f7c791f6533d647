//! Stage 3: load balancing. A packet for a service goes to the backend its flow already
//! has (flow table) or, for a new flow, to the one the service's Maglev table picks;
//! a nat or fullnat reply from a backend is rewritten back to the service address.
//! A fullnat flow's source port is claimed in a slot of XLB_NAT_PORTS, through which
//! its replies find it (see lb_common::NatPort).
//! Fragments after the first follow the flow their first fragment took (fragment
//! table); ICMP errors about a flow (fragmentation needed, packet too big) go to the
//! flow's backend, rewritten like the flow, so path-MTU discovery works.

// Map keys and values go by reference: passing them by value (as clippy suggests for
// `impl Borrow` arguments) copies them onto the 512-byte stack, which is full.
#![allow(clippy::needless_borrows_for_generic_args)]

use core::intrinsics::{AtomicOrdering, atomic_and, atomic_cxchg, atomic_or};

use core::sync::atomic::{Ordering, compiler_fence};

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};
use lb_common::*;

use crate::{
    bounds::{frame_len, load},
    count, icmp,
    maps::{
        Scratch, Victim, XLB_BACKENDS, XLB_ENDPOINTS, XLB_FLOWS, XLB_FRAGS, XLB_HOPS, XLB_MAGLEV,
        XLB_NAT_PORTS, XLB_SERVICE_KEYS, XLB_SERVICES, XLB_SNAT, scratch,
    },
    parse::{Addr, Packet},
    rewrite::{self, End},
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The addresses in 16 bytes and the family.
#[inline(always)]
fn addrs(pkt: &Packet) -> Option<(u8, Addr16, Addr16)> {
    match (pkt.src, pkt.dst) {
        (Addr::V4(s), Addr::V4(d)) => Some((
            FAMILY_V4,
            Addr16([s.to_be(), 0, 0, 0]),
            Addr16([d.to_be(), 0, 0, 0]),
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
        h = mix32(h ^ a.0[i]);
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

/// Each path (forward, reply, later fragment, ICMP error) is a BPF function of its own
/// (`inline(never)`): inlined into one body their spills overflow the 512-byte stack.
/// BPF functions return one scalar (a struct would come back through a pointer to the
/// caller's stack, which the verifier refuses): outcomes travel packed in a u32.
const NONE: u32 = u32::MAX;
/// forward's outcome for a new fullnat flow: scheduled (scratch.flow), without a port
/// yet (forward_fullnat claims one; both would not fit one frame).
const NEEDS_PORT: u32 = u32::MAX - 1;

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
pub fn balance(ctx: &XdpContext, cfg: &Config) -> Option<(Verdict, Reason)> {
    if cfg.services == 0 {
        return None;
    }
    // The firewall parsed the packet into scratch space before its tail call.
    let pkt = &scratch()?.pkt;
    unpack(balance_packed(ctx, pkt, cfg))
}

#[inline(always)]
fn balance_packed(ctx: &XdpContext, pkt: &Packet, cfg: &Config) -> u32 {
    pack(balance_inner(ctx, pkt, cfg))
}

#[inline(always)]
fn balance_inner(ctx: &XdpContext, pkt: &Packet, cfg: &Config) -> Option<(Verdict, Reason)> {
    let (family, src, dst) = addrs(pkt)?;
    // The coarse clock (a tick's resolution) is enough for second-scale timeouts, and
    // costs a memory read where the precise one reads the clock source.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if pkt.proto == IPPROTO_ICMP || pkt.proto == IPPROTO_ICMPV6 {
        if !pkt.has_l4 {
            return None;
        }
        if icmp::is_echo_request(pkt) {
            return echo(ctx, pkt, family, &dst);
        }
        if icmp::is_error(pkt) {
            return unpack(icmp_error(ctx, pkt, family, now));
        }
        return None;
    }
    let scratch = scratch()?;
    if !pkt.has_ports {
        if !pkt.fragment {
            return None;
        }
        // A later fragment: it goes where its first fragment went.
        scratch.frag = frag_key(pkt, family, &src, &dst);
        let f = unsafe { XLB_FRAGS.get(&scratch.frag) }?;
        scratch.flow = *f;
        return unpack(follow(ctx, pkt, now));
    }
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
    match service(&dst, pkt.dst_port, pkt.proto, family) {
        Some(svc) => match forward(ctx, pkt, &svc, key, now) {
            NEEDS_PORT => unpack(forward_fullnat(ctx, pkt, &svc, now)),
            out => unpack(out),
        },
        None if cfg.nat_services != 0 => unpack(reply(ctx, pkt, key, now)),
        None => None,
    }
}

#[inline(always)]
fn frag_key(pkt: &Packet, family: u8, src: &Addr16, dst: &Addr16) -> FragKey {
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
fn remember_fragment(pkt: &Packet, flow: &Flow) {
    let Some(scratch) = scratch() else {
        return;
    };
    let Some((family, src, dst)) = addrs(pkt) else {
        return;
    };
    scratch.frag = frag_key(pkt, family, &src, &dst);
    let _ = XLB_FRAGS.insert(&scratch.frag, flow, 0);
}

/// A later fragment, with its datagram's flow in scratch: rewritten as the flow's
/// packets are (addresses only: it has no layer-4 header).
#[inline(never)]
fn follow(ctx: &XdpContext, pkt: &Packet, now: u64) -> u32 {
    let Some(scratch) = scratch() else {
        return NONE;
    };
    let f = &scratch.flow;
    if f.direction == FLOW_REPLY {
        return pack(send_reply(ctx, pkt, f));
    }
    let Some(b) = XLB_BACKENDS.get(f.backend) else {
        return NONE;
    };
    if b.generation != f.generation {
        return NONE;
    }
    pack(Some(send(ctx, pkt, f, b, now)))
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
    if pkt.fragment {
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

/// An ICMP error about a packet xlb sent towards a client (its quoted header runs from
/// the service address to the client): it goes to the flow's backend, with the outer
/// and quoted headers rewritten as the mode rewrites that flow.
#[inline(never)]
fn icmp_error(ctx: &XdpContext, pkt: &Packet, family: u8, now: u64) -> u32 {
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
    let Some(b) = XLB_BACKENDS.get(f.backend) else {
        return NONE;
    };
    if b.generation != f.generation || b.flags & BACKEND_UP == 0 {
        return NONE;
    }
    // The quoted packet ran service -> client; it becomes backend -> (xlb's source
    // address for fullnat | client).
    let port = if b.port != 0 {
        b.port
    } else {
        scratch.key.dst_port
    };
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

/// A fullnat flow's reply tuple: (backend, backend port) -> (xlb's source address,
/// the flow's allocated port).
#[inline(always)]
fn reply_key(b: &Backend, fwd: &FlowKey, snat: &Addr16, nat_port: u16) -> FlowKey {
    FlowKey {
        src: b.addr,
        dst: *snat,
        src_port: if b.port != 0 { b.port } else { fwd.dst_port },
        dst_port: nat_port,
        proto: fwd.proto,
        family: fwd.family,
        _pad: [0; 2],
    }
}

/// The XLB_NAT_PORTS slot of a fullnat reply tuple: slot `port` of the block of 65536
/// that the rest of the tuple (backend end, xlb's address, protocol) hashes to. Ports
/// come from a per-CPU cursor, one after another (claim_port): in a block, one flow's
/// slot follows the last one's, in cache lines and pages the claims before it just
/// touched, where a hash of the whole tuple would touch a cold line of a 32 MiB array
/// for every flow. Backends whose tuples share a block share its ports.
#[inline(always)]
fn nat_slot(reply: &FlowKey) -> u32 {
    let h = hash_addr(hash_addr(0x5bd1_e995, &reply.src), &reply.dst);
    let block = mix32(h ^ (reply.src_port as u32) << 16 ^ (reply.proto as u32) << 8);
    (block & (NAT_PORT_SLOTS / 65536 - 1)) << 16 | reply.dst_port as u32
}

/// A slot's claim word (NatPort::claim), read before the rest of the slot by a reader
/// that only checks a slot: an ordinary load (BPF has atomic loads only from cpu v4),
/// kept before the reads of the slot's fields by a compiler fence. A claimer reads it
/// with a full barrier instead (probe).
#[inline(always)]
fn load_claim(slot: *mut NatPort) -> u64 {
    let c = unsafe { core::ptr::read_volatile(&raw const (*slot).claim) };
    compiler_fence(Ordering::Acquire);
    c
}

/// Compare-and-swap of a slot's claim word (BPF_CMPXCHG, kernel 5.12+). Through the
/// intrinsic: core's AtomicU64 has no read-modify-write methods on the bpf target (its
/// spec declares no compare-and-swap), though LLVM emits the instruction.
#[inline(always)]
fn swap_claim(slot: *mut NatPort, old: u64, new: u64) -> bool {
    let p = unsafe { &raw mut (*slot).claim };
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, old, new)
    }
    .1
}

/// A fullnat flow keeps its port only while its slot still holds it (a slot whose flow
/// was evicted may have gone to another flow); if it does, the slot's time is
/// refreshed with the flow's.
#[inline(always)]
fn reply_intact(f: &Flow, b: &Backend, key: &FlowKey, now: u64) -> bool {
    let Some(scratch) = scratch() else {
        return false;
    };
    let Some(snat) = XLB_SNAT.get(f.service) else {
        return false;
    };
    scratch.reply = reply_key(b, key, snat, f.nat_port);
    let Some(slot) = XLB_NAT_PORTS.get_ptr_mut(nat_slot(&scratch.reply)) else {
        return false;
    };
    let claim = load_claim(slot);
    let held = unsafe { &*slot };
    let intact = claim & NAT_PORT_BUSY == 0
        && claim as u32 == f.backend
        && held.nat_port == f.nat_port
        && held.client == key.src
        && held.client_port == key.src_port
        && held.vport == key.dst_port;
    if intact {
        unsafe { (*slot).seen = ticks(now) };
    }
    intact
}

/// The flow holding a claimed slot (`id`: the backend in its claim word): the forward
/// entry with the slot's client end and service port, if it is a fullnat flow of that
/// backend, of its generation, with the slot's port. Its key is left in scratch.reply.
#[inline(always)]
fn slot_flow(slot: &NatPort, id: u32) -> Option<(&'static Flow, &'static Backend)> {
    let b = XLB_BACKENDS.get(id)?;
    let vip = XLB_SERVICE_KEYS.get(b.service)?;
    let scratch = scratch()?;
    scratch.reply = FlowKey {
        src: slot.client,
        dst: vip.addr,
        src_port: slot.client_port,
        dst_port: slot.vport,
        proto: vip.proto,
        family: vip.family,
        _pad: [0; 2],
    };
    let f = unsafe { XLB_FLOWS.get(&scratch.reply) }?;
    if f.direction != FLOW_FORWARD
        || f.mode != MODE_FULLNAT
        || f.backend != id
        || f.generation != b.generation
        || f.nat_port != slot.nat_port
    {
        return None;
    }
    Some((f, b))
}

#[inline(never)]
fn forward(ctx: &XdpContext, pkt: &Packet, svc: &Service, key: &FlowKey, now: u64) -> u32 {
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
    let idle = (svc.tcp_idle_secs, svc.udp_idle_secs);
    let known = XLB_FLOWS.get_ptr_mut(key).and_then(|f| {
        let f = unsafe { &mut *f };
        let b = still_valid(f, svc.id, key.proto, idle, now)?;
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
    let new_flow = known.is_none();
    let (flow, backend) = match known {
        Some(kb) => kb,
        None => match schedule(ctx, svc, key, now) {
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
fn forward_fullnat(ctx: &XdpContext, pkt: &Packet, svc: &Service, now: u64) -> u32 {
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
fn send(ctx: &XdpContext, pkt: &Packet, f: &Flow, b: &Backend, now: u64) -> (Verdict, Reason) {
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
fn schedule(ctx: &XdpContext, svc: &Service, key: &FlowKey, now: u64) -> Result<u32, Reason> {
    if svc.table_size == 0 {
        return Err(Reason::NoBackend);
    }
    let h = flow_hash(key, svc.flags & SVC_AFFINITY_SOURCE != 0);
    let slot = svc.table_offset + h % svc.table_size;
    let pair = XLB_MAGLEV.get(slot / 2).ok_or(Reason::NoBackend)?;
    let id = pair[(slot % 2) as usize];
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
            ..scratch.flow
        };
        scratch.reply = FlowKey {
            src: b.addr,
            dst: key.src,
            src_port: if b.port != 0 { b.port } else { key.dst_port },
            dst_port: key.src_port,
            proto: key.proto,
            family: key.family,
            _pad: [0; 2],
        };
        let _ = XLB_FLOWS.insert(&scratch.reply, &scratch.back, 0);
    }
    if svc.mode != MODE_FULLNAT {
        let _ = XLB_FLOWS.insert(key, &scratch.flow, 0);
    }
    Ok(id)
}

/// Claims a source port for a new fullnat flow (to backend `id`): the first candidate
/// whose slot no live flow holds, so two flows never share a (backend, port) pair. If
/// every candidate is held (the backends' ports are exhausted), the one whose flow has
/// been quiet longest, if quiet for NAT_PORT_STEAL_TICKS (see NatPort::seen). The flow
/// is scratch.key. Returns the port, 0 if none.
///
/// Ports come from a per-CPU cursor, one after another: a port comes round again only
/// after every other port has been handed out on that CPU, so it goes to the flow that
/// has had the longest to end, and a block's slots are written in order (nat_slot).
/// After a held port the cursor jumps to a random one (another CPU's cursor, or a
/// stretch of long-lived flows, may be just ahead).
#[inline(always)]
fn claim_port(svc: &Service, id: u32, now: u64) -> u32 {
    let (Some(snat), Some(b), Some(scratch)) =
        (XLB_SNAT.get(svc.id), XLB_BACKENDS.get(id), scratch())
    else {
        return 0;
    };
    // The flow's key is read while the other fields are written.
    let Scratch {
        key,
        reply,
        nat_cursor,
        victim,
        ..
    } = scratch;
    let key = &*key;
    let idle = if key.proto == IPPROTO_TCP {
        svc.tcp_idle_secs
    } else {
        svc.udp_idle_secs
    };
    // Seconds as ticks of 1.07 s: a slot older than this has outlived its flow.
    let limit = idle.min(u16::MAX as u32 - 1) as u16;
    let now_t = ticks(now);
    if *nat_cursor == 0 {
        // The first claim on this CPU since the program was loaded: CPUs start apart.
        *nat_cursor = unsafe { bpf_get_prandom_u32() } | 1;
    }
    let span = 65536 - FULLNAT_PORT_MIN as u32;
    // The quietest held candidate (in scratch: the stack is full).
    victim.age = 0;
    // Flow-table lookups left (probe): with the ports exhausted every candidate would
    // cost one, so later candidates recently refreshed count as held without one.
    let mut lookups = FULLNAT_PORT_LOOKUPS;
    let mut i = 0;
    while i < FULLNAT_PORT_TRIES {
        let port = FULLNAT_PORT_MIN + (*nat_cursor % span) as u16;
        *reply = reply_key(b, key, snat, port);
        let slot = nat_slot(reply);
        let (word, held) = probe(slot, svc.id, limit, now_t, &mut lookups);
        match held {
            None => {
                if take(slot, word, id, key, port, now_t) {
                    *nat_cursor = nat_cursor.wrapping_add(1);
                    return port as u32;
                }
            }
            Some(age) if age >= NAT_PORT_STEAL_TICKS && age > victim.age => {
                *victim = Victim {
                    word,
                    slot,
                    port,
                    age,
                };
            }
            Some(_) => {}
        }
        *nat_cursor = unsafe { bpf_get_prandom_u32() };
        i += 1;
    }
    let v = &*victim;
    if v.age != 0 && take(v.slot, v.word, id, key, v.port, now_t) {
        return v.port as u32;
    }
    0
}

/// NatPort::seen's clock: ticks of 2^30 ns (1.07 s), wrapping at 16 bits (19.5 hours).
#[inline(always)]
fn ticks(now: u64) -> u16 {
    (now >> 30) as u16
}

/// Reads slot `i` for a claim by a flow of service `svc` (idle timeout `limit` ticks):
/// its claim word, and if a live flow holds it, how many ticks since that flow's last
/// refresh (0 while another CPU is claiming it). Free: never claimed, its flow idle
/// past `limit` (a flow of this service: it is rescheduled on its next packet), or its
/// flow gone (slot_flow, while `lookups` last; after that the slot counts as held).
#[inline(always)]
fn probe(i: u32, svc: u32, limit: u16, now_t: u16, lookups: &mut u32) -> (u64, Option<u16>) {
    let Some(slot) = XLB_NAT_PORTS.get_ptr_mut(i) else {
        return (0, Some(0));
    };
    // A fetching atomic or of 0 (BPF_FETCH): the read is ordered before the reads of
    // the slot's fields on every architecture, which an ordinary load is not.
    let word =
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*slot).claim, 0) };
    if word == 0 {
        return (word, None);
    }
    if word & NAT_PORT_BUSY != 0 {
        return (word, Some(0));
    }
    let slot = unsafe { &*slot };
    let age = now_t.wrapping_sub(slot.seen);
    let same_service = XLB_BACKENDS
        .get(word as u32)
        .is_some_and(|b| b.service == svc);
    if same_service && age > limit {
        return (word, None);
    }
    if *lookups == 0 {
        return (word, Some(age));
    }
    *lookups -= 1;
    match slot_flow(slot, word as u32) {
        None => (word, None),
        Some(_) => (word, Some(age)),
    }
}

/// Takes slot `i`, read as `old`, for flow `key` (to backend `id`, source port `port`).
/// The claim word goes from `old` to BUSY and back by compare-and-swap: of two CPUs
/// taking one slot only one succeeds, and a third sees BUSY (held) while the winner
/// writes the rest.
#[inline(always)]
fn take(i: u32, old: u64, id: u32, key: &FlowKey, port: u16, now_t: u16) -> bool {
    let Some(slot) = XLB_NAT_PORTS.get_ptr_mut(i) else {
        return false;
    };
    // A new claim count (31 bits, wrapping), so the word differs from every value the
    // slot held lately, even for the same backend.
    let count = ((old >> 32) + 1) & 0x7fff_ffff;
    let busy = count << 32 | NAT_PORT_BUSY | id as u64;
    if !swap_claim(slot, old, busy) {
        return false;
    }
    unsafe {
        (*slot).client = key.src;
        (*slot).client_port = key.src_port;
        (*slot).vport = key.dst_port;
        (*slot).nat_port = port;
        (*slot).seen = now_t;
        atomic_and::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*slot).claim, !NAT_PORT_BUSY);
    }
    true
}

/// A backend's reply in nat or fullnat mode: through the flow's forward entry if the
/// backend owns its endpoint (nat) or the reply's port slot holds the flow (fullnat),
/// else through the flow's reply entry.
#[inline(never)]
fn reply(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, now: u64) -> u32 {
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
    let bport = if b.port != 0 { b.port } else { slot.vport };
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
    // `key` is scratch.key: only other fields are written.
    scratch.back = Flow {
        direction: FLOW_REPLY,
        vport: slot.vport,
        nat_port: slot.client_port,
        client: slot.client,
        ..*f
    };
    let back = &scratch.back;
    if pkt.fragment {
        remember_fragment(pkt, back);
    }
    pack(send_reply(ctx, pkt, back))
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
    let Some(f) = (unsafe { XLB_FLOWS.get(&scratch.reply) }) else {
        return NONE;
    };
    if f.direction != FLOW_FORWARD
        || f.mode != MODE_NAT
        || f.backend != id
        || f.generation != b.generation
    {
        return NONE;
    }
    scratch.back = Flow {
        direction: FLOW_REPLY,
        vport: vip.port,
        ..*f
    };
    let back = &scratch.back;
    if pkt.fragment {
        remember_fragment(pkt, back);
    }
    pack(send_reply(ctx, pkt, back))
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
    let b = XLB_BACKENDS.get(f.backend)?;
    if b.generation != f.generation {
        return None;
    }
    if now.wrapping_sub(f.seen_ns) > NS_PER_SEC {
        f.seen_ns = now;
    }
    if pkt.fragment {
        remember_fragment(pkt, f);
    }
    send_reply(ctx, pkt, f)
}

/// Rewrites a reply of flow `f` back to the service address (and, for fullnat, to
/// the client) and sends it towards the client.
#[inline(always)]
fn send_reply(ctx: &XdpContext, pkt: &Packet, f: &Flow) -> Option<(Verdict, Reason)> {
    let vip = XLB_SERVICE_KEYS.get(f.service)?;
    let (_, _, dst) = addrs(pkt)?;
    let client = if f.mode == MODE_FULLNAT {
        f.client
    } else {
        dst
    };
    let mut hop = rewrite::Hop::default();
    if !rewrite::route(ctx, pkt_v6(pkt), &client, &mut hop) {
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

#[inline(always)]
fn pkt_v6(pkt: &Packet) -> bool {
    matches!(pkt.src, Addr::V6(_))
}
