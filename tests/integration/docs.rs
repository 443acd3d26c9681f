//! Every command the README, the guide and the instructors' page show runs
//! as written, in order, so the docs cannot drift from the programs.
//!
//! Each file's `sh` blocks run in one bash, as a reader would paste them
//! into one terminal, in a scratch directory holding a copy of `fixtures/`
//! (chapter 6 edits a fixture) and of `docs/`, `target/release/` linked to
//! the binaries under test, `target/debug/` to the client and the Rust labs
//! and `labs/c/build/` to the C labs. Ports are the kernel's: the docs'
//! 7070, 7071, 7072 and 8080 are replaced by free ports, and
//! `SERVER_PORT`/`SERVER_ADDR` point the flag-less `server` and `client` at
//! the first. Nothing is added to the commands: no wait after a background
//! server starts, as none is added when a person pastes a block (the client
//! itself waits for a server that is starting; `client --wait`). Skipped:
//! the set-up commands the CI runs itself (`cargo ...`, `make ...`,
//! `./benchmark.sh ...`) and lines whose program is not installed (wrk,
//! nginx), each with a note.
//!
//! The chapters that teach from the labs (1 to 5) ship in the handouts
//! (`cargo xtask lab`), so their blocks are tagged: ```` ```sh rust ```` and
//! ```` ```sh c ```` run one language's labs, ```` ```sh reference ```` the
//! kit's reference server (which no handout holds), and a plain
//! ```` ```sh ```` block runs anywhere. Here every block runs; in the
//! stage-N handouts (Rust and C), each as the student has it after the
//! stage is written, the stage-N chapters' blocks of that language and the
//! plain ones run as written, with no reference server anywhere on the
//! PATH. Their code excerpts are quoted from the labs (`labs/rust/`,
//! `labs/c/`) or the reference server, and checked against the source.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::client_bin;

/// Longest one file's commands may take (chapter 3's 10,000 connections,
/// chapter 1's clients that sleep 3 s).
const FILE_DEADLINE: Duration = Duration::from_secs(120);

/// Output that means a command did not run as written.
const FAILURE_SIGNS: &[&str] = &[
    "command not found",
    "address in use",
    "cannot connect",
    "Connection refused",
    "panicked",
    "error: ",
    "Usage:",
    "No such file or directory",
];

/// The documents whose commands are checked, in reading order.
fn documents() -> Vec<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut chapters: Vec<PathBuf> = std::fs::read_dir(repo.join("docs/guide"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    chapters.sort(); // README.md sorts after the numbered chapters: put it first
    chapters.sort_by_key(|path| path.file_name().unwrap() != "README.md");
    // The instructors' page last: its class is graded from the kit's own server.
    [vec![repo.join("README.md")], chapters, vec![repo.join("docs/instructors.md")]].concat()
}

/// The fenced blocks of a Markdown file opened with "```" + `lang`, in
/// order, each as its lines.
fn fenced_blocks(markdown: &str, lang: &str) -> Vec<Vec<String>> {
    let opening = format!("```{lang}");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, fence) if fence == opening => current = Some(Vec::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => block.push(line.to_string()),
            (None, _) => {}
        }
    }
    blocks
}

