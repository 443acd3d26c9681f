//! Timelines: `server --trace` and `client bench --timeline` write valid
//! Chrome trace-event JSON, and the traces show what the chapter claims
//! (a slow read stops the `event` loop; `event-async`'s loop stays free);
//! `client timeline --svg` draws them.
//!
//! The validity check is written here, apart from the programs that write
//! and read traces, so that it cannot share their mistakes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use rustix::process::Signal;
use serde_json::Value;

use crate::support::{client_bin, die_with_parent, fixtures, Server, IO_TIMEOUT};

/// What a valid trace holds, for the claims the tests make about it.
#[derive(Debug, Default)]
struct Checked {
    /// Duration slices: (thread name, slice name, start µs, length µs).
    slices: Vec<(String, String, f64, f64)>,
    /// Asynchronous slices whose begin and end paired up.
    async_pairs: usize,
    /// Instant events, by name.
    instants: Vec<String>,
    /// Slices' numeric arguments, by slice name.
    args: Vec<(String, serde_json::Map<String, Value>)>,
}

/// A thread of a trace: its `pid` and `tid` as written.
type Thread = (String, String);

/// Checks the trace-event format's rules: every event has `ph`, `pid`,
/// `tid` and `ts`; duration slices (`X`, and `B`/`E` pairs) on one thread
/// nest; every `B` has its `E` and every `b` its `e`.
fn validate(text: &str) -> Checked {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON: {err}\n{text}"));
    let events = value["traceEvents"].as_array().expect("an object with a traceEvents array");
    let mut checked = Checked::default();
    let mut names: HashMap<Thread, String> = HashMap::new();
    let mut per_thread: HashMap<Thread, Vec<(f64, f64, String)>> = HashMap::new();
    let mut open_b: HashMap<Thread, Vec<(f64, String)>> = HashMap::new();
    let mut open_async: HashMap<(String, String, String), usize> = HashMap::new();
    for event in events {
        for field in ["ph", "pid", "tid", "ts"] {
            assert!(event.get(field).is_some(), "an event without {field:?}: {event}");
        }
        let ph = event["ph"].as_str().expect("ph is a string");
        let ts = event["ts"].as_f64().expect("ts is a number");
        let thread = (event["pid"].to_string(), event["tid"].to_string());
        let name = event["name"].as_str().unwrap_or("").to_string();
        match ph {
            "M" if name == "thread_name" => {
                names.insert(thread, event["args"]["name"].as_str().unwrap().to_string());
            }
            "X" => {
                let dur = event["dur"].as_f64().expect("an X event has a dur");
                assert!(dur >= 0.0, "negative duration: {event}");
                per_thread.entry(thread).or_default().push((ts, ts + dur, name.clone()));
                if let Some(args) = event["args"].as_object() {
                    checked.args.push((name, args.clone()));
                }
            }
            "B" => open_b.entry(thread).or_default().push((ts, name)),
            "E" => {
                let (start, name) = open_b.get_mut(&thread).and_then(Vec::pop).expect("an E with no B open");
                assert!(ts >= start, "{name} ends before it begins");
                per_thread.entry(thread).or_default().push((start, ts, name));
            }
            "b" | "e" => {
                let key = (event["pid"].to_string(), event["cat"].to_string(), event["id"].to_string());
                let open = open_async.entry(key).or_default();
                if ph == "b" {
                    *open += 1;
                } else {
                    assert!(*open > 0, "an e with no b: {event}");
                    *open -= 1;
                    checked.async_pairs += 1;
                }
            }
            "i" | "I" => checked.instants.push(name),
            _ => {}
        }
    }
    assert!(open_b.values().all(Vec::is_empty), "a B with no E: {open_b:?}");
    assert!(open_async.values().all(|&n| n == 0), "a b with no e");
    for (thread, mut slices) in per_thread {
        // Nesting: sorted by start (longest first), each slice ends before
        // whatever holds it ends.
        slices.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let mut stack: Vec<(f64, f64, String)> = Vec::new();
        for slice in slices {
            // Times are written in µs with three decimals: a nanosecond of rounding is no overlap.
            while stack.last().is_some_and(|top| top.1 <= slice.0 + 0.0015) {
                stack.pop();
            }
            if let Some(top) = stack.last() {
                assert!(slice.1 <= top.1 + 0.001, "on {thread:?}, {slice:?} overlaps {top:?} without nesting in it");
            }
            let thread_name = names.get(&thread).cloned().unwrap_or_default();
            checked.slices.push((thread_name, slice.2.clone(), slice.0, slice.1 - slice.0));
            stack.push(slice);
        }
    }
    checked
}

