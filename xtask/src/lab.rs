//! `cargo xtask lab [--lang rust|c] --stage N [--out DIR]`: a student's
//! handout for stage N, cut from the labs (`labs/rust/`, `labs/c/`).
//!
//! A lab program is a whole, working, graded program. The part a student
//! writes at its stage sits between marker comments:
//!
//! ```text
//! // lab:begin
//! // lab:todo <what must hold; the traps the grader tries; the man page>
//! // lab:todo <more of the same statement>
//! <the solution lines>
//! // lab:stub <a line that replaces the solution in the handout>
//! // lab:end
//! ```
//!
//! Regions in `stageK*.rs` / `stageK*.c` are the stage-K lesson. The
//! stage-N handout cuts exactly the regions of the stage-N programs: each
//! becomes its todo lines as `// TODO:` comments, then its stub lines (in
//! Rust a region without stub becomes `todo!("<the todo text>")`, so a
//! graded run shows the text). Earlier stages' programs ship complete with
//! the marker lines dropped; later stages' programs do not ship.
//!
//! The handout is a workspace laid out as the kit is: the cut lab crate
//! in `labs/rust/` (or the C files in `labs/c/`), the kit's `client` (and the `contract` it uses) so that
//! `client grade` builds beside the student's code, the contract and the
//! grading docs, and a `README.md` from the lab's `HANDOUT.md` with
//! `{stage}` replaced, and with the lines between `<!-- stage K -->` and
//! `<!-- /stage -->` kept only when K is the handout's stage (the commands
//! that name a stage's programs). The guide's chapters of stages 1 to N
//! ship in `docs/guide/`, with the listings of stage N cut (see
//! [`guide_page`]). Writing it checks that no line of a cut region is left
//! anywhere in it.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

/// The language of a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// `labs/rust/`: a cargo crate, one binary per program.
    Rust,
    /// `labs/c/`: a Makefile, `lab.h`, `lab.c` and one file per program.
    C,
}

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::C => "c",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Lang::Rust => "rs",
            Lang::C => "c",
        }
    }
}

const BEGIN: &str = "// lab:begin";
const TODO: &str = "// lab:todo";
const STUB: &str = "// lab:stub";
const END: &str = "// lab:end";

/// One cut region of a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// The 1-based line of its `lab:begin`.
    pub line: usize,
    /// The 1-based line of its `// TODO:` in the handout (cut programs).
    pub handout_line: usize,
    /// Its statement, the todo lines joined by spaces.
    pub todo: String,
    /// The solution lines, as written.
    pub solution: Vec<String>,
}

/// What to do with a program's regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An earlier stage's program: the solution stays, the markers go.
    Complete,
    /// This stage's program: the solution goes, the todo and stub stay.
    Cut,
}

/// The marker a line holds, if any, and what follows it.
fn marker(line: &str) -> Option<(&'static str, &str)> {
    let trimmed = line.trim_start();
    for mark in [BEGIN, TODO, STUB, END] {
        if let Some(rest) = trimmed.strip_prefix(mark) {
            if rest.is_empty() || rest.starts_with(' ') {
                return Some((mark, rest.strip_prefix(' ').unwrap_or(rest)));
            }
        }
    }
    if trimmed.starts_with("// lab:") {
        return Some(("unknown", trimmed));
    }
    None
}

