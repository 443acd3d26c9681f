//! Stage 1: the iterative time server, OSTEP's `wserver.c` loop. It opens
//! a listening socket by hand (what `TcpListener::bind` hides), then serves
//! one client at a time: accept, write the time, close. It waits in
//! `accept(2)`; the next client waits in the listen backlog. Cost: one
//! thread, nothing per client beyond the kernel's.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{SystemTime, UNIX_EPOCH};

use labs::{check, Args, Context, Result};

fn main() -> std::process::ExitCode {
    labs::main(serve)
}

/// A TCP socket listening on 127.0.0.1:`port`.
fn listen(port: u16) -> std::io::Result<TcpListener> {
    // lab:begin
    // lab:todo a TCP socket listening on 127.0.0.1:port (port 0: the kernel picks one), that can be
    // lab:todo bound again at once when the server restarts (a closed connection's TIME_WAIT must not
    // lab:todo keep the port); if a call fails, say which. Read socket(2), bind(2), listen(2), ip(7).
    // SAFETY: socket(2) takes no pointers; the fd it returns is owned below.
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) })?;
    // SAFETY: fd is a new socket that nothing else owns; OwnedFd closes it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let (yes, yes_len) = (1 as libc::c_int, std::mem::size_of::<libc::c_int>() as libc::socklen_t);
    // SAFETY: the option points at a live c_int of the length given.
    let option = (&yes as *const libc::c_int).cast();
    check(unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, option, yes_len) })?;
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = port.to_be(); // network byte order
    addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
    let addr_len = std::mem::size_of_val(&addr) as libc::socklen_t;
    // SAFETY: addr is a live sockaddr_in of the length given.
    check(unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), addr_len) })?;
    // SAFETY: fd is a bound socket.
    check(unsafe { libc::listen(fd, libc::SOMAXCONN) })?;
    Ok(TcpListener::from(socket))
    // lab:end
}

/// The time `at`, in RFC 3339 UTC: `2026-11-27T12:00:00Z`.
fn rfc3339_utc(at: SystemTime) -> String {
    // lab:begin
    // lab:todo the date and time, in UTC, as YYYY-MM-DDTHH:MM:SSZ, from the seconds since 1970-01-01
    // lab:todo (no date crate: the days turn into a year, month and day by the Gregorian rules, leap
    // lab:todo years included); read time(2) and the "days from civil" algorithm.
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Howard Hinnant's civil_from_days: eras of 400 years, years from March.
    let days = (secs / 86_400) as i64 + 719_468; // days since 0000-03-01
    let (era, day_of_era) = (days.div_euclid(146_097), days.rem_euclid(146_097));
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (hour, minute, second) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
    // lab:end
}

fn serve(args: Args) -> Result<()> {
    let listener = listen(args.port).context(format!("listening on port {}", args.port))?;
    labs::announce(listener.local_addr().context("getsockname")?)?;
    // lab:begin
    // lab:todo every client that connects gets one line, the current time, then end-of-file; a client
    // lab:todo that connects while another is served waits, but is served. A client that is gone before
    // lab:todo its answer (reset, broken pipe) must not stop the server. Read accept(2), close(2).
    for client in listener.incoming() {
        match client {
            Ok(mut stream) => {
                let now = rfc3339_utc(SystemTime::now());
                // A client that left early is its own loss, not the server's.
                let _ = stream.write_all(format!("{now}\n").as_bytes());
            } // the stream is dropped here: close(2)
            Err(err) => eprintln!("accept: {err}"),
        }
    }
    // lab:end
    Ok(())
}
