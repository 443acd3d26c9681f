//! The machinery the models' loops share, so that a model file holds only
//! its own wait-and-dispatch loop: what every model starts from
//! ([`server`], [`net`]), the connection table the readiness loops keep
//! ([`connections`] over a [`slab`]) and the [`lifecycle`] beside it
//! (stop deadline, accept pause, sweep), `--workers N` loops on one port
//! ([`fan_out`]), `SIGHUP` and graceful stop ([`signals`]), what the thread
//! and process models share ([`blocking`], [`process`]), and the thread
//! pool ([`thread_pool`]).

pub mod blocking;
pub mod connections;
pub mod fan_out;
pub mod lifecycle;
pub mod net;
pub mod process;
pub mod server;
pub mod signals;
pub mod slab;
pub mod thread_pool;
