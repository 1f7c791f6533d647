//! xlb user space: the daemon (`xlb run`) and its control-socket clients.
//!
//! The modules are layers, lowest first; each imports only from the layers below it
//! (the `layers` test below keeps it so). What each layer owns, and the way of one
//! packet and of one CLI change through them: docs/architecture.md.
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod health;
pub mod https;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod store;

#[cfg(test)]
mod layers;
