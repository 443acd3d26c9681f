//! The tests, stage by stage. Each proves one property of the contract
//! (`docs/assignment.md`) from the outside, with a deadline, and says on
//! failure what was sent, what was expected, what came back, and what to
//! look at.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustix::process::Signal;

use super::fixture::{many_file, pattern, Fixture, HIDDEN, LARGE_REPLY, MANY_FILES, SECRET, SLOW_FILES};
use super::target::{Setup, Target};
use super::wire::{contains, fetch, preview, Conn, Reply};

/// Simulated storage delay of the stage-4 server, in ms.
pub const SLOW_DELAY_MS: u64 = 250;
/// Simulated storage delay of the stage-6 comparison, in ms.
pub const BENCH_DELAY_MS: u64 = 10;

/// What a failed test saw.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What the grader sent.
    pub sent: String,
    /// What the contract asks for.
    pub expected: String,
    /// What came back.
    pub got: String,
    /// Where to look.
    pub hint: &'static str,
    /// The bytes sent on one connection that show the failure, when one
    /// connection does: the report turns them into a line to paste
    /// ([`super::report::replay_line`]). `Some(empty)`: connect, send nothing.
    pub request: Option<Box<[u8]>>,
    /// [`Failure::request`] as a line to paste, once the address is known.
    pub replay: Option<Box<str>>,
}

/// How one test ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The property holds; perhaps with a note (measurements).
    Pass(Option<String>),
    /// It does not.
    Fail(Failure),
    /// It could not be tested here, and why.
    Skip(String),
}

/// What a test works with.
pub struct Ctx<'a> {
    /// The server under test, set up as the test asked.
    pub target: &'a mut Target,
    /// The files it serves.
    pub fixture: &'a Fixture,
    /// Deadlines are multiplied by this (slow machines).
    pub stretch: f64,
    /// The kit's reference `server`, for stage 6's side-by-side run.
    pub reference: Option<std::path::PathBuf>,
}

impl Ctx<'_> {
    fn budget(&self, seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds * self.stretch)
    }

    fn addr(&self) -> SocketAddr {
        self.target.addr
    }
}

/// One test of the catalog.
pub struct Check {
    /// Stable name, used in reports, JSON and the config's `[points]`.
    pub name: &'static str,
    /// The stage of the assignment it belongs to.
    pub stage: u8,
    /// Default points.
    pub points: u32,
    /// One line: what it proves.
    pub description: &'static str,
    /// The server it needs.
    pub setup: Setup,
    /// Whether it needs a server the grader started (signals, /proc).
    pub needs_local: bool,
    /// Whether the server is meant to exit during it (SIGTERM): its exit
    /// is the test's business, not a death to report.
    pub ends_server: bool,
    /// The test.
    pub run: fn(&mut Ctx) -> Outcome,
}

fn fail(sent: impl Into<String>, expected: impl Into<String>, got: impl Into<String>, hint: &'static str) -> Outcome {
    Outcome::Fail(Failure {
        sent: sent.into(),
        expected: expected.into(),
        got: got.into(),
        hint,
        request: None,
        replay: None,
    })
}

/// `outcome`, with `request` as its replay if it failed without one.
fn replaying(outcome: Outcome, request: &[u8]) -> Outcome {
    match outcome {
        Outcome::Fail(mut failure) => {
            failure.request.get_or_insert_with(|| request.into());
            Outcome::Fail(failure)
        }
        other => other,
    }
}

/// The request line for `path`.
fn line(path: &[u8]) -> Vec<u8> {
    [path, b"\n"].concat()
}

const FILES: Setup = Setup::Files { delay_ms: 0 };

/// Every test, in the order they run.
pub fn catalog() -> Vec<Check> {
    let check = |name, stage, points, description, setup, run| Check {
        name,
        stage,
        points,
        description,
        setup,
        needs_local: false,
        ends_server: false,
        run,
    };
    let local = |check: Check| Check { needs_local: true, ..check };
    let ending = |check: Check| Check { ends_server: true, ..check };
    vec![
        check(
            "time.one_line",
            1,
            3,
            "the time service sends one RFC 3339 UTC line, then closes",
            Setup::Time,
            time_one_line,
        ),
        check("time.many_clients", 1, 2, "five clients in a row each get the time", Setup::Time, time_many_clients),
        check(
            "concurrency.stalled_client",
            2,
            5,
            "a client stalled mid-request does not stop another",
            FILES,
            stalled_client,
        ),
        check("concurrency.many_clients", 2, 3, "20 connected clients are all answered", FILES, many_clients),
        check(
            "concurrency.large_reply",
            2,
            3,
            "a reply larger than the socket buffers, to a client that stalls, arrives whole while another is served",
            FILES,
            large_reply,
        ),
        check(
            "concurrency.stalled_reader",
            2,
            5,
            "a client that stops reading a large reply does not stop another",
            FILES,
            stalled_reader,
        ),
        check(
            "concurrency.past_fd_setsize",
            2,
            2,
            "1,100 clients at once (descriptors past FD_SETSIZE): each gets OK or ERR 503, and the server lives",
            FILES,
            past_fd_setsize,
        ),
        check("files.small", 3, 2, "a small file, byte for byte", FILES, |c| file_exact(c, "small.txt")),
        check("files.empty", 3, 1, "an empty file: OK 0", FILES, |c| file_exact(c, "empty.txt")),
        check("files.one_mib", 3, 2, "a 1 MiB file, byte for byte", FILES, |c| file_exact(c, "1m.bin")),
        check("files.64_mib", 3, 3, "a 64 MiB file, byte for byte", FILES, |c| file_exact(c, "64m.bin")),
        check("files.spaces", 3, 1, "a name with spaces", FILES, |c| file_exact(c, "name with spaces.txt")),
        check("files.two_dots", 3, 1, "a..b.txt is a name, not an escape", FILES, |c| file_exact(c, "a..b.txt")),
        check("files.nested", 3, 1, "a file in a subdirectory", FILES, |c| file_exact(c, "dir/sub/nested.txt")),
        check("files.dot_components", 3, 1, "a lone `.` component is the directory itself: skipped", FILES, |c| {
            file_as(c, &[("./small.txt", "small.txt"), ("dir/./sub/./nested.txt", "dir/sub/nested.txt")])
        }),
        check("files.empty_components", 3, 1, "empty components (`a//b`) are merged", FILES, |c| {
            file_as(
                c,
                &[("dir//sub///nested.txt", "dir/sub/nested.txt"), ("dir/sub//nested.txt", "dir/sub/nested.txt")],
            )
        }),
        check("files.symlink_inside", 3, 1, "a symlink that stays inside the root is followed", FILES, |c| {
            file_as(c, &[("in-link", "small.txt")])
        }),
        check("files.missing", 3, 1, "a missing file: ERR 404", FILES, |c| refused(c, &[b"no-such-file.txt"], &[404])),
        check("files.unreadable", 3, 1, "a file the server may not read: ERR 403", FILES, unreadable),
        check("files.directory", 3, 1, "a directory: ERR 403", FILES, |c| refused(c, &[b"dir", b"dir/sub"], &[403])),
        check("files.fifo", 3, 1, "a FIFO: ERR 403, and the server does not hang", FILES, fifo),
        check("sandbox.dotdot", 3, 4, "`..` in every spelling: nothing from outside the root", FILES, sandbox_dotdot),
        check("sandbox.absolute", 3, 2, "absolute paths: nothing from outside the root", FILES, sandbox_absolute),
        check("sandbox.symlinks", 3, 3, "symlinks that leave the root: ERR 403", FILES, sandbox_symlinks),
        check("sandbox.control_bytes", 3, 1, "NUL and control bytes: refused", FILES, sandbox_control),
        check("sandbox.hidden", 3, 1, "hidden files: ERR 403", FILES, |c| refused(c, &[b".hidden"], &[403])),
        check("sandbox.overlong", 3, 1, "a line over 4096 bytes: ERR 414", FILES, overlong),
        check("protocol.crlf", 3, 1, "a `\\r` before the `\\n` is not part of the path", FILES, crlf),
        check(
            "protocol.line_limit",
            3,
            1,
            "4096 bytes before `\\r\\n` are served; 4097 get ERR 414",
            FILES,
            line_limit,
        ),
        check(
            "protocol.line_limit_split",
            3,
            1,
            "4096 bytes and a `\\r` in one write, the `\\n` in the next: served",
            FILES,
            line_limit_split,
        ),
        check("protocol.pipelined", 3, 3, "five requests in one write: five replies, in order", FILES, pipelined),
        check("protocol.dribbled", 3, 2, "a request sent one byte at a time", FILES, dribbled),
        check("protocol.slow_reader", 3, 3, "a client that reads slowly still gets every byte", FILES, slow_reader),
        local(check("resources.no_fd_leak", 3, 3, "1,000 connections leave no fd behind", FILES, no_fd_leak)),
        check(
            "async.overlap",
            4,
            5,
            "8 slow reads overlap: about one delay, not eight",
            Setup::Files { delay_ms: SLOW_DELAY_MS },
            async_overlap,
        ),
        check(
            "async.cached_while_pending",
            4,
            3,
            "a cached file is answered while slow reads are pending",
            Setup::Files { delay_ms: SLOW_DELAY_MS },
            cached_while_pending,
        ),
        check(
            "async.wakeup",
            4,
            3,
            "a lone slow read is answered when it completes, with no other traffic",
            Setup::Files { delay_ms: SLOW_DELAY_MS },
            wakeup,
        ),
        local(check("cache.stale_until_sighup", 5, 3, "an edited file is served from the cache", FILES, stale)),
        local(check("cache.fresh_after_sighup", 5, 3, "after SIGHUP the new content is served", FILES, fresh)),
        local(check("cache.sighup_logged", 5, 1, "SIGHUP says `cache cleared` on stderr", FILES, sighup_logged)),
        local(check("signals.sighup_storm", 5, 3, "50 SIGHUPs under load: no wrong byte, no crash", FILES, storm)),
        local(check(
            "signals.dense_storm",
            5,
            2,
            "a SIGHUP every 200 us for 3 s while 300 cached files are asked for: no wrong byte, no crash",
            FILES,
            dense_storm,
        )),
        ending(local(check(
            "signals.sigterm",
            5,
            2,
            "SIGTERM: the response in flight completes, exit 0",
            FILES,
            sigterm,
        ))),
        check(
            "benchmark.homework",
            6,
            5,
            "the homework's measurement, beside the reference models",
            Setup::Files { delay_ms: BENCH_DELAY_MS },
            homework,
        ),
    ]
}

