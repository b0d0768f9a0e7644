//! The admin API's JSON objects as Rust types: what hvsockd answers (`Service`, `Partition`,
//! `Host`, `Stats`, `ImportReport`) and what the CLI sends (`NewService`, `NewPartition`; the
//! `PATCH` bodies are built as JSON, because merge patch tells `null` from absent).
//!
//! They mirror `hvsockd::admin`'s views. Reading is lenient (fields that a newer hvsockd adds
//! are ignored, counters a older one lacks default to zero) so that the CLI and the daemon
//! can be upgraded one at a time; `--json` output prints the API's objects as they came, not
//! these types, so that it shows every field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hvsock::{ServiceId, VmId};
use serde::{Deserialize, Serialize};

/// A registered service (`GET /v1/services/{id-or-name}`).
#[derive(Debug, Clone, Deserialize)]
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
    /// The policy that applies (its own, else the default); `None` from an hvsockd without
    /// policies.
    #[serde(default)]
    pub effective_policy: Option<Policy>,
}

/// A partition named in a policy.
#[derive(Debug, Clone, Deserialize)]
pub struct PartitionRef {
    /// Its VmId.
    pub id: VmId,
    /// Its name.
    pub name: String,
}

/// A service's policy as hvsockd shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Policy {
    /// Partitions that may connect across a boundary; `None`: any.
    #[serde(default)]
    pub connect: Option<Vec<PartitionRef>>,
    /// Partitions that may bind the service; `None`: any.
    #[serde(default)]
    pub bind: Option<Vec<PartitionRef>>,
    /// Whether wildcard (ZERO) binds are allowed.
    #[serde(default = "yes")]
    pub wildcard_bind: bool,
}

fn yes() -> bool {
    true
}

/// How many entries of a kind an import touched.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Counts {
    /// New.
    #[serde(default)]
    pub created: u64,
    /// Changed.
    #[serde(default)]
    pub updated: u64,
    /// As they were.
    #[serde(default)]
    pub unchanged: u64,
    /// Removed.
    #[serde(default)]
    pub removed: u64,
}

/// What an import did (`POST /v1/registry`).
#[derive(Debug, Clone, Deserialize)]
pub struct ImportReport {
    /// `merge` or `replace`.
    pub mode: String,
    /// Whether nothing was written.
    #[serde(default)]
    pub dry_run: bool,
    /// The root's id after.
    pub root: VmId,
    /// Whether the root took the document's id.
    #[serde(default)]
    pub root_adopted: bool,
    /// Services.
    #[serde(default)]
    pub services: Counts,
    /// Partitions.
    #[serde(default)]
    pub partitions: Counts,
    /// One line per change.
    #[serde(default)]
    pub changes: Vec<String>,
}

/// A partition (`GET /v1/partitions/{id-or-name}`).
#[derive(Debug, Clone, Deserialize)]
pub struct Partition {
    /// Its VmId.
    pub id: VmId,
    /// Its name (`host` for the root).
    pub name: String,
    /// `root`, `sandbox` or `vm`.
    pub kind: String,
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
}

impl Partition {
    /// Whether this is the root partition (the host).
    pub fn is_root(&self) -> bool {
        self.kind == "root"
    }
}

/// The root partition and the daemon (`GET /v1/host`).
#[derive(Debug, Clone, Deserialize)]
pub struct Host {
    /// The root partition's VmId.
    pub id: VmId,
    /// hvsockd's version.
    #[serde(default)]
    pub version: String,
}

/// The counters (`GET /v1/stats`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Stats {
    /// Per connecting partition and service.
    #[serde(default)]
    pub connections: Vec<ConnectStats>,
    /// Bound listeners per partition and service.
    #[serde(default)]
    pub listeners: Vec<ListenerCount>,
    /// Binds refused per partition and service, by reason.
    #[serde(default)]
    pub binds_refused: Vec<BindRefusals>,
    /// Clients dropped for breaking the protocol, by partition and reason.
    #[serde(default)]
    pub client_errors: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Connection counts of one (connecting partition, service) pair.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectStats {
    /// The connecting partition's name.
    pub partition: String,
    /// The service's name, or `(unregistered)`.
    pub service: String,
    /// Connections established.
    #[serde(default)]
    pub established: u64,
    /// Refusals by reason.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    /// Mean connect latency in milliseconds.
    #[serde(default)]
    pub latency_avg_ms: Option<f64>,
    /// Upper bound of the bucket holding the 99th percentile, in milliseconds.
    #[serde(default)]
    pub latency_p99_ms: Option<f64>,
}

/// Binds refused for one (partition, service) pair.
#[derive(Debug, Clone, Deserialize)]
pub struct BindRefusals {
    /// The binding partition's name.
    pub partition: String,
    /// The service's name, or `(unregistered)`.
    pub service: String,
    /// Refusals by reason.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
}

/// Bound listeners of one (partition, service) pair.
#[derive(Debug, Clone, Deserialize)]
pub struct ListenerCount {
    /// The partition's name.
    pub partition: String,
    /// The service's name, or `(unregistered)`.
    pub service: String,
    /// How many.
    #[serde(default)]
    pub listeners: u64,
}

/// The body of `POST /v1/services`.
#[derive(Debug, Clone, Serialize)]
pub struct NewService {
    /// The friendly name.
    pub name: String,
    /// The GUID; a random one if neither this nor `port` is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<ServiceId>,
    /// A vsock port: the service is its template GUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Whether it starts enabled.
    pub enabled: bool,
}

/// The body of `POST /v1/partitions`.
#[derive(Debug, Clone, Serialize)]
pub struct NewPartition {
    /// Its name.
    pub name: String,
    /// Its VmId; a random one if not given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<VmId>,
    /// Its parent, by id or name; the root if not given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// For a VM: its VMM's hybrid-vsock socket (absolute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hybrid_vsock: Option<PathBuf>,
}

/// A live listener (`GET /v1/listeners`).
#[derive(Debug, Clone, Deserialize)]
pub struct Listener {
    /// Unique for the life of hvsockd.
    pub id: u64,
    /// The partition it listens in.
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
    pub backlog: u64,
    /// Connections delivered and not yet accepted.
    #[serde(default)]
    pub unaccepted: u64,
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
