//! The server under test: started from the student's command template in
//! its own process group, watched, signalled, and stopped with everything
//! it started; or, with `--addr`, a server someone else runs.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{Pid, Signal};

use crate::child::Watchdog;

/// Most bytes of the server's stderr kept: a server that floods its output
/// cannot exhaust the grader's memory.
const MAX_LOG_BYTES: usize = 256 * 1024;

/// Ports tried before giving up when another program keeps taking the port
/// chosen for the server (in the moment between the grader choosing it and
/// the server binding it).
const PORT_ATTEMPTS: usize = 3;

/// How long a server that accepts connections but never prints its
/// `listening on` line must stay up before the grader believes that it is
/// the one accepting them.
const UNANNOUNCED_GRACE: Duration = Duration::from_millis(500);

/// The server command could not be run at all (no such program, not
/// executable): grading cannot run, which is not the submission's score.
#[derive(Debug)]
pub struct CannotSpawn {
    /// The program named by the command.
    pub program: String,
    /// Why `exec` failed.
    pub err: std::io::Error,
    /// The user it was to run as, if not the grader.
    pub user: Option<User>,
}

impl std::fmt::Display for CannotSpawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(user) if self.err.kind() == std::io::ErrorKind::PermissionDenied => write!(
                f,
                "cannot start {:?} as {}: {} (the grader runs as root, so the server runs as {}: make the program \
                 and every folder above it readable to that user, e.g. chmod o+rx, or choose another with --run-as)",
                self.program, user.name, self.err, user.name
            ),
            _ => write!(f, "cannot start {:?}: {} (is the path right? is it executable?)", self.program, self.err),
        }
    }
}

impl std::error::Error for CannotSpawn {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.err)
    }
}

/// What a test needs the server to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setup {
    /// `--service time`.
    Time,
    /// `--service file` with a simulated storage delay.
    Files {
        /// `--read-delay-ms`.
        delay_ms: u64,
    },
}

impl std::fmt::Display for Setup {
    /// As a report says it: the flags the server was started with.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setup::Time => write!(f, "--service time"),
            Setup::Files { delay_ms } => write!(f, "--service file --read-delay-ms {delay_ms}"),
        }
    }
}

/// A running server under test.
#[derive(Debug)]
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How it was started.
    pub setup: Setup,
    process: Option<Process>,
    /// The user it runs as, when not the grader's own ([`Launch::user`]).
    user: Option<User>,
}

/// An unprivileged user to run student code as: a grader running as root
/// never runs a submission as root (it could then read every file, which
/// also makes `files.unreadable` untestable, and do anything else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its name, for messages.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl User {
    /// Looks `name` up in the user database (getpwnam_r(3)); a number is
    /// taken as a uid whose gid is the same number.
    pub fn lookup(name: &str) -> Result<User> {
        if let Ok(uid) = name.parse::<u32>() {
            anyhow::ensure!(uid != 0, "student code must not run as root (uid 0): choose an unprivileged user");
            return Ok(User { name: name.to_string(), uid, gid: uid });
        }
        let c_name = std::ffi::CString::new(name).context("a user name has no NUL byte")?;
        let mut entry: libc::passwd = unsafe_zeroed_passwd();
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is a
        // NUL-terminated string, `entry` and `found` are ours, and the
        // buffer's length is passed with it; the strings the entry points
        // to live in `buffer`, which outlives every use of them below.
        let status =
            unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
        anyhow::ensure!(
            status == 0 && !found.is_null(),
            "there is no user {name:?} on this machine to run student code as; create one or choose another \
             with --run-as (or `run_as` in the config)"
        );
        anyhow::ensure!(entry.pw_uid != 0, "{name:?} is root: student code must run as an unprivileged user");
        Ok(User { name: name.to_string(), uid: entry.pw_uid, gid: entry.pw_gid })
    }
}

/// A `passwd` of zeroes, for getpwnam_r to fill.
fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: `passwd` is a plain C struct of integers and pointers, for
    // which all zeroes (null pointers) is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Lets `user` reach what `template` names (a program `./server`, a script
