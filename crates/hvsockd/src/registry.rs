//! The registry: services and partitions in SQLite, owned by hvsockd.
//!
//! The schema is versioned with `PRAGMA user_version`; [`Registry::open`] creates it on first
//! start and upgrades older versions in a transaction, and refuses a registry written by a newer
//! hvsockd rather than damage it. Every change is one transaction. The root partition (the host)
//! is a row like any other, with kind `root`, no parent, a random id made at creation, and the
//! name `host`.
//!
//! A service's policy lives in the `policy` column as JSON (partitions by id): `{}` means the
//! service has no policy of its own and the default one (from hvsockd's configuration)
//! applies. Removing a partition removes it from every policy in the same transaction; a list
//! it leaves empty allows no partition, so a removal never widens a policy.
//!
//! [`Registry::export`] and [`Registry::import`] move a registry between hosts as an
//! [`Export`] document (see [`Registry::import`] for the merge and replace rules and what
//! happens to the root's id).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hvsock::{Guid, ServiceId, VmId};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::router::Policy;

mod transfer;

pub use transfer::{
    Counts, EXPORT_VERSION, Export, ExportedPartition, ExportedService, ImportMode, ImportReport,
};

/// The schema version this hvsockd writes.
pub const SCHEMA_VERSION: i64 = 1;

/// The name of the root partition.
pub const ROOT_NAME: &str = "host";

const SCHEMA_V1: &str = "
CREATE TABLE services (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    enabled    INTEGER NOT NULL DEFAULT 1,
    policy     TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL
);
CREATE TABLE partitions (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    parent     TEXT REFERENCES partitions(id),
    kind       TEXT NOT NULL CHECK (kind IN ('root', 'sandbox', 'vm')),
    attachment TEXT,
    created_at INTEGER NOT NULL
);
";

/// What went wrong with the registry. Each variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database could not be opened or created.
    #[error("opening the registry {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer hvsockd.
    #[error(
        "the registry {path} has schema version {found}, newer than this hvsockd understands ({SCHEMA_VERSION}): run the newer hvsockd, or restore a backup"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// A row holds a value hvsockd cannot read.
    #[error(
        "the registry holds an unreadable {what} {value:?}: restore a backup or remove that row"
    )]
    Corrupt {
        /// What kind of value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A name is taken by another entry.
    #[error("the {what} name {name:?} is already used by {id}")]
    NameTaken {
        /// `service` or `partition`.
        what: &'static str,
        /// The name.
        name: String,
        /// The entry holding it.
        id: Guid,
    },
    /// An id is taken by an entry with another name.
    #[error("the {what} id {id} is already registered as {name:?}")]
    IdTaken {
        /// `service` or `partition`.
        what: &'static str,
        /// The id.
        id: Guid,
        /// The name it has.
        name: String,
    },
    /// No such entry.
    #[error("no {what} {key:?} in the registry")]
    NotFound {
        /// `service` or `partition`.
        what: &'static str,
        /// The id or name looked for.
        key: String,
    },
    /// The partition has children.
    #[error("partition {name:?} has child partitions ({children}): remove them first")]
    HasChildren {
        /// The partition.
        name: String,
        /// Their names.
        children: String,
    },
    /// The root partition cannot be changed that way.
    #[error("the root partition (host) cannot be removed")]
    Root,
    /// The root partition's name is fixed.
    #[error("the root partition is always named {ROOT_NAME:?} and cannot be renamed")]
    RootName,
    /// A policy names a partition that does not exist.
    #[error("the policy of service {service:?} names partition {id}, which is not in the registry")]
    UnknownPolicyPartition {
        /// The service.
        service: String,
        /// The partition id.
        id: VmId,
    },
    /// An import document is not a registry.
    #[error("the registry document is invalid: {0}")]
    InvalidImport(String),
    /// An import clashes with entries already there; nothing was changed.
    #[error("the import clashes with the registry ({} conflict{}), nothing was changed: {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("; "))]
    Conflicts(Vec<String>),
    /// A query failed.
    #[error("{doing}: {source}")]
    Sqlite {
        /// What was being done.
        doing: &'static str,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

fn sql(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> RegistryError {
    move |source| RegistryError::Sqlite { doing, source }
}

/// A registered service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The service GUID.
    pub id: ServiceId,
    /// The friendly name (`ElementName`).
    pub name: String,
    /// Whether connections may cross partitions to it.
    pub enabled: bool,
    /// Its own policy; `None`: the default policy applies.
    pub policy: Option<Policy>,
    /// When it was registered, seconds since the Unix epoch.
    pub created_at: i64,
}

pub use hvsock_api::PartitionKind;

/// A partition kind as stored.
fn parse_kind(s: &str) -> Result<PartitionKind> {
    match s {
        "root" => Ok(PartitionKind::Root),
        "sandbox" => Ok(PartitionKind::Sandbox),
        "vm" => Ok(PartitionKind::Vm),
        other => Err(RegistryError::Corrupt {
            what: "partition kind",
            value: other.to_owned(),
        }),
    }
}

/// A partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// The VmId.
    pub id: VmId,
    /// Its name.
    pub name: String,
    /// Its parent; `None` for the root only.
    pub parent: Option<VmId>,
    /// What it is.
    pub kind: PartitionKind,
    /// For a VM: the VMM's hybrid-vsock socket.
    pub hybrid_vsock: Option<PathBuf>,
    /// When it was added, seconds since the Unix epoch.
    pub created_at: i64,
}

/// Whether an add made something new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new entry.
    Created,
    /// The same entry was already there; nothing changed.
    Existing,
}

