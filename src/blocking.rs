//! What the blocking models share: serving one connection start to finish
//! in the calling thread, and an accept loop that a signal can stop.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::conn::{Conn, Inline, Status};
use crate::log::info;
use crate::net::is_fd_exhaustion;
use crate::protocol::ParseLimits;
use crate::service::Service;
use crate::signals;

/// How long to stop accepting when the process is out of file descriptors.
pub const FD_EXHAUSTION_PAUSE: Duration = Duration::from_millis(100);

/// Serves every request on `stream` until the client is done, blocking the
/// calling thread throughout. The same [`Conn`] state machine as the event
/// loops: on a blocking socket it simply never sees `WouldBlock`.
pub fn serve_connection(mut stream: TcpStream, service: &Service, limits: ParseLimits) {
    let mut conn = Conn::new(service, limits);
    // With a blocking socket `advance` returns only when the connection is
    // finished (or, with a read timeout set, when the client went quiet).
    let _ = conn.advance(&mut stream, service, &mut Inline, 0) == Status::Closed;
}

/// Accepts connections and hands each to `serve` until `SIGINT`/`SIGTERM`.
/// `SIGHUP` clears the cache from a watcher thread.
pub fn accept_until_stopped(
    listener: &TcpListener,
    service: &Arc<Service>,
    mut serve: impl FnMut(TcpStream),
) -> io::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let wake = wake_address(listener.local_addr()?);
    let stop_flag = Arc::clone(&stop);
    signals::spawn_watcher(Arc::clone(service), move || {
        stop_flag.store(true, Ordering::SeqCst);
        // accept() blocks; a connection to ourselves makes it return.
        let _ = TcpStream::connect(wake);
    })?;
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match accepted {
            Ok((stream, _peer)) => serve(stream),
            Err(err) if is_fd_exhaustion(&err) => {
                info!("accept: {err}; pausing accepts");
                std::thread::sleep(FD_EXHAUSTION_PAUSE);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => info!("accept: {err}"),
        }
    }
}

/// An address that reaches `local`: a wildcard bind is reached via loopback.
fn wake_address(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}