// Stage 1 ------------------------------------------------------------------

fn time_line(ctx: &Ctx) -> Result<String, Outcome> {
    let mut conn = Conn::open(ctx.addr(), ctx.budget(5.0)).map_err(|e| fail("(connect)", "the time", e, HINT_START))?;
    let got =
        conn.read_to_close().map_err(|e| fail("(connect, send nothing)", "one line, then close", e, HINT_TIME))?;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

const HINT_START: &str = "does the server listen on 127.0.0.1 at --port, and keep running?";
const HINT_TIME: &str = "write the time on accept (no request is read), then close the connection";

fn time_one_line(ctx: &mut Ctx) -> Outcome {
    replaying(time_one_line_once(ctx), b"")
}

fn time_one_line_once(ctx: &mut Ctx) -> Outcome {
    let text = match time_line(ctx) {
        Ok(text) => text,
        Err(outcome) => return outcome,
    };
    let expected = "one line like 2026-11-27T12:00:00Z (UTC, RFC 3339), then the connection closed";
    let Some(line) = text.strip_suffix('\n').filter(|line| !line.contains('\n')) else {
        return fail("(connect)", expected, format!("{text:?}"), HINT_TIME);
    };
    match humantime::parse_rfc3339(line.trim_end_matches('\r')) {
        Ok(time) => {
            let skew = time.duration_since(SystemTime::now()).or_else(|e| Ok::<_, ()>(e.duration())).unwrap();
            if skew > Duration::from_secs(10) {
                fail("(connect)", "the current time", format!("{line:?}, {skew:?} off"), "use the clock, in UTC")
            } else {
                Outcome::Pass(None)
            }
        }
        Err(_) => fail("(connect)", expected, format!("{line:?}"), "format as YYYY-MM-DDTHH:MM:SSZ, in UTC"),
    }
}

fn time_many_clients(ctx: &mut Ctx) -> Outcome {
    replaying(time_many_clients_once(ctx), b"")
}

fn time_many_clients_once(ctx: &mut Ctx) -> Outcome {
    for i in 0..5 {
        match time_line(ctx) {
            Ok(text) if text.ends_with('\n') && text.len() >= 20 => {}
            Ok(text) => return fail(format!("(client {})", i + 1), "one line", format!("{text:?}"), HINT_TIME),
            Err(outcome) => return outcome,
        }
    }
    Outcome::Pass(None)
}

// Stage 2 ------------------------------------------------------------------

const HINT_CONCURRENCY: &str =
    "serve many clients at once: select/poll/epoll over non-blocking sockets, or a thread per client";

fn expect_ok(reply: Result<Reply, String>, want: &[u8], sent: &str, hint: &'static str) -> Result<(), Outcome> {
    match reply {
        Ok(Reply::Ok(body)) if body == want => Ok(()),
        Ok(Reply::Ok(body)) => Err(fail(
            sent,
            format!("OK {} {}", want.len(), preview(want)),
            format!("OK {} {}{}", body.len(), preview(&body), first_difference(&body, want)),
            hint,
        )),
        Ok(other) => Err(fail(sent, format!("OK {}", want.len()), other.describe(), hint)),
        Err(err) => Err(fail(sent, format!("OK {}", want.len()), err, hint)),
    }
}

fn first_difference(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(at) => format!(", first wrong byte at offset {at}"),
        None => String::new(),
    }
}

fn stalled_client(ctx: &mut Ctx) -> Outcome {
    let small = ctx.fixture.content("small.txt");
    let mut stalled = match Conn::open(ctx.addr(), ctx.budget(10.0)) {
        Ok(conn) => conn,
        Err(err) => return fail("(connect)", "a connection", err, HINT_START),
    };
    if let Err(err) = stalled.send(b"small.t") {
        return fail("small.t (no newline)", "accepted", err, HINT_START);
    }
    std::thread::sleep(Duration::from_millis(50));
    let sent = "client A: \"small.t\" and nothing more; client B: \"small.txt\\n\"";
    if let Err(outcome) = expect_ok(fetch(ctx.addr(), b"small.txt", ctx.budget(3.0)), &small, sent, HINT_CONCURRENCY) {
        return outcome;
    }
    // The stalled client finishes its request and is answered too.
    let finished = stalled.send(b"xt\n").and_then(|()| stalled.reply());
    match expect_ok(finished, &small, "client A: \"xt\\n\" (completing small.txt)", HINT_PARTIAL) {
        Ok(()) => Outcome::Pass(None),
        Err(outcome) => outcome,
    }
}

const HINT_PARTIAL: &str = "keep each client's unfinished line in a buffer until its newline arrives";

