//! SYN-flood protection: per-service settings, the new-flow rate that turns it on, its
//! counters, the state a proxied connection keeps in its flow entry, and the dsr
//! allow-list. See docs/synflood.md.
//!
//! A protected service answers SYNs with SYN cookies in XDP (the kernel's
//! `bpf_tcp_raw_gen_syncookie_*`) and makes no flow-table entry until the client's
//! ACK proves its cookie. What happens then depends on the kind of service:
//! - `SYN_KIND_LOCAL` (an https service, ended on this host): the proven ACK passes
//!   to the kernel's listener, which checks the cookie itself (`tcp_syncookies=2`);
//! - `SYN_KIND_PROXY` (nat, fullnat): xlb opens the connection to the backend itself
//!   and translates sequence numbers and timestamps for the rest of it (`SynFlow`);
//! - `SYN_KIND_DSR`: the client's SYN is answered with a SYN-ACK whose ACK number is a
//!   cookie the client cannot accept; its stack answers with a reset carrying the
//!   cookie (RFC 793, SYN-SENT), which puts the source on an allow-list
//!   (`MAP_SYN_ALLOW`), and its next SYN (Linux retransmits at once) goes to the
//!   backend.

use bytemuck::{Pod, Zeroable};

use crate::{Addr16, MAX_SERVICES};

/// `SynConf::mode`.
pub const SYN_OFF: u8 = 0;
/// On while the service's new-flow rate is above its threshold (and `hold_secs` after).
pub const SYN_AUTO: u8 = 1;
pub const SYN_ALWAYS: u8 = 2;

/// `SynConf::kind`.
pub const SYN_KIND_LOCAL: u8 = 1;
pub const SYN_KIND_PROXY: u8 = 2;
pub const SYN_KIND_DSR: u8 = 3;

/// Protection slots: a layer-4 service's is its service id (1..MAX_SERVICES); an
/// https service's is `MAX_SERVICES + i`.
pub const MAX_SYN_LOCAL: u32 = 64;
pub const SYN_SLOTS: u32 = MAX_SERVICES + MAX_SYN_LOCAL;
/// Sources on the dsr allow-list (LRU: the least recently seen go first).
pub const MAX_SYN_ALLOW: u32 = 1 << 16;

/// Defaults (user space may set others per service).
pub const DEFAULT_SYN_THRESHOLD: u32 = 5000;
pub const DEFAULT_SYN_HOLD_SECS: u32 = 10;
pub const DEFAULT_SYN_ALLOW_SECS: u32 = 60;
pub const DEFAULT_MSS4: u16 = 1460;
pub const DEFAULT_MSS6: u16 = 1440;
pub const DEFAULT_WSCALE: u8 = 7;
/// At most one SYN a second of a local service goes to the kernel while protection
/// is on: the kernel answers it with a cookie of its own, which keeps its cookie check
/// open (a listener takes cookie ACKs only within two minutes of having sent cookies).
pub const SYN_KERNEL_EVERY_NS: u64 = 1_000_000_000;

/// One protection slot's settings (MAP_SYN_CONF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SynConf {
    /// SYN_OFF, SYN_AUTO or SYN_ALWAYS.
    pub mode: u8,
    /// SYN_KIND_*.
    pub kind: u8,
    /// The window scale xlb's SYN-ACKs announce (a local service: the one the local
    /// stack gives its connections, which it recomputes from a cookie).
    pub wscale: u8,
    /// 1: cookies carry the client's options in a timestamp (needs
    /// `tcp_timestamps=2` for a local service: the kernel adds a random offset
    /// otherwise); 0: no timestamps, so no window scaling or SACK.
    pub timestamps: u8,
    /// SYN_AUTO: flow-table misses per second on one CPU above which protection turns
    /// on (the service's threshold divided among the CPUs).
    pub per_cpu: u32,
    /// The MSS xlb's SYN-ACKs announce (at most the client's).
    pub mss4: u16,
    pub mss6: u16,
    /// SYN_AUTO: protection stays on this long after the rate was last above it.
    pub hold_secs: u32,
    /// SYN_KIND_DSR: an allow-listed source is dropped from the list after this long
    /// without a SYN.
    pub allow_secs: u32,
    pub _pad: u32,
}

/// One protection slot's state, shared by the CPUs (MAP_SYN_STATE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SynState {
    /// SYN_AUTO: on until then (bpf_ktime_get_coarse_ns); written by the CPU whose
    /// window went over the threshold, at most once a window.
    pub until_ns: u64,
    /// When it last turned on.
    pub since_ns: u64,
    /// SYN_KIND_LOCAL: when a SYN last went to the kernel.
    pub kernel_ns: u64,
    /// The busiest CPU's new flows in its last full window, when it turned on.
    pub peak: u64,
}

/// One protection slot's new-flow rate on one CPU (MAP_SYN_RATE, per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SynRate {
    /// Start of the current one-second window.
    pub window_ns: u64,
    /// Flow-table misses (would-be new flows) in it.
    pub count: u32,
    /// In the window before.
    pub last: u32,
}

