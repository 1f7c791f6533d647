//! SYN-flood protection's maps: each protected service's settings in its slot (a
//! layer-4 service's id; an https service's after them), the https services' addresses,
//! and the readers of its state and counters. What this host must allow for the local
//! listener to take cookies (`tcp_syncookies=2`, `tcp_timestamps=2`) is set here too.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
};
use lb_common::*;
use tracing::info;

use crate::model::{
    services::{Mode, ServiceConf},
    synflood::{SynMode, SynProtection},
};

/// This host's TCP settings the cookies must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostTcp {
    /// The window scale the local stack gives its connections (and so announces in
    /// its own SYN-ACKs): what a cookie SYN-ACK of xlb announces too.
    pub wscale: u8,
    /// `net.ipv4.tcp_timestamps` (2: without the random offset, which a local
    /// listener would subtract from a cookie's timestamp).
    pub timestamps: u8,
    pub syncookies: u8,
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

impl HostTcp {
    /// Reads them from this network namespace's /proc/sys.
    pub fn read() -> Self {
        let rmem_max = sysctl("/proc/sys/net/ipv4/tcp_rmem")
            .and_then(|s| s.split_whitespace().nth(2)?.parse::<u64>().ok())
            .unwrap_or(6 << 20);
        let core_max = sysctl("/proc/sys/net/core/rmem_max")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        // tcp_select_initial_window: the largest buffer's log2 less 15, at most 14.
        let space = rmem_max.max(core_max).max(1);
        let wscale = (63 - space.leading_zeros() as i64 - 15).clamp(0, 14) as u8;
        let num = |p: &str, d: u8| sysctl(p).and_then(|s| s.parse().ok()).unwrap_or(d);
        HostTcp {
            wscale,
            timestamps: num("/proc/sys/net/ipv4/tcp_timestamps", 1),
            syncookies: num("/proc/sys/net/ipv4/tcp_syncookies", 1),
        }
    }
}

/// One slot's state, as the status shows it.
#[derive(Clone, Copy, Debug, Default)]
pub struct SlotView {
    pub conf: SynConf,
    pub state: SynState,
    /// Flow-table misses in the CPUs' last full windows (a second each), summed.
    pub rate: u64,
    /// In their current windows.
    pub current: u64,
    pub stats: SynStats,
}

/// Slot 0 is no service's: set while some https service is protected (the balancer
/// then looks at MAP_SYN_LOCAL).
const SLOT_LOCAL_FLAG: u32 = 0;

pub struct SynMaps {
    conf: Array<MapData, SynConf>,
    state: Array<MapData, SynState>,
    rate: PerCpuArray<MapData, SynRate>,
    stats: PerCpuArray<MapData, SynStats>,
    local: HashMap<MapData, ServiceKey, u32>,
    ncpus: usize,
    pub host: HostTcp,
    /// What each slot holds now.
    written: BTreeMap<u32, SynConf>,
    /// The https services' slots and protection.
    pub locals: BTreeMap<SocketAddr, (u32, SynProtection)>,
    /// The host settings `prepare_host` changed, with their values before
    /// (`restore_host` puts them back when the daemon stops).
    changed: Vec<(&'static str, u8)>,
}

/// A map of the object (as datapath's `take`; this file sits below datapath).
fn take<T>(bpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = bpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

fn key_of(addr: &SocketAddr) -> ServiceKey {
    let (a, family) = match addr.ip() {
        IpAddr::V4(v) => (addr16_v4(v.octets()), FAMILY_V4),
        IpAddr::V6(v) => (Addr16::from_bytes(v.octets()), FAMILY_V6),
    };
    ServiceKey {
        addr: a,
        port: addr.port(),
        proto: IPPROTO_TCP,
        family,
    }
}

impl SynMaps {
    pub(crate) fn new(bpf: &mut Ebpf, ncpus: usize) -> Result<Self> {
        let mut m = SynMaps {
            conf: take(bpf, MAP_SYN_CONF)?,
            state: take(bpf, MAP_SYN_STATE)?,
            rate: take(bpf, MAP_SYN_RATE)?,
            stats: take(bpf, MAP_SYN_STATS)?,
            local: take(bpf, MAP_SYN_LOCAL)?,
            ncpus: ncpus.max(1),
            host: HostTcp::read(),
            written: BTreeMap::new(),
            locals: BTreeMap::new(),
            changed: Vec::new(),
        };
        // A running datapath's slots (adopted maps): what they hold stays known.
        for slot in 0..SYN_SLOTS {
            let c = m.conf.get(&slot, 0).context("reading SYN protection")?;
            if c != SynConf::default() {
                m.written.insert(slot, c);
            }
        }
        Ok(m)
    }

    fn conf_for(&self, p: &SynProtection, kind: u8) -> SynConf {
        SynConf {
            mode: match p.mode {
                SynMode::Off => SYN_OFF,
                SynMode::Auto => SYN_AUTO,
                SynMode::Always => SYN_ALWAYS,
            },
            kind,
            wscale: self.host.wscale,
            // A local listener reads a cookie's options from its timestamp only
            // without the random offset; the SYN proxy translates timestamps itself.
            timestamps: u8::from(kind != SYN_KIND_LOCAL || self.host.timestamps == 2),
            per_cpu: p.threshold.div_ceil(self.ncpus as u32).max(1),
            mss4: DEFAULT_MSS4,
            mss6: DEFAULT_MSS6,
            hold_secs: DEFAULT_SYN_HOLD_SECS,
            allow_secs: DEFAULT_SYN_ALLOW_SECS,
            _pad: 0,
        }
    }

    /// Writes `want` (slot -> settings) for the slots `range` holds: others there go.
    fn write(&mut self, want: BTreeMap<u32, SynConf>, range: std::ops::Range<u32>) -> Result<()> {
        let gone: Vec<u32> = self
            .written
            .keys()
            .filter(|s| range.contains(s) && !want.contains_key(s))
            .copied()
            .collect();
        for slot in gone {
            self.conf
                .set(slot, SynConf::default(), 0)
                .context("clearing SYN protection")?;
            self.written.remove(&slot);
        }
        for (slot, c) in want {
            self.put(slot, c)?;
        }
        Ok(())
    }

    fn reset_slot(&mut self, slot: u32) -> Result<()> {
        self.state
            .set(slot, SynState::default(), 0)
            .context("resetting SYN protection")?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![SynStats::default(); self.ncpus])?;
        self.stats.set(slot, zeros, 0)?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![SynRate::default(); self.ncpus])?;
        self.rate.set(slot, zeros, 0)?;
        Ok(())
    }

