//! The control layer: the only code that changes the registry and the world. Every change
//! goes the same way:
//!
//! ```text
//!  check (names, ids, paths: ControlError::Invalid) ─▶ registry transaction (SQLite, on a
//!  blocking thread) ─▶ the in-memory world, in the same critical section, so that the world
//!  never runs ahead of or behind the database ─▶ what follows: listeners of removed partitions
//!  closed here; endpoints and guest ports reconciled from the world's change signal, awaited
//!  ([`Sync::settled`]) so that the caller's answer already holds
//! ```
//!
//! The admin API's handlers (parse → control → view), `--config` at start-up ([`open`]) and
//! anything later that changes state call it; nothing else writes the registry or the
//! registry's mirror in the world. (Sessions bind and unbind listeners in the world directly:
//! that is runtime state, not registry state, and the same change signal follows it.)

mod policy;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use hvsock::dirs::Dirs;
use hvsock::{ServiceId, VmId};
use hvsock_api::{NewPartition, NewService, ServicePatch};

use crate::attach;
use crate::config::{ConfigError, Declared};
use crate::kvp::{GuestPool, Pool, Pools};
use crate::reconcile::Sync;
use crate::registry::{
    Added, Export, ImportMode, ImportReport, KvpSet, PartitionKind, PartitionRecord, Registry,
    RegistryError, ServiceRecord,
};
use crate::world::{self, World};

/// Why a change was not made (or not wholly).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The request is not valid: `code` says how (`invalid_name`, `invalid_request`,
    /// `invalid_hybrid_vsock`, `unknown_partition`).
    #[error("{message}")]
    Invalid {
        /// A stable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// It clashes with what is there.
    #[error("{0}")]
    Conflict(String),
    /// No such entry.
    #[error("no {what} {key:?} in the registry")]
    NotFound {
        /// `service` or `partition`.
        what: &'static str,
        /// The id or name asked for.
        key: String,
    },
    /// No such key in a key-value pool.
    #[error("no key {key:?} in the {pool} pool of {partition:?}")]
    NoKey {
        /// The key.
        key: String,
        /// `host` or `guest`.
        pool: &'static str,
        /// The partition's name.
        partition: String,
    },
    /// The change was made, but what follows from it failed, or hvsockd itself did.
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    fn invalid(code: &'static str, message: impl Into<String>) -> ControlError {
        ControlError::Invalid {
            code,
            message: message.into(),
        }
    }
}

type Result<T, E = ControlError> = std::result::Result<T, E>;

/// Opens (or creates) the registry, ensures what the configuration declares in it (one
/// transaction) and loads the world from it: the start of every hvsockd. Stale guest-port
/// sockets are removed, but those of `kept_ports` (handed over, see [`crate::handover`]).
pub fn open(
    dirs: &Dirs,
    declared: &Declared,
    kept_ports: &std::collections::HashSet<(VmId, u32)>,
) -> Result<(Registry, World), StartError> {
    let mut registry = Registry::open(&dirs.registry())?;
    if registry.created() {
        for line in registry.register_integration_services()? {
            tracing::info!("{line}");
        }
    }
    let (applied, default_policy) = declared.apply(&mut registry)?;
    for change in &applied.changes {
        tracing::info!(config = %declared.source.display(), "{change}");
    }
    let mut world = World::load(&registry)?;
    world.set_default_policy(default_policy);
    for p in world.partitions() {
        if let Some(path) = p.hybrid_vsock.as_deref() {
            attach::sockets::remove_stale(path, |port| kept_ports.contains(&(p.id, port)));
        }
    }
    Ok((registry, world))
}

