//! `./benchmark.sh --techniques`: what each io_uring technique of the
//! completion model `uring-net` buys, measured one at a time.
//!
//! `uring-net` uses several techniques together: multishot accept and
//! receive, provided buffer rings, registered files (direct descriptors),
//! batched submission, and zero-copy sends where they pay. Measuring the
//! model as a whole says what all of them buy together, not what each one
//! is worth. So each column of this table is `uring-net` with exactly one
//! change (`--without TECHNIQUE`, or `--zero-copy always` for the one that
//! is off on loopback by default), set beside `uring-net` with everything
//! on and beside `event`, the readiness reference that shares its core.
//!
//! The method is `--vs-nginx`'s ([`crate::versus`]): the servers of a row
//! run side by side and are measured in interleaved rounds (event, u-net,
//! -multishot, ..., event, ...), so a burst of load from elsewhere on the
//! machine lands on every column alike; each ratio is the median of the
//! per-round ratios, printed with its lowest and highest round.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::bench::{self, LoadPlan, Until};
use crate::peers;
use crate::suite::BenchRoot;
use crate::versus::{self, Measured, Pace, SHAPES};

/// The real table: three rounds of 2 s (8 servers x 4 workloads x 2 load
/// shapes: about 7 minutes of load).
pub const PACE: Pace = Pace { seconds: 2, rounds: 3 };

/// One column: a server and the one change it makes.
struct Variant {
    /// The column's heading.
    column: &'static str,
    model: &'static str,
    /// Flags after the usual ones: the change.
    flags: &'static [&'static str],
    /// What the column is, for the header.
    means: &'static str,
}

/// The columns; [`REFERENCE`] is the one every ratio divides by.
const VARIANTS: [Variant; 8] = [
    Variant {
        column: "event",
        model: "event",
        flags: &[],
        means: "readiness (epoll), the same per-connection core: the reference model",
    },
    Variant { column: "u-net", model: "uring-net", flags: &[], means: "every technique on: what the ratios divide by" },
    Variant {
        column: "-multishot",
        model: "uring-net",
        flags: &["--without", "multishot"],
        means: "accept and receive armed again after every completion",
    },
    Variant {
        column: "-prov-bufs",
        model: "uring-net",
        flags: &["--without", "provided-buffers"],
        means: "a receive buffer owned by each connection, no buffer ring",
    },
    Variant {
        column: "-reg-files",
        model: "uring-net",
        flags: &["--without", "registered-files"],
        means: "ordinary fds: each operation looks up and counts a file reference",
    },
    Variant {
        column: "-batching",
        model: "uring-net",
        flags: &["--without", "batching"],
        means: "one io_uring_enter per submission",
    },
    Variant {
        column: "-defer-tw",
        model: "uring-net",
        flags: &["--without", "defer-taskrun"],
        means: "completion work interrupts the loop as packets arrive, instead of waiting for its next wait",
    },
    Variant {
        column: "+zc-always",
        model: "uring-net",
        flags: &["--zero-copy", "always"],
        means: "SEND_ZC for every send >= 4 KiB, even on loopback (default: never there)",
    },
];

/// Index in [`VARIANTS`] of `uring-net` with every technique.
const REFERENCE: usize = 1;

/// One row: what is requested, over how many connections.
struct Workload {
    what: &'static str,
    conns: usize,
    /// A file of [`BenchRoot`].
    path: &'static str,
    /// `Connection: close` on every request.
    close: bool,
}

const WORKLOADS: [Workload; 4] = [
    Workload { what: "1 KiB keep-alive, 50 conns", conns: 50, path: "1k.bin", close: false },
    Workload { what: "1 KiB keep-alive, 500 conns", conns: 500, path: "1k.bin", close: false },
    Workload { what: "1 KiB Connection: close, 50 conns", conns: 50, path: "1k.bin", close: true },
    // Cached (the cache keeps files up to 128 KiB) and large per send: the
    // row where zero-copy could matter.
    Workload { what: "64 KiB keep-alive, 50 conns", conns: 50, path: "64k.bin", close: false },
];

