//! `server`: the command line to a [`Config`], then [`fileserver::start`].
//! No logic lives here: the flags, their defaults and which model reads
//! which are all in `fileserver::config`.

use std::process::ExitCode;

use fileserver::config::Config;

fn main() -> ExitCode {
    let config = Config::from_command_line();
    match fileserver::start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            fileserver::write_line(format_args!("server: {err}"));
            ExitCode::FAILURE
        }
    }
}