    /// The layer-4 services' protection, by service id.
    pub fn sync_services<'a>(
        &mut self,
        services: impl Iterator<Item = (u32, &'a ServiceConf)>,
    ) -> Result<()> {
        let want: BTreeMap<u32, SynConf> = services
            .filter(|(_, c)| c.syn.mode != SynMode::Off)
            .map(|(id, c)| {
                let kind = match c.mode {
                    Mode::Dsr => SYN_KIND_DSR,
                    Mode::Nat | Mode::Fullnat => SYN_KIND_PROXY,
                };
                (id, self.conf_for(&c.syn, kind))
            })
            .collect();
        self.write(want, 1..MAX_SERVICES)
    }

    /// The https services' protection: their addresses and slots. A protected one
    /// needs the local stack to take cookies: `tcp_syncookies=2` (a listener takes a
    /// cookie only after sending some itself otherwise), and `tcp_timestamps=2` for
    /// cookies that keep the window scale and SACK (set here, and logged).
    pub fn set_local(&mut self, https: &BTreeMap<SocketAddr, SynProtection>) -> Result<()> {
        let on: Vec<(SocketAddr, SynProtection)> = https
            .iter()
            .filter(|(_, p)| p.mode != SynMode::Off)
            .map(|(a, p)| (*a, *p))
            .collect();
        if on.len() > MAX_SYN_LOCAL as usize {
            bail!(
                "SYN protection covers at most {MAX_SYN_LOCAL} https services ({} given)",
                on.len()
            );
        }
        if !on.is_empty() {
            self.prepare_host()?;
        }
        // Slots stay with their address while it is protected.
        let mut used: BTreeSet<u32> = BTreeSet::new();
        let mut slots: BTreeMap<SocketAddr, u32> = BTreeMap::new();
        for (a, _) in &on {
            if let Some((s, _)) = self.locals.get(a) {
                slots.insert(*a, *s);
                used.insert(*s);
            }
        }
        for (a, _) in &on {
            if !slots.contains_key(a) {
                let s = (MAX_SERVICES..SYN_SLOTS)
                    .find(|s| !used.contains(s))
                    .expect("fewer than MAX_SYN_LOCAL");
                slots.insert(*a, s);
                used.insert(s);
            }
        }
        // The balancer's flag first, then each service's settings and its address; the
        // addresses no longer protected go last (and the flag with the last of them).
        if !on.is_empty() {
            self.put(
                SLOT_LOCAL_FLAG,
                SynConf {
                    mode: SYN_ALWAYS,
                    ..Default::default()
                },
            )?;
        }
        for (a, p) in &on {
            let c = self.conf_for(p, SYN_KIND_LOCAL);
            self.put(slots[a], c)?;
            self.local
                .insert(key_of(a), slots[a], 0)
                .context("writing an https service's address")?;
        }
        let gone: Vec<SocketAddr> = self
            .locals
            .keys()
            .filter(|a| !slots.contains_key(a))
            .copied()
            .collect();
        for a in gone {
            let (s, _) = self.locals.remove(&a).expect("listed");
            match self.local.remove(&key_of(&a)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("removing an https service's address"),
            }
            self.conf.set(s, SynConf::default(), 0)?;
            self.written.remove(&s);
        }
        if on.is_empty() && self.written.remove(&SLOT_LOCAL_FLAG).is_some() {
            self.conf.set(SLOT_LOCAL_FLAG, SynConf::default(), 0)?;
        }
        self.locals = on.iter().map(|(a, p)| (*a, (slots[a], *p))).collect();
        Ok(())
    }