fn many_clients(ctx: &mut Ctx) -> Outcome {
    let small = ctx.fixture.content("small.txt");
    let mut conns = Vec::new();
    for _ in 0..20 {
        match Conn::open(ctx.addr(), ctx.budget(5.0)) {
            Ok(conn) => conns.push(conn),
            Err(err) => return fail("(20 connections)", "all connected", err, HINT_CONCURRENCY),
        }
    }
    for conn in &mut conns {
        if let Err(err) = conn.send(b"small.txt\n") {
            return fail("small.txt on each of 20 connections", "sent", err, HINT_CONCURRENCY);
        }
    }
    // Replies are read last-connected first: a server that serves one
    // connection to its end before the next never answers the 20th.
    for (i, conn) in conns.iter_mut().enumerate().rev() {
        let sent = format!("small.txt on each of 20 open connections (reading connection {})", i + 1);
        if let Err(outcome) = expect_ok(conn.reply(), &small, &sent, HINT_CONCURRENCY) {
            return outcome;
        }
    }
    Outcome::Pass(None)
}

/// Clients held open at once by `concurrency.past_fd_setsize`: enough that
/// a server's descriptors pass FD_SETSIZE (1024), whatever it opened before.
pub const FD_CLIENTS: usize = 1100;

/// The open-file limit the grader asks for (its own, and so the servers' it
/// starts): [`FD_CLIENTS`] on each side, and room for everything else.
pub const FD_LIMIT: u64 = 2048;

/// Raises the grader's soft open-file limit to [`FD_LIMIT`] where the hard
/// limit allows (servers started afterwards inherit it); returns the soft
/// limit now in force, `None` for unlimited.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    match limit.current {
        Some(current) if current < FD_LIMIT => {
            let want = limit.maximum.map_or(FD_LIMIT, |maximum| maximum.min(FD_LIMIT));
            if want > current {
                limit.current = Some(want);
                // Refused (macOS below OPEN_MAX, a jail): the limit stays as
                // it was, and the test that needs it says so.
                let _ = setrlimit(Resource::Nofile, limit);
            }
            getrlimit(Resource::Nofile).current
        }
        other => other,
    }
}

const HINT_FD_SETSIZE: &str = "a descriptor at or past FD_SETSIZE must never reach an fd_set: refuse it with ERR 503 \
     (and close it); any server must answer every client it accepts, or refuse it, and keep running";

fn past_fd_setsize(ctx: &mut Ctx) -> Outcome {
    let limit = raise_fd_limit();
    if limit.is_some_and(|limit| limit < FD_CLIENTS as u64 + 100) {
        return Outcome::Skip(format!(
            "the open-file limit here is {} (hard limit too low to raise): {FD_CLIENTS} clients need {FD_LIMIT} \
             (ulimit -n {FD_LIMIT})",
            limit.unwrap_or_default()
        ));
    }
    let small = ctx.fixture.content("small.txt");
    let sent = format!(
        "{FD_CLIENTS} connections held open at once, then small.txt on each not yet refused; \
         each closed once answered"
    );
    let expected = "on every connection OK with small.txt or ERR 503, and the server still running";
    let started = Instant::now();
    let mut conns = Vec::with_capacity(FD_CLIENTS);
    for _ in 0..FD_CLIENTS {
        match Conn::open(ctx.addr(), ctx.budget(10.0)) {
            Ok(conn) => conns.push(conn),
            Err(err) => {
                return fail(&sent, expected, format!("connection {}: {err}", conns.len() + 1), HINT_FD_SETSIZE)
            }
        }
    }
    // Accepting 1,100 clients takes the loop a moment; a server that
    // refuses on accept has then written its ERR 503 already.
    std::thread::sleep(ctx.budget(0.3));
    for conn in &mut conns {
        // A refused client may be closed already: a failed send is judged
        // by what its reply reads.
        if !conn.has_unread() {
            let _ = conn.send(b"small.txt\n");
        }
    }
    // Each client hangs up once answered: a server with a fixed number of
    // workers (prefork) serves the next waiting client then.
    let (mut served, mut refused) = (0, 0);
    for (i, mut conn) in conns.into_iter().enumerate() {
        match conn.reply() {
            Ok(Reply::Ok(body)) if body == small => served += 1,
            Ok(Reply::Err(503)) => refused += 1,
            Ok(other) => {
                return fail(&sent, expected, format!("connection {}: {}", i + 1, other.describe()), HINT_FD_SETSIZE)
            }
            Err(err) => return fail(&sent, expected, format!("connection {}: {err}", i + 1), HINT_FD_SETSIZE),
        }
    }
    if !ctx.target.is_running() {
        return fail(&sent, expected, "the server exited", HINT_FD_SETSIZE);
    }
    let after = "then small.txt on a new connection, all others closed";
    if let Err(outcome) = expect_ok(fetch(ctx.addr(), b"small.txt", ctx.budget(5.0)), &small, after, HINT_FD_SETSIZE) {
        return outcome;
    }
    Outcome::Pass(Some(format!("{served} served, {refused} refused with ERR 503, in {:.1?}", started.elapsed())))
}

/// The receive buffer of a client that reads slowly (the kernel doubles
/// it): the large reply then waits in the server's send buffer, full.
const SLOW_RCVBUF: usize = 16 * 1024;

const HINT_UNSENT: &str = "send may take only part of what you give it (or nothing: EAGAIN): keep what send did \
     not take in the client's output buffer and wait for write readiness to send the rest";
const HINT_BLOCKING_SEND: &str = "a blocking send in the loop stalls every client until one slow reader reads: \
     make client sockets non-blocking, keep what send did not take, and send it when the socket is writable";

/// Connects client A with a small receive buffer, asks for the large file,
/// waits until its reply has begun and then reads nothing for a while: when
/// this returns the server's send buffer for A is full, and the rest of the
/// reply waits in the server (a loop that sends blocking is stuck in send).
fn stalled_large_reply(ctx: &Ctx, sent: &str, hint: &'static str) -> Result<Conn, Outcome> {
    let mut conn = Conn::open(ctx.addr(), ctx.budget(10.0)).map_err(|e| fail(sent, "a connection", e, HINT_START))?;
    conn.set_receive_buffer(SLOW_RCVBUF).map_err(Outcome::Skip)?;
    let request = line(LARGE_REPLY.as_bytes());
    conn.send(&request).map_err(|e| fail(sent, "sent", e, hint))?;
    conn.await_reply_start().map_err(|e| fail(sent, "the reply to A begins", e, hint))?;
    std::thread::sleep(ctx.budget(0.3));
    Ok(conn)
}

fn large_reply(ctx: &mut Ctx) -> Outcome {
    let sent = format!(
        "client A (a 16 KiB receive buffer): {LARGE_REPLY}, then reads nothing for 400 ms while client B asks for \
         small.txt, then reads the rest (through its small window)"
    );
    let mut stalled = match stalled_large_reply(ctx, &sent, HINT_UNSENT) {
        Ok(conn) => conn,
        Err(outcome) => return outcome,
    };
    // B is answered while A's reply waits (or, from a loop that sends
    // blocking, once A reads again: stalled_reader's business, not this one's).
    let (addr, budget) = (ctx.addr(), ctx.budget(10.0));
    let other = std::thread::spawn(move || fetch(addr, b"small.txt", budget));
    std::thread::sleep(ctx.budget(0.1));
    stalled.due_in(ctx.budget(5.0));
    // Through A's small window the server's send buffer drains and fills
    // again several times: each time send takes part, and the rest waits.
    let got = stalled.reply();
    let other = other.join().unwrap_or_else(|_| Err("the client thread failed".into()));
    if let Err(outcome) = expect_ok(got, &ctx.fixture.content(LARGE_REPLY), &sent, HINT_UNSENT) {
        return outcome;
    }
    // No answer for B while A stays connected: one client at a time. A wrong
    // one: the clients' output mixed (each needs its own buffer).
    let hint = if other.is_err() { HINT_CONCURRENCY } else { HINT_UNSENT };
    match expect_ok(other, &ctx.fixture.content("small.txt"), &sent, hint) {
        Ok(()) => Outcome::Pass(None),
        Err(outcome) => outcome,
    }
}

