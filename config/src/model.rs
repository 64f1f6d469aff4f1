//! The system description.
//!
//! Every field below is listed with its TOML key, type, default and the tool whose setting
//! it follows. Unknown keys are errors (RAUC's `system.conf` rejects them too), and so is a
//! setting that belongs to another boot backend.

use serde::{Deserialize, Serialize};

/// The schema major version this crate reads.
pub const SCHEMA_MAJOR: u64 = 1;

/// The whole system description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// `version`, string, required: the schema version, `"MAJOR"` or `"MAJOR.MINOR"`; the
    /// major must be 1 (Ignition's `ignition.version`).
    pub version: String,
    /// `compatible`, string, required: the system's compatible string; an update for
    /// another string is refused (RAUC's `compatible`).
    pub compatible: String,
    /// `[boot]`, required: where the boot loader keeps its A/B state.
    pub boot: Boot,
    /// `[[slot]]`: the slots, at least one A/B pair (RAUC's `[slot.CLASS.N]`).
    #[serde(default, rename = "slot")]
    pub slots: Vec<SlotConfig>,
    /// `[[file]]`: images kept as a file per slot on a filesystem both slots share (the
    /// ESP: a kernel, an initramfs, a UKI), installed with the slots as one set.
    #[serde(default, rename = "file", skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileConfig>,
    /// `[verity]`, optional: dm-verity parameters of the slots' images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<Verity>,
    /// `[trust]`: keys that may sign updates, and the minimum version.
    #[serde(default)]
    pub trust: Trust,
    /// `[update]`: update policy.
    #[serde(default)]
    pub update: Update,
    /// `[agent]`, optional: keel-agent's loop (where updates come from, how the fleet
    /// takes turns, when and how the node reboots, what proves it healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentConfig>,
}

/// Boot-state backends: keel-bootflags' own list (the description's `backend` names
/// one), so the description, the agent and the boot-state crate share one enum.
pub use keel_bootflags::BackendKind as Backend;

/// `backend` read and written by its name.
mod backend_name {
    use super::Backend;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &Backend, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(b.name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Backend, D::Error> {
        let name = String::deserialize(d)?;
        Backend::from_name(&name).ok_or_else(|| {
            let names: Vec<&str> = Backend::ALL.iter().map(|b| b.name()).collect();
            serde::de::Error::custom(format!(
                "unknown backend {name:?}, expected one of {}",
                names.join(", ")
            ))
        })
    }
}

/// `[boot]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Boot {
    /// `backend`, required: `gpt-chromeos`, `gpt-flatcar`, `grubenv`, `uboot`, `fw-env`,
    /// `android-misc` or `systemd-boot`.
    #[serde(with = "backend_name")]
    pub backend: Backend,
    /// `disk`, string, gpt-* only, default: the disk holding the booted slot: the disk whose
    /// GPT holds the slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// `grubenv`, path, grubenv only, default `/boot/grub/grubenv` (RAUC's `grubenv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grubenv: Option<String>,
    /// `env-file`, path, uboot only, required for uboot: the environment file or device
    /// (a line of `fw_env.config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<String>,
    /// `env-size`, integer bytes, uboot only, default 0x4000 (`fw_env.config` SIZE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_size: Option<u64>,
    /// `redundant`, boolean, uboot only, default false: two copies, the second after the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundant: Option<bool>,
    /// `fw-env-config`, path, fw-env only, default `/etc/fw_env.config`: where U-Boot's
    /// environment copies are (libubootenv's and u-boot-tools' configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fw_env_config: Option<String>,
    /// `misc-device`, string, android-misc only, required for it: the misc partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misc_device: Option<String>,
    /// `entries-dir`, path, systemd-boot only, default `/boot/loader/entries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_dir: Option<String>,
    /// `attempts`, integer 1-15, default: the boot loader's (ChromeOS and Android 6, Flatcar
    /// and GRUB 1, U-Boot and systemd-boot 3); GRUB only allows 1 (RAUC's
    /// `boot-attempts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u8>,
}

