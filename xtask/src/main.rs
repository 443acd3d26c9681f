//! `cargo xtask handout --stage N [--out DIR]`: a student's workspace for
//! stage N, cut from the reference.
//!
//! The reference marks what each stage teaches with one comment line
//! directly above a function:
//!
//! ```text
//! // handout: stage 2: wait with select(2) on the listener, ...; read docs/guide/02a-select-and-poll.md
//! pub fn run(server: Server) -> Result<(), ServerError> {
//! ```
//!
//! The stage-N handout is the whole workspace (the same crates, the client,
//! the grader, the guide) with the body of every function marked for stage
//! N *or a later stage* replaced by `todo!("stage M: ...")`, so nothing in
//! it answers the stage or one after it: it builds, the earlier stages
//! work, and `client grade` fails exactly the tests of what is missing,
//! showing the message. Beside the functions:
//!
//! - `// handout: leave out` above an item (in a test file) drops the item:
//!   the tests that need a complete solution to run.
//! - In Markdown, `<!-- handout: stage N answer -->` ... `<!-- /handout -->`
//!   is a quoted answer, cut from the handouts of stage N and earlier, and
//!   `<!-- handout: reference only -->` ... `<!-- /handout -->` is cut from
//!   every handout (instructors' commands, the solution files).
//! - Left out of every handout: `docs/instructors.md` and `tests/grader/`
//!   (a complete solution in Python). The handout's `README.md` is the
//!   student's front page, written here; no link may point outside it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use syn::spanned::Spanned;
use syn::visit::Visit;

mod lab;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "The kit's maintenance tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write a student handout for one stage of the assignment.
    Handout {
        /// The stage (1 to 6): its parts, and every later stage's, become todo!().
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=6))]
        stage: u8,
        /// Where to write it [default: handout/stage-N].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a student handout for one stage, cut from the labs (labs/rust, labs/c).
    Lab {
        /// The lab's language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: lab::Lang,
        /// The stage (1 to 5): its programs' lessons become TODOs.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
        stage: u8,
        /// Where to write it [default: handout/lab-<lang>-stage-N].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Top-level entries of the workspace that go into a handout (not `.ci`:
/// the kit's CI runs the kit's whole suite, which a handout's stubs fail).
const INCLUDED: &[&str] = &[
    ".cargo",
    ".gitignore",
    "Cargo.lock",
    "Cargo.toml",
    "benchmark.sh",
    "client",
    "contract",
    "docs",
    "fixtures",
    "rustfmt.toml",
    "src",
    "tests",
    "xtask",
];

/// Kept out of every handout: the answers.
const EXCLUDED: &[&str] = &["docs/instructors.md", "tests/grader"];

/// A handout's mark: its stage. xtask refuses to cut a handout from one.
const HANDOUT_MARK: &str = ".handout";

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Lab { lang, stage, out } => {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask lives in the workspace")?;
            let out = out.unwrap_or_else(|| repo.join(format!("handout/lab-{}-stage-{stage}", lang.name())));
            let cuts = lab::write_handout(repo, lang, stage, &out)?;
            println!("stage {stage} lab handout in {}: {} to write", out.display(), cuts.len());
            for (file, region) in cuts {
                println!("  {}:{}: {}", file.display(), region.line, region.todo);
            }
            Ok(())
        }
        Task::Handout { stage, out } => {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask lives in the workspace")?;
            if let Ok(own) = std::fs::read_to_string(repo.join(HANDOUT_MARK)) {
                bail!(
                    "this is the stage-{} handout: handouts are cut from the kit's reference, not from a handout \
                     (README.md says how to build and grade this one)",
                    own.trim()
                );
            }
            let out = out.unwrap_or_else(|| repo.join(format!("handout/stage-{stage}")));
            let cuts = write_handout(repo, stage, &out)?;
            let (own, later): (Vec<&Cut>, Vec<&Cut>) = cuts.iter().partition(|cut| cut.stage == stage);
            println!(
                "stage {stage} handout in {}: {} {} to write; later stages' {} left as stubs",
                out.display(),
                own.len(),
                plural(own.len(), "function", "functions"),
                later.len()
            );
            for cut in own {
                println!("  {}:{}: {}", cut.file.display(), cut.line, cut.message);
            }
            Ok(())
        }
    }
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// One function whose body a handout leaves to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The file, relative to the workspace.
    pub file: PathBuf,
    /// The line of its `todo!` in the handout.
    pub line: usize,
    /// The stage it belongs to.
    pub stage: u8,
    /// What to write.
    pub message: String,
}

