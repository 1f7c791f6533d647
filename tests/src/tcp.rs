//! TCP segments for the SYN-flood protection's kernel tests: any sequence and ACK
//! numbers, flags, window and options (MSS, window scale, SACK, timestamps) over IPv4 or
//! IPv6, with valid lengths and checksums; and the same fields read back from a frame.

use std::net::IpAddr;

use crate::packet::checksum;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// The options a segment carries (in Linux's order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opts {
    pub mss: Option<u16>,
    pub sack_perm: bool,
    /// (value, echo)
    pub ts: Option<(u32, u32)>,
    pub ws: Option<u8>,
    /// SACK blocks (left, right).
    pub sack: Vec<(u32, u32)>,
}

impl Opts {
    /// What Linux puts in a SYN: MSS, SACK permitted, timestamp, window scale.
    pub fn linux_syn(tsval: u32) -> Self {
        Opts {
            mss: Some(1460),
            sack_perm: true,
            ts: Some((tsval, 0)),
            ws: Some(7),
            sack: vec![],
        }
    }

    pub fn ts(tsval: u32, tsecr: u32) -> Self {
        Opts {
            ts: Some((tsval, tsecr)),
            ..Default::default()
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        if let Some(m) = self.mss {
            b.extend_from_slice(&[2, 4]);
            b.extend_from_slice(&m.to_be_bytes());
        }
        match (self.sack_perm, self.ts) {
            (true, Some(_)) => b.extend_from_slice(&[4, 2]),
            (false, Some(_)) => b.extend_from_slice(&[1, 1]),
            (true, None) => b.extend_from_slice(&[1, 1, 4, 2]),
            (false, None) => {}
        }
        if let Some((v, e)) = self.ts {
            b.extend_from_slice(&[8, 10]);
            b.extend_from_slice(&v.to_be_bytes());
            b.extend_from_slice(&e.to_be_bytes());
        }
        if let Some(w) = self.ws {
            b.extend_from_slice(&[1, 3, 3, w]);
        }
        if !self.sack.is_empty() {
            b.extend_from_slice(&[1, 1, 5, 2 + 8 * self.sack.len() as u8]);
            for (l, r) in &self.sack {
                b.extend_from_slice(&l.to_be_bytes());
                b.extend_from_slice(&r.to_be_bytes());
            }
        }
        while b.len() % 4 != 0 {
            b.push(1);
        }
        b
    }

    /// Reads a header's options.
    pub fn parse(mut o: &[u8]) -> Self {
        let mut out = Opts::default();
        while let [kind, rest @ ..] = o {
            match *kind {
                0 => break,
                1 => {
                    o = rest;
                    continue;
                }
                _ => {}
            }
            let len = *rest.first().unwrap_or(&0) as usize;
            if len < 2 || len > o.len() {
                break;
            }
            let body = &o[2..len];
            match (*kind, len) {
                (2, 4) => out.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                (3, 3) => out.ws = Some(body[0]),
                (4, 2) => out.sack_perm = true,
                (8, 10) => {
                    out.ts = Some((
                        u32::from_be_bytes(body[0..4].try_into().unwrap()),
                        u32::from_be_bytes(body[4..8].try_into().unwrap()),
                    ))
                }
                (5, _) => {
                    for c in body.chunks(8) {
                        out.sack.push((
                            u32::from_be_bytes(c[0..4].try_into().unwrap()),
                            u32::from_be_bytes(c[4..8].try_into().unwrap()),
                        ));
                    }
                }
                _ => {}
            }
            o = &o[len..];
        }
        out
    }
}

/// One TCP segment in an Ethernet frame.
#[derive(Clone, Debug)]
pub struct Seg {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub opts: Opts,
    pub payload: Vec<u8>,
    pub ttl: u8,
}

impl Seg {
    pub fn new(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Self {
        Seg {
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            seq: 0,
            ack: 0,
            flags,
            window: 64240,
            opts: Opts::default(),
            payload: vec![],
            ttl: 64,
        }
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }
    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }
    pub fn window(mut self, w: u16) -> Self {
        self.window = w;
        self
    }
    pub fn opts(mut self, o: Opts) -> Self {
        self.opts = o;
        self
    }
    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }
    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Self {
        self.dst_mac = dst;
        self.src_mac = src;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let opts = self.opts.bytes();
        let hlen = 20 + opts.len();
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&self.sport.to_be_bytes());
        t[2..4].copy_from_slice(&self.dport.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        t[12] = ((hlen / 4) as u8) << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&opts);
        t.extend_from_slice(&self.payload);
        let len = t.len();
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut h = vec![0u8; 20];
                h[0] = 0x45;
                h[2..4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
                h[6] = 0x40;
                h[8] = self.ttl;
                h[9] = 6;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                let c = checksum(&h, 0);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                let pseudo = sum(&s.octets()) + sum(&d.octets()) + 6 + len as u32;
                let c = checksum(&t, pseudo);
                t[16..18].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&(len as u16).to_be_bytes());
                h[6] = 6;
                h[7] = self.ttl;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
                let pseudo = sum(&s.octets()) + sum(&d.octets()) + 6 + len as u32;
                let c = checksum(&t, pseudo);
                t[16..18].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            _ => panic!("mixed families"),
        }
        f.extend_from_slice(&t);
        f
    }

    /// Reads a frame (untagged, IPv4 without options or IPv6 without extension
    /// headers); panics on anything else.
    pub fn parse(f: &[u8]) -> Seg {
        let (src, dst, ttl, l4, end): (IpAddr, IpAddr, u8, usize, usize) =
            match u16::from_be_bytes([f[12], f[13]]) {
                0x0800 => {
                    assert_eq!(f[14], 0x45, "IPv4 without options");
                    assert_eq!(f[23], 6, "TCP");
                    let total = u16::from_be_bytes([f[16], f[17]]) as usize;
                    (
                        IpAddr::from(<[u8; 4]>::try_from(&f[26..30]).unwrap()),
                        IpAddr::from(<[u8; 4]>::try_from(&f[30..34]).unwrap()),
                        f[22],
                        34,
                        14 + total,
                    )
                }
                0x86dd => {
                    assert_eq!(f[20], 6, "TCP");
                    let plen = u16::from_be_bytes([f[18], f[19]]) as usize;
                    (
                        IpAddr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap()),
                        IpAddr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()),
                        f[21],
                        54,
                        54 + plen,
                    )
                }
                t => panic!("not IP: {t:#x}"),
            };
        assert!(end <= f.len(), "IP length past the frame");
        let t = &f[l4..end];
        let hlen = (t[12] >> 4) as usize * 4;
        Seg {
            dst_mac: f[0..6].try_into().unwrap(),
            src_mac: f[6..12].try_into().unwrap(),
            src,
            dst,
            sport: u16::from_be_bytes([t[0], t[1]]),
            dport: u16::from_be_bytes([t[2], t[3]]),
            seq: u32::from_be_bytes(t[4..8].try_into().unwrap()),
            ack: u32::from_be_bytes(t[8..12].try_into().unwrap()),
            flags: t[13],
            window: u16::from_be_bytes([t[14], t[15]]),
            opts: Opts::parse(&t[20..hlen]),
            payload: t[hlen..].to_vec(),
            ttl,
        }
    }
}

