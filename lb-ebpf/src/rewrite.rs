//! Stage 4: rewrite a packet for its backend (or its client) and send it out: address
//! and port rewrites with incremental checksums (RFC 1624), TTL, MACs from the kernel's
//! FIB, echo replies.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{
    Addr16, Verdict,
    net::{ICMP_ECHO_REPLY, ICMPV6_ECHO_REPLY, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    bounds::{load, load_addr16, load_u16, load_w32, store, store_u16, store_w32},
    maps::scratch,
    parse::{Addr, Packet},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// Offset of the source or destination address of the IP header at `l3`.
#[inline(always)]
pub fn addr_off(l3: usize, v4: bool, end: End) -> usize {
    match (v4, end) {
        (true, End::Src) => l3 + 12,
        (true, End::Dst) => l3 + 16,
        (false, End::Src) => l3 + 8,
        (false, End::Dst) => l3 + 24,
    }
}

/// RFC 1624 incremental checksum updates: `delta` sums, over each replaced word, the
/// complement of the old value and the new value (one's complement arithmetic, so the
/// byte order of the words does not matter as long as old and new agree); `apply`
/// folds a delta into a checksum.
#[inline(always)]
pub(crate) fn delta32(d: u32, old: u32, new: u32) -> u32 {
    let o = !old;
    d + (o & 0xffff) + (o >> 16) + (new & 0xffff) + (new >> 16)
}

#[inline(always)]
pub(crate) fn delta16(d: u32, old: u16, new: u16) -> u32 {
    d + (!old) as u32 + new as u32
}

#[inline(always)]
pub(crate) fn apply(check: u16, d: u32) -> u16 {
    let mut sum = (!check) as u32 + d;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Offset of the layer-4 checksum that covers the addresses (TCP, UDP, ICMPv6's
/// pseudo-header); None for UDP over IPv4 without one, for ICMP (its checksum does not
/// cover the IP header) and for fragments after the first (no layer-4 header).
#[inline(always)]
fn l4_check_off(ctx: &XdpContext, pkt: &Packet) -> Option<Option<usize>> {
    if !pkt.has_l4 {
        return Some(None);
    }
    match pkt.proto {
        IPPROTO_TCP => Some(Some(pkt.l4_off + 16)),
        IPPROTO_ICMPV6 => Some(Some(pkt.l4_off + 2)),
        IPPROTO_UDP => {
            let off = pkt.l4_off + 6;
            let zero = load_u16(ctx, off)? == 0;
            Some(if zero && !pkt.is_v6() {
                None
            } else {
                Some(off)
            })
        }
        _ => Some(None),
    }
}

/// Folds `d` into the checksum at `off` (UDP's "no checksum" 0 is sent as 0xffff).
#[inline(always)]
pub fn fix_check(ctx: &XdpContext, off: usize, d: u32, udp: bool) -> Option<()> {
    let mut c = apply(load_u16(ctx, off)?, d);
    if c == 0 && udp {
        c = 0xffff;
    }
    store_u16(ctx, off, c)
}

#[inline(always)]
fn fix_l4(ctx: &XdpContext, pkt: &Packet, d: u32) -> Option<()> {
    match l4_check_off(ctx, pkt)? {
        Some(off) => fix_check(ctx, off, d, pkt.proto == IPPROTO_UDP),
        None => Some(()),
    }
}

/// Writes the address at `off` (1 word for IPv4, 4 for IPv6) and returns the checksum
/// delta.
#[inline(always)]
pub fn put_addr(ctx: &XdpContext, off: usize, addr: &Addr16, v4: bool) -> Option<u32> {
    let n = if v4 { 1 } else { 4 };
    let mut d = 0;
    let mut i = 0;
    while i < 4 {
        if i == n {
            break;
        }
        d = delta32(d, load_w32(ctx, off + 4 * i)?, addr.0[i]);
        store_w32(ctx, off + 4 * i, addr.0[i])?;
        i += 1;
    }
    Some(d)
}

/// Writes the 16-bit word at `off` (network order) and returns the checksum delta.
#[inline(always)]
pub fn put_u16(ctx: &XdpContext, off: usize, v: u16) -> Option<u32> {
    let d = delta16(0, load_u16(ctx, off)?, v);
    store_u16(ctx, off, v)?;
    Some(d)
}

/// Writes the 16-bit word at `off` and fixes the checksum at `check` that covers it.
#[inline(always)]
pub fn set_u16(ctx: &XdpContext, off: usize, check: usize, v: u16) -> Option<()> {
    let d = put_u16(ctx, off, v)?;
    fix_check(ctx, check, d, false)
}

/// Rewrites the source or destination address (and port, if `port` is Some, in network
/// order, and the packet has ports) and fixes the IPv4 header and layer-4 checksums.
#[inline(always)]
pub fn set_addr_port(
    ctx: &XdpContext,
    pkt: &Packet,
    end: End,
    addr: &Addr16,
    port: Option<u16>,
) -> Option<()> {
    let v4 = !pkt.is_v6();
    let d = put_addr(ctx, addr_off(pkt.l3_off, v4, end), addr, v4)?;
    if v4 {
        fix_check(ctx, pkt.l3_off + 10, d, false)?;
    }
    let mut l4 = d;
    if let (Some(p), true) = (port, pkt.has_ports) {
        let off = pkt.l4_off + if end == End::Src { 0 } else { 2 };
        l4 += put_u16(ctx, off, p)?;
    }
    fix_l4(ctx, pkt, l4)
}

/// Decrements the TTL (IPv4, checksum fixed) or hop limit (IPv6). None when it would
/// reach zero: the kernel then sends the time-exceeded error.
#[inline(always)]
pub fn dec_ttl(ctx: &XdpContext, pkt: &Packet) -> Option<()> {
    match pkt.src {
        Addr::V4(_) => {
            let off = pkt.l3_off + 8;
            let [ttl, proto]: [u8; 2] = load(ctx, off)?;
            if ttl <= 1 {
                return None;
            }
            set_u16(
                ctx,
                off,
                pkt.l3_off + 10,
                u16::from_ne_bytes([ttl - 1, proto]),
            )
        }
        Addr::V6(_) => {
            // Next header and hop limit as one 2-byte access: a 1-byte bounds check
            // compiles to a `>=` form the verifier cannot use.
            let off = pkt.l3_off + 6;
            let [next, hop]: [u8; 2] = load(ctx, off)?;
            if hop <= 1 {
                return None;
            }
            store(ctx, off, [next, hop - 1])
        }
    }
}

/// Turns an echo request into its reply in place: addresses swapped, type changed,
/// checksum fixed, TTL reset. The caller swaps the MACs and transmits.
#[inline(always)]
pub fn echo_reply(ctx: &XdpContext, pkt: &Packet) -> Option<()> {
    let (v4, reply) = match pkt.src {
        Addr::V4(_) => (true, ICMP_ECHO_REPLY),
        Addr::V6(_) => (false, ICMPV6_ECHO_REPLY),
    };
    let src_off = addr_off(pkt.l3_off, v4, End::Src);
    let dst_off = addr_off(pkt.l3_off, v4, End::Dst);
    if v4 {
        let (s, d): ([u8; 4], [u8; 4]) = (load(ctx, src_off)?, load(ctx, dst_off)?);
        store(ctx, src_off, d)?;
        store(ctx, dst_off, s)?;
        // Swapping addresses keeps every checksum; the TTL word changes.
        let off = pkt.l3_off + 8;
        let [_, proto]: [u8; 2] = load(ctx, off)?;
        set_u16(ctx, off, pkt.l3_off + 10, u16::from_ne_bytes([64, proto]))?;
    } else {
        let (s, d) = (load_addr16(ctx, src_off)?, load_addr16(ctx, dst_off)?);
        put_addr(ctx, src_off, &d, false)?;
        put_addr(ctx, dst_off, &s, false)?;
        let [next, _]: [u8; 2] = load(ctx, pkt.l3_off + 6)?;
        store(ctx, pkt.l3_off + 6, [next, 64u8])?;
    }
    let [_, code]: [u8; 2] = load(ctx, pkt.l4_off)?;
    set_u16(
        ctx,
        pkt.l4_off,
        pkt.l4_off + 2,
        u16::from_ne_bytes([reply, code]),
    )
}

/// Swaps the Ethernet addresses (for a reply sent back where the request came from).
#[inline(always)]
pub fn swap_macs(ctx: &XdpContext) -> Option<()> {
    let (d, s): ([u8; 6], [u8; 6]) = (load(ctx, 0)?, load(ctx, 6)?);
    store(ctx, 0, s)?;
    store(ctx, 6, d)
}

/// Where a frame goes next.
#[derive(Default)]
pub struct Hop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// The next hop towards `dst` from the kernel's FIB, into `hop`. False if there is no
/// route or no resolved neighbour.
#[inline(always)]
pub fn route(ctx: &XdpContext, v6: bool, dst: &Addr16, hop: &mut Hop) -> bool {
    fib(ctx, v6, dst, hop) == Fib::Routed
}

/// What the FIB says of a destination.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fib {
    /// Forwarded, next hop resolved (in the hop).
    Routed,
    /// An address of this host (or broadcast, multicast): not forwarded.
    Local,
    /// Anything else (no route, no neighbour yet, forwarding off).
    Unroutable,
}

/// `route`, telling a local destination from an unroutable one.
#[inline(always)]
pub fn fib(ctx: &XdpContext, v6: bool, dst: &Addr16, hop: &mut Hop) -> Fib {
    // The parameters live in per-CPU scratch space (the stack is small), zeroed with
    // eight 8-byte stores (core::mem::zeroed becomes a byte-wise memset loop).
    let Some(scratch) = scratch() else {
        return Fib::Unroutable;
    };
    let raw_ptr = scratch.fib.as_mut_ptr();
    let mut i = 0;
    while i < 8 {
        unsafe { core::ptr::write_volatile(raw_ptr.add(i), 0) };
        i += 1;
    }
    const _: () = assert!(core::mem::size_of::<bpf_fib_lookup>() == 64);
    let p: &mut bpf_fib_lookup = unsafe { &mut *(raw_ptr as *mut bpf_fib_lookup) };
    p.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    if v6 {
        p.family = AF_INET6;
        p.__bindgen_anon_4.ipv6_dst = dst.0;
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_4.ipv4_dst = dst.0[0];
    }
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64 {
        return Fib::Local;
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Fib::Unroutable;
    }
    hop.ifindex = p.ifindex;
    hop.smac = p.smac;
    hop.dmac = p.dmac;
    Fib::Routed
}

/// Writes the MACs and sends the frame: back out of its interface, or redirected.
#[inline(always)]
pub fn emit(ctx: &XdpContext, hop: &Hop) -> Option<Verdict> {
    emit_to(ctx, hop.ifindex, &hop.smac, &hop.dmac)
}

/// `emit` with the hop's parts (from the hop cache).
#[inline(always)]
pub fn emit_to(ctx: &XdpContext, ifindex: u32, smac: &[u8; 6], dmac: &[u8; 6]) -> Option<Verdict> {
    store(ctx, 0, *dmac)?;
    store(ctx, 6, *smac)?;
    if ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        return Some(Verdict::Tx);
    }
    unsafe { bpf_redirect(ifindex, 0) };
    Some(Verdict::Redirect)
}
