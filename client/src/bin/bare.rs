//! `bare`: the least an HTTP server can do, written for the benchmark's
//! "limit" column (`./benchmark.sh --vs-nginx`). It is not the kit's
//! server and not a model to learn from: it shows how close the kit and
//! nginx come to the cost of the necessary syscalls alone.
//!
//! * `bare fixed`: one epoll loop (mio) that answers every request with the
//!   same 1 KiB response, honouring `Connection: close`: no parsing beyond
//!   finding the end of the head, no file, no cache. It shares the kit's
//!   two savings on new connections (the listener hands a connection over
//!   with its request, answered at once; a closing answer leaves with the
//!   FIN), so the kit cannot beat the limit by them.
//! * `bare uring-fixed` (Linux): the same answers from one io_uring loop
//!   and no epoll: a multishot accept, a multishot receive per connection
//!   into a ring of provided buffers, a send of the one shared response,
//!   one `io_uring_enter` per turn. The limit of the completion model
//!   (`--model uring-net`) as `fixed` is the readiness models'.
//! * `bare sendfile --root DIR`: a thread per connection that sends the
//!   head (`MSG_MORE`) and then the whole file with blocking `sendfile`.
//!
//! Both print `listening on <addr>` like the kit's server.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mio::net::TcpListener as MioListener;
use mio::{Events, Interest, Poll, Token};

/// The least an HTTP server can do, for the benchmark's limit column.
#[derive(Debug, Parser)]
struct Args {
    /// Port; 0 picks a free one.
    #[arg(long, global = true, default_value_t = 0)]
    port: u16,
    /// Address to listen on.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    addr: std::net::IpAddr,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// One epoll loop answering every request with a fixed 1 KiB response.
    Fixed,
    /// One io_uring loop answering every request with the same response.
    UringFixed,
    /// A thread per connection sending files with blocking sendfile.
    Sendfile {
        /// Directory the files are served from.
        #[arg(long)]
        root: PathBuf,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    let addr = SocketAddr::new(args.addr, args.port);
    let listener = listen(addr).with_context(|| format!("cannot bind {addr} (try --port 0)"))?;
    println!("{}", contract::listening_line(listener.local_addr()?));
    io::stdout().flush()?;
    match args.mode {
        Mode::Fixed => fixed(listener),
        #[cfg(target_os = "linux")]
        Mode::UringFixed => uring::fixed(listener),
        #[cfg(not(target_os = "linux"))]
        Mode::UringFixed => anyhow::bail!("io_uring is Linux's: use `bare fixed`"),
        Mode::Sendfile { root } => {
            for stream in listener.incoming().flatten() {
                let root = root.clone();
                std::thread::spawn(move || serve_files(stream, &root));
            }
            Ok(())
        }
    }
}

/// A listening socket set up as the kit's server sets up its own: with
/// `SO_REUSEADDR`, and the request-first hand-over (`TCP_DEFER_ACCEPT` on
/// Linux, nginx's `listen ... deferred`), so that the limit is not beaten by
/// a socket option.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let socket = rustix::net::socket(family, SocketType::STREAM, None)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    rustix::net::bind(&socket, &addr)?;
    rustix::net::listen(&socket, 1024)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // rustix has no TCP_DEFER_ACCEPT: the one libc call. Seconds a
        // silent connection waits before it is handed over anyway.
        let seconds: libc::c_int = 1;
        // SAFETY: `socket` is open for the whole call, and the option value
        // is a live c_int whose size is passed with it.
        let status = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&seconds as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if status != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(TcpListener::from(socket))
}

/// The fixed response: a head and 1 KiB of body, for keep-alive or close.
fn responses() -> (Vec<u8>, Vec<u8>) {
    let body = vec![b'x'; 1024];
    let head = |connection: &str| format!("HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n{connection}\r\n").into_bytes();
    let keep = [head(""), body.clone()].concat();
    let close = [head("Connection: close\r\n"), body].concat();
    (keep, close)
}

