//! Grading a class on the course's platform (`client class`, the platform
//! formats, `--repeat`, the mechanism, student code as `nobody`, machines
//! that cannot grade, replay lines that start the server themselves).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use serde_json::Value;

use crate::support::client_bin;

fn server() -> String {
    env!("CARGO_BIN_EXE_server").to_string()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn has_python() -> bool {
    let found = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: python3 is not installed");
    }
    found
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs `client ARGS` in `dir`; its output.
fn client(args: &[&str], dir: &Path) -> Output {
    let output = Command::new(client_bin()).args(args).current_dir(dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "the client panicked:\n{stderr}");
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const PLACEHOLDERS: [&str; 6] = ["--port", "{port}", "--root", "{root}", "--read-delay-ms", "{delay}"];

/// `client grade ARGS -- server --model MODEL ...`.
fn grade_reference(args: &[&str], model: &str, dir: &Path) -> Output {
    let server = server();
    let mut all: Vec<&str> = vec!["grade"];
    all.extend(args);
    all.extend(["--", &server, "--model", model, "--quiet"]);
    all.extend(PLACEHOLDERS);
    client(&all, dir)
}

#[test]
fn the_reference_keeps_full_marks_when_every_test_runs_three_times() {
    // Stage 5 edits a file and fills the cache, stage 4 times reads that a
    // cache would answer at once: each run needs its own files and server.
    let scratch = tempfile::tempdir().unwrap();
    let graded =
        grade_reference(&["--stages", "1,3,4,5", "--repeat", "3", "--stretch", "2"], "event-async", scratch.path());
    let text = stdout(&graded);
    assert!(graded.status.success(), "full marks with --repeat 3:\n{text}");
    assert!(text.contains("(the last of 3 runs, all passed)"), "{text}");
    if is_root() {
        // As root the server runs as nobody, for whom the file is unreadable: tested, not skipped.
        assert!(text.contains("[ok  ] files.unreadable"), "files.unreadable is tested as root:\n{text}");
    }
}

/// A course config asking for a single-threaded stage 2.
fn single_thread_config(dir: &Path) -> PathBuf {
    let path = dir.join("course.toml");
    std::fs::write(&path, "[mechanism]\nstage2 = \"single-thread\"\n").unwrap();
    path
}

#[test]
fn a_thread_per_connection_loses_the_single_thread_points_and_a_select_loop_keeps_them() {
    let scratch = tempfile::tempdir().unwrap();
    let config = single_thread_config(scratch.path());
    let config = config.to_str().unwrap();
    let (threads, select) = std::thread::scope(|scope| {
        let threads =
            scope.spawn(|| grade_reference(&["--stages", "1,2", "--config", config], "threads", scratch.path()));
        let select = grade_reference(&["--stages", "1,2", "--config", config], "select", scratch.path());
        (threads.join().unwrap(), select)
    });
    let (threads, select) = (stdout(&threads), stdout(&select));
    assert!(select.contains("score: 23/23"), "a select loop keeps every point:\n{select}");
    assert!(select.contains("one thread served every client"), "{select}");
    assert!(threads.contains("score: 5/23"), "a thread per connection loses stage 2:\n{threads}");
    assert!(threads.contains("FAILED concurrency.many_clients"), "{threads}");
    assert!(threads.contains("threads at once") && threads.contains("single-threaded loop"), "{threads}");
}

/// The reference's `threads` model graded for stages 1 and 2 under the
/// single-thread rule (stage 1 passes, stage 2 fails), in `format`.
fn formatted(format: &str, dir: &Path) -> Output {
    let config = single_thread_config(dir);
    grade_reference(&["--stages", "1,2", "--config", config.to_str().unwrap(), "--format", format], "threads", dir)
}

#[test]
fn each_platform_format_carries_the_fields_its_platform_documents() {
    let runs: Vec<_> = ["json", "prairielearn", "autolab", "classroom", "codegrade", "junit", "junit"]
        .into_iter()
        .map(|format| {
            std::thread::spawn(move || {
                let scratch = tempfile::tempdir().unwrap();
                (format, formatted(format, scratch.path()))
            })
        })
        .collect();
    let runs: Vec<(&str, Output)> = runs.into_iter().map(|run| run.join().unwrap()).collect();
    let of = |wanted: &'static str| -> Vec<String> {
        runs.iter().filter(|(format, _)| *format == wanted).map(|(_, out)| stdout(out)).collect()
    };
    let json: Value = serde_json::from_str(&of("json")[0]).unwrap();
    let (score, max) = (json["score"].as_u64().unwrap(), json["max"].as_u64().unwrap());
    assert_eq!((score, max), (5, 23), "{json}");

    // PrairieLearn's results.json: the documented keys only; score in 0..1.
    let pl_text = of("prairielearn")[0].clone();
    assert!(pl_text.len() < 1_000_000, "PrairieLearn reads at most 1 MB");
    let pl: Value = serde_json::from_str(&pl_text).unwrap();
    for key in pl.as_object().unwrap().keys() {
        let documented = ["gradable", "score", "message", "output", "images", "tests", "format_errors"];
        assert!(documented.contains(&key.as_str()), "{key} is not a documented PrairieLearn field");
    }
    assert_eq!(pl["gradable"], true);
    let tests = pl["tests"].as_array().unwrap();
    let mut points = 0.0;
    for test in tests {
        for key in test.as_object().unwrap().keys() {
            let documented = ["name", "description", "points", "max_points", "message", "output", "images"];
            assert!(documented.contains(&key.as_str()), "{key} is not a documented PrairieLearn test field");
        }
        assert!(test["points"].as_f64().unwrap() <= test["max_points"].as_f64().unwrap());
        points += test["points"].as_f64().unwrap();
    }
    assert_eq!(points, 5.0);
    assert!((pl["score"].as_f64().unwrap() - 5.0 / 23.0).abs() < 1e-9, "score is a fraction: {}", pl["score"]);

    // Autolab: the last line is {"scores": {...}}, after the _presentation line.
    let autolab = of("autolab")[0].clone();
    let lines: Vec<&str> = autolab.lines().collect();
    let scores: Value = serde_json::from_str(lines[lines.len() - 1]).expect("the last line is JSON");
    assert_eq!(scores.as_object().unwrap().keys().collect::<Vec<_>>(), ["scores"], "{scores}");
    assert_eq!(scores["scores"]["stage1"], 5);
    assert_eq!(scores["scores"]["stage2"], 0);
    let presentation: Value = serde_json::from_str(lines[lines.len() - 2]).expect("the line before is JSON");
    assert_eq!(presentation["_presentation"], "semantic");
    for stage in presentation["stages"].as_array().unwrap() {
        assert!(presentation[stage.as_str().unwrap()].is_object(), "{presentation}");
    }
    assert_eq!(presentation["stage2"]["concurrency.many_clients"]["passed"], false);

    // GitHub Classroom: base64 of the runner result the reporter decodes.
    let encoded = of("classroom")[0].clone();
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).expect("base64");
    let classroom: Value = serde_json::from_slice(&decoded).unwrap();
    assert_eq!((classroom["version"].as_u64(), classroom["status"].as_str()), (Some(1), Some("fail")));
    assert_eq!(classroom["max_score"].as_u64(), Some(23));
    let mut total = 0;
    for test in classroom["tests"].as_array().unwrap() {
        assert!(["pass", "fail", "error"].contains(&test["status"].as_str().unwrap()), "{test}");
        assert!(test["name"].is_string() && test["message"].is_string(), "{test}");
        total += test["score"].as_u64().unwrap();
    }
    assert_eq!(total, 5, "the reporter sums the tests' scores");

    // CodeGrade: the structured output line for fd 3.
    let codegrade: Value = serde_json::from_str(of("codegrade")[0].trim()).unwrap();
    assert_eq!(codegrade, serde_json::json!({"tag": "points", "points": "5/23"}));

    // JUnit: test names alone, the same on two runs (CI keeps history by name).
    let names: Vec<Vec<String>> = of("junit")
        .into_iter()
        .map(|xml| {
            let doc = roxmltree::Document::parse(&xml).unwrap();
            doc.descendants()
                .filter(|n| n.has_tag_name("testcase"))
                .map(|n| n.attribute("name").unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(names[0], names[1]);
    assert_eq!(
        names[0],
        [
            "time.one_line",
            "time.many_clients",
            "concurrency.stalled_client",
            "concurrency.many_clients",
            "concurrency.large_reply",
            "concurrency.stalled_reader",
            "concurrency.past_fd_setsize"
        ]
    );
}

#[test]
fn a_machine_without_loopback_is_not_gradable_and_every_format_says_so() {
    // A new network namespace has a loopback interface that is down: a
    // machine at fault, made for real (needs root and unshare).
    let works = Command::new("unshare").args(["-n", "true"]).status().is_ok_and(|s| s.success());
    if !works {
        eprintln!("skipped: cannot make a network namespace here (unshare -n needs root)");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let run = |format: &str| {
        let server = server();
        let mut args = vec!["-n".to_string(), client_bin().display().to_string(), "grade".into()];
        args.extend(["--stages", "1", "--format", format, "--", &server].map(String::from));
        args.extend(PLACEHOLDERS.map(String::from));
        let output = Command::new("unshare").args(&args).current_dir(scratch.path()).output().unwrap();
        assert_eq!(output.status.code(), Some(3), "{format}: exit 3, not gradable\n{output:?}");
        stdout(&output)
    };
    let text = run("text");
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    assert!(text.starts_with("not gradable on this machine: ") && text.contains("127.0.0.1"), "{text}");
    let pl: Value = serde_json::from_str(&run("prairielearn")).unwrap();
    assert_eq!(pl["gradable"], false);
    let json: Value = serde_json::from_str(&run("json")).unwrap();
    assert_eq!(json["gradable"], false);
    let classroom = base64::engine::general_purpose::STANDARD.decode(run("classroom").trim()).unwrap();
    let classroom: Value = serde_json::from_slice(&classroom).unwrap();
    assert_eq!((classroom["status"].as_str(), classroom["max_score"].as_u64()), (Some("error"), Some(0)));
    assert!(!run("autolab").contains("\"scores\""), "no scores line: Autolab reports an error");
    assert_eq!(run("codegrade"), "", "no points for CodeGrade");
    assert!(run("junit").contains("<error message=\"not gradable"), "JUnit: an error, not a failure");
}

/// Makes a class folder: a good Python server, a C server built by make,
/// one that does not compile, one that cannot start (its label with a
/// comma and quotes, as a CSV must hold).
fn class_folder(root: &Path) -> PathBuf {
    let subs = root.join("submissions");
    let c_server = repo().join("tests/grader/c_server");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for name in ["server.c", "Makefile", "grade.toml"] {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    };
    copy(&c_server, &subs.join("c-by-make"));
    let broken = subs.join("does-not-compile");
    copy(&c_server, &broken);
    std::fs::write(broken.join("server.c"), "int main(void) { return missing; }\n").unwrap();
    for (name, bug) in [("python", ""), ("never \"starts\", at all", "--bug never-starts ")] {
        let dir = subs.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(repo().join("tests/grader/student_server.py"), dir.join("student_server.py")).unwrap();
        let run = format!(
            "run = \"python3 student_server.py {bug}--port {{port}} --root {{root}} --read-delay-ms {{delay}}\"\n"
        );
        std::fs::write(dir.join("grade.toml"), run).unwrap();
        // A private folder: the grader's copy is what runs.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::write(root.join("course.toml"), "stages = [1, 2]\n").unwrap();
    subs
}

#[test]
fn a_class_gets_one_row_per_submission_with_reasons_and_a_regrade_writes_the_same_csv() {
    if !has_python() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    class_folder(scratch.path());
    let run = || {
        let output = client(
            &["class", "submissions", "--config", "course.toml", "--csv", "scores.csv", "--jobs", "2"],
            scratch.path(),
        );
        assert!(output.status.success(), "{output:?}");
        std::fs::read_to_string(scratch.path().join("scores.csv")).unwrap()
    };
    let first = run();
    let mut reader = csv::Reader::from_reader(first.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, ["label", "score", "max", "stage1", "stage2", "failed", "reason"]);
    let rows: Vec<Vec<String>> = reader.records().map(|r| r.unwrap().iter().map(String::from).collect()).collect();
    let row = |label: &str| rows.iter().find(|row| row[0] == label).unwrap_or_else(|| panic!("{label}:\n{first}"));
    assert_eq!(rows.len(), 4, "one row each:\n{first}");
    assert!(rows.iter().all(|row| row[2] == "23"), "the same max on every row:\n{first}");
    assert_eq!(row("python")[1..5], ["23", "23", "5", "18"], "{first}");
    assert_eq!(row("c-by-make")[1..5], ["5", "23", "5", "0"], "{first}");
    assert!(row("c-by-make")[5].contains("concurrency.many_clients"), "{first}");
    let broken = row("does-not-compile");
    assert_eq!(broken[1], "0");
    assert!(broken[6].contains("the build `make` failed") && broken[6].contains("error:"), "{first}");
    let never = row("never \"starts\", at all");
    assert_eq!(never[1], "0");
    assert!(never[6].contains("the server did not start") && never[6].contains("cannot start (on purpose)"), "{first}");
    // Each submission's folder of reports.
    let reports = scratch.path().join("reports");
    assert!(reports.join("python/report.json").exists() && reports.join("c-by-make/report.txt").exists());
    assert!(reports.join("c-by-make/grade-logs/concurrency.many_clients.log").exists());
    assert!(std::fs::read_to_string(reports.join("does-not-compile/build.log")).unwrap().contains("missing"));

    assert_eq!(run(), first, "a regrade writes the same CSV, whole");
}

#[test]
fn a_replay_line_starts_the_server_itself_and_shows_the_failure() {
    // The C time server of tests/grader, graded for files: it answers
    // every request with the time. Graded and replayed as a submission.
    let scratch = tempfile::tempdir().unwrap();
    let submission = scratch.path().join("submission");
    std::fs::create_dir(&submission).unwrap();
    for name in ["server.c", "Makefile", "grade.toml"] {
        std::fs::copy(repo().join("tests/grader/c_server").join(name), submission.join(name)).unwrap();
    }
    let graded = client(&["grade", "--stages", "3", "--stop-after", "1", "--submission", "submission"], scratch.path());
    let text = stdout(&graded);
    let replay = text
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("replay:   "))
        .filter(|line| line.starts_with("cd submission && printf 'small.txt\\n' | "))
        .unwrap_or_else(|| panic!("a replay line for files.small that starts in the submission:\n{text}"));
    assert!(replay.contains(" grade --replay --service file --delay 0 -- ") && !replay.contains("| nc "), "{replay}");
    // Pasted after the grader (and its server) are gone: the line builds
    // nothing, starts a server of its own with the grader's files, and
    // shows what came back: the time, not the file.
    std::process::Command::new("make").arg("-s").current_dir(&submission).status().unwrap();
    let out = Command::new("bash").args(["-c", replay]).current_dir(scratch.path()).output().unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.starts_with("20") && reply.ends_with("Z\n"),
        "the replay shows the bug (the time):\n{replay}\n{out:?}"
    );
}

#[test]
fn a_gradescope_bundle_builds_the_submission_as_its_grade_toml_says() {
    let scratch = tempfile::tempdir().unwrap();
    let (bundle, submission, results) =
        (scratch.path().join("source"), scratch.path().join("submission"), scratch.path().join("results"));
    std::fs::write(scratch.path().join("course.toml"), "stages = [1]\n").unwrap();
    let written = client(
        &["grade", "--stages", "1", "--config", "course.toml", "--write-gradescope", bundle.to_str().unwrap()],
        scratch.path(),
    );
    assert!(written.status.success(), "{written:?}");
    std::fs::create_dir(&submission).unwrap();
    for name in ["server.c", "Makefile", "grade.toml"] {
        std::fs::copy(repo().join("tests/grader/c_server").join(name), submission.join(name)).unwrap();
    }
    let run = Command::new(bundle.join("run_autograder"))
        .env("AUTOGRADER_SOURCE", &bundle)
        .env("SUBMISSION", &submission)
        .env("RESULTS", &results)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = std::fs::read_to_string(results.join("results.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["score"].as_f64(), Some(5.0), "the C server, built by make, passes stage 1:\n{text}");
    assert!(!submission.join("server").exists(), "the build ran in the grader's copy, not in the submission");
}

/// Makes `command`'s process refuse io_uring and kernel AIO (EPERM), as a
/// container's seccomp profile does; its children inherit the filter.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn deny_io_uring_and_aio(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const SYS_IO_URING_SETUP: u32 = 425;
    const SYS_IO_SETUP: u32 = 206;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    let statement = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter { code: 0x05 | 0x10, jt, jf, k }; // BPF_JMP | BPF_JEQ | BPF_K
    let load = 0x20; // BPF_LD | BPF_W | BPF_ABS
    let ret = 0x06; // BPF_RET | BPF_K
    let program = [
        statement(load, 4), // seccomp_data.arch
        jump(AUDIT_ARCH_X86_64, 1, 0),
        statement(ret, RET_ALLOW),
        statement(load, 0), // seccomp_data.nr
        jump(SYS_IO_URING_SETUP, 2, 0),
        jump(SYS_IO_SETUP, 1, 0),
        statement(ret, RET_ALLOW),
        statement(ret, RET_EPERM),
    ];
    // SAFETY: runs in the forked child before exec: two prctl(2) calls
    // on a filter program that the closure owns and that outlives them
    // (the kernel copies it); no allocation.
    unsafe {
        command.pre_exec(move || {
            let filter =
                libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &filter as *const libc::sock_fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_sandbox_that_denies_io_uring_makes_an_io_uring_server_not_gradable_not_zero() {
    let scratch = tempfile::tempdir().unwrap();
    let server = server();
    let mut args = vec!["grade", "--stages", "1", "--", &server, "--model", "uring"];
    args.extend(PLACEHOLDERS);
    let mut command = Command::new(client_bin());
    command.args(&args).current_dir(scratch.path());
    let output = deny_io_uring_and_aio(&mut command).output().unwrap();
    let text = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(3),
        "exit 3, not gradable:\n{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.starts_with("not gradable on this machine: io_uring is denied here"), "{text}");
    // The same sandbox is no excuse for a server that does not need io_uring.
    let mut args = vec!["grade", "--stages", "1", "--", &server, "--model", "select"];
    args.extend(PLACEHOLDERS);
    let mut command = Command::new(client_bin());
    command.args(&args).current_dir(scratch.path());
    let output = deny_io_uring_and_aio(&mut command).output().unwrap();
    assert!(output.status.success(), "{}", stdout(&output));
}

#[test]
fn a_submission_that_does_not_build_is_a_graded_zero_in_the_platform_formats() {
    // Not "grading could not run" (an empty result on PrairieLearn and
    // Classroom): every test fails with the compiler's first error.
    let scratch = tempfile::tempdir().unwrap();
    let submission = scratch.path().join("submission");
    std::fs::create_dir(&submission).unwrap();
    for name in ["server.c", "Makefile", "grade.toml"] {
        std::fs::copy(repo().join("tests/grader/c_server").join(name), submission.join(name)).unwrap();
    }
    std::fs::write(submission.join("server.c"), "int main(void) { return 0 }\n").unwrap();
    let graded =
        client(&["grade", "--stages", "1", "--format", "prairielearn", "--submission", "submission"], scratch.path());
    assert_eq!(graded.status.code(), Some(1), "{graded:?}");
    let result: serde_json::Value = serde_json::from_str(stdout(&graded).trim()).unwrap();
    assert_eq!(result["gradable"], true, "{result}");
    assert_eq!(result["score"], 0.0, "{result}");
    let tests = result["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2, "{result}");
    assert!(tests.iter().all(|t| t["points"] == 0 && t["output"].as_str().unwrap().contains("error:")), "{result}");
}
