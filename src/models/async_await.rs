//! Stage 2, the async/await side path: a tokio task per connection.
//!
//! **What it teaches.** [`serve_connection`] is the iterative server's
//! loop again (read a request, answer it, write the answer, repeat),
//! written top to bottom as an `async fn`. The compiler turns it into the
//! state machine that [`Conn`](crate::conn::Conn) writes by hand: each
//! `.await` is a state, and the locals alive across it (the parser, the
//! queued output, the deadlines) are the fields of the anonymous future it
//! builds. The tokio runtime adds the rest of an event loop: a scheduler
//! that polls the futures whose wakers fired, a reactor (mio, so epoll)
//! that fires them, timers, and a pool for blocking work.
//! `docs/guide/02d-async-await.md` sets the two side by side and measures them.
//!
//! **How it differs from `event`.** The readiness loop, the connection
//! table and the sweep for expired connections are gone: tokio's reactor
//! waits, each connection's deadlines are a `select!` against a timer,
//! and a graceful stop reaches every connection through a `watch` channel.
//! The shared core is the same: [`Parser`], [`Service::plan`], the
//! sandbox and the cache, [`Output`] with `writev`/`sendfile`, the limits.
//!
//! **Where blocking work runs.** On tokio's blocking pool, with
//! `spawn_blocking(|| work.run_blocking())`: one trip per request for the
//! whole read (after `--read-delay-ms`), the cache insert and fib. Not
//! `tokio::fs`: it too runs each call on the blocking pool, but it would
//! pay a trip per `read` call and re-implement the read the core already
//! has ([`Work::run_blocking`]); the file itself was opened by the sandbox
//! while planning, as in every model. At most `--readers` pool threads.
//!
//! **`--workers N`.** `--runtime` says which of two shapes. The default,
//! `multi-thread`: N worker threads of one runtime (one per core, as
//! `#[tokio::main]`); an idle worker steals ready tasks from a busy one.
//! `current-thread-per-core`: N current-thread runtimes, each on its own
//! thread and `SO_REUSEPORT` listener ([`fan_out`], as `event --workers N`),
//! sharing the service and its cache, one `--max-conns` semaphore (not the
//! limit divided: the kernel does not spread connections evenly), and
//! `--readers` divided among their blocking pools; the first clears the
//! cache at `SIGHUP`, all stop at `SIGTERM`. Measured side by side (the
//! figures are in `docs/guide/02d-async-await.md`), the runtime per core
//! is ahead where nothing blocks and level under slow storage, with the
//! worse p99 more often than not. The default stays `multi-thread`: it balances
//! connections that the kernel's hash did not, a task that blocks by
//! mistake stalls one worker rather than a whole runtime's connections,
//! and it is the runtime most Rust servers run.
//!
//! ```text
//! server --model tokio --root fixtures
//! server --model tokio --runtime current-thread-per-core --root fixtures
//! ```

use std::future::Future;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::SIGHUP;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use crate::config::Runtime;
use crate::conn::{refuse, Limits, LINGER_MAX_BYTES, LINGER_TIME, LINGER_TIMEOUT, MAX_QUEUED_OUTPUT_BYTES};
use crate::error::ServerError;
use crate::fan_out::{self, Seat};
use crate::log::info;
use crate::net::{sort_accept_error, Accepted, FD_EXHAUSTION_PAUSE};
use crate::output::{Flushed, Output, Sink, Then};
use crate::protocol::{Framing, Malformed, Parser, Request, Response};
use crate::refusal::Refusal;
use crate::server::Server;
use crate::service::{Plan, Service, Work};
use crate::signals::{self, STOP_GRACE};

