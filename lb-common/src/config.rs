//! The program's configuration (one entry of MAP_CONFIG).

use bytemuck::{Pod, Zeroable};

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
    /// Flow records: 1 counts packets and bytes into flow-table entries (the daemon
    /// reads them); 0 skips it (one branch a packet).
    pub flow_records: u32,
}

/// `Config::log_level` values (aya-log's levels; a record is written when its level is
/// at most the configured one).
pub const LOG_OFF: u32 = 0;
pub const LOG_ERROR: u32 = 1;
pub const LOG_WARN: u32 = 2;
pub const LOG_INFO: u32 = 3;
pub const LOG_DEBUG: u32 = 4;
pub const LOG_TRACE: u32 = 5;
