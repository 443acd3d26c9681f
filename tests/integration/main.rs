//! The integration suite: one binary (one link on a 2-core machine), a module
//! per area. Every test starts the real `server` (and `client`) binaries on
//! `--port 0`, reads the `listening on` line, and talks over loopback.

mod support;

mod async_reads;
mod class;
mod client;
mod docs;
mod grader;
mod hostile;
mod http;
mod http_files;
mod labs;
// The C labs: make, cc and the sanitizers.
#[cfg(target_os = "linux")]
mod labs_c;
mod limits;
mod models;
// It reads /proc to find what outlived whom.
#[cfg(target_os = "linux")]
mod orphans;
mod processes;
mod protocol;
mod robustness;
mod sandbox;
mod scaling;
mod signals;
mod timelines;
mod tokio_runtimes;
mod user_reports;
