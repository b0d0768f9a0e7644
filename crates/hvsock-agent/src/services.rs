//! The integration services: their fixed vsock ports (so their template GUIDs), friendly names,
//! which side serves them, and whether hvsockd registers them enabled.
//!
//! The block of vsock ports 50000–50009 belongs to hvsock's integration services; 50006–50009
//! are reserved for later ones. Only vsock-template GUIDs cross into a Linux guest, hence ports
//! rather than GUIDs of their own (Hyper-V's VM Session Service `999e53d4-…` is not one).

use hvsock::ServiceId;

/// Who listens for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The agent listens in the guest or sandbox, bound to PARENT; the host connects.
    GuestServed,
    /// The host (hvsockd) listens; the agent connects to PARENT and keeps the connection.
    HostServed,
}

/// One integration service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// The protocol's name (in Hello) and the key of `--disable`.
    pub key: &'static str,
    /// The friendly name hvsockd registers.
    pub name: &'static str,
    /// Its vsock port.
    pub port: u32,
    /// Who listens.
    pub direction: Direction,
    /// Whether hvsockd registers it enabled at first start. The VM session and file copy
    /// start disabled, as Hyper-V's Guest Service Interface does: they give a root shell and
    /// root's files in every guest.
    pub enabled_by_default: bool,
    /// Whether, by default, only root on the host may use it.
    pub root_only_by_default: bool,
    /// One line for people.
    pub summary: &'static str,
}

impl Service {
    /// Its ServiceId: the vsock template GUID of its port.
    pub const fn id(&self) -> ServiceId {
        ServiceId::from_vsock_port(self.port)
    }
}

/// `hvsock exec` / `hvsock shell`: run a command in the guest, with or without a terminal.
pub const SESSION: Service = Service {
    key: "session",
    name: "hvsock-session",
    port: 50000,
    direction: Direction::GuestServed,
    enabled_by_default: false,
    root_only_by_default: true,
    summary: "VM session: run commands and shells in the guest (hvsock exec, hvsock shell)",
};

/// `hvsock cp`: copy files and directories in and out of the guest.
pub const FILES: Service = Service {
    key: "files",
    name: "hvsock-files",
    port: 50001,
    direction: Direction::GuestServed,
    enabled_by_default: false,
    root_only_by_default: true,
    summary: "file copy in and out of the guest (hvsock cp)",
};

/// `hvsock vm shutdown`: a clean power-off or reboot through the guest's init.
pub const SHUTDOWN: Service = Service {
    key: "shutdown",
    name: "hvsock-shutdown",
    port: 50002,
    direction: Direction::GuestServed,
    enabled_by_default: true,
    root_only_by_default: true,
    summary: "clean shutdown and reboot through the guest's init (hvsock vm shutdown)",
};

/// The agent's heartbeat and guest facts, to hvsockd.
pub const HEARTBEAT: Service = Service {
    key: "heartbeat",
    name: "hvsock-heartbeat",
    port: 50003,
    direction: Direction::HostServed,
    enabled_by_default: true,
    root_only_by_default: false,
    summary: "heartbeat: the guest's state, agent version, OS, kernel and hostname",
};

/// Time sync: the host's clock, to the agent.
pub const TIME: Service = Service {
    key: "time",
    name: "hvsock-time",
    port: 50004,
    direction: Direction::HostServed,
    enabled_by_default: true,
    root_only_by_default: false,
    summary: "time sync: the guest clock set from the host's",
};

/// Key-value exchange, both pools.
pub const KVP: Service = Service {
    key: "kvp",
    name: "hvsock-kvp",
    port: 50005,
    direction: Direction::HostServed,
    enabled_by_default: true,
    root_only_by_default: false,
    summary: "key-value exchange: the host's pool to the guest, the guest's to the host",
};

/// Every integration service, in port order.
pub const ALL: [Service; 6] = [SESSION, FILES, SHUTDOWN, HEARTBEAT, TIME, KVP];

/// The service with this key (`session`, `files`, ...).
pub fn by_key(key: &str) -> Option<Service> {
    ALL.into_iter().find(|s| s.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_names_and_keys_are_unique_and_in_the_block() {
        for (i, a) in ALL.iter().enumerate() {
            assert!((50000..=50009).contains(&a.port));
            assert_eq!(a.id().vsock_port(), Some(a.port));
            assert!(
                hvsock::addr::check_service_name(a.name).is_ok(),
                "{}",
                a.name
            );
            for b in &ALL[i + 1..] {
                assert_ne!(a.port, b.port);
                assert_ne!(a.name, b.name);
                assert_ne!(a.key, b.key);
            }
        }
        assert_eq!(by_key("files"), Some(FILES));
        assert_eq!(by_key("nope"), None);
    }

    #[test]
    fn session_and_files_start_disabled_and_root_only() {
        for s in [SESSION, FILES] {
            assert!(!s.enabled_by_default && s.root_only_by_default, "{}", s.key);
        }
    }
}
