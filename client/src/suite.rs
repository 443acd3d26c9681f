//! The benchmark suite behind `./benchmark.sh`: starts servers, drives them
//! with [`bench`](mod@crate::bench), and prints what the homework asks.
//!
//! Three modes: the default run (about a minute and a half: the homework's
//! two lines and a table of the honest cases, each cell in interleaved
//! rounds, [`measure_rounds`], every ratio a median with its range,
//! [`Ratio`]), `--full` (models x concurrency x workloads, CSV and SVG
//! charts, nginx side by side when installed), and `--smoke` (every mode
//! for a moment, so CI keeps the script working). Any wrong response fails
//! the run.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bench::{self, LoadPlan, Report, Until};

/// Rounds of the default table: each cell's median and range come from them.
pub const ROUNDS: usize = 9;
/// Seconds of counted load per cell per round in the default table.
pub const CELL_SECONDS: f64 = 0.1;
/// Seconds each cell's fresh connections run before the count starts: a
/// thread or a process per connection is started then, not in the 0.1 s
/// counted (in a keep-alive run it is paid once per connection, not per
/// 0.1 s).
pub const CELL_WARM_UP_SECONDS: f64 = 0.03;

/// Seconds of uncounted load each server takes before the first round.
pub const WARM_UP_SECONDS: f64 = 0.05;

/// Simulated storage latency for the uncached workloads, in milliseconds.
pub const STORAGE_DELAY_MS: u64 = 10;
/// The models every table compares: the server's own list, less
/// `iterative`, which serves one connection at a time and so cannot take
/// part in a concurrent keep-alive run.
pub fn models() -> impl Iterator<Item = &'static str> {
    contract::MODELS.into_iter().filter(|model| !contract::ONE_AT_A_TIME.contains(model))
}

/// Workers given to `prefork` and `pool`: one per keep-alive connection of
/// the table's busiest workload, so the table measures the design, not a
/// starved default.
pub const BLOCKING_WORKERS: usize = 64;

/// Flags a model needs besides the workload's.
pub fn model_args(model: &str) -> Vec<String> {
    match model {
        "prefork" | "pool" => vec!["--workers".into(), BLOCKING_WORKERS.to_string()],
        _ => Vec::new(),
    }
}

/// Whether `model` can serve `conns` connections of `workload` by design.
/// select(2) cannot watch an fd numbered 1024 or above (such clients get
/// 503), and a connection streaming a file holds two fds; a process or
/// thread per connection is not run past 1000 on a 2-core machine.
pub fn can_hold(model: &str, workload: &Workload, conns: usize) -> bool {
    const FD_SETSIZE: usize = 1024;
    const SERVER_FDS: usize = 16;
    let fds_per_conn = if workload.kind == WorkloadKind::Large { 2 } else { 1 };
    match model {
        "select" => conns * fds_per_conn + SERVER_FDS <= FD_SETSIZE,
        "fork" | "prefork" | "threads" | "pool" => conns <= 1000,
        _ => true,
    }
}

/// Concurrency levels of the `--full` sweep.
pub const SWEEP_CONNS: &[usize] = &[1, 10, 100, 1000, 10_000];

/// Children that must not outlive the suite, even on Ctrl-C.
pub(crate) static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills every started server when the suite is interrupted.
pub fn kill_children_on_signal() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            for &pid in CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    // nginx runs in its own process group: its workers
                    // would outlive a SIGKILLed master, so the group hears first.
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            eprintln!("benchmark: interrupted; servers stopped");
            std::process::exit(130);
        }
    });
    Ok(())
}

