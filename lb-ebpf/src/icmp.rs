//! ICMP and ICMPv6 for the balancer: which messages it handles, and the header an
//! error quotes (the start of the packet that caused it).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Addr16, FAMILY_V4, FlowKey,
    net::{
        ICMP_DEST_UNREACH, ICMP_ECHO_REQUEST, ICMP_HLEN, ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REQUEST,
        ICMPV6_PACKET_TOO_BIG, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
        IPV4_MIN_HLEN, IPV6_HLEN,
    },
};

use crate::{
    bounds::{load, load_addr16, load_w32},
    parse::Packet,
    rewrite::{End, addr_off, fix_check, put_addr, set_u16},
};

#[inline(always)]
pub fn is_echo_request(pkt: &Packet) -> bool {
    match pkt.proto {
        IPPROTO_ICMP => pkt.icmp_type == ICMP_ECHO_REQUEST,
        IPPROTO_ICMPV6 => pkt.icmp_type == ICMPV6_ECHO_REQUEST,
        _ => false,
    }
}

/// Destination unreachable (IPv4's "fragmentation needed" among them) and IPv6's
/// "packet too big": the errors a flow's sender must see for path-MTU discovery.
#[inline(always)]
pub fn is_error(pkt: &Packet) -> bool {
    match pkt.proto {
        IPPROTO_ICMP => pkt.icmp_type == ICMP_DEST_UNREACH,
        IPPROTO_ICMPV6 => {
            pkt.icmp_type == ICMPV6_DEST_UNREACH || pkt.icmp_type == ICMPV6_PACKET_TOO_BIG
        }
        _ => false,
    }
}

/// Offsets of the quoted IP and TCP/UDP headers.
pub struct Quoted {
    l3: usize,
    l4: usize,
    v4: bool,
}

/// Reads the quoted TCP or UDP header into `key` as the flow it answers: the quoted
/// packet ran service -> client, so its destination is the flow's source.
#[inline(always)]
pub fn quoted(ctx: &XdpContext, pkt: &Packet, family: u8, key: &mut FlowKey) -> Option<Quoted> {
    let l3 = pkt.l4_off + ICMP_HLEN;
    let (q, src, dst, proto) = if family == FAMILY_V4 {
        let [version_ihl, _]: [u8; 2] = load(ctx, l3)?;
        let [_, proto]: [u8; 2] = load(ctx, l3 + 8)?;
        let ihl = (version_ihl & 0x0f) as usize * 4;
        if version_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
            return None;
        }
        let q = Quoted {
            l3,
            l4: l3 + ihl,
            v4: true,
        };
        let src = Addr16([load_w32(ctx, addr_off(l3, true, End::Src))?, 0, 0, 0]);
        let dst = Addr16([load_w32(ctx, addr_off(l3, true, End::Dst))?, 0, 0, 0]);
        (q, src, dst, proto)
    } else {
        // The quoted header's extension headers are not walked: TCP or UDP must follow.
        let [proto, _]: [u8; 2] = load(ctx, l3 + 6)?;
        let q = Quoted {
            l3,
            l4: l3 + IPV6_HLEN,
            v4: false,
        };
        (
            q,
            load_addr16(ctx, addr_off(l3, false, End::Src))?,
            load_addr16(ctx, addr_off(l3, false, End::Dst))?,
            proto,
        )
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let ports: [u16; 2] = load(ctx, q.l4)?;
    *key = FlowKey {
        src: dst,
        dst: src,
        src_port: u16::from_be(ports[1]),
        dst_port: u16::from_be(ports[0]),
        proto,
        family,
        _pad: [0; 2],
    };
    Some(q)
}

/// Rewrites one end (address and port, host order) of the quoted packet. The ICMP
/// checksum covers the quoted bytes; for IPv4 the quoted header's own checksum absorbs
/// the address change (a header with a valid checksum sums to the same value whatever
/// its addresses), so only the port touches the ICMP checksum.
#[inline(always)]
pub fn set_quoted(
    ctx: &XdpContext,
    pkt: &Packet,
    q: &Quoted,
    end: End,
    addr: &Addr16,
    port: u16,
) -> Option<()> {
    let icmp_check = pkt.l4_off + 2;
    let d = put_addr(ctx, addr_off(q.l3, q.v4, end), addr, q.v4)?;
    let check = if q.v4 { q.l3 + 10 } else { icmp_check };
    fix_check(ctx, check, d, false)?;
    let off = q.l4 + if end == End::Src { 0 } else { 2 };
    set_u16(ctx, off, icmp_check, port.to_be())
}
