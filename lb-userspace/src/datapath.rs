//! The loaded XDP program and its maps: load, attach, pin, and the projection of a
//! `RuleSet` onto the lookup tables (IPv4 DIR-24-8 painting, port table, tries).

use std::{
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues, ProgramArray, RingBuf,
        lpm_trie::Key,
    },
    programs::{
        TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::*;
use tracing::{info, warn};

use crate::{
    balancer::Balancer,
    fxhash::{FxHashMap, FxHashSet},
    object,
    pins::PinDir,
    rules::{Action, Change, Match, Prefix, Rule, RuleSet},
};

pub use crate::pins::check_bpffs;

/// How long an attach retries while the interface still holds a link being released
/// (the kernel frees a link whose last reference went in a deferred work item).
const ATTACH_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// A shared memory view of an mmapable BPF array, written with atomic 32-bit stores so
/// the program always reads either the old or the new value of an entry.
pub(crate) struct MmapTable {
    ptr: *mut AtomicU32,
    words: usize,
}

// SAFETY: the mapping lives as long as the value and is only accessed through atomics.
unsafe impl Send for MmapTable {}
unsafe impl Sync for MmapTable {}

impl MmapTable {
    pub(crate) fn new(map: &Map, bytes: usize) -> Result<Self> {
        let data: &MapData = match map {
            Map::Array(d) => d,
            _ => bail!("expected an array map"),
        };
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF_F_MMAPABLE array of exactly its size, shared.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of a BPF array");
        }
        Ok(MmapTable {
            ptr: ptr.cast(),
            words: bytes / 4,
        })
    }

    pub(crate) fn words(&self) -> &[AtomicU32] {
        // SAFETY: ptr maps `words` u32s for the lifetime of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.words) }
    }

    fn words64(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page aligned and holds words / 2 u64s.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.words / 2) }
    }
}

impl Drop for MmapTable {
    fn drop(&mut self) {
        // SAFETY: unmapping what new() mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.words * 4) };
    }
}

/// How to attach.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// The driver's own XDP hook (veth, most 10G+ NICs).
    Native,
    /// The generic (skb) hook: works everywhere, slower.
    Generic,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }

    pub fn from_str_opt(s: &str) -> Option<Self> {
        [AttachMode::Native, AttachMode::Generic]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// What `load` found in the pin directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Adoption {
    /// No pinned maps (or no pin directory): the tables start empty.
    Fresh,
    /// The maps of an earlier run (a restart, an upgrade, a crashed run): flows, rules
    /// and counters continue.
    Adopted { maps: usize },
    /// Pinned maps of a build with another map layout: replaced by empty ones.
    Replaced { why: String },
}

/// The program attached to one interface through a BPF link.
struct Attached {
    iface: String,
    mode: AttachMode,
    /// Closing the last reference to a link detaches it: while `pin` exists the
    /// program stays attached without us.
    link: FdLink,
    pin: Option<PathBuf>,
}

