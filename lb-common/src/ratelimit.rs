//! Rate limits: token buckets on sources, per address, per prefix of a length, or for
//! a prefix as a whole; for every packet or only for new flows; for all traffic or one
//! service.
//!
//! A bucket is GCRA (the virtual-scheduling form of a token bucket): one u64, the
//! theoretical arrival time `tat` of the next packet in clock units (1/16 ns). A packet
//! at `now` is within the limit when `max(tat, now) - now <= tolerance`, and then
//! `tat = max(tat, now) + interval`: `interval` is 1/rate, `tolerance` is
//! (burst - 1) x interval. No division on the packet path.
//!
//! Per-key limits (an address, or a prefix of a length) keep two structures, so that a
//! flood of spoofed random sources never makes a bucket per packet:
//! - **exact buckets** for sources that proved heavy: MAP_RL_BUCKETS, a set-associative
//!   array (RL_SETS sets of RL_WAYS entries, one cache line each) of (fingerprint, tat),
//!   written by the program itself, never a BPF hash map insert;
//! - **a count-min sketch** for every other source: MAP_RL_SKETCH, RL_SKETCH_ROWS rows of
//!   RL_SKETCH_WIDTH GCRA cells per limit. A key hashes to one cell a row; its backlog
//!   is the smallest of its cells' (each cell holds at least the key's own traffic, so a
//!   key over its limit is over in every row: the sketch never lets a source past its
//!   limit; colliding heavy keys can make it refuse an innocent one, which promotion
//!   then gives a bucket of its own). Allowed packets raise the key's cells to the
//!   estimate plus one interval (conservative update).
//!
//! A key moves from the sketch to an exact bucket (promotion) when the sketch refuses
//! it, or with probability 1/RL_PROMOTE_ONE_IN on a packet the sketch allowed (sample
//! and hold: a heavy source is caught within a few dozen packets, a spoofed source that
//! sends one packet rarely is); at most RL_PROMOTIONS_PER_SEC promotions a second over
//! all limits (a GCRA of its own in MAP_RL_STATE), into the set's first empty entry,
//! else the staler (smaller tat: least recently allowed) of two its hash picks.

use bytemuck::{Pod, Zeroable};

use crate::Addr16;

/// Limits in force at once (slots 0..MAX_LIMITS), over all services; the metrics label
/// a limit by its slot, so this bounds their cardinality too.
pub const MAX_LIMITS: u32 = 16;

/// Exact buckets: sets of RL_WAYS entries (one 64-byte cache line each; 1 MiB in all,
/// small enough to stay mostly in cache under a flood).
pub const RL_WAYS: usize = 4;
pub const RL_SETS: u32 = 1 << 14;
/// Sketch cells per row and rows per limit (2 x 8192 x 8 bytes = 128 KiB a limit).
pub const RL_SKETCH_WIDTH: u32 = 1 << 13;
pub const RL_SKETCH_ROWS: u32 = 2;
pub const RL_SKETCH_CELLS: u32 = MAX_LIMITS * RL_SKETCH_ROWS * RL_SKETCH_WIDTH;
/// Sample-and-hold: one sketch-allowed packet in this many promotes its key.
pub const RL_PROMOTE_ONE_IN: u32 = 64;
/// Promotions a second over all limits (a quarter of the exact buckets), and how many
/// may come at once.
pub const RL_PROMOTIONS_PER_SEC: u64 = (RL_SETS as u64 * RL_WAYS as u64) / 4;
pub const RL_PROMOTION_BURST: u64 = 4096;

/// The clock of the buckets: bpf_ktime_get_coarse_ns() << RL_CLOCK_SHIFT (1/16 ns, so
/// rates up to 10^9 a second keep their interval within 3%; wraps after 36 years of
/// uptime). The coarse clock (a tick, 1-4 ms) costs a few ns where the precise one costs
/// tens on a VM: buckets refill by the tick, which a burst of at least one tick's
/// packets absorbs.
pub const RL_CLOCK_SHIFT: u32 = 4;
pub const RL_UNITS_PER_SEC: u64 = 1_000_000_000 << RL_CLOCK_SHIFT;

