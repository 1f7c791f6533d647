//! xlb's test harness: a packet builder for kernel tests (BPF_PROG_TEST_RUN) and the
//! network-namespace topology used by the integration tests, by `cargo xtask demo` and
//! by the benchmarks (the `xlb-bench` crate).
pub mod fixture;
pub mod netns;
pub mod otlp;
pub mod packet;
pub mod tcp;
pub mod tls;
pub mod topology;
