//! The student handouts (`cargo xtask handout --stage N`), checked from
//! the student's side for every stage: nothing in the handout answers the
//! stage or a later one (each of their exercises is a stub, no solution
//! file ships); the front page's commands run as written inside it; its
//! grade fails exactly the tests of the missing parts, with the exercise's
//! text; and with the reference's code of the stage put back, the same
//! commands give full marks and the stage before still passes. Handouts share one target
//! directory (`target/handouts`, linked as each handout's `target`), so each
//! costs one build of the kit's own crates.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::grader::{grade, Graded};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Writes the stage's handout into `dir/handout` with `cargo xtask`, and
/// links its `target` to the handouts' shared one.
fn make_handout(stage: u8, dir: &Path) -> PathBuf {
    let handout = dir.join("handout");
    let made = cargo()
        .args(["run", "--quiet", "--package", "xtask", "--", "handout", "--stage", &stage.to_string(), "--out"])
        .arg(&handout)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(made.status.success(), "xtask handout --stage {stage}: {}", String::from_utf8_lossy(&made.stderr));
    let listed = String::from_utf8_lossy(&made.stdout);
    assert!(listed.contains(&format!("stage {stage} handout")), "the exercises are listed:\n{listed}");
    let shared = repo().join("target/handouts");
    std::fs::create_dir_all(&shared).unwrap();
    std::os::unix::fs::symlink(&shared, handout.join("target")).unwrap();
    handout
}

/// `// handout: stage M: message` lines of the reference's sources, as
/// (file, stage, message).
fn reference_exercises() -> Vec<(PathBuf, u8, String)> {
    let mut found = Vec::new();
    let mut stack = vec![repo().join("src"), repo().join("client/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (at, line) in lines.iter().enumerate() {
                let Some(rest) = line.trim().strip_prefix("// handout: stage ") else { continue };
                let (stage, message) = rest.split_once(':').unwrap();
                // A marker goes on over lines of `//` and two spaces.
                let mut message = message.trim().to_string();
                for next in lines[at + 1..].iter().map_while(|l| l.trim().strip_prefix("//  ")) {
                    message = format!("{message} {}", next.trim());
                }
                let file = path.strip_prefix(repo()).unwrap().to_path_buf();
                found.push((file, stage.parse().unwrap(), message));
            }
        }
    }
    found
}

/// Nothing in the stage-`stage` handout answers it or a later stage.
fn assert_nothing_answers(stage: u8, handout: &Path) {
    let exercises = reference_exercises();
    for (file, of, message) in &exercises {
        let text = std::fs::read_to_string(handout.join(file)).unwrap();
        let stub = format!("todo!(r#\"stage {of}: {message}\"#)");
        let stand_in = format!("// A stand-in until stage {of}, not the exercise");
        let cut = text.contains(&stub) || (*of > stage && text.contains(&stand_in));
        assert_eq!(cut, *of >= stage, "stage {stage} handout, {}: stage {of}'s exercise", file.display());
    }
    assert!((1..=6).all(|s| exercises.iter().any(|(_, of, _)| *of == s)), "every stage has an exercise");
    for solution in ["tests/grader", "docs/instructors.md"] {
        assert!(!handout.join(solution).exists(), "stage {stage} handout ships {solution}");
    }
    for chapter in std::fs::read_dir(handout.join("docs/guide")).unwrap() {
        let text = std::fs::read_to_string(chapter.unwrap().path()).unwrap();
        for later in stage..=6 {
            assert!(!text.contains(&format!("<!-- handout: stage {later} answer")), "a guide answer stayed");
        }
        assert!(!text.contains("cargo xtask handout"), "the instructors' commands stayed");
    }
}

/// The `sh` lines of the handout's front page.
fn front_page_commands(handout: &Path) -> Vec<String> {
    let page = std::fs::read_to_string(handout.join("README.md")).unwrap();
    let mut lines = Vec::new();
    let mut inside = false;
    for line in page.lines() {
        match (inside, line.trim()) {
            (false, "```sh") => inside = true,
            (true, "```") => inside = false,
            (true, command) if !command.is_empty() => lines.push(command.to_string()),
            _ => {}
        }
    }
    assert!(!lines.is_empty(), "the front page shows its commands");
    lines
}

/// Runs one front-page line as written, in bash, inside the handout.
fn run_as_written(handout: &Path, line: &str) -> Graded {
    let output = Command::new("bash").args(["-c", line]).current_dir(handout).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Graded { output, text }
}

fn command<'a>(server: &'a str, model: &'a str) -> Vec<&'a str> {
    vec![server, "--model", model, "--port", "{port}", "--root", "{root}", "--read-delay-ms", "{delay}"]
}

/// One stage's handout, and what its grade must say.
struct Case {
    stage: u8,
    /// A model and the stage before, which the handout with the reference's
    /// code put back passes in full.
    still_works: Option<(&'static str, &'static str)>,
    /// The tests each front-page grade must fail, and no others.
    missing: &'static [&'static str],
}

