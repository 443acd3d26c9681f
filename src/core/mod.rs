//! The per-connection core every model shares, written once: bytes to
//! requests and responses back ([`protocol`]), a path to an open file under
//! the root or a refusal ([`sandbox`], [`refusal`]), the byte-budgeted cache
//! `SIGHUP` clears ([`cache`]), a request to a plan ([`service`]), the
//! connection's state machine ([`conn`]) and the bytes owed to it
//! ([`output`]). Nothing here waits for anything but the call it makes: a
//! model decides where and when these run.

// Nothing a client sends or the disk holds may bring a server down, so the
// core has no `unwrap`, `expect` or `panic!` (its tests may).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cache;
pub mod conn;
pub mod output;
#[cfg(test)]
mod proptests;
pub mod protocol;
pub mod refusal;
pub mod sandbox;
pub mod service;
