//! Registered files: sockets accepted straight into the ring's table of
//! files (direct descriptors), so no operation looks up or counts a file
//! reference. The table's slots bound the accepts, and a slot is freed by a
//! Close entry (`--without registered-files` uses ordinary fds).

use io_uring::{opcode, types};

use super::*;

impl Loop<'_> {
    /// Registered-file slots not held by a connection (unbounded without
    /// registered files).
    pub(super) fn free_slots(&self) -> usize {
        match self.techniques.registered_files as usize {
            0 => usize::MAX,
            slots => slots.saturating_sub(self.entries.len()),
        }
    }

    /// Whether a new accept should be armed now.
    pub(super) fn may_arm_accept(&self) -> bool {
        !self.accepting && self.lifecycle.is_accepting() && self.free_slots() > 0
    }

    /// Closes a socket: an fd by dropping it, a registered file by a Close
    /// entry (the slot is free once it completes).
    pub(super) fn release(&mut self, socket: Socket) {
        if let Socket::Direct(slot) = socket {
            self.push(opcode::Close::new(types::Fixed(slot)).build().user_data(Op::Close.tag(0)));
        }
    }
}