impl Boot {
    /// keel-bootflags' specification of this backend, with the defaults filled in: what
    /// an agent opens (`keel_bootflags::spec::open`, or keel-partition for the GPT
    /// backends). `None` when a setting the backend requires is missing (validation
    /// reports it).
    pub fn spec(&self) -> Option<keel_bootflags::BackendSpec> {
        use keel_bootflags::{BackendSpec, PriorityPolicy};
        use std::path::PathBuf;
        let path =
            |v: &Option<String>, default: &str| PathBuf::from(v.as_deref().unwrap_or(default));
        Some(match self.backend {
            Backend::GptChromeos => BackendSpec::Gpt(PriorityPolicy::ChromeOs),
            Backend::GptFlatcar => BackendSpec::Gpt(PriorityPolicy::Flatcar),
            Backend::Grubenv => BackendSpec::GrubEnv(path(&self.grubenv, "/boot/grub/grubenv")),
            Backend::Uboot => BackendSpec::Uboot {
                path: PathBuf::from(self.env_file.as_deref()?),
                size: usize::try_from(self.env_size.unwrap_or(0x4000)).ok()?,
                redundant: self.redundant.unwrap_or(false),
            },
            Backend::FwEnv => BackendSpec::FwEnv(path(&self.fw_env_config, "/etc/fw_env.config")),
            Backend::AndroidMisc => {
                BackendSpec::AndroidMisc(PathBuf::from(self.misc_device.as_deref()?))
            }
            Backend::SystemdBoot => {
                BackendSpec::SystemdBoot(path(&self.entries_dir, "/boot/loader/entries"))
            }
            _ => return None,
        })
    }
}

/// `[[slot]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SlotConfig {
    /// `name`, string, required, unique: `rootfs.0`.
    pub name: String,
    /// `class`, string, required: slots of one class form an A/B pair (RAUC's slot class).
    pub class: String,
    /// `device`, string, required: a path (`/dev/sda3`), `PARTLABEL=USR-A` or
    /// `PARTUUID=...` (systemd-sysupdate's `MatchPattern` and fstab's forms).
    pub device: String,
    /// `bootname`, `A` to `D`, default: A for the first slot of the class, B for the
    /// second (RAUC's `bootname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootname: Option<String>,
    /// `partition-type`, `usr`, `root-x86-64`, `root-aarch64` or a GUID, optional: checked
    /// before writing (systemd-sysupdate's `PartitionType`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_type: Option<String>,
    /// `read-only`, boolean, default true: mounted read-only (RAUC's `readonly`).
    #[serde(default = "yes")]
    pub read_only: bool,
    /// `hash-device`, string in `device`'s forms: where this slot's dm-verity tree lives
    /// (systemd-repart's `usr-a-verity` partition); required on every slot with `[verity]
    /// hash-tree = "separate"`, refused otherwise. Per slot, because installing one slot
    /// must not overwrite the tree the running one is verified against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_device: Option<String>,
}

fn yes() -> bool {
    true
}

/// `[[file]]`: one image kept as a file per slot, under the slot's own name, on a
/// filesystem both slots share (Flatcar's `vmlinuz-a`/`vmlinuz-b` on the ESP, a UKI per
/// slot). Installing the inactive slot writes its file and never the running slot's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// `class`, string, required, unique among slot and file classes: the name of the
    /// bundle image installed into it (`kernel`, `initrd`, `uki`).
    pub class: String,
    /// `path`, absolute path with `{slot}` once, required: where the file is on the running
    /// system; `{slot}` is the slot's bootname in lower case (`/efi/keel/{slot}/vmlinuz`:
    /// `/efi/keel/a/vmlinuz` for slot A).
    pub path: String,
}

impl FileConfig {
    /// The file of the slot with bootname `letter` (`'A'`): the path with `{slot}` replaced
    /// by the letter in lower case.
    pub fn path_for(&self, letter: char) -> std::path::PathBuf {
        self.path
            .replace("{slot}", &letter.to_ascii_lowercase().to_string())
            .into()
    }
}

/// Whether `class` can name a bundle image (and so a slot or file class): 1 to 64 ASCII
/// letters, digits, `.`, `_` or `-` (keel-payload's rule for image names).
pub fn valid_class_name(class: &str) -> bool {
    (1..=64).contains(&class.len())
        && class
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// How the description names a partition (`device`, `hash-device`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeviceRef {
    /// `PARTLABEL=...`.
    PartLabel(String),
    /// `PARTUUID=...`.
    PartUuid(keel_partition::Guid),
    /// A device path (`/dev/sda3`), a partition of the boot disk.
    Path(std::path::PathBuf),
}

