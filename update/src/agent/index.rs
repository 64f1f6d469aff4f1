//! Updates from a signed release index over HTTP(S).

use std::io::{Read, Seek};
use std::time::Duration;

use keel_io::{Progress, ReadAt, WriteAt};
use keel_payload::Manifest;

use super::install::{Applied, Installed, Opts, PayloadInput, SeekInput};
use super::Agent;
use crate::error::{Error, Refusal, Result};
use crate::record;

/// How long fetching a release index may take, unless the caller's options set a
/// deadline.
pub const INDEX_DEADLINE: Duration = Duration::from_secs(60);

impl<'d, D> Agent<'d, D>
where
    D: ReadAt,
    &'d D: WriteAt,
{
    /// Check for an update and install it: fetch the release index at `index_url`,
    /// verify it under `root` (threshold, a serial above the last one this agent accepted,
    /// not expired; the serial is then kept in the state directory), choose the release
    /// for this system (the description's compatible string, the booted slot's version,
    /// this machine's rollout by `/etc/machine-id`), and install it streamed over HTTP(S):
    /// the delta from the booted image when the index has one for it, else, or when the
    /// delta turns out not to fit ([`Error::needs_full_payload`]), the full payload.
    /// The payload's signed manifest must name the version the index gives the release
    /// ([`Error::ReleaseMismatch`]): the index's signers choose, the payload's signer
    /// vouches for the bytes. The index is judged at [`Agent::trusted_now`], and its
    /// signed timestamp raises the clock floor.
    /// `Ok(None)`: nothing newer.
    pub fn install_from_index(
        &self,
        index_url: &str,
        root: &keel_release::TrustedRoot,
        fetch: keel_fetch::FetchOptions<'_>,
        progress: Option<&dyn Progress>,
    ) -> Result<Option<Installed>> {
        use keel_release::MAX_ENVELOPE;
        let mut bytes = Vec::new();
        // Metadata has a deadline of its own (TUF's slow-retrieval attack: a server that
        // drips the index would otherwise hold the check, and its expiry, off for good).
        let index_fetch = match fetch.deadline {
            Some(_) => fetch,
            None => fetch.deadline(INDEX_DEADLINE),
        };
        keel_fetch::HttpReader::new(index_url, index_fetch)?
            .take(MAX_ENVELOPE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("fetching {index_url}"), e))?;
        let serial_path = self.state_dir.join("index-serial");
        let last = record::read_small(&serial_path)?
            .map(|t| {
                t.trim().parse::<u64>().map_err(|_| {
                    Error::io(
                        format!("reading {}", serial_path.display()),
                        std::io::Error::other("not a serial"),
                    )
                })
            })
            .transpose()?;
        let index = root.verify_index(&bytes, last, self.trusted_now()?)?;
        record::replace(&serial_path, format!("{}\n", index.serial).as_bytes())?;
        // Never past the clock: an index stamped in the future (a publisher's wrong
        // clock, or a key holder's mischief) must not lock every later install out.
        if let Some(t) = index.timestamp {
            self.raise_time_floor(t.min(keel_trust::unix_now()))?;
        }

        let booted = self.booted_slot()?;
        let installed = self
            .installed_version(booted, true)?
            .ok_or(Refusal::NoReleaseChoice)?;
        // The booted image's digest, over the size a delta from this version starts from.
        let source_size = index
            .releases
            .iter()
            .flat_map(|r| &r.deltas)
            .find(|d| d.from_version == installed)
            .map(|d| d.source_size);
        let digest = match source_size {
            Some(size) => Some(
                keel_payload::format::image_digest(&self.region(booted)?, size)
                    .map_err(|e| Error::io("hashing the booted slot", e))?,
            ),
            None => None,
        };
        let machine = record::read_small(&self.root.join("etc/machine-id"))?.unwrap_or_default();
        let Some(choice) = index.choose(
            &self.system.compatible,
            &installed,
            digest.as_ref(),
            machine.trim(),
            self.system.allow_downgrade,
        ) else {
            return Ok(None);
        };
        match self.install_artifact(
            index_url,
            &choice.artifact,
            &choice.version,
            fetch,
            progress,
        ) {
            Err(e) if choice.delta && e.needs_full_payload() => {
                let full = index
                    .releases
                    .iter()
                    .find(|r| r.version == choice.version && r.compatible == self.system.compatible)
                    .map(|r| &r.full)
                    .ok_or(e)?;
                self.install_artifact(index_url, full, &choice.version, fetch, progress)
                    .map(Some)
            }
            r => r.map(Some),
        }
    }

    /// Install one payload the index names, streamed, checked against the index's size
    /// and SHA-256 before the slot is armed. The digest's running state is kept in the
    /// state directory, so a resumed install checks the whole file without fetching
    /// again what an earlier run applied.
    pub(super) fn install_artifact(
        &self,
        index_url: &str,
        a: &keel_release::Artifact,
        version: &str,
        fetch: keel_fetch::FetchOptions<'_>,
        progress: Option<&dyn Progress>,
    ) -> Result<Installed> {
        let url = keel_release::resolve(index_url, &a.url);
        let digest = a
            .digest()
            .ok_or_else(|| Refusal::BadDigest { url: a.url.clone() })?;
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| Error::io(format!("creating {}", self.state_dir.display()), e))?;
        let reader = keel_fetch::HttpReader::new(&url, fetch)?
            .expect(a.size, digest)
            .digest_state(&self.state_dir.join("download-digest"))?;

        /// A download checkpoints often: a restart fetches again what was applied since
        /// the last checkpoint, and the applier's default (64 MiB of target) is the
        /// whole of many payloads.
        struct Network<R> {
            input: SeekInput<R>,
            payload_size: u64,
            target_size: u64,
        }
        impl<R: Read + Seek> PayloadInput for Network<R> {
            fn manifest(&mut self, keyring: &keel_trust::Keyring, now: u64) -> Result<Manifest> {
                let m = self.input.manifest(keyring, now)?;
                self.target_size = m.target.size;
                Ok(m)
            }
            fn apply<T: ReadAt + WriteAt>(
                &mut self,
                src: Option<&T>,
                dst: &mut T,
                o: &Opts,
            ) -> Applied {
                // About a 32nd of the payload between checkpoints (4 to 16 MiB of it),
                // counted in target bytes as the applier counts: a delta that builds
                // many target bytes from few payload bytes checkpoints no more often in
                // payload bytes than a full one.
                let payload_bytes = (self.payload_size / 32).clamp(4 << 20, 16 << 20);
                let expansion = self.target_size / self.payload_size.max(1);
                let every = payload_bytes.saturating_mul(expansion.max(1));
                let mut o = *o;
                if o.checkpoint_bytes.is_none() {
                    o = o.checkpoint_bytes(every);
                }
                self.input.apply(src, dst, &o)
            }
            fn check(&mut self) -> Result<()> {
                self.input.check()
            }
        }

        self.install_release(
            Network {
                input: SeekInput {
                    r: reader,
                    check: |r| r.finish().map_err(Error::from),
                },
                payload_size: a.size,
                target_size: 0,
            },
            progress,
            Some(version),
        )
    }
}
