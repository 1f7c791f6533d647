//! Map names: the names of the statics in lb-ebpf, and of the pins under the bpffs dir.

/// The XDP program's name inside the object file.
pub const PROG_NAME: &str = "xlb";
/// `Array<Config>` with one entry: policies and list sizes.
pub const MAP_CONFIG: &str = "XLB_CONFIG";
/// Per-CPU `Array<Counter>`, indexed by [`counter_index`](crate::counter_index)
/// (reason x verdict).
pub const MAP_COUNTERS: &str = "XLB_COUNTERS";
/// Per-CPU `Array<u64>`, packets matched per rule id.
pub const MAP_RULE_HITS: &str = "XLB_RULE_HITS";
/// Mmapable `Array<Dir24Block>`: the first level of the IPv4 source-prefix table.
pub const MAP_DIR24: &str = "XLB_DIR24";
/// Mmapable `Array<u64>`: one bit per /20, set when its Dir24Block is not all zero.
pub const MAP_DIR24_SUMMARY: &str = "XLB_DIR24_SUMMARY";
/// Mmapable `Array<LongV4Bucket>`: IPv4 prefixes longer than /24, an open-addressing
/// hash table written by user space (see [`long_v4_hash`](crate::long_v4_hash)).
pub const MAP_LONG_V4: &str = "XLB_LONG_V4";
/// `LpmTrie<[u8; 16], u32>`: IPv6 source prefixes (allow/deny).
pub const MAP_PREFIX_V6: &str = "XLB_PREFIX_V6";
/// `LpmTrie<[u8; 4], u32>`: the always-allow list, IPv4 sources.
pub const MAP_EXCEPT_V4: &str = "XLB_EXCEPT_V4";
/// `LpmTrie<[u8; 16], u32>`: the always-allow list, IPv6 sources.
pub const MAP_EXCEPT_V6: &str = "XLB_EXCEPT_V6";
/// Mmapable `Array<PortEntry>`, indexed by [`port_index`](crate::port_index).
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
/// of 65536 slots, one per port (see [`NatPort`](crate::NatPort)).
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
/// `RingBuf` of [`DropEvent`](crate::DropEvent): sampled dropped packets (see
/// `Config::drop_sample`).
pub const MAP_EVENTS: &str = "XLB_EVENTS";
/// Per-CPU `Array<u32>`: drops seen since the last sampled one.
pub const MAP_SAMPLE: &str = "XLB_SAMPLE";
/// The balancer program's name and its slot in MAP_JUMP.
pub const PROG_BALANCE: &str = "xlb_balance";
pub const JUMP_BALANCE: u32 = 0;
/// SYN-flood protection's program (lb_common::syn) and its slot.
pub const PROG_SYN: &str = "xlb_syn";
pub const JUMP_SYN: u32 = 1;
pub const JUMP_SLOTS: u32 = 2;

/// The maps that hold state from one run (and one build) of the program to the next:
/// pinned by name under the daemon's bpffs directory and adopted by the next `xlb run`,
/// so a restart or an upgrade keeps flows, rules and counters. MAP_JUMP (it holds one
/// build's balancer) and MAP_HANDOFF (per-packet scratch) belong to one build.
pub const STATE_MAPS: [&str; 36] = [
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
    // SYN-flood protection (syn.rs).
    crate::syn::MAP_SYN_CONF,
    crate::syn::MAP_SYN_STATE,
    crate::syn::MAP_SYN_RATE,
    crate::syn::MAP_SYN_STATS,
    crate::syn::MAP_SYN_LOCAL,
    crate::syn::MAP_SYN_ALLOW,
    // Rate limits (ratelimit.rs).
    crate::MAP_RL_SETS,
    crate::MAP_RL_ACTIVE,
    crate::MAP_RL_BUCKETS,
    crate::MAP_RL_SKETCH,
    crate::MAP_RL_STATE,
    crate::MAP_RL_STATS,
    crate::MAP_RL_EXEMPT,
];
