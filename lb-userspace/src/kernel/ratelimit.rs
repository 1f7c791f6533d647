//! The rate limits' projection onto the kernel maps (see lb_common::ratelimit): the
//! limits in force as a double-buffered set (the inactive copy written whole, then
//! made active), each in a slot of its own whose buckets, sketch rows and counters it
//! keeps while it exists (a changed rate keeps them too); a slot given to another limit
//! gets a new generation (its old buckets never match again), zeroed sketch rows,
//! whole-prefix bucket and counters. `sync` is idempotent, and a restart that adopts
//! the pinned maps finds each limit's slot again. Also the endpoints never limited
//! (MAP_RL_EXEMPT).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    sync::atomic::Ordering,
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues},
};
use lb_common::*;

use super::{datapath::take, mmap::MmapTable};
use crate::model::ratelimit::{Limit, Per};

/// A limit as the kernel checks it, less its slot and generation: what a slot holds
/// across syncs (and restarts) while it is the same limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Identity {
    net: [u32; 4],
    mask: [u32; 4],
    key_mask: [u32; 4],
    service: u32,
    family: u8,
    flags: u8,
}

impl Identity {
    fn of(k: &RateLimit) -> Self {
        Identity {
            net: k.net.0,
            mask: k.mask.0,
            key_mask: k.key_mask.0,
            service: k.service,
            family: k.family,
            flags: k.flags,
        }
    }
}

/// The Addr16 mask of the first `len` bits of an address of `family`.
fn mask16(len: u8, family: u8) -> Addr16 {
    let bits: u128 = match (len, family) {
        (0, _) => 0,
        (n, FAMILY_V4) => (u128::MAX << (128 - n.min(32) as u32)) & (u128::MAX << 96),
        (n, _) => u128::MAX << (128 - n.min(128) as u32),
    };
    Addr16::from_bytes(bits.to_be_bytes())
}

fn addr16(a: &IpAddr) -> (Addr16, u8) {
    match a {
        IpAddr::V4(v) => (addr16_v4(v.octets()), FAMILY_V4),
        IpAddr::V6(v) => (Addr16::from_bytes(v.octets()), FAMILY_V6),
    }
}

/// `l` as the kernel checks it, for the service with id `service` (0: all traffic).
pub fn kernel_limit(l: &Limit, service: u32) -> RateLimit {
    let m = &l.matches;
    let (net, mask, family) = match &m.prefix {
        Some(p) => {
            let (a, f) = addr16(&p.addr);
            (a, mask16(p.len, f), f)
        }
        None => (Addr16::default(), Addr16::default(), 0),
    };
    let (key_mask, whole) = match m.per {
        Per::Address => (Addr16([u32::MAX; 4]), false),
        Per::Length(n) => (mask16(n, family), false),
        Per::Prefix => (Addr16::default(), true),
    };
    RateLimit {
        net,
        mask,
        key_mask,
        interval: l.interval_units(),
        tolerance: l.tolerance_units().unwrap_or(u64::MAX >> 2),
        service,
        generation: 0,
        family,
        flags: if m.new_flows { LIMIT_NEW_FLOWS } else { 0 } | if whole { LIMIT_WHOLE } else { 0 },
        slot: 0,
        _pad: [0; 5],
    }
}

/// What one slot's checks counted, summed over CPUs.
pub type SlotStats = RlStats;

/// The limits' maps and what user space keeps to update them.
pub struct RateLimiter {
    sets: Array<MapData, LimitSet>,
    active: Array<MapData, u32>,
    state: Array<MapData, u64>,
    stats: PerCpuArray<MapData, RlStats>,
    exempt: HashMap<MapData, EndpointKey, u8>,
    buckets: Array<MapData, RlBucketSet>,
    sketch: MmapTable,
    /// The set in force (what the active entry holds).
    current: LimitSet,
    /// The identity in each slot.
    slots: [Option<Identity>; MAX_LIMITS as usize],
    generations: [u32; MAX_LIMITS as usize],
    /// What MAP_RL_EXEMPT holds.
    exempt_keys: HashSet<EndpointKey>,
    ncpus: usize,
}

impl RateLimiter {
    /// Takes the maps out of the loaded object; `adopted`: they are a running
    /// datapath's, whose set in force tells each limit's slot and generation.
    pub fn new(bpf: &mut Ebpf, ncpus: usize, adopted: bool) -> Result<Self> {
        let sketch = MmapTable::new(
            bpf.map(MAP_RL_SKETCH).context("the rate limits' sketch")?,
            RL_SKETCH_CELLS as usize * 8,
        )?;
        let mut rl = RateLimiter {
            sets: take(bpf, MAP_RL_SETS)?,
            active: take(bpf, MAP_RL_ACTIVE)?,
            state: take(bpf, MAP_RL_STATE)?,
            stats: take(bpf, MAP_RL_STATS)?,
            exempt: take(bpf, MAP_RL_EXEMPT)?,
            buckets: take(bpf, MAP_RL_BUCKETS)?,
            sketch,
            current: LimitSet::default(),
            slots: [None; MAX_LIMITS as usize],
            generations: [0; MAX_LIMITS as usize],
            exempt_keys: HashSet::new(),
            ncpus,
        };
        if adopted {
            rl.adopt()?;
        }
        Ok(rl)
    }

