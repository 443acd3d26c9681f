//! # A teaching kit for event-based servers
//!
//! One file server, grown stage by stage from a one-at-a-time TCP service to
//! an epoll event loop, so that each design can be read, run and measured
//! side by side (OSTEP chapter 33, "Event-based Concurrency").
//!
//! | stage | model | waits with | blocking work runs |
//! |---|---|---|---|
//! | 1 | [`iterative`](models::iterative) | blocking `accept` | inline, one client at a time |
//! | 2 | [`select`](models::select) | `select(2)` | inline, in the loop |
//! | 2b | [`poll`](models::poll) | `poll(2)` | inline, in the loop |
//! | 3 | [`event`](models::event) | mio (epoll) | inline, in the loop ("Sync I/O") |
//!
//! Every model shares one core, so they differ only in where they wait and
//! where the blocking part of a request runs:
//!
//! * [`protocol`]: bytes to [`Request`](protocol::Request)s, responses to bytes;
//! * [`sandbox`]: a requested path to an open regular file under the root, or a [`Refusal`](refusal::Refusal);
//! * [`cache`]: the byte-budgeted LRU that `SIGHUP` clears;
//! * [`service`]: a request to a [`Plan`](service::Plan): a ready response, or blocking work;
//! * [`conn`]: the per-connection state machine every loop drives;
//! * [`clients`]: the connection table the readiness loops share;
//! * [`signals`]: `SIGHUP` and graceful stop, for every kind of model.
//!
//! The `server` binary turns flags into a [`Config`](config::Config) and calls [`models::run`].

#![deny(missing_docs)]

pub mod backend;
pub mod blocking;
pub mod cache;
pub mod clients;
pub mod config;
pub mod conn;
pub mod error;
pub mod log;
pub mod models;
pub mod net;
pub mod output;
pub mod process;
pub mod protocol;
pub mod refusal;
pub mod sandbox;
pub mod service;
pub mod signals;
pub mod slab;
pub mod thread_pool;
