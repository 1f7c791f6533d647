//! The firewall's tables: the projection of a `RuleSet` onto the maps. IPv4 prefixes
//! up to /24 are painted into a DIR-24-8 table (with a summary bitmap of busy blocks),
//! longer ones go to an open-addressed long-prefix table; IPv6 and the except lists are
//! LPM tries; the port table is rewritten entry by entry. Every write keeps the program
//! seeing the old or the new value of an entry, never a torn one.

use std::{net::IpAddr, os::fd::AsFd, os::fd::AsRawFd, sync::atomic::Ordering};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{LpmTrie, Map, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key},
};
use lb_common::*;

use super::{datapath::take, mmap::MmapTable};
use crate::model::{
    fxhash::{FxHashMap, FxHashSet},
    rules::{Action, Change, Match, Prefix, Rule, RuleSet},
};

/// The firewall's maps and what user space keeps to update them incrementally.
pub struct Firewall {
    hits: PerCpuArray<MapData, u64>,
    /// The per-rule hit counters' fd, for batch reads.
    hits_fd: std::os::fd::RawFd,
    prefix_v6: LpmTrie<MapData, [u8; 16], u32>,
    except_v4: LpmTrie<MapData, [u8; 4], u32>,
    except_v6: LpmTrie<MapData, [u8; 16], u32>,
    dir24: MmapTable,
    summary: MmapTable,
    long_v4: MmapTable,
    ports: MmapTable,
    /// Rule ids removed since load: their hit counters are zeroed when reused (fresh
    /// ids are zero already, which keeps bulk loads free of per-rule syscalls).
    used_ids: FxHashSet<u32>,
    /// Per /24: 1 + the length of the prefix painted there, 0 if none.
    depth: Vec<u8>,
    /// Per /24 holding longer prefixes: how many of each length 25..=32.
    long_count: FxHashMap<u32, [u32; 8]>,
    ncpus: usize,
}

fn v4_bits(p: &Prefix) -> u32 {
    match p.addr {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(_) => unreachable!("v4_bits on an IPv6 prefix"),
    }
}

fn v6_bytes(p: &Prefix) -> [u8; 16] {
    match p.addr {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => unreachable!("v6_bytes on an IPv4 prefix"),
    }
}

fn mask(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - len))
    }
}

impl Firewall {
    /// Takes the firewall's maps out of the loaded object.
    pub fn new(bpf: &mut Ebpf, ncpus: usize) -> Result<Self> {
        let dir24 = MmapTable::new(
            bpf.map(MAP_DIR24).context("dir24 map")?,
            DIR24_BLOCKS as usize * std::mem::size_of::<Dir24Block>(),
        )?;
        let summary = MmapTable::new(
            bpf.map(MAP_DIR24_SUMMARY).context("dir24 summary map")?,
            DIR24_SUMMARY_WORDS as usize * 8,
        )?;
        let long_v4 = MmapTable::new(
            bpf.map(MAP_LONG_V4).context("long-prefix map")?,
            LONG_V4_BUCKETS as usize * std::mem::size_of::<LongV4Bucket>(),
        )?;
        let ports = MmapTable::new(
            bpf.map(MAP_PORTS).context("ports map")?,
            PORT_TABLE_SIZE as usize * std::mem::size_of::<PortEntry>(),
        )?;
        // The raw fd stays valid while the typed map below owns it.
        let hits_fd = match bpf.map(MAP_RULE_HITS) {
            Some(Map::PerCpuArray(d)) => d.fd().as_fd().as_raw_fd(),
            _ => bail!("map {MAP_RULE_HITS} missing or of the wrong type"),
        };
        Ok(Firewall {
            hits: take(bpf, MAP_RULE_HITS)?,
            hits_fd,
            prefix_v6: take(bpf, MAP_PREFIX_V6)?,
            except_v4: take(bpf, MAP_EXCEPT_V4)?,
            except_v6: take(bpf, MAP_EXCEPT_V6)?,
            dir24,
            summary,
            long_v4,
            ports,
            used_ids: Default::default(),
            depth: vec![0; 1 << 24],
            long_count: FxHashMap::default(),
            ncpus,
        })
    }

    /// Brings the tables to the whole rule set, at start: into empty tables, or into
    /// those of a running datapath (adopted) without a wrong verdict on the way. Longer
    /// prefixes are painted first, so every entry is written once with its final value
    /// (the value it already holds when the running tables match the rule set); then
    /// entries, slots and trie keys that no rule explains are cleared, and the hit
    /// counters of ids no rule holds are zeroed.
    pub fn load(&mut self, rules: &RuleSet, adopted: bool) -> Result<()> {
        let mut ordered: Vec<&Rule> = rules.rules().collect();
        ordered.sort_by_key(|r| match r.matches {
            Match::Prefix(p) | Match::ExceptPrefix(p) => std::cmp::Reverse(p.len),
            _ => std::cmp::Reverse(0),
        });
        for rule in ordered {
            self.apply_rule(rules, &Change::Added(*rule))?;
        }
        // Fresh tables hold nothing beyond the rules (and the sweeps read 64 MiB).
        if adopted {
            self.sweep_v4(rules);
            self.sweep_tries(rules)?;
            self.sweep_hits(rules)?;
        }
        self.set_ports(rules);
        Ok(())
    }

