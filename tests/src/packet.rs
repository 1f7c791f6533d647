//! A small packet builder for kernel tests: Ethernet, VLAN tags, IPv4 (options,
//! fragments), IPv6 (extension headers), TCP, UDP, ICMP, ICMPv6, with valid lengths and
//! checksums unless a test asks for something broken.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Clone, Debug)]
pub enum Ip {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
    },
    /// Not IP: this EtherType and the payload as is.
    Other(u16),
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        ty: u8,
        code: u8,
    },
    /// Another protocol number with the payload as its body.
    Raw(u8),
}

#[derive(Clone, Debug)]
pub struct Pkt {
    /// (TPID, TCI) of each tag, outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub ip: Ip,
    pub ipv4_options: Vec<u8>,
    /// IPv4 fragment offset in 8-byte units and the more-fragments flag.
    pub frag: Option<(u16, bool)>,
    /// IPv6 extension headers: (protocol number, body after the 2-byte next/len prefix).
    pub ext: Vec<(u8, Vec<u8>)>,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// Cut the layer-4 header and payload to this many bytes (lengths stay consistent).
    pub l4_cut: Option<usize>,
    pub ttl: u8,
    /// IP identification: IPv4's 16 bits, or an IPv6 fragment header's 32.
    pub id: u32,
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    acc
}

/// The Internet checksum of `data` with `acc` already summed in.
pub fn checksum(data: &[u8], acc: u32) -> u16 {
    let mut s = sum16(data, acc);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

impl Pkt {
    fn new(ip: Ip, l4: L4) -> Self {
        Pkt {
            vlans: vec![],
            ip,
            ipv4_options: vec![],
            frag: None,
            ext: vec![],
            l4,
            payload: b"xlb".to_vec(),
            l4_cut: None,
            ttl: 64,
            id: 0x1234,
        }
    }

    fn v4(src: &str, dst: &str) -> Ip {
        Ip::V4 {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    fn v6(src: &str, dst: &str) -> Ip {
        Ip::V6 {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    /// Addresses are v4 or v6 by their text.
    fn ip(src: &str, dst: &str) -> Ip {
        if src.contains(':') {
            Self::v6(src, dst)
        } else {
            Self::v4(src, dst)
        }
    }

    pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16) -> Self {
        Self::new(
            Self::ip(src, dst),
            L4::Tcp {
                sport,
                dport,
                flags: 0x02,
            },
        )
    }

    pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Self {
        Self::new(Self::ip(src, dst), L4::Udp { sport, dport })
    }

    /// An echo request (ICMP for IPv4, ICMPv6 for IPv6).
    pub fn ping(src: &str, dst: &str) -> Self {
        let ip = Self::ip(src, dst);
        let ty = if matches!(ip, Ip::V6 { .. }) { 128 } else { 8 };
        Self::new(ip, L4::Icmp { ty, code: 0 })
    }

    /// An ICMP (IPv4) or ICMPv6 message of any type; `quoted` becomes its body (for an
    /// error, the start of the packet it is about).
    pub fn icmp(src: &str, dst: &str, ty: u8, code: u8, quoted: &[u8]) -> Self {
        let mut p = Self::new(Self::ip(src, dst), L4::Icmp { ty, code });
        p.payload = quoted.to_vec();
        p
    }

    pub fn frag_id(mut self, id: u32) -> Self {
        self.id = id;
        self
    }

    pub fn raw(src: &str, dst: &str, proto: u8) -> Self {
        Self::new(Self::ip(src, dst), L4::Raw(proto))
    }

    pub fn arp() -> Self {
        let mut p = Self::new(Ip::Other(ETH_P_ARP), L4::Raw(0));
        p.payload = vec![0, 1, 8, 0, 6, 4, 0, 1]
            .into_iter()
            .chain([0u8; 20])
            .collect();
        p
    }

    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push((tpid, vid));
        self
    }

    pub fn options(mut self, opts: &[u8]) -> Self {
        self.ipv4_options = opts.to_vec();
        self
    }

    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        self.frag = Some((offset, more));
        self
    }

    /// Appends an IPv6 extension header of `len8` 8-byte units (fragment: pass offset
    /// in `len8`, see `ipv6_fragment`).
    pub fn ext(mut self, proto: u8, len8: usize) -> Self {
        self.ext.push((proto, vec![0; len8 * 8 + 6]));
        self
    }

    /// An IPv6 fragment header at `offset` (8-byte units).
    pub fn ipv6_fragment(mut self, offset: u16, more: bool) -> Self {
        let of = (offset << 3) | more as u16;
        let mut body = of.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 42]);
        self.ext.push((44, body));
        self
    }

    /// A TCP packet's flags (0x02 SYN, 0x10 ACK, ...); `tcp` makes a SYN.
    pub fn tcp_flags(mut self, f: u8) -> Self {
        if let L4::Tcp { flags, .. } = &mut self.l4 {
            *flags = f;
        }
        self
    }

    pub fn l4_cut(mut self, n: usize) -> Self {
        self.l4_cut = Some(n);
        self
    }

    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    fn l4_proto(&self) -> u8 {
        match (&self.l4, &self.ip) {
            (L4::Tcp { .. }, _) => 6,
            (L4::Udp { .. }, _) => 17,
            (L4::Icmp { .. }, Ip::V6 { .. }) => 58,
            (L4::Icmp { .. }, _) => 1,
            (L4::Raw(p), _) => *p,
        }
    }

    fn pseudo_sum(&self, len: usize) -> u32 {
        let proto = self.l4_proto() as u32;
        match &self.ip {
            Ip::V4 { src, dst } => {
                sum16(&src.octets(), 0) + sum16(&dst.octets(), 0) + proto + len as u32
            }
            Ip::V6 { src, dst } => {
                sum16(&src.octets(), 0) + sum16(&dst.octets(), 0) + proto + len as u32
            }
            Ip::Other(_) => 0,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&1u32.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h
            }
            L4::Udp { sport, dport } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h
            }
            L4::Icmp { ty, code } => vec![ty, code, 0, 0, 0, 1, 0, 1],
            L4::Raw(_) => vec![],
        };
        b.extend_from_slice(&self.payload);
        let ck_off = match self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp { .. } => Some(6),
            L4::Icmp { .. } => Some(2),
            L4::Raw(_) => None,
        };
        if let Some(off) = ck_off {
            let acc = match (&self.l4, &self.ip) {
                (L4::Icmp { .. }, Ip::V4 { .. }) => 0,
                _ => self.pseudo_sum(b.len()),
            };
            let mut c = checksum(&b, acc);
            if c == 0 && matches!(self.l4, L4::Udp { .. }) {
                c = 0xffff;
            }
            b[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        if let Some(n) = self.l4_cut {
            b.truncate(n);
        }
        b
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&SRC_MAC);
        for (tpid, tci) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        let l4 = self.l4_bytes();
        match &self.ip {
            Ip::Other(et) => {
                f.extend_from_slice(&et.to_be_bytes());
                f.extend_from_slice(&self.payload);
            }
            Ip::V4 { src, dst } => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let hl = 20 + self.ipv4_options.len();
                assert!(
                    hl.is_multiple_of(4) && hl <= 60,
                    "IPv4 options must pad to 4 bytes"
                );
                let mut h = vec![0u8; 20];
                h[0] = 0x40 | (hl / 4) as u8;
                h[2..4].copy_from_slice(&((hl + l4.len()) as u16).to_be_bytes());
                h[4..6].copy_from_slice(&(self.id as u16).to_be_bytes());
                if let Some((off, more)) = self.frag {
                    h[6..8].copy_from_slice(&(off | if more { 0x2000 } else { 0 }).to_be_bytes());
                }
                h[8] = self.ttl;
                h[9] = self.l4_proto();
                h[12..16].copy_from_slice(&src.octets());
                h[16..20].copy_from_slice(&dst.octets());
                h.extend_from_slice(&self.ipv4_options);
                let c = checksum(&h, 0);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
                f.extend_from_slice(&l4);
            }
            Ip::V6 { src, dst } => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let mut chain = Vec::new();
                let mut protos: Vec<u8> = self.ext.iter().map(|e| e.0).collect();
                protos.push(self.l4_proto());
                for (i, (proto, body)) in self.ext.iter().enumerate() {
                    let total = body.len() + 2;
                    let len = match proto {
                        44 => 0,
                        51 => (total / 4 - 2) as u8,
                        _ => (total / 8 - 1) as u8,
                    };
                    chain.push(protos[i + 1]);
                    chain.push(len);
                    chain.extend_from_slice(body);
                    if *proto == 44 {
                        let n = chain.len();
                        chain[n - 4..].copy_from_slice(&self.id.to_be_bytes());
                    }
                }
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
                h[6] = protos[0];
                h[7] = self.ttl;
                h[8..24].copy_from_slice(&src.octets());
                h[24..40].copy_from_slice(&dst.octets());
                f.extend_from_slice(&h);
                f.extend_from_slice(&chain);
                f.extend_from_slice(&l4);
            }
        }
        f
    }
}

