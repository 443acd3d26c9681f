//! Stage 2: many clients at once, in one thread, with select(2).
//!
//! Stage 1's loop blocked in `read` and `write` for one client while the
//! others waited. Here every socket is non-blocking and the loop waits in
//! `select(2)` alone, for any of them: the listener and each client's
//! socket in the read set while it may send requests, in the write set
//! only while the server owes it bytes. Each client's place in its
//! conversation lives in a `Client` (input buffer, output buffer, phase):
//! the book's "manual stack management", since no thread keeps it on a
//! stack. Files are read inline (no sandbox yet: stage 3), so a slow disk
//! stalls every client (stage 4). Cost: one thread, two buffers per
//! client, a scan of every fd per turn; at most `FD_SETSIZE` fds.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use labs::{check, Args, Context, Result, Service};

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

/// A client: what the loop keeps of it between turns.
struct Client {
    stream: TcpStream,
    /// Received bytes of a request whose newline has not come yet.
    input: Vec<u8>,
    /// Bytes owed to the client that the socket has not taken yet.
    output: Vec<u8>,
    phase: Phase,
}
// lab:stub struct Client {}
// lab:end

impl Client {
    /// Takes what the client sent (one read: select says again if more
    /// waits) and answers each complete request.
    fn receive(&mut self, root: &Path) {
        // lab:begin
        // lab:todo take what the client sent without blocking; end-of-file or an error (a reset) ends its
        // lab:todo requests; each complete line (up to \n, a \r before it dropped) is a request, answered
        // lab:todo in order, after the answers already owed; half a line waits for the rest. A request
        // lab:todo may arrive one byte at a time, or several in one read. Read recv(2), EAGAIN and EINTR.
        let mut incoming = [0u8; 4096];
        match self.stream.read(&mut incoming) {
            Ok(0) => self.phase = Phase::Closing,
            Ok(n) => self.input.extend_from_slice(&incoming[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => (self.phase, self.output) = (Phase::Closing, Vec::new()),
        }
        while let Some(newline) = self.input.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.input.drain(..=newline).collect();
            let request = &line[..newline];
            self.output.extend(respond(root, request.strip_suffix(b"\r").unwrap_or(request)));
        }
        // lab:end
    }

    /// Sends what the socket takes of what is owed.
    fn send(&mut self) {
        // lab:begin
        // lab:todo send what is owed without blocking: the socket may take only part of it, and what it
        // lab:todo did not take is still owed, in order (a client that reads slowly gets every byte, and
        // lab:todo does not stall the others). A client gone away (EPIPE, reset) owes nothing more: it is
        // lab:todo closed. Read send(2): its return value, EAGAIN.
        match self.stream.write(&self.output) {
            Ok(sent) => drop(self.output.drain(..sent)),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => (self.phase, self.output) = (Phase::Closing, Vec::new()),
        }
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

/// Accepts every client waiting in the listen backlog.
fn accept(listener: &TcpListener, clients: &mut Vec<Client>, service: Service) {
    // lab:begin
    // lab:todo take every client that is waiting (more may wait than one), each non-blocking, with a fresh
    // lab:todo state; the time service owes it the time line and then closes it. A socket whose fd is
    // lab:todo FD_SETSIZE or more cannot go in an fd_set (writing it there is undefined behaviour): refuse
    // lab:todo it with ERR 503. A failed accept (EMFILE) must not end the server. Read accept(2), select(2).
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) if err.kind() == ErrorKind::WouldBlock => return,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return eprintln!("accept: {err}"), // EMFILE: try again next turn
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if stream.as_raw_fd() >= libc::FD_SETSIZE as RawFd {
            let _ = (&stream).write(b"ERR 503 server full\n");
            continue; // dropped: closed
        }
        let mut client = Client { stream, input: Vec::new(), output: Vec::new(), phase: Phase::Requests };
        if service == Service::Time {
            client.output = format!("{}\n", rfc3339_utc(SystemTime::now())).into_bytes();
            client.phase = Phase::Closing;
        }
        clients.push(client);
    }
    // lab:end
}

fn serve(args: Args) -> Result<()> {
    let listener = listen(args.port).context(format!("listening on port {}", args.port))?;
    labs::announce(listener.local_addr().context("getsockname")?)?;
    // lab:begin
    // lab:todo one thread serves every client: it waits for whichever socket is ready (a client waiting
    // lab:todo to be accepted, a request arriving, room to send what is owed) and never blocks on one.
    // lab:todo A client that sends half a request and goes quiet stops no one; 20 clients at once are all
    // lab:todo answered; a client is closed once done and owed nothing. Ask to write only while output is
    // lab:todo owed (else select returns at once, every turn). Read select(2): nfds, FD_SET, EINTR.
    listener.set_nonblocking(true).context("making the listener non-blocking")?;
    let mut clients: Vec<Client> = Vec::new();
    loop {
        // SAFETY: fd_set is plain data; all zeroes is the empty set (FD_ZERO's result).
        let (mut readable, mut writable): (libc::fd_set, libc::fd_set) = unsafe { std::mem::zeroed() };
        let mut highest = listener.as_raw_fd();
        // SAFETY: every fd put in a set is below FD_SETSIZE (accept refuses the others).
        unsafe { libc::FD_SET(highest, &mut readable) };
        for client in &clients {
            let fd = client.stream.as_raw_fd();
            if client.phase == Phase::Requests {
                // SAFETY: as above.
                unsafe { libc::FD_SET(fd, &mut readable) };
            }
            if !client.output.is_empty() {
                // SAFETY: as above.
                unsafe { libc::FD_SET(fd, &mut writable) };
            }
            highest = highest.max(fd);
        }
        let (no_exceptions, forever) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: the sets are live and hold fds up to `highest`; a null timeout waits until one is ready.
        let ready = unsafe { libc::select(highest + 1, &mut readable, &mut writable, no_exceptions, forever) };
        match check(ready) {
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            result => result.context("select")?,
        };
        // SAFETY: the listener's fd is below FD_SETSIZE, and the set is live.
        if unsafe { libc::FD_ISSET(listener.as_raw_fd(), &readable) } {
            accept(&listener, &mut clients, args.service);
        }
        for client in &mut clients {
            let fd = client.stream.as_raw_fd();
            // SAFETY: fds of clients accepted during this turn are not in the sets, and read as unset.
            if unsafe { libc::FD_ISSET(fd, &readable) } {
                client.receive(&args.root);
            }
            // SAFETY: as above.
            if !client.output.is_empty() && unsafe { libc::FD_ISSET(fd, &writable) } {
                client.send();
            }
        }
        clients.retain(|client| client.phase == Phase::Requests || !client.output.is_empty());
    }
    // lab:end
}
