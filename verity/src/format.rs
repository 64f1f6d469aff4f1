//! `veritysetup format` and reading an existing hash device's superblock.

use crate::error::{Error, Result};
use crate::fec::{fec_encode, FecGeometry};
use crate::geometry::TreeGeometry;
use crate::io::{ReadAt, WriteAt};
use crate::params::VerityParams;
use crate::stream::StreamTree;
use crate::superblock::{Superblock, SUPERBLOCK_SIZE};
use crate::tree::{BuildOptions, HashTree};

/// Where and how the tree is written on its hash device. The default writes the bare tree
/// at offset 0 with no superblock (`--no-superblock`): the same bytes every time, for a
/// tree whose parameters travel elsewhere (a signed root descriptor, a kernel table).
/// [`FormatOptions::veritysetup`] writes what `veritysetup format DATA HASH` writes: a
/// superblock with a random UUID, which `veritysetup verify DATA HASH ROOT` then reads.
///
/// ```
/// use keel_verity::{random_uuid, FormatOptions};
/// let opts = FormatOptions::default().superblock(random_uuid()?).hash_offset(1 << 20);
/// # Ok::<(), keel_verity::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct FormatOptions<'a> {
    /// `--hash-offset`: byte offset of the hash area (a multiple of 512). Use it to put
    /// the tree on the data device after the data, or at an offset in a hash file.
    pub hash_offset: u64,
    /// The superblock UUID; `None` (the default) writes no superblock
    /// (`--no-superblock`). Use [`crate::random_uuid`] for veritysetup's default.
    pub superblock: Option<[u8; 16]>,
    /// Threads and progress.
    pub build: BuildOptions<'a>,
}

impl<'a> FormatOptions<'a> {
    /// veritysetup's own defaults: a superblock with a random UUID at offset 0.
    pub fn veritysetup() -> Result<Self> {
        Ok(FormatOptions::default().superblock(crate::random_uuid()?))
    }

    /// Set [`FormatOptions::hash_offset`].
    pub fn hash_offset(mut self, offset: u64) -> Self {
        self.hash_offset = offset;
        self
    }

    /// Write a superblock with this UUID, or none ([`FormatOptions::superblock`]).
    pub fn superblock(mut self, uuid: impl Into<Option<[u8; 16]>>) -> Self {
        self.superblock = uuid.into();
        self
    }

    /// Set [`FormatOptions::build`].
    pub fn build(mut self, build: BuildOptions<'a>) -> Self {
        self.build = build;
        self
    }
}

/// The result of [`format()`].
#[derive(Clone, Debug)]
pub struct Formatted {
    /// The root hash.
    pub root_hash: Vec<u8>,
    /// Where the tree was written.
    pub geometry: TreeGeometry,
    /// The superblock written, if any.
    pub superblock: Option<Superblock>,
}

/// Build the tree of `data` and write it, with a superblock unless disabled, to `hash`:
/// the same bytes as `veritysetup format`. The hash device is synced before returning.
///
/// `data` and `hash` may be the same file (the tree after the data, at `hash_offset`);
/// the caller must then choose `hash_offset` past the data.
pub fn format<D, H>(
    params: &VerityParams,
    data: &D,
    hash: &mut H,
    opts: &FormatOptions<'_>,
) -> Result<Formatted>
where
    D: ReadAt + ?Sized,
    H: WriteAt + ?Sized,
{
    let tree = HashTree::build_with(params, data, &opts.build)?;
    write_tree(params, &tree, hash, opts)
}