impl DeviceRef {
    /// `PARTLABEL=LABEL`, `PARTUUID=GUID` or an absolute path: the one rule the
    /// description's validation and the agent share.
    pub fn parse(s: &str) -> Result<DeviceRef, DeviceRefError> {
        if let Some(label) = s.strip_prefix("PARTLABEL=") {
            if label.is_empty() {
                return Err(DeviceRefError::EmptyLabel);
            }
            return Ok(DeviceRef::PartLabel(label.to_string()));
        }
        if let Some(uuid) = s.strip_prefix("PARTUUID=") {
            return uuid
                .parse()
                .map(DeviceRef::PartUuid)
                .map_err(|source| DeviceRefError::BadGuid { source });
        }
        if s.starts_with('/') {
            return Ok(DeviceRef::Path(s.into()));
        }
        Err(DeviceRefError::Unknown(s.to_string()))
    }
}

impl std::str::FromStr for DeviceRef {
    type Err = DeviceRefError;
    fn from_str(s: &str) -> Result<DeviceRef, DeviceRefError> {
        DeviceRef::parse(s)
    }
}

/// Why a text is not a [`DeviceRef`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceRefError {
    /// `PARTLABEL=` with nothing after it.
    #[error("PARTLABEL= needs a label")]
    EmptyLabel,
    /// `PARTUUID=` followed by something that is not a GUID.
    #[error("PARTUUID=GUID: {source}")]
    BadGuid {
        /// What keel-partition says of the GUID.
        #[source]
        source: keel_partition::Error,
    },
    /// Neither a path nor `PARTLABEL=`/`PARTUUID=`.
    #[error("{0:?}: expected a path, PARTLABEL=LABEL or PARTUUID=GUID")]
    Unknown(String),
}

/// Where the verity hash tree lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HashTreeLocation {
    /// On the slot, after the data (`--hash-offset`).
    AfterData,
    /// On a separate partition, each slot's own (`[[slot]] hash-device`).
    Separate,
}

/// `[verity]`, with veritysetup's names and defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Verity {
    /// `algorithm`: sha1, sha224, sha256, sha384 or sha512; default sha256 (`--hash`).
    #[serde(default = "sha256")]
    pub algorithm: String,
    /// `data-block-size`, power of two 512 to 524288, default 4096.
    #[serde(default = "four_k")]
    pub data_block_size: u32,
    /// `hash-block-size`, power of two 512 to 524288, default 4096.
    #[serde(default = "four_k")]
    pub hash_block_size: u32,
    /// `salt`, hex, at most 256 bytes; default: random per image (`--salt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// `format`, 0 (Chrome OS) or 1, default 1 (`--format`).
    #[serde(default = "one")]
    pub format: u8,
    /// `fec-roots`, 2 to 24, optional: Reed-Solomon parity (`--fec-roots`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fec_roots: Option<u8>,
    /// `hash-tree`: `after-data` (default) or `separate` (each slot's `hash-device`).
    #[serde(default = "after_data")]
    pub hash_tree: HashTreeLocation,
    /// `class`, a slot class: the class whose images carry a dm-verity tree and a signed
    /// root (ChromeOS's `root`, beside its `kernel`). Default: the description's only slot
    /// class; required when it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

fn sha256() -> String {
    "sha256".into()
}
fn four_k() -> u32 {
    4096
}
fn one() -> u8 {
    1
}
fn after_data() -> HashTreeLocation {
    HashTreeLocation::AfterData
}

/// `[trust]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Trust {
    /// `minimum-version`, dotted numbers, optional: updates below it are refused
    /// (update_engine's minimum version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_version: Option<String>,
    /// `[[trust.key]]`: the keys, several for rotation (RAUC's keyring).
    #[serde(default, rename = "key")]
    pub keys: Vec<TrustedKey>,
}

/// `[[trust.key]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrustedKey {
    /// `id`, string, required, unique.
    pub id: String,
    /// `ed25519`, 64 hex digits: the raw public key (keel-verity's key format).
    pub ed25519: String,
    /// `not-after`, `YYYY-MM-DD`, optional: the key is not trusted after this day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// `[update]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Update {
    /// `tries`, 1 to 15, default: `boot.attempts` or the backend's: boots a new slot gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries: Option<u8>,
    /// `protect-booted-slot`, boolean, default true: never write the running slot (RAUC
    /// refuses to write the booted slot too).
    #[serde(default = "yes")]
    pub protect_booted_slot: bool,
    /// `max-resumes`, integer, default 10: how often an interrupted apply resumes before
    /// starting over.
    #[serde(default = "ten")]
    pub max_resumes: u32,
    /// `allow-downgrade`, boolean, default false.
    #[serde(default)]
    pub allow_downgrade: bool,
}

