//! # A teaching kit for event-based servers
//!
//! One file server, grown stage by stage from a one-at-a-time TCP service to
//! an epoll event loop, so that each design can be read, run and measured
//! side by side (OSTEP chapter 33, "Event-based Concurrency").
//!
//! | stage | model | waits with | blocking work runs | lesson |
//! |---|---|---|---|---|
//! | 1 | [`iterative`](models::iterative) | blocking `accept` | inline, one client at a time | the simplest server |
//! | 1b | [`fork`](models::fork) | a process per connection | in the child | isolation; no shared cache |
//! | 1c | [`prefork`](models::prefork) | N processes on one listener | in the worker | `fork` paid once |
//! | 1d | [`threads`](models::threads) | a thread per connection | in its thread | concurrency without a loop |
//! | 1e | [`pool`](models::pool) | N pre-spawned threads | on the worker | bounded threads |
//! | 2 | [`select`](models::select) | `select(2)` | inline, in the loop | the book's event loop; FD_SETSIZE |
//! | 2b | [`poll`](models::poll) | `poll(2)` | inline, in the loop | no fd ceiling, still O(n) |
//! | 3 | [`event`](models::event) | mio (epoll) | inline, in the loop | O(ready); "Sync I/O" |
//! | 4a | [`event-async`](models::event_async) | mio | a thread pool, woken via `mio::Waker` | "Async I/O" |
//! | 4b | [`event-aio`](models::event_aio) | mio | POSIX `aio_read`, a realtime signal | the book's interface |
//! | 4c | [`uring`](models::uring) | mio | io_uring, an eventfd | the kernel's own async reads |
//! | 4d | [`uring-net`](models::uring_net) | io_uring only | io_uring | completion, not readiness |
//!
//! Every model shares one core, so they differ only in where they wait and
//! where the blocking part of a request runs:
//!
//! * [`protocol`]: bytes to [`Request`](protocol::Request)s, responses to bytes;
//! * [`sandbox`]: a requested path to an open regular file under the root, or a [`Refusal`](refusal::Refusal);
//! * [`cache`]: the byte-budgeted LRU that `SIGHUP` clears;
//! * [`service`]: a request to a [`Plan`](service::Plan): a ready response, or blocking work;
//! * [`conn`]: the per-connection state machine every loop drives;
//! * [`output`]: the bytes owed to a client, written with `writev` and `sendfile`;
//! * [`server`]: what every model starts from (listener, service, limits);
//! * [`clients`]: the connection table the readiness loops share ([`slab`]);
//! * [`backend`]: where an event loop's blocking work runs, and how completions return;
//! * [`fan_out`]: `--workers N` event loops on one port;
//! * [`blocking`] and [`process`]: what the thread and process models share;
//! * [`signals`]: `SIGHUP` and graceful stop, for every kind of model.
//!
//! `docs/design.md` draws how these layers depend on each other and follows
//! one request through them; the guide in `docs/guide/` walks through the
//! stages in order, one chapter each.
//!
//! The `server` binary turns flags into a [`Config`] and calls [`run`].
//! Everything else is private to the crate: read it with
//! `cargo doc --document-private-items`.

#![deny(missing_docs)]
// The kit is read with `cargo doc --document-private-items` (its lessons are
// the private modules), so the crate docs link to private items on purpose.
#![allow(rustdoc::private_intra_doc_links)]

mod backend;
mod blocking;
mod cache;
mod clients;
pub mod config;
mod conn;
mod elastic_pool;
mod error;
mod fan_out;
mod log;
mod models;
mod net;
mod output;
mod process;
mod protocol;
mod refusal;
mod sandbox;
mod server;
mod service;
mod signals;
mod slab;
mod thread_pool;

pub use config::{Config, Model, ServiceKind};
pub use error::ServerError;
pub use log::write_line;
pub use models::run;
pub use net::{listen, ListenOptions};