/// `RateLimit::flags`: only packets that open a flow count (see `PHASE_*`).
pub const LIMIT_NEW_FLOWS: u8 = 1;
/// One bucket for the whole prefix (MAP_RL_STATE[slot]) instead of one per key.
pub const LIMIT_WHOLE: u8 = 2;

/// Where the program checks limits (the `phase` of the check). A new flow is a TCP SYN
/// without ACK; a UDP packet to a service that has no flow-table entry, or one not to
/// a service (xlb keeps no flow for it: every such packet counts); a packet of another
/// protocol but a later fragment.
/// - the firewall, after it passed the packet: the limits of all traffic (but UDP's
///   new-flow ones for a packet to a service: the balancer knows its flow);
pub const PHASE_FIREWALL: u32 = 0;
/// - the balancer, a packet to a service: that service's limits, and the new-flow
///   limits of all traffic for UDP.
pub const PHASE_SERVICE: u32 = 1;

/// One limit as the program checks it. Addresses in the Addr16 layout (network order,
/// IPv4 in the first word).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RateLimit {
    /// The sources it covers: `src & mask == net`, of `family` (0: both families, and
    /// then net and mask are zero).
    pub net: Addr16,
    pub mask: Addr16,
    /// What of the source makes the key of a bucket (an address: all ones; a prefix of
    /// a length: its mask; unused with LIMIT_WHOLE).
    pub key_mask: Addr16,
    /// 1/rate and (burst - 1)/rate in clock units (RL_CLOCK_SHIFT).
    pub interval: u64,
    pub tolerance: u64,
    /// The service's id (the balancer's), 0: all traffic.
    pub service: u32,
    /// Bumped when the slot is given to another limit: its old buckets never match.
    pub generation: u32,
    /// FAMILY_V4, FAMILY_V6, or 0 for both.
    pub family: u8,
    pub flags: u8,
    /// Its slot: its buckets' keys, sketch rows, MAP_RL_STATE entry and counters.
    pub slot: u8,
    pub _pad: [u8; 5],
}

/// The limits in force (MAP_RL_SETS has two, MAP_RL_ACTIVE says which one the program
/// reads: user space writes the other, then switches).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LimitSet {
    /// Limits in `limits[..count]`, ordered by service id (all traffic's first).
    pub count: u32,
    /// Entries of MAP_RL_EXEMPT: 0 skips its lookup.
    pub exempt: u32,
    /// Of those, entries of port 0 (every source port of the address: the backends of
    /// services of every port): 0 skips the second lookup.
    pub exempt_any_port: u32,
    pub _pad: u32,
    /// Added to the clock (nanoseconds): 0 but in tests, which move time forward.
    pub clock_offset_ns: u64,
    pub limits: [RateLimit; MAX_LIMITS as usize],
}

impl Default for LimitSet {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

/// One exact bucket: the key's fingerprint (0: empty) and its tat.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RlEntry {
    pub fp: u64,
    pub tat: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RlBucketSet {
    pub entries: [RlEntry; RL_WAYS],
}

/// Per limit slot, per CPU: what its checks decided.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RlStats {
    /// Packets the limit covered and passed.
    pub passed: u64,
    /// Packets over the limit, dropped (Reason::RateLimited).
    pub dropped: u64,
    /// Of those, refused by the sketch (the source had no exact bucket).
    pub sketch_dropped: u64,
    /// Over the limit but passed: a backend's answer (MAP_RL_EXEMPT) or always allowed.
    pub exempted: u64,
    /// Sources given an exact bucket.
    pub promoted: u64,
}

/// MAP_RL_STATE: per slot the tat of a LIMIT_WHOLE limit, then the promotion budget's.
pub const RL_STATE_PROMOTE: u32 = MAX_LIMITS;
pub const RL_STATE_ENTRIES: u32 = MAX_LIMITS + 1;

/// Entries of MAP_RL_EXEMPT: the endpoints whose answers are never limited (backends,
/// their health-check ports, the https service's pool backends).
pub const MAX_RL_EXEMPT: u32 = 1 << 17;

