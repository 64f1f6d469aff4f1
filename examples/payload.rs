//! `payload`: signed delta update payloads.
//!
//! ```text
//! cargo run --release --example payload -- generate --source OLD --target NEW --key SECRET.pem -o OUT [--full]
//!         [--compatible STR] [--version V]
//! cargo run --release --example payload -- inspect PAYLOAD --pubkey PUBLIC.pem
//! cargo run --release --example payload -- apply --source OLD --target OUT --pubkey PUBLIC.pem
//!         (--installed-version V | --no-version-check) [--state FILE]
//!         [--hash-out HASH [--fec-out FEC --fec-roots N]] PAYLOAD|-
//! ```
//! `apply` draws a progress bar, reads the payload from stdin with `-`, and with `--state`
//! resumes an interrupted apply where it stopped. `generate --verity-salt HEX` binds the new
//! image's dm-verity root; `apply --hash-out` then writes the image's tree (and with
//! `--fec-out` its parity), built from the blocks as they are written, in the same pass.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel::payload::{
    generate_bundle_file, generate_file, read_images_at, ApplyOptions, BundlePart, GenerateOptions,
    ImageKind, OpType,
};
use keel::verity::SigningKey;

#[derive(Parser)]
#[command(name = "payload", about = "Signed delta update payloads")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a payload that turns SOURCE into TARGET; or, with --image and --file, a bundle
    /// of several images switched together (a new root and its kernel).
    Generate {
        /// The image the device runs now (the delta's base).
        #[arg(long, required_unless_present_any = ["full", "images", "files"])]
        source: Option<PathBuf>,
        /// The new image.
        #[arg(long, required_unless_present_any = ["images", "files"], conflicts_with_all = ["images", "files"])]
        target: Option<PathBuf>,
        /// A bundle's partition image: NAME=[OLD:]NEW, NAME the slot class it installs
        /// into (`usr`); without OLD, full. Repeatable.
        #[arg(long = "image", value_name = "NAME=[OLD:]NEW", value_parser = bundle_part)]
        images: Vec<(String, Option<PathBuf>, PathBuf)>,
        /// A bundle's file image: NAME=[OLD:]NEW, NAME the description's file (`kernel`):
        /// a kernel, an initrd, a UKI. Repeatable.
        #[arg(long = "file", value_name = "NAME=[OLD:]NEW", value_parser = bundle_part)]
        files: Vec<(String, Option<PathBuf>, PathBuf)>,
        /// Ed25519 private key, PKCS#8 PEM.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the payload.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// A full payload (no source).
        #[arg(long)]
        full: bool,
        /// The system the payload is for (devices check it against their own).
        #[arg(long, default_value = "keel-example")]
        compatible: String,
        /// The new image's version (dotted numbers).
        #[arg(long, default_value = "1.0")]
        version: String,
        /// zstd level.
        #[arg(long, default_value_t = 19)]
        level: i32,
        /// Bind the new image's dm-verity root (SHA-256, 4 KiB blocks, format 1, this
        /// salt in hex; `-` for none): the device builds the tree as it writes and checks
        /// it against this root (`apply --hash-out`).
        #[arg(long, value_name = "HEX", conflicts_with_all = ["images", "files"])]
        verity_salt: Option<String>,
        /// Treat the images as blocks only: no pairing of changed files through the
        /// ext4/EROFS layout, no re-created squashfs blocks, EROFS clusters or gzip files.
        /// The payload is larger; on squashfs and compressed EROFS the device then
        /// compresses nothing again (the corpus's squashfs pair: 17.2 MB instead of 12.7,
        /// applied in 0.6 s instead of 6.4).
        #[arg(long)]
        no_file_pairing: bool,
    },
    /// Print the manifest: images, and operations by type with their bytes.
    Inspect {
        /// The payload file.
        payload: PathBuf,
        /// A trusted public key (PEM); repeat for several.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
        /// Also list every operation in order: type, target and source blocks, blob bytes.
        #[arg(long)]
        operations: bool,
    },
    /// Apply PAYLOAD (or - for stdin) to TARGET.
    Apply {
        #[command(flatten)]
        to: cli::ApplyTo,
        /// Resume record.
        #[arg(long)]
        state: Option<PathBuf>,
        /// This system's compatible string (default: not checked).
        #[arg(long)]
        compatible: Option<String>,
        /// Accept a payload older than the installed version.
        #[arg(long)]
        allow_downgrade: bool,
        /// Accept a payload of the installed version.
        #[arg(long)]
        allow_reinstall: bool,
        /// Checkpoint the resume record after this many MiB written.
        #[arg(long, default_value_t = 64)]
        checkpoint_mib: u64,
        /// Write the image's dm-verity tree here (no superblock, at byte 0), built from the
        /// blocks as they are written and checked against the payload's signed root:
        /// `veritysetup format --no-superblock`'s hash device, without reading the image
        /// again.
        #[arg(long, value_name = "FILE")]
        hash_out: Option<PathBuf>,
        /// With --hash-out: the FEC parity of the image and tree, computed in the same pass
        /// (`veritysetup format --fec-device=FILE`).
        #[arg(long, value_name = "FILE", requires = "hash_out")]
        fec_out: Option<PathBuf>,
        /// Parity bytes per codeword for --fec-out (2 to 24).
        #[arg(long, default_value_t = 2, requires = "fec_out", value_parser = clap::value_parser!(u8).range(
            i64::from(keel::verity::FEC_MIN_ROOTS)..=i64::from(keel::verity::FEC_MAX_ROOTS),
        ))]
        fec_roots: u8,
        /// The payload file, or - for standard input.
        payload: String,
    },
}

