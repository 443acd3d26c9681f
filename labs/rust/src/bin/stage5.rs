//! Stage 5: signals and the cache: the `stage4-threads` server, which an
//! administrator can tell to forget its cache (`SIGHUP`) or to stop
//! (`SIGTERM`, `SIGINT`). A signal handler may run between any two
//! instructions of the loop, so it only records the signal: it sets a flag
//! and writes a byte to a socket the loop polls (the self-pipe trick). The
//! loop does the work: it clears the cache and counts a new generation (a
//! read of a file opened before the clear does not put old bytes back), or
//! it stops accepting, finishes the responses in flight, and exits with 0.
//! Cost: two flags and a socket pair; a syscall per signal.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use labs::{check, Args, Context, Result, Service};
use lru::LruCache;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

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

/// Reader threads: enough for every slow read the grader starts at once.
const READERS: usize = 16;
/// How long a stopping server gives the responses in flight.
const DRAIN: Duration = Duration::from_secs(5);
/// Files the cache keeps (each at most one piece).
const CACHE_FILES: NonZeroUsize = NonZeroUsize::new(1024).unwrap();

type Done = (FileRead, io::Result<Vec<u8>>);

/// A read for a reader thread; the file moves to it, and back with the bytes (`Done`).
struct FileRead {
    token: Token,
    file: File,
    len: usize,
    delay: Duration,
}

/// What every client's handling uses; the cache keeps small files whole, by request line.
struct Server {
    root: OwnedFd,
    cache: LruCache<Vec<u8>, Vec<u8>>,
    readers: Sender<FileRead>,
    delay: Duration,
    /// Counts the cache's clears: bytes read from a file opened in an older generation are stale.
    generation: u64,
}

/// The longest request line, the `\r\n` not counted.
const MAX_LINE_BYTES: usize = 4096;
/// The most of a file read into memory at a time.
const PIECE_BYTES: usize = 64 * 1024;

