//! The host's key-value pools (schema 3, table `kvp`): what `hvsock kvp set` gives each
//! partition's guest, kept here so that it can be set while the guest is down and survives
//! restarts and upgrades. A partition's pairs go with it (removal, or an import that drops it).
//! Keys and values are checked as the agent checks them ([`hvsock_agent::kvp`]), and a pool
//! holds at most [`hvsock_agent::kvp::MAX_PAIRS`] pairs.

use std::collections::{BTreeMap, HashMap};

use hvsock::VmId;
use hvsock_agent::kvp::{MAX_PAIRS, check_key, check_value};
use rusqlite::{OptionalExtension, Transaction, params};

use super::*;

/// The table, added by schema version 3. No foreign key: an import rewrites `partitions`
/// and keeps the pairs of partitions it keeps; [`drop_orphans`] removes the others.
pub(super) const SCHEMA_V3: &str = "
CREATE TABLE kvp (
    partition  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (partition, key)
) WITHOUT ROWID;
";

/// What [`Registry::kvp_set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvpSet {
    /// A new key.
    Created,
    /// The key was there; its value is replaced (or was the same).
    Replaced,
}

impl Registry {
    /// Every partition's host pool.
    pub fn kvp_pools(&self) -> Result<HashMap<VmId, BTreeMap<String, String>>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT partition, key, value FROM kvp")
            .map_err(sql("listing key-value pairs"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(sql("listing key-value pairs"))?;
        let mut pools: HashMap<VmId, BTreeMap<String, String>> = HashMap::new();
        for row in rows {
            let (partition, key, value) = row.map_err(sql("reading a key-value pair"))?;
            let id = VmId(parse_guid("key-value partition", &partition)?);
            pools.entry(id).or_default().insert(key, value);
        }
        Ok(pools)
    }

    /// Sets `key` to `value` in the host pool of partition `id`.
    pub fn kvp_set(&mut self, id: VmId, key: &str, value: &str) -> Result<KvpSet> {
        check_key(key).map_err(RegistryError::InvalidKvp)?;
        check_value(value).map_err(RegistryError::InvalidKvp)?;
        let tx = self
            .conn
            .transaction()
            .map_err(sql("starting a transaction"))?;
        kvp_partition(&tx, id)?;
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM kvp WHERE partition = ?1 AND key = ?2)",
                params![id.to_string(), key],
                |row| row.get(0),
            )
            .map_err(sql("looking up a key"))?;
        if !exists {
            let count: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM kvp WHERE partition = ?1",
                    [id.to_string()],
                    |row| row.get(0),
                )
                .map_err(sql("counting keys"))?;
            if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_PAIRS {
                return Err(RegistryError::KvpFull { max: MAX_PAIRS });
            }
        }
        tx.execute(
            "INSERT INTO kvp (partition, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (partition, key) DO UPDATE SET value = ?3, updated_at = ?4",
            params![id.to_string(), key, value, now()],
        )
        .map_err(sql("setting a key"))?;
        tx.commit().map_err(sql("committing a key"))?;
        Ok(if exists {
            KvpSet::Replaced
        } else {
            KvpSet::Created
        })
    }

    /// Deletes `key` from the host pool of partition `id`; whether it was there.
    pub fn kvp_delete(&mut self, id: VmId, key: &str) -> Result<bool> {
        check_key(key).map_err(RegistryError::InvalidKvp)?;
        let tx = self
            .conn
            .transaction()
            .map_err(sql("starting a transaction"))?;
        kvp_partition(&tx, id)?;
        let n = tx
            .execute(
                "DELETE FROM kvp WHERE partition = ?1 AND key = ?2",
                params![id.to_string(), key],
            )
            .map_err(sql("deleting a key"))?;
        tx.commit().map_err(sql("committing a key deletion"))?;
        Ok(n > 0)
    }
}

/// Fails unless `id` is a partition that can have a pool (not the root).
fn kvp_partition(tx: &Transaction<'_>, id: VmId) -> Result<()> {
    let kind: Option<String> = tx
        .query_row(
            "SELECT kind FROM partitions WHERE id = ?1",
            [id.to_string()],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql("looking up a partition"))?;
    match kind.as_deref() {
        None => Err(RegistryError::NotFound {
            what: "partition",
            key: id.to_string(),
        }),
        Some("root") => Err(RegistryError::InvalidKvp(
            "the host (root partition) has no key-value pool: name a sandbox or VM".into(),
        )),
        Some(_) => Ok(()),
    }
}

/// Removes the pairs of partitions that are no longer in the registry.
pub(super) fn drop_orphans(tx: &Transaction<'_>) -> Result<()> {
    tx.execute(
        "DELETE FROM kvp WHERE partition NOT IN (SELECT id FROM partitions)",
        [],
    )
    .map_err(sql("removing the key-value pairs of removed partitions"))?;
    Ok(())
}