/// The payload is renamed over `output` at the end: never over one of its own inputs
/// (compared by what the files are, not how they are spelled).
fn not_an_input(output: &std::path::Path, inputs: &[&std::path::Path]) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(o) = std::fs::metadata(output) else {
        return Ok(());
    };
    for i in inputs {
        if std::fs::metadata(i).is_ok_and(|m| (m.dev(), m.ino()) == (o.dev(), o.ino())) {
            return Err(format!(
                "{}: is the input {}; the payload goes to a file of its own",
                output.display(),
                i.display()
            ));
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Generate {
            source,
            target,
            images,
            files,
            key,
            output,
            full,
            compatible,
            version,
            level,
            verity_salt,
            no_file_pairing,
        } => {
            // `-` means standard input to `apply`; a payload is written to a file (its
            // signed front goes before the data, at the end), never to standard output.
            if output.as_os_str() == "-" {
                return Err("-o -: a payload is written to a file; give its path".into());
            }
            // The time reported is the whole run's: reading, hashing, encoding, writing.
            let t = std::time::Instant::now();
            let mut inputs: Vec<&std::path::Path> = vec![&key];
            inputs.extend(source.iter().chain(&target).map(|p| p.as_path()));
            for (_, old, new) in images.iter().chain(&files) {
                inputs.extend(old.iter().map(|p| p.as_path()));
                inputs.push(new);
            }
            not_an_input(&output, &inputs)?;
            // The images are mapped: one changed while the payload is made would give a
            // payload that does not apply. Their size and change times before and after.
            let stamp = |paths: &[&std::path::Path]| -> Vec<Option<(u64, i64, i64, i64)>> {
                use std::os::unix::fs::MetadataExt;
                paths
                    .iter()
                    .map(|p| {
                        std::fs::metadata(p)
                            .ok()
                            .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ctime_nsec()))
                    })
                    .collect()
            };
            let images_before = stamp(&inputs[1..]);
            let pem = cli::read_small_text(&key, 64 << 10)?;
            let key = SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| format!("{}: not a PKCS#8 Ed25519 key: {e}", key.display()))?;
            // Mapped, not read: the images stay page cache the kernel can drop, so the
            // generator's own memory does not grow with them.
            let map = |p: &std::path::Path| keel::io::Mapped::open(p).map_err(|e| e.to_string());
            let mut opts = GenerateOptions::new(&compatible, &version)
                .level(level)
                .file_pairing(!no_file_pairing);
            if let (Some(salt), Some(target)) = (&verity_salt, &target) {
                opts = opts.verity(verity_root(target, salt)?);
            }
            let pb = ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "hashing and encoding [{bar:40}] {bytes}/{total_bytes}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let observer = |done: u64, total: u64| {
                pb.set_length(total);
                pb.set_position(done);
            };
            let (p, size) = match &target {
                Some(target) => {
                    let tgt = map(target)?;
                    let src = match (&source, full) {
                        (Some(s), false) => Some(map(s)?),
                        _ => None,
                    };
                    let p =
                        generate_file(src.as_deref(), &tgt, &key, &opts, Some(&observer), &output);
                    (p, tgt.len())
                }
                None => {
                    let kinds = images.iter().map(|i| (ImageKind::Slot, i));
                    let kinds = kinds.chain(files.iter().map(|f| (ImageKind::File, f)));
                    let mut maps = Vec::new();
                    for (kind, (name, old, new)) in kinds {
                        let old = old.as_deref().map(map).transpose()?;
                        maps.push((kind, name.as_str(), old, map(new)?));
                    }
                    let parts: Vec<BundlePart> = maps
                        .iter()
                        .map(|(kind, name, old, new)| BundlePart {
                            name,
                            kind: *kind,
                            source: old.as_deref(),
                            target: new,
                            verity: None,
                        })
                        .collect();
                    let size = maps.iter().map(|m| m.3.len()).sum();
                    let p = generate_bundle_file(&parts, &key, &opts, Some(&observer), &output);
                    (p, size)
                }
            };
            pb.finish_and_clear();
            let len = p.map_err(|e| format!("{}: {e}", output.display()))?;
            if stamp(&inputs[1..]) != images_before {
                let _ = std::fs::remove_file(&output);
                return Err(format!(
                    "{}: an image changed while the payload was made; the payload is removed",
                    output.display()
                ));
            }
            println!(
                "{}: {} bytes for {} bytes of images ({:.2}%), {:.1} s",
                output.display(),
                len,
                size,
                100.0 * len as f64 / size.max(1) as f64,
                t.elapsed().as_secs_f64()
            );
        }
        Cmd::Inspect {
            payload,
            pubkeys,
            operations,
        } => {
            let ring = cli::load_keyring(&pubkeys)?;
            let mut f = File::open(&payload).map_err(|e| format!("{}: {e}", payload.display()))?;
            let now = keel::trust::unix_now();
            let (h, images, id) = read_images_at(&mut f, &ring, now).map_err(|e| e.to_string())?;
            // The data area must be there, whole and alone, before its size is reported.
            let present = std::io::copy(
                &mut (&mut f).take(h.data_len.saturating_add(1)),
                &mut std::io::sink(),
            )
            .map_err(|e| format!("{}: {e}", payload.display()))?;
            if present != h.data_len {
                return Err(format!(
                    "{}: the header announces {} data bytes, the file holds {}{}",
                    payload.display(),
                    h.data_len,
                    present.min(h.data_len),
                    if present > h.data_len {
                        " and more after them"
                    } else {
                        " (truncated)"
                    }
                ));
            }
            println!("payload id:   {}", hex::encode(id));
            println!("signed by:    {}", hex::encode(h.key_id));
            println!("compatible:   {}", images[0].manifest.compatible);
            println!("version:      {}", images[0].manifest.version);
            if h.version == keel::payload::format::BUNDLE_VERSION {
                println!("bundle:       {} images", images.len());
            }
            for image in &images {
                if !image.name.is_empty() {
                    println!(
                        "image {:?} ({}), {} data bytes:",
                        image.name,
                        image.kind.name(),
                        image.data_len
                    );
                }
                print_image(&image.manifest);
                if operations {
                    print_operations(&image.manifest);
                }
            }
            println!(
                "manifest:     {} bytes, data {} bytes",
                h.manifest_len, h.data_len
            );
        }
        Cmd::Apply {
            to,
            state,
            compatible,
            allow_downgrade,
            allow_reinstall,
            checkpoint_mib,
            hash_out,
            fec_out,
            fec_roots,
            payload,
        } => {
            let ring = cli::load_keyring(&to.pubkeys)?;
            let src = to.open_source()?;
            // A payload file's length is known: it must be the signed one, as `inspect`
            // checks (bytes after the data are no part of the payload).
            let mut file_len = None;
            let reader: Box<dyn Read> = if payload == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                let f = File::open(&payload).map_err(|e| format!("{payload}: {e}"))?;
                file_len = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
                Box::new(f)
            };
            // A target this run creates is removed again if the apply fails (unless a
            // resume record needs it); one that was there (a slot, a half-written image to
            // resume) is left as it is.
            let mut created = cli::Created::unless(state.clone());
            let mut tgt = cli::open_or_create(&to.target, 0o644, &mut created)?;
            // Every file this run writes is there before anything is written (the ones it
            // creates are removed again on failure), so each is compared by what it is with
            // every input and with the others: a tree written over the image, a resume
            // record over the key, whatever their spelling.
            let mut hash_f = hash_out
                .as_deref()
                .map(|p| cli::open_or_create(p, 0o644, &mut created))
                .transpose()?;
            let mut fec_f = fec_out
                .as_deref()
                .map(|p| cli::open_or_create(p, 0o644, &mut created))
                .transpose()?;
            let mut outputs = vec![("--target", to.target.as_path())];
            outputs.extend(hash_out.as_deref().map(|p| ("--hash-out", p)));
            outputs.extend(fec_out.as_deref().map(|p| ("--fec-out", p)));
            outputs.extend(state.as_deref().map(|p| ("--state", p)));
            let mut inputs: Vec<(&str, &std::path::Path)> = to
                .pubkeys
                .iter()
                .map(|p| ("--pubkey", p.as_path()))
                .collect();
            inputs.extend(to.source.as_deref().map(|p| ("--source", p)));
            // Standard input by what it is too: a payload redirected from the target
            // itself would be overwritten as it is read.
            inputs.push((
                "the payload",
                std::path::Path::new(if payload == "-" {
                    "/dev/stdin"
                } else {
                    &payload
                }),
            ));
            if let Err(e) = cli::all_distinct(&outputs, &inputs, &[("--target", "--source")]) {
                created.no_resume_yet();
                return Err(e);
            }
            let pb = ProgressBar::new(0);
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let observer = |done: u64, total: u64| {
                pb.set_length(total);
                pb.set_position(done);
            };
            let mut opts = ApplyOptions::new(&ring, to.version())
                .allow_downgrade(allow_downgrade)
                .allow_reinstall(allow_reinstall)
                .progress(&observer)
                .checkpoint_bytes(checkpoint_mib.max(1) << 20)
                .compatible(compatible.as_deref());
            opts.state = state.as_deref();
            let p = keel::payload::Payload::open_at(
                std::io::BufReader::new(reader),
                &ring,
                keel::trust::unix_now(),
            )
            .map_err(|e| e.to_string())?;
            if let Some(len) = file_len.filter(|l| *l > p.len()) {
                return Err(format!(
                    "{payload}: {len} bytes, the signed header and manifest account for {}: \
                     bytes after the data",
                    p.len()
                ));
            }
            // The tree (and parity) from the writes: the payload's image must carry a signed
            // root, which the tree is checked against.
            let image = match &to.image {
                Some(name) => p.images().iter().find(|i| &i.name == name),
                None => p.next_image(),
            };
            let params = match (&hash_out, image.and_then(|i| i.manifest.verity.as_deref())) {
                (None, _) => None,
                (Some(_), Some(v)) => Some(
                    keel::verity::RootDescriptor::parse(v)
                        .map_err(|e| e.to_string())?
                        .params()
                        .clone(),
                ),
                (Some(h), None) => {
                    return Err(format!(
                        "--hash-out {}: the payload's image has no signed dm-verity root \
                         (generate it with --verity-salt)",
                        h.display()
                    ))
                }
            };
            let fec = match (&params, &fec_out) {
                (Some(params), Some(_)) => {
                    let tree = keel::verity::TreeGeometry::new(params, 0, false)
                        .map_err(|e| e.to_string())?;
                    Some(
                        keel::verity::FecGeometry::separate(
                            params,
                            &tree,
                            fec_roots,
                            tree.hash_device_size(),
                            0,
                        )
                        .map_err(|e| {
                            format!(
                                "the parity of the payload's image (--fec-roots {fec_roots}): {e}"
                            )
                        })?,
                    )
                }
                _ => None,
            };
            if let Some(g) = &fec {
                opts = opts.parity(g);
            }
            let mut done = to.apply(p, src.as_ref(), &mut tgt, &opts)?;
            pb.finish_and_clear();
            if let (Some(path), Some(params)) = (&hash_out, &params) {
                let v = done
                    .verity
                    .take()
                    .ok_or("the image's root does not cover the whole image")?;
                let hash = hash_f.as_mut().ok_or("--hash-out: not open")?;
                cli::truncate(hash, path)?;
                keel::verity::write_tree(params, &v.tree, hash, &Default::default())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if let (Some(path), Some(g), Some(f)) = (&fec_out, &fec, fec_f.as_mut()) {
                    cli::truncate(f, path)?;
                    match &v.parity {
                        Some(parity) => parity.write_to(f),
                        None => keel::verity::fec_encode(g, &tgt, &*hash, f, &Default::default()),
                    }
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                println!("Root hash:      \t{}", hex::encode(v.tree.root_hash()));
            }
            created.keep();
            if let Some(why) = &done.discarded {
                println!("started over from the first operation: {why}");
            }
            if done.resumed_at > 0 {
                println!("resumed at operation {}", done.resumed_at);
            }
            println!(
                "applied: {} ({} bytes, {} verified)",
                to.target.display(),
                done.manifest.target.size,
                if done.manifest.verity.is_some() {
                    "dm-verity root"
                } else {
                    "digest"
                }
            );
        }
    }
    Ok(())
}

