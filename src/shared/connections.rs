//! The table of open connections that every readiness loop keeps.
//!
//! `select`, `poll` and the mio loops differ in how they *wait* (and each
//! accepts in its own file); what they do with a connection once it is
//! accepted or ready is the same and lives here: admit it (or refuse it
//! when the server is full), advance it, deliver completed work, drop it
//! when it is done, and ask every one to finish on a graceful stop. When
//! to accept, sweep and exit is the loop's [`Lifecycle`](crate::lifecycle::Lifecycle).

use std::io::Read;
use std::time::Instant;

use crate::conn::{refuse, Conn, ConnId, Executor, Limits, Status};
use crate::output::Sink;
use crate::protocol::Response;
use crate::refusal::Refusal;
use crate::service::Service;
use crate::slab::Slab;

/// One open connection: its socket and its protocol state.
#[derive(Debug)]
pub struct Connection<S> {
    /// The socket.
    pub socket: S,
    /// The protocol state.
    pub conn: Conn,
    /// Whether the loop currently asks for writable events (mio loops use this
    /// to re-register only when interest changes).
    pub writable_registered: bool,
}

/// Every open connection of one loop, by id: a table, and the few things
/// done to a connection in it.
#[derive(Debug)]
pub struct Connections<S> {
    open: Slab<Connection<S>>,
    max_conns: usize,
    limits: Limits,
}

impl<S: Sink + Read> Connections<S> {
    /// An empty table that admits at most `max_conns` connections.
    pub fn new(max_conns: usize, limits: Limits) -> Connections<S> {
        Connections { open: Slab::default(), max_conns, limits }
    }

    /// Whether one more connection fits.
    pub fn has_room(&self) -> bool {
        self.open.len() < self.max_conns
    }

    /// Takes a freshly accepted socket and does what it can at once (the time
    /// service answers here). Returns its id if it stays open. Ids carry a
    /// generation ([`Slab`]), so a late event or completion for a closed
    /// connection cannot reach a newer one in the same slot.
    pub fn admit(&mut self, socket: S, service: &Service, executor: &mut dyn Executor) -> Option<ConnId> {
        if !self.has_room() {
            refuse(socket, Refusal::Overloaded);
            return None;
        }
        let conn = Conn::new(service, self.limits);
        let id = self.open.insert(Connection { socket, conn, writable_registered: false });
        self.advance(id, service, executor);
        self.open.get(id).is_some().then_some(id)
    }

    /// Advances connection `id` after an event; drops it if it is done.
    /// Unknown ids (a stale event for a connection already closed) are
    /// ignored.
    pub fn advance(&mut self, id: ConnId, service: &Service, executor: &mut dyn Executor) {
        let Some(connection) = self.open.get_mut(id) else { return };
        if connection.conn.advance(&mut connection.socket, service, executor, id) == Status::Closed {
            self.open.remove(id);
        }
    }

    /// Delivers the response of work that ran elsewhere, then advances.
    pub fn complete(&mut self, id: ConnId, response: Response, service: &Service, executor: &mut dyn Executor) {
        let Some(connection) = self.open.get_mut(id) else { return };
        connection.conn.complete(response);
        self.advance(id, service, executor);
    }

    /// Graceful stop: every connection finishes what is in flight and
    /// closes; idle connections close at once.
    pub fn finish_all(&mut self, service: &Service, executor: &mut dyn Executor) {
        let ids: Vec<ConnId> = self.open.iter().map(|(id, _)| id).collect();
        for id in ids {
            if let Some(connection) = self.open.get_mut(id) {
                connection.conn.close_when_done();
            }
            self.advance(id, service, executor);
        }
    }

    /// Closes connections that outlived a time limit (slow senders, idle
    /// keep-alives, stalled readers); the loop calls it when its
    /// [`Lifecycle`](crate::lifecycle::Lifecycle) says a sweep is due.
    pub fn close_expired(&mut self) {
        let now = Instant::now();
        self.open.retain(|connection| !connection.conn.is_expired(now));
    }

    /// Mutable access to one client (to record registration changes).
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Connection<S>> {
        self.open.get_mut(id)
    }

    /// Drops a connection at once (the loop could not watch it).
    pub fn remove(&mut self, id: ConnId) {
        self.open.remove(id);
    }

    /// Every open connection.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Connection<S>)> {
        self.open.iter()
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.open.len()
    }
}
