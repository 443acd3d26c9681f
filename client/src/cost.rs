//! The cost side of "was it worth it?": what a design takes that its rate
//! does not show. Two measures, both printed by the default
//! `./benchmark.sh`:
//!
//! * **memory per idle connection**: the server's memory before and while
//!   it holds idle keep-alive connections (each served one request), from
//!   `/proc`; the difference over the count is what one more waiting client
//!   costs: a `Conn` and an epoll entry, a thread's stack, or a process;
//! * **lines of code**: what a student reads to understand a model, the
//!   model's file plus the machinery it uses, as `docs/design.md` lists them
//!   ([`READING_LIST`], the one copy of that list in code), and the labs'
//!   programs when the `labs/` folders are there.
//!
//! Neither waits on anything but `/proc` and the files it counts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::suite::{self, BenchRoot, ServerProcess};
use crate::versus;

/// What a student opens to read each model, under `src/`: its own file,
/// then the machinery it uses (`docs/design.md`, "What a student opens, per
/// model"). A stage-4 model extends `event`'s loop, so it lists `event`'s
/// files too. The core (`core/`), read once by everyone, is [`CORE`].
pub const READING_LIST: &[(&str, &[&str])] = &[
    ("iterative", &["models/iterative.rs", "shared/blocking.rs"]),
    ("select", &["models/select.rs", "shared/connections.rs", "shared/lifecycle.rs"]),
    ("poll", &["models/poll.rs", "shared/connections.rs", "shared/lifecycle.rs"]),
    ("event", &["models/event.rs", "shared/connections.rs", "shared/lifecycle.rs", "shared/fan_out.rs"]),
    ("fork", &["models/fork.rs", "shared/process.rs", "shared/blocking.rs"]),
    ("prefork", &["models/prefork.rs", "shared/process.rs", "shared/blocking.rs"]),
    ("threads", &["models/threads.rs", "shared/blocking.rs"]),
    ("pool", &["models/pool.rs", "shared/blocking.rs", "shared/thread_pool.rs"]),
    ("tokio", &["models/async_await.rs", "shared/fan_out.rs"]),
    (
        "event-async",
        &[
            "models/event_async.rs",
            "models/event.rs",
            "shared/connections.rs",
            "shared/lifecycle.rs",
            "shared/fan_out.rs",
            "models/backend/mod.rs",
            "models/backend/completions.rs",
            "models/backend/coalescing.rs",
            "shared/thread_pool.rs",
        ],
    ),
    (
        "event-aio",
        &[
            "models/event_aio.rs",
            "models/event.rs",
            "shared/connections.rs",
            "shared/lifecycle.rs",
            "shared/fan_out.rs",
            "models/backend/mod.rs",
            "models/backend/kernel.rs",
            "models/backend/coalescing.rs",
        ],
    ),
    (
        "uring",
        &[
            "models/uring.rs",
            "models/event.rs",
            "shared/connections.rs",
            "shared/lifecycle.rs",
            "shared/fan_out.rs",
            "models/backend/mod.rs",
            "models/backend/kernel.rs",
            "models/backend/coalescing.rs",
        ],
    ),
    (
        "uring-net",
        &[
            "models/uring_net/mod.rs",
            "models/uring_net/ring.rs",
            "models/uring_net/probe.rs",
            "models/uring_net/buffer_ring.rs",
            "models/uring_net/registered_files.rs",
            "models/uring_net/zero_copy.rs",
            "models/uring_net/splice.rs",
            "models/uring_net/reads.rs",
            "models/uring_net/work.rs",
            "models/uring_net/staged.rs",
            "models/uring_net/stopping.rs",
            "shared/lifecycle.rs",
            "shared/fan_out.rs",
        ],
    ),
];

/// The core every model shares, under `src/`: counted once, apart.
pub const CORE: &str = "core";

/// Where the labs' programs are, when the labs exist: (folder, file suffix).
pub const LABS: [(&str, &str); 2] = [("labs/rust/src/bin", ".rs"), ("labs/c", ".c")];

/// Idle connections held for the memory measure, where the model can hold them.
pub const IDLE_CONNS: usize = 2000;

/// Non-blank lines that are not comments, without a file's `#[cfg(test)] mod`
/// blocks: `//`, `/*`, `*` and `*/` lines are comments (Rust and C alike).
pub fn lines_of_code(text: &str) -> usize {
    let mut count = 0;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "#[cfg(test)]" && lines.peek().is_some_and(|next| next.starts_with("mod ")) {
            // A test module, to its closing brace at column 0.
            for skipped in lines.by_ref() {
                if skipped == "}" {
                    break;
                }
            }
            continue;
        }
        let code = line.trim();
        let comment = ["//", "/*", "*"].iter().any(|start| code.starts_with(start));
        if !code.is_empty() && !comment {
            count += 1;
        }
    }
    count
}