/// The dm-verity root of `image` (SHA-256, 4 KiB blocks, format 1, `salt` in hex or `-`).
fn verity_root(
    image: &std::path::Path,
    salt: &str,
) -> Result<keel::verity::RootDescriptor, String> {
    let salt = match salt {
        "-" => Vec::new(),
        h => hex::decode(h).map_err(|e| format!("--verity-salt: {e}"))?,
    };
    let data = keel::io::Mapped::open(image).map_err(|e| e.to_string())?;
    let params = keel::verity::VerityParams::builder()
        .salt(salt)
        .data_blocks_for(data.len() as u64)
        .build()
        .map_err(|e| format!("--verity-salt: {e}"))?;
    if params.data_size() != data.len() as u64 {
        return Err(format!(
            "{}: {} bytes, not a whole number of 4 KiB blocks: no dm-verity root",
            image.display(),
            data.len()
        ));
    }
    let tree = keel::verity::HashTree::build(&params, &data[..]).map_err(|e| e.to_string())?;
    keel::verity::RootDescriptor::new(params, tree.root_hash()).map_err(|e| e.to_string())
}

/// An image's source, target, dm-verity root and operations by type.
fn print_operations(m: &keel::payload::Manifest) {
    let extents = |e: &[keel::payload::Extent]| {
        let list: Vec<String> = e
            .iter()
            .take(4)
            .map(|x| format!("{}+{}", x.start, x.blocks))
            .collect();
        let more = if e.len() > 4 {
            format!(" (+{} more)", e.len() - 4)
        } else {
            String::new()
        };
        format!("{}{more}", list.join(","))
    };
    println!(
        "{:>5} {:<11} {:>9} {:>9} {:>10}  target / source extents",
        "op", "type", "blocks", "src blks", "blob bytes"
    );
    for (i, o) in m.operations.iter().enumerate() {
        println!(
            "{:>5} {:<11} {:>9} {:>9} {:>10}  {} / {}",
            i,
            o.op.name(),
            o.target_blocks(),
            o.source_blocks(),
            o.data_length,
            extents(&o.target),
            extents(&o.source)
        );
    }
}

