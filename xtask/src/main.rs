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
//! The handout is the whole workspace (the same crates, the client, the
//! grader, the guide), with the body of every function marked for stage N
//! replaced by `todo!("stage N: ...")`: it builds, everything else works,
//! and `client grade` fails exactly the tests of what is missing, showing
//! the message. The guide's instructor appendix stays out of it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use syn::visit::Visit;

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
        /// The stage (1 to 6) whose parts become todo!().
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=6))]
        stage: u8,
        /// Where to write it [default: handout/stage-N].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Top-level entries of the workspace that go into a handout.
const INCLUDED: &[&str] = &[
    ".cargo",
    ".ci",
    "Cargo.lock",
    "Cargo.toml",
    "README.md",
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
const EXCLUDED: &[&str] = &["docs/instructors.md"];

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Handout { stage, out } => {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask lives in the workspace")?;
            let out = out.unwrap_or_else(|| repo.join(format!("handout/stage-{stage}")));
            let cut = write_handout(repo, stage, &out)?;
            let functions = if cut == 1 { "function" } else { "functions" };
            println!("stage {stage} handout in {}: {cut} {functions} to write", out.display());
            for line in summary(&out, stage)? {
                println!("  {line}");
            }
            Ok(())
        }
    }
}

/// Copies the workspace to `out` with stage `stage`'s functions cut.
/// Returns how many functions were cut.
pub fn write_handout(repo: &Path, stage: u8, out: &Path) -> Result<usize> {
    if out.exists() {
        bail!("{} exists: remove it or give --out another directory", out.display());
    }
    let mut cut = 0;
    for entry in INCLUDED {
        let from = repo.join(entry);
        if from.exists() {
            cut += copy(repo, &from, &out.join(entry), stage)?;
        }
    }
    anyhow::ensure!(cut > 0, "no function is marked for stage {stage}");
    Ok(cut)
}

/// Copies `from` (a file or a tree) to `to`, cutting Rust sources.
fn copy(repo: &Path, from: &Path, to: &Path, stage: u8) -> Result<usize> {
    let relative = from.strip_prefix(repo).unwrap_or(from);
    if EXCLUDED.iter().any(|excluded| relative == Path::new(excluded)) {
        return Ok(0);
    }
    if from.is_dir() {
        if from.file_name().is_some_and(|name| name == "target" || name == "handout") {
            return Ok(0);
        }
        std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        let mut cut = 0;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            cut += copy(repo, &entry.path(), &to.join(entry.file_name()), stage)?;
        }
        return Ok(cut);
    }
    // The server's and the client's sources carry the markers (xtask's own
    // tests quote markers, and are copied as they are).
    let is_kit_source = relative.starts_with("src") || relative.starts_with("client/src");
    if is_kit_source && from.extension().is_some_and(|ext| ext == "rs") {
        let source = std::fs::read_to_string(from).with_context(|| format!("cannot read {}", from.display()))?;
        let (mut handout, cut) = cut_stage(&source, stage).with_context(|| format!("in {}", from.display()))?;
        if from.file_name().is_some_and(|name| name == "lib.rs") {
            quiet_unused(&mut handout);
        }
        std::fs::write(to, handout)?;
        return Ok(cut);
    }
    if from.extension().is_some_and(|ext| ext == "md") {
        let text = std::fs::read_to_string(from).with_context(|| format!("cannot read {}", from.display()))?;
        std::fs::write(to, hide_solutions(&text, stage))?;
        return Ok(0);
    }
    std::fs::copy(from, to).with_context(|| format!("cannot copy {}", from.display()))?;
    Ok(0)
}

/// The guide quotes the reference's code; where a quoted block is the
/// answer to the handout's own exercise, it is marked with
/// `<!-- handout: stage N solution -->` on the line before, and the
/// stage-N handout shows a note in its place.
pub fn hide_solutions(markdown: &str, stage: u8) -> String {
    let marker = format!("<!-- handout: stage {stage} solution -->");
    let mut out = String::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if line.trim() != marker {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        // Skip the fenced block that follows the marker.
        let mut fences = 0;
        for skipped in lines.by_ref() {
            if skipped.trim_start().starts_with("```") {
                fences += 1;
                if fences == 2 {
                    break;
                }
            }
        }
        out.push_str(&format!("> In the stage-{stage} handout this code is yours to write: see its `todo!`.\n"));
    }
    out
}

/// A `// handout: stage N: message` line.
#[derive(Debug)]
struct Marker {
    /// 1-based line of the comment.
    line: usize,
    stage: u8,
    message: String,
}

