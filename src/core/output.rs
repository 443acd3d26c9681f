//! The queue of bytes owed to one client, and the code that writes it.
//!
//! Responses are queued as pieces (a small head, a shared body, a file to
//! stream) and written with as few syscalls as possible: consecutive
//! in-memory pieces go out in one `writev`, files go out with `sendfile` so
//! their bytes never pass through user space. The same queue serves a
//! blocking socket (each write waits) and a non-blocking one (a write stops
//! at `WouldBlock` and resumes when the socket is writable again).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use crate::protocol::conditional::Selection;
use crate::protocol::{encode_head, Body, Framing, Response};

/// Most pieces gathered into one `writev`.
const MAX_IOVECS: usize = 64;
/// Most bytes one `sendfile` call is asked for: a chunk, so one large file
/// interleaves with other clients' responses instead of hogging the loop.
const SENDFILE_CHUNK_BYTES: usize = 1 << 20;

/// A socket the queue can write to: `write`/`writev`, plus an fd for
/// `sendfile`, plus writes whose bytes wait for what follows.
pub trait Sink: Write + AsFd {
    /// Writes `slices` but holds them in the socket until the next write
    /// or the close adds to them, so that they leave together, in one
    /// segment: on Linux `sendmsg` with `MSG_MORE` (macOS and FreeBSD spell
    /// it `TCP_NOPUSH`, a socket option that would cost two `setsockopt`s
    /// per response, so there it is a plain `writev`).
    fn write_held(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        {
            use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};
            let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
            sendmsg(self.as_fd(), slices, &mut SendAncillaryBuffer::default(), flags).map_err(io::Error::from)
        }
        #[cfg(not(target_os = "linux"))]
        self.write_vectored(slices)
    }

    /// Shuts down the write side once everything written has left: the
    /// first step of a staged close (`conn`'s module doc). A socket whose
    /// writes are only staged (a completion model's) must wait until they
    /// are sent, so it overrides this.
    fn shutdown_write(&mut self) -> io::Result<()> {
        rustix::net::shutdown(self.as_fd(), rustix::net::Shutdown::Write).map_err(io::Error::from)
    }
}
impl Sink for std::net::TcpStream {}
impl Sink for &std::net::TcpStream {}

/// What becomes of the connection once the queue is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// More responses may follow; or the socket closes with input still
    /// unread, and such a close resets the connection (RST), which would
    /// throw away bytes held back for it. Send everything now.
    SendNow,
    /// The socket is closed as soon as the queue is empty, and everything
    /// the client sent has been read: the last bytes may wait for the FIN.
    CloseClean,
}

#[derive(Debug)]
enum Piece {
    Owned {
        bytes: Vec<u8>,
        sent: usize,
    },
    /// Bytes `sent..end` of a shared buffer (a cache entry, or a range of one).
    Shared {
        bytes: Arc<[u8]>,
        sent: usize,
        end: usize,
    },
    File {
        file: File,
        offset: u64,
        len: u64,
    },
}

impl Piece {
    fn remaining(&self) -> u64 {
        match self {
            Piece::Owned { bytes, sent } => bytes.len().saturating_sub(*sent) as u64,
            Piece::Shared { sent, end, .. } => end.saturating_sub(*sent) as u64,
            Piece::File { offset, len, .. } => len.saturating_sub(*offset),
        }
    }

    fn unsent_bytes(&self) -> Option<&[u8]> {
        match self {
            // Never out of range (a Shared piece is cut from its buffer's
            // own length); were it ever, nothing is sent and the write of
            // nothing closes the connection, as a broken stream should.
            Piece::Owned { bytes, sent } => Some(bytes.get(*sent..).unwrap_or_default()),
            Piece::Shared { bytes, sent, end } => Some(bytes.get(*sent..*end).unwrap_or_default()),
            Piece::File { .. } => None,
        }
    }
}

/// Outcome of [`Output::write_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued has been written.
    All,
    /// The socket would block; call again when it is writable.
    Partly,
}

/// Bytes owed to one client, in order.
#[derive(Debug, Default)]
pub struct Output {
    pieces: VecDeque<Piece>,
    queued_bytes: u64,
    /// Whether `TCP_NODELAY` has been set on the socket. A streamed file
    /// leaves in two writes (the head by `writev`, the body by `sendfile`),
    /// and Nagle's algorithm would hold the body's last small segment back
    /// for the client's delayed ACK (40 ms). A response sent in one `writev`
    /// never waits, so most connections never pay for the `setsockopt`.
    nodelay_set: bool,
}