/// `python3 /home/me/server.py`) and the folder it runs in: every folder
/// above gets `o+x` (pass through, list nothing), a file `o+r` (and `o+x`
/// when it is executable). A root grader then never needs to run student
/// code as root because the instructor's folder is private. Returns what
/// it changed, for a note.
pub fn open_command_to(template: &[String], workdir: Option<&Path>, user: &User) -> Result<Vec<std::path::PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let base = match workdir {
        Some(dir) => dir.to_path_buf(),
        None => std::env::current_dir().context("cannot find the current folder")?,
    };
    let mut wanted: Vec<std::path::PathBuf> = vec![base.clone()];
    for word in template.iter().filter(|word| word.contains('/') && !word.contains('{')) {
        let path = base.join(word);
        if path.exists() {
            wanted.push(path);
        }
    }
    let mut changed = Vec::new();
    for path in wanted {
        let path = std::fs::canonicalize(&path).with_context(|| format!("cannot resolve {}", path.display()))?;
        let metadata = std::fs::metadata(&path)?;
        let mode = metadata.permissions().mode();
        let own = if metadata.is_dir() { 0o005 } else { 0o004 | ((mode & 0o100) >> 6) };
        for (folder, bits) in std::iter::once((path.as_path(), own)).chain(path.ancestors().skip(1).map(|a| (a, 0o001)))
        {
            let mode = std::fs::metadata(folder)?.permissions().mode();
            if mode & bits != bits {
                std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode | bits))
                    .with_context(|| format!("cannot open {} to {}", folder.display(), user.name))?;
                changed.push(folder.to_path_buf());
            }
        }
    }
    Ok(changed)
}

/// How to start a server beyond its command: as which user, in which folder.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Run it as this user (the grader runs as root); `None`: as the grader.
    pub user: Option<User>,
    /// Its working directory; `None`: the grader's.
    pub workdir: Option<std::path::PathBuf>,
}

/// A server the grader started.
#[derive(Debug)]
struct Process {
    child: Child,
    group: Pid,
    output: Arc<Mutex<Output>>,
    /// Kills the group (a forking server's children too) if the grader
    /// dies first; a safety net only, so none if `sh` cannot start.
    _watchdog: Option<Watchdog>,
}

/// Fills the placeholders of the command template.
fn expand(template: &[String], port: u16, root: &Path, setup: Setup) -> Vec<String> {
    let (service, delay) = match setup {
        Setup::Time => ("time", 0),
        Setup::Files { delay_ms } => ("file", delay_ms),
    };
    let mut args: Vec<String> = template
        .iter()
        .map(|arg| {
            arg.replace("{port}", &port.to_string())
                .replace("{root}", &root.display().to_string())
                .replace("{delay}", &delay.to_string())
                .replace("{service}", service)
        })
        .collect();
    // The service is a flag of its own unless the template places it.
    if !template.iter().any(|arg| arg.contains("{service}")) {
        args.extend(["--service".to_string(), service.to_string()]);
    }
    args
}

/// What the server printed: the last [`MAX_LOG_BYTES`], and how many
/// `cache cleared` lines it wrote in all (a flood of output cannot hide them).
#[derive(Debug, Default)]
struct Output {
    tail: String,
    cache_clears: usize,
    /// The address of its first `listening on <ip>:<port>` line.
    announced: Option<SocketAddr>,
    /// Streams read to their end (stdout, stderr): 2 when all is read.
    closed: usize,
}

/// The address in a `listening on <ip>:<port>` line; an unspecified IP
/// (`0.0.0.0`) means loopback will do.
fn announced_addr(line: &str) -> Option<SocketAddr> {
    let mut addr: SocketAddr = line.trim().strip_prefix("listening on ")?.trim().parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip([127, 0, 0, 1].into());
    }
    Some(addr)
}

/// Drains a stream of the server's into `output`, so the server never
/// blocks on a full pipe, keeping only the tail.
fn collect(stream: impl Read + Send + 'static, output: Arc<Mutex<Output>>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        // Lines are cut at 64 KiB: a server writing without newlines still
        // gets read.
        while matches!(reader.by_ref().take(64 * 1024).read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            let mut output = output.lock().unwrap_or_else(|p| p.into_inner());
            output.cache_clears += usize::from(says_cache_cleared(&text));
            if output.announced.is_none() {
                output.announced = announced_addr(&text);
            }
            output.tail.push_str(&text);
            if output.tail.len() > MAX_LOG_BYTES {
                let cut = output.tail.len() - MAX_LOG_BYTES / 2;
                let cut = (cut..output.tail.len()).find(|&i| output.tail.is_char_boundary(i)).unwrap_or(0);
                output.tail.drain(..cut);
            }
            line.clear();
        }
        output.lock().unwrap_or_else(|p| p.into_inner()).closed += 1;
    });
}

