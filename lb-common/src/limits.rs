//! Limits: table sizes and the bounds of the program's loops.

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
