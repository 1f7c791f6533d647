//! The contract between xlb's XDP program and its user space.
//!
//! Every map name, key, value and size limit is defined here once. Every shared type is
//! `#[repr(C)]` and derives bytemuck's `Pod`, which refuses to compile a type with padding:
//! the kernel compares every byte of a map key, so a padding byte would make lookups miss.
#![no_std]

use bytemuck::{Pod, Zeroable};

// ---------------------------------------------------------------------------------------
// Map names (the names of the statics in lb-ebpf, and of the pins under the bpffs dir).
// ---------------------------------------------------------------------------------------

/// The XDP program's name inside the object file.
pub const PROG_NAME: &str = "xlb";
/// `Array<Config>` with one entry: policies and list sizes.
pub const MAP_CONFIG: &str = "XLB_CONFIG";
/// Per-CPU `Array<Counter>`, indexed by [`counter_index`] (reason x verdict).
pub const MAP_COUNTERS: &str = "XLB_COUNTERS";
/// Per-CPU `Array<u64>`, packets matched per rule id.
pub const MAP_RULE_HITS: &str = "XLB_RULE_HITS";
/// Mmapable `Array<Dir24Block>`: the first level of the IPv4 source-prefix table.
pub const MAP_DIR24: &str = "XLB_DIR24";
/// Mmapable `Array<u64>`: one bit per /20, set when its Dir24Block is not all zero.
pub const MAP_DIR24_SUMMARY: &str = "XLB_DIR24_SUMMARY";
/// Mmapable `Array<LongV4Bucket>`: IPv4 prefixes longer than /24, an open-addressing
/// hash table written by user space (see [`long_v4_hash`]).
pub const MAP_LONG_V4: &str = "XLB_LONG_V4";
/// `LpmTrie<[u8; 16], u32>`: IPv6 source prefixes (allow/deny).
pub const MAP_PREFIX_V6: &str = "XLB_PREFIX_V6";
/// `LpmTrie<[u8; 4], u32>`: the always-allow list, IPv4 sources.
pub const MAP_EXCEPT_V4: &str = "XLB_EXCEPT_V4";
/// `LpmTrie<[u8; 16], u32>`: the always-allow list, IPv6 sources.
pub const MAP_EXCEPT_V6: &str = "XLB_EXCEPT_V6";
/// Mmapable `Array<PortEntry>`, indexed by [`port_index`].
pub const MAP_PORTS: &str = "XLB_PORTS";

/// `HashMap<ServiceKey, Service>`: the services (VIPs). A hash map, so replacing a
/// service's value (a new Maglev table) is atomic for the program.
pub const MAP_SERVICES: &str = "XLB_SERVICES";
/// `Array<Backend>`, indexed by backend id.
pub const MAP_BACKENDS: &str = "XLB_BACKENDS";
/// Mmapable `Array<[u32; 2]>`: the pool holding every service's Maglev table
/// (backend ids), two entries per element.
pub const MAP_MAGLEV: &str = "XLB_MAGLEV";
/// `LruHashMap<FlowKey, Flow>`: established flows; the reply direction too for nat to a
/// backend that does not own its endpoint (see BACKEND_OWNS_ENDPOINT).
pub const MAP_FLOWS: &str = "XLB_FLOWS";
/// `Array<NatPort>` of NAT_PORT_SLOTS: the source ports fullnat flows hold, in blocks
/// of 65536 slots, one per port (see [`NatPort`]).
pub const MAP_NAT_PORTS: &str = "XLB_NAT_PORTS";
/// `HashMap<EndpointKey, u32>`: a nat backend's (address, port, protocol) -> the id of
/// the backend that owns it (see BACKEND_OWNS_ENDPOINT).
pub const MAP_ENDPOINTS: &str = "XLB_ENDPOINTS";
/// `Array<ServiceKey>`, indexed by service id: a reply's service address and port.
pub const MAP_SERVICE_KEYS: &str = "XLB_SERVICE_KEYS";
/// `Array<HopCache>`, indexed by backend id: the next hop to each backend, from the
/// kernel's FIB, reused for HOP_CACHE_NS.
pub const MAP_HOPS: &str = "XLB_HOPS";
/// `Array<Addr16>`, indexed by service id: a fullnat service's source address (an
/// address of the xlb host that its backends reach).
pub const MAP_SNAT: &str = "XLB_SNAT";
/// `LruHashMap<FragKey, Flow>`: the flow of each fragmented datagram, learnt from its
/// first fragment (later fragments carry no ports).
pub const MAP_FRAGS: &str = "XLB_FRAGS";
/// `ProgramArray`: slot JUMP_BALANCE holds the balancer program.
pub const MAP_JUMP: &str = "XLB_JUMP";
/// Per-CPU `Array<u32>`: the firewall's reason for a packet handed to the balancer.
pub const MAP_HANDOFF: &str = "XLB_HANDOFF";
/// Per-CPU `Array<BackendStats>`, indexed by backend id: packets, bytes and new flows
/// the balancer's forward path sent to each backend (one update per packet).
pub const MAP_BACKEND_STATS: &str = "XLB_BACKEND_STATS";
/// `RingBuf` of [`DropEvent`]: sampled dropped packets (see `Config::drop_sample`).
pub const MAP_EVENTS: &str = "XLB_EVENTS";
/// Per-CPU `Array<u32>`: drops seen since the last sampled one.
pub const MAP_SAMPLE: &str = "XLB_SAMPLE";
/// The balancer program's name and its slot in MAP_JUMP.
pub const PROG_BALANCE: &str = "xlb_balance";
pub const JUMP_BALANCE: u32 = 0;
pub const JUMP_SLOTS: u32 = 1;

