//! SYN cookies in XDP, and the TCP header work the SYN-flood protection shares: the
//! header's fields and options, whole headers written in place (with their lengths and
//! checksums), and the kernel's cookie helpers (`bpf_tcp_raw_gen_syncookie_*`,
//! `bpf_tcp_raw_check_syncookie_*`), whose secret is the kernel's own: a local
//! listener takes the cookies this module makes.
//!
//! Cookies follow the kernel's timestamp encoding (net/ipv4/syncookies.c): the low six
//! bits of the SYN-ACK's timestamp carry the client's window scale (0xf: none), SACK
//! (bit 4) and ECN (bit 5, never offered here); bits 6-7 carry the index of the MSS in
//! the kernel's table (the kernel reads only the low six), so that the SYN proxy can
//! tell its backend the client's MSS. The rest is the clock in milliseconds, the
//! kernel's (`bpf_ktime_get_ns`).

use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr},
    helpers::{
        bpf_csum_diff, bpf_ktime_get_ns, bpf_tcp_raw_check_syncookie_ipv4,
        bpf_tcp_raw_check_syncookie_ipv6, bpf_tcp_raw_gen_syncookie_ipv4,
        bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail,
    },
    programs::XdpContext,
};
use lb_common::*;

use crate::{
    bounds::{
        MAX_HEADER_BYTES, frame_len, load, load_u16, load_w32, ptr_at, store, store_u16, store_w32,
    },
    parse::Packet,
    rewrite::{self, End, addr_off, delta16, delta32, put_u16},
    synflood::scratch,
};

pub const TH_FIN: u8 = 0x01;
pub const TH_SYN: u8 = 0x02;
pub const TH_RST: u8 = 0x04;
pub const TH_ACK: u8 = 0x10;

const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WS: u8 = 3;
const OPT_SACK_PERM: u8 = 4;
const OPT_SACK: u8 = 5;
const OPT_TS: u8 = 8;
/// Options walked before giving up (each NOP is one): enough for every stack's
/// layouts (Linux: MSS, SACK_PERM, TS, NOP, WS; NOP, NOP, TS, NOP, NOP, SACK).
const OPT_STEPS: usize = 12;
/// Window scales above this are taken as 14 (RFC 7323).
const MAX_WSCALE: u8 = 14;

/// The TCP header's fixed fields, in host order.
#[derive(Clone, Copy)]
pub struct Tcp {
    pub seq: u32,
    pub ack: u32,
    /// Header length in bytes (20..=60).
    pub doff: usize,
    pub flags: u8,
    pub window: u16,
}

#[inline(always)]
fn be32(ctx: &XdpContext, off: usize) -> Option<u32> {
    load_w32(ctx, off).map(u32::from_be)
}

/// The TCP header of a parsed TCP packet.
#[inline(always)]
pub fn tcp(ctx: &XdpContext, pkt: &Packet) -> Option<Tcp> {
    let l4 = pkt.l4_off;
    let [off, flags]: [u8; 2] = load(ctx, l4 + 12)?;
    let doff = (off >> 4) as usize * 4;
    if doff < TCP_MIN_HLEN {
        return None;
    }
    Some(Tcp {
        seq: be32(ctx, l4 + 4)?,
        ack: be32(ctx, l4 + 8)?,
        doff,
        flags,
        window: u16::from_be(load_u16(ctx, l4 + 14)?),
    })
}

/// What a client's SYN offers.
#[derive(Clone, Copy)]
pub struct SynOpts {
    pub mss: u16,
    /// SYN_WS_NONE: no window scaling.
    pub ws: u8,
    pub sack: bool,
    pub ts: bool,
    pub tsval: u32,
}

