//! `store`: block stores, for adaptive updates: an image published once, installed from
//! any older image by fetching only the blocks it lacks.
//!
//! ```text
//! cargo run --release --example store -- publish --image NEW --key SECRET.pem --verity-salt HEX|-
//!         -o STORE [--compatible STR] [--version V] [--run-kib 16] [--level 19] [--runs auto|blocks|files|content] [--no-xz]
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
        /// How runs are cut: `blocks` (whole blocks at multiples of --run-kib), `files`
        /// (whole blocks, each ext4 or EROFS file's in runs of its own), `content` (by
        /// content, at any byte: squashfs), or `auto` (content for squashfs, else files).
        #[arg(long, default_value = "auto", value_parser = ["auto", "blocks", "files", "content"])]
        runs: String,
        /// zstd only: no LZMA2 runs, a store that installers before format version 2 read.
        #[arg(long)]
        no_xz: bool,
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
            no_xz,
        } => {
            if run_kib == 0 || run_kib % 4 != 0 || run_kib > 4096 {
                return Err(format!(
                    "--run-kib {run_kib}: a multiple of 4 from 4 to 4096"
                ));
            }
            let pem = cli::read_small_text(&key, 64 << 10)?;
            let signer = SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| format!("{}: not a PKCS#8 Ed25519 key: {e}", key.display()))?;
            let data = keel::io::Mapped::open(&image).map_err(|e| e.to_string())?;
            if data.is_empty() || data.len() % 4096 != 0 {
                return Err(format!(
                    "{}: {} bytes, not a whole number of 4 KiB blocks",
                    image.display(),
                    data.len()
                ));
            }
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
                .level(level)
                .xz(!no_xz);
            match runs.as_str() {
                "blocks" => opts = opts.chunking(None),
                "files" => opts = opts.chunking(None).files_of(&data),
                "auto" => opts = opts.files_of(&data),
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
                .map(|p| {
                    // Opened without waiting: a FIFO is refused, not waited on.
                    let (f, _) =
                        keel::io::open_device(p, false).map_err(|e| format!("--seed {e}"))?;
                    Ok(f)
                })
                .collect::<Result<Vec<_>, String>>()?;
            let seed_list: Vec<Seed<'_>> = seed_files
                .iter()
                .map(|f| Seed {
                    image: f,
                    tree: None,
                })
                .collect();
            let remote = store.starts_with("http://") || store.starts_with("https://");
            // Every file written opened (or created) first, then all compared by what they
            // are with each other and with every input: a tree, a record or the image can
            // never land on the running slot, the store or a key through another spelling.
            // Until the checks pass, a failure removes whatever was created.
            let mut created = cli::Created::unless(None);
            let mut outputs: Vec<(&str, &std::path::Path)> = Vec::new();
            let mut tgt = None;
            let mut hash = None;
            if !plan {
                tgt = Some(cli::open_or_create(&target, 0o644, &mut created)?);
                outputs.push(("--target", &target));
                if let Some(h) = &hash_out {
                    hash = Some(cli::open_or_create(h, 0o644, &mut created)?);
                    outputs.push(("--hash-out", h));
                }
                if let Some(s) = &state {
                    outputs.push(("--state", s));
                }
            }
            let mut inputs: Vec<(&str, &std::path::Path)> = Vec::new();
            if !remote {
                inputs.push(("--store", std::path::Path::new(&store)));
            }
            inputs.extend(seeds.iter().map(|p| ("--seed", p.as_path())));
            inputs.extend(pubkeys.iter().map(|p| ("--pubkey", p.as_path())));
            cli::all_distinct(&outputs, &inputs, &[])?;
            created.resume_record(state.clone());
            let t = std::time::Instant::now();
            let (done, requests, bytes) = if remote {
                let reader =
                    keel::fetch::HttpReader::new(&store, keel::fetch::FetchOptions::default())
                        .map_err(|e| e.to_string())?;
                let ranges = keel::fetch::HttpRanges::new(reader);
                let r = install(&ranges, &seed_list, tgt.as_mut(), &opts, &target)?;
                let s = ranges.stats();
                (r, s.requests, s.bytes)
            } else {
                let (f, _) = keel::io::open_device(std::path::Path::new(&store), false)
                    .map_err(|e| format!("--store {e}"))?;
                let r = install(&f, &seed_list, tgt.as_mut(), &opts, &target)?;
                let (q, b) = r.as_ref().map_or((0, 0), |d| (d.requests, d.fetched));
                (r, q, b)
            };
            let Some(done) = done else {
                return Ok(());
            };
            if let (Some(h), Some(f)) = (&hash_out, &mut hash) {
                cli::truncate(f, h)?;
                keel::verity::write_tree(
                    done.tree.params(),
                    &done.tree,
                    f,
                    &keel::verity::FormatOptions::default(),
                )
                .map_err(|e| format!("--hash-out {}: {e}", h.display()))?;
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

/// Open the store and install into `target` (or, without one, only plan).
fn install<S: keel::io::ReadAt + ?Sized>(
    store: &S,
    seeds: &[Seed<'_>],
    target: Option<&mut std::fs::File>,
    opts: &StoreOptions<'_>,
    path: &std::path::Path,
) -> Result<Option<keel::payload::store::Installed>, String> {
    let s = StoreSession::open(store, opts).map_err(|e| e.to_string())?;
    let size = s.index().image.size;
    let Some(target) = target else {
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
    };
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
