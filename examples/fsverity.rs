//! `fsverity`: the fs-verity file digest, as `fsverity digest` prints it.
//!
//! ```text
//! cargo run --release --example fsverity -- digest FILE [--hash-alg sha256|sha512] [--block-size N] [--salt HEX]
//! ```

#[macro_use]
#[path = "support/cli.rs"]
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel::verity::HashAlgorithm;

#[derive(Parser)]
#[command(
    name = "fsverity",
    about = "fs-verity file digests, as fsverity-utils computes them"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the fs-verity digest of FILE, as `fsverity digest` does.
    Digest {
        /// The file to digest.
        file: PathBuf,
        /// sha256 or sha512.
        #[arg(long = "hash-alg", default_value = "sha256")]
        hash_alg: String,
        /// Merkle tree block size, a power of two (fsverity's --block-size).
        #[arg(long, default_value_t = 4096)]
        block_size: u32,
        /// Salt in hex (fs-verity's salt, prepended to every block; default: none).
        #[arg(long)]
        salt: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r: Result<(), String> = match &cli.cmd {
        Cmd::Digest {
            file,
            hash_alg,
            block_size,
            salt,
        } => (|| {
            let alg = HashAlgorithm::from_name(hash_alg).map_err(|e| e.to_string())?;
            let salt =
                hex::decode(salt.as_deref().unwrap_or("")).map_err(|e| format!("--salt: {e}"))?;
            let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let d = keel::verity::fsverity_digest(&f, alg, *block_size, &salt)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            println!(
                "{}:{} {}",
                alg.name(),
                hex::encode(&d.digest),
                file.display()
            );
            Ok(())
        })(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fsverity: {e}");
            ExitCode::from(1)
        }
    }
}
