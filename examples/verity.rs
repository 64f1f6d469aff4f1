//! `verity`: a veritysetup-like tool on keel-verity, plus signed root hashes.
//!
//! ```text
//! cargo run --release --example verity -- format DATA HASH [options]
//! cargo run --release --example verity -- verify DATA HASH ROOT_HEX [options]
//! cargo run --release --example verity -- repair DATA HASH ROOT_HEX --fec-device FEC [--output-dir DIR] [options]
//! cargo run --release --example verity -- dump HASH [--hash-offset N]
//! cargo run --release --example verity -- table HASH ROOT_HEX --data-device DEV [--hash-device DEV]
//! cargo run --release --example verity -- keygen KEY.pem [--public PUB.pem]
//! cargo run --release --example verity -- sign HASH ROOT_HEX --key KEY.pem --out ROOT.sig
//! cargo run --release --example verity -- verify-signature ROOT.sig --pubkey PUB.pem [--data-device DATA --hash-device HASH]
//! cargo run --release --example verity -- fsverity-digest FILE [--hash-alg sha256|sha512] [--block-size N] [--salt HEX]
//! cargo run --release --example verity -- demo      # the whole cycle in a temporary directory
//! ```
//!
//! Options and output follow veritysetup: `--hash`, `--data-block-size`,
//! `--hash-block-size`, `--salt HEX|-`, `--format 0|1`, `--no-superblock`, `--hash-offset`,
//! `--data-blocks`, `--uuid`, and for forward error correction `--fec-device`, `--fec-roots`
//! (2 to 24), `--fec-offset` (on format, verify, repair and table); `Root hash:` is printed as veritysetup prints it, and verify
//! exits 0 when all is well, 1 on a root hash mismatch (or any other error), 2 on
//! corrupted data or hash blocks. With `--fec-device`, verify also reports what the parity
//! can repair ("Found N repairable errors", as veritysetup words it) but, unlike
//! veritysetup, still exits 2 while the data is damaged: `repair` fixes it, in place or in
//! copies under `--output-dir`, writing only blocks that then match the tree, and exits 2
//! if anything stays damaged.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel::io::same_file;
use keel::verity::{
    android_fec_header, check_root, existing_tree, fec_encode, fec_repair, fec_verify, format,
    format_uuid, open_hash_device, parse_uuid, random_uuid, verify, BuildOptions, Error,
    FecGeometry, FormatOptions, HashAlgorithm, HashType, Keyring, PublicKey, ReadAt, RepairTarget,
    RootDescriptor, SignRoot, SigningKey, Threads, TreeGeometry, VerifyRoot, VerityParams, WriteAt,
};

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
    /// Print the fs-verity digest of FILE, as `fsverity digest` does.
    FsverityDigest {
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
    /// Print the superblock of HASH.
    Dump {
        /// The hash device or file.
        hash: PathBuf,
        /// Byte offset of the hash area, where the superblock is (size suffixes: 4K, 1M).
        #[arg(long, default_value = "0", value_parser = cli::parse_size)]
        hash_offset: u64,
    },
    /// Create an Ed25519 signing key (PKCS#8 PEM, as openssl genpkey writes).
    Keygen {
        /// Where to write the private key (PKCS#8 PEM); an existing file is never replaced.
        key: PathBuf,
        /// Also write the public key (PEM) here.
        #[arg(long)]
        public: Option<PathBuf>,
    },
    /// Sign ROOT_HEX together with the tree parameters of HASH.
    Sign {
        /// The hash device or file whose tree the root belongs to.
        hash: PathBuf,
        /// The root hash, hex.
        root_hex: String,
        /// Private key, PKCS#8 PEM.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed root.
        #[arg(long)]
        out: PathBuf,
        /// Sign ROOT_HEX without checking it against the tree on HASH (offline signing of
        /// a root computed elsewhere).
        #[arg(long)]
        unchecked: bool,
        #[command(flatten)]
        opts: TreeOpts,
    },
    /// Check a signed root against trusted keys; with --data-device and --hash-device,
    /// verify the devices against it too.
    VerifySignature {
        /// The signed root (as `sign` writes it).
        signed_root: PathBuf,
        /// A trusted public key (PEM); repeat for several.
        #[arg(long = "pubkey", required = true)]
        keys: Vec<PathBuf>,
        /// The data device or image to verify.
        #[arg(long, requires = "hash_device")]
        data_device: Option<PathBuf>,
        /// Its hash device or file.
        #[arg(long, requires = "data_device")]
        hash_device: Option<PathBuf>,
        /// Byte offset of the hash area on the hash device (size suffixes: 4K, 1M).
        #[arg(long, default_value = "0", value_parser = cli::parse_size)]
        hash_offset: u64,
        /// Do not write or read a superblock.
        #[arg(long)]
        no_superblock: bool,
    },
    /// Run the whole cycle on a generated image in a temporary directory, narrating.
    Demo {
        /// Image size in MiB (1 to 4096; the image is generated in memory).
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
    },
}

