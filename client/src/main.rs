//! `client`: the kit's client.
//!
//! * `client DELAY [PATH...]`: the OSTEP homework's client. Sleeps DELAY
//!   seconds, connects, then prints what the time service sends, or requests
//!   each PATH in turn on one connection and writes each body to stdout.
//!   Exit status: 0 if everything was served, 1 if any request was refused,
//!   2 on usage or connection errors.
//! * `client bench ...`: the load generator; exit 1 if any response was wrong.
//! * `client grade ... -- SERVER COMMAND`: the black-box grader; exit 1 if
//!   any test failed, 3 if the machine could not grade.
//! * `client class DIR`: grades every submission folder of DIR into one CSV.

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
  client class DIR --csv scores.csv        # a whole class: every folder of DIR built, graded, one CSV

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
  client grade --stage 3 --format prairielearn --submission /grade/student > /grade/results/results.json
  printf 'small.txt\n' | client grade --replay -- ./my-server --port {port} --root {root}

Exit status: 0 if every test passed, 1 if any failed, 2 if grading could not run, 3 if this
machine cannot grade (no loopback, io_uring or AIO denied): not the submission's fault."
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
    /// (results.json), junit (XML for CI), prairielearn (results.json), autolab (the scores line),
    /// classroom (the GitHub Classroom runner result, base64), codegrade (the points, for fd 3).
    #[arg(long, value_parser = FORMATS)]
    format: Option<String>,
    /// Grade this submission folder: copied, built and run as its grade.toml says (or the config's
    /// [submission]); a command after `--` replaces its `run`.
    #[arg(long, value_name = "DIR", conflicts_with = "addr")]
    submission: Option<std::path::PathBuf>,
    /// The unprivileged user the server (and a build) runs as when the grader runs as root
    /// (default: the config's run_as, else nobody).
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Start the server as the grader would (--service, --delay), send it what stdin holds on one
    /// connection, print what comes back, stop it: the replay lines of a report use this.
    #[arg(long)]
    replay: bool,
    /// Write a Gradescope autograder bundle (setup.sh, run_autograder, this client, course.toml) into
    /// DIR for the chosen stages, --config and the command after `--` (run in the submission's
    /// folder), then exit.
    #[arg(long, value_name = "DIR")]
    write_gradescope: Option<std::path::PathBuf>,
    /// Write a log file per failing test (the exchange, the server's output) here.
    #[arg(long, default_value = "grade-logs")]
    logs: std::path::PathBuf,
    /// Put this submission's row (label, score, max, a column per stage, failed tests, reason)
    /// into this CSV file, replacing its row of the same label.
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

/// `--format`'s values.
const FORMATS: [&str; 8] = ["text", "json", "gradescope", "junit", "prairielearn", "autolab", "classroom", "codegrade"];

/// Grades every submission of a class: each folder of DIR is one, with a
/// `grade.toml` naming its `build` (optional) and its `run` (the server
/// command with {port}, {root}, {delay}), or the course config's
/// `[submission]` defaults. Builds run several at once, each under a time
/// limit; gradings run one after another. One CSV row per submission.
#[derive(Debug, Parser)]
#[command(
    name = "client class",
    max_term_width = 100,
    after_help = "\
Examples:
  client class submissions --config course.toml --csv scores.csv --jobs 4
  client class submissions --csv scores.csv --reports reports -- ./server --port {port} --root {root}

Each submission's folder of reports (report.txt, report.json, build.log, grade-logs/, work/) goes
under --reports. The CSV is written whole (a regrade replaces it): label, score, max (the same on
every row), a column per stage, the failed tests, and the reason for a 0 or for no score (the
machine could not grade: the score is left empty).