/// `source` with its regions completed or cut, and the regions.
pub fn cut(source: &str, lang: Lang, mode: Mode) -> Result<(String, Vec<Region>)> {
    let mut out = String::new();
    let mut regions = Vec::new();
    let mut lines = source.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        match marker(line) {
            None => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            Some((BEGIN, _)) => {}
            Some(("unknown", _)) => {
                bail!("line {}: unknown marker (lab:begin, lab:todo, lab:stub, lab:end)", index + 1)
            }
            Some((mark, _)) => bail!("line {}: `{mark}` outside a lab:begin ... lab:end region", index + 1),
        }
        let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
        let (mut todo, mut solution, mut stub) = (Vec::new(), Vec::new(), Vec::new());
        let mut closed = false;
        for (inner_index, inner) in lines.by_ref() {
            match marker(inner) {
                None => solution.push(inner.to_string()),
                Some((TODO, text)) => {
                    ensure!(solution.is_empty() && stub.is_empty(), "line {}: todo lines come first", inner_index + 1);
                    todo.push(text.trim_end().to_string());
                }
                Some((STUB, text)) => {
                    let stub_indent: String = inner.chars().take_while(|c| c.is_whitespace()).collect();
                    stub.push(format!("{stub_indent}{text}").trim_end().to_string());
                }
                Some((END, _)) => {
                    closed = true;
                    break;
                }
                Some((BEGIN, _)) => bail!("line {}: a region inside a region", inner_index + 1),
                Some(_) => bail!("line {}: unknown marker", inner_index + 1),
            }
        }
        ensure!(closed, "line {}: no `// lab:end` closes this region", index + 1);
        ensure!(!todo.is_empty(), "line {}: a region states its task in `// lab:todo` lines", index + 1);
        ensure!(solution.iter().any(|l| !l.trim().is_empty()), "line {}: a region holds the solution lines", index + 1);
        let statement = todo.join(" ");
        let handout_line = out.lines().count() + 1;
        match mode {
            Mode::Complete => {
                for line in &solution {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Mode::Cut => {
                for (i, text) in todo.iter().enumerate() {
                    let lead = if i == 0 { "// TODO: " } else { "//   " };
                    out.push_str(&format!("{indent}{lead}{text}\n"));
                }
                if !stub.is_empty() {
                    for line in &stub {
                        out.push_str(line);
                        out.push('\n');
                    }
                } else if lang == Lang::Rust {
                    out.push_str(&format!("{indent}{STAND_IN}(\"{}\");\n", rust_literal(&statement)));
                } else {
                    bail!(
                        "line {}: a C region needs `// lab:stub` lines (say, a call that prints the TODO and exits)",
                        index + 1
                    );
                }
            }
        }
        regions.push(Region { line: index + 1, handout_line, todo: statement, solution });
    }
    Ok((out, regions))
}

/// A cut Rust program with the warnings its TODOs cause (imports and
/// helpers not used yet, code after a `todo!`) allowed, after its module
/// docs, so that the build shows the student's own mistakes.
fn quiet_until_written(text: &str) -> String {
    let docs = text.lines().take_while(|line| line.starts_with("//!")).count();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(docs, "// Until the TODOs are written, their helpers and imports are unused: remove this line then.");
    lines.insert(docs + 1, "#![allow(unused, unreachable_code)]");
    lines.join("\n") + "\n"
}

/// The macro a Rust handout calls where a region without a stub was: it
/// panics with the region's todo text, which the grader's report shows.
const STAND_IN: &str = "todo!";

/// `text` inside a `todo!("...")`: escaped, and with braces doubled since
/// the literal is a format string.
fn rust_literal(text: &str) -> String {
    text.escape_debug().to_string().replace('{', "{{").replace('}', "}}")
}

/// Whether a line may appear in a handout though a region holds it: one
/// that says nothing of the answer. Blank, brackets and punctuation, an
/// attribute, or two words at most (`loop {`, `break;`, `return 0;`,
/// `} else {`, `enum Phase {`, `phase: Phase,`).
pub fn is_trivial(line: &str) -> bool {
    let line = line.trim();
    line.chars().all(|c| "{}()[];,".contains(c)) || line.starts_with("#[") || words(line) <= 2
}

/// The words of a line: runs of letters, digits and underscores.
fn words(line: &str) -> usize {
    line.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|word| !word.is_empty()).count()
}

/// Kit files a handout leaves out: `bare` (a benchmark's epoll server)
/// would answer stage 2.
const LEFT_OUT: &[&str] = &["client/src/bin/bare.rs"];

/// The kit's own crates, copied as they are: written without the labs, so
/// a short line in common with a region (`match self.stream.read(&mut
/// buf) {`) is an idiom, not a copy. There a leak is a line of 4 words or
/// more.
const KIT_COPIES: &[&str] = &["client", "contract"];

