//! A slot set's images: which class of the description each of a payload's images goes
//! into, and the images kept as files on a filesystem both slots share (the ESP), written
//! under a temporary name, synced, then put in place under the inactive slot's name.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
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
    /// The inactive slot's file of file class `.0`.
    File(usize, FilePlace),
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

/// Where a file is: its directory (by identity where it exists, else by its normalised
/// path) and its name. Names are compared without regard to ASCII case, as FAT (the ESP)
/// compares them.
#[derive(Clone, Debug)]
struct Spot {
    dir: DirKey,
    name: std::ffi::OsString,
    /// The file's own identity, where it exists (a hard link elsewhere is the same file).
    id: Option<(u64, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum DirKey {
    Id(u64, u64),
    Path(PathBuf),
}

impl Spot {
    fn of(p: &Path) -> Spot {
        let parent = p.parent().unwrap_or(Path::new("/"));
        let dir = match std::fs::metadata(parent) {
            Ok(m) => DirKey::Id(m.dev(), m.ino()),
            Err(_) => DirKey::Path(parent.components().collect()),
        };
        Spot {
            dir,
            name: p.file_name().unwrap_or_default().to_os_string(),
            id: std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino())),
        }
    }

    fn same(&self, other: &Spot) -> bool {
        let named = self.dir == other.dir
            && self
                .name
                .as_encoded_bytes()
                .eq_ignore_ascii_case(other.name.as_encoded_bytes());
        named || (self.id.is_some() && self.id == other.id)
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

/// Bytes removing a file frees: none for a file with other links.
fn allocated(p: &Path) -> u64 {
    std::fs::symlink_metadata(p)
        .ok()
        .filter(|m| m.is_file() && m.nlink() == 1)
        .map_or(0, |m| m.blocks().saturating_mul(512))
}

/// The suffix of a file's temporary name.
const TEMP: &str = ".keel-new";

/// `path` with the temporary suffix.
fn temp_of(path: &Path) -> PathBuf {
    let mut t = path.as_os_str().to_os_string();
    t.push(TEMP);
    PathBuf::from(t)
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

    /// The files of file class `f` for an install into `target`, checked before anything
    /// is written: the inactive slot's file (and its temporary name) is none of the running
    /// slot's files, no other class's file, not the disk, a boot-state store or a record of
    /// the agent, however spelled (by directory identity and name, and by the file's own
    /// identity); what stands there is a file or nothing; a delta's source is there.
    pub(super) fn file_place(
        &self,
        f: usize,
        target: Slot,
        booted: Option<Slot>,
        delta: bool,
    ) -> Result<FilePlace> {
        let spec = &self.system.files[f];
        let under = |spec: &crate::system::FileSpec, slot: Slot| {
            keel_bootflags::spec::under_root(&self.root, &spec.path_for(slot))
        };
        let path = under(spec, target);
        let temp = temp_of(&path);
        let booted_path = booted.map(|b| under(spec, b));
        self.check_place(f, &path, &temp, target, booted)?;
        let io = |what: &str, p: &Path, e| Error::io(format!("{what} {}", p.display()), e);
        for p in [&path, &temp] {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => {
                    return Err(io(
                        "a directory stands at",
                        p,
                        std::io::Error::from(std::io::ErrorKind::IsADirectory),
                    ))
                }
                _ => {}
            }
            if p.file_name().map_or(0, |n| n.len()) > 255 {
                return Err(io(
                    "naming",
                    p,
                    std::io::Error::other("a file name longer than 255 bytes"),
                ));
            }
        }
        if let (true, Some(b)) = (delta, &booted_path) {
            File::open(b).map_err(|e| io("opening the running slot's file", b, e))?;
        }
        Ok(FilePlace {
            path,
            temp,
            booted: booted_path,
        })
    }

    /// Every place the inactive slot's file of class `f` (or its temporary name) must not
    /// be, compared with it.
    fn check_place(
        &self,
        f: usize,
        path: &Path,
        temp: &Path,
        target: Slot,
        booted: Option<Slot>,
    ) -> Result<()> {
        let under = |spec: &crate::system::FileSpec, slot: Slot| {
            keel_bootflags::spec::under_root(&self.root, &spec.path_for(slot))
        };
        let class = &self.system.files[f].class;
        let mut running: Vec<PathBuf> = Vec::new();
        let mut others: Vec<PathBuf> = Vec::new();
        for (g, spec) in self.system.files.iter().enumerate() {
            if let Some(b) = booted {
                running.push(under(spec, b));
                running.push(temp_of(&under(spec, b)));
            }
            if g != f {
                others.push(under(spec, target));
                others.push(temp_of(&under(spec, target)));
            }
        }
        let mut agents: Vec<PathBuf> = self
            .system
            .disk
            .iter()
            .chain(self.disk_path.iter())
            .flat_map(|p| [p.clone(), keel_bootflags::spec::under_root(&self.root, p)])
            .collect();
        agents.extend(self.store_writes()?.into_iter().map(|w| w.path));
        let state = std::fs::metadata(&self.state_dir)
            .ok()
            .map(|m| DirKey::Id(m.dev(), m.ino()));
        for p in [path, temp] {
            let here = Spot::of(p);
            if let Some(b) = running.iter().find(|b| here.same(&Spot::of(b))) {
                return Err(Error::SameFile {
                    class: class.clone(),
                    path: p.to_path_buf(),
                    booted: b.clone(),
                });
            }
            if let Some(o) = others.iter().find(|o| here.same(&Spot::of(o))) {
                return Err(Error::FileTaken {
                    class: class.clone(),
                    path: p.to_path_buf(),
                    other: o.clone(),
                });
            }
            let disk = self
                .disk
                .file_id()
                .is_some_and(|d| keel_io::FileId::of_path(p) == Some(d));
            if let Some(o) = agents
                .iter()
                .find(|o| here.same(&Spot::of(o)))
                .cloned()
                .or_else(|| disk.then(|| p.to_path_buf()))
                .or_else(|| {
                    (state.is_some() && state == Some(here.dir.clone()))
                        .then(|| self.state_dir.clone())
                })
            {
                return Err(Error::FileTaken {
                    class: class.clone(),
                    path: p.to_path_buf(),
                    other: o,
                });
            }
        }
        Ok(())
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

    /// Apply the payload's next image into the inactive slot's file: its directory opened
    /// once and checked again (what it is, not how it is spelled), then every step through
    /// that handle, so a directory swapped for a link meanwhile is never followed: the old
    /// file removed (the slot is already marked unbootable), the image written under the
    /// temporary name (resumable: the temporary file is the applier's target), cut to the
    /// image's size, synced, renamed into place and the directory synced. A cut leaves the
    /// temporary file (resumed or started over next time) and never touches the running
    /// slot's file.
    pub(super) fn install_file<R: Read>(
        &self,
        payload: &mut Payload<R>,
        f: usize,
        target: Slot,
        booted: Option<Slot>,
        place: &FilePlace,
        opts: &ApplyOptions<'_>,
    ) -> Result<Applied> {
        let io = |what: &str, p: &Path, e| Error::io(format!("{what} {}", p.display()), e);
        let dir_path = place.path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir_path).map_err(|e| io("creating", dir_path, e))?;
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY)
            .open(dir_path)
            .map_err(|e| io("opening", dir_path, e))?;
        // From here on every name is looked up in the directory opened above.
        let held = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let name = place.path.file_name().unwrap_or_default();
        let mut temp_name = name.to_os_string();
        temp_name.push(TEMP);
        let (path, temp) = (held.join(name), held.join(&temp_name));
        self.check_place(f, &path, &temp, target, booted)?;
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
        let booted_id = source
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing", &place.path, e))
            }
            _ => {}
        }
        let mut file = open_temp(&temp, booted_id).map_err(|e| io("creating", &place.temp, e))?;
        let size = payload.next_image().map_or(0, |i| i.manifest.target.size);
        let applied = payload.apply_next_file(source.as_ref(), &mut file, opts)?;
        // A temporary file from a larger image keeps its tail: the file is the image.
        file.set_len(size)
            .map_err(|e| io("cutting", &place.temp, e))?;
        file.sync_all().map_err(|e| io("syncing", &place.temp, e))?;
        drop(file);
        std::fs::rename(&temp, &path).map_err(|e| io("renaming", &place.temp, e))?;
        dir.sync_all().map_err(|e| io("syncing", dir_path, e))?;
        Ok(applied)
    }
}

/// The temporary file, reused when it is a plain file of its own (an interrupted run's,
/// which the applier resumes into), else made anew: never a link through which the write
/// would reach another file.
fn open_temp(temp: &Path, booted: Option<(u64, u64)>) -> std::io::Result<File> {
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(temp);
    match opened {
        Ok(f) => {
            let m = f.metadata()?;
            if m.is_file() && m.nlink() == 1 && Some((m.dev(), m.ino())) != booted {
                return Ok(f);
            }
            drop(f);
            std::fs::remove_file(temp)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // A symlink (ELOOP) or anything else in the way: removed, never followed.
        Err(_) => std::fs::remove_file(temp)?,
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(temp)
}