fn stalled_reader(ctx: &mut Ctx) -> Outcome {
    let limit = ctx.budget(2.0);
    let sent = format!(
        "client A (a 16 KiB receive buffer): {LARGE_REPLY}, then reads nothing; 300 ms later client B: small.txt"
    );
    let stalled = match stalled_large_reply(ctx, &sent, HINT_BLOCKING_SEND) {
        Ok(conn) => conn,
        Err(outcome) => return outcome,
    };
    let asked = Instant::now();
    let got = fetch(ctx.addr(), b"small.txt", limit);
    let took = asked.elapsed();
    // A hangs up with its reply unread: the server must cope (EPIPE or
    // ECONNRESET on its next send), as with any client that goes away.
    drop(stalled);
    match got {
        Ok(Reply::Ok(body)) if body == ctx.fixture.content("small.txt") => {
            Outcome::Pass(Some(format!("B answered in {took:.1?} while A's reply waited")))
        }
        Err(err) => fail(
            sent,
            format!("B answered within {limit:?} while A reads nothing"),
            format!("{err}: B waited for A"),
            HINT_BLOCKING_SEND,
        ),
        other => match expect_ok(other, &ctx.fixture.content("small.txt"), &sent, HINT_BLOCKING_SEND) {
            Ok(()) => Outcome::Pass(None),
            Err(outcome) => outcome,
        },
    }
}

// Stage 3 ------------------------------------------------------------------

const HINT_FILES: &str = "send exactly `OK <size>\\n` and then every byte of the file (loop until all is written)";

fn file_exact(ctx: &mut Ctx, name: &str) -> Outcome {
    let want = ctx.fixture.content(name);
    let budget = ctx.budget(if want.len() > (8 << 20) { 30.0 } else { 5.0 });
    match expect_ok(fetch(ctx.addr(), name.as_bytes(), budget), &want, name, HINT_FILES) {
        Ok(()) => Outcome::Pass(None),
        Err(outcome) => replaying(outcome, &line(name.as_bytes())),
    }
}

/// Each `(spelling, name)`: the request `spelling` must be answered with
/// the content of the file `name`.
fn file_as(ctx: &mut Ctx, cases: &[(&str, &str)]) -> Outcome {
    for (spelling, name) in cases {
        let want = ctx.fixture.content(name);
        if let Err(outcome) =
            expect_ok(fetch(ctx.addr(), spelling.as_bytes(), ctx.budget(5.0)), &want, spelling, HINT_RULES)
        {
            return replaying(outcome, &line(spelling.as_bytes()));
        }
    }
    Outcome::Pass(None)
}

const HINT_RULES: &str = "see the rules table of docs/assignment.md: skip `.` and empty components, follow symlinks \
     that stay inside the root, drop a `\\r` before the `\\n`";

fn unreadable(ctx: &mut Ctx) -> Outcome {
    // Permissions do not bind root: where the grader itself can read the
    // file, so can a server run by the same user.
    if ctx.target.reads_as_grader() && std::fs::File::open(ctx.fixture.root().join("unreadable.txt")).is_ok() {
        return Outcome::Skip("the file is readable here (the grader runs as root): not testable".into());
    }
    refused(ctx, &[b"unreadable.txt"], &[403])
}

fn crlf(ctx: &mut Ctx) -> Outcome {
    let want = ctx.fixture.content("small.txt");
    let result = Conn::open(ctx.addr(), ctx.budget(5.0)).and_then(|mut conn| {
        conn.send(b"small.txt\r\n")?;
        conn.reply()
    });
    match expect_ok(result, &want, "small.txt\\r\\n", HINT_RULES) {
        Ok(()) => Outcome::Pass(None),
        Err(outcome) => replaying(outcome, b"small.txt\r\n"),
    }
}

/// A request line of exactly `len` bytes (before its `\r\n`) naming small.txt:
/// `./` components (skipped) pad it, with one empty component if the
/// padding is odd.
fn padded_small_txt(len: usize) -> Vec<u8> {
    let name = b"small.txt";
    let pad = len - name.len();
    let mut line = b"./".repeat(pad / 2);
    if pad % 2 == 1 {
        line.push(b'/');
    }
    line.extend_from_slice(name);
    line
}

fn line_limit(ctx: &mut Ctx) -> Outcome {
    let want = ctx.fixture.content("small.txt");
    let hint = "count the line's bytes without its `\\r\\n`: 4096 are allowed, more get ERR 414";
    let mut longest = padded_small_txt(4096);
    longest.extend_from_slice(b"\r\n");
    let sent = "a 4096-byte line (./././... small.txt), then \\r\\n";
    let result = Conn::open(ctx.addr(), ctx.budget(5.0)).and_then(|mut conn| {
        conn.send(&longest)?;
        conn.reply()
    });
    if let Err(outcome) = expect_ok(result, &want, sent, hint) {
        return replaying(outcome, &longest);
    }
    let sent = "a 4097-byte line (./././... small.txt), then \\n";
    let mut over = padded_small_txt(4097);
    over.push(b'\n');
    let result = Conn::open(ctx.addr(), ctx.budget(5.0)).and_then(|mut conn| {
        conn.send(&over)?;
        conn.reply()
    });
    let outcome = match result {
        Ok(Reply::Err(414)) => Outcome::Pass(None),
        Ok(other) => fail(sent, "ERR 414", other.describe(), hint),
        Err(err) => fail(sent, "ERR 414", err, hint),
    };
    replaying(outcome, &over)
}

fn line_limit_split(ctx: &mut Ctx) -> Outcome {
    let want = ctx.fixture.content("small.txt");
    let hint = "a `\\r` at the end of what has arrived may be the first half of `\\r\\n`: do not count it against \
         the 4096 bytes (nor answer 414) until the next byte shows it is not";
    let sent = "a 4096-byte line (./././... small.txt) and \\r in one write, 50 ms later \\n";
    let mut first = padded_small_txt(4096);
    first.push(b'\r');
    let result = Conn::open(ctx.addr(), ctx.budget(5.0)).and_then(|mut conn| {
        conn.send(&first)?;
        std::thread::sleep(Duration::from_millis(50));
        conn.send(b"\n")?;
        conn.reply()
    });
    match expect_ok(result, &want, sent, hint) {
        Ok(()) => Outcome::Pass(None),
        Err(outcome) => outcome,
    }
}

/// Each path must be refused with one of `codes`, and no reply may carry
/// the secret.
fn refused(ctx: &mut Ctx, paths: &[&[u8]], codes: &[u16]) -> Outcome {
    let expected = format!("ERR {}", codes.iter().map(u16::to_string).collect::<Vec<_>>().join(" or ERR "));
    for path in paths {
        let outcome = refused_one(ctx, path, codes, &expected);
        if !matches!(outcome, Outcome::Pass(_)) {
            return replaying(outcome, &line(path));
        }
    }
    Outcome::Pass(None)
}

fn refused_one(ctx: &mut Ctx, path: &[u8], codes: &[u16], expected: &str) -> Outcome {
    {
        let sent = String::from_utf8_lossy(path).escape_debug().to_string();
        match fetch(ctx.addr(), path, ctx.budget(5.0)) {
            Ok(Reply::Err(code)) if codes.contains(&code) => {}
            Ok(Reply::Ok(body)) if contains(&body, SECRET.trim_ascii_end()) => {
                return fail(sent, expected, "the secret from outside the root!", HINT_SANDBOX)
            }
            Ok(Reply::Ok(body)) if body == HIDDEN => {
                return fail(sent, expected, "the content of the hidden file (inside the root)", HINT_SANDBOX)
            }
            Ok(other) => return fail(sent, expected, other.describe(), HINT_SANDBOX),
            Err(err) => return fail(sent, expected, err, HINT_SANDBOX),
        }
    }
    Outcome::Pass(None)
}

