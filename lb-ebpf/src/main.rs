//! xlb's XDP program: parse -> filter -> count -> verdict.
//!
//! Every stage is a function with one job in its own module. The program never returns
//! XDP_ABORTED and never reads past `data_end` (all packet reads go through
//! `bounds::ptr_at`).
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod balance;
mod bounds;
mod count;
mod filter;
mod maps;
mod parse;
mod rewrite;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{Config, Reason, Verdict};

use crate::filter::{Decision, action_verdict};

#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    let len = bounds::frame_len(&ctx);
    let d = decide(&ctx);
    count::packet(d.reason, d.verdict, len, d.rule);
    match d.verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Tx => xdp_action::XDP_TX,
        Verdict::Redirect => xdp_action::XDP_REDIRECT,
    }
}

/// parse -> filter -> balance (which rewrites and picks the way out).
#[inline(always)]
fn decide(ctx: &XdpContext) -> Decision {
    let cfg = maps::XLB_CONFIG.get(0).copied().unwrap_or_default();
    match parse::packet(ctx) {
        Ok(Some(pkt)) => {
            let d = filter::decide(&pkt, &cfg);
            if d.verdict == Verdict::Pass
                && let Some((verdict, reason)) = balance::balance(ctx, &pkt, &cfg)
            {
                return Decision {
                    verdict,
                    reason,
                    rule: d.rule,
                };
            }
            d
        }
        Ok(None) => Decision {
            verdict: Verdict::Pass,
            reason: Reason::NonIp,
            rule: 0,
        },
        Err(reason) => Decision {
            verdict: action_verdict(cfg.malformed_action),
            reason,
            rule: 0,
        },
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// Config is read by value: keep the type used so a layout change shows up here.
const _: () = assert!(core::mem::size_of::<Config>() == 24);
