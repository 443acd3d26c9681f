//! `client grade`: scores a server, stage by stage, from the outside.
//!
//! The server under test is started by the grader from a command template
//! (`{port}`, `{root}`, `{delay}`, `{service}` are filled in), in its own
//! process group, on a port the kernel picks, serving a root the grader
//! fills itself ([`fixture`]). Each test ([`checks`]) proves one property
//! of the contract in `docs/assignment.md` with a deadline, and on failure
//! says what was sent, what was expected, what came back, and where to
//! look. Nothing the server does can hang or crash the grader, and nothing
//! it started outlives it ([`target`]).

pub mod bundle;
pub mod checks;
pub mod fixture;
pub mod report;
pub mod target;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use checks::{Check, Ctx, Failure, Outcome};
use fixture::Fixture;
use report::{Report, Status, TestResult};
use target::{Setup, Target};

/// An instructor's settings (`--config FILE`, TOML). Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Stages to grade (default: 1 to `--stage`).
    pub stages: Option<Vec<u8>>,
    /// Deadlines are multiplied by this, for slow machines (default 1).
    pub stretch: Option<f64>,
    /// Run each test this many times; it passes only if every run passes (default 1).
    pub repeat: Option<u32>,
    /// Stop after this many failed tests (default: never).
    pub stop_after_failures: Option<u32>,
    /// Points per test name, replacing the defaults.
    #[serde(default)]
    pub points: BTreeMap<String, u32>,
    /// Who sees a test on Gradescope, per test name: `visible` (the
    /// default), `hidden`, `after_due_date` or `after_published`.
    #[serde(default)]
    pub visibility: BTreeMap<String, String>,
}

impl Config {
    /// Reads a config file, naming what is wrong with it.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))?;
        let names: Vec<&str> = checks::catalog().iter().map(|c| c.name).collect();
        for name in config.points.keys().chain(config.visibility.keys()) {
            anyhow::ensure!(names.contains(&name.as_str()), "{}: no test is named {name:?}", path.display());
        }
        for (name, visibility) in &config.visibility {
            anyhow::ensure!(
                VISIBILITIES.contains(&visibility.as_str()),
                "{}: visibility of {name:?} is {visibility:?}; use one of {}",
                path.display(),
                VISIBILITIES.join(", ")
            );
        }
        Ok(config)
    }
}

/// Gradescope's visibility values (its autograder specification).
pub const VISIBILITIES: [&str; 4] = ["visible", "hidden", "after_due_date", "after_published"];

/// What to grade and how.
#[derive(Debug)]
pub struct Plan {
    /// The server command template; empty with `addr`.
    pub command: Vec<String>,
    /// A server someone else runs: its address, service and delay.
    pub addr: Option<(SocketAddr, Setup)>,
    /// With `addr`: the root that server serves (the grader puts its files there).
    pub root: Option<PathBuf>,
    /// The stages to run.
    pub stages: Vec<u8>,
    /// Deadline multiplier.
    pub stretch: f64,
    /// Runs per test.
    pub repeat: u32,
    /// Stop after this many failures.
    pub stop_after_failures: Option<u32>,
    /// Points replacing the defaults.
    pub points: BTreeMap<String, u32>,
    /// Visibility per test (Gradescope), replacing `visible`.
    pub visibility: BTreeMap<String, String>,
    /// The kit's reference server, for stage 6.
    pub reference: Option<PathBuf>,
}

/// Runs the plan and returns the report.
pub fn grade(plan: &Plan) -> Result<Report> {
    let fixture = match (&plan.addr, &plan.root) {
        (Some(_), Some(root)) => Fixture::create_in(root)?,
        (Some(_), None) => {
            bail!("with --addr, give --root: the directory that server serves (the grader puts its test files there)")
        }
        (None, _) => Fixture::create()?,
    };
    let checks: Vec<Check> = checks::catalog().into_iter().filter(|c| plan.stages.contains(&c.stage)).collect();
    let mut results = Vec::new();
    let mut session = Session::default();
    let mut failures = 0;
    for check in &checks {
        let max = plan.points.get(check.name).copied().unwrap_or(check.points);
        let stopped = plan.stop_after_failures.is_some_and(|limit| failures >= limit);
        let outcome = if stopped {
            Outcome::Skip(format!("not run: stopped after {failures} failed tests"))
        } else {
            let _timeline = crate::timeline::grading::capture(check.name); // --timeline DIR
            run_check(plan, check, &fixture, &mut session)
        };
        if let Some(err) = session.cannot_run.take() {
            return Err(err);
        }
        let mut result = TestResult::new(check, max, outcome);
        result.server_event = session.event.take();
        if let Some(visibility) = plan.visibility.get(check.name) {
            result.visibility = visibility.clone();
        }
        if result.status == Status::Failed {
            failures += 1;
        }
        results.push(result);
    }
    let server_log = session.current.as_ref().map(Target::log).unwrap_or_default();
    Ok(Report { results, remote: plan.addr.is_some(), server_log })
}

