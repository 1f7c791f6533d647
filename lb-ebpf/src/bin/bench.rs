//! Programs for `cargo xtask bench` only (never attached by xlb):
//! - `bench_floor`: returns XDP_PASS, the cost of BPF_PROG_TEST_RUN itself;
//! - `bench_drop`: returns XDP_DROP, the cheapest drop (`bench --peers`);
//! - `bench_tx`: returns XDP_TX: run by BPF_PROG_TEST_RUN in live-frames mode, it is the
//!   flood generator of `bench --peers` (every run sends the test frame out of the
//!   context's interface through its XDP transmit path);
//! - `bench_tx_flows`: `bench_tx` that first restores the headers from BENCH_TEMPLATE
//!   and writes the UDP source port, cycling over BENCH_FLOWS' set of ports, so the flood
//!   is a set of flows (or a new flow per frame);
//! - `bench_tx_spoofed`: `bench_tx` for a spoofed TCP flood (SYN or ACK): restores the
//!   headers from BENCH_TEMPLATE (built with source 0.0.0.0 port 0), then writes a random
//!   source address (BENCH_SRC's base and mask) and a random source port, and adds them
//!   to the IPv4 and TCP checksums, so every frame is a new, valid source;
//! - `bench_fwd`: the cheapest forwarder: writes the MACs from BENCH_FWD, XDP_TX (the
//!   floor of the per-packet balancer rows: the rig's forwarding path without a balancer);
//! - `bench_sink`: on the switch port facing the edge, drops the flood's frames that the
//!   edge forwarded (UDP to port 9) and counts them per destination MAC's last byte
//!   (BENCH_SINK), so every peer's forwarded frame ends at the same place and cost;
//! - `bench_uplink`: on the switch port facing the edge in the SYN-flood rows, drops and
//!   counts (BENCH_UPLINK) what the edge sends to the spoofed sources (IPv4 to
//!   UPLINK_NET/25: SYN-ACKs, resets), as a NIC would put them on the wire at no cost
//!   to the host; passes everything else (it replaces `bench_floor` there);
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
    maps::{Array, LpmTrie, PerCpuArray, ProgramArray, lpm_trie::Key},
    programs::XdpContext,
};
use lb_common::net::{ETH_HLEN, ETH_P_IP, IPPROTO_UDP, IPV4_MIN_HLEN};

/// Offsets in an untagged IPv4 frame without options: the IPv4 checksum and the TCP
/// checksum (the TCP header starts where UDP's would).
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const TCP_CSUM_OFF: usize = UDP_OFF + 16;

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

/// `bench_tx_flows`: [0] = first source port, [1] = how many ports, [2] = frames so far.
#[map]
static BENCH_FLOWS: Array<u32> = Array::with_max_entries(3, 0);
/// `bench_fwd`: destination then source MAC.
#[map]
static BENCH_FWD: Array<[u8; 12]> = Array::with_max_entries(1, 0);
/// `bench_sink`: frames dropped, by the last byte of their destination MAC.
#[map]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(256, 0);

/// `bench_uplink`: frames dropped.
#[map]
static BENCH_UPLINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// The spoofed sources of `bench --peers`' SYN-flood rows: 198.51.100.128/25.
const UPLINK_NET: [u8; 4] = [198, 51, 100, 128];

/// The header words `bench_tx_flows` restores: Ethernet, IPv4 and UDP (42 bytes).
const HEADER_WORDS: usize = 6;
/// Offset of the UDP header in an untagged IPv4 frame without options.
const UDP_OFF: usize = ETH_HLEN + IPV4_MIN_HLEN;
/// The port the per-packet balancer flood is sent to (and forwarded to).
const SINK_PORT: u16 = 9;

/// Offset of the IPv4 source address in an untagged frame.
const SRC_OFF: usize = ETH_HLEN + 12;

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

/// Writes the first `N` words of BENCH_TEMPLATE over the frame's start; returns the
/// start, None if the frame is shorter.
#[inline(always)]
fn restore<const N: usize>(ctx: &XdpContext) -> Option<usize> {
    let start = ctx.data();
    if start + N * 8 > ctx.data_end() {
        return None;
    }
    if let Some(t) = BENCH_TEMPLATE.get(0) {
        let mut i = 0;
        while i < N && i < TEMPLATE_WORDS {
            unsafe { *((start + 8 * i) as *mut u64) = t[i] };
            i += 1;
        }
    }
    Some(start)
}