const HINT_SANDBOX: &str = "check every path component (no `..`, no leading `/`, no control bytes, no hidden \
     names) and open beneath the root without following symlinks out (openat2 RESOLVE_BENEATH, or O_NOFOLLOW per \
     component); refuse anything that is not a regular file";

/// Refused with any 4xx: what matters is that nothing leaks.
fn no_leak(ctx: &mut Ctx, paths: &[Vec<u8>]) -> Outcome {
    let refs: Vec<&[u8]> = paths.iter().map(Vec::as_slice).collect();
    refused(ctx, &refs, &[400, 403, 404])
}

fn sandbox_dotdot(ctx: &mut Ctx) -> Outcome {
    let paths: Vec<Vec<u8>> = [
        "../outside/secret.txt",
        "../../../../../../etc/passwd",
        "dir/../../outside/secret.txt",
        "./../outside/secret.txt",
        "dir/sub/../../../outside/secret.txt",
        "dir//..//..//outside/secret.txt",
        "..",
        "../",
    ]
    .map(|p| p.as_bytes().to_vec())
    .into();
    no_leak(ctx, &paths)
}

fn sandbox_absolute(ctx: &mut Ctx) -> Outcome {
    let secret = ctx.fixture.secret_path().display().to_string().into_bytes();
    no_leak(ctx, &[secret, b"/etc/passwd".to_vec(), b"//etc/passwd".to_vec()])
}

fn sandbox_symlinks(ctx: &mut Ctx) -> Outcome {
    refused(ctx, &[b"out-link", b"out-dir/secret.txt", b"dir/up-link"], &[403])
}

fn sandbox_control(ctx: &mut Ctx) -> Outcome {
    no_leak(ctx, &[b"small.txt\0.png".to_vec(), b"small\x01.txt".to_vec(), b"../outside/secret.txt\0".to_vec()])
}

fn fifo(ctx: &mut Ctx) -> Outcome {
    let outcome = refused(ctx, &[b"fifo"], &[403]);
    if let Outcome::Fail(mut failure) = outcome {
        failure.hint = HINT_FIFO;
        return Outcome::Fail(failure);
    }
    let small = ctx.fixture.content("small.txt");
    match expect_ok(fetch(ctx.addr(), b"small.txt", ctx.budget(3.0)), &small, "small.txt, after fifo", HINT_FIFO) {
        Ok(()) => Outcome::Pass(None),
        Err(outcome) => replaying(outcome, b"small.txt\n"),
    }
}

const HINT_FIFO: &str = "open files with O_NONBLOCK (opening a FIFO blocks otherwise) and refuse non-regular files";

fn overlong(ctx: &mut Ctx) -> Outcome {
    let long = vec![b'a'; 5000];
    let outcome = match fetch(ctx.addr(), &long, ctx.budget(5.0)) {
        Ok(Reply::Err(414)) => Outcome::Pass(None),
        Ok(other) => fail("a 5000-byte line", "ERR 414", other.describe(), "bound the line buffer at 4096 bytes"),
        Err(err) => fail("a 5000-byte line", "ERR 414", err, "bound the line buffer at 4096 bytes"),
    };
    replaying(outcome, &line(&long))
}

fn pipelined(ctx: &mut Ctx) -> Outcome {
    let request = b"small.txt\n1m.bin\nno-such-file.txt\na..b.txt\nempty.txt\n";
    replaying(pipelined_once(ctx), request)
}

fn pipelined_once(ctx: &mut Ctx) -> Outcome {
    let names = ["small.txt", "1m.bin", "no-such-file.txt", "a..b.txt", "empty.txt"];
    let sent = "small.txt\\n1m.bin\\nno-such-file.txt\\na..b.txt\\nempty.txt\\n in one write";
    let hint = "a read may hold several requests: answer every complete line in the buffer, in order, before \
         waiting for readiness again (no event comes for bytes already read)";
    let mut conn = match Conn::open(ctx.addr(), ctx.budget(10.0)) {
        Ok(conn) => conn,
        Err(err) => return fail(sent, "five replies", err, HINT_START),
    };
    let request: String = names.iter().map(|n| format!("{n}\n")).collect();
    if let Err(err) = conn.send(request.as_bytes()) {
        return fail(sent, "five replies", err, hint);
    }
    for name in names {
        let reply = conn.reply();
        if name == "no-such-file.txt" {
            match reply {
                Ok(Reply::Err(404)) => continue,
                Ok(other) => return fail(sent, format!("reply to {name}: ERR 404"), other.describe(), hint),
                Err(err) => return fail(sent, format!("reply to {name}: ERR 404"), err, hint),
            }
        }
        if let Err(outcome) = expect_ok(reply, &ctx.fixture.content(name), sent, hint) {
            return outcome;
        }
    }
    Outcome::Pass(None)
}

fn dribbled(ctx: &mut Ctx) -> Outcome {
    let name = "name with spaces.txt";
    let sent = "\"name with spaces.txt\\n\", one byte per write, 2 ms apart";
    let result = Conn::open(ctx.addr(), ctx.budget(5.0)).and_then(|mut conn| {
        for byte in name.bytes().chain([b'\n']) {
            conn.send(&[byte])?;
            std::thread::sleep(Duration::from_millis(2));
        }
        conn.reply()
    });
    match expect_ok(result, &ctx.fixture.content(name), sent, HINT_PARTIAL) {
        Ok(()) => Outcome::Pass(None),
        Err(outcome) => replaying(outcome, &line(name.as_bytes())),
    }
}

fn slow_reader(ctx: &mut Ctx) -> Outcome {
    let sent = "1m.bin, then reading 16 KiB every 5 ms";
    let hint =
        "a write may send less than asked (or would block): keep the rest and send it when the socket is writable";
    let result = Conn::open(ctx.addr(), ctx.budget(15.0)).and_then(|mut conn| {
        conn.send(b"1m.bin\n")?;
        conn.reply_slowly(Some((16 * 1024, Duration::from_millis(5))))
    });
    match expect_ok(result, &ctx.fixture.content("1m.bin"), sent, hint) {
        Ok(()) => Outcome::Pass(None),
        Err(outcome) => replaying(outcome, b"1m.bin\n"),
    }
}

fn open_fds(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn no_fd_leak(ctx: &mut Ctx) -> Outcome {
    let Some(pid) = ctx.target.pid() else { return Outcome::Skip("needs the server's pid".into()) };
    let Some(before) = open_fds(pid) else { return Outcome::Skip("needs /proc (Linux)".into()) };
    let small = ctx.fixture.content("small.txt");
    let sent = "1,000 connections: most ask for small.txt; every tenth hangs up mid-request, every tenth asks for a missing file";
    let hint = "close the socket (and the file) on every path: after the reply, on errors, when the client hangs up";
    for i in 0..1000 {
        let result = Conn::open(ctx.addr(), ctx.budget(5.0)).and_then(|mut conn| match i % 10 {
            0 => conn.send(b"small"),
            1 => conn.request(b"no-such-file.txt").map(drop),
            _ => conn.request(b"small.txt").and_then(|reply| match reply {
                Reply::Ok(body) if body == small => Ok(()),
                other => Err(other.describe()),
            }),
        });
        if let Err(err) = result {
            return fail(sent, "every reply correct", format!("connection {}: {err}", i + 1), hint);
        }
    }
    // Give the server a moment to notice the last hang-ups.
    let deadline = Instant::now() + ctx.budget(2.0);
    let mut after = open_fds(pid).unwrap_or(0);
    while after > before + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = open_fds(pid).unwrap_or(0);
    }
    if after > before + 4 {
        return fail(sent, format!("about {before} open fds, as before"), format!("{after} open fds"), hint);
    }
    Outcome::Pass(Some(format!("{before} fds before, {after} after")))
}

