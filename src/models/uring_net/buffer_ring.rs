//! Provided buffers: a ring of receive buffers the kernel picks from when
//! data arrives (so no buffer is pinned to an idle connection), and how a
//! receive is armed with them, or, without them (`--without
//! provided-buffers`), into the connection's own buffer.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{opcode, squeue, types, IoUring};

use crate::conn::ConnId;

use super::*;

/// Buffers in the provided-buffer ring that receives draw from.
pub const RECV_BUFFERS: u16 = 512;

/// Size of each provided buffer: a request head fits in one.
pub const RECV_BUFFER_BYTES: usize = 4096;

/// Provided-buffer group id of the receive ring.
pub(super) const BUFFER_GROUP: u16 = 0;

/// The ring of provided buffers receives draw from. The kernel takes a
/// buffer at the head when data arrives and names it in the completion;
/// the loop copies the bytes out and gives the buffer back at the tail.
pub(super) struct BufferRing {
    pub(super) entries: *mut types::BufRingEntry,
    pub(super) layout: std::alloc::Layout,
    pub(super) memory: Vec<u8>,
    pub(super) tail: u16,
}

impl BufferRing {
    pub(super) fn register(ring: &IoUring) -> io::Result<BufferRing> {
        let layout = std::alloc::Layout::from_size_align(RECV_BUFFERS as usize * 16, 4096).expect("valid layout");
        // SAFETY: the layout has a non-zero size; zeroed memory is a valid
        // (empty) ring of entries.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut buffers =
            BufferRing { entries, layout, memory: vec![0; RECV_BUFFERS as usize * RECV_BUFFER_BYTES], tail: 0 };
        // SAFETY: the ring memory is page-aligned, RECV_BUFFERS entries
        // long, and lives (with the buffers) until Drop, which runs after
        // the ring itself is gone (the loop drops the ring first).
        unsafe { ring.submitter().register_buf_ring_with_flags(entries as u64, RECV_BUFFERS, BUFFER_GROUP, 0) }?;
        for bid in 0..RECV_BUFFERS {
            buffers.give_back(bid);
        }
        buffers.publish();
        Ok(buffers)
    }

    pub(super) fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * RECV_BUFFER_BYTES;
        &self.memory[start..start + len.min(RECV_BUFFER_BYTES)]
    }

    /// Queues buffer `bid` for the kernel (seen once published).
    pub(super) fn give_back(&mut self, bid: u16) {
        let slot = (self.tail & (RECV_BUFFERS - 1)) as usize;
        let addr = self.memory.as_ptr() as u64 + (bid as usize * RECV_BUFFER_BYTES) as u64;
        // SAFETY: `slot` is within the ring; the kernel only reads entries
        // between its head and the published tail, and this one is past it.
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(addr);
        entry.set_len(RECV_BUFFER_BYTES as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    pub(super) fn publish(&self) {
        // SAFETY: the tail field lies in the first entry of our live,
        // aligned ring; the kernel reads it with acquire ordering.
        let tail = unsafe { AtomicU16::from_ptr(types::BufRingEntry::tail(self.entries) as *mut u16) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with this layout; the ring that
        // knew of it is gone.
        unsafe { std::alloc::dealloc(self.entries as *mut u8, self.layout) };
    }
}

impl Loop<'_> {
    /// Arms a receive. The first is single-shot: a connection that came
    /// with its request (`TCP_DEFER_ACCEPT`) and asks to close is then done
    /// receiving, and closes without a cancel. Later ones are multishot:
    /// armed once, they post a completion per arrival. Without provided
    /// buffers, every receive is single-shot, into the connection's buffer.
    pub(super) fn arm_recv(&mut self, id: ConnId) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        let (fd, fixed) = entry.socket.socket.target();
        let recv = if !self.techniques.provided_buffers {
            let buffer = &mut entry.recv_buffer;
            opcode::Recv::new(fd, buffer.as_mut_ptr(), buffer.len() as u32).build()
        } else if entry.received_any && self.techniques.multishot {
            opcode::RecvMulti::new(fd, BUFFER_GROUP).build()
        } else {
            opcode::Recv::new(fd, std::ptr::null_mut(), RECV_BUFFER_BYTES as u32)
                .buf_group(BUFFER_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        };
        entry.received_any = true;
        let recv = recv.flags(fixed).user_data(Op::Recv.tag(slot(id)));
        entry.receiving = true;
        self.push(recv);
        self.in_flight += 1;
    }
}
