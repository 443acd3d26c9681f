//! The mechanism, by behaviour: a course that asks for a single-threaded
//! `select` loop (`[mechanism] stage2 = "single-thread"`) learns whether a
//! server served the concurrency tests with one thread, by counting the
//! threads while those tests run. Checking the symbols a binary imports
//! (`nm -u | grep select`) proves nothing: any unused call defeats it.
//!
//! What is counted: the processes of the server's process group that hold
//! its listening socket, and every other process of the group except their
//! ancestors (a `sh` or launcher script that started the server and waits
//! for it is not the server). So a forking server's children count, a
//! wrapper does not. Linux only (`/proc/PID/task` via `/proc/PID/stat`);
//! elsewhere the count is skipped with a note.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the threads are counted while a test runs: a thread that
/// serves one quick request lives about a millisecond.
const SAMPLE_INTERVAL: Duration = Duration::from_micros(500);

/// The most threads (and processes) seen at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peak {
    /// Threads, summed over the server's processes.
    pub threads: usize,
    /// The server's processes at that moment.
    pub processes: usize,
}

/// Counts a server's threads in the background until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Option<Peak>>,
}

impl Sampler {
    /// Starts counting the threads of the server whose process group is
    /// `group` and which listens on `port`. `None` where threads cannot be
    /// counted (no `/proc`).
    pub fn start(group: i32, port: u16) -> Option<Sampler> {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        // Found before the test starts: a test may be over in milliseconds.
        let wrappers = wrappers(group, port);
        let mut server: Vec<i32> = members(group).into_keys().filter(|pid| !wrappers.contains(pid)).collect();
        let handle = std::thread::spawn(move || {
            let mut peak: Option<Peak> = None;
            // Bounded: a test has deadlines of its own; a minute of samples at most.
            for sample in 0..(60_000_000 / SAMPLE_INTERVAL.as_micros() as usize) {
                // The whole of /proc is read now and then (a forking server
                // makes new processes); between, only the server's own stat
                // files, so that short-lived threads are not missed.
                if sample % 50 == 49 {
                    server = members(group).into_keys().filter(|pid| !wrappers.contains(pid)).collect();
                }
                let threads: Vec<usize> = server
                    .iter()
                    .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
                    .filter_map(|stat| parse_stat(&stat))
                    .filter(|process| process.group == group)
                    .map(|process| process.threads)
                    .collect();
                if !threads.is_empty() {
                    let now = Peak { threads: threads.iter().sum(), processes: threads.len() };
                    let best = peak.get_or_insert(now);
                    if now.threads > best.threads {
                        *best = now;
                    }
                }
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(SAMPLE_INTERVAL);
            }
            peak
        });
        Some(Sampler { stop, handle })
    }

    /// Stops counting; the peak, if the server was seen at all.
    pub fn finish(self) -> Option<Peak> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().ok().flatten()
    }
}

/// One process, as `/proc/PID/stat` tells it.
#[derive(Debug, Clone, Copy)]
struct Proc {
    ppid: i32,
    group: i32,
    threads: usize,
}

/// `/proc/PID/stat`'s fields after the command name (which may hold
/// spaces and parentheses, so it is skipped to its last `)`).
fn parse_stat(stat: &str) -> Option<Proc> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    // utime stime cutime cstime priority nice num_threads
    Some(Proc {
        ppid: fields.get(1)?.parse().ok()?,
        group: fields.get(2)?.parse().ok()?,
        threads: fields.get(17)?.parse().ok()?,
    })
}

/// Every process of process group `group`.
fn members(group: i32) -> HashMap<i32, Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return HashMap::new() };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let process = parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
            (process.group == group).then_some((pid, process))
        })
        .collect()
}

/// The inodes of the sockets listening on `port` (IPv4 and IPv6), from
/// `/proc/net/tcp{,6}`: `local_address` is `IP:PORT` in hex, state `0A` is LISTEN.
fn listening_inodes(port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(local) = fields.get(1) else { continue };
            let listens = fields.get(3) == Some(&"0A");
            let on_port = local.rsplit(':').next().and_then(|hex| u16::from_str_radix(hex, 16).ok()) == Some(port);
            if let (true, true, Some(Ok(inode))) = (listens, on_port, fields.get(9).map(|i| i.parse())) {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// Whether process `pid` holds one of `inodes` among its fds.
fn holds(pid: i32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok()).any(|link| {
        let link = link.to_string_lossy();
        link.strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inode| inode.parse::<u64>().ok())
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// The group's processes that only started the server and wait for it:
/// the ancestors of those holding the listening socket. Found once, at
/// the start (a forking server's later children are not wrappers).
fn wrappers(group: i32, port: u16) -> HashSet<i32> {
    let inodes = listening_inodes(port);
    let procs = members(group);
    let owners: Vec<i32> = procs.keys().copied().filter(|&pid| holds(pid, &inodes)).collect();
    let mut wrappers = HashSet::new();
    for &owner in &owners {
        let mut pid = procs[&owner].ppid;
        // Bounded walk up the parent chain, inside the group only.
        for _ in 0..64 {
            match procs.get(&pid) {
                Some(parent) if !owners.contains(&pid) => {
                    wrappers.insert(pid);
                    pid = parent.ppid;
                }
                _ => break,
            }
        }
    }
    wrappers
}

/// The server's threads and processes now.
#[cfg(all(test, target_os = "linux"))]
fn count(group: i32, wrappers: &HashSet<i32>) -> Option<Peak> {
    let server: Vec<Proc> =
        members(group).into_iter().filter(|(pid, _)| !wrappers.contains(pid)).map(|(_, process)| process).collect();
    (!server.is_empty()).then(|| Peak { threads: server.iter().map(|p| p.threads).sum(), processes: server.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) server) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 7 0 12345 0 0";
        let process = parse_stat(stat).expect("parsed");
        assert_eq!((process.ppid, process.group, process.threads), (17, 4242, 7));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_wrapper_shell_is_not_counted_but_the_server_it_started_is() {
        use std::os::unix::process::CommandExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        // sh (the wrapper, not exec'ing) starts python3 holding a listener on `port`.
        let script = format!(
            "python3 -c 'import socket,time; s=socket.socket(); s.bind((\"127.0.0.1\",{port})); s.listen(); \
             time.sleep(3)' & wait"
        );
        let Ok(mut child) = std::process::Command::new("sh").args(["-c", &script]).process_group(0).spawn() else {
            return;
        };
        let group = child.id() as i32;
        let mut seen = None;
        for _ in 0..100 {
            let found = wrappers(group, port);
            if !found.is_empty() {
                seen = Some(found);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let peak = seen.as_ref().and_then(|wrappers| count(group, wrappers));
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_raw(group).unwrap(),
            rustix::process::Signal::KILL,
        );
        let _ = child.wait();
        let Some(wrappers) = seen else { return }; // no python3 here
        assert!(wrappers.contains(&group), "the shell is the wrapper: {wrappers:?}");
        assert_eq!(peak, Some(Peak { threads: 1, processes: 1 }), "only python3 counts");
    }
}
