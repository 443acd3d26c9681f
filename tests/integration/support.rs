//! Starting the real `server` binary and talking to it over loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex};

use std::time::{Duration, Instant};

/// How long any single network step may take before a test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Every model, for tests that must hold for all of them (the contract's list, which the server's `--model` takes).
pub static MODELS: LazyLock<Vec<&'static str>> = LazyLock::new(|| contract::MODELS.to_vec());

/// Every model that serves clients concurrently: the contract's models but
/// those it lists as one at a time.
pub static CONCURRENT_MODELS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| contract::MODELS.into_iter().filter(|m| !contract::ONE_AT_A_TIME.contains(m)).collect());

/// The models whose file reads do not block the loop (the contract's list).
pub static ASYNC_MODELS: LazyLock<Vec<&'static str>> = LazyLock::new(|| contract::ASYNCHRONOUS_READS.to_vec());

/// The fixtures directory shipped with the repository.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Makes the child `command` starts die (`SIGKILL`) when the thread that
/// starts it dies (`PR_SET_PDEATHSIG`, prctl(2)): a test run that aborts or
/// is killed leaves no server behind. The client crate's `child` module,
/// in small: tests start children from the test's own thread, which
/// outlives them (each is dropped before the test returns).
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = rustix::process::getpid();
        // SAFETY: runs in the forked child before exec: two raw syscalls,
        // no allocation (an `Errno` converts without one).
        unsafe {
            command.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
                if rustix::process::getppid() != Some(parent) {
                    return Err(rustix::io::Errno::SRCH.into()); // the parent is already gone
                }
                Ok(())
            });
        }
    }
    command
}

/// A running server; killed (and reaped) when dropped, so a failing
/// assertion never leaves a server behind.
pub struct Server {
    child: Child,
    /// The address from its `listening on` line.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `server --port 0 ARGS...` and waits for `listening on`.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, |_| {})
    }

    /// Like [`Server::start`], with a hook to adjust the command (e.g. rlimits).
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
        Server::start_program(Path::new(env!("CARGO_BIN_EXE_server")), args, adjust)
    }

    /// Like [`Server::start_with`], for another program that speaks the contract (a lab).
    pub fn start_program(program: &Path, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
        report_progress();
        let mut command = Command::new(program);
        command.args(["--port", "0"]).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = die_with_parent(&mut command).spawn().expect("spawn server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let line = rx.recv_timeout(IO_TIMEOUT).unwrap_or_default();
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!("server {args:?} did not announce itself; stdout {line:?}, stderr {:?}", stderr.lock().unwrap());
        };
        let addr = addr.parse().expect("listening on <ip>:<port>");
        Server { child, addr, stderr }
    }

    /// The server's process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a real signal to the server process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("a child has a positive pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr holds `count` lines containing `needle`.
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.log().matches(needle).count() < count {
            assert!(Instant::now() < deadline, "no {count}x {needle:?} in log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the server to exit and returns its exit code.
    pub fn wait_exit(mut self) -> Option<i32> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "server did not exit; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A new line-protocol connection.
    pub fn connect(&self) -> LineClient {
        LineClient::connect(self.addr)
    }

    /// One file over a fresh connection.
    pub fn get(&self, path: &str) -> Reply {
        self.connect().get(path.as_bytes())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed line-protocol response.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `OK <size>` and the body.
    Ok(Vec<u8>),
    /// `ERR <code> <reason>`: the code.
    Err(u16),
    /// The server closed the connection without a response.
    Closed,
}

impl Reply {
    /// The body of an `OK`, or a panic naming what came instead.
    pub fn body(self) -> Vec<u8> {
        match self {
            Reply::Ok(body) => body,
            other => panic!("expected OK, got {other:?}"),
        }
    }
}

/// One line-protocol connection.
pub struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    /// Connects with I/O timeouts so a broken server fails the test, not hangs it.
    pub fn connect(addr: SocketAddr) -> LineClient {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        LineClient { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    /// Reads one response.
    pub fn read_reply(&mut self) -> Reply {
        let mut head = Vec::new();
        if let Err(err) = self.reader.read_until(b'\n', &mut head) {
            panic!(
                "reading a response head from {}: {err}",
                self.writer.peer_addr().map_or("?".into(), |a| a.to_string())
            );
        }
        if head.is_empty() {
            return Reply::Closed;
        }
        let head = String::from_utf8(head).expect("utf-8 head");
        let head = head.trim_end();
        if let Some(size) = head.strip_prefix("OK ") {
            let mut body = vec![0; size.parse().expect("size")];
            self.reader.read_exact(&mut body).expect("read body");
            Reply::Ok(body)
        } else if let Some(rest) = head.strip_prefix("ERR ") {
            Reply::Err(rest[..3].parse().expect("code"))
        } else {
            panic!("unexpected head {head:?}")
        }
    }

    /// Changes how long a read may wait (see [`LineClient::try_read_reply`]).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.writer.set_read_timeout(Some(timeout)).unwrap();
    }

    /// Whether any response bytes have arrived (without waiting for them).
    pub fn has_data(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        self.writer.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let arrived = self.writer.peek(&mut byte).is_ok();
        self.writer.set_nonblocking(false).unwrap();
        arrived
    }

    /// Reads one response, or `None` if none arrives within the read timeout.
    pub fn try_read_reply(&mut self) -> Option<Reply> {
        match self.reader.fill_buf() {
            Ok(_) => Some(self.read_reply()),
            Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
            Err(err) => panic!("read: {err}"),
        }
    }

    /// Requests one path and reads the response.
    pub fn get(&mut self, path: &[u8]) -> Reply {
        let mut line = path.to_vec();
        line.push(b'\n');
        self.send(&line);
        self.read_reply()
    }

    /// Reads everything until the server closes.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        self.reader.read_to_end(&mut all).expect("read to end");
        all
    }

    /// Whether the server closed the connection (EOF now).
    pub fn is_closed_by_server(&mut self) -> bool {
        self.what_follows().is_ok_and(|n| n == 0)
    }

    /// Reads one byte, for a message: `Ok(0)` at end of stream, `Ok(1)`
    /// if data followed, or the error (a timeout, a reset).
    pub fn what_follows(&mut self) -> std::io::Result<usize> {
        let mut byte = [0u8; 1];
        self.reader.read(&mut byte)
    }
}

/// A tree with hostile entries next to ordinary files: a symlink out of the
/// root, a FIFO, a directory, a hidden file, an inner symlink. The second
/// directory is outside the root and holds `secret`.
pub fn hostile_tree() -> (tempfile::TempDir, tempfile::TempDir) {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"TOP SECRET").unwrap();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::write(r.join("test.txt"), std::fs::read(fixtures().join("test.txt")).unwrap()).unwrap();
    std::fs::create_dir_all(r.join("a/b")).unwrap();
    std::fs::write(r.join("a/b/c.txt"), b"deep").unwrap();
    std::fs::write(r.join(".hidden"), b"hidden").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), r.join("out-link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), r.join("out-dir")).unwrap();
    std::os::unix::fs::symlink("a/b/c.txt", r.join("in-link")).unwrap();
    // mkfifo(1) rather than the call: rustix has no mkfifoat on macOS.
    assert!(Command::new("mkfifo").arg(r.join("fifo")).status().unwrap().success(), "mkfifo");
    (root, outside)
}