/// The tree's parameters, with veritysetup's names. Where HASH has a superblock (verify,
/// repair, table, sign without --no-superblock), the superblock's values are used and
/// these are ignored.
#[derive(Args)]
struct TreeOpts {
    /// Hash algorithm (a superblock's overrides it).
    #[arg(long = "hash", default_value = "sha256")]
    algorithm: String,
    /// Data block size, a power of two from 512 to 512K (a superblock's overrides it).
    #[arg(long, default_value = "4096", value_parser = cli::parse_size_u32)]
    data_block_size: u32,
    /// Hash block size, a power of two from 512 to 512K (a superblock's overrides it).
    #[arg(long, default_value = "4096", value_parser = cli::parse_size_u32)]
    hash_block_size: u32,
    /// Salt in hex, or - for none; format's default is 32 random bytes, the others need it
    /// with --no-superblock (a superblock's overrides it).
    #[arg(long, allow_hyphen_values = true)]
    salt: Option<String>,
    /// Hash format: 1 (normal) or 0 (Chrome OS) (a superblock's overrides it).
    #[arg(long, default_value_t = 1)]
    format: u32,
    /// Do not write or read a superblock.
    #[arg(long)]
    no_superblock: bool,
    /// Byte offset of the hash area on the hash device (size suffixes: 4K, 1M).
    #[arg(long, default_value = "0", value_parser = cli::parse_size)]
    hash_offset: u64,
    /// Number of data blocks (default: all whole blocks of DATA; a superblock's overrides
    /// it).
    #[arg(long)]
    data_blocks: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<std::num::NonZeroUsize>,
}

#[derive(Args)]
struct FecOpts {
    /// Reed-Solomon parity file or device (may be HASH, with --fec-offset past the tree).
    #[arg(long)]
    fec_device: Option<PathBuf>,
    /// Parity bytes per 255-byte codeword, 2 to 24.
    #[arg(long, default_value_t = keel::verity::FEC_DEFAULT_ROOTS)]
    fec_roots: u8,
    /// Byte offset of the parity on the FEC device (size suffixes: 4K, 1M).
    #[arg(long, default_value = "0", value_parser = cli::parse_size)]
    fec_offset: u64,
}

impl FecOpts {
    /// The parity geometry for a tree whose hash device is `hash` (veritysetup's rule: the
    /// hash area runs to the end of the hash device, or to the FEC offset when the parity is
    /// on the hash device).
    fn geometry(
        &self,
        hash: &File,
        fec: &File,
        params: &VerityParams,
        tree: &TreeGeometry,
    ) -> Result<FecGeometry, String> {
        FecGeometry::for_files(params, tree, self.fec_roots, hash, fec, self.fec_offset)
            .map_err(|e| e.to_string())
    }
}

impl TreeOpts {
    fn params(&self, data_size: u64) -> Result<VerityParams, String> {
        let hash_type = HashType::from_u32(self.format)
            .ok_or_else(|| format!("--format {}: must be 0 or 1", self.format))?;
        let mut b = VerityParams::builder()
            .algorithm(HashAlgorithm::from_name(&self.algorithm).map_err(|e| e.to_string())?)
            .hash_type(hash_type)
            .data_block_size(self.data_block_size)
            .hash_block_size(self.hash_block_size)
            .data_blocks_for(data_size);
        if let Some(n) = self.data_blocks {
            b = b.data_blocks(n);
        }
        match self.salt.as_deref() {
            None => {}
            Some("-") => b = b.salt(Vec::new()),
            Some(h) => b = b.salt(hex::decode(h).map_err(|e| format!("--salt: {e}"))?),
        }
        b.build().map_err(|e| e.to_string())
    }

