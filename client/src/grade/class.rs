//! `client class DIR`: a whole class in one command. Each folder of `DIR`
//! is a submission ([`super::submission`]): copied, built (several at once,
//! each under a time limit), then graded one after another (stage 4
//! measures time: two gradings at once would slow each other down).
//!
//! What it writes:
//!
//! * one CSV ([`ScoreSheet`]), written whole after every submission, so a
//!   regrade replaces it, with fixed columns: `label`, `score`, `max` (the
//!   same on every row: the points of the stages graded), one column per
//!   stage, the failed tests, and the reason for a 0 (a build that fails, a
//!   server that cannot start) or for no score at all (not gradable: the
//!   machine's fault, the score left empty);
//! * a folder per submission: `report.txt`, `report.json`, `build.log`,
//!   `grade-logs/` (each failing exchange) and `work/` (the built copy the
//!   replay lines start).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};

use super::machine::NotGradable;
use super::report::{Report, Status};
use super::submission::{self, Recipe};
use super::Plan;

/// One submission's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The submission's name (its folder's).
    pub label: String,
    /// Points earned; `None` when not gradable.
    pub score: Option<u32>,
    /// Points earned per stage, in the sheet's stage order.
    pub stages: Vec<Option<u32>>,
    /// The failed tests' names.
    pub failed: Vec<String>,
    /// Why it got 0 without being tested, or why it has no score.
    pub reason: String,
}

impl Row {
    /// The row of a graded report.
    pub fn graded(label: &str, report: &Report, stages: &[(u8, u32)]) -> Row {
        if let Some(why) = &report.not_gradable {
            return Row::not_gradable(label, why, stages.len());
        }
        let points = |stage: u8| report.results.iter().filter(|r| r.stage == stage).map(|r| r.points).sum();
        Row {
            label: label.to_string(),
            score: Some(report.score()),
            stages: stages.iter().map(|&(stage, _)| Some(points(stage))).collect(),
            failed: report.failed().iter().map(|name| name.to_string()).collect(),
            reason: start_failure(report).unwrap_or_default(),
        }
    }

    /// A row of 0 that was never tested, and why.
    pub fn zero(label: &str, reason: String, stages: usize) -> Row {
        Row { label: label.to_string(), score: Some(0), stages: vec![Some(0); stages], failed: Vec::new(), reason }
    }

    /// A row with no score: the machine could not grade.
    pub fn not_gradable(label: &str, why: &NotGradable, stages: usize) -> Row {
        Row {
            label: label.to_string(),
            score: None,
            stages: vec![None; stages],
            failed: Vec::new(),
            reason: why.to_string(),
        }
    }
}

/// When no server ever started, the reason (its first words), for the row.
fn start_failure(report: &Report) -> Option<String> {
    let failures: Vec<_> = report.results.iter().filter_map(|r| r.failure.as_ref()).collect();
    let failed_to_start = failures.iter().find(|f| f.sent.starts_with("(start"))?;
    let passed_any = report.results.iter().any(|r| r.status == Status::Passed);
    let why = submission::one_line(&failed_to_start.got);
    Some(if passed_any {
        format!("one set-up did not start: {why}")
    } else {
        format!("the server did not start: {why}")
    })
}

/// A class's CSV: one row per label, written whole, quoted by the `csv`
/// crate (a label may hold a comma, a quote, a newline).
#[derive(Debug)]
pub struct ScoreSheet {
    /// Each stage and the points it is worth.
    pub stages: Vec<(u8, u32)>,
    rows: BTreeMap<String, Row>,
}

impl ScoreSheet {
    /// An empty sheet for these stages.
    pub fn new(stages: Vec<(u8, u32)>) -> ScoreSheet {
        ScoreSheet { stages, rows: BTreeMap::new() }
    }

    /// The sheet at `path` with its rows, when it has these columns (a
    /// sheet of other stages is started again); a new sheet if none.
    pub fn load(path: &Path, stages: Vec<(u8, u32)>) -> Result<ScoreSheet> {
        let mut sheet = ScoreSheet::new(stages);
        let Ok(mut reader) = csv::Reader::from_path(path) else { return Ok(sheet) };
        if reader.headers()?.iter().collect::<Vec<_>>() != sheet.header() {
            return Ok(sheet);
        }
        let stage_count = sheet.stages.len();
        for record in reader.records() {
            let record = record.with_context(|| format!("{} is not a CSV of scores", path.display()))?;
            let field = |i: usize| record.get(i).unwrap_or_default().to_string();
            let number = |i: usize| field(i).parse::<u32>().ok();
            let row = Row {
                label: field(0),
                score: number(1),
                stages: (0..stage_count).map(|i| number(3 + i)).collect(),
                failed: field(3 + stage_count).split_whitespace().map(String::from).collect(),
                reason: field(4 + stage_count),
            };
            sheet.rows.insert(row.label.clone(), row);
        }
        Ok(sheet)
    }

