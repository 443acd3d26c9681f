//! # A teaching kit for event-based servers
//!
//! One file server, grown stage by stage from a one-at-a-time TCP service to
//! an epoll event loop, so that each design can be read, run and measured
//! side by side (OSTEP chapter 33, "Event-based Concurrency").
//!
//! Stage N is the homework's question N (`docs/assignment.md`); models are
//! named, and each belongs to the stage whose question it answers:
//!
//! | stage | question | models |
//! |---|---|---|
//! | 1 | a one-at-a-time time server | [`iterative`](models::iterative) |
//! | 2 | many clients at once | [`select`](models::select), [`poll`](models::poll), [`event`](models::event); with processes and threads: [`fork`](models::fork), [`prefork`](models::prefork), [`threads`](models::threads), [`pool`](models::pool); with async/await: [`tokio`](models::async_await) |
//! | 3 | files from a sandboxed root | every model, through the shared [`core`] |
//! | 4 | asynchronous reads | [`event-async`](models::event_async), [`event-aio`](models::event_aio), [`uring`](models::uring); completion for sockets too: [`uring-net`](models::uring_net) |
//! | 5 | signals and the cache | every model ([`signals`], [`cache`]) |
//! | 6 | was it worth it | `./benchmark.sh` (the `client` crate) |
//!
//! Each model's module doc says what it teaches, how it waits and where its
//! blocking work runs.
//!
//! The crate has a folder per part:
//!
//! * [`core`]: the per-connection core every model shares, written
//!   once: [`protocol`], [`sandbox`], [`cache`], [`service`], [`conn`], [`output`];
//! * [`shared`]: the machinery the models' loops share: [`server`], the
//!   connection table ([`connections`]), [`fan_out`], [`signals`], the thread pools;
//! * [`models`]: one file per model, each holding its own wait-and-dispatch
//!   loop; [`backend`] is what the stage-4 models share.
//!
//! `docs/design.md` draws how these layers depend on each other and follows
//! one request through them; the guide in `docs/guide/` walks through the
//! stages in order, chapter N for stage N.
//!
//! The `server` binary turns flags into a [`Config`] and calls [`start`].
//! Everything else is private to the crate: read it with
//! `cargo doc --document-private-items`.

#![deny(missing_docs)]
// The kit is read with `cargo doc --document-private-items` (its lessons are
// the private modules), so the crate docs link to private items on purpose.
#![allow(rustdoc::private_intra_doc_links)]

pub mod config;
mod core;
mod error;
mod log;
mod models;
mod shared;
mod sys;
mod trace;

// The parts' modules by their short names, so every file says `crate::conn`
// whichever folder it lives in.
use self::core::{cache, conn, output, protocol, refusal, sandbox, service};
use models::backend;
use shared::{blocking, connections, fan_out, lifecycle, net, process, server, signals, slab, thread_pool};

pub use config::{Config, Model, ServiceKind};
pub use error::ServerError;
pub use log::write_line;
pub use models::start;
pub use net::{listen, ListenOptions};
