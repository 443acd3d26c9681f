//! Everything a server run is configured with, and every default, once.
//!
//! [`Config`] is the `server` binary's command line: clap parses the flags
//! straight into it, with the defaults from [`defaults`], and refuses a flag
//! the chosen model does not read. [`crate::server::Server::bind`] turns it
//! into what a model runs with. Tests and the benchmark only ever go
//! through the flags.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::conn::Limits;
use crate::protocol::ParseLimits;

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
    /// Stage 1: one client at a time: wait for a client, accept it, serve it with blocking reads.
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
    /// Every model, in the order of the stages (the order of the enum,
    /// which clap lists in `--help`).
    pub fn all() -> &'static [Model] {
        <Model as clap::ValueEnum>::value_variants()
    }

    /// The name `--model` takes: the contract's list, which the client
    /// (which does not link the server) takes the models from, is the one
    /// source of the names; a test checks that clap spells them the same.
    pub fn name(self) -> &'static str {
        contract::MODELS[self as usize]
    }

    /// Whether the model reads files (and computes fib) off the thread
    /// that waits for sockets, on at most `--readers` threads.
    pub fn reads_off_the_loop(self) -> bool {
        contract::ASYNCHRONOUS_READS.contains(&self.name())
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

/// The complete configuration of one server run: the `server` binary's
/// flags, parsed by clap straight into this struct, so each setting, its
/// flag, its help and its default are written once, here.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "server",
    version,
    max_term_width = 100,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Config {
    /// Server design: how it waits and where blocking work runs.
    #[arg(long, value_enum, default_value_t = Model::Event)]
    pub model: Model,
    /// What to serve: files from --root, the time of day, or fib(n).
    #[arg(long, value_enum, default_value_t = ServiceKind::File)]
    pub service: ServiceKind,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub addr: IpAddr,
    /// Port to listen on; 0 picks a free one (read it from the `listening on` line).
    #[arg(long, env = "SERVER_PORT", default_value_t = defaults::PORT)]
    pub port: u16,
    /// Directory to serve files from; nothing outside it is ever sent.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub root: PathBuf,
    /// Serve files and directories whose names start with a dot.
    #[arg(long)]
    pub allow_hidden: bool,
    /// Byte budget of the file cache (e.g. 64MiB); 0 disables caching.
    #[arg(long, default_value_t = ByteSize(defaults::CACHE_BYTES), value_name = "BYTES")]
    pub cache_size: ByteSize,
    /// Largest file kept in the cache; larger files are streamed with sendfile.
    #[arg(long, default_value_t = ByteSize(defaults::CACHE_MAX_FILE_BYTES), value_name = "BYTES")]
    pub cache_max_file: ByteSize,
    /// Simulated storage latency: every read that misses the cache waits this long.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub read_delay_ms: u64,
    /// Most connections served at once; more are refused with 503. The
    /// server may lower it to what the open-file limit allows.
    #[arg(long, default_value_t = defaults::MAX_CONNS, value_name = "N", value_parser = at_least_one)]
    pub max_conns: usize,
    /// Asynchronous models (event-async, event-aio, uring, tokio,
    /// uring-net): most reader threads for file reads and fib (started on
    /// demand, stopped after 10 s idle).
    #[arg(long, default_value_t = defaults::READERS, value_name = "N", value_parser = at_least_one)]
    pub readers: usize,
    /// Event models: event loops on SO_REUSEPORT listeners (default 1).
    /// prefork: worker processes; pool: pool threads; tokio: runtime worker
    /// threads (default: one per core).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub workers: Option<usize>,
    /// tokio: one multi-thread runtime with --workers threads, or one
    /// current-thread runtime per worker, each on its own SO_REUSEPORT listener.
    #[arg(long, value_enum, default_value_t = Runtime::MultiThread)]
    pub runtime: Runtime,
    /// uring-net: turn a technique off, to measure what it buys (repeat
    /// or list with commas).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "TECHNIQUE")]
    pub without: Vec<Technique>,
    /// uring-net: when sends are zero-copy (IORING_OP_SEND_ZC), for sends
    /// of 4 KiB or more.
    #[arg(long, value_enum, default_value_t = ZeroCopy::Remote)]
    pub zero_copy: ZeroCopy,
    /// Longest request line accepted, in bytes; longer lines get 414.
    #[arg(long, default_value_t = ByteSize(defaults::MAX_LINE_BYTES as u64), value_name = "BYTES")]
    pub max_line: ByteSize,
    /// Longest HTTP head (request line and headers) accepted; longer gets 431.
    #[arg(long, default_value_t = ByteSize(defaults::MAX_HEAD_BYTES as u64), value_name = "BYTES")]
    pub max_head: ByteSize,
    /// Seconds a request may take to arrive after its first byte (slow senders are dropped).
    #[arg(long, default_value_t = Seconds(defaults::REQUEST_TIMEOUT), value_name = "SECS")]
    pub request_timeout: Seconds,
    /// Seconds an idle keep-alive connection is kept open.
    #[arg(long, default_value_t = Seconds(defaults::IDLE_TIMEOUT), value_name = "SECS")]
    pub idle_timeout: Seconds,
    /// Seconds a response may make no write progress before it is dropped.
    #[arg(long, default_value_t = Seconds(defaults::WRITE_TIMEOUT), value_name = "SECS")]
    pub write_timeout: Seconds,
    /// Log only warnings and cache clears.
    #[arg(long)]
    pub quiet: bool,
    /// Hand a connection over only once its request has arrived (Linux
    /// TCP_DEFER_ACCEPT, nginx's `listen ... deferred`): saves a wake-up per
    /// connection, but a silent client stays invisible for about a second.
    /// Off by default: idle and stalled clients are what the early stages
    /// are about.
    #[arg(long)]
    pub defer_accept: bool,
    /// Record what the server does (loop turns, waits, reads, requests, signals) as Chrome
    /// trace-event JSON, written to FILE at a graceful stop; draw it with `client timeline`.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// With --trace: the most events recorded (about 90 bytes each); past it recording stops.
    #[arg(long, default_value_t = defaults::TRACE_EVENTS, value_name = "N", requires = "trace")]
    pub trace_events: usize,
}

const ABOUT: &str = "A small file server that comes in many models, from an iterative loop to an epoll event \
loop, for learning and measuring event-based concurrency.";

const LONG_ABOUT: &str = "A small file server that comes in many models, from an iterative loop to an epoll event \
loop, for learning and measuring event-based concurrency.

The first line on stdout is `listening on <ip>:<port>`; logs go to stderr.
`kill -HUP <pid>` clears the file cache; SIGINT/SIGTERM stop gracefully.";

const AFTER_HELP: &str = "\
Examples:
  server --root fixtures                                # event model on 127.0.0.1:7070
  server --model select --service time --port 0         # the homework's stage 2
  server --model event-async --read-delay-ms 100        # slow storage, asynchronous reads
  server --model prefork --workers 8 --root fixtures    # 8 worker processes
  server --model tokio --root fixtures                  # a tokio task (an async fn) per connection
  server --read-delay-ms 10 --trace t.json              # at the stop: client timeline t.json --svg t.svg

Protocols on the same port: one path per line (`OK <size>` + bytes, or
`ERR <code> <reason>`), or HTTP/1.1 GET/HEAD (curl, browsers, wrk).

Signals: SIGHUP clears the cache (logs `cache cleared: <files> files, <bytes> bytes`);
SIGINT/SIGTERM stop accepting, finish responses in flight (5 s at most), exit 0.

Exit status: 0 after a graceful stop, 1 if the server cannot start (the message
says why and what to try), 2 on a usage error (a flag the model does not use is one).";

/// A count that must be at least one (`--workers`, `--readers`, `--max-conns`).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a count (try 4)")),
    }
}

