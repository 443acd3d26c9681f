//! Everything a server run is configured with, and the defaults.
//!
//! The `server` binary turns its flags into a [`Config`]; tests and the
//! benchmark only ever go through those flags.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// Which server design runs (DESIGN section 4); see [`crate::models`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// Stage 1: one client at a time, blocking accept and reads.
    Iterative,
    /// Stage 1b: a process per connection (fork after accept).
    Fork,
    /// Stage 1c: N processes forked at start-up share the listener (--threads N).
    Prefork,
    /// Stage 1d: a thread per connection.
    Threads,
    /// Stage 1e: N pre-spawned threads take connections from a queue (--threads N).
    Pool,
    /// Stage 2: select(2) over non-blocking sockets (at most FD_SETSIZE fds).
    Select,
    /// Stage 2b: poll(2): no fd ceiling, but O(n) per wait.
    Poll,
    /// Stage 3: mio (epoll); file reads block the loop thread ("Sync I/O").
    Event,
    /// Stage 4a: mio; reads on a thread pool, completion via a waker ("Async I/O").
    EventAsync,
    /// Stage 4b: mio; POSIX aio_read, completion signalled to the loop.
    EventAio,
    /// Stage 4c: mio; file reads submitted to io_uring.
    Uring,
}

impl Model {
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
        }
    }
}

/// What the server answers (DESIGN section 3).
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
    /// Connections served at once; more are refused with 503.
    pub max_conns: usize,
    /// Reader threads of `event-async` (and of the other async models' fib work).
    pub readers: usize,
    /// Loops (event models), processes (prefork) or threads (pool); each
    /// model has its own default when unset.
    pub threads: Option<usize>,
    /// Longest request line accepted.
    pub max_line_bytes: usize,
    /// Longest HTTP head accepted.
    pub max_head_bytes: usize,
    /// A request must arrive complete within this time of its first byte.
    pub request_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Duration,
    /// A response that makes no write progress this long is dropped.
    pub write_timeout: Duration,
    /// Do not log per-event lines to stderr.
    pub quiet: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: Model::Event,
            service: ServiceKind::File,
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 7070,
            root: PathBuf::from("."),
            allow_hidden: false,
            cache_bytes: 64 * 1024 * 1024,
            cache_max_file_bytes: 1024 * 1024,
            read_delay: Duration::ZERO,
            max_conns: 10_000,
            readers: 16,
            threads: None,
            max_line_bytes: 4096,
            max_head_bytes: 8192,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
            quiet: false,
        }
    }
}

/// Parses a duration in seconds, fractions allowed (`10`, `0.5`).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds (try 10 or 0.5)"))
}

/// The number of CPU cores: the default for prefork's processes and pool's threads.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Parses a byte size such as `4096`, `64KiB`, `64MiB`, `1G` or `2GB`
/// (binary multiples: K = KiB = 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
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
    number.checked_mul(multiplier).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_accept_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("2 GB"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }
}
