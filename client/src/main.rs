//! `client`: the kit's client.
//!
//! * `client DELAY [PATH...]`: the OSTEP homework's client. Sleeps DELAY
//!   seconds, connects, then prints what the time service sends, or requests
//!   each PATH in turn on one connection and writes each body to stdout.
//!
//! Exit status: 0 if everything was served, 1 if any request was refused,
//! 2 on usage or connection errors.

mod fetch;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Requests files (or the time) from the kit's server.
///
/// `client 0 ./test.txt` prints test.txt from a server rooted at fixtures/;
/// `client 1` against `--service time` prints the time after one second.
#[derive(Debug, Parser)]
#[command(version, max_term_width = 100)]
struct Cli {
    /// Seconds to sleep before connecting (fractions allowed), as in OSTEP's client.
    #[arg(value_parser = parse_delay)]
    delay: Duration,
    /// Paths to request, in order, on one connection; none: print until the server closes.
    paths: Vec<String>,
    /// Server address.
    #[arg(long, env = "SERVER_ADDR", default_value = "127.0.0.1:7070")]
    addr: String,
}

fn parse_delay(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("{text:?} is not a delay in seconds (try 0 or 1.5)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    std::thread::sleep(cli.delay);
    match fetch::run(&cli.addr, &cli.paths) {
        Ok(fetch::Outcome::AllServed) => ExitCode::SUCCESS,
        Ok(fetch::Outcome::SomeRefused) => ExitCode::from(1),
        Err(err) => {
            eprintln!("client: {err:#}");
            ExitCode::from(2)
        }
    }
}
