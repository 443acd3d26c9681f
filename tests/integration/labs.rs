//! The labs (`labs/rust/`) and the handouts cut from them (`cargo xtask
//! lab --stage N`), checked from the outside: every lab program gets full
//! marks from `client grade` at its stage; every stage's handout builds with
//! the commands its README shows, run as written inside it; its grade fails
//! each of the stage's tests with a `todo!` text in the report; the
//! programs of the stage before, shipped complete, get full marks; and no
//! line of a cut region is left anywhere in it.
//!
//! Cost: the handouts are cut one after the other at one place,
//! `target/lab-handout-test/handout`, with one target directory
//! (`target/lab-handouts`, linked as the handout's `target`), so the grader
//! copied into each is built once and only the lab crate is rebuilt.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::grader::{grade, Graded};
use crate::support::{client_bin, LineClient, Server};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// A lab program of the workspace, built once (a no-op when up to date).
pub(crate) fn lab_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let built = cargo().args(["build", "--quiet", "-p", "labs", "--bins"]).current_dir(repo()).status().unwrap();
        assert!(built.success(), "cargo build -p labs failed");
    });
    client_bin().with_file_name(name)
}

/// Each lab program and the stage it meets.
const LABS: &[(&str, u8)] = &[
    ("stage1", 1),
    ("stage2-select", 2),
    ("stage2-epoll", 2),
    ("stage3", 3),
    ("stage4-threads", 4),
    ("stage4-aio", 4),
    ("stage5", 5),
];

/// The command that grades a program: every flag the assignment names.
fn command(program: &str) -> Vec<String> {
    [program, "--port", "{port}", "--root", "{root}", "--read-delay-ms", "{delay}"].map(String::from).to_vec()
}

/// Grades each `(program, stages)` at once, in threads.
fn grade_all(runs: &[(PathBuf, String)]) -> Vec<Graded> {
    std::thread::scope(|scope| {
        let graders: Vec<_> = runs
            .iter()
            .map(|(program, stages)| {
                scope.spawn(move || {
                    let command = command(&program.display().to_string());
                    let command: Vec<&str> = command.iter().map(String::as_str).collect();
                    grade(&["--stages", stages, "--stretch", "2"], &command)
                })
            })
            .collect();
        graders.into_iter().map(|grader| grader.join().unwrap()).collect()
    })
}

#[test]
fn each_lab_gets_full_marks_at_its_stage() {
    let runs: Vec<(PathBuf, String)> = LABS
        .iter()
        .map(|(name, stage)| {
            let stages: Vec<String> = (1..=*stage).map(|s| s.to_string()).collect();
            (lab_bin(name), stages.join(","))
        })
        .collect();
    for ((name, stage), graded) in LABS.iter().zip(grade_all(&runs)) {
        let (score, max) = graded.score();
        assert_eq!(score, max, "{name} at stage {stage}:\n{}", graded.text);
    }
}

#[test]
fn the_labs_keep_their_line_budgets() {
    // Non-blank lines before any test module: a listing read in one sitting.
    let budgets = [
        ("lib", 150),
        ("bin/stage1", 80),
        ("bin/stage2-select", 250),
        ("bin/stage2-epoll", 250),
        ("bin/stage3", 400),
        ("bin/stage4-aio", 500),
        ("bin/stage4-threads", 450),
        ("bin/stage5", 550),
    ];
    for (file, budget) in budgets {
        let text = std::fs::read_to_string(repo().join(format!("labs/rust/src/{file}.rs"))).unwrap();
        let lines = text.lines().take_while(|line| line.trim() != "#[cfg(test)]").filter(|l| !l.trim().is_empty());
        let count = lines.count();
        assert!(count <= budget, "labs/rust/src/{file}.rs has {count} lines, over its budget of {budget}");
    }
}

/// The source lines of the regions of `stageN*.rs`, the ones the rule
/// counts: neither blank, nor brackets only, nor an attribute, nor of two
/// words or fewer (`loop {`, `break;`).
fn cut_lines(stage: u8) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for entry in std::fs::read_dir(repo().join("labs/rust/src/bin")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(&format!("stage{stage}")) {
            continue;
        }
        let mut inside = false;
        for line in std::fs::read_to_string(&path).unwrap().lines().map(str::trim) {
            match line {
                "// lab:begin" => inside = true,
                "// lab:end" => inside = false,
                _ if !inside || line.starts_with("// lab:") => {}
                _ if !line.starts_with("#[") && words(line) > 2 => drop(lines.insert(line.to_string())),
                _ => {}
            }
        }
    }
    assert!(!lines.is_empty(), "stage {stage}'s programs mark their lessons");
    lines
}

/// Runs of letters, digits and underscores.
fn words(line: &str) -> usize {
    line.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|word| !word.is_empty()).count()
}

/// Where a cut line is found in the handout: any file, but in the kit's
/// own crates copied as they are (`client/`, `contract/`) only a line of
/// four words or more (shorter ones there are idioms, not copies).
fn leaks(handout: &Path, cut: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![handout.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(handout).unwrap().to_path_buf();
            if relative == Path::new("target") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let kit = relative.starts_with("client") || relative.starts_with("contract");
            for line in text.lines().map(str::trim).filter(|line| cut.contains(*line)) {
                if !kit || words(line) >= 4 {
                    found.push(format!("{}: {line}", relative.display()));
                }
            }
        }
    }
    found
}

/// The `sh` lines of the handout's README.
fn readme_commands(handout: &Path) -> Vec<String> {
    let page = std::fs::read_to_string(handout.join("README.md")).unwrap();
    let (mut lines, mut inside) = (Vec::new(), false);
    for line in page.lines() {
        match (inside, line.trim()) {
            (false, "```sh") => inside = true,
            (true, "```") => inside = false,
            (true, command) if !command.is_empty() => lines.push(command.to_string()),
            _ => {}
        }
    }
    lines
}

