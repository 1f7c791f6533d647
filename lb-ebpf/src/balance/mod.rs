//! Stage 3: load balancing. A packet for a service goes to the backend its flow already
//! has (flow table) or, for a new flow, to the one the service's Maglev table picks;
//! a nat or fullnat reply from a backend is rewritten back to the service address.
//! A fullnat flow's source port is claimed in a slot of XLB_NAT_PORTS, through which
//! its replies find it (see lb_common::NatPort).
//! Fragments after the first follow the flow their first fragment took (fragment
//! table); ICMP errors about a flow (fragmentation needed, packet too big) go to the
//! flow's backend, rewritten like the flow, so path-MTU discovery works.
//!
//! Here: the entry (which path a packet takes), the service lookup, echo replies and
//! the outcome packing every path shares. The paths:
//! - `forward`: client -> backend (known flows, new flows, delivery);
//! - `reply`: backend -> client (nat and fullnat replies);
//! - `ports`: fullnat source ports, in the slots of XLB_NAT_PORTS;
//! - `frags`: fragments after the first;
//! - `icmp_error`: ICMP errors about a flow, to its backend.

// Map keys and values go by reference: passing them by value (as clippy suggests for
// `impl Borrow` arguments) copies them onto the 512-byte stack, which is full.
#![allow(clippy::needless_borrows_for_generic_args)]

mod forward;
mod frags;
mod icmp_error;
mod ports;
mod reply;

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use lb_common::*;

use self::{
    forward::{forward, forward_fullnat},
    frags::{follow, frag_key},
    icmp_error::icmp_error,
    reply::reply,
};
use crate::{
    icmp,
    maps::{XLB_BACKENDS, XLB_FRAGS, XLB_SERVICES, scratch},
    parse::Packet,
    ratelimit, rewrite,
};

/// Each path (forward, reply, later fragment, ICMP error) is a BPF function of its own
/// (`inline(never)`): inlined into one body their spills overflow the 512-byte stack.
/// BPF functions return one scalar (a struct would come back through a pointer to the
/// caller's stack, which the verifier refuses): outcomes travel packed in a u32.
pub(super) const NONE: u32 = u32::MAX;

/// forward's outcome for a new fullnat flow: scheduled (scratch.flow), without a port
/// yet (forward_fullnat claims one; both would not fit one frame).
pub(super) const NEEDS_PORT: u32 = u32::MAX - 1;

#[inline(always)]
pub(super) fn pack(o: Option<(Verdict, Reason)>) -> u32 {
    match o {
        Some((v, r)) => (v as u32) << 16 | r as u32,
        None => NONE,
    }
}

/// `pack` and `unpack` for the program's entry.
#[inline(always)]
pub fn packed(o: Option<(Verdict, Reason)>) -> u32 {
    pack(o)
}

#[inline(always)]
pub fn unpacked(x: u32) -> Option<(Verdict, Reason)> {
    unpack(x)
}

#[inline(always)]
pub(super) fn unpack(x: u32) -> Option<(Verdict, Reason)> {
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
    let (family, src, dst) = pkt.addrs()?;
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
        // The service's own limits, before its flow is looked up.
        Some(svc) if ratelimit::limited(ctx, PHASE_SERVICE, svc.id) => {
            Some((Verdict::Drop, Reason::RateLimited))
        }
        Some(svc) => match forward(ctx, pkt, &svc, key, now) {
            NEEDS_PORT => unpack(forward_fullnat(ctx, pkt, &svc, now)),
            out => unpack(out),
        },
        None if cfg.nat_services != 0 => {
            unpack(reply(ctx, pkt, key, now)).or_else(|| crate::synflood::go_local(pkt))
        }
        // A protected https service's packet, maybe (synflood).
        None => crate::synflood::go_local(pkt),
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

// Shared by the paths.

pub(super) const NS_PER_SEC: u64 = 1_000_000_000;

/// Folds an address into hash `h`, a word at a time.
#[inline(always)]
pub(super) fn hash_addr(h: u32, a: &Addr16) -> u32 {
    let mut h = h;
    let mut i = 0;
    while i < 4 {
        h = mix32(h ^ a.0[i]);
        i += 1;
    }
    h
}

/// A backend's port for a flow to service port `vport`: its own, or `vport` if it has
/// none (0).
#[inline(always)]
pub(super) fn backend_port(b: &Backend, vport: u16) -> u16 {
    if b.port != 0 { b.port } else { vport }
}

/// The backend of flow `f`, if its id still names the backend the flow was scheduled
/// to (the id goes to another backend with a new generation).
#[inline(always)]
pub(super) fn flow_backend(f: &Flow) -> Option<&'static Backend> {
    let b = XLB_BACKENDS.get(f.backend)?;
    if b.generation != f.generation {
        return None;
    }
    Some(b)
}

/// Whether `f` is the forward entry of a `mode` flow to backend `id` (`b`), of its
/// current generation.
#[inline(always)]
pub(super) fn is_forward_of(f: &Flow, mode: u8, id: u32, b: &Backend) -> bool {
    f.direction == FLOW_FORWARD && f.mode == mode && f.backend == id && f.generation == b.generation
}

/// The reply tuple of forward flow `fwd` to backend `b`: from the backend's end to
/// (`dst`, `dst_port`): the client's end for nat, xlb's source address and the flow's
/// allocated port for fullnat.
#[inline(always)]
pub(super) fn reply_key(b: &Backend, fwd: &FlowKey, dst: &Addr16, dst_port: u16) -> FlowKey {
    FlowKey {
        src: b.addr,
        dst: *dst,
        src_port: backend_port(b, fwd.dst_port),
        dst_port,
        proto: fwd.proto,
        family: fwd.family,
        _pad: [0; 2],
    }
}

/// A service's idle timeout for protocol `proto`, in seconds.
#[inline(always)]
pub(super) fn idle_secs(svc: &Service, proto: u8) -> u32 {
    if proto == IPPROTO_TCP {
        svc.tcp_idle_secs
    } else {
        svc.udp_idle_secs
    }
}