/// The open registry.
#[derive(Debug)]
pub struct Registry {
    conn: Connection,
    path: PathBuf,
    root: VmId,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The `policy` column of a service with no policy of its own.
const NO_POLICY: &str = "{}";

fn policy_to_column(policy: Option<&Policy>) -> String {
    match policy {
        // Every key is written, so that an own policy never reads back as `{}`.
        Some(p) => serde_json::to_string(p).unwrap_or_else(|_| NO_POLICY.to_owned()),
        None => NO_POLICY.to_owned(),
    }
}

fn policy_from_column(text: &str) -> Result<Option<Policy>> {
    let corrupt = || RegistryError::Corrupt {
        what: "service policy",
        value: text.to_owned(),
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| corrupt())?;
    if value.as_object().is_some_and(serde_json::Map::is_empty) {
        return Ok(None);
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|_| corrupt())
}

/// The two tables whose rows have unique names.
#[derive(Debug, Clone, Copy)]
enum Table {
    Services,
    Partitions,
}

impl Table {
    fn name_lookup(self) -> &'static str {
        match self {
            Table::Services => "SELECT id FROM services WHERE name = ?1 AND id != ?2",
            Table::Partitions => "SELECT id FROM partitions WHERE name = ?1 AND id != ?2",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Table::Services => "service",
            Table::Partitions => "partition",
        }
    }
}

/// Fails with [`RegistryError::NameTaken`] if an entry other than `except` has `name`.
fn check_name_free(
    conn: &Connection,
    table: Table,
    name: &str,
    except: Option<Guid>,
) -> Result<()> {
    let except = except.map(|id| id.to_string()).unwrap_or_default();
    let other: Option<String> = conn
        .query_row(table.name_lookup(), params![name, except], |row| row.get(0))
        .optional()
        .map_err(sql("looking up a name"))?;
    match other {
        Some(other) => Err(RegistryError::NameTaken {
            what: table.what(),
            name: name.to_owned(),
            id: parse_guid("id", &other)?,
        }),
        None => Ok(()),
    }
}

fn parse_guid(what: &'static str, s: &str) -> Result<Guid> {
    Guid::parse(s).map_err(|_| RegistryError::Corrupt {
        what,
        value: s.to_owned(),
    })
}