/// How long an idle blocking-pool thread lives (as `event-async`'s readers).
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Runs the `tokio` model: builds the runtime (or, with `--runtime
/// current-thread-per-core`, one per worker), then serves until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    // A permit per connection, one count for every runtime: `--max-conns`
    // holds in all, and at a stop, a count to wait for.
    let slots = Arc::new(Semaphore::new(server.max_open_conns));
    match server.config.runtime {
        Runtime::MultiThread => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(server.workers)
                .max_blocking_threads(server.config.readers)
                .thread_keep_alive(BLOCKING_KEEP_ALIVE)
                .thread_name("tokio")
                .enable_io()
                .enable_time()
                .build()
                .map_err(ServerError::io("cannot start the tokio runtime"))?;
            serve_on(runtime, accept_until_stopped(&server, None, &slots))
        }
        // `event`'s fan-out: a thread and a `SO_REUSEPORT` listener per worker.
        Runtime::CurrentThreadPerCore => fan_out::run_per_worker(&server, |server, seat| {
            let built = tokio::runtime::Builder::new_current_thread()
                .max_blocking_threads(server.config.readers.div_ceil(server.workers))
                .thread_keep_alive(BLOCKING_KEEP_ALIVE)
                .thread_name("tokio")
                .enable_io()
                .enable_time()
                .build();
            match built {
                Ok(runtime) => serve_on(runtime, accept_until_stopped(server, Some(seat), &slots)),
                Err(err) => seat.take_place::<()>(Err(err)).map(drop), // the others must not wait for it
            }
        }),
    }
}

/// Runs `serving` on `runtime` to the end.
fn serve_on(
    runtime: tokio::runtime::Runtime,
    serving: impl Future<Output = Result<(), ServerError>>,
) -> Result<(), ServerError> {
    let outcome = runtime.block_on(serving);
    // Blocking work still running (a fib past the grace period) is not waited for.
    runtime.shutdown_background();
    outcome
}

