//! `config`: check and show Keel system descriptions.
//!
//! ```text
//! cargo run --example config -- check FILE...           # each FILE a whole configuration
//! cargo run --example config -- show FILE [DROPIN...] [--json]
//! ```
//! Findings print compiler-style, `FILE:LINE:COL: error: PATH: MESSAGE`; the exit status
//! is 1 when there is an error. A `.json` file is read as the JSON form.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel::config::{load_files, load_json, to_json, to_toml, Loaded};

#[derive(Parser)]
#[command(name = "config", about = "Check and show Keel system descriptions")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check each file; print every finding.
    Check {
        /// Description files (each checked on its own).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the merged, defaulted configuration of FILE and its drop-ins.
    Show {
        /// The base description.
        file: PathBuf,
        /// Drop-ins, applied in file-name order.
        dropins: Vec<PathBuf>,
        /// As JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

fn load(file: &Path, dropins: &[PathBuf]) -> Result<Loaded, String> {
    if file.extension().is_some_and(|e| e == "json") {
        let text = keel::config::read_source(file).map_err(|e| e.to_string())?;
        return Ok(load_json(&file.display().to_string(), &text));
    }
    load_files(file, dropins).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut failed = false;
    match &cli.cmd {
        Cmd::Check { files } => {
            for f in files {
                match load(f, &[]) {
                    Ok(l) => {
                        for finding in &l.findings {
                            eprintln!("{finding}");
                        }
                        failed |= l.has_errors();
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
        }
        Cmd::Show {
            file,
            dropins,
            json,
        } => match load(file, dropins) {
            Ok(l) => {
                for finding in &l.findings {
                    eprintln!("{finding}");
                }
                match &l.config {
                    Some(c) => {
                        let text = if *json {
                            to_json(c).map_err(|e| e.to_string())
                        } else {
                            to_toml(c).map_err(|e| e.to_string())
                        };
                        match text {
                            Ok(t) => println!("{t}"),
                            Err(e) => {
                                eprintln!("{e}");
                                failed = true;
                            }
                        }
                    }
                    None => failed = true,
                }
            }
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        },
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