/// The options of a SYN (a bounded walk; what lies past OPT_STEPS options is not
/// read).
#[inline(always)]
pub fn syn_options(ctx: &XdpContext, pkt: &Packet, doff: usize) -> SynOpts {
    let mut o = SynOpts {
        mss: 536,
        ws: SYN_WS_NONE,
        sack: false,
        ts: false,
        tsval: 0,
    };
    if walk_options(ctx, pkt.l4_off, doff) == 0 {
        return o;
    }
    let Some(s) = scratch() else {
        return o;
    };
    let w = &s.walk;
    o.mss = w.mss;
    o.ws = w.ws;
    o.sack = w.sack_perm != 0;
    let ts = w.ts as usize;
    if ts != 0
        && let Some(b) = load::<[u8; 4]>(ctx, ts)
    {
        o.ts = true;
        o.tsval = u32::from_be_bytes(b);
    }
    o
}

/// Where a data segment's timestamp and SACK blocks are (offsets in the frame; 0:
/// none), packed: the timestamp value's offset in bits 0-15, the first SACK block's in
/// bits 16-31, the number of blocks in bits 32-39.
#[inline(never)]
pub fn scan_options(ctx: &XdpContext, l4: usize, doff: usize) -> u64 {
    // The layout every Linux segment with timestamps has: NOP, NOP, TS.
    if doff == TCP_MIN_HLEN + 12
        && let Some([1, 1, OPT_TS, 10]) = load::<[u8; 4]>(ctx, l4 + 20)
    {
        return (l4 + 24) as u64;
    }
    if walk_options(ctx, l4, doff) == 0 {
        return 0;
    }
    let Some(s) = scratch() else {
        return 0;
    };
    let w = &s.walk;
    w.ts as u64 | (w.sack as u64) << 16 | (w.blocks as u64) << 32
}

/// What `walk_options` found (in scratch space).
#[repr(C)]
pub struct Walk {
    /// The walk's position and end (kept in memory, not registers: the verifier then
    /// sees one state per step instead of one per way of getting there).
    pub off: u64,
    pub end: u64,
    pub mss: u16,
    pub ws: u8,
    pub sack_perm: u8,
    /// Offsets of the timestamp value and of the first SACK block (0: none).
    pub ts: u32,
    pub sack: u32,
    pub blocks: u32,
}

/// Walks the options of the TCP header at `l4` (`doff` bytes) into scratch.walk; 0 if
/// there is no scratch space.
#[inline(never)]
pub fn walk_options(ctx: &XdpContext, l4: usize, doff: usize) -> u32 {
    let Some(s) = scratch() else {
        return 0;
    };
    let w = &mut s.walk;
    w.mss = 536;
    w.ws = SYN_WS_NONE;
    w.sack_perm = 0;
    w.ts = 0;
    w.sack = 0;
    w.blocks = 0;
    unsafe {
        core::ptr::write_volatile(&mut w.off, (l4 + TCP_MIN_HLEN) as u64);
        core::ptr::write_volatile(&mut w.end, (l4 + doff) as u64);
    }
    for _ in 0..OPT_STEPS {
        let (off, end) = unsafe {
            (
                core::ptr::read_volatile(&w.off) as usize,
                core::ptr::read_volatile(&w.end) as usize,
            )
        };
        if off >= end || end > MAX_HEADER_BYTES {
            break;
        }
        let Some([kind, len]) = load::<[u8; 2]>(ctx, off) else {
            break;
        };
        if kind == OPT_EOL {
            break;
        }
        let len = if kind == OPT_NOP { 1 } else { len as usize };
        if len == 0 || (kind != OPT_NOP && len < 2) || off + len > end {
            break;
        }
        match (kind, len) {
            (OPT_MSS, 4) => {
                if let Some(b) = load::<[u8; 4]>(ctx, off) {
                    w.mss = u16::from_be_bytes([b[2], b[3]]);
                }
            }
            (OPT_WS, 3) => {
                if let Some(b) = load::<[u8; 3]>(ctx, off) {
                    w.ws = if b[2] > MAX_WSCALE { MAX_WSCALE } else { b[2] };
                }
            }
            (OPT_SACK_PERM, 2) => w.sack_perm = 1,
            (OPT_TS, 10) => w.ts = (off + 2) as u32,
            (OPT_SACK, 10 | 18 | 26 | 34) => {
                w.sack = (off + 2) as u32;
                w.blocks = ((len - 2) / 8) as u32;
            }
            _ => {}
        }
        unsafe { core::ptr::write_volatile(&mut w.off, (off + len) as u64) };
    }
    1
}