/// One protection slot's counters on one CPU (MAP_SYN_STATS, per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SynStats {
    /// SYNs answered with a cookie.
    pub cookies_sent: u64,
    /// ACKs (dsr: resets) whose cookie was good.
    pub cookies_valid: u64,
    /// ACKs (dsr: resets) without a flow whose cookie was not (forged, expired, an ACK
    /// flood): dropped.
    pub cookies_refused: u64,
    /// Other packets without a flow while protection was on (no handshake packet: a
    /// FIN, a reset, a SYN-ACK): dropped.
    pub no_flow: u64,
    /// SYN proxy: connections opened to the backend (its SYN-ACK seen).
    pub proxied: u64,
    /// SYN proxy: the backend's SYNs xlb sent again (the client's retransmission).
    pub syn_resent: u64,
    /// Local: SYNs left to the kernel (see SYN_KERNEL_EVERY_NS).
    pub kernel_syns: u64,
    /// dsr: SYNs of allow-listed sources sent to the backend.
    pub allowed: u64,
}

/// SynFlow::state.
pub const SYN_FLOW_NONE: u8 = 0;
/// The client proved its cookie; the SYN to the backend is out.
pub const SYN_FLOW_SYN_SENT: u8 = 1;
/// The backend answered: sequence numbers and timestamps translated.
pub const SYN_FLOW_OPEN: u8 = 2;

/// SynFlow::opts: the client's options, from its cookie.
pub const SYN_OPT_WS_MASK: u8 = 0x0f;
/// No window scaling (as in the kernel's timestamp cookies).
pub const SYN_WS_NONE: u8 = 0x0f;
pub const SYN_OPT_SACK: u8 = 0x10;
pub const SYN_OPT_TS: u8 = 0x20;
/// The MSS's index in the kernel's cookie table (bits 6-7).
pub const SYN_OPT_MSS_SHIFT: u8 = 6;

/// What a proxied connection keeps in its flow entries (`Flow::syn`; zero for every
/// other flow). Before the backend answers, `seq` is xlb's ISN (the cookie), `ts` the
/// timestamp xlb's SYN-ACK sent, `isn` the client's ISN + 1 (the ACK number the
/// backend's SYN-ACK must carry). Once it has: `seq` is added to the client's ACK
/// numbers (and SACK blocks) and taken from the backend's sequence numbers, `ts` added
/// to the client's timestamp echoes and taken from the backend's timestamps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SynFlow {
    pub state: u8,
    pub opts: u8,
    /// SYN_FLOW_OPEN: the left shift of the client's windows towards the backend (the
    /// client scales, the backend does not).
    pub c2b_shl: u8,
    /// SYN_FLOW_OPEN: the backend's windows towards the client: left shift in bits 0-3,
    /// right shift in bits 4-7 (the backend's scale and xlb's differ).
    pub b2c: u8,
    pub seq: u32,
    pub ts: u32,
    pub isn: u32,
}

impl SynFlow {
    pub const NONE: SynFlow = SynFlow {
        state: SYN_FLOW_NONE,
        opts: 0,
        c2b_shl: 0,
        b2c: 0,
        seq: 0,
        ts: 0,
        isn: 0,
    };
}

/// The kernel's cookie MSS tables (net/ipv4/syncookies.c, net/ipv6/syncookies.c),
/// smallest first: a cookie carries the index of the largest not above the client's.
pub const MSS_TABLE_V4: [u16; 4] = [536, 1300, 1440, 1460];
pub const MSS_TABLE_V6: [u16; 4] = [1220, 1420, 1440, 8940];

/// A source allow-listed for a dsr service (MAP_SYN_ALLOW key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SynAllowKey {
    pub addr: Addr16,
    pub slot: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// `Array<SynConf>` of SYN_SLOTS.
pub const MAP_SYN_CONF: &str = "XLB_SYN_CONF";
/// `Array<SynState>` of SYN_SLOTS.
pub const MAP_SYN_STATE: &str = "XLB_SYN_STATE";
/// Per-CPU `Array<SynRate>` of SYN_SLOTS.
pub const MAP_SYN_RATE: &str = "XLB_SYN_RATE";
/// Per-CPU `Array<SynStats>` of SYN_SLOTS.
pub const MAP_SYN_STATS: &str = "XLB_SYN_STATS";
/// `HashMap<ServiceKey, u32>`: an https service's address -> its protection slot.
pub const MAP_SYN_LOCAL: &str = "XLB_SYN_LOCAL";
/// `LruHashMap<SynAllowKey, u64>`: dsr sources that proved a cookie -> last SYN
/// (bpf_ktime_get_coarse_ns).
pub const MAP_SYN_ALLOW: &str = "XLB_SYN_ALLOW";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(core::mem::size_of::<SynFlow>(), 16);
        assert_eq!(core::mem::size_of::<SynConf>(), 24);
        assert_eq!(core::mem::size_of::<crate::Flow>(), 104);
    }
}