    /// The parameters and layout of an existing tree: from its superblock, or from the
    /// options with --no-superblock.
    fn existing(
        &self,
        hash: &File,
        data_size: Option<u64>,
    ) -> Result<(VerityParams, TreeGeometry), String> {
        let explicit = if self.no_superblock {
            if self.salt.is_none() {
                return Err("--no-superblock needs --salt (HEX or -)".into());
            }
            let size = match (self.data_blocks, data_size) {
                (Some(_), _) => 0,
                (None, Some(s)) => s,
                (None, None) => return Err("--no-superblock needs --data-blocks".into()),
            };
            Some(self.params(size)?)
        } else {
            None
        };
        existing_tree(hash, self.hash_offset, explicit).map_err(|e| e.to_string())
    }

    fn build_options<'a>(
        &self,
        progress: Option<&'a dyn keel::verity::Progress>,
    ) -> BuildOptions<'a> {
        let build =
            BuildOptions::default().threads(self.threads.map_or(Threads::AllCores, Threads::from));
        match progress {
            Some(p) => build.progress(p),
            None => build,
        }
    }
}

fn open_read(p: &Path) -> Result<File, String> {
    File::open(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn progress_bar(total: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

fn print_header(hash: &Path, uuid: Option<[u8; 16]>, p: &VerityParams, g: &TreeGeometry) {
    println!("VERITY header information for {}", hash.display());
    println!(
        "UUID:            \t{}",
        uuid.map(|u| format_uuid(&u)).unwrap_or_default()
    );
    println!("Hash type:       \t{}", p.hash_type().as_u32());
    println!("Data blocks:     \t{}", p.data_blocks());
    println!("Data block size: \t{}", p.data_block_size());
    println!("Hash blocks:     \t{}", g.tree_blocks());
    println!("Hash block size: \t{}", p.hash_block_size());
    println!("Hash algorithm:  \t{}", p.algorithm());
    let salt = if p.salt().is_empty() {
        "-".to_string()
    } else {
        hex::encode(p.salt())
    };
    println!("Salt:            \t{salt}");
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
    let out = format(&params, &data_f, &mut &hash_f, &fopts).map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    print_header(hash, superblock, &params, &out.geometry);
    let root = hex::encode(&out.root_hash);
    println!("Root hash:      \t{root}");
    println!(
        "Hash device size: \t{} [bytes]",
        out.geometry.hash_device_size()
    );
    if let Some(fec_path) = &fec.fec_device {
        let fec_f = cli::open_or_create(fec_path, 0o600, &mut created)?;
        let g = fec.geometry(&hash_f, &fec_f, &params, &out.geometry)?;
        let pb = progress_bar(g.rounds() * g.rs_n() * g.block_size());
        let observer = |done: u64, _total: u64| pb.set_position(done);
        fec_encode(
            &g,
            &data_f,
            &hash_f,
            &mut &fec_f,
            &opts.build_options(Some(&observer)),
        )
        .map_err(|e| e.to_string())?;
        pb.finish_and_clear();
        let mut end = g.fec_device_size();
        if android_header {
            let header = android_fec_header(&g, &fec_f).map_err(|e| e.to_string())?;
            (&fec_f)
                .write_all_at(&header.to_block(), end)
                .and_then(|()| (&fec_f).sync())
                .map_err(|e| format!("{}: {e}", fec_path.display()))?;
            end += header.to_block().len() as u64;
        }
        println!("FEC device size: \t{} [bytes]", end - g.fec_offset());
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

fn open_rw(p: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| format!("{}: {e}", p.display()))
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

/// veritysetup's verify exit status: 1 for a root mismatch or any other error, 2 for
/// corrupted blocks.
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
        }
        r.map_err(|e| match e {
            Error::HashBlockCorrupt { .. } | Error::DataBlockCorrupt { .. } => (2, e.to_string()),
            e => (1, e.to_string()),
        })
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
    print_header(hash, Some(sb.uuid), &sb.params, &g);
    println!("Hash device size: \t{} [bytes]", g.hash_device_size());
    Ok(())
}

fn write_new(path: &Path, content: &str, mode: u32) -> Result<(), String> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(content.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn cmd_keygen(key: &Path, public: Option<&Path>) -> Result<(), String> {
    let k = SigningKey::generate().map_err(|e| e.to_string())?;
    write_new(key, &k.to_pkcs8_pem().map_err(|e| e.to_string())?, 0o600)?;
    if let Some(p) = public {
        write_new(
            p,
            &k.public_key().to_pem().map_err(|e| e.to_string())?,
            0o644,
        )?;
    }
    println!("Key id: {}", k.public_key().id());
    Ok(())
}

fn cmd_sign(
    hash: &Path,
    root_hex: &str,
    key: &Path,
    out: &Path,
    unchecked: bool,
    opts: &TreeOpts,
) -> Result<(), String> {
    let (_, params, _, root) = checked_root(hash, root_hex, opts, unchecked, "sign")?;
    let desc = RootDescriptor::new(params, &root).map_err(|e| e.to_string())?;
    let pem = std::fs::read_to_string(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let k = SigningKey::from_pkcs8_pem(&pem).map_err(|e| e.to_string())?;
    let signed = k.sign_root(&desc).map_err(|e| e.to_string())?;
    std::fs::write(out, signed.to_bytes()).map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "Signed root hash {root_hex} with key {}",
        k.public_key().id()
    );
    Ok(())
}

fn cmd_verify_signature(
    signed: &Path,
    keys: &[PathBuf],
    device: Option<(&Path, &Path)>,
    hash_offset: u64,
    no_superblock: bool,
) -> ExitCode {
    let run = || -> Result<(), (u8, String)> {
        let mut ring = Keyring::new();
        for k in keys {
            let pem =
                std::fs::read_to_string(k).map_err(|e| (1, format!("{}: {e}", k.display())))?;
            ring.add(PublicKey::from_pem(&pem).map_err(|e| (1, e.to_string()))?)
                .map_err(|e| (1, e.to_string()))?;
        }
        // A signed root has a fixed size: read no more than one byte past it.
        let mut bytes = Vec::new();
        open_read(signed)
            .map_err(|e| (1, e))?
            .take(keel::verity::sign::SIGNED_ROOT_SIZE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| (1, format!("{}: {e}", signed.display())))?;
        let v = ring.verify_root(&bytes).map_err(|e| (1, e.to_string()))?;
        let d = &v.descriptor;
        let p = d.params();
        println!("Signature:       \tgood, key {}", v.key_id);
        println!("Root hash:      \t{}", hex::encode(d.root_hash()));
        println!("Hash type:       \t{}", p.hash_type().as_u32());
        println!("Hash algorithm:  \t{}", p.algorithm());
        println!("Data blocks:     \t{}", p.data_blocks());
        println!("Data block size: \t{}", p.data_block_size());
        println!("Hash block size: \t{}", p.hash_block_size());
        println!(
            "Salt:            \t{}",
            if p.salt().is_empty() {
                "-".into()
            } else {
                hex::encode(p.salt())
            }
        );
        if let Some((data, hash)) = device {
            let data_f = open_read(data).map_err(|e| (1, e))?;
            let hash_f = open_read(hash).map_err(|e| (1, e))?;
            v.verify_device(
                &data_f,
                &hash_f,
                hash_offset,
                !no_superblock,
                &BuildOptions::default(),
            )
            .map_err(|e| match e {
                Error::HashBlockCorrupt { .. } | Error::DataBlockCorrupt { .. } => {
                    (2, e.to_string())
                }
                e => (1, e.to_string()),
            })?;
            println!("Device:          \tverified against the signed root hash");
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("Verification failed: {msg}");
            ExitCode::from(code)
        }
    }
}

/// format -> verify -> corrupt -> detect -> sign -> verify the signature, on a generated image.
fn cmd_demo(size_mib: u64) -> Result<(), String> {
    if !(1..=4096).contains(&size_mib) {
        return Err(format!(
            "--size-mib {size_mib}: the demo image is made in memory, 1 to 4096 MiB"
        ));
    }
    let dir = std::env::temp_dir().join(format!("keel-verity-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = demo_in(&dir, size_mib);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn demo_in(dir: &Path, size_mib: u64) -> Result<(), String> {
    let err = |e: Error| e.to_string();
    let data_path = dir.join("rootfs.img");
    let hash_path = dir.join("rootfs.verity");
    println!(
        "1. Writing a {size_mib} MiB root filesystem image (generated content) to {}",
        data_path.display()
    );
    let mut image = vec![0u8; (size_mib << 20) as usize];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for w in image.chunks_exact_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        w.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    std::fs::write(&data_path, &image).map_err(|e| e.to_string())?;
    drop(image);

    println!("2. Building its dm-verity tree (veritysetup defaults: sha256, 4096-byte blocks, random salt and UUID)");
    let data_f = open_read(&data_path)?;
    let params = VerityParams::builder()
        .data_blocks_for(data_f.size().map_err(|e| e.to_string())?)
        .build()
        .map_err(err)?;
    let hash_f = File::create(&hash_path).map_err(|e| e.to_string())?;
    let uuid = random_uuid().map_err(err)?;
    let start = std::time::Instant::now();
    let opts = FormatOptions::default().superblock(uuid);
    let formatted = format(&params, &data_f, &mut &hash_f, &opts).map_err(err)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "   Root hash: {}  ({} hash blocks, {:.2} s, {:.2} GB/s)",
        hex::encode(&formatted.root_hash),
        formatted.geometry.tree_blocks(),
        secs,
        params.data_size() as f64 / secs / 1e9
    );

    println!("3. Verifying the image against the root hash, parameters read from the superblock");
    let hash_r = open_read(&hash_path)?;
    let (sb, geometry) = open_hash_device(&hash_r, 0).map_err(err)?;
    verify(
        &sb.params,
        &geometry,
        &data_f,
        &hash_r,
        &formatted.root_hash,
        &BuildOptions::default(),
    )
    .map_err(err)?;
    println!("   OK");

    println!("4. Signing the root hash, bound to every tree parameter, with a new Ed25519 key");
    let key = SigningKey::generate().map_err(|e| e.to_string())?;
    let signed = key
        .sign_root(&RootDescriptor::new(sb.params.clone(), &formatted.root_hash).map_err(err)?)
        .map_err(err)?;
    let mut ring = Keyring::new();
    ring.add(key.public_key().clone())
        .map_err(|e| e.to_string())?;
    let verified = ring.verify_root(&signed.to_bytes()).map_err(err)?;
    println!("   Signature good, key {}", verified.key_id);

    println!("5. Flipping one bit in data block 12345 and verifying again");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data_path)
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    let at = 12345 * 4096 + 100;
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut byte, at).map_err(|e| e.to_string())?;
    byte[0] ^= 0x20;
    std::os::unix::fs::FileExt::write_all_at(&f, &byte, at).map_err(|e| e.to_string())?;
    match verify(
        &sb.params,
        &geometry,
        &data_f,
        &hash_r,
        verified.descriptor.root_hash(),
        &BuildOptions::default(),
    ) {
        Err(e @ Error::DataBlockCorrupt { block: 12345, .. }) => println!("   Detected: {e}"),
        Err(e) => return Err(format!("unexpected result: {e}")),
        Ok(()) => return Err("the corruption was not detected".into()),
    }
    println!("Done: the image, its tree and the signed root hash behave as dm-verity expects.");
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
        Cmd::FsverityDigest {
            file,
            hash_alg,
            block_size,
            salt,
        } => (|| {
            let alg = HashAlgorithm::from_name(hash_alg).map_err(|e| e.to_string())?;
            let salt =
                hex::decode(salt.as_deref().unwrap_or("")).map_err(|e| format!("--salt: {e}"))?;
            let f = open_read(file)?;
            let d = keel::verity::fsverity_digest(&f, alg, *block_size, &salt)
                .map_err(|e| e.to_string())?;
            println!(
                "{}:{} {}",
                alg.name(),
                hex::encode(&d.digest),
                file.display()
            );
            Ok(())
        })(),
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
        Cmd::Keygen { key, public } => cmd_keygen(key, public.as_deref()),
        Cmd::Sign {
            hash,
            root_hex,
            key,
            out,
            unchecked,
            opts,
        } => cmd_sign(hash, root_hex, key, out, *unchecked, opts),
        Cmd::VerifySignature {
            signed_root,
            keys,
            data_device,
            hash_device,
            hash_offset,
            no_superblock,
        } => {
            let device = data_device.as_deref().zip(hash_device.as_deref());
            return cmd_verify_signature(signed_root, keys, device, *hash_offset, *no_superblock);
        }
        Cmd::Demo { size_mib } => cmd_demo(*size_mib),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verity: {e}");
            ExitCode::from(1)
        }
    }
}

/// The hash device, its tree's parameters and geometry, and `root_hex` decoded, after
/// checking that the tree gives that root (unless `unchecked`; `verb` is what the user
/// asked to do with it, for the hint).
fn checked_root(
    hash: &Path,
    root_hex: &str,
    opts: &TreeOpts,
    unchecked: bool,
    verb: &str,
) -> Result<(File, VerityParams, TreeGeometry, Vec<u8>), String> {
    let hash_f = open_read(hash)?;
    let (params, geometry) = opts.existing(&hash_f, None)?;
    let root = hex::decode(root_hex).map_err(|e| format!("root hash: {e}"))?;
    if !unchecked {
        check_root(&params, &geometry, &hash_f, &root).map_err(|e| {
            format!(
                "{e} (the tree on {} does not give this root; --unchecked to {verb} it anyway)",
                hash.display()
            )
        })?;
    }
    Ok((hash_f, params, geometry, root))
}
