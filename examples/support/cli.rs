//! What every example needs as a command-line tool: output that goes quiet when its
//! reader has gone (`| head`, `| true`) while the work completes, and files it created
//! removed when it fails.
//! Included with `#[macro_use] #[path = "support/cli.rs"] mod cli;`.
#![allow(dead_code, unused_macros)]

use std::path::PathBuf;

/// Set once standard output's reader has gone.
pub(crate) static STDOUT_GONE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Standard output written so that a closed pipe (a reader that stopped early: "enough",
/// not an error) silences the rest of the output while the command finishes its work
/// (a command that makes files must not leave them half made because of `| head`); it
/// still ends with its own status. Another write error ends the program with status 1
/// and a message, instead of a panic.
pub(crate) fn stdout_failed(e: std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        STDOUT_GONE.store(true, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    eprintln!("error writing to standard output: {e}");
    std::process::exit(1);
}

/// `println!` that does not panic on a closed standard output (shadows std's).
macro_rules! println {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if !$crate::cli::STDOUT_GONE.load(std::sync::atomic::Ordering::Relaxed) {
            if let Err(e) = writeln!(std::io::stdout().lock(), $($t)*) {
                $crate::cli::stdout_failed(e)
            }
        }
    }};
}

/// `print!` likewise.
macro_rules! print {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if !$crate::cli::STDOUT_GONE.load(std::sync::atomic::Ordering::Relaxed) {
            let mut out = std::io::stdout().lock();
            if let Err(e) = write!(out, $($t)*).and_then(|()| out.flush()) {
                $crate::cli::stdout_failed(e)
            }
        }
    }};
}

/// Files this run created: removed when the guard is dropped without [`Created::keep`]
/// (the run failed), so a failed command leaves nothing behind. Files that existed before
/// are never listed, so never removed.
#[derive(Default)]
pub(crate) struct Created {
    paths: Vec<PathBuf>,
    /// Kept if this file exists when the run fails (a resume record that needs them).
    unless: Option<PathBuf>,
}

impl Created {
    /// A guard that keeps the files if `unless` exists at the end of a failed run.
    pub(crate) fn unless(path: Option<PathBuf>) -> Self {
        Created {
            paths: Vec::new(),
            unless: path,
        }
    }

    /// Remember `path` as created by this run.
    pub(crate) fn add(&mut self, path: impl Into<PathBuf>) {
        self.paths.push(path.into());
    }

    /// From now on a run that fails keeps what it created if `path` (its resume record)
    /// exists: the checks are done and the record, if any, is this run's.
    pub(crate) fn resume_record(&mut self, path: Option<PathBuf>) {
        self.unless = path;
    }

    /// Nothing was written yet: on failure remove what was created even if a resume record
    /// is there.
    pub(crate) fn no_resume_yet(&mut self) {
        self.unless = None;
    }

