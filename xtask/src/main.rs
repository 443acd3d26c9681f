//! The kit's maintenance tasks, run as `cargo xtask <task>` (the alias is
//! in `.cargo/config.toml`: the Rust way to keep a project's own tools).
//!
//! - `cargo xtask lab [--lang rust|c] --stage N [--out DIR]`: a student's
//!   handout for stage N, cut from the labs (`labs/rust/`, `labs/c/`); see
//!   [`lab`] for the markers and what a handout holds.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod lab;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "The kit's maintenance tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write a student handout for one stage, cut from the labs (labs/rust, labs/c).
    Lab {
        /// The lab's language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: lab::Lang,
        /// The stage (1 to 5): its programs' lessons become TODOs.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
        stage: u8,
        /// Where to write it (default: handout/lab-LANG-stage-N).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Lab { lang, stage, out } => {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask lives in the workspace")?;
            let out = out.unwrap_or_else(|| repo.join(format!("handout/lab-{}-stage-{stage}", lang.name())));
            let cuts = lab::write_handout(repo, lang, stage, &out)?;
            println!("stage {stage} lab handout in {}: {} to write", out.display(), cuts.len());
            for (file, region) in cuts {
                println!("  {}:{}: {}", file.display(), region.handout_line, region.todo);
            }
            Ok(())
        }
    }
}
