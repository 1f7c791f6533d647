//! Weighted consistent hashing into a Maglev lookup table, built in user space.
//!
//! The kernel reads `table[hash % M]`: the table maps each of `M` slots (M prime) to a
//! backend. As in Maglev (Eisenbud et al., NSDI 2016) every backend walks its own
//! permutation of the slots (`first + i * skip mod M`, from hashes of its key), one
//! walker per unit of weight. The fill rule is bounded-load rendezvous: in round `i`
//! every walker looks at slot `i` of its walk and takes it if it is free and the
//! walker's backend holds fewer than its cap, 105% of its weighted share of M. A free
//! slot reached by several walkers in the same round goes to the highest
//! `hash(slot, walker)`. So a slot belongs to whoever reaches it first, unless that
//! backend is full.
//!
//! Why not Maglev's own fill (each walker takes the next *free* slot of its walk in
//! turn)? It is perfectly even, but a removed backend frees slots that other walkers
//! skipped over, which shifts all their later picks: with 65537 slots, removing one
//! backend moved 1.5x the minimum at 100 backends and 6.9x at 1000. Here a removed
//! backend's slots go to the walkers that reach them next, and the only extra moves
//! come from backends at their cap, which now fill up one pick earlier and drop their
//! last one. Fewer backends reach the cap when each has more slots, hence
//! SLOTS_PER_BACKEND = 400: measured 1.01x at 100 backends (65537 slots), 1.06x at
//! 1000 (524287), about 1.1x at exactly 400 slots per backend, 1.1-1.2x at 250 (see
//! `cargo xtask bench`). The cost is space in the kernel's table pool (`MAGLEV_POOL`,
//! 2^23 entries): 1000 backends take 524287 entries (2 MiB, 6% of the pool, twice that
//! while a new table replaces the old), where 100 slots per backend took 131071.
//!
//! The table depends only on the backends' keys, weights and M, never on the order
//! they were added: every xlb node behind ECMP builds the same table.

/// Table sizes: primes, each about twice the one before, starting at the default. M
/// only changes when a pool crosses a size, since a new M moves almost every slot.
pub const TABLE_SIZES: [u32; 8] = [
    65_537, 131_071, 262_147, 524_287, 655_373, 1_048_573, 2_097_143, 4_194_301,
];

/// The default table size, unless the pool needs a larger one.
pub const DEFAULT_TABLE_SIZE: u32 = TABLE_SIZES[0];

/// At least this many slots per backend: keeps the disruption of removing a backend
/// within 1.2x of its minimum (fewer backends at their cap, see the module doc).
pub const SLOTS_PER_BACKEND: u64 = 400;

/// A backend takes at most this percentage of its weighted share of the slots: the
/// balance bound (max/mean slots per backend <= 1.05).
pub const CAP_PERCENT: u64 = 105;

/// The smallest listed prime with at least SLOTS_PER_BACKEND slots per backend.
pub fn table_size_for(backends: usize) -> Option<u32> {
    TABLE_SIZES
        .iter()
        .copied()
        .find(|m| *m as u64 >= SLOTS_PER_BACKEND * backends as u64)
}

/// The pool slots services with these numbers of backends need: each service's table,
/// and room to write the largest one anew while it is still in use. None when one
/// service has more backends than the largest table takes.
pub fn pool_need(backends: impl IntoIterator<Item = usize>) -> Option<u64> {
    let mut total = 0u64;
    let mut largest = 0u64;
    for n in backends {
        let m = table_size_for(n.max(1))? as u64;
        total += m;
        largest = largest.max(m);
    }
    Some(total + largest)
}

