//! Nothing the benchmark or the grader starts outlives it, even when it is
//! SIGKILLed (no destructor, no signal handler runs then): its servers die
//! with it (`PR_SET_PDEATHSIG`), and so do the children of a server that
//! does not pass its own death on (the grader watches the server's group).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{client_bin, die_with_parent};

/// A process as /proc shows it.
struct Proc {
    pid: i32,
    parent: i32,
    group: i32,
    cmdline: String,
}

/// Every process now running (those that vanish while read are skipped).
fn processes() -> Vec<Proc> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        let (Ok(stat), Ok(cmdline)) =
            (std::fs::read_to_string(entry.path().join("stat")), std::fs::read(entry.path().join("cmdline")))
        else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let fields: Vec<i32> = stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| {
            rest.split_whitespace().skip(1).take(2).filter_map(|field| field.parse().ok()).collect()
        });
        let [parent, group] = fields[..] else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        all.push(Proc { pid, parent, group, cmdline });
    }
    all
}

/// Starts `command` with its own TMPDIR (every server it starts serves a
/// root in there, so their command lines name it), waits until it has
/// printed a line starting with `after_line` (any line, or none, for "")
/// and a child of its own named `serving` runs from that TMPDIR, SIGKILLs
/// it, and fails if any process naming the TMPDIR, or in a process group
/// led by one (nginx's workers), is still running 10 s later. Returns the
/// TMPDIR, with whatever files the killed program left in it.
fn sigkill_mid_run(command: &mut Command, after_line: &str, serving: &str) -> tempfile::TempDir {
    let scratch = tempfile::tempdir().unwrap();
    let tag = scratch.path().display().to_string();
    let mut child: Child = die_with_parent(command.env("TMPDIR", scratch.path()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut mid_run = after_line.is_empty();
    loop {
        mid_run = mid_run || rx.try_iter().any(|line| line.starts_with(after_line));
        let started = |p: &Proc| p.parent == pid && p.cmdline.contains(&tag) && p.cmdline.contains(serving);
        if mid_run && processes().iter().any(started) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no server of its own running within 120 s (mid-run: {mid_run})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300)); // under load by now
    let running = processes();
    let groups: Vec<i32> =
        running.iter().filter(|p| p.cmdline.contains(&tag) && p.group == p.pid).map(|p| p.pid).collect();
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::KILL).unwrap();
    child.wait().unwrap();

    // The kernel signals at once; the dying (and a watchdog) take a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> =
            processes().into_iter().filter(|p| p.cmdline.contains(&tag) || groups.contains(&p.group)).collect();
        if left.is_empty() {
            return scratch;
        }
        if Instant::now() > deadline {
            for p in &left {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(p.pid).unwrap(),
                    rustix::process::Signal::KILL,
                );
            }
            let left: Vec<_> = left.iter().map(|p| format!("{} {}", p.pid, p.cmdline)).collect();
            panic!("still running 10 s after SIGKILL:\n{}", left.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_sigkilled_benchmark_leaves_no_server_running() {
    let mut benchmark = Command::new(client_bin().with_file_name("benchmark"));
    benchmark.args(["--server", env!("CARGO_BIN_EXE_server")]);
    // Past the homework's lines, into the table: servers under load, not
    // one being stopped (a SIGTERMed server exits by itself).
    let scratch = sigkill_mid_run(&mut benchmark, "Sync I/O", env!("CARGO_BIN_EXE_server"));
    assert_files_removed(&scratch);
}

/// Waits (up to 10 s) until the benchmark's generated files are gone from
/// `scratch`, its TMPDIR: its watchdog removes them when it is killed.
fn assert_files_removed(scratch: &tempfile::TempDir) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = std::fs::read_dir(scratch.path())
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("fileserver-bench"))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind 10 s after SIGKILL: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_sigkilled_grader_leaves_no_server_nor_its_children_running() {
    // A "server" that does not pass its own death on: a shell running the
    // real server as its child. The shell dies with the grader; the server
    // only because the grader's watchdog kills the shell's process group.
    let mut grader = Command::new(client_bin());
    grader.args(["grade", "--stage", "3", "--", "sh", "-c", "\"$@\" & wait", "sh", env!("CARGO_BIN_EXE_server")]);
    grader.args(["--model", "threads", "--port", "{port}", "--root", "{root}", "--read-delay-ms", "{delay}"]);
    sigkill_mid_run(&mut grader, "", ""); // its scratch files stay: the TempDir returned removes them
}

/// nginx's workers do not follow a killed master: the benchmark runs
/// nginx in a process group of its own, which its watchdog kills.
#[cfg(target_os = "linux")]
#[test]
fn a_sigkilled_benchmark_leaves_no_nginx_worker_running() {
    let installed =
        |program: &str| Command::new(program).arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !installed("nginx") || !installed("wrk") {
        eprintln!("skipped: nginx or wrk is not installed (apt-get install nginx-light wrk)");
        return;
    }
    let mut benchmark = Command::new(client_bin().with_file_name("benchmark"));
    benchmark.args(["--vs-nginx", "--smoke", "--server", env!("CARGO_BIN_EXE_server")]);
    let scratch = sigkill_mid_run(&mut benchmark, "", "nginx");
    assert_files_removed(&scratch);
}