    /// The columns.
    pub fn header(&self) -> Vec<String> {
        let stages = self.stages.iter().map(|(stage, _)| format!("stage{stage}"));
        ["label", "score", "max"]
            .map(String::from)
            .into_iter()
            .chain(stages)
            .chain(["failed".into(), "reason".into()])
            .collect()
    }

    /// The points of every stage graded: every row's `max`.
    pub fn max(&self) -> u32 {
        self.stages.iter().map(|(_, max)| max).sum()
    }

    /// Adds `row`, replacing the row of the same label.
    pub fn put(&mut self, row: Row) {
        self.rows.insert(row.label.clone(), row);
    }

    /// The rows, by label.
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.values()
    }

    /// Writes the whole sheet to `path` (through a temporary file, so a
    /// reader never sees half a sheet).
    pub fn write(&self, path: &Path) -> Result<()> {
        let partial = path.with_extension("csv.partial");
        {
            let mut writer =
                csv::Writer::from_path(&partial).with_context(|| format!("cannot write {}", partial.display()))?;
            writer.write_record(self.header())?;
            let number = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_default();
            for row in self.rows.values() {
                let mut record = vec![row.label.clone(), number(row.score), self.max().to_string()];
                record.extend(row.stages.iter().map(|&points| number(points)));
                record.push(row.failed.join(" "));
                record.push(row.reason.clone());
                writer.write_record(&record)?;
            }
            writer.flush()?;
        }
        std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// What `client class` was asked.
#[derive(Debug)]
pub struct ClassJob {
    /// The folder of submissions.
    pub dir: PathBuf,
    /// The CSV to write.
    pub csv: PathBuf,
    /// Where each submission's folder of reports goes.
    pub reports: PathBuf,
    /// Builds at once.
    pub jobs: usize,
    /// The course's defaults for `grade.toml`.
    pub defaults: Recipe,
    /// The grading plan shared by every submission (its command and
    /// working folder are each submission's).
    pub plan: Plan,
}

/// The submissions of `dir`: its folders, by name (hidden ones left out).
pub fn submissions(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let listed = std::fs::read_dir(dir).with_context(|| format!("cannot read the class folder {}", dir.display()))?;
    let mut found: Vec<(String, PathBuf)> = listed
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            (entry.path().is_dir() && !name.starts_with('.')).then(|| (name, entry.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Grades the class; calls `progress` with each row as it is written.
pub fn run(job: &ClassJob, mut progress: impl FnMut(&Row)) -> Result<ScoreSheet> {
    let submissions = submissions(&job.dir)?;
    anyhow::ensure!(!submissions.is_empty(), "{} has no submission folders", job.dir.display());
    std::fs::create_dir_all(&job.reports).with_context(|| format!("cannot create {}", job.reports.display()))?;
    let stages = job.plan.max_by_stage();
    let mut sheet = ScoreSheet::load(&job.csv, stages.clone())?;
    // Rows of folders no longer in the class go: the sheet is the class now.
    sheet.rows.retain(|label, _| submissions.iter().any(|(name, _)| name == label));
    let user = job.plan.launch.user.as_ref();
    if user.is_some() {
        open_path_to_others(&job.reports)?;
    }
    let folder = |label: &str| job.reports.join(label);

    // Builds, several at once: each worker takes the next submission.
    let next = AtomicUsize::new(0);
    let prepared: Mutex<BTreeMap<usize, Result<submission::Prepared, submission::Unbuildable>>> = Mutex::default();
    std::thread::scope(|scope| {
        for _ in 0..job.jobs.clamp(1, 64) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((label, dir)) = submissions.get(i) else { break };
                let out = folder(label);
                let result = clear_reports(&out)
                    .map_err(|err| submission::Unbuildable { reason: format!("{err:#}") })
                    .and_then(|()| {
                        let recipe = submission::recipe(dir, &job.defaults)?;
                        submission::prepare(
                            dir,
                            &out.join("work"),
                            &recipe,
                            user,
                            &out.join("build.log"),
                            Some(&job.plan.command),
                        )
                    });
                prepared.lock().unwrap_or_else(|p| p.into_inner()).insert(i, result);
            });
        }
    });
    let prepared = prepared.into_inner().unwrap_or_else(|p| p.into_inner());

    for (i, (label, _)) in submissions.iter().enumerate() {
        let out = folder(label);
        let row = match prepared.get(&i) {
            Some(Ok(ready)) => grade_one(job, label, ready, &out, &stages)?,
            Some(Err(unbuildable)) => {
                std::fs::write(out.join("report.txt"), format!("score: 0/{}\n{}\n", sheet.max(), unbuildable.reason))?;
                Row::zero(label, unbuildable.reason.clone(), stages.len())
            }
            None => Row::zero(label, "not prepared (a build worker failed)".into(), stages.len()),
        };
        progress(&row);
        sheet.put(row);
        sheet.write(&job.csv)?;
    }
    Ok(sheet)
}

/// Grades one built submission and writes its folder of reports.
fn grade_one(
    job: &ClassJob,
    label: &str,
    ready: &submission::Prepared,
    out: &Path,
    stages: &[(u8, u32)],
) -> Result<Row> {
    let mut plan = Plan::new(ready.command.clone(), job.plan.stages.clone());
    plan.stretch = job.plan.stretch;
    plan.repeat = job.plan.repeat;
    plan.stop_after_failures = job.plan.stop_after_failures;
    plan.points = job.plan.points.clone();
    plan.visibility = job.plan.visibility.clone();
    plan.reference = job.plan.reference.clone();
    plan.single_thread = job.plan.single_thread;
    plan.launch = super::target::Launch { user: job.plan.launch.user.clone(), workdir: Some(ready.workdir.clone()) };
    plan.replay_via = job.plan.replay_via.clone().map(|via| super::report::ReplayVia {
        command: ready.command.clone(),
        workdir: Some(ready.workdir.clone()),
        ..via
    });
    match super::grade(&plan) {
        Ok(report) => {
            std::fs::write(out.join("report.txt"), report.text())?;
            std::fs::write(out.join("report.json"), report.json())?;
            report.write_logs(&out.join("grade-logs"))?;
            Ok(Row::graded(label, &report, stages))
        }
        // The command cannot run at all: in a class, that is the
        // submission's (no such program after its build).
        Err(err) => {
            let reason = submission::one_line(&format!("{err:#}"));
            std::fs::write(out.join("report.txt"), format!("score: 0\n{reason}\n"))?;
            Ok(Row::zero(label, reason, stages.len()))
        }
    }
}

/// Removes last grading's reports from a submission's folder (a regrade
/// must not keep a failing exchange that no longer fails).
fn clear_reports(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for name in ["report.txt", "report.json", "build.log"] {
        let _ = std::fs::remove_file(out.join(name));
    }
    let logs = out.join("grade-logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs).with_context(|| format!("cannot clear {}", logs.display()))?;
    }
    Ok(())
}

/// Lets other users pass through `dir` and the folders above it (`o+x`,
/// which lists nothing): the work copies inside are the student user's.
fn open_path_to_others(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::fs::canonicalize(dir)?;
    for folder in dir.ancestors() {
        let mode = std::fs::metadata(folder)?.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode | 0o001))
                .with_context(|| format!("cannot let the student user pass through {}", folder.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sheet_quotes_what_needs_it_and_a_regrade_replaces_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.csv");
        let stages = vec![(1, 5), (2, 8)];
        let mut sheet = ScoreSheet::new(stages.clone());
        sheet.put(Row {
            label: "o\"brien, pat".into(),
            score: Some(7),
            stages: vec![Some(5), Some(2)],
            failed: vec!["concurrency.many_clients".into()],
            reason: String::new(),
        });
        sheet.put(Row::zero("zed", "the build `make` failed (exit status 2): x.c:1: error".into(), 2));
        sheet.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("label,score,max,stage1,stage2,failed,reason\n"), "{text}");
        assert!(text.contains("\"o\"\"brien, pat\",7,13,5,2,concurrency.many_clients,\n"), "{text}");
        // Loaded back, a row replaced: the file is written whole.
        let mut again = ScoreSheet::load(&path, stages).unwrap();
        again.put(Row::zero("zed", "fixed later".into(), 2));
        again.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("zed,0,13,0,0,,fixed later"), "{text}");
        assert!(text.contains("o\"\"brien"), "{text}");
    }
}