/// The maps that hold state from one run (and one build) of the program to the next:
/// pinned by name under the daemon's bpffs directory and adopted by the next `xlb run`,
/// so a restart or an upgrade keeps flows, rules and counters. MAP_JUMP (it holds one
/// build's balancer) and MAP_HANDOFF (per-packet scratch) belong to one build.
pub const STATE_MAPS: [&str; 23] = [
    MAP_BACKEND_STATS,
    MAP_EVENTS,
    MAP_SAMPLE,
    MAP_SNAT,
    MAP_FRAGS,
    MAP_HOPS,
    MAP_SERVICES,
    MAP_SERVICE_KEYS,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_FLOWS,
    MAP_NAT_PORTS,
    MAP_ENDPOINTS,
    MAP_CONFIG,
    MAP_COUNTERS,
    MAP_RULE_HITS,
    MAP_DIR24,
    MAP_DIR24_SUMMARY,
    MAP_LONG_V4,
    MAP_PREFIX_V6,
    MAP_EXCEPT_V4,
    MAP_EXCEPT_V6,
    MAP_PORTS,
];

// ---------------------------------------------------------------------------------------
// Limits.
// ---------------------------------------------------------------------------------------

/// Rule ids are `1..MAX_RULES`; 0 means "no rule". Shared by every rule kind, so one
/// million IPv4 plus one million IPv6 prefixes fit with room for port and except rules.
/// The per-CPU hit counters cost `MAX_RULES * 8` bytes per CPU.
pub const MAX_RULES: u32 = 1 << 21;
/// IPv6 allow/deny prefixes.
pub const MAX_PREFIX_V6: u32 = 1 << 21;
/// Entries of each always-allow prefix list (kept small on purpose: it is an operator's
/// own management networks, looked up only for packets that would otherwise drop).
pub const MAX_EXCEPT: u32 = 4096;
/// Services (VIP, port, protocol).
pub const MAX_SERVICES: u32 = 1024;
/// Backends over all services; id 0 is never used.
pub const MAX_BACKENDS: u32 = 65536;
/// Maglev table entries over all services (two tables of 65537 per service for
/// 64 services: a new table is written beside the old one, then switched to).
pub const MAGLEV_POOL: u32 = 1 << 23;
/// Flow-table size (LRU, shared by all CPUs).
pub const DEFAULT_FLOWS: u32 = 1 << 18;
/// Fragmented datagrams in flight (LRU, shared by all CPUs).
pub const MAX_FRAGS: u32 = 1 << 16;
/// fullnat source ports are taken from FULLNAT_PORT_MIN..=65535.
pub const FULLNAT_PORT_MIN: u16 = 1024;
/// Candidate source ports tried for a new fullnat flow before it is dropped
/// (Reason::NoPort): each try reads one MAP_NAT_PORTS slot, and fails if a live flow
/// holds it (then a quiet flow's port is taken, see NAT_PORT_STEAL_TICKS).
pub const FULLNAT_PORT_TRIES: u32 = 16;
/// Of those tries, how many may look up the flow holding a claimed slot (is it still in
/// the flow table?): with the ports exhausted, each costs one lookup.
pub const FULLNAT_PORT_LOOKUPS: u32 = 2;
/// MAP_NAT_PORTS slots: 16 blocks of 65536 ports (32 bytes each, 32 MiB), four times
/// the flow table, so blocks shared by backends still leave ports to spare.
pub const NAT_PORT_SLOTS: u32 = 4 * DEFAULT_FLOWS;
const _: () = assert!(NAT_PORT_SLOTS.is_power_of_two() && NAT_PORT_SLOTS >= 1 << 16);
/// IPv6 extension headers walked before the packet is called malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// Bytes of the drop-event ring buffer (a power of two, a multiple of the page size):
/// 1365 events of 48 bytes (plus an 8-byte header each) between two reads.
pub const EVENTS_BYTES: u32 = 1 << 16;
/// VLAN tags parsed (802.1Q and 802.1ad, QinQ).
pub const MAX_VLAN_TAGS: usize = 2;