impl Registry {
    /// Opens the registry at `path`, creating it (with a new root partition) on first use.
    pub fn open(path: &Path) -> Result<Registry> {
        let open_err = |source| RegistryError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(RegistryError::TooNew {
                path: path.to_owned(),
                found: version,
            });
        }
        if version < 1 {
            Registry::create_schema(&mut conn, path)?;
        }
        Registry::finish_open(conn, path)
    }

    /// Opens an existing registry without writing to it (for `hvsockd --check`).
    pub fn open_read_only(path: &Path) -> Result<Registry> {
        use rusqlite::OpenFlags;
        let open_err = |source| RegistryError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(RegistryError::TooNew {
                path: path.to_owned(),
                found: version,
            });
        }
        if version < 1 {
            return Err(RegistryError::Corrupt {
                what: "schema version",
                value: version.to_string(),
            });
        }
        Registry::finish_open(conn, path)
    }

    /// A new, empty registry in memory (what a first start would create).
    pub fn open_in_memory() -> Result<Registry> {
        let path = Path::new(":memory:");
        let open_err = |source| RegistryError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open_in_memory().map_err(open_err)?;
        Registry::create_schema(&mut conn, path)?;
        Registry::finish_open(conn, path)
    }

    fn create_schema(conn: &mut Connection, path: &Path) -> Result<()> {
        let open_err = |source| RegistryError::Open {
            path: path.to_owned(),
            source,
        };
        let tx = conn.transaction().map_err(open_err)?;
        tx.execute_batch(SCHEMA_V1).map_err(open_err)?;
        tx.execute(
            "INSERT INTO partitions (id, name, parent, kind, attachment, created_at)
             VALUES (?1, ?2, NULL, 'root', NULL, ?3)",
            params![Guid::new_random().to_string(), ROOT_NAME, now()],
        )
        .map_err(open_err)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
        tx.commit().map_err(open_err)
    }

    fn finish_open(conn: Connection, path: &Path) -> Result<Registry> {
        let root: String = conn
            .query_row("SELECT id FROM partitions WHERE kind = 'root'", [], |row| {
                row.get(0)
            })
            .map_err(|source| RegistryError::Open {
                path: path.to_owned(),
                source,
            })?;
        let root = VmId(parse_guid("root partition id", &root)?);
        Ok(Registry {
            conn,
            path: path.to_owned(),
            root,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root partition's id.
    pub fn root(&self) -> VmId {
        self.root
    }

    /// Every service, by name.
    pub fn services(&self) -> Result<Vec<ServiceRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{SELECT_SERVICES} ORDER BY name"))
            .map_err(sql("listing services"))?;
        let rows = stmt
            .query_map([], service_columns)
            .map_err(sql("listing services"))?;
        rows.map(|row| service_record(row.map_err(sql("reading a service"))?))
            .collect()
    }

    /// One service by id.
    pub fn service(&self, id: ServiceId) -> Result<Option<ServiceRecord>> {
        service_by_id(&self.conn, id)
    }

    /// Every partition, the root first, then by name.
    pub fn partitions(&self) -> Result<Vec<PartitionRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "{SELECT_PARTITIONS} ORDER BY kind != 'root', name"
            ))
            .map_err(sql("listing partitions"))?;
        let rows = stmt
            .query_map([], partition_columns)
            .map_err(sql("listing partitions"))?;
        rows.map(|row| partition_record(row.map_err(sql("reading a partition"))?))
            .collect()
    }

    /// Registers a service. Adding the same id under the same name again changes nothing and
    /// says [`Added::Existing`]; a clash of either with another entry is an error.
    pub fn add_service(
        &mut self,
        id: ServiceId,
        name: &str,
        enabled: bool,
    ) -> Result<(ServiceRecord, Added)> {
        let tx = self
            .conn
            .transaction()
            .map_err(sql("starting a transaction"))?;
        if let Some(existing) = service_by_id(&tx, id)? {
            if existing.name == name {
                return Ok((existing, Added::Existing));
            }
            return Err(RegistryError::IdTaken {
                what: "service",
                id: id.0,
                name: existing.name,
            });
        }
        check_name_free(&tx, Table::Services, name, None)?;
        let created_at = now();
        tx.execute(
            "INSERT INTO services (id, name, enabled, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id.to_string(), name, enabled, created_at],
        )
        .map_err(sql("adding a service"))?;
        tx.commit().map_err(sql("committing a new service"))?;
        Ok((
            ServiceRecord {
                id,
                name: name.to_owned(),
                enabled,
                policy: None,
                created_at,
            },
            Added::Created,
        ))
    }

    /// Changes a service in one transaction: its name (`None`: as it is; a name held by
    /// another service is an error), enabled flag, and policy (`Some(None)` clears it, so that
    /// the default applies; every partition a policy names must exist). Returns the service
    /// as it is after.
    pub fn update_service(
        &mut self,
        id: ServiceId,
        name: Option<&str>,
        enabled: Option<bool>,
        policy: Option<Option<&Policy>>,
    ) -> Result<ServiceRecord> {
        let tx = self
            .conn
            .transaction()
            .map_err(sql("starting a transaction"))?;
        let Some(mut record) = service_by_id(&tx, id)? else {
            return Err(RegistryError::NotFound {
                what: "service",
                key: id.to_string(),
            });
        };
        if let Some(name) = name {
            check_name_free(&tx, Table::Services, name, Some(id.0))?;
            record.name = name.to_owned();
        }
        if let Some(enabled) = enabled {
            record.enabled = enabled;
        }
        if let Some(policy) = policy {
            for partition in policy.iter().flat_map(|p| p.partitions()) {
                if !partition_exists(&tx, partition)? {
                    return Err(RegistryError::UnknownPolicyPartition {
                        service: record.name,
                        id: partition,
                    });
                }
            }
            record.policy = policy.cloned();
        }
        tx.execute(
            "UPDATE services SET name = ?2, enabled = ?3, policy = ?4 WHERE id = ?1",
            params![
                id.to_string(),
                record.name,
                record.enabled,
                policy_to_column(record.policy.as_ref())
            ],
        )
        .map_err(sql("updating a service"))?;
        tx.commit().map_err(sql("committing a service update"))?;
        Ok(record)
    }

    /// Sets (or with `None` clears) a service's own policy. Every partition it names must exist.
    pub fn set_service_policy(&mut self, id: ServiceId, policy: Option<&Policy>) -> Result<()> {
        self.update_service(id, None, None, Some(policy)).map(drop)
    }

    /// Enables or disables a service.
    pub fn set_service_enabled(&mut self, id: ServiceId, enabled: bool) -> Result<()> {
        let changed = self
            .conn
            .execute(
                "UPDATE services SET enabled = ?2 WHERE id = ?1",
                params![id.to_string(), enabled],
            )
            .map_err(sql("updating a service"))?;
        if changed == 0 {
            return Err(RegistryError::NotFound {
                what: "service",
                key: id.to_string(),
            });
        }
        Ok(())
    }

    /// Removes a service.
    pub fn remove_service(&mut self, id: ServiceId) -> Result<()> {
        let changed = self
            .conn
            .execute("DELETE FROM services WHERE id = ?1", [id.to_string()])
            .map_err(sql("removing a service"))?;
        if changed == 0 {
            return Err(RegistryError::NotFound {
                what: "service",
                key: id.to_string(),
            });
        }
        Ok(())
    }

    /// Adds a partition under `parent`. Adding the same id, name, parent and attachment again
    /// changes nothing and says [`Added::Existing`].
    pub fn add_partition(
        &mut self,
        id: VmId,
        name: &str,
        parent: VmId,
        kind: PartitionKind,
        hybrid_vsock: Option<&Path>,
    ) -> Result<(PartitionRecord, Added)> {
        let tx = self
            .conn
            .transaction()
            .map_err(sql("starting a transaction"))?;
        let existing = tx
            .query_row(
                &format!("{SELECT_PARTITIONS} WHERE id = ?1"),
                [id.to_string()],
                partition_columns,
            )
            .optional()
            .map_err(sql("looking up a partition"))?
            .map(partition_record)
            .transpose()?;
        // Compared as stored: the attachment is kept as the path's (lossy) text.
        let attachment = hybrid_vsock.map(|p| p.to_string_lossy().into_owned());
        if let Some(existing) = existing {
            let same = existing.name == name
                && existing.parent == Some(parent)
                && existing.kind == kind
                && existing
                    .hybrid_vsock
                    .as_deref()
                    .map(Path::to_string_lossy)
                    .as_deref()
                    == attachment.as_deref();
            if same {
                return Ok((existing, Added::Existing));
            }
            return Err(RegistryError::IdTaken {
                what: "partition",
                id: id.0,
                name: existing.name,
            });
        }
        check_name_free(&tx, Table::Partitions, name, None)?;
        if !partition_exists(&tx, parent)? {
            return Err(RegistryError::NotFound {
                what: "parent partition",
                key: parent.to_string(),
            });
        }
        let created_at = now();
        tx.execute(
            "INSERT INTO partitions (id, name, parent, kind, attachment, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id.to_string(),
                name,
                parent.to_string(),
                kind.as_str(),
                attachment,
                created_at
            ],
        )
        .map_err(sql("adding a partition"))?;
        tx.commit().map_err(sql("committing a new partition"))?;
        Ok((
            PartitionRecord {
                id,
                name: name.to_owned(),
                parent: Some(parent),
                kind,
                hybrid_vsock: hybrid_vsock.map(Path::to_path_buf),
                created_at,
            },
            Added::Created,
        ))
    }

    /// Removes a partition that has no children.
    pub fn remove_partition(&mut self, id: VmId) -> Result<()> {
        if id == self.root {
            return Err(RegistryError::Root);
        }
        let tx = self
            .conn
            .transaction()
            .map_err(sql("starting a transaction"))?;
        let name: Option<String> = tx
            .query_row(
                "SELECT name FROM partitions WHERE id = ?1",
                [id.to_string()],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql("looking up a partition"))?;
        let Some(name) = name else {
            return Err(RegistryError::NotFound {
                what: "partition",
                key: id.to_string(),
            });
        };
        let children: Vec<String> = tx
            .prepare("SELECT name FROM partitions WHERE parent = ?1 ORDER BY name")
            .and_then(|mut stmt| {
                stmt.query_map([id.to_string()], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .map_err(sql("listing child partitions"))?;
        if !children.is_empty() {
            return Err(RegistryError::HasChildren {
                name,
                children: children.join(", "),
            });
        }
        tx.execute("DELETE FROM partitions WHERE id = ?1", [id.to_string()])
            .map_err(sql("removing a partition"))?;
        prune_policies(&tx, id)?;
        tx.commit().map_err(sql("committing a partition removal"))?;
        Ok(())
    }

    /// Renames a partition (not the root, whose name is fixed).
    pub fn rename_partition(&mut self, id: VmId, name: &str) -> Result<()> {
        if id == self.root {
            return Err(RegistryError::RootName);
        }
        let tx = self
            .conn
            .transaction()
            .map_err(sql("starting a transaction"))?;
        check_name_free(&tx, Table::Partitions, name, Some(id.0))?;
        let changed = tx
            .execute(
                "UPDATE partitions SET name = ?2 WHERE id = ?1",
                params![id.to_string(), name],
            )
            .map_err(sql("renaming a partition"))?;
        if changed == 0 {
            return Err(RegistryError::NotFound {
                what: "partition",
                key: id.to_string(),
            });
        }
        tx.commit().map_err(sql("committing a rename"))
    }
}

fn partition_exists(tx: &Transaction<'_>, id: VmId) -> Result<bool> {
    tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM partitions WHERE id = ?1)",
        [id.to_string()],
        |row| row.get(0),
    )
    .map_err(sql("looking up a partition"))
}