/// The accept loop: a task per connection, `SIGHUP` clears the cache,
/// `SIGINT`/`SIGTERM` stop accepting and let the connections finish.
/// `seat` is this runtime's place among several (`None`: the only one).
async fn accept_until_stopped(
    server: &Server,
    seat: Option<Seat<'_>>,
    slots: &Arc<Semaphore>,
) -> Result<(), ServerError> {
    let listener = seat.as_ref().map_or(&server.listener, |seat| seat.listener);
    let set_up = || -> io::Result<_> {
        let listener = listener.try_clone()?;
        listener.set_nonblocking(true)?;
        let signals =
            [signal(SignalKind::hangup())?, signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?];
        Ok((TcpListener::from_std(listener)?, signals))
    };
    // One runtime clears the cache (and logs it) once; every runtime stops.
    let (first, set_up) = match &seat {
        None => (true, Some(set_up().map_err(ServerError::io("cannot set up the tokio runtime"))?)),
        Some(seat) => (seat.signals().contains(&SIGHUP), seat.take_place(set_up())?),
    };
    let Some((listener, [mut hangup, mut interrupt, mut terminate])) = set_up else {
        return Ok(()); // another runtime could not set up, and says why
    };
    if seat.is_none() {
        server.announce()?;
    }
    let (stop, stopping) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => match Arc::clone(slots).try_acquire_owned() {
                    Ok(slot) => {
                        let (service, limits, stopping) = (Arc::clone(&server.service), server.limits, stopping.clone());
                        tokio::spawn(async move {
                            serve_connection(stream, &service, limits, stopping).await;
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        if let Ok(stream) = stream.into_std() {
                            refuse(stream, Refusal::Overloaded);
                        }
                    }
                },
                Err(err) => {
                    if let Accepted::Pause = sort_accept_error(&err) {
                        tokio::time::sleep(FD_EXHAUSTION_PAUSE).await;
                    }
                }
            },
            _ = hangup.recv(), if first => signals::clear_cache(&server.service),
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    drop(listener); // accept no more (as the other models, the listening socket itself closes at exit)
    let _ = stop.send(true);
    crate::trace::instant("stop signal", [None; 2]);
    if first {
        signals::log_stopping(server.max_open_conns - slots.available_permits());
    }
    let every_slot = u32::try_from(server.max_open_conns).unwrap_or(u32::MAX);
    if timeout(STOP_GRACE, slots.acquire_many(every_slot)).await.is_err() {
        info!("stop grace period over: exiting with connections unfinished");
    }
    Ok(())
}

/// One connection, start to finish: the whole per-connection protocol as
/// straight-line code. Returning drops (closes) the socket.
///
/// Every `.await` here can be cancelled (the future dropped) only by the
/// `select!`s below, and each of those waits holds no bytes of its own:
/// what was read is in `parser`, what is owed is in `output`, both locals
/// of this function, so a timer or a stop that wins a race loses nothing.
async fn serve_connection(stream: TcpStream, service: &Service, limits: Limits, mut stopping: watch::Receiver<bool>) {
    let mut output = Output::default();
    if let Some(greeting) = service.greeting() {
        output.push_bytes(greeting);
        let _ = send(&stream, &mut output, Then::CloseClean, limits.write_timeout).await;
        return;
    }
    let mut parser = Parser::new(limits.parse);
    let mut last_progress; // set once the first answer is sent, before any wait
    let mut request_started: Option<Instant> = None;
    let mut end_of_stream = false;
    let mut closing = false;
    let mut refused_mid_stream = false; // the stream is out of step: the client may still be sending
    loop {
        // 1. Answer every request already buffered (pipelined), in order,
        // until the output cap (backpressure) or a response that closes.
        let mut at_cap = false;
        while !closing {
            if output.queued_bytes() >= MAX_QUEUED_OUTPUT_BYTES {
                at_cap = true;
                break;
            }
            let Some(parsed) = parser.next_request() else { break };
            // The next request's clock starts with its first byte, which
            // may already be buffered behind this one.
            request_started = parser.has_partial_request().then(Instant::now);
            let (framing, response) = answer(parsed, service).await;
            let refusal_closes = matches!(&response, Response::Refused(refusal) if refusal.closes_connection());
            refused_mid_stream |= refusal_closes;
            closing = refusal_closes || framing.closes_after() || *stopping.borrow();
            output.push_response(framing, response);
        }

        // 2. Send what is owed.
        let then = if closing && parser.has_used_all_input() { Then::CloseClean } else { Then::SendNow };
        if send(&stream, &mut output, then, limits.write_timeout).await.is_err() {
            return; // the peer is gone, or stopped reading
        }
        last_progress = Instant::now();
        if closing {
            if refused_mid_stream || !parser.has_used_all_input() {
                close_staged(&stream).await;
            }
            return;
        }
        if at_cap {
            continue; // more requests may be buffered
        }
        if end_of_stream || *stopping.borrow() {
            return;
        }

        // 3. Wait for more of the request, until its deadline or a stop.
        let deadline = match request_started {
            Some(started) => started + limits.request_timeout,
            None => last_progress + limits.idle_timeout,
        };
        tokio::select! {
            read = read_some(&stream, &mut parser) => match read {
                Ok(0) => end_of_stream = true,
                Ok(_) => {
                    last_progress = Instant::now();
                    request_started.get_or_insert(last_progress);
                }
                Err(_) => return,
            },
            () = sleep_until(deadline) => return, // too slow, or idle too long
            _ = stopping.changed() => return, // a stop: nothing is in flight or owed
        }
    }
}

/// The response to one parsed request, and how to frame it. Blocking work
/// (a file read, fib) leaves the runtime's threads for the blocking pool.
async fn answer(parsed: Result<Request, Malformed>, service: &Service) -> (Framing, Response) {
    let _traced = crate::trace::request(); // --trace: the request's slice, until answered
    let request = match parsed {
        Ok(request) => request,
        Err(malformed) => return (malformed.framing, Response::Refused(malformed.refusal)),
    };
    let response = match service.plan(&request) {
        Plan::Ready(response) => response,
        Plan::Blocking(work) => run_elsewhere(work).await,
    };
    (request.framing, response)
}

/// Runs `work` on the blocking pool and waits for it without holding a
/// runtime thread. Dropping the wait would not stop the work: it finishes,
/// and its content goes to the cache if the cache's generation allows.
async fn run_elsewhere(work: Work) -> Response {
    tokio::task::spawn_blocking(move || work.run_blocking()).await.unwrap_or(Response::Refused(Refusal::Internal))
}

/// The staged close (RFC 9112 section 9.6; `conn`'s module doc says why):
/// the response is out, so shut down the write side and read and discard
/// until the client's FIN, for at most [`LINGER_TIME`] in all,
/// [`LINGER_TIMEOUT`] without a byte and [`LINGER_MAX_BYTES`], so that the
/// close does not reset bytes the client has not read yet.
async fn close_staged(stream: &TcpStream) {
    if rustix::net::shutdown(stream.as_fd(), rustix::net::Shutdown::Write).is_err() {
        return;
    }
    let began = Instant::now();
    let mut discarded = 0u64;
    while discarded < LINGER_MAX_BYTES {
        let deadline = (began + LINGER_TIME).min(Instant::now() + LINGER_TIMEOUT);
        match timeout_at(deadline, discard_some(stream)).await {
            Ok(Ok(read)) if read > 0 => discarded += read as u64,
            _ => return, // the client's FIN, an error, or time is up
        }
    }
}

/// One `read` whose bytes are thrown away, once the socket is readable.
async fn discard_some(stream: &TcpStream) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || Parser::discard_from(&mut Socket(stream.as_fd()))) {
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            read => return read,
        }
    }
}