// ---------------------------------------------------------------------------------------
// Rule references: what a prefix or port table entry points at.
// ---------------------------------------------------------------------------------------

/// A rule reference is 24 bits: the deny flag and a rule id. 0 = no rule.
pub const RULE_DENY: u32 = 1 << 23;
pub const RULE_ID_MASK: u32 = RULE_DENY - 1;
pub const RULE_REF_MASK: u32 = 0x00ff_ffff;

const _: () = assert!(
    MAX_RULES - 1 <= RULE_ID_MASK,
    "rule ids must fit a rule reference"
);

/// Encode a rule id and its action as stored in the lookup tables.
pub const fn rule_ref(id: u32, deny: bool) -> u32 {
    id | if deny { RULE_DENY } else { 0 }
}

// ---------------------------------------------------------------------------------------
// IPv4 prefix table: DIR-24-8 style.
// ---------------------------------------------------------------------------------------
//
// The first level has one 32-bit entry per /24 (2^24 entries, 64 MiB), holding
// - bits 0..24: the rule reference of the longest prefix of length <= 24 covering it;
// - bits 24..32: a bitmap of the lengths 25..=32 for which some prefix exists inside this
//   /24 (bit n = length 25 + n).
// A lookup is one array read; only a /24 that holds longer prefixes costs hash lookups,
// one per length present, longest first. User space keeps the table and paints it.

/// /24 entries per array element: elements of 64 bytes keep the mmap layout dense (an
/// array map strides its elements by their size rounded up to 8 bytes).
pub const DIR24_BLOCK: usize = 16;
/// Number of elements of the first level (2^24 / 16).
pub const DIR24_BLOCKS: u32 = (1 << 24) / DIR24_BLOCK as u32;
/// Words of the summary bitmap: one bit per Dir24Block (per /20). At 128 KiB it stays
/// in cache, so traffic from addresses no rule is near (most of a flood from random
/// sources) is decided without touching the 64 MiB table.
pub const DIR24_SUMMARY_WORDS: u32 = DIR24_BLOCKS / 64;
/// Bit position of the longer-prefix bitmap in a first-level entry.
pub const DIR24_LONG_SHIFT: u32 = 24;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Dir24Block {
    pub entries: [u32; DIR24_BLOCK],
}

// Prefixes longer than /24 live in a bucketed open-addressing hash table that user space
// writes through mmap (no syscall per entry: a million prefixes load in well under a
// second). A slot is one u64, written atomically:
//   bits 32..64: the masked address; bits 24..32: the length (25..=32);
//   bits 0..24: the rule reference.
// 0 is an empty slot (it ends a probe), LONG_V4_TOMBSTONE a removed one (skipped).
// A key lives in the first free slot of buckets hash, hash+1, ... (LONG_V4_PROBE at most).

