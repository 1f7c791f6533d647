//! The lowest layer: what an operator asks for, as pure types with their validation.
//! No I/O happens here (no files, sockets or maps): every other layer builds on these.

pub mod desired;
pub mod drain;
pub(crate) mod fxhash;
pub mod health_check;
pub mod interface;
pub mod ratelimit;
pub mod rules;
pub mod services;
pub mod syn_mode;
pub mod synflood;
pub mod text;
pub mod weights;
