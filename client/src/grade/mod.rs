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
//!
//! Around that core: a grader running as root runs student code as an
//! unprivileged user ([`target::User`]); a machine that cannot grade is
//! told from a submission that fails ([`machine`]); the mechanism a course
//! asks for is proved by behaviour, threads counted ([`mechanism`]); a
//! submission folder is copied and built as its `grade.toml` says
//! ([`submission`]); a class is graded into one CSV ([`class`]); and the
//! report is written in the formats course platforms read ([`formats`],
//! [`report`], [`bundle`]).

pub mod bundle;
pub mod checks;
pub mod class;
pub mod fixture;
pub mod formats;
pub mod machine;
pub mod mechanism;
pub mod report;
pub mod submission;
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
use machine::NotGradable;
use report::{Report, Status, TestResult};
use target::{Launch, Setup, Target};

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
    /// The unprivileged user student code runs as when the grader runs as
    /// root (default `nobody`).
    pub run_as: Option<String>,
    /// What the course asks of the mechanism, proved by behaviour.
    #[serde(default)]
    pub mechanism: MechanismConfig,
    /// `client class`: the build and run of a submission whose folder has
    /// no `grade.toml` (or whose `grade.toml` leaves one out).
    #[serde(default)]
    pub submission: submission::Recipe,
}

/// `[mechanism]`: how a stage must be served.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MechanismConfig {
    /// `"single-thread"`: the concurrency tests fail for a server that
    /// serves them with more than one thread (or process).
    pub stage2: Option<String>,
}

impl MechanismConfig {
    /// Whether stage 2 must be served by a single thread.
    pub fn single_thread(&self) -> bool {
        self.stage2.as_deref() == Some("single-thread")
    }
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
        if let Some(asked) = &config.mechanism.stage2 {
            anyhow::ensure!(
                ["single-thread", "any"].contains(&asked.as_str()),
                "{}: [mechanism] stage2 is {asked:?}; use \"single-thread\" or \"any\"",
                path.display()
            );
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
    /// How to start the server: as which user, in which folder.
    pub launch: Launch,
    /// Stage 2 must be served by one thread (`[mechanism] stage2`).
    pub single_thread: bool,
    /// Replay lines start the server themselves this way (a server the
    /// grader started is gone when the report is read); `None`: `nc` lines
    /// to the graded address.
    pub replay_via: Option<report::ReplayVia>,
}

impl Plan {
    /// A plan for `command` with the defaults of `client grade`.
    pub fn new(command: Vec<String>, stages: Vec<u8>) -> Plan {
        Plan {
            command,
            addr: None,
            root: None,
            stages,
            stretch: 1.0,
            repeat: 1,
            stop_after_failures: None,
            points: BTreeMap::new(),
            visibility: BTreeMap::new(),
            reference: None,
            launch: Launch::default(),
            single_thread: false,
            replay_via: None,
        }
    }

