//! `hvsock service …` on Windows: the Hyper-V host's own registry of integration services.
//!
//! A Hyper-V host lets VMs reach a service only if it is registered as a key named by its GUID
//! under
//! `HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Virtualization\GuestCommunicationServices`,
//! with a string value `ElementName` holding its friendly name. Hyper-V's documentation does it
//! in PowerShell:
//!
//! ```text
//! $key = "HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Virtualization\GuestCommunicationServices"
//! New-Item -Path $key -Name $guid
//! New-ItemProperty -Path "$key\$guid" -Name ElementName -Value $name
//! ```
//!
//! On Windows `hvsock service add|list|show|remove` do the same directly (no hvsockd; the
//! commands are in `cmd::service::hyperv`), so one script registers a service on either
//! platform: `hvsock service add NAME --port N` (or `--id GUID`) prints the GUID on both. The
//! rules follow hvsockd's registry:
//!
//! - `add` is idempotent: the same GUID with the same name changes nothing; a key that exists
//!   without `ElementName` gets it. The GUID registered under another name, or the name used
//!   by another GUID, is an error that says which. Without `--id`/`--port` the GUID is random.
//! - `list`/`show` read the keys (any user may); keys whose name is not a GUID are skipped.
//! - `remove ID|NAME|PORT` deletes the service's key.
//! - Writing `HKLM` needs an elevated prompt: `ERROR_ACCESS_DENIED` says "run as Administrator".
//! - Hyper-V has no per-service enable flag, so `enable`, `disable` and `add --disabled` are
//!   errors that say so.
//!
//! This module is the registry itself: the commands run against a [`Store`], the real registry
//! on Windows (`windows.rs`, through `windows-sys`), an in-memory one in the tests
//! (`fake::Fake`), which therefore run on every platform.

use std::io;

use hvsock::{ServiceId, ServiceSpec};

#[cfg(windows)]
mod windows;

/// The key of the registered services, under `HKEY_LOCAL_MACHINE`.
pub const SERVICES_KEY: &str =
    r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\Virtualization\GuestCommunicationServices";

/// The string value that holds a service's friendly name.
pub const ELEMENT_NAME: &str = "ElementName";

/// The name of a service's key: its GUID, lower case, without braces (as PowerShell's
/// `[guid]::NewGuid()` prints it; key names are case-insensitive).
pub fn key_name(id: ServiceId) -> String {
    id.to_string()
}

/// The full path of a service's key, as people read it (`HKLM\…\<GUID>`).
pub fn key_path(id: ServiceId) -> String {
    format!(r"HKLM\{SERVICES_KEY}\{}", key_name(id))
}

/// The service a key name stands for: any spelling of a GUID (braces, upper case).
pub fn parse_key_name(name: &str) -> Option<ServiceId> {
    ServiceId::parse(name).ok()
}

/// A registered service: its key's GUID and its `ElementName`, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The GUID (the key's name).
    pub id: ServiceId,
    /// `ElementName`, if set.
    pub name: Option<String>,
}

impl Entry {
    /// A service for people: `name (GUID)`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name:?} ({})", self.id),
            None => self.id.to_string(),
        }
    }
}

