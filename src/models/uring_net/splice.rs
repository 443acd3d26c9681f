//! Large files without passing through user space: `sendfile` (by the
//! shared [`Output`](crate::output::Output)) into the connection's pipe, then a splice from the
//! pipe to the socket, completed on the ring.

use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use crate::conn::ConnId;

use super::*;

impl Loop<'_> {
    pub(super) fn submit_splice(&mut self, id: ConnId, len: usize) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        let Some((reader, _)) = entry.socket.pipe.get().and_then(Option::as_ref) else { return };
        let (socket, fixed) = entry.socket.socket.target();
        let splice =
            opcode::Splice::new(types::Fd(reader.as_raw_fd()), -1, socket, -1, len.min(u32::MAX as usize) as u32)
                .build()
                .flags(fixed)
                .user_data(Op::Splice.tag(slot(id)));
        entry.splicing = true;
        self.push(splice);
        self.in_flight += 1;
    }

    pub(super) fn on_splice(&mut self, index: u64, result: i32) {
        let Some(id) = self.id_at(index) else { return };
        let Some(entry) = self.entries.get_mut(id) else { return };
        entry.splicing = false;
        if entry.closing {
            self.free_if_idle(id);
            return;
        }
        if result <= 0 {
            Self::broken(entry);
        }
        self.touched.push(id);
    }
}
