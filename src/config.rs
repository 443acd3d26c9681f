//! Everything a server run is configured with, and every default, once.
//!
//! The `server` binary's flags, [`Config::default`], the connection limits
//! and the parser limits all take their defaults from [`defaults`], so a
//! default is written in one place. Tests and the benchmark only ever go
//! through the flags.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The default of every setting (`server --help` shows them).
pub mod defaults {
    use std::time::Duration;

    /// Port to listen on.
    pub const PORT: u16 = 7070;
    /// Byte budget of the file cache.
    pub const CACHE_BYTES: u64 = 64 << 20;
    /// Largest file kept in the cache. Larger files are streamed with
    /// `sendfile`: above this size the copy from user memory costs more
    /// than opening the file saves (the crossover, measured, is in
    /// `docs/performance.md`).
    pub const CACHE_MAX_FILE_BYTES: u64 = 128 << 10;
    /// Connections served at once.
    pub const MAX_CONNS: usize = 10_000;
    /// Most reader threads of the asynchronous models (started on demand),
    /// as Tokio's blocking pool: enough that storage, not the pool, is the
    /// limit for any load the kit measures.
    pub const READERS: usize = contract::DEFAULT_READERS;
    /// Longest request line accepted.
    pub const MAX_LINE_BYTES: usize = 4096;
    /// Longest HTTP head accepted.
    pub const MAX_HEAD_BYTES: usize = 8192;
    /// A request must arrive complete within this time of its first byte.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// An idle keep-alive connection is closed after this.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
    /// A response that makes no write progress this long is dropped.
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
    /// Most events `--trace` records (about 90 bytes each) before it stops.
    pub const TRACE_EVENTS: usize = 500_000;
}

/// Which server design runs. Each variant's line is its `--help` entry;
/// the model itself is described once, in its module doc
/// (`crate::models::<name>`, linked from the crate's stage table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// Stage 1: one client at a time, blocking accept and reads.
    Iterative,
    /// Stage 2: a process per connection (fork after accept).
    Fork,
    /// Stage 2: N processes forked at start-up share the listener (--workers N).
    Prefork,
    /// Stage 2: a thread per connection.
    Threads,
    /// Stage 2: N pre-spawned threads take connections from a queue (--workers N).
    Pool,
    /// Stage 2: select(2) over non-blocking sockets (at most FD_SETSIZE fds).
    Select,
    /// Stage 2: poll(2): no fd ceiling, but O(n) per wait.
    Poll,
    /// Stage 2: mio (epoll); file reads block the loop thread ("Sync I/O").
    Event,
    /// Stage 4: mio; reads on a thread pool, completion via a waker ("Async I/O").
    EventAsync,
    /// Stage 4: mio; POSIX aio_read, completion signalled to the loop.
    EventAio,
    /// Stage 4: mio; file reads submitted to io_uring.
    Uring,
    /// Stage 2, async/await: a tokio task per connection; reads on its blocking pool.
    Tokio,
    /// Stage 4: no epoll; every socket and file operation completes on io_uring.
    UringNet,
}

impl Model {
    /// Every model, in the order of the stages: the one list tests, the
    /// benchmark and the docs take the models from.
    pub const ALL: [Model; 13] = [
        Model::Iterative,
        Model::Fork,
        Model::Prefork,
        Model::Threads,
        Model::Pool,
        Model::Select,
        Model::Poll,
        Model::Event,
        Model::EventAsync,
        Model::EventAio,
        Model::Uring,
        Model::Tokio,
        Model::UringNet,
    ];

    /// The name `--model` takes.
    pub fn name(self) -> &'static str {
        match self {
            Model::Iterative => "iterative",
            Model::Fork => "fork",
            Model::Prefork => "prefork",
            Model::Threads => "threads",
            Model::Pool => "pool",
            Model::Select => "select",
            Model::Poll => "poll",
            Model::Event => "event",
            Model::EventAsync => "event-async",
            Model::EventAio => "event-aio",
            Model::Uring => "uring",
            Model::Tokio => "tokio",
            Model::UringNet => "uring-net",
        }
    }

    /// What `--workers N` counts for this model; `None` for models that
    /// take no such number.
    pub fn workers(self) -> Option<Workers> {
        match self {
            Model::Event | Model::EventAsync | Model::EventAio | Model::Uring | Model::UringNet => {
                Some(Workers::EventLoops)
            }
            Model::Prefork => Some(Workers::Processes),
            Model::Pool => Some(Workers::PoolThreads),
            Model::Tokio => Some(Workers::RuntimeThreads),
            Model::Iterative | Model::Fork | Model::Threads | Model::Select | Model::Poll => None,
        }
    }
}

/// What `--workers N` counts, which depends on the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// Event loops, each on its own `SO_REUSEPORT` listener (default 1).
    EventLoops,
    /// Worker processes sharing the listener (default: one per core).
    Processes,
    /// Threads of the connection pool (default: one per core).
    PoolThreads,
    /// Worker threads of tokio's multi-thread runtime, or current-thread
    /// runtimes with `--runtime current-thread-per-core` (default: one per
    /// core, as `#[tokio::main]`).
    RuntimeThreads,
}

