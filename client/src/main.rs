//! `client`: the kit's client.
//!
//! * `client DELAY [PATH...]`: the OSTEP homework's client. Sleeps DELAY
//!   seconds, connects, then prints what the time service sends, or requests
//!   each PATH in turn on one connection and writes each body to stdout.
//!   Exit status: 0 if everything was served, 1 if any request was refused,
//!   2 on usage or connection errors.
//! * `client bench ...`: the load generator; exit 1 if any response was wrong.
//! * `client grade ... -- SERVER COMMAND`: the black-box grader; exit 1 if
//!   any test failed.

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
/// Subcommands: `client bench` (the load generator) and `client grade`
/// (the grader); `client bench --help` and `client grade --help` describe them.
#[derive(Debug, Parser)]
#[command(
    version,
    max_term_width = 100,
    after_help = "\
Examples:
  client 0 ./test.txt                      # print fixtures/test.txt (server rooted at fixtures/)
  client 0 a.txt b.txt --addr 127.0.0.1:7071
  client 1 & client 2 & client 3 &         # the homework's three delayed clients

Subcommands (each has its own --help):
  client bench ...                         # the load generator: requests/s, MB/s, latency percentiles
  client timeline FILE --svg OUT           # draws a trace (server --trace, client bench --timeline)
  client grade ... -- SERVER COMMAND       # the grader: scores a server against docs/assignment.md

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
    /// Seconds to keep retrying a refused connection (a server still starting); 0: try once.
    #[arg(long, value_parser = parse_seconds, default_value = "5")]
    wait: Duration,
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
  client bench --conns 3 --requests 12 --path test.txt --timeline t.json   # then: client timeline t.json --svg t.svg

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
    /// Seconds to wait for the server to accept a first connection (a server still starting); 0: do not wait.
    #[arg(long, value_parser = parse_seconds, default_value = "5")]
    wait: Duration,
    /// Record each request of each connection (connect, sent, first byte, last byte) in this file,
    /// as Chrome trace-event JSON (open it in Perfetto, or draw it with `client timeline`).
    #[arg(long, value_name = "FILE")]
    timeline: Option<std::path::PathBuf>,
}

/// Reads a trace-event file (`server --trace`, `client bench --timeline`),
/// prints what it holds (slices by name: how many, total, longest) and
/// draws it with `--svg`: a row per thread or client, time across.
#[derive(Debug, Parser)]
#[command(
    name = "client timeline",
    max_term_width = 100,
    after_help = "\
Examples:
  client timeline trace.json                       # slices by name: count, total and longest
  client timeline trace.json --svg trace.svg       # a picture: a row per thread, time across

Exit status: 0 if the file was read (and drawn), 2 if it is not a trace-event file."
)]
struct TimelineCli {
    /// The trace-event JSON file.
    file: std::path::PathBuf,
    /// Draw it into this SVG file.
    #[arg(long, value_name = "OUT")]
    svg: Option<std::path::PathBuf>,
    /// The picture's title (default: the file's name).
    #[arg(long)]
    title: Option<String>,
    /// Draw the whole trace, including a server's idle waits before the first request and after the last.
    #[arg(long)]
    whole: bool,
    /// Make the time axis this many milliseconds long (to draw two traces on one scale).
    #[arg(long, value_name = "MS")]
    span_ms: Option<f64>,
}

/// Scores a server against the assignment (docs/assignment.md), stage by
/// stage, from the outside: it starts the server itself from the command
/// after `--`, filling in {port}, {root}, {delay} (and {service}, or else
/// `--service time|file` is appended), in a root it fills with test files.
#[derive(Debug, Parser)]
#[command(
    name = "client grade",
    max_term_width = 100,
    after_help = "\
Examples:
  client grade --stage 3 -- ./my-server --port {port} --root {root} --read-delay-ms {delay}
  client grade --stage 6 -- ./target/release/server --model event-async --port {port} --root {root} --read-delay-ms {delay}
  client grade --stage 5 --json -- python3 server.py --port {port} --root {root} --read-delay-ms {delay}
  client grade --addr 127.0.0.1:7070 --root /srv/files --stage 3     # a server already running
  client grade --stage 3 --format junit -- ./my-server --port {port} --root {root} > grade.xml
  client grade --stages 1,2,3 --write-gradescope bundle -- ./server --port {port} --root {root} --read-delay-ms {delay}