/// The checksum delta of replacing 4 bytes at `off` (`old` and `new` in host order)
/// within a TCP header that starts at `l4`: a field at an odd distance from the header
/// straddles its 16-bit words, and its sum is the byte-swapped one (RFC 1071).
#[inline(always)]
fn delta_at(d: u32, l4: usize, off: usize, old: u32, new: u32) -> u32 {
    let x = delta32(0, old.to_be(), new.to_be());
    let x = (x & 0xffff) + (x >> 16);
    let x = (x & 0xffff) + (x >> 16);
    if (off - l4) & 1 == 0 {
        d + x
    } else {
        d + ((x as u16).swap_bytes() as u32)
    }
}

/// Adds `by` to the big-endian 32-bit word at `off` (any alignment); returns the
/// checksum delta.
#[inline(always)]
pub fn add32(ctx: &XdpContext, l4: usize, off: usize, by: u32, d: u32) -> Option<u32> {
    let old = u32::from_be_bytes(load::<[u8; 4]>(ctx, off)?);
    let new = old.wrapping_add(by);
    store(ctx, off, new.to_be_bytes())?;
    Some(delta_at(d, l4, off, old, new))
}

/// The window field rewritten by `shl` then `shr` (capped at 65535, at least 1 if it
/// was not 0); returns the checksum delta.
#[inline(always)]
pub fn shift_window(ctx: &XdpContext, l4: usize, shl: u8, shr: u8, d: u32) -> Option<u32> {
    if shl == 0 && shr == 0 {
        return Some(d);
    }
    let old = load_u16(ctx, l4 + 14)?;
    let w = ((u16::from_be(old) as u32) << (shl & 15)) >> (shr & 15);
    let w = if w > 0xffff {
        0xffff
    } else if w == 0 && old != 0 {
        1
    } else {
        w
    };
    let new = (w as u16).to_be();
    store_u16(ctx, l4 + 14, new)?;
    Some(delta16(d, old, new))
}

