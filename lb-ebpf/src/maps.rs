//! Every map of the program. Names, keys, values and sizes come from lb-common.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use lb_common::*;

use crate::parse::Packet;

#[map]
pub static XLB_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
pub static XLB_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTERS, 0);

#[map]
pub static XLB_RULE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_RULES, 0);

// Mmapable: user space paints ranges of it with plain memory writes.
#[map]
pub static XLB_DIR24: Array<Dir24Block> = Array::with_max_entries(DIR24_BLOCKS, BPF_F_MMAPABLE);

#[map]
pub static XLB_DIR24_SUMMARY: Array<u64> =
    Array::with_max_entries(DIR24_SUMMARY_WORDS, BPF_F_MMAPABLE);

#[map]
pub static XLB_LONG_V4: Array<LongV4Bucket> =
    Array::with_max_entries(LONG_V4_BUCKETS, BPF_F_MMAPABLE);

#[map]
pub static XLB_PREFIX_V6: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(MAX_PREFIX_V6, BPF_F_NO_PREALLOC);

#[map]
pub static XLB_EXCEPT_V4: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(MAX_EXCEPT, BPF_F_NO_PREALLOC);

#[map]
pub static XLB_EXCEPT_V6: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(MAX_EXCEPT, BPF_F_NO_PREALLOC);

#[map]
pub static XLB_PORTS: Array<PortEntry> = Array::with_max_entries(PORT_TABLE_SIZE, BPF_F_MMAPABLE);

#[map]
pub static XLB_SERVICES: HashMap<ServiceKey, Service> =
    HashMap::with_max_entries(MAX_SERVICES * 2, 0);

#[map]
pub static XLB_SERVICE_KEYS: Array<ServiceKey> = Array::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static XLB_BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static XLB_MAGLEV: Array<[u32; 2]> = Array::with_max_entries(MAGLEV_POOL / 2, BPF_F_MMAPABLE);

// Shared by every CPU: a flow's packets may arrive on any queue (no IRQ pinning needed),
// and a full table evicts the least recently used flows.
#[map]
pub static XLB_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_FLOWS, 0);

// Written by user space (one entry per owned nat endpoint), read by the reply path.
#[map]
pub static XLB_ENDPOINTS: HashMap<EndpointKey, u32> =
    HashMap::with_max_entries(MAX_BACKENDS, BPF_F_NO_PREALLOC);

#[map]
pub static XLB_FRAGS: LruHashMap<FragKey, Flow> = LruHashMap::with_max_entries(MAX_FRAGS, 0);

#[map]
pub static XLB_SNAT: Array<Addr16> = Array::with_max_entries(MAX_SERVICES, 0);

/// fullnat source ports in use, claimed by compare-and-swap (see NatPort).
#[map]
pub static XLB_NAT_PORTS: Array<NatPort> = Array::with_max_entries(NAT_PORT_SLOTS, 0);

/// Next hops per backend (see HOP_CACHE_NS). Shared: a race only costs a lookup.
#[map]
pub static XLB_HOPS: Array<HopCache> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Per backend id: what the forward path sent it (per CPU: no shared cache line).
#[map]
pub static XLB_BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Sampled dropped packets for the daemon's log.
#[map]
pub static XLB_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Drops since the last sampled one, per CPU.
#[map]
pub static XLB_SAMPLE: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The balancer program, entered by tail call from the firewall.
#[map]
pub static XLB_JUMP: ProgramArray = ProgramArray::with_max_entries(JUMP_SLOTS, 0);

/// The firewall's reason for a packet handed to the balancer (per CPU: a tail call
/// stays on its CPU).
#[map]
pub static XLB_HANDOFF: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for the larger values of a packet's run: the BPF stack is 512
/// bytes. Reached only through `scratch()`.
#[repr(C)]
pub struct Scratch {
    /// The parsed packet: written by the firewall, read by the balancer after the tail
    /// call (one parse per packet); parsed again by the drop events and the kernel log.
    pub pkt: Packet,
    /// A fragmented datagram's key (balance::frags).
    pub frag: FragKey,
    /// The packet's flow (or an ICMP error's quoted flow), forward direction.
    pub key: FlowKey,
    /// Another flow key of the moment: a reply entry's, a fullnat candidate's reply
    /// tuple, the forward key found through a port slot.
    pub reply: FlowKey,
    /// The forward flow being sent (a new one, a fragment's, an ICMP error's).
    pub flow: Flow,
    /// The reply-direction flow being written or sent.
    pub back: Flow,
    /// The FIB lookup's parameters (rewrite::route).
    pub fib: [u64; 8],
    /// The next fullnat source port to try on this CPU (balance::ports::claim_port),
    /// offset from FULLNAT_PORT_MIN; 0 before the first claim.
    pub nat_cursor: u32,
    pub victim: Victim,
}

/// A new fullnat flow's fallback port while it tries others (balance::ports::claim_port).
#[repr(C)]
pub struct Victim {
    pub word: u64,
    pub slot: u32,
    pub port: u16,
    pub age: u16,
}

#[map]
static XLB_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch space (None never happens for a loaded program: the verifier
/// wants the check).
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: the pointer is this CPU's entry of a per-CPU array, valid as long as the
    // program is loaded. An XDP program runs to completion on one CPU without being
    // preempted, and its tail call stays on that CPU, so nothing else uses the entry
    // meanwhile. Stages pass fields of it around by reference while later stages call
    // this again: each writes only fields that no reference still in use points into
    // (the field docs above say who uses what).
    XLB_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