    /// Clears what the IPv4 tables hold beyond `rules` (a running datapath's leftovers):
    /// /24 entries no prefix covers, longer-prefix bits without a prefix of that length
    /// in their /24, long-prefix slots of removed prefixes; then the summary bits.
    fn sweep_v4(&mut self, rules: &RuleSet) {
        let long_mask = 0xffu32 << DIR24_LONG_SHIFT;
        let words = self.dir24.words();
        for (i, (word, depth)) in words.iter().zip(&self.depth).enumerate() {
            let old = word.load(Ordering::Relaxed);
            let mut want = old;
            if *depth == 0 {
                want &= !RULE_REF_MASK;
            }
            let bits = self.long_count.get(&(i as u32)).map_or(0, |c| {
                c.iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .fold(0u32, |b, (l, _)| b | 1 << (DIR24_LONG_SHIFT + l as u32))
            });
            want = (want & !long_mask) | bits;
            if want != old {
                word.store(want, Ordering::Relaxed);
            }
        }
        let slots = self.long_v4.words64();
        for cell in slots {
            let slot = cell.load(Ordering::Relaxed);
            if slot == 0 || slot == LONG_V4_TOMBSTONE {
                continue;
            }
            let (addr, len) = ((slot >> 32) as u32, ((slot >> 24) & 0xff) as u8);
            let p = Prefix {
                addr: IpAddr::from(addr.to_be_bytes()),
                len,
            };
            if rules.get(&Match::Prefix(p)).is_none() {
                cell.store(LONG_V4_TOMBSTONE, Ordering::Release);
            }
        }
        for block in 0..DIR24_BLOCKS as usize {
            self.update_summary(block);
        }
    }

    /// Removes the trie keys no rule holds.
    fn sweep_tries(&mut self, rules: &RuleSet) -> Result<()> {
        sweep_trie(&mut self.prefix_v6, |p| {
            rules.get(&Match::Prefix(p)).is_some()
        })
        .context("IPv6 prefix trie")?;
        sweep_trie(&mut self.except_v4, |p| {
            rules.get(&Match::ExceptPrefix(p)).is_some()
        })
        .context("except trie")?;
        sweep_trie(&mut self.except_v6, |p| {
            rules.get(&Match::ExceptPrefix(p)).is_some()
        })
        .context("except trie")
    }

    /// Zeroes the hit counters of ids no rule holds (a running datapath's removed
    /// rules), so a rule that gets such an id later starts from zero.
    fn sweep_hits(&mut self, rules: &RuleSet) -> Result<()> {
        let hits = self.all_rule_hits(MAX_RULES)?;
        let held: FxHashSet<u32> = rules.rules().map(|r| r.id).collect();
        for (id, n) in hits.iter().enumerate() {
            if *n != 0 && !held.contains(&(id as u32)) {
                self.reset_hits(id as u32)?;
            }
        }
        Ok(())
    }

    /// Applies one change of the rule set. Port changes need `set_ports` and list-size
    /// changes `set_config` afterwards (`apply` does both).
    ///
    /// `rules` is the rule set with the change (and any others of its batch) made: a
    /// removed IPv4 prefix is repainted with its longest covering prefix found there.
    pub fn apply_rule(&mut self, rules: &RuleSet, change: &Change) -> Result<()> {
        let new = matches!(change, Change::Added(_));
        let (rule, removed) = match change {
            Change::Added(r) => {
                if self.used_ids.remove(&r.id) {
                    self.reset_hits(r.id)?;
                }
                (r, false)
            }
            Change::Updated(r, _) => (r, false),
            Change::Removed(r) => {
                self.used_ids.insert(r.id);
                (r, true)
            }
        };
        let rref = rule_ref(rule.id, rule.action == Action::Deny);
        match rule.matches {
            Match::Prefix(p) if p.is_v4() => {
                if removed {
                    self.v4_remove(rules, v4_bits(&p), p.len)
                } else {
                    self.v4_insert(v4_bits(&p), p.len, rref, new)
                }
            }
            Match::Prefix(p) => {
                let key = Key::new(p.len as u32, v6_bytes(&p));
                if removed {
                    self.prefix_v6.remove(&key).context("IPv6 prefix trie")
                } else {
                    self.prefix_v6
                        .insert(&key, rref, 0)
                        .context("IPv6 prefix trie")
                }
            }
            Match::ExceptPrefix(p) if p.is_v4() => {
                let key = Key::new(p.len as u32, v4_bits(&p).to_be_bytes());
                if removed {
                    self.except_v4.remove(&key).context("except trie")
                } else {
                    self.except_v4
                        .insert(&key, rule.id, 0)
                        .context("except trie")
                }
            }
            Match::ExceptPrefix(p) => {
                let key = Key::new(p.len as u32, v6_bytes(&p));
                if removed {
                    self.except_v6.remove(&key).context("except trie")
                } else {
                    self.except_v6
                        .insert(&key, rule.id, 0)
                        .context("except trie")
                }
            }
            // The port table is rewritten as a whole by set_ports.
            Match::Port(_) | Match::ExceptPort(_) => Ok(()),
        }
    }

