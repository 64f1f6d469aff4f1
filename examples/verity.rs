//! `verity`: a veritysetup-like tool on keel-verity (signed roots: `verity-sign`; fs-verity
//! digests: `fsverity`).
//!
//! ```text
//! cargo run --release --example verity -- format DATA HASH [options]
//! cargo run --release --example verity -- verify DATA HASH ROOT_HEX [options]
//! cargo run --release --example verity -- repair DATA HASH ROOT_HEX --fec-device FEC [--output-dir DIR] [options]
//! cargo run --release --example verity -- dump HASH [--hash-offset N]
//! cargo run --release --example verity -- table HASH ROOT_HEX --data-device DEV [--hash-device DEV]
//! ```
//!
//! Options and output follow veritysetup: `--hash`, `--data-block-size`,
//! `--hash-block-size`, `--salt HEX|-`, `--format 0|1`, `--no-superblock`, `--hash-offset`,
//! `--data-blocks`, `--uuid`, and for forward error correction `--fec-device`, `--fec-roots`
//! (2 to 24), `--fec-offset` (on format, verify, repair and table); `Root hash:` is printed as veritysetup prints it, and verify
//! exits 0 when all is well, 1 on a root hash mismatch (or any other error), 2 on
//! corrupted data or hash blocks. With `--fec-device`, verify also reports what the parity
//! can repair ("Found N repairable errors", as veritysetup words it) but, unlike
//! veritysetup, still exits 2 while the data is damaged, and also when the parity is (a
//! parity that disagrees almost everywhere is named as one made with other `--fec-roots`
//! or `--fec-offset`): `repair` fixes it, in place or in copies under `--output-dir`,
//! writing only blocks that then match the tree, and exits 2 if anything stays damaged; it
//! refuses (exit 1, nothing written) a parity that disagrees in more than half of its
//! codewords where the tree does not confirm that damage, rather than re-encode a good
//! parity in the wrong shape.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;
#[path = "support/verity.rs"]
mod verity;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use keel::io::same_file;
use keel::verity::{
    android_fec_header, fec_repair, fec_verify, format, format_with_fec, open_hash_device,
    parse_uuid, random_uuid, verify, Error, FecGeometry, FormatOptions, ReadAt, RepairTarget,
    WriteAt,
};
use verity::{checked_root, open_read, open_rw, print_header, progress_bar, FecOpts, TreeOpts};

#[derive(Parser)]
#[command(
    name = "verity",
    about = "dm-verity hash trees, compatible with veritysetup"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// DATA and HASH, checked against ROOT_HEX (verify and repair take the same).
