//! Stage 2: the firewall. Precedence, highest first:
//! 1. the always-allow list (source prefix or destination port): overrides any drop;
//! 2. source prefixes, allow or deny, longest prefix wins;
//! 3. port rules (protocol + destination port), the narrowest range wins;
//! 4. the default policy.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::*;

use crate::{
    maps::*,
    parse::{Addr, Packet},
};

pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The rule that decided (0 = none), for its hit counter.
    pub rule: u32,
}

impl Decision {
    /// Not IP (ARP, LLDP, ...): always passed, no rule looked at.
    pub const NON_IP: Decision = Decision {
        verdict: Verdict::Pass,
        reason: Reason::NonIp,
        rule: 0,
    };
}

#[inline(always)]
pub fn action_verdict(action: u32) -> Verdict {
    if action == ACTION_DROP {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

#[inline(always)]
pub fn decide(pkt: &Packet, cfg: &Config) -> Decision {
    let port = port_entry(pkt);
    let d = rules(pkt, cfg, &port);
    if d.verdict == Verdict::Drop {
        let except = excepted(pkt, cfg, &port);
        if except != 0 {
            return Decision {
                verdict: Verdict::Pass,
                reason: Reason::Except,
                rule: except,
            };
        }
    }
    d
}

#[inline(always)]
fn rules(pkt: &Packet, cfg: &Config, port: &PortEntry) -> Decision {
    let prefix = source_prefix(pkt, cfg);
    if prefix != 0 {
        return from_rule(prefix, Reason::PrefixAllow, Reason::PrefixDeny);
    }
    if port.rule != 0 {
        return from_rule(port.rule, Reason::PortAllow, Reason::PortDeny);
    }
    Decision {
        verdict: action_verdict(cfg.default_action),
        reason: Reason::Default,
        rule: 0,
    }
}

#[inline(always)]
fn from_rule(rule: u32, allow: Reason, deny: Reason) -> Decision {
    let (verdict, reason) = if rule & RULE_DENY != 0 {
        (Verdict::Drop, deny)
    } else {
        (Verdict::Pass, allow)
    };
    Decision {
        verdict,
        reason,
        rule: rule & RULE_ID_MASK,
    }
}

/// Whether an always-allow rule (`fw except`) covers the packet: a rate limit never
/// drops it either.
#[inline(always)]
pub fn always_allowed(pkt: &Packet, cfg: &Config) -> bool {
    excepted(pkt, cfg, &port_entry(pkt)) != 0
}

/// The always-allow rule id matching the packet, or 0.
#[inline(always)]
fn excepted(pkt: &Packet, cfg: &Config, port: &PortEntry) -> u32 {
    if port.except != 0 {
        return port.except;
    }
    if cfg.except_prefixes == 0 {
        return 0;
    }
    let hit = match pkt.src {
        Addr::V4(a) => XLB_EXCEPT_V4.get(Key::new(32, a.to_be_bytes())),
        Addr::V6(a) => XLB_EXCEPT_V6.get(Key::new(128, a.bytes())),
    };
    hit.copied().unwrap_or(0)
}

#[inline(always)]
fn port_entry(pkt: &Packet) -> PortEntry {
    if !pkt.has_ports {
        return PortEntry::default();
    }
    let proto = match pkt.proto {
        IPPROTO_TCP => PORT_PROTO_TCP,
        IPPROTO_UDP => PORT_PROTO_UDP,
        _ => return PortEntry::default(),
    };
    XLB_PORTS
        .get(port_index(proto, pkt.dst_port))
        .copied()
        .unwrap_or_default()
}

/// The rule reference of the longest source prefix matching the packet, or 0.
#[inline(always)]
fn source_prefix(pkt: &Packet, cfg: &Config) -> u32 {
    match pkt.src {
        Addr::V4(a) => lookup_v4(a),
        Addr::V6(a) => {
            if cfg.prefixes_v6 == 0 {
                return 0;
            }
            XLB_PREFIX_V6
                .get(Key::new(128, a.bytes()))
                .copied()
                .unwrap_or(0)
        }
    }
}

/// DIR-24-8 style lookup (see lb-common): the summary bit of the /20, then one array
/// read, plus one hash lookup per longer prefix length present in this /24, longest
/// first.
#[inline(always)]
fn lookup_v4(addr: u32) -> u32 {
    let slash24 = addr >> 8;
    let block_index = slash24 / DIR24_BLOCK as u32;
    let Some(summary) = XLB_DIR24_SUMMARY.get(block_index / 64) else {
        return 0;
    };
    if summary & (1u64 << (block_index % 64)) == 0 {
        return 0;
    }
    let Some(block) = XLB_DIR24.get(block_index) else {
        return 0;
    };
    let entry = block.entries[(slash24 % DIR24_BLOCK as u32) as usize];
    let long = entry >> DIR24_LONG_SHIFT;
    if long != 0 {
        let mut n = 8;
        while n > 0 {
            n -= 1;
            if long & (1 << n) != 0 {
                let len = 25 + n;
                let rule = lookup_long_v4(addr & (u32::MAX << (32 - len)), len);
                if rule != 0 {
                    return rule;
                }
            }
        }
    }
    entry & RULE_REF_MASK
}

/// The rule reference of exactly `addr/len` (len 25..=32) in the long-prefix table, or 0.
#[inline(always)]
fn lookup_long_v4(addr: u32, len: u32) -> u32 {
    let key = long_v4_key(addr, len);
    let home = long_v4_hash(addr, len);
    for probe in 0..LONG_V4_PROBE {
        let Some(bucket) = XLB_LONG_V4.get((home + probe) & (LONG_V4_BUCKETS - 1)) else {
            return 0;
        };
        for slot in bucket.slots {
            if slot == 0 {
                return 0;
            }
            if slot & !(RULE_REF_MASK as u64) == key {
                return (slot as u32) & RULE_REF_MASK;
            }
        }
    }
    0
}