/// Copies the workspace to `out` with stage `stage`'s functions, and
/// every later stage's, cut; writes the front page. Returns the cuts.
pub fn write_handout(repo: &Path, stage: u8, out: &Path) -> Result<Vec<Cut>> {
    if out.exists() {
        bail!("{} exists: remove it or give --out another directory", out.display());
    }
    let mut cuts = Vec::new();
    for entry in INCLUDED {
        let from = repo.join(entry);
        if from.exists() {
            copy(repo, &from, &out.join(entry), stage, &mut cuts)?;
        }
    }
    anyhow::ensure!(cuts.iter().any(|cut| cut.stage == stage), "no function is marked for stage {stage}");
    cuts.sort_by(|a, b| (a.stage, &a.file, a.line).cmp(&(b.stage, &b.file, b.line)));
    let points = points(&std::fs::read_to_string(repo.join("client/src/grade/checks.rs")).unwrap_or_default());
    std::fs::write(out.join("README.md"), front_page(stage, &cuts, &points, &chapters(repo, stage)?))?;
    std::fs::write(out.join(HANDOUT_MARK), format!("{stage}\n"))?;
    let broken = broken_links(out)?;
    anyhow::ensure!(broken.is_empty(), "the handout links to files it leaves out:\n{}", broken.join("\n"));
    Ok(cuts)
}

/// Copies `from` (a file or a tree) to `to`, cutting Rust sources and
/// Markdown.
fn copy(repo: &Path, from: &Path, to: &Path, stage: u8, cuts: &mut Vec<Cut>) -> Result<()> {
    let relative = from.strip_prefix(repo).unwrap_or(from);
    if EXCLUDED.iter().any(|excluded| relative == Path::new(excluded)) {
        return Ok(());
    }
    if from.is_dir() {
        if from.file_name().is_some_and(|name| name == "target" || name == "handout") {
            return Ok(());
        }
        std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy(repo, &entry.path(), &to.join(entry.file_name()), stage, cuts)?;
        }
        return Ok(());
    }
    // The server's and the client's sources carry the stage markers, the
    // tests the leave-out markers (xtask's own tests quote markers, and
    // are copied as they are).
    let is_kit_source = relative.starts_with("src") || relative.starts_with("client/src");
    let is_test = relative.starts_with("tests");
    if (is_kit_source || is_test) && from.extension().is_some_and(|ext| ext == "rs") {
        let source = std::fs::read_to_string(from).with_context(|| format!("cannot read {}", from.display()))?;
        let (mut handout, file_cuts) = cut_stage(&source, stage).with_context(|| format!("in {}", from.display()))?;
        handout = leave_out(&handout).with_context(|| format!("in {}", from.display()))?;
        if is_kit_source && from.file_name().is_some_and(|name| name == "lib.rs") {
            quiet_unused(&mut handout);
        }
        std::fs::write(to, handout)?;
        cuts.extend(file_cuts.into_iter().map(|(line, stage, message)| Cut {
            file: relative.to_path_buf(),
            line,
            stage,
            message,
        }));
        return Ok(());
    }
    if from.extension().is_some_and(|ext| ext == "md") {
        let text = std::fs::read_to_string(from).with_context(|| format!("cannot read {}", from.display()))?;
        std::fs::write(to, hide_solutions(&text, stage).with_context(|| format!("in {}", from.display()))?)?;
        return Ok(());
    }
    std::fs::copy(from, to).with_context(|| format!("cannot copy {}", from.display()))?;
    Ok(())
}

