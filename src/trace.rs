//! `server --trace FILE`: a timeline of what the server did, written as
//! Chrome trace-event JSON (open it in Perfetto or `chrome://tracing`, or
//! draw it with `client timeline FILE --svg OUT`).
//!
//! **What it shows.** Each loop turn as a `turn` slice holding a `wait`
//! (in `epoll_wait`, `select`, `poll`, `accept` or `io_uring_enter`) and a
//! `handle` (everything done with what the wait returned); blocking work
//! (`read`, `compute`) as slices on the thread that ran it, inside a
//! `handle` when it ran in the loop; each request as an asynchronous slice
//! from the moment it was parsed to the moment its response was queued
//! (requests overlap on one thread, so they are `b`/`e` pairs with an id);
//! signals and cache clears as instants. A slow read in `event` is a long
//! `read` inside a long `handle`: the loop did nothing else meanwhile.
//!
//! **What it costs.** Off (the default), every call below is one load of
//! a [`OnceLock`] and a branch. On, each event takes a mutex and about 64
//! bytes, up to a cap (`--trace-events`); past the cap it stops recording
//! and says so on stderr and in the file. The file is written when the
//! server stops gracefully (SIGINT/SIGTERM), not before.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::error::ServerError;
use crate::log::always;

static TRACER: OnceLock<Tracer> = OnceLock::new();

thread_local! {
    /// This thread's number in the trace; 0 until it records something.
    static TID: Cell<u32> = const { Cell::new(0) };
}

/// The recording in progress.
#[derive(Debug)]
struct Tracer {
    epoch: Instant,
    cap: usize,
    events: Mutex<Vec<Event>>,
    /// Set once the cap is reached: nothing more is recorded.
    full: AtomicBool,
    /// Events not recorded because the cap was reached.
    dropped: AtomicU64,
    next_tid: AtomicU32,
    next_request: AtomicU64,
    /// Threads' numbers and names, for the file's metadata.
    threads: Mutex<Vec<(u32, String)>>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A duration slice (`X`): `value` is its length in nanoseconds.
    Slice,
    /// An asynchronous slice begins (`b`): `value` is its id.
    Begin,
    /// An asynchronous slice ends (`e`): `value` is its id.
    End,
    /// An instant (`i`).
    Instant,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    kind: Kind,
    name: &'static str,
    tid: u32,
    ts_ns: u64,
    value: u64,
    args: Args,
}

