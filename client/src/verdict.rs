//! The benchmark's answer, computed from the run's own numbers: when was
//! the event-based design worth it against threads and processes, when did
//! asynchronous reads pay, by how much, and at what cost (memory per idle
//! connection, lines to read). Printed after the table, so nobody has to
//! read the answer out of fifty rows (or out of a document written on
//! another machine).
//!
//! Every ratio is a [`Ratio`]: the median of the run's interleaved rounds
//! with the lowest and highest round beside it. A range that spans 1.0x is
//! "within noise", and the verdict then claims neither a gain nor a loss:
//! that is what keeps its words the same from one run to the next on a
//! machine shared with other work.

use crate::cost::{bytes, Cost};
use crate::suite::{Ratio, Reading, Row, WorkloadKind, STORAGE_DELAY_MS};

/// The rates of `model` on `kind`, one per round, if measured.
fn rates(rows: &[Row], kind: WorkloadKind, model: &str) -> Option<Vec<f64>> {
    rows.iter().find(|row| row.kind == kind && row.model == model).map(Row::rates)
}

/// The median rate of `model` on `kind`.
fn rate(rows: &[Row], kind: WorkloadKind, model: &str) -> Option<f64> {
    rows.iter().find(|row| row.kind == kind && row.model == model).map(|row| row.median_round().requests_per_sec())
}

/// `a` against `b` on `kind`, round by round.
fn ratio(rows: &[Row], kind: WorkloadKind, a: &str, b: &str) -> Option<Ratio> {
    Ratio::of(&rates(rows, kind, a)?, &rates(rows, kind, b)?)
}

/// A ratio and what its range says: `1.09x (0.95-1.20) within noise`.
fn read(ratio: Ratio) -> String {
    let word = match ratio.reading() {
        Reading::Faster => "faster",
        Reading::Slower => "slower",
        Reading::WithinNoise => "within noise",
    };
    format!("{ratio} {word}")
}

/// The workloads in the order of the table, with the verdict's names.
const WORKLOADS: [(WorkloadKind, &str); 4] = [
    (WorkloadKind::Uncached, "slow storage"),
    (WorkloadKind::Cached, "cached"),
    (WorkloadKind::Large, "large"),
    (WorkloadKind::Fib, "fib"),
];

/// The event-based design the chapter builds (one loop, blocking work off
/// it), and the designs it is weighed against: a thread per connection and
/// a process per connection.
const EVENT_BASED: &str = "event-async";
const THREADS: &str = "threads";
const PROCESSES: &str = "fork";

