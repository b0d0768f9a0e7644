//! The JSON objects of hvsockd's admin API (HTTP/1.1 + JSON on `admin.sock`, under `/v1/`),
//! defined once for both ends: hvsockd serialises them, the `hvsock` CLI reads them.
//!
//! The OpenAPI document `crates/hvsockd/openapi.json` describes the same objects; a test in
//! hvsockd (`admin::tests::schemas`) checks every component schema against these types: the
//! answers hvsockd serves validate against their schemas (properties, required members, JSON
//! types, nullability), each schema names exactly the members the type has, and a body built
//! from a request schema deserialises into its type.
//!
//! | type | JSON | route |
//! | --- | --- | --- |
//! | [`Host`] | `Host` | `GET /v1/host` |
//! | [`Service`] | `Service` | `GET /v1/services[/{key}]` |
//! | [`NewService`] / [`ServicePatch`] / [`PolicyPatch`] | request bodies | `POST /v1/services`, `PATCH /v1/services/{key}` |
//! | [`Partition`] | `Partition` | `GET /v1/partitions[/{key}]` |
//! | [`NewPartition`] / [`PartitionPatch`] | request bodies | `POST /v1/partitions`, `PATCH /v1/partitions/{key}` |
//! | [`Listener`] | `Listener` | `GET /v1/listeners` |
//! | [`Attachment`] / [`GuestPort`] | `Attachment` | `GET /v1/attachments` |
//! | [`Stats`] | `Stats` | `GET /v1/stats` |
//! | [`ImportReport`] | `ImportReport` | `POST /v1/registry` |
//! | [`Kvp`] / [`GuestKvp`] | `Kvp` | `GET /v1/partitions/{key}/kvp` |
//! | [`KvpPair`] | `KvpPair` | `GET`/`PUT /v1/partitions/{key}/kvp/{name}` |
//! | [`KvpValue`] | request body | `PUT /v1/partitions/{key}/kvp/{name}` |
//! | [`ErrorBody`] | `Error` | every error answer |
//!
//! Reading is lenient: members a newer hvsockd adds are ignored, and members an older one
//! lacks take their defaults (`#[serde(default)]`), so that the CLI and the daemon can be
//! upgraded one at a time. Writing is exact: every member is written, `null` where absent,
//! in the order shown, except in request bodies, where an absent member is left out (JSON
//! merge patch tells absent from `null`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use hvsock::{ServiceId, VmId};
use serde::{Deserialize, Deserializer, Serialize};

fn yes() -> bool {
    true
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
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionKind::Root => "root",
            PartitionKind::Sandbox => "sandbox",
            PartitionKind::Vm => "vm",
        }
    }
}

impl fmt::Display for PartitionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an import treats what the registry holds already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportMode {
    /// Add and update; keep entries the document does not name.
    Merge,
    /// Make the registry equal to the document.
    Replace,
}

impl fmt::Display for ImportMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImportMode::Merge => "merge",
            ImportMode::Replace => "replace",
        })
    }
}

/// How many entries of a kind an import created, updated, left alone and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// New entries.
    #[serde(default)]
    pub created: u64,
    /// Entries whose values changed.
    #[serde(default)]
    pub updated: u64,
    /// Entries already as the document has them.
    #[serde(default)]
    pub unchanged: u64,
    /// Entries removed (replace only).
    #[serde(default)]
    pub removed: u64,
}

/// What an import did (or, for a dry run, would do): `POST /v1/registry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// The mode.
    pub mode: ImportMode,
    /// Whether nothing was written because it was a dry run.
    #[serde(default)]
    pub dry_run: bool,
    /// The root's id after the import.
    pub root: VmId,
    /// Whether the root took the document's id.
    #[serde(default)]
    pub root_adopted: bool,
    /// Services.
    #[serde(default)]
    pub services: Counts,
    /// Partitions (the root not counted).
    #[serde(default)]
    pub partitions: Counts,
    /// One line per change, for people (`service "echo" created`).
    #[serde(default)]
    pub changes: Vec<String>,
}

