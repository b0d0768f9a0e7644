//! The admin API's JSON objects as Rust types: what hvsockd answers (`Service`, `Partition`,
//! `Host`, `Stats`) and what the CLI sends (`NewService`, `NewPartition`).
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
