//! The loaded XDP program and its maps: load (adopting a running datapath's pinned
//! maps), the config map, counters, and BPF_PROG_TEST_RUN. Attaching is in `attach`,
//! the firewall's tables in `firewall`, the services' in `balancer`.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray, PerCpuValues, ProgramArray, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::*;
use tracing::warn;

use super::{
    attach::Attached, balancer::Balancer, firewall::Firewall, mmap::MmapTable, object,
    pins::PinDir, ratelimit::RateLimiter,
};
use crate::model::rules::{Action, Change, Match, RuleSet};

/// What `load` found in the pin directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

pub struct Datapath {
    pub(super) bpf: Ebpf,
    /// Holds the balancer program in its slot (the firewall tail-calls it).
    #[allow(dead_code)]
    jump: ProgramArray<MapData>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, Counter>,
    /// The firewall's tables.
    pub fw: Firewall,
    /// The services' maps.
    pub lb: Balancer,
    /// The rate limits' maps.
    pub rl: RateLimiter,
    ncpus: usize,
    /// Dropped-packet sampling (`Config::drop_sample`) and kernel log level
    /// (`Config::log_level`), written by `set_config`.
    pub drop_sample: u32,
    pub log_level: u32,
    /// Flow records (`Config::flow_records`): the program counts into flow entries.
    pub flow_records: bool,
    /// The drop-event ring buffer until the daemon takes it (`take_events`).
    events: Option<RingBuf<MapData>>,
    /// Where the program is attached.
    pub(super) links: Vec<Attached>,
    pub(super) pins: Option<PinDir>,
    /// Where this build's program array is pinned (with `pins`).
    pub(super) jump_pin: Option<PathBuf>,
    /// What the pin directory held at load.
    pub adoption: Adoption,
}

pub(super) fn take<T>(bpf: &mut Ebpf, name: &str) -> Result<T>
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
        let syn_prog: &mut Xdp = bpf
            .program_mut(PROG_SYN)
            .ok_or_else(|| anyhow!("program {PROG_SYN} missing from the object"))?
            .try_into()?;
        syn_prog
            .load()
            .context("the kernel refused the SYN-flood protection program")?;
        let syn_fd = syn_prog.fd()?.try_clone()?;
        if let (Some(p), Adoption::Replaced { why }) = (&pins, &adoption) {
            warn!("{why}: starting with empty tables");
            for name in STATE_MAPS {
                let map = bpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))?;
                p.replace_pin(&p.map(name), map)?;
            }
        }
        let ncpus = aya::util::nr_cpus().map_err(|(m, e)| anyhow!("{m}: {e}"))?;
        let fw = Firewall::new(&mut bpf, ncpus)?;
        let rl = RateLimiter::new(
            &mut bpf,
            ncpus,
            matches!(adoption, Adoption::Adopted { .. }),
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
            super::synflood::SynMaps::new(&mut bpf, ncpus)?,
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
        jump.set(JUMP_SYN, &syn_fd, 0)
            .context("installing SYN-flood protection")?;
        Ok(Datapath {
            fw,
            lb,
            rl,
            drop_sample: 0,
            log_level: LOG_OFF,
            flow_records: false,
            events,
            jump,
            config: take(&mut bpf, MAP_CONFIG)?,
            counters: take(&mut bpf, MAP_COUNTERS)?,
            bpf,
            ncpus,
            links: Vec::new(),
            pins,
            jump_pin,
            adoption,
        })
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
        // A protected https service's packets go through the balancer too.
        let services = services + u32::from(self.lb.syn.locals_on());
        let cfg = Config {
            default_action: action(rules.default_policy),
            malformed_action: action(rules.malformed_policy),
            except_prefixes: rules.count(|m| matches!(m, Match::ExceptPrefix(_))) as u32,
            prefixes_v6: rules.count(|m| matches!(m, Match::Prefix(p) if !p.is_v4())) as u32,
            nat_services,
            services,
            drop_sample: self.drop_sample,
            log_level: self.log_level,
            flow_records: u32::from(self.flow_records),
        };
        self.config.set(0, cfg, 0).context("writing the config map")
    }

    /// Brings the firewall's tables to the whole rule set (see `Firewall::load`), then
    /// the config.
    pub fn load_rules(&mut self, rules: &RuleSet) -> Result<()> {
        let adopted = matches!(self.adoption, Adoption::Adopted { .. });
        self.fw.load(rules, adopted)?;
        self.set_config(rules)
    }

    /// Applies rule-set changes to the firewall's tables, then the config.
    pub fn apply(&mut self, rules: &RuleSet, changes: &[Change]) -> Result<()> {
        self.fw.apply(rules, changes)?;
        self.set_config(rules)
    }

    /// The pin directory, if any.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(PinDir::path)
    }

    /// Zeroes the packet counters, the hit counters of `rules` and the backends'
    /// counters (`xlb stats reset`): (rules, backends) zeroed.
    pub fn reset_counters(&mut self, rules: &RuleSet) -> Result<(usize, usize)> {
        for r in Reason::ALL {
            for v in Verdict::ALL {
                let zeros = PerCpuValues::try_from(vec![Counter::default(); self.ncpus])?;
                self.counters
                    .set(counter_index(r, v), zeros, 0)
                    .context("resetting the packet counters")?;
            }
        }
        let rules = self.fw.reset_all_hits(rules)?;
        let backends = self.lb.reset_all_stats()?;
        self.rl.reset_counters()?;
        Ok((rules, backends))
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