/// Slots per bucket: 8 x 8 bytes = one cache line.
pub const LONG_V4_SLOTS: usize = 8;
/// Buckets: 2^18 x 8 slots = 2^21 slots (16 MiB), so a million long prefixes fill it
/// at most half.
pub const LONG_V4_BUCKETS: u32 = 1 << 18;
/// Buckets probed before a key is declared absent (and the most an insert may use).
pub const LONG_V4_PROBE: u32 = 8;
pub const LONG_V4_TOMBSTONE: u64 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LongV4Bucket {
    pub slots: [u64; LONG_V4_SLOTS],
}

/// The key part of a slot (bits 24..64) for a masked address and length.
pub const fn long_v4_key(addr: u32, len: u32) -> u64 {
    ((addr as u64) << 32) | ((len as u64) << 24)
}

/// The home bucket of a key: murmur3's 32-bit finaliser over address and length.
pub const fn long_v4_hash(addr: u32, len: u32) -> u32 {
    let mut h = addr ^ len.wrapping_mul(0x9e37_79b9);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h & (LONG_V4_BUCKETS - 1)
}

// ---------------------------------------------------------------------------------------
// Port table.
// ---------------------------------------------------------------------------------------

/// Protocols with a port table. Index = `proto * 65536 + port`.
pub const PORT_PROTO_TCP: u32 = 0;
pub const PORT_PROTO_UDP: u32 = 1;
pub const PORT_PROTOS: u32 = 2;
pub const PORT_TABLE_SIZE: u32 = PORT_PROTOS * 65536;

pub const fn port_index(proto: u32, port: u16) -> u32 {
    proto * 65536 + port as u32
}

/// What a (protocol, destination port) pair matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortEntry {
    /// The narrowest port rule covering this port (rule reference, 0 = none).
    pub rule: u32,
    /// The always-allow rule id covering this port (0 = none).
    pub except: u32,
}

// ---------------------------------------------------------------------------------------
// Load balancing.
// ---------------------------------------------------------------------------------------

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Forwarding modes.
pub const MODE_DSR: u8 = 1;
pub const MODE_NAT: u8 = 2;
/// nat in both directions: the source becomes the service's MAP_SNAT address and a
/// port xlb allocates, so backends need no route through xlb.
pub const MODE_FULLNAT: u8 = 4;
/// Not a service: the entry (address, port 0, ICMP or ICMPv6) that makes xlb answer
/// echo requests to a service address.
pub const MODE_ECHO: u8 = 3;

/// Service flags.
pub const SVC_AFFINITY_SOURCE: u8 = 1;
/// Do not answer echo requests to the service address.
pub const SVC_NO_ECHO: u8 = 2;

/// Backend flags.
pub const BACKEND_UP: u8 = 1;
/// The backend owns its endpoint (address, port, protocol): MAP_ENDPOINTS maps it to
/// this backend, which serves a nat service with a port of its own. Its new nat flows
/// write only their forward entry (one flow-table insert instead of two); a reply from
/// it finds its flow through that entry, rebuilt from the reply (client) and the
/// service's address and port. An endpoint shared by several nat services has one
/// owner; the other backends' flows keep reply entries.
pub const BACKEND_OWNS_ENDPOINT: u8 = 2;

/// An address in 16 bytes, network order: IPv4 in the first four, the rest zero. Held
/// as four 32-bit words (each the native view of four network-order bytes) so that the
/// program copies and compares it in four moves instead of sixteen byte moves (byte
/// moves also spill registers onto the 512-byte BPF stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Addr16(pub [u32; 4]);

impl Addr16 {
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        let mut w = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            w[i] = u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
            i += 1;
        }
        Addr16(w)
    }

    pub const fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            b[i] = self.0[i / 4].to_ne_bytes()[i % 4];
            i += 1;
        }
        b
    }
}

pub const fn addr16_v4(a: [u8; 4]) -> Addr16 {
    Addr16([u32::from_ne_bytes(a), 0, 0, 0])
}