/// Why a registry command failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Writing needs an elevated prompt.
    #[error(
        "{doing}: Access is denied: run as Administrator (writing HKLM\\{SERVICES_KEY} needs an elevated prompt)"
    )]
    AccessDenied {
        /// What was being done.
        doing: String,
    },
    /// The services key does not exist: this is not a Hyper-V host.
    #[error(
        "{doing}: HKLM\\{SERVICES_KEY} does not exist: this Windows is not a Hyper-V host \
         (enable Hyper-V; inside a VM there is nothing to register, services are registered \
         on the host)"
    )]
    NoHyperV {
        /// What was being done.
        doing: String,
    },
    /// No such service.
    #[error(
        "no service {key:?} under HKLM\\{SERVICES_KEY} (see `hvsock service list`; give a GUID, \
         a name or a vsock port)"
    )]
    NotFound {
        /// The GUID, name or port looked for.
        key: String,
    },
    /// Two services have that name.
    #[error("more than one service is named {name:?} ({}): give its GUID instead", ids.join(", "))]
    Ambiguous {
        /// The name.
        name: String,
        /// Their GUIDs.
        ids: Vec<String>,
    },
    /// The name is used by another service.
    #[error(
        "the service name {name:?} is already used by {id} (remove it first, or pick another name)"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// The service holding it.
        id: ServiceId,
    },
    /// The GUID is registered under another name.
    #[error(
        "the service id {id} is already registered as {name:?} (remove it first, or register it under that name)"
    )]
    IdTaken {
        /// The GUID.
        id: ServiceId,
        /// Its name.
        name: String,
    },
    /// Another failure of the registry.
    #[error("{doing}: {source}")]
    Os {
        /// What was being done.
        doing: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

impl RegistryError {
    /// The error of a registry call that failed with `source` while `doing`: access denied
    /// and a missing services key get their own messages.
    pub fn from_os(doing: impl Into<String>, source: io::Error) -> RegistryError {
        let doing = doing.into();
        match source.kind() {
            io::ErrorKind::PermissionDenied => RegistryError::AccessDenied { doing },
            _ => RegistryError::Os { doing, source },
        }
    }
}

/// Where services are registered: the Windows registry, or a fake in tests.
pub trait Store {
    /// Every service key (the GUID-named ones) with its `ElementName`.
    fn entries(&self) -> Result<Vec<Entry>, RegistryError>;
    /// Creates the key of `id` if it is missing and sets its `ElementName` to `name`.
    fn write(&mut self, id: ServiceId, name: &str) -> Result<(), RegistryError>;
    /// Deletes the key of `id` and everything in it.
    fn remove(&mut self, id: ServiceId) -> Result<(), RegistryError>;
}

/// What `add` must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The service is registered with this name already: nothing.
    Unchanged,
    /// Create the key (or give the existing key its missing `ElementName`).
    Write,
}

/// What registering `id` as `name` does, given what is registered (see the module docs).
pub fn plan_add(entries: &[Entry], id: ServiceId, name: &str) -> Result<Plan, RegistryError> {
    if let Some(existing) = entries.iter().find(|e| e.id == id) {
        return match &existing.name {
            Some(current) if current == name => Ok(Plan::Unchanged),
            Some(current) => Err(RegistryError::IdTaken {
                id,
                name: current.clone(),
            }),
            None => Ok(Plan::Write),
        };
    }
    if let Some(other) = entries.iter().find(|e| e.name.as_deref() == Some(name)) {
        return Err(RegistryError::NameTaken {
            name: name.to_owned(),
            id: other.id,
        });
    }
    Ok(Plan::Write)
}

/// The service `key` names: a GUID, a decimal vsock port (its template GUID) or a name.
pub fn find<'a>(entries: &'a [Entry], key: &str) -> Result<&'a Entry, RegistryError> {
    let key = key.trim();
    let not_found = || RegistryError::NotFound {
        key: key.to_owned(),
    };
    if let Some(id) = ServiceSpec::parse(key).ok().and_then(|spec| spec.id()) {
        return entries.iter().find(|e| e.id == id).ok_or_else(not_found);
    }
    let named: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.name.as_deref() == Some(key))
        .collect();
    match named.as_slice() {
        [] => Err(not_found()),
        [one] => Ok(one),
        many => Err(RegistryError::Ambiguous {
            name: key.to_owned(),
            ids: many.iter().map(|e| e.id.to_string()).collect(),
        }),
    }
}

/// The GUID of the service named `name`, for `VM:SERVICE` addresses on Windows.
pub fn service_id_by_name(store: &dyn Store, name: &str) -> Result<ServiceId, RegistryError> {
    Ok(find(&store.entries()?, name)?.id)
}

/// The name of service `id`, if it is registered with one.
pub fn name_of(store: &dyn Store, id: ServiceId) -> Option<String> {
    let entries = store.entries().ok()?;
    entries.into_iter().find(|e| e.id == id)?.name
}