/// The repository whose sources are counted: the working directory when it
/// holds `src/models` (`./benchmark.sh` runs from the repository), else the
/// one this program was built from.
pub fn repository() -> Option<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    std::env::current_dir().ok().into_iter().chain(built_from).find(|dir| dir.join("src/models").is_dir())
}

/// One model's lines: its own file, and the machinery it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLines {
    /// The model's own file.
    pub own: usize,
    /// The machinery files of its reading list.
    pub machinery: usize,
    /// Listed files not found (the list is out of date with `src/`).
    pub missing: Vec<String>,
}

impl ModelLines {
    /// Everything a student reads for the model, the core aside.
    pub fn total(&self) -> usize {
        self.own + self.machinery
    }
}

/// Counts `model`'s reading list under `repo/src`; `None` if it has no list.
pub fn model_lines(repo: &Path, model: &str) -> Option<ModelLines> {
    let (_, files) = READING_LIST.iter().find(|(name, _)| *name == model)?;
    let mut lines = ModelLines { own: 0, machinery: 0, missing: Vec::new() };
    for (i, file) in files.iter().enumerate() {
        match std::fs::read_to_string(repo.join("src").join(file)) {
            Ok(text) if i == 0 => lines.own = lines_of_code(&text),
            Ok(text) => lines.machinery += lines_of_code(&text),
            Err(_) => lines.missing.push(format!("src/{file}")),
        }
    }
    Some(lines)
}

/// Lines of every `.rs` file under `dir`, recursively, but the files of
/// tests (`tests.rs`, `proptests.rs`: modules `#[cfg(test)]` declares).
pub fn tree_lines(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                tree_lines(&path)
            } else if path.extension().is_some_and(|ext| ext == "rs")
                && !path.file_stem().is_some_and(|stem| stem.to_string_lossy().ends_with("tests"))
            {
                std::fs::read_to_string(&path).map_or(0, |text| lines_of_code(&text))
            } else {
                0
            }
        })
        .sum()
}

/// The labs' programs that exist under `repo`: (path from `repo`, lines).
pub fn lab_programs(repo: &Path) -> Vec<(String, usize)> {
    let mut programs = Vec::new();
    for (folder, suffix) in LABS {
        let Ok(entries) = std::fs::read_dir(repo.join(folder)) else { continue };
        let mut found: Vec<(String, usize)> = entries
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(suffix) && entry.path().is_file())
            .filter_map(|entry| {
                let text = std::fs::read_to_string(entry.path()).ok()?;
                Some((format!("{folder}/{}", entry.file_name().to_string_lossy()), lines_of_code(&text)))
            })
            .collect();
        found.sort();
        programs.extend(found);
    }
    programs
}

/// A server's memory before and while it holds idle connections.
#[derive(Debug, Clone, Copy)]
pub struct IdleMemory {
    /// Connections held.
    pub held: usize,
    /// KiB before the first connection (after start-up).
    pub before_kib: u64,
    /// KiB while holding `held` connections.
    pub holding_kib: u64,
}

impl IdleMemory {
    /// What one more idle connection costs, in bytes.
    pub fn bytes_per_conn(&self) -> f64 {
        (self.holding_kib.saturating_sub(self.before_kib) * 1024) as f64 / self.held.max(1) as f64
    }
}

/// How many idle connections `model` can hold: `select` stops below
/// FD_SETSIZE (1024), `prefork` and `pool` at their workers (a keep-alive
/// client keeps one); the others [`IDLE_CONNS`].
pub fn idle_capacity(model: &str) -> usize {
    match model {
        "select" => 1000,
        "prefork" | "pool" => suite::BLOCKING_WORKERS,
        _ => IDLE_CONNS,
    }
}

/// Starts `model` and measures its memory (PSS over its processes: pages
/// shared between a parent and its forked children are split between them,
/// not counted once per process) holding [`idle_capacity`] connections.
pub fn idle_memory(server_bin: &Path, root: &BenchRoot, model: &str) -> Result<IdleMemory> {
    let held = idle_capacity(model);
    let mut args: Vec<String> = vec!["--model".into(), model.into(), "--quiet".into()];
    args.extend(suite::model_args(model));
    args.extend(["--idle-timeout".into(), "120".into(), "--max-conns".into(), (held + 100).to_string()]);
    args.extend(["--root".into(), root.path().display().to_string()]);
    let process = ServerProcess::start(server_bin, &args)?;
    let before_kib = versus::pss_kib(process.pid())?;
    let connections = versus::hold_idle(process.addr, held).with_context(|| format!("{model}: holding {held}"))?;
    let holding_kib = versus::pss_kib(process.pid())?;
    drop(connections);
    Ok(IdleMemory { held, before_kib, holding_kib })
}

