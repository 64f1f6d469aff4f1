//! Updates from a signed release index over HTTP(S).

use std::io::Read;
use std::time::Duration;

use keel_io::{Progress, ReadAt, WriteAt};
use keel_payload::Payload;

use super::install::{Installed, Known};
use super::Agent;
use crate::error::{Error, Refusal, Result};
use crate::record;

/// How long fetching a release index may take, unless the caller's options set a
/// deadline.
pub const INDEX_DEADLINE: Duration = Duration::from_secs(60);

/// Fetch the signed release index at `index_url` and verify it under `root` at the time
/// `now`: at most [`keel_release::MAX_ENVELOPE`] bytes, within `fetch`'s deadline or else
/// [`INDEX_DEADLINE`] (TUF's slow-retrieval attack: a server that drips the index would
/// otherwise hold the check, and its expiry, off for good); signed to the root's
/// threshold, its serial not below `last` (rollback), not expired. A clock before
/// [`crate::BUILD_TIME_FLOOR`] is refused ([`Error::ClockBehind`]).
pub fn fetch_index(
    index_url: &str,
    root: &keel_release::TrustedRoot,
    fetch: keel_fetch::FetchOptions<'_>,
    last: Option<u64>,
    now: u64,
) -> Result<keel_release::Index> {
    if now < crate::BUILD_TIME_FLOOR {
        return Err(Error::ClockBehind {
            now,
            floor: crate::BUILD_TIME_FLOOR,
        });
    }
    let fetch = match fetch.deadline {
        Some(_) => fetch,
        None => fetch.deadline(INDEX_DEADLINE),
    };
    let mut bytes = Vec::new();
    keel_fetch::HttpReader::new(index_url, fetch)?
        .take(keel_release::MAX_ENVELOPE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("fetching {index_url}"), e))?;
    Ok(root.verify_index(&bytes, last, now)?)
}

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
    /// delta turns out not to fit ([`Error::needs_full_payload`]), the release's block
    /// store when it has one and the system is one image ([`Agent::install_store`]: only
    /// the blocks the booted slot lacks are fetched), else the full payload.
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
        let steps = || -> Result<Option<Installed>> {
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
            let index = fetch_index(index_url, root, fetch, last, self.trusted_now()?)?;
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
                    keel_payload::format::image_digest(&self.region_in(0, booted)?, size)
                        .map_err(|e| Error::io("hashing the booted slot", e))?,
                ),
                None => None,
            };
            let machine =
                record::read_small_lossy(&self.root.join("etc/machine-id"))?.unwrap_or_default();
            let Some(choice) = index.choose(
                &self.system.compatible,
                &installed,
                digest.as_ref(),
                machine.trim(),
                self.system.allow_downgrade,
            ) else {
                return Ok(None);
            };
            // No delta for this image: the block store, where the release has one and
            // the system is one image, fetches only the blocks the booted slot lacks.
            let store = choice.store.as_ref().filter(|_| self.takes_store());
            if let (false, Some(st)) = (choice.delta, store) {
                return self
                    .install_store_artifact(index_url, st, &choice.version, fetch, progress)
                    .map(Some);
            }
            let source = source_size.zip(digest);
            match self.install_artifact(
                index_url,
                &choice.artifact,
                &choice.version,
                source,
                fetch,
                progress,
            ) {
                Err(e) if choice.delta && e.needs_full_payload() => {
                    let release = index
                        .releases
                        .iter()
                        .find(|r| {
                            r.version == choice.version && r.compatible == self.system.compatible
                        })
                        .ok_or(e)?;
                    match release.store.as_ref().filter(|_| self.takes_store()) {
                        Some(st) => self.install_store_artifact(
                            index_url,
                            st,
                            &choice.version,
                            fetch,
                            progress,
                        ),
                        None => self.install_artifact(
                            index_url,
                            &release.full,
                            &choice.version,
                            None,
                            fetch,
                            progress,
                        ),
                    }
                    .map(Some)
                }
                r => r.map(Some),
            }
        };
        let r = steps();
        // An index that could not be had, or a payload the index does not pin, is the last
        // error too (the install itself keeps its own outcome).
        if let Err(e) = &r {
            self.record_error(e);
        }
        r
    }

    /// Install one payload the index names, streamed once, front to back: its signed header
    /// and manifest are checked against the digest the index pins (they bind every data
    /// byte by its digest) before anything is written, and a resumed install moves forward
    /// past what the applier's record says was applied, with a range request. The
    /// applier's record is the only state a download keeps.
    pub(super) fn install_artifact(
        &self,
        index_url: &str,
        a: &keel_release::Artifact,
        version: &str,
        source: Option<(u64, [u8; 32])>,
        fetch: keel_fetch::FetchOptions<'_>,
        progress: Option<&dyn Progress>,
    ) -> Result<Installed> {
        let url = keel_release::resolve(index_url, &a.url);
        let pin = a
            .manifest_digest()
            .ok_or_else(|| Refusal::Unpinned { url: a.url.clone() })?;
        // Never more than the index says: a server's endless body is cut off there.
        let reader = keel_fetch::HttpReader::new(&url, fetch)?.expect_len(a.size);
        let meter = reader.meter();
        let mut installed = self.install_release(
            |now| {
                Ok(Payload::open_seekable_at(
                    reader,
                    &self.system.keyring,
                    now,
                )?)
            },
            progress,
            Known {
                release: Some(version),
                pin: Some((&a.url, a.size, pin)),
                source,
            },
        )?;
        installed.fetched = meter.stats().bytes;
        Ok(installed)
    }
}
