//! The configuration file as written ([`Loaded::read`]): TOML with unknown keys refused, each
//! error with its line; everything that can be checked without the registry is checked here.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hvsock::dirs::Dirs;
use serde::Deserialize;

use super::declared::{Declared, PartitionEntry, PolicyEntry, ServiceEntry};
use super::{ConfigError, Limits, LogFormat};
use crate::registry::ROOT_NAME;

/// A duration as seconds (a number) or as text (`"10s"`, `"500ms"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Span {
    Secs(f64),
    Text(String),
}

impl Span {
    fn to_duration(&self) -> Result<Duration, String> {
        match self {
            Span::Secs(s) if s.is_finite() && *s > 0.0 && *s <= 3600.0 => {
                Ok(Duration::from_secs_f64(*s))
            }
            Span::Secs(s) => Err(format!("{s} is out of range (0 to 3600 seconds)")),
            Span::Text(t) => {
                let d = humantime::parse_duration(t)
                    .map_err(|e| format!("{t:?} is not a duration such as \"10s\": {e}"))?;
                if d.is_zero() || d > Duration::from_secs(3600) {
                    return Err(format!("{t:?} is out of range (0 to 1 hour)"));
                }
                Ok(d)
            }
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    handshake_timeout: Option<Span>,
    max_sessions_per_partition: Option<usize>,
    max_outstanding_connects: Option<usize>,
}

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    limits: LimitsFile,
    default_policy: Option<PolicyEntry>,
    #[serde(default, rename = "service")]
    services: Vec<ServiceEntry>,
    #[serde(default, rename = "partition")]
    partitions: Vec<PartitionEntry>,
}

/// A loaded configuration file.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its directories, if it names any.
    pub dirs: Option<Dirs>,
    /// Its log format, if given.
    pub log_format: Option<LogFormat>,
    /// The limits, the defaults where it is silent.
    pub limits: Limits,
    /// Its registry entries and default policy.
    pub declared: Declared,
}

impl Loaded {
    /// Reads and checks `path` (everything that can be checked without the registry).
    pub fn read(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Loaded::parse(path, &text)
    }

    /// Parses and checks `text`, read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let dirs = match (&file.dir, &file.state_dir, &file.run_dir) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(invalid(
                    "give either dir or state_dir and run_dir, not both".into(),
                ));
            }
            (Some(dir), None, None) => Some(Dirs::under(dir)),
            (None, Some(state), Some(run)) => Some(Dirs {
                state: state.clone(),
                run: run.clone(),
            }),
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(invalid(
                    "state_dir and run_dir go together: give both, or dir alone".into(),
                ));
            }
            (None, None, None) => None,
        };
        let mut limits = Limits::default();
        if let Some(t) = &file.limits.handshake_timeout {
            limits.handshake_timeout = t
                .to_duration()
                .map_err(|e| invalid(format!("limits.handshake_timeout: {e}")))?;
        }
        if let Some(n) = file.limits.max_sessions_per_partition {
            if n == 0 {
                return Err(invalid(
                    "limits.max_sessions_per_partition must be at least 1".into(),
                ));
            }
            limits.max_sessions_per_partition = n;
        }
        if let Some(n) = file.limits.max_outstanding_connects {
            if n == 0 {
                return Err(invalid(
                    "limits.max_outstanding_connects must be at least 1".into(),
                ));
            }
            limits.max_outstanding_connects = n;
        }
        let mut names = HashSet::new();
        for (i, s) in file.services.iter().enumerate() {
            let entry = format!("[[service]] #{} {:?}", i + 1, s.name);
            hvsock::addr::check_service_name(&s.name)
                .map_err(|e| invalid(format!("{entry}: {e}")))?;
            if s.id.is_some() && s.port.is_some() {
                return Err(invalid(format!(
                    "{entry}: give either id or port, not both (a port stands for its vsock template GUID)"
                )));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(format!(
                    "{entry}: a service by that name comes twice"
                )));
            }
        }
        let mut names = HashSet::new();
        for (i, p) in file.partitions.iter().enumerate() {
            let entry = format!("[[partition]] #{} {:?}", i + 1, p.name);
            hvsock::addr::check_partition_name(&p.name)
                .map_err(|e| invalid(format!("{entry}: {e}")))?;
            if p.name == ROOT_NAME {
                return Err(invalid(format!(
                    "{entry}: {ROOT_NAME:?} is the root partition, which always exists"
                )));
            }
            if p.id.is_some_and(|id| id.is_well_known()) {
                return Err(invalid(format!(
                    "{entry}: a well-known VmId cannot name a partition"
                )));
            }
            if !names.insert(p.name.as_str()) {
                return Err(invalid(format!(
                    "{entry}: a partition by that name comes twice"
                )));
            }
            if let Some(path) = &p.hybrid_vsock {
                if !path.is_absolute() {
                    return Err(invalid(format!(
                        "{entry}: hybrid_vsock {} must be an absolute path",
                        path.display()
                    )));
                }
            }
        }
        Ok(Loaded {
            dirs,
            log_format: file.log_format,
            limits,
            declared: Declared {
                source: path.to_owned(),
                services: file.services,
                partitions: file.partitions,
                default_policy: file.default_policy,
            },
        })
    }
}
