//! The device-mapper table that activates a tree: what `veritysetup open` hands the kernel.
//!
//! ```text
//! 0 <sectors> verity <format> <data_dev> <hash_dev> <data_block_size> <hash_block_size>
//!   <data_blocks> <hash_start_block> <algorithm> <root_hex> <salt_hex or -> [<count> <options>...]
//! ```
//! (Linux `Documentation/admin-guide/device-mapper/verity.rst`.)

use crate::error::{Error, Result};
use crate::fec::FecGeometry;
use crate::geometry::TreeGeometry;
use crate::params::VerityParams;

/// Optional table arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableOptions {
    /// `ignore_zero_blocks`: blocks of zeros are not verified and read as zeros.
    pub ignore_zero_blocks: bool,
    /// `check_at_most_once`: each data block is verified only on its first read.
    pub check_at_most_once: bool,
    /// `restart_on_corruption` (else the default: I/O errors).
    pub restart_on_corruption: bool,
    /// `use_fec_from_device`: correct blocks that fail verification with this parity.
    pub fec: Option<FecTable>,
}

impl TableOptions {
    /// Set [`TableOptions::ignore_zero_blocks`].
    pub fn ignore_zero_blocks(mut self, on: bool) -> Self {
        self.ignore_zero_blocks = on;
        self
    }

    /// Set [`TableOptions::check_at_most_once`].
    pub fn check_at_most_once(mut self, on: bool) -> Self {
        self.check_at_most_once = on;
        self
    }

    /// Set [`TableOptions::restart_on_corruption`].
    pub fn restart_on_corruption(mut self, on: bool) -> Self {
        self.restart_on_corruption = on;
        self
    }

    /// Correct with this parity, or not ([`TableOptions::fec`]).
    pub fn fec(mut self, fec: impl Into<Option<FecTable>>) -> Self {
        self.fec = fec.into();
        self
    }
}

/// The FEC arguments of a table: the device holding the parity, as the kernel names it,
/// and the parity's geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FecTable {
    /// The FEC device (may be the hash device).
    pub device: String,
    /// Roots, covered blocks and parity start.
    pub geometry: FecGeometry,
}

/// The table line for `params` laid out as `geometry`, with `root`, on the named devices.
pub fn dm_table(
    params: &VerityParams,
    geometry: &TreeGeometry,
    root: &[u8],
    data_dev: &str,
    hash_dev: &str,
    opts: &TableOptions,
) -> Result<String> {
    if root.len() != params.algorithm().digest_size() {
        return Err(Error::param(
            "root hash",
            format!(
                "{} bytes, {} has {}",
                root.len(),
                params.algorithm(),
                params.algorithm().digest_size()
            ),
        ));
    }
    check_device("data device", data_dev)?;
    check_device("hash device", hash_dev)?;
    let sectors = params.data_size() / 512;
    let salt = if params.salt().is_empty() {
        "-".to_string()
    } else {
        hex::encode(params.salt())
    };
    let mut line = format!(
        "0 {sectors} verity {} {data_dev} {hash_dev} {} {} {} {} {} {} {salt}",
        params.hash_type().as_u32(),
        params.data_block_size(),
        params.hash_block_size(),
        params.data_blocks(),
        geometry.hash_start_block(),
        params.algorithm(),
        hex::encode(root),
    );
    let mut extra: Vec<String> = Vec::new();
    if opts.ignore_zero_blocks {
        extra.push("ignore_zero_blocks".into());
    }
    if opts.check_at_most_once {
        extra.push("check_at_most_once".into());
    }
    if opts.restart_on_corruption {
        extra.push("restart_on_corruption".into());
    }
    if let Some(fec) = &opts.fec {
        check_device("FEC device", &fec.device)?;
        let g = &fec.geometry;
        if g.block_size() != u64::from(params.data_block_size())
            || g.data_blocks() != params.data_blocks()
            || g.hash_area_offset() != geometry.tree_offset()
        {
            return Err(Error::param(
                "fec",
                "the FEC geometry was not made for this tree",
            ));
        }
        // Counted as eight arguments, as the kernel parses them.
        extra.extend([
            "use_fec_from_device".into(),
            fec.device.clone(),
            "fec_roots".into(),
            g.roots().to_string(),
            "fec_blocks".into(),
            g.covered_blocks().to_string(),
            "fec_start".into(),
            g.fec_start_block().to_string(),
        ]);
    }
    if !extra.is_empty() {
        line.push_str(&format!(" {} {}", extra.len(), extra.join(" ")));
    }
    Ok(line)
}

