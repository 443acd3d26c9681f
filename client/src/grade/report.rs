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
    /// A failure's one-line shell command that sends the same bytes.
    pub replay: Option<String>,
    /// Who sees it on a course's autograder: `visible` (the default),
    /// `hidden`, `after_due_date`, `after_published` (Gradescope's terms).
    pub visibility: String,
}

impl TestResult {
    /// The result of running `check`, worth `max` points.
    pub fn new(check: &Check, max: u32, outcome: Outcome) -> TestResult {
        let (status, points, message, failure) = match outcome {
            Outcome::Pass(note) => (Status::Passed, max, note.unwrap_or_default(), None),
            Outcome::Fail(failure) => (Status::Failed, 0, failure.got.clone(), Some(failure)),
            Outcome::Skip(why) => (Status::Skipped, 0, why, None),
        };
        let replay = failure.as_ref().and_then(|f| f.replay.as_deref().map(String::from));
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
            replay,
            visibility: "visible".into(),
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
    /// Set when the machine, not the submission, was at fault: no score.
    pub not_gradable: Option<super::machine::NotGradable>,
}

/// `text` escaped for XML text and attributes; characters XML 1.0 cannot
/// hold at all (control bytes a server may send) become U+FFFD.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' => out.push(c),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A shell line that sends `request` to `addr` on one connection, for a
/// person to paste: `printf 'small.txt\n' | nc 127.0.0.1 7070`. A long run
/// of one or two repeated bytes is written as a loop (a 5000-byte line
/// stays one short line); bytes the shell or printf would change are
/// escaped as octal.
pub fn replay_line(request: &[u8], addr: std::net::SocketAddr) -> String {
    let nc = format!("nc {} {}", addr.ip(), addr.port());
    match sender(request) {
        Some(printf) => format!("{printf} | {nc}"),
        None => format!("{nc} </dev/null"),
    }
}

/// How a replay line starts the server itself: the grader's own `client`
/// (as it was invoked), the server command, and the folder it runs in.
#[derive(Debug, Clone)]
pub struct ReplayVia {
    /// The client program, as typed (`client`, `./target/release/client`).
    pub client: String,
    /// The server command template.
    pub command: Vec<String>,
    /// The folder the command runs in, if not the current one.
    pub workdir: Option<std::path::PathBuf>,
}

/// A line that starts the server as the grader did (a new root of the
/// grader's files, a free port, `setup`), sends `request` on one
/// connection, prints what comes back, and stops it: it works after the
/// grader's own server is gone, where an `nc` line to its port would not.
pub fn replay_starting(request: &[u8], via: &ReplayVia, setup: super::target::Setup) -> String {
    let (service, delay) = match setup {
        super::target::Setup::Time => ("time", 0),
        super::target::Setup::Files { delay_ms } => ("file", delay_ms),
    };
    let command: Vec<String> = via.command.iter().map(|arg| super::bundle::shell_quote(arg)).collect();
    let cd = via
        .workdir
        .as_ref()
        .map(|dir| format!("cd {} && ", super::bundle::shell_quote(&dir.display().to_string())))
        .unwrap_or_default();
    let grader = format!(
        "{} grade --replay --service {service} --delay {delay} -- {}",
        super::bundle::shell_quote(&via.client),
        command.join(" ")
    );
    match sender(request) {
        Some(printf) => format!("{cd}{printf} | {grader}"),
        None => format!("{cd}{grader} </dev/null"),
    }
}

/// A shell command that writes `request` to stdout (`None` when empty).
/// A long run of one or two repeated bytes is written as a loop (a
/// 5000-byte line stays one short line); bytes the shell or printf would
/// change are escaped as octal.
fn sender(request: &[u8]) -> Option<String> {
    if request.is_empty() {
        return None;
    }
    // The longest leading run of a 1- or 2-byte unit repeated at least 8 times.
    let run = [1, 2]
        .into_iter()
        .filter(|&unit| request.len() >= unit)
        .map(|unit| {
            let repeats = request.chunks(unit).take_while(|chunk| *chunk == &request[..unit]).count();
            (unit, repeats)
        })
        .max_by_key(|&(unit, repeats)| (unit * repeats, std::cmp::Reverse(unit)))
        .filter(|(_, repeats)| *repeats >= 8);
    Some(match run {
        Some((unit, repeats)) => format!(
            "{{ printf '{}%.0s' $(seq {repeats}); printf '{}'; }}",
            printf_escape(&request[..unit]),
            printf_escape(&request[unit * repeats..])
        ),
        None => format!("printf '{}'", printf_escape(request)),
    })
}

/// `bytes` for a single-quoted printf format: printable ASCII as is (`%`
/// doubled), `\n` `\r` `\t` by name, everything else (and `'`, `\`) in octal.
fn printf_escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b'%' => out.push_str("%%"),
            b'\'' | b'\\' => out.push_str(&format!("\\{b:03o}")),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out
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
    /// The report of a run the machine could not grade.
    pub fn not_gradable(why: super::machine::NotGradable) -> Report {
        Report { results: Vec::new(), remote: false, server_log: String::new(), not_gradable: Some(why) }
    }

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
        if let Some(why) = &self.not_gradable {
            return format!("{why}\n");
        }
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
            let _ = writeln!(out, "  replay:   {}", self.replay_of(result));
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

