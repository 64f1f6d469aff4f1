//! `publish`: the publisher's side of a release (an image builder's pipeline): the release
//! index document made from the payload files, and the signed envelopes devices verify.
//!
//! ```text
//! cargo run --example publish -- index --full FILE [--delta FROM=FILE]... [--store FILE] --pubkey PEM -o DOC
//!                        make a release index document from payload files
//! cargo run --example publish -- sign --kind root|index DOC --key PEM... -o ENVELOPE
//!                        sign a trust root or index document
//! ```

#[macro_use]
#[path = "support/cli.rs"]
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "publish",
    about = "Release index documents and signed envelopes for keel-update's devices"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a release index document from payload files (version, system and a delta's
    /// source image read from each payload's signed manifest; size and SHA-256 from its
    /// bytes), or add the release to an earlier document; `sign --kind index` signs it.
    Index {
        /// The full payload.
        #[arg(long)]
        full: PathBuf,
        /// A delta payload and the version it starts from: `FROM_VERSION=FILE`; repeatable.
        #[arg(long = "delta", value_parser = parse_delta)]
        deltas: Vec<(String, PathBuf)>,
        /// The image's block store (`store publish`): devices with no delta for their
        /// image fetch only the blocks they lack from it.
        #[arg(long)]
        store: Option<PathBuf>,
        /// A public key (PEM) the payloads are signed with; repeat for several.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
        /// Payload URLs are this prefix and the file's name (default: the name alone, a
        /// URL relative to the index's).
        #[arg(long, default_value = "")]
        url_base: String,
        /// An earlier index document: the release is added to it (replacing the same
        /// version), its serial raised by one.
        #[arg(long)]
        base: Option<PathBuf>,
        /// The serial (default: the earlier document's plus one, else 1).
        #[arg(long)]
        serial: Option<u64>,
        /// Days until devices stop trusting the index (re-sign before: a frozen index is
        /// refused).
        #[arg(long, default_value_t = 7)]
        expires_days: u64,
        /// The share of machines offered the release (0-100).
        #[arg(long, default_value_t = 100)]
        rollout: u8,
        /// Where to write the document.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Sign a trust root or release index document (JSON) into an envelope.
    Sign {
        /// `root` or `index`.
        #[arg(long, value_parser = ["root", "index"])]
        kind: String,
        /// The document (JSON).
        document: PathBuf,
        /// A private key (PKCS#8 PEM); repeat for a threshold.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Where to write the envelope.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `FROM_VERSION=FILE`.
fn parse_delta(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((v, f)) if !v.is_empty() && !f.is_empty() => Ok((v.to_string(), f.into())),
        _ => Err(format!("{s:?}: expected FROM_VERSION=FILE")),
    }
}

fn make_index(cmd: &Cmd) -> Res<ExitCode> {
    use keel::update::publish;
    let Cmd::Index {
        full,
        deltas,
        store,
        pubkeys,
        url_base,
        base,
        serial,
        expires_days,
        rollout,
        output,
    } = cmd
    else {
        return Ok(ExitCode::FAILURE);
    };
    let ring = cli::load_keyring(pubkeys)?;
    let url = |p: &std::path::Path| -> Res<String> {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: not a file name", p.display()))?;
        Ok(format!("{url_base}{name}"))
    };
    use publish::Kind;
    let full = publish::describe_as(full, &url(full)?, &ring, Kind::Payload)?;
    let mut ds = Vec::new();
    for (from, f) in deltas {
        ds.push((
            from.clone(),
            publish::describe_as(f, &url(f)?, &ring, Kind::Payload)?,
        ));
    }
    let store = match store {
        Some(st) => Some(publish::describe_as(st, &url(st)?, &ring, Kind::Store)?),
        None => None,
    };
    let release = publish::release_with_store(full, ds, store, *rollout)?;
    let base = match base {
        Some(b) => {
            let text = cli::read_small(b, keel::release::MAX_ENVELOPE as u64)?;
            Some(serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", b.display()))?)
        }
        None => None,
    };
    // Within 100 years: a larger number would wrap the expiry into the past (or past
    // what a device's clock can hold), and an index meant to expire would never do so.
    const MAX_DAYS: u64 = 36_525;
    if *expires_days > MAX_DAYS {
        return Err(
            format!("--expires-days {expires_days}: at most {MAX_DAYS} (100 years)").into(),
        );
    }
    let expires = keel::trust::unix_now().saturating_add(expires_days * 86_400);
    let index = publish::add_release(base, release, *serial, expires)?;
    let mut doc = serde_json::to_vec_pretty(&index)?;
    doc.push(b'\n');
    keel::io::replace_file(output, &doc).map_err(|e| format!("{}: {e}", output.display()))?;
    println!(
        "index serial {} with {} release(s): {}",
        index.serial,
        index.releases.len(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn sign(cmd: &Cmd) -> Res<ExitCode> {
    let Cmd::Sign {
        kind,
        document,
        keys,
        output,
    } = cmd
    else {
        return Ok(ExitCode::FAILURE);
    };
    let doc = cli::read_small(document, keel::release::MAX_ENVELOPE as u64)?;
    let mut signers = Vec::new();
    for k in keys {
        let pem = cli::read_small_text(k, 64 << 10)?;
        signers.push(keel::trust::SigningKey::from_pkcs8_pem(&pem)?);
    }
    let context = match kind.as_str() {
        "root" => keel::trust::Context::TrustRoot,
        _ => keel::trust::Context::ReleaseIndex,
    };
    let refs: Vec<&dyn keel::trust::Signer> = signers
        .iter()
        .map(|s| s as &dyn keel::trust::Signer)
        .collect();
    let env = keel::release::sign_envelope(&doc, context, &refs)?;
    std::fs::write(output, env).map_err(|e| format!("{}: {e}", output.display()))?;
    println!(
        "signed {} by {} key(s): {}",
        document.display(),
        refs.len(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Index { .. } => make_index(&cli.cmd),
        Cmd::Sign { .. } => sign(&cli.cmd),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("publish: {e}");
            ExitCode::FAILURE
        }
    }
}
