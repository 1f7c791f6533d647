//! Per-service and per-backend traffic, read from the kernel's per-CPU backend counters
//! at scrape time (summed over CPUs, one batch read for every backend id in use).

use anyhow::{Context, Result};
use aya::maps::PerCpuValues;
use lb_common::BackendStats;

use super::Balancer;
use crate::kernel::stats as kstats;
use crate::model::services::{BackendAddr, Mode, Vip};

/// One backend's numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTraffic {
    pub backend: BackendAddr,
    pub id: u32,
    pub stats: BackendStats,
}

/// One service's numbers: its backends, and the totals (current backends plus the
/// ones that left since the service was added).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTraffic {
    pub vip: Vip,
    pub mode: Mode,
    pub backends: Vec<BackendTraffic>,
    pub total: BackendStats,
}

pub(crate) fn add(into: &mut BackendStats, s: &BackendStats) {
    into.packets += s.packets;
    into.bytes += s.bytes;
    into.new_flows += s.new_flows;
}

impl Balancer {
    /// Every service with its backends' counters, in service order.
    pub fn traffic(&self, ncpus: usize) -> Result<Vec<ServiceTraffic>> {
        let end = self
            .installed
            .values()
            .flat_map(|i| i.backend_ids.values())
            .max()
            .map_or(0, |m| m + 1);
        let fd = self.backend_stats_fd;
        let all =
            kstats::per_cpu_array_sums(fd, end, ncpus, |sum: &mut BackendStats, v| add(sum, v))
                .context("reading the backend counters")?;
        let mut out = Vec::with_capacity(self.installed.len());
        for (vip, inst) in &self.installed {
            let mut total = self.retired.get(vip).copied().unwrap_or_default();
            let backends: Vec<BackendTraffic> = inst
                .backend_ids
                .iter()
                .map(|(b, id)| {
                    let stats = all.get(*id as usize).copied().unwrap_or_default();
                    add(&mut total, &stats);
                    BackendTraffic {
                        backend: *b,
                        id: *id,
                        stats,
                    }
                })
                .collect();
            out.push(ServiceTraffic {
                vip: *vip,
                mode: inst.mode,
                backends,
                total,
            });
        }
        Ok(out)
    }

    /// The counters of backend ids `0..end`, summed over CPUs (one batch read).
    pub fn backend_counters(&self, end: u32, ncpus: usize) -> Result<Vec<BackendStats>> {
        kstats::per_cpu_array_sums(self.backend_stats_fd, end, ncpus, add)
            .context("reading the backend counters")
    }

    /// A backend leaves its service: its counters go to the service's retired total.
    pub(super) fn retire(&mut self, vip: &Vip, id: u32) {
        match self.backend_stats.get(&id, 0) {
            Ok(per_cpu) => {
                let t = self.retired.entry(*vip).or_default();
                for v in per_cpu.iter() {
                    add(t, v);
                }
            }
            Err(e) => tracing::warn!("reading backend {id}'s counters: {e}"),
        }
    }

    /// Zeroes every backend's counters and the services' retired totals (`stats
    /// reset`); returns the backends zeroed.
    pub fn reset_all_stats(&mut self) -> Result<usize> {
        self.retired.clear();
        let ids: Vec<u32> = self
            .installed
            .values()
            .flat_map(|i| i.backend_ids.values().copied())
            .collect();
        for id in &ids {
            self.reset_stats(*id)?;
        }
        Ok(ids.len())
    }

    /// A backend id given to a new backend starts from zero.
    pub(super) fn reset_stats(&mut self, id: u32) -> Result<()> {
        let ncpus = aya::util::nr_cpus().map_err(|(m, e)| anyhow::anyhow!("{m}: {e}"))?;
        let zeros = PerCpuValues::try_from(vec![BackendStats::default(); ncpus])?;
        self.backend_stats
            .set(id, zeros, 0)
            .context("resetting a backend's counters")
    }
}