/// A server started for one measurement, stopped (SIGTERM, then SIGKILL) on drop.
pub struct ServerProcess {
    child: Child,
    /// The address from its `listening on` line.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Runs `program ARGS --port 0` and waits for `listening on`.
    pub fn start(program: &Path, args: &[String]) -> Result<ServerProcess> {
        // Spawned from the main thread, which lives as long as the suite.
        let mut child = crate::child::die_with_parent(&mut Command::new(program))
            .args(args)
            .args(["--port", "0", "--addr", "127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(child.id());
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = ServerProcess { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        match contract::parse_listening_line(&line) {
            Some(addr) => server.addr = addr,
            None => bail!("{} {} did not print 'listening on' (got {line:?})", program.display(), args.join(" ")),
        }
        Ok(server)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let pid = self.child.id();
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).retain(|&c| c != pid);
    }
}

/// The files every workload is served from, made fresh in a temp dir.
pub struct BenchRoot {
    dir: tempfile::TempDir,
    /// Names of the small distinct files (`small/f<i>.txt`, 4 KiB each).
    pub small: Vec<String>,
    /// Removes `dir` if this process is killed before `dir` is dropped
    /// (none if `sh` cannot start: the files are then left, nothing else).
    _watchdog: Option<crate::child::Watchdog>,
}

/// Size of the large, streamed (never cached) file.
pub const LARGE_BYTES: usize = 2 << 20;

impl BenchRoot {
    /// Writes `small_files` 4 KiB files, 1 KiB, 64 KiB, 1 MiB and 2 MiB files.
    pub fn create(small_files: usize) -> Result<BenchRoot> {
        let dir = tempfile::Builder::new().prefix("fileserver-bench").tempdir()?;
        let watchdog = crate::child::Watchdog::remove_dir(dir.path()).ok();
        std::fs::create_dir(dir.path().join("small"))?;
        let small = (0..small_files)
            .map(|i| {
                let name = format!("small/f{i}.txt");
                let line = format!("file {i:05} of the benchmark tree, 64 bytes per line.........\n");
                std::fs::write(dir.path().join(&name), line.repeat(64))?;
                Ok(name)
            })
            .collect::<Result<_>>()?;
        std::fs::write(dir.path().join("1k.bin"), vec![b'k'; 1024])?;
        // Large for one send, small enough for the cache (128 KiB by default).
        std::fs::write(dir.path().join("64k.bin"), (0..64 << 10).map(|i| (i % 241) as u8).collect::<Vec<_>>())?;
        // Above the default --cache-max-file (128 KiB): streamed with sendfile.
        std::fs::write(dir.path().join("1m.bin"), (0..1 << 20).map(|i| (i % 253) as u8).collect::<Vec<_>>())?;
        std::fs::write(dir.path().join("large.bin"), (0..LARGE_BYTES).map(|i| (i % 251) as u8).collect::<Vec<_>>())?;
        Ok(BenchRoot { dir, small, _watchdog: watchdog })
    }

    /// The directory to pass as `--root`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The kinds of load the benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Small files missing the cache, behind simulated slow storage.
    Uncached,
    /// A small file served from the cache.
    Cached,
    /// A file too large to cache, streamed.
    Large,
    /// CPU-bound work: the fib service.
    Fib,
}

impl WorkloadKind {
    /// Short name, used in CSV files and chart names.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Uncached => "uncached",
            WorkloadKind::Cached => "cached",
            WorkloadKind::Large => "large",
            WorkloadKind::Fib => "fib",
        }
    }
}

/// One kind of load: how the server is started and what is requested.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Which load this is.
    pub kind: WorkloadKind,
    /// What a reader of the table sees.
    pub label: String,
    /// Server flags besides model, root and port.
    pub server_args: Vec<String>,
    /// Paths requested.
    pub paths: Vec<String>,
    /// Connections in the default table.
    pub conns: usize,
}