/// The verdict paragraph. `readers` is the reader pool of `event-async`,
/// `conns` the connections of each workload, as (kind, conns); `costs` each
/// model's memory per idle connection and lines of code.
pub fn verdict(
    rows: &[Row],
    readers: usize,
    conns: &[(WorkloadKind, usize)],
    costs: &[Cost],
    busiest: Option<(f64, usize)>,
) -> String {
    let conns_of = |kind| conns.iter().find(|(k, _)| *k == kind).map_or(0, |(_, c)| *c);
    let rounds = rows.first().map_or(0, |row| row.rounds.len());
    let mut out = format!(
        "\nVerdict (from this run; each ratio is the median of {rounds} interleaved rounds, in brackets the lowest \
         and highest round{}; a range that spans 1.0x, or a median within 10% of it, is within noise, neither a \
         gain nor a loss):\n",
        if rounds >= Ratio::TRIM_FROM { " but one at each end" } else { "" }
    );
    if let Some((load, cores)) = busiest.filter(|(load, cores)| *load > *cores as f64) {
        out.push_str(&format!(
            "(The machine was busy: load average up to {load:.1} on {cores} cores during the table. Rounds vary \
             more, ranges widen, and a gain or a loss may show as within noise.)\n"
        ));
    }

    out.push_str(&format!(
        "Event-based ({EVENT_BASED}: one loop, file reads and fib off it) against threads ({THREADS}: a thread per \
         connection) and processes ({PROCESSES}: a process per connection):\n"
    ));
    for (kind, name) in WORKLOADS {
        let (Some(threads), Some(processes)) =
            (ratio(rows, kind, EVENT_BASED, THREADS), ratio(rows, kind, EVENT_BASED, PROCESSES))
        else {
            continue;
        };
        out.push_str(&format!("* {name}: {} against threads, {} against processes.", read(threads), read(processes)));
        if kind == WorkloadKind::Uncached {
            if let Some(inline) = ratio(rows, kind, "event", THREADS) {
                out.push_str(&format!(
                    " Without asynchronous reads (event) {} against threads: it waits out each \
                     {STORAGE_DELAY_MS} ms read in its only thread.",
                    read(inline)
                ));
            }
        }
        out.push('\n');
    }
    let cost_of = |model: &str| costs.iter().find(|cost| cost.model == model);
    let memory: Vec<String> = [EVENT_BASED, THREADS, PROCESSES]
        .iter()
        .filter_map(|&model| Some(format!("{model} {}", bytes(cost_of(model)?.memory?.bytes_per_conn()))))
        .collect();
    let lines: Vec<String> = [EVENT_BASED, THREADS, PROCESSES]
        .iter()
        .filter_map(|&model| Some(format!("{model} {}", cost_of(model)?.lines.as_ref()?.total())))
        .collect();
    if !memory.is_empty() || !lines.is_empty() {
        out.push_str("* The cost, where they tie:");
        if !memory.is_empty() {
            out.push_str(&format!(" memory per idle connection {}", memory.join(", ")));
        }
        if !lines.is_empty() {
            out.push_str(&format!(
                "{}lines a student reads (model and machinery, the shared core aside) {}",
                if memory.is_empty() { " " } else { "; " },
                lines.join(", ")
            ));
        }
        out.push_str(".\n");
    }

    out.push_str("Asynchronous reads (stage 4) against event, whose loop does the blocking work itself:\n");
    let async_models = ["event-async", "event-aio", "uring"];
    let against_event = |kind: WorkloadKind, models: &[&str]| -> Vec<(String, Ratio)> {
        models.iter().filter_map(|&m| Some((m.to_string(), ratio(rows, kind, m, "event")?))).collect()
    };
    let listed =
        |ratios: &[(String, Ratio)]| ratios.iter().map(|(m, r)| format!("{m} {}", read(*r))).collect::<Vec<_>>();
    let plain = |ratios: &[(String, Ratio)]| ratios.iter().map(|(m, r)| format!("{m} {r}")).collect::<Vec<_>>();
    let any_faster = |ratios: &[(String, Ratio)]| ratios.iter().any(|(_, r)| r.reading() == Reading::Faster);

    let slow = against_event(WorkloadKind::Uncached, &async_models);
    if let (false, Some(event_async)) = (slow.is_empty(), rate(rows, WorkloadKind::Uncached, "event-async")) {
        let conns = conns_of(WorkloadKind::Uncached);
        let ideal = conns as f64 * 1000.0 / STORAGE_DELAY_MS as f64;
        let pool_ceiling = readers as f64 * 1000.0 / STORAGE_DELAY_MS as f64;
        // The homework's Async is event-async: its reading is the answer.
        let shown = slow.iter().any(|(m, r)| m == "event-async" && r.reading() == Reading::Faster);
        let word = if shown { "worth it" } else { "not shown" };
        out.push_str(&format!(
            "* slow storage ({STORAGE_DELAY_MS} ms per read, {conns} clients): {word}: {}. event can serve about \
             1000/{STORAGE_DELAY_MS} = {:.0} req/s; ",
            listed(&slow).join(", "),
            1000.0 / STORAGE_DELAY_MS as f64
        ));
        if pool_ceiling < ideal {
            out.push_str(&format!(
                "event-async is capped by its {readers} reader threads ({readers} x 1000/{STORAGE_DELAY_MS} = \
                 {pool_ceiling:.0} req/s, the ideal {ideal:.0}).\n"
            ));
        } else {
            out.push_str(&format!(
                "event-async, starting a reader per pending read, reaches {:.0}% of the ideal {conns} x \
                 1000/{STORAGE_DELAY_MS} = {ideal:.0} req/s.\n",
                100.0 * event_async / ideal
            ));
        }
    }
    let cached = against_event(WorkloadKind::Cached, &async_models);
    if !cached.is_empty() {
        out.push_str(&format!(
            "* cached: {}: {}. Nothing blocks, so there is nothing to move off the loop.\n",
            if any_faster(&cached) { "a gain" } else { "no gain" },
            plain(&cached).join(", ")
        ));
    }
    let large = against_event(WorkloadKind::Large, &async_models[..1]);
    if !large.is_empty() {
        out.push_str(&format!(
            "* large: {}: {}. sendfile does not block on a cached page; sending the bytes is the work, and it \
             stays on the loop.\n",
            if any_faster(&large) { "a gain" } else { "no gain" },
            plain(&large).join(", ")
        ));
    }
    let fib = against_event(WorkloadKind::Fib, &async_models[..1]);
    if !fib.is_empty() {
        let controls = against_event(WorkloadKind::Fib, &["select", "poll"]);
        out.push_str(&format!(
            "* fib: {}: {}: {}",
            if any_faster(&fib) { "a gain" } else { "no gain" },
            listed(&fib).join(", "),
            if any_faster(&fib) {
                "the computation runs on a reader thread, so a second core can take it"
            } else {
                "a reader thread lets a second core take the computation, which this run did not show"
            }
        ));
        if !controls.is_empty() {
            out.push_str(&format!(
                " (select and poll, which move nothing off their loop: {})",
                plain(&controls).join(", ")
            ));
        }
        out.push_str(". Bounded by the cores, not by the design.\n");
    }

    let completion: Vec<String> = WORKLOADS
        .iter()
        .filter_map(|&(kind, name)| Some(format!("{name} {}", ratio(rows, kind, "uring-net", "event")?)))
        .collect();
    if !completion.is_empty() {
        out.push_str(&format!(
            "* Completion for sockets too (uring-net: every socket and file operation on io_uring, no epoll) \
             against event: {}. Where it leads on cached files, it is the system calls it does not make, not \
             asynchronous reads (docs/guide/04b-readiness-and-completion.md).\n",
            completion.join(", ")
        ));
    }
    let tokio: Vec<String> = WORKLOADS
        .iter()
        .filter_map(|&(kind, name)| {
            Some(format!(
                "{name} {} against event, {} against event-async",
                ratio(rows, kind, "tokio", "event")?,
                ratio(rows, kind, "tokio", "event-async")?
            ))
        })
        .collect();
    if !tokio.is_empty() {
        out.push_str(&format!(
            "* async/await (tokio: a task per connection, reads on its blocking pool): {}. Against event-async \
             the difference is what the runtime adds, not the design (docs/guide/02d-async-await.md).\n",
            tokio.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Report;
    use crate::cost::{IdleMemory, ModelLines};

    /// A row measured in rounds of one second each, `counts` requests per round.
    fn row(kind: WorkloadKind, model: &str, counts: &[u64]) -> Row {
        Row {
            kind,
            workload: kind.name().into(),
            model: model.into(),
            rounds: counts.iter().map(|&n| Report::with_count(n)).collect(),
        }
    }

    #[test]
    fn the_verdict_sets_the_event_design_against_threads_and_processes_with_ranges() {
        let rows = [
            row(WorkloadKind::Uncached, "event", &[100, 100, 100]),
            row(WorkloadKind::Uncached, "event-async", &[3000, 3100, 2900]),
            row(WorkloadKind::Uncached, "threads", &[3000, 3000, 3000]),
            row(WorkloadKind::Uncached, "fork", &[3100, 3000, 3000]),
            row(WorkloadKind::Fib, "event", &[1000, 1000, 1000]),
            row(WorkloadKind::Fib, "event-async", &[1900, 2000, 1800]),
            row(WorkloadKind::Fib, "threads", &[2000, 2000, 2000]),
            row(WorkloadKind::Fib, "fork", &[1000, 1000, 1000]),
            row(WorkloadKind::Fib, "select", &[900, 1100, 1300]),
        ];
        let costs = [
            Cost {
                model: "event-async".into(),
                memory: Some(IdleMemory { held: 2000, before_kib: 3000, holding_kib: 4250 }),
                lines: Some(ModelLines { own: 30, machinery: 500, missing: Vec::new() }),
            },
            Cost {
                model: "threads".into(),
                memory: None,
                lines: Some(ModelLines { own: 20, machinery: 150, missing: Vec::new() }),
            },
        ];
        let text = verdict(&rows, 512, &[(WorkloadKind::Uncached, 32)], &costs, None);
        assert!(text.contains("* slow storage: 1.00x (0.97-1.03) within noise against threads, 0.97x (0.97-1.03) within noise against processes."), "{text}");
        assert!(text.contains("Without asynchronous reads (event) 0.03x (0.03-0.03) slower against threads"), "{text}");
        assert!(
            text.contains(
                "* fib: 0.95x (0.90-1.00) within noise against threads, 1.90x (1.80-2.00) faster against processes."
            ),
            "{text}"
        );
        assert!(text.contains("memory per idle connection event-async 640 B; lines a student reads (model and machinery, the shared core aside) event-async 530, threads 170."), "{text}");
        assert!(
            text.contains(
                "* slow storage (10 ms per read, 32 clients): worth it: event-async 30.0x (29.0-31.0) faster."
            ),
            "{text}"
        );
        assert!(text.contains("reaches 94% of the ideal 32 x 1000/10 = 3200 req/s"), "{text}");
        assert!(
            text.contains("(select and poll, which move nothing off their loop: select 1.10x (0.90-1.30))"),
            "{text}"
        );
        assert!(!text.contains("* cached"), "nothing is said of what was not measured");
        assert!(!text.contains("async/await"), "nothing is said of tokio unless it was measured");
    }

    #[test]
    fn a_range_that_spans_one_is_no_gain_and_no_loss() {
        let rows = [
            row(WorkloadKind::Cached, "event", &[1000, 1000, 1000]),
            row(WorkloadKind::Cached, "event-async", &[800, 1100, 1300]),
            row(WorkloadKind::Cached, "uring", &[700, 800, 900]),
        ];
        let text = verdict(&rows, 512, &[], &[], Some((3.5, 2)));
        assert!(text.contains("* cached: no gain: event-async 1.10x (0.80-1.30), uring 0.80x (0.70-0.90)."), "{text}");
        assert!(text.contains("(The machine was busy: load average up to 3.5 on 2 cores during the table."), "{text}");
        let steady = Ratio::of(&[1050.0, 1060.0, 1070.0], &[1000.0, 1000.0, 1000.0]).unwrap();
        assert_eq!(steady.reading(), Reading::WithinNoise, "a steady 6% is not called a gain");
        let starved = Ratio::of(&[1000.0, 2000.0, 3000.0, 0.0], &[0.0, 1000.0, 1000.0, 1000.0]).unwrap();
        assert_eq!(
            (starved.rounds, starved.low, starved.high),
            (2, 2.0, 3.0),
            "a round that answered nothing has no ratio"
        );
        let nine = [0.1, 1.1, 1.2, 1.2, 1.3, 1.3, 1.4, 1.5, 50.0].map(|x| x * 1000.0);
        let trimmed = Ratio::of(&nine, &[1000.0; 9]).unwrap();
        assert_eq!(
            trimmed.to_string(),
            "1.30x (1.10-1.50)",
            "the most extreme round at each end is left out of the range"
        );
        assert_eq!(trimmed.reading(), Reading::Faster);
        let capped =
            [row(WorkloadKind::Uncached, "event", &[100]), row(WorkloadKind::Uncached, "event-async", &[1600])];
        let text = verdict(&capped, 16, &[(WorkloadKind::Uncached, 32)], &[], None);
        assert!(
            text.contains("not shown: event-async 16.0x within noise"),
            "one round has no range, so no reading: {text}"
        );
        assert!(text.contains("capped by its 16 reader threads (16 x 1000/10 = 1600 req/s, the ideal 3200)"), "{text}");
    }

    #[test]
    fn the_verdict_sets_tokio_and_the_completion_model_beside_event() {
        let rows = [
            row(WorkloadKind::Uncached, "event", &[100, 100, 100]),
            row(WorkloadKind::Uncached, "event-async", &[1600, 1600, 1600]),
            row(WorkloadKind::Uncached, "tokio", &[2400, 2400, 2400]),
            row(WorkloadKind::Uncached, "uring-net", &[3000, 3000, 3000]),
        ];
        let text = verdict(&rows, 512, &[(WorkloadKind::Uncached, 32)], &[], None);
        assert!(
            text.contains("slow storage 24.0x (24.0-24.0) against event, 1.50x (1.50-1.50) against event-async"),
            "{text}"
        );
        assert!(text.contains("against event: slow storage 30.0x (30.0-30.0)."), "{text}");
        assert!(
            !verdict(&rows[..1], 512, &[], &[], None).contains("Completion"),
            "nothing is said of uring-net unless measured"
        );
    }
}