/// The `sh` blocks of a Markdown file, in order, each with its tag
/// (```` ```sh rust ````: "rust"; a plain ```` ```sh ````: "").
fn tagged_shell_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, fence) if fence == "```sh" || fence.starts_with("```sh ") => {
                current = Some((fence["```sh".len()..].trim().to_string(), String::new()));
            }
            (Some(_), "```") => blocks.extend(current.take()),
            (Some((_, block)), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The `sh` blocks of a Markdown file, in order, whatever their tag.
fn shell_blocks(markdown: &str) -> Vec<String> {
    tagged_shell_blocks(markdown).into_iter().map(|(_, block)| block).collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn is_installed(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).stdout(Stdio::null()).status().unwrap().success()
}

/// The script bash runs for one document.
fn script(blocks: &[String], ports: &[(u16, u16)]) -> String {
    let default_port = ports[0].1;
    let mut script = format!("set -u\nexport SERVER_PORT={default_port} SERVER_ADDR=127.0.0.1:{default_port}\n");
    for block in blocks {
        let mut block = block.clone();
        for (documented, free) in ports {
            block = block.replace(&documented.to_string(), &free.to_string());
        }
        for line in block.lines() {
            let command = line.split(" #").next().unwrap_or("").trim();
            let program = command.split_whitespace().next().unwrap_or("");
            if ["cargo", "make", "./benchmark.sh"].contains(&program) {
                script.push_str(&format!(": skipped, the CI runs it itself: {command}\n"));
                continue;
            }
            if ["wrk", "nginx", "curl"].contains(&program) && !is_installed(program) {
                script.push_str(&format!("echo 'doc check: skipped ({program} is not installed): {command}'\n"));
                continue;
            }
            script.push_str(line);
            script.push('\n');
        }
    }
    // Whatever a document leaves running is stopped here (and the process
    // group is killed after, in case bash itself is stuck).
    script.push_str("kill $(jobs -p) 2>/dev/null; wait\n");
    script
}

/// A scratch directory laid out like the repository for the commands.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for copy in ["fixtures", "docs"] {
        let copied = Command::new("cp").arg("-r").arg(repo.join(copy)).arg(dir.path()).status().unwrap();
        assert!(copied.success(), "cannot copy {copy}");
    }
    let release = dir.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    let client = client_bin(); // builds client and benchmark
    for binary in [PathBuf::from(env!("CARGO_BIN_EXE_server")), client.clone(), client.with_file_name("benchmark")] {
        std::os::unix::fs::symlink(&binary, release.join(binary.file_name().unwrap())).unwrap();
    }
    link_labs(dir.path());
    dir
}

/// The Rust labs' programs, by name.
const RUST_LABS: &[&str] =
    &["stage1", "stage2-select", "stage2-epoll", "stage3", "stage4-threads", "stage4-aio", "stage5"];

/// Links `dir/target/debug/` to the client and the Rust labs, and
/// `dir/labs/c/build/` to the C labs, all complete: the programs as a
/// student has them once the stage is written.
fn link_labs(dir: &Path) {
    let debug = dir.join("target/debug");
    std::fs::create_dir_all(&debug).unwrap();
    std::os::unix::fs::symlink(client_bin(), debug.join("client")).unwrap();
    for name in RUST_LABS {
        std::os::unix::fs::symlink(crate::labs::lab_bin(name), debug.join(name)).unwrap();
    }
    // The C labs are built and graded on Linux alone (the suite runs there).
    #[cfg(target_os = "linux")]
    {
        let c = dir.join("labs/c");
        std::fs::create_dir_all(&c).unwrap();
        let _ = std::fs::remove_dir_all(c.join("build"));
        std::os::unix::fs::symlink(crate::labs_c::built(), c.join("build")).unwrap();
    }
}

/// Runs `script` in `dir`; returns its combined output, or why it failed.
fn run(script: &str, dir: &Path) -> Result<String, String> {
    let path = std::env::var("PATH").unwrap();
    run_with_path(script, dir, &format!("{}:{path}", dir.join("target/release").display()))
}

