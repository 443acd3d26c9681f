//! The listening socket, set up the same way for every model.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};

use std::net::TcpStream;
use std::os::fd::OwnedFd;

use rustix::net::{ipproto, sockopt, AddressFamily, SocketType};

use crate::error::ServerError;

/// Pending connections the kernel queues before `accept` (capped by
/// `net.core.somaxconn`): deep enough that a burst of connects is not dropped.
pub const LISTEN_BACKLOG: i32 = 4096;

/// How a listening socket is set up, beyond its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOptions {
    /// Let several loops each own a listener on the same port (the kernel
    /// spreads connections among them).
    pub reuse_port: bool,
    /// Hand over a connection only once its first bytes are in
    /// (`--defer-accept`, for services where the client speaks first; off
    /// by default, see [`Config::defer_accept`](crate::config::Config::defer_accept)).
    pub wait_for_request: bool,
}

/// Binds and listens on `addr`. `SO_REUSEADDR` lets a restarted server bind
/// while old connections linger in `TIME_WAIT`.
pub fn listen(addr: SocketAddr, options: ListenOptions) -> Result<TcpListener, ServerError> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let bound = || -> rustix::io::Result<TcpListener> {
        let socket = tcp_socket(family)?;
        sockopt::set_socket_reuseaddr(&socket, true)?;
        if options.reuse_port {
            sockopt::set_socket_reuseport(&socket, true)?;
        }
        rustix::net::bind(&socket, &addr)?;
        rustix::net::listen(&socket, LISTEN_BACKLOG)?;
        if options.wait_for_request {
            defer_accept_until_data(&socket)?;
        }
        Ok(TcpListener::from(socket))
    };
    bound().map_err(|errno| ServerError::Bind { addr, source: errno.into() })
}

/// Longest a connection that sends nothing waits in the kernel before it
/// is handed over anyway (then the request timeout applies).
#[cfg(target_os = "linux")]
const DEFER_ACCEPT_SECONDS: i32 = 1;

/// Linux's `TCP_DEFER_ACCEPT` (nginx's `listen ... deferred`): `accept`
/// returns a connection only once its request has arrived, so the read
/// right after `accept` finds it, with no `epoll_ctl` or empty `read`
/// first. A silent client is handed over after `DEFER_ACCEPT_SECONDS`.
/// Elsewhere (no such option) nothing changes.
fn defer_accept_until_data(socket: &OwnedFd) -> rustix::io::Result<()> {
    #[cfg(target_os = "linux")]
    crate::sys::set_tcp_defer_accept(socket, DEFER_ACCEPT_SECONDS)?;
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
    Ok(())
}

/// A TCP socket, close-on-exec from birth where the system can
/// (`SOCK_CLOEXEC`; macOS sets it with a second call).
fn tcp_socket(family: AddressFamily) -> rustix::io::Result<OwnedFd> {
    #[cfg(not(target_vendor = "apple"))]
    return rustix::net::socket_with(family, SocketType::STREAM, rustix::net::SocketFlags::CLOEXEC, Some(ipproto::TCP));
    #[cfg(target_vendor = "apple")]
    {
        let socket = rustix::net::socket(family, SocketType::STREAM, Some(ipproto::TCP))?;
        rustix::io::fcntl_setfd(&socket, rustix::io::FdFlags::CLOEXEC)?;
        Ok(socket)
    }
}

/// Accepts one connection, non-blocking. Where the system has `accept4`
/// the socket is born non-blocking, which saves the `ioctl` that `accept`
/// followed by `set_nonblocking` would cost (one syscall in seven for a
/// connection that makes one request); macOS has no `accept4`.
pub fn accept_nonblocking(listener: &TcpListener) -> io::Result<TcpStream> {
    #[cfg(not(target_vendor = "apple"))]
    {
        use rustix::net::SocketFlags;
        let accepted = rustix::net::accept_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
        Ok(TcpStream::from(accepted))
    }
    #[cfg(target_vendor = "apple")]
    {
        let (stream, _peer) = listener.accept()?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }
}

/// Prints the `listening on <ip>:<port>` line: the first line on stdout,
/// which tests and scripts wait for to learn the port picked by `--port 0`.
pub fn announce(listener: &TcpListener) -> Result<SocketAddr, ServerError> {
    let local = listener.local_addr().map_err(ServerError::io("cannot read the bound address"))?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", contract::listening_line(local))
        .and_then(|()| stdout.flush())
        .map_err(ServerError::io("cannot write to stdout"))?;
    Ok(local)
}

/// File descriptors kept free for what serving needs besides the client
/// sockets: files being read or streamed, the cache's reads, epoll, pipes.
/// Without this margin, a server full of idle clients could no longer open
/// the file the next request asks for (every request would get 500).
pub const FDS_RESERVED: u64 = 64;

/// Raises this process's soft limit on open files to the hard limit (as
/// nginx's `worker_rlimit_nofile` does; soft limits are often 1024) and
/// returns how many connections fit, keeping [`FDS_RESERVED`] (or half of a
/// small limit) for everything else.
pub fn connection_capacity() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
    let soft = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(_) => limit.current,
    };
    let Some(soft) = soft else { return usize::MAX }; // unlimited
    let reserved = FDS_RESERVED.min(soft / 2);
    usize::try_from(soft - reserved).unwrap_or(usize::MAX).max(1)
}

