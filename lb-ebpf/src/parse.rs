//! Stage 1: parse the headers into a small `Packet`, or say why the frame is malformed.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Addr16, FAMILY_V4, FAMILY_V6, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, Reason,
    net::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ICMP_HLEN, IPPROTO_AH,
        IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HLEN, IPV6_HLEN, TCP_MIN_HLEN,
        VLAN_HLEN,
    },
};

use crate::bounds::{frame_len, load_addr16, ptr_at};

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: u16,
}

#[repr(C)]
struct VlanHdr {
    tci: u16,
    proto: u16,
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    src: u32,
    dst: u32,
}

#[repr(C)]
struct Ipv6Hdr {
    version_tc_flow: [u8; 4],
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    // The addresses follow (read with load_addr16).
}

#[repr(C)]
struct TcpHdr {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    data_off: u8,
    flags: u8,
    window: u16,
    check: u16,
    urgent: u16,
}

#[repr(C)]
struct UdpHdr {
    src_port: u16,
    dst_port: u16,
    len: u16,
    check: u16,
}

/// The first two bytes of every IPv6 extension header.
#[repr(C)]
struct Ipv6ExtHdr {
    next_header: u8,
    len: u8,
}

#[repr(C)]
struct Ipv6FragHdr {
    next_header: u8,
    reserved: u8,
    offset_flags: u16,
    id: u32,
}

#[derive(Clone, Copy)]
pub enum Addr {
    /// Host byte order.
    V4(u32),
    V6(Addr16),
}

/// What the later stages need to know about an IP packet.
pub struct Packet {
    pub src: Addr,
    pub dst: Addr,
    /// Offsets of the IP header and of the layer-4 header (valid when `has_ports` or for
    /// ICMP).
    pub l3_off: usize,
    pub l4_off: usize,
    /// Part of a fragmented datagram (first or later fragment).
    pub fragment: bool,
    /// The fragment's identification (IPv4: 16 bits; IPv6: the fragment header's 32).
    pub frag_id: u32,
    /// ICMP or ICMPv6 type (0 otherwise).
    pub icmp_type: u8,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// True when the ports above were read from a TCP or UDP header; false for other
    /// protocols and for fragments after the first (which carry no layer-4 header).
    pub has_ports: bool,
    /// True when a TCP, UDP, ICMP or ICMPv6 header was read at `l4_off`.
    pub has_l4: bool,
}

impl Packet {
    /// A blank to parse into (what a malformed frame leaves unparsed stays blank).
    pub const EMPTY: Packet = Packet {
        src: Addr::V4(0),
        dst: Addr::V4(0),
        l3_off: 0,
        l4_off: 0,
        fragment: false,
        frag_id: 0,
        icmp_type: 0,
        proto: 0,
        src_port: 0,
        dst_port: 0,
        has_ports: false,
        has_l4: false,
    };

