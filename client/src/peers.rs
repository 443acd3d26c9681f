//! nginx and wrk, when both are installed: the peers to compare against.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{Pid, Signal};

use crate::child::{die_with_parent, Watchdog};
use crate::suite::CHILDREN;

/// Whether `program` is on the PATH.
pub fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The settings nginx's own documentation and its users give a server of
/// small static files (<https://nginx.org/en/docs/http/ngx_http_core_module.html>):
/// `open_file_cache` keeps open fds and `stat` results, so a hit costs no
/// `open`/`fstat`/`close` (worth 1.17-1.21x to nginx on a 1 KiB file here);
/// `sendfile` keeps bodies out of user space; `tcp_nopush` sends the head
/// with the body's first bytes; no access log. The listener keeps nginx's
/// shipped default (no `deferred`).
pub const TUNING: &str = "access_log off; sendfile on; tcp_nopush on; open_file_cache max=1000 inactive=60s; \
                          open_file_cache_valid 60s; open_file_cache_errors on;";

/// An nginx serving `root` on loopback, tuned as its users tune it for
/// small static files ([`TUNING`]), with its own temporary config;
/// stopped on drop.
pub struct Nginx {
    child: Child,
    /// Kills nginx's process group if this process dies before Drop.
    watchdog: Option<Watchdog>,
    _dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx with `workers` worker processes.
    pub fn start(root: &Path, workers: usize) -> Result<Nginx> {
        let dir = tempfile::tempdir()?;
        // nginx cannot report the port it picked, so ask the kernel for
        // a free one and hand it over (a short race, never a guess).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let d = dir.path().display();
        let config = format!(
            "daemon off; master_process on; worker_processes {workers}; worker_rlimit_nofile 30000;\n\
             user root; pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\n\
             events {{ worker_connections 20000; }}\n\
             http {{ {TUNING} keepalive_requests 100000000;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
               uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port} reuseport backlog=4096; root {}; }} }}\n",
            root.display()
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config)?;
        // The master dies with us; its workers do not follow a killed
        // master, so they run in its process group, which the watchdog
        // kills if we die before Drop stops it.
        let child = die_with_parent(&mut Command::new("nginx"))
            .process_group(0)
            .args(["-c", &conf.display().to_string(), "-p", &d.to_string(), "-e", &format!("{d}/error.log")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start nginx")?;
        CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(child.id());
        let watchdog = Watchdog::kill_group(child.id());
        let mut nginx = Nginx { child, watchdog: None, _dir: dir, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        nginx.watchdog = Some(watchdog.context("cannot start the watchdog of nginx's process group (sh)")?);
        for _ in 0..200 {
            if std::net::TcpStream::connect(nginx.addr).is_ok() {
                return Ok(nginx);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("nginx did not start listening on {}", nginx.addr)
    }

    /// The master's pid (its workers are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    /// Stops nginx the way nginx is stopped: `SIGTERM` to the master, which
    /// stops its workers and exits. Workers do not follow a *killed*
    /// master (they are adopted by init and keep serving), so `SIGKILL` is
    /// the last resort, and then it goes to the whole process group.
    fn drop(&mut self) {
        let group = Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(group, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
        let _ = self.child.wait();
        // Only now: the group is gone, so the watchdog has nothing to do.
        drop(self.watchdog.take());
    }
}

/// Runs wrk (2 threads) and returns its Requests/sec.
pub fn wrk(url: &str, conns: usize, seconds: u64) -> Result<f64> {
    wrk_with(url, conns, seconds, false, 2)
}

/// Runs wrk with `threads` threads, with `Connection: close` on every
/// request if `close`.
pub fn wrk_with(url: &str, conns: usize, seconds: u64, close: bool, threads: usize) -> Result<f64> {
    let mut command = Command::new("wrk");
    die_with_parent(&mut command);
    // A 64 MiB response can take longer than wrk's default 2 s timeout.
    let timeout = format!("{}s", seconds.max(10));
    command.args([
        &format!("-t{threads}"),
        &format!("-c{}", conns.max(threads)),
        &format!("-d{seconds}s"),
        "--timeout",
        &timeout,
        url,
    ]);
    if close {
        command.args(["-H", "Connection: close"]);
    }
    let out = command.output().context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors against {url}:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:").and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))
}