    /// What to paste to see a failure again by hand.
    pub fn replay_of(&self, result: &TestResult) -> String {
        result.replay.clone().unwrap_or_else(|| {
            "(no single request shows this one: run `client grade` with only this stage, and read the log)".into()
        })
    }

    /// The text of one test for a course tool: its note, or its failure in
    /// full with the replay line.
    pub fn test_output(&self, result: &TestResult) -> String {
        let mut out = String::new();
        if let Some(failure) = &result.failure {
            let _ = writeln!(out, "sent:     {}", failure.sent);
            let _ = writeln!(out, "expected: {}", failure.expected);
            let _ = writeln!(out, "got:      {}", failure.got);
            let _ = writeln!(out, "hint:     {}", failure.hint);
            let _ = writeln!(out, "replay:   {}", self.replay_of(result));
        } else if !result.message.is_empty() {
            let _ = writeln!(out, "{}", result.message);
        }
        if let Some(event) = &result.server_event {
            let _ = writeln!(out, "{event}");
        }
        out
    }

    /// Gradescope's `results.json` (its autograder specification): the
    /// top-level `score`, `output`, `visibility`, `stdout_visibility` and
    /// `tests`, each test with `name`, `number`, `score`, `max_score`,
    /// `status`, `output` and `visibility`. A skipped test is worth 0.
    pub fn gradescope(&self) -> String {
        use crate::json::string;
        if let Some(why) = &self.not_gradable {
            // Gradescope has no "not graded": an autograder that writes no
            // valid results fails visibly, and the staff can rerun it. A
            // score of 0 would be a grade.
            return format!("{{\"not_gradable\":{}}}", string(&why.to_string()));
        }
        let tests: Vec<String> = self
            .results
            .iter()
            .map(|r| {
                let max = if r.status == Status::Skipped { 0 } else { r.max };
                let status = if r.status == Status::Failed { "failed" } else { "passed" };
                let mut output = self.test_output(r);
                if r.status == Status::Skipped {
                    output = format!("not run: {}", r.message);
                }
                format!(
                    "{{\"name\":{},\"number\":{},\"score\":{},\"max_score\":{},\"status\":\"{status}\",\
                     \"output\":{},\"visibility\":{}}}",
                    string(&format!("{} ({})", r.name, r.description)),
                    string(&format!("{}.{}", r.stage, r.name)),
                    r.points,
                    max,
                    string(&output),
                    string(&r.visibility),
                )
            })
            .collect();
        let summary = format!("score: {}/{}", self.score(), self.max());
        format!(
            "{{\"score\":{},\"output\":{},\"visibility\":\"visible\",\"stdout_visibility\":\"hidden\",\"tests\":[{}]}}",
            self.score(),
            string(&summary),
            tests.join(",")
        )
    }