fn markers(source: &str) -> Result<Vec<Marker>> {
    let mut found = Vec::new();
    for (index, line) in source.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("// handout: stage ") else { continue };
        let Some((stage, message)) = rest.split_once(':') else {
            bail!("line {}: write a marker as `// handout: stage N: what to do`", index + 1);
        };
        let stage = stage.trim().parse().with_context(|| format!("line {}: {stage:?} is not a stage", index + 1))?;
        found.push(Marker { line: index + 1, stage, message: message.trim().to_string() });
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

/// `source` with the bodies of the functions marked for `stage` replaced by
/// `todo!`, and how many were replaced. Markers of other stages stay.
pub fn cut_stage(source: &str, stage: u8) -> Result<(String, usize)> {
    let markers = markers(source)?;
    if markers.iter().all(|m| m.stage != stage) {
        return Ok((source.to_string(), 0));
    }
    let file = syn::parse_file(source).context("cannot parse")?;
    let mut bodies = Bodies::default();
    bodies.visit_file(&file);
    let offset = |at: proc_macro2::LineColumn| -> usize {
        let line_start: usize = source.split_inclusive('\n').take(at.line - 1).map(str::len).sum();
        let line = &source[line_start..];
        line_start + line.char_indices().nth(at.column).map_or(line.len(), |(i, _)| i)
    };
    let mut cuts = Vec::new();
    for marker in markers.iter().filter(|m| m.stage == stage) {
        // The function is the first one whose `fn` follows the marker,
        // with only its signature's attributes and modifiers between.
        let Some(&(_, open, close)) =
            bodies.0.iter().filter(|(line, _, _)| *line > marker.line).min_by_key(|(line, _, _)| *line)
        else {
            bail!("line {}: no function follows the handout marker", marker.line);
        };
        let message = format!("stage {stage}: {}", marker.message).replace('\\', "\\\\").replace('"', "\\\"");
        cuts.push((offset(open), offset(close), format!("{{\n    todo!(\"{message}\")\n}}")));
    }
    cuts.sort_by_key(|(start, _, _)| std::cmp::Reverse(*start));
    let mut handout = source.to_string();
    for (start, end, body) in &cuts {
        handout.replace_range(start..end, body);
    }
    Ok((handout, cuts.len()))
}

/// A handout's crate root compiles quietly: the todo!() bodies leave
/// parameters, imports and helpers unused.
fn quiet_unused(crate_root: &mut String) {
    if let Some(at) = crate_root.find("#![deny(missing_docs)]\n") {
        let end = at + "#![deny(missing_docs)]\n".len();
        crate_root.insert_str(end, "#![allow(unused)] // a handout: todo!() bodies leave names unused\n");
    }
}

/// The stage's exercises, one line each: file and message.
fn summary(out: &Path, stage: u8) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path)?;
                let needle = format!("todo!(\"stage {stage}: ");
                for (number, line) in text.lines().enumerate() {
                    if let Some(at) = line.find(&needle) {
                        let what = line[at + needle.len()..].trim_end_matches("\")");
                        let shown = path.strip_prefix(out).unwrap_or(&path).display();
                        lines.push(format!("{shown}:{}: {what}", number + 1));
                    }
                }
            }
        }
    }
    lines.sort();
    Ok(lines)
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

// handout: stage 2: write the loop; read chapter 2
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
"#;

    #[test]
    fn only_the_marked_functions_of_the_stage_lose_their_bodies() {
        let (handout, cut) = cut_stage(SOURCE, 2).unwrap();
        assert_eq!(cut, 1);
        assert!(
            handout.contains("pub fn cut(x: u32) -> u32 {\n    todo!(\"stage 2: write the loop; read chapter 2\")\n}"),
            "{handout}"
        );
        assert!(handout.contains("pub fn kept() -> u32 {\n    1\n}"));
        assert!(handout.contains("vec![1, 2]"), "other stages are untouched");
        syn::parse_file(&handout).expect("the handout still parses");
        assert_eq!(cut_stage(SOURCE, 5).unwrap(), (SOURCE.to_string(), 0));
    }

    #[test]
    fn the_stages_own_solution_is_left_out_of_its_guide() {
        let guide = "Intro\n<!-- handout: stage 1 solution -->\n```rust\nanswer();\n```\nAfter\n";
        let handout = hide_solutions(guide, 1);
        assert!(!handout.contains("answer()"), "{handout}");
        assert!(handout.contains("yours to write") && handout.contains("After"), "{handout}");
        assert_eq!(hide_solutions(guide, 2), guide, "other stages keep the excerpt");
    }

    #[test]
    fn a_marker_without_a_function_is_an_error() {
        assert!(cut_stage("// handout: stage 1: nothing here\nconst X: u8 = 1;\n", 1).is_err());
        assert!(cut_stage("// handout: stage one: bad\nfn f() {}\n", 1).is_err());
    }

    #[test]
    fn the_reference_has_markers_for_every_stage() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for stage in 1..=6 {
            let out = tempfile::tempdir().unwrap();
            let cut = write_handout(repo, stage, &out.path().join("handout")).unwrap();
            assert!(cut >= 1, "stage {stage}");
            assert!(!out.path().join("handout/docs/instructors.md").exists(), "the answers stay out");
        }
    }
}
