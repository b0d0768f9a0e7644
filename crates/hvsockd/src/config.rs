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
//! [`Declared::apply`] does it in one registry transaction (an import in merge mode, see
//! [`crate::registry::Registry::import`]); [`Declared::plan`] says what it would do, for
//! `hvsockd --check`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hvsock::dirs::Dirs;
use hvsock::{Guid, ServiceId, VmId};
use serde::Deserialize;

use crate::registry::{
    Export, ExportedPartition, ExportedService, ImportMode, ImportReport, PartitionKind, ROOT_NAME,
    Registry, RegistryError,
};
use crate::router::Policy;
use crate::server::Limits;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

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

/// A policy as written: partitions by name or id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    /// Partitions that may connect; absent: any.
    pub connect: Option<Vec<String>>,
    /// Partitions that may bind; absent: any.
    pub bind: Option<Vec<String>>,
    /// Whether wildcard binds are allowed; absent: yes.
    pub wildcard_bind: Option<bool>,
}

/// A `[[service]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// The friendly name.
    pub name: String,
    /// The GUID.
    pub id: Option<ServiceId>,
    /// A vsock port (its template GUID).
    pub port: Option<u32>,
    /// Whether it is enabled; absent: new services are, existing ones stay as they are.
    pub enabled: Option<bool>,
    /// Its own policy; absent: as it is.
    pub policy: Option<PolicyEntry>,
}

/// A `[[partition]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionEntry {
    /// Its name.
    pub name: String,
    /// Its VmId.
    pub id: Option<VmId>,
    /// Its parent by name or id; absent: the root.
    pub parent: Option<String>,
    /// For a VM: its VMM's hybrid-vsock socket.
    pub hybrid_vsock: Option<PathBuf>,
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

/// The registry entries and default policy a configuration declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// The file they come from (for messages).
    pub source: PathBuf,
    /// `[[service]]`.
    pub services: Vec<ServiceEntry>,
    /// `[[partition]]`.
    pub partitions: Vec<PartitionEntry>,
    /// `[default_policy]`.
    pub default_policy: Option<PolicyEntry>,
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

