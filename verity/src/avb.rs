//! Android Verified Boot hashtrees: the dm-verity tree `avbtool add_hashtree_footer` puts
//! after the image, and its hashtree descriptor.
//!
//! The image is zero-padded to a whole block and that last block is hashed; the tree is a
//! format-1 tree without superblock, equal block sizes, placed right after the padded
//! image. The descriptor (libavb `AvbHashtreeDescriptor`, big-endian, 180 bytes, then the
//! partition name, salt and root digest, zero-padded to a multiple of 8):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | tag, 1 (hashtree) |
//! | 8 | 8 | bytes following |
//! | 16 | 4 | dm-verity version, 1 |
//! | 20 | 8 | image size (padded) |
//! | 28 | 8 | tree offset |
//! | 36 | 8 | tree size |
//! | 44 | 4 | data block size |
//! | 48 | 4 | hash block size |
//! | 52 | 4 | FEC roots |
//! | 56 | 8 | FEC offset |
//! | 64 | 8 | FEC size |
//! | 72 | 32 | hash algorithm, NUL padded |
//! | 104 | 4 | partition name length |
//! | 108 | 4 | salt length |
//! | 112 | 4 | root digest length |
//! | 116 | 4 | flags |
//! | 120 | 60 | reserved |

use crate::algorithm::HashAlgorithm;
use crate::error::{Error, Result};
use crate::io::{ReadAt, ZeroPadded};
use crate::params::VerityParams;
use crate::tree::HashTree;

/// Size of the fixed part of the descriptor.
pub const AVB_HASHTREE_DESCRIPTOR_SIZE: usize = 180;

/// An AVB hashtree for an image.
#[derive(Clone, Debug)]
pub struct AvbHashtree {
    /// The image size padded to a whole block: where the tree starts.
    pub image_size: u64,
    /// The tree, to be written at `image_size`.
    pub tree: Vec<u8>,
    /// The root digest.
    pub root_digest: Vec<u8>,
    /// The encoded hashtree descriptor.
    pub descriptor: Vec<u8>,
    /// The dm-verity parameters of the padded image.
    pub params: VerityParams,
}

/// Build the AVB hashtree and descriptor of `image` for partition `name`.
pub fn avb_hashtree<D: ReadAt + ?Sized>(
    image: &D,
    algorithm: HashAlgorithm,
    block_size: u32,
    salt: &[u8],
    name: &str,
) -> Result<AvbHashtree> {
    let size = image
        .size()
        .map_err(|e| Error::io("reading the image size", e))?;
    let bs = u64::from(block_size);
    let blocks = size.div_ceil(bs);
    if blocks == 0 {
        return Err(Error::TooSmall {
            what: "image",
            needed: 1,
            found: 0,
        });
    }
    let params = VerityParams::format1(algorithm, block_size, blocks, salt.to_vec())?;
    let padded = ZeroPadded {
        inner: image,
        size,
        padded: blocks * bs,
    };
    let tree = HashTree::build(&params, &padded)?;
    let image_size = blocks * bs;
    let root = tree.root_hash().to_vec();
    let mut d = vec![0u8; AVB_HASHTREE_DESCRIPTOR_SIZE];
    let put = |d: &mut Vec<u8>, at: usize, b: &[u8]| d[at..at + b.len()].copy_from_slice(b);
    put(&mut d, 0, &1u64.to_be_bytes());
    put(&mut d, 16, &1u32.to_be_bytes());
    put(&mut d, 20, &image_size.to_be_bytes());
    put(&mut d, 28, &image_size.to_be_bytes());
    put(&mut d, 36, &(tree.as_bytes().len() as u64).to_be_bytes());
    put(&mut d, 44, &block_size.to_be_bytes());
    put(&mut d, 48, &block_size.to_be_bytes());
    put(&mut d, 72, algorithm.name().as_bytes());
    put(&mut d, 104, &(name.len() as u32).to_be_bytes());
    put(&mut d, 108, &(salt.len() as u32).to_be_bytes());
    put(&mut d, 112, &(root.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(salt);
    d.extend_from_slice(&root);
    d.resize(d.len().div_ceil(8) * 8, 0);
    let following = (d.len() - 16) as u64;
    put(&mut d, 8, &following.to_be_bytes());
    Ok(AvbHashtree {
        image_size,
        tree: tree.as_bytes().to_vec(),
        root_digest: root,
        descriptor: d,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_layout_is_pinned() {
        let img = vec![7u8; 10_000];
        let a = avb_hashtree(&img, HashAlgorithm::Sha1, 4096, &[1, 2, 3], "system").unwrap();
        let d = &a.descriptor;
        let be64 = |at: usize| u64::from_be_bytes(d[at..at + 8].try_into().unwrap());
        let be32 = |at: usize| u32::from_be_bytes(d[at..at + 4].try_into().unwrap());
        assert_eq!(be64(0), 1);
        assert_eq!(be64(8) as usize, d.len() - 16);
        assert_eq!(d.len() % 8, 0);
        assert_eq!(be32(16), 1);
        assert_eq!((be64(20), be64(28)), (12288, 12288));
        assert_eq!(be64(36) as usize, a.tree.len());
        assert_eq!((be32(44), be32(48), be32(52)), (4096, 4096, 0));
        assert_eq!(&d[72..76], b"sha1");
        assert_eq!((be32(104), be32(108), be32(112), be32(116)), (6, 3, 20, 0));
        assert_eq!(&d[180..186], b"system");
        assert_eq!(&d[186..189], &[1, 2, 3]);
        assert_eq!(&d[189..209], &a.root_digest[..]);
    }
}
