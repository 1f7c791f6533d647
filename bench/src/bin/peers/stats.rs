//! Measurements in rounds: every peer once per round, the order rotated; the median
//! and range of what the runs measured, alone or above a floor's run of the same round.

use anyhow::Result;
use serde_json::json;

/// Median, min and max (None for no values).
fn median_range(v: &[f64]) -> Option<Stat> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((med, v[0], v[n - 1]))
}

/// A peer of a measurement in rounds.
pub trait Peer: Copy {
    fn name(self) -> &'static str;
}

/// A peer's runs, by round (None: that round failed).
pub struct Row<P, R> {
    pub peer: P,
    pub runs: Vec<Option<R>>,
}

/// Median, min and max.
pub type Stat = (f64, f64, f64);

/// Every peer once per round, the order rotated each round, so slow drifts of the
/// machine (other load, thermal, page cache) hit every peer alike. `part` names the
/// measurement in the progress lines. Peers that failed every round are left out.
pub fn rounds<P: Peer, R>(
    part: &str,
    peers: &[P],
    rounds: usize,
    mut run: impl FnMut(P) -> Result<R>,
) -> Vec<Row<P, R>> {
    let mut rows: Vec<Row<P, R>> = peers
        .iter()
        .map(|&peer| Row {
            peer,
            runs: (0..rounds).map(|_| None).collect(),
        })
        .collect();
    for round in 0..rounds {
        for k in 0..peers.len() {
            let i = (k + round) % peers.len();
            let peer = peers[i];
            eprintln!("{part}: round {}/{rounds}: {} ...", round + 1, peer.name());
            match run(peer) {
                Ok(r) => rows[i].runs[round] = Some(r),
                Err(e) => eprintln!("{part}: {} failed: {e:#}", peer.name()),
            }
        }
    }
    rows.retain(|r| r.runs.iter().any(Option::is_some));
    rows
}

impl<P, R> Row<P, R> {
    pub fn done(&self) -> impl Iterator<Item = &R> {
        self.runs.iter().flatten()
    }

    /// Median and range over the rounds of what `f` takes from a run.
    pub fn stat(&self, f: impl Fn(&R) -> Option<f64>) -> Option<Stat> {
        median_range(&self.done().filter_map(f).collect::<Vec<_>>())
    }

    /// What `f` takes from a run above the floor's of the same round, round by round
    /// (paired: a noisy round moves both).
    pub fn above(&self, floor: Option<&Self>, f: impl Fn(&R) -> Option<f64>) -> Option<Stat> {
        let floor = floor?;
        let d: Vec<f64> = self
            .runs
            .iter()
            .zip(&floor.runs)
            .filter_map(|(p, fl)| Some(f(p.as_ref()?)? - f(fl.as_ref()?)?))
            .collect();
        median_range(&d)
    }

    pub fn sum(&self, f: impl Fn(&R) -> u64) -> u64 {
        self.done().map(f).sum()
    }
}

/// A statistic as text: the median, and min..max.
pub fn stat_text(s: Option<Stat>) -> (String, String) {
    s.map_or(("-".to_string(), "-".to_string()), |(m, lo, hi)| {
        (format!("{m:.0}"), format!("{lo:.0}..{hi:.0}"))
    })
}

pub fn stat_json(s: Option<Stat>) -> serde_json::Value {
    s.map_or(
        serde_json::Value::Null,
        |(m, lo, hi)| json!({"median": m, "min": lo, "max": hi}),
    )
}
