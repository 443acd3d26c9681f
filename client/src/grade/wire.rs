//! Talking the line protocol to an untrusted server: every read and write
//! has a deadline, every reply is bounded, nothing can hang the grader.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::timeline::grading::Watch;

/// One reply, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK <size>` and the body.
    Ok(Vec<u8>),
    /// `ERR <code> ...`.
    Err(u16),
    /// The server closed the connection before a reply.
    Closed,
    /// Something else: the first bytes, for the report.
    Garbled(String),
}

impl Reply {
    /// How a reply reads in a report.
    pub fn describe(&self) -> String {
        match self {
            Reply::Ok(body) => format!("OK {} ({})", body.len(), preview(body)),
            Reply::Err(code) => format!("ERR {code}"),
            Reply::Closed => "the connection closed without a reply".into(),
            Reply::Garbled(text) => format!("not a reply: {text:?}"),
        }
    }
}

/// The first bytes of `body`, printable.
pub fn preview(body: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(&body[..body.len().min(40)]).escape_debug().collect();
    if body.len() > 40 {
        format!("\"{shown}...\"")
    } else {
        format!("\"{shown}\"")
    }
}

/// A connection whose every operation ends by `deadline`.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    deadline: Instant,
    /// Bytes read past the last reply (a pipelined next reply).
    buffered: Vec<u8>,
    /// `--timeline DIR`: this connection's exchanges, as they happen.
    watch: Watch,
}

/// Why an exchange failed.
pub type WireResult<T> = Result<T, String>;

impl Conn {
    /// Connects, with everything on this connection due within `budget`.
    pub fn open(addr: SocketAddr, budget: Duration) -> WireResult<Conn> {
        let deadline = Instant::now() + budget;
        let mut watch = Watch::connecting();
        let stream = TcpStream::connect_timeout(&addr, budget).map_err(|err| format!("cannot connect: {err}"))?;
        watch.connected();
        let _ = stream.set_nodelay(true);
        Ok(Conn { stream, deadline, buffered: Vec::new(), watch })
    }

    /// Makes everything on this connection due within `budget` from now
    /// (a test that waits in steps, each with its own deadline).
    pub fn due_in(&mut self, budget: Duration) {
        self.deadline = Instant::now() + budget;
    }

    /// Sets this end's receive buffer to about `bytes` (the kernel doubles
    /// it): small, a client that reads slowly holds little, and a large
    /// reply must wait in the server.
    pub fn set_receive_buffer(&self, bytes: usize) -> WireResult<()> {
        rustix::net::sockopt::set_socket_recv_buffer_size(&self.stream, bytes)
            .map_err(|err| format!("cannot set SO_RCVBUF: {err}"))
    }

