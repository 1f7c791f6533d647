//! The kernel objects, built by build.rs from ../lb-ebpf and embedded in the binary.

/// xlb's XDP program.
pub static XLB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb.o"));

/// The benchmark's programs (floor, LPM-trie baseline, source randomiser).
pub static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-bench.o"));

/// xlb's XDP program built without the kernel log calls (feature `klog` off), for the
/// bench's comparison with logging off.
pub static XLB_NOLOG: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-nolog.o"));