/// Where a client is: it may send requests, or it is closed once `output` is sent.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Requests,
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
    /// The file; `None` while a reader thread holds it.
    file: Option<File>,
    /// Bytes still to read from it (the size promised in `OK <size>`).
    left: usize,
    /// No piece read yet: the next read is a cache miss, and slow.
    fresh: bool,
    /// The request line to cache the file under, if it is read whole.
    cache_as: Option<Vec<u8>>,
    /// The cache's generation when the file was opened.
    generation: u64,
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

    /// Answers the complete requests in `input`, in order, until one has a file to send.
    fn answer(&mut self, server: &mut Server) {
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
            if let Some(bytes) = server.cache.get(&line) {
                self.output.extend_from_slice(format!("OK {}\n", bytes.len()).as_bytes());
                self.output.extend_from_slice(bytes);
                return; // pump sends it before the next: what a client is owed stays one file
            }
            let cache_as = Some(line.clone());
            match open_file(&server.root, &line) {
                Ok((file, size)) => {
                    self.output.extend_from_slice(format!("OK {size}\n").as_bytes());
                    let cache_as = cache_as.filter(|_| size <= PIECE_BYTES);
                    self.body = (size > 0).then_some(Body {
                        file: Some(file),
                        left: size,
                        fresh: true,
                        cache_as,
                        generation: 0,
                    });
                    // lab:begin
                    // lab:todo the file was opened in this generation of the cache (the count of SIGHUPs).
                    self.body.iter_mut().for_each(|body| body.generation = server.generation);
                    // lab:stub
                    // lab:end
                }
                Err((code, reason)) => self.output.extend_from_slice(format!("ERR {code} {reason}\n").as_bytes()),
            }
        }
    }

    /// Answers the last request this client may send, then closes it.
    fn refuse(&mut self, code_and_reason: &str) {
        self.output.extend_from_slice(format!("ERR {code_and_reason}\n").as_bytes());
        (self.input, self.phase) = (Vec::new(), Phase::Closing);
    }

    /// Moves answers along until the socket is full, a read is pending, or nothing is owed.
    fn pump(&mut self, server: &mut Server, token: Token) {
        loop {
            self.answer(server); // only once no file is being sent
            if self.output.is_empty() {
                let Some(body) = &mut self.body else { return };
                if let Some(file) = body.file.take() {
                    let delay = if std::mem::take(&mut body.fresh) { server.delay } else { Duration::ZERO };
                    let read = FileRead { token, file, len: body.left.min(PIECE_BYTES), delay };
                    if server.readers.send(read).is_err() {
                        return self.forget();
                    }
                }
                return;
            }
            self.send();
            if !self.output.is_empty() {
                return; // the socket is full: wait for its writable event
            }
        }
    }

    /// Takes a finished read: its bytes are owed to the client.
    fn finish_read(&mut self, (read, bytes): Done, server: &mut Server) {
        let Some(body) = &mut self.body else { return }; // forgotten meanwhile: the file closes here
        body.file = Some(read.file);
        match bytes {
            Ok(bytes) if !bytes.is_empty() => {
                body.left -= bytes.len();
                let cache_as = body.cache_as.take().filter(|_| body.left == 0);
                // lab:begin
                // lab:todo never cache bytes of a file opened before the last SIGHUP: a read in flight when the
                // lab:todo cache was cleared would put the old content back, served until the next SIGHUP.
                let cache_as = cache_as.filter(|_| body.generation == server.generation);
                // lab:stub
                // lab:end
                if let Some(key) = cache_as {
                    server.cache.put(key, bytes.clone());
                }
                self.output = bytes;
                self.body.take_if(|body| body.left == 0);
            }
            _ => self.forget(),
        }
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
        let mut wanted = (self.phase == Phase::Requests).then_some(Interest::READABLE);
        if !self.output.is_empty() || self.body.is_some() {
            wanted = Some(wanted.map_or(Interest::WRITABLE, |read| read | Interest::WRITABLE));
        }
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

/// Opens the file a request names under the root: the file and its size, or a refusal.
fn open_file(root: &OwnedFd, request: &[u8]) -> std::result::Result<(File, usize), (u16, &'static str)> {
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
}

/// Opens `path` beneath `root` with the kernel's own check (Linux 5.6+).
#[cfg(target_os = "linux")]
fn open_beneath(root: &OwnedFd, path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; zero is "no flags, no mode".
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    let how_size = std::mem::size_of::<libc::open_how>();
    // SAFETY: path is NUL-terminated; how is live and its size is given.
    match check(unsafe { libc::syscall(libc::SYS_openat2, root.as_raw_fd(), path.as_ptr(), &how, how_size) }) {
        // SAFETY: a new fd that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }),
        Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => open_walking(root, path.to_bytes()),
        Err(err) => Err(err),
    }
}

/// Opens `path` beneath `root`: no `openat2` here, so by the portable walk.
#[cfg(not(target_os = "linux"))]
fn open_beneath(root: &OwnedFd, path: &CStr) -> io::Result<OwnedFd> {
    open_walking(root, path.to_bytes())
}

/// `RESOLVE_BENEATH` by hand: each component opened with `O_NOFOLLOW`, a symlink's target
/// walked in its place; `..` (from a target) never above the root; an absolute target: `EXDEV`.
fn open_walking(root: &OwnedFd, path: &[u8]) -> io::Result<OwnedFd> {
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
}

/// Starts the reader threads, which send each read back on `done` and wake the loop.
fn spawn_readers(done: Sender<Done>, waker: Arc<Waker>) -> Sender<FileRead> {
    let (reads, queue) = mpsc::channel::<FileRead>();
    let queue = Arc::new(Mutex::new(queue));
    for _ in 0..READERS {
        let (queue, done, waker) = (Arc::clone(&queue), done.clone(), Arc::clone(&waker));
        std::thread::spawn(move || loop {
            // The lock is released as soon as a read is taken: the others wait for the next one.
            let Ok(Ok(mut read)) = queue.lock().map(|queue| queue.recv()) else { return };
            std::thread::sleep(read.delay);
            let mut bytes = vec![0; read.len];
            let bytes = read.file.read(&mut bytes).map(|n| bytes[..n].to_vec());
            if done.send((read, bytes)).is_err() || waker.wake().is_err() {
                return; // the loop is gone
            }
        });
    }
    reads
}

/// What the signal handlers record, for the loop to act on.
struct Signals {
    /// SIGHUP came: clear the cache.
    hangup: Arc<AtomicBool>,
    /// SIGTERM or SIGINT came: stop.
    stop: Arc<AtomicBool>,
    /// Readable once a signal came (the self-pipe's read end).
    wake: mio::net::UnixStream,
}

/// Installs the handlers of SIGHUP, SIGTERM and SIGINT.
fn listen_for_signals(registry: &Registry) -> io::Result<Signals> {
    // lab:begin
    // lab:todo SIGHUP, SIGTERM and SIGINT are recorded by handlers that do nothing else (a handler runs
    // lab:todo between any two instructions of the loop: it may only set a flag and write a byte, in that
    // lab:todo order, never touch the cache or allocate), and the loop wakes from its poll to act on them;
    // lab:todo SIGHUP never stops the server, even 50 of them under load. Read signal(7), signal-safety(7),
    // lab:todo and the docs of signal_hook::flag and signal_hook::low_level::pipe.
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let (hangup, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (loop_end, handler_end) = std::os::unix::net::UnixStream::pair()?;
    for (signal, flag) in [(SIGHUP, &hangup), (SIGTERM, &stop), (SIGINT, &stop)] {
        signal_hook::flag::register(signal, Arc::clone(flag))?; // first the flag, then the byte
        signal_hook::low_level::pipe::register(signal, handler_end.try_clone()?)?;
    }
    loop_end.set_nonblocking(true)?;
    let mut wake = mio::net::UnixStream::from_std(loop_end);
    registry.register(&mut wake, SIGNALS, Interest::READABLE)?;
    Ok(Signals { hangup, stop, wake })
    // lab:end
}

/// The tokens of the listener, the readers' wake-ups and the signals; clients get the others.
const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

fn serve(args: Args) -> Result<()> {
    let root = File::options().read(true).custom_flags(libc::O_DIRECTORY).open(&args.root);
    let root = OwnedFd::from(root.context("opening the root directory")?);
    let listener = listen(args.port).context(format!("listening on port {}", args.port))?;
    labs::announce(listener.local_addr().context("getsockname")?)?;
    listener.set_nonblocking(true).context("making the listener non-blocking")?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let mut poll = Poll::new().context("epoll_create")?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE).context("registering the listener")?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).context("creating the waker")?);
    let (done, finished): (Sender<Done>, Receiver<Done>) = mpsc::channel();
    let readers = spawn_readers(done, waker);
    let mut signals = listen_for_signals(poll.registry()).context("installing the signal handlers")?;
    let cache = LruCache::new(CACHE_FILES);
    let mut server = Server { root, cache, readers, delay: args.read_delay(), generation: 0 };
    let mut stopping: Option<Instant> = None;
    let mut events = Events::with_capacity(256);
    let mut clients: HashMap<Token, Client> = HashMap::new();
    let mut next_token = 0;
    loop {
        let timeout = stopping.map(|since| (since + DRAIN).saturating_duration_since(Instant::now()));
        match poll.poll(&mut events, timeout) {
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
                    client.pump(&mut server, Token(next_token));
                    if client.watch(poll.registry(), Token(next_token)) {
                        clients.insert(Token(next_token), client);
                    }
                }
                continue;
            }
            if token == SIGNALS {
                // lab:begin
                // lab:todo act on what the handlers recorded. SIGHUP: the cache is emptied (a line on stderr
                // lab:todo that starts with "cache cleared"), and reads in flight may not refill it. SIGTERM or
                // lab:todo SIGINT: stop accepting, let the responses in flight finish (a few seconds at most),
                // lab:todo then return, exit status 0. Empty the socket before reading the flags, or a signal
                // lab:todo that comes in between is lost.
                while signals.wake.read(&mut [0; 64]).is_ok_and(|n| n > 0) {}
                if signals.hangup.swap(false, Ordering::Relaxed) {
                    server.cache.clear();
                    server.generation += 1;
                    eprintln!("cache cleared (generation {})", server.generation);
                }
                if signals.stop.load(Ordering::Relaxed) && stopping.is_none() {
                    stopping = Some(Instant::now());
                    poll.registry().deregister(&mut listener).context("deregistering the listener")?;
                    eprintln!("stopping: finishing {} connections", clients.len());
                }
                // lab:end
                continue;
            }
            // A client's event moves that client on; the readers' wake moves those whose reads finished.
            let mut woken = vec![token];
            if token == WAKER {
                woken.clear();
                while let Ok(done) = finished.try_recv() {
                    woken.push(done.0.token);
                    let Some(reader) = clients.get_mut(&done.0.token) else { continue };
                    reader.finish_read(done, &mut server);
                }
            }
            for token in woken {
                let Some(client) = clients.get_mut(&token) else { continue };
                client.receive();
                client.watch(poll.registry(), token); // not read at its bound: the next watch re-arms it
                client.pump(&mut server, token);
                if !client.watch(poll.registry(), token) {
                    clients.remove(&token);
                }
            }
        }
        if let Some(since) = stopping {
            // lab:begin
            // lab:todo while stopping, no new request is taken; a client owed nothing (no bytes, no file) is
            // lab:todo closed; once none is left, or the drain's time is up, serve returns Ok (exit status 0).
            clients.values_mut().for_each(|client| client.phase = Phase::Closing); // no new requests
            clients.retain(|_, client| !client.output.is_empty() || client.body.is_some());
            if clients.is_empty() || since.elapsed() >= DRAIN {
                return Ok(());
            }
            // lab:end
        }
    }
}