/// One `read` into the parser, once the socket is readable. Cancel-safe:
/// the bytes move into `parser` in the same step that reads them.
async fn read_some(stream: &TcpStream, parser: &mut Parser) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || parser.read_from(&mut Socket(stream.as_fd()))) {
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            read => return read,
        }
    }
}

/// Writes everything queued in `output`, waiting for the socket to take it;
/// an error if the peer is gone or if no byte moves for `write_timeout`.
async fn send(stream: &TcpStream, output: &mut Output, then: Then, write_timeout: Duration) -> io::Result<()> {
    while !output.is_empty() {
        // `Partly` means the socket said `WouldBlock`: tokio must hear it
        // (through `try_io`) to clear its readiness, or `writable` would
        // return at once, for ever.
        let wrote = stream.try_io(Interest::WRITABLE, || match output.write_to(&mut Socket(stream.as_fd()), then)? {
            Flushed::All => Ok(()),
            Flushed::Partly => Err(io::ErrorKind::WouldBlock.into()),
        });
        match wrote {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
        timeout(write_timeout, stream.writable()).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    }
    Ok(())
}

/// The connection's socket as the shared core reads and writes it: plain
/// non-blocking syscalls on the fd, inside [`TcpStream::try_io`].
struct Socket<'a>(BorrowedFd<'a>);

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(self.0, buf)?)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A peer that has gone away is an error here, never a SIGPIPE; on
        // macOS, where send(2) has no such flag, Rust's runtime already
        // ignores SIGPIPE for the whole process.
        #[cfg(not(target_os = "macos"))]
        let flags = rustix::net::SendFlags::NOSIGNAL;
        #[cfg(target_os = "macos")]
        let flags = rustix::net::SendFlags::empty();
        Ok(rustix::net::send(self.0, buf, flags)?)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(rustix::io::writev(self.0, bufs)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Socket<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0
    }
}

impl Sink for Socket<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::FileCache;
    use crate::config::ServiceKind;
    use crate::sandbox::Root;
    use std::mem::size_of;

    /// The size of the state a connection keeps between events, measured:
    /// the future of [`serve_connection`] against the hand-written `Conn`
    /// and the event loops' table entry. The guide quotes this output
    /// (`cargo test --lib connection_state_sizes -- --nocapture`).
    #[test]
    fn connection_state_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path(), false).unwrap();
        let service = Service::new(ServiceKind::File, root, Arc::new(FileCache::new(0, 0)), Duration::ZERO);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let future_bytes = runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let (_stop, stopping) = watch::channel(false);
            let connection = serve_connection(stream, &service, Limits::default(), stopping);
            std::mem::size_of_val(&connection)
        });
        let conn_bytes = size_of::<crate::conn::Conn>();
        let client_bytes = size_of::<crate::connections::Connection<std::net::TcpStream>>();
        println!("serve_connection future: {future_bytes} bytes");
        println!("Conn: {conn_bytes} bytes; Connection<TcpStream> (Conn + socket + flags): {client_bytes} bytes");
        println!(
            "tokio::time::Sleep (one of the futures its select! holds): {} bytes",
            size_of::<tokio::time::Sleep>()
        );
        // Both hold the same core (a Parser and an Output); the future adds
        // the socket, the locals alive across its awaits and the awaited
        // futures themselves, but not a stack: well under a page.
        assert!(future_bytes > conn_bytes / 2 && future_bytes < 4096, "{future_bytes} bytes");
    }
}
