//! A slot set's images: which class of the description each of a payload's images goes
//! into, and the images kept as files on a filesystem both slots share (the ESP), written
//! under a temporary name, synced, then put in place under the inactive slot's name.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use keel_bootflags::Slot;
use keel_io::{ReadAt, WriteAt};
use keel_payload::format::{BundleImage, ImageKind};
use keel_payload::{Applied, ApplyOptions, Payload};

use super::Agent;
use crate::error::{Error, Refusal, Result};

/// Where one of a payload's images goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dest {
    /// The inactive slot of this class (an index into `System::classes`).
    Class(usize),
    /// The inactive slot's file of this file class (an index into `System::files`).
    File(usize),
}

/// Where one image is written, resolved.
#[derive(Debug)]
pub(super) enum Target {
    /// The inactive slot of this class.
    Slot(usize),
    /// The inactive slot's file.
    File(FilePlace),
}

/// The files one file image involves, on the running system.
#[derive(Clone, Debug)]
pub(super) struct FilePlace {
    /// The inactive slot's file.
    pub(super) path: PathBuf,
    /// Where it is written before it replaces `path`.
    pub(super) temp: PathBuf,
    /// The running slot's file (a delta's source), if a slot is running.
    pub(super) booted: Option<PathBuf>,
}

/// Same file: the same inode, or the same name in the same directory however the path is
/// spelled (`..`, symlinked directories).
fn same_place(a: &Path, b: &Path) -> bool {
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        if (x.dev(), x.ino()) == (y.dev(), y.ino()) {
            return true;
        }
    }
    let dir = |p: &Path| p.parent().and_then(|d| std::fs::canonicalize(d).ok());
    match (dir(a), dir(b)) {
        (Some(x), Some(y)) => x == y && a.file_name() == b.file_name(),
        _ => false,
    }
}

/// The nearest directory of `p` that exists (the file's own may not yet).
fn existing_dir(p: &Path) -> PathBuf {
    let mut d = p.parent().unwrap_or(Path::new("/")).to_path_buf();
    while !d.is_dir() {
        match d.parent() {
            Some(up) => d = up.to_path_buf(),
            None => break,
        }
    }
    d
}

/// Bytes a file occupies (what removing it frees).
fn allocated(p: &Path) -> u64 {
    std::fs::symlink_metadata(p)
        .ok()
        .filter(|m| m.is_file())
        .map_or(0, |m| m.blocks().saturating_mul(512))
}

