//! The configuration file: `hvsockd --config FILE` (TOML).
//!
//! ```toml
//! dir = "/srv/hvsock"            # or state_dir = …, run_dir = …  (default: as without --dir)
//! log_format = "json"            # text (default) or json
//!
//! [limits]
//! handshake_timeout = "10s"      # or a number of seconds
//! max_sessions_per_partition = 1024
//! max_outstanding_connects = 256
//!
//! [default_policy]               # for services that have no policy of their own
//! connect = ["host", "web"]      # partitions by name or id; absent: any
//! bind = ["host"]
//! wildcard_bind = true
//!
//! [[partition]]                  # ensured at start, parents before children
//! name = "web"
//! id = "c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11"   # optional
//! parent = "host"                # optional, by name or id
//!
//! [[service]]
//! name = "echo"
//! port = 2761                    # or id = "GUID"; neither: a random one the first time
//! enabled = true                 # optional; absent: new ones enabled, old ones as they are
//! policy = { connect = ["web"] } # optional; absent: as it is
//! ```
//!
//! Command-line flags override the file. Unknown keys are errors, with their line. The
//! `[[service]]` and `[[partition]]` entries are *ensured* at every start: what is missing is
//! added, the `enabled` and `policy` an entry states are set, and nothing else is touched;
//! the same file twice changes nothing. An entry that clashes with the registry (a name held
//! by another id, an id under another name, another parent) stops hvsockd with a message
//! naming the entry. Entries match registry entries by id when they give one, else by name.
//!
//! # Modules
//!
//! - this module: [`Config`] (how hvsockd runs), its [`Limits`], and [`Config::resolve`], the
//!   merge of the file and the command line (flags win);
//! - [`mod@file`]: the TOML file as written and its checks ([`file::Loaded`]);
//! - [`declared`]: the services and partitions it declares, ensured in the registry at start;
//! - [`mod@check`]: `hvsockd --check`'s report.
//!
//! [`Declared::apply`] does it in one registry transaction (an import in merge mode, see
//! [`crate::registry::Registry::import`]); [`Declared::plan`] says what it would do, for
//! `hvsockd --check`.

pub mod check;
pub mod declared;
pub mod file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hvsock::dirs::Dirs;
use serde::Deserialize;

use crate::registry::RegistryError;

pub use check::check;
pub use declared::{Declared, PartitionEntry, PolicyEntry, ServiceEntry};
pub use file::Loaded;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has keys or values hvsockd does not know.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with the line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        message: String,
    },
    /// An entry clashes with the registry.
    #[error("config file {path}: {entry}: {message}")]
    Conflict {
        /// The file.
        path: PathBuf,
        /// The entry (`[[service]] "echo"`).
        entry: String,
        /// The clash.
        message: String,
    },
    /// Applying the entries failed.
    #[error("config file {path}: applying its services and partitions: {source}")]
    Registry {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: RegistryError,
    },
}

/// `text` or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Its name in the file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Limits that keep one client from hurting the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a new client may take to send its first frame.
    pub handshake_timeout: Duration,
    /// Most concurrent client sessions per partition.
    pub max_sessions_per_partition: usize,
    /// Most connects one control connection may have waiting for a listener's backlog.
    pub max_outstanding_connects: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_sessions_per_partition: 1024,
            max_outstanding_connects: 256,
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the registry and sockets live.
    pub dirs: Dirs,
    /// Per-client limits.
    pub limits: Limits,
    /// Services, partitions and the default policy that the configuration file declares,
    /// ensured at start.
    pub declared: Declared,
    /// Also serve the admin API over TCP on this loopback address (for tests and tools that
    /// speak HTTP over TCP only; off by default).
    pub admin_tcp: Option<SocketAddr>,
    /// The group (a name or a numeric gid) that owns `host.sock`, so that its members may
    /// connect as the root partition (mode 0660). `None`: hvsockd's own group. `admin.sock`
    /// stays owner-only either way. Not applied to a socket-activated `host.sock`, whose
    /// owner is the socket unit's business (`SocketGroup=`).
    pub socket_group: Option<String>,
    /// How hvsockd logs.
    pub log_format: LogFormat,
}

/// What the command line says, each `None` where it is silent.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--dir DIR`.
    pub dir: Option<PathBuf>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--handshake-timeout`.
    pub handshake_timeout: Option<Duration>,
    /// `--admin-tcp`.
    pub admin_tcp: Option<SocketAddr>,
    /// `--socket-group`.
    pub socket_group: Option<String>,
}

impl Config {
    /// Defaults under `dirs`.
    pub fn new(dirs: Dirs) -> Config {
        Config {
            dirs,
            limits: Limits::default(),
            declared: Declared::default(),
            admin_tcp: None,
            socket_group: None,
            log_format: LogFormat::Text,
        }
    }

    /// The configuration from the file `overrides.config` (if any) and the command line,
    /// flags first; the directories default as without `--dir`.
    pub fn resolve(overrides: &Overrides) -> Result<Config, String> {
        let loaded = match &overrides.config {
            Some(path) => Some(Loaded::read(path).map_err(|e| e.to_string())?),
            None => None,
        };
        let dirs = match (&overrides.dir, loaded.as_ref().and_then(|l| l.dirs.clone())) {
            (Some(dir), _) => Dirs::under(dir),
            (None, Some(dirs)) => dirs,
            (None, None) => Dirs::resolve(None).map_err(|e| e.to_string())?,
        };
        let mut config = Config::new(dirs);
        if let Some(loaded) = loaded {
            config.limits = loaded.limits;
            config.declared = loaded.declared;
            if let Some(f) = loaded.log_format {
                config.log_format = f;
            }
        }
        if let Some(t) = overrides.handshake_timeout {
            config.limits.handshake_timeout = t;
        }
        if let Some(f) = overrides.log_format {
            config.log_format = f;
        }
        config.admin_tcp = overrides.admin_tcp;
        config.socket_group = overrides.socket_group.clone();
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
