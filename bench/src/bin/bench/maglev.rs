//! Maglev in user space: build time, balance and disruption of xlb's bounded-load fill
//! beside Maglev's own.

use std::time::Instant;

use serde_json::json;
use xlb::kernel::maglev::{self, Member};

/// A Maglev table builder: (backends, M) -> slot -> backend index.
type Fill = fn(&[Member], u32) -> Vec<Option<u32>>;

/// Maglev's own fill rule, xlb's builder before the bounded-load one, kept as the
/// baseline: every backend in turn takes the next free slot of its walk (the same walks
/// as `maglev::build`; weights are only 0 or not).
fn classic_maglev(members: &[Member], m: u32) -> Vec<Option<u32>> {
    let mut by_key: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].weight > 0)
        .collect();
    by_key.sort_by(|a, b| members[*a].key.cmp(&members[*b].key));
    let mut walks: Vec<(u64, u64)> = by_key
        .iter()
        .map(|&i| maglev::permutation(&members[i].key, 0, m))
        .collect();
    let mut table = vec![None; m as usize];
    let mut filled = 0;
    loop {
        for (&i, (slot, skip)) in by_key.iter().zip(&mut walks) {
            while table[*slot as usize].is_some() {
                *slot = (*slot + *skip) % m as u64;
            }
            table[*slot as usize] = Some(i as u32);
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// (build ms, max/mean slots, disruption multiple) for M slots and N equal backends.
fn maglev_row(fill: Fill, m: u32, n: usize) -> (f64, f64, f64) {
    let members: Vec<Member> = (0..n)
        .map(|i| Member {
            key: format!("203.0.113.{}:{}", i % 250, 8000 + i / 250),
            weight: 1,
        })
        .collect();
    let t = Instant::now();
    let before = fill(&members, m);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let s = maglev::shares(&before, n);
    let max_mean = *s.iter().max().unwrap() as f64 / (m as f64 / n as f64);
    let gone = n / 3;
    let mut rest = members.clone();
    rest[gone].weight = 0;
    let after = fill(&rest, m);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64;
    (ms, max_mean, moved / s[gone] as f64)
}

/// The Maglev table (printed, with its targets): `bounded`, xlb's fill, at several sizes
/// M for N backends, and `classic` at the size xlb picks; its rows for the JSON.
pub fn table() -> serde_json::Value {
    println!("\nMaglev (user space): build time, balance (max/mean slots), disruption when one");
    println!("backend is removed (slots moved / slots it held; 1.0 is the minimum). `bounded` is");
    println!("xlb's fill, `classic` Maglev's own (xlb's before); * marks the M table_size_for");
    println!(
        "picks, the other sizes show the trade-off; pool = share of the kernel's table pool:\n"
    );
    println!(
        "| {:<7} | {:>8} | {:>5} | {:>13} | {:>6} | {:>8} | {:>8} | {:>10} |",
        "fill", "M", "N", "slots/backend", "pool", "build ms", "max/mean", "disruption"
    );
    println!(
        "|{:-<9}|{:->10}|{:->7}|{:->15}|{:->8}|{:->10}|{:->10}|{:->12}|",
        "", "", "", "", "", "", "", ""
    );
    let cases: [(usize, &[u32]); 3] = [
        (10, &[65_537]),
        (100, &[65_537, 131_071]),
        (1000, &[131_071, 262_147, 524_287, 1_048_573]),
    ];
    let mut maglev_rows = Vec::new();
    let mut targets = Vec::new();
    for (n, sizes) in cases {
        let pick = maglev::table_size_for(n).expect("a table size");
        let runs = sizes
            .iter()
            .map(|&m| ("bounded", maglev::build as Fill, m))
            .chain([("classic", classic_maglev as Fill, pick)]);
        for (fill, build, m) in runs {
            let r = maglev_row(build, m, n);
            println!(
                "| {fill:<7} | {:>8} | {n:>5} | {:>13} | {:>5.1}% | {:>8.1} | {:>8.3} | {:>10.2} |",
                format!("{m}{}", if m == pick { "*" } else { "" }),
                m as usize / n,
                100.0 * m as f64 / lb_common::MAGLEV_POOL as f64,
                r.0,
                r.1,
                r.2
            );
            if fill == "bounded" && m == pick && n >= 100 {
                targets.push((n, m, r));
            }
            maglev_rows.push(json!({"fill": fill, "m": m, "n": n, "picked": m == pick,
                "build_ms": r.0, "max_over_mean": r.1, "disruption": r.2}));
        }
    }
    for (n, m, (ms, max_mean, disruption)) in targets {
        println!(
            "  N = {n}, M = {m}: max/mean {max_mean:.3} (target <= 1.05), disruption {disruption:.2}x (target <= 1.2x), build {ms:.0} ms  {}",
            if max_mean <= 1.05 && disruption <= 1.2 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    json!(maglev_rows)
}
