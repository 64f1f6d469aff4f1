//! `store`: block stores, for adaptive updates: an image published once, installed from
//! any older image by fetching only the blocks it lacks.
//!
//! ```text
//! cargo run --release --example store -- publish --image NEW --key SECRET.pem --verity-salt HEX|-
//!         -o STORE [--compatible STR] [--version V] [--run-kib 16] [--level 19] [--runs auto|blocks|content]
//! cargo run --release --example store -- install --store FILE|URL --target OUT --pubkey PUBLIC.pem
//!         (--installed-version V | --no-version-check) [--seed IMAGE]... [--state FILE]
//!         [--hash-out HASH] [--plan] [--gap-kib 16]
//! ```
//! `install` prints where the blocks came from (in place, zero, the seeds, duplicates,
//! fetched) and what the store cost (bytes, range requests); `--plan` stops before
//! writing. `--hash-out` writes the image's dm-verity tree (checked against the signed
//! root): `veritysetup format --no-superblock`'s hash device.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel::payload::store::{publish_store, PublishOptions, Seed, StoreOptions, StoreSession};
use keel::payload::ApplyOptions;
use keel::verity::SigningKey;

#[derive(Parser)]
#[command(
    name = "store",
    about = "Block stores: adaptive updates from any installed image"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make the block store of IMAGE.
    Publish {
        /// The new image (a whole number of 4 KiB blocks).
        #[arg(long)]
        image: PathBuf,
        /// The signing key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The image's dm-verity salt, hex (`-` for none); keep one per product so that
        /// devices index their booted slot by its own tree.
        #[arg(long)]
        verity_salt: String,
        /// The store to write.
        #[arg(short, long)]
        output: PathBuf,
        /// The system it is for.
        #[arg(long, default_value = "keel-example")]
        compatible: String,
        /// The image's version.
        #[arg(long, default_value = "1.0")]
        version: String,
        /// KiB per run (4 to 4096, a multiple of 4).
        #[arg(long, default_value_t = keel::payload::store::DEFAULT_RUN_BLOCKS * 4)]
        run_kib: u32,
        /// zstd level of the runs.
        #[arg(long, default_value_t = 19)]
        level: i32,
        /// How runs are cut: `blocks` (whole blocks: ext4, EROFS), `content` (by content,
        /// at any byte: squashfs), or `auto` (content for squashfs, else blocks).
        #[arg(long, default_value = "auto", value_parser = ["auto", "blocks", "content"])]
        runs: String,
    },
    /// Install the store's image into TARGET.
    Install {
        /// The store: a file, or an http(s) URL (fetched with range requests).
        #[arg(long)]
        store: String,
        /// The slot or file to write.
        #[arg(long)]
        target: PathBuf,
        /// Images to take blocks from (the booted slot); hashed once each.
        #[arg(long = "seed")]
        seeds: Vec<PathBuf>,
        /// A trusted public key (PEM); repeat for several.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
        /// The installed version: an older store is refused.
        #[arg(
            long,
            required_unless_present = "no_version_check",
            conflicts_with = "no_version_check"
        )]
        installed_version: Option<String>,
        /// No version check (a first install).
        #[arg(long)]
        no_version_check: bool,
        /// This system's compatible string (default: not checked).
        #[arg(long)]
        compatible: Option<String>,
        /// Resume record.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Write the image's dm-verity tree here.
        #[arg(long, value_name = "FILE")]
        hash_out: Option<PathBuf>,
        /// Print the plan and stop.
        #[arg(long)]
        plan: bool,
        /// KiB of runs not needed a range may take in to join two needed ones.
        #[arg(long, default_value_t = keel::payload::store::DEFAULT_GAP >> 10)]
        gap_kib: u64,
    },
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Publish {
            image,
            key,
            verity_salt,
            output,
            compatible,
            version,
            run_kib,
            level,
            runs,
        } => {
            if run_kib == 0 || run_kib % 4 != 0 || run_kib > 4096 {
                return Err(format!(
                    "--run-kib {run_kib}: a multiple of 4 from 4 to 4096"
                ));
            }
            let pem = cli::read_small_text(&key, 64 << 10)?;
            let signer = SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| format!("{}: not a PKCS#8 Ed25519 key: {e}", key.display()))?;
            let data =
                keel::io::Mapped::open(&image).map_err(|e| format!("{}: {e}", image.display()))?;
            let salt = match verity_salt.as_str() {
                "-" => Vec::new(),
                h => hex::decode(h).map_err(|e| format!("--verity-salt: {e}"))?,
            };
            let params = keel::verity::VerityParams::builder()
                .salt(salt)
                .data_blocks_for(data.len() as u64)
                .build()
                .map_err(|e| format!("--verity-salt: {e}"))?;
            if params.data_size() != data.len() as u64 || data.is_empty() {
                return Err(format!(
                    "{}: {} bytes, not a whole number of 4 KiB blocks",
                    image.display(),
                    data.len()
                ));
            }
            let mut created = cli::Created::unless(None);
            let mut out = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&output)
                .map_err(|e| format!("{}: {e} (the store goes to a new file)", output.display()))?;
            created.add(&output);
            let mut opts = PublishOptions::new(&compatible, &version, params)
                .run_blocks(run_kib / 4)
                .level(level);
            match runs.as_str() {
                "blocks" => opts = opts.chunking(None),
                "content" => opts = opts.chunking(Some(keel::payload::store::Cdc::DEFAULT)),
                _ => {}
            }
            let t = std::time::Instant::now();
            let p =
                publish_store(&data[..], &mut out, &signer, &opts).map_err(|e| e.to_string())?;
            out.sync_all()
                .map_err(|e| format!("{}: {e}", output.display()))?;
            created.keep();
            println!(
                "store:        {} bytes ({} runs, {} of them zero)",
                p.size, p.runs, p.zero_runs
            );
            println!("sha256:       {}", hex::encode(p.sha256));
            println!("index sha256: {}", hex::encode(p.index_sha256));
            println!("root hash:    {}", hex::encode(&p.root_hash));
            println!("time:         {:.2} s", t.elapsed().as_secs_f64());
            Ok(())
        }
        Cmd::Install {
            store,
            target,
            seeds,
            pubkeys,
            installed_version,
            no_version_check: _,
            compatible,
            state,
            hash_out,
            plan,
            gap_kib,
        } => {
            let ring = cli::load_keyring(&pubkeys)?;
            let version = match &installed_version {
                Some(v) => keel::payload::VersionCheck::Installed(v),
                None => keel::payload::VersionCheck::Unchecked,
            };
            let mut apply = ApplyOptions::new(&ring, version).compatible(compatible.as_deref());
            if let Some(s) = &state {
                apply = apply.state(s);
            }
            let opts = StoreOptions::new(apply).gap(gap_kib << 10);
            let seed_files = seeds
                .iter()
                .map(|p| std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display())))
                .collect::<Result<Vec<_>, _>>()?;
            let mut created = cli::Created::unless(state.clone());
            let mut tgt = cli::open_or_create(&target, 0o644, &mut created)?;
            for (f, p) in seed_files.iter().zip(&seeds) {
                if keel::payload::same_file(f, &tgt) {
                    return Err(format!(
                        "{}: is the seed {}; the target must be another slot",
                        target.display(),
                        p.display()
                    ));
                }
            }
            let seed_list: Vec<Seed<'_>> = seed_files
                .iter()
                .map(|f| Seed {
                    image: f,
                    tree: None,
                })
                .collect();
            let t = std::time::Instant::now();
            let (done, requests, bytes) =
                if store.starts_with("http://") || store.starts_with("https://") {
                    let reader =
                        keel::fetch::HttpReader::new(&store, keel::fetch::FetchOptions::default())
                            .map_err(|e| e.to_string())?;
                    let ranges = keel::fetch::HttpRanges::new(reader);
                    let r = install(&ranges, &seed_list, &mut tgt, &opts, plan, &target)?;
                    let s = ranges.stats();
                    (r, s.requests, s.bytes)
                } else {
                    let f = std::fs::File::open(&store).map_err(|e| format!("{store}: {e}"))?;
                    let r = install(&f, &seed_list, &mut tgt, &opts, plan, &target)?;
                    let (q, b) = r.as_ref().map_or((0, 0), |d| (d.requests, d.fetched));
                    (r, q, b)
                };
            let Some(done) = done else {
                created.keep();
                return Ok(());
            };
            if let Some(h) = &hash_out {
                let mut f = cli::open_or_create(h, 0o644, &mut created)?;
                keel::verity::write_tree(
                    done.tree.params(),
                    &done.tree,
                    &mut f,
                    &keel::verity::FormatOptions::default(),
                )
                .map_err(|e| e.to_string())?;
            }
            created.keep();
            let p = &done.plan;
            println!(
                "blocks:       {} in place, {} zero, {} from seeds, {} duplicates, {} from seeds' runs, {} fetched; {} written",
                p.in_place, p.zero, p.from_seed, p.duplicate, p.from_seed_runs, p.fetched_blocks, done.written_blocks
            );
            println!("fetched:      {bytes} bytes in {requests} requests");
            println!("root hash:    {}", hex::encode(done.tree.root_hash()));
            println!("time:         {:.2} s", t.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

/// Open the store and install (or only plan).
fn install<S: keel::io::ReadAt + ?Sized>(
    store: &S,
    seeds: &[Seed<'_>],
    target: &mut std::fs::File,
    opts: &StoreOptions<'_>,
    plan_only: bool,
    path: &std::path::Path,
) -> Result<Option<keel::payload::store::Installed>, String> {
    let s = StoreSession::open(store, opts).map_err(|e| e.to_string())?;
    let size = s.index().image.size;
    if plan_only {
        let p = s.plan(seeds, opts).map_err(|e| e.to_string())?;
        println!("version:      {} ({} bytes)", s.index().version, size);
        println!(
            "plan:         {} in place, {} zero, {} from seeds, {} duplicates, {} from seeds' runs, {} to fetch",
            p.in_place, p.zero, p.from_seed, p.duplicate, p.from_seed_runs, p.fetched_blocks
        );
        println!(
            "to fetch:     {} bytes in {} ranges (and {} bytes of header, index and leaves)",
            p.fetch_bytes,
            p.ranges.len(),
            p.fetched_so_far
        );
        return Ok(None);
    }
    let meta = target
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() && meta.len() < size {
        target
            .set_len(size)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    s.install(seeds, target, opts)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