/// The guide quotes the reference's code. A quoted answer sits between
/// `<!-- handout: stage N answer -->` and `<!-- /handout -->`: the
/// handouts of stage N and earlier show a pointer to the exercise in its
/// place. `<!-- handout: reference only -->` blocks leave every handout.
pub fn hide_solutions(markdown: &str, stage: u8) -> Result<String> {
    let mut out = String::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("<!-- handout: ") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let what = rest.strip_suffix("-->").map(str::trim).unwrap_or_default();
        let answers = match what {
            "reference only" => None,
            _ => {
                let Some(n) = what.strip_prefix("stage ").and_then(|w| w.strip_suffix(" answer")) else {
                    bail!(
                        "line {}: write `<!-- handout: stage N answer -->` or `<!-- handout: reference only -->`",
                        index + 1
                    );
                };
                Some(n.trim().parse::<u8>().with_context(|| format!("line {}: {n:?} is not a stage", index + 1))?)
            }
        };
        let cut = answers.is_none_or(|answered| answered >= stage);
        let mut closed = false;
        for (_, inner) in lines.by_ref() {
            if inner.trim() == "<!-- /handout -->" {
                closed = true;
                break;
            }
            if !cut {
                out.push_str(inner);
                out.push('\n');
            }
        }
        anyhow::ensure!(closed, "line {}: no `<!-- /handout -->` closes this block", index + 1);
        if let Some(answered) = answers.filter(|_| cut) {
            out.push_str(&format!(
                "> *Cut from this handout: the reference's code here answers stage {answered}'s exercise{}.*\n",
                if answered == stage { ", yours to write (see README.md)" } else { "" }
            ));
        }
    }
    Ok(out)
}

/// A `// handout: stage N: message` line.
#[derive(Debug)]
struct Marker {
    /// 1-based lines of the comment: its first and its last.
    line: usize,
    last_line: usize,
    stage: u8,
    message: String,
    /// `// handout: stand-in:` lines after it: the body earlier stages'
    /// handouts get instead of a `todo!`, so the stages they grade can run.
    stand_in: Vec<String>,
}

/// A line of a marker's stand-in body.
const STAND_IN: &str = "// handout: stand-in:";

/// Whether `line` continues a marker: `//` and at least two spaces.
fn continues_marker(line: &str) -> bool {
    line.trim_start().strip_prefix("//  ").is_some_and(|rest| !rest.trim().is_empty())
}

fn markers(source: &str) -> Result<Vec<Marker>> {
    let mut found = Vec::new();
    let lines: Vec<&str> = source.lines().collect();
    for (index, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("// handout: stage ") else { continue };
        let Some((stage, message)) = rest.split_once(':') else {
            bail!("line {}: write a marker as `// handout: stage N: what to do`", index + 1);
        };
        let stage = stage.trim().parse().with_context(|| format!("line {}: {stage:?} is not a stage", index + 1))?;
        let mut message = message.trim().to_string();
        let mut last = index;
        while lines.get(last + 1).is_some_and(|next| continues_marker(next)) {
            last += 1;
            message.push(' ');
            message.push_str(lines[last].trim_start()[2..].trim());
        }
        let mut stand_in = Vec::new();
        while let Some(code) = lines.get(last + 1).and_then(|next| next.trim_start().strip_prefix(STAND_IN)) {
            last += 1;
            stand_in.push(code.strip_prefix(' ').unwrap_or(code).to_string());
        }
        found.push(Marker { line: index + 1, last_line: last + 1, stage, message, stand_in });
    }
    Ok(found)
}

/// Where each function's signature starts (line) and its body lies (the
/// braces, as line/column positions).
#[derive(Debug, Default)]
struct Bodies(Vec<(usize, proc_macro2::LineColumn, proc_macro2::LineColumn)>);