/// Up to two numbers attached to an event (entries submitted, files cleared).
type Args = [Option<(&'static str, u64)>; 2];

impl Tracer {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn tid(&self) -> u32 {
        TID.with(|tid| {
            if tid.get() == 0 {
                let new = self.next_tid.fetch_add(1, Ordering::Relaxed);
                let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
                let name = std::thread::current().name().unwrap_or("thread").to_string();
                // Pool threads may share a name (every `conn` of `threads`).
                let name = if threads.iter().any(|(_, n)| *n == name) { format!("{name} #{new}") } else { name };
                threads.push((new, name));
                tid.set(new);
            }
            tid.get()
        })
    }

    fn record(&self, kind: Kind, name: &'static str, ts_ns: u64, value: u64, args: Args) {
        if self.full.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let tid = self.tid();
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() >= self.cap {
            if !self.full.swap(true, Ordering::Relaxed) {
                always!(
                    "trace: {} events recorded, the cap: recording stopped (raise it with --trace-events)",
                    self.cap
                );
            }
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        events.push(Event { kind, name, tid, ts_ns, value, args });
    }

    /// Writes the trace-event JSON. Requests still open (a client that
    /// left mid-request, a stop's grace period over) are closed at the end.
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        let dropped = self.dropped.load(Ordering::Relaxed);
        writeln!(out, "{{\"displayTimeUnit\":\"ms\",")?;
        writeln!(
            out,
            "\"otherData\":{{\"recorded_by\":\"server --trace\",\"cap\":{},\"dropped\":{dropped}}},",
            self.cap
        )?;
        writeln!(out, "\"traceEvents\":[")?;
        write!(out, r#"{{"ph":"M","pid":{pid},"tid":0,"ts":0,"name":"process_name","args":{{"name":"server"}}}}"#)?;
        for (tid, name) in threads.iter() {
            let name = name.replace(['"', '\\'], "_");
            write!(out, ",\n{{\"ph\":\"M\",\"pid\":{pid},\"tid\":{tid},\"ts\":0,\"name\":\"thread_name\",\"args\":{{\"name\":\"{name}\"}}}}")?;
            write!(out, ",\n{{\"ph\":\"M\",\"pid\":{pid},\"tid\":{tid},\"ts\":0,\"name\":\"thread_sort_index\",\"args\":{{\"sort_index\":{tid}}}}}")?;
        }
        let micros = |ns: u64| format!("{}.{:03}", ns / 1000, ns % 1000);
        let mut open: HashSet<u64> = HashSet::new();
        let mut last_ns = 0;
        for event in events.iter() {
            let Event { kind, name, tid, ts_ns, value, args } = *event;
            last_ns = last_ns.max(ts_ns + if matches!(kind, Kind::Slice) { value } else { 0 });
            let ts = micros(ts_ns);
            let head = format!(r#",{}{{"pid":{pid},"tid":{tid},"ts":{ts},"name":"{name}""#, '\n');
            let args: Vec<String> = args.iter().flatten().map(|(key, value)| format!(r#""{key}":{value}"#)).collect();
            let args = format!(r#","args":{{{}}}}}"#, args.join(","));
            match kind {
                Kind::Slice => write!(out, r#"{head},"ph":"X","cat":"loop","dur":{}{args}"#, micros(value))?,
                Kind::Begin => {
                    open.insert(value);
                    write!(out, r#"{head},"ph":"b","cat":"request","id":{value}{args}"#)?
                }
                Kind::End => {
                    // An end whose begin was past the cap (or never was) is left out.
                    if open.remove(&value) {
                        write!(out, r#"{head},"ph":"e","cat":"request","id":{value}{args}"#)?
                    }
                }
                Kind::Instant => write!(out, r#"{head},"ph":"i","s":"t"{args}"#)?,
            }
        }
        let mut unfinished: Vec<u64> = open.into_iter().collect();
        unfinished.sort_unstable();
        for id in unfinished {
            write!(
                out,
                ",\n{{\"pid\":{pid},\"tid\":0,\"ts\":{},\"name\":\"request\",\"ph\":\"e\",\"cat\":\"request\",\"id\":{id},\"args\":{{\"unfinished\":1}}}}",
                micros(last_ns)
            )?;
        }
        if dropped > 0 {
            write!(
                out,
                ",\n{{\"pid\":{pid},\"tid\":0,\"ts\":{},\"name\":\"trace stopped recording: the cap of {} events was reached\",\"ph\":\"i\",\"s\":\"g\",\"args\":{{\"dropped\":{dropped}}}}}",
                micros(last_ns),
                self.cap
            )?;
        }
        writeln!(out, "\n]}}")?;
        out.flush()
    }
}

/// Starts recording if `path` is given; the returned guard writes the file
/// when dropped (when the model's loop has returned). The file is created
/// now, so that a path that cannot be written stops the server at start,
/// not after the run.
pub fn start(path: Option<&Path>, cap: usize) -> Result<Option<Recording>, ServerError> {
    let Some(path) = path else { return Ok(None) };
    let file = File::create(path).map_err(ServerError::io(format!("cannot write the trace to {}", path.display())))?;
    let tracer = Tracer {
        epoch: Instant::now(),
        cap: cap.max(1),
        events: Mutex::new(Vec::with_capacity(cap.clamp(1, 1 << 16))),
        full: AtomicBool::new(false),
        dropped: AtomicU64::new(0),
        next_tid: AtomicU32::new(1),
        next_request: AtomicU64::new(1),
        threads: Mutex::new(Vec::new()),
    };
    // One recording per process: a second start (a test calling `start`
    // twice) records into the first.
    let _ = TRACER.set(tracer);
    Ok(Some(Recording { path: path.to_path_buf(), file: Some(file) }))
}

/// Writes the trace file when dropped.
#[derive(Debug)]
pub struct Recording {
    path: PathBuf,
    file: Option<File>,
}

impl Drop for Recording {
    fn drop(&mut self) {
        let (Some(tracer), Some(file)) = (TRACER.get(), self.file.take()) else { return };
        let written = tracer.write(&mut BufWriter::new(file));
        match written {
            Ok(()) => always!("trace written to {}", self.path.display()),
            Err(err) => always!("trace: cannot write {}: {err}", self.path.display()),
        }
    }
}

/// A duration slice on this thread, recorded when dropped; slices opened
/// inside it must be dropped first (as scopes are), so they nest.
#[must_use = "a slice ends when dropped"]
#[derive(Debug)]
pub struct Span {
    open: Option<(&'static Tracer, &'static str, u64, Args)>,
}

/// Opens a slice named `name` on this thread (`turn`, `wait`, `handle`, `read`).
#[inline]
pub fn span(name: &'static str) -> Span {
    Span { open: TRACER.get().map(|tracer| (tracer, name, tracer.now_ns(), [None; 2])) }
}

impl Span {
    /// Attaches a number to the slice (at most two are kept); `value` is
    /// only computed when tracing.
    #[inline]
    pub fn arg(&mut self, key: &'static str, value: impl FnOnce() -> u64) {
        if let Some((_, _, _, args)) = &mut self.open {
            if let Some(slot) = args.iter_mut().find(|slot| slot.is_none()) {
                *slot = Some((key, value()));
            }
        }
    }
}

impl Drop for Span {
    #[inline]
    fn drop(&mut self) {
        if let Some((tracer, name, start, args)) = self.open.take() {
            let end = tracer.now_ns();
            tracer.record(Kind::Slice, name, start, end.saturating_sub(start), args);
        }
    }
}

/// Begins a request's asynchronous slice; its id (0 when not tracing) is
/// what [`request_end`] takes.
#[inline]
pub fn request_begin() -> u64 {
    let Some(tracer) = TRACER.get() else { return 0 };
    let id = tracer.next_request.fetch_add(1, Ordering::Relaxed);
    tracer.record(Kind::Begin, "request", tracer.now_ns(), id, [None; 2]);
    id
}

/// Ends the request slice `id` began (nothing for id 0).
#[inline]
pub fn request_end(id: u64) {
    if id == 0 {
        return;
    }
    if let Some(tracer) = TRACER.get() {
        tracer.record(Kind::End, "request", tracer.now_ns(), id, [None; 2]);
    }
}

/// A request's asynchronous slice that ends when dropped, for code that
/// answers a request in one scope (the `tokio` model's `answer`).
#[must_use = "the request's slice ends when dropped"]
#[derive(Debug)]
pub struct RequestSlice(u64);

/// Begins a request's slice, ended when the guard is dropped.
#[inline]
pub fn request() -> RequestSlice {
    RequestSlice(request_begin())
}

impl Drop for RequestSlice {
    #[inline]
    fn drop(&mut self) {
        request_end(self.0);
    }
}

/// Marks a moment on this thread (a signal, a cache clear), with up to two numbers.
#[inline]
pub fn instant(name: &'static str, args: Args) {
    if let Some(tracer) = TRACER.get() {
        tracer.record(Kind::Instant, name, tracer.now_ns(), 0, args);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_nothing_is_recorded_and_the_file_says_so() {
        let tracer = Tracer {
            epoch: Instant::now(),
            cap: 3,
            events: Mutex::new(Vec::new()),
            full: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            next_tid: AtomicU32::new(1),
            next_request: AtomicU64::new(1),
            threads: Mutex::new(Vec::new()),
        };
        tracer.record(Kind::Begin, "request", 10, 7, [None; 2]);
        for ts in 0..5 {
            tracer.record(Kind::Slice, "turn", ts * 1000, 500, [Some(("events", 1)), None]);
        }
        let mut out = Vec::new();
        tracer.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(tracer.events.lock().unwrap().len(), 3);
        assert_eq!(tracer.dropped.load(Ordering::Relaxed), 3);
        assert!(text.contains("the cap of 3 events was reached"), "{text}");
        assert!(text.contains(r#""ph":"e","cat":"request","id":7"#), "the open request is closed: {text}");
        assert!(text.contains(r#""ts":1.000"#) && text.contains(r#""dur":0.500"#), "{text}");
    }
}