/// Whether a model reads a flag.
type ReadBy = fn(Model) -> bool;

/// The flags only some models read, and which: a flag given to a model
/// that would ignore it is a usage error, not a silent no-op.
const MODEL_FLAGS: [(&str, ReadBy); 5] = [
    ("workers", |model| model.workers().is_some()),
    ("readers", Model::reads_off_the_loop),
    ("runtime", |model| model == Model::Tokio),
    ("without", |model| model == Model::UringNet),
    ("zero_copy", |model| model == Model::UringNet),
];

impl Config {
    /// The configuration the command line gives, or the usage error (exit
    /// status 2) when the line is malformed or gives a flag the chosen
    /// model does not use.
    pub fn from_command_line() -> Config {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Config::command().get_matches();
        let config = Config::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
        let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        if let Err(message) = config.check_flags(given) {
            Config::command().error(clap::error::ErrorKind::ArgumentConflict, message).exit()
        }
        config
    }

    /// Refuses a flag (`given` says whether the command line set it) the
    /// model does not read, naming the models that do.
    fn check_flags(&self, given: impl Fn(&str) -> bool) -> Result<(), String> {
        if self.trace.is_some() && matches!(self.model, Model::Fork | Model::Prefork) {
            return Err("--trace records the threads of one process; fork and prefork serve in many (try --model threads or pool)".into());
        }
        for (id, reads) in MODEL_FLAGS {
            if given(id) && !reads(self.model) {
                let users: Vec<&str> = Model::all().iter().filter(|m| reads(**m)).map(|m| m.name()).collect();
                let flag = format!("--{}", id.replace('_', "-"));
                return Err(format!(
                    "{flag} applies to --model {} only (this run is --model {})",
                    users.join(", "),
                    self.model
                ));
            }
        }
        Ok(())
    }

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

    /// What each connection may take: sizes and times.
    pub fn limits(&self) -> Limits {
        Limits {
            parse: ParseLimits {
                max_line_bytes: usize::try_from(self.max_line.0).unwrap_or(usize::MAX),
                max_head_bytes: usize::try_from(self.max_head.0).unwrap_or(usize::MAX),
            },
            request_timeout: self.request_timeout.0,
            idle_timeout: self.idle_timeout.0,
            write_timeout: self.write_timeout.0,
        }
    }

    /// The simulated storage latency (`--read-delay-ms`).
    pub fn read_delay(&self) -> Duration {
        Duration::from_millis(self.read_delay_ms)
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
        let names: Vec<&str> = Model::all().iter().map(|m| m.name()).collect();
        assert_eq!(names, contract::MODELS);
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
        assert_eq!(Model::all().len(), contract::MODELS.len());
        for &model in Model::all() {
            let spelled = model.to_possible_value().expect("every model is selectable");
            assert_eq!(spelled.get_name(), model.name());
        }
    }
}