/// Whether a line of output is the server's `cache cleared` line: the
/// words anywhere (a flood of other output may be written into the middle
/// of the line), but not quoted in backticks, as a handout's `todo!()`
/// message does ("...and log `cache cleared: ...`").
fn says_cache_cleared(line: &str) -> bool {
    line.match_indices("cache cleared").any(|(at, _)| !line[..at].ends_with('`'))
}

impl Target {
    /// Starts the server from `template` on a port the kernel picks, and
    /// waits (up to `patience`) until it is ready: it prints its
    /// `listening on` line, or (a server that never prints one) it accepts
    /// connections and stays up. If the server dies and its port still
    /// accepts, another program took the port first: a new port is tried.
    pub fn start(template: &[String], root: &Path, setup: Setup, patience: Duration) -> Result<Target> {
        Target::launch(template, root, setup, patience, &Launch::default())
    }

    /// [`Target::start`], as `launch` says (a user, a working directory).
    pub fn launch(
        template: &[String],
        root: &Path,
        setup: Setup,
        patience: Duration,
        launch: &Launch,
    ) -> Result<Target> {
        for _ in 0..PORT_ATTEMPTS {
            // The kernel names a free port; the server binds it a moment later.
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .map_err(|err| super::machine::NotGradable(format!("no free port on 127.0.0.1: {err}")))?
                .port();
            if let Some(target) = Target::start_on(port, template, root, setup, patience, launch)? {
                return Ok(target);
            }
        }
        bail!("{PORT_ATTEMPTS} times another program took the port chosen for the server first; try again")
    }

