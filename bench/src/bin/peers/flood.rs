//! The flood generator: XDP frames injected at the switch port facing the edge, and
//! the counters that say how many reached x0.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
use xlb_tests::{
    netns::{Netns, in_ns},
    packet::Pkt,
    topology::Topology,
};

use crate::cpu::{ksoftirqd_dirs, pin, schedstat_ns, thread_ns};

/// A MAC address from its text form (`aa:bb:cc:dd:ee:ff`).
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC address {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC address {text:?}"))
}

/// Frames the generator hands to the transmit path at a time (the kernel's live-frames
/// batch: one flush, then the softirqs run, per batch).
pub const BATCH: u32 = 64;
/// Frames per BPF_PROG_TEST_RUN call: between calls the flood checks its deadline.
const CHUNK: u64 = 100_000;
/// A paced flood's time per call: it sends this long's worth of frames, then sleeps
/// until the next call is due. A call has a fixed cost of tens of ms (the live-frames
/// set-up), so calls cannot be short.
const PACED_CALL: Duration = Duration::from_millis(50);

/// What one flood did.
pub struct Flood {
    /// Frames generated.
    pub sent: u64,
    /// CPU ns of the packets' path (the sending thread + ksoftirqd).
    pub cpu_ns: u64,
}

/// A 60-byte Ethernet+IPv4+UDP frame from `src` (host `from`, interface `from_if`) to
/// `dst` through the edge, UDP checksum 0 (none: `bench_tx_flows` rewrites the source
/// port without fixing it).
pub fn flood_frame(
    t: &Topology,
    from: &Netns,
    from_if: &str,
    (src, sport): (&str, u16),
    (dst, dport): (&str, u16),
) -> Result<Vec<u8>> {
    let mut frame = Pkt::udp(src, dst, sport, dport).payload(&[0; 18]).build();
    frame[0..6].copy_from_slice(&parse_mac(
        &t.edge.run(&["cat", "/sys/class/net/x0/address"])?,
    )?);
    frame[6..12].copy_from_slice(&parse_mac(
        &from.run(&["cat", &format!("/sys/class/net/{from_if}/address")])?,
    )?);
    // Ethernet 14 + IPv4 20, checksum at 6 in the UDP header.
    frame[40..42].copy_from_slice(&[0, 0]);
    Ok(frame)
}

/// What the generator writes into each frame before sending it.
#[derive(Clone, Copy)]
pub enum Gen {
    /// The frame as it is (`bench_tx`).
    Same,
    /// (first, count): the n-th copy's source port is first + n % count, a set of UDP
    /// flows (`bench_tx_flows`).
    Ports(u16, u32),
    /// A random source address (`base` with the bits of `mask` random) and port per
    /// frame, checksums fixed: a spoofed TCP flood (`bench_tx_spoofed`; the frame's
    /// source address and port must be zero, see `spoofed_frame`). `pps`: at most
    /// this many frames a second (None: as fast as it goes).
    Spoofed {
        base: [u8; 4],
        mask: [u8; 4],
        pps: Option<f64>,
    },
}

/// Sends `n` copies of `frame` (see `flood_frame`; with `ports`, (first, count), the
/// n-th copy's source port is first + n % count: a set of flows); see `flood_with`.
pub fn flood(
    t: &Topology,
    frame: Vec<u8>,
    ports: Option<(u16, u32)>,
    n: u64,
    tids: Vec<i32>,
) -> Result<Flood> {
    let generator = ports.map_or(Gen::Same, |(first, count)| Gen::Ports(first, count));
    flood_with(t, frame, generator, n, Duration::from_secs(30), tids)
}

/// The frame's first 64 bytes as the words of BENCH_TEMPLATE (what `bench_tx_flows` and
/// `bench_tx_spoofed` restore before every frame).
fn template(obj: &mut aya::Ebpf, frame: &[u8]) -> Result<()> {
    let mut words = [0u64; 8];
    for (w, b) in words.iter_mut().zip(frame.chunks(8)) {
        let mut a = [0; 8];
        a[..b.len()].copy_from_slice(b);
        *w = u64::from_ne_bytes(a);
    }
    let mut template: aya::maps::Array<_, [u64; 8]> = obj
        .map_mut("BENCH_TEMPLATE")
        .context("no BENCH_TEMPLATE in the bench object")?
        .try_into()?;
    template.set(0, words, 0).context("BENCH_TEMPLATE")
}