fn fixed(listener: TcpListener) -> Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = MioListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, Token(usize::MAX), Interest::READABLE)?;
    let mut conns: Vec<Option<mio::net::TcpStream>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut answer = FixedAnswer::new();
    loop {
        poll.poll(&mut events, None)?;
        for event in &events {
            if event.token() == Token(usize::MAX) {
                while let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(true);
                    // The request usually came with the connection: answer
                    // it now, and watch the socket only if it stays open.
                    if answer.serve(&mut stream) == Served::Closed {
                        continue;
                    }
                    let slot = conns.iter().position(Option::is_none).unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    poll.registry().register(&mut stream, Token(slot), Interest::READABLE)?;
                    conns[slot] = Some(stream);
                }
                continue;
            }
            let Some(stream) = conns.get_mut(event.token().0).and_then(Option::as_mut) else { continue };
            if answer.serve(stream) == Served::Closed {
                if let Some(mut stream) = conns[event.token().0].take() {
                    let _ = poll.registry().deregister(&mut stream);
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Served {
    Open,
    Closed,
}

/// The fixed responses and a read buffer.
struct FixedAnswer {
    keep: Vec<u8>,
    close: Vec<u8>,
    buf: Vec<u8>,
}

impl FixedAnswer {
    fn new() -> FixedAnswer {
        let (keep, close) = responses();
        FixedAnswer { keep, close, buf: vec![0u8; 16 * 1024] }
    }

    /// Reads until `WouldBlock`, answering one response per request head
    /// in what arrived (wrk sends one at a time); a short write ends it.
    fn serve(&mut self, stream: &mut mio::net::TcpStream) -> Served {
        loop {
            match stream.read(&mut self.buf) {
                Ok(0) => return Served::Closed,
                Ok(n) => {
                    let request = &self.buf[..n];
                    let heads = request.windows(4).filter(|w| w == b"\r\n\r\n").count();
                    let wants_close = request.windows(17).any(|w| w.eq_ignore_ascii_case(b"connection: close"));
                    if wants_close {
                        // The answer waits for the FIN and leaves with it.
                        let _ = send_held(stream, &self.close);
                        return Served::Closed;
                    }
                    for _ in 0..heads {
                        if stream.write_all(&self.keep).is_err() {
                            return Served::Closed;
                        }
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Served::Open,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Served::Closed,
            }
        }
    }
}

/// Serves `GET /name` requests on one connection with blocking sendfile.
fn serve_files(mut stream: TcpStream, root: &Path) {
    let _ = stream.set_nodelay(true);
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            continue;
        };
        let head: Vec<u8> = pending.drain(..end + 4).collect();
        let path = head.split(|&b| b == b' ').nth(1).unwrap_or_default();
        let name = String::from_utf8_lossy(path.strip_prefix(b"/").unwrap_or(path)).into_owned();
        let Ok(file) = std::fs::File::open(root.join(name)) else { return };
        let Ok(len) = file.metadata().map(|m| m.len()) else { return };
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
        if send_head_and_file(&stream, head.as_bytes(), &file, len).is_err() {
            return;
        }
    }
}

/// The head with `MSG_MORE` (so it leaves with the first bytes of the
/// file), then the file with blocking `sendfile`.
#[cfg(target_os = "linux")]
fn send_head_and_file(stream: &TcpStream, head: &[u8], file: &std::fs::File, len: u64) -> io::Result<()> {
    use rustix::net::{send, SendFlags};
    let mut sent = 0;
    while sent < head.len() {
        sent += send(stream, &head[sent..], SendFlags::MORE)?;
    }
    let mut offset = 0u64;
    while offset < len {
        let left = (len - offset) as usize;
        let n = rustix::fs::sendfile(stream, file, Some(&mut offset), left)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Sends `bytes` with `MSG_MORE`: held until the close adds the FIN.
#[cfg(target_os = "linux")]
fn send_held(stream: &mio::net::TcpStream, bytes: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(stream, bytes, rustix::net::SendFlags::MORE)?)
}

/// Elsewhere a plain write.
#[cfg(not(target_os = "linux"))]
fn send_held(mut stream: &mio::net::TcpStream, bytes: &[u8]) -> io::Result<usize> {
    stream.write(bytes)
}

/// Elsewhere: the head, then the file copied through a buffer.
#[cfg(not(target_os = "linux"))]
fn send_head_and_file(mut stream: &TcpStream, head: &[u8], file: &std::fs::File, _len: u64) -> io::Result<()> {
    stream.write_all(head)?;
    io::copy(&mut &*file, &mut stream).map(drop)
}

/// `bare uring-fixed`: the fixed answers with every operation on io_uring.
#[cfg(target_os = "linux")]
mod uring {
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU16, Ordering};

    use anyhow::Result;
    use io_uring::{cqueue, opcode, types, IoUring};

    const BUFFERS: u16 = 1024;
    const BUFFER_BYTES: usize = 4096;
    const ACCEPT: u64 = u64::MAX;
    // user_data: the fd in the low 32 bits, the operation above.
    const RECV: u64 = 1 << 32;
    const SEND: u64 = 2 << 32;
    const SEND_LAST: u64 = 3 << 32;
    const CLOSE: u64 = 4 << 32;

    /// Page-aligned memory for the provided-buffer ring.
    #[repr(C, align(4096))]
    struct RingMemory([types::BufRingEntry; BUFFERS as usize]);

    pub fn fixed(listener: TcpListener) -> Result<()> {
        // As `uring-net` sets its rings up: one issuer, and completion work
        // run when the loop waits for it (deferred task work, Linux 6.1),
        // else as the kernel schedules it.
        let mut ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(4096)
            .or_else(|_| IoUring::new(4096))?;
        let (keep, close) = super::responses();
        // SAFETY: zeroed entries are a valid empty ring.
        let mut entries: Box<RingMemory> = Box::new(unsafe { std::mem::zeroed() });
        let memory = vec![0u8; BUFFERS as usize * BUFFER_BYTES];
        for (bid, entry) in entries.0.iter_mut().enumerate() {
            entry.set_addr(memory.as_ptr() as u64 + (bid * BUFFER_BYTES) as u64);
            entry.set_len(BUFFER_BYTES as u32);
            entry.set_bid(bid as u16);
        }
        let base = entries.0.as_mut_ptr();
        // SAFETY: the tail lies in the first entry of this live, aligned ring.
        let tail = unsafe { AtomicU16::from_ptr(types::BufRingEntry::tail(base) as *mut u16) };
        tail.store(BUFFERS, Ordering::Release);
        let mut next_tail = BUFFERS;
        // SAFETY: the ring memory and the buffers live until this function
        // returns, which is never while the ring is open.
        unsafe { ring.submitter().register_buf_ring_with_flags(base as u64, BUFFERS, 0, 0)? };
        let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd())).build().user_data(ACCEPT);
        // SAFETY: the entries below point to the shared responses, which
        // live as long as the loop, and to nothing else.
        unsafe { ring.submission().push(&accept)? };
        let mut done = Vec::new();
        loop {
            ring.submit_and_wait(1)?;
            done.extend(ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            for (user_data, result, flags) in done.drain(..) {
                let fd = (user_data & 0xffff_ffff) as i32;
                let mut push = |entry: io_uring::squeue::Entry| {
                    // SAFETY: see above.
                    while unsafe { ring.submission().push(&entry) }.is_err() {
                        let _ = ring.submit();
                    }
                };
                match user_data & !0xffff_ffff {
                    _ if user_data == ACCEPT => {
                        if !cqueue::more(flags) {
                            push(opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd())).build().user_data(ACCEPT));
                        }
                        if result >= 0 {
                            let _ = rustix::net::sockopt::set_tcp_nodelay(
                                // SAFETY: the fd was just accepted and is open.
                                unsafe { std::os::fd::BorrowedFd::borrow_raw(result) },
                                true,
                            );
                            push(opcode::RecvMulti::new(types::Fd(result), 0).build().user_data(RECV | result as u64));
                        }
                    }
                    RECV => {
                        let more = cqueue::more(flags);
                        if let Some(bid) = cqueue::buffer_select(flags) {
                            let start = bid as usize * BUFFER_BYTES;
                            let request = &memory[start..start + result.max(0) as usize];
                            let heads = request.windows(4).filter(|w| w == b"\r\n\r\n").count();
                            let wants_close = request.windows(17).any(|w| w.eq_ignore_ascii_case(b"connection: close"));
                            // Give the buffer back at the tail.
                            let slot = (next_tail & (BUFFERS - 1)) as usize;
                            // SAFETY: this slot is past the kernel's view (the published tail).
                            let entry = unsafe { &mut *base.add(slot) };
                            entry.set_addr(memory.as_ptr() as u64 + start as u64);
                            entry.set_len(BUFFER_BYTES as u32);
                            entry.set_bid(bid);
                            next_tail = next_tail.wrapping_add(1);
                            tail.store(next_tail, Ordering::Release);
                            if wants_close {
                                push(
                                    opcode::Send::new(types::Fd(fd), close.as_ptr(), close.len() as u32)
                                        .build()
                                        .user_data(SEND_LAST | fd as u64),
                                );
                                continue;
                            }
                            for _ in 0..heads {
                                push(
                                    opcode::Send::new(types::Fd(fd), keep.as_ptr(), keep.len() as u32)
                                        .build()
                                        .user_data(SEND | fd as u64),
                                );
                            }
                            if !more {
                                push(opcode::RecvMulti::new(types::Fd(fd), 0).build().user_data(RECV | fd as u64));
                            }
                        } else if result <= 0 || !more {
                            // End of stream, an error, or the receive ended: close.
                            push(opcode::Close::new(types::Fd(fd)).build().user_data(CLOSE | fd as u64));
                        }
                    }
                    SEND_LAST => {
                        // Stop receiving; the receive's last completion closes.
                        push(opcode::AsyncCancel::new(RECV | fd as u64).build().user_data(CLOSE | fd as u64));
                    }
                    _ => {}
                }
            }
        }
    }
}