/// The clock the kernel's TCP timestamps use, in milliseconds.
#[inline(always)]
pub fn now_ms() -> u32 {
    (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32
}

/// The timestamp a cookie SYN-ACK sends: the clock, then the client's options.
#[inline(always)]
pub fn cookie_ts(o: &SynOpts, mss_index: u8) -> u32 {
    let mut t = (now_ms() & !0xff) | (mss_index as u32 & 3) << SYN_OPT_MSS_SHIFT;
    t |= (o.ws & SYN_OPT_WS_MASK) as u32;
    if o.sack {
        t |= SYN_OPT_SACK as u32;
    }
    t
}

/// The index of `mss` in the kernel's cookie table of the family (3 if not found).
#[inline(always)]
pub fn mss_index(v6: bool, mss: u16) -> u8 {
    let t = if v6 { MSS_TABLE_V6 } else { MSS_TABLE_V4 };
    if mss == t[0] {
        0
    } else if mss == t[1] {
        1
    } else if mss == t[2] {
        2
    } else {
        3
    }
}

#[inline(always)]
pub fn mss_of(v6: bool, index: u8) -> u16 {
    let t = if v6 { MSS_TABLE_V6 } else { MSS_TABLE_V4 };
    match index & 3 {
        0 => t[0],
        1 => t[1],
        2 => t[2],
        _ => t[3],
    }
}

/// Copies the TCP header (`doff` bytes) into scratch space for the cookie helpers.
#[inline(always)]
fn copy_header(ctx: &XdpContext, l4: usize, doff: usize) -> Option<()> {
    let s = scratch()?;
    let mut i = 0;
    while i < 15 {
        if i * 4 >= doff {
            break;
        }
        s.tcp[i] = load_w32(ctx, l4 + 4 * i)?;
        i += 1;
    }
    Some(())
}

/// The kernel's cookie for this SYN and the MSS it encodes (the client's, rounded
/// down to the kernel's table).
#[inline(never)]
pub fn gen_cookie(ctx: &XdpContext, pkt: &Packet, doff: usize) -> u64 {
    gen_inner(ctx, pkt, doff).unwrap_or(0)
}

#[inline(always)]
fn gen_inner(ctx: &XdpContext, pkt: &Packet, doff: usize) -> Option<u64> {
    if !(TCP_MIN_HLEN..=60).contains(&doff) {
        return None;
    }
    copy_header(ctx, pkt.l4_off, doff)?;
    let th = scratch()?.tcp.as_mut_ptr() as *mut tcphdr;
    let len = (doff & 0x3c) as u32;
    let r = if pkt.is_v6() {
        let ip = ptr_at::<[u8; IPV6_HLEN]>(ctx, pkt.l3_off)? as *mut ipv6hdr;
        unsafe { bpf_tcp_raw_gen_syncookie_ipv6(ip, th, len) }
    } else {
        let ip = ptr_at::<[u8; IPV4_MIN_HLEN]>(ctx, pkt.l3_off)? as *mut iphdr;
        unsafe { bpf_tcp_raw_gen_syncookie_ipv4(ip, th, len) }
    };
    if r < 0 {
        return None;
    }
    Some(r as u64 | 1 << 63)
}

/// Whether the packet's ACK number is the kernel's cookie for its sequence number less
/// one (a client's third ACK), or, with `seq_fix` and `ack`, for a header with those
/// numbers instead (a zero-window probe, a dsr reset): checked by the kernel helper
/// against its last two minutes' secrets.
#[inline(never)]
pub fn check_cookie(ctx: &XdpContext, pkt: &Packet, seq: u32, ack: u32, fake: bool) -> bool {
    check_inner(ctx, pkt, seq, ack, fake).is_some()
}

#[inline(always)]
fn check_inner(ctx: &XdpContext, pkt: &Packet, seq: u32, ack: u32, fake: bool) -> Option<()> {
    let th = if fake {
        copy_header(ctx, pkt.l4_off, TCP_MIN_HLEN)?;
        let s = scratch()?;
        s.tcp[1] = seq.to_be();
        s.tcp[2] = ack.to_be();
        s.tcp.as_mut_ptr() as *mut tcphdr
    } else {
        ptr_at::<[u8; TCP_MIN_HLEN]>(ctx, pkt.l4_off)? as *mut tcphdr
    };
    let r = if pkt.is_v6() {
        let ip = ptr_at::<[u8; IPV6_HLEN]>(ctx, pkt.l3_off)? as *mut ipv6hdr;
        unsafe { bpf_tcp_raw_check_syncookie_ipv6(ip, th) }
    } else {
        let ip = ptr_at::<[u8; IPV4_MIN_HLEN]>(ctx, pkt.l3_off)? as *mut iphdr;
        unsafe { bpf_tcp_raw_check_syncookie_ipv4(ip, th) }
    };
    (r == 0).then_some(())
}

/// A dsr cookie: the kernel's cookie for a SYN of this packet's ends with sequence
/// number 0 and no options (made from the SYN, checked from the client's reset, which
/// carries it as its sequence number).
#[inline(never)]
pub fn gen_dsr_cookie(ctx: &XdpContext, pkt: &Packet) -> u64 {
    dsr_inner(ctx, pkt).unwrap_or(0)
}

#[inline(always)]
fn dsr_inner(ctx: &XdpContext, pkt: &Packet) -> Option<u64> {
    copy_header(ctx, pkt.l4_off, TCP_MIN_HLEN)?;
    let s = scratch()?;
    s.tcp[1] = 0;
    s.tcp[2] = 0;
    // Data offset 5, SYN; window and the rest kept (the cookie does not cover them).
    s.tcp[3] = (s.tcp[3] & 0xffff_0000) | u16::from_ne_bytes([5 << 4, TH_SYN]) as u32;
    let th = s.tcp.as_mut_ptr() as *mut tcphdr;
    let r = if pkt.is_v6() {
        let ip = ptr_at::<[u8; IPV6_HLEN]>(ctx, pkt.l3_off)? as *mut ipv6hdr;
        unsafe { bpf_tcp_raw_gen_syncookie_ipv6(ip, th, TCP_MIN_HLEN as u32) }
    } else {
        let ip = ptr_at::<[u8; IPV4_MIN_HLEN]>(ctx, pkt.l3_off)? as *mut iphdr;
        unsafe { bpf_tcp_raw_gen_syncookie_ipv4(ip, th, TCP_MIN_HLEN as u32) }
    };
    if r < 0 {
        return None;
    }
    Some(r as u64 | 1 << 63)
}

/// A TCP header to write (`write_header`): fields in host order, options as
/// big-endian words.
pub struct Header {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

/// The option words of a handshake segment: MSS, then with timestamps SACK-permitted
/// (or two NOPs), the timestamp, and the window scale (unless SYN_WS_NONE). Written
/// into scratch.out from word 5; returns the header length.
#[inline(always)]
pub fn handshake_options(mss: u16, sack: bool, ts: Option<(u32, u32)>, ws: u8) -> usize {
    let Some(s) = scratch() else {
        return 0;
    };
    s.out[5] = (2u32 << 24 | 4 << 16 | mss as u32).to_be();
    let Some((tsval, tsecr)) = ts else {
        return 24;
    };
    s.out[6] = if sack {
        (4u32 << 24 | 2 << 16 | 8 << 8 | 10).to_be()
    } else {
        (1u32 << 24 | 1 << 16 | 8 << 8 | 10).to_be()
    };
    s.out[7] = tsval.to_be();
    s.out[8] = tsecr.to_be();
    if ws == SYN_WS_NONE {
        return 36;
    }
    s.out[9] = (1u32 << 24 | 3 << 16 | 3 << 8 | ws as u32).to_be();
    40
}

/// The options of a segment after the handshake: the timestamp (NOP, NOP, TS), if any.
/// Returns the header length.
#[inline(always)]
pub fn ack_options(ts: Option<(u32, u32)>) -> usize {
    let (Some(s), Some((tsval, tsecr))) = (scratch(), ts) else {
        return TCP_MIN_HLEN;
    };
    s.out[5] = (1u32 << 24 | 1 << 16 | 8 << 8 | 10).to_be();
    s.out[6] = tsval.to_be();
    s.out[7] = tsecr.to_be();
    32
}

/// Replaces the packet's TCP header and payload with `h` and the option words already
/// in scratch.out (header length `len`): the frame's tail is cut or grown, the IP
/// length fixed, and the TCP checksum computed over the addresses the packet has. With
/// `back`, the frame goes back where it came from: addresses and MACs swapped, TTL or
/// hop limit 64.
#[inline(never)]
pub fn write_header(ctx: &XdpContext, pkt: &Packet, h: &Header, len: usize, back: bool) -> u32 {
    match write_inner(ctx, pkt, h, len, back) {
        Some(()) => 1,
        None => 0,
    }
}

#[inline(always)]
fn write_inner(ctx: &XdpContext, pkt: &Packet, h: &Header, len: usize, back: bool) -> Option<()> {
    if !(TCP_MIN_HLEN..=40).contains(&len) {
        return None;
    }
    let l4 = pkt.l4_off;
    let delta = (l4 + len) as i32 - frame_len(ctx) as i32;
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return None;
    }
    let v4 = !pkt.is_v6();
    let l3 = pkt.l3_off;
    if back {
        swap_addrs(ctx, l3, v4)?;
        rewrite::swap_macs(ctx)?;
    }
    if v4 {
        let total = (l4 - l3 + len) as u16;
        let mut d = put_u16(ctx, l3 + 2, total.to_be())?;
        if back {
            let [_, proto]: [u8; 2] = load(ctx, l3 + 8)?;
            d += put_u16(ctx, l3 + 8, u16::from_ne_bytes([64, proto]))?;
        }
        rewrite::fix_check(ctx, l3 + 10, d, false)?;
    } else {
        let payload = (l4 - l3 - IPV6_HLEN + len) as u16;
        store_u16(ctx, l3 + 4, payload.to_be())?;
        if back {
            let [next, _]: [u8; 2] = load(ctx, l3 + 6)?;
            store(ctx, l3 + 6, [next, 64u8])?;
        }
    }
    let s = scratch()?;
    s.out[0] = ((h.sport as u32) << 16 | h.dport as u32).to_be();
    s.out[1] = h.seq.to_be();
    s.out[2] = h.ack.to_be();
    s.out[3] = (((len / 4) as u32) << 28 | (h.flags as u32) << 16 | h.window as u32).to_be();
    s.out[4] = 0;
    let n = (len & 0x3c) as u32;
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            s.out.as_mut_ptr(),
            n,
            pseudo_sum(ctx, l3, v4, len)?,
        )
    };
    if sum < 0 {
        return None;
    }
    let mut c = sum as u64;
    c = (c & 0xffff) + (c >> 16);
    c = (c & 0xffff) + (c >> 16);
    c = (c & 0xffff) + (c >> 16);
    s.out[4] = (!(c as u16)) as u32;
    let mut i = 0;
    while i < 10 {
        if i * 4 >= len {
            break;
        }
        store_w32(ctx, l4 + 4 * i, s.out[i])?;
        i += 1;
    }
    Some(())
}

