//! The report in the formats course platforms read, each with the fields
//! the platform documents, and each marking a run the machine could not
//! grade ([`super::machine::NotGradable`]) as the platform's error rather
//! than a score of 0:
//!
//! | `--format` | where it goes | not gradable |
//! |---|---|---|
//! | `prairielearn` | `/grade/results/results.json`: `gradable`, `score` in 0..1, `message`, `output`, `tests[]` with `name`, `description`, `points`, `max_points`, `message`, `output`; at most 1 MB | `"gradable": false` |
//! | `autolab` | stdout, whose last line is `{"scores": {...}}` (one score per stage), after a `{"_presentation": "semantic", ...}` line | no `scores` line: the job errors |
//! | `classroom` | a step output the GitHub Classroom reporter decodes: base64 of `{"version": 1, "status", "max_score", "tests": [{"name", "status", "score", "message"}]}` | `"status": "error"`, `max_score` 0 (no points are sent) |
//! | `codegrade` | a Custom Test's structured output (fd 3): `{"tag": "points", "points": "S/M"}` | nothing on fd 3, exit 3: the step errors |
//!
//! Gradescope's `results.json` and JUnit XML are in [`super::report`].

use base64::Engine as _;
use serde_json::{json, Value};

use super::report::{Report, Status};

/// PrairieLearn reads at most this much of `results.json`.
const PRAIRIELEARN_MAX_BYTES: usize = 1_000_000;

/// Most bytes of one test's `output` in PrairieLearn's results (a failure
/// quotes what the server sent, which may be large).
const PRAIRIELEARN_TEST_OUTPUT_BYTES: usize = 8 * 1024;

/// `text` cut to at most `max` bytes, at a character boundary, saying so.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes cut)", &text[..end], text.len() - end)
}

/// PrairieLearn's external grader `results.json`.
pub fn prairielearn(report: &Report) -> String {
    if let Some(why) = &report.not_gradable {
        return json!({ "gradable": false, "message": why.to_string() }).to_string();
    }
    let mut output_bytes = PRAIRIELEARN_TEST_OUTPUT_BYTES;
    loop {
        let tests: Vec<Value> = report
            .results
            .iter()
            .map(|r| {
                let skipped = r.status == Status::Skipped;
                json!({
                    "name": r.name,
                    "description": r.description,
                    "points": r.points,
                    "max_points": if skipped { 0 } else { r.max },
                    "message": match r.status {
                        Status::Passed => "passed".to_string(),
                        Status::Failed => format!("failed: {}", r.message.lines().next().unwrap_or_default()),
                        Status::Skipped => format!("not run: {}", r.message),
                    },
                    "output": cut(&report.test_output(r), output_bytes),
                })
            })
            .collect();
        let max = report.max();
        let score = if max == 0 { 0.0 } else { f64::from(report.score()) / f64::from(max) };
        let results = json!({
            "gradable": true,
            "score": score,
            "message": format!("score: {}/{}", report.score(), max),
            "output": cut(&report.text(), output_bytes * 4),
            "tests": tests,
        })
        .to_string();
        if results.len() <= PRAIRIELEARN_MAX_BYTES || output_bytes < 64 {
            return results;
        }
        output_bytes /= 4;
    }
}

/// The stages of a report, in order.
fn stages(report: &Report) -> Vec<u8> {
    let mut stages: Vec<u8> = report.results.iter().map(|r| r.stage).collect();
    stages.dedup();
    stages
}

/// Autolab's autograder output: the feedback, then a `_presentation`
/// line (each test passed or not, with its reason as the hint), then the
/// last line, the scores Autolab records: one per stage, keyed `stage1`,
/// `stage2`, ... (the assessment's problems carry those names).
pub fn autolab(report: &Report) -> String {
    if let Some(why) = &report.not_gradable {
        // No scores line: Autolab reports the autograder as failed.
        return format!("{why}\n");
    }
    let stage_names: Vec<String> = stages(report).iter().map(|stage| format!("stage{stage}")).collect();
    let mut presentation = serde_json::Map::new();
    presentation.insert("_presentation".into(), json!("semantic"));
    presentation.insert("stages".into(), json!(stage_names));
    let mut scores = serde_json::Map::new();
    for (stage, name) in stages(report).into_iter().zip(&stage_names) {
        let mut tests = serde_json::Map::new();
        for r in report.results.iter().filter(|r| r.stage == stage && r.status != Status::Skipped) {
            let mut entry = json!({ "passed": r.status == Status::Passed });
            if r.status == Status::Failed {
                entry["hint"] = json!(report.test_output(r));
            }
            tests.insert(r.name.to_string(), entry);
        }
        presentation.insert(name.clone(), Value::Object(tests));
        let points: u32 = report.results.iter().filter(|r| r.stage == stage).map(|r| r.points).sum();
        scores.insert(name.clone(), json!(points));
    }
    format!("{}{}\n{}\n", report.text(), Value::Object(presentation), json!({ "scores": scores }))
}

/// The GitHub Classroom runner result the autograding reporter reads
/// (`<RUNNER>_RESULTS`), base64-encoded.
pub fn classroom(report: &Report) -> String {
    let result = match &report.not_gradable {
        // max_score 0: the reporter sends no points for it, and the
        // "error" status fails the check run.
        Some(why) => json!({
            "version": 1,
            "status": "error",
            "max_score": 0,
            "tests": [{ "name": "grading", "status": "error", "score": 0, "message": why.to_string() }],
        }),
        None => {
            let tests: Vec<Value> = report
                .results
                .iter()
                .filter(|r| r.status != Status::Skipped)
                .map(|r| {
                    let message = if r.status == Status::Failed { report.test_output(r) } else { r.message.clone() };
                    json!({
                        "name": r.name,
                        "status": if r.status == Status::Passed { "pass" } else { "fail" },
                        "score": r.points,
                        "message": message,
                    })
                })
                .collect();
            json!({
                "version": 1,
                "status": if report.failed().is_empty() { "pass" } else { "fail" },
                "max_score": report.max(),
                "tests": tests,
            })
        }
    };
    base64::engine::general_purpose::STANDARD.encode(result.to_string())
}

/// CodeGrade's structured output for a Custom Test: the points as a
/// fraction. The report itself goes to stderr for the step's log.
pub fn codegrade(report: &Report) -> Option<String> {
    if report.not_gradable.is_some() {
        return None;
    }
    Some(json!({ "tag": "points", "points": format!("{}/{}", report.score(), report.max()) }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_is_cut_at_a_character_boundary() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééé", 3), "é... (4 bytes cut)");
    }
}