    /// Reads the running set: slots, generations, exempt endpoints.
    fn adopt(&mut self) -> Result<()> {
        let which = self
            .active
            .get(&0, 0)
            .context("reading the active limit set")?
            & 1;
        self.current = self.sets.get(&which, 0).context("reading the limit set")?;
        let n = (self.current.count as usize).min(MAX_LIMITS as usize);
        for k in &self.current.limits[..n] {
            let slot = k.slot as usize % MAX_LIMITS as usize;
            self.slots[slot] = Some(Identity::of(k));
            self.generations[slot] = k.generation;
        }
        // Generations of free slots too: a slot's next limit must not match old keys.
        for set in 0..2u32 {
            let s = self.sets.get(&set, 0).context("reading a limit set")?;
            for k in &s.limits[..(s.count as usize).min(MAX_LIMITS as usize)] {
                let slot = k.slot as usize % MAX_LIMITS as usize;
                self.generations[slot] = self.generations[slot].max(k.generation);
            }
        }
        for k in self.exempt.keys() {
            self.exempt_keys
                .insert(k.context("reading the exempt endpoints")?);
        }
        Ok(())
    }

    /// Brings the maps to `limits` (each with its service's id, 0 for all traffic).
    pub fn sync(&mut self, limits: &[(Limit, u32)]) -> Result<()> {
        if limits.len() > MAX_LIMITS as usize {
            return Err(anyhow!("too many rate limits: at most {MAX_LIMITS}"));
        }
        let want: Vec<RateLimit> = limits.iter().map(|(l, s)| kernel_limit(l, *s)).collect();
        let ids: BTreeSet<Identity> = want.iter().map(Identity::of).collect();
        // Slots whose limit is gone are free; those of the wanted limits stay.
        let mut slots = self.slots;
        for s in slots.iter_mut() {
            if s.is_some_and(|id| !ids.contains(&id)) {
                *s = None;
            }
        }
        let mut next = LimitSet {
            exempt: self.current.exempt,
            exempt_any_port: self.current.exempt_any_port,
            clock_offset_ns: self.current.clock_offset_ns,
            ..LimitSet::default()
        };
        let mut fresh = Vec::new();
        let mut by_service: Vec<RateLimit> = Vec::with_capacity(want.len());
        for mut k in want {
            let id = Identity::of(&k);
            let slot = match slots.iter().position(|s| *s == Some(id)) {
                Some(s) => s,
                None => {
                    let s = slots
                        .iter()
                        .position(Option::is_none)
                        .ok_or_else(|| anyhow!("no free rate-limit slot"))?;
                    slots[s] = Some(id);
                    self.generations[s] = self.generations[s].wrapping_add(1);
                    fresh.push(s);
                    s
                }
            };
            k.slot = slot as u8;
            k.generation = self.generations[slot];
            by_service.push(k);
        }
        // All traffic's limits first, then by service (the program reads them in order).
        by_service.sort_by_key(|k| (k.service, k.slot));
        next.count = by_service.len() as u32;
        for (i, k) in by_service.into_iter().enumerate() {
            next.limits[i] = k;
        }
        for s in fresh {
            self.reset_slot(s)?;
        }
        self.slots = slots;
        self.publish(next)
    }

    /// A slot's state back to zero (its sketch rows, whole bucket and counters) before
    /// a new limit takes it.
    fn reset_slot(&mut self, slot: usize) -> Result<()> {
        let words = self.sketch.words64();
        let row = RL_SKETCH_WIDTH as usize;
        let start = slot * RL_SKETCH_ROWS as usize * row;
        for w in &words[start..start + RL_SKETCH_ROWS as usize * row] {
            w.store(0, Ordering::Relaxed);
        }
        self.state
            .set(slot as u32, 0, 0)
            .context("resetting a limit's bucket")?;
        let zeros = PerCpuValues::try_from(vec![RlStats::default(); self.ncpus])?;
        self.stats
            .set(slot as u32, zeros, 0)
            .context("resetting a limit's counters")?;
        Ok(())
    }

    /// Writes `next` into the inactive set and makes it active (unchanged: nothing).
    fn publish(&mut self, next: LimitSet) -> Result<()> {
        if next == self.current {
            return Ok(());
        }
        let which = self.active.get(&0, 0).unwrap_or(0) & 1;
        let other = which ^ 1;
        self.sets
            .set(other, next, 0)
            .context("writing the limit set")?;
        std::sync::atomic::fence(Ordering::Release);
        self.active
            .set(0, other, 0)
            .context("switching the limit set")?;
        self.current = next;
        Ok(())
    }

