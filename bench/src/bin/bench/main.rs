//! `cargo xtask bench`: the datapath measured beside its baselines in one run, through
//! BPF_PROG_TEST_RUN. Every row runs `bench_entry`, which writes the source address
//! (fixed, or random per packet) and tail-calls the program under test, so the entry's
//! own cost is the same in every row and cancels in the differences. `--only https`
//! runs the https comparison (`xlb_bench::https`), `--only daemon` a real `xlb run` in
//! namespaces (`xlb_bench::daemon`).
//!
//! The datapath's parts: xdp.rs (the rows and targets) on the rig of rig.rs, with
//! monitoring.rs and maglev.rs.

mod maglev;
mod monitoring;
mod ratelimit;
mod rig;
mod xdp;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench.json")]
    out: PathBuf,
    /// Fewer repeats and smaller prefix sets, shorter https runs, no testssl.sh, fewer
    /// daemon runs.
    #[arg(long)]
    quick: bool,
    /// Which part to run.
    #[arg(long, value_enum, default_value = "all")]
    only: Part,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Part {
    All,
    /// The XDP datapath and Maglev.
    Xdp,
    /// The https service beside nginx, and testssl.sh.
    Https,
    /// The daemon in namespaces: health-check detection, a change's round trip, a
    /// 100,000-prefix bulk load.
    Daemon,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut out = serde_json::Map::new();
    let part = |p: Part| args.only == Part::All || args.only == p;
    if part(Part::Xdp) {
        out.insert("xdp".into(), xdp::xdp(args.quick)?);
    }
    if part(Part::Https) {
        let https = xlb_bench::https::run(&xlb_bench::https::Options {
            quick: args.quick,
            testssl: !args.quick,
        })?;
        out.insert("https".into(), https);
    }
    if part(Part::Daemon) {
        let daemon = xlb_bench::daemon::run(&xlb_bench::daemon::Options { quick: args.quick })?;
        out.insert("daemon".into(), daemon);
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&out)?)?;
    println!("\nwritten to {}", args.out.display());
    Ok(())
}
