//! Partitions in the registry: adding, renaming, removing (with the policies that name them),
//! and reading their rows.

use std::path::{Path, PathBuf};

use hvsock::VmId;
use rusqlite::{OptionalExtension, Transaction, params};

use super::*;

impl Registry {
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
        super::kvp::drop_orphans(&tx)?;
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

/// Every partition, as [`partition_columns`] reads a row.
pub(super) const SELECT_PARTITIONS: &str =
    "SELECT id, name, parent, kind, attachment, created_at FROM partitions";

/// One row of [`SELECT_PARTITIONS`], as stored.
pub(super) type PartitionColumns = (String, String, Option<String>, String, Option<String>, i64);

pub(super) fn partition_columns(row: &rusqlite::Row<'_>) -> rusqlite::Result<PartitionColumns> {
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
pub(super) fn partition_record(
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
pub(super) fn prune_policies(tx: &Transaction<'_>, id: VmId) -> Result<()> {
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
