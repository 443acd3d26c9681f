//! Stage 2, on epoll: the same server as `stage2-select`, on mio (epoll on
//! Linux, kqueue on macOS and FreeBSD).
//!
//! `select(2)` takes the whole interest list every turn and scans every fd;
//! epoll keeps the list in the kernel: a socket is registered once, its
//! interest changed only when it changes, and a wait returns just the ready
//! sockets, with no `FD_SETSIZE`. mio's readiness is edge-triggered: an
//! event says "something changed", not "there is data", so every read and
//! write goes on until `WouldBlock`, or the next event never comes. Write
//! interest is asked for only while output is owed. Files are read inline
//! (no sandbox yet: stage 3). Cost: one thread, two buffers per client, an
//! `epoll_ctl` per change of interest.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use labs::{check, Args, Context, Result, Service};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};

fn main() -> std::process::ExitCode {
    labs::main(serve)
}

/// A TCP socket listening on 127.0.0.1:`port`.
fn listen(port: u16) -> std::io::Result<TcpListener> {
    // SAFETY: socket(2) takes no pointers; the fd it returns is owned below.
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) })?;
    // SAFETY: fd is a new socket that nothing else owns; OwnedFd closes it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let (yes, yes_len) = (1 as libc::c_int, std::mem::size_of::<libc::c_int>() as libc::socklen_t);
    // SAFETY: the option points at a live c_int of the length given.
    let option = (&yes as *const libc::c_int).cast();
    check(unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, option, yes_len) })?;
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = port.to_be(); // network byte order
    addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
    let addr_len = std::mem::size_of_val(&addr) as libc::socklen_t;
    // SAFETY: addr is a live sockaddr_in of the length given.
    check(unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), addr_len) })?;
    // SAFETY: fd is a bound socket.
    check(unsafe { libc::listen(fd, libc::SOMAXCONN) })?;
    Ok(TcpListener::from(socket))
}

/// The time `at`, in RFC 3339 UTC: `2026-11-27T12:00:00Z`.
fn rfc3339_utc(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Howard Hinnant's civil_from_days: eras of 400 years, years from March.
    let days = (secs / 86_400) as i64 + 719_468; // days since 0000-03-01
    let (era, day_of_era) = (days.div_euclid(146_097), days.rem_euclid(146_097));
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (hour, minute, second) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

// lab:begin
// lab:todo what the loop remembers of each client between two turns: its socket, the bytes of a
// lab:todo request not yet complete, the bytes owed to it not yet sent, and its phase (still sending
// lab:todo requests, or done: closed once nothing more is owed). OSTEP ch. 33 calls this "manual stack management".
/// Where a client is in its conversation.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// It may send more requests.
    Requests,
    /// It is done (end-of-file, an error, or the time sent): close it once `output` is sent.
    Closing,
}

/// A client: what the loop keeps of it between events.
struct Client {
    stream: TcpStream,
    /// Received bytes of a request whose newline has not come yet.
    input: Vec<u8>,
    /// Bytes owed to the client that the socket has not taken yet.
    output: Vec<u8>,
    phase: Phase,
    /// What the kernel watches for on its behalf.
    interest: Option<Interest>,
}
// lab:stub struct Client {}
// lab:end

impl Client {
    /// Takes everything the client sent and answers each complete request.
    fn receive(&mut self, root: &Path) {
        // lab:begin
        // lab:todo take everything the client sent: an event is an edge, and a read that stops before
        // lab:todo EAGAIN leaves bytes no later event announces (the client then waits for ever). End-of-file
        // lab:todo or an error ends its requests; each complete line (a \r before the \n dropped) is answered
        // lab:todo in order; half a line waits. Read epoll(7) on edge-triggered mode, recv(2).
        let mut incoming = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut incoming) {
                Ok(0) => break self.phase = Phase::Closing,
                Ok(n) => self.input.extend_from_slice(&incoming[..n]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break (self.phase, self.output) = (Phase::Closing, Vec::new()),
            }
        }
        while let Some(end) = self.input.iter().position(|&byte| byte == b'\n') {
            let request: Vec<u8> = self.input.drain(..=end).take(end).collect();
            self.output.extend(respond(root, request.strip_suffix(b"\r").unwrap_or(&request)));
        }
        // lab:end
    }

    /// Sends what is owed until it is all sent or the socket is full.
    fn send(&mut self) {
        // lab:begin
        // lab:todo send what is owed until all of it is sent or the socket takes no more (EAGAIN: the
        // lab:todo writable event that comes when it has room is the cue to go on); what it did not take is
        // lab:todo still owed, in order. A client gone away owes nothing more. Read send(2), epoll(7).
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(sent) => drop(self.output.drain(..sent)),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return (self.phase, self.output) = (Phase::Closing, Vec::new()),
            }
        }
        // lab:end
    }

    /// Tells the kernel what to watch for now; false once the client is done.
    fn watch(&mut self, registry: &Registry, token: Token) -> bool {
        // lab:begin
        // lab:todo the kernel watches a client for requests while it may send them, and for room to write
        // lab:todo only while output is owed (else every turn wakes for nothing); the interest list lives in
        // lab:todo the kernel, so it changes only when the interest does. Done (closing, nothing owed):
        // lab:todo leave the list and say so, so the loop drops the client. Read epoll_ctl(2).
        let reading = (self.phase == Phase::Requests).then_some(Interest::READABLE);
        let writing = (!self.output.is_empty()).then_some(Interest::WRITABLE);
        let wanted = match (reading, writing) {
            (Some(read), Some(write)) => Some(read | write),
            (one, other) => one.or(other),
        };
        let changed = match (self.interest, wanted) {
            (None, Some(wanted)) => registry.register(&mut self.stream, token, wanted),
            (Some(had), Some(wanted)) if had != wanted => registry.reregister(&mut self.stream, token, wanted),
            (Some(_), None) => registry.deregister(&mut self.stream),
            _ => Ok(()),
        };
        self.interest = wanted;
        changed.is_ok() && wanted.is_some()
        // lab:end
    }
}