impl Checked {
    fn longest(&self, name: &str) -> f64 {
        self.slices.iter().filter(|s| s.1 == name).map(|s| s.3).fold(0.0, f64::max)
    }

    fn count(&self, name: &str) -> usize {
        self.slices.iter().filter(|s| s.1 == name).count()
    }
}

/// `client bench` at `addr` with a timeline, asking for four different
/// files so that, with the cache off, every request reads.
fn bench(addr: &str, conns: usize, requests: usize, timeline: Option<&Path>) {
    let mut command = Command::new(client_bin());
    command.args(["bench", "--addr", addr, "--conns", &conns.to_string(), "--requests", &requests.to_string()]);
    for path in ["test.txt", "tiny.txt", "index.html", "data/1k.bin"] {
        command.args(["--path", path]);
    }
    if let Some(timeline) = timeline {
        command.arg("--timeline").arg(timeline);
    }
    let output = command.output().expect("run client bench");
    assert!(output.status.success(), "client bench failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Runs `server --model MODEL --trace` under a little load with 10 ms
/// storage, clears its cache once, stops it, and returns its trace checked.
fn traced_run(model: &str, extra: &[&str], dir: &Path, requests: usize) -> Checked {
    let file = dir.join(format!("{model}.json"));
    let root = fixtures();
    let mut args = vec!["--model", model, "--root", root.to_str().unwrap(), "--cache-size", "0", "--quiet"];
    args.extend(extra);
    let trace = file.to_str().unwrap();
    args.extend(["--trace", trace]);
    let server = Server::start(&args);
    bench(&server.addr.to_string(), requests / 6, requests, None);
    server.signal(Signal::HUP);
    server.wait_for_log("cache cleared", 1);
    server.signal(Signal::TERM);
    assert_eq!(server.wait_exit(), Some(0));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|_| panic!("{model} wrote no trace"));
    validate(&text)
}

#[test]
fn every_model_with_a_loop_or_threads_writes_a_valid_trace_and_event_stalls_where_event_async_does_not() {
    let dir = tempfile::tempdir().unwrap();
    // uring-net with more clients, so that enters find several completions.
    let requests = |model: &str| if model == "uring-net" { 96 } else { 24 };
    let mut models: Vec<(&'static str, Vec<&'static str>)> = vec![
        ("event", vec!["--read-delay-ms", "10"]),
        ("event-async", vec!["--read-delay-ms", "10"]),
        ("iterative", vec!["--read-delay-ms", "10"]),
        ("select", vec![]),
        ("poll", vec![]),
        ("threads", vec![]),
        ("pool", vec![]),
        ("tokio", vec![]),
        ("event-aio", vec![]),
    ];
    if cfg!(target_os = "linux") {
        models.push(("uring-net", vec![]));
        models.push(("uring", vec![]));
    }
    // `event` and `event-async` first, the two alone: their claim is about
    // milliseconds, which a machine busy with nine other servers could
    // steal from a loop between two instructions. Then the rest at once.
    let run_all = |models: &[(&'static str, Vec<&'static str>)]| -> Vec<(&'static str, Checked)> {
        std::thread::scope(|scope| {
            let runs: Vec<_> = models
                .iter()
                .map(|(model, extra)| (*model, scope.spawn(|| traced_run(model, extra, dir.path(), requests(model)))))
                .collect();
            runs.into_iter()
                .map(|(model, run)| (model, run.join().unwrap_or_else(|_| panic!("{model} failed"))))
                .collect()
        })
    };
    let (timed, others) = models.split_at(2);
    let mut traces = run_all(timed);
    traces.extend(run_all(others));
    let trace = |model: &str| &traces.iter().find(|(m, _)| *m == model).unwrap().1;
    for (model, checked) in &traces {
        // 24 requests, each a slice from parse to response; the cache clear and the stop.
        assert_eq!(checked.async_pairs, requests(model), "{model}: a request slice per request");
        assert!(checked.instants.iter().any(|i| i.contains("cache cleared")), "{model}: {:?}", checked.instants);
        assert!(checked.instants.iter().any(|i| i.contains("stop")), "{model}: {:?}", checked.instants);
        if !["threads", "pool", "tokio", "iterative"].contains(model) {
            assert!(checked.count("turn") > 0 && checked.count("handle") > 0, "{model}: loop turns");
        }
    }
    // `event` reads inline: some turn's handling took a whole 10 ms read, and
    // the loop thread itself did the reads.
    let event = trace("event");
    assert!(event.longest("handle") >= 10_000.0, "event: longest handle {} µs", event.longest("handle"));
    assert!(event.slices.iter().any(|s| s.1 == "read" && s.0 == "main"), "event reads on its loop thread");
    // `event-async` hands them to readers: no handling took 10 ms, and no
    // read ran on the loop's thread.
    let event_async = trace("event-async");
    let loop_reads = event_async.slices.iter().filter(|s| s.1 == "read" && s.0 == "main").count();
    assert_eq!(loop_reads, 0, "event-async read on its loop thread");
    assert!(event_async.count("read") >= 24, "event-async: its reads on reader threads");
    assert!(
        event_async.longest("handle") < 10_000.0,
        "event-async: a turn's handling took {} µs (the loop should never wait for storage)",
        event_async.longest("handle")
    );
    // `iterative`: waits and serves, one connection at a time.
    // Bench's 4 kept-alive connections, and the one it opens first to see that the server is up.
    assert_eq!(trace("iterative").count("serve"), 5, "iterative: a serve per connection, one after another");
    if cfg!(target_os = "linux") {
        let uring = trace("uring-net");
        let most = |key: &str| {
            uring
                .args
                .iter()
                .filter(|(name, _)| name == "submit and wait")
                .filter_map(|(_, a)| a.get(key)?.as_u64())
                .max()
        };
        assert!(most("reaped").unwrap_or(0) >= 2, "uring-net: some enter reaped several completions");
        assert!(most("submitted").unwrap_or(0) >= 1, "uring-net: enters submit entries");
    }
}

#[test]
fn past_its_cap_a_trace_stops_recording_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("capped.json");
    let root = fixtures();
    let server =
        Server::start(&["--root", root.to_str().unwrap(), "--trace", file.to_str().unwrap(), "--trace-events", "50"]);
    bench(&server.addr.to_string(), 2, 40, None);
    server.wait_for_log("recording stopped", 1);
    server.signal(Signal::TERM);
    assert_eq!(server.wait_exit(), Some(0));
    let text = std::fs::read_to_string(&file).unwrap();
    let checked = validate(&text);
    assert!(checked.instants.iter().any(|i| i.contains("the cap of 50 events")), "{:?}", checked.instants);
    let value: Value = serde_json::from_str(&text).unwrap();
    assert!(value["otherData"]["dropped"].as_u64().unwrap() > 0);
}