/// Runs one README line as written, in bash, inside the handout.
fn run_as_written(handout: &Path, line: &str) -> Graded {
    let output = Command::new("bash").args(["-c", line]).current_dir(handout).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Graded { output, text }
}

/// The names of the tests of `stage`, from `client grade --list`.
fn tests_of(stage: u8) -> BTreeSet<String> {
    let listed = Command::new(client_bin()).args(["grade", "--list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let tests: BTreeSet<String> = listed
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            (cells.len() > 2 && cells[0] == stage.to_string()).then(|| cells[2].to_string())
        })
        .collect();
    assert!(!tests.is_empty(), "`client grade --list` names stage {stage}'s tests:\n{listed}");
    tests
}

#[test]
fn each_stage_handout_builds_fails_its_stage_with_the_todo_text_and_leaks_no_cut_line() {
    let place = repo().join("target/lab-handout-test");
    let handout = place.join("handout");
    let shared_target = repo().join("target/lab-handouts");
    std::fs::create_dir_all(&shared_target).unwrap();
    for stage in 1..=5u8 {
        if handout.exists() {
            std::fs::remove_dir_all(&handout).unwrap();
        }
        let made = cargo()
            .args(["run", "--quiet", "--package", "xtask", "--", "lab", "--stage", &stage.to_string(), "--out"])
            .arg(&handout)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(made.status.success(), "xtask lab --stage {stage}: {}", String::from_utf8_lossy(&made.stderr));
        std::os::unix::fs::symlink(&shared_target, handout.join("target")).unwrap();

        let leaked = leaks(&handout, &cut_lines(stage));
        assert!(leaked.is_empty(), "stage {stage} handout holds lines it cuts:\n{}", leaked.join("\n"));
        let shipped: Vec<String> = std::fs::read_dir(handout.join("labs/rust/src/bin"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for (name, of) in LABS {
            assert_eq!(shipped.contains(&format!("{name}.rs")), *of <= stage, "stage {stage} handout and {name}");
        }

        let commands = readme_commands(&handout);
        assert_eq!(commands.first().map(String::as_str), Some("cargo build"), "stage {stage}: {commands:?}");
        let built = run_as_written(&handout, &commands[0]);
        assert!(built.output.status.success(), "stage {stage} handout: `cargo build` fails:\n{}", built.text);
        let grades = &commands[1..];
        assert!(!grades.is_empty(), "stage {stage}: the README grades the stage's programs");
        assert!(grades.iter().all(|line| line.contains(" grade ")), "stage {stage}: unchecked commands: {grades:?}");
        // The programs of the stage before, complete in this handout, get
        // full marks at their stage; graded while the README's grades run.
        let earlier: Vec<(PathBuf, String)> = LABS
            .iter()
            .filter(|(_, of)| *of + 1 == stage)
            .map(|(name, of)| (handout.join("target/debug").join(name), of.to_string()))
            .collect();
        let (ran, earlier_graded) = std::thread::scope(|scope| {
            let runs: Vec<_> = grades.iter().map(|line| scope.spawn(|| run_as_written(&handout, line))).collect();
            let earlier_graded = grade_all(&earlier);
            (runs.into_iter().map(|run| run.join().unwrap()).collect::<Vec<_>>(), earlier_graded)
        });
        let own_tests = tests_of(stage);
        for (line, ran) in grades.iter().zip(ran) {
            let failed: BTreeSet<String> = ran.failed().into_iter().collect();
            let missed: Vec<&String> = own_tests.iter().filter(|test| !failed.contains(*test)).collect();
            let skipped_as_root = |test: &&String| *test == "files.unreadable";
            assert!(missed.iter().all(skipped_as_root), "stage {stage}: `{line}` passes {missed:?}:\n{}", ran.text);
            let todo_shown = ran.text.contains("not yet implemented: ");
            assert!(todo_shown, "stage {stage}: the report shows a TODO's text:\n{}", ran.text);
        }
        for ((program, stages), graded) in earlier.iter().zip(earlier_graded) {
            let (score, max) = graded.score();
            assert_eq!(score, max, "stage {stage} handout, {} at stage {stages}:\n{}", program.display(), graded.text);
        }
    }
    std::fs::remove_dir_all(&handout).unwrap();
}

/// A client that pipelines requests without end and never reads its answers
/// holds neither the loop nor unbounded memory: the lab stops reading from it
/// while it owes it answers, and another client is served meanwhile.
#[test]
fn a_client_that_pipelines_without_reading_does_not_hold_the_loop() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("test.txt"), "hello\n").unwrap();
    let root = root.path().to_str().unwrap();
    std::thread::scope(|scope| {
        for name in ["stage3", "stage4-threads", "stage4-aio", "stage5"] {
            scope.spawn(move || {
                let server = Server::start_program(&lab_bin(name), &["--root", root], |_| {});
                let flooder = std::net::TcpStream::connect(server.addr).unwrap();
                flooder.set_nonblocking(true).unwrap();
                let stop = std::sync::atomic::AtomicBool::new(false);
                std::thread::scope(|inner| {
                    inner.spawn(|| {
                        let requests = b"test.txt\n".repeat(64 * 1024);
                        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                            if std::io::Write::write(&mut &flooder, &requests).is_err() {
                                std::thread::sleep(std::time::Duration::from_millis(5));
                                // full (or gone)
                            }
                        }
                    });
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    let reply = LineClient::connect(server.addr).get(b"test.txt");
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    assert_eq!(reply.body(), b"hello\n", "{name}: another client while one floods");
                });
            });
        }
    });
}