/// How long to stop accepting when the process is out of file descriptors.
pub const FD_EXHAUSTION_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// What one `accept(2)` gave, its errors sorted once for every model.
#[derive(Debug)]
pub enum Accepted {
    /// A new connection.
    Connection(TcpStream),
    /// No connection is waiting (`WouldBlock`): go back to waiting.
    Drained,
    /// Accepting cannot go on for now: the process is out of fds (or
    /// memory), or the listener itself failed, so that accepting again at
    /// once would fail the same way (and spin). Pause accepting for
    /// [`FD_EXHAUSTION_PAUSE`] and keep serving the connections already open.
    Pause,
    /// This attempt failed for a reason of its own (the client gave up
    /// first, a signal, a network error of that connection): try again.
    Retry,
}

/// Sorts an error of `accept(2)` (or of an accept completion): which
/// errors belong to one connection (retry at once), which to the process or
/// the listener (pause). Logs it.
pub fn sort_accept_error(err: &io::Error) -> Accepted {
    use rustix::io::Errno;
    if err.kind() == io::ErrorKind::WouldBlock {
        return Accepted::Drained;
    }
    // Linux hands pending network errors of the new connection to accept
    // (accept(2), "Error handling"); a firewall's refusal is EPERM.
    let one_connection = [
        Errno::CONNABORTED,
        Errno::PROTO,
        Errno::PERM,
        Errno::NETDOWN,
        Errno::NOPROTOOPT,
        Errno::HOSTDOWN,
        Errno::HOSTUNREACH,
        Errno::OPNOTSUPP,
        Errno::NETUNREACH,
    ];
    match Errno::from_io_error(err) {
        Some(Errno::INTR) => Accepted::Retry,
        Some(errno) if one_connection.contains(&errno) => {
            crate::log::info!("accept: {err}");
            Accepted::Retry
        }
        _ => {
            crate::log::info!("accept: {err}; pausing accepts for {FD_EXHAUSTION_PAUSE:?}");
            Accepted::Pause
        }
    }
}

/// Accepts one connection from `listener`: a non-blocking socket for the
/// readiness loops ([`accept_nonblocking`]), a blocking one for the thread
/// and process models. Logs what is worth a line.
pub fn accept(listener: &TcpListener, nonblocking: bool) -> Accepted {
    let accepted = if nonblocking { accept_nonblocking(listener) } else { listener.accept().map(|(stream, _)| stream) };
    match accepted {
        Ok(stream) => Accepted::Connection(stream),
        Err(err) => sort_accept_error(&err),
    }
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    /// A listener that has failed (here: a socket that never listened)
    /// fails every accept the same way: that pauses accepting rather than
    /// retrying at once, which would spin the loop at 100% CPU.
    #[test]
    fn a_failing_listener_pauses_accepting_instead_of_spinning() {
        let socket = tcp_socket(AddressFamily::INET).unwrap();
        rustix::net::bind(&socket, &"127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
        let never_listened = TcpListener::from(socket);
        for nonblocking in [true, false] {
            let accepted = accept(&never_listened, nonblocking);
            assert!(matches!(accepted, Accepted::Pause), "{accepted:?}");
        }
    }

    #[test]
    fn errors_of_one_connection_are_retried_and_an_empty_queue_is_drained() {
        use rustix::io::Errno;
        let sorted = |errno: Errno| sort_accept_error(&io::Error::from_raw_os_error(errno.raw_os_error()));
        assert!(matches!(sorted(Errno::CONNABORTED), Accepted::Retry));
        assert!(matches!(sorted(Errno::INTR), Accepted::Retry));
        assert!(matches!(sorted(Errno::AGAIN), Accepted::Drained));
        assert!(matches!(sorted(Errno::MFILE), Accepted::Pause));
        assert!(matches!(sorted(Errno::BADF), Accepted::Pause));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Polls a non-blocking `listener` until a connection is handed over.
    fn accept_within(listener: &TcpListener, limit: Duration) -> io::Result<TcpStream> {
        let deadline = Instant::now() + limit;
        loop {
            match listener.accept() {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                accepted => return accepted.map(|(stream, _)| stream),
            }
        }
    }

    #[test]
    fn a_listener_waiting_for_requests_hands_a_connection_over_with_its_first_bytes() {
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let waiting = listen(any_port, ListenOptions { reuse_port: false, wait_for_request: true }).unwrap();
        waiting.set_nonblocking(true).unwrap();
        let mut client = TcpStream::connect(waiting.local_addr().unwrap()).unwrap();
        // On loopback the handshake is done when `connect` returns: without
        // the option the connection would be waiting in the queue now.
        std::thread::sleep(Duration::from_millis(20));
        let early = waiting.accept();
        assert!(matches!(&early, Err(err) if err.kind() == io::ErrorKind::WouldBlock), "{early:?}");
        client.write_all(b"test.txt\n").unwrap();
        let mut accepted = accept_within(&waiting, Duration::from_secs(5)).unwrap();
        accepted.set_nonblocking(true).unwrap();
        let mut request = [0u8; 16];
        assert_eq!(io::Read::read(&mut accepted, &mut request).unwrap(), 9, "the request came with it");

        // The time service speaks first: its connections are handed over at once.
        let greeting = listen(any_port, ListenOptions { reuse_port: false, wait_for_request: false }).unwrap();
        greeting.set_nonblocking(true).unwrap();
        let _silent = TcpStream::connect(greeting.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        greeting.accept().unwrap();
    }
}
