//! The SYN proxy of nat and fullnat services: once a client proved its cookie, xlb
//! opens the connection to the backend itself and translates the rest of it, so the
//! backend never sees a SYN that did not come from a real client.
//!
//! The state is the flow entry's `syn` (lb_common::SynFlow): no other map, no lookup
//! per packet. The handshake, all in place on the packets that arrive:
//! 1. the client's SYN gets a cookie SYN-ACK with a zero window (synflood): the client
//!    sends nothing but its ACK until xlb knows the backend's sequence numbers;
//! 2. the client's ACK (the cookie proven) makes the flow and becomes the SYN to the
//!    backend, with the client's sequence number and options (MSS, window scale and
//!    SACK from the cookie's timestamp, the client's timestamp);
//! 3. the backend's SYN-ACK becomes an ACK to the client that opens its window: from
//!    then on the backend's sequence numbers lose, and the client's ACK numbers and
//!    SACK blocks gain, the difference between the backend's ISN and the cookie;
//!    timestamps likewise; windows are rescaled if the backend's scale is not xlb's;
//! 4. the client's first segment (its request) completes the backend's handshake. A
//!    server that speaks first waits for its SYN-ACK's retransmission, which xlb
//!    answers with the ACK itself.
//!
//! Until the backend answers, the client's ACKs and window probes make xlb send the
//! SYN again (its retransmission); its other segments are dropped.

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use crate::{
    bounds::load,
    maps::{XLB_FLOWS, XLB_SERVICE_KEYS},
    parse::Packet,
    syncookie::{
        self, Header, TH_ACK, TH_RST, TH_SYN, Tcp, ack_options, add32, handshake_options, mss_of,
        scan_options, shift_window, syn_options, write_header,
    },
    synflood::{XLB_SYN_CONF, XLB_SYN_STATS, scratch, unpack_scan},
};

/// The packet goes on (rewritten or translated).
pub const CONTINUE: u32 = u32::MAX;

#[inline(always)]
fn pack(v: Verdict, r: Reason) -> u32 {
    (v as u32) << 16 | r as u32
}

#[inline(always)]
fn bump_proxied(slot: u32, resent: bool) {
    if let Some(s) = XLB_SYN_STATS.get_ptr_mut(slot) {
        let s = unsafe { &mut *s };
        if resent {
            s.syn_resent += 1;
        } else {
            s.proxied += 1;
        }
    }
}

/// The client's timestamp value in this segment, if it has one.
#[inline(always)]
fn tsval_of(ctx: &XdpContext, pkt: &Packet, t: &Tcp) -> Option<u32> {
    let (ts, _, _) = unpack_scan(scan_options(ctx, pkt.l4_off, t.doff));
    if ts == 0 {
        return None;
    }
    load::<[u8; 4]>(ctx, ts).map(u32::from_be_bytes)
}

/// Whether the segment carries data (by the IP header's length: a short frame may
/// be padded).
#[inline(always)]
fn has_payload(ctx: &XdpContext, pkt: &Packet, doff: usize) -> bool {
    let end = if pkt.is_v6() {
        crate::bounds::load_u16(ctx, pkt.l3_off + 4)
            .map(|n| pkt.l3_off + IPV6_HLEN + u16::from_be(n) as usize)
    } else {
        crate::bounds::load_u16(ctx, pkt.l3_off + 2).map(|n| pkt.l3_off + u16::from_be(n) as usize)
    };
    end.is_some_and(|e| e > pkt.l4_off + doff)
}

/// Turns a client's ACK (or window probe) of a proven connection into the SYN to the
/// backend. The caller sends it on like any packet of the flow.
#[inline(never)]
pub fn syn_to_backend(ctx: &XdpContext, pkt: &Packet, syn: &SynFlow) -> u32 {
    match to_backend_inner(ctx, pkt, syn) {
        Some(()) => CONTINUE,
        None => pack(Verdict::Drop, Reason::SynNoFlow),
    }
}

#[inline(always)]
fn to_backend_inner(ctx: &XdpContext, pkt: &Packet, syn: &SynFlow) -> Option<()> {
    let t = syncookie::tcp(ctx, pkt)?;
    let ws = syn.opts & SYN_OPT_WS_MASK;
    let ts = if syn.opts & SYN_OPT_TS != 0 {
        tsval_of(ctx, pkt, &t).map(|v| (v, 0))
    } else {
        None
    };
    let mss = mss_of(pkt.is_v6(), syn.opts >> SYN_OPT_MSS_SHIFT);
    let sack = syn.opts & SYN_OPT_SACK != 0 && ts.is_some();
    let len = handshake_options(mss, sack, ts, if ts.is_some() { ws } else { SYN_WS_NONE });
    // A SYN's window is not scaled.
    let shift = if ws == SYN_WS_NONE { 0 } else { ws & 15 };
    let win = (t.window as u32) << shift;
    let h = Header {
        sport: pkt.src_port,
        dport: pkt.dst_port,
        seq: syn.isn.wrapping_sub(1),
        ack: 0,
        flags: TH_SYN,
        window: if win > 0xffff { 0xffff } else { win as u16 },
    };
    (write_header(ctx, pkt, &h, len, false) == 1).then_some(())
}

