//! Export and import: the registry as one JSON document, to back it up or move it to another
//! host.
//!
//! An [`Export`] holds the root partition's id, every service (id, name, enabled, policy,
//! creation time) and every other partition (id, name, parent, kind, hybrid-vsock path,
//! creation time), in a stable order: services by name, partitions parents first, then by name.
//! Exporting the same registry twice gives the same bytes.
//!
//! [`Registry::import`] applies a document in one transaction, or not at all:
//!
//! - **merge** (the default) adds what is new and sets `enabled` and `policy` of services that
//!   are there already to the document's (and their host-user `access`, when the document has
//!   one: a document without rules never opens a service up); entries the document does not name stay. An entry
//!   whose id or name is already used by a different entry (another name, parent, kind or
//!   attachment) is a conflict; every conflict is listed and nothing changes.
//! - **replace** makes the registry equal to the document: entries it does not name are
//!   removed, and entries it names take its values.
//!
//! The root's id: a registry that holds nothing but its root and services without a policy of
//! their own (a fresh hvsockd, with the integration services it registers), or a replace,
//! adopts the document's root id, so that the moved registry is the same, down to the id that
//! guests may have been given for their host. A merge into a registry that holds anything
//! keeps its own root id, and reads the document's root id as its own (parents and policies
//! that name the old root name this one).
//!
//! Importing the same document twice changes nothing the second time.

use super::*;

/// The `version` this hvsockd writes and reads.
pub const EXPORT_VERSION: u32 = 1;

/// The registry as a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// The document's version ([`EXPORT_VERSION`]).
    pub version: u32,
    /// The root partition's id.
    pub root: VmId,
    /// Every service, by name.
    pub services: Vec<ExportedService>,
    /// Every partition but the root, parents first, then by name.
    pub partitions: Vec<ExportedPartition>,
}

/// A service in an [`Export`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedService {
    /// Its GUID.
    pub id: ServiceId,
    /// Its friendly name.
    pub name: String,
    /// Whether connections across partitions may reach it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Its own policy (partitions by id); absent or `null`: the default policy applies.
    #[serde(default)]
    pub policy: Option<Policy>,
    /// When it was registered (seconds since the Unix epoch); kept by an import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    /// The host users it allows; absent or `null`: anyone who may use the root's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

/// A partition in an [`Export`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedPartition {
    /// Its VmId.
    pub id: VmId,
    /// Its name.
    pub name: String,
    /// Its parent: the root's id or another partition of the document.
    pub parent: VmId,
    /// `sandbox` or `vm`.
    #[serde(default = "sandbox")]
    pub kind: PartitionKind,
    /// For a VM: its VMM's hybrid-vsock socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid_vsock: Option<PathBuf>,
    /// When it was added (seconds since the Unix epoch); kept by an import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
}

fn yes() -> bool {
    true
}

fn sandbox() -> PartitionKind {
    PartitionKind::Sandbox
}

pub use hvsock_api::{Counts, ImportMode, ImportReport};

/// The part of a partition that is its identity in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    name: String,
    parent: VmId,
    kind: PartitionKind,
    hybrid_vsock: Option<PathBuf>,
    created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Svc {
    name: String,
    enabled: bool,
    policy: Option<Policy>,
    created_at: i64,
    access: Option<Access>,
}

fn invalid(message: String) -> RegistryError {
    RegistryError::InvalidImport(message)
}

