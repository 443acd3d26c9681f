//! One student's submission: a folder whose `grade.toml` says how to build
//! it and how to run its server (the course's config gives defaults):
//!
//! ```toml
//! build = "make"                      # optional: make, cargo build --release, ...
//! run = "./server --port {port} --root {root} --read-delay-ms {delay}"
//! ```
//!
//! The grader never builds or runs a submission in place: it copies the
//! folder into a work folder of its own (leaving out `.git` and `target`),
//! gives that copy to the user student code runs as, and builds there
//! with a time limit, as that user. So a private submission folder, a
//! build that writes everywhere, or one that never ends cannot harm the
//! grading machine or the next submission.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::target::User;

/// A build takes at most this long unless the course says otherwise.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// How to build and run a submission (`grade.toml`, or the course's
/// `[submission]` defaults).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// A shell command run in the submission's folder before grading.
    pub build: Option<String>,
    /// The server command, with `{port}`, `{root}`, `{delay}`: one string
    /// (split into words as a shell would, quotes kept together, nothing
    /// expanded) or a list of words.
    pub run: Option<Words>,
    /// Seconds a build may take (default 600).
    pub build_timeout: Option<u64>,
}

/// A command as one string or as its words.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Words {
    /// `"./server --port {port}"`.
    Line(String),
    /// `["./server", "--port", "{port}"]`.
    List(Vec<String>),
}

impl Words {
    /// The words.
    pub fn words(&self) -> Result<Vec<String>> {
        match self {
            Words::Line(line) => split_words(line),
            Words::List(words) => Ok(words.clone()),
        }
    }
}

impl Recipe {
    /// This recipe's fields, or `defaults`' where it has none.
    pub fn or(self, defaults: &Recipe) -> Recipe {
        Recipe {
            build: self.build.or_else(|| defaults.build.clone()),
            run: self.run.or_else(|| defaults.run.clone()),
            build_timeout: self.build_timeout.or(defaults.build_timeout),
        }
    }
}

/// `line` split into words as `sh` would split a simple command: blanks
/// separate words, single quotes keep everything, double quotes keep all
/// but `\"` and `\\`, a backslash outside quotes keeps the next character.
/// Nothing is expanded (no `$`, no globs): the words are run as they are.
pub fn split_words(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => words.extend(word.take()),
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => anyhow::bail!("unclosed ' in {line:?}"),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => anyhow::bail!("unclosed \" in {line:?}"),
                        },
                        Some(c) => current.push(c),
                        None => anyhow::bail!("unclosed \" in {line:?}"),
                    }
                }
            }
            '\\' => {
                let next = chars.next().context("a lone \\ at the end")?;
                word.get_or_insert_with(String::new).push(next);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// A submission ready to grade: its copy, built, and its server command.
#[derive(Debug)]
pub struct Prepared {
    /// The folder the server runs in (the grader's copy).
    pub workdir: PathBuf,
    /// The server command template.
    pub command: Vec<String>,
}

/// Why a submission cannot be graded: its row gets 0 and this reason.
#[derive(Debug)]
pub struct Unbuildable {
    /// One line for the CSV.
    pub reason: String,
}

/// Reads `dir/grade.toml` (if any) over the course's `defaults`.
pub fn recipe(dir: &Path, defaults: &Recipe) -> Result<Recipe, Unbuildable> {
    let path = dir.join("grade.toml");
    let own = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str::<Recipe>(&text).map_err(|err| Unbuildable {
            reason: format!("grade.toml is not valid: {}", one_line(&err.to_string())),
        })?,
        Err(_) => Recipe::default(),
    };
    Ok(own.or(defaults))
}

/// Copies `dir` into `work` (replacing what was there), gives the copy to
/// `user`, builds it as the recipe says (its output in `build_log`), and
/// returns the server command. `run_override`: the command given to the
/// grader itself, which wins over the recipe's `run`.
pub fn prepare(
    dir: &Path,
    work: &Path,
    recipe: &Recipe,
    user: Option<&User>,
    build_log: &Path,
    run_override: Option<&[String]>,
) -> Result<Prepared, Unbuildable> {
    let command = match (run_override, &recipe.run) {
        (Some(words), _) if !words.is_empty() => words.to_vec(),
        (_, Some(run)) => run.words().map_err(|err| Unbuildable { reason: format!("run: {err:#}") })?,
        _ => {
            return Err(Unbuildable {
                reason: "no server command: give `run` in grade.toml or in the course's [submission]".into(),
            })
        }
    };
    let staged = stage(dir, work, user);
    staged.map_err(|err| Unbuildable { reason: format!("cannot copy the submission: {err:#}") })?;
    if let Some(build) = &recipe.build {
        let limit = recipe.build_timeout.map_or(DEFAULT_BUILD_TIMEOUT, Duration::from_secs);
        run_build(build, work, user, build_log, limit)?;
    }
    Ok(Prepared { workdir: work.to_path_buf(), command })
}