// Stage 4 ------------------------------------------------------------------

const HINT_ASYNC: &str = "do not read files in the thread that waits for events: hand reads to a thread pool, \
     AIO or io_uring, and serve other clients meanwhile";

const HINT_WAKEUP: &str = "the read completed but the loop never heard: wake it when a result is ready (a byte \
     on a pipe it watches, a mio Waker, an eventfd, a signal), then send the reply";

/// Connects and hangs up at once: an event that wakes the server's loop.
fn poke(addr: SocketAddr, budget: Duration) {
    let _ = Conn::open(addr, budget);
}

/// After a reply on `conn` did not begin in time: whether it begins within
/// `budget` once another client connects. Then the result was there, and
/// the loop only noticed it on the next event.
fn answered_after_poke(conn: &mut Conn, addr: SocketAddr, budget: Duration) -> bool {
    poke(addr, budget);
    conn.due_in(budget);
    conn.await_reply_start().is_ok()
}

/// Opens `paths.len()` connections, sends one request on each, and returns
/// how long until every reply was in, checking each. With reads of `delay`
/// even a server that reads one file after another has begun the first
/// reply after all of them; if none has begun by then, another client
/// connects, and a reply that begins then shows a completion the loop
/// never heard of.
fn concurrent_reads(
    addr: SocketAddr,
    fixture: &Fixture,
    paths: &[String],
    delay: Duration,
    budget: Duration,
) -> Result<Duration, Outcome> {
    let mut conns = Vec::new();
    for _ in paths {
        conns.push(Conn::open(addr, budget).map_err(|e| fail("(connect)", "connected", e, HINT_START))?);
    }
    let started = Instant::now();
    for (conn, path) in conns.iter_mut().zip(paths) {
        conn.send(format!("{path}\n").as_bytes()).map_err(|e| fail(path.as_str(), "sent", e, HINT_ASYNC))?;
    }
    if let Some(first) = conns.first_mut() {
        let all_one_after_another = delay.mul_f64(paths.len() as f64 + 2.0).max(Duration::from_secs(2));
        first.due_in(all_one_after_another.min(budget));
        if first.await_reply_start().is_err() {
            let sent = format!("{} clients at once, each asking for a different uncached file", paths.len());
            let expected = format!("the first reply within {all_one_after_another:?}");
            if answered_after_poke(first, addr, budget) {
                let got = "nothing until another client connected: then the reply came at once";
                return Err(fail(sent, expected, got, HINT_WAKEUP));
            }
            return Err(fail(sent, expected, "no reply at all", HINT_ASYNC));
        }
        first.due_in(budget.saturating_sub(started.elapsed()));
    }
    // Each connection is closed once answered, so a server that serves one
    // client to its end before the next still gets through (slowly).
    for (mut conn, path) in conns.into_iter().zip(paths) {
        expect_ok(conn.reply(), &fixture.content(path), path, HINT_ASYNC)?;
    }
    Ok(started.elapsed())
}

fn async_overlap(ctx: &mut Ctx) -> Outcome {
    let paths: Vec<String> = (0..SLOW_FILES).map(|i| format!("slow/{i}.txt")).collect();
    let delay = Duration::from_millis(SLOW_DELAY_MS);
    let limit = delay.mul_f64(3.0 * ctx.stretch);
    match concurrent_reads(ctx.addr(), ctx.fixture, &paths, delay.mul_f64(ctx.stretch), ctx.budget(10.0)) {
        Ok(took) if took <= limit => {
            Outcome::Pass(Some(format!("{} reads of {delay:?} each took {took:.0?}", paths.len())))
        }
        Ok(took) => fail(
            format!("{} clients at once, each asking for a different uncached file", paths.len()),
            format!("all answered within {limit:?} (the reads overlap; one read takes {delay:?})"),
            format!("{took:.0?}: the reads ran one after another"),
            HINT_ASYNC,
        ),
        Err(outcome) => outcome,
    }
}

/// One request for a file no cache holds yet, alone: a reply that has not
/// begun after a few delays is tried with another client's connection, to
/// tell a loop that never heard the read complete from one that hangs.
/// The reply, and the hint for a failure.
fn fetch_uncached(ctx: &Ctx, path: &[u8]) -> (Result<Reply, String>, &'static str) {
    let result = Conn::open(ctx.addr(), ctx.budget(5.0)).and_then(|mut conn| {
        conn.send(&line(path))?;
        conn.due_in(Duration::from_millis(4 * SLOW_DELAY_MS).mul_f64(ctx.stretch));
        if conn.await_reply_start().is_err() {
            return Ok(Err(answered_after_poke(&mut conn, ctx.addr(), ctx.budget(1.0))));
        }
        conn.due_in(ctx.budget(5.0));
        conn.reply().map(Ok)
    });
    match result {
        Ok(Ok(reply)) => (Ok(reply), HINT_ASYNC),
        Ok(Err(true)) => {
            (Err("nothing until another client connected: then the reply came at once".into()), HINT_WAKEUP)
        }
        Ok(Err(false)) => (Err("no reply before the deadline (the server hangs?)".into()), HINT_ASYNC),
        Err(err) => (Err(err), HINT_ASYNC),
    }
}

fn cached_while_pending(ctx: &mut Ctx) -> Outcome {
    let small = ctx.fixture.content("a..b.txt");
    // Warm the cache (this read takes one delay).
    let (warmed, hint) = fetch_uncached(ctx, b"a..b.txt");
    if let Err(outcome) = expect_ok(warmed, &small, "a..b.txt", hint) {
        return outcome;
    }
    let addr = ctx.addr();
    let budget = ctx.budget(10.0);
    let slow: Vec<std::thread::JoinHandle<Result<Reply, String>>> =
        ["dir/sub/nested.txt", "name with spaces.txt", "1m.bin"]
            .into_iter()
            .map(|path| std::thread::spawn(move || fetch(addr, path.as_bytes(), budget)))
            .collect();
    std::thread::sleep(Duration::from_millis(SLOW_DELAY_MS / 5));
    let asked = Instant::now();
    let cached = fetch(addr, b"a..b.txt", ctx.budget(5.0));
    let took = asked.elapsed();
    for handle in slow {
        let _ = handle.join();
    }
    if let Err(outcome) = expect_ok(cached, &small, "a..b.txt (cached) while three slow reads are pending", HINT_ASYNC)
    {
        return outcome;
    }
    let limit = Duration::from_millis(SLOW_DELAY_MS / 2).mul_f64(ctx.stretch);
    if took > limit {
        return fail(
            "a..b.txt (cached) while three slow reads are pending",
            format!("an answer within {limit:?} (a cached file needs no read)"),
            format!("{took:.0?}: it waited for the slow reads"),
            HINT_ASYNC,
        );
    }
    Outcome::Pass(Some(format!("answered in {took:.1?} while reads of {SLOW_DELAY_MS} ms were pending")))
}