#[test]
fn tracing_fork_or_prefork_or_into_a_missing_directory_is_refused_with_a_reason() {
    let output = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--model", "prefork", "--port", "0", "--trace", "never.json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("one process"));
    // A trace that cannot be written stops the server at start, not after the run.
    let output = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--port", "0", "--trace", "/nonexistent-dir/trace.json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot write the trace to /nonexistent-dir/trace.json"));
}

/// The Python student server on a free port: (the child, its address).
fn python_server(root: &Path) -> Option<(std::process::Child, String)> {
    if !Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: python3 is not installed");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grader/student_server.py");
    let mut command = Command::new("python3");
    command.arg(script).args(["--port", "0", "--read-delay-ms", "10", "--root"]).arg(root);
    let mut child = die_with_parent(command.stdout(Stdio::piped()).stderr(Stdio::null())).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(IO_TIMEOUT).unwrap_or_default();
    let addr = line.trim().strip_prefix("listening on ").expect("the Python server announces itself").to_string();
    Some((child, addr))
}

#[test]
fn a_timeline_of_a_server_in_another_language_is_valid_and_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mut python, addr)) = python_server(&fixtures()) else { return };
    let timeline: PathBuf = dir.path().join("python.json");
    bench(&addr, 3, 30, Some(&timeline));
    let _ = python.kill();
    let _ = python.wait();
    let checked = validate(&std::fs::read_to_string(&timeline).unwrap());
    // A row per client, a slice per request, and each request's phases inside it.
    let clients: std::collections::HashSet<&str> = checked.slices.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(clients, ["client 0", "client 1", "client 2"].into_iter().collect());
    assert_eq!(checked.count("request"), 30);
    assert_eq!(checked.count("receive"), 30, "every response's last byte is recorded");
    assert!(checked.count("wait") > 0 && checked.count("connect") == 3, "connect once per kept-alive client");

    let svg = dir.path().join("python.svg");
    let drawn = Command::new(client_bin()).arg("timeline").arg(&timeline).arg("--svg").arg(&svg).output().unwrap();
    assert!(drawn.status.success(), "{}", String::from_utf8_lossy(&drawn.stderr));
    let summary = String::from_utf8_lossy(&drawn.stdout);
    assert!(summary.contains("request") && summary.contains("30"), "{summary}");
    let text = std::fs::read_to_string(&svg).unwrap();
    let picture = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    let texts: Vec<&str> = picture.descendants().filter_map(|n| n.text()).collect();
    for row in ["client 0", "client 1", "client 2"] {
        assert!(texts.iter().any(|t| t.trim() == row), "no row labelled {row}");
    }
    let rects = picture.descendants().filter(|n| n.has_tag_name("rect")).count();
    assert!(rects >= 30, "a bar per request at least: {rects} rects");

    // A file that is not a trace is refused, with a reason.
    std::fs::write(dir.path().join("not.json"), "[{\"name\":\"x\"}]").unwrap();
    let refused = Command::new(client_bin()).arg("timeline").arg(dir.path().join("not.json")).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no \"ph\""));
}

