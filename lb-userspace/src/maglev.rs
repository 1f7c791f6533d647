//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016), built in user space.
//!
//! The table maps each of `M` slots (M prime) to a backend. Every backend walks its own
//! permutation of the slots (offset and skip from two hashes of its key) and claims the
//! next free slot of its walk in turn; a backend of weight w gets w/max_weight turns per
//! round, so its share of the table is proportional to its weight. The result depends
//! only on the backends' keys, weights and M: every xlb node behind ECMP builds the same
//! table, whatever order the backends were added in.

/// Table sizes: primes, each about twice the one before, starting at the default.
pub const TABLE_SIZES: [u32; 8] = [
    65_537, 131_071, 262_147, 524_287, 655_373, 1_048_573, 2_097_143, 4_194_301,
];

/// The default table size, unless the pool needs a larger one.
pub const DEFAULT_TABLE_SIZE: u32 = TABLE_SIZES[0];

/// At least this many slots per backend (keeps the balance within a few percent and the
/// disruption of a change near its minimum).
pub const SLOTS_PER_BACKEND: u64 = 100;

/// The smallest listed prime with at least SLOTS_PER_BACKEND slots per backend.
pub fn table_size_for(backends: usize) -> Option<u32> {
    TABLE_SIZES
        .iter()
        .copied()
        .find(|m| *m as u64 >= SLOTS_PER_BACKEND * backends as u64)
}

/// FNV-1a, then splitmix64's finaliser: stable across hosts, builds and Rust versions.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A backend as Maglev sees it: a stable key (its address and port, as text) and a
/// weight (0 = takes no slots).
#[derive(Clone, Debug)]
pub struct Member {
    pub key: String,
    pub weight: u32,
}

/// Builds the table: slot -> index into `members` (`None` when no member has weight).
pub fn build(members: &[Member], m: u32) -> Vec<Option<u32>> {
    let m = m as u64;
    let mut table: Vec<Option<u32>> = vec![None; m as usize];
    // Walk in key order, so the table does not depend on the order of `members`.
    let mut order: Vec<usize> = (0..members.len())
        .filter(|i| members[*i].weight > 0)
        .collect();
    order.sort_by(|a, b| members[*a].key.cmp(&members[*b].key));
    if order.is_empty() {
        return table;
    }
    let walk: Vec<(u64, u64)> = order
        .iter()
        .map(|i| {
            let k = members[*i].key.as_bytes();
            (hash(k, 0) % m, hash(k, 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1)
        })
        .collect();
    let max_weight = order
        .iter()
        .map(|i| members[*i].weight as u64)
        .max()
        .unwrap_or(1);
    let mut next = vec![0u64; order.len()];
    let mut credit = vec![0u64; order.len()];
    let mut filled = 0u64;
    while filled < m {
        for (j, &i) in order.iter().enumerate() {
            credit[j] += members[i].weight as u64;
            while credit[j] >= max_weight {
                credit[j] -= max_weight;
                let (offset, skip) = walk[j];
                let slot = loop {
                    let c = (offset + next[j] * skip) % m;
                    next[j] += 1;
                    if table[c as usize].is_none() {
                        break c;
                    }
                };
                table[slot as usize] = Some(i as u32);
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }
    table
}

/// Slots per member.
pub fn shares(table: &[Option<u32>], members: usize) -> Vec<u64> {
    let mut count = vec![0u64; members];
    for i in table.iter().flatten() {
        count[*i as usize] += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                key: format!("203.0.113.{}:{}", i % 250, 8000 + i / 250),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn every_slot_is_filled_and_balanced() {
        let members = pool(100);
        let table = build(&members, 65_537);
        assert!(table.iter().all(Option::is_some));
        let s = shares(&table, 100);
        let mean = 65_537.0 / 100.0;
        let max = *s.iter().max().unwrap() as f64;
        assert!(max / mean <= 1.05, "max/mean {}", max / mean);
    }

    #[test]
    fn weights_set_the_shares() {
        let mut members = pool(3);
        members[1].weight = 2;
        members[2].weight = 0;
        let s = shares(&build(&members, 65_537), 3);
        assert_eq!(s[2], 0);
        let ratio = s[1] as f64 / s[0] as f64;
        assert!((ratio - 2.0).abs() < 0.02, "ratio {ratio}");
    }

    #[test]
    fn the_table_does_not_depend_on_order() {
        let members = pool(10);
        let mut reversed = members.clone();
        reversed.reverse();
        let a = build(&members, 65_537);
        let b = build(&reversed, 65_537);
        // Same key in the same slot (indices differ: map them back to keys).
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                members[x.unwrap() as usize].key,
                reversed[y.unwrap() as usize].key
            );
        }
    }

    #[test]
    fn removing_one_backend_moves_little_more_than_its_slots() {
        let members = pool(100);
        let before = build(&members, 65_537);
        let removed = 37u32;
        let mut rest = members.clone();
        rest[removed as usize].weight = 0;
        let after = build(&rest, 65_537);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64;
        let minimum = before.iter().filter(|a| **a == Some(removed)).count() as f64;
        // Maglev is not minimally disruptive: freed slots cascade. At 655 slots per
        // backend it is within 1.2x of the minimum (see `cargo xtask bench`).
        assert!(
            moved / minimum <= 1.75,
            "disruption {:.2}x the minimum",
            moved / minimum
        );
        let big_before = build(&members, 655_373);
        let big_after = build(&rest, 655_373);
        let moved = big_before
            .iter()
            .zip(&big_after)
            .filter(|(a, b)| a != b)
            .count() as f64;
        let minimum = big_before.iter().filter(|a| **a == Some(removed)).count() as f64;
        assert!(
            moved / minimum <= 1.2,
            "disruption {:.2}x at 655373 slots",
            moved / minimum
        );
        // Every slot of the removed backend moved; the rest mostly stayed.
        assert!(after.iter().all(|a| *a != Some(removed)));
    }

    #[test]
    fn table_sizes_are_prime_and_grow_with_the_pool() {
        for m in TABLE_SIZES {
            assert!(
                (2..=(m as f64).sqrt() as u32).all(|d| m % d != 0),
                "{m} is not prime"
            );
        }
        assert_eq!(table_size_for(3), Some(65_537));
        assert_eq!(table_size_for(1000), Some(131_071));
        assert_eq!(table_size_for(100_000), None);
    }

    #[test]
    fn no_member_no_table() {
        assert!(build(&[], 65_537).iter().all(Option::is_none));
    }
}