    /// The endpoints whose packets no limit drops (see MAP_RL_EXEMPT).
    pub fn set_exempt(&mut self, keys: &HashSet<EndpointKey>) -> Result<()> {
        if keys.len() > MAX_RL_EXEMPT as usize {
            return Err(anyhow!(
                "too many endpoints exempt from rate limits: at most {MAX_RL_EXEMPT}"
            ));
        }
        let gone: Vec<EndpointKey> = self.exempt_keys.difference(keys).copied().collect();
        for k in keys.difference(&self.exempt_keys) {
            self.exempt
                .insert(k, 1, 0)
                .context("writing an exempt endpoint")?;
        }
        for k in &gone {
            match self.exempt.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("removing an exempt endpoint"),
            }
        }
        self.exempt_keys = keys.clone();
        let next = LimitSet {
            exempt: keys.len() as u32,
            exempt_any_port: keys.iter().filter(|k| k.port == 0).count() as u32,
            ..self.current
        };
        self.publish(next)
    }

    /// The slot of limit `l` (for service id `service`), if it is in force.
    pub fn slot_of(&self, l: &Limit, service: u32) -> Option<u32> {
        let id = Identity::of(&kernel_limit(l, service));
        self.slots
            .iter()
            .position(|s| *s == Some(id))
            .map(|s| s as u32)
    }

    /// Every slot's counters, summed over CPUs.
    pub fn stats(&self) -> Result<BTreeMap<u32, SlotStats>> {
        let mut out = BTreeMap::new();
        for (slot, s) in self.slots.iter().enumerate() {
            if s.is_none() {
                continue;
            }
            let per_cpu = self
                .stats
                .get(&(slot as u32), 0)
                .context("reading a limit's counters")?;
            let mut t = RlStats::default();
            for c in per_cpu.iter() {
                t.passed += c.passed;
                t.dropped += c.dropped;
                t.sketch_dropped += c.sketch_dropped;
                t.exempted += c.exempted;
                t.promoted += c.promoted;
            }
            out.insert(slot as u32, t);
        }
        Ok(out)
    }

    /// Zeroes every limit's counters (`xlb stats reset`).
    pub fn reset_counters(&mut self) -> Result<()> {
        for slot in 0..MAX_LIMITS {
            let zeros = PerCpuValues::try_from(vec![RlStats::default(); self.ncpus])?;
            self.stats
                .set(slot, zeros, 0)
                .context("resetting a limit's counters")?;
        }
        Ok(())
    }

    /// Moves the limits' clock `ns` forward (tests: buckets refill without waiting).
    pub fn advance_clock(&mut self, ns: u64) -> Result<()> {
        let next = LimitSet {
            clock_offset_ns: self.current.clock_offset_ns + ns,
            ..self.current
        };
        self.publish(next)
    }

    /// The exact buckets in use (a walk of the whole table: tests and the bench).
    pub fn exact_buckets(&self) -> Result<usize> {
        let mut n = 0;
        for i in 0..RL_SETS {
            let s = self.buckets.get(&i, 0)?;
            n += s.entries.iter().filter(|e| e.fp != 0).count();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ratelimit::LimitWords;

    fn limit(per: &str, prefix: Option<&str>) -> Limit {
        LimitWords {
            rate: "10/s",
            burst: None,
            per: Some(per),
            prefix,
            new_flows: true,
            service: None,
        }
        .limit()
        .unwrap()
    }

    #[test]
    fn limits_project_their_prefix_and_key() {
        let k = kernel_limit(&limit("/24", Some("192.0.2.0/23")), 3);
        assert_eq!(k.family, FAMILY_V4);
        assert_eq!(k.net, addr16_v4([192, 0, 2, 0]));
        assert_eq!(k.mask, addr16_v4([255, 255, 254, 0]));
        assert_eq!(k.key_mask, addr16_v4([255, 255, 255, 0]));
        assert_eq!((k.service, k.flags), (3, LIMIT_NEW_FLOWS));
        assert_eq!(k.interval, RL_UNITS_PER_SEC / 10);
        assert_eq!(k.tolerance, 9 * RL_UNITS_PER_SEC / 10);
        let k = kernel_limit(&limit("/64", Some("2001:db8::/32")), 0);
        assert_eq!(
            k.key_mask,
            Addr16::from_bytes((u128::MAX << 64).to_be_bytes())
        );
        let k = kernel_limit(&limit("address", None), 0);
        assert_eq!(
            (k.family, k.mask, k.key_mask.0),
            (0, Addr16::default(), [u32::MAX; 4])
        );
        let k = kernel_limit(&limit("prefix", Some("198.51.100.0/24")), 0);
        assert_eq!(k.flags & LIMIT_WHOLE, LIMIT_WHOLE);
    }
}
