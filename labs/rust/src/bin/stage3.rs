//! Stage 3: files, over the line protocol, from a sandboxed root: the
//! `stage2-epoll` server plus what a real file server needs. **Framing**:
//! each client's input is cut at newlines, a request may come in pieces or
//! several in one read, a line over 4096 bytes is refused without waiting
//! for its end. **The sandbox**: the spelling is checked (`..`, absolute,
//! hidden, control bytes), then the kernel opens beneath the root's fd
//! (`openat2(RESOLVE_BENEATH)` on Linux, a walk with `O_NOFOLLOW`
//! elsewhere), `O_NONBLOCK` so a FIFO cannot block, `fstat` to send only
//! regular files. **Large files in pieces**: a piece is read when the
//! socket has taken the last one. Reads are still inline: a slow disk
//! stalls every client (stage 4). Cost: one thread; per client its
//! buffers, one open file, 64 KiB.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
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

/// Where a client is in its conversation.
/// The longest request line, the `\r\n` not counted.
const MAX_LINE_BYTES: usize = 4096;
/// The most of a file read into memory at a time.
const PIECE_BYTES: usize = 64 * 1024;

/// Where a client is in its conversation.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// It may send more requests.
    Requests,
    /// It is done (end-of-file, an error, a refusal, or the time sent): close it once `output` is sent.
    Closing,
}

/// A client: what the loop keeps of it between events.
struct Client {
    stream: TcpStream,
    /// Received bytes not yet answered: a partial request, or several.
    input: Vec<u8>,
    /// Bytes owed to the client that the socket has not taken yet.
    output: Vec<u8>,
    /// The file being sent, after what `output` holds of it.
    body: Option<Body>,
    phase: Phase,
    /// What the kernel watches for on its behalf.
    interest: Option<Interest>,
}

/// The rest of a file being sent.
struct Body {
    file: File,
    /// Bytes still to read from it (the size promised in `OK <size>`).
    left: usize,
}

impl Client {
    /// Takes what the client sent, a line past the unanswered at most: one that never reads is read no further.
    fn receive(&mut self) {
        let mut incoming = [0u8; 16 * 1024];
        while self.phase == Phase::Requests && self.input.len() <= MAX_LINE_BYTES + 1 {
            match self.stream.read(&mut incoming) {
                Ok(0) => self.phase = Phase::Closing,
                Ok(n) => self.input.extend_from_slice(&incoming[..n]),
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(_) => self.forget(),
            }
        }
    }

    /// Answers the complete requests in `input`, in order, until one has a
    /// file to send.
    fn answer(&mut self, root: &OwnedFd) {
        // lab:begin
        // lab:todo each complete line of input is one request, answered in order; a line ends at \n, and a
        // lab:todo \r just before it is not part of it. Requests may come in pieces (wait for the rest) or
        // lab:todo several in one read (pipelined: the next is answered once the file before it is sent).
        // lab:todo A line of more than 4096 bytes (\r\n not counted) gets ERR 414 and the client is closed,
        // lab:todo as soon as it is certain, without waiting for a newline that may never come: 4096 bytes
        // lab:todo and a \r, the \n not yet arrived, is still a valid line. An empty line or one with a
        // lab:todo control byte (NUL included) gets ERR 400 and the close. See docs/assignment.md, stage 3.
        while self.body.is_none() && self.phase == Phase::Requests {
            let Some(newline) = self.input.iter().position(|&byte| byte == b'\n') else {
                if self.input.len() > MAX_LINE_BYTES + 1 {
                    self.refuse("414 request line too long");
                }
                return; // the rest of the line is yet to come
            };
            let taken: Vec<u8> = self.input.drain(..=newline).collect();
            let line = taken[..newline].strip_suffix(b"\r").unwrap_or(&taken[..newline]).to_vec();
            if line.len() > MAX_LINE_BYTES {
                return self.refuse("414 request line too long");
            }
            if line.is_empty() || line.iter().any(u8::is_ascii_control) {
                return self.refuse("400 malformed request");
            }
            match open_file(root, &line) {
                Ok((file, size)) => {
                    self.output.extend_from_slice(format!("OK {size}\n").as_bytes());
                    self.body = (size > 0).then_some(Body { file, left: size });
                }
                Err((code, reason)) => self.output.extend_from_slice(format!("ERR {code} {reason}\n").as_bytes()),
            }
        }
        // lab:end
    }

    /// Answers the last request this client may send, then closes it.
    fn refuse(&mut self, code_and_reason: &str) {
        self.output.extend_from_slice(format!("ERR {code_and_reason}\n").as_bytes());
        (self.input, self.phase) = (Vec::new(), Phase::Closing);
    }