impl Output {
    /// Queues `response`, framed for the request it answers: the whole
    /// body, the byte range an HTTP request selected, or none.
    pub fn push_response(&mut self, framing: Framing, response: Response) {
        let selection = match (&framing, &response) {
            (Framing::Http(http), Response::Content(body)) => http.conditions.select(body.len(), body.modified()),
            _ => Selection::Full,
        };
        // Room for an HTTP head (about 250 bytes) without reallocating.
        let mut head = Vec::with_capacity(320);
        encode_head(&framing, &response, selection, &mut head);
        self.push_bytes(head);
        let head_only = matches!(&framing, Framing::Http(http) if http.head_only);
        let Response::Content(body) = response else { return };
        let (start, end) = match selection {
            _ if head_only => return,
            Selection::NotModified | Selection::Unsatisfiable => return,
            Selection::Full => (0, body.len()),
            // Within the body, as `select` makes it.
            Selection::Partial { start, end } => (start.min(end), end.min(body.len())),
        };
        match body {
            _ if start == end => {}
            Body::Bytes { bytes, .. } => self.push(Piece::Shared { bytes, sent: start as usize, end: end as usize }),
            Body::File { file, .. } => self.push(Piece::File { file, offset: start, len: end }),
        }
    }

    /// Queues raw bytes (a greeting, a refusal written before any request).
    pub fn push_bytes(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.push(Piece::Owned { bytes, sent: 0 });
        }
    }

    fn push(&mut self, piece: Piece) {
        // Saturating: a file's size is what the disk says, up to u64::MAX.
        self.queued_bytes = self.queued_bytes.saturating_add(piece.remaining());
        self.pieces.push_back(piece);
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    /// True when nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Writes as much as the socket takes: until the queue is empty or the
    /// socket would block. `Interrupted` is retried; other errors (the peer
    /// went away) are returned and the connection should be dropped.
    ///
    /// When `then` is [`Then::CloseClean`], the last bytes are held back for the
    /// close: the response and the FIN reach the client in one segment (one
    /// wake-up, one `read`), as nginx's do.
    pub fn write_to<S: Sink>(&mut self, sink: &mut S, then: Then) -> io::Result<Flushed> {
        while let Some(front) = self.pieces.front_mut() {
            let written = match front {
                // Sends bytes `offset..len` of the file.
                Piece::File { file, offset, len } => {
                    set_nodelay_once(&mut self.nodelay_set, sink);
                    let want = len.saturating_sub(*offset).min(SENDFILE_CHUNK_BYTES as u64) as usize;
                    match send_file(sink.as_fd(), file, offset, want) {
                        // The file shrank after it was opened: the promised
                        // length can no longer be met, so the stream is broken.
                        Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while sending")),
                        Ok(n) => {
                            // send_file advanced `offset` itself.
                            self.queued_bytes = self.queued_bytes.saturating_sub(n as u64);
                            if *offset >= *len {
                                self.pieces.pop_front();
                            }
                            continue;
                        }
                        Err(errno) => Err(io::Error::from(errno)),
                    }
                }
                _ => {
                    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                    let mut count = 0;
                    for (slot, bytes) in slices.iter_mut().zip(self.pieces.iter().map_while(Piece::unsent_bytes)) {
                        *slot = IoSlice::new(bytes);
                        count += 1;
                    }
                    let before_file = matches!(self.pieces.get(count), Some(Piece::File { .. }));
                    let last_before_close = then == Then::CloseClean && count == self.pieces.len();
                    if before_file {
                        // Before the head: setting the option pushes out
                        // whatever the socket holds back.
                        set_nodelay_once(&mut self.nodelay_set, sink);
                    }
                    if before_file || last_before_close {
                        // The head waits for the file's first bytes; the
                        // last bytes wait for the FIN.
                        sink.write_held(&slices[..count])
                    } else {
                        sink.write_vectored(&slices[..count])
                    }
                }
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n as u64),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Partly),
                Err(err) => return Err(err),
            }
        }
        Ok(Flushed::All)
    }

    /// Drops `n` bytes written by `writev` from the in-memory pieces at the
    /// front of the queue.
    fn consume(&mut self, mut n: u64) {
        self.queued_bytes = self.queued_bytes.saturating_sub(n);
        while n > 0 {
            // writev wrote no more than was queued.
            let Some(front) = self.pieces.front_mut() else { return };
            let remaining = front.remaining();
            if n < remaining {
                if let Piece::Owned { sent, .. } | Piece::Shared { sent, .. } = front {
                    *sent += n as usize;
                }
                return;
            }
            n -= remaining;
            self.pieces.pop_front();
        }
    }
}