fn ten() -> u32 {
    10
}

impl Default for Update {
    fn default() -> Self {
        Update {
            tries: None,
            protect_booted_slot: true,
            max_resumes: 10,
            allow_downgrade: false,
        }
    }
}

/// How nodes take turns to reboot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Reboot as soon as an update is installed (inside the windows).
    #[default]
    Immediate,
    /// Take a slot of the group's semaphore in etcd (airlock's keys), bound to a lease.
    Etcd,
    /// Ask a FleetLock server (Zincati's protocol) for the reboot slot.
    Fleetlock,
}

/// `[agent]`: keel-agent's settings, in zincati's and RAUC's terms where they have them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentConfig {
    /// `index`, `http://` or `https://` URL, required: the signed release index.
    pub index: String,
    /// `trust-root`, absolute path, required: the trusted root of the index's keys (an
    /// envelope as keel-release signs it).
    pub trust_root: String,
    /// `interval`, seconds, 1 to 604800, default 3600: between two checks for an update.
    #[serde(default = "hour")]
    pub interval: u64,
    /// `jitter`, seconds, at most `interval`, default 0: a random part added to each wait,
    /// so a fleet does not ask at one instant.
    #[serde(default)]
    pub jitter: u64,
    /// `strategy`: `immediate` (default), `etcd` or `fleetlock`.
    #[serde(default)]
    pub strategy: Strategy,
    /// `group`, default `default`: the fleet group this node rolls with.
    #[serde(default = "default_group")]
    pub group: String,
    /// `node-id`, default the machine id: this node's name in the fleet (the holder in
    /// the group's semaphore, the FleetLock id, the name in a pause). Usually set by a
    /// drop-in made at first boot (keel-agent's `keel.config-url=`), as cloud-config did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// `etcd`, URLs, etcd only, required for it: the cluster's endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd: Vec<String>,
    /// `etcd-ca`, `etcd-cert`, `etcd-key`, absolute paths, etcd only: TLS files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<String>,
    /// See `etcd-ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<String>,
    /// See `etcd-ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<String>,
    /// `slots`, 1 to 1000, etcd only, default 1: nodes of the group rebooting at once.
    #[serde(default = "one_u64")]
    pub slots: u64,
    /// `lease-ttl`, seconds, 10 to 86400, etcd only, default 900: the longest a reboot
    /// may take; a node that does not come back frees its slot after it.
    #[serde(default = "fifteen_minutes")]
    pub lease_ttl: u64,
    /// `fleetlock`, URL, fleetlock only, required for it: the FleetLock server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleetlock: Option<String>,
    /// `windows`, default none (always): when a reboot may start, as keel-fleet's
    /// `Windows` reads them (`"Mon-Fri 02:00-05:00"`, UTC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<String>,
    /// `reboot-command`, program and arguments, default `["systemctl", "reboot"]`.
    #[serde(default = "reboot_command")]
    pub reboot_command: Vec<String>,
    /// `max-rate`, bytes per second, default 0 (no cap): the download's bandwidth cap.
    #[serde(default)]
    pub max_rate: u64,
    /// `socket`, absolute path, default `/run/keel/agent.sock`: the local API.
    #[serde(default = "agent_socket")]
    pub socket: String,
    /// `[[agent.check]]`: what must hold after a boot for the new slot to be committed.
    #[serde(default, rename = "check", skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckConfig>,
}

/// `[[agent.check]]`: a command that must exit 0, or a systemd unit that must be active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CheckConfig {
    /// `name`, required: shown in reports and in the pause reason.
    pub name: String,
    /// `command`, program and arguments: must exit 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// `unit`: a systemd unit that must be active (`systemctl is-active`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `timeout`, seconds, 1 to 86400, default 60.
    #[serde(default = "sixty")]
    pub timeout: u64,
}

fn hour() -> u64 {
    3600
}
fn default_group() -> String {
    "default".into()
}
fn one_u64() -> u64 {
    1
}
fn fifteen_minutes() -> u64 {
    900
}
fn sixty() -> u64 {
    60
}
fn reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}
fn agent_socket() -> String {
    "/run/keel/agent.sock".into()
}