    /// Moves answers along: frames requests, reads the file being sent a
    /// piece at a time, sends, until the socket is full or nothing is owed.
    fn pump(&mut self, root: &OwnedFd) {
        // lab:begin
        // lab:todo every byte of a file goes out, exactly its size, even 64 MiB to a client that reads
        // lab:todo slowly, without holding the whole file in memory and without blocking on the socket: a
        // lab:todo piece of the file is read only when the socket has taken what was owed before it, and the
        // lab:todo loop stops at EAGAIN (the next writable event resumes it). When a file is done, the next
        // lab:todo pipelined request is answered. A file that ends early (truncated meanwhile) cannot keep
        // lab:todo its OK <size>: close the client. Read read(2), send(2), epoll(7).
        loop {
            self.answer(root); // only once no file is being sent
            if self.output.is_empty() {
                let Some(body) = &mut self.body else { return };
                let mut piece = vec![0; body.left.min(PIECE_BYTES)];
                match body.file.read(&mut piece) {
                    Ok(n) if n > 0 => {
                        piece.truncate(n);
                        body.left -= n;
                        self.output = piece;
                    }
                    _ => return self.forget(), // shorter than its size: the promise cannot be kept
                }
                if body.left == 0 {
                    self.body = None;
                }
            }
            self.send();
            if !self.output.is_empty() {
                return; // the socket is full: wait for its writable event
            }
        }
        // lab:end
    }

    /// Sends what is owed until it is all sent or the socket is full.
    fn send(&mut self) {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(sent) => drop(self.output.drain(..sent)),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.forget(),
            }
        }
    }

    /// The client is gone or cannot be answered: owe it nothing, close it.
    fn forget(&mut self) {
        (self.phase, self.output, self.body) = (Phase::Closing, Vec::new(), None);
    }

    /// Tells the kernel what to watch for now; false once the client is done.
    fn watch(&mut self, registry: &Registry, token: Token) -> bool {
        let reading = (self.phase == Phase::Requests).then_some(Interest::READABLE);
        let writing = (!self.output.is_empty() || self.body.is_some()).then_some(Interest::WRITABLE);
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
    }
}

/// Opens the file a request names under the root, refusing every way out:
/// the file and its size, or the error's code and reason.
fn open_file(root: &OwnedFd, request: &[u8]) -> std::result::Result<(File, usize), (u16, &'static str)> {
    // lab:begin
    // lab:todo nothing outside the root, ever: .. as a component (anywhere), an absolute path, a hidden
    // lab:todo component (starting with a dot; a lone . is the directory itself, skipped, as are empty
    // lab:todo components: a//b is a/b) get ERR 403 before anything is opened; a symlink is followed while
    // lab:todo it stays inside the root and gets ERR 403 when it leaves it. Opening a FIFO must not block
    // lab:todo the loop, and only a regular file is sent (a directory, FIFO or device: 403); no such file:
    // lab:todo 404; no permission: 403; other errors: 500. Read openat2(2) (RESOLVE_BENEATH), open(2)
    // lab:todo (O_NONBLOCK, O_NOFOLLOW), fstat(2), path_resolution(7).
    if request.starts_with(b"/") {
        return Err((403, "absolute paths are refused"));
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for component in request.split(|&byte| byte == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err((403, "`..` is refused")),
            hidden if hidden.starts_with(b".") => return Err((403, "hidden files are refused")),
            name => parts.push(name),
        }
    }
    let Ok(path) = CString::new(parts.join(&b'/')) else { return Err((400, "NUL in the path")) };
    if parts.is_empty() {
        return Err((403, "the root is a directory"));
    }
    let file = match open_beneath(root, &path) {
        Ok(fd) => File::from(fd),
        Err(err) => {
            return Err(match err.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => (404, "no such file"),
                Some(libc::EXDEV | libc::ELOOP | libc::EMLINK) => (403, "the path leaves the root"),
                Some(libc::EACCES | libc::EPERM) => (403, "permission denied"),
                Some(libc::EISDIR) => (403, "not a regular file"),
                _ => (500, "cannot open the file"),
            })
        }
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() => Ok((file, meta.len() as usize)),
        Ok(_) => Err((403, "not a regular file")),
        Err(_) => Err((500, "cannot stat the file")),
    }
    // lab:end
}