    /// Applies changes, then the port table.
    pub fn apply(&mut self, rules: &RuleSet, changes: &[Change]) -> Result<()> {
        for c in changes {
            self.apply_rule(rules, c)?;
        }
        let ports = changes.iter().any(|c| {
            let r: &Rule = match c {
                Change::Added(r) | Change::Updated(r, _) | Change::Removed(r) => r,
            };
            matches!(r.matches, Match::Port(_) | Match::ExceptPort(_))
        });
        if ports {
            self.set_ports(rules);
        }
        Ok(())
    }

    /// Rewrites the entries of the port table that differ from `rules`.
    pub fn set_ports(&mut self, rules: &RuleSet) {
        let words = self.ports.words();
        for (i, e) in rules.port_table().iter().enumerate() {
            for (w, v) in [(2 * i, e.rule), (2 * i + 1, e.except)] {
                if words[w].load(Ordering::Relaxed) != v {
                    words[w].store(v, Ordering::Relaxed);
                }
            }
        }
    }

    /// Zeroes the hit counters of `rules` (`stats reset`); returns how many.
    pub fn reset_all_hits(&mut self, rules: &RuleSet) -> Result<usize> {
        let mut n = 0;
        for r in rules.rules() {
            self.reset_hits(r.id)?;
            n += 1;
        }
        Ok(n)
    }

    fn reset_hits(&mut self, id: u32) -> Result<()> {
        let zeros = PerCpuValues::try_from(vec![0u64; self.ncpus])?;
        self.hits
            .set(id, zeros, 0)
            .context("resetting a rule's hit counter")
    }

    fn v4_insert(&mut self, addr: u32, len: u8, rref: u32, new: bool) -> Result<()> {
        if len <= 24 {
            self.paint(addr, len, rref, len + 1, |d| d <= len + 1);
            return Ok(());
        }
        self.long_v4_set(addr, len, Some(rref))?;
        if new {
            let slash24 = addr >> 8;
            let counts = self.long_count.entry(slash24).or_default();
            counts[len as usize - 25] += 1;
            self.set_long_bit(slash24, len, true);
        }
        Ok(())
    }

    fn v4_remove(&mut self, rules: &RuleSet, addr: u32, len: u8) -> Result<()> {
        if len <= 24 {
            // Repaint with the longest shorter prefix covering this one.
            let (parent, depth) = (0..len)
                .rev()
                .find_map(|l| {
                    let p = Prefix {
                        addr: IpAddr::from(mask(addr, l).to_be_bytes()),
                        len: l,
                    };
                    let r = rules.get(&Match::Prefix(p))?;
                    Some((rule_ref(r.id, r.action == Action::Deny), l + 1))
                })
                .unwrap_or((0, 0));
            let own = len + 1;
            self.paint(addr, len, parent, depth, |d| d == own);
            return Ok(());
        }
        let slash24 = addr >> 8;
        let counts = self.long_count.entry(slash24).or_default();
        counts[len as usize - 25] -= 1;
        let last = counts[len as usize - 25] == 0;
        if counts.iter().all(|c| *c == 0) {
            self.long_count.remove(&slash24);
        }
        // Clear the bit before the entry goes, so the program never looks for it.
        if last {
            self.set_long_bit(slash24, len, false);
        }
        self.long_v4_set(addr, len, None)
    }