/// The answer to one request: the file `path` under `root`, read inline.
fn respond(root: &Path, path: &[u8]) -> Vec<u8> {
    // lab:begin
    // lab:todo OK <size>\n and the file's bytes, or ERR 404 (no such file), ERR 403 (a directory, no
    // lab:todo permission) or ERR 500 (another error), each a line. (Any path is taken as it comes for now:
    // lab:todo stage 3 builds the sandbox.) Read docs/assignment.md, stage 3.
    match std::fs::read(root.join(std::ffi::OsStr::from_bytes(path))) {
        Ok(body) => [format!("OK {}\n", body.len()).into_bytes(), body].concat(),
        Err(err) if err.kind() == ErrorKind::NotFound => b"ERR 404 no such file\n".to_vec(),
        Err(err) if matches!(err.kind(), ErrorKind::PermissionDenied | ErrorKind::IsADirectory) => {
            format!("ERR 403 {err}\n").into_bytes()
        }
        Err(err) => format!("ERR 500 {err}\n").into_bytes(),
    }
    // lab:end
}

/// The listener's token; clients get the others.
const LISTENER: Token = Token(usize::MAX);

fn serve(args: Args) -> Result<()> {
    let listener = listen(args.port).context(format!("listening on port {}", args.port))?;
    labs::announce(listener.local_addr().context("getsockname")?)?;
    // lab:begin
    // lab:todo one thread serves every client, waiting in the kernel for whichever is ready: each socket
    // lab:todo (the listener too) non-blocking, registered once, its interest changed only when it changes. Every client
    // lab:todo waiting to be accepted is taken when the listener's event comes (one event for all of them);
    // lab:todo the time service owes the time line and then closes. A half request stops no one; a failed
    // lab:todo accept (EMFILE) does not end the server. Read epoll(7), accept(2), and mio's Poll docs.
    listener.set_nonblocking(true).context("making the listener non-blocking")?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let mut poll = Poll::new().context("epoll_create")?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE).context("registering the listener")?;
    let mut events = Events::with_capacity(256);
    let mut clients: HashMap<Token, Client> = HashMap::new();
    let mut next_token = 0;
    loop {
        match poll.poll(&mut events, None) {
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            result => result.context("epoll_wait")?,
        }
        for event in &events {
            let token = event.token();
            if token == LISTENER {
                loop {
                    let stream = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                        Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                        Err(err) => break eprintln!("accept: {err}"), // EMFILE: the next event tries again
                    };
                    let mut client = Client {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        phase: Phase::Requests,
                        interest: None,
                    };
                    if args.service == Service::Time {
                        client.output = format!("{}\n", rfc3339_utc(SystemTime::now())).into_bytes();
                        client.phase = Phase::Closing;
                    }
                    next_token += 1;
                    if client.watch(poll.registry(), Token(next_token)) {
                        clients.insert(Token(next_token), client);
                    }
                }
                continue;
            }
            let Some(client) = clients.get_mut(&token) else { continue };
            if event.is_readable() || event.is_read_closed() {
                client.receive(&args.root);
            }
            client.send(); // owed bytes go at once: the socket likely has room
            if !client.watch(poll.registry(), token) {
                clients.remove(&token);
            }
        }
    }
    // lab:end
}