/// Opens `path` beneath `root` with the kernel's own check (Linux 5.6+).
#[cfg(target_os = "linux")]
fn open_beneath(root: &OwnedFd, path: &CStr) -> io::Result<OwnedFd> {
    // lab:begin
    // lab:todo open for reading, never blocking (a FIFO), the kernel resolving every component beneath
    // lab:todo root (an escape, by .. or by a symlink, fails with EXDEV); an older kernel without the
    // lab:todo call (ENOSYS) takes the portable walk; EAGAIN (a rename raced a ..) is worth a retry.
    // lab:todo Read openat2(2), syscall(2).
    // SAFETY: open_how is plain data; zero is "no flags, no mode".
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    let how_size = std::mem::size_of::<libc::open_how>();
    for _ in 0..8 {
        // SAFETY: path is NUL-terminated; how is live and its size is given.
        match check(unsafe { libc::syscall(libc::SYS_openat2, root.as_raw_fd(), path.as_ptr(), &how, how_size) }) {
            // SAFETY: a new fd that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }),
            Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => return open_walking(root, path.to_bytes()),
            Err(err) if err.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
    // lab:end
}

/// Opens `path` beneath `root`: no `openat2` here, so by the portable walk.
#[cfg(not(target_os = "linux"))]
fn open_beneath(root: &OwnedFd, path: &CStr) -> io::Result<OwnedFd> {
    open_walking(root, path.to_bytes())
}

/// `RESOLVE_BENEATH` by hand: each component opened with `O_NOFOLLOW`; a
/// symlink read and its target walked in its place; `..` (from a target)
/// goes up a directory, never above the root; an absolute target: `EXDEV`.
fn open_walking(root: &OwnedFd, path: &[u8]) -> io::Result<OwnedFd> {
    // lab:begin
    // lab:todo the portable way beneath root: one component at a time from the root's fd, never following
    // lab:todo a symlink blindly (read it and walk its target instead, relative to where it sits); .. in a
    // lab:todo target goes up, but never above the root, and an absolute target leaves it (EXDEV); a loop of
    // lab:todo links ends (ELOOP); the last component opens without blocking. Read openat(2) (O_NOFOLLOW,
    // lab:todo O_DIRECTORY), readlinkat(2).
    let error = |errno| Err(io::Error::from_raw_os_error(errno));
    let mut todo: Vec<Vec<u8>> = path.split(|&byte| byte == b'/').rev().map(<[u8]>::to_vec).collect();
    let (mut dirs, mut links): (Vec<OwnedFd>, usize) = (Vec::new(), 0);
    while let Some(component) = todo.pop() {
        let at = dirs.last().unwrap_or(root).as_raw_fd();
        match component.as_slice() {
            b"" | b"." => continue,
            b".." if dirs.pop().is_none() => return error(libc::EXDEV),
            b".." => continue,
            _ => {}
        }
        let last = todo.iter().all(|rest| rest.is_empty() || rest == b".");
        let kind = if last { libc::O_NONBLOCK } else { libc::O_DIRECTORY };
        let name = CString::new(component).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: name is NUL-terminated; openat takes no other pointer.
        match check(unsafe {
            libc::openat(at, name.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | kind)
        }) {
            // SAFETY: a new fd that nothing else owns.
            Ok(fd) if last => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            // SAFETY: the same: a new fd that nothing else owns.
            Ok(fd) => dirs.push(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(err) if matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR | libc::EMLINK)) => {
                let mut target = vec![0u8; 4096];
                // SAFETY: name is NUL-terminated; target is live and its length is given.
                let read = unsafe { libc::readlinkat(at, name.as_ptr(), target.as_mut_ptr().cast(), target.len()) };
                let Ok(length) = check(read) else { return Err(err) }; // not a symlink after all
                target.truncate(length as usize);
                links += 1;
                if target.starts_with(b"/") || links > 40 {
                    return error(if links > 40 { libc::ELOOP } else { libc::EXDEV });
                }
                todo.extend(target.split(|&byte| byte == b'/').rev().map(<[u8]>::to_vec));
            }
            Err(err) => return Err(err),
        }
    }
    error(libc::EISDIR) // the path ends at a directory
                        // lab:end
}

/// The listener's token; clients get the others.
const LISTENER: Token = Token(usize::MAX);

fn serve(args: Args) -> Result<()> {
    let root = File::options().read(true).custom_flags(libc::O_DIRECTORY).open(&args.root);
    let root = OwnedFd::from(root.context("opening the root directory")?);
    let listener = listen(args.port).context(format!("listening on port {}", args.port))?;
    labs::announce(listener.local_addr().context("getsockname")?)?;
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
                    let (input, output, phase) = (Vec::new(), Vec::new(), Phase::Requests);
                    let mut client = Client { stream, input, output, body: None, phase, interest: None };
                    if args.service == Service::Time {
                        client.output = format!("{}\n", rfc3339_utc(SystemTime::now())).into_bytes();
                        client.phase = Phase::Closing;
                    }
                    next_token += 1;
                    client.pump(&root);
                    if client.watch(poll.registry(), Token(next_token)) {
                        clients.insert(Token(next_token), client);
                    }
                }
                continue;
            }
            let Some(client) = clients.get_mut(&token) else { continue };
            client.receive();
            client.watch(poll.registry(), token); // not read at its bound: the next watch re-arms it
            client.pump(&root);
            if !client.watch(poll.registry(), token) {
                clients.remove(&token);
            }
        }
    }
}
