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
//! Schema 3 adds each partition's host key-value pool (table `kvp`, see `registry/kvp.rs`),
//! removed with its partition. It is not part of an [`Export`] document.
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

mod kvp;
mod partitions;
mod services;
mod transfer;

use partitions::{SELECT_PARTITIONS, partition_columns, partition_record};
use services::{SELECT_SERVICES, service_by_id, service_columns, service_record};

pub use kvp::KvpSet;
pub use transfer::{
    Counts, EXPORT_VERSION, Export, ExportedPartition, ExportedService, ImportMode, ImportReport,
};

/// The schema version this hvsockd writes.
pub const SCHEMA_VERSION: i64 = 3;

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

/// Version 2: the host users a service allows (`access`, JSON [`Access`]; `NULL`: any user
/// who may use the root's endpoint).
const SCHEMA_V2: &str = "ALTER TABLE services ADD COLUMN access TEXT;";

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
    /// A key or value of a key-value pool is refused (or the partition has no pool).
    #[error("{0}")]
    InvalidKvp(String),
    /// A partition's host key-value pool is full.
    #[error(
        "the host key-value pool of this partition already holds {max} keys, the most it may: delete some first"
    )]
    KvpFull {
        /// The bound.
        max: usize,
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
    /// The host users it allows (connects through the root's endpoint); `None`: anyone who
    /// may use that endpoint.
    pub access: Option<Access>,
}

/// Which host users may connect to a service through the root partition's endpoint
/// (`host.sock`): root always, then the users listed and the members of the groups listed
/// (the connecting process's primary or supplementary groups). Empty lists: root only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Allowed uids.
    #[serde(default)]
    pub users: Vec<u32>,
    /// Allowed gids.
    #[serde(default)]
    pub groups: Vec<u32>,
}

impl Access {
    /// Root only.
    pub fn root_only() -> Access {
        Access::default()
    }

    /// Whether a process with `uid` and `groups` (primary and supplementary gids) may connect.
    pub fn allows(&self, uid: u32, groups: &[u32]) -> bool {
        uid == 0 || self.users.contains(&uid) || groups.iter().any(|g| self.groups.contains(g))
    }
}

fn access_to_column(access: Option<&Access>) -> Option<String> {
    access.map(|a| serde_json::to_string(a).unwrap_or_else(|_| "{}".to_owned()))
}

fn access_from_column(text: Option<String>) -> Result<Option<Access>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|_| RegistryError::Corrupt {
            what: "service access",
            value: t.clone(),
        })
    })
    .transpose()
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
    created: bool,
}

/// `t` as the registry and the admin API write times: whole seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Now, as [`unix_secs`].
pub fn now() -> i64 {
    unix_secs(SystemTime::now())
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
        let created = version < 1;
        if created {
            Registry::create_schema(&mut conn, path)?;
        } else if version < SCHEMA_VERSION {
            Registry::upgrade(&mut conn, path, version)?;
        }
        let mut registry = Registry::finish_open(conn, path)?;
        registry.created = created;
        Ok(registry)
    }

    /// Whether [`Registry::open`] created it (a first start).
    pub fn created(&self) -> bool {
        self.created
    }

    fn upgrade(conn: &mut Connection, path: &Path, from: i64) -> Result<()> {
        let open_err = |source| RegistryError::Open {
            path: path.to_owned(),
            source,
        };
        let tx = conn.transaction().map_err(open_err)?;
        if from < 2 {
            tx.execute_batch(SCHEMA_V2).map_err(open_err)?;
        }
        if from < 3 {
            tx.execute_batch(kvp::SCHEMA_V3).map_err(open_err)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err)?;
        tx.commit().map_err(open_err)?;
        tracing::info!(registry = %path.display(), "registry upgraded from schema {from} to {SCHEMA_VERSION}");
        Ok(())
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
        if version < 2 {
            // Read as the current schema without writing: a temporary view (searched before
            // the database's own tables) adds the column version 2 brought.
            conn.execute_batch(
                "CREATE TEMP VIEW services AS SELECT *, NULL AS access FROM main.services",
            )
            .map_err(open_err)?;
        }
        if version < 3 {
            // Likewise the table version 3 brought, empty.
            conn.execute_batch(&kvp::SCHEMA_V3.replace("CREATE TABLE", "CREATE TEMP TABLE"))
                .map_err(open_err)?;
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
        tx.execute_batch(SCHEMA_V2).map_err(open_err)?;
        tx.execute_batch(kvp::SCHEMA_V3).map_err(open_err)?;
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
            created: false,
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
}

/// Whether partition `id` exists.
fn partition_exists(tx: &Transaction<'_>, id: VmId) -> Result<bool> {
    tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM partitions WHERE id = ?1)",
        [id.to_string()],
        |row| row.get(0),
    )
    .map_err(sql("looking up a partition"))
}

#[cfg(test)]
mod tests;