impl Bodies {
    fn record(&mut self, sig: &syn::Signature, block: &syn::Block) {
        let braces = block.brace_token.span;
        self.0.push((sig.fn_token.span.start().line, braces.open().start(), braces.close().end()));
    }
}

impl<'ast> Visit<'ast> for Bodies {
    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.record(&item.sig, &item.block);
        syn::visit::visit_item_fn(self, item);
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.record(&item.sig, &item.block);
        syn::visit::visit_impl_item_fn(self, item);
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(block) = &item.default {
            self.record(&item.sig, block);
        }
        syn::visit::visit_trait_item_fn(self, item);
    }
}

/// Byte offset of a line/column position (columns count chars).
fn offset(source: &str, at: proc_macro2::LineColumn) -> usize {
    let line_start: usize = source.split_inclusive('\n').take(at.line - 1).map(str::len).sum();
    let line = &source[line_start..];
    line_start + line.char_indices().nth(at.column).map_or(line.len(), |(i, _)| i)
}

/// A cut in one file: the line of its `todo!`, its stage, its message.
pub type FileCut = (usize, u8, String);

/// `source` with the bodies of the functions marked for `stage` or a
/// later stage replaced by `todo!`, and each cut: the line of its `todo!`
/// in the result, its stage and message. Earlier stages' markers stay.
pub fn cut_stage(source: &str, stage: u8) -> Result<(String, Vec<FileCut>)> {
    let markers = markers(source)?;
    if markers.iter().all(|m| m.stage < stage) {
        return Ok((source.to_string(), Vec::new()));
    }
    let file = syn::parse_file(source).context("cannot parse")?;
    let mut bodies = Bodies::default();
    bodies.visit_file(&file);
    let mut cuts = Vec::new();
    for marker in markers.iter().filter(|m| m.stage >= stage) {
        // The function is the first one whose `fn` follows the marker,
        // with only its signature's attributes and modifiers between.
        let Some(&(fn_line, open, close)) =
            bodies.0.iter().filter(|(line, _, _)| *line > marker.last_line).min_by_key(|(line, _, _)| *line)
        else {
            bail!("line {}: no function follows the handout marker", marker.line);
        };
        let indent: String =
            source.lines().nth(fn_line - 1).unwrap_or_default().chars().take_while(|c| c.is_whitespace()).collect();
        let message = format!("stage {}: {}", marker.stage, marker.message);
        let body = if marker.stage > stage && !marker.stand_in.is_empty() {
            // A later stage's exercise that this stage's tests run through:
            // a stand-in that is not the answer, so they can pass.
            let mut body = format!(
                "{{\n{indent}    // A stand-in until stage {}, not the exercise: leave it (the stage-{} handout asks for it).\n",
                marker.stage, marker.stage
            );
            for line in &marker.stand_in {
                body.push_str(&format!("{indent}    {line}\n"));
            }
            body.push_str(&format!("{indent}}}"));
            body
        } else {
            // A raw string prints as written: `\n` in a message stays `\n`.
            format!("{{\n{indent}    todo!(r#\"{message}\"#)\n{indent}}}")
        };
        cuts.push((offset(source, open), offset(source, close), body, marker.stage, marker.message.clone()));
        // The marker itself says no more than its todo!.
        let first = proc_macro2::LineColumn { line: marker.line, column: 0 };
        let after = proc_macro2::LineColumn { line: marker.last_line + 1, column: 0 };
        cuts.push((offset(source, first), offset(source, after), String::new(), 0, String::new()));
    }
    cuts.sort_by_key(|(start, ..)| std::cmp::Reverse(*start));
    let mut handout = source.to_string();
    for (start, end, body, ..) in &cuts {
        handout.replace_range(start..end, body);
    }
    // Lines of each todo! in the result.
    let mut found = Vec::new();
    for (stage, message) in
        cuts.iter().rev().filter(|cut| !cut.2.is_empty()).map(|(.., stage, message)| (*stage, message))
    {
        let needle = format!("\"stage {stage}: {message}\"");
        let line = handout.lines().position(|l| l.contains(&needle)).map_or(0, |i| i + 1);
        if line == 0 {
            continue; // a stand-in
        }
        found.push((line, stage, message.clone()));
    }
    Ok((handout, found))
}

