//! `verity-sign`: dm-verity root hashes signed with Ed25519 (keel-trust), bound to every
//! tree parameter, and checked against trusted keys and the devices.
//!
//! ```text
//! cargo run --release --example verity-sign -- keygen KEY.pem [--public PUB.pem]
//! cargo run --release --example verity-sign -- sign HASH ROOT_HEX --key KEY.pem --out ROOT.sig [--unchecked]
//! cargo run --release --example verity-sign -- verify-signature ROOT.sig --pubkey PUB.pem [--data-device DATA --hash-device HASH]
//! cargo run --release --example verity-sign -- demo      # the whole cycle in a temporary directory
//! ```
//!
//! `sign` checks ROOT_HEX against the tree on HASH (its top block) first; verify-signature
//! exits 0 when all is well, 1 on a bad signature (or any other error), 2 on corrupted
//! data or hash blocks.

#[macro_use]
#[path = "support/cli.rs"]
mod cli;
#[path = "support/verity.rs"]
mod verity;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel::verity::{
    format, open_hash_device, random_uuid, verify, BuildOptions, Error, FormatOptions, Keyring,
    PublicKey, ReadAt, RootDescriptor, SignRoot, SigningKey, VerifyRoot, VerityParams,
};
use verity::{checked_root, open_read, TreeOpts};

#[derive(Parser)]
#[command(
    name = "verity-sign",
    about = "Signed dm-verity root hashes: keys, signing, verification"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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

    // A block well inside the image, whatever its size.
    let blocks = sb.params.data_blocks();
    let block = if blocks > 12345 { 12345 } else { blocks / 2 };
    println!("5. Flipping one bit in data block {block} and verifying again");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data_path)
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    let at = block * 4096 + 100;
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
        Err(e @ Error::DataBlockCorrupt { block: b, .. }) if b == block => {
            println!("   Detected: {e}")
        }
        Err(e) => return Err(format!("unexpected result: {e}")),
        Ok(()) => return Err("the corruption was not detected".into()),
    }
    println!("Done: the image, its tree and the signed root hash behave as dm-verity expects.");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.cmd {
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
            eprintln!("verity-sign: {e}");
            ExitCode::from(1)
        }
    }
}