/// Checks a frame's IPv4 header checksum (if IPv4) and its TCP/UDP/ICMP checksum.
/// Untagged frames only. Panics with what is wrong.
pub fn assert_checksums(f: &[u8]) {
    let et = u16::from_be_bytes([f[12], f[13]]);
    let (l4, proto, pseudo) = match et {
        ETH_P_IP => {
            let hl = (f[14] & 0xf) as usize * 4;
            assert_eq!(checksum(&f[14..14 + hl], 0), 0, "IPv4 header checksum");
            let total = u16::from_be_bytes([f[16], f[17]]) as usize;
            let l4 = &f[14 + hl..14 + total];
            let proto = f[23];
            let pseudo = sum16(&f[26..34], 0) + proto as u32 + l4.len() as u32;
            (l4, proto, if proto == 1 { 0 } else { pseudo })
        }
        ETH_P_IPV6 => {
            let plen = u16::from_be_bytes([f[18], f[19]]) as usize;
            let l4 = &f[54..54 + plen];
            let proto = f[20];
            (
                l4,
                proto,
                sum16(&f[22..54], 0) + proto as u32 + l4.len() as u32,
            )
        }
        _ => panic!("not IP"),
    };
    if proto == 17 && et == ETH_P_IP && l4[6] == 0 && l4[7] == 0 {
        return;
    }
    assert_eq!(
        checksum(l4, pseudo),
        0,
        "layer-4 checksum (protocol {proto})"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_frame_has_valid_checksums() {
        let f = Pkt::tcp("192.0.2.1", "198.51.100.1", 1234, 80).build();
        assert_eq!(f.len(), 14 + 20 + 20 + 3);
        assert_eq!(checksum(&f[14..34], 0), 0);
        let p = Pkt::tcp("192.0.2.1", "198.51.100.1", 1234, 80);
        assert_eq!(checksum(&f[34..], p.pseudo_sum(23)), 0);
    }

    #[test]
    fn ipv6_extension_chain_links_up() {
        let f = Pkt::udp("2001:db8::1", "2001:db8::2", 1, 53)
            .ext(0, 0)
            .ipv6_fragment(0, true)
            .build();
        assert_eq!(f[14 + 6], 0); // hop-by-hop first
        assert_eq!(f[14 + 40], 44); // then fragment
        assert_eq!(f[14 + 48], 17); // then UDP
    }
}
