//! Zero-copy sends (`--zero-copy`): the kernel pins the buffer's pages
//! instead of copying them, and a second completion says when it lets them
//! go. The buffer is the loop's, not the connection's, until then.

use std::collections::HashMap;

use io_uring::{cqueue, opcode, squeue, types};

use crate::conn::ConnId;

use super::*;

/// Sends this large or larger are zero-copy when `--zero-copy` asks: below
/// about 3 KB, pinning pages and the extra completion cost more than the copy
/// (the io_uring authors' measurements on a NIC).
pub const ZERO_COPY_MIN_BYTES: usize = 4096;

/// A zero-copy send's buffer, kept by the loop from the send until the
/// kernel's notification that it no longer uses the pages.
#[derive(Debug)]
pub(super) struct ZeroCopySend {
    pub(super) conn: ConnId,
    pub(super) buffer: Vec<u8>,
    /// Where the send began in `buffer`.
    pub(super) offset: usize,
}

impl Loop<'_> {
    /// A zero-copy send's completions: first its result (with `more` when
    /// a notification follows), then the notification that the kernel has
    /// let go of the buffer's pages. The buffer is the loop's, not the
    /// connection's, so that a connection can close in between: a client
    /// that stops reading keeps its pages pinned for as long as it likes.
    pub(super) fn on_send_zero_copy(&mut self, key: u64, result: i32, flags: u32) {
        if cqueue::notif(flags) {
            self.zero_copy.remove(&key);
            return;
        }
        let Some(send) = self.zero_copy.get(&key) else { return };
        let id = send.conn;
        // What the kernel did not take goes back to the connection (a
        // short send), as a copy: these pages are still pinned.
        let unsent = send.buffer.get(send.offset + result.max(0) as usize..).unwrap_or_default().to_vec();
        if !cqueue::more(flags) {
            self.zero_copy.remove(&key);
        }
        if let Some(entry) = self.entries.get_mut(id) {
            entry.socket.sending = unsent;
            entry.socket.sent = 0;
            let sent = if result < 0 { result } else { 0 };
            self.sent(id, sent);
        }
    }
}

/// The entry of a zero-copy send of `send`'s rest; the buffer is kept in
/// `sends` under the next number until the kernel's notification.
pub(super) fn zero_copy_send(
    sends: &mut HashMap<u64, ZeroCopySend>,
    next: &mut u64,
    fd: types::Fd,
    send: ZeroCopySend,
) -> squeue::Entry {
    let key = *next;
    *next += 1;
    let rest = &send.buffer[send.offset..];
    let entry = opcode::SendZc::new(fd, rest.as_ptr(), rest.len() as u32).flags(libc::MSG_NOSIGNAL).build();
    sends.insert(key, send);
    entry.user_data(Op::SendZc.tag(key))
}