Exit status: 0 if every test passed, 1 if any failed, 2 if grading could not run."
)]
struct GradeCli {
    /// Grade stages 1 to N (1 time, 2 concurrency, 3 files, 4 async reads, 5 cache and signals, 6 measurement).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(1..=6), conflicts_with = "stages")]
    stage: u8,
    /// Grade exactly these stages (comma-separated, e.g. 1,3,5).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=6))]
    stages: Option<Vec<u8>>,
    /// Grade a server that is already running here (signal and fd tests are skipped).
    #[arg(long, requires = "root")]
    addr: Option<SocketAddr>,
    /// With --addr: the directory that server serves; the grader puts its test files there.
    #[arg(long)]
    root: Option<std::path::PathBuf>,
    /// With --addr: what that server serves.
    #[arg(long, default_value = "file", value_parser = ["file", "time"])]
    service: String,
    /// With --addr: the --read-delay-ms that server was started with.
    #[arg(long, default_value_t = 0)]
    delay: u64,
    /// An instructor's TOML config: stages, points, stretch, repeat, stop_after_failures.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Multiply every deadline by this (slow machines); overrides the config.
    #[arg(long)]
    stretch: Option<f64>,
    /// Run each test N times; it passes only if all pass (catches flaky servers).
    #[arg(long)]
    repeat: Option<u32>,
    /// Stop after K failed tests.
    #[arg(long)]
    stop_after: Option<u32>,
    /// Print the report as JSON: the same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// The report's format: text (a person's), json ({"score", "max", "tests"}), gradescope
    /// (results.json), junit (XML for CI).
    #[arg(long, value_parser = ["text", "json", "gradescope", "junit"])]
    format: Option<String>,
    /// Write a Gradescope autograder bundle (setup.sh, run_autograder, this client, course.toml) into
    /// DIR for the chosen stages, --config and the command after `--` (run in the submission's
    /// folder), then exit.
    #[arg(long, value_name = "DIR")]
    write_gradescope: Option<std::path::PathBuf>,
    /// Write a log file per failing test (the exchange, the server's output) here.
    #[arg(long, default_value = "grade-logs")]
    logs: std::path::PathBuf,
    /// Append `LABEL,score,max,failed tests` to this CSV file (grading a class).
    #[arg(long, requires = "label")]
    csv: Option<std::path::PathBuf>,
    /// The submission's name in the CSV row.
    #[arg(long)]
    label: Option<String>,
    /// List the tests (stage, points, name, what each proves) and exit.
    #[arg(long)]
    list: bool,
    /// Record each test's exchanges (connect, sent, first byte, last byte per request) in
    /// DIR/<test>.json, as trace-event JSON; draw one with `client timeline`.
    #[arg(long, value_name = "DIR")]
    timeline: Option<std::path::PathBuf>,
    /// The server command, after `--`, with {port}, {root}, {delay} placeholders.
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds (try 0 or 1.5)"))
}