/// Runs `script` in `dir` with `path` as its PATH.
fn run_with_path(script: &str, dir: &Path, path: &str) -> Result<String, String> {
    let log = dir.join("doc-check.log");
    // One open file for both streams, so their lines interleave as on a terminal.
    let output = std::fs::File::create(&log).unwrap();
    let mut bash = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + FILE_DEADLINE;
    let finished = loop {
        if bash.try_wait().unwrap().is_some() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Nothing a document started outlives it.
    let group = rustix::process::Pid::from_raw(bash.id() as i32).unwrap();
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    let _ = bash.wait();
    let mut output = String::new();
    std::fs::File::open(&log).unwrap().read_to_string(&mut output).unwrap();
    if !finished {
        return Err(format!("did not finish within {FILE_DEADLINE:?}\n{output}"));
    }
    match FAILURE_SIGNS.iter().find(|sign| output.contains(*sign)) {
        Some(sign) => Err(format!("printed {sign:?}\n{output}")),
        None => Ok(output),
    }
}

#[test]
fn every_command_in_the_readme_and_the_guide_runs_as_written() {
    let dir = scratch();
    let ports: Vec<(u16, u16)> = [7070, 7071, 7072, 8080].into_iter().map(|port| (port, free_port())).collect();
    let mut checked = 0;
    for document in documents() {
        let blocks = shell_blocks(&std::fs::read_to_string(&document).unwrap());
        if blocks.is_empty() {
            continue;
        }
        let script = script(&blocks, &ports);
        match run(&script, dir.path()) {
            // Shown with --nocapture: what a reader would see.
            Ok(output) => eprintln!("=== {}\n{output}", document.display()),
            Err(why) => {
                panic!("the commands of {} do not run as written: {why}\n--- script ---\n{script}", document.display())
            }
        }
        checked += 1;
    }
    assert!(checked >= 9, "the README and eight chapters have commands; checked {checked}");
}

#[test]
fn the_runner_notices_a_command_that_does_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let broken = script(&["no-such-program --flag\n".to_string()], &[(7070, free_port())]);
    assert!(run(&broken, dir.path()).is_err(), "a missing program must fail the check");
    let fine = script(&["echo fine\n".to_string()], &[(7070, free_port())]);
    assert_eq!(run(&fine, dir.path()).unwrap(), "fine\n");
}

#[test]
fn the_runner_adds_no_wait_after_a_server_starts() {
    let block = "./target/release/server --root fixtures &\n./target/release/client 0 ./test.txt\n";
    let port = free_port();
    let script = script(&[block.to_string()], &[(7070, port)]);
    let body: Vec<&str> = script.lines().skip_while(|line| !line.contains("server --root")).collect();
    assert_eq!(body[..2], ["./target/release/server --root fixtures &", "./target/release/client 0 ./test.txt"]);
    assert!(!script.contains("sleep") && !script.contains("/dev/tcp"), "{script}");
}

/// The `rust` and `c` blocks of a Markdown file that quote a source file:
/// their first line names it (`// src/models/event.rs`,
/// `// labs/c/stage1.c, in listen_on()`).
fn quoted_excerpts(markdown: &str) -> Vec<(String, Vec<String>)> {
    [("rust", ".rs"), ("c", ".c")]
        .into_iter()
        .flat_map(|(lang, ext)| {
            fenced_blocks(markdown, lang).into_iter().filter_map(move |lines| {
                let named = lines.first()?.strip_prefix("// ")?;
                let file = named.split([',', ' ']).next().filter(|file| file.ends_with(ext))?.to_string();
                Some((file, lines[1..].to_vec()))
            })
        })
        .collect()
}

/// A source file as the guide quotes it: a lab without its `// lab:`
/// marker lines (the program as it reads once its stage is written).
fn quotable(source: &str) -> Vec<&str> {
    source.lines().filter(|line| !line.trim_start().starts_with("// lab:")).collect()
}

