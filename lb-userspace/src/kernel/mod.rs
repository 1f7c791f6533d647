//! The loaded program and its maps: loading and adopting a running datapath
//! (`datapath`, `pins`), attaching (`attach`), the firewall's tables (`firewall`), the
//! services' maps and their Maglev tables (`balancer`, `maglev`), the rate limits
//! (`ratelimit`), and the batch readers
//! that statistics use (`stats`, `flows`).

pub mod attach;
pub mod balancer;
pub mod datapath;
pub mod firewall;
pub mod flows;
pub mod maglev;
pub mod mmap;
pub mod object;
pub mod pins;
pub mod ratelimit;
pub mod stats;
pub mod synflood;

pub use datapath::{Adoption, Datapath};
pub use pins::check_bpffs;