/// What drives the load: `wrk`, or where it is missing, the kit's own
/// generator with as many threads as the wrk shape.
#[derive(Debug, Clone, Copy)]
enum Generator {
    Wrk,
    Bench,
}

impl Generator {
    /// One run of `pace.seconds` against `addr`: its requests a second.
    fn rate(self, addr: SocketAddr, workload: &Workload, threads: usize, pace: Pace) -> Result<f64> {
        match self {
            Generator::Wrk => {
                let url = format!("http://{addr}/{}", workload.path);
                peers::wrk_with(&url, workload.conns, pace.seconds, workload.close, threads)
            }
            Generator::Bench => {
                let until = Until::Elapsed(Duration::from_secs(pace.seconds));
                let paths = vec![format!("/{}", workload.path)];
                let plan = LoadPlan {
                    threads,
                    no_keepalive: workload.close,
                    ..LoadPlan::keepalive(addr, workload.conns, until, paths, true)
                };
                let report = bench::run(&plan)?;
                if report.errors > 0 {
                    bail!("client bench saw {} wrong responses from {addr}: {:?}", report.errors, report.error_samples);
                }
                Ok(report.requests_per_sec())
            }
        }
    }
}

/// Runs every workload against every variant and prints the table.
/// Variants that cannot start here (not Linux, or a kernel that refuses
/// them) are said so and left out; the rest is measured.
pub fn run(server_bin: &Path, root: &BenchRoot, pace: Pace) -> Result<()> {
    let generator = if peers::installed("wrk") {
        Generator::Wrk
    } else {
        println!(
            "wrk is not on the PATH (Debian: apt-get install wrk; this command installs nothing): the load comes \
             from `client bench` instead, with as many threads as the wrk shape"
        );
        Generator::Bench
    };
    if !cfg!(target_os = "linux") {
        println!("uring-net needs Linux's io_uring, which this system lacks: only `event` can be measured");
    }
    let available = available_variants(server_bin, root);
    if !available[REFERENCE] {
        println!("uring-net (every technique on) cannot run here: no ratios, only the columns that started");
    }
    print_header(generator, pace);
    for workload in &WORKLOADS {
        // Every server of the row is alive for the whole row.
        let servers = VARIANTS
            .iter()
            .zip(&available)
            .map(|(variant, &available)| {
                available
                    .then(|| versus::start_model_with(server_bin, root, 1, variant.model, variant.flags))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        for threads in SHAPES {
            let mut runs: Vec<Vec<Measured>> = VARIANTS.iter().map(|_| Vec::new()).collect();
            for _ in 0..pace.rounds {
                for (server, column) in servers.iter().zip(&mut runs) {
                    if let Some(server) = server {
                        let rate = || generator.rate(server.addr, workload, threads, pace);
                        column.push(versus::measure_cpu(server, pace, rate)?);
                    }
                }
            }
            print_rows(workload, threads, &runs);
        }
    }
    Ok(())
}

/// Starts each variant once, to learn which of them this system runs:
/// a refusal is said in a line (the server's own message is above it, on
/// stderr), never an error.
fn available_variants(server_bin: &Path, root: &BenchRoot) -> Vec<bool> {
    VARIANTS
        .iter()
        .map(|variant| match versus::start_model_with(server_bin, root, 1, variant.model, variant.flags) {
            Ok(_started_and_stopped) => true,
            Err(err) => {
                println!(
                    "{}: not measured: {} {} cannot start here: {err:#}",
                    variant.column,
                    variant.model,
                    variant.flags.join(" ")
                );
                false
            }
        })
        .collect()
}

fn print_header(generator: Generator, pace: Pace) {
    println!("machine: {}", versus::machine_facts());
    println!("what each io_uring technique of uring-net buys, turned off one at a time (every server: 1 loop):");
    for variant in &VARIANTS {
        let flags = if variant.flags.is_empty() { String::new() } else { format!(" {}", variant.flags.join(" ")) };
        println!("  {:<11} --model {}{flags}: {}", variant.column, variant.model, variant.means);
    }
    let load = match generator {
        Generator::Wrk => "wrk -tN",
        Generator::Bench => "client bench with N threads",
    };
    println!(
        "load: {load}, {} s per run, median of {} interleaved rounds; us/req: server CPU (user+system, /proc) per \
         request\nx u-net: median of per-round ratios to u-net, range: lowest-highest round. Below 1.00x, the \
         technique was worth that much (turning it off lost it); above 1.00x for +zc-always, zero-copy paid. \
         A range straddling 1.00x is noise.\n",
        pace.seconds, pace.rounds
    );
    print!("{:<34} {:>4} {:<8}", "workload", "load", "");
    for variant in &VARIANTS {
        print!(" {:>11}", variant.column);
    }
    println!();
}

/// The four lines of one workload at one load shape: rates, ratios to
/// u-net, their ranges, CPU per request.
fn print_rows(workload: &Workload, threads: usize, runs: &[Vec<Measured>]) {
    let line = |first: &str, shape: &str, what: &str, cells: Vec<String>| {
        let cells: String = cells.iter().map(|cell| format!(" {cell:>11}")).collect();
        println!("{first:<34} {shape:>4} {what:<8}{cells}");
    };
    let comparisons: Vec<Option<Comparison>> = runs
        .iter()
        .enumerate()
        .map(|(i, column)| if i == REFERENCE { None } else { Comparison::of(column, &runs[REFERENCE]) })
        .collect();
    let rates = runs
        .iter()
        .map(|column| {
            if column.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", versus::median(column.iter().map(|m| m.rate).collect()))
            }
        })
        .collect();
    line(workload.what, &format!("-t{threads}"), "req/s", rates);
    let cell = |i: usize, text: &dyn Fn(&Comparison) -> String| match &comparisons[i] {
        _ if i == REFERENCE => "ref".to_string(),
        Some(comparison) => text(comparison),
        None => "-".to_string(),
    };
    line("", "", "x u-net", (0..runs.len()).map(|i| cell(i, &|c| format!("{:.2}x", c.ratio))).collect());
    line("", "", "range", (0..runs.len()).map(|i| cell(i, &|c| format!("{:.2}-{:.2}", c.low, c.high))).collect());
    line("", "", "us/req", runs.iter().map(|column| versus::cpu_cell(column)).collect());
}

/// A column against the reference column, round by round.
#[derive(Debug, PartialEq)]
struct Comparison {
    /// Median of the per-round ratios.
    ratio: f64,
    low: f64,
    high: f64,
}

impl Comparison {
    /// `None` when either column was not measured.
    fn of(column: &[Measured], reference: &[Measured]) -> Option<Comparison> {
        if column.is_empty() || reference.is_empty() {
            return None;
        }
        let ratios: Vec<f64> = column.iter().zip(reference).map(|(x, y)| x.rate / y.rate).collect();
        let (low, high) = versus::range(&ratios);
        Some(Comparison { ratio: versus::median(ratios), low, high })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(values: &[f64]) -> Vec<Measured> {
        values.iter().map(|&rate| Measured { rate, us_per_req: None, load_us_per_req: None }).collect()
    }

    #[test]
    fn ratios_are_taken_round_by_round_not_between_medians() {
        // Round 2 was slow for both (load from elsewhere): per round the
        // variant lost 10% each time, which the medians alone would hide.
        let variant = rates(&[90.0, 45.0, 99.0]);
        let reference = rates(&[100.0, 50.0, 110.0]);
        let comparison = Comparison::of(&variant, &reference).unwrap();
        assert!((comparison.ratio - 0.9).abs() < 1e-9, "{comparison:?}");
        assert!((comparison.low - 0.9).abs() < 1e-9 && (comparison.high - 0.9).abs() < 1e-9, "{comparison:?}");
        assert_eq!(Comparison::of(&[], &reference), None, "a variant that could not start has no ratio");
        assert_eq!(Comparison::of(&variant, &[]), None, "nor has anything without the reference");
    }
}
