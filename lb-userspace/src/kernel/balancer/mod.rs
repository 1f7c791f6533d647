//! The services' projection onto the kernel maps: service entries, backend slots with
//! generations, Maglev tables in the shared pool, echo entries. `sync` reconciles the
//! maps with the desired `Services` and is idempotent.
//!
//! A service's new Maglev table is written into a free range of the pool while the old
//! one stays in use; then the service entry (a hash-map value, replaced atomically)
//! switches to it, and the old range is freed. Flows keep their backend through the flow
//! table; a removed backend's slot is marked down, and its id gets a new generation
//! when reused, so its flows are rescheduled at their next packet.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::atomic::Ordering,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use lb_common::*;

use super::{
    maglev::{self, Member},
    mmap::MmapTable,
};
use crate::model::{
    rules::Proto,
    services::{BackendAddr, Mode, ServiceConf, Services, Vip},
};

pub fn addr16(a: &IpAddr) -> (Addr16, u8) {
    match a {
        IpAddr::V4(v) => (addr16_v4(v.octets()), FAMILY_V4),
        IpAddr::V6(v) => (Addr16::from_bytes(v.octets()), FAMILY_V6),
    }
}

pub fn ip_of(a: &Addr16, family: u8) -> IpAddr {
    let b = a.bytes();
    if family == FAMILY_V4 {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(b)
    }
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
    }
}

pub fn service_key(vip: &Vip) -> ServiceKey {
    let (addr, family) = addr16(&vip.addr);
    ServiceKey {
        addr,
        port: vip.port.unwrap_or(0),
        proto: proto_number(vip.proto),
        family,
    }
}

fn echo_key(addr: &IpAddr) -> ServiceKey {
    let (a, family) = addr16(addr);
    ServiceKey {
        addr: a,
        port: 0,
        proto: if family == FAMILY_V4 {
            IPPROTO_ICMP
        } else {
            IPPROTO_ICMPV6
        },
        family,
    }
}

/// What the kernel holds for one service.
struct Installed {
    id: u32,
    mode: Mode,
    /// The configuration it was installed from; `None` for a service adopted from a
    /// running datapath (its next `sync` installs it again, under the same ids).
    conf: Option<ServiceConf>,
    backend_ids: BTreeMap<BackendAddr, u32>,
    table: (u32, u32),
    /// The hold table (see Service::hold_offset), if any.
    hold: Option<(u32, u32)>,
    /// Each backend's last weight above 0: a held backend's weight in the hold table.
    weights: BTreeMap<BackendAddr, u32>,
}

pub struct Balancer {
    services: HashMap<MapData, ServiceKey, Service>,
    service_keys: Array<MapData, ServiceKey>,
    snat: Array<MapData, Addr16>,
    backends: Array<MapData, Backend>,
    /// Owned nat endpoints -> their owner (see `sync_endpoints`).
    endpoints: HashMap<MapData, EndpointKey, u32>,
    /// What `endpoints` holds, by owner (a backend has one endpoint).
    owned: StdHashMap<u32, EndpointKey>,
    /// The endpoints in `endpoints` written with ENDPOINT_SHARED.
    shared: std::collections::HashSet<EndpointKey>,
    /// Per-backend traffic counters (see `stats`).
    backend_stats: PerCpuArray<MapData, BackendStats>,
    /// Its fd, for batch reads (valid while the typed map above owns it).
    backend_stats_fd: std::os::fd::RawFd,
    /// Per service: the counters of its backends that are gone, so a service's totals
    /// never go down when a backend leaves.
    retired: BTreeMap<Vip, BackendStats>,
    pool: MmapTable,
    /// Free ranges of the pool (offset, length), first fit.
    free: Vec<(u32, u32)>,
    installed: BTreeMap<Vip, Installed>,
    generations: Vec<u32>,
    free_backend_ids: Vec<u32>,
    next_backend_id: u32,
    free_service_ids: Vec<u32>,
    next_service_id: u32,
    echo: StdHashMap<IpAddr, u32>,
    /// SYN-flood protection's maps: a service's protection is in the slot of its id.
    pub syn: super::synflood::SynMaps,
}

