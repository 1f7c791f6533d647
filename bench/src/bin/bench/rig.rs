//! The BPF_PROG_TEST_RUN rig: `bench_entry` writes the source address (fixed, or random
//! per packet) and tail-calls the program under test; and the memory of the maps.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, LpmTrie, ProgramArray, lpm_trie::Key},
    programs::{ProgramFd, TestRun, TestRunOptions, Xdp},
};
use xlb_tests::packet::Pkt;

pub struct Bench {
    ebpf: Ebpf,
    frame: Vec<u8>,
    repeat: u32,
    /// The interface the frames arrive on (0: loopback).
    pub ifindex: u32,
}

impl Bench {
    pub fn load(repeat: u32) -> Result<Self> {
        let mut ebpf =
            Ebpf::load(xlb::kernel::object::BENCH).context("loading the bench object")?;
        for name in ["bench_floor", "bench_lpm", "bench_entry"] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("{name}"))?
                .try_into()?;
            p.load()?;
        }
        let mut b = Bench {
            ebpf,
            frame: Vec::new(),
            repeat,
            ifindex: 0,
        };
        b.set_frame(Pkt::tcp("192.0.2.10", "198.51.100.1", 40000, 80).build())?;
        Ok(b)
    }

    /// The frame every run starts from (at least 64 bytes: the template).
    pub fn set_frame(&mut self, mut frame: Vec<u8>) -> Result<()> {
        frame.resize(frame.len().max(64), 0);
        let mut words = [0u64; 8];
        for (i, w) in words.iter_mut().enumerate() {
            *w = u64::from_ne_bytes(frame[8 * i..8 * i + 8].try_into().unwrap());
        }
        let mut t: Array<_, [u64; 8]> = self.ebpf.map_mut("BENCH_TEMPLATE").unwrap().try_into()?;
        t.set(0, words, 0)?;
        self.frame = frame;
        Ok(())
    }

    pub fn fd(&self, name: &str) -> Result<ProgramFd> {
        let p: &Xdp = self.ebpf.program(name).unwrap().try_into()?;
        Ok(p.fd()?.try_clone()?)
    }

    /// Mean ns per packet of `target` (median of 5 runs), with the source fixed at
    /// `base` or randomised (`random`).
    pub fn ns(&mut self, target: &ProgramFd, base: u32, random: bool) -> Result<f64> {
        let mut jump: ProgramArray<_> = self.ebpf.map_mut("BENCH_TARGET").unwrap().try_into()?;
        jump.set(0, target, 0)?;
        let mut src: Array<_, u32> = self.ebpf.map_mut("BENCH_SRC").unwrap().try_into()?;
        src.set(0, base.to_be(), 0)?;
        src.set(1, if random { u32::MAX } else { 0 }, 0)?;
        let entry: &Xdp = self.ebpf.program("bench_entry").unwrap().try_into()?;
        let md: [u32; 6] = [0, self.frame.len() as u32, 0, self.ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut runs = Vec::new();
        for _ in 0..5 {
            let mut out = vec![0u8; self.frame.len() + 64];
            let r = entry.test_run(TestRunOptions {
                data_in: Some(&self.frame),
                data_out: Some(&mut out),
                ctx_in: if self.ifindex != 0 { Some(&ctx) } else { None },
                repeat: self.repeat,
                ..Default::default()
            })?;
            runs.push(r.duration.as_nanos() as f64);
        }
        runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Ok(runs[2])
    }

    pub fn lpm_load(&mut self, set: &[(u32, u8)]) -> Result<Duration> {
        let mut lpm: LpmTrie<_, [u8; 4], u32> =
            self.ebpf.map_mut("BENCH_LPM").unwrap().try_into()?;
        let keys: Vec<_> = lpm.keys().collect::<Result<_, _>>()?;
        for k in keys {
            lpm.remove(&k)?;
        }
        let t = Instant::now();
        for (i, (a, l)) in set.iter().enumerate() {
            lpm.insert(&Key::new(*l as u32, a.to_be_bytes()), i as u32 + 1, 0)?;
        }
        Ok(t.elapsed())
    }
}

/// Memory the kernel accounts to this process's BPF maps, by map name prefix.
pub fn map_memory(name_prefix: &str) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if link.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| {
                    l.strip_prefix(k)
                        .map(|v| v.trim().parse::<u64>().unwrap_or(0))
                })
                .unwrap_or(0)
        };
        let id = field("map_id:") as u32;
        let name = aya::maps::MapInfo::from_id(id)
            .ok()
            .and_then(|m| m.name_as_str().map(str::to_string))
            .unwrap_or_default();
        if name.starts_with(name_prefix) {
            total += field("memlock:");
        }
    }
    total
}
