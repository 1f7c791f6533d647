//! The contract between xlb's XDP program and its user space.
//!
//! Every map name, key, value and size limit is defined here once. Every shared type is
//! `#[repr(C)]` and derives bytemuck's `Pod`, which refuses to compile a type with padding:
//! the kernel compares every byte of a map key, so a padding byte would make lookups miss.
#![no_std]

// One module per concern, every item re-exported here: `lb_common::X` is the path both
// sides use, the modules are where each part of the contract is read and changed.
pub mod balancer;
pub mod config;
pub mod counters;
pub mod firewall;
pub mod limits;
pub mod maps;
pub mod net;
pub mod ratelimit;
pub mod syn;

pub use balancer::*;
pub use config::*;
pub use counters::*;
pub use firewall::*;
pub use limits::*;
pub use maps::*;
pub use net::*;
pub use ratelimit::*;
pub use syn::*;

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
    unsafe impl aya::Pod for SynConf {}
    unsafe impl aya::Pod for SynState {}
    unsafe impl aya::Pod for SynRate {}
    unsafe impl aya::Pod for SynStats {}
    unsafe impl aya::Pod for SynAllowKey {}
    unsafe impl aya::Pod for LimitSet {}
    unsafe impl aya::Pod for RlBucketSet {}
    unsafe impl aya::Pod for RlStats {}
}
