//! Counters and events: verdicts, reasons, per-reason and per-backend counters, and
//! the sampled drop events.

use bytemuck::{Pod, Zeroable};

use crate::Addr16;

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
    /// SYN-flood protection: a SYN answered with a SYN cookie (no flow made).
    SynCookie = 20,
    /// SYN-flood protection: no flow and no good cookie (an ACK flood, a forged or
    /// expired cookie): dropped.
    SynCookieBad = 21,
    /// SYN-flood protection: no flow, and not a handshake packet (a FIN, a reset):
    /// dropped.
    SynNoFlow = 22,
    /// The SYN proxy answered a backend's handshake itself (its ACK to a SYN-ACK).
    SynProxy = 23,
    /// A proven cookie: an https service's ACK passed to the kernel's listener, or a
    /// dsr client's reset that put its source on the allow-list (dropped).
    SynCookieOk = 24,
    /// Over a rate limit (`xlb fw limit`): dropped.
    RateLimited = 25,
    /// A nat or fullnat reply whose flow entry was gone (evicted from the full flow
    /// table, or idle past its timeout) while its backend still answered: translated
    /// from what xlb knows (the backend's endpoint, the port's slot) and its flow entry
    /// written again.
    FlowRestored = 26,
    /// A nat or fullnat reply whose flow entry was gone and that cannot be translated
    /// from what xlb knows (its backend's endpoint serves several services, its
    /// backend left): dropped, never passed on untranslated.
    ReplyNoFlow = 27,
}

pub const REASONS: u32 = 28;

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
        Reason::SynCookie,
        Reason::SynCookieBad,
        Reason::SynNoFlow,
        Reason::SynProxy,
        Reason::SynCookieOk,
        Reason::RateLimited,
        Reason::FlowRestored,
        Reason::ReplyNoFlow,
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
            Reason::SynCookie => "syn_cookie",
            Reason::SynCookieBad => "syn_cookie_bad",
            Reason::SynNoFlow => "syn_no_flow",
            Reason::SynProxy => "syn_proxy",
            Reason::SynCookieOk => "syn_cookie_ok",
            Reason::RateLimited => "rate_limited",
            Reason::FlowRestored => "flow_restored",
            Reason::ReplyNoFlow => "reply_no_flow",
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
}