impl Declared {
    /// Whether the file declares nothing for the registry.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.partitions.is_empty() && self.default_policy.is_none()
    }

    fn conflict(&self, entry: String, message: String) -> ConfigError {
        ConfigError::Conflict {
            path: self.source.clone(),
            entry,
            message,
        }
    }

    fn registry_error(&self, source: RegistryError) -> ConfigError {
        ConfigError::Registry {
            path: self.source.clone(),
            source,
        }
    }

    /// The registry document that holds what `registry` holds plus what this declares, and
    /// the default policy; or the first clash, naming its entry.
    fn resolve(&self, registry: &Registry) -> Result<Export, ConfigError> {
        let mut doc = registry.export().map_err(|e| self.registry_error(e))?;
        let root = doc.root;
        for (i, entry) in self.partitions.iter().enumerate() {
            let label = format!("[[partition]] #{} {:?}", i + 1, entry.name);
            let parent = match &entry.parent {
                None => root,
                Some(key) => lookup_partition(&doc, key).ok_or_else(|| {
                    self.conflict(
                        label.clone(),
                        format!(
                            "its parent {key:?} is neither in the registry nor declared before it"
                        ),
                    )
                })?,
            };
            let kind = if entry.hybrid_vsock.is_some() {
                PartitionKind::Vm
            } else {
                PartitionKind::Sandbox
            };
            let by_name = doc.partitions.iter().position(|p| p.name == entry.name);
            let by_id = entry
                .id
                .and_then(|id| doc.partitions.iter().position(|p| p.id == id));
            if entry.id == Some(root) {
                return Err(self.conflict(label, format!("{root} is the root partition's id")));
            }
            let index = match (by_id, by_name) {
                (Some(i), _) if doc.partitions[i].name != entry.name => {
                    return Err(self.conflict(
                        label,
                        format!(
                            "the id {} is registered as partition {:?}",
                            doc.partitions[i].id, doc.partitions[i].name
                        ),
                    ));
                }
                (None, Some(i)) if entry.id.is_some() => {
                    return Err(self.conflict(
                        label,
                        format!(
                            "the name is registered with the id {}, the file says {}",
                            doc.partitions[i].id,
                            entry.id.unwrap_or_default()
                        ),
                    ));
                }
                (Some(i), _) | (None, Some(i)) => Some(i),
                (None, None) => None,
            };
            match index {
                Some(i) => {
                    let old = &doc.partitions[i];
                    if old.parent != parent {
                        return Err(self.conflict(
                            label,
                            format!(
                                "it is registered under {}, the file puts it under {}",
                                partition_name(&doc, old.parent),
                                partition_name(&doc, parent)
                            ),
                        ));
                    }
                    if old.kind != kind || old.hybrid_vsock != entry.hybrid_vsock {
                        return Err(self.conflict(
                            label,
                            format!(
                                "it is registered as a {}{}, the file says a {}{}",
                                old.kind.as_str(),
                                attached(old.hybrid_vsock.as_deref()),
                                kind.as_str(),
                                attached(entry.hybrid_vsock.as_deref())
                            ),
                        ));
                    }
                }
                None => doc.partitions.push(ExportedPartition {
                    id: entry.id.unwrap_or_else(|| VmId(Guid::new_random())),
                    name: entry.name.clone(),
                    parent,
                    kind,
                    hybrid_vsock: entry.hybrid_vsock.clone(),
                    created_at: None,
                }),
            }
        }
        for (i, entry) in self.services.iter().enumerate() {
            let label = format!("[[service]] #{} {:?}", i + 1, entry.name);
            let id = entry.id.or(entry.port.map(ServiceId::from_vsock_port));
            let by_name = doc.services.iter().position(|s| s.name == entry.name);
            let by_id = id.and_then(|id| doc.services.iter().position(|s| s.id == id));
            let index = match (by_id, by_name) {
                (Some(i), _) if doc.services[i].name != entry.name => {
                    return Err(self.conflict(
                        label,
                        format!(
                            "the id {} is registered as service {:?}",
                            doc.services[i].id, doc.services[i].name
                        ),
                    ));
                }
                (None, Some(i)) if id.is_some() => {
                    return Err(self.conflict(
                        label,
                        format!(
                            "the name is registered with the id {}, the file says {}",
                            doc.services[i].id,
                            id.unwrap_or_default()
                        ),
                    ));
                }
                (Some(i), _) | (None, Some(i)) => Some(i),
                (None, None) => None,
            };
            let policy = entry
                .policy
                .as_ref()
                .map(|p| {
                    resolve_policy(&doc, p).map_err(|key| {
                        self.conflict(
                            label.clone(),
                            format!("its policy names partition {key:?}, which does not exist"),
                        )
                    })
                })
                .transpose()?;
            match index {
                Some(i) => {
                    let old = &mut doc.services[i];
                    if let Some(enabled) = entry.enabled {
                        old.enabled = enabled;
                    }
                    if policy.is_some() {
                        old.policy = policy;
                    }
                }
                None => doc.services.push(ExportedService {
                    id: id.unwrap_or_else(ServiceId::new_random),
                    name: entry.name.clone(),
                    enabled: entry.enabled.unwrap_or(true),
                    policy,
                    created_at: None,
                }),
            }
        }
        Ok(doc)
    }

    /// The default policy, its partitions resolved against `registry`.
    fn default_policy(&self, registry: &Registry) -> Result<Policy, ConfigError> {
        let Some(entry) = &self.default_policy else {
            return Ok(Policy::default());
        };
        let doc = registry.export().map_err(|e| self.registry_error(e))?;
        resolve_policy(&doc, entry).map_err(|key| {
            self.conflict(
                "[default_policy]".into(),
                format!("it names partition {key:?}, which does not exist"),
            )
        })
    }

    /// Ensures the declared entries in `registry` (one transaction) and returns what changed
    /// and the default policy.
    pub fn apply(&self, registry: &mut Registry) -> Result<(ImportReport, Policy), ConfigError> {
        let doc = self.resolve(registry)?;
        let report = registry
            .import(&doc, ImportMode::Merge, false)
            .map_err(|e| self.registry_error(e))?;
        let policy = self.default_policy(registry)?;
        Ok((report, policy))
    }

    /// What [`Declared::apply`] would do to `registry`, changing nothing. The default policy
    /// is resolved against the registry as it would be.
    pub fn plan(&self, registry: &Registry) -> Result<(ImportReport, Policy), ConfigError> {
        self.plan_with_doc(registry)
            .map(|(report, policy, _)| (report, policy))
    }

    fn plan_with_doc(
        &self,
        registry: &Registry,
    ) -> Result<(ImportReport, Policy, Export), ConfigError> {
        let doc = self.resolve(registry)?;
        let report = registry
            .import_dry_run(&doc, ImportMode::Merge)
            .map_err(|e| self.registry_error(e))?;
        let policy = match &self.default_policy {
            None => Policy::default(),
            Some(entry) => resolve_policy(&doc, entry).map_err(|key| {
                self.conflict(
                    "[default_policy]".into(),
                    format!("it names partition {key:?}, which does not exist"),
                )
            })?,
        };
        Ok((report, policy, doc))
    }
}