/// (address, destination port, protocol). Port 0: every port of the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceKey {
    pub addr: Addr16,
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Service {
    pub id: u32,
    pub mode: u8,
    pub flags: u8,
    pub _pad: u16,
    /// The service's Maglev table: entries [table_offset, table_offset + table_size) of
    /// the pool; each entry a backend id (0: no backend).
    pub table_offset: u32,
    pub table_size: u32,
    /// Idle timeouts after which a flow is rescheduled.
    pub tcp_idle_secs: u32,
    pub udp_idle_secs: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Backend {
    pub addr: Addr16,
    pub port: u16,
    pub family: u8,
    pub flags: u8,
    /// The owning service's id.
    pub service: u32,
    /// Bumped whenever the id is given to another backend: flows remember it, so a flow
    /// to a removed backend is rescheduled even if its id was reused.
    pub generation: u32,
}

/// A backend's (address, port, protocol), as its replies carry it: the key of
/// MAP_ENDPOINTS.
pub type EndpointKey = ServiceKey;

/// A flow as seen on the wire: the forward direction (client -> service) or, for nat,
/// the reply direction (backend -> client).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: Addr16,
    pub dst: Addr16,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

pub const FLOW_FORWARD: u8 = 0;
pub const FLOW_REPLY: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Flow {
    pub backend: u32,
    pub generation: u32,
    pub service: u32,
    pub direction: u8,
    /// The service's mode (MODE_*), so a reply or a fragment is rewritten without the
    /// service lookup.
    pub mode: u8,
    /// Reply direction: the service port the client used.
    pub vport: u16,
    /// bpf_ktime_get_ns of the last packet (refreshed at most once a second).
    pub seen_ns: u64,
    /// The client's (or its router's) MAC, from the forward packet: in the reply entry,
    /// and in the forward entry of a flow that has none (fullnat, BACKEND_OWNS_ENDPOINT).
    pub mac: [u8; 6],
    /// fullnat: the forward entry's source port on the backend side (allocated by
    /// xlb); a reply's client port.
    pub nat_port: u16,
    /// fullnat reply: the client's address.
    pub client: Addr16,
}

/// A fullnat flow's source port: slot `port` of the MAP_NAT_PORTS block that the rest
/// of its reply's tuple (backend address and port, xlb's source address, protocol)
/// hashes to (backends whose tuples hash to one block share its ports). A reply finds
/// its flow's forward entry from it (client end here, service address from the
/// backend's service), and so does nothing else: a fullnat flow writes one flow-table
/// entry. A slot is free when its flow is gone: no forward entry of that backend and
/// generation with this port (evicted, idle and rescheduled, its backend removed).
/// Slots are never cleared. Ports handed out one after another fill one block's slots
/// in order, in cache lines and pages just touched: a second (reply) flow-table entry
/// cost a new flow about 300 ns more on the bench's machine (a cold bucket and an LRU
/// node), as did an array slot at a random place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NatPort {
    /// Changed only by compare-and-swap, so two CPUs never claim one slot: the backend
    /// id (low 32 bits) and a claim count (high 32 bits) whose NAT_PORT_BUSY bit is set
    /// while the claimer writes the rest. 0: never claimed.
    pub claim: u64,
    pub client: Addr16,
    pub client_port: u16,
    /// The service port the client used (the service may take any port).
    pub vport: u16,
    /// The source port itself (a reply checks it with the rest of its tuple).
    pub nat_port: u16,
    /// When the flow last refreshed its entry (Flow::seen_ns, at most once a second),
    /// in ticks of 2^30 ns, wrapping: a flow of the claimer's service quiet past its
    /// idle timeout frees the slot without a flow-table lookup.
    pub seen: u16,
}

/// NatPort::claim: the rest of the slot is being written.
pub const NAT_PORT_BUSY: u64 = 1 << 63;
/// With every candidate port of a new fullnat flow held, the slot of the flow quiet
/// longest is taken if quiet this many ticks (2.1 s): its flow refreshes at most once a
/// second, so its next packet finds the slot gone and is rescheduled before any packet
/// of it could go out with the port (as when the LRU evicts a flow).
pub const NAT_PORT_STEAL_TICKS: u16 = 2;