/// The workloads of the table and the sweep.
pub fn workloads(root: &BenchRoot) -> Vec<Workload> {
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        Workload {
            kind: WorkloadKind::Uncached,
            label: format!("uncached 4 KiB, {STORAGE_DELAY_MS} ms storage, 32 conns"),
            server_args: args(&["--cache-size", "0", "--read-delay-ms", &STORAGE_DELAY_MS.to_string()]),
            paths: root.small.clone(),
            conns: 32,
        },
        Workload {
            kind: WorkloadKind::Cached,
            label: "cached 1 KiB, 50 conns".into(),
            server_args: Vec::new(),
            paths: vec!["1k.bin".into()],
            conns: 50,
        },
        Workload {
            kind: WorkloadKind::Large,
            label: format!("large {} MiB (streamed), 8 conns", LARGE_BYTES >> 20),
            server_args: Vec::new(),
            paths: vec!["large.bin".into()],
            conns: 8,
        },
        Workload {
            kind: WorkloadKind::Fib,
            label: "CPU-bound fib(27), 8 conns".into(),
            server_args: args(&["--service", "fib"]),
            paths: vec!["27".into()],
            conns: 8,
        },
    ]
}

/// The workload of `kind`.
pub fn workload(root: &BenchRoot, kind: WorkloadKind) -> Workload {
    workloads(root).into_iter().find(|w| w.kind == kind).expect("every kind has a workload")
}

/// Starts `model` for `workload`, ready for `conns` connections.
pub fn start(
    server_bin: &Path,
    root: &BenchRoot,
    model: &str,
    workload: &Workload,
    conns: usize,
) -> Result<ServerProcess> {
    let mut args: Vec<String> = vec!["--model".into(), model.into(), "--quiet".into()];
    args.extend(model_args(model));
    args.extend(["--root".into(), root.path().display().to_string()]);
    args.extend(["--max-conns".into(), (conns + 100).max(10_000).to_string()]);
    args.extend(workload.server_args.iter().cloned());
    ServerProcess::start(server_bin, &args)
}

/// Drives `server` (running `model`) with `workload` on `conns` fresh
/// connections until `until`; any wrong response is an error.
pub fn load(server: &ServerProcess, model: &str, workload: &Workload, conns: usize, until: Until) -> Result<Report> {
    let plan = LoadPlan::keepalive(server.addr, conns, until, workload.paths.clone(), false);
    let report = bench::run(&plan)?;
    if report.errors > 0 {
        bail!(
            "{model} / {}: {} wrong responses (first: {})",
            workload.kind.name(),
            report.errors,
            report.error_samples.first().map_or("?", String::as_str)
        );
    }
    Ok(report)
}

/// Starts `model` for `workload` and measures it.
pub fn measure(
    server_bin: &Path,
    root: &BenchRoot,
    model: &str,
    workload: &Workload,
    conns: usize,
    until: Until,
) -> Result<Report> {
    let server = start(server_bin, root, model, workload, conns)?;
    load(&server, model, workload, conns, until)
}

/// Measures every one of `models` on `workload` in `rounds` interleaved
/// rounds of `seconds`: every server is started first, then each round
/// loads each in turn (the order rotating from round to round). On a shared
/// machine a burst of someone else's work then falls on a few cells of
/// different models, not on one model's whole measurement, and the median
/// round of each model is compared with the same round of the others.
pub fn measure_rounds(
    server_bin: &Path,
    root: &BenchRoot,
    workload: &Workload,
    models: &[&str],
    rounds: usize,
    seconds: f64,
) -> Result<Vec<Row>> {
    let servers = models
        .iter()
        .map(|model| start(server_bin, root, model, workload, workload.conns))
        .collect::<Result<Vec<_>>>()?;
    let mut rows: Vec<Row> = models
        .iter()
        .map(|model| Row {
            kind: workload.kind,
            workload: workload.label.clone(),
            model: model.to_string(),
            rounds: Vec::new(),
        })
        .collect();
    // A first, uncounted turn each: threads started, pages touched, the
    // cached file read, so round one measures the same server as round five.
    for (server, model) in servers.iter().zip(models) {
        load(server, model, workload, workload.conns, Until::Elapsed(Duration::from_secs_f64(WARM_UP_SECONDS)))?;
    }
    for round in 0..rounds {
        for turn in 0..models.len() {
            let i = (turn + round) % models.len();
            let until = Until::WarmedUp {
                warm_up: Duration::from_secs_f64(CELL_WARM_UP_SECONDS),
                counted: Duration::from_secs_f64(seconds),
            };
            let report = load(&servers[i], models[i], workload, workload.conns, until)?;
            rows[i].rounds.push(report);
        }
    }
    if let Some(row) = rows.iter().find(|row| row.rounds.iter().all(|report| report.ok == 0)) {
        bail!("{} / {}: no response in any of {rounds} rounds of {seconds} s", row.model, workload.kind.name());
    }
    Ok(rows)
}