/// Loads the generator's program for `generator`, its maps set.
fn generator_prog(obj: &mut aya::Ebpf, generator: Gen, frame: &[u8]) -> Result<&'static str> {
    let array = |obj: &mut aya::Ebpf, name: &str, values: &[u32]| -> Result<()> {
        let mut a: aya::maps::Array<_, u32> = obj
            .map_mut(name)
            .with_context(|| format!("no {name} in the bench object"))?
            .try_into()?;
        for (i, v) in values.iter().enumerate() {
            a.set(i as u32, v, 0).with_context(|| name.to_string())?;
        }
        Ok(())
    };
    Ok(match generator {
        Gen::Same => "bench_tx",
        Gen::Ports(first, count) => {
            array(obj, "BENCH_FLOWS", &[u32::from(first), count])?;
            // The headers it restores before every frame (see bench_tx_flows).
            template(obj, frame)?;
            "bench_tx_flows"
        }
        Gen::Spoofed { base, mask, .. } => {
            array(
                obj,
                "BENCH_SRC",
                &[u32::from_ne_bytes(base), u32::from_ne_bytes(mask)],
            )?;
            template(obj, frame)?;
            "bench_tx_spoofed"
        }
    })
}

/// Sends up to `n` frames made from `frame` as `generator` says, for at most `limit`,
/// injected at the switch port facing the edge (`sw-x`) as XDP frames: `bench_tx`
/// (XDP_TX) run by BPF_PROG_TEST_RUN in live-frames mode, as if it arrived on sw-x,
/// transmits each frame out of sw-x, so x0 receives it as a NIC driver would, in a page
/// and without an skb: an XDP peer runs on it as is, the others get an skb built by
/// the veth (x0 has GRO on, so its NAPI takes XDP frames with no program attached) and
/// then run in the stack. A frame injected as an skb instead (an AF_PACKET socket, or
/// a UDP socket) reaches x0 as an skb, which veth copies into a fresh page before any
/// XDP program sees it: a cost a NIC does not have, larger than the whole drop, which
/// put nftables below the XDP floor. The generator costs a few tens of ns a frame
/// (no syscall, socket or bridge per frame). The softirqs run when each batch
/// re-enables them, in the sender's context, so the thread's CPU time plus ksoftirqd's
/// covers the generator, the veth and the edge's receive path up to the drop, and
/// leaves out whatever else the machine is doing. `tids`: threads of this process whose
/// CPU time belongs to the measure too (pinned to the same CPU).
pub fn flood_with(
    t: &Topology,
    frame: Vec<u8>,
    generator: Gen,
    n: u64,
    limit: Duration,
    tids: Vec<i32>,
) -> Result<Flood> {
    in_ns(&t.switch, move || -> Result<Flood> {
        pin()?;
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        let mut obj =
            aya::Ebpf::load(xlb::kernel::object::BENCH).context("loading the bench object")?;
        let name = generator_prog(&mut obj, generator, &frame)?;
        let prog: &mut aya::programs::Xdp = obj
            .program_mut(name)
            .with_context(|| format!("no {name} in the bench object"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"sw-x".as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error()).context("sw-x's ifindex");
        }
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue, egress.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut sent = 0;
        let deadline = Instant::now() + limit;
        let softirqd = ksoftirqd_dirs();
        let cpu = || {
            thread_ns(me)
                + tids.iter().map(|&t| thread_ns(t)).sum::<u64>()
                + softirqd.iter().map(|d| schedstat_ns(d)).sum::<u64>()
        };
        let cpu0 = cpu();
        let (chunk, pps) = match generator {
            Gen::Spoofed { pps: Some(pps), .. } => (
                ((pps * PACED_CALL.as_secs_f64()) as u64).max(BATCH as u64),
                Some(pps),
            ),
            _ => (CHUNK, None),
        };
        let start = Instant::now();
        while sent < n && Instant::now() < deadline {
            let repeat = (n - sent).min(chunk);
            prog.test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat: repeat as u32,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .with_context(|| format!("live-frames test run after {sent} frames"))?;
            sent += repeat;
            if let Some(pps) = pps {
                let due = start + Duration::from_secs_f64(sent as f64 / pps);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
        }
        Ok(Flood {
            sent,
            cpu_ns: cpu() - cpu0,
        })
    })?
}

/// x0's counter `which` (rx_packets, tx_packets) in the edge (read there: each
/// `ip netns exec` has its own /sys).
pub fn x0_counter(edge: &Netns, which: &str) -> Result<u64> {
    let path = format!("/sys/class/net/x0/statistics/{which}");
    edge.run(&["cat", &path])?
        .trim()
        .parse()
        .with_context(|| format!("reading {path} in the edge"))
}

/// XDP frames sw-x has handed to x0's ring so far (the flood's frames that arrived; a
/// full ring refuses the rest, counted as errors instead).
pub fn frames_to_x0(switch: &Netns) -> Result<u64> {
    let stats = switch.run(&["ethtool", "-S", "sw-x"])?;
    let mut n = 0;
    for line in stats.lines() {
        if let Some((key, v)) = line.trim().split_once(':')
            && key.ends_with("_xdp_xmit")
        {
            n += v.trim().parse::<u64>().context("ethtool -S sw-x")?;
        }
    }
    Ok(n)
}