#[test]
fn every_code_excerpt_in_the_guide_is_quoted_from_the_source_as_it_is() {
    let mut checked = 0;
    for document in documents() {
        let mut quoted_labs = (0, 0);
        for (file, lines) in quoted_excerpts(&std::fs::read_to_string(&document).unwrap()) {
            let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(&file))
                .unwrap_or_else(|_| panic!("{}: quotes {file}, which does not exist", document.display()));
            let source = quotable(&source);
            let found = source.windows(lines.len()).any(|window| window.iter().zip(&lines).all(|(a, b)| a == b));
            assert!(found, "{}: this excerpt is no longer in {file}:\n{}", document.display(), lines.join("\n"));
            quoted_labs.0 += usize::from(file.starts_with("labs/rust/"));
            quoted_labs.1 += usize::from(file.starts_with("labs/c/"));
            checked += 1;
        }
        let name = document.file_name().unwrap().to_string_lossy().into_owned();
        if lab_chapter_stage(&name).is_some() {
            assert!(
                quoted_labs.0 > 0 && quoted_labs.1 > 0,
                "{name} teaches from the labs: it quotes labs/rust/ ({}) and labs/c/ ({})",
                quoted_labs.0,
                quoted_labs.1
            );
        }
    }
    assert!(checked >= 7, "the chapters quote their code ({checked} excerpts)");
}

/// The stage of a chapter that teaches from the labs and ships in the
/// handouts (`02a-select-and-poll.md`: 2), from its number; the side
/// chapters (`02c`, `02d`, `04b`) and chapter 6 are the kit's alone.
fn lab_chapter_stage(name: &str) -> Option<u8> {
    let stage: u8 = name.get(..2)?.parse().ok()?;
    let side = ["02c", "02d", "04b"].iter().any(|side| name.starts_with(side));
    ((1..=5).contains(&stage) && !side).then_some(stage)
}

#[test]
fn the_lab_chapters_commands_run_as_written_inside_their_stage_handouts() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let place = repo.join("target/docs-handouts");
    let _ = std::fs::remove_dir_all(&place);
    std::fs::create_dir_all(&place).unwrap();
    // No reference server on the PATH: a chapter that needs one fails.
    let path: Vec<String> = std::env::var("PATH")
        .unwrap()
        .split(':')
        .filter(|dir| !Path::new(dir).join("server").exists())
        .map(String::from)
        .collect();
    let ports: Vec<(u16, u16)> = [7070, 7071, 7072, 8080].into_iter().map(|port| (port, free_port())).collect();
    let mut checked = 0;
    for lang in ["rust", "c"] {
        for stage in 1..=5u8 {
            let handout = place.join(format!("{lang}-{stage}"));
            let made = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args(["run", "--quiet", "--package", "xtask", "--", "lab", "--lang", lang, "--stage"])
                .arg(stage.to_string())
                .arg("--out")
                .arg(&handout)
                .current_dir(repo)
                .output()
                .unwrap();
            assert!(
                made.status.success(),
                "xtask lab --lang {lang} --stage {stage}: {}",
                String::from_utf8_lossy(&made.stderr)
            );
            link_labs(&handout);
            let guide = handout.join("docs/guide");
            let mut chapters: Vec<String> = std::fs::read_dir(&guide)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| lab_chapter_stage(name) == Some(stage))
                .collect();
            chapters.sort();
            assert!(!chapters.is_empty(), "the {lang} stage-{stage} handout ships its chapter");
            for chapter in chapters {
                let page = std::fs::read_to_string(guide.join(&chapter)).unwrap();
                let blocks = tagged_shell_blocks(&page);
                assert!(blocks.iter().all(|(tag, _)| tag.is_empty()), "{lang} handout, {chapter}: tags are resolved");
                let blocks: Vec<String> = blocks.into_iter().map(|(_, block)| block).collect();
                assert!(!blocks.is_empty(), "{lang} handout, {chapter}: the chapter has commands to try");
                let script = script(&blocks, &ports);
                match run_with_path(&script, &handout, &path.join(":")) {
                    Ok(output) => eprintln!("=== {lang} stage-{stage} handout: {chapter}\n{output}"),
                    Err(why) => panic!(
                        "the commands of {chapter} do not run as written in the {lang} stage-{stage} handout: {why}\n--- script ---\n{script}"
                    ),
                }
                checked += 1;
            }
        }
    }
    std::fs::remove_dir_all(&place).unwrap();
    assert_eq!(checked, 12, "six chapters, in two languages' handouts");
}
