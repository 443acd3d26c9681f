//! The OSTEP-style client: one connection, requests in turn, bodies to stdout.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Longest response head the client accepts (`OK <size>` / `ERR ...`).
const MAX_HEAD_BYTES: u64 = 4096;

/// Whether every request was served.
pub enum Outcome {
    /// Every path was served (or the time was printed).
    AllServed,
    /// At least one path was refused; the reasons went to stderr.
    SomeRefused,
}

/// Connects to `addr`, retrying a refused connection for up to `patience`:
/// a server started in the background a moment ago (`server &`) may not
/// have bound its port yet. Any other error, or a refusal that lasts,
/// is final.
pub fn connect(addr: &str, patience: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + patience;
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return Ok(stream),
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(RETRY_GAP);
            }
            Err(err) => {
                let waited =
                    if patience.is_zero() { String::new() } else { format!(", after trying for {patience:?}") };
                return Err(err).with_context(|| {
                    format!("cannot connect to {addr}{waited} (is the server running? set --addr or $SERVER_ADDR)")
                });
            }
        }
    }
}

/// Pause between two connection attempts while a server is starting.
const RETRY_GAP: Duration = Duration::from_millis(50);

/// Connects to `addr` (waiting up to `patience` for a server that is
/// starting); with no paths prints everything until the server closes,
/// else requests each path in turn on the one connection.
pub fn run(addr: &str, paths: &[String], patience: Duration) -> Result<Outcome> {
    let stream = connect(addr, patience)?;
    let mut stdout = io::stdout().lock();
    if paths.is_empty() {
        io::copy(&mut &stream, &mut stdout).context("reading from the server")?;
        stdout.flush()?;
        return Ok(Outcome::AllServed);
    }
    let mut writer = stream.try_clone().context("cloning the socket")?;
    let mut reader = BufReader::new(stream);
    let mut outcome = Outcome::AllServed;
    for path in paths {
        writer.write_all(format!("{path}\n").as_bytes()).with_context(|| format!("sending request for {path}"))?;
        let mut head = String::new();
        (&mut reader)
            .take(MAX_HEAD_BYTES)
            .read_line(&mut head)
            .with_context(|| format!("reading the response to {path}"))?;
        let head = head.trim_end();
        if let Some(size) = head.strip_prefix(contract::OK).and_then(|rest| rest.strip_prefix(' ')) {
            let size: u64 = size.parse().with_context(|| format!("bad response head {head:?}"))?;
            let copied = io::copy(&mut (&mut reader).take(size), &mut stdout)?;
            if copied != size {
                bail!("{path}: connection closed after {copied} of {size} bytes");
            }
        } else if let Some(reason) = head.strip_prefix(contract::ERR).and_then(|rest| rest.strip_prefix(' ')) {
            eprintln!("client: {path}: {reason}");
            outcome = Outcome::SomeRefused;
        } else if head.is_empty() {
            bail!("{path}: the server closed the connection without answering");
        } else {
            bail!("{path}: unexpected response {head:?}");
        }
    }
    stdout.flush()?;
    Ok(outcome)
}