fn sum(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

/// Spoofed sources for `send_spoofed`: `prefix` followed by `base + k % count` for the
/// k-th segment (e.g. ("198.51.100.", 64, 64): 198.51.100.64-127).
pub struct Spoofed<'a> {
    pub prefix: &'a str,
    pub base: u32,
    pub count: u32,
}

/// `n` TCP segments with `flags` (numbered from `first`: each has its own source port
/// and sequence number) to `dst`:`dport` from spoofed IPv4 sources, sent from a raw
/// socket in `ns` (IPPROTO_RAW: the header, and so the source, is the packet's own).
/// SYNs carry Linux's options; other segments an ACK number no cookie matches.
pub fn send_spoofed(
    ns: &crate::netns::Netns,
    (dst, dport): (&str, u16),
    flags: u8,
    src: &Spoofed,
    first: u32,
    n: u32,
) -> anyhow::Result<()> {
    let frames: Vec<Vec<u8>> = (first..first + n)
        .map(|k| {
            let from = format!("{}{}", src.prefix, src.base + k % src.count.max(1));
            let s = Seg::new(&from, dst, 1024 + (k % 60000) as u16, dport, flags)
                .seq(k.wrapping_mul(2_654_435_761));
            let s = if flags == SYN {
                s.opts(Opts::linux_syn(k))
            } else {
                s.ack(k.wrapping_mul(40503))
            };
            s.build()
        })
        .collect();
    let dst: std::net::Ipv4Addr = dst.parse()?;
    crate::netns::in_ns(ns, move || -> anyhow::Result<()> {
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            if fd < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            let mut res = Ok(());
            for f in &frames {
                let ip = &f[14..];
                let sent = libc::sendto(
                    fd,
                    ip.as_ptr() as *const libc::c_void,
                    ip.len(),
                    0,
                    &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                if sent != ip.len() as isize {
                    res = Err(std::io::Error::last_os_error().into());
                    break;
                }
            }
            libc::close(fd);
            res
        }
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::assert_checksums;

    #[test]
    fn segments_round_trip_with_valid_checksums() {
        for (s, d) in [
            ("192.0.2.2", "198.51.100.10"),
            ("2001:db8::2", "2001:db8::10"),
        ] {
            let seg = Seg::new(s, d, 40000, 80, SYN)
                .seq(12345)
                .opts(Opts::linux_syn(777))
                .payload(b"hi");
            let f = seg.build();
            assert_checksums(&f);
            let back = Seg::parse(&f);
            assert_eq!(
                (back.seq, back.flags, back.payload),
                (12345, SYN, b"hi".to_vec())
            );
            assert_eq!(back.opts, Opts::linux_syn(777));
        }
    }
}