/// `source` without the items marked `// handout: leave out` (the marker,
/// the item's docs and attributes, and the item).
pub fn leave_out(source: &str) -> Result<String> {
    const MARK: &str = "// handout: leave out";
    let marked: Vec<usize> =
        source.lines().enumerate().filter(|(_, l)| l.trim().starts_with(MARK)).map(|(i, _)| i + 1).collect();
    if marked.is_empty() {
        return Ok(source.to_string());
    }
    let file = syn::parse_file(source).context("cannot parse")?;
    let mut drop_lines = BTreeSet::new();
    for line in marked {
        let item = file
            .items
            .iter()
            .map(|item| item.span())
            .filter(|span| span.end().line > line)
            .min_by_key(|s| s.end().line);
        let Some(span) = item else { bail!("line {line}: no item follows `{MARK}`") };
        drop_lines.extend(line..=span.end().line);
    }
    let mut out = String::new();
    for (index, line) in source.lines().enumerate() {
        if !drop_lines.contains(&(index + 1)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// A handout's crate root compiles quietly: the todo!() bodies leave
/// parameters, imports and helpers unused.
fn quiet_unused(crate_root: &mut String) {
    if let Some(at) = crate_root.find("#![deny(missing_docs)]\n") {
        let end = at + "#![deny(missing_docs)]\n".len();
        crate_root.insert_str(end, "#![allow(unused)] // a handout: todo!() bodies leave names unused\n");
    }
}

/// The grader's tests, read from its catalog: (name, stage, points).
fn points(catalog: &str) -> Vec<(String, u8, u32)> {
    #[derive(Default)]
    struct Calls(Vec<(String, u8, u32)>);
    impl<'ast> Visit<'ast> for Calls {
        fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
            let lit = |i: usize| match call.args.iter().nth(i) {
                Some(syn::Expr::Lit(syn::ExprLit { lit, .. })) => Some(lit.clone()),
                _ => None,
            };
            if let (Some(syn::Lit::Str(name)), Some(syn::Lit::Int(stage)), Some(syn::Lit::Int(points))) =
                (lit(0), lit(1), lit(2))
            {
                if let (Ok(stage), Ok(points)) = (stage.base10_parse(), points.base10_parse()) {
                    self.0.push((name.value(), stage, points));
                }
            }
            syn::visit::visit_expr_call(self, call);
        }

        // The catalog is a `vec![...]`, whose body syn leaves as tokens.
        fn visit_macro(&mut self, mac: &'ast syn::Macro) {
            let parser = syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated;
            if let Ok(exprs) = mac.parse_body_with(parser) {
                for expr in &exprs {
                    self.visit_expr(expr);
                }
            }
        }
    }
    let mut calls = Calls::default();
    if let Ok(file) = syn::parse_file(catalog) {
        calls.visit_file(&file);
    }
    calls.0
}

/// The guide's chapters for `stage` (`docs/guide/0N*.md`).
fn chapters(repo: &Path, stage: u8) -> Result<Vec<String>> {
    let prefix = format!("{stage:02}");
    let mut found: Vec<String> = std::fs::read_dir(repo.join("docs/guide"))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix) && name.ends_with(".md"))
        .map(|name| format!("docs/guide/{name}"))
        .collect();
    found.sort();
    Ok(found)
}

/// A stage's title, what it asks, and the models its grade runs.
type StageTask = (&'static str, &'static str, &'static [&'static str]);