    fn left(&self) -> WireResult<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err("no reply before the deadline (the server hangs?)".into())
        } else {
            Ok(left)
        }
    }

    /// Sends `bytes`.
    pub fn send(&mut self, bytes: &[u8]) -> WireResult<()> {
        self.stream.set_write_timeout(Some(self.left()?)).map_err(|e| e.to_string())?;
        self.stream.write_all(bytes).map_err(|err| format!("cannot send: {err}"))?;
        self.watch.sent(bytes);
        Ok(())
    }

    /// Whether the server has already sent something (or closed) that is
    /// not read yet, without waiting: a server may refuse a client with
    /// `ERR 503` before it asks for anything.
    pub fn has_unread(&self) -> bool {
        if !self.buffered.is_empty() {
            return true;
        }
        let mut byte = [0u8; 1];
        let _ = self.stream.set_nonblocking(true);
        let peeked = self.stream.peek(&mut byte);
        let _ = self.stream.set_nonblocking(false);
        match peeked {
            Ok(_) => true,
            Err(err) => err.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Reads up to `max` more bytes into the buffer; 0 at end of stream.
    fn fill(&mut self, max: usize) -> WireResult<usize> {
        self.stream.set_read_timeout(Some(self.left()?)).map_err(|e| e.to_string())?;
        let mut chunk = vec![0; max.clamp(1, 256 * 1024)];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buffered.extend_from_slice(&chunk[..n]);
                self.watch.received(n);
                Ok(n)
            }
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Err("no reply before the deadline (the server hangs?)".into())
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => Ok(0),
            Err(err) => Err(format!("cannot read: {err}")),
        }
    }

    /// Waits until the next reply has begun (its first bytes are kept for
    /// [`Conn::reply`]): the server is then answering the request.
    pub fn await_reply_start(&mut self) -> WireResult<()> {
        while self.buffered.is_empty() {
            if self.fill(1)? == 0 {
                return Err("the connection closed without a reply".into());
            }
        }
        Ok(())
    }

    /// Reads one reply; with `pause = (bytes, gap)` the body is read a few
    /// bytes at a time with a gap between reads: a slow reader.
    pub fn reply_slowly(&mut self, pause: Option<(usize, Duration)>) -> WireResult<Reply> {
        let reply = self.read_reply(pause);
        self.watch.done(match &reply {
            Ok(Reply::Ok(body)) => Ok(body.len() as u64),
            Ok(Reply::Err(_)) => Ok(0), // a refusal is an answer
            Ok(other) => Err(other.describe()),
            Err(why) => Err(why.clone()),
        });
        reply
    }

    fn read_reply(&mut self, pause: Option<(usize, Duration)>) -> WireResult<Reply> {
        let head = loop {
            if let Some(end) = self.buffered.iter().position(|&b| b == b'\n') {
                break self.buffered.drain(..=end).collect::<Vec<u8>>();
            }
            if self.buffered.len() > 4096 {
                return Ok(Reply::Garbled(lossy(&self.buffered)));
            }
            if self.fill(4096)? == 0 {
                return Ok(if self.buffered.is_empty() {
                    Reply::Closed
                } else {
                    Reply::Garbled(lossy(&self.buffered))
                });
            }
        };
        let line = String::from_utf8_lossy(&head).trim_end().to_string();
        if let Some(code) = line.strip_prefix("ERR ") {
            return Ok(code.get(..3).and_then(|c| c.parse().ok()).map_or(Reply::Garbled(line.clone()), Reply::Err));
        }
        let Some(size) = line.strip_prefix("OK ").and_then(|s| s.trim().parse::<usize>().ok()) else {
            return Ok(Reply::Garbled(line));
        };
        let mut body = Vec::with_capacity(size.min(128 << 20));
        loop {
            // Copied as one slice: byte by byte, an unoptimised (debug)
            // grader could not keep up with a 64 MiB body.
            let take = self.buffered.len().min(size - body.len());
            body.extend_from_slice(&self.buffered[..take]);
            self.buffered.drain(..take);
            if body.len() == size {
                return Ok(Reply::Ok(body));
            }
            let want = pause.map_or(size - body.len(), |(bytes, _)| bytes);
            let filled = self.fill(want).map_err(|err| format!("{err}, after {} of {size} body bytes", body.len()))?;
            if filled == 0 {
                return Err(format!("the connection closed after {} of {size} body bytes", body.len()));
            }
            if let Some((_, gap)) = pause {
                std::thread::sleep(gap);
            }
        }
    }

    /// Reads one reply.
    pub fn reply(&mut self) -> WireResult<Reply> {
        self.reply_slowly(None)
    }

    /// Sends one request line and reads its reply.
    pub fn request(&mut self, path: &[u8]) -> WireResult<Reply> {
        let mut line = path.to_vec();
        line.push(b'\n');
        self.send(&line)?;
        self.reply()
    }

    /// Everything until the server closes (the time service), at most 64 KiB.
    pub fn read_to_close(&mut self) -> WireResult<Vec<u8>> {
        while self.buffered.len() <= 64 * 1024 {
            if self.fill(64 * 1024)? == 0 {
                break;
            }
        }
        Ok(std::mem::take(&mut self.buffered))
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).into()
}

/// One request on a new connection.
pub fn fetch(addr: SocketAddr, path: &[u8], budget: Duration) -> WireResult<Reply> {
    Conn::open(addr, budget)?.request(path)
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}