/// The registry of this machine.
#[cfg(windows)]
pub fn system() -> impl Store {
    windows::Registry
}

/// `s` as a NUL-terminated UTF-16 string, for the registry's wide-character functions.
pub fn to_wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// A `REG_SZ` value as read: UTF-16 units, up to the first NUL (the stored terminator, if
/// any); unpaired surrogates become U+FFFD.
pub fn from_wide(units: &[u16]) -> String {
    let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
    String::from_utf16_lossy(&units[..end])
}

/// A registry in memory, for the tests here and of the commands.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::BTreeMap;

    use super::*;

    /// An in-memory registry that can be made to refuse writes, as a non-elevated prompt does.
    #[derive(Default)]
    pub(crate) struct Fake {
        pub(crate) keys: BTreeMap<ServiceId, Option<String>>,
        pub(crate) read_only: bool,
        pub(crate) writes: usize,
    }

    impl Store for Fake {
        fn entries(&self) -> Result<Vec<Entry>, RegistryError> {
            Ok(self
                .keys
                .iter()
                .map(|(id, name)| Entry {
                    id: *id,
                    name: name.clone(),
                })
                .collect())
        }
        fn write(&mut self, id: ServiceId, name: &str) -> Result<(), RegistryError> {
            if self.read_only {
                return Err(RegistryError::from_os(
                    format!("creating {}", key_path(id)),
                    io::Error::from(io::ErrorKind::PermissionDenied),
                ));
            }
            self.writes += 1;
            self.keys.insert(id, Some(name.to_owned()));
            Ok(())
        }
        fn remove(&mut self, id: ServiceId) -> Result<(), RegistryError> {
            if self.read_only {
                return Err(RegistryError::from_os(
                    "deleting",
                    io::Error::from(io::ErrorKind::PermissionDenied),
                ));
            }
            self.writes += 1;
            self.keys.remove(&id);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::fake::Fake;
    use super::*;

    const ECHO: &str = "00000ac9-facb-11e6-bd58-64006a7986d3";

    #[test]
    fn the_key_is_the_one_in_hyper_v_documentation() {
        let id = ServiceId::from_vsock_port(2761);
        assert_eq!(
            key_path(id),
            r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Virtualization\GuestCommunicationServices\00000ac9-facb-11e6-bd58-64006a7986d3"
        );
        assert_eq!(key_name(id), ECHO);
        assert_eq!(ELEMENT_NAME, "ElementName");
        for spelling in [ECHO, "{00000AC9-FACB-11E6-BD58-64006A7986D3}"] {
            assert_eq!(parse_key_name(spelling), Some(id), "{spelling}");
        }
        assert_eq!(parse_key_name("Not a GUID"), None);
    }

    #[test]
    fn a_name_held_twice_asks_for_the_guid() {
        let mut reg = Fake::default();
        reg.keys
            .insert(ServiceId::from_vsock_port(1), Some("dup".into()));
        reg.keys
            .insert(ServiceId::from_vsock_port(2), Some("dup".into()));
        let entries = reg.entries().unwrap();
        let err = find(&entries, "dup").unwrap_err();
        assert!(err.to_string().contains("give its GUID"), "{err}");
        assert_eq!(
            find(&entries, "2").unwrap().id,
            ServiceId::from_vsock_port(2)
        );
        assert_eq!(
            service_id_by_name(&reg, "1").unwrap(),
            ServiceId::from_vsock_port(1)
        );
        assert_eq!(
            name_of(&reg, ServiceId::from_vsock_port(2)).as_deref(),
            Some("dup")
        );
        assert_eq!(name_of(&reg, ServiceId::from_vsock_port(3)), None);
    }

    #[test]
    fn wide_strings_round_trip_and_stop_at_nul() {
        let wide = to_wide("écho");
        assert_eq!(wide.last(), Some(&0));
        assert_eq!(from_wide(&wide), "écho");
        assert_eq!(from_wide(&[0x68, 0x69]), "hi");
        assert_eq!(from_wide(&[0x68, 0, 0x69]), "h");
        assert_eq!(from_wide(&[]), "");
    }
}
