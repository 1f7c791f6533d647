//! The firewall's tables: rule references, the IPv4 prefix table (DIR-24-8 with a
//! hash table for prefixes longer than /24) and the port table.

use bytemuck::{Pod, Zeroable};

use crate::MAX_RULES;

// ---------------------------------------------------------------------------------------
// Rule references: what a prefix or port table entry points at.
// ---------------------------------------------------------------------------------------

/// A rule reference is 24 bits: the deny flag and a rule id. 0 = no rule.
pub const RULE_DENY: u32 = 1 << 23;
pub const RULE_ID_MASK: u32 = RULE_DENY - 1;
pub const RULE_REF_MASK: u32 = 0x00ff_ffff;

const _: () = assert!(
    MAX_RULES - 1 <= RULE_ID_MASK,
    "rule ids must fit a rule reference"
);

/// Encode a rule id and its action as stored in the lookup tables.
pub const fn rule_ref(id: u32, deny: bool) -> u32 {
    id | if deny { RULE_DENY } else { 0 }
}

// ---------------------------------------------------------------------------------------
// IPv4 prefix table: DIR-24-8 style.
// ---------------------------------------------------------------------------------------
//
// The first level has one 32-bit entry per /24 (2^24 entries, 64 MiB), holding
// - bits 0..24: the rule reference of the longest prefix of length <= 24 covering it;
// - bits 24..32: a bitmap of the lengths 25..=32 for which some prefix exists inside this
//   /24 (bit n = length 25 + n).
// A lookup is one array read; only a /24 that holds longer prefixes costs hash lookups,
// one per length present, longest first. User space keeps the table and paints it.

/// /24 entries per array element: elements of 64 bytes keep the mmap layout dense (an
/// array map strides its elements by their size rounded up to 8 bytes).
pub const DIR24_BLOCK: usize = 16;
/// Number of elements of the first level (2^24 / 16).
pub const DIR24_BLOCKS: u32 = (1 << 24) / DIR24_BLOCK as u32;
/// Words of the summary bitmap: one bit per Dir24Block (per /20). At 128 KiB it stays
/// in cache, so traffic from addresses no rule is near (most of a flood from random
/// sources) is decided without touching the 64 MiB table.
pub const DIR24_SUMMARY_WORDS: u32 = DIR24_BLOCKS / 64;
/// Bit position of the longer-prefix bitmap in a first-level entry.
pub const DIR24_LONG_SHIFT: u32 = 24;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Dir24Block {
    pub entries: [u32; DIR24_BLOCK],
}

// Prefixes longer than /24 live in a bucketed open-addressing hash table that user space
// writes through mmap (no syscall per entry: a million prefixes load in well under a
// second). A slot is one u64, written atomically:
//   bits 32..64: the masked address; bits 24..32: the length (25..=32);
//   bits 0..24: the rule reference.
// 0 is an empty slot (it ends a probe), LONG_V4_TOMBSTONE a removed one (skipped).
// A key lives in the first free slot of buckets hash, hash+1, ... (LONG_V4_PROBE at most).

/// Slots per bucket: 8 x 8 bytes = one cache line.
pub const LONG_V4_SLOTS: usize = 8;
/// Buckets: 2^18 x 8 slots = 2^21 slots (16 MiB), so a million long prefixes fill it
/// at most half.
pub const LONG_V4_BUCKETS: u32 = 1 << 18;
/// Buckets probed before a key is declared absent (and the most an insert may use).
pub const LONG_V4_PROBE: u32 = 8;
pub const LONG_V4_TOMBSTONE: u64 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LongV4Bucket {
    pub slots: [u64; LONG_V4_SLOTS],
}

/// The key part of a slot (bits 24..64) for a masked address and length.
pub const fn long_v4_key(addr: u32, len: u32) -> u64 {
    ((addr as u64) << 32) | ((len as u64) << 24)
}

/// The home bucket of a key: murmur3's 32-bit finaliser over address and length.
pub const fn long_v4_hash(addr: u32, len: u32) -> u32 {
    let mut h = addr ^ len.wrapping_mul(0x9e37_79b9);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h & (LONG_V4_BUCKETS - 1)
}

// ---------------------------------------------------------------------------------------
// Port table.
// ---------------------------------------------------------------------------------------

/// Protocols with a port table. Index = `proto * 65536 + port`.
pub const PORT_PROTO_TCP: u32 = 0;
pub const PORT_PROTO_UDP: u32 = 1;
pub const PORT_PROTOS: u32 = 2;
pub const PORT_TABLE_SIZE: u32 = PORT_PROTOS * 65536;

pub const fn port_index(proto: u32, port: u16) -> u32 {
    proto * 65536 + port as u32
}

/// What a (protocol, destination port) pair matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortEntry {
    /// The narrowest port rule covering this port (rule reference, 0 = none).
    pub rule: u32,
    /// The always-allow rule id covering this port (0 = none).
    pub except: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_fit_the_reference() {
        assert_eq!(rule_ref(5, true) & RULE_ID_MASK, 5);
        assert_eq!(rule_ref(5, true) & !RULE_REF_MASK, 0);
    }

    #[test]
    fn long_v4_slots_never_collide_with_empty_or_tombstone() {
        assert!(long_v4_key(0, 25) > LONG_V4_TOMBSTONE);
        assert!(long_v4_hash(u32::MAX, 32) < LONG_V4_BUCKETS);
    }

    #[test]
    fn dir24_covers_every_slash24() {
        assert_eq!(DIR24_BLOCKS as usize * DIR24_BLOCK, 1 << 24);
        assert_eq!(core::mem::size_of::<Dir24Block>(), 64);
    }
}