/// The server of the moment, and the set-ups that would not start (tried
/// once: a server that never starts must not cost a timeout per test).
#[derive(Default)]
struct Session {
    current: Option<Target>,
    failed_starts: Vec<(Setup, Failure)>,
    /// What happened to the server during the last test (it died, or it
    /// stopped answering and was stopped), for the report.
    event: Option<String>,
    /// Why grading cannot run at all (the command cannot be started).
    cannot_run: Option<anyhow::Error>,
}

/// Runs `check` `repeat` times (each on a ready server); it passes only
/// if every run passes.
fn run_check(plan: &Plan, check: &Check, fixture: &Fixture, session: &mut Session) -> Outcome {
    let mut last = Outcome::Skip("not run".into());
    for _ in 0..plan.repeat.max(1) {
        if let Err(outcome) = ready(plan, check, fixture, session) {
            return outcome;
        }
        let target = session.current.as_mut().expect("readied above");
        let mut ctx = Ctx { target, fixture, stretch: plan.stretch, reference: plan.reference.clone() };
        last = (check.run)(&mut ctx);
        if let Outcome::Fail(failure) = &mut last {
            // A crash explains itself better than any symptom: a Rust
            // panic (a handout's todo!() among them), or any last words.
            if let Some(words) = last_words(&ctx.target.log()) {
                failure.got.push_str(&format!(" (the server said: {words})"));
            }
        }
        if let Outcome::Fail(failure) = &mut last {
            let addr = ctx.target.addr;
            failure.replay = failure.request.as_deref().map(|request| report::replay_line(request, addr).into());
        }
        session.event = after_check(plan, check, session);
        if let (Outcome::Fail(failure), Some(event)) = (&mut last, &session.event) {
            failure.got.push_str(&format!(" ({event})"));
        }
        if !matches!(last, Outcome::Pass(_)) {
            break;
        }
    }
    last
}