/// How many times `async.wakeup` ran: each run asks for a file of its own,
/// which no cache holds (a `repeat` in the course's config runs it again).
static WAKEUP_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn wakeup(ctx: &mut Ctx) -> Outcome {
    let name = format!("slow/lone-{}.txt", WAKEUP_RUNS.fetch_add(1, Ordering::SeqCst));
    let want = pattern(4096, 42);
    if let Err(err) = ctx.fixture.rewrite(&name, &want) {
        return Outcome::Skip(format!("cannot add a file: {err}"));
    }
    let delay = Duration::from_millis(SLOW_DELAY_MS);
    let limit = delay + (delay / 2).mul_f64(ctx.stretch);
    let sent = format!("{name} (uncached: one read of {delay:?}), and no other client");
    let expected = format!("the reply within {limit:?}");
    let mut conn = match Conn::open(ctx.addr(), ctx.budget(5.0)) {
        Ok(conn) => conn,
        Err(err) => return fail(sent, expected, err, HINT_START),
    };
    let asked = Instant::now();
    if let Err(err) = conn.send(&line(name.as_bytes())) {
        return fail(sent, expected, err, HINT_START);
    }
    conn.due_in(limit);
    if conn.await_reply_start().is_err() {
        // Late, or never without another event? First wait a while longer
        // untouched (a loop that looks for results only on a timer answers
        // then), and only then connect another client. No replay line: the
        // hang-up of a pasted `nc` would wake the loop.
        conn.due_in(ctx.budget(1.0));
        if conn.await_reply_start().is_ok() {
            let got =
                format!("the reply after {:.0?}: the loop heard late that the read had completed", asked.elapsed());
            return fail(sent, expected, got, HINT_WAKEUP);
        }
        return if answered_after_poke(&mut conn, ctx.addr(), ctx.budget(1.0)) {
            let got =
                format!("nothing for {:.0?}; when another client connected, the reply came at once", asked.elapsed());
            fail(sent, expected, got, HINT_WAKEUP)
        } else {
            fail(sent, expected, format!("no reply within {:.0?}", asked.elapsed()), HINT_WAKEUP)
        };
    }
    let took = asked.elapsed();
    conn.due_in(ctx.budget(5.0));
    match expect_ok(conn.reply(), &want, &sent, HINT_ASYNC) {
        Ok(()) => Outcome::Pass(Some(format!("answered in {took:.0?} (one read of {delay:?})"))),
        Err(outcome) => outcome,
    }
}

// Stage 5 ------------------------------------------------------------------

const VERSION_TWO: &[u8] = b"version two, edited while the server ran\n";
const HINT_CACHE: &str = "keep file contents in memory after the first read; on SIGHUP drop them all \
     (set a flag in the handler, clear in the loop) and log `cache cleared`";

fn stale(ctx: &mut Ctx) -> Outcome {
    let one = ctx.fixture.content("mutable.txt");
    let mut conn = match Conn::open(ctx.addr(), ctx.budget(5.0)) {
        Ok(conn) => conn,
        Err(err) => return fail("(connect)", "a connection", err, HINT_START),
    };
    if let Err(outcome) = expect_ok(conn.request(b"mutable.txt"), &one, "mutable.txt", HINT_FILES) {
        return outcome;
    }
    if let Err(err) = ctx.fixture.rewrite("mutable.txt", VERSION_TWO) {
        return Outcome::Skip(format!("cannot edit the file: {err}"));
    }
    let sent = "mutable.txt again on the same connection, after editing the file (no SIGHUP yet)";
    match conn.request(b"mutable.txt") {
        Ok(Reply::Ok(body)) if body == one => Outcome::Pass(None),
        Ok(Reply::Ok(body)) if body == VERSION_TWO => fail(
            sent,
            format!("the cached content {}", preview(&one)),
            "the new content: nothing was cached",
            HINT_CACHE,
        ),
        Ok(other) => fail(sent, format!("OK {}", one.len()), other.describe(), HINT_CACHE),
        Err(err) => fail(sent, format!("OK {}", one.len()), err, HINT_CACHE),
    }
}

fn sighup_and_wait(ctx: &mut Ctx) -> Result<bool, Outcome> {
    let cleared_before = ctx.target.cache_clears();
    ctx.target.signal(Signal::HUP).map_err(|e| Outcome::Skip(e.to_string()))?;
    let deadline = Instant::now() + ctx.budget(3.0);
    while Instant::now() < deadline {
        if ctx.target.cache_clears() > cleared_before {
            return Ok(true);
        }
        if !ctx.target.is_running() {
            return Err(fail("SIGHUP", "the server keeps running", "it exited", HINT_SIGHUP));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(false)
}

const HINT_SIGHUP: &str = "install a SIGHUP handler (the default action ends the process)";

fn fresh(ctx: &mut Ctx) -> Outcome {
    if let Err(err) = ctx.fixture.rewrite("mutable.txt", VERSION_TWO) {
        return Outcome::Skip(format!("cannot edit the file: {err}"));
    }
    if let Err(outcome) = sighup_and_wait(ctx) {
        return outcome;
    }
    match expect_ok(
        fetch(ctx.addr(), b"mutable.txt", ctx.budget(5.0)),
        VERSION_TWO,
        "SIGHUP, then mutable.txt",
        HINT_CACHE,
    ) {
        Ok(()) => Outcome::Pass(None),
        Err(outcome) => outcome,
    }
}

fn sighup_logged(ctx: &mut Ctx) -> Outcome {
    match sighup_and_wait(ctx) {
        Ok(true) => Outcome::Pass(None),
        Ok(false) => fail("SIGHUP", "a line with `cache cleared` on stderr", "nothing within 3 s", HINT_CACHE),
        Err(outcome) => outcome,
    }
}

fn storm(ctx: &mut Ctx) -> Outcome {
    let names = ["small.txt", "1m.bin", "a..b.txt", "dir/sub/nested.txt"];
    let contents: Arc<Vec<(&str, Vec<u8>)>> = Arc::new(names.iter().map(|n| (*n, ctx.fixture.content(n))).collect());
    let done = Arc::new(AtomicBool::new(false));
    let (addr, budget) = (ctx.addr(), ctx.budget(10.0));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (contents, done) = (Arc::clone(&contents), Arc::clone(&done));
            std::thread::spawn(move || -> Result<usize, String> {
                let mut conn = Conn::open(addr, budget)?;
                let mut served = 0;
                while !done.load(Ordering::SeqCst) && served < 2000 {
                    let (name, want) = &contents[(i + served) % contents.len()];
                    match conn.request(name.as_bytes())? {
                        Reply::Ok(body) if &body == want => served += 1,
                        other => return Err(format!("{name}: {}", other.describe())),
                    }
                }
                Ok(served)
            })
        })
        .collect();
    let mut sent = 0;
    for _ in 0..50 {
        if ctx.target.signal(Signal::HUP).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    done.store(true, Ordering::SeqCst);
    let sent_text = format!("{sent} SIGHUPs, 10 ms apart, while 4 clients request files in a loop");
    let mut served = 0;
    for client in clients {
        match client.join() {
            Ok(Ok(n)) => served += n,
            Ok(Err(err)) => return fail(sent_text, "every reply correct", err, HINT_STORM),
            Err(_) => return fail(sent_text, "every reply correct", "a client thread failed", HINT_STORM),
        }
    }
    if !ctx.target.is_running() {
        return fail(sent_text, "the server keeps running", "it exited", HINT_SIGHUP);
    }
    Outcome::Pass(Some(format!("{served} correct replies during the storm")))
}

const HINT_STORM: &str = "a signal can interrupt any system call (EINTR: retry it); never clear the cache from \
     inside the handler, and never let a read that started before the clear refill it with old bytes";

const HINT_HANDLER: &str = "a signal handler may only do async-signal-safe work: set a flag or write a byte \
     (never free, malloc or printf there: it can land while the loop is in the middle of the same memory or stream)";

/// How long `signals.dense_storm` signals, before stretching.
const DENSE_STORM_SECONDS: f64 = 3.0;

/// `signals.sighup_storm` is sparse: a handler that does the clearing
/// itself seldom lands while the loop is using the cache. A SIGHUP every
/// 200 us for seconds, while six clients ask for 300 small cached files in
/// pipelined batches, lands there thousands of times.
fn dense_storm(ctx: &mut Ctx) -> Outcome {
    let files: Arc<Vec<(String, Vec<u8>)>> =
        Arc::new((0..MANY_FILES).map(|i| (format!("many/{i}.txt"), many_file(i))).collect());
    let done = Arc::new(AtomicBool::new(false));
    let (addr, budget) = (ctx.addr(), ctx.budget(DENSE_STORM_SECONDS + 10.0));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (files, done) = (Arc::clone(&files), Arc::clone(&done));
            std::thread::spawn(move || -> Result<usize, String> {
                let mut conn = Conn::open(addr, budget)?;
                let mut served = 0;
                while !done.load(Ordering::SeqCst) && served < 200_000 {
                    let batch: Vec<&(String, Vec<u8>)> =
                        (0..8).map(|k| &files[(i * 37 + served + k * 11) % files.len()]).collect();
                    let request: Vec<u8> = batch.iter().flat_map(|(name, _)| line(name.as_bytes())).collect();
                    conn.send(&request)?;
                    for (name, want) in batch {
                        match conn.reply()? {
                            Reply::Ok(body) if &body == want => served += 1,
                            Reply::Ok(body) => {
                                return Err(format!("{name}: OK {}{}", body.len(), first_difference(&body, want)))
                            }
                            other => return Err(format!("{name}: {}", other.describe())),
                        }
                    }
                }
                Ok(served)
            })
        })
        .collect();
    let length = ctx.budget(DENSE_STORM_SECONDS);
    let started = Instant::now();
    let mut signals = 0;
    while started.elapsed() < length && !clients.iter().any(|c| c.is_finished()) {
        if ctx.target.signal(Signal::HUP).is_err() {
            break;
        }
        signals += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
    done.store(true, Ordering::SeqCst);
    let sent = format!(
        "{signals} SIGHUPs, one every 200 us, while 6 clients ask for {MANY_FILES} small files in batches of 8"
    );
    let mut served = 0;
    for client in clients {
        match client.join() {
            Ok(Ok(n)) => served += n,
            Ok(Err(err)) => return fail(sent, "every reply correct, the server alive", err, HINT_HANDLER),
            Err(_) => return fail(sent, "every reply correct", "a client thread failed", HINT_HANDLER),
        }
    }
    if !ctx.target.is_running() {
        return fail(sent, "the server keeps running", "it exited", HINT_HANDLER);
    }
    Outcome::Pass(Some(format!("{served} correct replies during {signals} SIGHUPs")))
}

