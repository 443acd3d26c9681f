//! `benchmark`: what `./benchmark.sh` runs. See [`client::suite`].
//!
//! * default: the homework's two lines, then a table of the honest cases in
//!   interleaved rounds, the cost of each model (memory per idle connection,
//!   lines of code: [`client::cost`]) and the verdict ([`client::verdict`]);
//! * `--full`: models x concurrency x workloads, CSV and SVG in `results/<date>/`,
//!   and nginx side by side when `nginx` and `wrk` are installed;
//! * `--smoke`: every mode for a moment (CI runs it so the script cannot rot);
//! * `--vs-nginx`: the performance goal table against nginx (`docs/performance.md`),
//!   then slow storage against the ideal rate (which needs no nginx);
//! * `--async-await`: `tokio` (both runtime flavours) beside `event` and `event-async`, the costs
//!   `docs/guide/02d-async-await.md` quotes (rates, p99, idle memory);
//! * `--techniques`: `uring-net` with each io_uring technique turned off alone, beside
//!   `uring-net` with all of them and `event` ([`client::techniques`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use client::bench::{self, Until};
use client::chart::{self, Series};
use client::suite::{self, BenchRoot, Row, WorkloadKind, STORAGE_DELAY_MS, SWEEP_CONNS};
use client::{cost, peers};
use contract::DEFAULT_READERS as READERS;