/// Rounds of the homework's two lines: the times printed are their medians.
pub const HOMEWORK_ROUNDS: usize = 5;

/// The homework's two lines: N concurrent clients, each asking for a
/// different uncached file from storage that takes [`STORAGE_DELAY_MS`],
/// against `event-async` and `event`, in `rounds` interleaved rounds (the
/// storage stays uncached: `--cache-size 0`). Returns each model's time per
/// round, in seconds: (async, sync).
pub fn homework(server_bin: &Path, root: &BenchRoot, requests: usize, rounds: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    // The uncached workload, one request per connection.
    let workload =
        Workload { paths: root.small[..requests].to_vec(), conns: requests, ..workload(root, WorkloadKind::Uncached) };
    let models = ["event-async", "event"];
    let servers =
        models.iter().map(|model| start(server_bin, root, model, &workload, requests)).collect::<Result<Vec<_>>>()?;
    let mut seconds = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, model) in models.iter().enumerate() {
            let report = load(&servers[i], model, &workload, requests, Until::Requests(requests as u64))?;
            if report.ok != requests as u64 {
                bail!("{model}: {} of {requests} requests answered", report.ok);
            }
            seconds[i].push(report.elapsed.as_secs_f64());
        }
    }
    let [async_s, sync_s] = seconds;
    Ok((async_s, sync_s))
}

/// One row of the table: a model on a workload, in one or more rounds.
pub struct Row {
    /// Which workload.
    pub kind: WorkloadKind,
    /// Workload label.
    pub workload: String,
    /// Model name.
    pub model: String,
    /// What each round measured, in the order of the rounds.
    pub rounds: Vec<Report>,
}

impl Row {
    /// The rate of each round, in order.
    pub fn rates(&self) -> Vec<f64> {
        self.rounds.iter().map(Report::requests_per_sec).collect()
    }

    /// The round with the median rate: the row's rate and latencies.
    pub fn median_round(&self) -> &Report {
        let mut order: Vec<&Report> = self.rounds.iter().collect();
        order.sort_by(|a, b| a.requests_per_sec().total_cmp(&b.requests_per_sec()));
        order[order.len() / 2]
    }
}

/// One rate against another, round by round: the median of the per-round
/// ratios, and the lowest and highest of them. Each round's two cells were
/// measured seconds apart, so a busy moment moves both; the range says how
/// much the rest still moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// The median ratio.
    pub median: f64,
    /// The lowest round's ratio (from [`Ratio::TRIM_FROM`] rounds on, the second lowest).
    pub low: f64,
    /// The highest round's ratio (from [`Ratio::TRIM_FROM`] rounds on, the second highest).
    pub high: f64,
    /// Rounds compared.
    pub rounds: usize,
}

/// What a [`Ratio`] says, once its range is taken into account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Every round above 1.0x.
    Faster,
    /// Every round below 1.0x.
    Slower,
    /// The range spans 1.0x: neither a gain nor a loss.
    WithinNoise,
}