impl ImportReport {
    /// Whether the import changed (or would change) anything.
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// A partition named in a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRef {
    /// Its VmId.
    pub id: VmId,
    /// Its name (its id, if it is gone).
    pub name: String,
}

/// A service's policy as hvsockd shows it: partitions with their names; a `null` list allows
/// every partition, an empty one none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Partitions that may connect across a partition boundary; `None`: any.
    #[serde(default)]
    pub connect: Option<Vec<PartitionRef>>,
    /// Partitions that may bind the service; `None`: any.
    #[serde(default)]
    pub bind: Option<Vec<PartitionRef>>,
    /// Whether wildcard (ZERO) binds are allowed.
    #[serde(default = "yes")]
    pub wildcard_bind: bool,
}

impl Default for Policy {
    /// The policy that allows everything.
    fn default() -> Policy {
        Policy {
            connect: None,
            bind: None,
            wildcard_bind: true,
        }
    }
}

/// The root partition and the daemon: `GET /v1/host`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// The root partition's VmId.
    pub id: VmId,
    /// The root partition's name (`host`).
    #[serde(default)]
    pub name: String,
    /// hvsockd's version.
    #[serde(default)]
    pub version: String,
    /// Where the registry lives.
    #[serde(default)]
    pub state_dir: PathBuf,
    /// Where the sockets live.
    #[serde(default)]
    pub run_dir: PathBuf,
    /// The root partition's endpoint (`host.sock`).
    #[serde(default)]
    pub endpoint: PathBuf,
    /// Seconds since hvsockd started.
    #[serde(default)]
    pub uptime_seconds: u64,
    /// The policy of services that have none of their own.
    #[serde(default)]
    pub default_policy: Policy,
}

/// A registered service: `GET /v1/services/{id-or-name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Its GUID.
    pub id: ServiceId,
    /// Its friendly name.
    pub name: String,
    /// Whether connections across partitions may reach it.
    pub enabled: bool,
    /// The vsock port, if its GUID follows the vsock template.
    #[serde(default)]
    pub vsock_port: Option<u32>,
    /// Bound listeners.
    #[serde(default)]
    pub listeners: u64,
    /// When it was registered, seconds since the Unix epoch.
    #[serde(default)]
    pub created_at: i64,
    /// Its own policy; `None`: the default applies.
    #[serde(default)]
    pub policy: Option<Policy>,
    /// The policy that applies (its own, else the default); hvsockd always sends it (`None`
    /// only from an hvsockd older than policies).
    #[serde(default)]
    pub effective_policy: Option<Policy>,
    /// Which host users may connect to it through the root's endpoint; `None`: whoever may
    /// use that endpoint.
    #[serde(default)]
    pub access: Option<Access>,
}

/// A service's host-user rules: root always, then these users and the members of these
/// groups; both empty: root only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Allowed users.
    #[serde(default)]
    pub users: Vec<Account>,
    /// Allowed groups.
    #[serde(default)]
    pub groups: Vec<Account>,
}

/// A host user or group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Its uid or gid.
    pub id: u32,
    /// Its name (the number, if the host has no name for it).
    pub name: String,
}

/// A partition: `GET /v1/partitions/{id-or-name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partition {
    /// Its VmId.
    pub id: VmId,
    /// Its name (`host` for the root).
    pub name: String,
    /// What it is.
    pub kind: PartitionKind,
    /// Its parent; `None` for the root.
    #[serde(default)]
    pub parent: Option<VmId>,
    /// Its parent's name.
    #[serde(default)]
    pub parent_name: Option<String>,
    /// Its children's names.
    #[serde(default)]
    pub children: Vec<String>,
    /// Its endpoint socket, if open.
    #[serde(default)]
    pub endpoint: Option<PathBuf>,
    /// For a VM: the VMM's hybrid-vsock socket.
    #[serde(default)]
    pub hybrid_vsock: Option<PathBuf>,
    /// For a VM: the guest ports hvsockd listens on (`PATH_<port>`), those of host services
    /// the guest may reach now.
    #[serde(default)]
    pub guest_ports: Vec<u32>,
    /// Connected clients (sessions) on its endpoint.
    #[serde(default)]
    pub sessions: u64,
    /// Bound listeners in it.
    #[serde(default)]
    pub listeners: u64,
    /// When it was added, seconds since the Unix epoch.
    #[serde(default)]
    pub created_at: i64,
    /// What hvsockd knows of its guest agent (heartbeat and time services); `None` for the
    /// root.
    #[serde(default)]
    pub guest: Option<Guest>,
}