/// A fragmented datagram: addresses, IP identification and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragKey {
    pub src: Addr16,
    pub dst: Addr16,
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// How long a backend's next hop is reused before the FIB is asked again (a FIB lookup
/// costs more than the rest of the fast path; a MAC change is seen within this time).
pub const HOP_CACHE_NS: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct HopCache {
    pub expires_ns: u64,
    /// The backend generation the entry was resolved for.
    pub generation: u32,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: [u8; 4],
}

/// The flow hash, the same on every host (xlb nodes behind ECMP must agree).
pub const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

// ---------------------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------------------

pub const ACTION_PASS: u32 = 0;
pub const ACTION_DROP: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// ACTION_PASS or ACTION_DROP for packets no rule matched.
    pub default_action: u32,
    /// ACTION_PASS or ACTION_DROP for truncated or malformed packets.
    pub malformed_action: u32,
    /// Entries in the always-allow prefix lists: 0 skips their lookup.
    pub except_prefixes: u32,
    /// Entries in the IPv6 allow/deny trie: 0 skips its lookup.
    pub prefixes_v6: u32,
    /// Services in nat mode: 0 skips the reply-direction flow lookup.
    pub nat_services: u32,
    /// Services of any mode: 0 skips the service lookup.
    pub services: u32,
    /// Dropped-packet events: one drop in `drop_sample` (per CPU) goes to MAP_EVENTS;
    /// 0 sends none.
    pub drop_sample: u32,
    /// Kernel debug logging through aya-log: LOG_OFF (the log calls are skipped) up to
    /// LOG_TRACE.
    pub log_level: u32,
}

/// `Config::log_level` values (aya-log's levels; a record is written when its level is
/// at most the configured one).
pub const LOG_OFF: u32 = 0;
pub const LOG_ERROR: u32 = 1;
pub const LOG_WARN: u32 = 2;
pub const LOG_INFO: u32 = 3;
pub const LOG_DEBUG: u32 = 4;
pub const LOG_TRACE: u32 = 5;

// ---------------------------------------------------------------------------------------
// Counters.
// ---------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// A backend's traffic from the balancer's forward path (summed over CPUs by the
/// reader).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    /// Flows scheduled to this backend (flow-table misses that picked it).
    pub new_flows: u64,
}

/// A sampled dropped packet. Addresses and ports are what the parser got to (zero for
/// a frame too malformed to have them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DropEvent {
    pub src: Addr16,
    pub dst: Addr16,
    /// A [`Reason`] as u32.
    pub reason: u32,
    /// Frame length in bytes.
    pub len: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// FAMILY_V4, FAMILY_V6 or 0 (not parsed that far).
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The XDP verdicts xlb returns, in counter order. xlb never returns XDP_ABORTED.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Pass = 0,
    Drop = 1,
    /// Sent back out of the interface it came in on (balanced or answered).
    Tx = 2,
    /// Sent out of another interface.
    Redirect = 3,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [Verdict::Pass, Verdict::Drop, Verdict::Tx, Verdict::Redirect];
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::Tx => "tx",
            Verdict::Redirect => "redirect",
        }
    }
}
pub const VERDICTS: u32 = 4;

/// Why a packet got its verdict. Malformed reasons take the configured malformed policy.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): always passed.
    NonIp = 0,
    /// No rule matched: the default policy.
    Default = 1,
    /// A source prefix allow rule matched.
    PrefixAllow = 2,
    /// A source prefix deny rule matched.
    PrefixDeny = 3,
    /// A port allow rule matched.
    PortAllow = 4,
    /// A port deny rule matched.
    PortDeny = 5,
    /// The always-allow list overrode a drop.
    Except = 6,
    /// Frame shorter than an Ethernet header.
    TruncEth = 7,
    /// VLAN tag truncated, or more tags than MAX_VLAN_TAGS.
    BadVlan = 8,
    /// IPv4 header truncated, bad version, IHL < 5 or total length inconsistent.
    BadIpv4 = 9,
    /// IPv6 header truncated, bad version or payload length inconsistent.
    BadIpv6 = 10,
    /// IPv6 extension header truncated or more than MAX_IPV6_EXT_HEADERS.
    BadIpv6Ext = 11,
    /// TCP, UDP, ICMP or ICMPv6 header truncated (or TCP data offset < 5).
    BadL4 = 12,
    /// Forwarded to a backend (a new flow, or one in the flow table).
    Balanced = 13,
    /// A nat reply rewritten back to the service address.
    NatReply = 14,
    /// An echo request to a service address, answered by xlb.
    EchoReply = 15,
    /// A service has no backend: dropped.
    NoBackend = 16,
    /// No route or neighbour to the backend yet: passed to the kernel to resolve.
    NoRoute = 17,
    /// A new fullnat flow found no free source port in FULLNAT_PORT_TRIES tries.
    NoPort = 18,
    /// An ICMP error (fragmentation needed, packet too big, unreachable) about a flow,
    /// sent to the flow's backend.
    IcmpToBackend = 19,
}