/// The stage a program's file name says (`stage2-select.rs`: 2).
fn stage_of(name: &str) -> Option<u8> {
    let rest = name.strip_prefix("stage")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Writes the stage-`stage` handout of the `lang` lab to `out`; returns
/// the regions cut, with their file.
pub fn write_handout(repo: &Path, lang: Lang, stage: u8, out: &Path) -> Result<Vec<(PathBuf, Region)>> {
    let lab = repo.join("labs").join(lang.name());
    ensure!(lab.is_dir(), "{} does not exist: the {} labs are not written yet", lab.display(), lang.name());
    ensure!(!out.exists(), "{} exists: remove it or give --out another directory", out.display());
    let program_dir = match lang {
        Lang::Rust => lab.join("src/bin"),
        Lang::C => lab.clone(),
    };
    let mut programs: Vec<(String, u8)> = std::fs::read_dir(&program_dir)
        .with_context(|| format!("cannot list {}", program_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(&format!(".{}", lang.extension())))
        .filter_map(|name| Some((name.clone(), stage_of(&name)?)))
        .collect();
    programs.sort();
    ensure!(
        programs.iter().any(|(_, s)| *s == stage),
        "no stage-{stage} program in {} (files named stage{stage}*.{})",
        program_dir.display(),
        lang.extension()
    );
    // The repository's layout (`labs/rust/`, `labs/c/`): the guide's
    // excerpts and commands name the same paths in the kit and here.
    let labs_out = out.join("labs").join(lang.name());
    let programs_out = match lang {
        Lang::Rust => labs_out.join("src/bin"),
        Lang::C => labs_out.clone(),
    };
    std::fs::create_dir_all(&programs_out).with_context(|| format!("cannot create {}", programs_out.display()))?;
    let mut cuts = Vec::new();
    for (name, of) in programs.iter().filter(|(_, of)| *of <= stage) {
        let from = program_dir.join(name);
        let source = std::fs::read_to_string(&from).with_context(|| format!("cannot read {}", from.display()))?;
        let mode = if *of == stage { Mode::Cut } else { Mode::Complete };
        let (mut text, mut regions) = cut(&source, lang, mode).with_context(|| format!("in {}", from.display()))?;
        if mode == Mode::Cut && lang == Lang::Rust {
            text = quiet_until_written(&text);
            // Its two lines come before every region (which never sits in the module docs).
            regions.iter_mut().for_each(|region| region.handout_line += 2);
        }
        if *of == stage {
            ensure!(!regions.is_empty(), "{}: the stage-{stage} program marks no lesson", from.display());
        }
        std::fs::write(programs_out.join(name), text)?;
        let shown = programs_out.join(name).strip_prefix(out).unwrap_or(&programs_out).to_path_buf();
        if mode == Mode::Cut {
            cuts.extend(regions.into_iter().map(|region| (shown.clone(), region)));
        }
    }
    // What is not a program: the crate's manifest and library, the C
    // helpers and Makefile.
    let support: &[&str] = match lang {
        Lang::Rust => &["Cargo.toml", "src/lib.rs"],
        Lang::C => &["Makefile", "lab.h", "lab.c", ".gitignore"],
    };
    for file in support {
        let from = lab.join(file);
        ensure!(from.exists(), "{} is missing", from.display());
        let text = std::fs::read_to_string(&from)?;
        let (text, regions) = cut(&text, lang, Mode::Complete).with_context(|| format!("in {}", from.display()))?;
        ensure!(regions.is_empty(), "{}: regions belong in a stage's program", from.display());
        std::fs::create_dir_all(labs_out.join(file).parent().unwrap_or(&labs_out))?;
        std::fs::write(labs_out.join(file), text)?;
    }
    // The grader, built beside the student's code: `client grade` runs
    // from the handout as written, with no PATH change.
    for crate_dir in KIT_COPIES {
        copy_tree(repo, &repo.join(crate_dir), &out.join(crate_dir))?;
    }
    for file in ["Cargo.lock", "rustfmt.toml"] {
        copy_file(&repo.join(file), &out.join(file))?;
    }
    std::fs::create_dir_all(out.join("docs"))?;
    for doc in ["assignment.md", "grading.md"] {
        copy_file(&repo.join("docs").join(doc), &out.join("docs").join(doc))?;
    }
    let members = match lang {
        Lang::Rust => r#"["labs/rust", "client", "contract"]"#,
        Lang::C => r#"["client", "contract"]"#,
    };
    std::fs::write(
        out.join("Cargo.toml"),
        format!(
            "# The stage-{stage} handout: your code in labs/{lang}/, the grader in client/.\n\
             [workspace]\nmembers = {members}\nresolver = \"2\"\n",
            lang = lang.name()
        ),
    )?;
    std::fs::write(out.join(".gitignore"), "/target\n/grade-logs\n")?;
    prune_lock(out)?;
    let page = std::fs::read_to_string(lab.join("HANDOUT.md"))
        .with_context(|| format!("{} is the handout's README template", lab.join("HANDOUT.md").display()))?;
    let page = front_page(&page, stage).with_context(|| format!("in {}", lab.join("HANDOUT.md").display()))?;
    std::fs::write(out.join("README.md"), page)?;
    write_guide(repo, lang, stage, out)?;
    let leaks = leaks(out, cuts.iter().map(|(_, region)| region))?;
    ensure!(leaks.is_empty(), "lines of a cut region are left in the handout:\n{}", leaks.join("\n"));
    Ok(cuts)
}

/// Trims the kit's `Cargo.lock` to the handout's smaller workspace, so
/// the student's first `cargo build` does not rewrite a file they never
/// touched (and `--locked` works there too).
fn prune_lock(out: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Offline and members only: no version moves, nothing is downloaded.
    let done = std::process::Command::new(cargo)
        .args(["update", "--workspace", "--offline", "--quiet"])
        .current_dir(out)
        .output()
        .context("cannot run cargo update to trim the handout's Cargo.lock")?;
    if !done.status.success() {
        // Not fatal: the handout builds with the kit's lock, and cargo trims it then.
        eprintln!(
            "note: the handout's Cargo.lock is the kit's, untrimmed (cargo update --offline: {})",
            String::from_utf8_lossy(&done.stderr).trim()
        );
    }
    Ok(())
}

/// The handout's README from its template: `{stage}` is the stage, and
/// a `<!-- stage K -->` ... `<!-- /stage -->` section stays only in the
/// stage-K handout, without its markers.
pub fn front_page(template: &str, stage: u8) -> Result<String> {
    let mut page = String::new();
    let mut section: Option<u8> = None;
    for (index, line) in template.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("<!-- stage ").and_then(|rest| rest.strip_suffix("-->")) {
            ensure!(section.is_none(), "line {}: a stage section inside a stage section", index + 1);
            section = Some(rest.trim().parse().with_context(|| format!("line {}: {rest:?} is no stage", index + 1))?);
            continue;
        }
        if trimmed == "<!-- /stage -->" {
            ensure!(section.take().is_some(), "line {}: no stage section to close", index + 1);
            continue;
        }
        if section.is_none_or(|of| of == stage) {
            page.push_str(&line.replace("{stage}", &stage.to_string()));
            page.push('\n');
        }
    }
    ensure!(section.is_none(), "a stage section is not closed with `<!-- /stage -->`");
    Ok(page)
}

/// The guide's chapters that teach from the labs, with their stage: a
/// stage-N handout ships those of stages 1 to N (the side chapters are
/// about the reference server, which no handout ships).
pub const CHAPTERS: &[(&str, u8)] = &[
    ("01-iterative.md", 1),
    ("02a-select-and-poll.md", 2),
    ("02b-event-loop.md", 2),
    ("03-serving-files-safely.md", 3),
    ("04-asynchronous-reads.md", 4),
    ("05-signals-and-the-cache.md", 5),
];

const ANSWER: &str = "<!-- lab:answer -->";
const ANSWER_END: &str = "<!-- /lab:answer -->";

/// Writes `docs/guide/` of the stage-`stage` handout: the chapters up to
/// the stage, each as [`guide_page`] makes it, and an index.
fn write_guide(repo: &Path, lang: Lang, stage: u8, out: &Path) -> Result<()> {
    let guide = out.join("docs/guide");
    std::fs::create_dir_all(&guide)?;
    let mut index = format!(
        "# The guide, chapters 1 to {stage}\n\n\
         The kit's guide, as far as this stage. Each chapter shows what you write (the\n\
         listings of `labs/`, in Rust and in C), then how the kit's reference server does\n\
         the same at scale, then what to predict and measure. The listings of stage\n\
         {stage} are left out: they are yours to write. Links to the reference server's\n\
         source (`src/`) and to the other chapters point into the kit, which this\n\
         handout does not hold.\n\n"
    );
    for (name, of) in CHAPTERS.iter().filter(|(_, of)| *of <= stage) {
        let from = repo.join("docs/guide").join(name);
        let text = std::fs::read_to_string(&from).with_context(|| format!("cannot read {}", from.display()))?;
        let page = guide_page(&text, lang, *of == stage).with_context(|| format!("in {}", from.display()))?;
        let title = page.lines().next().unwrap_or(name).trim_start_matches("# ").to_string();
        index.push_str(&format!("- [{title}]({name})\n"));
        std::fs::write(guide.join(name), page)?;
    }
    std::fs::write(guide.join("README.md"), index)?;
    Ok(())
}

/// A chapter as a handout of `lang` ships it. Between `<!-- lab:answer -->`
/// and `<!-- /lab:answer -->` are the listings a student writes at the
/// chapter's stage: with `cut_answers` they become one line saying so,
/// else the markers go. A ```` ```sh reference ```` block runs the kit's
/// reference server: it stays, as text, under a line saying where it runs.
/// A ```` ```sh rust ```` or ```` ```sh c ```` block runs one language's
/// labs: kept as ```` ```sh ```` in that language's handout, left out of
/// the other's.
pub fn guide_page(chapter: &str, lang: Lang, cut_answers: bool) -> Result<String> {
    let mut page = String::new();
    let mut in_answer = false;
    let mut fence: Option<bool> = None; // inside a fenced block: whether it is kept
    for (index, line) in chapter.lines().enumerate() {
        let trimmed = line.trim_end();
        if fence.is_none() && trimmed == ANSWER {
            ensure!(!in_answer, "line {}: an answer inside an answer", index + 1);
            in_answer = true;
            if cut_answers {
                page.push_str(
                    "*(Here the kit's guide shows the listings, in Rust and in C. In this handout they are \
                     yours to write, at the `// TODO:` lines of your programs.)*\n",
                );
            }
            continue;
        }
        if fence.is_none() && trimmed == ANSWER_END {
            ensure!(in_answer, "line {}: no answer to close", index + 1);
            in_answer = false;
            continue;
        }
        let keep = !(in_answer && cut_answers);
        match (fence, trimmed) {
            (None, opening) if opening.starts_with("```") => {
                let info: Vec<&str> = opening[3..].split_whitespace().collect();
                let (shown, kept) = match info[..] {
                    ["sh", "reference"] => {
                        if keep {
                            page.push_str("In the kit, with its reference server (not part of this handout):\n\n");
                        }
                        ("```text".to_string(), true)
                    }
                    ["sh", tag] if tag == "rust" || tag == "c" => ("```sh".to_string(), tag == lang.name()),
                    ["sh", ..] if info.len() > 1 => {
                        bail!("line {}: {opening:?}: sh blocks are tagged rust, c or reference", index + 1)
                    }
                    _ => (trimmed.to_string(), true),
                };
                fence = Some(kept);
                if keep && kept {
                    page.push_str(&shown);
                    page.push('\n');
                }
            }
            (Some(kept), "```") => {
                fence = None;
                if keep && kept {
                    page.push_str("```\n");
                }
            }
            (Some(kept), _) => {
                if keep && kept {
                    page.push_str(line);
                    page.push('\n');
                }
            }
            (None, _) => {
                if keep {
                    page.push_str(line);
                    page.push('\n');
                }
            }
        }
    }
    ensure!(!in_answer, "an answer is not closed with `{ANSWER_END}`");
    ensure!(fence.is_none(), "a fenced block is not closed");
    Ok(page)
}

/// Lines of `regions` (not trivial ones) found in a file under `root`, as
/// `file: line`.
pub fn leaks<'a>(root: &Path, regions: impl IntoIterator<Item = &'a Region>) -> Result<Vec<String>> {
    let cut: std::collections::BTreeSet<&str> = regions
        .into_iter()
        .flat_map(|region| region.solution.iter().map(|line| line.trim()))
        .filter(|line| !is_trivial(line))
        .collect();
    let mut found = Vec::new();
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
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let kit = KIT_COPIES.iter().any(|dir| relative.starts_with(dir));
            for line in text.lines().map(str::trim).filter(|line| cut.contains(line) && (!kit || words(line) >= 4)) {
                found.push(format!("{}: {line}", relative.display()));
            }
        }
    }
    Ok(found)
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {}", from.display()))?;
    // The same modification time as the kit's copy: a handout cut again
    // at the same place does not rebuild the grader.
    let modified = std::fs::metadata(from)?.modified()?;
    std::fs::File::options().write(true).open(to)?.set_modified(modified)?;
    Ok(())
}

