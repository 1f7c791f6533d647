//! Stage 4: rewrite a packet for its backend (or its client) and send it out: address
//! and port rewrites with incremental checksums (RFC 1624), TTL, MACs from the kernel's
//! FIB, echo replies.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{Addr16, Verdict};

use crate::{
    bounds::{load, store},
    maps::XLB_SCRATCH,
    parse::{Addr, IPPROTO_TCP, IPPROTO_UDP, Packet},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// The checksum `check` after the 16-bit words `old` became `new` (all as stored in
/// the packet, so byte order does not matter).
#[inline(always)]
fn csum_replace<const N: usize>(check: u16, old: &[u16; N], new: &[u16; N]) -> u16 {
    let mut sum = (!check) as u32;
    let mut i = 0;
    while i < N {
        sum += (!old[i]) as u32 + new[i] as u32;
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn words<const B: usize, const N: usize>(b: &[u8; B]) -> [u16; N] {
    let mut w = [0u16; N];
    let mut i = 0;
    while i < N {
        w[i] = u16::from_ne_bytes([b[2 * i], b[2 * i + 1]]);
        i += 1;
    }
    w
}

/// Offset of the TCP or UDP checksum; None for UDP over IPv4 without one.
#[inline(always)]
fn l4_check_off(ctx: &XdpContext, pkt: &Packet) -> Option<Option<usize>> {
    match pkt.proto {
        IPPROTO_TCP => Some(Some(pkt.l4_off + 16)),
        IPPROTO_UDP => {
            let off = pkt.l4_off + 6;
            let zero = load::<u16>(ctx, off)? == 0;
            Some(if zero && matches!(pkt.src, Addr::V4(_)) {
                None
            } else {
                Some(off)
            })
        }
        _ => Some(None),
    }
}

#[inline(always)]
fn fix_l4<const N: usize>(
    ctx: &XdpContext,
    pkt: &Packet,
    old: &[u16; N],
    new: &[u16; N],
) -> Option<()> {
    if let Some(off) = l4_check_off(ctx, pkt)? {
        let mut c = csum_replace(load::<u16>(ctx, off)?, old, new);
        if c == 0 && pkt.proto == IPPROTO_UDP {
            c = 0xffff;
        }
        store(ctx, off, c)?;
    }
    Some(())
}

/// Rewrites the source or destination address (and port, if `port` is Some, in network
/// order) and fixes the IPv4 header and TCP/UDP checksums.
#[inline(always)]
pub fn set_addr_port(
    ctx: &XdpContext,
    pkt: &Packet,
    end: End,
    addr: &Addr16,
    port: Option<u16>,
) -> Option<()> {
    match pkt.src {
        Addr::V4(_) => {
            let off = pkt.l3_off + if end == End::Src { 12 } else { 16 };
            let old: [u8; 4] = load(ctx, off)?;
            let new = [addr[0], addr[1], addr[2], addr[3]];
            let (ow, nw): ([u16; 2], [u16; 2]) = (words(&old), words(&new));
            let hc = pkt.l3_off + 10;
            store(ctx, hc, csum_replace(load::<u16>(ctx, hc)?, &ow, &nw))?;
            fix_l4(ctx, pkt, &ow, &nw)?;
            store(ctx, off, new)?;
        }
        Addr::V6(_) => {
            let off = pkt.l3_off + if end == End::Src { 8 } else { 24 };
            let old: [u8; 16] = load(ctx, off)?;
            let (ow, nw): ([u16; 8], [u16; 8]) = (words(&old), words(addr));
            fix_l4(ctx, pkt, &ow, &nw)?;
            store(ctx, off, *addr)?;
        }
    }
    if let Some(p) = port {
        let off = pkt.l4_off + if end == End::Src { 0 } else { 2 };
        let old: u16 = load(ctx, off)?;
        fix_l4(ctx, pkt, &[old], &[p])?;
        store(ctx, off, p)?;
    }
    Some(())
}

/// Rewrites the 16-bit word at `off` and the checksum at `check` that covers it.
#[inline(always)]
fn set_word(ctx: &XdpContext, off: usize, check: usize, new: [u8; 2]) -> Option<()> {
    let old: [u8; 2] = load(ctx, off)?;
    let c = csum_replace::<1>(load::<u16>(ctx, check)?, &words(&old), &words(&new));
    store(ctx, check, c)?;
    store(ctx, off, new)
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
            set_word(ctx, off, pkt.l3_off + 10, [ttl - 1, proto])
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
    let (src_off, dst_off, reply) = match pkt.src {
        Addr::V4(_) => (pkt.l3_off + 12, pkt.l3_off + 16, 0u8),
        Addr::V6(_) => (pkt.l3_off + 8, pkt.l3_off + 24, 129u8),
    };
    match pkt.src {
        Addr::V4(_) => {
            let (s, d): ([u8; 4], [u8; 4]) = (load(ctx, src_off)?, load(ctx, dst_off)?);
            store(ctx, src_off, d)?;
            store(ctx, dst_off, s)?;
            // Swapping addresses keeps every checksum; the TTL word changes.
            let off = pkt.l3_off + 8;
            let [_, proto]: [u8; 2] = load(ctx, off)?;
            set_word(ctx, off, pkt.l3_off + 10, [64, proto])?;
        }
        Addr::V6(_) => {
            let (s, d): ([u8; 16], [u8; 16]) = (load(ctx, src_off)?, load(ctx, dst_off)?);
            store(ctx, src_off, d)?;
            store(ctx, dst_off, s)?;
            let [next, _]: [u8; 2] = load(ctx, pkt.l3_off + 6)?;
            store(ctx, pkt.l3_off + 6, [next, 64u8])?;
        }
    }
    let [_, code]: [u8; 2] = load(ctx, pkt.l4_off)?;
    set_word(ctx, pkt.l4_off, pkt.l4_off + 2, [reply, code])
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
    // The parameters live in per-CPU scratch space (the stack is small), zeroed with
    // eight 8-byte stores (core::mem::zeroed becomes a byte-wise memset loop).
    let Some(scratch) = XLB_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let raw_ptr = unsafe { (*scratch).fib.as_mut_ptr() };
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
        let mut d = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            d[i] = u32::from_ne_bytes([dst[4 * i], dst[4 * i + 1], dst[4 * i + 2], dst[4 * i + 3]]);
            i += 1;
        }
        p.__bindgen_anon_4.ipv6_dst = d;
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    }
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return false;
    }
    hop.ifindex = p.ifindex;
    hop.smac = p.smac;
    hop.dmac = p.dmac;
    true
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