/// Measures the kit's server models against each other (and nginx).
#[derive(Debug, Parser)]
#[command(max_term_width = 100)]
struct Args {
    /// Sweep models x concurrency x workloads; write CSV and SVG charts.
    #[arg(long, conflicts_with = "smoke")]
    full: bool,
    /// A seconds-long run of every mode, to check that everything works
    /// (with --vs-nginx: every row of that table, once, for a second).
    #[arg(long)]
    smoke: bool,
    /// Only the goal table against nginx (needs nginx and wrk installed),
    /// then slow storage at 32 and 256 clients against the ideal rate.
    #[arg(long, conflicts_with = "full")]
    vs_nginx: bool,
    /// Only the async/await chapter's table: tokio (one multi-thread runtime,
    /// and one current-thread runtime per core: tokio/core) beside event and
    /// event-async (cached, uncached at 32 and 256 clients, large, fib),
    /// then their RSS holding 10,000 idle keep-alive connections.
    #[arg(long, conflicts_with_all = ["full", "vs_nginx"])]
    async_await: bool,
    /// Only what each io_uring technique of uring-net buys: uring-net with
    /// one technique off (--without multishot, provided-buffers,
    /// registered-files, batching; --zero-copy always) beside uring-net and
    /// event, on 1 KiB (50 and 500 conns, keep-alive and close) and 64 KiB
    /// (3 interleaved rounds of 2 s; about 7 min; with --smoke 1 round of 1 s, about 1 min).
    #[arg(long, conflicts_with_all = ["full", "vs_nginx", "async_await"])]
    techniques: bool,
    /// Only the homework's two lines, with this many concurrent clients
    /// (and requests); without it, the lines use 3 and the table follows.
    #[arg(long, value_name = "N")]
    requests: Option<usize>,
    /// The server binary to measure [default: `server` next to this program].
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
    /// Where --full writes its results (a dated directory inside).
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

fn main() -> ExitCode {
    // ./benchmark.sh names itself, so --help and usage errors say what the user typed.
    let name = std::env::var("BENCHMARK_COMMAND").unwrap_or_else(|_| "benchmark".into());
    let matches = Args::command().bin_name(name).get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(err) => err.exit(),
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("benchmark: FAILED: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The server binary: `--server`, or `server` in this program's own
/// directory (so the benchmark works from any working directory).
fn server_binary(args: &Args) -> Result<PathBuf> {
    let server = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find this program's path")?.with_file_name("server"),
    };
    anyhow::ensure!(
        server.exists(),
        "{} is missing: build it with cargo build --release (or name it with --server PATH)",
        server.display()
    );
    Ok(server)
}

fn run(mut args: Args) -> Result<()> {
    suite::kill_children_on_signal()?;
    bench::raise_fd_limit(20_000);
    let server = server_binary(&args)?;
    args.server = Some(server.clone());
    let requests = args.requests.unwrap_or(3);
    anyhow::ensure!((1..=1000).contains(&requests), "--requests takes 1 to 1000");
    let root = BenchRoot::create(requests.max(256))?;
    if args.vs_nginx {
        let pace = if args.smoke { client::versus::Pace::SMOKE } else { client::versus::Pace::FULL };
        return client::versus::run(&server, &root, pace);
    }
    if args.async_await {
        return async_await(&server, &root, args.smoke);
    }
    if args.techniques {
        let pace = if args.smoke { client::versus::Pace::SMOKE } else { client::techniques::PACE };
        return client::techniques::run(&server, &root, pace);
    }

    println!(
        "The homework's two lines: Async = event-async (file reads on reader threads, up to {READERS}), \
         Sync = event (reads block its only thread)."
    );
    let rounds = if args.smoke { 1 } else { suite::HOMEWORK_ROUNDS };
    let (async_s, sync_s) = suite::homework(&server, &root, requests, rounds)?;
    let median = |times: &[f64]| client::versus::median(times.to_vec());
    println!("Async I/O {requests} requests, time (seconds): {:.6}", median(&async_s));
    println!("Sync I/O {requests} requests, time (seconds): {:.6}", median(&sync_s));
    // How many times faster async was, round by round: sync's time over async's.
    let speed_up = suite::Ratio::of(&sync_s, &async_s).expect("at least one round");
    let reading = match speed_up.reading() {
        suite::Reading::Faster => "faster",
        suite::Reading::Slower => "slower",
        suite::Reading::WithinNoise => "as fast, within noise",
    };
    println!(
        "({requests} concurrent clients, each asking for a different uncached 4 KiB file; storage delay \
         {STORAGE_DELAY_MS} ms per read; median of {rounds} rounds: async is {speed_up} {reading})"
    );
    if args.requests.is_some() && !(args.full || args.smoke) {
        return Ok(());
    }
    println!();

    let (rounds, seconds) = if args.smoke { (1, 0.1) } else { (suite::ROUNDS, suite::CELL_SECONDS) };
    let models: Vec<&str> = suite::models().collect();
    let mut rows = Vec::new();
    // The busiest the machine was while the table ran: the verdict says so.
    let mut busiest = suite::load_average();
    for workload in suite::workloads(&root) {
        eprint!("\r{}: {rounds} rounds of {} models...          ", workload.kind.name(), models.len());
        rows.extend(suite::measure_rounds(&server, &root, &workload, &models, rounds, seconds)?);
        busiest = busiest.into_iter().chain(suite::load_average()).max_by(|a, b| a.0.total_cmp(&b.0));
    }
    eprint!("\r{:60}\r", "");
    print!("{}", suite::table(&rows));
    println!(
        "(each cell: {rounds} rounds of {seconds} s of closed-loop load from `client bench` on fresh connections \
         after {} s uncounted, interleaved with the other models', every response checked; req/s and latencies \
         of the median round)",
        suite::CELL_WARM_UP_SECONDS
    );

    println!("\nThe cost: memory per idle connection and lines of code, per model");
    let repo = cost::repository();
    let mut costs = Vec::new();
    for model in &models {
        let memory = if args.smoke {
            None
        } else {
            eprint!("\rholding idle connections: {model}          ");
            Some(cost::idle_memory(&server, &root, model)?)
        };
        let lines = repo.as_deref().and_then(|repo| cost::model_lines(repo, model));
        costs.push(cost::Cost { model: model.to_string(), memory, lines });
    }
    eprint!("\r{:60}\r", "");
    print!("{}", cost::table(&costs, repo.as_deref()));
    let conns: Vec<_> = suite::workloads(&root).iter().map(|w| (w.kind, w.conns)).collect();
    print!("{}", client::verdict::verdict(&rows, READERS, &conns, &costs, busiest));

    if args.full || args.smoke {
        sweep(&args, &root)?;
    }
    Ok(())
}

/// The concurrency sweep: CSV, charts, and nginx when available.
fn sweep(args: &Args, root: &BenchRoot) -> Result<()> {
    // Smoke results go to a temporary directory, removed on return.
    let scratch = tempfile::tempdir()?;
    let (levels, seconds, dir) = if args.smoke {
        (&SWEEP_CONNS[..2], 0.2, scratch.path().to_path_buf())
    } else {
        (SWEEP_CONNS, 2.0, suite::results_dir(&args.results)?)
    };
    let workloads: Vec<_> = suite::workloads(root).into_iter().filter(|w| w.kind != WorkloadKind::Fib).collect();
    let total = workloads.len() * suite::models().count() * levels.len();
    let mut done = 0;
    println!("\nsweep: {total} runs of {seconds} s into {}", dir.display());
    for workload in &workloads {
        let csv_path = dir.join(format!("{}.csv", workload.kind.name()));
        let mut csv =
            std::fs::File::create(&csv_path).with_context(|| format!("cannot write {}", csv_path.display()))?;
        writeln!(csv, "model,conns,{}", bench::Report::csv_header())?;
        let (mut rate, mut p99) = (Vec::new(), Vec::new());
        for model in suite::models() {
            let (mut rate_points, mut p99_points) = (Vec::new(), Vec::new());
            for &conns in levels {
                done += 1;
                eprint!("\r[{done}/{total}] {} {model} {conns} conns          ", workload.kind.name());
                if !suite::can_hold(model, workload, conns) {
                    continue;
                }
                let until = Until::Elapsed(Duration::from_secs_f64(seconds));
                let report = suite::measure(
                    args.server.as_deref().expect("resolved in run"),
                    root,
                    model,
                    workload,
                    conns,
                    until,
                )?;
                writeln!(csv, "{model},{conns},{}", report.csv_fields())?;
                rate_points.push((conns as f64, report.requests_per_sec()));
                p99_points.push((conns as f64, report.latency_ms(0.99)));
            }
            rate.push(Series { name: model.into(), points: rate_points });
            p99.push(Series { name: model.into(), points: p99_points });
        }
        eprintln!();
        let title = |what: &str| format!("{what}: {}", workload.label.split(',').take(2).collect::<Vec<_>>().join(","));
        chart::draw(&dir.join(format!("{}-rps.svg", workload.kind.name())), &title("requests/s"), "requests/s", &rate)?;
        chart::draw(&dir.join(format!("{}-p99.svg", workload.kind.name())), &title("p99 latency"), "p99 ms", &p99)?;
        println!("{}: {} and {}-{{rps,p99}}.svg", workload.kind.name(), csv_path.display(), workload.kind.name());
    }
    if !args.smoke {
        versus_nginx(args, root)?;
    }
    Ok(())
}

/// Side by side with nginx on the same files in the same run (HTTP for
/// nginx, the line protocol for us until the server speaks HTTP), and our
/// load generator side by side with wrk on the same nginx.
fn versus_nginx(args: &Args, root: &BenchRoot) -> Result<()> {
    if !(peers::installed("nginx") && peers::installed("wrk")) {
        println!("\nnginx or wrk not installed: skipping the comparison (apt-get install nginx-light wrk)");
        return Ok(());
    }
    let nginx = peers::Nginx::start(root.path(), 1)?;
    let url = format!("http://{}/1k.bin", nginx.addr);
    let wrk = peers::wrk(&url, 50, 3)?;
    let plan =
        bench::LoadPlan::keepalive(nginx.addr, 50, Until::Elapsed(Duration::from_secs(3)), vec!["1k.bin".into()], true);
    let ours_on_nginx = bench::run(&plan)?;
    drop(nginx);
    let cached = &suite::workload(root, WorkloadKind::Cached);
    let event = suite::measure(
        args.server.as_deref().expect("resolved in run"),
        root,
        "event",
        cached,
        50,
        Until::Elapsed(Duration::from_secs(3)),
    )?;
    println!("\ncached 1 KiB, 50 keep-alive connections, 3 s each:");
    println!("  nginx (1 worker, HTTP) driven by wrk:           {wrk:>10.0} req/s");
    println!(
        "  nginx (1 worker, HTTP) driven by client bench:  {:>10.0} req/s  (client bench / wrk = {:.2})",
        ours_on_nginx.requests_per_sec(),
        ours_on_nginx.requests_per_sec() / wrk
    );
    println!(
        "  event model (1 loop, line protocol):            {:>10.0} req/s  (ours / nginx = {:.2})",
        event.requests_per_sec(),
        event.requests_per_sec() / wrk
    );
    Ok(())
}

/// The async/await chapter's costs, in one run: `tokio` beside the
/// hand-written state machine (`event`) and the loop with a reader pool
/// (`event-async`), on the table's workloads plus slow storage at 256
/// clients; then the memory each needs to hold idle keep-alive clients.
fn async_await(server: &std::path::Path, root: &BenchRoot, smoke: bool) -> Result<()> {
    // (column, model, its flags): tokio in both runtime flavours.
    const MODELS: [(&str, &str, &[&str]); 4] = [
        ("event", "event", &[]),
        ("event-async", "event-async", &[]),
        ("tokio", "tokio", &[]),
        ("tokio/core", "tokio", &["--runtime", "current-thread-per-core"]),
    ];
    let (seconds, idle_conns) = if smoke { (0.2, 100) } else { (2.0, client::versus::IDLE_CONNS) };
    let mut workloads = suite::workloads(root);
    let uncached = suite::workload(root, WorkloadKind::Uncached);
    workloads
        .insert(1, suite::Workload { label: uncached.label.replace("32 conns", "256 conns"), conns: 256, ..uncached });
    let mut rows = Vec::new();
    for workload in &workloads {
        for (column, model, flags) in MODELS {
            let until = Until::Elapsed(Duration::from_secs_f64(seconds));
            let mut workload = workload.clone();
            workload.server_args.extend(flags.iter().map(|flag| flag.to_string()));
            let report = suite::measure(server, root, model, &workload, workload.conns, until)?;
            let rounds = vec![report];
            rows.push(Row { kind: workload.kind, workload: workload.label.clone(), model: column.into(), rounds });
        }
    }
    print!("{}", suite::table(&rows));
    println!("(each cell: {seconds} s of closed-loop load from `client bench`, every response checked)");

    bench::raise_fd_limit(idle_conns * 2 + 100);
    println!("\n{idle_conns} idle keep-alive connections (each served one request), server RSS:");
    for (column, model, flags) in MODELS {
        let args: Vec<String> = [
            "--model",
            model,
            "--quiet",
            "--idle-timeout",
            "120",
            "--max-conns",
            &(idle_conns + 100).to_string(),
            "--root",
            &root.path().display().to_string(),
        ]
        .iter()
        .chain(flags)
        .map(|s| s.to_string())
        .collect();
        let process = suite::ServerProcess::start(server, &args)?;
        let before = client::versus::rss_kib(process.pid())?;
        let held = client::versus::hold_idle(process.addr, idle_conns)?;
        let holding = client::versus::rss_kib(process.pid())?;
        drop(held);
        println!(
            "  {column:<12} {:>7.1} MiB before, {:>7.1} MiB holding them: {:>6.0} bytes per connection",
            before as f64 / 1024.0,
            holding as f64 / 1024.0,
            (holding.saturating_sub(before) * 1024) as f64 / idle_conns as f64
        );
    }
    Ok(())
}