const STAGE_3_TESTS: &[&str] = &[
    "files.small",
    "files.empty",
    "files.one_mib",
    "files.64_mib",
    "files.spaces",
    "files.two_dots",
    "files.nested",
    "files.dot_components",
    "files.empty_components",
    "files.symlink_inside",
    "files.missing",
    "files.directory",
    "files.fifo",
    "sandbox.dotdot",
    "sandbox.absolute",
    "sandbox.symlinks",
    "sandbox.control_bytes",
    "sandbox.hidden",
    "sandbox.overlong",
    "protocol.crlf",
    "protocol.line_limit",
    "protocol.line_limit_split",
    "protocol.pipelined",
    "protocol.dribbled",
    "protocol.slow_reader",
    "resources.no_fd_leak",
];

#[test]
fn each_stage_handout_answers_nothing_and_grades_as_its_front_page_says() {
    let scratch = tempfile::tempdir().unwrap();
    let case = |stage, still_works, missing| Case { stage, still_works, missing };
    let cases = [
        case(1, None, &["time.one_line", "time.many_clients"][..]),
        case(
            2,
            Some(("iterative", "1")),
            &[
                "concurrency.stalled_client",
                "concurrency.many_clients",
                "concurrency.large_reply",
                "concurrency.stalled_reader",
            ],
        ),
        case(3, Some(("select", "2")), STAGE_3_TESTS),
        case(4, Some(("event", "3")), &["async.overlap", "async.cached_while_pending", "async.wakeup"]),
        case(
            5,
            Some(("event-async", "4")),
            &["cache.fresh_after_sighup", "cache.sighup_logged", "signals.sighup_storm"],
        ),
        case(6, Some(("event-async", "5")), &[]),
    ];
    for Case { stage, still_works, missing } in cases {
        let dir = scratch.path().join(format!("stage-{stage}"));
        std::fs::create_dir_all(&dir).unwrap();
        let handout = make_handout(stage, &dir);
        assert_nothing_answers(stage, &handout);
        let commands = front_page_commands(&handout);
        let todo = format!("not yet implemented: stage {stage}: ");
        let mut graded_models = 0;
        for line in &commands {
            let ran = run_as_written(&handout, line);
            if line.starts_with("cargo build") {
                assert!(ran.output.status.success(), "stage {stage} handout: `{line}` fails:\n{}", ran.text);
            } else if line.contains(" grade ") {
                // files.unreadable fails too where the grader is not root (as root it is skipped).
                let failed: Vec<String> = ran.failed().into_iter().filter(|name| name != "files.unreadable").collect();
                assert_eq!(failed, missing, "stage {stage} handout: `{line}`:\n{}", ran.text);
                assert!(ran.text.contains(&todo), "stage {stage}: the report shows the exercise:\n{}", ran.text);
                graded_models += 1;
            } else if line.starts_with("cargo test") {
                assert!(!ran.output.status.success(), "stage {stage}: `{line}` fails until written:\n{}", ran.text);
                assert!(ran.text.contains(&todo), "stage {stage}: `{line}` shows the exercise:\n{}", ran.text);
            } else {
                panic!("stage {stage}: the front page's `{line}` is not checked here");
            }
        }
        assert!(graded_models >= 1 || stage == 6, "stage {stage}: the front page grades the server");

        // The reference's code put back (the files of the stage's
        // exercises, written now, so newer than the last build): the same
        // commands give full marks, and what the stage before built works.
        for (file, of, _) in reference_exercises() {
            if of == stage {
                std::fs::write(handout.join(&file), std::fs::read(repo().join(&file)).unwrap()).unwrap();
            }
        }
        for line in &commands {
            let ran = run_as_written(&handout, line);
            assert!(ran.output.status.success(), "stage {stage}, the reference put back: `{line}`:\n{}", ran.text);
            if line.contains(" grade ") {
                let (score, max) = ran.score();
                assert_eq!(score, max, "stage {stage}, the reference put back: `{line}`:\n{}", ran.text);
            }
        }
        if let Some((model, stages)) = still_works {
            let server = handout.join("target/debug/server").display().to_string();
            let graded = grade(&["--stages", stages, "--stretch", "2"], &command(&server, model));
            let (score, max) = graded.score();
            assert_eq!(score, max, "stage {stage} handout, what the stage before built:\n{}", graded.text);
        }
    }
}

#[test]
fn a_handout_refuses_to_be_cut_again_and_builds_its_own_tests() {
    let scratch = tempfile::tempdir().unwrap();
    let handout = make_handout(1, scratch.path());
    let nested = cargo()
        .args(["run", "--quiet", "--package", "xtask", "--", "handout", "--stage", "1"])
        .current_dir(&handout)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&nested.stderr);
    assert!(!nested.status.success() && said.contains("this is the stage-1 handout"), "{said}");
    assert!(!handout.join("handout").exists(), "nothing was written inside the handout");
    // The student's own test suite compiles: nothing left in it calls what
    // the handout leaves out (the Python solution and its helpers).
    let built = cargo().args(["test", "--workspace", "--no-run", "--quiet"]).current_dir(&handout).output().unwrap();
    assert!(built.status.success(), "the handout's tests do not build:\n{}", String::from_utf8_lossy(&built.stderr));
}