    /// The points each stage is worth, and in all: the same for every
    /// submission graded with this plan, whatever it passed or skipped.
    pub fn max_by_stage(&self) -> Vec<(u8, u32)> {
        let mut stages: Vec<(u8, u32)> = self.stages.iter().map(|&stage| (stage, 0)).collect();
        stages.sort_unstable();
        stages.dedup();
        for check in checks::catalog() {
            if let Some((_, max)) = stages.iter_mut().find(|(stage, _)| *stage == check.stage) {
                *max += self.points.get(check.name).copied().unwrap_or(check.points);
            }
        }
        stages
    }
}

/// Runs the plan and returns the report.
pub fn grade(plan: &Plan) -> Result<Report> {
    if let Err(why) = machine::preflight() {
        return Ok(Report::not_gradable(why));
    }
    let fixture = match (&plan.addr, &plan.root) {
        (Some(_), Some(root)) => Fixture::create_in(root)?,
        (Some(_), None) => {
            bail!("with --addr, give --root: the directory that server serves (the grader puts its test files there)")
        }
        (None, _) => Fixture::create()?,
    };
    if let Some(user) = &plan.launch.user {
        fixture
            .open_to_others()
            .with_context(|| format!("cannot make the grader's files readable to {}", user.name))?;
        if plan.addr.is_none() {
            let opened = target::open_command_to(&plan.command, plan.launch.workdir.as_deref(), user)?;
            if !opened.is_empty() {
                let names: Vec<String> = opened.iter().map(|path| path.display().to_string()).collect();
                eprintln!("client grade: the server runs as {}; opened to it: {}", user.name, names.join(", "));
            }
        }
    }
    // Before any server starts: the servers inherit it (`concurrency.past_fd_setsize`).
    checks::raise_fd_limit();
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
            if let Some(why) = err.downcast_ref::<NotGradable>() {
                return Ok(Report::not_gradable(why.clone()));
            }
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
    Ok(Report { results, remote: plan.addr.is_some(), server_log, not_gradable: None })
}

/// The report of a submission that did not build: every test of the
/// plan fails with the build's reason (the student's fault, so a score of
/// 0 in every format, never "not gradable").
pub fn unbuilt(plan: &Plan, why: &str) -> Report {
    let results = checks::catalog()
        .iter()
        .filter(|check| plan.stages.contains(&check.stage))
        .map(|check| {
            let max = plan.points.get(check.name).copied().unwrap_or(check.points);
            let failure = Failure {
                sent: "(nothing: the submission did not build)".into(),
                expected: "a submission whose build succeeds".into(),
                got: why.to_string(),
                hint: "run the build by hand in a fresh copy of the submission: what does the first error say?",
                request: None,
                replay: None,
            };
            TestResult::new(check, max, Outcome::Fail(failure))
        })
        .collect();
    Report { results, remote: false, server_log: String::new(), not_gradable: None }
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

/// Runs `check` `repeat` times; it passes only if every run passes, and
/// the first failing run is the one reported (the worst run counts). Every
/// run after the first starts from the fixture's files as they were made
/// and, where the grader starts the server, from a new server: a test
/// that edits a file or fills the cache must not meet its own leftovers
/// (the second `cache.stale_until_sighup` would otherwise take the edited
/// file for the original, and `async.overlap` would read from the cache).
fn run_check(plan: &Plan, check: &Check, fixture: &Fixture, session: &mut Session) -> Outcome {
    let mut runs = plan.repeat.max(1);
    // A server someone else runs cannot be restarted: its cache would
    // make a second stage-4 run prove nothing.
    if plan.addr.is_some() && check.stage == 4 {
        runs = 1;
    }
    let mut last = Outcome::Skip("not run".into());
    for run in 1..=runs {
        if run > 1 {
            if let Err(err) = fixture.reset() {
                return Outcome::Skip(format!("cannot restore the test files for run {run}: {err:#}"));
            }
            if plan.addr.is_none() {
                session.current = None; // stopped: `ready` starts a new one
            }
        }
        if let Err(outcome) = ready(plan, check, fixture, session) {
            return outcome;
        }
        let target = session.current.as_mut().expect("readied above");
        let sampler = (plan.single_thread && check.stage == 2 && target.is_local())
            .then(|| target.pid().and_then(|pid| mechanism::Sampler::start(pid, target.addr.port())));
        let mut ctx = Ctx { target, fixture, stretch: plan.stretch, reference: plan.reference.clone() };
        last = (check.run)(&mut ctx);
        if let Some(sampler) = sampler {
            last = single_thread_verdict(last, sampler.map(mechanism::Sampler::finish));
        }
        if let Outcome::Fail(failure) = &mut last {
            // A crash explains itself better than any symptom: a Rust
            // panic (a handout's todo!() among them), or any last words.
            if let Some(words) = last_words(&ctx.target.final_log()) {
                failure.got.push_str(&format!(" (the server said: {words})"));
            }
            let (addr, local) = (ctx.target.addr, ctx.target.is_local());
            failure.replay = failure.request.as_deref().map(|request| match (&plan.replay_via, local) {
                (Some(via), true) => report::replay_starting(request, via, check.setup).into(),
                _ => report::replay_line(request, addr).into(),
            });
            if runs > 1 {
                failure.got.push_str(&format!(" (run {run} of {runs})"));
            }
        }
        session.event = after_check(plan, check, session);
        if let (Outcome::Fail(failure), Some(event)) = (&mut last, &session.event) {
            failure.got.push_str(&format!(" ({event})"));
        }
        if !matches!(last, Outcome::Pass(_)) {
            break;
        }
    }
    if let (Outcome::Pass(Some(note)), true) = (&mut last, runs > 1) {
        note.push_str(&format!(" (the last of {runs} runs, all passed)"));
    }
    last
}

/// A stage-2 test's outcome when the course asks for one thread: a pass
/// served by more than one thread (or process) fails, saying so. `peak`
/// is `None` where threads cannot be counted (then the test stands, with
/// a note).
fn single_thread_verdict(outcome: Outcome, peak: Option<Option<mechanism::Peak>>) -> Outcome {
    match (outcome, peak) {
        (Outcome::Pass(_), None) => {
            Outcome::Pass(Some("threads not counted: that needs /proc (Linux); the behaviour alone was graded".into()))
        }
        (Outcome::Pass(note), Some(Some(peak))) if peak.threads > 1 => Outcome::Fail(Failure {
            sent: "the test's clients, while the grader counted the server's threads every half millisecond".into(),
            expected: "every client served by one thread (the course asks for a single-threaded loop: \
                       [mechanism] stage2 = \"single-thread\")"
                .into(),
            got: format!(
                "{} at once{}",
                report::plural(peak.threads as u64, "thread"),
                if peak.processes > 1 { format!(", in {} processes", peak.processes) } else { String::new() }
            ) + &note.map(|note| format!(" ({note})")).unwrap_or_default(),
            hint: "wait for every client in one loop (select/poll/epoll over non-blocking sockets): no thread or \
                   process per client, no thread pool",
            request: None,
            replay: None,
        }),
        (Outcome::Pass(note), Some(Some(peak))) => {
            let counted = format!("one thread served every client (counted: {})", peak.threads);
            Outcome::Pass(Some(note.map_or(counted.clone(), |note| format!("{note}; {counted}"))))
        }
        (outcome, _) => outcome,
    }
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
/// and the message on the next line), or the last `TODO:` line (a C lab's
/// stand-in says which part is not written), in one line.
fn last_words(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let at = lines.iter().rposition(|line| line.contains("panicked at") || line.contains("TODO: "))?;
    let mut words = lines[at].trim().to_string();
    let panicked = lines[at].contains("panicked at");
    if let Some(next) = lines.get(at + 1).filter(|l| panicked && !l.trim().is_empty() && !l.starts_with("note:")) {
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
                "needs a server started with {}; the one at --addr runs with {setup}",
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
    match Target::launch(&plan.command, &fixture.root(), check.setup, patience, &plan.launch) {
        Ok(target) => {
            *current = Some(target);
            Ok(())
        }
        Err(err)
            if err.downcast_ref::<target::CannotSpawn>().is_some() || err.downcast_ref::<NotGradable>().is_some() =>
        {
            session.cannot_run = Some(err);
            Err(Outcome::Skip("grading cannot run".into()))
        }
        Err(err) if machine::fault_in(&format!("{err:#}")).is_some() => {
            session.cannot_run = machine::fault_in(&format!("{err:#}")).map(anyhow::Error::new);
            Err(Outcome::Skip("not gradable here".into()))
        }
        Err(err) => {
            let failure = Failure {
                sent: format!("(start, with {}) {}", check.setup, plan.command.join(" ")),
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
        let c = "listening on 127.0.0.1:1\nstage3: TODO: respond(), a request answered is not written yet\n";
        assert_eq!(last_words(c).unwrap(), "stage3: TODO: respond(), a request answered is not written yet");
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