    /// The family and both addresses in 16 bytes (network order, IPv4 in the first
    /// word). None only for a mixed pair, which the parser never writes.
    #[inline(always)]
    pub fn addrs(&self) -> Option<(u8, Addr16, Addr16)> {
        match (self.src, self.dst) {
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
    pub fn is_v6(&self) -> bool {
        matches!(self.src, Addr::V6(_))
    }
}

/// Parses into `pkt` (per-CPU scratch space, where the balancer finds it after the
/// firewall's tail call). `Ok(false)`: not IP. `Err(reason)`: truncated or malformed.
#[inline(always)]
pub fn packet(ctx: &XdpContext, pkt: &mut Packet) -> Result<bool, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::TruncEth)?;
    let mut proto = u16::from_be(unsafe { (*eth).proto });
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let vlan: *const VlanHdr = ptr_at(ctx, off).ok_or(Reason::BadVlan)?;
        proto = u16::from_be(unsafe { (*vlan).proto });
        off += VLAN_HLEN;
    }
    match proto {
        ETH_P_IP => ipv4(ctx, off, pkt).map(|_| true),
        ETH_P_IPV6 => ipv6(ctx, off, pkt).map(|_| true),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::BadVlan),
        _ => Ok(false),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Result<(), Reason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off).ok_or(Reason::BadIpv4)?;
    let (version_ihl, tot_len, id, frag_off, proto, src, dst) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).tot_len) as usize,
            u16::from_be((*ip).id),
            u16::from_be((*ip).frag_off),
            (*ip).proto,
            u32::from_be((*ip).src),
            u32::from_be((*ip).dst),
        )
    };
    let ihl = (version_ihl & 0x0f) as usize * 4;
    // The options lie within the header (IHL) and the header within the total length,
    // which lies within the frame (Ethernet may pad short frames, never truncate).
    if version_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN || tot_len < ihl {
        return Err(Reason::BadIpv4);
    }
    if off + tot_len > frame_len(ctx) {
        return Err(Reason::BadIpv4);
    }
    *pkt = Packet {
        src: Addr::V4(src),
        dst: Addr::V4(dst),
        l3_off: off,
        l4_off: off + ihl,
        fragment: frag_off & 0x3fff != 0,
        frag_id: id as u32,
        icmp_type: 0,
        proto,
        src_port: 0,
        dst_port: 0,
        has_ports: false,
        has_l4: false,
    };
    // Fragments after the first carry no layer-4 header.
    if frag_off & 0x1fff != 0 {
        return Ok(());
    }
    l4(ctx, off + ihl, pkt)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Result<(), Reason> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off).ok_or(Reason::BadIpv6)?;
    let (version, payload_len, mut next) = unsafe {
        (
            (*ip).version_tc_flow[0] >> 4,
            u16::from_be((*ip).payload_len) as usize,
            (*ip).next_header,
        )
    };
    let src = load_addr16(ctx, off + 8).ok_or(Reason::BadIpv6)?;
    let dst = load_addr16(ctx, off + 24).ok_or(Reason::BadIpv6)?;
    if version != 6 || off + IPV6_HLEN + payload_len > frame_len(ctx) {
        return Err(Reason::BadIpv6);
    }
    *pkt = Packet {
        src: Addr::V6(src),
        dst: Addr::V6(dst),
        l3_off: off,
        l4_off: 0,
        fragment: false,
        frag_id: 0,
        icmp_type: 0,
        proto: next,
        src_port: 0,
        dst_port: 0,
        has_ports: false,
        has_l4: false,
    };
    let mut off = off + IPV6_HLEN;
    // A bounded walk over the extension headers xlb knows; anything else is the upper
    // layer (or a protocol without ports, judged by address only).
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let (n, len) = ext_header(ctx, off)?;
                next = n;
                // In 8-byte units, not counting the first 8.
                off += (len + 1) * 8;
            }
            IPPROTO_AH => {
                let (n, len) = ext_header(ctx, off)?;
                next = n;
                // In 4-byte units, not counting the first 8 (RFC 4302).
                off += (len + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let frag: *const Ipv6FragHdr = ptr_at(ctx, off).ok_or(Reason::BadIpv6Ext)?;
                let (n, offset, id) = unsafe {
                    (
                        (*frag).next_header,
                        u16::from_be((*frag).offset_flags) & !7,
                        u32::from_be((*frag).id),
                    )
                };
                next = n;
                off += core::mem::size_of::<Ipv6FragHdr>();
                pkt.fragment = true;
                pkt.frag_id = id;
                if offset != 0 {
                    pkt.proto = next;
                    return Ok(());
                }
            }
            _ => {
                pkt.proto = next;
                pkt.l4_off = off;
                return l4(ctx, off, pkt);
            }
        }
    }
    // Still an extension header after the walk: too many to judge.
    Err(Reason::BadIpv6Ext)
}

/// The next header and the length field of the extension header at `off`.
#[inline(always)]
fn ext_header(ctx: &XdpContext, off: usize) -> Result<(u8, usize), Reason> {
    let ext: *const Ipv6ExtHdr = ptr_at(ctx, off).ok_or(Reason::BadIpv6Ext)?;
    Ok(unsafe { ((*ext).next_header, (*ext).len as usize) })
}

#[inline(always)]
fn l4(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Result<(), Reason> {
    match pkt.proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, off).ok_or(Reason::BadL4)?;
            let (sport, dport, doff) = unsafe {
                (
                    u16::from_be((*tcp).src_port),
                    u16::from_be((*tcp).dst_port),
                    ((*tcp).data_off >> 4) as usize * 4,
                )
            };
            // The options must be there too.
            if doff < TCP_MIN_HLEN || off + doff > frame_len(ctx) {
                return Err(Reason::BadL4);
            }
            pkt.src_port = sport;
            pkt.dst_port = dport;
            pkt.has_ports = true;
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, off).ok_or(Reason::BadL4)?;
            unsafe {
                pkt.src_port = u16::from_be((*udp).src_port);
                pkt.dst_port = u16::from_be((*udp).dst_port);
            }
            pkt.has_ports = true;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp: *const [u8; ICMP_HLEN] = ptr_at(ctx, off).ok_or(Reason::BadL4)?;
            pkt.icmp_type = unsafe { (*icmp)[0] };
        }
        _ => return Ok(()),
    }
    pkt.has_l4 = true;
    Ok(())
}
