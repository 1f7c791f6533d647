//! Network constants: what the wire says (ethertypes, IP protocol numbers, IPv6
//! extension headers, ICMP types) and the header lengths the parser relies on. Defined
//! once, for the program and for anything in user space that builds or reads frames.

// Ethertypes (host order).
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ) outer tag.
pub const ETH_P_8021AD: u16 = 0x88a8;

// IP protocol numbers (IPv4's protocol, IPv6's next header).
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

// IPv6 extension headers the parser walks.
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;

// ICMP and ICMPv6 types xlb handles.
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

// Header lengths in bytes.
pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
/// IPv4 without options (IHL 5).
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
/// TCP without options (data offset 5).
pub const TCP_MIN_HLEN: usize = 20;
/// ICMP and ICMPv6: type, code, checksum and the 4-byte rest of header (for the errors
/// xlb forwards, the MTU); the quoted packet of an error follows.
pub const ICMP_HLEN: usize = 8;