impl Workers {
    /// How many when `--workers` is not given.
    pub fn default_count(self) -> usize {
        match self {
            Workers::EventLoops => 1,
            Workers::Processes | Workers::PoolThreads | Workers::RuntimeThreads => cores(),
        }
    }
}

/// How the `tokio` model runs its `--workers N` (`--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Runtime {
    /// One multi-thread runtime with N worker threads that steal ready
    /// tasks from each other (the default: as `#[tokio::main]`).
    #[default]
    MultiThread,
    /// N current-thread runtimes, each on its own thread with its own
    /// `SO_REUSEPORT` listener, as `event --workers N`.
    CurrentThreadPerCore,
}

/// A technique `uring-net` uses, named so that it can be turned off
/// (`--without`) and what it buys measured one at a time
/// (`./benchmark.sh --techniques`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Technique {
    /// One accept and one receive per connection that each post a
    /// completion per arrival; without it, each is armed again after
    /// every completion.
    Multishot,
    /// Receives draw buffers from a ring the kernel picks from; without it,
    /// each connection owns a receive buffer (and receives are single-shot,
    /// as multishot receives need provided buffers).
    ProvidedBuffers,
    /// Sockets accepted straight into the ring's table of registered files
    /// (direct descriptors), so no operation looks up or counts a file
    /// reference; without it, accept returns ordinary fds.
    RegisteredFiles,
    /// One `io_uring_enter` per loop turn submits everything queued; without
    /// it, every entry is submitted on its own (one syscall each, as
    /// readiness loops make one per operation).
    Batching,
    /// The kernel runs completion work (the receive a ready socket allows,
    /// the send it has room for) when the loop asks for completions
    /// (`IORING_SETUP_DEFER_TASKRUN`, one issuer, Linux 6.1); without it,
    /// each arrival interrupts the loop wherever it is to run that work.
    DeferTaskrun,
}

impl Technique {
    /// The name `--without` takes.
    pub fn name(self) -> &'static str {
        match self {
            Technique::Multishot => "multishot",
            Technique::ProvidedBuffers => "provided-buffers",
            Technique::RegisteredFiles => "registered-files",
            Technique::Batching => "batching",
            Technique::DeferTaskrun => "defer-taskrun",
        }
    }
}

/// When `uring-net` sends with `IORING_OP_SEND_ZC` (`--zero-copy`): the
/// kernel pins the buffer's pages instead of copying them, and posts a
/// second completion when it no longer needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ZeroCopy {
    /// Never: every send copies into the socket buffer.
    Never,
    /// Large sends on a listener not bound to loopback. Loopback delivers
    /// zero-copy data with a deferred copy (the kernel's
    /// `Documentation/networking/msg_zerocopy.rst`, "Loopback"), so there it
    /// only adds the second completion.
    #[default]
    Remote,
    /// Every large send, loopback or not (to measure it here).
    Always,
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the server answers (`docs/assignment.md` has the protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceKind {
    /// Serve files from the root: the line is a path.
    File,
    /// Write the current UTC time on accept, then close.
    Time,
    /// The line is n (0..=40); answer fib(n), computed naively (CPU-bound).
    Fib,
}

impl ServiceKind {
    /// The name `--service` takes.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::File => "file",
            ServiceKind::Time => "time",
            ServiceKind::Fib => "fib",
        }
    }

    /// Whether a connection starts with the client's request (file, fib)
    /// rather than the server's answer (time).
    pub fn client_speaks_first(self) -> bool {
        match self {
            ServiceKind::File | ServiceKind::Fib => true,
            ServiceKind::Time => false,
        }
    }
}