fn sigterm(ctx: &mut Ctx) -> Outcome {
    let want = ctx.fixture.content("64m.bin");
    let sent = "64m.bin, SIGTERM after its first bytes, then reading the rest";
    let hint = "on SIGTERM stop accepting, finish the responses in flight, then exit with status 0";
    let mut conn = match Conn::open(ctx.addr(), ctx.budget(30.0)) {
        Ok(conn) => conn,
        Err(err) => return fail(sent, "a connection", err, HINT_START),
    };
    if let Err(err) = conn.send(b"64m.bin\n") {
        return fail(sent, "sent", err, hint);
    }
    // In flight once its first bytes arrive; a fixed pause was not enough
    // on a loaded machine (the request was not read yet).
    if let Err(err) = conn.await_reply_start() {
        return fail(sent, "the first bytes of the reply", err, hint);
    }
    if let Err(err) = ctx.target.signal(Signal::TERM) {
        return Outcome::Skip(err.to_string());
    }
    if let Err(outcome) = expect_ok(conn.reply(), &want, sent, hint) {
        return outcome;
    }
    drop(conn);
    match ctx.target.wait_exit(ctx.budget(6.0)) {
        Some(Some(0)) => Outcome::Pass(None),
        Some(code) => fail(sent, "exit status 0", format!("exit status {code:?}"), hint),
        None => fail(sent, "the server exits within 6 s", "it is still running", hint),
    }
}

// Stage 6 ------------------------------------------------------------------

/// How long `conns` clients take to be served, each asking for a different
/// uncached file: the homework's measurement.
fn homework_time(ctx: &Ctx, addr: SocketAddr) -> Result<Duration, Outcome> {
    let paths: Vec<String> = (0..SLOW_FILES).map(|i| format!("slow/{i}.txt")).collect();
    let delay = Duration::from_millis(BENCH_DELAY_MS).mul_f64(ctx.stretch);
    concurrent_reads(addr, ctx.fixture, &paths, delay, ctx.budget(30.0))
}

fn homework(ctx: &mut Ctx) -> Outcome {
    let yours = match homework_time(ctx, ctx.addr()) {
        Ok(took) => took,
        Err(outcome) => return outcome,
    };
    let mut note = format!("{SLOW_FILES} clients, {BENCH_DELAY_MS} ms storage: yours {yours:.1?}");
    if let Some(reference) = ctx.reference.clone() {
        for model in ["event", "event-async"] {
            let template: Vec<String> =
                [reference.display().to_string(), "--model".into(), model.into(), "--quiet".into()]
                    .into_iter()
                    .chain(["--port", "{port}", "--root", "{root}", "--read-delay-ms", "{delay}"].map(String::from))
                    .collect();
            let setup = ctx.target.setup;
            let measured = Target::start(&template, &ctx.fixture.root(), setup, ctx.budget(5.0))
                .ok()
                .and_then(|target| homework_time(ctx, target.addr).ok());
            if let Some(took) = measured {
                note.push_str(&format!(
                    "; {model} {took:.1?} (yours/{model} = {:.2})",
                    yours.as_secs_f64() / took.as_secs_f64().max(1e-9)
                ));
            }
        }
    } else {
        note.push_str(" (the reference server was not found beside the client: no comparison)");
    }
    Outcome::Pass(Some(note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_docs_grading_md_lists_every_test_with_its_points() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grading.md")).unwrap();
        let mut names = std::collections::HashSet::new();
        for check in catalog() {
            assert!(names.insert(check.name), "{} is listed twice", check.name);
            let row = format!("| {} | {} | `{}` | {} |", check.stage, check.points, check.name, check.description);
            assert!(docs.contains(&row), "docs/grading.md lacks the row {row}");
        }
    }

    #[test]
    fn the_guide_and_the_labs_give_each_test_and_each_stage_the_points_the_grader_gives() {
        let checks = catalog();
        let repo = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        // The chapters, and the labs' pages (the handouts' front pages are cut from them).
        let mut pages = Vec::new();
        let mut dirs = vec![repo.join("docs/guide"), repo.join("labs")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten() {
                let path = entry.unwrap().path();
                if path.is_dir() && !path.ends_with("target") {
                    dirs.push(path);
                } else if path.extension().is_some_and(|ext| ext == "md") {
                    pages.push(path);
                }
            }
        }
        let mut seen = 0;
        for path in pages {
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                // A table row: | `name` | points | ...
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                if let [_, name, points, ..] = cells[..] {
                    let name = name.trim_matches('`');
                    if let (Some(check), Ok(points)) = (checks.iter().find(|c| c.name == name), points.parse::<u32>()) {
                        assert_eq!(points, check.points, "{}: {name} is worth {} points", path.display(), check.points);
                        seen += 1;
                    }
                }
                // A sentence: Stage N is worth P points
                if let Some((_, rest)) = line.split_once("Stage ") {
                    if let Some((stage, rest)) = rest.split_once(" is worth ") {
                        if let (Ok(stage), Some(Ok(total))) =
                            (stage.parse::<u8>(), rest.split_whitespace().next().map(str::parse::<u32>))
                        {
                            let want: u32 = checks.iter().filter(|c| c.stage == stage).map(|c| c.points).sum();
                            assert_eq!(total, want, "{}: stage {stage} is worth {want} points", path.display());
                            seen += 1;
                        }
                    }
                }
            }
        }
        assert!(seen > 10, "the guide's point tables were found ({seen} rows)");
    }
}
