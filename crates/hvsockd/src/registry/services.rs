//! Services in the registry: adding, changing, removing, and reading their rows.

use hvsock::ServiceId;
use rusqlite::{Connection, OptionalExtension, params};

use super::*;

impl Registry {
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
                access: None,
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

    /// Sets which host users may connect to a service (`None`: anyone who may use the root's
    /// endpoint).
    pub fn set_service_access(&mut self, id: ServiceId, access: Option<&Access>) -> Result<()> {
        let changed = self
            .conn
            .execute(
                "UPDATE services SET access = ?2 WHERE id = ?1",
                params![id.to_string(), access_to_column(access)],
            )
            .map_err(sql("updating a service's access"))?;
        if changed == 0 {
            return Err(RegistryError::NotFound {
                what: "service",
                key: id.to_string(),
            });
        }
        Ok(())
    }

    /// Registers hvsock's integration services, as hvsockd does in a registry it has just
    /// created (a first start): the VM session and file copy disabled until an administrator
    /// enables them, as Hyper-V does with its Guest Service Interface, and those the agent
    /// serves root-only on the host. A registry that already exists is never changed this way.
    /// Returns one line per service, for the log.
    pub fn register_integration_services(&mut self) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        for s in hvsock_agent::services::ALL {
            let (record, added) = self.add_service(s.id(), s.name, s.enabled_by_default)?;
            if added == Added::Created && s.root_only_by_default {
                self.set_service_access(record.id, Some(&Access::root_only()))?;
            }
            lines.push(format!(
                "integration service {} registered (port {}, {}{})",
                s.name,
                s.port,
                if s.enabled_by_default {
                    "enabled"
                } else {
                    "disabled"
                },
                if s.root_only_by_default {
                    ", root only on the host"
                } else {
                    ""
                }
            ));
        }
        Ok(lines)
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
}

/// Every service, as [`service_columns`] reads a row.
pub(super) const SELECT_SERVICES: &str =
    "SELECT id, name, enabled, policy, created_at, access FROM services";

/// One row of [`SELECT_SERVICES`], as stored.
pub(super) type ServiceColumns = (String, String, bool, String, i64, Option<String>);

pub(super) fn service_columns(row: &rusqlite::Row<'_>) -> rusqlite::Result<ServiceColumns> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

/// A service row as a record; a column hvsockd could not have written is [`RegistryError::Corrupt`].
pub(super) fn service_record(
    (id, name, enabled, policy, created_at, access): ServiceColumns,
) -> Result<ServiceRecord> {
    Ok(ServiceRecord {
        id: ServiceId(parse_guid("service id", &id)?),
        name,
        enabled,
        policy: policy_from_column(&policy)?,
        created_at,
        access: access_from_column(access)?,
    })
}

/// The service with `id`, if there is one (`conn` may be a transaction).
pub(super) fn service_by_id(conn: &Connection, id: ServiceId) -> Result<Option<ServiceRecord>> {
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
