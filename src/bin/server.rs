//! `server`: flags to a [`Config`], then [`fileserver::start`]. No logic lives here.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use fileserver::config::{defaults, ByteSize, Config, Model, Runtime, Seconds, ServiceKind, Technique, ZeroCopy};

/// A small file server that comes in many models, from an iterative loop to
/// an epoll event loop, for learning and measuring event-based concurrency.
///
/// The first line on stdout is `listening on <ip>:<port>`; logs go to stderr.
/// `kill -HUP <pid>` clears the file cache; SIGINT/SIGTERM stop gracefully.
#[derive(Debug, Parser)]
#[command(name = "server", version, max_term_width = 100, after_help = AFTER_HELP)]
struct Args {
    /// Server design: how it waits and where blocking work runs.
    #[arg(long, value_enum, default_value_t = Model::Event)]
    model: Model,
    /// What to serve: files from --root, the time of day, or fib(n).
    #[arg(long, value_enum, default_value_t = ServiceKind::File)]
    service: ServiceKind,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    addr: IpAddr,
    /// Port to listen on; 0 picks a free one (read it from the `listening on` line).
    #[arg(long, env = "SERVER_PORT", default_value_t = defaults::PORT)]
    port: u16,
    /// Directory to serve files from; nothing outside it is ever sent.
    #[arg(long, default_value = ".", value_name = "DIR")]
    root: PathBuf,
    /// Serve files and directories whose names start with a dot.
    #[arg(long)]
    allow_hidden: bool,
    /// Byte budget of the file cache (e.g. 64MiB); 0 disables caching.
    #[arg(long, default_value_t = ByteSize(defaults::CACHE_BYTES), value_name = "BYTES")]
    cache_size: ByteSize,
    /// Largest file kept in the cache; larger files are streamed with sendfile.
    #[arg(long, default_value_t = ByteSize(defaults::CACHE_MAX_FILE_BYTES), value_name = "BYTES")]
    cache_max_file: ByteSize,
    /// Simulated storage latency: every read that misses the cache waits this long.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    read_delay_ms: u64,
    /// Most connections served at once; more are refused with 503.
    #[arg(long, default_value_t = defaults::MAX_CONNS, value_name = "N")]
    max_conns: usize,
    /// Most reader threads for the asynchronous models' file reads and fib
    /// (started on demand, stopped after 10 s idle).
    #[arg(long, default_value_t = defaults::READERS, value_name = "N")]
    readers: usize,
    /// Event models: event loops on SO_REUSEPORT listeners (default 1).
    /// prefork: worker processes; pool: pool threads; tokio: runtime worker
    /// threads (default: one per core).
    #[arg(long, visible_alias = "threads", value_name = "N")]
    workers: Option<usize>,
    /// tokio: one multi-thread runtime with --workers threads, or one
    /// current-thread runtime per worker, each on its own SO_REUSEPORT listener.
    #[arg(long, value_enum, default_value_t = Runtime::MultiThread)]
    runtime: Runtime,
    /// uring-net: turn a technique off, to measure what it buys (repeat
    /// or list with commas).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "TECHNIQUE")]
    without: Vec<Technique>,
    /// uring-net: when sends are zero-copy (IORING_OP_SEND_ZC), for sends
    /// of 4 KiB or more.
    #[arg(long, value_enum, default_value_t = ZeroCopy::Remote)]
    zero_copy: ZeroCopy,
    /// Longest request line accepted, in bytes; longer lines get 414.
    #[arg(long, default_value_t = ByteSize(defaults::MAX_LINE_BYTES as u64), value_name = "BYTES")]
    max_line: ByteSize,
    /// Longest HTTP head (request line and headers) accepted; longer gets 431.
    #[arg(long, default_value_t = ByteSize(defaults::MAX_HEAD_BYTES as u64), value_name = "BYTES")]
    max_head: ByteSize,
    /// Seconds a request may take to arrive after its first byte (slow senders are dropped).
    #[arg(long, default_value_t = Seconds(defaults::REQUEST_TIMEOUT), value_name = "SECS")]
    request_timeout: Seconds,
    /// Seconds an idle keep-alive connection is kept open.
    #[arg(long, default_value_t = Seconds(defaults::IDLE_TIMEOUT), value_name = "SECS")]
    idle_timeout: Seconds,
    /// Seconds a response may make no write progress before it is dropped.
    #[arg(long, default_value_t = Seconds(defaults::WRITE_TIMEOUT), value_name = "SECS")]
    write_timeout: Seconds,
    /// Log only warnings and cache clears.
    #[arg(long)]
    quiet: bool,
    /// Hand a connection over only once its request has arrived (Linux
    /// TCP_DEFER_ACCEPT, nginx's `listen ... deferred`): saves a wake-up per
    /// connection, but a silent client stays invisible for about a second.
    #[arg(long)]
    defer_accept: bool,
    /// Record what the server does (loop turns, waits, reads, requests, signals) as Chrome
    /// trace-event JSON, written to FILE at a graceful stop; draw it with `client timeline`.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// With --trace: the most events recorded (about 90 bytes each); past it recording stops.
    #[arg(long, default_value_t = defaults::TRACE_EVENTS, value_name = "N", requires = "trace")]
    trace_events: usize,
}

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
says why and what to try), 2 on a usage error.";

impl From<Args> for Config {
    fn from(args: Args) -> Config {
        Config {
            model: args.model,
            service: args.service,
            addr: args.addr,
            port: args.port,
            root: args.root,
            allow_hidden: args.allow_hidden,
            cache_bytes: args.cache_size.0,
            cache_max_file_bytes: args.cache_max_file.0,
            read_delay: Duration::from_millis(args.read_delay_ms),
            max_conns: args.max_conns.max(1),
            readers: args.readers.max(1),
            workers: args.workers.map(|n| n.max(1)),
            runtime: args.runtime,
            without: args.without,
            zero_copy: args.zero_copy,
            max_line_bytes: usize::try_from(args.max_line.0).unwrap_or(usize::MAX),
            max_head_bytes: usize::try_from(args.max_head.0).unwrap_or(usize::MAX),
            request_timeout: args.request_timeout.0,
            idle_timeout: args.idle_timeout.0,
            write_timeout: args.write_timeout.0,
            quiet: args.quiet,
            defer_accept: args.defer_accept,
            trace: args.trace,
            trace_events: args.trace_events,
        }
    }
}

/// Flags that only one model reads are refused with the others, rather
/// than silently ignored.
fn check_model_flags(args: &Args) {
    let only_for = |flag: &str, model: Model| {
        let message = format!("{flag} applies to --model {model} only (this run is --model {})", args.model);
        Args::command().error(clap::error::ErrorKind::ArgumentConflict, message).exit()
    };
    if args.model != Model::UringNet && !args.without.is_empty() {
        only_for("--without", Model::UringNet);
    }
    if args.model != Model::UringNet && args.zero_copy != ZeroCopy::default() {
        only_for("--zero-copy", Model::UringNet);
    }
    if args.trace.is_some() && matches!(args.model, Model::Fork | Model::Prefork) {
        let message =
            "--trace records the threads of one process; fork and prefork serve in many (try --model threads or pool)";
        Args::command().error(clap::error::ErrorKind::ArgumentConflict, message).exit()
    }
    if args.model != Model::Tokio && args.runtime != Runtime::default() {
        only_for("--runtime", Model::Tokio);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    check_model_flags(&args);
    let config = Config::from(args);
    match fileserver::start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            fileserver::write_line(format_args!("server: {err}"));
            ExitCode::FAILURE
        }
    }
}