/// `bench_tx` over a set of flows: source port `base + n % count` for the n-th frame.
/// The UDP checksum must be 0 (none): the port changes without fixing it.
#[xdp]
pub fn bench_tx_flows(ctx: XdpContext) -> u32 {
    // A live-frames run reuses its pages with whatever the last trip left in them: a
    // forwarder rewrote the MACs, a balancer the destination, the stack the TTL (a frame
    // recycled 64 times would expire). Every frame leaves with the original headers.
    let Some(start) = restore::<HEADER_WORDS>(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    let (Some(base), Some(count), Some(next)) = (
        BENCH_FLOWS.get(0).copied(),
        BENCH_FLOWS.get(1).copied(),
        BENCH_FLOWS.get_ptr_mut(2),
    ) else {
        return xdp_action::XDP_ABORTED;
    };
    // One generator thread per map: a plain increment is enough.
    let n = unsafe { *next };
    unsafe { *next = n.wrapping_add(1) };
    let port = base.wrapping_add(n % count.max(1)) as u16;
    unsafe { *((start + UDP_OFF) as *mut [u8; 2]) = port.to_be_bytes() };
    xdp_action::XDP_TX
}

/// `sum` + the 16-bit words of `add`, folded (one's complement, RFC 1071).
#[inline(always)]
fn csum_add(sum: u16, add: [u8; 6]) -> u16 {
    let mut s = !sum as u32;
    s += u16::from_be_bytes([add[0], add[1]]) as u32;
    s += u16::from_be_bytes([add[2], add[3]]) as u32;
    s += u16::from_be_bytes([add[4], add[5]]) as u32;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// A spoofed TCP flood frame: see the module's doc. The template's source address and
/// port are zero, so adding the new ones to its checksums (RFC 1624 with the old words
/// zero) gives the right sums without reading the rest of the frame.
#[xdp]
pub fn bench_tx_spoofed(ctx: XdpContext) -> u32 {
    let Some(start) = restore::<TEMPLATE_WORDS>(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    let base = BENCH_SRC.get(0).copied().unwrap_or(0);
    let mask = BENCH_SRC.get(1).copied().unwrap_or(0);
    let rand = unsafe { bpf_get_prandom_u32() };
    let src = ((base & !mask) | (rand & mask)).to_ne_bytes();
    // Ports 1024..65535, from other bits than the address's.
    let port = (1024 + (unsafe { bpf_get_prandom_u32() } % 64512)) as u16;
    let p = port.to_be_bytes();
    unsafe {
        *((start + SRC_OFF) as *mut [u8; 4]) = src;
        *((start + UDP_OFF) as *mut [u8; 2]) = p;
        let ip = (start + IP_CSUM_OFF) as *mut [u8; 2];
        let c = csum_add(
            u16::from_be_bytes(*ip),
            [src[0], src[1], src[2], src[3], 0, 0],
        );
        *ip = c.to_be_bytes();
        // The pseudo-header carries the source address; the header the port.
        let tcp = (start + TCP_CSUM_OFF) as *mut [u8; 2];
        let c = csum_add(
            u16::from_be_bytes(*tcp),
            [src[0], src[1], src[2], src[3], p[0], p[1]],
        );
        *tcp = c.to_be_bytes();
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_fwd(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let Some(macs) = BENCH_FWD.get(0) else {
        return xdp_action::XDP_PASS;
    };
    unsafe { *(start as *mut [u8; 12]) = *macs };
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + UDP_OFF + 4 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // IPv4 (no options), UDP, to SINK_PORT: a forwarded flood frame.
    let (eth, vihl, proto, dport) = unsafe {
        (
            *((start + 12) as *const [u8; 2]),
            *((start + ETH_HLEN) as *const u8),
            *((start + ETH_HLEN + 9) as *const u8),
            *((start + UDP_OFF + 2) as *const [u8; 2]),
        )
    };
    if eth != ETH_P_IP.to_be_bytes()
        || vihl != 0x45
        || proto != IPPROTO_UDP
        || dport != SINK_PORT.to_be_bytes()
    {
        return xdp_action::XDP_PASS;
    }
    let last = unsafe { *((start + 5) as *const u8) };
    if let Some(c) = BENCH_SINK.get_ptr_mut(last as u32) {
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_uplink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + ETH_HLEN + IPV4_MIN_HLEN > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let (eth, dst) = unsafe {
        (
            *((start + 12) as *const [u8; 2]),
            *((start + ETH_HLEN + 16) as *const [u8; 4]),
        )
    };
    if eth != ETH_P_IP.to_be_bytes()
        || dst[..3] != UPLINK_NET[..3]
        || dst[3] & 0x80 != UPLINK_NET[3]
    {
        return xdp_action::XDP_PASS;
    }
    if let Some(c) = BENCH_UPLINK.get_ptr_mut(0) {
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_entry(ctx: XdpContext) -> u32 {
    let Some(start) = restore::<TEMPLATE_WORDS>(&ctx) else {
        return xdp_action::XDP_PASS;
    };
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
