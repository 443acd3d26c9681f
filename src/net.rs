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

/// Binds and listens on `addr`. `SO_REUSEADDR` lets a restarted server bind
/// while old connections linger in `TIME_WAIT`; `reuse_port` lets several
/// loops each own a listener on the same port (the kernel spreads connections).
pub fn listen(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener, ServerError> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let bound = || -> rustix::io::Result<TcpListener> {
        let socket = tcp_socket(family)?;
        sockopt::set_socket_reuseaddr(&socket, true)?;
        if reuse_port {
            sockopt::set_socket_reuseport(&socket, true)?;
        }
        rustix::net::bind(&socket, &addr)?;
        rustix::net::listen(&socket, LISTEN_BACKLOG)?;
        Ok(TcpListener::from(socket))
    };
    bound().map_err(|errno| ServerError::Bind { addr, source: errno.into() })
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
    writeln!(stdout, "listening on {local}")
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

/// True for accept errors that mean "out of file descriptors": the server
/// should pause accepting and keep serving, not exit.
pub fn is_fd_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM))
}