/// Copies the submission, then hands the copy to `user`.
fn stage(dir: &Path, work: &Path, user: Option<&User>) -> Result<()> {
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("cannot remove the old copy {}", work.display()))?;
    }
    copy_tree(dir, work, 0)?;
    if let Some(user) = user {
        chown_tree(work, user)?;
    }
    Ok(())
}

/// Folders a copy leaves out: version control, and build output the
/// build makes again (a Rust `target/` can hold gigabytes).
const LEFT_OUT: [&str; 2] = [".git", "target"];

fn copy_tree(from: &Path, to: &Path, depth: usize) -> Result<()> {
    anyhow::ensure!(depth < 64, "{} is nested too deeply", from.display());
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else if kind.is_dir() {
            if !LEFT_OUT.iter().any(|name| entry.file_name() == *name) {
                copy_tree(&source, &target, depth + 1)?;
            }
        } else if kind.is_file() {
            std::fs::copy(&source, &target).with_context(|| format!("cannot copy {}", source.display()))?;
        }
    }
    Ok(())
}

fn chown_tree(path: &Path, user: &User) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("cannot give {} to {}", path.display(), user.name))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

/// Runs `build` with `sh -c` in `work` (as `user`), its output to `log`,
/// for at most `limit`; the whole process group is killed at the limit.
fn run_build(build: &str, work: &Path, user: Option<&User>, log: &Path, limit: Duration) -> Result<(), Unbuildable> {
    let cannot = |err: std::io::Error| Unbuildable { reason: format!("cannot run the build `{build}`: {err}") };
    let output = std::fs::File::create(log).map_err(cannot)?;
    let mut command = Command::new("sh");
    command.args(["-c", build]).current_dir(work).stdin(Stdio::null());
    command.stdout(output.try_clone().map_err(cannot)?).stderr(output);
    if let Some(user) = user {
        // The build is student code too (a Makefile runs anything). Its
        // home is the copy: root's is not the student's to write.
        command.uid(user.uid).gid(user.gid).env("HOME", work);
    }
    let mut child = crate::child::die_with_parent(command.process_group(0)).spawn().map_err(cannot)?;
    let group = rustix::process::Pid::from_child(&child);
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => break None,
        }
    };
    // Whatever the build left running (a daemon, a stuck compiler) goes too.
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    let _ = child.wait();
    let tail = || last_line(&std::fs::read_to_string(log).unwrap_or_default());
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(Unbuildable {
            reason: format!("the build `{build}` failed ({}): {}", super::target::describe_exit(status), tail()),
        }),
        None => Err(Unbuildable { reason: format!("the build `{build}` took longer than {limit:?}: stopped") }),
    }
}

/// The line of a build's output that says what went wrong.
fn last_line(output: &str) -> String {
    let meaningful = |line: &&str| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with("make: ***") && !line.starts_with("compilation terminated")
    };
    // A compiler's first error says most; else the last line that says something.
    let line = output
        .lines()
        .find(|line| line.contains("error:") || line.contains("Error:"))
        .or_else(|| output.lines().rev().find(meaningful))
        .unwrap_or("(no output)");
    one_line(line)
}

/// `text` on one line, at most 300 characters.
pub fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 300 {
        format!("{}...", flat.chars().take(300).collect::<String>())
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_line_splits_as_a_shell_would_without_expanding_anything() {
        let words = split_words(r#"python3 "my server.py" --root {root} 'a b' c\ d "q\"x" $HOME"#).unwrap();
        assert_eq!(words, ["python3", "my server.py", "--root", "{root}", "a b", "c d", "q\"x", "$HOME"]);
        assert!(split_words("'open").is_err());
    }

    #[test]
    fn a_grade_toml_fills_in_over_the_course_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("grade.toml"), "build = \"make\"\n").unwrap();
        let defaults =
            Recipe { build: None, run: Some(Words::Line("./server --port {port}".into())), build_timeout: Some(5) };
        let recipe = recipe(dir.path(), &defaults).unwrap();
        assert_eq!(recipe.build.as_deref(), Some("make"));
        assert_eq!(recipe.run.unwrap().words().unwrap(), ["./server", "--port", "{port}"]);
        std::fs::write(dir.path().join("grade.toml"), "biuld = \"make\"\n").unwrap();
        let err = super::recipe(dir.path(), &defaults).unwrap_err();
        assert!(err.reason.contains("grade.toml is not valid"), "{}", err.reason);
    }

    #[test]
    fn a_build_that_never_ends_is_stopped_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        let started = Instant::now();
        let err = run_build("sleep 30 & sleep 30", dir.path(), None, &log, Duration::from_millis(300)).unwrap_err();
        assert!(err.reason.contains("took longer than"), "{}", err.reason);
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = run_build("echo 'x.c:1: error: oops' >&2; exit 2", dir.path(), None, &log, Duration::from_secs(5))
            .unwrap_err();
        assert!(err.reason.contains("exit status 2") && err.reason.contains("x.c:1: error: oops"), "{}", err.reason);
    }
}