fn attached(path: Option<&Path>) -> String {
    path.map(|p| format!(" attached at {}", p.display()))
        .unwrap_or_default()
}

/// A partition of `doc` by name or id (`host` and the root's id are the root).
fn lookup_partition(doc: &Export, key: &str) -> Option<VmId> {
    if key == ROOT_NAME {
        return Some(doc.root);
    }
    if let Ok(id) = VmId::parse(key) {
        return (id == doc.root || doc.partitions.iter().any(|p| p.id == id)).then_some(id);
    }
    doc.partitions.iter().find(|p| p.name == key).map(|p| p.id)
}

fn partition_name(doc: &Export, id: VmId) -> String {
    if id == doc.root {
        return ROOT_NAME.to_owned();
    }
    doc.partitions
        .iter()
        .find(|p| p.id == id)
        .map(|p| p.name.clone())
        .unwrap_or_else(|| id.to_string())
}

/// A policy entry with its partitions resolved in `doc`; the key that resolves to nothing.
fn resolve_policy(doc: &Export, entry: &PolicyEntry) -> Result<Policy, String> {
    let list = |l: &Option<Vec<String>>| -> Result<Option<Vec<VmId>>, String> {
        l.as_ref()
            .map(|keys| {
                keys.iter()
                    .map(|k| lookup_partition(doc, k).ok_or_else(|| k.clone()))
                    .collect()
            })
            .transpose()
    };
    Ok(Policy {
        connect: list(&entry.connect)?,
        bind: list(&entry.bind)?,
        wildcard_bind: entry.wildcard_bind.unwrap_or(true),
    })
}

/// `hvsockd --check`: the report of what a start with `config` would use and apply (for
/// stdout), and whether it can start. Opens the registry read-only, or plans against an empty
/// one when there is none yet; writes nothing.
pub fn check(
    config: &crate::Config,
    log_format: &str,
    source: Option<&Path>,
) -> (String, Result<(), String>) {
    let mut out = String::new();
    let source = source.map_or("(none: defaults and flags)".to_owned(), |p| {
        p.display().to_string()
    });
    let l = &config.limits;
    let _ = writeln!(out, "config: {source}");
    let _ = writeln!(out, "state dir: {}", config.dirs.state.display());
    let _ = writeln!(out, "run dir: {}", config.dirs.run.display());
    let _ = writeln!(out, "log format: {log_format}");
    let _ = writeln!(
        out,
        "limits: handshake_timeout {}, max_sessions_per_partition {}, max_outstanding_connects {}",
        humantime::format_duration(l.handshake_timeout),
        l.max_sessions_per_partition,
        l.max_outstanding_connects
    );
    let path = config.dirs.registry();
    let opened = if path.exists() {
        Registry::open_read_only(&path)
            .map(|r| (r, format!("registry: {} (read only)", path.display())))
    } else {
        Registry::open_in_memory().map(|r| {
            (
                r,
                format!(
                    "registry: {} does not exist yet; a start creates it",
                    path.display()
                ),
            )
        })
    };
    let registry = match opened {
        Ok((registry, note)) => {
            let _ = writeln!(out, "{note}");
            registry
        }
        Err(e) => return (out, Err(e.to_string())),
    };
    let (report, policy, doc) = match config.declared.plan_with_doc(&registry) {
        Ok(planned) => planned,
        Err(e) => return (out, Err(e.to_string())),
    };
    let name = |id: VmId| partition_name(&doc, id);
    let _ = writeln!(out, "default policy: {}", describe_policy(&policy, name));
    if report.changes.is_empty() {
        let _ = writeln!(out, "registry changes at start: none");
    } else {
        let _ = writeln!(out, "registry changes at start:");
        for change in &report.changes {
            let _ = writeln!(out, "  {change}");
        }
    }
    let _ = writeln!(out, "ok");
    (out, Ok(()))
}