/// Checks a document on its own: version, names, ids, the tree, policies.
fn validate(doc: &Export) -> Result<()> {
    if doc.version != EXPORT_VERSION {
        return Err(invalid(format!(
            "version {} is not one this hvsockd reads ({EXPORT_VERSION})",
            doc.version
        )));
    }
    if doc.root.is_well_known() {
        return Err(invalid(format!(
            "root {} is a well-known VmId and cannot be a partition's id",
            doc.root
        )));
    }
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    for s in &doc.services {
        hvsock::addr::check_service_name(&s.name)
            .map_err(|e| invalid(format!("service {}: {e}", s.id)))?;
        if !names.insert(s.name.as_str()) {
            return Err(invalid(format!("two services are named {:?}", s.name)));
        }
        if !ids.insert(s.id.0) {
            return Err(invalid(format!("two services have the id {}", s.id)));
        }
    }
    let mut parents: HashMap<VmId, VmId> = HashMap::new();
    let mut kinds: HashMap<VmId, PartitionKind> = HashMap::new();
    let mut names = HashSet::from([ROOT_NAME]);
    let mut paths: HashSet<&Path> = HashSet::new();
    for p in &doc.partitions {
        hvsock::addr::check_partition_name(&p.name)
            .map_err(|e| invalid(format!("partition {}: {e}", p.id)))?;
        if !names.insert(p.name.as_str()) {
            return Err(invalid(format!(
                "partition name {:?} is used twice (the root is {ROOT_NAME:?})",
                p.name
            )));
        }
        if p.id.is_well_known() || p.id == doc.root {
            return Err(invalid(format!(
                "partition {:?} has the id {}, which is well-known or the root's",
                p.name, p.id
            )));
        }
        if parents.insert(p.id, p.parent).is_some() {
            return Err(invalid(format!("two partitions have the id {}", p.id)));
        }
        match (p.kind, &p.hybrid_vsock) {
            (PartitionKind::Root, _) => {
                return Err(invalid(format!(
                    "partition {:?} has kind root; the document's root is only its `root` id",
                    p.name
                )));
            }
            (PartitionKind::Vm, None) => {
                return Err(invalid(format!("VM {:?} has no hybrid_vsock path", p.name)));
            }
            (PartitionKind::Vm, Some(path)) if !path.is_absolute() => {
                return Err(invalid(format!(
                    "VM {:?} has the hybrid_vsock path {}, which is not absolute",
                    p.name,
                    path.display()
                )));
            }
            (PartitionKind::Vm, Some(path)) if !paths.insert(path.as_path()) => {
                return Err(invalid(format!(
                    "the hybrid_vsock path {} is given to two VMs",
                    path.display()
                )));
            }
            (PartitionKind::Sandbox, Some(_)) => {
                return Err(invalid(format!(
                    "sandbox {:?} has a hybrid_vsock path; only VMs do",
                    p.name
                )));
            }
            _ => {}
        }
        kinds.insert(p.id, p.kind);
    }
    for p in &doc.partitions {
        // Walk up to the root; more steps than partitions means a cycle.
        let mut at = p.parent;
        let mut steps = 0;
        while at != doc.root {
            let Some(&up) = parents.get(&at) else {
                return Err(invalid(format!(
                    "partition {:?} has parent {at}, which is neither the root nor a partition of the document",
                    p.name
                )));
            };
            steps += 1;
            if steps > parents.len() {
                return Err(invalid(format!(
                    "partition {:?} is its own ancestor",
                    p.name
                )));
            }
            at = up;
        }
        if kinds.get(&p.parent) == Some(&PartitionKind::Vm) {
            return Err(invalid(format!(
                "partition {:?} has a VM as parent; a guest that hosts its own sandboxes runs its own hvsockd",
                p.name
            )));
        }
    }
    for s in &doc.services {
        for id in s.policy.iter().flat_map(Policy::partitions) {
            if id != doc.root && !parents.contains_key(&id) {
                return Err(invalid(format!(
                    "the policy of service {:?} names partition {id}, which is not in the document",
                    s.name
                )));
            }
        }
    }
    Ok(())
}

/// Partitions parents first, then by name.
fn tree_order(root: VmId, nodes: &BTreeMap<VmId, Node>) -> Vec<VmId> {
    let depth = |mut id: VmId| {
        let mut d = 0usize;
        while id != root && d <= nodes.len() {
            match nodes.get(&id) {
                Some(n) => id = n.parent,
                None => break,
            }
            d += 1;
        }
        d
    };
    let mut ids: Vec<VmId> = nodes.keys().copied().collect();
    ids.sort_by(|a, b| (depth(*a), &nodes[a].name).cmp(&(depth(*b), &nodes[b].name)));
    ids
}

impl Registry {
    fn load_state(&self) -> Result<(BTreeMap<ServiceId, Svc>, BTreeMap<VmId, Node>)> {
        let services = self
            .services()?
            .into_iter()
            .map(|s| {
                (
                    s.id,
                    Svc {
                        name: s.name,
                        enabled: s.enabled,
                        policy: s.policy,
                        created_at: s.created_at,
                        access: s.access,
                    },
                )
            })
            .collect();
        let mut nodes = BTreeMap::new();
        for p in self.partitions()? {
            let Some(parent) = p.parent else { continue };
            nodes.insert(
                p.id,
                Node {
                    name: p.name,
                    parent,
                    kind: p.kind,
                    hybrid_vsock: p.hybrid_vsock,
                    created_at: p.created_at,
                },
            );
        }
        Ok((services, nodes))
    }