/// A partition's guest as its agent reported it over the heartbeat and time services
/// hvsockd serves (in hvsockd's memory: after a restart, `no_contact` until the agent is back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guest {
    /// `no_contact`, `ok` or `lost`.
    pub state: GuestState,
    /// When the last heartbeat came, seconds since the Unix epoch.
    #[serde(default)]
    pub last_heartbeat: Option<i64>,
    /// How long ago the last heartbeat came, in milliseconds.
    #[serde(default)]
    pub heartbeat_age_ms: Option<u64>,
    /// The agent's version.
    #[serde(default)]
    pub agent: Option<String>,
    /// The guest's OS (`PRETTY_NAME` of its os-release).
    #[serde(default)]
    pub os: Option<String>,
    /// The guest's kernel release.
    #[serde(default)]
    pub kernel: Option<String>,
    /// The guest's hostname.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The last clock offset the agent measured, in nanoseconds: how far the guest was behind
    /// the host (negative: ahead), before it set its clock if it did.
    #[serde(default)]
    pub time_offset_ns: Option<i64>,
    /// That measurement's round trip, in nanoseconds.
    #[serde(default)]
    pub time_delay_ns: Option<i64>,
    /// Whether the agent stepped the guest's clock after that measurement.
    #[serde(default)]
    pub time_stepped: Option<bool>,
    /// When the agent reported it, seconds since the Unix epoch.
    #[serde(default)]
    pub time_reported_at: Option<i64>,
}

/// A guest's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestState {
    /// Its agent was never heard from since hvsockd started.
    NoContact,
    /// Its agent beats.
    Ok,
    /// Its agent was heard from, but its connection ended or no beat came for 7 s.
    Lost,
}

impl GuestState {
    /// Its name in listings and `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestState::NoContact => "no_contact",
            GuestState::Ok => "ok",
            GuestState::Lost => "lost",
        }
    }

    /// Every state, in order.
    pub const ALL: [GuestState; 3] = [GuestState::NoContact, GuestState::Ok, GuestState::Lost];
}

impl Partition {
    /// Whether this is the root partition (the host).
    pub fn is_root(&self) -> bool {
        self.kind == PartitionKind::Root
    }
}

/// A live listener: `GET /v1/listeners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    /// Unique for the life of hvsockd.
    pub id: u64,
    /// The partition it listens in.
    pub partition: VmId,
    /// That partition's name.
    pub partition_name: String,
    /// The bound VmId pattern.
    pub vm: VmId,
    /// Its keyword (`wildcard`, `children`, …), if well-known.
    #[serde(default)]
    pub vm_keyword: Option<String>,
    /// The service GUID.
    pub service: ServiceId,
    /// The service's name, if registered.
    #[serde(default)]
    pub service_name: Option<String>,
    /// The backlog.
    #[serde(default)]
    pub backlog: u32,
    /// Connections delivered and not yet accepted.
    #[serde(default)]
    pub unaccepted: u32,
    /// Connectors waiting for backlog space.
    #[serde(default)]
    pub waiting: u64,
    /// Connections accepted so far.
    #[serde(default)]
    pub accepted: u64,
    /// The listening process, if known.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// A guest port hvsockd listens on for a VM (`PATH_<port>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPort {
    /// The vsock port.
    pub port: u32,
    /// `PATH_<port>`.
    pub path: PathBuf,
    /// The port's template service.
    pub service: ServiceId,
    /// Its name, if registered.
    #[serde(default)]
    pub service_name: Option<String>,
}

