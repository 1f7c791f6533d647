//! Programs for `cargo xtask bench` only (never attached by xlb):
//! - `bench_floor`: returns XDP_PASS, the cost of BPF_PROG_TEST_RUN itself;
//! - `bench_drop`: returns XDP_DROP, the cheapest drop (`bench --peers`);
//! - `bench_tx`: returns XDP_TX: run by BPF_PROG_TEST_RUN in live-frames mode, it is the
//!   flood generator of `bench --peers` (every run sends the test frame out of the
//!   context's interface through its XDP transmit path);
//! - `bench_lpm`: the baseline, one BPF_MAP_TYPE_LPM_TRIE lookup of the IPv4 source;
//! - `bench_entry`: writes a source address into the frame (random or fixed, chosen by
//!   BENCH_SRC) and tail-calls the program under test, so a repeated test run sees a new
//!   source every packet. Every measured program goes through it, so its cost cancels.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, xdp_action},
    helpers::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::{Array, LpmTrie, ProgramArray, lpm_trie::Key},
    programs::XdpContext,
};

/// [0] = fixed base address (network order), [1] = mask of random bits.
#[map]
static BENCH_SRC: Array<u32> = Array::with_max_entries(2, 0);
/// The first TEMPLATE_LEN bytes every packet starts from: a test run repeats on one
/// buffer, and programs that rewrite it (nat) must see the original each time.
#[map]
static BENCH_TEMPLATE: Array<[u64; TEMPLATE_WORDS]> = Array::with_max_entries(1, 0);
const TEMPLATE_WORDS: usize = 8;
#[map]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static BENCH_LPM: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1 << 21, BPF_F_NO_PREALLOC);

/// Offset of the IPv4 source address in an untagged frame.
const SRC_OFF: usize = 14 + 12;

#[xdp]
pub fn bench_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops everything: the cheapest possible firewall, the floor of `bench --peers`.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Sends the frame back out (see the module's doc: a packet generator).
#[xdp]
pub fn bench_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_entry(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + TEMPLATE_WORDS * 8 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    if let Some(t) = BENCH_TEMPLATE.get(0) {
        let mut i = 0;
        while i < TEMPLATE_WORDS {
            unsafe { *((start + 8 * i) as *mut u64) = t[i] };
            i += 1;
        }
    }
    let base = BENCH_SRC.get(0).copied().unwrap_or(0);
    let mask = BENCH_SRC.get(1).copied().unwrap_or(0);
    let rand = unsafe { bpf_get_prandom_u32() };
    unsafe { *((start + SRC_OFF) as *mut u32) = (base & !mask) | (rand & mask) };
    // Returns only if the tail call fails (no target set).
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_lpm(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + SRC_OFF + 4 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let src = unsafe { *((start + SRC_OFF) as *const [u8; 4]) };
    match BENCH_LPM.get(Key::new(32, src)) {
        Some(_) => xdp_action::XDP_DROP,
        None => xdp_action::XDP_PASS,
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