pub struct Datapath {
    bpf: Ebpf,
    /// Holds the balancer program in its slot (the firewall tail-calls it).
    #[allow(dead_code)]
    jump: ProgramArray<MapData>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, Counter>,
    hits: PerCpuArray<MapData, u64>,
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
    /// The per-rule hit counters' fd, for batch reads.
    hits_fd: std::os::fd::RawFd,
    /// The services' maps.
    pub lb: Balancer,
    /// Dropped-packet sampling (`Config::drop_sample`) and kernel log level
    /// (`Config::log_level`), written by `set_config`.
    pub drop_sample: u32,
    pub log_level: u32,
    /// The drop-event ring buffer until the daemon takes it (`take_events`).
    events: Option<RingBuf<MapData>>,
    /// Where the program is attached.
    links: Vec<Attached>,
    pins: Option<PinDir>,
    /// Where this build's program array is pinned (with `pins`).
    jump_pin: Option<PathBuf>,
    /// What the pin directory held at load.
    pub adoption: Adoption,
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

fn take<T>(bpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = bpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

impl Datapath {
    /// Loads the program into the kernel (the verifier runs here). With a pin directory,
    /// its state maps are those pinned there by an earlier run if they fit this build
    /// (see `pins`), else new ones, pinned there.
    pub fn load(pins: Option<&Path>) -> Result<Self> {
        Self::load_object(object::XLB, pins)
    }

    /// `load` of another build of the program (an upgrade, the bench's copy without
    /// logging).
    pub fn load_object(obj: &[u8], pins: Option<&Path>) -> Result<Self> {
        // Nothing in the pin directory changes until this build has loaded: a bad
        // object or a refused program leaves a running datapath and its pins alone.
        let parsed = aya_obj::Object::parse(obj).context("loading the XDP object")?;
        let pins = pins.map(PinDir::open).transpose()?;
        let mut loader = EbpfLoader::new();
        let mut adoption = Adoption::Fresh;
        if let Some(p) = &pins {
            adoption = match p.check_maps(&parsed.maps) {
                Ok(0) => Adoption::Fresh,
                Ok(maps) => Adoption::Adopted { maps },
                Err(why) => Adoption::Replaced { why },
            };
            // Adopted (or created and pinned) by aya; replaced ones are pinned below.
            if !matches!(adoption, Adoption::Replaced { .. }) {
                for name in STATE_MAPS {
                    loader.map_pin_path(name, p.map(name));
                }
            }
        }
        let mut bpf = loader.load(obj).context("loading the XDP object")?;
        let prog: &mut Xdp = bpf
            .program_mut(PROG_NAME)
            .ok_or_else(|| anyhow!("program {PROG_NAME} missing from the object"))?
            .try_into()?;
        prog.load().context("the kernel refused the XDP program")?;
        let prog_id = prog.info()?.id();
        let balancer: &mut Xdp = bpf
            .program_mut(PROG_BALANCE)
            .ok_or_else(|| anyhow!("program {PROG_BALANCE} missing from the object"))?
            .try_into()?;
        balancer
            .load()
            .context("the kernel refused the balancer program")?;
        let balancer_fd = balancer.fd()?.try_clone()?;
        if let (Some(p), Adoption::Replaced { why }) = (&pins, &adoption) {
            warn!("{why}: starting with empty tables");
            for name in STATE_MAPS {
                let map = bpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))?;
                p.replace_pin(&p.map(name), map)?;
            }
        }
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
        let pool = MmapTable::new(
            bpf.map(MAP_MAGLEV).context("maglev pool")?,
            MAGLEV_POOL as usize * 4,
        )?;
        let stats_fd = match bpf.map(MAP_BACKEND_STATS) {
            Some(Map::PerCpuArray(d)) => d.fd().as_fd().as_raw_fd(),
            _ => bail!("map {MAP_BACKEND_STATS} missing or of the wrong type"),
        };
        let mut lb = Balancer::new(
            take(&mut bpf, MAP_SERVICES)?,
            take(&mut bpf, MAP_SERVICE_KEYS)?,
            take(&mut bpf, MAP_SNAT)?,
            take(&mut bpf, MAP_BACKENDS)?,
            take(&mut bpf, MAP_ENDPOINTS)?,
            (take(&mut bpf, MAP_BACKEND_STATS)?, stats_fd),
            pool,
        );
        if matches!(adoption, Adoption::Adopted { .. }) {
            lb.adopt()
                .context("reading the services of the running datapath")?;
        }
        let events = Some(take(&mut bpf, MAP_EVENTS)?);
        // Pinned so it stays filled while this build is attached, with or without us.
        let jump_pin = match &pins {
            Some(p) => {
                let path = p.jump(prog_id);
                let map = bpf.map(MAP_JUMP).context("the program array")?;
                p.replace_pin(&path, map)?;
                Some(path)
            }
            None => None,
        };
        let mut jump: ProgramArray<MapData> = take(&mut bpf, MAP_JUMP)?;
        jump.set(JUMP_BALANCE, &balancer_fd, 0)
            .context("installing the balancer")?;
        // The raw fd stays valid while the typed map below owns it.
        let hits_fd = match bpf.map(MAP_RULE_HITS) {
            Some(Map::PerCpuArray(d)) => d.fd().as_fd().as_raw_fd(),
            _ => bail!("map {MAP_RULE_HITS} missing or of the wrong type"),
        };
        let hits: PerCpuArray<MapData, u64> = take(&mut bpf, MAP_RULE_HITS)?;
        Ok(Datapath {
            lb,
            drop_sample: 0,
            log_level: LOG_OFF,
            events,
            hits_fd,
            hits,
            jump,
            config: take(&mut bpf, MAP_CONFIG)?,
            counters: take(&mut bpf, MAP_COUNTERS)?,
            prefix_v6: take(&mut bpf, MAP_PREFIX_V6)?,
            except_v4: take(&mut bpf, MAP_EXCEPT_V4)?,
            except_v6: take(&mut bpf, MAP_EXCEPT_V6)?,
            bpf,
            dir24,
            summary,
            long_v4,
            ports,
            used_ids: Default::default(),
            depth: vec![0; 1 << 24],
            long_count: FxHashMap::default(),
            ncpus: aya::util::nr_cpus().map_err(|(m, e)| anyhow!("{m}: {e}"))?,
            links: Vec::new(),
            pins,
            jump_pin,
            adoption,
        })
    }