/// Spreads the walkers' hash seeds apart (2^64 / golden ratio).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's finaliser: every input bit flips about half of the output bits.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// FNV-1a, then `mix`: stable across hosts, builds and Rust versions.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The walk of a backend's walker number `walker` over M slots, as (first slot, skip):
/// step i is at `(first + i * skip) % m`, which visits every slot once since M is prime.
pub fn permutation(key: &str, walker: u32, m: u32) -> (u64, u64) {
    let (k, j, m) = (key.as_bytes(), walker as u64, m as u64);
    let first = hash(k, (3 * j).wrapping_mul(GOLDEN)) % m;
    let skip = hash(k, (3 * j + 1).wrapping_mul(GOLDEN)) % (m - 1) + 1;
    (first, skip)
}

/// A backend as Maglev sees it: a stable key (its address and port, as text) and a
/// weight (0 = takes no slots; one walker per unit, so 1 to 100 as services allow).
#[derive(Clone, Debug)]
pub struct Member {
    pub key: String,
    pub weight: u32,
}

/// One unit of a member's weight, walking its permutation.
struct Walker {
    member: usize,
    /// The slot this walker reaches in the current round.
    slot: u64,
    skip: u64,
    /// Seeds this walker's priority for a slot that several walkers reach in a round.
    tie: u64,
}

impl Walker {
    fn new(member: usize, key: &str, walker: u32, m: u32) -> Walker {
        let (slot, skip) = permutation(key, walker, m);
        let tie = hash(key.as_bytes(), (3 * walker as u64 + 2).wrapping_mul(GOLDEN));
        Walker {
            member,
            slot,
            skip,
            tie,
        }
    }

    /// On to the next slot of the walk.
    fn step(&mut self, m: u64) {
        self.slot += self.skip;
        if self.slot >= m {
            self.slot -= m;
        }
    }

    /// Rendezvous priority for `slot`: pseudo-random per (slot, walker), so no walker
    /// (hence no backend) wins ties more often than another.
    fn priority(&self, slot: usize) -> u64 {
        mix(slot as u64 ^ self.tie)
    }
}

/// One bit per slot.
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)])
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The most slots a member may hold: CAP_PERCENT of its share `m * weight / total`,
/// rounded down, but never less than the share rounded up, so that the caps add up to
/// at least M and every slot gets filled.
fn cap(weight: u32, total: u64, m: u32) -> u64 {
    let share = m as u64 * weight as u64;
    (share * CAP_PERCENT / (total * 100)).max(share.div_ceil(total))
}