/// Host-user rules from names or numbers; an unknown name is [`ControlError::Invalid`].
fn resolve_access(patch: &hvsock_api::AccessPatch) -> Result<crate::registry::Access> {
    use nix::unistd::{Group, User};
    let mut access = crate::registry::Access::default();
    for u in &patch.users {
        let uid = match u.parse::<u32>() {
            Ok(n) => n,
            Err(_) => User::from_name(u)
                .ok()
                .flatten()
                .map(|user| user.uid.as_raw())
                .ok_or_else(|| {
                    ControlError::invalid(
                        "unknown_user",
                        format!(
                            "no user {u:?} on this host (give a name from /etc/passwd or a uid)"
                        ),
                    )
                })?,
        };
        if !access.users.contains(&uid) {
            access.users.push(uid);
        }
    }
    for g in &patch.groups {
        let gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => Group::from_name(g)
                .ok()
                .flatten()
                .map(|group| group.gid.as_raw())
                .ok_or_else(|| {
                    ControlError::invalid(
                        "unknown_group",
                        format!(
                            "no group {g:?} on this host (give a name from /etc/group or a gid)"
                        ),
                    )
                })?,
        };
        if !access.groups.contains(&gid) {
            access.groups.push(gid);
        }
    }
    Ok(access)
}

/// Why [`open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The registry could not be opened or read.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The configuration file's entries could not be applied.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The control layer of one hvsockd.
#[derive(Debug)]
pub struct Control {
    registry: Mutex<Registry>,
    world: Arc<world::Shared>,
    sync: Sync,
    kvp: Arc<Pools>,
}

impl Control {
    /// Over `registry` and its mirrors `world` and `kvp` (the key-value pools); `sync` waits
    /// for what follows a change.
    pub fn new(
        registry: Registry,
        world: Arc<world::Shared>,
        sync: Sync,
        kvp: Arc<Pools>,
    ) -> Arc<Control> {
        Arc::new(Control {
            registry: Mutex::new(registry),
            world,
            sync,
            kvp,
        })
    }