    /// Writes (Some) or removes (None) `addr/len` in the long-prefix table: the slot
    /// holding the key, else for a write the first free one on its probe path.
    fn long_v4_set(&self, addr: u32, len: u8, rref: Option<u32>) -> Result<()> {
        let key = long_v4_key(addr, len as u32);
        let home = long_v4_hash(addr, len as u32);
        let slots = self.long_v4.words64();
        let mut free = None;
        'probe: for probe in 0..LONG_V4_PROBE {
            let bucket = ((home + probe) & (LONG_V4_BUCKETS - 1)) as usize;
            let first = bucket * LONG_V4_SLOTS;
            for (i, cell) in slots.iter().enumerate().skip(first).take(LONG_V4_SLOTS) {
                let slot = cell.load(Ordering::Relaxed);
                if slot & !(RULE_REF_MASK as u64) == key {
                    let new = rref.map_or(LONG_V4_TOMBSTONE, |r| key | r as u64);
                    cell.store(new, Ordering::Release);
                    return Ok(());
                }
                if slot == LONG_V4_TOMBSTONE || slot == 0 {
                    free.get_or_insert(i);
                }
                if slot == 0 {
                    break 'probe;
                }
            }
        }
        match (rref, free) {
            (None, _) => Ok(()),
            (Some(r), Some(i)) => {
                slots[i].store(key | r as u64, Ordering::Release);
                Ok(())
            }
            (Some(_), None) => bail!(
                "the IPv4 long-prefix table has no free slot near {}/{len}",
                std::net::Ipv4Addr::from(addr)
            ),
        }
    }

    /// Sets the rule part of every /24 entry covered by `addr/len` whose depth passes
    /// `overwrite`, keeping each entry's longer-prefix bits.
    fn paint(&mut self, addr: u32, len: u8, rref: u32, depth: u8, overwrite: impl Fn(u8) -> bool) {
        let start = (addr >> 8) as usize;
        let n = 1usize << (24 - len);
        let words = &self.dir24.words()[start..start + n];
        for (word, d) in words.iter().zip(&mut self.depth[start..start + n]) {
            if overwrite(*d) {
                let old = word.load(Ordering::Relaxed);
                word.store((old & !RULE_REF_MASK) | rref, Ordering::Relaxed);
                *d = depth;
            }
        }
        let first = start / DIR24_BLOCK;
        let last = (start + n - 1) / DIR24_BLOCK;
        for block in first..=last {
            self.update_summary(block);
        }
    }

    /// Sets the summary bit of a block iff any of its entries is non-zero. A bit is set
    /// after the entries are written and cleared after they are, so a reader that sees
    /// a clear bit can trust that the block is empty (or about to be).
    fn update_summary(&self, block: usize) {
        let words = self.dir24.words();
        let busy = words[block * DIR24_BLOCK..(block + 1) * DIR24_BLOCK]
            .iter()
            .any(|w| w.load(Ordering::Relaxed) != 0);
        // u64 elements in little-endian memory: bit b of the bitmap is bit b % 32 of
        // 32-bit word b / 32.
        let w = &self.summary.words()[block / 32];
        let bit = 1u32 << (block % 32);
        let old = w.load(Ordering::Relaxed);
        let new = if busy { old | bit } else { old & !bit };
        if new != old {
            w.store(new, Ordering::Release);
        }
    }

    fn set_long_bit(&self, slash24: u32, len: u8, on: bool) {
        let bit = 1u32 << (DIR24_LONG_SHIFT + (len as u32 - 25));
        let w = &self.dir24.words()[slash24 as usize];
        let old = w.load(Ordering::Relaxed);
        w.store(if on { old | bit } else { old & !bit }, Ordering::Relaxed);
        self.update_summary(slash24 as usize / DIR24_BLOCK);
    }

    /// Packets a rule matched, summed over CPUs.
    pub fn rule_hits(&self, id: u32) -> Result<u64> {
        Ok(self.hits.get(&id, 0)?.iter().sum())
    }

    /// Hits of every rule id below `end`, summed over CPUs, read in batches
    /// (`stats::walk`, BPF_MAP_LOOKUP_BATCH): one syscall per chunk of ids instead of
    /// one per rule.
    pub fn all_rule_hits(&self, end: u32) -> Result<Vec<u64>> {
        let ids = end.min(MAX_RULES) as usize;
        let mut out = Vec::with_capacity(end as usize);
        super::stats::walk(self.hits_fd, 4, 8 * self.ncpus, ids, |_, per_cpu| {
            out.push(
                per_cpu
                    .chunks_exact(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
                    .sum(),
            );
        })
        .context("reading rule hit counters")?;
        out.resize(end as usize, 0);
        Ok(out)
    }
}

/// Removes the keys of `trie` whose prefix `keep` refuses.
fn sweep_trie<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    keep: impl Fn(Prefix) -> bool,
) -> Result<()> {
    let stale: Vec<Key<[u8; N]>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| {
            let d = k.data();
            let addr = match <[u8; 4]>::try_from(&d[..]) {
                Ok(v4) => IpAddr::from(v4),
                Err(_) => IpAddr::from(<[u8; 16]>::try_from(&d[..]).expect("16 bytes")),
            };
            !keep(Prefix {
                addr,
                len: k.prefix_len() as u8,
            })
        })
        .collect();
    for k in stale {
        trie.remove(&k)?;
    }
    Ok(())
}
