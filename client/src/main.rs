//! `client`: the kit's client.
//!
//! * `client DELAY [PATH...]`: the OSTEP homework's client. Sleeps DELAY
//!   seconds, connects, then prints what the time service sends, or requests
//!   each PATH in turn on one connection and writes each body to stdout.
//!   Exit status: 0 if everything was served, 1 if any request was refused,
//!   2 on usage or connection errors.
//! * `client bench ...`: the load generator; exit 1 if any response was wrong.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use client::bench::{self, Until};
use client::fetch;

/// Requests files (or the time) from the kit's server.
///
/// `client 0 ./test.txt` prints test.txt from a server rooted at fixtures/;
/// `client 1` against `--service time` prints the time after one second.
/// `client bench --help` describes the load generator.
#[derive(Debug, Parser)]
#[command(
    version,
    max_term_width = 100,
    after_help = "\
Examples:
  client 0 ./test.txt                      # print fixtures/test.txt (server rooted at fixtures/)
  client 0 a.txt b.txt --addr 127.0.0.1:7071
  client 1 & client 2 & client 3 &         # the homework's three delayed clients

Exit status: 0 if everything was served, 1 if any request was refused (the
reasons go to stderr), 2 on a usage or connection error."
)]
struct Cli {
    /// Seconds to sleep before connecting (fractions allowed), as in OSTEP's client.
    #[arg(value_parser = parse_seconds)]
    delay: Duration,
    /// Paths to request, in order, on one connection; none: print until the server closes.
    paths: Vec<String>,
    /// Server address.
    #[arg(long, env = "SERVER_ADDR", default_value = "127.0.0.1:7070")]
    addr: String,
}

/// Drives load at a server and reports requests/s, MB/s and latency
/// percentiles. Every response is checked (status and exact length); any
/// wrong response makes the exit status 1.
#[derive(Debug, Parser)]
#[command(
    name = "client bench",
    max_term_width = 100,
    after_help = "\
Examples:
  client bench --conns 100 --duration 5 --path test.txt
  client bench --conns 3 --requests 3 --no-keepalive --path a --path b --path c
  client bench --http --conns 50 --duration 3 --path /1k.bin --addr 127.0.0.1:8080
  client bench --conns 10000 --duration 5 --path data/1k.bin --csv results.csv

Exit status: 0 if every response was correct, 1 if any was wrong, 2 on a
usage or connection error."
)]
struct BenchCli {
    /// Server address.
    #[arg(long, env = "SERVER_ADDR", default_value = "127.0.0.1:7070")]
    addr: String,
    /// Concurrent connections, each with one request outstanding.
    #[arg(long, default_value_t = 10)]
    conns: usize,
    /// Run for this many seconds (fractions allowed).
    #[arg(long, value_parser = parse_seconds, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Run exactly this many requests in total.
    #[arg(long)]
    requests: Option<u64>,
    /// Path to request (repeat for several; connections take them round-robin).
    #[arg(long = "path", required = true)]
    paths: Vec<String>,
    /// Speak HTTP/1.1 (GET) instead of the line protocol.
    #[arg(long)]
    http: bool,
    /// Open a new connection for every request.
    #[arg(long)]
    no_keepalive: bool,
    /// Threads driving the connections (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// A request taking longer than this many seconds counts as an error.
    #[arg(long, value_parser = parse_seconds, default_value = "30")]
    timeout: Duration,
    /// Append one CSV row (with a header if the file is new) to this file.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Print the results as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds (try 0 or 1.5)"))
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "bench") {
        // "client bench" stands in for argv[0], so usage lines name the subcommand.
        let args = std::iter::once("client bench".into()).chain(std::env::args_os().skip(2));
        return bench_main(BenchCli::parse_from(args));
    }
    let cli = Cli::parse();
    std::thread::sleep(cli.delay);
    match fetch::run(&cli.addr, &cli.paths) {
        Ok(fetch::Outcome::AllServed) => ExitCode::SUCCESS,
        Ok(fetch::Outcome::SomeRefused) => ExitCode::from(1),
        Err(err) => {
            eprintln!("client: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn bench_main(cli: BenchCli) -> ExitCode {
    match run_bench(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("client bench: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the benchmark; `Ok(false)` when some response was wrong.
fn run_bench(cli: BenchCli) -> anyhow::Result<bool> {
    let addr: SocketAddr = cli
        .addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", cli.addr))?
        .next()
        .with_context(|| format!("{} resolves to no address", cli.addr))?;
    let until = match (cli.duration, cli.requests) {
        (_, Some(n)) => Until::Requests(n),
        (Some(d), None) => Until::Elapsed(d),
        (None, None) => Until::Elapsed(Duration::from_secs(5)),
    };
    let plan = bench::LoadPlan {
        addr,
        conns: cli.conns.max(1),
        until,
        paths: cli.paths,
        http: cli.http,
        no_keepalive: cli.no_keepalive,
        threads: cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        timeout: cli.timeout,
    };
    let report = bench::run(&plan)?;
    if cli.json {
        println!("{}", report.json());
        // stdout is for the JSON; a person still sees what went wrong.
        for sample in &report.error_samples {
            eprintln!("client bench: error: {sample}");
        }
    } else {
        print!("{}", report.summary());
    }
    if let Some(path) = cli.csv {
        use std::io::Write;
        let new = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if new {
            writeln!(file, "conns,{}", bench::Report::csv_header())?;
        }
        writeln!(file, "{},{}", plan.conns, report.csv_fields())?;
    }
    Ok(report.errors == 0)
}