Exit status: 0 when every submission was graded (whatever its score), 2 if the class could not be."
)]
struct ClassCli {
    /// The folder of submissions: one folder each.
    dir: std::path::PathBuf,
    /// The course's TOML config: stages, points, repeat, run_as, [mechanism], [submission].
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The CSV of scores to write.
    #[arg(long, default_value = "scores.csv")]
    csv: std::path::PathBuf,
    /// Where each submission's folder of reports goes.
    #[arg(long, default_value = "reports")]
    reports: std::path::PathBuf,
    /// Builds at once.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Grade stages 1 to N (unless the config names its stages).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(1..=6))]
    stage: u8,
    /// Multiply every deadline by this (slow machines); overrides the config.
    #[arg(long)]
    stretch: Option<f64>,
    /// Run each test N times; the worst run counts.
    #[arg(long)]
    repeat: Option<u32>,
    /// The unprivileged user submissions run as when the grader runs as root (default: the
    /// config's run_as, else nobody).
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// A server command for every submission (after `--`), replacing their `run`.
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
    if subcommand.as_ref().is_some_and(|arg| arg == "class") {
        let args = std::iter::once("client class".into()).chain(std::env::args_os().skip(2));
        return class_main(ClassCli::parse_from(args));
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

/// How a grading ended, for the exit status.
enum Graded {
    /// Every test passed (0).
    Passed,
    /// Some test failed (1).
    Failed,
    /// The machine could not grade (3).
    NotGradable,
}

fn grade_main(cli: GradeCli) -> ExitCode {
    match run_grade(cli) {
        Ok(Graded::Passed) => ExitCode::SUCCESS,
        Ok(Graded::Failed) => ExitCode::from(1),
        Ok(Graded::NotGradable) => ExitCode::from(3),
        Err(err) => {
            eprintln!("client grade: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The user student code runs as: none unless the grader runs as root;
/// as root, `asked` (the flag or the config), else `nobody`.
fn student_user(asked: Option<&str>) -> anyhow::Result<Option<client::grade::target::User>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    client::grade::target::User::lookup(asked.unwrap_or("nobody")).map(Some)
}

/// How this client was invoked, for replay lines to paste.
fn client_as_invoked() -> String {
    std::env::args().next().filter(|arg| arg.contains('/')).unwrap_or_else(|| "client".into())
}

/// Grades; how it ended.
fn run_grade(cli: GradeCli) -> anyhow::Result<Graded> {
    use client::grade::{self, report::ReplayVia, target::Setup, Config, Plan};
    if cli.list {
        for check in grade::checks::catalog() {
            println!("{}  {:>2}  {:<28} {}", check.stage, check.points, check.name, check.description);
        }
        return Ok(Graded::Passed);
    }
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if cli.addr.is_none() && cli.command.is_empty() && cli.submission.is_none() && cli.write_gradescope.is_none() {
        anyhow::bail!(
            "give the server command after `--`, e.g. client grade -- ./my-server --port {{port}} --root {{root}} \
             --read-delay-ms {{delay}} (or --submission DIR, or --addr HOST:PORT --root DIR for a server already \
             running)"
        );
    }
    let stages = cli.stages.or(config.stages.clone()).unwrap_or_else(|| (1..=cli.stage).collect());
    if let Some(dir) = &cli.write_gradescope {
        grade::bundle::write(dir, &stages, cli.config.as_deref(), &cli.command)?;
        eprintln!(
            "client grade: Gradescope autograder in {}: zip its files (not the folder) and upload them",
            dir.display()
        );
        return Ok(Graded::Passed);
    }
    if let Some(dir) = &cli.timeline {
        client::timeline::grading::record_into(dir)?;
    }
    let setup = match cli.service.as_str() {
        "time" => Setup::Time,
        _ => Setup::Files { delay_ms: cli.delay },
    };
    let user =
        if cli.addr.is_some() { None } else { student_user(cli.run_as.as_deref().or(config.run_as.as_deref()))? };
    if cli.replay {
        return replay(&cli.command, setup, user).map(|()| Graded::Passed);
    }
    // A submission folder: copied, built, its command found.
    let scratch = tempfile::Builder::new().prefix("grade-submission-").tempdir()?;
    let mut command = cli.command.clone();
    let mut workdir = None;
    // A build that fails is the student's: a zero in every format, with its reason.
    let mut unbuilt = None;
    if let Some(dir) = &cli.submission {
        use client::grade::submission;
        let recipe = submission::recipe(dir, &config.submission).map_err(|e| anyhow::anyhow!(e.reason))?;
        let work = scratch.path().join("work");
        if user.is_some() {
            std::fs::set_permissions(scratch.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        let log = cli.logs.join("build.log");
        std::fs::create_dir_all(&cli.logs)?;
        match submission::prepare(dir, &work, &recipe, user.as_ref(), &log, Some(&cli.command)) {
            Ok(prepared) => {
                command = prepared.command;
                workdir = Some(prepared.workdir);
            }
            Err(e) => unbuilt = Some(e.reason),
        }
    }
    let reference = std::env::current_exe().ok().map(|exe| exe.with_file_name("server")).filter(|p| p.exists());
    let mut plan = Plan::new(command.clone(), stages);
    plan.addr = cli.addr.map(|addr| (addr, setup));
    plan.root = cli.root;
    plan.stretch = cli.stretch.or(config.stretch).unwrap_or(1.0).max(0.1);
    plan.repeat = cli.repeat.or(config.repeat).unwrap_or(1);
    plan.stop_after_failures = cli.stop_after.or(config.stop_after_failures);
    plan.points = config.points;
    plan.visibility = config.visibility;
    plan.reference = reference;
    plan.single_thread = config.mechanism.single_thread();
    plan.launch = grade::target::Launch { user, workdir: workdir.clone() };
    // A submission's copy is gone after grading: its replays say so by
    // starting from the submission's own folder.
    plan.replay_via = Some(ReplayVia { client: client_as_invoked(), command, workdir: cli.submission.clone() });
    let report = match &unbuilt {
        Some(why) => grade::unbuilt(&plan, why),
        None => grade::grade(&plan)?,
    };
    let format = if cli.json { "json" } else { cli.format.as_deref().unwrap_or("text") };
    match format {
        "json" => println!("{}", report.json()),
        "gradescope" => println!("{}", report.gradescope()),
        "junit" => print!("{}", report.junit()),
        "prairielearn" => println!("{}", grade::formats::prairielearn(&report)),
        "autolab" => print!("{}", grade::formats::autolab(&report)),
        "classroom" => println!("{}", grade::formats::classroom(&report)),
        "codegrade" => {
            eprint!("{}", report.text());
            if let Some(points) = grade::formats::codegrade(&report) {
                println!("{points}");
            }
        }
        _ => print!("{}", report.text()),
    }
    if let Some(why) = &report.not_gradable {
        if format != "text" {
            eprintln!("client grade: {why}");
        }
    }
    let logged = report.write_logs(&cli.logs)?;
    if logged > 0 {
        let exchanges = client::grade::report::plural(logged as u64, "failing exchange");
        eprintln!("client grade: {exchanges} logged in {}", cli.logs.display());
    }
    if let (Some(csv), Some(label)) = (&cli.csv, &cli.label) {
        let mut sheet = grade::class::ScoreSheet::load(csv, plan.max_by_stage())?;
        sheet.put(grade::class::Row::graded(label, &report, &sheet.stages.clone()));
        sheet.write(csv)?;
    }
    Ok(match (&report.not_gradable, report.failed().is_empty()) {
        (Some(_), _) => Graded::NotGradable,
        (None, true) => Graded::Passed,
        (None, false) => Graded::Failed,
    })
}

/// `client grade --replay`: starts the server as the grader would for
/// `setup` (the grader's files in a new root, a free port, as the student
/// user when root), sends stdin on one connection, copies what comes back
/// to stdout until the server closes it or is quiet for a second, and
/// stops the server.
fn replay(
    command: &[String],
    setup: client::grade::target::Setup,
    user: Option<client::grade::target::User>,
) -> anyhow::Result<()> {
    use client::grade::{
        fixture::Fixture,
        target::{Launch, Target},
    };
    use std::io::{Read, Write};
    anyhow::ensure!(!command.is_empty(), "give the server command after `--`");
    let mut request = Vec::new();
    std::io::stdin().read_to_end(&mut request).context("cannot read the bytes to send from stdin")?;
    let fixture = Fixture::create()?;
    if let Some(user) = &user {
        fixture.open_to_others()?;
        client::grade::target::open_command_to(command, None, user)?;
    }
    let launch = Launch { user, workdir: None };
    let target = Target::launch(command, &fixture.root(), setup, Duration::from_secs(10), &launch)?;
    eprintln!("client grade --replay: the server listens on {}; sending {} bytes", target.addr, request.len());
    let mut stream = std::net::TcpStream::connect_timeout(&target.addr, Duration::from_secs(5))?;
    stream.write_all(&request)?;
    // Like nc: the connection stays open for writing; the reply ends when
    // the server closes, or after a quiet second (a kept-alive connection).
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut stdout = std::io::stdout().lock();
    let mut buffer = vec![0u8; 64 * 1024];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => stdout.write_all(&buffer[..n])?,
            Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(err) => return Err(err).context("cannot read the reply"),
        }
    }
    stdout.flush()?;
    Ok(())
}

fn class_main(cli: ClassCli) -> ExitCode {
    match run_class(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("client class: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run_class(cli: ClassCli) -> anyhow::Result<()> {
    use client::grade::{self, class, report::ReplayVia, Config, Plan};
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let stages = config.stages.clone().unwrap_or_else(|| (1..=cli.stage).collect());
    let mut plan = Plan::new(cli.command.clone(), stages);
    plan.stretch = cli.stretch.or(config.stretch).unwrap_or(1.0).max(0.1);
    plan.repeat = cli.repeat.or(config.repeat).unwrap_or(1);
    plan.stop_after_failures = config.stop_after_failures;
    plan.points = config.points;
    plan.visibility = config.visibility;
    plan.reference = std::env::current_exe().ok().map(|exe| exe.with_file_name("server")).filter(|p| p.exists());
    plan.single_thread = config.mechanism.single_thread();
    plan.launch.user = student_user(cli.run_as.as_deref().or(config.run_as.as_deref()))?;
    plan.replay_via = Some(ReplayVia { client: client_as_invoked(), command: Vec::new(), workdir: None });
    if let Some(user) = &plan.launch.user {
        eprintln!("client class: running as root: submissions build and run as {}", user.name);
    }
    let job = class::ClassJob {
        dir: cli.dir,
        csv: cli.csv,
        reports: cli.reports,
        jobs: cli.jobs,
        defaults: config.submission,
        plan,
    };
    let max = job.plan.max_by_stage().iter().map(|(_, max)| max).sum::<u32>();
    let sheet = class::run(&job, |row| {
        let score = row.score.map_or("not graded".to_string(), |score| format!("{score}/{max}"));
        let why = if row.reason.is_empty() { String::new() } else { format!(" ({})", row.reason) };
        println!("{}: {score}{why}", row.label);
    })?;
    eprintln!(
        "client class: {} in {}; reports in {}",
        grade::report::plural(sheet.rows().count() as u64, "submission"),
        job.csv.display(),
        job.reports.display()
    );
    Ok(())
}