/// The pseudo-header's sum (addresses as the packet has them, protocol, length).
#[inline(always)]
fn pseudo_sum(ctx: &XdpContext, l3: usize, v4: bool, len: usize) -> Option<u32> {
    let mut d = ((IPPROTO_TCP as u32) << 8) + (len as u16).swap_bytes() as u32;
    let n = if v4 { 2 } else { 8 };
    let start = addr_off(l3, v4, End::Src);
    let mut i = 0;
    while i < 8 {
        if i == n {
            break;
        }
        let w = load_w32(ctx, start + 4 * i)?;
        d += (w & 0xffff) + (w >> 16);
        i += 1;
    }
    Some(d)
}

/// Swaps the source and destination addresses (no checksum changes).
#[inline(always)]
fn swap_addrs(ctx: &XdpContext, l3: usize, v4: bool) -> Option<()> {
    let (s, d) = (addr_off(l3, v4, End::Src), addr_off(l3, v4, End::Dst));
    let n = if v4 { 1 } else { 4 };
    let mut i = 0;
    while i < 4 {
        if i == n {
            break;
        }
        let a = load_w32(ctx, s + 4 * i)?;
        let b = load_w32(ctx, d + 4 * i)?;
        store_w32(ctx, s + 4 * i, b)?;
        store_w32(ctx, d + 4 * i, a)?;
        i += 1;
    }
    Some(())
}

