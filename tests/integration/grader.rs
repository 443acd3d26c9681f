//! Proof that the grader (`client grade`) is right:
//! (a) every reference model gets full marks for the stages it claims;
//! (b) deliberately broken servers (tests/grader/student_server.py with
//!     `--bug`) lose exactly the points of their bug and keep the rest, and
//!     the same server without a bug, in Python, gets full marks;
//! (c) the grader survives a server that never starts, exits mid-test,
//!     hangs, or floods its output, and leaves no process or file behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::client_bin;

/// A grader run: its report and what it left.
pub struct Graded {
    pub output: Output,
    pub text: String,
}

impl Graded {
    pub fn failed(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("[FAIL] "))
            .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_string())
            .collect()
    }

    pub fn score(&self) -> (u32, u32) {
        let line = self.text.lines().find_map(|l| l.strip_prefix("score: ")).unwrap_or_else(|| panic!("{}", self.text));
        let (score, rest) = line.split_once('/').unwrap();
        (score.parse().unwrap(), rest.split_whitespace().next().unwrap().parse().unwrap())
    }
}

/// Runs `client grade ARGS -- COMMAND` with its own TMPDIR and log folder,
/// and checks it left nothing behind: no file in that TMPDIR, and no
/// process whose command line names it (the servers' `--root` lies in it).
pub fn grade(args: &[&str], command: &[&str]) -> Graded {
    let scratch = tempfile::tempdir().unwrap();
    let tmp = scratch.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let output = Command::new(client_bin())
        .arg("grade")
        .args(args)
        .arg("--logs")
        .arg(scratch.path().join("logs"))
        .arg("--")
        .args(command)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "the grader panicked:\n{stderr}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "the grader left temporary files: {left:?}");
    let tag = tmp.display().to_string();
    assert!(processes_tagged(&tag).is_empty(), "processes outlived the grader: {:?}", processes_tagged(&tag));
    Graded { output, text }
}

/// Pids whose command line contains `tag`.
fn processes_tagged(tag: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(tag.len()).any(|w| w == tag.as_bytes()))
        })
        .collect()
}

fn server() -> String {
    env!("CARGO_BIN_EXE_server").to_string()
}

fn student_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grader/student_server.py")
}

/// The command that runs the Python student server (with `--bug BUG`),
/// or `None`, with a note, where python3 is not installed.
fn python_server(bug: Option<&str>) -> Option<Vec<String>> {
    if !Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: python3 is not installed");
        return None;
    }
    let mut command = vec!["python3".to_string(), student_server().display().to_string()];
    command.extend(bug.map(|bug| ["--bug".to_string(), bug.to_string()]).into_iter().flatten());
    command.extend(PLACEHOLDERS.map(String::from));
    Some(command)
}

fn strs(command: &[String]) -> Vec<&str> {
    command.iter().map(String::as_str).collect()
}

const PLACEHOLDERS: [&str; 6] = ["--port", "{port}", "--root", "{root}", "--read-delay-ms", "{delay}"];

