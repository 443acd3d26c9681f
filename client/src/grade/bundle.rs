//! A Gradescope autograder, written by `client grade --write-gradescope DIR`:
//! `setup.sh` (run once when the image is built), `run_autograder` (run
//! for every submission: builds it as its `grade.toml` says, in a copy,
//! as an unprivileged user, grades it, writes `results.json`), this client
//! binary (and the kit's `server` beside it, for stage 6's comparison), and
//! `course.toml` (the instructor's points and visibility).
//!
//! Gradescope unpacks the bundle into `/autograder/source`, puts the
//! submission in `/autograder/submission` and reads
//! `/autograder/results/results.json`; the three folders can be moved with
//! `AUTOGRADER_SOURCE`, `SUBMISSION` and `RESULTS` (how the kit's test runs
//! a bundle in a scratch folder).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{ensure, Context, Result};

/// Writes the bundle into `dir` (created if needed) for `stages`, with the
/// config at `config` if any and the server command `command` (run in the
/// submission's folder, with `{port}`, `{root}`, `{delay}`).
/// Without a command, each submission's `grade.toml` (or the config's
/// `[submission]`) names it.
pub fn write(dir: &Path, stages: &[u8], config: Option<&Path>, command: &[String]) -> Result<()> {
    if command.is_empty() {
        let has_run = config
            .and_then(|path| super::Config::load(path).ok())
            .is_some_and(|config| config.submission.run.is_some());
        ensure!(
            has_run || config.is_some(),
            "give the submission's server command after `--`, as run in its folder (e.g. -- ./server --port {{port}} \
             --root {{root}} --read-delay-ms {{delay}}), or a --config whose [submission] names `run` (each \
             submission's grade.toml may name its own)"
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let client = std::env::current_exe().context("cannot find the client binary to copy")?;
    copy_executable(&client, &dir.join("client"))?;
    let server = client.with_file_name("server");
    if server.exists() {
        copy_executable(&server, &dir.join("server"))?;
    }
    let course = match config {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => "# points and visibility per test: see docs/grading.md\n".to_string(),
    };
    std::fs::write(dir.join("course.toml"), course)?;
    let stages: Vec<String> = stages.iter().map(u8::to_string).collect();
    let command: Vec<String> = command.iter().map(|arg| shell_quote(arg)).collect();
    let command = if command.is_empty() { String::new() } else { format!(" -- {}", command.join(" ")) };
    write_script(&dir.join("setup.sh"), SETUP)?;
    let run = RUN.replace("@STAGES@", &stages.join(",")).replace("@COMMAND@", &command);
    write_script(&dir.join("run_autograder"), &run)?;
    Ok(())
}

const SETUP: &str = "#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image.
# Install here what the submissions need to build and run (a compiler,
# python3, ...); the grader itself needs nothing more than its binary.
set -eu
chmod +x /autograder/source/client /autograder/source/run_autograder
if [ -f /autograder/source/server ]; then chmod +x /autograder/source/server; fi
";

const RUN: &str = r#"#!/usr/bin/env bash
# Gradescope runs this for every submission; written by
# `client grade --write-gradescope`. It builds the submission as its
# grade.toml says (in a copy, as an unprivileged user: Gradescope runs
# this as root), grades stages @STAGES@ and writes results.json (a build
# that fails is a score of 0, each test saying why). Exit 2 of the grader
# (it could not run: no command to start, a bad config) is a score of 0
# with the reason; exit 3 (this machine cannot grade) writes no results,
# so Gradescope shows the autograder as failed and the staff can rerun it.
set -u
source_dir="${AUTOGRADER_SOURCE:-/autograder/source}"
submission="${SUBMISSION:-/autograder/submission}"
results="${RESULTS:-/autograder/results}"
mkdir -p "$results"
"$source_dir/client" grade --stages @STAGES@ --config "$source_dir/course.toml" --format gradescope \
  --logs "$results/grade-logs" --submission "$submission"@COMMAND@ > "$results/results.json" 2> "$results/grader.err"
status=$?
cat "$results/grader.err" >&2
if [ "$status" -eq 2 ]; then
  reason=$(tr -d '"\\' < "$results/grader.err" | tr '\n' ' ')
  printf '{"score":0,"output":"grading could not run: %s"}\n' "$reason" > "$results/results.json"
elif [ "$status" -eq 3 ]; then
  rm -f "$results/results.json"
  exit 1
fi
exit 0
"#;

fn write_script(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn copy_executable(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `arg` as one shell word: as is when it is plain, else single-quoted.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./{}=:,@%+".contains(&b));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_only_when_they_need_it() {
        assert_eq!(shell_quote("--port"), "--port");
        assert_eq!(shell_quote("{root}"), "{root}");
        assert_eq!(shell_quote("my server"), "'my server'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