#[test]
fn a_server_trace_is_drawn_with_its_loop_and_reader_threads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("async.json");
    let trace = file.to_str().unwrap();
    let root = fixtures();
    let args = ["--model", "event-async", "--root", root.to_str().unwrap(), "--read-delay-ms", "10", "--trace", trace];
    let server = Server::start(&args);
    bench(&server.addr.to_string(), 4, 16, None);
    server.signal(Signal::TERM);
    assert_eq!(server.wait_exit(), Some(0));
    let svg = dir.path().join("async.svg");
    let drawn = Command::new(client_bin()).arg("timeline").arg(&file).arg("--svg").arg(&svg).output().unwrap();
    assert!(drawn.status.success(), "{}", String::from_utf8_lossy(&drawn.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    let picture = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    let texts: Vec<&str> = picture.descendants().filter_map(|n| n.text()).map(str::trim).collect();
    assert!(texts.contains(&"main"), "the loop's row: {texts:?}");
    assert!(texts.iter().any(|t| t.starts_with("reader")), "a reader's row: {texts:?}");
    assert!(texts.iter().any(|t| t.starts_with("in flight")), "the requests in flight: {texts:?}");
}

#[test]
fn grading_with_a_timeline_writes_a_valid_trace_per_test() {
    let dir = tempfile::tempdir().unwrap();
    let timelines = dir.path().join("timelines");
    let server = env!("CARGO_BIN_EXE_server");
    let output = Command::new(client_bin())
        .args(["grade", "--stages", "2", "--logs"])
        .arg(dir.path().join("logs"))
        .arg("--timeline")
        .arg(&timelines)
        .args(["--", server, "--model", "select", "--port", "{port}", "--root", "{root}", "--read-delay-ms", "{delay}"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    let files: Vec<PathBuf> = std::fs::read_dir(&timelines).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert!(files.len() >= 2, "a timeline per stage-2 test: {files:?}");
    let stalled = timelines.join("concurrency.stalled_client.json");
    for file in &files {
        let checked = validate(&std::fs::read_to_string(file).unwrap());
        assert!(checked.count("request") + checked.count("request failed") > 0, "{}: no exchanges", file.display());
    }
    // The stalled client sends half a request, and the rest only after
    // another client was served: that whole request lies inside its send.
    let checked = validate(&std::fs::read_to_string(stalled).unwrap());
    let sends = checked.slices.iter().filter(|s| s.1 == "send");
    let served_meanwhile = sends.clone().any(|send| {
        checked
            .slices
            .iter()
            .any(|r| r.1 == "request" && r.0 != send.0 && r.2 >= send.2 && r.2 + r.3 <= send.2 + send.3)
    });
    assert!(served_meanwhile, "no request served while the stalled client was sending: {:?}", checked.slices);
}