    /// Writes one slot's settings if they changed (a slot taken anew starts from zero).
    fn put(&mut self, slot: u32, c: SynConf) -> Result<()> {
        if self.written.get(&slot) == Some(&c) {
            return Ok(());
        }
        if !self.written.contains_key(&slot) {
            self.reset_slot(slot)?;
        }
        self.conf
            .set(slot, c, 0)
            .context("writing SYN protection")?;
        self.written.insert(slot, c);
        Ok(())
    }

    /// Makes the local stack take xlb's cookies (see `set_local`).
    fn prepare_host(&mut self) -> Result<()> {
        for (name, have) in [
            ("tcp_syncookies", self.host.syncookies),
            ("tcp_timestamps", self.host.timestamps),
        ] {
            if have == 2 {
                continue;
            }
            let path = format!("/proc/sys/net/ipv4/{name}");
            std::fs::write(&path, "2").with_context(|| {
                format!(
                    "SYN protection of an https service needs net.ipv4.{name}=2 (it is {have}) and setting it failed"
                )
            })?;
            info!("set net.ipv4.{name}=2 (was {have}) for the https services' SYN protection");
            self.changed.push((name, have));
        }
        self.host = HostTcp::read();
        Ok(())
    }

    /// Puts back the host settings `prepare_host` changed (the daemon stops: its https
    /// listener goes with it).
    pub fn restore_host(&mut self) {
        for (name, was) in self.changed.drain(..).rev() {
            let path = format!("/proc/sys/net/ipv4/{name}");
            match std::fs::write(&path, was.to_string()) {
                Ok(()) => info!("restored net.ipv4.{name}={was}"),
                Err(e) => tracing::warn!("restoring net.ipv4.{name}={was}: {e}"),
            }
        }
        self.host = HostTcp::read();
    }

    /// Whether some https service is protected (the balancer must then be entered for
    /// packets that are no layer-4 service's).
    pub fn locals_on(&self) -> bool {
        !self.locals.is_empty()
    }

    /// A slot's settings, state, rate and counters (summed over the CPUs).
    pub fn view(&self, slot: u32) -> Result<SlotView> {
        let conf = self.conf.get(&slot, 0).context("reading SYN protection")?;
        let state = self.state.get(&slot, 0).context("reading SYN protection")?;
        let mut v = SlotView {
            conf,
            state,
            ..Default::default()
        };
        for r in self.rate.get(&slot, 0).context("reading SYN rates")?.iter() {
            v.rate += r.last as u64;
            v.current += r.count as u64;
        }
        for s in self
            .stats
            .get(&slot, 0)
            .context("reading SYN counters")?
            .iter()
        {
            v.stats.cookies_sent += s.cookies_sent;
            v.stats.cookies_valid += s.cookies_valid;
            v.stats.cookies_refused += s.cookies_refused;
            v.stats.no_flow += s.no_flow;
            v.stats.proxied += s.proxied;
            v.stats.syn_resent += s.syn_resent;
            v.stats.kernel_syns += s.kernel_syns;
            v.stats.allowed += s.allowed;
        }
        Ok(v)
    }

    /// Zeroes every slot's counters (`xlb stats reset`).
    pub fn reset_counters(&mut self) -> Result<()> {
        for slot in 0..SYN_SLOTS {
            let zeros = aya::maps::PerCpuValues::try_from(vec![SynStats::default(); self.ncpus])?;
            self.stats.set(slot, zeros, 0)?;
        }
        Ok(())
    }
}

/// The clock the kernel program's protection state uses (bpf_ktime_get_coarse_ns).
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether a slot's protection is on at `now_ns`, and why (or why not), in words.
pub fn explain(v: &SlotView, p: &SynProtection, now_ns: u64) -> (bool, String) {
    const NS: u64 = 1_000_000_000;
    match p.mode {
        SynMode::Off => (false, "off".into()),
        SynMode::Always => (true, "always on (syn_protection = \"always\")".into()),
        SynMode::Auto if now_ns < v.state.until_ns => {
            let since = now_ns.saturating_sub(v.state.since_ns) / NS;
            (
                true,
                format!(
                    "on for {since}s: new flows went over {} per second (a CPU saw {} in a second; {} in the last); stays on {}s after the rate falls",
                    p.threshold, v.state.peak, v.rate, v.conf.hold_secs
                ),
            )
        }
        SynMode::Auto => (
            false,
            format!(
                "standing by: {} new flows in the last second, on above {} per second",
                v.rate, p.threshold
            ),
        ),
    }
}