/// After a test, makes sure the next one starts from a live, answering
/// server: one that died is noted (with the signal that killed it) and
/// started again by [`ready`]; one that no longer answers a request within
/// a few seconds (it hangs, on a FIFO say) is noted and stopped, so that it
/// is started again too. One mistake then costs only the tests it fails.
/// `None` when the server is well (or ended as the test asked).
fn after_check(plan: &Plan, check: &Check, session: &mut Session) -> Option<String> {
    let target = session.current.as_mut()?;
    if !target.is_local() {
        return None;
    }
    if let Some(status) = target.exit_status() {
        session.current = None;
        if check.ends_server {
            return None;
        }
        return Some(died(status, check));
    }
    let budget = Duration::from_secs_f64(3.0 * plan.stretch);
    let answer = match target.setup {
        Setup::Time => {
            wire::Conn::open(target.addr, budget).and_then(|mut conn| conn.read_to_close()).and_then(|line| {
                if line.is_empty() {
                    Err("the connection closed without the time".into())
                } else {
                    Ok(())
                }
            })
        }
        Setup::Files { .. } => wire::fetch(target.addr, PROBE_PATH.as_bytes(), budget).and_then(|reply| match reply {
            wire::Reply::Ok(_) | wire::Reply::Err(_) => Ok(()),
            other => Err(other.describe()),
        }),
    };
    match answer {
        Ok(()) => None,
        Err(why) => {
            // A server that is dying (writing a core dump, say) has closed
            // its sockets a moment before it is reaped: wait for that moment.
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while std::time::Instant::now() < deadline {
                if let Some(status) = target.exit_status() {
                    session.current = None;
                    return Some(died(status, check));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            session.current = None; // stops it: the next test gets a new one
            let asked = match check.setup {
                Setup::Time => "a connection afterwards".to_string(),
                Setup::Files { .. } => format!("{PROBE_PATH} afterwards"),
            };
            Some(format!("the server stopped answering during `{}` ({asked}: {why}); restarted", check.name))
        }
    }
}

/// The report's words for a server that died during `check`.
fn died(status: std::process::ExitStatus, check: &Check) -> String {
    format!(
        "the server died ({}) during `{}`; started again for the next test",
        target::describe_exit(status),
        check.name
    )
}

/// What the grader asks after each test to learn that the server still
/// answers: a file that does not exist needs no read, so any `ERR` or `OK`
/// reply will do.
const PROBE_PATH: &str = "no-such-file-probe.txt";

/// The last panic in a server's output (Rust prints `panicked at FILE:LINE:`
/// and the message on the next line), in one line.
fn last_words(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let at = lines.iter().rposition(|line| line.contains("panicked at"))?;
    let mut words = lines[at].trim().to_string();
    if let Some(next) = lines.get(at + 1).filter(|l| !l.trim().is_empty() && !l.starts_with("note:")) {
        words.push(' ');
        words.push_str(next.trim());
    }
    Some(words)
}

/// Makes `current` a running server set up as `check` needs: the one
/// already running if it fits, else a new one (the old one is stopped
/// first). With `--addr`, tests that need another set-up are skipped.
fn ready(plan: &Plan, check: &Check, fixture: &Fixture, session: &mut Session) -> Result<(), Outcome> {
    let current = &mut session.current;
    if let Some((addr, setup)) = plan.addr {
        if check.needs_local {
            return Err(Outcome::Skip("needs a server the grader starts (signals, its fds): not with --addr".into()));
        }
        if setup != check.setup {
            return Err(Outcome::Skip(format!(
                "needs a server started as {:?}; the one at --addr is {setup:?}",
                check.setup
            )));
        }
        current.get_or_insert_with(|| Target::remote(addr, setup));
        return Ok(());
    }
    if current.as_mut().is_some_and(|t| t.setup == check.setup && t.is_running()) {
        return Ok(());
    }
    *current = None; // stops the previous server first: its port and its files
    if let Some((_, failure)) = session.failed_starts.iter().find(|(setup, _)| *setup == check.setup) {
        return Err(Outcome::Fail(failure.clone()));
    }
    let patience = Duration::from_secs_f64(10.0 * plan.stretch);
    match Target::start(&plan.command, &fixture.root(), check.setup, patience) {
        Ok(target) => {
            *current = Some(target);
            Ok(())
        }
        Err(err) if err.downcast_ref::<target::CannotSpawn>().is_some() => {
            session.cannot_run = Some(err);
            Err(Outcome::Skip("grading cannot run".into()))
        }
        Err(err) => {
            let failure = Failure {
                sent: format!("(start, as {:?}) {}", check.setup, plan.command.join(" ")),
                expected: "a server that prints `listening on <ip>:<port>` or accepts connections on the port \
                           the grader gave it"
                    .into(),
                got: format!("{err:#}"),
                hint: "run the command by hand with a free port: does it start, and listen on 127.0.0.1?",
                request: None,
                replay: None,
            };
            session.failed_starts.push((check.setup, failure.clone()));
            Err(Outcome::Fail(failure))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_the_servers_output_is_quoted_in_one_line() {
        let log = "listening on 127.0.0.1:1\n\nthread 'main' panicked at src/models/select.rs:37:5:\n\
                   not yet implemented: stage 2: loop\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            last_words(log).unwrap(),
            "thread 'main' panicked at src/models/select.rs:37:5: not yet implemented: stage 2: loop"
        );
        assert_eq!(last_words("all is well\n"), None);
    }

    #[test]
    fn the_config_shown_in_docs_grading_md_loads() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grading.md")).unwrap();
        let start = docs.find("```toml\n").expect("a toml example") + "```toml\n".len();
        let example = &docs[start..start + docs[start..].find("```").unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("course.toml");
        std::fs::write(&path, example).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!((config.repeat, config.stop_after_failures), (Some(3), Some(10)));
        assert_eq!(config.points.get("sandbox.dotdot"), Some(&10));
        std::fs::write(&path, "[points]\n\"no.such.test\" = 1\n").unwrap();
        let err = Config::load(&path).unwrap_err();
        assert!(format!("{err:#}").contains("no test is named"), "{err:#}");
    }
}
