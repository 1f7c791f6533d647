//! xlb user space: the daemon (`xlb run`) and its control-socket clients.
//!
//! - `rules`: what an operator writes, parsed and validated; the rule set with ids;
//! - `datapath`: the loaded XDP program, attach, and the rule set's projection on maps;
//! - `pins`: the bpffs directory a run leaves to the next (maps, program arrays, links);
//! - `state`: the stored desired state (atomic writes);
//! - `control`: the control socket's protocol and client;
//! - `daemon`: `xlb run`, serving the control socket;
//! - `maglev`: weighted Maglev tables for the load balancer (built in user space);
//! - `services`, `balancer`: layer-4 services and their projection on the maps;
//! - `drain`: removed backends keep their established flows for a while;
//! - `health`: health checks (probes, rise/fall); `weights`: what the kernel gets once
//!   health, drains and backups are taken into account;
//! - `config`: the configuration file, validated, and the diff a reload applies;
//! - `tls`: TLS termination and the HTTP proxy of https (layer-7) services;
//! - `cli`: the command line and its human and JSON output;
//! - `metrics`, `metrics_http`, `kstats`: Prometheus metrics read from the maps at
//!   scrape time, and `/metrics`; `events`: sampled drop events; `kernel_log`: aya-log
//!   records; `top`: `xlb top`.
pub mod balancer;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod drain;
pub mod events;
mod fxhash;
pub mod health;
pub mod kernel_log;
pub mod kstats;
pub mod maglev;
pub mod metrics;
pub mod metrics_http;
pub mod monitor;
pub mod object;
pub mod pins;
pub mod rules;
pub mod services;
pub mod state;
pub mod tls;
pub mod top;
pub mod weights;