    /// The run succeeded: keep everything.
    pub(crate) fn keep(mut self) {
        self.paths.clear();
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.unless.as_ref().is_some_and(|p| p.exists()) {
            return;
        }
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Open `path` read-write, creating it if it is not there; a created file is added to
/// `created`.
pub(crate) fn open_or_create(
    path: &std::path::Path,
    mode: u32,
    created: &mut Created,
) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |create: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .mode(mode)
            .open(path)
    };
    // Only what has a size and keeps what is written: /dev/null, a FIFO or a terminal would
    // take every byte and fail at the end (or never).
    let device = |f: std::fs::File| match keel::io::ReadAt::size(&f) {
        Ok(_) => Ok(f),
        Err(e) => Err(format!("{}: {e}", path.display())),
    };
    match open(false) {
        Ok(f) => device(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // create_new does not follow a link: one that points nowhere says so.
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(format!(
                    "{}: a symbolic link to nothing; give the file itself",
                    path.display()
                ));
            }
            let f = open(true).map_err(|e| format!("{}: {e}", path.display()))?;
            created.add(path);
            Ok(f)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// A byte count as a person writes it: `4096`, `0x1000`, or with a binary suffix `K`, `M`,
/// `G`, `T` (also `KiB`, `MiB`...): `64M` is 64 MiB. For clap's `value_parser`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|e| format!("{s:?}: {e}"));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let shift = match suffix.trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        other => {
            return Err(format!(
                "{s:?}: unknown size suffix {other:?} (K, M, G or T, powers of 1024)"
            ))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a byte count such as 4096, 64M or 2G"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// [`parse_size`] for values that must fit 32 bits (block sizes).
pub(crate) fn parse_size_u32(s: &str) -> Result<u32, String> {
    u32::try_from(parse_size(s)?).map_err(|_| format!("{s:?}: too large"))
}

/// [`parse_size`] for in-memory sizes.
pub(crate) fn parse_size_usize(s: &str) -> Result<usize, String> {
    usize::try_from(parse_size(s)?).map_err(|_| format!("{s:?}: too large"))
}

/// A file of at most `max` bytes (a key, a document): a larger one, or an endless device
/// such as /dev/zero, is an error naming it, read no further than `max` + 1 bytes.
pub(crate) fn read_small(path: &std::path::Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let named = |e: std::io::Error| format!("{}: {e}", path.display());
    let f = std::fs::File::open(path).map_err(named)?;
    if f.metadata().map_err(named)?.is_dir() {
        return Err(format!("{}: a directory, not a file", path.display()));
    }
    let mut out = Vec::new();
    f.take(max + 1).read_to_end(&mut out).map_err(named)?;
    if out.len() as u64 > max {
        return Err(format!("{}: more than {max} bytes", path.display()));
    }
    Ok(out)
}

/// [`read_small`] as UTF-8 text.
pub(crate) fn read_small_text(path: &std::path::Path, max: u64) -> Result<String, String> {
    String::from_utf8(read_small(path, max)?)
        .map_err(|_| format!("{}: not UTF-8 text", path.display()))
}

/// A keyring of the public keys (PEM) in `paths`; an error names the file.
pub(crate) fn load_keyring(paths: &[PathBuf]) -> Result<keel::trust::Keyring, String> {
    let mut ring = keel::trust::Keyring::new();
    for p in paths {
        let pem = read_small_text(p, 64 << 10)?;
        let key =
            keel::trust::PublicKey::from_pem(&pem).map_err(|e| format!("{}: {e}", p.display()))?;
        ring.add(key).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(ring)
}

/// What an apply reads, writes and trusts, and the version it checks against (payload
/// apply, update fetch-apply).
#[derive(clap::Args)]
pub(crate) struct ApplyTo {
    /// The running image the delta reads from (not needed for a full payload).
    #[arg(long)]
    pub(crate) source: Option<PathBuf>,
    /// The slot or file to write the new image into.
    #[arg(long)]
    pub(crate) target: PathBuf,
    /// A trusted public key (PEM); repeat for several.
    #[arg(long = "pubkey", required = true)]
    pub(crate) pubkeys: Vec<PathBuf>,
    /// The installed version: an older payload is refused, and the same version unless
    /// --allow-reinstall. Required unless --no-version-check.
    #[arg(
        long,
        required_unless_present = "no_version_check",
        conflicts_with = "no_version_check"
    )]
    pub(crate) installed_version: Option<String>,
    /// Apply without comparing versions (a first install).
    #[arg(long)]
    pub(crate) no_version_check: bool,
    /// A bundle's image to apply (its name, as `payload inspect` lists them); the images
    /// before it are read past.
    #[arg(long = "bundle-image", value_name = "NAME")]
    pub(crate) image: Option<String>,
}

impl ApplyTo {
    /// The version check asked for.
    pub(crate) fn version(&self) -> keel::payload::VersionCheck<'_> {
        match &self.installed_version {
            Some(v) => keel::payload::VersionCheck::Installed(v),
            None => keel::payload::VersionCheck::Unchecked,
        }
    }

    /// Apply the payload (or the bundle image asked for) from `src` into `tgt`.
    pub(crate) fn apply<R: std::io::Read>(
        &self,
        mut p: keel::payload::Payload<R>,
        src: Option<&std::fs::File>,
        tgt: &mut std::fs::File,
        opts: &keel::payload::ApplyOptions<'_>,
    ) -> Result<keel::payload::Applied, String> {
        let Some(name) = &self.image else {
            return p.apply_file(src, tgt, opts).map_err(|e| e.to_string());
        };
        while p.next_image().is_some_and(|i| &i.name != name) {
            p.skip_next().map_err(|e| e.to_string())?;
        }
        if p.next_image().is_none() {
            let names: Vec<&str> = p.images().iter().map(|i| i.name.as_str()).collect();
            return Err(format!("no image {name:?} (the payload has {names:?})"));
        }
        p.apply_next_file(src, tgt, opts).map_err(|e| e.to_string())
    }

    /// The source image opened, if one was given.
    pub(crate) fn open_source(&self) -> Result<Option<std::fs::File>, String> {
        self.source
            .as_deref()
            .map(|p| std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display())))
            .transpose()
    }
}

/// No two of the files a run writes are one file, nor is any of them an input: compared by
/// device and inode (so through links and other spellings); each exists by now, except a
/// resume record not yet written, which is then none of the others.
pub(crate) fn all_distinct(
    outputs: &[(&str, &std::path::Path)],
    inputs: &[(&str, &std::path::Path)],
    allowed: &[(&str, &str)],
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    for (n, (what, path)) in outputs.iter().enumerate() {
        let Some(mine) = id(path) else { continue };
        for (other, other_path) in outputs[..n].iter().chain(inputs) {
            // Pairs the library refuses itself, by their own names.
            if allowed.contains(&(*what, *other)) {
                continue;
            }
            if id(other_path) == Some(mine) {
                return Err(format!(
                    "{what} {}: is the same file as {other} {}; each needs a file of its own",
                    path.display(),
                    other_path.display()
                ));
            }
        }
    }
    Ok(())
}

/// A regular file is emptied before it is written (a device keeps its size).
pub(crate) fn truncate(f: &std::fs::File, path: &std::path::Path) -> Result<(), String> {
    match f.metadata() {
        Ok(m) if m.is_file() => f.set_len(0),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| format!("{}: {e}", path.display()))
}
