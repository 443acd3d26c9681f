//! `client bench`: a closed-loop load generator, like `wrk`.
//!
//! Each connection has one request outstanding at a time: send, read the
//! whole response, check it, record the latency, send the next. Connections
//! are spread over a few threads, each running its own mio (epoll) loop, so
//! the generator can hold 10,000 connections and is not the bottleneck.
//!
//! Every response is checked: the status must be success and the body
//! exactly as long as announced (and the same length for the same path on
//! every request). A wrong or failed response is counted as an error, and
//! the caller decides what errors mean (`client bench` exits 1).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::timeline::{Recording, RequestRecord, MAX_RECORDED_REQUESTS};

/// Bytes one `read` takes from a socket.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Longest response head accepted before the response counts as wrong.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// When the run ends.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// Run this long; requests still in flight then are abandoned, not
    /// counted (as `wrk` does), so a stalled server cannot stretch the run.
    Elapsed(Duration),
    /// Run exactly this many requests in total.
    Requests(u64),
    /// Connect and run for `warm_up` without counting (new connections
    /// made, a thread or a process started per connection by the server,
    /// caches warm), then count for `counted` as [`Until::Elapsed`] does: a
    /// short measurement of the steady state, not of setting it up.
    WarmedUp {
        /// Uncounted time from the first connect.
        warm_up: Duration,
        /// Counted time after it.
        counted: Duration,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Server address.
    pub addr: SocketAddr,
    /// Concurrent connections (each with one request outstanding).
    pub conns: usize,
    /// When to stop.
    pub until: Until,
    /// Paths requested round-robin; connection i starts at path i, so N
    /// connections over N paths ask for N different files at once.
    pub paths: Vec<String>,
    /// Speak HTTP/1.1 instead of the line protocol.
    pub http: bool,
    /// A new connection for every request (as the OSTEP client does).
    pub no_keepalive: bool,
    /// Threads running the connections.
    pub threads: usize,
    /// A request taking longer than this counts as an error.
    pub timeout: Duration,
}