/// [`format()`] and [`fec_encode`] with one read of the data: the tree and the parity are
/// computed from the same pass ([`StreamTree`]), then the tree, and the parity at the
/// place `fec_geometry` gives for the tree's layout, are written (and synced). The bytes
/// are those of `veritysetup format --fec-device`. Where the parity cannot be made in that
/// pass (a hash area larger than the tree, a parity past [`crate::STREAM_PARITY_BUDGET`]),
/// it is computed after the tree by [`fec_encode`], as before.
pub fn format_with_fec<D, H, F>(
    params: &VerityParams,
    data: &D,
    hash: &mut H,
    fec: &mut F,
    opts: &FormatOptions<'_>,
    fec_geometry: impl FnOnce(&TreeGeometry) -> Result<FecGeometry>,
) -> Result<(Formatted, FecGeometry)>
where
    D: ReadAt + ?Sized,
    H: ReadAt + WriteAt + ?Sized,
    F: WriteAt + Send + ?Sized,
{
    let geometry = TreeGeometry::new(params, opts.hash_offset, opts.superblock.is_some())?;
    // Before the tree's memory is asked for: a device far smaller than the parameters say
    // is that, not a tree too large for memory.
    crate::tree::check_data_size(params, data)?;
    let g = fec_geometry(&geometry)?;
    let stream = match StreamTree::new(params)?
        .threads(opts.build.threads)
        .parity(&g)
    {
        Ok(s) if s.has_parity() => s,
        // The parity is made after the tree, reading the data again.
        _ => {
            let formatted = format(params, data, hash, opts)?;
            fec_encode(&g, data, &*hash, fec, &opts.build)?;
            return Ok((formatted, g));
        }
    };
    let streamed = stream.finish(data, &opts.build)?;
    let Some(parity) = &streamed.parity else {
        let formatted = write_tree(params, &streamed.tree, hash, opts)?;
        fec_encode(&g, data, &*hash, fec, &opts.build)?;
        return Ok((formatted, g));
    };
    // The tree and the parity go to their devices side by side: each is laid out, written
    // and synced while the other is (a tenth of the whole job for 1 GiB, done one after
    // the other).
    let (formatted, written) = std::thread::scope(|scope| {
        let parity_job = scope.spawn(|| parity.write_to(fec));
        (
            write_tree(params, &streamed.tree, hash, opts),
            parity_job.join(),
        )
    });
    let formatted = formatted?;
    written.map_err(|_| {
        Error::io(
            "writing the parity",
            std::io::Error::other("a thread panicked"),
        )
    })??;
    Ok((formatted, g))
}

/// Write `tree` (built of `params`'s data, e.g. by a [`StreamTree`]) as `opts` lays it out,
/// with its superblock, and sync `hash`: what [`format()`] writes, without reading the data.
pub fn write_tree<H: WriteAt + ?Sized>(
    params: &VerityParams,
    tree: &HashTree,
    hash: &mut H,
    opts: &FormatOptions<'_>,
) -> Result<Formatted> {
    let geometry = TreeGeometry::new(params, opts.hash_offset, opts.superblock.is_some())?;
    let superblock = opts.superblock.map(|uuid| Superblock {
        params: params.clone(),
        uuid,
    });
    if let Some(sb) = &superblock {
        hash.write_all_at(&sb.to_bytes(), opts.hash_offset)
            .map_err(|e| Error::io("writing the superblock", e))?;
        // The rest of the superblock's hash block(s) is zero, as veritysetup leaves it.
        let gap_start = opts.hash_offset + SUPERBLOCK_SIZE as u64;
        let gap = usize::try_from(geometry.tree_offset() - gap_start)
            .map_err(|_| Error::param("hash offset", "gap too large"))?;
        if gap > 0 {
            hash.write_all_at(&vec![0u8; gap], gap_start)
                .map_err(|e| Error::io("zeroing the superblock block", e))?;
        }
    }
    hash.write_all_at(tree.as_bytes(), geometry.tree_offset())
        .map_err(|e| Error::io("writing the hash tree", e))?;
    hash.sync()
        .map_err(|e| Error::io("syncing the hash device", e))?;
    Ok(Formatted {
        root_hash: tree.root_hash().to_vec(),
        geometry,
        superblock,
    })
}

/// The parameters and layout of an existing tree, as veritysetup takes them: from the
/// superblock at `hash_offset` of the hash device, or, for a tree without superblock
/// (`--no-superblock`), from `explicit`, laid out from `hash_offset` on. What a superblock
/// says wins; options it covers are not consulted.
pub fn existing_tree<H: ReadAt + ?Sized>(
    hash: &H,
    hash_offset: u64,
    explicit: Option<VerityParams>,
) -> Result<(VerityParams, TreeGeometry)> {
    match explicit {
        Some(p) => {
            let g = TreeGeometry::new(&p, hash_offset, false)?;
            Ok((p, g))
        }
        None => {
            let (sb, g) = open_hash_device(hash, hash_offset)?;
            Ok((sb.params, g))
        }
    }
}

/// Read and check the superblock at `hash_offset` of a hash device, and lay out its tree:
/// what `veritysetup verify` and `dump` do before anything else.
pub fn open_hash_device<H: ReadAt + ?Sized>(
    hash: &H,
    hash_offset: u64,
) -> Result<(Superblock, TreeGeometry)> {
    let size = hash
        .size()
        .map_err(|e| Error::io("reading the hash device size", e))?;
    let end = hash_offset.saturating_add(SUPERBLOCK_SIZE as u64);
    if size < end {
        return Err(Error::TooSmall {
            what: "hash device (superblock)",
            needed: end,
            found: size,
        });
    }
    let mut b = [0u8; SUPERBLOCK_SIZE];
    hash.read_exact_at(&mut b, hash_offset)
        .map_err(|e| Error::io("reading the superblock", e))?;
    let sb = Superblock::parse(&b)?;
    let geometry = TreeGeometry::new(&sb.params, hash_offset, true)?;
    Ok((sb, geometry))
}