/// Sets `TCP_NODELAY` the first time a file is streamed on this socket.
fn set_nodelay_once<S: Sink>(nodelay_set: &mut bool, sink: &S) {
    if !*nodelay_set {
        // Not a TCP socket (a test's socket pair): nothing to set.
        let _ = rustix::net::sockopt::set_tcp_nodelay(sink.as_fd(), true);
        *nodelay_set = true;
    }
}

/// Sends up to `want` bytes of `file` from `offset` to `socket` and
/// advances `offset`. Linux's `sendfile` moves them inside the kernel; other
/// systems' `sendfile`s differ in every detail, so there the bytes go
/// through a buffer: `pread`, then one `write` (a short write simply leaves
/// the rest to be read again next time).
fn send_file(socket: BorrowedFd<'_>, file: &File, offset: &mut u64, want: usize) -> rustix::io::Result<usize> {
    #[cfg(target_os = "linux")]
    return rustix::fs::sendfile(socket, file, Some(offset), want);
    #[cfg(not(target_os = "linux"))]
    {
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
        }
        BUFFER.with_borrow_mut(|buffer| {
            let chunk = want.min(buffer.len());
            let read = rustix::io::pread(file, &mut buffer[..chunk], *offset)?;
            let written = rustix::io::write(socket, &buffer[..read])?;
            *offset += written as u64;
            Ok(written)
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// The head of a streamed file is held back until the file's bytes
    /// join it, even with `TCP_NODELAY` set: the client is not woken for a
    /// lone head.
    #[test]
    fn a_head_before_a_streamed_file_waits_for_the_file() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut nodelay_set = false;
        set_nodelay_once(&mut nodelay_set, &server);
        assert!(rustix::net::sockopt::tcp_nodelay(&server).unwrap());

        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(server.write_held(&[IoSlice::new(head)]).unwrap(), head.len());
        client.set_nonblocking(true).unwrap();
        // On loopback a pushed segment is queued at the client during the
        // sender's own call, so a short wait is plenty (and well under the
        // 200 ms after which Linux sends corked bytes anyway).
        std::thread::sleep(Duration::from_millis(10));
        let mut got = [0u8; 256];
        let early = client.read(&mut got);
        assert!(
            matches!(&early, Err(err) if err.kind() == io::ErrorKind::WouldBlock),
            "the head left alone: {early:?}"
        );

        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"hello").unwrap();
        let mut offset = 0;
        assert_eq!(send_file(server.as_fd(), &file, &mut offset, 5).unwrap(), 5);
        client.set_nonblocking(false).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut response = Vec::new();
        while response.len() < head.len() + 5 {
            let n = client.read(&mut got).unwrap();
            assert!(n > 0, "closed early");
            response.extend_from_slice(&got[..n]);
        }
        assert_eq!(response, [&head[..], b"hello"].concat());
    }

    /// A connection's last response is held back for the close, so that it
    /// and the FIN leave in one segment; a response on a connection that
    /// stays open leaves at once.
    #[test]
    fn the_last_response_before_a_close_leaves_with_the_fin() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = b"OK 3\nbye";
        for then in [Then::SendNow, Then::CloseClean] {
            let mut client = TcpStream::connect(addr).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            let mut output = Output::default();
            output.push_bytes(answer.to_vec());
            assert!(matches!(output.write_to(&mut server, then).unwrap(), Flushed::All));
            client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = [0u8; 64];
            if then == Then::SendNow {
                let n = client.read(&mut got).unwrap();
                assert_eq!(&got[..n], answer, "sent at once, the socket still open");
                continue;
            }
            client.set_nonblocking(true).unwrap();
            std::thread::sleep(Duration::from_millis(10));
            let early = client.read(&mut got);
            assert!(
                matches!(&early, Err(err) if err.kind() == io::ErrorKind::WouldBlock),
                "the response left before the close: {early:?}"
            );
            drop(server);
            client.set_nonblocking(false).unwrap();
            let mut received = Vec::new();
            client.read_to_end(&mut received).unwrap();
            assert_eq!(received, answer);
        }
    }
}