impl LoadPlan {
    /// The suite's usual run: keep-alive connections, two threads, a
    /// generous per-request timeout.
    pub fn keepalive(addr: SocketAddr, conns: usize, until: Until, paths: Vec<String>, http: bool) -> LoadPlan {
        LoadPlan { addr, conns, until, paths, http, no_keepalive: false, threads: 2, timeout: Duration::from_secs(30) }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// Responses received complete and correct.
    pub ok: u64,
    /// Responses refused, truncated, malformed, timed out, or connections failed.
    pub errors: u64,
    /// The first few error descriptions, for the message.
    pub error_samples: Vec<String>,
    /// Body bytes received in correct responses.
    pub body_bytes: u64,
    /// From the first connect to the last response.
    pub elapsed: Duration,
    /// Latency of correct responses, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl Report {
    /// A report of `ok` correct responses in one second, for tests.
    #[cfg(test)]
    pub(crate) fn with_count(ok: u64) -> Report {
        Report {
            ok,
            errors: 0,
            error_samples: Vec::new(),
            body_bytes: 0,
            elapsed: Duration::from_secs(1),
            latency_us: new_histogram(),
        }
    }

    /// Correct responses per second.
    pub fn requests_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Body megabytes (10^6) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.body_bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` (0..=1), in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// The human-readable summary `client bench` prints.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} requests in {:.3} s, {} errors\n{:.0} requests/s, {:.2} MB/s\nlatency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            self.ok,
            self.elapsed.as_secs_f64(),
            self.errors,
            self.requests_per_sec(),
            self.mb_per_sec(),
            self.latency_ms(0.5),
            self.latency_ms(0.9),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.latency_us.max() as f64 / 1000.0,
        );
        for sample in &self.error_samples {
            out.push_str(&format!("error: {sample}\n"));
        }
        out
    }

    /// The names of [`Report::values`]: the CSV header and the JSON keys.
    pub const FIELD_NAMES: [&'static str; 10] = [
        "requests",
        "errors",
        "seconds",
        "requests_per_sec",
        "mb_per_sec",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
    ];

    /// The measured values, in the order of [`Report::FIELD_NAMES`].
    pub fn values(&self) -> [String; 10] {
        [
            self.ok.to_string(),
            self.errors.to_string(),
            format!("{:.6}", self.elapsed.as_secs_f64()),
            format!("{:.1}", self.requests_per_sec()),
            format!("{:.3}", self.mb_per_sec()),
            format!("{:.3}", self.latency_ms(0.5)),
            format!("{:.3}", self.latency_ms(0.9)),
            format!("{:.3}", self.latency_ms(0.99)),
            format!("{:.3}", self.latency_ms(0.999)),
            format!("{:.3}", self.latency_us.max() as f64 / 1000.0),
        ]
    }

    /// The CSV header matching [`Report::csv_fields`].
    pub fn csv_header() -> String {
        Report::FIELD_NAMES.join(",")
    }

    /// This report as CSV fields (no newline).
    pub fn csv_fields(&self) -> String {
        self.values().join(",")
    }

    /// This report as one JSON object.
    pub fn json(&self) -> String {
        let mut fields: Vec<String> =
            Report::FIELD_NAMES.iter().zip(self.values()).map(|(name, value)| format!("\"{name}\":{value}")).collect();
        let samples: Vec<String> = self.error_samples.iter().map(|sample| crate::json::string(sample)).collect();
        fields.push(format!("\"error_samples\":[{}]", samples.join(",")));
        format!("{{{}}}", fields.join(","))
    }
}

/// Runs `plan` and measures it.
pub fn run(plan: &LoadPlan) -> Result<Report> {
    run_recording(plan, false).map(|(report, _)| report)
}

/// Runs `plan`, measures it, and records when each request connected, was
/// sent, heard its first byte and its last (`client bench --timeline`).
pub fn run_with_timeline(plan: &LoadPlan) -> Result<(Report, Recording)> {
    run_recording(plan, true)
}

fn run_recording(plan: &LoadPlan, record: bool) -> Result<(Report, Recording)> {
    if plan.paths.is_empty() {
        bail!("give at least one --path");
    }
    raise_fd_limit(plan.conns);
    let threads = plan.threads.clamp(1, plan.conns.max(1));
    // Requests not yet started, shared by every thread (unbounded: i64::MAX).
    let budget = Arc::new(AtomicI64::new(match plan.until {
        Until::Requests(n) => i64::try_from(n).unwrap_or(i64::MAX),
        Until::Elapsed(_) | Until::WarmedUp { .. } => i64::MAX,
    }));
    let connected = Instant::now();
    // Responses that complete before `started` are checked but not counted.
    let started = match plan.until {
        Until::WarmedUp { warm_up, .. } => connected + warm_up,
        _ => connected,
    };
    let stop_starting_at = match plan.until {
        Until::Elapsed(duration) => Some(started + duration),
        Until::WarmedUp { counted, .. } => Some(started + counted),
        Until::Requests(_) => None,
    };
    let results: Vec<Result<Tally>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let ids: Vec<usize> = (t..plan.conns).step_by(threads).collect();
                let budget = Arc::clone(&budget);
                let recording = record.then(|| (started, MAX_RECORDED_REQUESTS / threads));
                scope.spawn(move || Worker::new(plan, ids, budget, stop_starting_at, started, recording)?.run())
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| bail!("a bench thread panicked"))).collect()
    });
    let elapsed = Instant::now().saturating_duration_since(started);
    let mut report =
        Report { ok: 0, errors: 0, error_samples: Vec::new(), body_bytes: 0, elapsed, latency_us: new_histogram() };
    let mut recording = Recording::default();
    for tally in results {
        let mut tally = tally?;
        recording.requests.append(&mut tally.recorded);
        recording.left_out += tally.left_out;
        report.ok += tally.ok;
        report.errors += tally.errors;
        report.body_bytes += tally.body_bytes;
        report.latency_us.add(&tally.latency_us).context("merging latency histograms")?;
        for sample in tally.error_samples {
            if report.error_samples.len() < 5 {
                report.error_samples.push(sample);
            }
        }
    }
    Ok((report, recording))
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 1 hour at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Lifts the soft fd limit to the hard one when `conns` connections need
/// more fds than it allows (servers started afterwards inherit it).
pub fn raise_fd_limit(conns: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = conns as u64 + 64;
    if limit.current.is_some_and(|current| current < wanted) {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    }
}

/// One thread's results.
struct Tally {
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    body_bytes: u64,
    latency_us: Histogram<u64>,
    /// With `--timeline`: this thread's requests, up to its share of the cap.
    recorded: Vec<RequestRecord>,
    /// Requests past that share.
    left_out: u64,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(what);
        }
    }
}

/// Where a connection is in its current request.
#[derive(Debug)]
enum Phase {
    /// Finished: no more requests for this connection.
    Finished,
    /// Failed; the main loop starts a new request on its next turn, so a
    /// server refusing every connection costs an error per turn, not a spin.
    Retry,
    /// Connecting, then writing `written` bytes of the request.
    Sending { written: usize },
    /// Request sent; reading the response.
    Receiving(ResponseReader),
    /// Response complete and checked; the main loop starts the next
    /// request on its next turn (see [`Worker::answered`]).
    Answered,
}

/// One benchmark connection.
struct BenchConn {
    stream: Option<TcpStream>,
    phase: Phase,
    /// Index of the next path to request.
    next_path: usize,
    /// Path index of the request in flight.
    path: usize,
    request_started: Instant,
    /// With `--timeline`: the moments of the request in flight.
    marks: Marks,
}

/// When a request reached each step (`client bench --timeline`).
#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    connected: Option<Instant>,
    sent: Option<Instant>,
    first_byte: Option<Instant>,
}

struct Worker<'a> {
    plan: &'a LoadPlan,
    poll: Poll,
    conns: Vec<BenchConn>,
    budget: Arc<AtomicI64>,
    stop_starting_at: Option<Instant>,
    /// Responses completed before this are checked, not counted (warm-up).
    counting_from: Instant,
    tally: Tally,
    /// Body length first seen per path: later responses must match it.
    lengths: HashMap<usize, u64>,
    requests: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    /// Connections whose response just completed, in order. A finished
    /// request hands its successor to the loop instead of starting it
    /// with a nested call: a server that answers before we read again
    /// would otherwise grow the stack by one call chain per response,
    /// without bound (it overflowed once, against `threads`).
    answered: Vec<usize>,
    /// The connections' global numbers (a timeline's rows).
    ids: Vec<usize>,
    /// With `--timeline`: when the run began, and how many requests this
    /// thread may record.
    recording: Option<(Instant, usize)>,
}

impl<'a> Worker<'a> {
    fn new(
        plan: &'a LoadPlan,
        ids: Vec<usize>,
        budget: Arc<AtomicI64>,
        stop_starting_at: Option<Instant>,
        counting_from: Instant,
        recording: Option<(Instant, usize)>,
    ) -> Result<Self> {
        let requests = plan.paths.iter().map(|path| encode_request(plan, path)).collect();
        let conns = ids
            .iter()
            .map(|&id| BenchConn {
                stream: None,
                phase: Phase::Finished,
                next_path: id % plan.paths.len(),
                path: 0,
                request_started: Instant::now(),
                marks: Marks::default(),
            })
            .collect();
        Ok(Worker {
            plan,
            poll: Poll::new().context("creating a bench event loop")?,
            conns,
            budget,
            stop_starting_at,
            counting_from,
            tally: Tally {
                ok: 0,
                errors: 0,
                error_samples: Vec::new(),
                body_bytes: 0,
                latency_us: new_histogram(),
                recorded: Vec::new(),
                left_out: 0,
            },
            lengths: HashMap::new(),
            requests,
            scratch: vec![0; READ_CHUNK_BYTES],
            answered: Vec::new(),
            ids,
            recording,
        })
    }

    fn run(mut self) -> Result<Tally> {
        for index in 0..self.conns.len() {
            self.start_request(index);
        }
        let mut events = Events::with_capacity(1024);
        let mut last_timeout_scan = Instant::now();
        while self.conns.iter().any(|conn| !matches!(conn.phase, Phase::Finished)) {
            if self.stop_starting_at.is_some_and(|at| Instant::now() >= at) {
                break; // time is up: abandon what is in flight
            }
            let wait = if !self.answered.is_empty() {
                Duration::ZERO // work is waiting: only collect what else is ready
            } else {
                self.stop_starting_at.map_or(Duration::from_millis(50), |at| {
                    at.saturating_duration_since(Instant::now()).min(Duration::from_millis(50))
                })
            };
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err).context("epoll_wait in the bench loop"),
            }
            for event in events.iter() {
                self.on_event(event.token().0);
            }
            // One new request per answered connection per turn: bounded
            // stack, and a fast connection cannot starve the others.
            for index in std::mem::take(&mut self.answered) {
                self.start_request(index);
            }
            for index in 0..self.conns.len() {
                if matches!(self.conns[index].phase, Phase::Retry) {
                    self.start_request(index);
                }
            }
            if last_timeout_scan.elapsed() >= Duration::from_millis(50) {
                last_timeout_scan = Instant::now();
                self.expire_slow_requests();
            }
        }
        Ok(self.tally)
    }

    /// Whether another request may start now (and takes it from the budget).
    fn take_request(&self) -> bool {
        if self.stop_starting_at.is_some_and(|at| Instant::now() >= at) {
            return false;
        }
        self.budget.fetch_sub(1, Ordering::SeqCst) > 0
    }

    fn start_request(&mut self, index: usize) {
        if !self.take_request() {
            self.drop_stream(index);
            return;
        }
        let conn = &mut self.conns[index];
        conn.path = conn.next_path;
        conn.next_path = (conn.next_path + 1) % self.plan.paths.len();
        conn.request_started = Instant::now();
        // A kept-alive connection is connected already.
        let connected = conn.stream.is_some().then_some(conn.request_started);
        conn.marks = Marks { connected, ..Marks::default() };
        if conn.stream.is_none() {
            match TcpStream::connect(self.plan.addr) {
                Ok(mut stream) => {
                    let _ = stream.set_nodelay(true);
                    if let Err(err) = self.poll.registry().register(
                        &mut stream,
                        Token(index),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        self.fail(index, format!("register: {err}"));
                        return;
                    }
                    conn.stream = Some(stream);
                }
                Err(err) => {
                    self.fail(index, format!("connect {}: {err}", self.plan.addr));
                    return;
                }
            }
        }
        self.conns[index].phase = Phase::Sending { written: 0 };
        self.on_event(index);
    }

    fn on_event(&mut self, index: usize) {
        loop {
            let outcome = match &mut self.conns[index].phase {
                Phase::Finished | Phase::Retry | Phase::Answered => return,
                Phase::Sending { .. } => self.send(index),
                Phase::Receiving(_) => self.receive(index),
            };
            match outcome {
                Ok(Progress::Blocked) => return,
                Ok(Progress::Moved) => continue,
                Err(what) => return self.fail(index, what),
            }
        }
    }

    fn send(&mut self, index: usize) -> Result<Progress, String> {
        let conn = &mut self.conns[index];
        let request = &self.requests[conn.path];
        let (Some(stream), Phase::Sending { written }) = (&mut conn.stream, &mut conn.phase) else {
            return Ok(Progress::Blocked);
        };
        while *written < request.len() {
            match stream.write(&request[*written..]) {
                Ok(n) => {
                    *written += n;
                    conn.marks.connected.get_or_insert_with(Instant::now);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Blocked),
                // Still connecting: the socket is not yet writable.
                Err(err) if err.kind() == io::ErrorKind::NotConnected => return Ok(Progress::Blocked),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(format!("send: {err}")),
            }
        }
        conn.marks.sent = Some(Instant::now());
        conn.phase = Phase::Receiving(ResponseReader::new(self.plan.http));
        Ok(Progress::Moved)
    }

    fn receive(&mut self, index: usize) -> Result<Progress, String> {
        let conn = &mut self.conns[index];
        let (Some(stream), Phase::Receiving(reader)) = (&mut conn.stream, &mut conn.phase) else {
            return Ok(Progress::Blocked);
        };
        let n = match stream.read(&mut self.scratch) {
            Ok(0) => return Err(reader.eof_error()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Blocked),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Ok(Progress::Moved),
            Err(err) => return Err(format!("receive: {err}")),
        };
        conn.marks.first_byte.get_or_insert_with(Instant::now);
        let Some(done) = reader.feed(&self.scratch[..n])? else { return Ok(Progress::Moved) };
        let path = conn.path;
        if *self.lengths.entry(path).or_insert(done.body_len) != done.body_len {
            return Err(format!(
                "{}: body of {} bytes, earlier {}",
                self.plan.paths[path], done.body_len, self.lengths[&path]
            ));
        }
        let latency = conn.request_started.elapsed();
        if Instant::now() >= self.counting_from {
            self.tally.ok += 1;
            self.tally.body_bytes += done.body_len;
            let _ = self.tally.latency_us.record((latency.as_micros() as u64).max(1));
        }
        self.record(index, Ok(done.body_len));
        if self.plan.no_keepalive || done.server_closes {
            self.drop_stream(index);
        }
        // Handed to the loop, never started from here (see `answered`).
        self.conns[index].phase = Phase::Answered;
        self.answered.push(index);
        Ok(Progress::Blocked)
    }

    fn expire_slow_requests(&mut self) {
        let timeout = self.plan.timeout;
        let slow: Vec<usize> = (0..self.conns.len())
            .filter(|&i| {
                matches!(self.conns[i].phase, Phase::Sending { .. } | Phase::Receiving(_))
                    && self.conns[i].request_started.elapsed() > timeout
            })
            .collect();
        for index in slow {
            self.fail(index, format!("no complete response within {timeout:?}"));
        }
    }

    /// Counts an error and drops the connection; a fresh one follows.
    fn fail(&mut self, index: usize, what: String) {
        self.record(index, Err(what.clone()));
        self.tally.error(what);
        self.drop_stream(index);
        self.conns[index].phase = Phase::Retry;
    }

    /// With `--timeline`, keeps the request just ended (up to the cap).
    fn record(&mut self, index: usize, outcome: std::result::Result<u64, String>) {
        let Some((run_started, cap)) = self.recording else { return };
        if self.tally.recorded.len() >= cap {
            self.tally.left_out += 1;
            return;
        }
        let conn = &self.conns[index];
        let since = |at: Instant| at.saturating_duration_since(run_started);
        self.tally.recorded.push(RequestRecord {
            client: self.ids[index],
            path: self.plan.paths[conn.path].clone(),
            start: since(conn.request_started),
            connected: conn.marks.connected.map(since),
            sent: conn.marks.sent.map(since),
            first_byte: conn.marks.first_byte.map(since),
            end: since(Instant::now()),
            outcome,
        });
    }

    fn drop_stream(&mut self, index: usize) {
        if let Some(mut stream) = self.conns[index].stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        self.conns[index].phase = Phase::Finished;
    }
}

enum Progress {
    /// Nothing more until the next event.
    Blocked,
    /// State changed: try again at once.
    Moved,
}

fn encode_request(plan: &LoadPlan, path: &str) -> Vec<u8> {
    if plan.http {
        let target = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        let connection = if plan.no_keepalive { "close" } else { "keep-alive" };
        format!("GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: {connection}\r\n\r\n", plan.addr).into_bytes()
    } else {
        format!("{path}\n").into_bytes()
    }
}

/// A complete, correct response.
#[derive(Debug)]
struct Done {
    body_len: u64,
    server_closes: bool,
}

/// Reads one response incrementally: the head, then exactly the body length.
#[derive(Debug)]
struct ResponseReader {
    http: bool,
    head: Vec<u8>,
    /// Once the head is parsed: what it said, and the body bytes still to come.
    body: Option<BodyProgress>,
}

/// What a response head announced.
#[derive(Debug, Clone, Copy)]
struct Head {
    /// Bytes of the head itself.
    head_len: usize,
    /// Bytes of body that follow.
    body_len: u64,
    /// The server closes the connection after this response.
    server_closes: bool,
}

/// A response whose head has arrived.
#[derive(Debug, Clone, Copy)]
struct BodyProgress {
    head: Head,
    /// Body bytes not yet received.
    left: u64,
}

impl ResponseReader {
    fn new(http: bool) -> ResponseReader {
        ResponseReader { http, head: Vec::new(), body: None }
    }

    fn eof_error(&self) -> String {
        match self.body {
            Some(BodyProgress { head, left }) => {
                format!("connection closed after {} of {} body bytes", head.body_len - left, head.body_len)
            }
            None => "connection closed before a response".to_string(),
        }
    }

    /// Takes bytes; returns the finished response once all of it arrived.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<Option<Done>, String> {
        if self.body.is_none() {
            let before = self.head.len();
            self.head.extend_from_slice(bytes);
            let Some(head) = self.parse_head()? else {
                if self.head.len() > MAX_HEAD_BYTES {
                    return Err("response head too long".into());
                }
                return Ok(None);
            };
            bytes = &bytes[head.head_len - before..];
            self.body = Some(BodyProgress { head, left: head.body_len });
        }
        let progress = self.body.as_mut().expect("head parsed");
        let take = progress.left.min(bytes.len() as u64);
        progress.left -= take;
        if bytes.len() as u64 > take {
            return Err("bytes after the response (none were requested)".into());
        }
        let Head { body_len, server_closes, .. } = progress.head;
        Ok((progress.left == 0).then_some(Done { body_len, server_closes }))
    }

    /// Parses the head once it is complete.
    fn parse_head(&self) -> Result<Option<Head>, String> {
        if self.http {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let head_len = match response.parse(&self.head) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(err) => return Err(format!("bad HTTP response: {err}")),
            };
            let status = response.code.unwrap_or(0);
            if status != 200 {
                return Err(format!("HTTP {status}"));
            }
            let header = |name: &str| {
                response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| h.value.to_ascii_lowercase())
            };
            let len = header("content-length")
                .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok())
                .ok_or("HTTP response without Content-Length")?;
            let closes = header("connection").is_some_and(|v| v == b"close") || response.version == Some(0);
            Ok(Some(Head { head_len, body_len: len, server_closes: closes }))
        } else {
            let Some(newline) = self.head.iter().position(|&b| b == b'\n') else { return Ok(None) };
            let line = String::from_utf8_lossy(&self.head[..newline]);
            match line.strip_prefix("OK ").map(|size| size.trim().parse::<u64>()) {
                Some(Ok(len)) => Ok(Some(Head { head_len: newline + 1, body_len: len, server_closes: false })),
                _ => Err(format!("response {:?}", line.trim_end())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_samples_are_valid_json_strings() {
        assert_eq!(crate::json::string("response \"ERR 404\"\n\\"), "\"response \\\"ERR 404\\\"\\u000a\\\\\"");
        let mut report = Report::with_count(0);
        report.error_samples.push("HTTP 404".into());
        assert!(report.json().ends_with(",\"error_samples\":[\"HTTP 404\"]}"), "{}", report.json());
    }

    #[test]
    fn line_responses_are_read_across_arbitrary_splits() {
        let mut reader = ResponseReader::new(false);
        assert!(reader.feed(b"OK 5").unwrap().is_none());
        assert!(reader.feed(b"\nhel").unwrap().is_none());
        let done = reader.feed(b"lo").unwrap().unwrap();
        assert_eq!((done.body_len, done.server_closes), (5, false));
        assert!(ResponseReader::new(false).feed(b"ERR 404 not found\n").is_err());
        assert!(ResponseReader::new(false).feed(b"OK 2\nabc").is_err(), "extra bytes are wrong");
    }

    #[test]
    fn http_responses_need_200_and_a_content_length() {
        let mut reader = ResponseReader::new(true);
        let done =
            reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").unwrap().unwrap();
        assert_eq!((done.body_len, done.server_closes), (3, true));
        assert!(ResponseReader::new(true).feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(ResponseReader::new(true).feed(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }
}