/// The `client` binary, built (once per test run) next to `server`.
///
/// Integration tests only get the binaries of their own package, and
/// `client` lives in the `client` package; so the first test that needs it
/// asks cargo to build it (a no-op when it is up to date). This also means
/// the tests never run a stale client left over from an older build.
pub fn client_bin() -> PathBuf {
    report_progress();
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let server = Path::new(env!("CARGO_BIN_EXE_server"));
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
            let mut build = Command::new(cargo);
            build.args(["build", "--quiet", "-p", "client", "--bins"]).current_dir(env!("CARGO_MANIFEST_DIR"));
            if server.parent().and_then(Path::file_name) == Some("release".as_ref()) {
                build.arg("--release");
            }
            let status = build.status().expect("cannot run cargo to build the client");
            assert!(status.success(), "cargo build -p client failed");
            let path = server.with_file_name("client");
            assert!(path.exists(), "{} is missing after building it", path.display());
            path
        })
        .clone()
}

/// An nginx for side-by-side tests, with its own temporary config and
/// paths, one process (`master_process off`), on a port from the kernel;
/// killed on drop. `None` (and a note) when nginx is not installed.
pub struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx with `http_body` inside its `http { }` block;
    /// `{listen}` in it stands for the address to listen on.
    pub fn start(http_body: &str) -> Option<Nginx> {
        if Command::new("nginx").arg("-v").stderr(Stdio::null()).status().is_err() {
            eprintln!("skipped: nginx is not installed (apt-get install nginx-light)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // nginx cannot report a port it picked: ask the kernel for a free one.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let body = http_body.replace("{listen}", &format!("127.0.0.1:{port}"));
        let config = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;\n\
               uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n{body} }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
        let child = die_with_parent(&mut Command::new("nginx"))
            .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string(), "-e", &format!("{d}/error.log")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let nginx = Nginx { child, _dir: dir, addr };
        let deadline = Instant::now() + IO_TIMEOUT;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // One process (master_process off): nothing else to stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open file descriptors of a process, from /proc.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

/// Waits (up to [`IO_TIMEOUT`]) until `server` holds no more fds than
/// `baseline`: every connection closed, every file with it.
pub fn assert_fds_come_back(server: &Server, baseline: usize, what: &str) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while open_fds(server.pid()) > baseline {
        assert!(Instant::now() < deadline, "{what}: {} fds open, {baseline} before", open_fds(server.pid()));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to [`IO_TIMEOUT`]) until no socket on `server`'s port is in
/// CLOSE_WAIT: each client that hung up has been closed by the server too.
/// Catches leaked sockets that hold no fd (io_uring's direct descriptors).
#[cfg(target_os = "linux")]
pub fn assert_no_socket_left_open(server: &Server, what: &str) {
    let close_wait = || {
        let port = format!(":{:04X} ", server.addr.port());
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(table).ok())
            .flat_map(|table| table.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address is field 1, st is field 3; 08 is CLOSE_WAIT (include/net/tcp_states.h).
                fields.len() > 3 && format!("{} ", fields[1]).ends_with(&port) && fields[3] == "08"
            })
            .count()
    };
    let deadline = Instant::now() + IO_TIMEOUT;
    while close_wait() > 0 {
        assert!(Instant::now() < deadline, "{what}: {} sockets the clients closed are still open", close_wait());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A hundred clients connected at once, each asking for `data/64k.bin`
/// then `test.txt` from the fixtures: every answer is whole and right.
pub fn assert_a_hundred_clients_are_served(server: &Server, what: &str) {
    let expected = std::fs::read(fixtures().join("data/64k.bin")).unwrap();
    // Connect all first, so the server really holds 100 at once.
    let mut conns: Vec<_> = (0..100).map(|_| server.connect()).collect();
    for conn in &mut conns {
        conn.send(b"data/64k.bin\ntest.txt\n");
    }
    std::thread::scope(|scope| {
        for mut conn in conns {
            let expected = &expected;
            scope.spawn(move || {
                assert_eq!(&conn.read_reply().body(), expected, "{what}");
                assert!(conn.read_reply().body().starts_with(b"Hello"), "{what}");
            });
        }
    });
}

/// How often the suite says what it is running.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Starts (once) a thread that tells a person watching `cargo test` which
/// parts of the suite are running, every [`PROGRESS_EVERY`]: libtest prints
/// a test's name only when it ends, and the slow ones (grading, handouts,
/// the docs' commands) run for minutes, so without this the suite is silent
/// for minutes at a time. Called by [`Server::start`] and [`client_bin`],
/// which nearly every test calls first.
///
/// libtest names each test's thread after the test (`grader::grades_...`),
/// and a thread a test spawns inherits that name in the kernel, so the
/// names of this process's threads (`/proc/self/task/*/comm`, 15 bytes: the
/// module's name, which is what this prints) are what is running. Written to
/// stderr with `write_all`, which libtest's capture (of `eprintln!`) leaves
/// alone. Linux only (elsewhere there is no `/proc` to read: nothing).
fn report_progress() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if !cfg!(target_os = "linux") {
        return;
    }
    STARTED.call_once(|| {
        let started = Instant::now();
        let reporter = std::thread::Builder::new().name("progress".into()).spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            loop {
                std::thread::sleep(PROGRESS_EVERY);
                let running = running_modules();
                let finished: Vec<&String> = seen.iter().filter(|module| !running.contains(*module)).collect();
                let mut line = format!(
                    "[integration tests, {}s] running: {}",
                    started.elapsed().as_secs(),
                    running.iter().cloned().collect::<Vec<_>>().join(", ")
                );
                if !finished.is_empty() {
                    let names: Vec<&str> = finished.iter().map(|m| m.as_str()).collect();
                    line.push_str(&format!("; done: {}", names.join(", ")));
                }
                line.push('\n');
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
                seen.extend(running);
            }
        });
        // No reporter is no reason to fail a test.
        drop(reporter);
    });
}

/// The test modules whose tests have threads running now, from the kernel's
/// thread names (a module name longer than 15 bytes is cut there).
fn running_modules() -> std::collections::BTreeSet<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Default::default() };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .filter_map(|comm| {
            // Only test threads are named `module::test` (`tokio_runtimes:`, cut).
            let comm = comm.trim_end();
            let module = comm.split_once("::").map(|(module, _)| module).or_else(|| comm.strip_suffix(':'))?;
            Some(module.to_string())
        })
        .collect()
}
