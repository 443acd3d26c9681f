//! The grader's report: a points table where every failure is explained,
//! JSON for a course's autograder, a CSV row for a class, and a log file
//! per failing exchange.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::checks::{Check, Failure, Outcome};

/// How a test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Full points.
    Passed,
    /// No points.
    Failed,
    /// Not run here; counts towards neither score nor maximum.
    Skipped,
}

/// One test's line in the report.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// Test name.
    pub name: &'static str,
    /// Its stage.
    pub stage: u8,
    /// What it proves.
    pub description: &'static str,
    /// Points earned.
    pub points: u32,
    /// Points it is worth.
    pub max: u32,
    /// How it ended.
    pub status: Status,
    /// A measurement, the reason it was skipped, or the failure in one line.
    pub message: String,
    /// The whole failure, for the details and the log.
    pub failure: Option<Failure>,
    /// What happened to the server during this test, if anything: it died
    /// (and of what), or it stopped answering; either way it was restarted.
    pub server_event: Option<String>,
}

impl TestResult {
    /// The result of running `check`, worth `max` points.
    pub fn new(check: &Check, max: u32, outcome: Outcome) -> TestResult {
        let (status, points, message, failure) = match outcome {
            Outcome::Pass(note) => (Status::Passed, max, note.unwrap_or_default(), None),
            Outcome::Fail(failure) => (Status::Failed, 0, failure.got.clone(), Some(failure)),
            Outcome::Skip(why) => (Status::Skipped, 0, why, None),
        };
        TestResult {
            name: check.name,
            stage: check.stage,
            description: check.description,
            points,
            max,
            status,
            message,
            failure,
            server_event: None,
        }
    }
}

/// Everything the grader found.
#[derive(Debug)]
pub struct Report {
    /// One entry per test, in order.
    pub results: Vec<TestResult>,
    /// The server was someone else's (`--addr`): signal tests were skipped.
    pub remote: bool,
    /// What the last server wrote (truncated), for the logs.
    pub server_log: String,
}

/// `1 point`, `2 points`.
pub fn plural(count: impl Into<u64>, noun: &str) -> String {
    let count = count.into();
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// The stages' titles.
fn stage_title(stage: u8) -> &'static str {
    match stage {
        1 => "the time service",
        2 => "many clients at once",
        3 => "files, safely",
        4 => "asynchronous reads",
        5 => "the cache and signals",
        6 => "the measurement",
        _ => "",
    }
}

impl Report {
    /// Points earned.
    pub fn score(&self) -> u32 {
        self.results.iter().map(|r| r.points).sum()
    }

    /// Points of the tests that ran.
    pub fn max(&self) -> u32 {
        self.results.iter().filter(|r| r.status != Status::Skipped).map(|r| r.max).sum()
    }

    /// Names of the failed tests.
    pub fn failed(&self) -> Vec<&'static str> {
        self.results.iter().filter(|r| r.status == Status::Failed).map(|r| r.name).collect()
    }

    /// The table a person reads.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut stage = 0;
        for result in &self.results {
            if result.stage != stage {
                stage = result.stage;
                let _ = writeln!(out, "stage {stage}: {}", stage_title(stage));
            }
            let mark = match result.status {
                Status::Passed => "ok  ",
                Status::Failed => "FAIL",
                Status::Skipped => "skip",
            };
            let _ = writeln!(
                out,
                "  [{mark}] {:<28} {:>2}/{:<2} {}",
                result.name, result.points, result.max, result.description
            );
            if !result.message.is_empty() && result.status != Status::Failed {
                let _ = writeln!(out, "         {}", result.message);
            }
            if let Some(event) = &result.server_event {
                let _ = writeln!(out, "         ! {event}");
            }
        }
        for result in self.results.iter().filter(|r| r.status == Status::Failed) {
            let failure = result.failure.as_ref().expect("a failed test has a failure");
            let _ = writeln!(
                out,
                "\nFAILED {} (stage {}, {}): {}",
                result.name,
                result.stage,
                plural(result.max, "point"),
                result.description
            );
            let _ = writeln!(out, "  sent:     {}", failure.sent);
            let _ = writeln!(out, "  expected: {}", failure.expected);
            let _ = writeln!(out, "  got:      {}", failure.got);
            let _ = writeln!(out, "  hint:     {}", failure.hint);
        }
        let skipped: u32 = self.results.iter().filter(|r| r.status == Status::Skipped).map(|r| r.max).sum();
        let _ = write!(out, "\nscore: {}/{}", self.score(), self.max());
        if skipped > 0 {
            let _ = write!(out, " ({} not tested", plural(skipped, "point"));
            if self.remote {
                out.push_str(": signal and fd tests need a server the grader starts");
            }
            out.push(')');
        }
        out.push('\n');
        out
    }

    /// The report as JSON: `{"score", "max", "tests": [...]}`.
    pub fn json(&self) -> String {
        let tests: Vec<String> = self
            .results
            .iter()
            .map(|r| {
                format!(
                    "{{\"name\":{},\"stage\":{},\"points\":{},\"max\":{},\"passed\":{},\"skipped\":{},\"message\":{}}}",
                    crate::json::string(r.name),
                    r.stage,
                    r.points,
                    r.max,
                    r.status == Status::Passed,
                    r.status == Status::Skipped,
                    crate::json::string(&r.message),
                )
            })
            .collect();
        format!("{{\"score\":{},\"max\":{},\"tests\":[{}]}}", self.score(), self.max(), tests.join(","))
    }

    /// Appends `label,score,max,failed tests` to a class's CSV file.
    pub fn append_csv(&self, path: &Path, label: &str) -> Result<()> {
        use std::io::Write;
        let new = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if new {
            writeln!(file, "submission,score,max,failed")?;
        }
        let label = label.replace([',', '\n'], " ");
        writeln!(file, "{label},{},{},{}", self.score(), self.max(), self.failed().join(" "))?;
        Ok(())
    }

    /// Writes one log file per failed test into `dir`: the exchange, the
    /// hint, and what the server printed.
    pub fn write_logs(&self, dir: &Path) -> Result<usize> {
        let failed: Vec<&TestResult> = self.results.iter().filter(|r| r.status == Status::Failed).collect();
        if failed.is_empty() {
            return Ok(0);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for result in &failed {
            let failure = result.failure.as_ref().expect("a failed test has a failure");
            let tail_start = self.server_log.len().saturating_sub(16 * 1024);
            let tail = self.server_log.get(tail_start..).unwrap_or_default();
            let text = format!(
                "{} (stage {}): {}\n\nsent:     {}\nexpected: {}\ngot:      {}\nhint:     {}\n\n--- the server's output (last 16 KiB) ---\n{tail}",
                result.name, result.stage, result.description, failure.sent, failure.expected, failure.got, failure.hint
            );
            let path = dir.join(format!("{}.log", result.name));
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(failed.len())
    }
}