/// A VM attachment: `GET /v1/attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The VM's partition.
    pub partition: VmId,
    /// Its name.
    pub name: String,
    /// Its parent.
    #[serde(default)]
    pub parent: Option<VmId>,
    /// The VMM's hybrid-vsock socket.
    pub hybrid_vsock: PathBuf,
    /// The guest ports open for it.
    #[serde(default)]
    pub guest_ports: Vec<GuestPort>,
}

/// The counters: `GET /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Per connecting partition and service.
    #[serde(default)]
    pub connections: Vec<ConnectStats>,
    /// Bound listeners per (partition, service name).
    #[serde(default)]
    pub listeners: Vec<ListenerCount>,
    /// Binds refused per (partition, service), by reason.
    #[serde(default)]
    pub binds_refused: Vec<BindRefusals>,
    /// Clients dropped for breaking the protocol, by partition and reason.
    #[serde(default)]
    pub client_errors: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Counts of one (connecting partition, service) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectStats {
    /// The connecting partition's name (or id if it is gone).
    pub partition: String,
    /// The service's friendly name, or `(unregistered)`.
    pub service: String,
    /// The service id, if registered.
    #[serde(default)]
    pub service_id: Option<ServiceId>,
    /// Connections established.
    #[serde(default)]
    pub established: u64,
    /// Refusals, by reason.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    /// Mean time from connect request to connection, in milliseconds (`None` before the
    /// first connection).
    #[serde(default)]
    pub latency_avg_ms: Option<f64>,
    /// The upper bound of the latency bucket that holds the 99th percentile, in
    /// milliseconds (`None` before the first connection; infinite values are `None` too).
    #[serde(default)]
    pub latency_p99_ms: Option<f64>,
}

/// Binds refused for one (partition, service), by reason.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BindRefusals {
    /// The binding partition's name.
    pub partition: String,
    /// The service's friendly name, or `(unregistered)`.
    pub service: String,
    /// Refusals, by reason.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
}

/// Bound listeners of one (partition, service).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListenerCount {
    /// The partition's name.
    pub partition: String,
    /// The service's friendly name, or `(unregistered)`.
    pub service: String,
    /// How many are bound.
    #[serde(default)]
    pub listeners: u64,
}

/// An error answer: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`not_found`, `conflict`, …).
    pub code: String,
    /// What is wrong and what to do, for a person.
    pub message: String,
    /// An import's conflicts, one per entry; left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// The body of `POST /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewService {
    /// The friendly name.
    pub name: String,
    /// The GUID; a random one if neither this nor `port` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ServiceId>,
    /// A vsock port: the service is its template GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Whether it starts enabled (default: yes).
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// The body of `POST /v1/partitions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPartition {
    /// Its name.
    pub name: String,
    /// Its VmId; a random one if not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<VmId>,
    /// Its parent, by id or name; the root if not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// For a VM: its VMM's hybrid-vsock socket (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid_vsock: Option<PathBuf>,
}

/// The body of `PATCH /v1/services/{key}` (JSON merge patch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePatch {
    /// A new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Enable or disable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Absent: as it is; `null` (`Some(None)`): drop the service's own policy; a patch:
    /// merged into its policy.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub policy: Option<Option<PolicyPatch>>,
    /// Absent: as it is; `null`: no host-user rules (whoever may use the root's endpoint);
    /// rules: these replace the service's.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub access: Option<Option<AccessPatch>>,
}

/// Host-user rules in a [`ServicePatch`]: users and groups by name or number; both empty:
/// root only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPatch {
    /// Allowed users.
    #[serde(default)]
    pub users: Vec<String>,
    /// Allowed groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A policy in a [`ServicePatch`]: partitions by name or id; each member absent (as it is),
/// `null` (reset: any partition, or wildcard binds allowed) or a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    /// Partitions that may connect.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect: Option<Option<Vec<String>>>,
    /// Partitions that may bind.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub bind: Option<Option<Vec<String>>>,
    /// Whether wildcard binds are allowed.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub wildcard_bind: Option<Option<bool>>,
}