/// What each stage asks, and the models its grade runs.
fn task(stage: u8) -> StageTask {
    match stage {
        1 => (
            "A one-at-a-time server",
            "Open the listening socket (socket, bind, listen) and write the iterative server's loop: wait for a \
             client, accept it, serve it (read its request, write the answer), close it, repeat. The time service \
             writes the time and closes.",
            &["iterative"],
        ),
        2 => (
            "Many clients at once",
            "Write the `select(2)` loop (one thread, non-blocking sockets, the interest sets rebuilt every turn), \
             the same loop with `poll(2)`, then on epoll through mio, where the interest list lives in the kernel. \
             (The process and thread models, chapter 2c, answer the question without an event loop: they are \
             the comparison, not the exercise; grade the three loops.)",
            &["select", "poll", "event"],
        ),
        3 => (
            "Files from a sandboxed root",
            "Turn a requested name into a path inside the root, refusing every way out (the sandbox), and write \
             the connection's state machine: frame requests out of what arrives (pipelined, partial, dribbled), \
             answer each complete one in order.",
            &["event"],
        ),
        4 => (
            "Asynchronous reads",
            "Read files without blocking the loop with the book's interface: submit with `aio_read`, learn of the \
             completion with `aio_error` and `aio_return` (event-aio); then the second part: send the read to a \
             pool of reader threads and post the result back to the loop (event-async). An optional third part: \
             the same read as an io_uring submission and completion (uring; not graded here, io_uring may be \
             refused by your kernel).",
            &["event-aio", "event-async"],
        ),
        5 => (
            "Signals and the cache",
            "On SIGHUP clear the cache, and make the clear stick: a read started before it must not put stale \
             bytes back (the cache's generation).",
            &["event-async"],
        ),
        _ => (
            "Was it worth it",
            "Measure, and write the verdict the benchmark prints from its own rows: when the asynchronous design \
             was worth it, by how much, and what limits each model.",
            &[],
        ),
    }
}

/// The handout's `README.md`: the student's front page.
fn front_page(stage: u8, cuts: &[Cut], points: &[(String, u8, u32)], chapters: &[String]) -> String {
    let (title, what, models) = task(stage);
    let mut page = format!("# Stage {stage}: {title}\n\nThis is your handout for stage {stage} of the assignment ");
    page.push_str("(`docs/assignment.md`). ");
    page.push_str(what);
    page.push_str("\n\nRead first: ");
    let links: Vec<String> = chapters.iter().map(|c| format!("[`{c}`]({c})")).collect();
    page.push_str(&links.join(" and "));
    page.push_str(" (the chapter of this stage), then [`docs/assignment.md`](docs/assignment.md) (the contract) ");
    page.push_str(
        "and [`docs/grading.md`](docs/grading.md) (how you are graded).\n\n## Your task: the functions to write\n\n",
    );
    page.push_str(
        "Each is a `todo!(\"stage ...\")` that says what to do; run it and the server panics with that text, ",
    );
    page.push_str("and the grader shows it beside the failing test.\n\n");
    for cut in cuts.iter().filter(|cut| cut.stage == stage) {
        page.push_str(&format!("- `{}` line {}: {}\n", cut.file.display(), cut.line, cut.message));
    }
    page.push_str("\nEdit only those functions (and add helpers beside them if you like). ");
    page.push_str("Do not touch the rest: the other files are the kit your code plugs into, and the grader ");
    page.push_str("(`client/`) is what scores you. ");
    let later: BTreeSet<u8> = cuts.iter().filter(|cut| cut.stage > stage).map(|cut| cut.stage).collect();
    if !later.is_empty() {
        let later: Vec<String> = later.iter().map(u8::to_string).collect();
        page.push_str(&format!(
            "The `todo!`s of stages {} are later handouts' work, and so is any function marked \
             \"A stand-in until stage M\" (a simple body, not the exercise, that lets this stage's tests run): \
             leave them.",
            later.join(", ")
        ));
    }
    page.push_str("\n\n## Build, run, grade\n\nFrom this directory:\n\n```sh\ncargo build\n");
    for model in models {
        page.push_str(&format!(
            "./target/debug/client grade --stages {stage} --stretch 2 -- ./target/debug/server --model {model} --port {{port}} --root {{root}} --read-delay-ms {{delay}}\n"
        ));
    }
    if stage == 6 {
        page.push_str("cargo test --package client --lib verdict\n");
    }
    page.push_str("```\n\n");
    page.push_str("Until your code is written the grade fails the tests of your part, each with the `todo!` text. ");
    page.push_str("A debug build is quick to rebuild; `--stretch 2` gives it twice the time. ");
    page.push_str("To try the server by hand: `./target/debug/server --model ");
    page.push_str(models.first().copied().unwrap_or("event"));
    page.push_str(if stage == 1 {
        " --service time` and, in another terminal, `./target/debug/client 0`"
    } else {
        " --root fixtures` and, in another terminal, `./target/debug/client 0 ./test.txt`"
    });
    page.push_str(" (`client --help` lists the rest).\n\n");
    page.push_str(
        "`cargo test` runs the whole kit's suite, whose tests of later stages fail until those stages are \
         written (their `todo!`s and stand-ins); for your part, grade as above or run the unit tests of the \
         files you edit (`cargo test --lib <name>`).\n\n## Points\n\n",
    );
    let mine: Vec<&(String, u8, u32)> = points.iter().filter(|(_, s, _)| *s == stage).collect();
    if mine.is_empty() {
        page.push_str("`./target/debug/client grade --list` lists every test and its points.\n");
    } else {
        let total: u32 = mine.iter().map(|(_, _, p)| p).sum();
        page.push_str(&format!("Stage {stage} is worth {total} points:\n\n| test | points |\n|---|---|\n"));
        for (name, _, p) in mine {
            page.push_str(&format!("| `{name}` | {p} |\n"));
        }
        page.push_str("\n`./target/debug/client grade --list` says what each test proves.\n");
    }
    page
}