fn print_image(m: &keel::payload::Manifest) {
    match m.source {
        Some(s) => println!(
            "source:       {} bytes, digest {}",
            s.size,
            hex::encode(s.digest)
        ),
        None => println!("source:       none (full)"),
    }
    println!(
        "target:       {} bytes, digest {}",
        m.target.size,
        hex::encode(m.target.digest)
    );
    println!(
        "verity:       {}",
        if m.verity.is_some() {
            "signed root descriptor included"
        } else {
            "none"
        }
    );
    if let Some(r) = &m.recompressor {
        println!("recompress:   with {r}");
    }
    println!(
        "{:<10} {:>8} {:>14} {:>14} {:>8}",
        "type", "ops", "target bytes", "data bytes", "ratio"
    );
    for t in OpType::ALL {
        let ops: Vec<_> = m.operations.iter().filter(|o| o.op == t).collect();
        let tb: u64 = ops.iter().map(|o| o.target_blocks() * 4096).sum();
        let db: u64 = ops.iter().map(|o| o.data_length).sum();
        println!(
            "{:<10} {:>8} {:>14} {:>14} {:>7.2}%",
            t.name(),
            ops.len(),
            tb,
            db,
            100.0 * db as f64 / tb.max(1) as f64
        );
    }
}

/// `NAME=[OLD:]NEW`.
fn bundle_part(s: &str) -> Result<(String, Option<PathBuf>, PathBuf), String> {
    let (name, paths) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=[OLD:]NEW"))?;
    if !keel::payload::format::valid_image_name(name) {
        return Err(format!(
            "{name:?}: an image name is 1 to 64 letters, digits, '.', '_' or '-'"
        ));
    }
    let (old, new) = match paths.split_once(':') {
        Some((o, n)) => (Some(PathBuf::from(o)), n),
        None => (None, paths),
    };
    if new.is_empty() || old.as_ref().is_some_and(|o| o.as_os_str().is_empty()) {
        return Err(format!("{s:?}: expected NAME=[OLD:]NEW"));
    }
    Ok((name.to_string(), old, PathBuf::from(new)))
}

fn main() -> ExitCode {
    keel::io::sys::lean_malloc();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The library's messages already say "payload ..." where it helps; a
            // "payload:" program prefix would repeat it.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
