//! The benchmark's answer, computed from the run's own numbers: when was
//! the asynchronous design worth it, by how much, and what limits each
//! model. Printed after the table, so nobody has to read the answer out of
//! forty rows (or out of a document written on another machine).

use crate::suite::{Row, WorkloadKind, STORAGE_DELAY_MS};

/// req/s of `model` on `kind` in this run, if measured.
fn rate(rows: &[Row], kind: WorkloadKind, model: &str) -> Option<f64> {
    rows.iter().find(|row| row.kind == kind && row.model == model).map(|row| row.report.requests_per_sec())
}

/// The fastest of `models` on `kind`: (model, req/s).
fn best<'a>(rows: &[Row], kind: WorkloadKind, models: &[&'a str]) -> Option<(&'a str, f64)> {
    models.iter().filter_map(|&m| Some((m, rate(rows, kind, m)?))).max_by(|a, b| a.1.total_cmp(&b.1))
}

/// The verdict paragraph. `readers` is the reader pool of `event-async`,
/// `conns` the connections of each workload, as (kind, conns).
pub fn verdict(rows: &[Row], readers: usize, conns: &[(WorkloadKind, usize)]) -> String {
    let conns_of = |kind| conns.iter().find(|(k, _)| *k == kind).map_or(0, |(_, c)| *c);
    let mut out =
        String::from("\nVerdict (from this run; absolute numbers move with the machine, ratios are the result):\n");
    let async_models = ["event-async", "event-aio", "uring"];
    let blocking = ["fork", "prefork", "threads", "pool"];

    if let (Some(event), Some(event_async)) =
        (rate(rows, WorkloadKind::Uncached, "event"), rate(rows, WorkloadKind::Uncached, "event-async"))
    {
        let conns = conns_of(WorkloadKind::Uncached);
        let ideal = conns as f64 * 1000.0 / STORAGE_DELAY_MS as f64;
        let pool_ceiling = readers as f64 * 1000.0 / STORAGE_DELAY_MS as f64;
        out.push_str(&format!(
            "* Slow storage ({STORAGE_DELAY_MS} ms per read, {conns} clients): worth it. event-async serves {:.1}x \
             what event does ({event_async:.0} vs {event:.0} req/s): event waits out every read in its only thread \
             (about 1000/{STORAGE_DELAY_MS} = {:.0} req/s at most).\n",
            event_async / event,
            1000.0 / STORAGE_DELAY_MS as f64
        ));
        if pool_ceiling < ideal {
            out.push_str(&format!(
                "  event-async is capped by its {readers} reader threads ({readers} x 1000/{STORAGE_DELAY_MS} = \
                 {pool_ceiling:.0} req/s; the ideal for {conns} clients is {ideal:.0}). "
            ));
        } else {
            out.push_str(&format!(
                "  event-async starts a reader per pending read (up to {readers}): {:.0}% of the ideal \
                 {conns} x 1000/{STORAGE_DELAY_MS} = {ideal:.0} req/s. ",
                100.0 * event_async / ideal
            ));
        }
        if let Some((model, best_rate)) = best(rows, WorkloadKind::Uncached, &async_models[1..]) {
            // (glibc's POSIX AIO is itself a thread pool; io_uring needs no threads.)
            let lead = if pool_ceiling < ideal { "have no such cap" } else { "need no reader threads of ours" };
            out.push_str(&format!(
                "The kernel-driven models {lead}: {model} reaches {best_rate:.0} ({:.0}% of the ideal).\n",
                100.0 * best_rate / ideal
            ));
        }
        if let Some((model, best_rate)) = best(rows, WorkloadKind::Uncached, &blocking) {
            out.push_str(&format!(
                "  A thread or process per client gets there too ({model}: {best_rate:.0}), paying a stack or a \
                 process per connection instead of a state machine.\n"
            ));
        }
    }
    if let Some(event) = rate(rows, WorkloadKind::Cached, "event") {
        let ratios: Vec<String> = async_models
            .iter()
            .filter_map(|&m| Some(format!("{m} {:.2}x", rate(rows, WorkloadKind::Cached, m)? / event)))
            .collect();
        out.push_str(&format!(
            "* Cached files: no gain from asynchronous reads. Nothing blocks, so every design is bounded by the same \
             syscalls and the two cores; against event: {}. (The order of the models moves between runs.)\n",
            ratios.join(", ")
        ));
    }
    if let (Some(event), Some(event_async)) =
        (rate(rows, WorkloadKind::Large, "event"), rate(rows, WorkloadKind::Large, "event-async"))
    {
        out.push_str(&format!(
            "* Large files: no gain ({:.2}x). sendfile never blocks on a cached page; copying bytes is the limit.\n",
            event_async / event
        ));
    }
    if let (Some(event), Some(event_async)) =
        (rate(rows, WorkloadKind::Fib, "event"), rate(rows, WorkloadKind::Fib, "event-async"))
    {
        out.push_str(&format!(
            "* CPU-bound work (fib): {:.2}x. Moving the work off the loop keeps the loop responsive, but the gain \
             is bounded by the cores, not by the design.\n",
            event_async / event
        ));
    }
    let workloads = [
        (WorkloadKind::Uncached, "slow storage"),
        (WorkloadKind::Cached, "cached"),
        (WorkloadKind::Large, "large"),
        (WorkloadKind::Fib, "fib"),
    ];
    let completion: Vec<String> = workloads
        .iter()
        .filter_map(|&(kind, name)| {
            Some(format!("{name} {:.2}x", rate(rows, kind, "uring-net")? / rate(rows, kind, "event")?))
        })
        .collect();
    if !completion.is_empty() {
        let cached = rate(rows, WorkloadKind::Cached, "uring-net").zip(rate(rows, WorkloadKind::Cached, "event"));
        let why = match cached {
            Some((ours, event)) if ours >= 1.1 * event => {
                "Its gain on cached files is the system calls it does not make (one io_uring_enter per turn of \
                 its loop) and the interrupts it does not take (deferred task work), not asynchronous reads"
            }
            _ => "On cached files the system calls it saves did not show in this run's rate",
        };
        out.push_str(&format!(
            "* Completion for sockets too (uring-net: every socket and file operation on io_uring, no epoll), \
             against event: {}. {why} (docs/guide/04b-readiness-and-completion.md).\n",
            completion.join(", ")
        ));
    }
    let tokio: Vec<String> = workloads
        .iter()
        .filter_map(|&(kind, name)| {
            let tokio = rate(rows, kind, "tokio")?;
            Some(format!(
                "{name} {:.2}x event, {:.2}x event-async",
                tokio / rate(rows, kind, "event")?,
                tokio / rate(rows, kind, "event-async")?
            ))
        })
        .collect();
    if !tokio.is_empty() {
        out.push_str(&format!(
            "* async/await (tokio: a task per connection, reads on its blocking pool, a worker thread per core): \
             {}. Its reads leave its threads as event-async's do, so against event-async the difference is what \
             the runtime adds (a scheduler, wakers, more threads), not the design \
             (docs/guide/02d-async-await.md).\n",
            tokio.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Report;

    fn row(kind: WorkloadKind, model: &str, ok: u64) -> Row {
        Row { kind, workload: kind.name().into(), model: model.into(), report: Report::with_count(ok) }
    }

    #[test]
    fn the_verdict_quotes_this_runs_ratios() {
        let rows = [
            row(WorkloadKind::Uncached, "event", 100),
            row(WorkloadKind::Uncached, "event-async", 1600),
            row(WorkloadKind::Uncached, "uring", 3000),
            row(WorkloadKind::Uncached, "threads", 3100),
            row(WorkloadKind::Cached, "event", 1000),
            row(WorkloadKind::Cached, "event-async", 800),
        ];
        let text = verdict(&rows, 16, &[(WorkloadKind::Uncached, 32)]);
        assert!(text.contains("event-async serves 16.0x what event does"), "{text}");
        assert!(text.contains("16 x 1000/10 = 1600 req/s; the ideal for 32 clients is 3200"), "{text}");
        let elastic = verdict(&rows, 512, &[(WorkloadKind::Uncached, 32)]);
        assert!(elastic.contains("a reader per pending read (up to 512): 50% of the ideal"), "{elastic}");
        assert!(text.contains("uring reaches 3000 (94% of the ideal)"), "{text}");
        assert!(text.contains("event-async 0.80x"), "{text}");
        assert!(!text.contains("Large files"), "nothing is said of what was not measured");
        assert!(!text.contains("async/await"), "nothing is said of tokio unless it was measured");
    }

    #[test]
    fn the_verdict_sets_tokio_beside_both_event_loops() {
        let rows = [
            row(WorkloadKind::Uncached, "event", 100),
            row(WorkloadKind::Uncached, "event-async", 1600),
            row(WorkloadKind::Uncached, "tokio", 2400),
            row(WorkloadKind::Cached, "event", 1000),
            row(WorkloadKind::Cached, "event-async", 800),
            row(WorkloadKind::Cached, "tokio", 900),
        ];
        let text = verdict(&rows, 512, &[(WorkloadKind::Uncached, 32)]);
        assert!(text.contains("slow storage 24.00x event, 1.50x event-async; cached 0.90x event, 1.12x"), "{text}");
        assert!(!text.contains("fib 0"), "{text}");
    }

    #[test]
    fn the_verdict_sets_the_completion_model_beside_event_and_says_where_its_gain_comes_from() {
        let rows = [
            row(WorkloadKind::Uncached, "event", 100),
            row(WorkloadKind::Uncached, "uring-net", 3000),
            row(WorkloadKind::Cached, "event", 1000),
            row(WorkloadKind::Cached, "uring-net", 1400),
        ];
        let text = verdict(&rows, 512, &[(WorkloadKind::Uncached, 32)]);
        assert!(text.contains("against event: slow storage 30.00x, cached 1.40x."), "{text}");
        assert!(text.contains("the system calls it does not make"), "{text}");
        let level = [row(WorkloadKind::Cached, "event", 1000), row(WorkloadKind::Cached, "uring-net", 1020)];
        let text = verdict(&level, 512, &[]);
        assert!(text.contains("did not show in this run's rate"), "{text}");
        assert!(!verdict(&rows[..1], 512, &[]).contains("Completion"), "nothing is said of uring-net unless measured");
    }
}