/// Every service, as [`service_columns`] reads a row.
const SELECT_SERVICES: &str = "SELECT id, name, enabled, policy, created_at FROM services";

/// One row of [`SELECT_SERVICES`], as stored.
type ServiceColumns = (String, String, bool, String, i64);

fn service_columns(row: &rusqlite::Row<'_>) -> rusqlite::Result<ServiceColumns> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

/// A service row as a record; a column hvsockd could not have written is [`RegistryError::Corrupt`].
fn service_record(
    (id, name, enabled, policy, created_at): ServiceColumns,
) -> Result<ServiceRecord> {
    Ok(ServiceRecord {
        id: ServiceId(parse_guid("service id", &id)?),
        name,
        enabled,
        policy: policy_from_column(&policy)?,
        created_at,
    })
}

/// The service with `id`, if there is one (`conn` may be a transaction).
fn service_by_id(conn: &Connection, id: ServiceId) -> Result<Option<ServiceRecord>> {
    conn.query_row(
        &format!("{SELECT_SERVICES} WHERE id = ?1"),
        [id.to_string()],
        service_columns,
    )
    .optional()
    .map_err(sql("looking up a service"))?
    .map(service_record)
    .transpose()
}

/// Every partition, as [`partition_columns`] reads a row.
const SELECT_PARTITIONS: &str =
    "SELECT id, name, parent, kind, attachment, created_at FROM partitions";

/// One row of [`SELECT_PARTITIONS`], as stored.
type PartitionColumns = (String, String, Option<String>, String, Option<String>, i64);

fn partition_columns(row: &rusqlite::Row<'_>) -> rusqlite::Result<PartitionColumns> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

/// A partition row as a record; a column hvsockd could not have written is
/// [`RegistryError::Corrupt`].
fn partition_record(
    (id, name, parent, kind, attachment, created_at): PartitionColumns,
) -> Result<PartitionRecord> {
    Ok(PartitionRecord {
        id: VmId(parse_guid("partition id", &id)?),
        name,
        parent: parent
            .map(|p| parse_guid("partition parent", &p).map(VmId))
            .transpose()?,
        kind: parse_kind(&kind)?,
        hybrid_vsock: attachment.map(PathBuf::from),
        created_at,
    })
}

/// Removes partition `id` from every service policy.
fn prune_policies(tx: &Transaction<'_>, id: VmId) -> Result<()> {
    let rows: Vec<(String, String)> = tx
        .prepare("SELECT id, policy FROM services WHERE policy != '{}'")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(sql("reading service policies"))?;
    for (service, text) in rows {
        let Some(policy) = policy_from_column(&text)? else {
            continue;
        };
        let pruned = policy.without(id);
        if pruned != policy {
            tx.execute(
                "UPDATE services SET policy = ?2 WHERE id = ?1",
                params![service, policy_to_column(Some(&pruned))],
            )
            .map_err(sql("updating a service policy"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = Registry::open(&dir.path().join("registry.db")).expect("open");
        (dir, reg)
    }

    #[test]
    fn first_open_creates_a_root_that_survives_reopening() {
        let (dir, reg) = open();
        let root = reg.root();
        let parts = reg.partitions().expect("list");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name, ROOT_NAME);
        assert_eq!(parts[0].kind, PartitionKind::Root);
        drop(reg);
        let again = Registry::open(&dir.path().join("registry.db")).expect("reopen");
        assert_eq!(again.root(), root);
    }

    #[test]
    fn services_add_idempotently_and_clash_clearly() {
        let (_dir, mut reg) = open();
        let id = ServiceId::from_vsock_port(2761);
        assert_eq!(
            reg.add_service(id, "echo", true).expect("add").1,
            Added::Created
        );
        assert_eq!(
            reg.add_service(id, "echo", false).expect("again").1,
            Added::Existing
        );
        let err = reg.add_service(id, "other", true).expect_err("id taken");
        assert!(
            err.to_string().contains("already registered as \"echo\""),
            "{err}"
        );
        let err = reg
            .add_service(ServiceId::from_vsock_port(1), "echo", true)
            .expect_err("name taken");
        assert!(matches!(err, RegistryError::NameTaken { .. }), "{err}");
        reg.set_service_enabled(id, false).expect("disable");
        assert!(!reg.services().expect("list")[0].enabled);
        reg.remove_service(id).expect("remove");
        assert!(matches!(
            reg.remove_service(id),
            Err(RegistryError::NotFound { .. })
        ));
        assert!(reg.services().expect("list").is_empty());
    }

    #[test]
    fn partitions_form_a_tree_and_keep_their_children() {
        let (_dir, mut reg) = open();
        let root = reg.root();
        let a = VmId(Guid::new_random());
        let a1 = VmId(Guid::new_random());
        reg.add_partition(a, "a", root, PartitionKind::Sandbox, None)
            .expect("a");
        reg.add_partition(a1, "a1", a, PartitionKind::Sandbox, None)
            .expect("a1");
        assert_eq!(
            reg.add_partition(a1, "a1", a, PartitionKind::Sandbox, None)
                .expect("again")
                .1,
            Added::Existing
        );
        let missing = VmId(Guid::new_random());
        assert!(matches!(
            reg.add_partition(
                VmId(Guid::new_random()),
                "x",
                missing,
                PartitionKind::Sandbox,
                None
            ),
            Err(RegistryError::NotFound { .. })
        ));
        let err = reg.remove_partition(a).expect_err("has children");
        assert!(err.to_string().contains("(a1)"), "{err}");
        assert!(matches!(
            reg.remove_partition(root),
            Err(RegistryError::Root)
        ));
        reg.remove_partition(a1).expect("a1");
        reg.remove_partition(a).expect("a");
        assert_eq!(reg.partitions().expect("list").len(), 1);
    }

    #[test]
    fn a_registry_from_a_newer_hvsockd_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.db");
        drop(Registry::open(&path).expect("create"));
        let conn = Connection::open(&path).expect("raw open");
        conn.pragma_update(None, "user_version", 99).expect("bump");
        drop(conn);
        let err = Registry::open(&path).expect_err("too new");
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[test]
    fn a_v1_registry_reads_its_default_policy_column_as_no_policy() {
        // Rows written before policies existed hold the column's default, '{}'.
        let (_dir, mut reg) = open();
        reg.conn
            .execute(
                "INSERT INTO services (id, name, enabled, created_at) VALUES (?1, 'old', 1, 0)",
                [ServiceId::from_vsock_port(1).to_string()],
            )
            .expect("insert as v1 did");
        let old = &reg.services().expect("list")[0];
        assert_eq!(old.policy, None);
        // An own policy that allows everything is not "no policy", and survives a round trip.
        let all = Policy::default();
        reg.set_service_policy(old.id, Some(&all)).expect("set");
        assert_eq!(reg.services().expect("list")[0].policy, Some(all));
        reg.set_service_policy(old.id, None).expect("clear");
        assert_eq!(reg.services().expect("list")[0].policy, None);
        // A column hvsockd cannot read is reported, not guessed.
        reg.conn
            .execute("UPDATE services SET policy = '{\"conect\":[]}'", [])
            .expect("corrupt");
        let err = reg.services().expect_err("corrupt");
        assert!(
            err.to_string().contains("unreadable service policy"),
            "{err}"
        );
    }

    #[test]
    fn update_service_is_one_transaction() {
        let (_dir, mut reg) = open();
        let a = ServiceId::from_vsock_port(1);
        reg.add_service(a, "a", true).expect("a");
        reg.add_service(ServiceId::from_vsock_port(2), "b", true)
            .expect("b");
        let policy = Policy {
            connect: Some(vec![reg.root()]),
            ..Policy::default()
        };
        // The rename clashes: neither the switch nor the policy happen.
        let err = reg
            .update_service(a, Some("b"), Some(false), Some(Some(&policy)))
            .expect_err("name taken");
        assert!(matches!(err, RegistryError::NameTaken { .. }), "{err}");
        let unknown = Policy {
            bind: Some(vec![VmId(Guid::new_random())]),
            ..Policy::default()
        };
        let err = reg
            .update_service(a, Some("c"), None, Some(Some(&unknown)))
            .expect_err("unknown partition");
        assert!(
            matches!(err, RegistryError::UnknownPolicyPartition { .. }),
            "{err}"
        );
        let s = reg.service(a).expect("read").expect("a");
        assert_eq!((s.name.as_str(), s.enabled, s.policy), ("a", true, None));
        let s = reg
            .update_service(a, Some("c"), Some(false), Some(Some(&policy)))
            .expect("update");
        assert_eq!(reg.service(a).expect("read"), Some(s));
    }
}
