//! The rate limits' cost: a limit's check on a source that has its exact bucket, beside
//! the same program with no limit set, and under a flood of random sources (every
//! packet a source without a bucket: the count-min sketch), beside the same flood with
//! no limit.

use anyhow::Result;
use aya::programs::ProgramFd;
use serde_json::json;
use xlb::api::Request;
use xlb_tests::fixture::Fixture;

use crate::rig::Bench;

pub struct RateLimitRows {
    pub rows: Vec<(String, f64)>,
    pub summary: Vec<String>,
    pub json: serde_json::Value,
}

/// The limit check's added cost on a bucket hit, target (ns).
pub const HIT_TARGET_NS: f64 = 60.0;
/// ... under a random-source flood.
pub const FLOOD_TARGET_NS: f64 = 100.0;

fn limit(rate: &str, burst: &str) -> Request {
    Request::LimitAdd {
        rate: rate.into(),
        burst: Some(burst.into()),
        per: None,
        prefix: None,
        new_flows: false,
        service: None,
    }
}

fn del() -> Request {
    Request::LimitDel {
        per: None,
        prefix: None,
        new_flows: false,
        service: None,
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// `pass` and `pass_random`: the same program (the same build) with no limit, fixed and
/// random sources, measured in the same run just before.
pub fn rate_limits(
    fx: &mut Fixture,
    bench: &mut Bench,
    xlb_fd: &ProgramFd,
    fixed: u32,
) -> Result<RateLimitRows> {
    let pass = bench.ns(xlb_fd, fixed, false)?;
    let pass_random = bench.ns(xlb_fd, fixed, true)?;
    // A limit per source address that the fixed source stays within (10^9 a second):
    // after its first packets the source has its exact bucket (sample and hold), so
    // the measured runs are bucket hits.
    fx.req(limit("1000000000/s", "1000000000"));
    bench.ns(xlb_fd, fixed, false)?;
    let buckets = fx.edge.dp.rl.exact_buckets()?;
    let hit = bench.ns(xlb_fd, fixed, false)?;
    fx.req(del());
    // A flood of random sources against an ordinary limit (1000 a second per
    // address): every packet is a source without a bucket.
    fx.req(limit("1000/s", "1000"));
    let flood = bench.ns(xlb_fd, fixed, true)?;
    let promoted = fx.req(Request::LimitList)["limits"][0]["promoted"]
        .as_u64()
        .unwrap_or(0);
    let flood_buckets = fx.edge.dp.rl.exact_buckets()?;
    fx.req(del());
    let (hit_cost, flood_cost) = (hit - pass, flood - pass_random);
    let summary = vec![
        format!(
            "rate limit, bucket hit: {hit_cost:.1} ns over no limit (target <= {HIT_TARGET_NS} ns)  {}",
            met(hit_cost <= HIT_TARGET_NS)
        ),
        format!(
            "rate limit, random-source flood: {flood_cost:.1} ns over no limit (target <= {FLOOD_TARGET_NS} ns)  {}; {flood_buckets} exact buckets after the flood",
            met(flood_cost <= FLOOD_TARGET_NS)
        ),
    ];
    Ok(RateLimitRows {
        rows: vec![
            ("xlb, no limit, fixed source".into(), pass),
            ("xlb, limit per address, bucket hit".into(), hit),
            ("xlb, no limit, random sources".into(), pass_random),
            ("xlb, limit per address, random sources".into(), flood),
        ],
        summary,
        json: json!({
            "pass_ns": pass,
            "hit_ns": hit,
            "hit_over_pass_ns": hit_cost,
            "hit_target_ns": HIT_TARGET_NS,
            "hit_met": hit_cost <= HIT_TARGET_NS,
            "pass_random_ns": pass_random,
            "flood_ns": flood,
            "flood_over_pass_random_ns": flood_cost,
            "flood_target_ns": FLOOD_TARGET_NS,
            "flood_met": flood_cost <= FLOOD_TARGET_NS,
            "buckets_before_hit_runs": buckets,
            "flood_promotions": promoted,
            "flood_exact_buckets": flood_buckets,
        }),
    })
}