impl Ratio {
    /// `a` against `b`, pairing their rounds; `None` without rounds. A
    /// round in which either answered nothing has no ratio and is left out:
    /// on a very busy machine the server or the load generator can get no
    /// CPU for a whole 0.1 s cell, which says nothing of the design (a model
    /// that answers nothing in every round fails the run instead,
    /// [`measure_rounds`]).
    pub fn of(a: &[f64], b: &[f64]) -> Option<Ratio> {
        let mut ratios: Vec<f64> =
            a.iter().zip(b).filter(|(a, b)| **a > 0.0 && **b > 0.0).map(|(a, b)| a / b).collect();
        if ratios.is_empty() {
            return None;
        }
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        // From TRIM_FROM rounds on, the one most extreme round at each end is
        // left out of the range: on a machine shared with other work, a
        // server the scheduler starved for a whole cell answers nothing or
        // next to nothing, a ratio of 0.00x or 50x that says nothing of the
        // design. The median is of all rounds.
        let trim = usize::from(n >= Ratio::TRIM_FROM);
        Some(Ratio { median: ratios[n / 2], low: ratios[trim], high: ratios[n - 1 - trim], rounds: n })
    }

    /// Rounds from which the range leaves out the extreme round at each end.
    pub const TRIM_FROM: usize = 7;

    /// Whether the whole range, as printed (two decimals), lies above or
    /// below 1.0x, and the median by more than [`Ratio::MATERIAL`]: a steady
    /// few percent is not called a gain either (two designs at the same
    /// ideal rate differ by that much from run to run, and a busy machine
    /// moves one design more than another by as much).
    pub fn reading(&self) -> Reading {
        let printed = |x: f64| (x * 100.0).round() / 100.0;
        let material = (self.median - 1.0).abs() > Ratio::MATERIAL;
        if self.rounds > 1 && material && printed(self.low) > 1.0 {
            Reading::Faster
        } else if self.rounds > 1 && material && printed(self.high) < 1.0 {
            Reading::Slower
        } else {
            Reading::WithinNoise
        }
    }

    /// The smallest difference called a gain or a loss: 10%.
    pub const MATERIAL: f64 = 0.10;
}

impl std::fmt::Display for Ratio {
    /// `1.09x (0.95-1.20)`; one decimal from 10x up; no range for one round.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let number = |x: f64| if x >= 9.95 { format!("{x:.1}") } else { format!("{x:.2}") };
        if self.rounds > 1 {
            write!(f, "{}x ({}-{})", number(self.median), number(self.low), number(self.high))
        } else {
            write!(f, "{}x", number(self.median))
        }
    }
}

/// Formats rows as an aligned table: each model's median round (its rate and
/// latencies), and its rate against `event`'s, round by round ([`Ratio`]).
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<44} {:<12} {:>10} {:>9} {:>9} {:>9} {:>19}\n",
        "workload", "model", "req/s", "MB/s", "p50 ms", "p99 ms", "vs event (range)"
    );
    for row in rows {
        let event = rows.iter().find(|r| r.workload == row.workload && r.model == "event");
        let ratio =
            event.and_then(|e| Ratio::of(&row.rates(), &e.rates())).map_or(String::from("-"), |r| r.to_string());
        let median = row.median_round();
        out.push_str(&format!(
            "{:<44} {:<12} {:>10.0} {:>9.1} {:>9.3} {:>9.3} {:>19}\n",
            row.workload,
            row.model,
            median.requests_per_sec(),
            median.mb_per_sec(),
            median.latency_ms(0.5),
            median.latency_ms(0.99),
            ratio
        ));
    }
    out
}

/// Where `--full` writes: `results/<date>/` (UTC).
pub fn results_dir(base: &Path) -> Result<PathBuf> {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let dir = base.join(&now[..10]);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The machine's load: the 1-minute load average and the cores, from
/// `/proc/loadavg` (`None` elsewhere). Above one runnable task per core,
/// the servers and the load generator wait for the CPU behind others' work.
pub fn load_average() -> Option<(f64, usize)> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let load = text.split_whitespace().next()?.parse().ok()?;
    Some((load, std::thread::available_parallelism().map_or(1, |n| n.get())))
}
