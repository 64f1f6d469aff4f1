//! What the verity examples share: the tree's and the parity's options with veritysetup's
//! names, and reading an existing tree (its root checked) from a hash device.

#![allow(dead_code)] // each example uses part of it

use std::fs::File;
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use keel::verity::{
    check_root, existing_tree, format_uuid, BuildOptions, FecGeometry, HashAlgorithm, HashType,
    Threads, TreeGeometry, VerityParams,
};

use crate::cli;

/// The tree's parameters, with veritysetup's names. Where HASH has a superblock (verify,
/// repair, table, sign without --no-superblock), the superblock's values are used and
/// these are ignored.
#[derive(Args)]
pub(crate) struct TreeOpts {
    /// Hash algorithm (a superblock's overrides it).
    #[arg(long = "hash", default_value = "sha256")]
    pub(crate) algorithm: String,
    /// Data block size, a power of two from 512 to 512K (a superblock's overrides it).
    #[arg(long, default_value = "4096", value_parser = cli::parse_size_u32)]
    pub(crate) data_block_size: u32,
    /// Hash block size, a power of two from 512 to 512K (a superblock's overrides it).
    #[arg(long, default_value = "4096", value_parser = cli::parse_size_u32)]
    pub(crate) hash_block_size: u32,
    /// Salt in hex, or - for none; format's default is 32 random bytes, the others need it
    /// with --no-superblock (a superblock's overrides it).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) salt: Option<String>,
    /// Hash format: 1 (normal) or 0 (Chrome OS) (a superblock's overrides it).
    #[arg(long, default_value_t = 1)]
    pub(crate) format: u32,
    /// Do not write or read a superblock.
    #[arg(long)]
    pub(crate) no_superblock: bool,
    /// Byte offset of the hash area on the hash device (size suffixes: 4K, 1M).
    #[arg(long, default_value = "0", value_parser = cli::parse_size)]
    pub(crate) hash_offset: u64,
    /// Number of data blocks (default: all whole blocks of DATA; a superblock's overrides
    /// it).
    #[arg(long)]
    pub(crate) data_blocks: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<std::num::NonZeroUsize>,
}

/// `--fec-roots`: what dm-verity's FEC allows, told at the command line (2..=24).
pub(crate) fn fec_roots() -> clap::builder::RangedI64ValueParser<u8> {
    clap::value_parser!(u8)
        .range(i64::from(keel::verity::FEC_MIN_ROOTS)..=i64::from(keel::verity::FEC_MAX_ROOTS))
}

#[derive(Args)]
pub(crate) struct FecOpts {
    /// Reed-Solomon parity file or device (may be HASH, with --fec-offset past the tree).
    #[arg(long)]
    pub(crate) fec_device: Option<PathBuf>,
    /// Parity bytes per 255-byte codeword, 2 to 24.
    #[arg(long, default_value_t = keel::verity::FEC_DEFAULT_ROOTS, value_parser = fec_roots())]
    pub(crate) fec_roots: u8,
    /// Byte offset of the parity on the FEC device (size suffixes: 4K, 1M).
    #[arg(long, default_value = "0", value_parser = cli::parse_size)]
    pub(crate) fec_offset: u64,
}

impl FecOpts {
    /// The parity geometry for a tree whose hash device is `hash` (veritysetup's rule: the
    /// hash area runs to the end of the hash device, or to the FEC offset when the parity is
    /// on the hash device).
    pub(crate) fn geometry(
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
    pub(crate) fn params(&self, data_size: u64) -> Result<VerityParams, String> {
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
    pub(crate) fn existing(
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

    pub(crate) fn build_options<'a>(
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

pub(crate) fn open_read(p: &Path) -> Result<File, String> {
    File::open(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// A file or device opened to repair in place.
pub(crate) fn open_rw(p: &Path) -> Result<File, String> {
    File::options()
        .read(true)
        .write(true)
        .open(p)
        .map_err(|e| format!("{}: {e}", p.display()))
}

pub(crate) fn progress_bar(total: u64) -> ProgressBar {
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

pub(crate) fn print_header(
    hash: &Path,
    uuid: Option<[u8; 16]>,
    p: &VerityParams,
    g: &TreeGeometry,
    fec: Option<&FecGeometry>,
) {
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
    if let Some(f) = fec {
        // As veritysetup prints them: the roots, and the parity's length in blocks.
        println!("FEC RS roots:   \t{}", f.roots());
        println!("FEC blocks:     \t{}", f.parity_size() / f.block_size());
    }
    let salt = if p.salt().is_empty() {
        "-".to_string()
    } else {
        hex::encode(p.salt())
    };
    println!("Salt:            \t{salt}");
}

/// The hash device, its tree's parameters and geometry, and `root_hex` decoded, after
/// checking that the tree gives that root (unless `unchecked`; `verb` is what the user
/// asked to do with it, for the hint).
pub(crate) fn checked_root(
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
