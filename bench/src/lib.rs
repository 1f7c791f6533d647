//! xlb's benchmarks, beside the test harness (`xlb-tests`) they run on: the https
//! comparison with nginx, the daemon's own figures, and what both binaries share (the
//! machine's description, nginx backends, deterministic prefix sets).
pub mod daemon;
pub mod https;
pub mod machine;
pub mod nginx;
pub mod prefixes;