    /// The registry as a document.
    pub fn export(&self) -> Result<Export> {
        let (services, nodes) = self.load_state()?;
        let mut services: Vec<ExportedService> = services
            .into_iter()
            .map(|(id, s)| ExportedService {
                id,
                name: s.name,
                enabled: s.enabled,
                policy: s.policy,
                created_at: Some(s.created_at),
                access: s.access,
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let partitions = tree_order(self.root, &nodes)
            .into_iter()
            .map(|id| {
                let n = &nodes[&id];
                ExportedPartition {
                    id,
                    name: n.name.clone(),
                    parent: n.parent,
                    kind: n.kind,
                    hybrid_vsock: n.hybrid_vsock.clone(),
                    created_at: Some(n.created_at),
                }
            })
            .collect();
        Ok(Export {
            version: EXPORT_VERSION,
            root: self.root,
            services,
            partitions,
        })
    }

    /// Applies `doc` (see the module docs); with `dry_run`, says what would change and
    /// changes nothing.
    pub fn import(
        &mut self,
        doc: &Export,
        mode: ImportMode,
        dry_run: bool,
    ) -> Result<ImportReport> {
        let (mut report, services, nodes) = self.compute_import(doc, mode)?;
        report.dry_run = dry_run;
        if dry_run || !report.changed() {
            return Ok(report);
        }
        self.write_all(report.root, &services, &nodes)?;
        self.root = report.root;
        Ok(report)
    }

    /// What [`Registry::import`] would do, changing nothing.
    pub fn import_dry_run(&self, doc: &Export, mode: ImportMode) -> Result<ImportReport> {
        let (mut report, _, _) = self.compute_import(doc, mode)?;
        report.dry_run = true;
        Ok(report)
    }

    #[allow(clippy::type_complexity)] // the report and the registry it leads to
    fn compute_import(
        &self,
        doc: &Export,
        mode: ImportMode,
    ) -> Result<(ImportReport, BTreeMap<ServiceId, Svc>, BTreeMap<VmId, Node>)> {
        validate(doc)?;
        let (before_services, before_nodes) = self.load_state()?;
        // Fresh: nothing but the root and services that name no partition (the integration
        // services a first start registers), so nothing holds the root's id yet.
        let fresh = before_nodes.is_empty() && before_services.values().all(|s| s.policy.is_none());
        let adopt = fresh || mode == ImportMode::Replace;
        let root = if adopt { doc.root } else { self.root };
        // The document's root reads as the registry's root.
        let map = |id: VmId| if id == doc.root { root } else { id };
        let now = now();

        let (mut services, mut nodes) = match mode {
            ImportMode::Merge => (before_services.clone(), before_nodes.clone()),
            ImportMode::Replace => (BTreeMap::new(), BTreeMap::new()),
        };
        let mut conflicts = Vec::new();
        for p in &doc.partitions {
            let node = Node {
                name: p.name.clone(),
                parent: map(p.parent),
                kind: p.kind,
                hybrid_vsock: p.hybrid_vsock.clone(),
                created_at: p
                    .created_at
                    .or_else(|| before_nodes.get(&p.id).map(|n| n.created_at))
                    .unwrap_or(now),
            };
            if mode == ImportMode::Merge {
                if p.id == self.root && !adopt {
                    conflicts.push(format!(
                        "partition {:?} ({}) has the id of this registry's root",
                        p.name, p.id
                    ));
                    continue;
                }
                if let Some(old) = nodes.get(&p.id) {
                    let mut differs = Vec::new();
                    if old.name != node.name {
                        differs.push(format!("named {:?}", old.name));
                    }
                    if old.parent != node.parent {
                        differs.push(format!("parent {}", old.parent));
                    }
                    if old.kind != node.kind {
                        differs.push(format!("kind {}", old.kind.as_str()));
                    }
                    if old.hybrid_vsock != node.hybrid_vsock {
                        differs.push(match &old.hybrid_vsock {
                            Some(path) => format!("attached at {}", path.display()),
                            None => "no attachment".to_owned(),
                        });
                    }
                    if !differs.is_empty() {
                        conflicts.push(format!(
                            "partition {} is here with {}, the document has it as {:?}",
                            p.id,
                            differs.join(", "),
                            p.name
                        ));
                    }
                    continue;
                }
                if let Some((id, _)) = nodes.iter().find(|(_, n)| n.name == p.name) {
                    conflicts.push(format!(
                        "partition name {:?} is used here by {id}, the document gives it to {}",
                        p.name, p.id
                    ));
                    continue;
                }
            }
            nodes.insert(p.id, node);
        }
        for s in &doc.services {
            let policy = s.policy.as_ref().map(|p| p.mapped(doc.root, root));
            if mode == ImportMode::Merge {
                if let Some(old) = services.get_mut(&s.id) {
                    if old.name != s.name {
                        conflicts.push(format!(
                            "service {} is here named {:?}, the document names it {:?}",
                            s.id, old.name, s.name
                        ));
                    } else {
                        old.enabled = s.enabled;
                        old.policy = policy;
                        // A document without rules (an older export) never opens a service
                        // up: the rules here stay.
                        if s.access.is_some() {
                            old.access = s.access.clone();
                        }
                    }
                    continue;
                }
                if let Some((id, _)) = services.iter().find(|(_, o)| o.name == s.name) {
                    conflicts.push(format!(
                        "service name {:?} is used here by {id}, the document gives it to {}",
                        s.name, s.id
                    ));
                    continue;
                }
            }
            let created_at = s
                .created_at
                .or_else(|| before_services.get(&s.id).map(|o| o.created_at))
                .unwrap_or(now);
            services.insert(
                s.id,
                Svc {
                    name: s.name.clone(),
                    enabled: s.enabled,
                    policy,
                    created_at,
                    access: s.access.clone(),
                },
            );
        }
        if !conflicts.is_empty() {
            return Err(RegistryError::Conflicts(conflicts));
        }

        let mut report = ImportReport {
            mode,
            dry_run: false,
            root,
            root_adopted: root != self.root,
            services: Counts::default(),
            partitions: Counts::default(),
            changes: Vec::new(),
        };
        if report.root_adopted {
            report
                .changes
                .push(format!("root id {} replaced by {root}", self.root));
        }
        for (id, s) in &services {
            match before_services.get(id) {
                None => {
                    report.services.created += 1;
                    report.changes.push(format!("service {:?} created", s.name));
                }
                Some(old)
                    if (&old.name, old.enabled, &old.policy, &old.access)
                        != (&s.name, s.enabled, &s.policy, &s.access) =>
                {
                    report.services.updated += 1;
                    report.changes.push(format!("service {:?} updated", s.name));
                }
                Some(_) => report.services.unchanged += 1,
            }
        }
        for (id, old) in &before_services {
            if !services.contains_key(id) {
                report.services.removed += 1;
                report
                    .changes
                    .push(format!("service {:?} removed", old.name));
            }
        }
        for (id, n) in &nodes {
            match before_nodes.get(id) {
                None => {
                    report.partitions.created += 1;
                    report
                        .changes
                        .push(format!("partition {:?} created", n.name));
                }
                Some(old)
                    if (&old.name, old.parent, old.kind, &old.hybrid_vsock)
                        != (&n.name, n.parent, n.kind, &n.hybrid_vsock) =>
                {
                    report.partitions.updated += 1;
                    report
                        .changes
                        .push(format!("partition {:?} updated", n.name));
                }
                Some(_) => report.partitions.unchanged += 1,
            }
        }
        for (id, old) in &before_nodes {
            if !nodes.contains_key(id) {
                report.partitions.removed += 1;
                report
                    .changes
                    .push(format!("partition {:?} removed", old.name));
            }
        }
        Ok((report, services, nodes))
    }

    /// Rewrites the registry to hold exactly `services` and `nodes` under `root`, in one
    /// transaction.
    fn write_all(
        &mut self,
        root: VmId,
        services: &BTreeMap<ServiceId, Svc>,
        nodes: &BTreeMap<VmId, Node>,
    ) -> Result<()> {
        let old_root = self.root;
        let tx = self.conn.transaction().map_err(sql("starting an import"))?;
        tx.pragma_update(None, "defer_foreign_keys", true)
            .map_err(sql("deferring foreign keys"))?;
        tx.execute("DELETE FROM services", [])
            .map_err(sql("clearing services"))?;
        tx.execute("DELETE FROM partitions WHERE kind != 'root'", [])
            .map_err(sql("clearing partitions"))?;
        tx.execute(
            "UPDATE partitions SET id = ?2 WHERE id = ?1 AND kind = 'root'",
            params![old_root.to_string(), root.to_string()],
        )
        .map_err(sql("setting the root's id"))?;
        for (id, s) in services {
            tx.execute(
                "INSERT INTO services (id, name, enabled, policy, created_at, access)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id.to_string(),
                    s.name,
                    s.enabled,
                    policy_to_column(s.policy.as_ref()),
                    s.created_at,
                    access_to_column(s.access.as_ref())
                ],
            )
            .map_err(sql("importing a service"))?;
        }
        for id in tree_order(root, nodes) {
            let n = &nodes[&id];
            tx.execute(
                "INSERT INTO partitions (id, name, parent, kind, attachment, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id.to_string(),
                    n.name,
                    n.parent.to_string(),
                    n.kind.as_str(),
                    n.hybrid_vsock
                        .as_ref()
                        .map(|p| p.to_string_lossy().into_owned()),
                    n.created_at
                ],
            )
            .map_err(sql("importing a partition"))?;
        }
        super::kvp::drop_orphans(&tx)?;
        tx.commit().map_err(sql("committing an import"))
    }
}

#[cfg(test)]
mod tests;
