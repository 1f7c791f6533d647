//! Deterministic prefix sets for the benches: the same on every run and machine, shaped
//! like a blocklist, and their text as `xlb fw load` reads it.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
};

/// xorshift64: cheap, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` distinct IPv4 prefixes shaped like a blocklist: 40% /32, 30% /24, 30% /16../31.
pub fn v4(n: usize, seed: u64) -> Vec<(u32, u8)> {
    let mut rng = Rng(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = rng.next_u64();
        let len = match r % 10 {
            0..=3 => 32,
            4..=6 => 24,
            _ => 16 + ((r >> 8) % 16) as u8,
        };
        let addr = ((r >> 32) as u32) & (u32::MAX << (32 - len));
        if seen.insert((addr, len)) {
            out.push((addr, len));
        }
    }
    out
}

/// `n` distinct IPv6 prefixes inside 2001:db8::/32 (documentation space), /48 to /128.
pub fn v6(n: usize, seed: u64) -> Vec<(u128, u8)> {
    let base = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0));
    let mut rng = Rng(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = 48 + (rng.next_u64() % 81) as u8;
        let bits = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())) >> 32;
        let addr = (base | bits) & (u128::MAX << (128 - u32::from(len)));
        if seen.insert((addr, len)) {
            out.push((addr, len));
        }
    }
    out
}

/// Whether two IPv4 prefixes share an address.
pub fn v4_overlap((a, al): (u32, u8), (b, bl): (u32, u8)) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(al.min(bl)))
        .unwrap_or(0);
    a & mask == b & mask
}

/// One prefix a line, as `xlb fw load` reads it.
pub fn text(v4: &[(u32, u8)], v6: &[(u128, u8)]) -> String {
    let mut s = String::with_capacity((v4.len() + v6.len()) * 24);
    for (a, l) in v4 {
        s.push_str(&format!("{}/{l}\n", Ipv4Addr::from(*a)));
    }
    for (a, l) in v6 {
        s.push_str(&format!("{}/{l}\n", Ipv6Addr::from(*a)));
    }
    s
}