fn copy_tree(repo: &Path, from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        if path.is_dir() {
            if entry.file_name() != "target" {
                copy_tree(repo, &path, &to.join(entry.file_name()))?;
            }
        } else if !LEFT_OUT.iter().any(|left_out| path.strip_prefix(repo).is_ok_and(|p| p == Path::new(left_out))) {
            copy_file(&path, &to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUST: &str = "fn main() {
    let x = 1;
    // lab:begin
    // lab:todo every client gets the time, then end-of-file;
    // lab:todo a client that connects while another is served \"waits\" {read accept(2)}
    let y = x + 1;
    println!(\"{y}\");
    // lab:end
    // lab:begin
    // lab:todo the answer is 2
    let z = 2;
    // lab:stub let z = 0;
    // lab:end
    assert_eq!(z, 2);
}
";

    #[test]
    fn a_rust_region_becomes_its_todo_text_and_a_todo_or_its_stub() {
        let (handout, regions) = cut(RUST, Lang::Rust, Mode::Cut).unwrap();
        assert_eq!(regions.len(), 2);
        assert_eq!((regions[0].line, regions[0].handout_line), (3, 3));
        assert_eq!((regions[1].line, regions[1].handout_line), (9, 6));
        assert_eq!(regions[1].solution, vec!["    let z = 2;".to_string()]);
        let expected = "fn main() {
    let x = 1;
    // TODO: every client gets the time, then end-of-file;
    //   a client that connects while another is served \"waits\" {read accept(2)}
    STAND_IN(\"every client gets the time, then end-of-file; a client that connects while another is served \\\"waits\\\" {{read accept(2)}}\");
    // TODO: the answer is 2
    let z = 0;
    assert_eq!(z, 2);
}
"
        .replace("STAND_IN", STAND_IN);
        assert_eq!(handout, expected);
        assert!(!handout.contains("lab:"));
    }

    #[test]
    fn a_complete_program_keeps_the_solution_and_drops_the_markers() {
        let (complete, _) = cut(RUST, Lang::Rust, Mode::Complete).unwrap();
        assert_eq!(
            complete,
            "fn main() {\n    let x = 1;\n    let y = x + 1;\n    println!(\"{y}\");\n    let z = 2;\n    assert_eq!(z, 2);\n}\n"
        );
    }

    #[test]
    fn a_c_region_takes_its_stub_and_needs_one() {
        let c = "int main(void) {\n    int fd = 3;\n    // lab:begin\n    // lab:todo serve every client\n    \
                 serve(fd);\n    close(fd);\n    // lab:stub (void)fd;\n    // lab:stub lab_todo(\"serve every client\");\n    \
                 // lab:end\n    return 0;\n}\n";
        let (handout, regions) = cut(c, Lang::C, Mode::Cut).unwrap();
        assert_eq!(
            handout,
            "int main(void) {\n    int fd = 3;\n    // TODO: serve every client\n    (void)fd;\n    \
             lab_todo(\"serve every client\");\n    return 0;\n}\n"
        );
        assert_eq!(regions[0].solution, vec!["    serve(fd);", "    close(fd);"]);
        let no_stub = "// lab:begin\n// lab:todo x\nf();\n// lab:end\n";
        assert!(cut(no_stub, Lang::C, Mode::Cut).is_err());
        assert_eq!(cut(no_stub, Lang::C, Mode::Complete).unwrap().0, "f();\n");
    }

    #[test]
    fn malformed_markers_are_errors() {
        for bad in [
            "// lab:begin\n// lab:todo x\nf();\n",                           // unclosed
            "// lab:end\n",                                                  // no begin
            "// lab:todo x\n",                                               // outside
            "// lab:begin\nf();\n// lab:end\n",                              // no todo
            "// lab:begin\n// lab:todo x\n// lab:end\n",                     // no solution
            "// lab:begin\n// lab:todo x\n// lab:begin\nf();\n// lab:end\n", // nested
            "// lab:todox\n",                                                // unknown
            "// lab:begin\n// lab:todo x\nf();\n// lab:todo late\n// lab:end\n",
        ] {
            assert!(cut(bad, Lang::Rust, Mode::Cut).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trivial_lines_are_brackets_and_bare_jumps() {
        for line in ["", "   }", "});", "break;", "return 0;", "loop {", "#[derive(Debug, PartialEq)]"] {
            assert!(is_trivial(line), "{line:?}");
        }
        for line in ["let z = 2;", "close(fd, 0);", "return n + 1;"] {
            assert!(!is_trivial(line), "{line:?}");
        }
    }

    #[test]
    fn a_program_file_names_its_stage() {
        assert_eq!(stage_of("stage2-select.rs"), Some(2));
        assert_eq!(stage_of("stage4-aio.c"), Some(4));
        assert_eq!(stage_of("lab.c"), None);
    }

    #[test]
    fn a_missing_lab_is_a_clear_error() {
        let repo = tempfile::tempdir().unwrap();
        let out = repo.path().join("out");
        let err = write_handout(repo.path(), Lang::C, 1, &out).unwrap_err().to_string();
        assert!(err.contains("labs/c does not exist"), "{err}");
    }

    #[test]
    fn the_front_page_keeps_its_stage_sections_only() {
        let template = "# Stage {stage}\n<!-- stage 1 -->\nrun stage1\n<!-- /stage -->\n<!-- stage 2 -->\nrun stage2-select\n<!-- /stage -->\nend\n";
        assert_eq!(front_page(template, 2).unwrap(), "# Stage 2\nrun stage2-select\nend\n");
        assert_eq!(front_page(template, 3).unwrap(), "# Stage 3\nend\n");
        assert!(front_page("<!-- stage 1 -->\nopen\n", 1).is_err());
        assert!(front_page("<!-- /stage -->\n", 1).is_err());
    }

    #[test]
    fn a_chapter_loses_its_answers_and_the_other_language_and_marks_the_reference() {
        let chapter = "# 1. Title\ntext\n<!-- lab:answer -->\n```rust\n// labs/rust/src/bin/stage1.rs\nlet y = 2;\n```\n\
                       <!-- /lab:answer -->\n```sh rust\n./target/debug/stage1 &\n```\n```sh c\nlabs/c/build/stage1 &\n```\n\
                       ```sh reference\n./target/release/server &\n```\n";
        let cut = guide_page(chapter, Lang::Rust, true).unwrap();
        assert!(!cut.contains("let y = 2;") && cut.contains("yours to write"), "{cut}");
        assert!(cut.contains("```sh\n./target/debug/stage1 &\n```") && !cut.contains("labs/c/build"), "{cut}");
        assert!(
            cut.contains("reference server (not part of this handout):\n\n```text\n./target/release/server &"),
            "{cut}"
        );
        let kept = guide_page(chapter, Lang::C, false).unwrap();
        assert!(
            kept.contains("let y = 2;") && !kept.contains("lab:answer") && !kept.contains("yours to write"),
            "{kept}"
        );
        assert!(kept.contains("```sh\nlabs/c/build/stage1 &") && !kept.contains("debug/stage1"), "{kept}");
        assert!(guide_page("<!-- lab:answer -->\nx\n", Lang::C, true).is_err());
        assert!(guide_page("```sh python\nx\n```\n", Lang::C, true).is_err());
    }

    #[test]
    fn a_leaked_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("docs")).unwrap();
        std::fs::write(dir.path().join("docs/guide.md"), "```rust\n    let y = x + 1;\n}\n```\n").unwrap();
        let (_, regions) = cut(RUST, Lang::Rust, Mode::Cut).unwrap();
        assert_eq!(leaks(dir.path(), &regions).unwrap(), vec!["docs/guide.md: let y = x + 1;".to_string()]);
    }
}