/// One model's cost, as the verdict quotes it.
#[derive(Debug, Clone)]
pub struct Cost {
    /// The model.
    pub model: String,
    /// Its memory holding idle connections, if measured.
    pub memory: Option<IdleMemory>,
    /// Its lines, if the sources were found.
    pub lines: Option<ModelLines>,
}

/// Bytes as the cost table prints them: `640 B`, `12.3 KiB`, `1.2 MiB`.
pub fn bytes(value: f64) -> String {
    if value < 1024.0 {
        format!("{value:.0} B")
    } else if value < 1024.0 * 1024.0 {
        format!("{:.1} KiB", value / 1024.0)
    } else {
        format!("{:.1} MiB", value / 1024.0 / 1024.0)
    }
}

/// The cost table: per model, memory per idle connection and lines read.
pub fn table(costs: &[Cost], repo: Option<&Path>) -> String {
    let mut out = format!(
        "{:<12} {:>13} {:>9} {:>15} {:>7} {:>9} {:>9}\n",
        "model", "per idle conn", "held", "MiB before/held", "lines", "own file", "machinery"
    );
    for cost in costs {
        let (per_conn, held, mib) = cost.memory.map_or(("-".into(), "-".into(), "-".into()), |m| {
            (
                bytes(m.bytes_per_conn()),
                m.held.to_string(),
                format!("{:.1}/{:.1}", m.before_kib as f64 / 1024.0, m.holding_kib as f64 / 1024.0),
            )
        });
        let (total, own, machinery) = cost.lines.as_ref().map_or(("-".into(), "-".into(), "-".into()), |l| {
            let mark = if l.missing.is_empty() { "" } else { "?" };
            (format!("{}{mark}", l.total()), l.own.to_string(), l.machinery.to_string())
        });
        out.push_str(&format!(
            "{:<12} {per_conn:>13} {held:>9} {mib:>15} {total:>7} {own:>9} {machinery:>9}\n",
            cost.model
        ));
    }
    let missing: Vec<&String> = costs.iter().filter_map(|c| c.lines.as_ref()).flat_map(|l| &l.missing).collect();
    if !missing.is_empty() {
        out.push_str(&format!(
            "? not found, so not counted (client/src/cost.rs's READING_LIST is out of date): {}\n",
            missing.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    match repo {
        Some(repo) => {
            out.push_str(&format!(
                "(memory: PSS from /proc, holding keep-alive connections that each were served one request; \
                 lines: non-blank, non-comment, without tests, of the files docs/design.md lists per model; \
                 the core every model shares, src/{CORE}/, is {} more)\n",
                tree_lines(&repo.join("src").join(CORE))
            ));
            let labs = lab_programs(repo);
            if !labs.is_empty() {
                let listed: Vec<String> = labs.iter().map(|(path, lines)| format!("{path} {lines}")).collect();
                out.push_str(&format!("the labs' programs, lines: {}\n", listed.join(", ")));
            }
        }
        None => out.push_str("(no sources found beside this program: lines not counted)\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_code_leave_out_comments_blank_lines_and_tests() {
        let text = "//! doc\n\nuse std::io;\n/* c\n * comment\n */\nfn main() {\n    // why\n    run(); // tail\n}\n\
                    #[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {}\n}\nfn after() {}\n";
        assert_eq!(lines_of_code(text), 5, "use, fn main, run, the closing brace, fn after");
    }

    #[test]
    fn every_model_has_a_reading_list_and_every_listed_file_exists() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for model in contract::MODELS {
            let lines = model_lines(repo, model).unwrap_or_else(|| panic!("{model} has no reading list"));
            assert!(lines.missing.is_empty(), "{model}: {:?} (docs/design.md moved them?)", lines.missing);
            assert!(lines.own > 0, "{model}");
        }
        assert!(tree_lines(&repo.join("src").join(CORE)) > 500);
    }

    #[test]
    fn memory_per_connection_is_the_growth_over_the_count() {
        let memory = IdleMemory { held: 2000, before_kib: 3000, holding_kib: 4250 };
        assert_eq!(memory.bytes_per_conn(), 640.0);
        assert_eq!(bytes(640.0), "640 B");
        assert_eq!(bytes(12.5 * 1024.0), "12.5 KiB");
    }
}