/// The reply to a client's SYN: a SYN-ACK with sequence number `seq`, ACK number `ack`,
/// window `window`, and, for a cookie, the handshake options (`opts`: the client's;
/// `conf`: what xlb announces). Written in place and sent back.
#[inline(always)]
pub fn synack(
    ctx: &XdpContext,
    pkt: &Packet,
    seq: u32,
    ack: u32,
    window: u16,
    opts: Option<(&SynOpts, &SynConf, u8)>,
) -> Option<()> {
    let len = match opts {
        None => TCP_MIN_HLEN,
        Some((o, conf, idx)) => {
            let mss = if pkt.is_v6() { conf.mss6 } else { conf.mss4 };
            let ts = (o.ts && conf.timestamps != 0).then(|| (cookie_ts(o, idx), o.tsval));
            let sack = o.sack && ts.is_some();
            let ws = if ts.is_some() && o.ws != SYN_WS_NONE {
                conf.wscale
            } else {
                SYN_WS_NONE
            };
            handshake_options(mss, sack, ts, ws)
        }
    };
    let h = Header {
        sport: pkt.dst_port,
        dport: pkt.src_port,
        seq,
        ack,
        flags: TH_SYN | TH_ACK,
        window,
    };
    (write_header(ctx, pkt, &h, len, true) == 1).then_some(())
}