#[derive(Args)]
struct Checked {
    /// The data device or image file.
    data: PathBuf,
    /// The hash device or file (the tree, with its superblock unless --no-superblock).
    hash: PathBuf,
    /// The expected root hash, hex.
    root_hex: String,
    #[command(flatten)]
    opts: TreeOpts,
    #[command(flatten)]
    fec: FecOpts,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the hash tree of DATA and write it to HASH.
    Format {
        /// The data device or image file.
        data: PathBuf,
        /// Where to write the tree (a file is created; may be DATA, with --hash-offset past
        /// the data).
        hash: PathBuf,
        #[command(flatten)]
        opts: TreeOpts,
        #[command(flatten)]
        fec: FecOpts,
        /// Superblock UUID (default: random).
        #[arg(long)]
        uuid: Option<String>,
        /// After the parity, append Android's 4 KiB FEC header block.
        #[arg(long, requires = "fec_device")]
        android_header: bool,
        /// Write the root hash, hex, to this file too.
        #[arg(long)]
        root_hash_file: Option<PathBuf>,
    },
    /// Verify DATA and HASH against ROOT_HEX (and check the parity with --fec-device).
    Verify(Checked),
    /// Repair DATA, HASH and the parity with the parity, checked against ROOT_HEX.
    Repair {
        #[command(flatten)]
        checked: Checked,
        /// Repair copies of the three files in this directory, leaving the originals.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Print the dm-verity table line and the dm-mod.create= kernel parameter for a tree.
    Table {
        /// The hash device or file.
        hash: PathBuf,
        /// The root hash, hex.
        root_hex: String,
        /// The data device as the kernel names it.
        #[arg(long)]
        data_device: String,
        /// The hash device as the kernel names it (default: HASH).
        #[arg(long)]
        hash_device: Option<String>,
        /// Device-mapper name for dm-mod.create.
        #[arg(long, default_value = "vroot")]
        name: String,
        /// Read blocks of zeros without verifying them.
        #[arg(long)]
        ignore_zero_blocks: bool,
        #[command(flatten)]
        opts: TreeOpts,
        #[command(flatten)]
        fec: FecOpts,
        /// The FEC device as the kernel names it (default: the --fec-device path).
        #[arg(long, requires = "fec_device")]
        fec_kernel_device: Option<String>,
        /// Print the table without checking ROOT_HEX against the tree on HASH.
        #[arg(long)]
        unchecked: bool,
    },
    /// Print the superblock of HASH.
    Dump {
        /// The hash device or file.
        hash: PathBuf,
        /// Byte offset of the hash area, where the superblock is (size suffixes: 4K, 1M).
        #[arg(long, default_value = "0", value_parser = cli::parse_size)]
        hash_offset: u64,
    },
}

fn cmd_format(
    data: &Path,
    hash: &Path,
    opts: &TreeOpts,
    fec: &FecOpts,
    uuid: Option<&str>,
    root_file: Option<&Path>,
    android_header: bool,
) -> Result<(), String> {
    // Every input is checked before anything is created; what this run creates is
    // removed again if it fails.
    let data_f = open_read(data)?;
    let data_size = data_f
        .size()
        .map_err(|e| format!("{}: {e}", data.display()))?;
    let params = opts.params(data_size)?;
    let superblock = if opts.no_superblock {
        None
    } else {
        Some(match uuid {
            Some(u) => parse_uuid(u).map_err(|e| e.to_string())?,
            None => random_uuid().map_err(|e| e.to_string())?,
        })
    };
    if let Some(fec_path) = &fec.fec_device {
        if let Ok(existing) = File::open(fec_path) {
            check_fec_not_data(&data_f, &existing, fec.fec_offset, params.data_size())?;
        }
    }
    let mut created = cli::Created::default();
    let hash_f = cli::open_or_create(hash, 0o600, &mut created)?;
    if same_file(&data_f, &hash_f) && opts.hash_offset < params.data_size() {
        return Err(format!(
            "--hash-offset {} would overwrite the data (which ends at byte {}); give a larger offset or --data-blocks",
            opts.hash_offset,
            params.data_size()
        ));
    }
    let pb = progress_bar(params.data_size());
    let observer = |done: u64, _total: u64| pb.set_position(done);
    let fopts = FormatOptions::default()
        .hash_offset(opts.hash_offset)
        .superblock(superblock)
        .build(opts.build_options(Some(&observer)));
    // With parity: the tree and the parity from one read of the data.
    let (out, fec_out) = match &fec.fec_device {
        None => (
            format(&params, &data_f, &mut &hash_f, &fopts).map_err(|e| e.to_string())?,
            None,
        ),
        Some(fec_path) => {
            let fec_f = cli::open_or_create(fec_path, 0o600, &mut created)?;
            let mut hash_size = hash_f
                .size()
                .map_err(|e| format!("{}: {e}", hash.display()))?;
            // The parity on the hash file past its end: the gap before it is part of what
            // the parity covers, as zeros (what veritysetup reads there when it can).
            let mut grown_from = None;
            if same_file(&hash_f, &fec_f)
                && hash_size < fec.fec_offset
                && hash_f.metadata().is_ok_and(|m| m.is_file())
            {
                hash_f
                    .set_len(fec.fec_offset)
                    .map_err(|e| format!("{}: {e}", hash.display()))?;
                grown_from = Some(hash_size);
                hash_size = fec.fec_offset;
            }
            let formatted = format_with_fec(
                &params,
                &data_f,
                &mut &hash_f,
                &mut &fec_f,
                &fopts,
                |tree| {
                    // The hash device as it will be once the tree is written.
                    let end = hash_size.max(tree.hash_device_size());
                    if same_file(&hash_f, &fec_f) {
                        FecGeometry::on_hash_device(&params, tree, fec.fec_roots, fec.fec_offset)
                    } else {
                        FecGeometry::separate(&params, tree, fec.fec_roots, end, fec.fec_offset)
                    }
                },
            );
            let (out, g) = formatted.map_err(|e| {
                // A refused layout leaves an existing file as long as it was.
                if let Some(len) = grown_from {
                    let _ = hash_f.set_len(len);
                }
                e.to_string()
            })?;
            (out, Some((fec_path, fec_f, g)))
        }
    };
    pb.finish_and_clear();
    let fec_geometry = fec_out.as_ref().map(|(_, _, g)| g);
    print_header(hash, superblock, &params, &out.geometry, fec_geometry);
    let root = hex::encode(&out.root_hash);
    println!("Root hash:      \t{root}");
    // The parity's length on its device (with Android's header block after it).
    let fec_len = match fec_out {
        Some((fec_path, fec_f, g)) => {
            let mut end = g.fec_device_size();
            if android_header {
                let header = android_fec_header(&g, &fec_f).map_err(|e| e.to_string())?;
                (&fec_f)
                    .write_all_at(&header.to_block(), end)
                    .and_then(|()| (&fec_f).sync())
                    .map_err(|e| format!("{}: {e}", fec_path.display()))?;
                end += header.to_block().len() as u64;
            }
            Some((end - g.fec_offset(), same_file(&hash_f, &fec_f)))
        }
        None => None,
    };
    // As veritysetup prints them: a parity on the hash device counts in its size.
    let tree_len = out.geometry.hash_device_size();
    match fec_len {
        Some((len, true)) => println!("Hash device size: \t{} [bytes]", tree_len + len),
        Some((len, false)) => {
            println!("Hash device size: \t{tree_len} [bytes]");
            println!("FEC device size: \t{len} [bytes]");
        }
        None => println!("Hash device size: \t{tree_len} [bytes]"),
    }
    if let Some(f) = root_file {
        std::fs::write(f, format!("{root}\n")).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    created.keep();
    Ok(())
}

/// The parity must not land on the data: a FEC device that is the data device is refused
/// unless the parity starts past the data.
fn check_fec_not_data(
    data: &File,
    fec: &File,
    fec_offset: u64,
    data_size: u64,
) -> Result<(), String> {
    if same_file(data, fec) && fec_offset < data_size {
        return Err(format!(
            "the FEC device is the data device and --fec-offset {fec_offset} lies inside the data (which ends at byte {data_size}): the parity would overwrite it"
        ));
    }
    Ok(())
}

fn print_fec_report(r: &keel::verity::FecReport) {
    if r.is_clean() {
        println!("FEC: parity consistent ({} codewords)", r.codewords);
        return;
    }
    println!(
        "Found {} repairable errors with FEC device.",
        r.corrected_symbols
    );
    println!(
        "FEC: {} damaged codewords of {}, {} beyond the parity; damaged data blocks {:?}, hash blocks {:?}, parity bytes {}",
        r.damaged_codewords,
        r.codewords,
        r.unrepairable_codewords,
        r.data_blocks,
        r.hash_blocks,
        r.parity_bytes
    );
}

fn cmd_repair(c: &Checked, output_dir: Option<&Path>) -> Result<bool, String> {
    let (data, hash, root_hex, opts, fec) = (&c.data, &c.hash, &c.root_hex, &c.opts, &c.fec);
    let root = hex::decode(root_hex).map_err(|_| "Invalid root hash string specified.")?;
    let Some(fec_path) = fec.fec_device.as_deref() else {
        return Err("repair needs --fec-device".into());
    };
    // Into copies: the three roles copied once each (the parity may live on HASH).
    let (data, hash, fec_path) = match output_dir {
        None => (
            data.to_path_buf(),
            hash.to_path_buf(),
            fec_path.to_path_buf(),
        ),
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let copy = |p: &Path| -> Result<PathBuf, String> {
                let name = p
                    .file_name()
                    .ok_or_else(|| format!("{}: no file name", p.display()))?;
                let to = dir.join(name);
                std::fs::copy(p, &to)
                    .map_err(|e| format!("{} -> {}: {e}", p.display(), to.display()))?;
                Ok(to)
            };
            let same_hf = same_file(&open_read(hash)?, &open_read(fec_path)?);
            let d = copy(data)?;
            let h = copy(hash)?;
            let f = if same_hf { h.clone() } else { copy(fec_path)? };
            (d, h, f)
        }
    };
    let data_f = open_rw(&data)?;
    let hash_f = open_rw(&hash)?;
    let fec_f = open_rw(&fec_path)?;
    let size = data_f.size().map_err(|e| e.to_string())?;
    let (params, tree) = opts.existing(&hash_f, Some(size))?;
    check_fec_not_data(&data_f, &fec_f, fec.fec_offset, params.data_size())?;
    let g = fec.geometry(&hash_f, &fec_f, &params, &tree)?;
    let target = RepairTarget {
        params: &params,
        tree: &tree,
        root: &root,
    };
    let r = fec_repair(
        &g,
        &target,
        &mut &data_f,
        &mut &hash_f,
        &mut &fec_f,
        &opts.build_options(None),
    )
    .map_err(|e| e.to_string())?;
    print_fec_report(&r.scan);
    println!(
        "Repaired: data blocks {:?}, hash blocks {:?}, parity bytes {}",
        r.repaired_data_blocks, r.repaired_hash_blocks, r.repaired_parity_bytes
    );
    if !r.is_complete() {
        println!(
            "Unrepairable (left as they were): data blocks {:?}, hash blocks {:?}; {} blocks unverifiable below damaged hash blocks",
            r.unrepairable_data_blocks, r.unrepairable_hash_blocks, r.unverifiable_blocks
        );
    } else {
        println!("The data and the tree now verify against the root hash.");
    }
    if output_dir.is_some() {
        println!(
            "Repaired copies: {} {} {}",
            data.display(),
            hash.display(),
            fec_path.display()
        );
    }
    Ok(r.is_complete())
}

/// veritysetup's verify exit status for `e`: 2 for corrupted blocks, 1 for anything else.
fn corrupt_code(e: &Error) -> (u8, String) {
    match e {
        Error::HashBlockCorrupt { .. } | Error::DataBlockCorrupt { .. } => (2, e.to_string()),
        e => (1, e.to_string()),
    }
}

/// veritysetup's verify exit status: 1 for a root mismatch or any other error, 2 for
/// corrupted blocks (and, with `--fec-device`, a damaged parity).
fn cmd_verify(c: &Checked) -> ExitCode {
    let (data, hash, root_hex, opts, fec) = (&c.data, &c.hash, &c.root_hex, &c.opts, &c.fec);
    let run = || -> Result<(), (u8, String)> {
        let root = hex::decode(root_hex)
            .map_err(|_| (1, "Invalid root hash string specified.".to_string()))?;
        let data_f = open_read(data).map_err(|e| (1, e))?;
        let hash_f = open_read(hash).map_err(|e| (1, e))?;
        let size = data_f.size().map_err(|e| (1, e.to_string()))?;
        let (params, geometry) = opts.existing(&hash_f, Some(size)).map_err(|e| (1, e))?;
        let pb = progress_bar(params.data_size());
        let observer = |done: u64, _t: u64| pb.set_position(done);
        let r = verify(
            &params,
            &geometry,
            &data_f,
            &hash_f,
            &root,
            &opts.build_options(Some(&observer)),
        );
        pb.finish_and_clear();
        if let Some(fec_path) = &fec.fec_device {
            let fec_f = open_read(fec_path).map_err(|e| (1, e))?;
            check_fec_not_data(&data_f, &fec_f, fec.fec_offset, params.data_size())
                .map_err(|e| (1, e))?;
            let g = fec
                .geometry(&hash_f, &fec_f, &params, &geometry)
                .map_err(|e| (1, e))?;
            let report = fec_verify(&g, &data_f, &hash_f, &fec_f, &opts.build_options(None))
                .map_err(|e| (1, e.to_string()))?;
            print_fec_report(&report);
            r.as_ref().map_err(corrupt_code)?;
            if !report.is_clean() {
                // Data and tree check out: the damage is in the parity, which can no
                // longer repair what it should.
                return Err((
                    2,
                    match report.mostly_damaged() {
                        true => "the parity disagrees with the data almost everywhere: was it made with other --fec-roots or --fec-offset?".into(),
                        false => "the parity is damaged (repair rewrites it from the data)".into(),
                    },
                ));
            }
        }
        r.map_err(|e| corrupt_code(&e))
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("Verification failed: {msg}");
            ExitCode::from(code)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn cmd_table(
    hash: &Path,
    root_hex: &str,
    data_dev: &str,
    hash_dev: Option<&str>,
    name: &str,
    izb: bool,
    opts: &TreeOpts,
    fec: &FecOpts,
    fec_kernel_device: Option<&str>,
    unchecked: bool,
) -> Result<(), String> {
    let (hash_f, params, geometry, root) = checked_root(hash, root_hex, opts, unchecked, "print")?;
    let fec_table = match &fec.fec_device {
        None => None,
        Some(p) => {
            let fec_f = open_read(p)?;
            Some(keel::verity::FecTable {
                device: fec_kernel_device
                    .map(str::to_string)
                    .unwrap_or_else(|| p.display().to_string()),
                geometry: fec.geometry(&hash_f, &fec_f, &params, &geometry)?,
            })
        }
    };
    let hash_name = hash_dev
        .map(str::to_string)
        .unwrap_or_else(|| hash.display().to_string());
    let topts = keel::verity::TableOptions::default()
        .ignore_zero_blocks(izb)
        .fec(fec_table);
    let line = keel::verity::dm_table(&params, &geometry, &root, data_dev, &hash_name, &topts)
        .map_err(|e| e.to_string())?;
    println!("{line}");
    println!(
        "{}",
        keel::verity::dm_mod_create(name, &line).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn cmd_dump(hash: &Path, hash_offset: u64) -> Result<(), String> {
    let f = open_read(hash)?;
    let (sb, g) = open_hash_device(&f, hash_offset).map_err(|e| e.to_string())?;
    print_header(hash, Some(sb.uuid), &sb.params, &g, None);
    println!("Hash device size: \t{} [bytes]", g.hash_device_size());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Format {
            data,
            hash,
            opts,
            fec,
            uuid,
            root_hash_file,
            android_header,
        } => cmd_format(
            data,
            hash,
            opts,
            fec,
            uuid.as_deref(),
            root_hash_file.as_deref(),
            *android_header,
        ),
        Cmd::Verify(checked) => return cmd_verify(checked),
        Cmd::Repair {
            checked,
            output_dir,
        } => {
            return match cmd_repair(checked, output_dir.as_deref()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(2),
                Err(e) => {
                    eprintln!("verity: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Dump { hash, hash_offset } => cmd_dump(hash, *hash_offset),
        Cmd::Table {
            hash,
            root_hex,
            data_device,
            hash_device,
            name,
            ignore_zero_blocks,
            opts,
            fec,
            fec_kernel_device,
            unchecked,
        } => cmd_table(
            hash,
            root_hex,
            data_device,
            hash_device.as_deref(),
            name,
            *ignore_zero_blocks,
            opts,
            fec,
            fec_kernel_device.as_deref(),
            *unchecked,
        ),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verity: {e}");
            ExitCode::from(1)
        }
    }
}