    /// The key-value pools (the host's mirrored from the registry, the guests').
    pub fn kvp(&self) -> &Arc<Pools> {
        &self.kvp
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a registry write on a blocking thread, one at a time.
    async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Control) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| ControlError::Internal(format!("the registry write failed: {e}")))?
    }

    /// A service by id or name.
    pub fn service(&self, key: &str) -> Result<ServiceRecord> {
        self.world
            .lock()
            .find_service(key)
            .cloned()
            .ok_or_else(|| ControlError::NotFound {
                what: "service",
                key: key.to_owned(),
            })
    }

    /// A partition by id or name.
    pub fn partition(&self, key: &str) -> Result<PartitionRecord> {
        self.world
            .lock()
            .find_partition(key)
            .cloned()
            .ok_or_else(|| ControlError::NotFound {
                what: "partition",
                key: key.to_owned(),
            })
    }

    /// Registers a service; `Added::Existing` if the same one was there.
    pub async fn add_service(self: &Arc<Self>, new: NewService) -> Result<(ServiceRecord, Added)> {
        check_name(hvsock::addr::check_service_name(&new.name))?;
        let id = match (new.id, new.port) {
            (Some(_), Some(_)) => {
                return Err(ControlError::invalid(
                    "invalid_request",
                    "give either id or port, not both (a port stands for its vsock template GUID)",
                ));
            }
            (Some(id), None) => id,
            (None, Some(port)) => ServiceId::from_vsock_port(port),
            (None, None) => ServiceId::new_random(),
        };
        let (record, added) = self
            .write(move |c| {
                let (record, added) = c.registry().add_service(id, &new.name, new.enabled)?;
                c.world.lock().put_service(record.clone());
                Ok((record, added))
            })
            .await?;
        if added == Added::Created {
            tracing::info!(name = %record.name, id = %record.id, "service registered");
        }
        self.sync.settled().await;
        Ok((record, added))
    }

    /// Renames, switches and sets the policy of the service `key` (JSON merge patch).
    pub async fn patch_service(
        self: &Arc<Self>,
        key: &str,
        patch: ServicePatch,
    ) -> Result<ServiceRecord> {
        let record = self.service(key)?;
        if let Some(name) = &patch.name {
            check_name(hvsock::addr::check_service_name(name))?;
        }
        let policy = match patch.policy {
            None => None,
            Some(None) => Some(None),
            Some(Some(p)) => Some(Some(policy::merge(
                &self.world.lock(),
                record.policy.as_ref(),
                p,
            )?)),
        };
        let access = match patch.access {
            None => None,
            Some(None) => Some(None),
            Some(Some(a)) => Some(Some(resolve_access(&a)?)),
        };
        let (name, enabled) = (patch.name, patch.enabled);
        let before = record.clone();
        let record = self
            .write(move |c| {
                let mut record = c.registry().update_service(
                    record.id,
                    name.as_deref(),
                    enabled,
                    policy.as_ref().map(Option::as_ref),
                )?;
                if let Some(access) = access {
                    c.registry()
                        .set_service_access(record.id, access.as_ref())?;
                    record.access = access;
                }
                c.world.lock().put_service(record.clone());
                Ok(record)
            })
            .await?;
        if record != before {
            tracing::info!(
                id = %record.id, name = %record.name, was = %before.name, enabled = record.enabled,
                policy = ?record.policy, access = ?record.access, "service changed"
            );
        }
        self.sync.settled().await;
        Ok(record)
    }

    /// Enables or disables the service `key`.
    pub async fn set_service_enabled(
        self: &Arc<Self>,
        key: &str,
        enabled: bool,
    ) -> Result<ServiceRecord> {
        let record = self.service(key)?;
        let record = self
            .write(move |c| {
                c.registry().set_service_enabled(record.id, enabled)?;
                let record = ServiceRecord { enabled, ..record };
                c.world.lock().put_service(record.clone());
                Ok(record)
            })
            .await?;
        tracing::info!(name = %record.name, enabled, "service switched");
        self.sync.settled().await;
        Ok(record)
    }

    /// Removes the service `key`.
    pub async fn remove_service(self: &Arc<Self>, key: &str) -> Result<()> {
        let record = self.service(key)?;
        self.write(move |c| {
            c.registry().remove_service(record.id)?;
            c.world.lock().remove_service(record.id);
            tracing::info!(name = %record.name, id = %record.id, "service removed");
            Ok(())
        })
        .await?;
        self.sync.settled().await;
        Ok(())
    }

    /// Adds a sandbox partition (and opens its endpoint) or, with `hybrid_vsock`, attaches a
    /// VM; `Added::Existing` if the same one was there.
    pub async fn add_partition(
        self: &Arc<Self>,
        new: NewPartition,
    ) -> Result<(PartitionRecord, Added)> {
        check_name(hvsock::addr::check_partition_name(&new.name))?;
        let id = new.id.unwrap_or_else(|| VmId(hvsock::Guid::new_random()));
        if id.is_well_known() {
            return Err(ControlError::invalid(
                "invalid_request",
                format!(
                    "{id} is a well-known VmId ({}) and cannot name a partition",
                    id.keyword().unwrap_or_default()
                ),
            ));
        }
        let parent = match &new.parent {
            Some(key) => self.partition(key)?,
            None => {
                let root = self.world.lock().root();
                self.partition(&root.to_string())?
            }
        };
        if parent.kind == PartitionKind::Vm {
            return Err(ControlError::invalid(
                "invalid_request",
                format!(
                    "partition {} is a VM and cannot have child partitions here: a guest that hosts its own sandboxes runs its own hvsockd",
                    parent.name
                ),
            ));
        }
        let kind = match &new.hybrid_vsock {
            Some(path) => {
                attach::check_path(path)
                    .map_err(|message| ControlError::invalid("invalid_hybrid_vsock", message))?;
                PartitionKind::Vm
            }
            None => PartitionKind::Sandbox,
        };
        let parent = parent.id;
        let hybrid_vsock = new.hybrid_vsock.clone();
        let (record, added) = self
            .write(move |c| {
                if let Some(path) = &hybrid_vsock {
                    if let Some(other) = c.attached_elsewhere(id, path) {
                        return Err(ControlError::Conflict(format!(
                            "the hybrid-vsock socket {} is already attached to VM {other}",
                            path.display()
                        )));
                    }
                }
                let (record, added) = c.registry().add_partition(
                    id,
                    &new.name,
                    parent,
                    kind,
                    hybrid_vsock.as_deref(),
                )?;
                c.world.lock().put_partition(record.clone());
                Ok((record, added))
            })
            .await?;
        let applied = self.sync.settled().await;
        if kind == PartitionKind::Vm {
            if added == Added::Created {
                tracing::info!(
                    name = %record.name, id = %record.id,
                    hybrid_vsock = %record.hybrid_vsock.as_deref().unwrap_or(Path::new("")).display(),
                    "VM attached"
                );
            }
        } else {
            if let Some((_, e)) = applied
                .endpoint_failures
                .iter()
                .find(|(p, _)| *p == record.id)
            {
                return Err(ControlError::Internal(format!(
                    "the partition was added, but its endpoint could not be opened: {e}"
                )));
            }
            if added == Added::Created {
                tracing::info!(name = %record.name, id = %record.id, "partition added");
            }
        }
        Ok((record, added))
    }

    /// The VM other than `id` that `path` is attached to, if any.
    fn attached_elsewhere(&self, id: VmId, path: &Path) -> Option<String> {
        self.world
            .lock()
            .partitions()
            .find(|p| p.id != id && p.hybrid_vsock.as_deref() == Some(path))
            .map(|p| p.name.clone())
    }

    /// Renames the partition `key` (nothing to do if it has that name).
    pub async fn rename_partition(
        self: &Arc<Self>,
        key: &str,
        name: Option<String>,
    ) -> Result<PartitionRecord> {
        let record = self.partition(key)?;
        let Some(name) = name.filter(|n| *n != record.name) else {
            return Ok(record);
        };
        check_name(hvsock::addr::check_partition_name(&name))?;
        let old = record.name.clone();
        let record = self
            .write(move |c| {
                c.registry().rename_partition(record.id, &name)?;
                let record = PartitionRecord { name, ..record };
                c.world.lock().put_partition(record.clone());
                Ok(record)
            })
            .await?;
        tracing::info!(id = %record.id, name = %record.name, was = %old, "partition renamed");
        Ok(record)
    }

    /// Removes the partition `key`, its endpoint and its listeners.
    pub async fn remove_partition(self: &Arc<Self>, key: &str) -> Result<()> {
        let record = self.partition(key)?;
        let id = record.id;
        let listeners = self
            .write(move |c| {
                c.registry().remove_partition(id)?;
                c.kvp.remove(id);
                Ok(c.world.lock().remove_partition(id))
            })
            .await?;
        for listener in listeners {
            listener.close();
        }
        self.sync.settled().await;
        tracing::info!(name = %record.name, id = %record.id, "partition removed");
        Ok(())
    }

    /// The registry as a document.
    pub async fn export(self: &Arc<Self>) -> Result<Export> {
        self.write(|c| Ok(c.registry().export()?)).await
    }

    /// Imports a registry document in one transaction (or says what it would do).
    pub async fn import(
        self: &Arc<Self>,
        doc: Export,
        mode: ImportMode,
        dry_run: bool,
    ) -> Result<ImportReport> {
        let (report, closed) = self
            .write(move |c| {
                let mut registry = c.registry();
                let report = registry.import(&doc, mode, dry_run)?;
                let closed = if report.changed() && !report.dry_run {
                    let mut world = c.world.lock();
                    let closed = world.reload(&registry)?;
                    let present: Vec<VmId> = world.partitions().map(|p| p.id).collect();
                    c.kvp.reload(registry.kvp_pools()?, &present);
                    closed
                } else {
                    Vec::new()
                };
                Ok((report, closed))
            })
            .await?;
        for listener in closed {
            listener.close();
        }
        if report.changed() && !report.dry_run {
            let applied = self.sync.settled().await;
            for change in &report.changes {
                tracing::info!(mode = ?report.mode, "import: {change}");
            }
            if !applied.endpoint_failures.is_empty() {
                let world = self.world.lock();
                let failed: Vec<String> = applied
                    .endpoint_failures
                    .iter()
                    .map(|(id, e)| format!("{}: {e}", world.partition_label(*id)))
                    .collect();
                drop(world);
                tracing::error!("after an import, endpoints could not be opened: {failed:?}");
                return Err(ControlError::Internal(format!(
                    "the registry was imported, but these endpoints could not be opened: {}",
                    failed.join("; ")
                )));
            }
        }
        Ok(report)
    }

    /// A partition that has key-value pools (not the root).
    fn kvp_partition(&self, key: &str) -> Result<PartitionRecord> {
        let record = self.partition(key)?;
        if record.kind == PartitionKind::Root {
            return Err(ControlError::invalid(
                "root_partition",
                "the host (root partition) has no key-value pools: name a sandbox or VM",
            ));
        }
        Ok(record)
    }

    /// Partition `key`'s host pool.
    pub fn kvp_host(&self, key: &str) -> Result<(PartitionRecord, Pool)> {
        let record = self.kvp_partition(key)?;
        let pool = self.kvp.host(record.id);
        Ok((record, pool))
    }

    /// Partition `key`'s guest pool as its agent last sent it.
    pub fn kvp_guest(&self, key: &str) -> Result<(PartitionRecord, GuestPool)> {
        let record = self.kvp_partition(key)?;
        let pool = self.kvp.guest(record.id);
        Ok((record, pool))
    }

    /// Sets `name` to `value` in partition `key`'s host pool: in the registry, then in its
    /// mirror ([`Pools`]), which a guest's connection follows.
    pub async fn kvp_set(
        self: &Arc<Self>,
        key: &str,
        name: String,
        value: String,
    ) -> Result<(PartitionRecord, KvpSet)> {
        let record = self.kvp_partition(key)?;
        hvsock_agent::kvp::check_key(&name).map_err(|m| ControlError::invalid("invalid_key", m))?;
        hvsock_agent::kvp::check_value(&value)
            .map_err(|m| ControlError::invalid("invalid_value", m))?;
        let id = record.id;
        let set = self
            .write(move |c| {
                let set = c.registry().kvp_set(id, &name, &value)?;
                c.kvp.host_set(id, &name, &value);
                Ok(set)
            })
            .await?;
        Ok((record, set))
    }

    /// Deletes `name` from partition `key`'s host pool ([`ControlError::NotFound`] if it is
    /// not there).
    pub async fn kvp_delete(self: &Arc<Self>, key: &str, name: String) -> Result<()> {
        let record = self.kvp_partition(key)?;
        hvsock_agent::kvp::check_key(&name).map_err(|m| ControlError::invalid("invalid_key", m))?;
        let id = record.id;
        let label = record.name.clone();
        self.write(move |c| {
            if !c.registry().kvp_delete(id, &name)? {
                return Err(ControlError::NoKey {
                    key: name,
                    pool: "host",
                    partition: label,
                });
            }
            c.kvp.host_delete(id, &name);
            Ok(())
        })
        .await
    }

    /// Where the registry lives.
    pub fn registry_path(&self) -> PathBuf {
        self.registry().path().to_owned()
    }
}

fn check_name(checked: std::result::Result<(), impl std::fmt::Display>) -> Result<()> {
    checked.map_err(|e| ControlError::invalid("invalid_name", e.to_string()))
}