/// Characters that would end a field of the table, a device of `dm-mod.create`, or the
/// quoted kernel argument itself (letting the rest of a name become kernel arguments).
fn breaks_out(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, ',' | '"' | ';' | '\\')
}

fn check_device(what: &'static str, dev: &str) -> Result<()> {
    if dev.is_empty() || dev.contains(breaks_out) {
        return Err(Error::param(
            what,
            format!("{dev:?} is empty or holds a space, control character, comma, quote, semicolon or backslash"),
        ));
    }
    Ok(())
}

/// The kernel command-line form that creates the device at boot without an initramfs
/// (`CONFIG_DM_INIT`): `dm-mod.create="NAME,,,ro,TABLE"`.
pub fn dm_mod_create(name: &str, table: &str) -> Result<String> {
    if name.is_empty() || name.contains(breaks_out) {
        return Err(Error::param(
            "device name",
            format!("{name:?} is empty or holds a space, control character, comma, quote, semicolon or backslash"),
        ));
    }
    // The table's fields are separated by spaces; nothing else may end the argument.
    if table.contains(|c: char| c != ' ' && breaks_out(c) && c != ',') {
        return Err(Error::param(
            "table",
            format!("{table:?} holds a quote, semicolon, backslash or control character"),
        ));
    }
    Ok(format!("dm-mod.create=\"{name},,,ro,{table}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HashAlgorithm, HashType};

    #[test]
    fn table_line() {
        let p = VerityParams::new(
            HashType::Normal,
            HashAlgorithm::Sha256,
            4096,
            4096,
            256,
            vec![0xab, 0xcd],
        )
        .unwrap();
        let g = TreeGeometry::new(&p, 0, true).unwrap();
        let root = [0x11u8; 32];
        let t = dm_table(
            &p,
            &g,
            &root,
            "/dev/vda",
            "/dev/vdb",
            &TableOptions::default(),
        )
        .unwrap();
        assert_eq!(
            t,
            format!(
                "0 2048 verity 1 /dev/vda /dev/vdb 4096 4096 256 1 sha256 {} abcd",
                "11".repeat(32)
            )
        );
        let p0 = VerityParams::new(
            HashType::ChromeOs,
            HashAlgorithm::Sha1,
            4096,
            4096,
            256,
            vec![],
        )
        .unwrap();
        let g0 = TreeGeometry::new(&p0, 1 << 20, false).unwrap();
        let o = TableOptions {
            ignore_zero_blocks: true,
            check_at_most_once: true,
            ..Default::default()
        };
        let t = dm_table(&p0, &g0, &[0u8; 20], "/dev/vda", "/dev/vda", &o).unwrap();
        assert!(
            t.starts_with("0 2048 verity 0 /dev/vda /dev/vda 4096 4096 256 256 sha1 "),
            "{t}"
        );
        assert!(
            t.ends_with(" - 2 ignore_zero_blocks check_at_most_once"),
            "{t}"
        );
        assert_eq!(
            dm_mod_create("vroot", "0 8 verity").unwrap(),
            "dm-mod.create=\"vroot,,,ro,0 8 verity\""
        );
        assert!(dm_mod_create("a,b", "x").is_err());
        // Quotes, control characters and separators cannot escape the argument.
        for name in ["v\"init=/bin/sh", "v\ninit", "a;b", "v\\"] {
            assert!(dm_mod_create(name, "0 8 verity").is_err(), "{name:?}");
        }
        assert!(dm_mod_create("v", "0 8 verity\" init=/bin/sh").is_err());
        assert!(dm_mod_create("v", "0 8 verity\n").is_err());
        for dev in [
            "/dev/vda\"init=/bin/sh",
            "/dev/vda\t",
            "/dev/vda;x",
            "/dev/\u{7f}",
        ] {
            assert!(
                dm_table(&p, &g, &root, dev, "/dev/vdb", &o).is_err(),
                "{dev:?}"
            );
            assert!(
                dm_table(&p, &g, &root, "/dev/vda", dev, &o).is_err(),
                "{dev:?}"
            );
        }
        assert!(dm_table(&p, &g, &root[..20], "/dev/vda", "/dev/vdb", &o).is_err());
        assert!(dm_table(&p, &g, &root, "/dev/v da", "/dev/vdb", &o).is_err());
    }
}
