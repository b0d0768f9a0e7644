//! The registry: services and partitions in SQLite, owned by hvsockd.
//!
//! The schema is versioned with `PRAGMA user_version`; [`Registry::open`] creates it on first
//! start and upgrades older versions in a transaction, and refuses a registry written by a newer
//! hvsockd rather than damage it. Every change is one transaction. The root partition (the host)
//! is a row like any other, with kind `root`, no parent, a random id made at creation, and the
//! name `host`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hvsock::{Guid, ServiceId, VmId};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

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
    /// When it was registered, seconds since the Unix epoch.
    pub created_at: i64,
}

/// What a partition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionKind {
    /// The host.
    Root,
    /// A sandbox or container, reached through its endpoint socket.
    Sandbox,
    /// A VM, reached through its VMM's hybrid-vsock socket.
    Vm,
}

impl PartitionKind {
    fn as_str(self) -> &'static str {
        match self {
            PartitionKind::Root => "root",
            PartitionKind::Sandbox => "sandbox",
            PartitionKind::Vm => "vm",
        }
    }

    fn parse(s: &str) -> Result<PartitionKind> {
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
            tx.commit().map_err(open_err)?;
        }
        let root: String = conn
            .query_row("SELECT id FROM partitions WHERE kind = 'root'", [], |row| {
                row.get(0)
            })
            .map_err(open_err)?;
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
            .prepare_cached("SELECT id, name, enabled, created_at FROM services ORDER BY name")
            .map_err(sql("listing services"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, bool>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .map_err(sql("listing services"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, enabled, created_at) = row.map_err(sql("reading a service"))?;
            out.push(ServiceRecord {
                id: ServiceId(parse_guid("service id", &id)?),
                name,
                enabled,
                created_at,
            });
        }
        Ok(out)
    }

    /// Every partition, the root first, then by name.
    pub fn partitions(&self) -> Result<Vec<PartitionRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, name, parent, kind, attachment, created_at FROM partitions
                 ORDER BY kind != 'root', name",
            )
            .map_err(sql("listing partitions"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })
            .map_err(sql("listing partitions"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, parent, kind, attachment, created_at) =
                row.map_err(sql("reading a partition"))?;
            out.push(PartitionRecord {
                id: VmId(parse_guid("partition id", &id)?),
                name,
                parent: parent
                    .map(|p| parse_guid("partition parent", &p).map(VmId))
                    .transpose()?,
                kind: PartitionKind::parse(&kind)?,
                hybrid_vsock: attachment.map(PathBuf::from),
                created_at,
            });
        }
        Ok(out)
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
        let by_id: Option<(String, bool, i64)> = tx
            .query_row(
                "SELECT name, enabled, created_at FROM services WHERE id = ?1",
                [id.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(sql("looking up a service"))?;
        if let Some((existing, was_enabled, created_at)) = by_id {
            if existing == name {
                return Ok((
                    ServiceRecord {
                        id,
                        name: existing,
                        enabled: was_enabled,
                        created_at,
                    },
                    Added::Existing,
                ));
            }
            return Err(RegistryError::IdTaken {
                what: "service",
                id: id.0,
                name: existing,
            });
        }
        let by_name: Option<String> = tx
            .query_row("SELECT id FROM services WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()
            .map_err(sql("looking up a service"))?;
        if let Some(other) = by_name {
            return Err(RegistryError::NameTaken {
                what: "service",
                name: name.to_owned(),
                id: parse_guid("service id", &other)?,
            });
        }
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
                created_at,
            },
            Added::Created,
        ))
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
        #[allow(clippy::type_complexity)] // one row's columns, read once
        let existing: Option<(String, Option<String>, String, Option<String>, i64)> = tx
            .query_row(
                "SELECT name, parent, kind, attachment, created_at FROM partitions WHERE id = ?1",
                [id.to_string()],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                },
            )
            .optional()
            .map_err(sql("looking up a partition"))?;
        let attachment = hybrid_vsock.map(|p| p.to_string_lossy().into_owned());
        if let Some((old_name, old_parent, old_kind, old_attachment, created_at)) = existing {
            let same = old_name == name
                && old_parent.as_deref() == Some(parent.to_string().as_str())
                && old_kind == kind.as_str()
                && old_attachment == attachment;
            if same {
                return Ok((
                    PartitionRecord {
                        id,
                        name: old_name,
                        parent: Some(parent),
                        kind,
                        hybrid_vsock: hybrid_vsock.map(Path::to_path_buf),
                        created_at,
                    },
                    Added::Existing,
                ));
            }
            return Err(RegistryError::IdTaken {
                what: "partition",
                id: id.0,
                name: old_name,
            });
        }
        let by_name: Option<String> = tx
            .query_row("SELECT id FROM partitions WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()
            .map_err(sql("looking up a partition"))?;
        if let Some(other) = by_name {
            return Err(RegistryError::NameTaken {
                what: "partition",
                name: name.to_owned(),
                id: parse_guid("partition id", &other)?,
            });
        }
        let parent_exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM partitions WHERE id = ?1)",
                [parent.to_string()],
                |row| row.get(0),
            )
            .map_err(sql("looking up a parent partition"))?;
        if !parent_exists {
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
        tx.commit().map_err(sql("committing a partition removal"))?;
        Ok(())
    }
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
}
