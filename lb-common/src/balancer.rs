//! The balancer's maps: services, backends, flows, fullnat source ports, fragments and
//! next hops, and the address type they share.

use bytemuck::{Pod, Zeroable};

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

/// In its service at weight 0 (draining, drained by the operator, down, a backup on
/// standby): no slot in the Maglev table, no new flows; it keeps its flows, and a TCP
/// packet that opens no connection (not a SYN) and finds no flow entry goes to it when
/// the service's hold table picks it (see Service::hold_offset).
pub const BACKEND_HELD: u8 = 4;

/// MAP_ENDPOINTS value bit: the endpoint belongs to backends of more than one nat
/// service (the rest of the value is still its owner). A reply from it that finds no
/// flow cannot tell which service the client used: it is dropped (Reason::ReplyNoFlow).
/// Backend ids stay below MAX_BACKENDS, far under this bit.
pub const ENDPOINT_SHARED: u32 = 1 << 31;

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
    /// The hold table, when some backend of the service is held (BACKEND_HELD) after it
    /// had slots: the Maglev table with each held backend at the last weight it had,
    /// as the table was when its connections were scheduled. A TCP packet that opens
    /// no connection and finds no flow entry (evicted) goes to the backend this table
    /// picks if that backend is held (its connection was opened before the drain);
    /// otherwise, and for every other packet, the service's table decides. Size 0: no
    /// hold table.
    pub hold_offset: u32,
    pub hold_size: u32,
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
    /// bpf_ktime_get_coarse_ns when the flow was scheduled: with the tuple, which flow
    /// this is (a tuple rescheduled after idling out is a new flow).
    pub first_ns: u64,
    /// Flow records (`Config::flow_records`): this entry's packets and IP bytes since it
    /// was made, and those of the flow's replies when they find it here (fullnat, and
    /// nat to an owned endpoint; a nat reply entry counts its own). Added atomically;
    /// later fragments are not counted.
    pub packets: u64,
    pub bytes: u64,
    pub rev_packets: u64,
    pub rev_bytes: u64,
    /// A connection xlb's SYN proxy opened to the backend (zero for any other flow):
    /// its sequence-number and timestamp translation (see crate::syn).
    pub syn: crate::SynFlow,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_ports_pack_two_per_cache_line() {
        assert_eq!(core::mem::size_of::<NatPort>(), 32);
    }
}