/// A client's segment of a flow the SYN proxy made (`f`): before the backend answered,
/// an ACK sends the SYN again and anything else is dropped; after, its ACK number,
/// SACK blocks and timestamp echo are translated, and its window rescaled if need be.
#[inline(never)]
pub fn from_client(ctx: &XdpContext, pkt: &Packet, f: &Flow) -> u32 {
    let Some(t) = syncookie::tcp(ctx, pkt) else {
        return pack(Verdict::Drop, Reason::BadL4);
    };
    if f.syn.state == SYN_FLOW_SYN_SENT {
        // A bare ACK (or window probe) only: data waits for the backend's answer.
        if t.flags & (TH_SYN | TH_RST | TH_ACK | syncookie::TH_FIN) != TH_ACK
            || has_payload(ctx, pkt, t.doff)
        {
            return pack(Verdict::Drop, Reason::SynNoFlow);
        }
        bump_proxied(f.service, true);
        return syn_to_backend(ctx, pkt, &f.syn);
    }
    match translate_client(ctx, pkt, &t, &f.syn) {
        Some(()) => CONTINUE,
        None => pack(Verdict::Drop, Reason::BadL4),
    }
}

#[inline(always)]
fn translate_client(ctx: &XdpContext, pkt: &Packet, t: &Tcp, s: &SynFlow) -> Option<()> {
    let l4 = pkt.l4_off;
    let mut d = 0u32;
    if t.flags & TH_ACK != 0 {
        d = add32(ctx, l4, l4 + 8, s.seq, d)?;
    }
    if t.doff > TCP_MIN_HLEN {
        let (ts, sack, blocks) = unpack_scan(scan_options(ctx, l4, t.doff));
        if ts != 0 {
            d = add32(ctx, l4, ts + 4, s.ts, d)?;
        }
        if sack != 0 {
            let mut i = 0;
            while i < 4 {
                if i == blocks {
                    break;
                }
                d = add32(ctx, l4, sack + 8 * i, s.seq, d)?;
                d = add32(ctx, l4, sack + 8 * i + 4, s.seq, d)?;
                i += 1;
            }
        }
    }
    d = shift_window(ctx, l4, s.c2b_shl, 0, d)?;
    crate::rewrite::fix_check(ctx, l4 + 16, d, false)
}

/// A backend's segment of a flow the SYN proxy made (`f`, its forward or reply entry,
/// or a copy): its SYN-ACK opens the client's window (or, sent again, is answered
/// with the ACK itself); later segments are translated. CONTINUE: on to the client.
#[inline(never)]
pub fn from_backend(ctx: &XdpContext, pkt: &Packet, f: &Flow) -> u32 {
    let Some(t) = syncookie::tcp(ctx, pkt) else {
        return pack(Verdict::Drop, Reason::BadL4);
    };
    let synack = t.flags & (TH_SYN | TH_ACK) == TH_SYN | TH_ACK;
    if f.syn.state == SYN_FLOW_SYN_SENT {
        if synack {
            return match opened(ctx, pkt, &t, f) {
                Some(()) => {
                    bump_proxied(f.service, false);
                    CONTINUE
                }
                None => pack(Verdict::Drop, Reason::SynNoFlow),
            };
        }
        if t.flags & TH_RST != 0 {
            // The backend refused: the client gets the reset in its own numbers.
            let l4 = pkt.l4_off;
            let d = add32(
                ctx,
                l4,
                l4 + 4,
                f.syn.seq.wrapping_add(1).wrapping_sub(t.seq),
                0,
            );
            return match d.and_then(|d| crate::rewrite::fix_check(ctx, l4 + 16, d, false)) {
                Some(()) => CONTINUE,
                None => pack(Verdict::Drop, Reason::BadL4),
            };
        }
        return pack(Verdict::Drop, Reason::SynNoFlow);
    }
    if synack {
        return match ack_backend(ctx, pkt, &t) {
            Some(()) => pack(Verdict::Tx, Reason::SynProxy),
            None => pack(Verdict::Drop, Reason::BadL4),
        };
    }
    match translate_backend(ctx, pkt, &t, &f.syn) {
        Some(()) => CONTINUE,
        None => pack(Verdict::Drop, Reason::BadL4),
    }
}

#[inline(always)]
fn translate_backend(ctx: &XdpContext, pkt: &Packet, t: &Tcp, s: &SynFlow) -> Option<()> {
    let l4 = pkt.l4_off;
    let mut d = add32(ctx, l4, l4 + 4, 0u32.wrapping_sub(s.seq), 0)?;
    if t.doff > TCP_MIN_HLEN {
        let (ts, _, _) = unpack_scan(scan_options(ctx, l4, t.doff));
        if ts != 0 {
            d = add32(ctx, l4, ts, 0u32.wrapping_sub(s.ts), d)?;
        }
    }
    d = shift_window(ctx, l4, s.b2c & 15, s.b2c >> 4, d)?;
    crate::rewrite::fix_check(ctx, l4 + 16, d, false)
}

