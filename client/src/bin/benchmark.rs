//! `benchmark`: what `./benchmark.sh` runs. See [`client::suite`].
//!
//! * default: the homework's two lines, then a table of the honest cases;
//! * `--full`: models x concurrency x workloads, CSV and SVG in `results/<date>/`,
//!   and nginx side by side when `nginx` and `wrk` are installed;
//! * `--smoke`: every mode for a moment (CI runs it so the script cannot rot);
//! * `--vs-nginx`: the performance goal table against nginx (`docs/performance.md`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use client::bench::{self, Until};
use client::chart::{self, Series};
use client::peers;
use client::suite::{self, BenchRoot, Row, WorkloadKind, STORAGE_DELAY_MS, SWEEP_CONNS};

/// Measures the kit's server models against each other (and nginx).
#[derive(Debug, Parser)]
#[command(max_term_width = 100)]
struct Args {
    /// Sweep models x concurrency x workloads; write CSV and SVG charts.
    #[arg(long, conflicts_with = "smoke")]
    full: bool,
    /// A seconds-long run of every mode, to check that everything works.
    #[arg(long, conflicts_with = "vs_nginx")]
    smoke: bool,
    /// Only the goal table against nginx (needs nginx and wrk installed).
    #[arg(long, conflicts_with = "full")]
    vs_nginx: bool,
    /// Concurrent clients (and requests) in the homework's two lines.
    #[arg(long, default_value_t = 3)]
    requests: usize,
    /// The server binary to measure.
    #[arg(long, default_value = "target/release/server")]
    server: PathBuf,
    /// Where --full writes its results (a dated directory inside).
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("benchmark: FAILED: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    suite::kill_children_on_signal()?;
    bench::raise_fd_limit(20_000);
    anyhow::ensure!(args.server.exists(), "{} is missing: build it with cargo build --release", args.server.display());
    anyhow::ensure!((1..=1000).contains(&args.requests), "--requests takes 1 to 1000");
    let root = BenchRoot::create(args.requests.max(64))?;
    if args.vs_nginx {
        return client::versus::run(&args.server, &root);
    }

    let (async_s, sync_s) = suite::homework(&args.server, &root, args.requests)?;
    println!("Async I/O {} requests, time (seconds): {async_s:.6}", args.requests);
    println!("Sync I/O {} requests, time (seconds): {sync_s:.6}", args.requests);
    println!(
        "({} concurrent clients, each asking for a different uncached 4 KiB file; storage delay {STORAGE_DELAY_MS} ms \
         per read; async/sync time ratio {:.2}, async is {:.1}x faster)\n",
        args.requests,
        async_s / sync_s,
        sync_s / async_s
    );

    let seconds = if args.smoke { 0.2 } else { 1.0 };
    let mut rows = Vec::new();
    for workload in suite::workloads(&root) {
        for model in suite::models() {
            let until = Until::Elapsed(Duration::from_secs_f64(seconds));
            let report = suite::measure(&args.server, &root, model, &workload, workload.conns, until)?;
            rows.push(Row { workload: workload.label.clone(), model: model.into(), report });
        }
    }
    print!("{}", suite::table(&rows));
    println!("(each cell: {seconds} s of closed-loop load from `client bench`, every response checked)");

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
                let report = suite::measure(&args.server, root, model, workload, conns, until)?;
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
    let event = suite::measure(&args.server, root, "event", cached, 50, Until::Elapsed(Duration::from_secs(3)))?;
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
