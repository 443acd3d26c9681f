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

// handout: leave out (a complete solution in Python)
fn student_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grader/student_server.py")
}

// handout: leave out (a complete solution in Python)
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

// handout: leave out (a complete solution in Python)
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

// handout: leave out (a complete solution in Python)
#[test]
fn a_python_server_that_follows_the_assignment_gets_full_marks() {
    let Some(command) = python_server(None) else { return };
    let graded = grade(&["--stages", "1,2,3,4,5"], &strs(&command));
    let (score, max) = graded.score();
    assert_eq!((score, max), (70, 70), "every test of stages 1 to 5 runs and passes:\n{}", graded.text);
}

// handout: leave out (a complete solution in Python)
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
            &["concurrency.stalled_client", "concurrency.many_clients", "async.overlap", "async.cached_while_pending"],
        ),
        ("blocking-reads", &["async.overlap", "async.cached_while_pending"]),
        ("ignores-sighup", &["cache.fresh_after_sighup", "cache.sighup_logged"]),
        ("dies-on-sighup", &["cache.fresh_after_sighup", "cache.sighup_logged", "signals.sighup_storm"]),
        ("leaks-fd", &["resources.no_fd_leak"]),
        ("truncates", &["files.64_mib", "signals.sigterm"]),
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

// handout: leave out (a complete solution in Python)
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