/// The key hash of a bucket: limit slot, generation, family and the masked source
/// (two rounds of a 64-bit finaliser). Low bits pick the set, bits 16.. and 32.. the
/// sketch cells of rows 0 and 1; the whole hash (| 1) is the fingerprint.
#[inline(always)]
pub const fn rl_hash(slot: u32, generation: u32, family: u8, key: &Addr16) -> u64 {
    let seed = ((slot as u64) << 40) | ((generation as u64) << 8) | family as u64;
    let a = key.0[0] as u64 | (key.0[1] as u64) << 32;
    let b = key.0[2] as u64 | (key.0[3] as u64) << 32;
    rl_mix(rl_mix(seed ^ a) ^ b)
}

#[inline(always)]
pub const fn rl_mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// The sketch cell of row `row` for hash `h` of the limit in `slot`.
#[inline(always)]
pub const fn rl_cell(slot: u32, row: u32, h: u64) -> u32 {
    let col = (h >> (16 + 16 * row)) as u32 & (RL_SKETCH_WIDTH - 1);
    (slot * RL_SKETCH_ROWS + row) * RL_SKETCH_WIDTH + col
}

// The maps (names of the statics in lb-ebpf and of their pins).

/// `Array<LimitSet>` of 2: the limits in force, double-buffered.
pub const MAP_RL_SETS: &str = "XLB_RL_SETS";
/// `Array<u32>` of 1: which entry of MAP_RL_SETS the program reads.
pub const MAP_RL_ACTIVE: &str = "XLB_RL_ACTIVE";
/// `Array<RlBucketSet>` of RL_SETS: the exact buckets.
pub const MAP_RL_BUCKETS: &str = "XLB_RL_BUCKETS";
/// Mmapable `Array<u64>` of RL_SKETCH_CELLS: the sketches (user space zeroes a slot's
/// rows before giving it to a new limit).
pub const MAP_RL_SKETCH: &str = "XLB_RL_SKETCH";
/// `Array<u64>` of RL_STATE_ENTRIES (see RL_STATE_PROMOTE).
pub const MAP_RL_STATE: &str = "XLB_RL_STATE";
/// Per-CPU `Array<RlStats>` of MAX_LIMITS, by slot.
pub const MAP_RL_STATS: &str = "XLB_RL_STATS";
/// `HashMap<EndpointKey, u8>`: sources (address, source port or 0 for any, protocol)
/// whose packets a limit never drops: the backends' answers, to the balancer's flows and to the
/// daemon's own health checks and https upstream connections.
pub const MAP_RL_EXEMPT: &str = "XLB_RL_EXEMPT";
// All of these are in STATE_MAPS: a restart keeps the limits' buckets and counters.

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_padding_and_keep_their_size() {
        assert_eq!(core::mem::size_of::<RateLimit>(), 80);
        assert_eq!(core::mem::size_of::<RlBucketSet>(), 64);
        assert_eq!(
            core::mem::size_of::<LimitSet>(),
            24 + MAX_LIMITS as usize * 80
        );
    }

    #[test]
    fn cells_stay_in_their_limits_rows() {
        for slot in [0, MAX_LIMITS - 1] {
            for h in [0u64, u64::MAX, 0x1234_5678_9abc_def0] {
                for row in 0..RL_SKETCH_ROWS {
                    let c = rl_cell(slot, row, h);
                    let lo = (slot * RL_SKETCH_ROWS + row) * RL_SKETCH_WIDTH;
                    assert!(c >= lo && c < lo + RL_SKETCH_WIDTH);
                }
            }
        }
        const { assert!(RL_SKETCH_ROWS <= 2, "the hash has bits for two rows") };
    }

    #[test]
    fn keys_of_other_limits_and_families_hash_apart() {
        let k = Addr16([0x0a00_0001, 0, 0, 0]);
        assert_ne!(rl_hash(0, 1, 4, &k), rl_hash(1, 1, 4, &k));
        assert_ne!(rl_hash(0, 1, 4, &k), rl_hash(0, 2, 4, &k));
        assert_ne!(rl_hash(0, 1, 4, &k), rl_hash(0, 1, 6, &k));
    }
}