impl Balancer {
    // One argument per map (group) of the object, taken by the datapath.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        services: HashMap<MapData, ServiceKey, Service>,
        service_keys: Array<MapData, ServiceKey>,
        snat: Array<MapData, Addr16>,
        backends: Array<MapData, Backend>,
        endpoints: HashMap<MapData, EndpointKey, u32>,
        (backend_stats, backend_stats_fd): (PerCpuArray<MapData, BackendStats>, std::os::fd::RawFd),
        pool: MmapTable,
        syn: super::synflood::SynMaps,
    ) -> Self {
        Balancer {
            services,
            service_keys,
            snat,
            backends,
            endpoints,
            owned: StdHashMap::new(),
            shared: Default::default(),
            backend_stats,
            backend_stats_fd,
            retired: BTreeMap::new(),
            pool,
            free: vec![(0, MAGLEV_POOL)],
            installed: BTreeMap::new(),
            generations: vec![0; MAX_BACKENDS as usize],
            free_backend_ids: Vec::new(),
            next_backend_id: 1,
            free_service_ids: Vec::new(),
            next_service_id: 1,
            echo: StdHashMap::new(),
            syn,
        }
    }

    /// (services, services whose replies come through xlb) for the program's config.
    pub fn counts(&self) -> (u32, u32) {
        let nat = self
            .installed
            .values()
            .filter(|i| i.mode != Mode::Dsr)
            .count();
        (self.installed.len() as u32, nat as u32)
    }

    /// What flow records name a flow-table entry by: its service's address, mode,
    /// source address (fullnat) and idle timeouts, its backend's address.
    pub fn flow_names(&self) -> crate::kernel::flows::FlowNames {
        use crate::kernel::flows::{BackendName, ServiceName};
        let mut names = crate::kernel::flows::FlowNames::default();
        for (vip, i) in &self.installed {
            let Ok(svc) = self.services.get(&service_key(vip), 0) else {
                continue;
            };
            let snat = self
                .snat
                .get(&i.id, 0)
                .ok()
                .filter(|a| *a != Addr16::default())
                .map(|a| {
                    ip_of(
                        &a,
                        if vip.addr.is_ipv4() {
                            FAMILY_V4
                        } else {
                            FAMILY_V6
                        },
                    )
                });
            names.services.insert(
                i.id,
                ServiceName {
                    snat,
                    tcp_idle_secs: svc.tcp_idle_secs,
                    udp_idle_secs: svc.udp_idle_secs,
                },
            );
            for (b, &id) in &i.backend_ids {
                names.backends.insert(
                    id,
                    BackendName {
                        addr: b.addr,
                        port: b.port.unwrap_or(0),
                        generation: self.generations[id as usize],
                    },
                );
            }
        }
        names
    }

    /// Backend id of a service's backend (for tests and `xlb backend list`).
    pub fn backend_id(&self, vip: &Vip, b: &BackendAddr) -> Option<u32> {
        self.installed.get(vip)?.backend_ids.get(b).copied()
    }

    /// A service's id (its rate limits and its SYN-flood protection's slot name it).
    pub fn service_id(&self, vip: &Vip) -> Option<u32> {
        self.installed.get(vip).map(|i| i.id)
    }

    /// Rebuilds what the kernel holds from the maps of a running datapath (a restart,
    /// an upgrade, a crashed run): the services with their ids and Maglev ranges, the
    /// backends in use with their ids, every slot's generation, the echo entries. The
    /// next `sync` then installs the desired services over them under the same ids, so
    /// established flows keep their backends and new ones hash as before.
    pub(crate) fn adopt(&mut self) -> Result<()> {
        let mut in_use: BTreeMap<u32, BTreeMap<BackendAddr, u32>> = BTreeMap::new();
        let mut used_ids = std::collections::BTreeSet::new();
        for id in 1..MAX_BACKENDS {
            let b = self.backends.get(&id, 0).context("reading a backend")?;
            self.generations[id as usize] = b.generation;
            if b.generation != 0 {
                self.next_backend_id = id + 1;
            }
            if b.flags & BACKEND_UP != 0 {
                let addr = BackendAddr {
                    addr: ip_of(&b.addr, b.family),
                    port: (b.port != 0).then_some(b.port),
                };
                in_use.entry(b.service).or_default().insert(addr, id);
                used_ids.insert(id);
            }
        }
        self.free_backend_ids = (1..self.next_backend_id)
            .rev()
            .filter(|id| !used_ids.contains(id))
            .collect();
        let mut services = Vec::new();
        for item in self.services.iter() {
            services.push(item.context("reading a service")?);
        }
        for (key, svc) in services {
            let addr = ip_of(&key.addr, key.family);
            if svc.mode == MODE_ECHO {
                self.echo.insert(addr, 1);
                continue;
            }
            let proto = match key.proto {
                IPPROTO_TCP => Proto::Tcp,
                IPPROTO_UDP => Proto::Udp,
                p => bail!("a running service has protocol {p}, which this build does not know"),
            };
            let mode = match svc.mode {
                MODE_DSR => Mode::Dsr,
                MODE_NAT => Mode::Nat,
                MODE_FULLNAT => Mode::Fullnat,
                m => bail!("a running service has mode {m}, which this build does not know"),
            };
            let vip = Vip {
                addr,
                port: (key.port != 0).then_some(key.port),
                proto,
            };
            self.reserve(svc.table_offset, svc.table_size)?;
            let hold = (svc.hold_size != 0).then_some((svc.hold_offset, svc.hold_size));
            if let Some((o, l)) = hold {
                self.reserve(o, l)?;
            }
            self.next_service_id = self.next_service_id.max(svc.id + 1);
            self.installed.insert(
                vip,
                Installed {
                    id: svc.id,
                    mode,
                    conf: None,
                    backend_ids: in_use.remove(&svc.id).unwrap_or_default(),
                    table: (svc.table_offset, svc.table_size),
                    hold,
                    // Not kept in the maps: the next install builds no hold table for
                    // backends held now (their evicted connections move, as before).
                    weights: BTreeMap::new(),
                },
            );
        }
        for item in self.endpoints.iter() {
            let (k, v) = item.context("reading an endpoint")?;
            self.owned.insert(v & !ENDPOINT_SHARED, k);
            if v & ENDPOINT_SHARED != 0 {
                self.shared.insert(k);
            }
        }
        let ids: std::collections::BTreeSet<u32> = self.installed.values().map(|i| i.id).collect();
        self.free_service_ids = (1..self.next_service_id)
            .rev()
            .filter(|id| !ids.contains(id))
            .collect();
        Ok(())
    }

    /// The backends of the services adopted from a running datapath and not installed
    /// again yet (before the first `sync`).
    pub fn adopted_backends(&self) -> Vec<(Vip, BackendAddr)> {
        self.installed
            .iter()
            .filter(|(_, i)| i.conf.is_none())
            .flat_map(|(vip, i)| i.backend_ids.keys().map(|b| (*vip, *b)))
            .collect()
    }

    /// Marks a range of the pool as used (a running service's table).
    fn reserve(&mut self, off: u32, len: u32) -> Result<()> {
        let i = self
            .free
            .iter()
            .position(|(o, l)| *o <= off && off + len <= o + l)
            .ok_or_else(|| anyhow!("running services' Maglev tables overlap at {off}"))?;
        let (o, l) = self.free.remove(i);
        if off > o {
            self.free.push((o, off - o));
        }
        if off + len < o + l {
            self.free.push((off + len, o + l - off - len));
        }
        self.free.sort_unstable();
        Ok(())
    }

    fn alloc(&mut self, len: u32) -> Result<u32> {
        let i = self
            .free
            .iter()
            .position(|(_, l)| *l >= len)
            .ok_or_else(|| anyhow!("the Maglev pool is full ({MAGLEV_POOL} entries)"))?;
        let (off, l) = self.free[i];
        if l == len {
            self.free.remove(i);
        } else {
            self.free[i] = (off + len, l - len);
        }
        Ok(off)
    }

    fn release(&mut self, off: u32, len: u32) {
        self.free.push((off, len));
        self.free.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.free.len());
        for (o, l) in self.free.drain(..) {
            match merged.last_mut() {
                Some((mo, ml)) if *mo + *ml == o => *ml += l,
                _ => merged.push((o, l)),
            }
        }
        self.free = merged;
    }

    fn new_backend_id(&mut self) -> Result<u32> {
        let id = match self.free_backend_ids.pop() {
            Some(id) => id,
            None if self.next_backend_id < MAX_BACKENDS => {
                self.next_backend_id += 1;
                self.next_backend_id - 1
            }
            None => bail!("too many backends (at most {})", MAX_BACKENDS - 1),
        };
        self.generations[id as usize] = self.generations[id as usize].wrapping_add(1);
        Ok(id)
    }

    fn new_service_id(&mut self) -> Result<u32> {
        match self.free_service_ids.pop() {
            Some(id) => Ok(id),
            None if self.next_service_id < MAX_SERVICES => {
                self.next_service_id += 1;
                Ok(self.next_service_id - 1)
            }
            None => bail!("too many services (at most {})", MAX_SERVICES - 1),
        }
    }

    /// `held`: in the service at weight 0 (BACKEND_HELD).
    fn write_backend(
        &mut self,
        id: u32,
        b: &BackendAddr,
        service: u32,
        up: bool,
        held: bool,
    ) -> Result<()> {
        let (addr, family) = addr16(&b.addr);
        // An owner keeps its flag through a rewrite (its flows have no reply entries); a
        // backend going down loses it and its endpoint (its id may be given to another).
        let owns = up && self.owned.contains_key(&id);
        let entry = Backend {
            addr,
            port: b.port.unwrap_or(0),
            family,
            flags: match (up, owns) {
                (true, true) => BACKEND_UP | BACKEND_OWNS_ENDPOINT,
                (true, false) => BACKEND_UP,
                _ => 0,
            } | if up && held { BACKEND_HELD } else { 0 },
            service,
            generation: self.generations[id as usize],
        };
        self.backends
            .set(id, entry, 0)
            .context("writing a backend")?;
        if !up && let Some(k) = self.owned.remove(&id) {
            self.remove_endpoint(&k)?;
        }
        Ok(())
    }

    fn remove_endpoint(&mut self, k: &EndpointKey) -> Result<()> {
        match self.endpoints.remove(k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e).context("removing an endpoint"),
        }
    }

    /// Brings the maps to `desired`.
    pub fn sync(&mut self, desired: &Services) -> Result<()> {
        let gone: Vec<Vip> = self
            .installed
            .keys()
            .filter(|v| !desired.by_vip.contains_key(v))
            .copied()
            .collect();
        for vip in gone {
            self.remove(&vip)?;
        }
        for conf in desired.by_vip.values() {
            if self
                .installed
                .get(&conf.vip)
                .is_some_and(|i| i.conf.as_ref() == Some(conf))
            {
                continue;
            }
            self.install(conf)?;
        }
        self.sync_endpoints()?;
        self.sync_echo(desired)?;
        let installed = self
            .installed
            .values()
            .filter_map(|i| i.conf.as_ref().map(|c| (i.id, c)));
        self.syn.sync_services(installed)
    }

    /// Every protected service (layer-4 and https) with its protection slot and
    /// settings, in address order (layer-4 first).
    pub fn syn_slots(&self) -> Vec<(String, u32, crate::model::synflood::SynProtection)> {
        let mut out: Vec<_> = self
            .installed
            .iter()
            .filter_map(|(vip, i)| {
                let c = i.conf.as_ref()?;
                (c.syn.mode != crate::model::synflood::SynMode::Off)
                    .then(|| (vip.to_string(), i.id, c.syn))
            })
            .collect();
        out.extend(
            self.syn
                .locals
                .iter()
                .map(|(a, (slot, p))| (format!("{a}/tcp"), *slot, *p)),
        );
        out
    }

    /// Gives each endpoint (address, port, protocol) of a nat backend an owner, whose
    /// flows then need no reply entry (BACKEND_OWNS_ENDPOINT): the backends of nat
    /// services with a port, to a port of their own (a backend without one answers from
    /// whatever port the client used, and a service without one cannot be told from the
    /// reply). An owner stays while it is a candidate (its flows rely on it); a new one
    /// is the lowest id. The entry is written before its backend gets the flag, and the
    /// flag cleared before the entry goes. An endpoint of several services' backends is
    /// written with ENDPOINT_SHARED: a reply from it that finds no flow cannot be
    /// given back to one of them.
    fn sync_endpoints(&mut self) -> Result<()> {
        let mut candidates: StdHashMap<EndpointKey, Vec<u32>> = StdHashMap::new();
        for (vip, inst) in &self.installed {
            if inst.mode != Mode::Nat || vip.port.is_none() {
                continue;
            }
            for (b, id) in &inst.backend_ids {
                let Some(port) = b.port else { continue };
                let (addr, family) = addr16(&b.addr);
                let key = EndpointKey {
                    addr,
                    port,
                    proto: proto_number(vip.proto),
                    family,
                };
                candidates.entry(key).or_default().push(*id);
            }
        }
        let owner_of: StdHashMap<EndpointKey, u32> =
            self.owned.iter().map(|(id, k)| (*k, *id)).collect();
        let shared: std::collections::HashSet<EndpointKey> = candidates
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|(k, _)| *k)
            .collect();
        let want: StdHashMap<EndpointKey, u32> = candidates
            .into_iter()
            .map(|(k, ids)| {
                let owner = match owner_of.get(&k) {
                    Some(o) if ids.contains(o) => *o,
                    _ => *ids.iter().min().expect("a candidate"),
                };
                (k, owner)
            })
            .collect();
        // Owners that lose their endpoint: the flag first, then the entry.
        let old: Vec<(u32, EndpointKey)> = self.owned.iter().map(|(id, k)| (*id, *k)).collect();
        for (id, k) in old {
            if want.get(&k) != Some(&id) {
                self.set_owns(id, false)?;
                if !want.contains_key(&k) {
                    self.remove_endpoint(&k)?;
                }
            }
        }
        // New owners: the entry first, then the flag.
        for (k, id) in &want {
            let new_owner = owner_of.get(k) != Some(id);
            let is_shared = shared.contains(k);
            if new_owner || is_shared != self.shared.contains(k) {
                let v = if is_shared { id | ENDPOINT_SHARED } else { *id };
                self.endpoints
                    .insert(k, v, 0)
                    .context("writing an endpoint")?;
            }
            if new_owner {
                self.set_owns(*id, true)?;
            }
        }
        self.shared = shared;
        self.owned = want.into_iter().map(|(k, id)| (id, k)).collect();
        Ok(())
    }

    /// Sets or clears BACKEND_OWNS_ENDPOINT on backend `id` (an up backend).
    fn set_owns(&mut self, id: u32, owns: bool) -> Result<()> {
        let mut b = self.backends.get(&id, 0).context("reading a backend")?;
        let flags = if owns {
            b.flags | BACKEND_OWNS_ENDPOINT
        } else {
            b.flags & !BACKEND_OWNS_ENDPOINT
        };
        if flags != b.flags && b.flags & BACKEND_UP != 0 {
            b.flags = flags;
            self.backends.set(id, b, 0).context("writing a backend")?;
        }
        Ok(())
    }

    fn remove(&mut self, vip: &Vip) -> Result<()> {
        let Some(inst) = self.installed.remove(vip) else {
            return Ok(());
        };
        self.services
            .remove(&service_key(vip))
            .context("removing a service")?;
        for (b, id) in &inst.backend_ids {
            self.write_backend(*id, b, inst.id, false, false)?;
            self.retire(vip, *id);
            self.free_backend_ids.push(*id);
        }
        self.retired.remove(vip);
        self.release(inst.table.0, inst.table.1);
        if let Some((o, l)) = inst.hold {
            self.release(o, l);
        }
        self.free_service_ids.push(inst.id);
        Ok(())
    }

    fn install(&mut self, conf: &ServiceConf) -> Result<()> {
        let old = self.installed.remove(&conf.vip);
        let id = match &old {
            Some(i) => i.id,
            None => self.new_service_id()?,
        };
        let (mut ids, old_table, old_hold, mut weights) = match old {
            Some(i) => (i.backend_ids, Some(i.table), i.hold, i.weights),
            None => Default::default(),
        };
        // Backends that left: down (their flows move at the next packet).
        let left: Vec<BackendAddr> = ids
            .keys()
            .filter(|b| !conf.backends.contains_key(b))
            .copied()
            .collect();
        for b in left {
            let bid = ids.remove(&b).expect("listed");
            self.write_backend(bid, &b, id, false, false)?;
            self.retire(&conf.vip, bid);
            self.free_backend_ids.push(bid);
        }
        for b in conf.backends.keys() {
            if !ids.contains_key(b) {
                let bid = self.new_backend_id()?;
                // A reused id starts from zero (a fresh one is zero already).
                if self.generations[bid as usize] > 1 {
                    self.reset_stats(bid)?;
                }
                ids.insert(*b, bid);
                poke_neighbour(b);
            }
            self.write_backend(ids[b], b, id, true, conf.backends[b] == 0)?;
        }
        weights.retain(|b, _| conf.backends.contains_key(b));
        for (b, w) in &conf.backends {
            if *w != 0 {
                weights.insert(*b, *w);
            }
        }
        // The Maglev table, in a fresh range of the pool.
        let members: Vec<Member> = conf
            .backends
            .iter()
            .map(|(b, w)| Member {
                key: b.to_string(),
                weight: *w,
            })
            .collect();
        let size = maglev::table_size_for(members.len().max(1))
            .ok_or_else(|| anyhow!("too many backends for one service ({})", members.len()))?;
        let offset = self.alloc(size)?;
        let order: Vec<u32> = conf.backends.keys().map(|b| ids[b]).collect();
        self.write_table(offset, size, &members, &order);
        let hold = self.hold_table(conf, &weights, size, &order);
        let key = service_key(&conf.vip);
        self.service_keys
            .set(id, key, 0)
            .context("writing a service key")?;
        if let Some(a) = &conf.snat {
            self.snat
                .set(id, addr16(a).0, 0)
                .context("writing a service's snat address")?;
        }
        let svc = Service {
            id,
            mode: match conf.mode {
                Mode::Dsr => MODE_DSR,
                Mode::Nat => MODE_NAT,
                Mode::Fullnat => MODE_FULLNAT,
            },
            flags: if conf.affinity_source {
                SVC_AFFINITY_SOURCE
            } else {
                0
            },
            _pad: 0,
            table_offset: offset,
            table_size: size,
            hold_offset: hold.map_or(0, |h| h.0),
            hold_size: hold.map_or(0, |h| h.1),
            tcp_idle_secs: conf.tcp_idle,
            udp_idle_secs: conf.udp_idle,
        };
        std::sync::atomic::fence(Ordering::Release);
        self.services
            .insert(key, svc, 0)
            .context("writing a service")?;
        for (o, l) in old_table.into_iter().chain(old_hold) {
            self.release(o, l);
        }
        self.installed.insert(
            conf.vip,
            Installed {
                id,
                mode: conf.mode,
                conf: Some(conf.clone()),
                backend_ids: ids,
                table: (offset, size),
                hold,
                weights,
            },
        );
        Ok(())
    }

    /// Writes the Maglev table of `members` (backend ids in `order`) at `offset`.
    fn write_table(&mut self, offset: u32, size: u32, members: &[Member], order: &[u32]) {
        let table = maglev::build(members, size);
        let words = self.pool.words();
        for (slot, member) in table.iter().enumerate() {
            let v = member.map_or(0, |m| order[m as usize]);
            words[offset as usize + slot].store(v, Ordering::Relaxed);
        }
    }

    /// The hold table of `conf` (see Service::hold_offset): its table with each held
    /// backend (weight 0) back at its last weight, so that it has the slots it had when
    /// its connections were scheduled. None when no backend is held after having had
    /// slots, or when the pool has no room (then an evicted connection of a held backend
    /// is scheduled anew, as any flow).
    fn hold_table(
        &mut self,
        conf: &ServiceConf,
        weights: &BTreeMap<BackendAddr, u32>,
        size: u32,
        order: &[u32],
    ) -> Option<(u32, u32)> {
        let held = |b: &BackendAddr, w: u32| w == 0 && weights.contains_key(b);
        if !conf.backends.iter().any(|(b, w)| held(b, *w)) {
            return None;
        }
        let members: Vec<Member> = conf
            .backends
            .iter()
            .map(|(b, w)| Member {
                key: b.to_string(),
                weight: if *w == 0 {
                    weights.get(b).copied().unwrap_or(0)
                } else {
                    *w
                },
            })
            .collect();
        let offset = match self.alloc(size) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(vip = %conf.vip, "no hold table for held backends: {e}");
                return None;
            }
        };
        self.write_table(offset, size, &members, order);
        Some((offset, size))
    }

    fn sync_echo(&mut self, desired: &Services) -> Result<()> {
        let mut want: StdHashMap<IpAddr, u32> = StdHashMap::new();
        for c in desired.by_vip.values().filter(|c| c.echo) {
            *want.entry(c.vip.addr).or_default() += 1;
        }
        let old: Vec<IpAddr> = self
            .echo
            .keys()
            .filter(|a| !want.contains_key(a))
            .copied()
            .collect();
        for a in old {
            self.services
                .remove(&echo_key(&a))
                .context("removing an echo entry")?;
        }
        for a in want.keys() {
            if !self.echo.contains_key(a) {
                let svc = Service {
                    mode: MODE_ECHO,
                    ..Default::default()
                };
                self.services
                    .insert(echo_key(a), svc, 0)
                    .context("writing an echo entry")?;
            }
        }
        self.echo = want;
        Ok(())
    }
}

pub mod stats;

/// Sends an empty datagram towards a backend so the kernel resolves its neighbour entry
/// (the program's FIB lookup needs it).
fn poke_neighbour(b: &BackendAddr) {
    let local: SocketAddr = if b.addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    if let Ok(s) = UdpSocket::bind(local) {
        let _ = s.send_to(&[], SocketAddr::new(b.addr, 9));
    }
}
