//! xlb's XDP programs: parse -> filter -> (balance -> rewrite) -> count -> verdict.
//!
//! Every stage is a function with one job in its own module. The program never returns
//! XDP_ABORTED and never reads past `data_end` (all packet reads go through
//! `bounds::ptr_at`).
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]
// BPF_CMPXCHG for fullnat port claims (see balance::ports::swap_claim).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod balance;
mod bounds;
mod count;
mod events;
mod filter;
mod icmp;
#[cfg(feature = "klog")]
mod klog;
mod maps;
mod parse;
mod ratelimit;
mod rewrite;
mod syncookie;
mod synflood;
mod synproxy;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
#[cfg(feature = "klog")]
use lb_common::LOG_DEBUG;
use lb_common::{Config, JUMP_BALANCE, Reason, Verdict};

use crate::filter::{Decision, action_verdict};

#[inline(always)]
fn action(v: Verdict) -> u32 {
    match v {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Tx => xdp_action::XDP_TX,
        Verdict::Redirect => xdp_action::XDP_REDIRECT,
    }
}

#[inline(always)]
fn config() -> Config {
    maps::XLB_CONFIG.get(0).copied().unwrap_or_default()
}

/// The firewall. A packet it passes while services exist continues in `xlb_balance`
/// (a tail call: the verifier checks each program on its own, which keeps the balancer's
/// paths from multiplying with the firewall's).
#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    let len = bounds::frame_len(&ctx);
    let cfg = config();
    // Off by default: one comparison of a value already loaded, the log calls skipped.
    #[cfg(feature = "klog")]
    if cfg.log_level >= LOG_DEBUG {
        klog::packet(&ctx);
    }
    let (mut d, ip) = firewall(&ctx, &cfg);
    // Rate limits of all traffic, on what the firewall passed (always-allowed packets
    // are never limited).
    if ip && d.verdict == Verdict::Pass && d.reason != Reason::Except && ratelimit::active() {
        d = ratelimit::after_firewall(&ctx, d);
    }
    #[cfg(feature = "klog")]
    if cfg.log_level >= LOG_DEBUG {
        klog::decision(&ctx, 0, d.reason as u32, d.verdict as u32);
    }
    if ip && d.verdict == Verdict::Pass && cfg.services != 0 {
        count::rule_hit(d.rule);
        if let Some(slot) = maps::XLB_HANDOFF.get_ptr_mut(0) {
            unsafe { *slot = d.reason as u32 };
        }
        unsafe { maps::XLB_JUMP.tail_call(&ctx, JUMP_BALANCE) };
        // Only reached if the balancer is not loaded: count the pass here.
        count::packet(d.reason, d.verdict, len, 0);
        return xdp_action::XDP_PASS;
    }
    count::packet(d.reason, d.verdict, len, d.rule);
    if d.verdict == Verdict::Drop {
        events::dropped(&ctx, d.reason, len, &cfg);
    }
    action(d.verdict)
}

/// The load balancer, entered from `xlb` for packets the firewall passed.
#[xdp]
pub fn xlb_balance(ctx: XdpContext) -> u32 {
    let out = balanced(&ctx);
    // SYN-flood protection's program takes it from here if the balancer asked (and may
    // send it back): a tail call from this frame, kept small for it.
    if synflood::take_go() {
        unsafe { maps::XLB_JUMP.tail_call(&ctx, lb_common::JUMP_SYN) };
    }
    synflood::clear_resume();
    finish(&ctx, out)
}

/// The balancer's outcome, packed (balance::NONE: none).
#[inline(never)]
fn balanced(ctx: &XdpContext) -> u32 {
    let cfg = config();
    balance::packed(balance::balance(ctx, &cfg))
}

/// Counts the balancer's outcome and gives its action.
#[inline(never)]
fn finish(ctx: &XdpContext, out: u32) -> u32 {
    let len = bounds::frame_len(ctx);
    let cfg = config();
    let passed = maps::XLB_HANDOFF
        .get(0)
        .and_then(|r| Reason::ALL.get(*r as usize).copied())
        .unwrap_or(Reason::Default);
    let (verdict, reason) = balance::unpacked(out).unwrap_or((Verdict::Pass, passed));
    count::packet(reason, verdict, len, 0);
    if verdict == Verdict::Drop {
        events::dropped(ctx, reason, len, &cfg);
    }
    #[cfg(feature = "klog")]
    if cfg.log_level >= LOG_DEBUG {
        klog::decision(ctx, 1, reason as u32, verdict as u32);
    }
    action(verdict)
}

/// parse -> filter. The flag says whether the packet is IP.
#[inline(always)]
fn firewall(ctx: &XdpContext, cfg: &Config) -> (Decision, bool) {
    // Parsed into per-CPU scratch space, where the balancer finds it after the tail
    // call (same CPU, same packet): one parse per packet.
    let Some(scratch) = maps::scratch() else {
        return (Decision::NON_IP, false);
    };
    let pkt = &mut scratch.pkt;
    match parse::packet(ctx, pkt) {
        Ok(true) => (filter::decide(pkt, cfg), true),
        Ok(false) => (Decision::NON_IP, false),
        Err(reason) => (
            Decision {
                verdict: action_verdict(cfg.malformed_action),
                reason,
                rule: 0,
            },
            false,
        ),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// Config is read by value: keep the type used so a layout change shows up here.
const _: () = assert!(core::mem::size_of::<Config>() == 36);