/// Relative Markdown links under `root` whose target is not in it.
fn broken_links(root: &Path) -> Result<Vec<String>> {
    let mut broken = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                if !path.ends_with("target") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "md") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            for link in text.split("](").skip(1).filter_map(|rest| rest.split_once(')').map(|(l, _)| l)) {
                let target = link.split('#').next().unwrap_or_default().trim();
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") || target.contains(' ')
                {
                    continue;
                }
                let resolved = path.parent().unwrap_or(root).join(target);
                if !resolved.exists() {
                    let shown = path.strip_prefix(root).unwrap_or(&path).display();
                    broken.push(format!("{shown}: {link}"));
                }
            }
        }
    }
    Ok(broken)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r#"//! A crate.
#![deny(missing_docs)]

/// Kept.
pub fn kept() -> u32 {
    1
}

// handout: stage 2: write the loop;
//   find the \n; read chapter 2
/// Documented, with a "quoted" brace } in a string.
#[inline]
pub fn cut(x: u32) -> u32 {
    let s = "}";
    x + s.len() as u32
}

struct S;

impl S {
    // handout: stage 3: another stage
    fn later(&self) -> Vec<u8> {
        vec![1, 2]
    }
}

// handout: stage 1: an earlier stage
fn earlier() -> u8 {
    7
}
"#;

    #[test]
    fn the_stage_and_every_later_stage_lose_their_bodies_earlier_stages_keep_theirs() {
        let (handout, cuts) = cut_stage(SOURCE, 2).unwrap();
        assert_eq!(cuts.len(), 2);
        assert!(
            handout.contains(
                "pub fn cut(x: u32) -> u32 {\n    todo!(r#\"stage 2: write the loop; find the \\n; read chapter 2\"#)\n}"
            ),
            "{handout}"
        );
        assert!(
            handout.contains("fn later(&self) -> Vec<u8> {\n        todo!(r#\"stage 3: another stage\"#)\n    }"),
            "a method's stub is indented as the method: {handout}"
        );
        assert!(handout.contains("pub fn kept() -> u32 {\n    1\n}"));
        assert!(handout.contains("    7\n"), "an earlier stage is kept");
        assert!(!handout.contains("// handout: stage 2") && handout.contains("// handout: stage 1"), "{handout}");
        assert!(!handout.contains("vec![1, 2]"), "a later stage is cut too");
        assert_eq!(cuts[0].0, handout.lines().position(|l| l.contains("todo!(r#\"stage 2:")).unwrap() + 1);
        syn::parse_file(&handout).expect("the handout still parses");
        assert_eq!(cut_stage(SOURCE, 4).unwrap(), (SOURCE.to_string(), Vec::new()));
    }

    #[test]
    fn answers_of_the_stage_and_later_stages_leave_the_guide_reference_only_blocks_leave_every_handout() {
        let guide = "Intro\n<!-- handout: stage 2 answer -->\n```rust\nanswer();\n```\n<!-- /handout -->\nMid\n\
                     <!-- handout: reference only -->\ncargo xtask handout --stage 1\n<!-- /handout -->\nAfter\n";
        for stage in [1, 2] {
            let handout = hide_solutions(guide, stage).unwrap();
            assert!(!handout.contains("answer()") && !handout.contains("xtask"), "{handout}");
            assert!(handout.contains("Cut from this handout") && handout.contains("After"), "{handout}");
        }
        let later = hide_solutions(guide, 3).unwrap();
        assert!(later.contains("answer()") && !later.contains("xtask"), "{later}");
        assert!(!later.contains("<!--"), "the markers go too: {later}");
        assert!(hide_solutions("<!-- handout: stage 1 answer -->\nopen\n", 1).is_err(), "an unclosed block");
    }

    #[test]
    fn a_later_stage_with_a_stand_in_gets_it_its_own_stage_a_todo() {
        let source =
            "    // handout: stage 3: frame\n    //   every request\n    // handout: stand-in: let x = 1;\n    \
                      // handout: stand-in: x\n    fn f() -> u8 {\n        2\n    }\n";
        let (earlier, cuts) = cut_stage(source, 2).unwrap();
        assert!(cuts.is_empty(), "a stand-in is no exercise of stage 2: {cuts:?}");
        assert!(earlier.contains("fn f() -> u8 {\n        // A stand-in until stage 3, not the exercise"), "{earlier}");
        assert!(earlier.contains("        let x = 1;\n        x\n    }") && !earlier.contains("handout:"), "{earlier}");
        let (own, cuts) = cut_stage(source, 3).unwrap();
        assert_eq!(cuts, vec![(2, 3, "frame every request".to_string())]);
        assert!(own.contains("todo!(r#\"stage 3: frame every request\"#)") && !own.contains("x = 1"), "{own}");
    }

    #[test]
    fn marked_items_are_left_out() {
        let source = "mod a;\n// handout: leave out\nmod b;\n\n/// Doc.\n// handout: leave out\n#[test]\nfn t() {\n    x();\n}\nfn kept() {}\n";
        let out = leave_out(source).unwrap();
        assert_eq!(out, "mod a;\n\n/// Doc.\nfn kept() {}\n");
    }

    #[test]
    fn a_marker_without_a_function_is_an_error() {
        assert!(cut_stage("// handout: stage 1: nothing here\nconst X: u8 = 1;\n", 1).is_err());
        assert!(cut_stage("// handout: stage one: bad\nfn f() {}\n", 1).is_err());
    }

    #[test]
    fn the_reference_has_markers_for_every_stage_and_no_handout_links_outside_itself() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for stage in 1..=6 {
            let out = tempfile::tempdir().unwrap();
            let handout = out.path().join("handout");
            let cuts = write_handout(repo, stage, &handout).unwrap();
            assert!(cuts.iter().any(|cut| cut.stage == stage), "stage {stage}");
            assert!(cuts.iter().all(|cut| cut.stage >= stage), "stage {stage}");
            assert!(!handout.join("docs/instructors.md").exists(), "the answers stay out");
            assert!(!handout.join("tests/grader").exists(), "the Python solution stays out");
            let page = std::fs::read_to_string(handout.join("README.md")).unwrap();
            assert!(page.starts_with(&format!("# Stage {stage}: ")), "{page}");
        }
    }
}