/// The backend's first SYN-ACK: the translation is set in the flow's entries and the
/// segment becomes the ACK that opens the client's window.
#[inline(always)]
fn opened(ctx: &XdpContext, pkt: &Packet, t: &Tcp, f: &Flow) -> Option<()> {
    if t.ack != f.syn.isn {
        return None;
    }
    let b = syn_options(ctx, pkt, t.doff);
    let our_ws = XLB_SYN_CONF
        .get(f.service)
        .map_or(DEFAULT_WSCALE, |c| c.wscale);
    let cws = f.syn.opts & SYN_OPT_WS_MASK;
    let client_scaled = cws != SYN_WS_NONE && f.syn.opts & SYN_OPT_TS != 0;
    let backend_scaled = client_scaled && b.ws != SYN_WS_NONE;
    let ows = if client_scaled { our_ws & 15 } else { 0 };
    let bws = if backend_scaled { b.ws & 15 } else { 0 };
    let client_ts = f.syn.opts & SYN_OPT_TS != 0;
    let mut s = f.syn;
    s.state = SYN_FLOW_OPEN;
    s.c2b_shl = if client_scaled && !backend_scaled {
        cws & 15
    } else {
        0
    };
    s.b2c = if bws >= ows {
        bws - ows
    } else {
        (ows - bws) << 4
    };
    // `seq` and `ts` held the cookie and xlb's timestamp: now the differences.
    let cookie = f.syn.seq;
    s.seq = t.seq.wrapping_sub(cookie);
    let ts = if client_ts && b.ts {
        s.ts = b.tsval.wrapping_sub(f.syn.ts);
        Some((f.syn.ts, tsecr_of(ctx, pkt, t)?))
    } else {
        s.ts = 0;
        None
    };
    record(pkt, f, &s)?;
    // The window of a SYN-ACK is not scaled; the client reads this one with xlb's.
    let w = (t.window as u32) >> ows;
    let h = Header {
        sport: pkt.src_port,
        dport: pkt.dst_port,
        seq: cookie.wrapping_add(1),
        ack: t.ack,
        flags: TH_ACK,
        window: if w == 0 { 1 } else { w as u16 },
    };
    let len = ack_options(ts);
    (write_header(ctx, pkt, &h, len, false) == 1).then_some(())
}

/// The timestamp echo of a backend's SYN-ACK.
#[inline(always)]
fn tsecr_of(ctx: &XdpContext, pkt: &Packet, t: &Tcp) -> Option<u32> {
    let (ts, _, _) = unpack_scan(scan_options(ctx, pkt.l4_off, t.doff));
    if ts == 0 {
        return None;
    }
    load::<[u8; 4]>(ctx, ts + 4).map(u32::from_be_bytes)
}

/// Writes the opened connection's state into its forward entry (found from the reply:
/// the client's end, the service's address and port) and, if the reply came through
/// one, its reply entry.
#[inline(always)]
fn record(pkt: &Packet, f: &Flow, s: &SynFlow) -> Option<()> {
    let (family, _, dst) = pkt.addrs()?;
    let vip = XLB_SERVICE_KEYS.get(f.service)?;
    let (client, cport) = if f.mode == MODE_FULLNAT {
        (f.client, f.nat_port)
    } else {
        (dst, pkt.dst_port)
    };
    let sc = scratch()?;
    sc.key = FlowKey {
        src: client,
        dst: vip.addr,
        src_port: cport,
        dst_port: f.vport,
        proto: IPPROTO_TCP,
        family,
        _pad: [0; 2],
    };
    let fwd_key = &sc.key;
    let fwd = unsafe { &mut *XLB_FLOWS.get_ptr_mut(fwd_key)? };
    if fwd.direction != FLOW_FORWARD || fwd.backend != f.backend {
        return None;
    }
    fwd.syn = *s;
    // A nat flow to a shared endpoint has a reply entry: the reply's own tuple.
    if f.mode == MODE_NAT
        && let Some(b) = crate::maps::scratch()
    {
        let reply_key = &b.key;
        if let Some(r) = XLB_FLOWS.get_ptr_mut(reply_key) {
            let r = unsafe { &mut *r };
            if r.direction == FLOW_REPLY && r.backend == f.backend {
                r.syn = *s;
            }
        }
    }
    Some(())
}

/// A backend's SYN-ACK sent again after the connection opened (its ACK never came: a
/// server that speaks first, with a client that has nothing to say): xlb answers it
/// with that ACK, back to the backend.
#[inline(always)]
fn ack_backend(ctx: &XdpContext, pkt: &Packet, t: &Tcp) -> Option<()> {
    let b = syn_options(ctx, pkt, t.doff);
    let ts = if b.ts {
        Some((tsecr_of(ctx, pkt, t)?, b.tsval))
    } else {
        None
    };
    let h = Header {
        sport: pkt.dst_port,
        dport: pkt.src_port,
        seq: t.ack,
        ack: t.seq.wrapping_add(1),
        flags: TH_ACK,
        window: 0xffff,
    };
    let len = ack_options(ts);
    (write_header(ctx, pkt, &h, len, true) == 1).then_some(())
}
