//! Loop devices: real block devices over image files, for tests run as root.

use super::{run, run_ok, tool};
use std::path::{Path, PathBuf};

/// An attached loop device, detached when dropped.
#[derive(Debug)]
pub struct Loop {
    losetup: PathBuf,
    /// The device, `/dev/loopN`.
    pub dev: String,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = run(&self.losetup, &["-d", &self.dev]);
    }
}

/// Attach `img` with `sector_size`-byte logical sectors and partition scanning; `None`
/// (a visible skip) when not root.
pub fn attach(img: &Path, sector_size: u32) -> Option<Loop> {
    let running_as_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !running_as_root {
        eprintln!("SKIPPED: loop-device test needs root");
        return None;
    }
    let losetup = tool("losetup", "mount")?;
    let ss = sector_size.to_string();
    let img = img.to_str()?;
    let dev = run_ok(&losetup, &["-f", "--show", "-P", "--sector-size", &ss, img])
        .trim()
        .to_string();
    Some(Loop { losetup, dev })
}