/// The stages each reference model claims (docs/grading.md has the table).
fn claims() -> Vec<(&'static str, &'static [&'static str], &'static str)> {
    vec![
        ("iterative", &[], "1,3,5"),
        ("fork", &[], "1,2,3,5"),
        ("prefork", &["--workers", "32"], "1,2,3,5"),
        ("threads", &[], "1,2,3,4,5"),
        ("pool", &["--workers", "32"], "1,2,3,4,5"),
        ("select", &[], "1,2,3,5"),
        ("poll", &[], "1,2,3,5"),
        ("event", &[], "1,2,3,5"),
        ("event-async", &[], "1,2,3,4,5"),
        ("event-aio", &[], "1,2,3,4,5"),
        ("uring", &[], "1,2,3,4,5"),
        ("tokio", &[], "1,2,3,4,5"),
        ("tokio", &["--runtime", "current-thread-per-core", "--workers", "4"], "1,2,3,4,5"),
        ("uring-net", &[], "1,2,3,4,5"),
    ]
}

#[test]
fn every_reference_model_gets_full_marks_for_the_stages_it_claims() {
    for (model, extra, stages) in claims() {
        let server = server();
        let mut command = vec![server.as_str(), "--model", model, "--quiet"];
        command.extend(extra);
        command.extend(PLACEHOLDERS);
        let graded = grade(&["--stages", stages, "--stretch", "2"], &command);
        let (score, max) = graded.score();
        assert_eq!(
            (score, graded.failed()),
            (max, Vec::<String>::new()),
            "{model} (stages {stages}):\n{}",
            graded.text
        );
        assert!(graded.output.status.success(), "{model}: full marks exit 0");
    }
}

#[test]
fn the_reference_event_async_model_gets_full_marks_at_stage_6() {
    let server = server();
    let mut command = vec![server.as_str(), "--model", "event-async"];
    command.extend(PLACEHOLDERS);
    let graded = grade(&["--stage", "6", "--stretch", "2"], &command);
    let (score, max) = graded.score();
    assert_eq!(score, max, "{}", graded.text);
    assert!(graded.text.contains("yours/event"), "stage 6 compares with the reference models:\n{}", graded.text);
}

#[test]
fn a_python_server_that_follows_the_assignment_gets_full_marks() {
    let Some(command) = python_server(None) else { return };
    let graded = grade(&["--stages", "1,2,3,4,5"], &strs(&command));
    let (score, max) = graded.score();
    // 87 where the grader runs as root: files.unreadable is skipped (root reads everything).
    assert_eq!(score, max, "every test of stages 1 to 5 passes:\n{}", graded.text);
    assert!(max == 88 || (max == 87 && graded.text.contains("[skip] files.unreadable")), "{}", graded.text);
}

#[test]
fn each_broken_server_loses_exactly_the_points_of_its_bug() {
    if python_server(None).is_none() {
        return;
    }
    let cases: [(&str, &[&str]); 9] = [
        ("dotdot", &["sandbox.dotdot"]),
        ("symlinks", &["sandbox.symlinks"]),
        (
            "iterative",
            &[
                "concurrency.stalled_client",
                "concurrency.many_clients",
                "concurrency.large_reply",
                "concurrency.stalled_reader",
                "async.overlap",
                "async.cached_while_pending",
            ],
        ),
        ("blocking-reads", &["async.overlap", "async.cached_while_pending"]),
        ("ignores-sighup", &["cache.fresh_after_sighup", "cache.sighup_logged"]),
        ("dies-on-sighup", &["cache.fresh_after_sighup", "cache.sighup_logged", "signals.sighup_storm"]),
        ("leaks-fd", &["resources.no_fd_leak"]),
        ("truncates", &["concurrency.large_reply", "files.64_mib", "signals.sigterm"]),
        ("misframes", &["protocol.pipelined"]),
    ];
    for (bug, lost) in cases {
        let command = python_server(Some(bug)).expect("python3 was found");
        let graded = grade(&["--stages", "1,2,3,4,5"], &strs(&command));
        assert_eq!(graded.failed(), lost, "--bug {bug}:\n{}", graded.text);
        assert_eq!(graded.output.status.code(), Some(1), "--bug {bug}: a failed test exits 1");
        for name in lost {
            let detail = format!("FAILED {name} ");
            assert!(graded.text.contains(&detail), "--bug {bug}: {name} is explained:\n{}", graded.text);
        }
    }
}

#[test]
fn each_mistake_in_the_loop_loses_exactly_its_points_at_the_stage_the_loop_is_written_with_a_hint_at_the_loop() {
    if python_server(None).is_none() {
        return;
    }
    let cases: [(&str, &str, &[&str], &str); 5] = [
        (
            "drop-unsent",
            "1,2",
            &["concurrency.large_reply"],
            "keep what send did not take in the client's output buffer",
        ),
        ("blocking-send", "1,2", &["concurrency.stalled_reader"], "a blocking send in the loop stalls every client"),
        ("one-line-per-read", "3", &["protocol.pipelined"], "before waiting for readiness again"),
        ("crlf-split", "3", &["protocol.line_limit_split"], "may be the first half of `\\r\\n`"),
        (
            "lost-wakeup",
            "4",
            &["async.overlap", "async.cached_while_pending", "async.wakeup"],
            "the read completed but the loop never heard",
        ),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(bug, stages, lost, hint)| {
            std::thread::spawn(move || {
                let command = python_server(Some(bug)).expect("python3 was found");
                (bug, lost, hint, grade(&["--stages", stages], &strs(&command)))
            })
        })
        .collect();
    for run in runs {
        let (bug, lost, hint, graded) = run.join().unwrap();
        assert_eq!(graded.failed(), lost, "--bug {bug}:\n{}", graded.text);
        let hints: Vec<&str> = graded.text.lines().filter_map(|l| l.trim_start().strip_prefix("hint:")).collect();
        assert_eq!(hints.len(), lost.len(), "--bug {bug}: a hint per failure:\n{}", graded.text);
        assert!(hints.iter().all(|h| h.contains(hint)), "--bug {bug}: every hint says {hint:?}:\n{}", graded.text);
    }
}

#[test]
fn the_grader_survives_servers_that_never_start_die_hang_or_flood() {
    if python_server(None).is_none() {
        return;
    }
    for (bug, args) in [
        ("never-starts", &["--stages", "1,2,3"][..]),
        ("exits-midway", &["--stages", "1,2,3"][..]),
        ("hangs", &["--stages", "1", "--stop-after", "2"][..]),
        ("floods", &["--stages", "1,5"][..]),
    ] {
        let command = python_server(Some(bug)).expect("python3 was found");
        let graded = grade(args, &strs(&command));
        let (score, max) = graded.score();
        match bug {
            "never-starts" => {
                assert_eq!(score, 0, "{}", graded.text);
                assert!(
                    graded.text.contains("cannot start (on purpose)"),
                    "the server's words are shown:\n{}",
                    graded.text
                );
            }
            "floods" => assert_eq!(score, max, "a noisy server that works gets its points:\n{}", graded.text),
            _ => assert!(score < max, "--bug {bug}:\n{}", graded.text),
        }
        let expected_status = if score == max { 0 } else { 1 };
        assert_eq!(graded.output.status.code(), Some(expected_status), "--bug {bug}");
    }
}

#[test]
fn a_server_already_running_is_graded_without_the_signal_tests() {
    let root = tempfile::tempdir().unwrap();
    let server = crate::support::Server::start(&["--model", "event", "--root", root.path().to_str().unwrap()]);
    let addr = server.addr.to_string();
    let graded = grade(&["--stages", "3,5", "--addr", &addr, "--root", root.path().to_str().unwrap()], &[]);
    let (score, max) = graded.score();
    assert_eq!(score, max, "{}", graded.text);
    assert!(graded.text.contains("[skip] cache.fresh_after_sighup"), "{}", graded.text);
    assert!(graded.text.contains("points not tested"), "the report says what it could not test:\n{}", graded.text);
    let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
    assert!(left.is_empty(), "the grader's files are removed from a borrowed root: {left:?}");
}

#[test]
fn a_planted_fault_costs_only_the_tests_it_fails_and_the_report_names_the_death_or_hang() {
    if python_server(None).is_none() {
        return;
    }
    let cases: [(&str, &str, &[&str], &str); 3] = [
        // A single-threaded server that opens the FIFO blocking hangs in
        // open(2): the tests after it start from a new server.
        ("blocking-fifo", "1", &["files.fifo"], "the server stopped answering during `files.fifo`"),
        (
            "aborts-on-control",
            "1",
            &["sandbox.control_bytes"],
            "the server died (SIGABRT) during `sandbox.control_bytes`",
        ),
        // Only the tests that need a second request fail (shorter
        // deadlines: each of those waits for its deadline).
        (
            "one-request",
            "0.5",
            &[
                "files.dot_components",
                "files.empty_components",
                "files.directory",
                "files.fifo",
                "sandbox.dotdot",
                "sandbox.absolute",
                "sandbox.symlinks",
                "sandbox.control_bytes",
                "protocol.line_limit",
                "protocol.pipelined",
                "resources.no_fd_leak",
            ],
            "the server stopped answering during `files.small`",
        ),
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(bug, stretch, lost, said)| {
            std::thread::spawn(move || {
                let command = python_server(Some(bug)).expect("python3 was found");
                let graded = grade(&["--stages", "3", "--stretch", stretch], &strs(&command));
                (bug, lost, said, graded)
            })
        })
        .collect();
    for run in runs {
        let (bug, lost, said, graded) = run.join().unwrap();
        assert_eq!(graded.failed(), lost, "--bug {bug}:\n{}", graded.text);
        assert!(graded.text.contains(said), "--bug {bug}: the report says {said:?}:\n{}", graded.text);
        assert!(
            !graded.text.contains("connection refused"),
            "--bug {bug}: no test met a dead server:\n{}",
            graded.text
        );
    }
}

#[test]
fn a_command_that_cannot_be_started_means_grading_cannot_run() {
    let graded = grade(&["--stages", "1,3"], &["/no/such/server", "--port", "{port}"]);
    let stderr = String::from_utf8_lossy(&graded.output.stderr);
    assert_eq!(graded.output.status.code(), Some(2), "exit 2: grading could not run\n{stderr}{}", graded.text);
    assert!(stderr.contains("cannot start \"/no/such/server\""), "{stderr}");
    assert!(!graded.text.contains("{port}"), "no placeholder left unfilled:\n{}", graded.text);
}

/// A Python student server with `--bug BUG` on a port the kernel picks,
/// serving `root`; stopped (killed) on drop.
struct PythonServer {
    child: std::process::Child,
    addr: String,
}

impl PythonServer {
    fn start(bug: &str, root: &Path) -> Option<PythonServer> {
        use std::io::BufRead;
        python_server(None)?;
        let mut child = Command::new("python3")
            .arg(student_server())
            .args(["--bug", bug, "--port", "0", "--root"])
            .arg(root)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
        Some(PythonServer { child, addr })
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a replay line in bash (with a stand-in for `nc` where netcat is
/// not installed: bash's /dev/tcp, the same bytes on one connection), for
/// at most 3 seconds; its output.
fn run_replay(line: &str) -> String {
    let shim = "command -v nc >/dev/null || nc() { exec 3<>/dev/tcp/$1/$2; cat >&3; cat <&3; }";
    let out = Command::new("timeout").args(["3", "bash", "-c", &format!("{shim}\n{line}")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_failure_prints_a_replay_line_that_reproduces_it_when_pasted() {
    let root = tempfile::tempdir().unwrap();
    let Some(buggy) = PythonServer::start("misframes", root.path()) else { return };
    let graded = grade(&["--stages", "3", "--addr", &buggy.addr, "--root", root.path().to_str().unwrap()], &[]);
    assert_eq!(graded.failed(), ["protocol.pipelined"], "{}", graded.text);
    let replay = graded
        .text
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("replay:   printf 'small.txt\\n1m.bin"))
        .map(|rest| format!("printf 'small.txt\\n1m.bin{rest}"))
        .unwrap_or_else(|| panic!("a replay line for protocol.pipelined:\n{}", graded.text));
    assert!(replay.ends_with(&format!("| nc {}", buggy.addr.replace(':', " "))), "{replay}");
    // The grader's files are gone from the root now: every request is a 404.
    // The buggy server answers only the first of the five; the reference all.
    let replies = |output: &str| output.lines().filter(|l| l.starts_with("ERR ") || l.starts_with("OK ")).count();
    assert_eq!(replies(&run_replay(&replay)), 1, "the replay shows the bug");
    let reference = crate::support::Server::start(&["--root", root.path().to_str().unwrap()]);
    let fixed = replay.replace(&buggy.addr.replace(':', " "), &reference.addr.to_string().replace(':', " "));
    assert_eq!(replies(&run_replay(&fixed)), 5, "the same line against the reference: five replies");
}

#[test]
fn gradescope_and_junit_reports_carry_every_test() {
    let root = tempfile::tempdir().unwrap();
    let Some(buggy) = PythonServer::start("misframes", root.path()) else { return };
    let config = root.path().join("..").join(format!("course-{}.toml", std::process::id()));
    std::fs::write(&config, "[visibility]\n\"protocol.pipelined\" = \"after_due_date\"\n").unwrap();
    let args = |format: &'static str| {
        vec![
            "--stages".to_string(),
            "3".into(),
            "--addr".into(),
            buggy.addr.clone(),
            "--root".into(),
            root.path().display().to_string(),
            "--config".into(),
            config.display().to_string(),
            "--format".into(),
            format.into(),
        ]
    };
    let gradescope = grade(&strs(&args("gradescope")), &[]);
    let junit = grade(&strs(&args("junit")), &[]);
    std::fs::remove_file(&config).unwrap();

    // results.json, against Gradescope's documented fields.
    let results: serde_json::Value = serde_json::from_str(&gradescope.text).expect("results.json is JSON");
    let top = ["score", "execution_time", "output", "output_format", "visibility", "stdout_visibility", "tests"];
    for key in results.as_object().unwrap().keys() {
        assert!(top.contains(&key.as_str()), "{key} is not a documented top-level field");
    }
    let tests = results["tests"].as_array().unwrap();
    let fields = ["score", "max_score", "status", "name", "number", "output", "visibility"];
    let mut sum = 0.0;
    for test in tests {
        for key in test.as_object().unwrap().keys() {
            assert!(fields.contains(&key.as_str()), "{key} is not a documented test field");
        }
        assert!(test["score"].as_f64().unwrap() <= test["max_score"].as_f64().unwrap());
        assert!(
            ["visible", "hidden", "after_due_date", "after_published"].contains(&test["visibility"].as_str().unwrap())
        );
        sum += test["score"].as_f64().unwrap();
    }
    assert_eq!(results["score"].as_f64(), Some(sum), "the score is the tests' sum");
    let pipelined = tests.iter().find(|t| t["number"] == "3.protocol.pipelined").expect("the failed test");
    assert_eq!((pipelined["score"].as_f64(), pipelined["visibility"].as_str()), (Some(0.0), Some("after_due_date")));
    assert!(pipelined["output"].as_str().unwrap().contains("replay:   printf"), "{pipelined}");

    // JUnit XML, read by a parser.
    let doc = roxmltree::Document::parse(&junit.text).expect("well-formed XML");
    let suites = doc.root_element();
    assert_eq!(suites.tag_name().name(), "testsuites");
    let cases: Vec<_> = suites.descendants().filter(|n| n.has_tag_name("testcase")).collect();
    assert_eq!(cases.len(), tests.len(), "one testcase per test");
    let failed: Vec<_> = cases.iter().filter(|c| c.children().any(|n| n.has_tag_name("failure"))).collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].attribute("name").unwrap().starts_with("protocol.pipelined"));
    assert_eq!(suites.attribute("failures"), Some("1"));
}

#[test]
fn the_gradescope_bundle_gives_the_reference_full_marks_in_a_scratch_folder() {
    let scratch = tempfile::tempdir().unwrap();
    let (bundle, submission, results) =
        (scratch.path().join("source"), scratch.path().join("submission"), scratch.path().join("results"));
    let written = Command::new(client_bin())
        .args(["grade", "--stages", "1,3", "--write-gradescope"])
        .arg(&bundle)
        .args(["--", "./server", "--model", "event", "--port", "{port}", "--root", "{root}"])
        .output()
        .unwrap();
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    for file in ["setup.sh", "run_autograder", "client", "course.toml"] {
        assert!(bundle.join(file).exists(), "the bundle has {file}");
    }
    // The sample submission: the reference server.
    std::fs::create_dir(&submission).unwrap();
    std::fs::copy(server(), submission.join("server")).unwrap();
    let run = Command::new(bundle.join("run_autograder"))
        .env("AUTOGRADER_SOURCE", &bundle)
        .env("SUBMISSION", &submission)
        .env("RESULTS", &results)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = std::fs::read_to_string(results.join("results.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let max: f64 = json["tests"].as_array().unwrap().iter().map(|t| t["max_score"].as_f64().unwrap()).sum();
    assert!(max > 0.0, "{text}");
    assert_eq!(json["score"].as_f64(), Some(max), "full marks:\n{text}");
}