fn main() -> ExitCode {
    let subcommand = std::env::args_os().nth(1);
    if subcommand.as_ref().is_some_and(|arg| arg == "bench") {
        // "client bench" stands in for argv[0], so usage lines name the subcommand.
        let args = std::iter::once("client bench".into()).chain(std::env::args_os().skip(2));
        return bench_main(BenchCli::parse_from(args));
    }
    if subcommand.as_ref().is_some_and(|arg| arg == "grade") {
        let args = std::iter::once("client grade".into()).chain(std::env::args_os().skip(2));
        return grade_main(GradeCli::parse_from(args));
    }
    if subcommand.as_ref().is_some_and(|arg| arg == "timeline") {
        let args = std::iter::once("client timeline".into()).chain(std::env::args_os().skip(2));
        return timeline_main(TimelineCli::parse_from(args));
    }
    let cli = Cli::parse();
    std::thread::sleep(cli.delay);
    match fetch::run(&cli.addr, &cli.paths, cli.wait) {
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
    // A server started a moment ago may not have bound its port yet: one
    // connection that succeeds before the clock starts (it is then closed).
    drop(fetch::connect(&cli.addr, cli.wait)?);
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
    let report = match &cli.timeline {
        None => bench::run(&plan)?,
        Some(path) => {
            let (report, recording) = bench::run_with_timeline(&plan)?;
            recording.write(path, &format!("client bench against {}", cli.addr))?;
            if recording.left_out > 0 {
                eprintln!(
                    "client bench: the timeline holds the first {} requests; {} more were not recorded",
                    recording.requests.len(),
                    recording.left_out
                );
            }
            report
        }
    };
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

fn timeline_main(cli: TimelineCli) -> ExitCode {
    let run = || -> anyhow::Result<()> {
        let trace = client::timeline::Trace::load(&cli.file)?;
        print!("{}", trace.summary());
        if let Some(out) = &cli.svg {
            let title = cli.title.clone().unwrap_or_else(|| cli.file.display().to_string());
            let picture = client::timeline::Picture { title, whole: cli.whole, span_ms: cli.span_ms };
            client::timeline::draw_svg(&trace, out, &picture)?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("client timeline: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn grade_main(cli: GradeCli) -> ExitCode {
    match run_grade(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("client grade: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Grades; `Ok(false)` when some test failed.
fn run_grade(cli: GradeCli) -> anyhow::Result<bool> {
    use client::grade::{self, target::Setup, Config, Plan};
    if cli.list {
        for check in grade::checks::catalog() {
            println!("{}  {:>2}  {:<28} {}", check.stage, check.points, check.name, check.description);
        }
        return Ok(true);
    }
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if cli.addr.is_none() && cli.command.is_empty() {
        anyhow::bail!(
            "give the server command after `--`, e.g. client grade -- ./my-server --port {{port}} --root {{root}} \
             --read-delay-ms {{delay}} (or --addr HOST:PORT --root DIR for a server already running)"
        );
    }
    let stages = cli.stages.or(config.stages.clone()).unwrap_or_else(|| (1..=cli.stage).collect());
    if let Some(dir) = &cli.write_gradescope {
        grade::bundle::write(dir, &stages, cli.config.as_deref(), &cli.command)?;
        eprintln!(
            "client grade: Gradescope autograder in {}: zip its files (not the folder) and upload them",
            dir.display()
        );
        return Ok(true);
    }
    if let Some(dir) = &cli.timeline {
        client::timeline::grading::record_into(dir)?;
    }
    let setup = match cli.service.as_str() {
        "time" => Setup::Time,
        _ => Setup::Files { delay_ms: cli.delay },
    };
    let reference = std::env::current_exe().ok().map(|exe| exe.with_file_name("server")).filter(|p| p.exists());
    let plan = Plan {
        command: cli.command,
        addr: cli.addr.map(|addr| (addr, setup)),
        root: cli.root,
        stages,
        stretch: cli.stretch.or(config.stretch).unwrap_or(1.0).max(0.1),
        repeat: cli.repeat.or(config.repeat).unwrap_or(1),
        stop_after_failures: cli.stop_after.or(config.stop_after_failures),
        points: config.points,
        visibility: config.visibility,
        reference,
    };
    let report = grade::grade(&plan)?;
    let format = if cli.json { "json" } else { cli.format.as_deref().unwrap_or("text") };
    match format {
        "json" => println!("{}", report.json()),
        "gradescope" => println!("{}", report.gradescope()),
        "junit" => print!("{}", report.junit()),
        _ => print!("{}", report.text()),
    }
    let logged = report.write_logs(&cli.logs)?;
    if logged > 0 {
        let exchanges = client::grade::report::plural(logged as u64, "failing exchange");
        eprintln!("client grade: {exchanges} logged in {}", cli.logs.display());
    }
    if let (Some(csv), Some(label)) = (&cli.csv, &cli.label) {
        report.append_csv(csv, label)?;
    }
    Ok(report.failed().is_empty())
}