/// The complete configuration of one server run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server design.
    pub model: Model,
    /// What it serves.
    pub service: ServiceKind,
    /// Address to bind.
    pub addr: IpAddr,
    /// Port to bind; 0 lets the kernel pick (read it from `listening on`).
    pub port: u16,
    /// Directory files are served from.
    pub root: PathBuf,
    /// Serve files and directories whose name starts with `.`.
    pub allow_hidden: bool,
    /// Byte budget of the file cache; 0 disables it.
    pub cache_bytes: u64,
    /// Files larger than this are never cached, but streamed.
    pub cache_max_file_bytes: u64,
    /// Simulated storage latency added to every read that misses the cache.
    pub read_delay: Duration,
    /// Connections served at once (`--max-conns`); more are refused with 503.
    /// The server may lower it to what the open-file limit allows.
    pub max_conns: usize,
    /// Most reader threads of `event-async` (and of the other async models'
    /// fib work, and the size of `tokio`'s blocking pool); they start on
    /// demand and stop when idle.
    pub readers: usize,
    /// `--workers N`: event loops, worker processes or pool threads, as
    /// [`Model::workers`] says; `None` takes the model's default.
    pub workers: Option<usize>,
    /// `--runtime`: how `tokio` runs its workers (other models ignore it).
    pub runtime: Runtime,
    /// Longest request line accepted.
    pub max_line_bytes: usize,
    /// Longest HTTP head accepted.
    pub max_head_bytes: usize,
    /// A request must arrive complete within this time of its first byte.
    pub request_timeout: Duration,
    /// `--without`: the `uring-net` techniques turned off.
    pub without: Vec<Technique>,
    /// `--zero-copy`: when `uring-net` sends without copying.
    pub zero_copy: ZeroCopy,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Duration,
    /// A response that makes no write progress this long is dropped.
    pub write_timeout: Duration,
    /// Do not log per-event lines to stderr.
    pub quiet: bool,
    /// `--defer-accept`: hand a connection to the server only once its
    /// first bytes are in (Linux's `TCP_DEFER_ACCEPT`, nginx's `listen ...
    /// deferred`). Off by default: with it, a client that connects and says
    /// nothing stays invisible to the server for a second, and idle or
    /// stalled clients are what the early stages are about.
    pub defer_accept: bool,
    /// `--trace FILE`: record what the server does, written at a graceful stop.
    pub trace: Option<PathBuf>,
    /// `--trace-events N`: the most events the trace holds.
    pub trace_events: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: Model::Event,
            service: ServiceKind::File,
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: defaults::PORT,
            root: PathBuf::from("."),
            allow_hidden: false,
            cache_bytes: defaults::CACHE_BYTES,
            cache_max_file_bytes: defaults::CACHE_MAX_FILE_BYTES,
            read_delay: Duration::ZERO,
            max_conns: defaults::MAX_CONNS,
            readers: defaults::READERS,
            workers: None,
            runtime: Runtime::default(),
            without: Vec::new(),
            zero_copy: ZeroCopy::default(),
            max_line_bytes: defaults::MAX_LINE_BYTES,
            max_head_bytes: defaults::MAX_HEAD_BYTES,
            request_timeout: defaults::REQUEST_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            write_timeout: defaults::WRITE_TIMEOUT,
            quiet: false,
            defer_accept: false,
            trace: None,
            trace_events: defaults::TRACE_EVENTS,
        }
    }
}

impl Config {
    /// How many workers (`--workers`) this run uses: the flag, or the model's default.
    pub fn workers(&self) -> usize {
        self.workers.or(self.model.workers().map(Workers::default_count)).unwrap_or(1)
    }

    /// Whether `uring-net` uses `technique` (not turned off by `--without`).
    pub fn uses(&self, technique: Technique) -> bool {
        !self.without.contains(&technique)
    }

    /// Whether `--workers N` runs N loops, each on its own `SO_REUSEPORT`
    /// listener: the event models, and `tokio` with a runtime per core.
    pub fn loops_share_the_port(&self) -> bool {
        match self.model.workers() {
            Some(Workers::EventLoops) => true,
            Some(Workers::RuntimeThreads) => self.runtime == Runtime::CurrentThreadPerCore,
            _ => false,
        }
    }
}

/// The number of CPU cores: the default for prefork's processes and pool's threads.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// A size in bytes, written and read with binary suffixes (`4096`, `64KiB`,
/// `64MiB`, `1G`, `2GB`; K = KiB = 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size (try 4096 or 64MiB)"))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
        };
        number.checked_mul(multiplier).map(ByteSize).ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly: `64MiB`, `4KiB`, `1000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        match units.iter().find(|(unit, _)| self.0 >= *unit && self.0.is_multiple_of(*unit)) {
            Some((unit, name)) => write!(f, "{}{name}", self.0 / unit),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A duration written and read in seconds, fractions allowed (`10`, `0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl FromStr for Seconds {
    type Err = String;

    fn from_str(text: &str) -> Result<Seconds, String> {
        text.trim()
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .map(Seconds)
            .ok_or_else(|| format!("{text:?} is not a number of seconds (try 10 or 0.5)"))
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_models_are_the_ones_the_contract_names() {
        assert_eq!(Model::ALL.map(Model::name), contract::MODELS);
    }

    fn size(text: &str) -> Result<u64, String> {
        text.parse::<ByteSize>().map(|size| size.0)
    }

    #[test]
    fn sizes_accept_binary_suffixes_and_print_back() {
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert_eq!(size("1k"), Ok(1024));
        assert_eq!(size("2 GB"), Ok(2 << 30));
        assert!(size("lots").is_err());
        assert!(size("5XB").is_err());
        assert!(size("99999999999999G").is_err());
        for text in ["64MiB", "4KiB", "1000", "3GiB", "0"] {
            assert_eq!(text.parse::<ByteSize>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn seconds_accept_fractions() {
        assert_eq!("0.5".parse::<Seconds>(), Ok(Seconds(Duration::from_millis(500))));
        assert_eq!(Seconds(defaults::IDLE_TIMEOUT).to_string(), "15");
        assert!("soon".parse::<Seconds>().is_err());
        assert!("-1".parse::<Seconds>().is_err());
    }

    #[test]
    fn every_model_is_listed_once_and_named_as_clap_spells_it() {
        use clap::ValueEnum;
        assert_eq!(Model::ALL.len(), Model::value_variants().len());
        for model in Model::ALL {
            let spelled = model.to_possible_value().expect("every model is selectable");
            assert_eq!(spelled.get_name(), model.name());
        }
    }
}