/// Builds the table for `m` slots (a prime, from TABLE_SIZES): slot -> index into
/// `members` (`None` everywhere when no member has weight).
pub fn build(members: &[Member], m: u32) -> Vec<Option<u32>> {
    let total: u64 = members.iter().map(|b| b.weight as u64).sum();
    if total == 0 {
        return vec![None; m as usize];
    }
    let cap: Vec<u64> = members.iter().map(|b| cap(b.weight, total, m)).collect();
    // Walkers go in key order, so that what the order within a round still decides
    // (which of two backends near their caps gets a slot) does not depend on the order
    // of `members`.
    let mut by_key: Vec<usize> = (0..members.len()).collect();
    by_key.sort_by(|a, b| members[*a].key.cmp(&members[*b].key));
    let mut walkers: Vec<Walker> = by_key
        .iter()
        .flat_map(|&i| (0..members[i].weight).map(move |j| Walker::new(i, &members[i].key, j, m)))
        .collect();
    let mut active: Vec<usize> = (0..walkers.len()).collect();

    // Per slot: taken or not and taken in this round or not (bits, so that the walks'
    // random reads stay in the cache), and the walker holding it.
    let mut taken = Bits::new(m as usize);
    let mut fresh = Bits::new(m as usize);
    let mut fresh_slots = Vec::new();
    let mut owner = vec![0u32; m as usize];
    let mut load = vec![0u64; members.len()];
    let mut filled = 0u32;
    while filled < m {
        for &w in &active {
            let walker = &walkers[w];
            let (b, s) = (walker.member, walker.slot as usize);
            if load[b] < cap[b] {
                if !taken.get(s) {
                    taken.set(s);
                    fresh.set(s);
                    fresh_slots.push(s);
                    owner[s] = w as u32;
                    load[b] += 1;
                    filled += 1;
                } else if fresh.get(s) {
                    // Reached by another walker in this round: the higher priority has it.
                    let held = &walkers[owner[s] as usize];
                    if walker.priority(s) > held.priority(s) {
                        load[held.member] -= 1;
                        owner[s] = w as u32;
                        load[b] += 1;
                    }
                }
            }
            walkers[w].step(m as u64);
        }
        for s in fresh_slots.drain(..) {
            fresh.clear(s);
        }
        // Full backends stop; the caps add up to at least M, so some walker is left
        // while a slot is free, and it reaches that slot within M rounds.
        active.retain(|&w| load[walkers[w].member] < cap[walkers[w].member]);
    }
    owner
        .iter()
        .map(|&w| Some(walkers[w as usize].member as u32))
        .collect()
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

    /// Max slots of a member over its weighted share.
    fn max_over_share(members: &[Member], table: &[Option<u32>]) -> f64 {
        let total: u64 = members.iter().map(|b| b.weight as u64).sum();
        let share = |b: &Member| table.len() as f64 * b.weight as f64 / total as f64;
        shares(table, members.len())
            .iter()
            .zip(members)
            .map(|(s, b)| *s as f64 / share(b))
            .fold(0.0, f64::max)
    }

    #[test]
    fn every_slot_is_filled_and_balanced() {
        for n in [3, 100, 1000] {
            let members = pool(n);
            let table = build(&members, table_size_for(n).unwrap());
            assert!(table.iter().all(Option::is_some));
            let balance = max_over_share(&members, &table);
            assert!(balance <= 1.05, "max/mean {balance} at N = {n}");
        }
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
    fn mixed_weights_stay_within_the_cap() {
        let mut members = pool(100);
        for (i, b) in members.iter_mut().enumerate() {
            b.weight = if i % 2 == 0 { 100 } else { 50 };
        }
        let table = build(&members, 65_537);
        assert!(table.iter().all(Option::is_some));
        let balance = max_over_share(&members, &table);
        assert!(balance <= 1.05, "max over share {balance}");
    }

    #[test]
    fn the_table_does_not_depend_on_order() {
        let mut members = pool(10);
        for (i, b) in members.iter_mut().enumerate() {
            b.weight = 1 + i as u32 * 11;
        }
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

    /// Slots that changed owner when `removed` left, over the slots it held.
    fn disruption(members: &[Member], removed: usize, m: u32) -> f64 {
        let before = build(members, m);
        let mut rest = members.to_vec();
        rest[removed].weight = 0;
        let after = build(&rest, m);
        assert!(after.iter().all(|a| *a != Some(removed as u32)));
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64;
        moved / shares(&before, members.len())[removed] as f64
    }

    #[test]
    fn removing_a_backend_moves_little_more_than_its_slots() {
        // Weight 100 is 100 walkers per backend, many reaching a slot in the same round:
        // were those ties to favour some backends, they would fill up, and the disruption
        // at N = 1000 would be about 1.5x.
        for (n, weight) in [(100, 1), (1000, 1), (1000, 100)] {
            let mut members = pool(n);
            for b in &mut members {
                b.weight = weight;
            }
            let m = table_size_for(n).unwrap();
            let d = disruption(&members, 37, m);
            assert!(
                d <= 1.2,
                "disruption {d:.2}x the minimum at N = {n}, weight {weight}, M = {m}"
            );
        }
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
        assert_eq!(table_size_for(163), Some(65_537));
        assert_eq!(table_size_for(164), Some(131_071));
        assert_eq!(table_size_for(1000), Some(524_287));
        assert_eq!(table_size_for(100_000), None);
    }

    #[test]
    fn no_member_no_table() {
        assert!(build(&[], 65_537).iter().all(Option::is_none));
    }
}