    /// Attaches to `iface` (one more interface). A link pinned there by an earlier run
    /// in the same mode gets this program swapped in atomically (no packet misses the
    /// hook); otherwise a new link is made (and pinned, with a pin directory). Errors
    /// name the interface and the reason.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        if self.links.iter().any(|a| a.iface == iface) {
            bail!("xlb is already attached to '{iface}'");
        }
        let c = std::ffi::CString::new(iface).context("interface name")?;
        // SAFETY: c is a valid C string.
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            bail!("unknown interface '{iface}'");
        }
        let mut adopt = None;
        if let Some(p) = &self.pins {
            for old in p.links().into_iter().filter(|l| l.iface == iface) {
                if old.mode == mode {
                    adopt = Some(old.path);
                } else {
                    // One XDP mode at a time on an interface: the old link goes first.
                    warn!(iface, from = ?old.mode, to = ?mode, "changing the XDP mode: the interface is without xlb until it is attached again");
                    let _ = std::fs::remove_file(&old.path);
                }
            }
        }
        let prog: &mut Xdp = self
            .bpf
            .program_mut(PROG_NAME)
            .expect("loaded")
            .try_into()?;
        let replaced = adopt.and_then(|path| match swap_into(prog, &path) {
            Ok(link) => Some((link, path)),
            Err(e) => {
                // The interface went away (and maybe came back) since the link was made.
                warn!(
                    iface,
                    "the pinned link cannot be reused ({e:#}): attaching anew"
                );
                let _ = std::fs::remove_file(&path);
                None
            }
        });
        let (link, pin) = match replaced {
            Some((link, path)) => {
                info!(iface, "took over the running datapath's link");
                (link, Some(path))
            }
            None => {
                let link = attach_new(prog, iface, mode)?;
                match &self.pins {
                    Some(p) => {
                        let path = p.link(iface, mode);
                        let pinned = link.pin(&path).map_err(|e| {
                            anyhow!("pinning the link of '{iface}' at {}: {e}", path.display())
                        })?;
                        (FdLink::from(pinned), Some(path))
                    }
                    None => (link, None),
                }
            }
        };
        self.links.push(Attached {
            iface: iface.to_string(),
            mode,
            link,
            pin,
        });
        Ok(())
    }

    /// The interfaces the program is attached to, in attach order.
    pub fn attached(&self) -> Vec<(String, AttachMode)> {
        self.links
            .iter()
            .map(|a| (a.iface.clone(), a.mode))
            .collect()
    }

    /// Detaches from one interface (if attached).
    pub fn detach_from(&mut self, iface: &str) -> Result<()> {
        let Some(i) = self.links.iter().position(|a| a.iface == iface) else {
            return Ok(());
        };
        let a = self.links.remove(i);
        if let Some(pin) = &a.pin {
            std::fs::remove_file(pin).with_context(|| {
                format!("detaching XDP from '{iface}': removing {}", pin.display())
            })?;
        }
        // Our reference was the last: the link goes, and the program with it.
        drop(a.link);
        Ok(())
    }

    /// Detaches from every interface.
    pub fn detach(&mut self) -> Result<()> {
        let mut first_error = None;
        for (iface, ..) in self.attached().into_iter().rev() {
            if let Err(e) = self.detach_from(&iface) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// After every interface is attached: removes the links an earlier run pinned on
    /// interfaces this one does not use, and the program arrays of builds no longer
    /// attached anywhere. Returns the interfaces it detached.
    pub fn prune(&mut self) -> Vec<String> {
        let Some(p) = &self.pins else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for old in p.links() {
            if !self.links.iter().any(|a| a.pin.as_ref() == Some(&old.path)) {
                let _ = std::fs::remove_file(&old.path);
                gone.push(old.iface);
            }
        }
        for (_, path) in p.jumps() {
            if Some(&path) != self.jump_pin.as_ref() {
                let _ = std::fs::remove_file(path);
            }
        }
        gone
    }

    /// Removes every pin (after `detach`): the maps go with this process.
    pub fn unpin(&mut self) {
        if let Some(p) = self.pins.take()
            && let Err(e) = p.remove_all()
        {
            warn!("removing the pins: {e:#}");
        }
        self.jump_pin = None;
    }

    /// The pin directory, if any.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(PinDir::path)
    }

    /// The policies and list sizes.
    pub fn set_config(&mut self, rules: &RuleSet) -> Result<()> {
        let action = |a: Action| {
            if a == Action::Deny {
                ACTION_DROP
            } else {
                ACTION_PASS
            }
        };
        let (services, nat_services) = self.lb.counts();
        let cfg = Config {
            default_action: action(rules.default_policy),
            malformed_action: action(rules.malformed_policy),
            except_prefixes: rules.count(|m| matches!(m, Match::ExceptPrefix(_))) as u32,
            prefixes_v6: rules.count(|m| matches!(m, Match::Prefix(p) if !p.is_v4())) as u32,
            nat_services,
            services,
            drop_sample: self.drop_sample,
            log_level: self.log_level,
        };
        self.config.set(0, cfg, 0).context("writing the config map")
    }

    /// Brings the tables to the whole rule set, at start: into empty tables, or into
    /// those of a running datapath (adopted) without a wrong verdict on the way. Longer
    /// prefixes are painted first, so every entry is written once with its final value
    /// (the value it already holds when the running tables match the rule set); then
    /// entries, slots and trie keys that no rule explains are cleared, and the hit
    /// counters of ids no rule holds are zeroed.
    pub fn load_rules(&mut self, rules: &RuleSet) -> Result<()> {
        let mut ordered: Vec<&Rule> = rules.rules().collect();
        ordered.sort_by_key(|r| match r.matches {
            Match::Prefix(p) | Match::ExceptPrefix(p) => std::cmp::Reverse(p.len),
            _ => std::cmp::Reverse(0),
        });
        for rule in ordered {
            self.apply_rule(rules, &Change::Added(*rule))?;
        }
        // Fresh tables hold nothing beyond the rules (and the sweeps read 64 MiB).
        if matches!(self.adoption, Adoption::Adopted { .. }) {
            self.sweep_v4(rules);
            self.sweep_tries(rules)?;
            self.sweep_hits(rules)?;
        }
        self.set_ports(rules);
        self.set_config(rules)
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

    /// Applies changes, then the port table and the config.
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
        self.set_config(rules)
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

    /// Packets and bytes per (reason, verdict), summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Reason, Verdict, Counter)>> {
        let mut out = Vec::new();
        for r in Reason::ALL {
            for v in Verdict::ALL {
                let per_cpu = self.counters.get(&counter_index(r, v), 0)?;
                let mut c = Counter::default();
                for x in per_cpu.iter() {
                    c.packets += x.packets;
                    c.bytes += x.bytes;
                }
                out.push((r, v, c));
            }
        }
        Ok(out)
    }

    /// Packets a rule matched, summed over CPUs.
    pub fn rule_hits(&self, id: u32) -> Result<u64> {
        Ok(self.hits.get(&id, 0)?.iter().sum())
    }

    /// Hits of every rule id below `end`, summed over CPUs, read in batches
    /// (`kstats::walk`, BPF_MAP_LOOKUP_BATCH): one syscall per chunk of ids instead of
    /// one per rule.
    pub fn all_rule_hits(&self, end: u32) -> Result<Vec<u64>> {
        let ids = end.min(MAX_RULES) as usize;
        let mut out = Vec::with_capacity(end as usize);
        crate::kstats::walk(self.hits_fd, 4, 8 * self.ncpus, ids, |_, per_cpu| {
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

    /// Runs the program on one frame through BPF_PROG_TEST_RUN: (XDP action, output frame).
    pub fn test_run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.test_run_on(frame, 0)
    }

    /// `test_run` as if the frame arrived on interface `ifindex` (0: loopback) of the
    /// caller's network namespace, which the FIB lookups then use.
    pub fn test_run_on(&self, frame: &[u8], ifindex: u32) -> Result<(u32, Vec<u8>)> {
        let prog: &Xdp = self.bpf.program(PROG_NAME).expect("loaded").try_into()?;
        let mut out = vec![0u8; frame.len() + 512];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue, egress.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: if ifindex != 0 { Some(&ctx) } else { None },
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// The drop-event ring buffer, once (the daemon's reader owns it).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The loaded object, for the kernel logger (aya-log takes its map from it).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.bpf
    }

    /// The flow table's fd, for counting its entries (metrics).
    pub fn flows_fd(&self) -> Option<std::os::fd::RawFd> {
        match self.bpf.map(MAP_FLOWS) {
            Some(Map::LruHashMap(d)) => Some(d.fd().as_fd().as_raw_fd()),
            _ => None,
        }
    }

    /// CPUs the per-CPU maps have values for.
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }

    /// The program, for the benchmark's tail calls and for `xlb status`.
    pub fn program(&self) -> &Xdp {
        self.bpf
            .program(PROG_NAME)
            .expect("loaded")
            .try_into()
            .expect("an XDP program")
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        // Pinned links stay (the datapath outlives us: `xlb down` or `run --detach`
        // remove it); unpinned ones go with their last reference. A program array
        // pinned for a build that never got attached is removed.
        if self.links.is_empty()
            && let Some(path) = self.jump_pin.take()
        {
            let _ = std::fs::remove_file(path);
        }
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

/// Swaps `prog` into the link pinned at `path` (BPF_LINK_UPDATE): atomic for packets.
fn swap_into(prog: &mut Xdp, path: &Path) -> Result<FdLink> {
    let pinned = PinnedLink::from_pin(path)?;
    let link = XdpLink::try_from(FdLink::from(pinned))?;
    let id = prog.attach_to_link(link)?;
    Ok(prog.take_link(id)?.try_into()?)
}

/// A new link of `prog` on `iface`, retried for a moment while the interface still
/// holds a link that is being released.
fn attach_new(prog: &mut Xdp, iface: &str, mode: AttachMode) -> Result<FdLink> {
    let flags = match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Generic => XdpMode::Skb,
    };
    let deadline = std::time::Instant::now() + ATTACH_RETRY;
    let id = loop {
        match prog.attach(iface, flags) {
            Ok(id) => break id,
            Err(e) if std::time::Instant::now() < deadline && busy(&e) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => bail!(
                "interface '{iface}' refused XDP in {mode:?} mode: {e} (try --mode generic, or mode = \"generic\" in the configuration)"
            ),
        }
    };
    prog.take_link(id)?.try_into().map_err(|e| {
        anyhow!("the XDP link of '{iface}' is not a BPF link (kernel older than 5.9?): {e}")
    })
}

/// Whether an attach failed because the interface holds another XDP program.
fn busy(e: &aya::programs::ProgramError) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(io.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST));
        }
        source = err.source();
    }
    false
}