/// The body of `PATCH /v1/partitions/{key}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionPatch {
    /// A new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A member that may be absent (`None`), `null` (`Some(None)`) or a value, as JSON merge
/// patch tells them apart.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_patch_tells_absent_from_null() {
        let p: ServicePatch = serde_json::from_str(r#"{"policy": null}"#).expect("null");
        assert_eq!(p.policy, Some(None));
        let p: ServicePatch = serde_json::from_str("{}").expect("absent");
        assert_eq!(p.policy, None);
        let p: PolicyPatch =
            serde_json::from_str(r#"{"connect": null, "wildcard_bind": false}"#).expect("mixed");
        assert_eq!(
            (p.connect, p.bind, p.wildcard_bind),
            (Some(None), None, Some(Some(false)))
        );
        let back = serde_json::to_string(&ServicePatch {
            policy: Some(None),
            ..ServicePatch::default()
        })
        .expect("json");
        assert_eq!(back, r#"{"policy":null}"#);
        assert!(serde_json::from_str::<PartitionPatch>(r#"{"nam": "x"}"#).is_err());
    }

    #[test]
    fn reading_is_lenient_and_writing_is_exact() {
        let id = "00000ac9-facb-11e6-bd58-64006a7986d3";
        let json = format!(r#"{{"id": "{id}", "name": "echo", "enabled": true, "new": 1}}"#);
        let s: Service = serde_json::from_str(&json).expect("lenient");
        assert_eq!(s.effective_policy, None);
        let out = serde_json::to_value(&s).expect("json");
        assert_eq!(out["vsock_port"], serde_json::Value::Null);
        assert!(out.get("new").is_none());
        let body = serde_json::to_value(NewService {
            name: "echo".into(),
            id: None,
            port: Some(2761),
            enabled: true,
        })
        .expect("json");
        assert_eq!(
            body,
            serde_json::json!({"name": "echo", "port": 2761, "enabled": true})
        );
    }
}

/// Which key-value pool: the host's (set on the host, read in the guest) or the guest's
/// (filled by the agent and guest programs, read on the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvpPoolName {
    /// The host's pool.
    Host,
    /// The guest's pool.
    Guest,
}

impl KvpPoolName {
    /// The name shown.
    pub fn as_str(self) -> &'static str {
        match self {
            KvpPoolName::Host => "host",
            KvpPoolName::Guest => "guest",
        }
    }
}

impl fmt::Display for KvpPoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A partition's key-value pools: `GET /v1/partitions/{id-or-name}/kvp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kvp {
    /// The partition.
    pub partition: PartitionRef,
    /// The host's pool (kept in the registry).
    #[serde(default)]
    pub host: BTreeMap<String, String>,
    /// The guest's pool as its agent last sent it.
    #[serde(default)]
    pub guest: GuestKvp,
}

/// A guest's pool as its agent last sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestKvp {
    /// Whether an agent is connected now; if not, `pairs` are what the last one sent.
    #[serde(default)]
    pub connected: bool,
    /// Whether the connected agent has sent its whole pool.
    #[serde(default)]
    pub synced: bool,
    /// When the agent last sent something (or connected), seconds since the Unix epoch;
    /// `None`: no agent since hvsockd started.
    #[serde(default)]
    pub updated_at: Option<i64>,
    /// The pairs.
    #[serde(default)]
    pub pairs: BTreeMap<String, String>,
}

/// One pair of a pool: `GET`/`PUT /v1/partitions/{id-or-name}/kvp/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvpPair {
    /// The partition.
    pub partition: PartitionRef,
    /// The pool it is in.
    pub pool: KvpPoolName,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// For the guest pool: whether its agent is connected now (if not, the value is what it
    /// sent last); `None` for the host pool.
    #[serde(default)]
    pub connected: Option<bool>,
}

/// The body of `PUT /v1/partitions/{id-or-name}/kvp/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvpValue {
    /// The value: at most 2048 bytes.
    pub value: String,
}