    /// JUnit XML (the schema Jenkins, GitLab and most CI read): one
    /// `<testsuite>` per stage, one `<testcase>` per test, a `<failure>`
    /// with the whole explanation, or `<skipped>`.
    pub fn junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        if let Some(why) = &self.not_gradable {
            // An error, not a failure: nothing of the submission was tested.
            let _ = write!(
                out,
                "<testsuites name=\"client grade\" tests=\"1\" failures=\"0\" errors=\"1\">\n  <testsuite \
                 name=\"grading\" tests=\"1\" failures=\"0\" errors=\"1\">\n    <testcase name=\"grading\" \
                 classname=\"machine\"><error message=\"{}\"/></testcase>\n  </testsuite>\n</testsuites>\n",
                xml(&why.to_string())
            );
            return out;
        }
        let count = |status| self.results.iter().filter(|r| r.status == status).count();
        let _ = writeln!(
            out,
            "<testsuites name=\"client grade\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
            self.results.len(),
            count(Status::Failed),
            count(Status::Skipped)
        );
        let mut stages: Vec<u8> = self.results.iter().map(|r| r.stage).collect();
        stages.dedup();
        for stage in stages {
            let results: Vec<&TestResult> = self.results.iter().filter(|r| r.stage == stage).collect();
            let of = |status| results.iter().filter(|r| r.status == status).count();
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
                xml(&format!("stage {stage}: {}", stage_title(stage))),
                results.len(),
                of(Status::Failed),
                of(Status::Skipped)
            );
            for r in results {
                let _ = write!(
                    out,
                    "    <testcase name=\"{}\" classname=\"stage{stage}\">",
                    // The name alone: CI keeps a test's history by its name,
                    // which a score in it would change from run to run.
                    xml(r.name)
                );
                match (&r.status, &r.failure) {
                    (Status::Failed, Some(failure)) => {
                        let _ = write!(
                            out,
                            "<failure message=\"{}\">{}</failure>",
                            xml(&failure.got),
                            xml(&self.test_output(r))
                        );
                    }
                    (Status::Skipped, _) => {
                        let _ = write!(out, "<skipped message=\"{}\"/>", xml(&r.message));
                    }
                    _ if !r.message.is_empty() => {
                        let _ = write!(out, "<system-out>{}</system-out>", xml(&r.message));
                    }
                    _ => {}
                }
                out.push_str("</testcase>\n");
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }

    /// The report as JSON: `{"score", "max", "tests": [...]}`; a run the
    /// machine could not grade is `{"gradable": false, "reason"}`.
    pub fn json(&self) -> String {
        if let Some(why) = &self.not_gradable {
            return format!("{{\"gradable\":false,\"reason\":{}}}", crate::json::string(&why.0));
        }
        let tests: Vec<String> = self
            .results
            .iter()
            .map(|r| {
                format!(
                    "{{\"name\":{},\"stage\":{},\"points\":{},\"max\":{},\"passed\":{},\"skipped\":{},\"message\":{},\
                     \"visibility\":{},\"replay\":{}}}",
                    crate::json::string(r.name),
                    r.stage,
                    r.points,
                    r.max,
                    r.status == Status::Passed,
                    r.status == Status::Skipped,
                    crate::json::string(&r.message),
                    crate::json::string(&r.visibility),
                    r.replay.as_deref().map_or("null".to_string(), crate::json::string),
                )
            })
            .collect();
        format!("{{\"score\":{},\"max\":{},\"tests\":[{}]}}", self.score(), self.max(), tests.join(","))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_one_line_to_paste() {
        let addr: std::net::SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert_eq!(replay_line(b"small.txt\n", addr), "printf 'small.txt\\n' | nc 127.0.0.1 7070");
        assert_eq!(replay_line(b"it's\0 100%\r\n", addr), "printf 'it\\047s\\000 100%%\\r\\n' | nc 127.0.0.1 7070");
        assert_eq!(replay_line(b"", addr), "nc 127.0.0.1 7070 </dev/null");
        let long = [vec![b'a'; 5000], b"\n".to_vec()].concat();
        assert_eq!(replay_line(&long, addr), "{ printf 'a%.0s' $(seq 5000); printf '\\n'; } | nc 127.0.0.1 7070");
    }

    #[test]
    fn xml_escapes_markup_and_drops_what_xml_cannot_hold() {
        assert_eq!(xml("<a href=\"x\">&'\u{1}"), "&lt;a href=&quot;x&quot;&gt;&amp;&apos;\u{FFFD}");
    }
}
