//! xlb's test harness: a packet builder for kernel tests (BPF_PROG_TEST_RUN) and the
//! network-namespace topology used by the integration tests and by `cargo xtask demo`.
pub mod daemon_bench;
pub mod fixture;
pub mod https_bench;
pub mod machine;
pub mod netns;
pub mod packet;
pub mod prefixes;
pub mod tls;
pub mod topology;