impl<'d, D> Agent<'d, D>
where
    D: ReadAt,
    &'d D: WriteAt,
{
    /// Where each of the payload's images goes: every image names a class of the
    /// description of its own kind, and every class has an image. A payload of one unnamed
    /// image (format 2) goes into the only slot class of a description without files.
    pub(super) fn plan(&self, images: &[BundleImage]) -> Result<Vec<Dest>> {
        let sys = &self.system;
        let mut names: Vec<String> = sys.classes.iter().map(|c| c.class.clone()).collect();
        names.extend(sys.files.iter().map(|f| f.class.clone()));
        let refuse = |missing: Vec<String>, unknown: Vec<String>| -> Error {
            Refusal::Images {
                payload: images.iter().map(|i| i.name.clone()).collect(),
                system: names.clone(),
                missing,
                unknown,
            }
            .into()
        };
        if let [only] = images {
            if only.name.is_empty() {
                return match names.len() {
                    1 if sys.files.is_empty() => Ok(vec![Dest::Class(0)]),
                    _ => Err(refuse(names.clone(), vec![String::new()])),
                };
            }
        }
        let mut plan = Vec::new();
        let mut unknown = Vec::new();
        for image in images {
            let class = sys.classes.iter().position(|c| c.class == image.name);
            let file = sys.files.iter().position(|f| f.class == image.name);
            let kind_error = |payload, system| Refusal::ImageKind {
                image: image.name.clone(),
                payload,
                system,
            };
            match (image.kind, class, file) {
                (ImageKind::Slot, Some(k), _) => plan.push(Dest::Class(k)),
                (ImageKind::File, _, Some(f)) => plan.push(Dest::File(f)),
                (ImageKind::Slot, None, Some(_)) => {
                    return Err(kind_error("partition", "file").into())
                }
                (ImageKind::File, Some(_), None) => return Err(kind_error("file", "slot").into()),
                _ => unknown.push(image.name.clone()),
            }
        }
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !images.iter().any(|i| &&i.name == n))
            .cloned()
            .collect();
        if !missing.is_empty() || !unknown.is_empty() {
            return Err(refuse(missing, unknown));
        }
        Ok(plan)
    }

    /// The files of file class `f` for an install into `target`, checked: the inactive
    /// slot's file (and its temporary name) is never the running slot's, however spelled.
    pub(super) fn file_place(
        &self,
        f: usize,
        target: Slot,
        booted: Option<Slot>,
    ) -> Result<FilePlace> {
        let spec = &self.system.files[f];
        let under = |slot: Slot| keel_bootflags::spec::under_root(&self.root, &spec.path_for(slot));
        let path = under(target);
        let mut temp = path.clone().into_os_string();
        temp.push(".keel-new");
        let temp = PathBuf::from(temp);
        let booted = booted.map(under);
        if let Some(b) = &booted {
            for p in [&path, &temp] {
                if same_place(p, b) {
                    return Err(Error::SameFile {
                        class: spec.class.clone(),
                        path: p.clone(),
                        booted: b.clone(),
                    });
                }
            }
        }
        Ok(FilePlace { path, temp, booted })
    }

    /// The files still to write fit on their filesystems, counting what the inactive
    /// slot's old files (and an earlier run's temporary files) free: checked before
    /// anything is written, with the numbers.
    pub(super) fn check_file_space(&self, target: Slot, files: &[(&FilePlace, u64)]) -> Result<()> {
        let mut by_fs: HashMap<u64, (PathBuf, u64, u64)> = HashMap::new();
        for (place, size) in files {
            let dir = existing_dir(&place.path);
            let dev = std::fs::metadata(&dir)
                .map_err(|e| Error::io(format!("inspecting {}", dir.display()), e))?
                .dev();
            let stat = nix::sys::statvfs::statvfs(&dir)
                .map_err(|e| Error::io(format!("free space of {}", dir.display()), e.into()))?;
            let block = stat.fragment_size().max(512);
            let entry = by_fs.entry(dev).or_insert_with(|| {
                (
                    dir.clone(),
                    0,
                    stat.blocks_available().saturating_mul(stat.fragment_size()),
                )
            });
            entry.1 = entry
                .1
                .saturating_add(size.div_ceil(block).saturating_mul(block));
            entry.2 = entry
                .2
                .saturating_add(allocated(&place.path))
                .saturating_add(allocated(&place.temp));
        }
        for (_, (dir, need, room)) in by_fs {
            if need > room {
                return Err(Refusal::FileSpace {
                    slot: target,
                    dir,
                    need,
                    room,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Apply the payload's next image into the inactive slot's file: the old file removed
    /// (the slot is already marked unbootable), the image written under the temporary name
    /// (resumable: the temporary file is the applier's target), cut to the image's size,
    /// synced, renamed into place and the directory synced. A cut leaves the temporary file
    /// (resumed or started over next time) and never touches the running slot's file.
    pub(super) fn install_file<R: Read>(
        &self,
        payload: &mut Payload<R>,
        place: &FilePlace,
        opts: &ApplyOptions<'_>,
    ) -> Result<Applied> {
        let io = |what: &str, p: &Path, e| Error::io(format!("{what} {}", p.display()), e);
        let dir = place.path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let source = match &place.booted {
            Some(b)
                if payload
                    .next_image()
                    .is_some_and(|i| i.manifest.source.is_some()) =>
            {
                Some(File::open(b).map_err(|e| io("opening the running slot's file", b, e))?)
            }
            _ => None,
        };
        let booted_id = place
            .booted
            .as_ref()
            .and_then(|b| std::fs::metadata(b).ok())
            .map(|m| (m.dev(), m.ino()));
        crate::record::remove(&place.path)?;
        let mut temp = open_temp(&place.temp, booted_id)?;
        let size = payload.next_image().map_or(0, |i| i.manifest.target.size);
        let applied = payload.apply_next_file(source.as_ref(), &mut temp, opts)?;
        // A temporary file from a larger image keeps its tail: the file is the image.
        temp.set_len(size)
            .map_err(|e| io("cutting", &place.temp, e))?;
        temp.sync_all().map_err(|e| io("syncing", &place.temp, e))?;
        drop(temp);
        std::fs::rename(&place.temp, &place.path).map_err(|e| io("renaming", &place.temp, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing", dir, e))?;
        Ok(applied)
    }
}

/// The temporary file, reused when it is a plain file of its own (an interrupted run's,
/// which the applier resumes into), else made anew: never a link through which the write
/// would reach another file.
fn open_temp(temp: &Path, booted: Option<(u64, u64)>) -> Result<File> {
    let io = |what: &str, e| Error::io(format!("{what} {}", temp.display()), e);
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(temp);
    match opened {
        Ok(f) => {
            let m = f.metadata().map_err(|e| io("inspecting", e))?;
            if m.is_file() && m.nlink() == 1 && Some((m.dev(), m.ino())) != booted {
                return Ok(f);
            }
            drop(f);
            crate::record::remove(temp)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // A symlink (ELOOP) or anything else in the way: removed, never followed.
        Err(_) => crate::record::remove(temp)?,
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(temp)
        .map_err(|e| io("creating", e))
}
