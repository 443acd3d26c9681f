//! Nothing the benchmark starts outlives it, even when it is SIGKILLed
//! (no destructor, no signal handler runs then): its servers die with it
//! (`PR_SET_PDEATHSIG`), so none is left holding a port or its output pipe.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{client_bin, die_with_parent};

/// A process as /proc shows it.
struct Proc {
    pid: i32,
    parent: i32,
    cmdline: Vec<String>,
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
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some(parent) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        else {
            continue;
        };
        let cmdline = cmdline.split(|&b| b == 0).filter(|arg| !arg.is_empty());
        all.push(Proc { pid, parent, cmdline: cmdline.map(|arg| String::from_utf8_lossy(arg).into()).collect() });
    }
    all
}

#[cfg(target_os = "linux")]
#[test]
fn a_sigkilled_benchmark_leaves_no_server_running() {
    let server = env!("CARGO_BIN_EXE_server");
    let mut benchmark =
        die_with_parent(Command::new(client_bin().with_file_name("benchmark")).args(["--server", server]))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let benchmark_pid = benchmark.id() as i32;
    // Past the homework's lines, into the table: servers under load, not
    // one being stopped (a SIGTERMed server exits by itself).
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = benchmark.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !rx.recv_timeout(Duration::from_secs(1)).is_ok_and(|line| line.starts_with("Sync I/O")) {
        if Instant::now() > deadline {
            let _ = benchmark.kill();
            let _ = benchmark.wait();
            panic!("the benchmark printed no homework lines within 120 s");
        }
    }
    // Then, once a server of its own is serving, find the temporary root
    // it serves: every process started for this run names it.
    let root = loop {
        let running = processes();
        let child =
            running.iter().find(|p| p.parent == benchmark_pid && p.cmdline.first().is_some_and(|c| c == server));
        if let Some(root) = child.and_then(|p| p.cmdline.iter().skip_while(|arg| *arg != "--root").nth(1)) {
            break root.clone();
        }
        if Instant::now() > deadline {
            let _ = benchmark.kill();
            let _ = benchmark.wait();
            panic!("the benchmark started no server within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300)); // under load by now
    let pid = rustix::process::Pid::from_raw(benchmark_pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    benchmark.wait().unwrap();

    // The kernel delivers the death signal at once; allow the dying a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = processes()
            .into_iter()
            .filter(|p| p.parent == benchmark_pid || p.cmdline.iter().any(|arg| arg.contains(&root)))
            .map(|p| format!("{} {}", p.pid, p.cmdline.join(" ")))
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for line in &left {
                let pid = line.split(' ').next().unwrap().parse().unwrap();
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid).unwrap(),
                    rustix::process::Signal::KILL,
                );
            }
            panic!("still running 10 s after the benchmark was SIGKILLed:\n{}", left.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its temporary files stay behind (nothing of it ran to remove them).
    let _ = std::fs::remove_dir_all(&root);
}
