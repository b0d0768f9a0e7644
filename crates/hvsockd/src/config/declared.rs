//! The services, partitions and default policy a configuration file declares, ensured in the
//! registry at every start ([`Declared::apply`], one transaction) or planned without writing
//! ([`Declared::plan`], for `hvsockd --check`).

use std::path::{Path, PathBuf};

use hvsock::{Guid, ServiceId, VmId};
use serde::Deserialize;

use super::ConfigError;
use crate::registry::{
    Export, ExportedPartition, ExportedService, ImportMode, ImportReport, PartitionKind, ROOT_NAME,
    Registry, RegistryError,
};
use crate::router::Policy;

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
                    access: None,
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

    pub(super) fn plan_with_doc(
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

pub(super) fn partition_name(doc: &Export, id: VmId) -> String {
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