    /// One attempt on `port`: `None` if the server died and another
    /// program still accepts on that port.
    fn start_on(
        port: u16,
        template: &[String],
        root: &Path,
        setup: Setup,
        patience: Duration,
        launch: &Launch,
    ) -> Result<Option<Target>> {
        let args = expand(template, port, root, setup);
        let (program, rest) = args.split_first().context("the server command is empty")?;
        let mut command = Command::new(program);
        if let Some(user) = &launch.user {
            // std drops the supplementary groups too (setgroups) when root
            // changes its uid; the death signal is asked for after the
            // change (pre_exec runs last), so the kernel keeps it.
            command.uid(user.uid).gid(user.gid);
        }
        if let Some(dir) = &launch.workdir {
            command.current_dir(dir);
        }
        let mut child = crate::child::die_with_parent(&mut command)
            .args(rest)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| CannotSpawn { program: program.clone(), err, user: launch.user.clone() })?;
        let group = Pid::from_child(&child);
        let output = Arc::new(Mutex::new(Output::default()));
        collect(child.stdout.take().expect("piped"), Arc::clone(&output));
        collect(child.stderr.take().expect("piped"), Arc::clone(&output));
        let watchdog = Watchdog::kill_group(child.id()).ok();
        let mut process = Process { child, group, output, _watchdog: watchdog };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + patience;
        // When a connection to the port first succeeded: the server, or a
        // program that took the port before the server could bind it.
        let mut accepted_since: Option<Instant> = None;
        loop {
            // A server that announced itself and then died is graded as it
            // is: the tests report its failures, with its log.
            if let Some(announced) = process.announced() {
                return Ok(Some(Target { addr: announced, setup, process: Some(process), user: launch.user.clone() }));
            }
            if let Some(status) = process.child.try_wait()? {
                // Its own listener closed with it (and with its group): if
                // the port still accepts, another program holds it.
                process.stop();
                // Its last words may still be in the pipes: read them before quoting them.
                process.drained(Duration::from_secs(1));
                if accepted_since.is_some() && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Ok(None);
                }
                let log = process.log_text();
                bail!("the server exited ({}) before it was ready; it said:\n{log}", describe_exit(status));
            }
            // That probe connection is the server's first client: for the
            // time service it is answered and closed; no harm.
            if accepted_since.is_none() && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                accepted_since = Some(Instant::now());
            }
            if accepted_since.is_some_and(|since| since.elapsed() >= UNANNOUNCED_GRACE) {
                return Ok(Some(Target { addr, setup, process: Some(process), user: launch.user.clone() }));
            }
            if Instant::now() > deadline {
                let log = process.log_text();
                process.stop();
                bail!(
                    "the server did not accept connections on {addr} within {patience:?} \
                     (does it take --port {port}?); it said:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A server someone else started (`--addr`): no signals, no pid.
    pub fn remote(addr: SocketAddr, setup: Setup) -> Target {
        Target { addr, setup, process: None, user: None }
    }

    /// Whether the server reads files with the grader's own rights (so a
    /// file the grader can read, it can read too): not when it runs as
    /// another user.
    pub fn reads_as_grader(&self) -> bool {
        self.user.is_none()
    }

    /// The user it runs as, when not the grader's.
    pub fn user(&self) -> Option<&User> {
        self.user.as_ref()
    }

    /// Whether the grader started it (and so can signal it and read its fds).
    pub fn is_local(&self) -> bool {
        self.process.is_some()
    }

    /// Its pid, if the grader started it.
    pub fn pid(&self) -> Option<i32> {
        self.process.as_ref().map(|p| p.group.as_raw_nonzero().get())
    }

    /// Sends `signal` to the server process (not its group: a forking
    /// server forwards signals to its children itself).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let process = self.process.as_ref().context("the server was not started by the grader")?;
        rustix::process::kill_process(process.group, signal).context("cannot signal the server")
    }

    /// The end of what the server wrote (stdout and stderr).
    pub fn log(&self) -> String {
        self.process.as_ref().map(Process::log_text).unwrap_or_default()
    }

    /// [`Target::log`], and if the server has exited, all it said before
    /// (its pipes read to their end, for at most half a second).
    pub fn final_log(&mut self) -> String {
        if self.is_running() {
            return self.log();
        }
        self.process
            .as_ref()
            .map(|p| {
                p.drained(Duration::from_millis(500));
                p.log_text()
            })
            .unwrap_or_default()
    }

    /// How many `cache cleared` lines the server has written.
    pub fn cache_clears(&self) -> usize {
        self.process.as_ref().map_or(0, |p| p.output.lock().unwrap_or_else(|e| e.into_inner()).cache_clears)
    }

    /// Whether it is still running (a remote server is assumed to be).
    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Some(process) => matches!(process.child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// How it ended, if the grader started it and it has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.process.as_mut().and_then(|process| process.child.try_wait().ok().flatten())
    }

    /// Waits up to `patience` for the server to exit; its exit code.
    pub fn wait_exit(&mut self, patience: Duration) -> Option<Option<i32>> {
        let process = self.process.as_mut()?;
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = process.child.try_wait() {
                return Some(status.code());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Process {
    fn log_text(&self) -> String {
        self.output.lock().unwrap_or_else(|p| p.into_inner()).tail.clone()
    }

    /// Waits (up to `patience`) until both of its streams are read to
    /// their end: after it exited, what it wrote last is then in the log.
    fn drained(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline && self.output.lock().unwrap_or_else(|p| p.into_inner()).closed < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Where its `listening on` line says it listens, once printed.
    fn announced(&self) -> Option<SocketAddr> {
        self.output.lock().unwrap_or_else(|p| p.into_inner()).announced
    }

    /// SIGTERM to the whole group, a moment's grace, then SIGKILL: nothing
    /// the server started outlives the grader.
    fn stop(&mut self) {
        let _ = rustix::process::kill_process_group(self.group, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = rustix::process::kill_process_group(self.group, Signal::KILL);
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(process) = &mut self.process {
            process.stop();
        }
    }
}

/// How a process ended, in the words of a report: `exit status 3`, or the
/// signal that killed it by name (`SIGABRT`, `SIGSEGV`).
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => signal_name(signal).map_or(format!("signal {signal}"), String::from),
        (None, None) => status.to_string(),
    }
}

/// The name of a signal number (signal(7), the numbers shared by Linux's architectures).
fn signal_name(signal: i32) -> Option<&'static str> {
    let names = [
        (1, "SIGHUP"),
        (2, "SIGINT"),
        (3, "SIGQUIT"),
        (4, "SIGILL"),
        (5, "SIGTRAP"),
        (6, "SIGABRT"),
        (8, "SIGFPE"),
        (9, "SIGKILL"),
        (11, "SIGSEGV"),
        (13, "SIGPIPE"),
        (14, "SIGALRM"),
        (15, "SIGTERM"),
    ];
    let from_rustix = [(Signal::BUS, "SIGBUS"), (Signal::USR1, "SIGUSR1"), (Signal::USR2, "SIGUSR2")];
    names
        .iter()
        .find(|(n, _)| *n == signal)
        .map(|(_, name)| *name)
        .or_else(|| from_rustix.iter().find(|(s, _)| s.as_raw() == signal).map(|(_, name)| *name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_death_is_named_by_its_signal() {
        let aborted = shell("kill -ABRT $$");
        let mut target =
            Target::start_on(1, &aborted, Path::new("/"), Setup::Time, Duration::from_secs(5), &Launch::default());
        // It dies before it is ready: the error quotes the signal.
        let message = format!("{:#}", target.as_mut().unwrap_err());
        assert!(message.contains("SIGABRT") || message.contains("signal: 6"), "{message}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe_exit(std::process::ExitStatus::from_raw(6)), "SIGABRT");
        assert_eq!(describe_exit(std::process::ExitStatus::from_raw(3 << 8)), "exit status 3");
    }

    #[test]
    fn placeholders_are_filled_and_the_service_is_added_when_not_placed() {
        let template: Vec<String> =
            ["./srv", "--port", "{port}", "--root", "{root}", "--read-delay-ms", "{delay}"].map(String::from).into();
        let args = expand(&template, 4242, Path::new("/tmp/r"), Setup::Files { delay_ms: 300 });
        assert_eq!(args.join(" "), "./srv --port 4242 --root /tmp/r --read-delay-ms 300 --service file");
        let placed: Vec<String> = ["./srv", "-s", "{service}", "-p", "{port}"].map(String::from).into();
        assert_eq!(expand(&placed, 1, Path::new("/"), Setup::Time).join(" "), "./srv -s time -p 1");
    }

    #[test]
    fn a_cache_cleared_line_is_told_from_a_message_that_quotes_it() {
        assert!(says_cache_cleared("cache cleared: 3 files, 10 bytes\n"));
        assert!(says_cache_cleared("flood flood cache cleared: 1 files, 3 bytes\n"));
        assert!(!says_cache_cleared("not yet implemented: stage 5: clear the cache and log `cache cleared: <files>`"));
    }

    #[test]
    fn the_listening_line_names_the_address() {
        assert_eq!(announced_addr("listening on 127.0.0.1:4242\n"), Some("127.0.0.1:4242".parse().unwrap()));
        assert_eq!(announced_addr("listening on 0.0.0.0:80"), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(announced_addr("listening on [::1]:7"), Some("[::1]:7".parse().unwrap()));
        assert_eq!(announced_addr("cache cleared"), None);
        assert_eq!(announced_addr("listening on port 4242"), None);
    }

    fn shell(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into(), "server".into()]
    }

    #[test]
    fn a_server_that_loses_its_port_to_another_program_is_not_graded_as_that_program() {
        // Another program holds the port before the server can bind it; the
        // server (slow to start) then fails, as a real one would.
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = squatter.local_addr().unwrap().port();
        let failing = shell("sleep 0.2; echo 'cannot bind: address in use' >&2; exit 1");
        let attempt =
            Target::start_on(port, &failing, Path::new("/"), Setup::Time, Duration::from_secs(5), &Launch::default())
                .unwrap();
        assert!(attempt.is_none(), "graded the program that took the port: {attempt:?}");
    }

    #[test]
    fn a_server_that_binds_then_dies_is_reported_with_its_log() {
        // The port accepts for a moment (the kernel completes handshakes
        // on a listener nobody accepts from), then its listener goes away
        // and the server dies: a handout whose `run` panics.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            drop(listener);
        });
        let dies = shell("sleep 0.3; echo 'not yet implemented: stage 1' >&2; exit 101");
        let err =
            Target::start_on(port, &dies, Path::new("/"), Setup::Time, Duration::from_secs(5), &Launch::default())
                .unwrap_err();
        closer.join().unwrap();
        let message = format!("{err:#}");
        assert!(message.contains("exited") && message.contains("not yet implemented"), "{message}");
    }

    #[test]
    fn a_server_is_found_where_its_listening_line_says() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let announcing = shell(&format!("echo 'listening on {at}'; exec sleep 5"));
        let target =
            Target::start_on(1, &announcing, Path::new("/"), Setup::Time, Duration::from_secs(5), &Launch::default())
                .unwrap()
                .expect("started");
        assert_eq!(target.addr, at);
    }
}