pub const REASONS: u32 = 20;

impl Reason {
    pub const ALL: [Reason; REASONS as usize] = [
        Reason::NonIp,
        Reason::Default,
        Reason::PrefixAllow,
        Reason::PrefixDeny,
        Reason::PortAllow,
        Reason::PortDeny,
        Reason::Except,
        Reason::TruncEth,
        Reason::BadVlan,
        Reason::BadIpv4,
        Reason::BadIpv6,
        Reason::BadIpv6Ext,
        Reason::BadL4,
        Reason::Balanced,
        Reason::NatReply,
        Reason::EchoReply,
        Reason::NoBackend,
        Reason::NoRoute,
        Reason::NoPort,
        Reason::IcmpToBackend,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Reason::NonIp => "non_ip",
            Reason::Default => "default",
            Reason::PrefixAllow => "prefix_allow",
            Reason::PrefixDeny => "prefix_deny",
            Reason::PortAllow => "port_allow",
            Reason::PortDeny => "port_deny",
            Reason::Except => "except",
            Reason::TruncEth => "truncated_eth",
            Reason::BadVlan => "bad_vlan",
            Reason::BadIpv4 => "bad_ipv4",
            Reason::BadIpv6 => "bad_ipv6",
            Reason::BadIpv6Ext => "bad_ipv6_ext",
            Reason::BadL4 => "bad_l4",
            Reason::Balanced => "balanced",
            Reason::NatReply => "nat_reply",
            Reason::EchoReply => "echo_reply",
            Reason::NoBackend => "no_backend",
            Reason::NoRoute => "no_route",
            Reason::NoPort => "no_port",
            Reason::IcmpToBackend => "icmp_to_backend",
        }
    }

    pub const fn is_malformed(self) -> bool {
        self as u32 >= Reason::TruncEth as u32 && self as u32 <= Reason::BadL4 as u32
    }
}

pub const COUNTERS: u32 = REASONS * VERDICTS;

pub const fn counter_index(reason: Reason, verdict: Verdict) -> u32 {
    reason as u32 * VERDICTS + verdict as u32
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C) and bytemuck::Pod (no padding, any bit pattern).
    unsafe impl aya::Pod for Dir24Block {}
    unsafe impl aya::Pod for LongV4Bucket {}
    unsafe impl aya::Pod for PortEntry {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for Addr16 {}
    unsafe impl aya::Pod for HopCache {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for DropEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indices_are_dense_and_unique() {
        let mut seen = [false; COUNTERS as usize];
        for r in Reason::ALL {
            for v in Verdict::ALL {
                let i = counter_index(r, v) as usize;
                assert!(!seen[i]);
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn rule_ids_fit_the_reference() {
        assert_eq!(rule_ref(5, true) & RULE_ID_MASK, 5);
        assert_eq!(rule_ref(5, true) & !RULE_REF_MASK, 0);
    }

    #[test]
    fn long_v4_slots_never_collide_with_empty_or_tombstone() {
        assert!(long_v4_key(0, 25) > LONG_V4_TOMBSTONE);
        assert!(long_v4_hash(u32::MAX, 32) < LONG_V4_BUCKETS);
    }

    #[test]
    fn dir24_covers_every_slash24() {
        assert_eq!(DIR24_BLOCKS as usize * DIR24_BLOCK, 1 << 24);
        assert_eq!(core::mem::size_of::<Dir24Block>(), 64);
    }

    #[test]
    fn nat_ports_pack_two_per_cache_line() {
        assert_eq!(core::mem::size_of::<NatPort>(), 32);
    }
}