/// A policy for people, partitions named by `name`.
pub fn describe_policy(policy: &Policy, name: impl Fn(VmId) -> String) -> String {
    let list = |l: &Option<Vec<VmId>>| match l {
        None => "any".to_owned(),
        Some(ids) => format!(
            "[{}]",
            ids.iter()
                .map(|&id| name(id))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "connect {}; bind {}; wildcard_bind {}",
        list(&policy.connect),
        list(&policy.bind),
        if policy.wildcard_bind { "yes" } else { "no" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        Loaded::parse(Path::new("test.toml"), text)
    }

    fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(&dir.path().join("registry.db")).expect("open");
        (dir, reg)
    }

    const FULL: &str = r#"
dir = "/srv/hv"
log_format = "json"

[limits]
handshake_timeout = "2s"
max_sessions_per_partition = 8
max_outstanding_connects = 4

[default_policy]
wildcard_bind = false

[[partition]]
name = "web"
id = "c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11"

[[partition]]
name = "web-child"
parent = "web"

[[service]]
name = "echo"
port = 2761

[[service]]
name = "agent"
enabled = false
[service.policy]
connect = ["web", "host"]
"#;

    #[test]
    fn a_full_file_parses() {
        let c = parse(FULL).expect("parses");
        assert_eq!(c.dirs, Some(Dirs::under("/srv/hv")));
        assert_eq!(c.log_format, Some(LogFormat::Json));
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.max_sessions_per_partition, 8);
        assert_eq!(c.limits.max_outstanding_connects, 4);
        assert_eq!(c.declared.partitions.len(), 2);
        assert_eq!(c.declared.services[1].enabled, Some(false));
        assert_eq!(
            c.declared.services[1]
                .policy
                .as_ref()
                .and_then(|p| p.connect.clone()),
            Some(vec!["web".to_owned(), "host".to_owned()])
        );
        let c = parse("[limits]\nhandshake_timeout = 0.5\n").expect("seconds");
        assert_eq!(c.limits.handshake_timeout, Duration::from_millis(500));
        assert!(parse("").expect("empty").declared.is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_say_where() {
        let err = parse("dir = \"/x\"\n[limits]\nmax_sessions = 3\n").expect_err("unknown");
        let text = err.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("max_sessions"), "{text}");
        let err = parse("[[service]]\nname = \"x\"\nid = \"nope\"\n").expect_err("bad guid");
        assert!(err.to_string().contains("line 3"), "{err}");
        for (text, needle) in [
            (
                "[limits]\nhandshake_timeout = \"forever\"\n",
                "not a duration",
            ),
            ("[limits]\nhandshake_timeout = 0\n", "out of range"),
            ("[limits]\nmax_outstanding_connects = 0\n", "at least 1"),
            ("dir = \"/a\"\nrun_dir = \"/b\"\n", "not both"),
            ("state_dir = \"/a\"\n", "go together"),
            ("[[service]]\nname = \"2761\"\n", "all digits"),
            (
                "[[service]]\nname = \"a\"\nport = 1\nid = \"00000001-facb-11e6-bd58-64006a7986d3\"\n",
                "either id or port",
            ),
            (
                "[[service]]\nname = \"a\"\n[[service]]\nname = \"a\"\n",
                "comes twice",
            ),
            ("[[partition]]\nname = \"host\"\n", "root partition"),
            ("[[partition]]\nname = \"parent\"\n", "keyword"),
            (
                "[[partition]]\nname = \"vm\"\nhybrid_vsock = \"fc.sock\"\n",
                "absolute path",
            ),
            ("log_format = \"xml\"\n", "log_format"),
        ] {
            let err = parse(text).expect_err(needle);
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn apply_ensures_entries_idempotently() {
        let (_dir, mut reg) = registry();
        let c = parse(FULL).expect("parses");
        let (plan, _) = c.declared.plan(&reg).expect("plan");
        assert_eq!(plan.services.created, 2);
        assert_eq!(plan.partitions.created, 2);
        assert!(
            reg.services().expect("list").is_empty(),
            "plan changed nothing"
        );
        let (report, default) = c.declared.apply(&mut reg).expect("apply");
        assert_eq!(report.services.created, 2);
        assert!(!default.wildcard_bind);
        let web = VmId::parse("c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11").expect("guid");
        let parts = reg.partitions().expect("list");
        assert!(
            parts
                .iter()
                .any(|p| p.name == "web-child" && p.parent == Some(web))
        );
        let agent = reg
            .services()
            .expect("list")
            .into_iter()
            .find(|s| s.name == "agent")
            .expect("agent");
        assert!(!agent.enabled);
        assert_eq!(
            agent.policy.and_then(|p| p.connect),
            Some(vec![web, reg.root()])
        );
        // Again: nothing changes (random ids were matched by name).
        let (again, _) = c.declared.apply(&mut reg).expect("again");
        assert!(!again.changed(), "{again:?}");
        // Enabled by hand; an entry without `enabled` leaves it so.
        let echo = ServiceId::from_vsock_port(2761);
        reg.set_service_enabled(echo, false).expect("disable");
        c.declared.apply(&mut reg).expect("again");
        assert!(!reg.service(echo).expect("read").expect("echo").enabled);
    }

    #[test]
    fn clashes_name_the_entry_and_change_nothing() {
        let (_dir, mut reg) = registry();
        reg.add_service(ServiceId::from_vsock_port(1), "echo", true)
            .expect("echo");
        let c = parse("[[service]]\nname = \"echo\"\nport = 2761\n").expect("parses");
        let err = c.declared.apply(&mut reg).expect_err("clash");
        let text = err.to_string();
        assert!(text.contains("[[service]] #1 \"echo\""), "{text}");
        assert!(text.contains("registered with the id 00000001-"), "{text}");
        let c = parse("[[service]]\nname = \"other\"\nport = 1\n").expect("parses");
        let text = c.declared.apply(&mut reg).expect_err("clash").to_string();
        assert!(text.contains("registered as service \"echo\""), "{text}");
        let c = parse("[[partition]]\nname = \"a\"\nparent = \"nope\"\n").expect("parses");
        let text = c.declared.apply(&mut reg).expect_err("parent").to_string();
        assert!(text.contains("parent \"nope\""), "{text}");
        let c = parse("[default_policy]\nconnect = [\"ghost\"]\n").expect("parses");
        let text = c.declared.apply(&mut reg).expect_err("policy").to_string();
        assert!(
            text.contains("[default_policy]") && text.contains("ghost"),
            "{text}"
        );
        assert_eq!(reg.services().expect("list").len(), 1);
        assert_eq!(reg.partitions().expect("list").len(), 1);
    }

    #[test]
    fn a_moved_partition_is_a_clash() {
        let (_dir, mut reg) = registry();
        let c = parse("[[partition]]\nname = \"a\"\n[[partition]]\nname = \"b\"\n").expect("ok");
        c.declared.apply(&mut reg).expect("apply");
        let c = parse("[[partition]]\nname = \"a\"\n[[partition]]\nname = \"b\"\nparent = \"a\"\n")
            .expect("ok");
        let text = c.declared.apply(&mut reg).expect_err("moved").to_string();
        assert!(
            text.contains("registered under host, the file puts it under a"),
            "{text}"
        );
    }

    #[test]
    fn check_reports_the_plan_with_names_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "[[partition]]\nname = \"w\"\n[default_policy]\nconnect = [\"w\", \"host\"]\n";
        let loaded = parse(text).expect("parses");
        let mut config = crate::Config::new(Dirs::under(dir.path().join("hv")));
        config.declared = loaded.declared;
        let (report, result) = check(&config, "text", Some(Path::new("test.toml")));
        assert_eq!(result, Ok(()), "{report}");
        assert!(
            report.contains("default policy: connect [w, host]; bind any; wildcard_bind yes\n"),
            "{report}"
        );
        assert!(report.contains("  partition \"w\" created\n"), "{report}");
        assert!(report.ends_with("ok\n"), "{report}");
        assert!(!dir.path().join("hv").exists());
        config.declared.default_policy = Some(PolicyEntry {
            bind: Some(vec!["nope".into()]),
            ..PolicyEntry::default()
        });
        let (_, result) = check(&config, "text", None);
        assert!(result.expect_err("unknown").contains("\"nope\""));
    }
}
