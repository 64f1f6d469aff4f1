//! keel-config: a versioned, strictly validated system description shared by image
//! builders and update agents: which slots exist, how the boot loader keeps its A/B state,
//! the dm-verity parameters and trusted keys, and the update policy.
//!
//! ```
//! let text = r#"
//! version = "1"
//! compatible = "acme-gateway-x86_64"
//!
//! [boot]
//! backend = "gpt-flatcar"
//!
//! [[slot]]
//! name = "usr.a"
//! class = "usr"
//! device = "PARTLABEL=USR-A"
//!
//! [[slot]]
//! name = "usr.b"
//! class = "usr"
//! device = "PARTLABEL=USR-B"
//! "#;
//! let loaded = keel_config::load_sources(&[("system.toml".into(), text.into())]);
//! for f in &loaded.findings {
//!     println!("{f}"); // system.toml:LINE:COL: warning: ...
//! }
//! let config = loaded.config.expect("no errors");
//! assert_eq!(config.update.tries, None); // the backend's default applies
//! assert_eq!(keel_config::effective_tries(&config), 1);
//! ```
//!
//! Strictness follows the anchors' good parts: unknown keys are errors (RAUC), every finding
//! carries its file, line, column and path and all are reported at once (Ignition), and
//! nothing broken passes silently (unlike cloud-init). Drop-ins are merged in lexical order
//! (zincati, systemd): tables merge key by key, `[[slot]]` entries by `name`, `[[file]]` entries by `class` and
//! `[[trust.key]]` entries by `id`, anything else is replaced; each finding points at the
//! file its setting came from. The same model reads and writes JSON (serde_json).

mod finding;
mod load;
mod model;
mod schema;
mod typed;
mod validate;

pub use finding::{Finding, Severity};
pub use load::{load_files, load_json, load_sources, read_source, Loaded, MAX_CONFIG_SIZE};
pub use model::{
    valid_class_name, AgentConfig, Backend, Boot, CheckConfig, Config, DeviceRef, DeviceRefError,
    FileConfig, HashTreeLocation, SlotConfig, Strategy, Trust, TrustedKey, Update, Verity,
    SCHEMA_MAJOR,
};
pub use typed::ValueError;
pub use validate::effective_tries;

/// The configuration as TOML.
pub fn to_toml(c: &Config) -> Result<String, toml::ser::Error> {
    toml::to_string(c)
}

/// The configuration as JSON, for machine exchange.
pub fn to_json(c: &Config) -> serde_json::Result<String> {
    serde_json::to_string_pretty(c)
}
